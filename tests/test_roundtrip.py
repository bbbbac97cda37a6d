"""Packing then unpacking restores byte-identical files: real MiniLM, folders, shards, any tensor layout."""

from __future__ import annotations

import json
import math
import struct
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import weightpack
from weightpack import api, codec, dtypes, minilm, wpkfile
from weightpack.container import read_index
from weightpack.safetensors_layout import write
from weightpack.wpkfile import JOB_BYTES, ArchiveReader, pack_stream

from .conftest import sha256_tree


@pytest.mark.parametrize("dtype", minilm.DTYPES)
def test_real_minilm_file_round_trips_byte_identical(minilm_dirs: dict[str, Path], tmp_path: Path, dtype: str) -> None:
    src = minilm_dirs[dtype] / minilm.CHECKPOINT
    packed = weightpack.pack(src, tmp_path / "m.wpk")
    restored = weightpack.unpack(packed, tmp_path / "m.safetensors")
    assert sha256_tree(restored)["m.safetensors"] == sha256_tree(src)[minilm.CHECKPOINT]
    limit = {"F32": 0.83, "BF16": 0.67, "F16": 0.86}[dtype]
    assert packed.stat().st_size < limit * src.stat().st_size


def test_real_minilm_folder_round_trips_with_config_and_tokenizer(minilm_dirs: dict[str, Path], tmp_path: Path) -> None:
    src = minilm_dirs["BF16"]
    packed = weightpack.pack(src, tmp_path / "packed")
    assert (packed / "model.wpk").is_file() and not (packed / "model.safetensors").exists()
    assert (packed / "1_Pooling" / "config.json").read_bytes() == (src / "1_Pooling" / "config.json").read_bytes()
    restored = weightpack.unpack(packed, tmp_path / "restored")
    assert sha256_tree(restored) == sha256_tree(src)


