"""GPU decoding (numba.cuda) gives exactly the CPU decoder's bytes, and refuses damage without going out of bounds.

In CI the kernels run in numba's CUDA simulator (set by conftest.py), where every out-of-bounds
index raises instead of reading stray memory: a kernel that ran here touched only its arrays. The
simulator runs each GPU thread as a Python thread, so the tensors are small; one test decodes a
wide chunk (16 lanes, 65536 symbols), the layout of every large tensor. On a GPU machine,
``NUMBA_ENABLE_CUDASIM=0 pytest tests/test_gpu.py`` runs the same tests on the hardware.
"""

from __future__ import annotations

import os
import sys
import threading
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import weightpack
from weightpack import gpu, rans
from weightpack.container import REF_COPY, REF_DELTA, REF_NONE
from weightpack.entropy import FrequencyTable, histogram
from weightpack.errors import FormatError, IntegrityError, WeightpackError
from weightpack.sources import BaseSet
from weightpack.wpkfile import ArchiveReader

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
# XXH64 multiplies modulo 2**64; the simulator does it with numpy scalars, which warn as they wrap
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")


@pytest.fixture(autouse=True)
def simulator_fit_for_barriers() -> Iterator[None]:
    """Two things the CUDA simulator needs for kernels whose threads meet at barriers.

    Its threads are Python threads: switching between them often makes each barrier 4x faster.
    And its ``cuda.shared.array`` creates a block's array on the first thread's call without a lock,
    so two threads starting together can each get an array of their own (a real race in
    numba-cuda 0.30's simulator, seen as garbage read from "shared" memory): the calls are
    serialised here, which is what a GPU's shared memory gives for free.
    """
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    patched = None
    if SIMULATED:
        from numba.cuda.simulator.kernelapi import FakeCUDAShared

        patched, lock = FakeCUDAShared.array, threading.Lock()

        def array(self: FakeCUDAShared, shape: int, dtype: object, alignment: None = None) -> np.ndarray:
            """The simulator's own rule (one array per source line of the kernel), under a lock."""
            caller = traceback.extract_stack(sys._getframe(1), limit=1)[0][0:2]
            with lock:
                if caller not in self._allocations:
                    self._allocations[caller] = np.empty(shape, np.dtype(dtype))  # kernels here pass numpy types
                return self._allocations[caller]
        FakeCUDAShared.array = array
    yield
    if patched is not None:
        FakeCUDAShared.array = patched
    sys.setswitchinterval(before)


