"""Load tensors straight from a .wpk, mirroring ``safetensors.safe_open`` and ``load_file``.

Only the tensors (and, for ``get_slice``, only the chunks) asked for are decoded. Frameworks:

- ``"pt"`` (the default everywhere): torch tensors of the matching dtype (BF16 is ``torch.bfloat16``);
  torch is imported only here.
- ``"np"``: numpy arrays. numpy has no bfloat16 or float8, so those come back as their raw bit
  patterns: BF16 as ``uint16``, F8_E4M3 / F8_E5M2 / F8_E8M0 as ``uint8`` (lossless; for BF16,
  ``(a.astype(np.uint32) << 16).view(np.float32)`` gives the exact float32 values).

Each chunk's checksum is checked as it is decoded. A full ``load_file`` also checks the sha256 of the
whole original file only when every tensor is read through ``weightpack.verify``; use that for audits.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from . import manifest
from .api import FolderSource, workers
from .container import KIND_BYTES, Segment
from .errors import FormatError, WeightpackError, about
from .safetensors_layout import parse_header
from .sources import BaseSet
from .wpkfile import ArchiveReader

DEFAULT_FRAMEWORK = "pt"  # as safetensors.torch; "np" for numpy arrays without torch
NUMPY_DTYPES = {
    "BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "U16": np.uint16, "I16": np.int16, "U32": np.uint32,
    "I32": np.int32, "U64": np.uint64, "I64": np.int64, "F16": np.float16, "F32": np.float32, "F64": np.float64,
    "BF16": np.uint16, "F8_E4M3": np.uint8, "F8_E5M2": np.uint8, "F8_E8M0": np.uint8,
}
TORCH_DTYPES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16", "U32": "uint32", "I32": "int32",
    "U64": "uint64", "I64": "int64", "F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "F8_E8M0": "float8_e8m0fnu",
}


def _as_framework(data: np.ndarray, dtype: str, shape: tuple[int, ...], framework: str):
    array = data.view(np.dtype(NUMPY_DTYPES[dtype]).newbyteorder("<")).reshape(shape)
    if framework == "np":
        return array
    try:
        import torch
    except ImportError:
        raise WeightpackError("framework='pt' needs torch (pip install torch), or pass framework='np'") from None

    if not data.size:
        return torch.empty(shape, dtype=getattr(torch, TORCH_DTYPES[dtype]))
    # The tensor takes over the decoded array (each tensor's own, see ArchiveReader.segments_bytes) rather
    # than a copy of it: a copy was a third of loading MiniLM F32. Rows sliced out of their stripes are
    # copied, so that a slice does not hold the whole stripes it was decoded from.
    owned = data.base is None or data.base.size == data.size
    raw = torch.from_numpy(data if owned else data.copy())
    return raw.view(getattr(torch, TORCH_DTYPES[dtype])).reshape(shape)


class TensorSlice:
    """Lazy view of one tensor: ``shape``/``dtype`` without decoding, ``[a:b]`` decodes only those rows."""

    def __init__(self, file: safe_open, seg: Segment) -> None:
        self._file, self._seg = file, seg

    def get_shape(self) -> list[int]:
        return list(self._seg.shape)

    def get_dtype(self) -> str:
        return self._seg.dtype

    def __getitem__(self, key: object):
        """Rows picked by an int or a slice on the first dimension (any further indices applied after)."""
        seg = self._seg
        lead, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        if not seg.shape or not isinstance(lead, (int, slice)):
            raise WeightpackError(f"{self._file.path}: tensor {seg.name!r}: get_slice supports an int or a "
                                  "slice on the first dimension")
        try:
            picked = range(seg.shape[0])[lead]
        except IndexError:
            raise WeightpackError(f"{self._file.path}: tensor {seg.name!r}: row {lead} out of range") from None
        rows = [picked] if isinstance(lead, int) else list(picked)
        lo, hi = (min(rows), max(rows) + 1) if rows else (0, 0)
        row = int(np.prod(seg.shape[1:], dtype=np.int64))
        data = self._file._reader.segment_bytes(seg, lo * row, hi * row)
        block = _as_framework(data, seg.dtype, (hi - lo, *seg.shape[1:]), self._file.framework)
        if self._file.device != "cpu":
            block = block.to(self._file.device)
        if isinstance(lead, int):
            return block[0][rest] if rest else block[0]
        if picked.step != 1:
            block = block[np.asarray(rows, dtype=np.int64) - lo]
        return block[(slice(None), *rest)] if rest else block


def _on_gpu(device: str, framework: str) -> bool:
    """Whether tensors are decoded on the GPU: ``device`` "cuda" (or "cuda:N"), with torch tensors."""
    if device == "cpu":
        return False
    if device != "cuda" and not device.startswith("cuda:"):
        raise WeightpackError(f"unsupported device {device!r} (use 'cpu' or 'cuda')")
    if framework not in ("pt", "torch"):
        raise WeightpackError("device='cuda' gives torch tensors: use framework='pt'")
    try:
        import torch
    except ImportError:
        raise WeightpackError("device='cuda' needs torch (pip install torch)") from None
    if not torch.cuda.is_available():
        raise WeightpackError("device='cuda': no usable CUDA GPU (torch.cuda.is_available() is False)")
    return True


def _cuda_tensor(data: object, dtype: str, shape: tuple[int, ...], device: str):
    """A torch CUDA tensor over a numba device array's memory (no copy: ``__cuda_array_interface__``)."""
    import torch

    kind = getattr(torch, TORCH_DTYPES[dtype])
    if not data.size:
        return torch.empty(shape, dtype=kind, device=device)
    return torch.as_tensor(data, device=device).view(kind).reshape(shape)