def test_sharded_folder_with_index_json_round_trips(minilm_dirs: dict[str, Path], tmp_path: Path) -> None:
    tensors = minilm.load(minilm_dirs["BF16"] / minilm.CHECKPOINT)
    src = tmp_path / "sharded"
    src.mkdir()
    names = list(tensors)
    weight_map = {}
    for k, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        shard = f"model-{k + 1:05d}-of-00002.safetensors"
        write(src / shard, {n: tensors[n] for n in part}, {"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    (src / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    packed = weightpack.pack(src, tmp_path / "packed")
    assert sorted(p.name for p in packed.iterdir()) == [
        "model-00001-of-00002.wpk", "model-00002-of-00002.wpk", "model.safetensors.index.json", "weightpack.json"]
    entries = json.loads((packed / "weightpack.json").read_text())["archives"]
    assert entries["model-00001-of-00002.wpk"]["original"] == "model-00001-of-00002.safetensors"
    assert sha256_tree(weightpack.unpack(packed, tmp_path / "restored")) == sha256_tree(src)


def _two_shard_source(minilm_dirs: dict[str, Path], tmp_path: Path) -> Path:
    """MiniLM BF16 split into two shards, in ``tmp_path / "two"``."""
    tensors = minilm.load(minilm_dirs["BF16"] / minilm.CHECKPOINT)
    src = tmp_path / "two"
    src.mkdir()
    names = list(tensors)
    for k, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        write(src / f"model-{k + 1}.safetensors", {n: tensors[n] for n in part}, {"format": "pt"})
    return src


def _two_shards(minilm_dirs: dict[str, Path], tmp_path: Path) -> Path:
    """Those two shards packed, in ``tmp_path / "packed"``."""
    return weightpack.pack(_two_shard_source(minilm_dirs, tmp_path), tmp_path / "packed")


def _both_at_once(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make ``api.<name>`` wait until a second call of it is under way (an error after 10 s otherwise)."""
    together, original = threading.Barrier(2, timeout=10), getattr(api, name)

    def waiting(*args, **kwargs) -> object:
        together.wait()
        return original(*args, **kwargs)
    monkeypatch.setattr(api, name, waiting)


def test_the_shards_of_a_folder_are_restored_side_by_side(minilm_dirs: dict[str, Path], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Two archives at once share the threads: one shard's last jobs, index and fsync overlap the next
    one's decoding, and two files are written at once (writes to one file take turns on its lock)."""
    packed = _two_shards(minilm_dirs, tmp_path)
    _both_at_once(monkeypatch, "restore_archive")
    restored = weightpack.unpack(packed, tmp_path / "restored", threads=2)
    assert sha256_tree(restored) == sha256_tree(tmp_path / "two")


def test_the_shards_of_a_folder_are_verified_side_by_side(minilm_dirs: dict[str, Path], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Verifying checks each archive's sha256, one serial pass a file: two shards are checked at once."""
    packed = _two_shards(minilm_dirs, tmp_path)
    _both_at_once(monkeypatch, "verify_archive")
    assert weightpack.verify(packed, threads=2) == {"archives": 2, "files": 0}


def test_the_shards_of_a_folder_are_packed_side_by_side_into_the_same_bytes(
        minilm_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each archive's sha256 is one serial pass: two shards are packed at once, and write what packing one
    after the other writes."""
    src, one_by_one = _two_shard_source(minilm_dirs, tmp_path), tmp_path / "one_by_one"
    with monkeypatch.context() as m:
        m.setattr(api, "ARCHIVES_AT_ONCE", 1)
        weightpack.pack(src, one_by_one)
    _both_at_once(monkeypatch, "pack_archive")
    assert sha256_tree(weightpack.pack(src, tmp_path / "side_by_side", threads=2)) == sha256_tree(one_by_one)


def test_one_thread_handles_the_shards_one_after_the_other(minilm_dirs: dict[str, Path], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``-j 1`` means one thread's work: shards are packed, restored and verified one at a time."""
    src = _two_shard_source(minilm_dirs, tmp_path)
    running, most = [], []

    def counted(original):
        def call(*args, **kwargs) -> object:
            running.append(1)
            most.append(len(running))
            try:
                return original(*args, **kwargs)
            finally:
                running.pop()
        return call
    for name in ("pack_archive", "restore_archive", "verify_archive"):
        monkeypatch.setattr(api, name, counted(getattr(api, name)))
    packed = weightpack.pack(src, tmp_path / "one_thread", threads=1)
    weightpack.unpack(packed, tmp_path / "restored", threads=1)
    weightpack.verify(packed, threads=1)
    assert most == [1] * 6


def test_a_truncated_shard_is_named_and_nothing_is_left(minilm_dirs: dict[str, Path], tmp_path: Path) -> None:
    src = _two_shards(minilm_dirs, tmp_path).parent / "two"
    shard = src / "model-2.safetensors"
    shard.write_bytes(shard.read_bytes()[:-1000])  # its last tensor cut short
    with pytest.raises(weightpack.WeightpackError, match=r"model-2\.safetensors"):
        weightpack.pack(src, tmp_path / "again")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["packed", "two"]


def test_a_shard_failing_while_packed_stops_the_other(minilm_dirs: dict[str, Path], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    src = _two_shards(minilm_dirs, tmp_path).parent / "two"
    together, original, progressed = threading.Barrier(2, timeout=10), api.pack_archive, []

    def failing_second(src: Path, tmp: Path, pool, verify, progress, *args) -> object:
        together.wait()
        if src.name == "model-2.safetensors":
            raise weightpack.WeightpackError(f"{src}: the disk is full")
        return original(src, tmp, pool, verify, lambda n: (progressed.append(n), progress(n)), *args)
    monkeypatch.setattr(api, "pack_archive", failing_second)
    with pytest.raises(weightpack.WeightpackError, match=r"model-2\.safetensors: the disk is full"):
        weightpack.pack(src, tmp_path / "again", threads=2)
    assert sum(progressed) < (src / "model-1.safetensors").stat().st_size  # stopped before its end
    assert sorted(p.name for p in tmp_path.iterdir()) == ["packed", "two"]


def test_a_damaged_shard_stops_the_other_and_leaves_nothing(minilm_dirs: dict[str, Path], tmp_path: Path) -> None:
    packed = _two_shards(minilm_dirs, tmp_path)
    damaged = bytearray((packed / "model-2.wpk").read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF  # a chunk in the middle of the second shard
    (packed / "model-2.wpk").write_bytes(damaged)
    with pytest.raises(weightpack.IntegrityError, match=r"model-2\.wpk"):
        weightpack.unpack(packed, tmp_path / "restored")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["packed", "two"]
    with pytest.raises(weightpack.IntegrityError, match=r"model-2\.wpk"):
        weightpack.verify(packed)


def test_packing_is_deterministic(bf16_file: Path, tmp_path: Path) -> None:
    a = weightpack.pack(bf16_file, tmp_path / "a.wpk", threads=1)
    b = weightpack.pack(bf16_file, tmp_path / "b.wpk", threads=2)
    assert a.read_bytes() == b.read_bytes()


def test_default_names_mirror_each_other(bf16_file: Path, tmp_path: Path) -> None:
    src = tmp_path / "model.safetensors"
    src.write_bytes(bf16_file.read_bytes())
    packed = weightpack.pack(src)
    assert packed == tmp_path / "model.wpk"
    src.rename(tmp_path / "original.safetensors")
    assert weightpack.unpack(packed) == src
    assert src.read_bytes() == bf16_file.read_bytes()


# ---------------------------------------------------------------- any layout a safetensors file can have

shapes = st.lists(st.integers(0, 7), min_size=0, max_size=3).map(tuple)


@st.composite
def checkpoints(draw: st.DrawFn) -> tuple[dict, dict | None]:
    n = draw(st.integers(0, 5))
    tensors = {}
    for k in range(n):
        dtype = draw(st.sampled_from(sorted(dtypes.DTYPES)))
        shape = draw(shapes)
        size = math.prod(shape) * dtypes.itemsize(dtype)
        kind = draw(st.sampled_from(["random", "constant", "normal"]))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        if kind == "random":
            data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        elif kind == "constant":
            data = bytes([draw(st.integers(0, 255))]) * size
        else:
            data = rng.normal(0, 0.02, size).astype("<f8").tobytes()[:size]
        tensors[draw(st.text(min_size=1, max_size=12)) + f"#{k}"] = (dtype, shape, data)
    metadata = draw(st.none() | st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=3))
    return tensors, metadata


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(checkpoint=checkpoints(), gap=st.binary(max_size=9), tail=st.binary(max_size=9))
def test_any_checkpoint_layout_round_trips(tmp_path: Path, checkpoint: tuple, gap: bytes, tail: bytes) -> None:
    tensors, metadata = checkpoint
    path = tmp_path / "x.safetensors"
    write(path, tensors, metadata)
    if gap or tail:  # bytes no tensor owns: between the header and the data, and after the last tensor
        raw = path.read_bytes()
        (hlen,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + hlen])
        for entry in header.values():
            if "data_offsets" in entry:
                entry["data_offsets"] = [o + len(gap) for o in entry["data_offsets"]]
        text = json.dumps(header).encode()
        path.write_bytes(struct.pack("<Q", len(text)) + text + gap + raw[8 + hlen:] + tail)
    packed = weightpack.pack(path, tmp_path / "x.wpk", overwrite=True)
    restored = weightpack.unpack(packed, tmp_path / "y.safetensors", overwrite=True)
    assert restored.read_bytes() == path.read_bytes()


class _CountingPool(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(2)
        self.jobs = 0

    def submit(self, *args: object, **kwargs: object) -> Future:
        self.jobs += 1
        return super().submit(*args, **kwargs)


def test_small_tensors_are_coded_and_decoded_in_shared_jobs(tmp_path: Path) -> None:
    """Handing a job to a worker costs more than coding or decoding a bias: 600 small tensors (1.2 MB) are
    packed, restored and loaded in a job per ~JOB_BYTES of them, not in one job each."""
    rng = np.random.default_rng(0)
    tensors = {f"layer.{i}.bias": (rng.standard_normal(1000) * 0.02).astype(np.float16) for i in range(600)}
    src = tmp_path / "biases.safetensors"
    safetensors.numpy.save_file(tensors, src)
    wpk = tmp_path / "biases.wpk"
    jobs = math.ceil(src.stat().st_size / JOB_BYTES)
    with _CountingPool() as pool:
        with wpk.open("wb") as out:
            pack_stream(src, out, pool)
        assert pool.jobs <= jobs
        with ArchiveReader(wpk, pool) as reader:
            pool.jobs = 0
            reader.restore(None)
            assert pool.jobs <= jobs
            pool.jobs = 0
            loaded = dict(zip(reader.tensors, reader.segments_bytes(reader.tensors.values())))
            assert pool.jobs <= jobs
    assert all(loaded[name].view(np.float16).tolist() == t.tolist() for name, t in tensors.items())
    assert weightpack.unpack(wpk, tmp_path / "back.safetensors").read_bytes() == src.read_bytes()


@pytest.mark.parametrize("middle", ["zeros", "skewed"])
def test_a_low_mantissa_byte_stores_its_random_chunks_raw_and_codes_the_others(tmp_path: Path, middle: str) -> None:
    """An F32 tensor whose middle chunk's low mantissa byte is not random (zeros: a BF16 model cast up;
    or skewed): its random chunks are stored raw, known so from their samples, and the middle one is coded
    with the plane's table, fitted to it alone. Restored byte-identical."""
    c = codec.CHUNK_SYMBOLS
    rng = np.random.default_rng(1)
    words = rng.normal(0, 0.02, 3 * c).astype(np.float32).view(np.uint32)
    low = np.zeros(c, np.uint32) if middle == "zeros" else np.minimum(rng.geometric(0.2, c), 255).astype(np.uint32)
    words[c:2 * c] = (words[c:2 * c] & np.uint32(0xFFFFFF00)) | low
    src = tmp_path / "w.safetensors"
    safetensors.numpy.save_file({"w": words.view(np.float32)}, src)
    wpk = weightpack.pack(src, tmp_path / "w.wpk")
    assert weightpack.unpack(wpk, tmp_path / "back.safetensors").read_bytes() == src.read_bytes()
    with wpk.open("rb") as f:
        (tensor,) = [seg for seg in read_index(f, wpk.stat().st_size).segments if seg.name == "w"]
    low_byte = tensor.planes[-1]  # mantissa_0
    assert low_byte.codec == codec.CODEC_RANS and low_byte.params
    assert [chunk.mode for chunk in low_byte.chunks] == [codec.CHUNK_RAW, codec.CHUNK_PLANE, codec.CHUNK_RAW]
    assert tensor.planes[-2].codec == codec.CODEC_RAW  # mantissa_1: random throughout


def test_large_tensors_of_one_shape_reuse_planes_and_restore_byte_identical(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model's layers repeat their shapes: a large tensor's planes, once written, are reused for a later
    large tensor of its dtype and about its size (at most twice as large: a view of its start). Every
    tensor still restores exactly, each with its own content."""
    reused = []

    class Recording(wpkfile._PlaneBuffers):
        def take(self, dtype: str, count: int) -> list[np.ndarray]:
            planes = super().take(dtype, count)
            reused.append(planes[0].base is not None)  # kept planes come back as views, new ones do not
            return planes

    monkeypatch.setattr(wpkfile, "_PlaneBuffers", Recording)
    monkeypatch.setattr(wpkfile, "READ_AHEAD_BYTES", 0)  # as with tensors of 64 MB: only the next one read ahead
    rng = np.random.default_rng(3)
    n = wpkfile.READ_ELEMENTS
    sizes = [n + 5, 2 * n, n + 5, 2 * n, n + 1000]
    tensors = {f"layer.{i}.weight": (rng.standard_normal(size) * 10.0 ** -i).astype(np.float16)
               for i, size in enumerate(sizes)}  # scales differ: a tensor decoded from another's planes would show
    src = tmp_path / "layers.safetensors"
    safetensors.numpy.save_file(tensors, src)
    wpk = weightpack.pack(src, tmp_path / "layers.wpk", verify=False)
    assert reused == [False, False, True, True, False]  # the third and fourth reuse the first's and second's
    assert weightpack.unpack(wpk, tmp_path / "back.safetensors").read_bytes() == src.read_bytes()


def test_kept_planes_serve_a_tensor_of_their_dtype_and_at_least_half_their_size() -> None:
    buffers, n = wpkfile._PlaneBuffers(), wpkfile.READ_ELEMENTS
    first = buffers.take("F16", 2 * n)
    buffers.give("F16", first)
    again = buffers.take("F16", n + 1)  # a view of the kept planes' start
    assert all(a.base is b and a.size == n + 1 for a, b in zip(again, first))
    buffers.give("F16", again)  # kept whole again, not as the view
    assert buffers.take("BF16", n + 1)[0].base is None  # another dtype: new planes (and the kept ones dropped)
    buffers.give("F16", first)
    assert buffers.take("F16", n - 1)[0].base is None  # under half their size: new planes
    assert buffers.take("F16", 2 * n)[0] is not first[0]  # nothing kept any more
