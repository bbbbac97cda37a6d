"""Decode archives on a GPU: tensors straight into device memory, checked there.

Every tensor stored whole is decoded by the kernels of ``rans_cuda`` in four launches per batch of
tensors: its rANS chunks, its raw and constant planes, the merge of its planes into words, and the
check of every stripe against its XXH64 (the same per-stripe checksums the CPU decoder checks). A
tensor stored as a copy of another of the same archive is copied on the device and checked the
same way. A delta to a base, or a copy from a sibling archive, is decoded on the CPU (its reference
lives in another file) and uploaded.

Tensors are taken in file order, in batches of about ``BATCH_BYTES`` of output. A batch's stored
bytes are read into a pinned buffer and copied on a CUDA stream; while the GPU decodes it, the next
batch is read and copied, and the batch before is checked and its buffers released: memory holds
two batches whatever the archive's size.

The chunks' checksums (of their stored bytes) are not checked on this path: each decoded byte is
checked by its stripe's XXH64 on the GPU, which catches damage to stored bytes too, whereas chunk
checksums would be a pass over the archive on the CPU. The decoder kernels are memory-safe on any bytes
(see ``rans_cuda``), so damage is reported, never acted on.

numba.cuda is imported only here, and this module only when ``device="cuda"`` is asked for.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from . import rans
from .container import (
    CHUNK_OWN,
    CHUNK_RAW,
    CODEC_CONST,
    CODEC_RAW,
    KIND_TENSOR,
    REF_COPY,
    REF_NONE,
    SELF,
    TRANSFORM_NONE,
    Segment,
)
from .dtypes import fields, itemsize
from .entropy import FrequencyTable
from .errors import FormatError, IntegrityError, WeightpackError, damage, damage_words
from .wpkfile import ArchiveReader

BATCH_BYTES = 1 << 28  # output bytes decoded per batch (two batches are in memory at a time)
MAX_SEGMENTS = 4096  # tensors per batch: a grid row each in the merge kernel (at most 65535)
ALIGN = 256  # each tensor starts this aligned in a batch's output buffer (any dtype's view is aligned)


def cuda_module():
    """numba.cuda, or one clear error saying why the GPU cannot be used."""
    try:
        from numba import cuda
    except ImportError as exc:  # pragma: no cover - numba-cuda missing
        raise WeightpackError(f"device='cuda' needs numba-cuda (pip install 'weightpack[gpu]'): {exc}") from None
    try:
        usable = cuda.is_available()
    except Exception as exc:  # the driver's own errors, whatever their type
        raise WeightpackError(f"device='cuda': the CUDA driver cannot be used: {exc}") from None
    if not usable:
        raise WeightpackError("device='cuda': no usable CUDA GPU (numba.cuda.is_available() is False)")
    return cuda


def _gpu_decodable(seg: Segment) -> bool:
    """A tensor stored whole with planes the GPU kernels decode (every valid one, unless it is a delta)."""
    return (seg.kind == KIND_TENSOR and seg.ref == REF_NONE
            and all(p.transform == TRANSFORM_NONE for p in seg.planes))


@dataclass
class _Plan:
    """One batch: the flat arrays the kernels take, built from the index on the CPU."""

    segments: list[Segment]
    lo: int = 0  # the batch's stored bytes: archive[lo:hi]
    hi: int = 0
    symbols: int = 0  # uint16 symbols of every plane of the batch
    out_bytes: int = 0
    out_at: dict[str, int] = field(default_factory=dict)
    rans: list[tuple[int, int, int, int, int, int]] = field(default_factory=list)  # src, size, count, dst, table, prec
    raw: list[tuple[int, int, int, int, int, int]] = field(default_factory=list)  # src, size, count, dst, bits, value
    where: list[str] = field(default_factory=list)  # per rANS then raw chunk: how errors name it
    entries: list[np.ndarray] = field(default_factory=list)
    merge: list[tuple[int, int, int, int, int, int]] = field(default_factory=list)  # dst, count, planes, size, e, rest
    plane_start: list[int] = field(default_factory=list)


def _plan(segments: list[Segment]) -> _Plan:
    plan = _Plan(segments)
    chunks = [c for seg in segments for p in seg.planes for c in p.chunks]
    plan.lo = min((c.offset for c in chunks), default=0)
    plan.hi = max((c.offset + c.size for c in chunks), default=0)
    n_entries = 0
    raw_where = []
    for seg in segments:
        plan.out_at[seg.name] = plan.out_bytes
        size, ebits, rest, _, _ = fields(seg.dtype)
        plan.merge.append((plan.out_bytes, seg.count, len(plan.plane_start), size, ebits, rest))
        plan.out_bytes += -(-seg.length // ALIGN) * ALIGN
        for j, plane in enumerate(seg.planes):
            where = f"tensor {seg.name!r} plane {j}"
            first = plan.symbols
            plan.plane_start.append(first)
            plan.symbols += seg.count
            if plane.codec == CODEC_CONST:
                value = int.from_bytes(plane.params, "little") if len(plane.params) == 2 else -1
                if not 0 <= value < 1 << plane.bits:
                    raise FormatError(f"{where}: invalid constant plane")
                plan.raw.append((0, 0, seg.count, first, 0, value))
                raw_where.append(f"{where}: invalid constant plane")
                continue
            shared = None
            for k, chunk in enumerate(plane.chunks):
                n = min(seg.stripe, seg.count - k * seg.stripe)
                dst = first + k * seg.stripe
                if plane.codec == CODEC_RAW or chunk.mode == CHUNK_RAW:
                    plan.raw.append((chunk.offset - plan.lo, chunk.size, n, dst, plane.bits, 0))
                    raw_where.append(damage_words("raw size", where, chunk.offset))
                    continue
                if chunk.mode == CHUNK_OWN:
                    table = _table(chunk.table, plane.bits, where)
                elif not plane.params:
                    raise damage("no table", where, chunk.offset)
                else:
                    shared = shared or _table(plane.params, plane.bits, where)
                    table = shared
                plan.entries.append(table.decoder_entries())
                plan.rans.append((chunk.offset - plan.lo, chunk.size, n, dst, n_entries, table.precision))
                plan.where.append(damage_words("stream", where, chunk.offset))
                n_entries += plan.entries[-1].size
    plan.where += raw_where
    return plan


def _table(data: bytes, bits: int, where: str) -> FrequencyTable:
    try:
        return FrequencyTable.from_bytes(data, bits)
    except FormatError as exc:
        raise FormatError(f"{where}: {exc}") from None


def _batches(segments: list[Segment]) -> list[list[Segment]]:
    batches: list[list[Segment]] = [[]]
    size = 0
    for seg in segments:
        if batches[-1] and (size + seg.length > BATCH_BYTES or len(batches[-1]) >= MAX_SEGMENTS):
            batches.append([])
            size = 0
        batches[-1].append(seg)
        size += seg.length
    return [b for b in batches if b]


Check = tuple[object, list[str], type]  # a device status array (1 ok, 0 failed), what each entry is, the error


class _Stripes:
    """Stripes to check on the device: where each lies in an output buffer, its seed and its XXH64."""

    def __init__(self) -> None:
        self.start: list[int] = []
        self.length: list[int] = []
        self.seed: list[int] = []
        self.expected: list[int] = []
        self.where: list[str] = []

    def add(self, seg: Segment, at: int) -> None:
        size = itemsize(seg.dtype)
        for k, expected in enumerate(seg.hashes):
            self.start.append(at + k * seg.stripe * size)
            self.length.append(min(seg.stripe, seg.count - k * seg.stripe) * size)
            self.seed.append(seg.start + k * seg.stripe * size)
            self.expected.append(expected)
            self.where.append(damage_words("stripe", f"tensor {seg.name!r}", k=k))

    def launch(self, cuda, out, stream) -> Check:
        from . import rans_cuda

        status = cuda.device_array(max(len(self.start), 1), np.int8, stream=stream)
        if self.start:
            arrays = [cuda.to_device(np.asarray(a, dtype), stream=stream) for a, dtype in
                      ((self.start, np.int64), (self.length, np.int64), (self.seed, np.uint64),
                       (self.expected, np.uint64))]
            per_block = min(rans_cuda.STRIPES_PER_BLOCK, len(self.start))
            rans_cuda.check_stripes[-(-len(self.start) // per_block), 4 * per_block, stream](out, *arrays, status)
        return status, self.where, IntegrityError


def decode(reader: ArchiveReader, names: Iterable[str], device: int = 0) -> dict[str, object]:
    """The tensors ``names`` of an open archive as numba device arrays (uint8: their bytes) on GPU
    number ``device``, checked. Raises IntegrityError / FormatError naming the tensor if any chunk
    or stripe fails.
    """
    cuda = cuda_module()
    with cuda.gpus[device]:
        return _decode(cuda, reader, list(names))


def _decode(cuda, reader: ArchiveReader, names: list[str]) -> dict[str, object]:
    wanted = [reader.tensors[n] for n in names]
    copies = [s for s in wanted if s.ref == REF_COPY and s.source == SELF]
    needed = {s.name: s for s in wanted if s not in copies}
    needed.update({s.ref_name: reader.tensors[s.ref_name] for s in copies})
    on_gpu = sorted((s for s in needed.values() if _gpu_decodable(s)), key=lambda s: s.start)
    result: dict[str, object] = {}
    stream = cuda.stream()
    pending: list[_InFlight] = []
    pinned: list[object] = [None, None]
    for b, batch in enumerate(_batches(on_gpu)):
        plan = _plan(batch)
        if len(pending) == 2:
            pending.pop(0).finish()  # the batch before last: its pinned buffer is free again
        pinned[b % 2] = _stage(cuda, reader, plan, pinned[b % 2])
        flight = _launch(cuda, plan, pinned[b % 2], stream)
        pending.append(flight)
        for seg in batch:
            at = plan.out_at[seg.name]
            result[seg.name] = flight.out[at:at + seg.length]
    while pending:
        pending.pop(0).finish()
    for seg in needed.values():
        if not _gpu_decodable(seg):  # a delta or a sibling's copy: its reference is in another file
            result[seg.name] = cuda.to_device(reader.segment_bytes(seg), stream=stream)
    for seg in copies:  # copied on the device, then checked at its own place (the seeds are its offsets)
        copy = cuda.device_array(seg.length, np.uint8, stream=stream)
        copy.copy_to_device(result[seg.ref_name], stream=stream)
        result[seg.name] = copy
        stripes = _Stripes()
        stripes.add(seg, 0)
        _InFlight(cuda, stream, copy, [stripes.launch(cuda, copy, stream)], []).finish()
    stream.synchronize()
    return {n: result[n] for n in names}


class _InFlight:
    """A batch queued on the stream: its output, its checks, and the buffers its kernels still use."""

    def __init__(self, cuda, stream, out, checks: list[Check], keep: list[object]) -> None:
        self.out, self.checks, self._keep = out, checks, keep
        self._done = cuda.event()
        self._done.record(stream)

    def finish(self) -> None:
        """Wait for the batch, release its buffers, raise the first failure its kernels reported."""
        self._done.synchronize()
        self._keep = []
        for status, where, error in self.checks:
            flags = status.copy_to_host()
            bad = np.flatnonzero(flags[:len(where)] == 0)
            if bad.size:
                raise error(where[bad[0]])


def _stage(cuda, reader: ArchiveReader, plan: _Plan, buffer):
    """The batch's stored bytes in a pinned host buffer (reused when large enough)."""
    size = plan.hi - plan.lo
    if buffer is None or buffer.size < size:
        buffer = cuda.pinned_array(max(size, 1), np.uint8)
    buffer[:size] = reader.read(plan.lo, size)
    return buffer


