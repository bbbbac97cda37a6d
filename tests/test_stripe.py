"""Stripes of tensors stored whole decode a run at a time, by one read and one compiled call, with every
check of the plane-by-plane decoder: every chunk mode, every dtype it takes, any alignment in its output."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

import weightpack
from weightpack import codec, minilm, stripe
from weightpack.container import (
    CHUNK_OWN,
    CHUNK_PLANE,
    CHUNK_RAW,
    CODEC_CONST,
    KIND_TENSOR,
    PREAMBLE,
    read_index,
    write_index,
)
from weightpack.safetensors_layout import write
from weightpack.wpkfile import JOB_BYTES, ArchiveReader, job_bytes


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Calls of the stripe kernel, of archive reads for it, and of the plane-by-plane decoder."""
    calls: Counter = Counter()

    def counting(key: str, f):
        def wrapper(*args, **kwargs):
            calls[key] += 1
            return f(*args, **kwargs)
        return wrapper
    monkeypatch.setattr(stripe, "_decode_stripes", counting("kernel", stripe._decode_stripes))
    monkeypatch.setattr(ArchiveReader, "read_into", counting("read", ArchiveReader.read_into))
    monkeypatch.setattr(codec.PlaneDecoder, "chunk", counting("plane chunk", codec.PlaneDecoder.chunk))
    return calls


def test_a_job_of_stripes_is_one_read_and_one_kernel_call(minilm_dirs: dict[str, Path], tmp_path: Path,
                                                          counted: Counter) -> None:
    """Unpacking hands stripes to the workers in jobs of about JOB_BYTES; each job's stripes (two of a
    large BF16 tensor, dozens of small tensors) cost one read and one kernel call, so a worker gives the
    GIL up and takes it back a few times a job, not a few times a stripe."""
    src = minilm_dirs["BF16"] / minilm.CHECKPOINT
    archive = weightpack.pack(src, tmp_path / "m.wpk")
    counted.clear()
    with ArchiveReader(archive, None) as reader:
        reader.restore(None)
        stripes = sum(s.stripes for s in reader.index.segments if s.kind == KIND_TENSOR)
    jobs = -(-src.stat().st_size // JOB_BYTES)
    assert counted["kernel"] == counted["read"] <= jobs + 1 and counted["kernel"] < stripes / 2
    assert counted["plane chunk"] == 1  # the safetensors header, zstd-compressed


def test_decode_jobs_grow_with_the_threads() -> None:
    """A job's Python holds the GIL every thread shares, so on many threads jobs are larger (a MiB more for
    every four threads), as long as every thread still gets a few of them."""
    with ThreadPoolExecutor(2) as two, ThreadPoolExecutor(16) as sixteen, ThreadPoolExecutor(64) as many:
        assert job_bytes(1 << 34, None) == job_bytes(1 << 34, two) == JOB_BYTES
        assert job_bytes(1 << 34, sixteen) == 4 * JOB_BYTES
        assert job_bytes(1 << 34, many) == 8 * JOB_BYTES  # at most
        assert job_bytes(40 * JOB_BYTES, sixteen) == JOB_BYTES  # a small model: jobs for every thread


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


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.int16])
@pytest.mark.parametrize("at", [8, 3])
def test_a_stripe_anywhere_in_its_output_decodes_whole(tmp_path: Path, dtype: type, at: int) -> None:
    """A stripe placed on a word boundary but ending in its output's last bytes (which the output's word
    views do not cover), or off a word boundary (after an odd-sized tensor), is decoded aside and
    copied: every byte of it written, none around it."""
    src = tmp_path / "tail.safetensors"
    values = np.arange(3).astype(dtype)
    safetensors.numpy.save_file({"tail": values}, src)
    archive = weightpack.pack(src, tmp_path / "tail.wpk")
    with ArchiveReader(archive, None) as reader:
        (_, _, tail), = reader._stripes(reader.tensors["tail"])
        out = np.full(at + values.nbytes + 1, 0xAA, np.uint8)  # one byte after it, which must stay
        stripe.decode_run([(tail, at)], out[:at + values.nbytes])
    assert out[at:at + values.nbytes].tobytes() == values.tobytes()
    assert (out[:at] == 0xAA).all() and out[-1] == 0xAA


def test_chunks_in_any_order_in_the_archive_decode(tmp_path: Path) -> None:
    """weightpack writes a tensor's chunks stripe by stripe, so a run's chunks are read at once; an archive
    whose chunks lie in another order (another writer's, or rearranged) restores the same, each chunk
    read from where it lies."""
    values = (np.random.default_rng(1).standard_normal(3 * codec.CHUNK_SYMBOLS) * 0.02).astype(np.float32)
    src = tmp_path / "w.safetensors"
    safetensors.numpy.save_file({"w": values}, src)
    data = weightpack.pack(src, tmp_path / "w.wpk").read_bytes()
    with open(tmp_path / "w.wpk", "rb") as f:
        index = read_index(f, len(data))
    payload = bytearray(data[:PREAMBLE.size])
    for chunk in sorted((c for s in index.segments for p in s.planes for c in p.chunks), key=lambda c: -c.offset):
        piece, chunk.offset = data[chunk.offset:chunk.offset + chunk.size], len(payload)
        payload += piece  # last chunk first
    with open(tmp_path / "reversed.wpk", "wb") as f:
        f.write(payload)
        write_index(f, index, len(payload))
    assert weightpack.unpack(tmp_path / "reversed.wpk", tmp_path / "back.safetensors").read_bytes() == src.read_bytes()


def test_loading_one_stripe_decodes_it_alone(bf16_file: Path, tmp_path: Path, counted: Counter) -> None:
    archive = weightpack.pack(bf16_file, tmp_path / "m.wpk")
    with ArchiveReader(archive, None) as reader:
        seg = max((s for s in reader.index.segments if s.kind == KIND_TENSOR), key=lambda s: s.count)
        whole = reader.segment_bytes(seg)
        counted.clear()
        part = reader.segment_bytes(seg, seg.stripe + 3, seg.stripe + 10)
    assert counted["kernel"] == 1 and part.tobytes() == whole[(seg.stripe + 3) * 2:(seg.stripe + 10) * 2].tobytes()


def test_a_damaged_stripe_names_its_tensor_and_stripe(bf16_file: Path, tmp_path: Path) -> None:
    archive = weightpack.pack(bf16_file, tmp_path / "m.wpk")
    with ArchiveReader(archive, None) as reader:
        seg = max((s for s in reader.index.segments if s.kind == KIND_TENSOR), key=lambda s: s.count)
        seg.hashes[0] ^= 1
        with pytest.raises(weightpack.IntegrityError, match=f"tensor '{seg.name}': stripe 0 does not match"):
            reader.segment_bytes(seg)