class safe_open:
    """Open a .wpk for reading tensors by name, like ``safetensors.safe_open(path, framework, device)``.

    ``device="cuda"``: tensors are decoded on the GPU (``weightpack.gpu``) and returned as torch CUDA
    tensors; ``get_slice`` then decodes its rows on the CPU and moves them.
    """

    def __init__(self, path: str | os.PathLike, framework: str = DEFAULT_FRAMEWORK, device: str = "cpu",
                 threads: int | None = None, base: str | os.PathLike | None = None) -> None:
        if framework not in ("np", "numpy", "pt", "torch"):
            raise WeightpackError(f"unsupported framework {framework!r} (use 'np' or 'pt')")
        self.device = device if _on_gpu(device, framework) else "cpu"
        self.path = Path(path)
        self.framework = "pt" if framework in ("pt", "torch") else "np"
        self._pool = ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1)
        self._base = None
        try:
            if base is not None:
                self._base = BaseSet(Path(base), lambda p: ArchiveReader(p, self._pool))
            self._reader = ArchiveReader(self.path, self._pool, self._base)
        except WeightpackError as exc:
            self.close()
            raise type(exc)(f"{self.path}: {exc}") from None
        self._metadata: dict[str, str] | None = None
        self._header_read = False

    def __enter__(self) -> safe_open:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for resource in (getattr(self, "_reader", None), self._base):
            if resource is not None:
                resource.close()
        self._pool.shutdown()

    def keys(self) -> list[str]:
        return sorted(self._reader.tensors)

    def metadata(self) -> dict[str, str] | None:
        """The ``__metadata__`` of the original header (decodes only the header bytes)."""
        if not self._header_read:
            header = self._reader.index.segments[0]
            if header.kind != KIND_BYTES:
                raise FormatError(f"{self.path}: archive does not start with a safetensors header")
            data = self._reader.segment_bytes(header).tobytes()
            self._metadata = parse_header(data, self._reader.index.original_size).metadata
            self._header_read = True
        return self._metadata

    def _segment(self, name: str) -> Segment:
        try:
            return self._reader.tensors[name]
        except KeyError:
            raise WeightpackError(f"{self.path}: no tensor named {name!r}") from None

    def get_tensor(self, name: str):
        return self.get_tensors([name])[name]

    def get_tensors(self, names: list[str]) -> dict:
        """Several tensors at once: on the GPU, decoded together in a few kernel launches."""
        segments = {name: self._segment(name) for name in names}
        if self.device != "cpu":
            import torch

            from . import gpu

            index = torch.device(self.device).index
            with about(self.path):
                decoded = gpu.decode(self._reader, names, torch.cuda.current_device() if index is None else index)
            return {n: _cuda_tensor(decoded[n], s.dtype, s.shape, self.device) for n, s in segments.items()}
        return _decoded(self._reader, segments, self.framework)

    def get_slice(self, name: str) -> TensorSlice:
        return TensorSlice(self, self._segment(name))

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())


def load_file(path: str | os.PathLike, framework: str = DEFAULT_FRAMEWORK, threads: int | None = None,
              base: str | os.PathLike | None = None, device: str = "cpu") -> dict:
    """Every tensor of a .wpk as ``{name: tensor}``, like ``safetensors.{numpy,torch}.load_file``.

    ``device="cuda"`` decodes on the GPU into torch CUDA tensors (see ``weightpack.gpu``).
    """
    with safe_open(path, framework, device=device, threads=threads, base=base) as f:
        return f.get_tensors(f.keys())


def _decoded(reader: ArchiveReader, segments: dict[str, Segment], framework: str) -> dict:
    """Tensors ``segments`` of an archive, decoded on the CPU, as ``framework`` arrays."""
    datas = reader.segments_bytes(segments.values())
    return {n: _as_framework(data, s.dtype, s.shape, framework) for (n, s), data in zip(segments.items(), datas)}


def load_folder(path: str | os.PathLike, framework: str = DEFAULT_FRAMEWORK, threads: int | None = None,
                base: str | os.PathLike | None = None, device: str = "cpu", source: FolderSource | None = None) -> dict:
    """One state dict from every archive of a packed model folder (all shards), without writing files.

    A missing folder, or one that is not packed (no ``weightpack.json``), is an error rather than an
    empty state dict: loaded with ``strict=False``, that would be a randomly initialised model.
    ``source``: where the archives come from, if not from ``path`` (a Hub repo, ``hub.RepoFiles``:
    each archive then decodes on the CPU as it downloads, with the next one downloading meanwhile).
    """
    folder = Path(path)
    state: dict = {}
    if source is None or _on_gpu(device, framework):
        for name in manifest.read(folder).archives:
            state.update(load_file(folder / name, framework, threads, base, device))
        return state
    framework = "pt" if framework in ("pt", "torch") else "np"
    with workers(threads, base) as (pool, base_set):
        for name in manifest.read(folder).archives:
            with source.archive(name, pool, base_set) as reader, about(Path(name)):
                state.update(_decoded(reader, reader.tensors, framework))
    return state