def _columns(cuda, rows: list[tuple[int, ...]], stream) -> list[object]:
    return [cuda.to_device(np.ascontiguousarray(c, np.int64), stream=stream) for c in zip(*rows)]


def _launch(cuda, plan: _Plan, pinned, stream) -> _InFlight:
    """Copy a batch's bytes to the device and queue its four kernels."""
    from . import rans_cuda

    payload = cuda.to_device(pinned[:max(plan.hi - plan.lo, 1)], stream=stream)
    symbols = cuda.device_array(max(plan.symbols, 1), np.uint16, stream=stream)
    out = cuda.device_array(max(plan.out_bytes, 1), np.uint8, stream=stream)
    checks: list[Check] = []
    keep: list[object] = [payload, symbols]
    if plan.rans:
        entries = cuda.to_device(np.concatenate(plan.entries), stream=stream)
        keep.append(entries)
        for width in (rans.NARROW_LANES, rans.WIDE_LANES):  # each chunk decoded by one thread per lane
            picked = [k for k, r in enumerate(plan.rans) if rans.lanes(r[2]) == width]
            if not picked:
                continue
            columns = _columns(cuda, [plan.rans[k] for k in picked], stream)
            status = cuda.device_array(len(picked), np.int8, stream=stream)
            per_block = min(rans_cuda.BLOCK_THREADS // width, len(picked))
            rans_cuda.decode_rans[-(-len(picked) // per_block), per_block * width, stream](
                payload, *columns, entries, symbols, status, width)
            checks.append((status, [plan.where[k] for k in picked], IntegrityError))
            keep += columns
    if plan.raw:
        columns = _columns(cuda, plan.raw, stream)
        status = cuda.device_array(len(plan.raw), np.int8, stream=stream)
        grid = (_row_blocks(max(r[2] for r in plan.raw)), len(plan.raw))
        rans_cuda.unpack_raw[grid, rans_cuda.THREADS, stream](payload, *columns, symbols, status)
        checks.append((status, plan.where[len(plan.rans):], FormatError))
        keep += columns
    starts = cuda.to_device(np.asarray(plan.plane_start or [0], np.int64), stream=stream)
    columns = _columns(cuda, plan.merge, stream)
    grid = (_row_blocks(max(m[1] for m in plan.merge)), len(plan.merge))
    rans_cuda.merge_planes[grid, rans_cuda.THREADS, stream](symbols, starts, *columns, out)
    keep += [starts, *columns]
    stripes = _Stripes()
    for seg in plan.segments:
        stripes.add(seg, plan.out_at[seg.name])
    checks.append(stripes.launch(cuda, out, stream))
    return _InFlight(cuda, stream, out, checks, keep)


def _row_blocks(count: int) -> int:
    """Blocks along a row of an element-wise kernel (the kernels stride over what a row leaves).

    In numba's CUDA simulator (the tests' GPU), where every GPU thread is a Python thread made for the
    launch, one block a row: the same kernel code, its striding loop included, simulated several times
    faster than a thread per element."""
    from numba import config

    from .rans_cuda import THREADS

    return 1 if config.ENABLE_CUDASIM else min(max(-(-count // THREADS), 1), 1024)