def _decoded(path: Path, names: list[str] | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{name: (GPU bytes, CPU bytes)} of an archive's tensors."""
    with ArchiveReader(path, ThreadPoolExecutor(2)) as reader:
        names = names or sorted(reader.tensors)
        on_gpu = gpu.decode(reader, names)
        return {n: (on_gpu[n].copy_to_host(), reader.segment_bytes(reader.tensors[n])) for n in names}


def _packed(tmp_path: Path, tensors: dict[str, torch.Tensor], **pack: object) -> Path:
    save_file(tensors, tmp_path / "m.safetensors")
    return weightpack.pack(tmp_path / "m.safetensors", tmp_path / "m.wpk", **pack)


def test_every_dtype_and_plane_codec_decodes_bit_identical_to_the_cpu(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    tensors = {
        "bf16": torch.randn(2000, generator=g).to(torch.bfloat16),  # rANS exponent, raw low bits
        "f16_odd": torch.randn(7, 3, generator=g).half(),
        "f32": (torch.randn(600, generator=g) * 0.02),  # four planes, mantissa bytes raw
        "f64": torch.randn(50, generator=g, dtype=torch.float64),
        "i64": torch.arange(-40, 40),  # byte planes, most of them constant
        "u8": torch.randint(0, 7, (300,), generator=g, dtype=torch.uint8),
        "bool": torch.rand(90, generator=g) > 0.3,
        "f8": (torch.randn(128, generator=g) * 4).to(torch.float8_e4m3fn),
        "constant": torch.full((100,), 0.5).to(torch.bfloat16),  # constant planes
        "empty": torch.zeros(0, 3),
        "scalar": torch.tensor(3.0),
    }
    for name, (on_gpu, on_cpu) in _decoded(_packed(tmp_path, tensors)).items():
        assert np.array_equal(on_gpu, on_cpu), name
        assert on_cpu.tobytes() == tensors[name].reshape(-1).view(torch.uint8).numpy().tobytes(), name


def test_a_wide_chunk_of_16_lanes_decodes_bit_identical(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    path = _packed(tmp_path, {"w": torch.randn(rans.WIDE_MIN, generator=g).to(torch.bfloat16)})
    ((on_gpu, on_cpu),) = _decoded(path).values()
    assert np.array_equal(on_gpu, on_cpu)


def test_copies_and_deltas_decode_on_the_gpu_path_too(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(2)
    base = {"w": torch.randn(1500, generator=g).to(torch.bfloat16), "b": torch.randn(40, generator=g)}
    save_file(base, tmp_path / "base.safetensors")
    tuned = {"w": base["w"] + 0.01, "b": base["b"], "tied": base["w"].clone(), "w2": base["w"].clone()}
    (tmp_path / "t").mkdir()
    path = _packed(tmp_path / "t", tuned, base=tmp_path / "base.safetensors")
    with ArchiveReader(path, ThreadPoolExecutor(2), BaseSet(tmp_path / "base.safetensors", lambda p: None)) as reader:
        refs = {n: s.ref for n, s in reader.tensors.items()}
        on_gpu = gpu.decode(reader, sorted(reader.tensors))
        for name, seg in reader.tensors.items():
            assert np.array_equal(on_gpu[name].copy_to_host(), reader.segment_bytes(seg)), name
    # b: a copy of the base's; tied: stored whole (the base has no tensor of that name); w2: a copy of
    # tied, in this file (copied on the device); w: a delta to the base's (decoded on the CPU)
    assert refs == {"b": REF_COPY, "tied": REF_NONE, "w2": REF_COPY, "w": REF_DELTA}


def test_a_damaged_rans_chunk_is_refused_naming_the_tensor(tmp_path: Path) -> None:
    path = _packed(tmp_path, {"w": torch.randn(3000).to(torch.bfloat16)})
    with ArchiveReader(path, ThreadPoolExecutor(1)) as reader:
        chunk = reader.tensors["w"].planes[0].chunks[0]
    data = bytearray(path.read_bytes())
    data[chunk.offset + chunk.size // 2] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="tensor 'w'"):
        _decoded(path)


@pytest.mark.parametrize("seed", range(6))
def test_random_damage_to_stored_bytes_is_caught_and_never_read_out_of_bounds(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path = _packed(tmp_path, {"w": torch.randn(1200).to(torch.bfloat16), "h": torch.randn(300).half()})
    with ArchiveReader(path, ThreadPoolExecutor(1)) as reader:
        chunks = [c for s in reader.tensors.values() for p in s.planes for c in p.chunks]
    data = np.frombuffer(path.read_bytes(), np.uint8).copy()
    chunk = chunks[rng.integers(len(chunks))]
    hits = rng.integers(chunk.offset, chunk.offset + chunk.size, size=rng.integers(1, 8))
    data[hits] = rng.integers(0, 256, size=hits.size)
    path.write_bytes(data.tobytes())
    try:  # in the simulator an out-of-bounds index raises IndexError: the test fails on it
        decoded = _decoded(path)
    except (IntegrityError, FormatError) as exc:
        assert "tensor" in str(exc)
    else:  # the bytes hit changed nothing the decoder reads (e.g. unused renormalisation words)
        assert all(np.array_equal(a, b) for a, b in decoded.values())


def test_the_rans_kernel_refuses_hostile_chunk_descriptions_without_touching_other_memory() -> None:
    from numba import cuda

    from weightpack import rans_cuda

    symbols = np.random.default_rng(3).integers(0, 5, 400).astype(np.uint16)
    table = FrequencyTable.fit(histogram(symbols, 3))
    stream = np.empty(rans.max_stream_bytes(symbols.size), np.uint8)
    stream = stream[rans.encode(symbols, table.encoder_table, stream):]
    entries = table.decoder_entries()
    good = (0, stream.size, symbols.size, 0, 0, table.precision)
    hostile = [good,  # then: bytes past the payload, a table past the entries, output past the end,
               (0, stream.size + 2, symbols.size, 0, 0, table.precision),  # precision out of range,
               (0, stream.size, symbols.size, 0, 1, table.precision),  # negative offsets, too few bytes
               (0, stream.size, symbols.size, 1, 0, table.precision),
               (0, stream.size, symbols.size, 0, 0, 16), (-2, stream.size, symbols.size, 0, 0, table.precision),
               (0, 10, symbols.size, 0, 0, table.precision)]
    columns = [cuda.to_device(np.asarray(c, np.int64)) for c in zip(*hostile)]
    out = cuda.device_array(symbols.size, np.uint16)
    status = cuda.device_array(len(hostile), np.int8)
    rans_cuda.decode_rans[len(hostile), 4](cuda.to_device(stream), *columns, cuda.to_device(entries), out,
                                           status, rans.NARROW_LANES)
    assert status.copy_to_host().tolist() == [1, 0, 0, 0, 0, 0, 0]
    assert np.array_equal(out.copy_to_host(), symbols)


def test_device_cuda_without_a_usable_gpu_is_one_clear_error(tmp_path: Path) -> None:
    path = _packed(tmp_path, {"w": torch.randn(10)})
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(WeightpackError, match=r"^device='cuda': no usable CUDA GPU"):
        weightpack.load_file(path, device="cuda")
    with pytest.raises(WeightpackError, match="unsupported device 'tpu'"):
        weightpack.load_file(path, device="tpu")
    with pytest.raises(WeightpackError, match="use framework='pt'"):
        weightpack.load_file(path, framework="np", device="cuda")


@pytest.mark.skipif(SIMULATED or not torch.cuda.is_available(), reason="needs a real GPU and torch with CUDA")
def test_load_file_on_the_gpu_gives_the_cpu_tensors(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(4)
    tensors = {"w": torch.randn(300_000, generator=g).to(torch.bfloat16), "b": torch.randn(77, generator=g)}
    path = _packed(tmp_path, tensors)
    on_gpu = weightpack.load_file(path, device="cuda")
    for name, tensor in tensors.items():
        assert on_gpu[name].device.type == "cuda" and on_gpu[name].dtype == tensor.dtype
        assert torch.equal(on_gpu[name].cpu(), tensor)


def test_from_pretrained_onto_one_gpu_decodes_there_or_says_why_not(minilm_dirs: dict[str, Path]) -> None:
    transformers = pytest.importorskip("transformers")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    packed = weightpack.pack(minilm_dirs["F16"], minilm_dirs["F16"].with_name("gpu-test.wpk"), overwrite=True)
    for device_map in ("cuda", "cuda:0", {"": "cuda"}, 0):
        with pytest.raises(WeightpackError, match="no usable CUDA GPU"):
            weightpack.from_pretrained(transformers.AutoModel, packed, device_map=device_map)
