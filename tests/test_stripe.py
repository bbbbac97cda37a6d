"""A stripe of a tensor stored whole decodes by one read and one compiled call, with every check of the
plane-by-plane decoder: every chunk mode, every dtype it takes, any alignment in its output."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import weightpack
from weightpack import codec, minilm, stripe
from weightpack.container import CHUNK_OWN, CHUNK_PLANE, CHUNK_RAW, CODEC_CONST, KIND_TENSOR
from weightpack.safetensors_layout import write
from weightpack.wpkfile import ArchiveReader


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Calls of the stripe kernel, of archive reads for it, and of the plane-by-plane decoder."""
    calls: Counter = Counter()

    def counting(key: str, f):
        def wrapper(*args, **kwargs):
            calls[key] += 1
            return f(*args, **kwargs)
        return wrapper
    monkeypatch.setattr(stripe, "_decode_stripe", counting("kernel", stripe._decode_stripe))
    monkeypatch.setattr(ArchiveReader, "read_into", counting("read", ArchiveReader.read_into))
    monkeypatch.setattr(codec.PlaneDecoder, "chunk", counting("plane chunk", codec.PlaneDecoder.chunk))
    return calls


def test_each_stripe_of_a_model_is_one_read_and_one_kernel_call(minilm_dirs: dict[str, Path], tmp_path: Path,
                                                                 counted: Counter) -> None:
    archive = weightpack.pack(minilm_dirs["F32"] / minilm.CHECKPOINT, tmp_path / "m.wpk")
    counted.clear()
    with ArchiveReader(archive, None) as reader:
        reader.restore(None)
        stripes = sum(s.stripes for s in reader.index.segments if s.kind == KIND_TENSOR)
    assert counted["kernel"] == counted["read"] == stripes
    assert counted["plane chunk"] == 1  # the safetensors header, zstd-compressed


def test_every_chunk_mode_and_dtype_decodes_through_the_kernel(tmp_path: Path, counted: Counter) -> None:
    rng = np.random.default_rng(0)
    n = 2 * codec.CHUNK_SYMBOLS + 5  # two whole chunks and a tail of 5
    scaled = rng.standard_normal(n).astype(np.float32) * np.where(np.arange(n) < codec.CHUNK_SYMBOLS, 1.0, 1e-6)
    tensors = {
        "odd": ("U8", (3,), b"abc"),  # leaves the next stripes at unaligned places of their job's buffer
        "scaled": ("F32", (n,), scaled.astype(np.float32).tobytes()),  # a chunk with a table of its own
        "noise": ("BF16", (n,), (minilm.to_bf16(scaled[:codec.CHUNK_SYMBOLS]).tobytes()  # a raw chunk in a coded plane
                                 + rng.integers(0, 256, 2 * (n - codec.CHUNK_SYMBOLS), dtype=np.uint8).tobytes())),
        "zeros": ("F16", (7, 3), bytes(42)),  # constant planes
        "half": ("F16", (1001,), (rng.standard_normal(1001) * 0.02).astype(np.float16).tobytes()),
        "ids": ("I32", (257,), np.arange(257, dtype=np.int32).tobytes()),
    }
    src = tmp_path / "modes.safetensors"
    write(src, tensors, {"format": "pt"})
    archive = weightpack.pack(src, tmp_path / "modes.wpk")
    counted.clear()
    assert weightpack.unpack(archive, tmp_path / "back.safetensors").read_bytes() == src.read_bytes()
    with ArchiveReader(archive, None) as reader:
        planes = [p for s in reader.index.segments if s.kind == KIND_TENSOR for p in s.planes]
    modes = {c.mode for p in planes for c in p.chunks}
    assert {CHUNK_PLANE, CHUNK_OWN, CHUNK_RAW} <= modes and any(p.codec == CODEC_CONST for p in planes)
    assert counted["kernel"] > 0 and counted["plane chunk"] == 1  # the header alone went plane by plane


def test_a_damaged_stripe_names_its_tensor_and_stripe(bf16_file: Path, tmp_path: Path) -> None:
    archive = weightpack.pack(bf16_file, tmp_path / "m.wpk")
    with ArchiveReader(archive, None) as reader:
        seg = max((s for s in reader.index.segments if s.kind == KIND_TENSOR), key=lambda s: s.count)
        seg.hashes[0] ^= 1
        with pytest.raises(weightpack.IntegrityError, match=f"tensor '{seg.name}': stripe 0 does not match"):
            reader.segment_bytes(seg)
