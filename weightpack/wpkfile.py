"""One checkpoint <-> one .wpk: pack a safetensors file into an archive stream, read an archive back.

Packing walks the file in order as a list of segments (verbatim header bytes, each tensor's data,
any gaps), so the concatenation of the decoded segments is the original file, byte for byte. Input
is read a tensor ahead of the one being coded: memory stays bounded by about two of the largest tensor.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np

from . import codec, dtypes, planes
from .atomic import start_writeback
from .checksum import stripe_hash
from .container import (
    KIND_BYTES,
    KIND_TENSOR,
    PREAMBLE,
    REF_COPY,
    REF_DELTA,
    REF_NONE,
    SELF,
    SOURCE_BASE,
    SOURCE_SIBLING,
    TRANSFORM_NONE,
    TRANSFORM_WORD_SUB,
    Chunk,
    Index,
    PlaneRecord,
    Segment,
    Source,
    read_index,
    write_index,
    write_preamble,
)
from .entropy import entropy_bits, histogram
from .errors import FormatError, IntegrityError, WeightpackError, damage
from .parallel import WINDOW_PER_THREAD, ordered_map, thread_count
from .safetensors_layout import TensorEntry, read_layout
from .sources import BaseSet, Dedup, Stored, read_exact, read_exact_into
from .stripe import Stripe, StripeDecoder, decode_run
from .stripe import warm_up as warm_up_stripes

Progress = Callable[[int], None]


def _spans(src: Path) -> Iterator[tuple[int, int, TensorEntry | None]]:
    """(start, end, tensor entry or None for verbatim bytes) covering the whole file in order."""
    lay = read_layout(src)
    yield 0, lay.data_start, None
    pos = lay.data_start
    for t in lay.tensors:
        if t.start > pos:
            yield pos, t.start, None
        yield t.start, t.end, t
        pos = t.end
    if pos < lay.file_size:
        yield pos, lay.file_size, None


class _Sources:
    """The sources list of an archive being written: each referenced file once, in first-use order."""

    def __init__(self) -> None:
        self.list: list[Source] = []

    def index(self, kind: int, name: str, sha: bytes) -> int:
        for k, s in enumerate(self.list):
            if s.kind == kind and s.sha256 == sha:
                return k
        if len(self.list) >= SELF:
            raise WeightpackError("too many referenced files (at most 254)")
        self.list.append(Source(kind, name, sha))
        return len(self.list) - 1


Coded = tuple[list[PlaneRecord], Iterable[codec.Stripe]]  # a segment's plane records and its stripes
PARALLEL_CHUNKS = 4  # tensors with more chunks than this spread their chunks over the pool
READ_ELEMENTS = codec.CHUNK_SYMBOLS * PARALLEL_CHUNKS  # large tensors are read and split this much at a time
WRITEBACK_BYTES = 1 << 23  # the archive's pages are handed to the disk every 8 MiB written

T = TypeVar("T")

# Work goes to the threads in jobs of at least this many bytes: runs of stripes to decode (unpack,
# loading), runs of small tensors to read and code (pack). Handing a job to a worker costs ~150 us
# here whatever its size (its future, waking the worker, and the GIL changing hands at each of its
# kernels' calls while the main thread runs too): one job per stripe made a bias of 384 elements cost
# 4x its decoding, and MiniLM has 66 of them.
JOB_BYTES = 1 << 20
MAX_JOB_BYTES = 1 << 23
THREADS_PER_MIB = 4  # a decode's jobs grow by a MiB for every four threads beyond four
MIN_JOBS_PER_THREAD = 4


def job_bytes(total: int, pool: Executor | None) -> int:
    """The size of a decode's jobs over ``total`` bytes on ``pool``'s threads: ``JOB_BYTES`` on up to four
    threads, a MiB more for every four more (``MAX_JOB_BYTES`` at most), but small enough that each
    thread gets a few jobs.

    Each job's Python (handing it over, planning its stripes, its read and its write) holds the GIL,
    which every decoding thread shares: the GIL a decode needs grows with the threads over the job's
    size, so jobs grow with the threads. On two threads, emulating the 4 MiB jobs of sixteen, a 1.18 GiB
    BF16 file held the GIL 130 ms instead of 200 (*Where a many-core decode waits* in
    benchmarks/RESULTS.md). On few threads small jobs are faster: a job's chunks and output then stay
    in the core's cache between its read, its decoding and its write.
    """
    threads = thread_count(pool)
    size = min(MAX_JOB_BYTES, JOB_BYTES * max(1, threads // THREADS_PER_MIB))
    return max(JOB_BYTES, min(size, total // (MIN_JOBS_PER_THREAD * threads)))


def _grouped(items: Iterable[T], nbytes: Callable[[T], int], at_least: int = JOB_BYTES) -> Iterator[list[T]]:
    """Consecutive ``items`` in groups of at least ``at_least`` bytes (the last one may hold less)."""
    group, size = [], 0
    for item in items:
        group.append(item)
        size += nbytes(item)
        if size >= at_least:
            yield group
            group, size = [], 0
    if group:
        yield group


class _TensorInput:
    """One tensor being packed: its file entry, dedup key, a reader for its bytes, and (computed where
    first asked for: on a coding thread for a tensor coded whole) its planes and stripe checksums."""

    def __init__(self, tensor: TensorEntry, key: int, read: Callable[[int, int], np.ndarray],
                 data: np.ndarray | None = None, planes: list[np.ndarray] | None = None,
                 hashes: list[int] | None = None, counts: list[codec.ChunkCounts] | None = None) -> None:
        self.tensor, self.key, self.read = tensor, key, read  # key: see dedup_key
        self._data, self._planes, self._hashes = data, planes, hashes
        self.counts = counts  # each plane's chunk histograms, where counted while reading (codec.encode_planes)

    @property
    def planes(self) -> list[np.ndarray]:
        if self._planes is None:
            self._planes = planes.split(self._data, self.tensor.dtype)
        return self._planes

    @property
    def hashes(self) -> list[int]:
        if self._hashes is None:
            self._hashes = _stripe_hashes(self._data, codec.CHUNK_SYMBOLS * dtypes.itemsize(self.tensor.dtype),
                                          self.tensor.start)
        return self._hashes


def _stripe_hashes(data: np.ndarray, stripe_bytes: int, offset: int) -> list[int]:
    """Checksums of the stripes of ``data``, which starts at ``offset`` of the file (and on a stripe)."""
    return [stripe_hash(data[a:a + stripe_bytes], offset + a) for a in range(0, data.size, stripe_bytes)]


def _reader(fd: int, tensor: TensorEntry) -> Callable[[int, int], np.ndarray]:
    """``read(a, b)``: bytes ``a`` to ``b`` of a tensor of the file open as ``fd``."""
    return lambda a, b: read_exact(fd, tensor.start + a, b - a)


def _whole_tensor(fd: int, tensor: TensorEntry, data: np.ndarray) -> _TensorInput:
    """A tensor read whole (``data``, its bytes): split and checksummed later, by the thread that codes it."""
    return _TensorInput(tensor, dedup_key(data), _reader(fd, tensor), data=data)


class _PlaneBuffers:
    """The planes of the large tensor written last, kept for a later large tensor of the same dtype and
    about its size (a model's layers repeat their shapes). A fresh array of hundreds of MB has each of
    its pages zeroed by the OS on first touch: reusing them took 5% off the CPU of packing a 1.8 GiB BF16
    checkpoint of six layers (RESULTS.md).

    One set at most is kept, and used for a tensor of at least half its size (a view of its start), so
    that the largest tensor's planes are not held for the rest of the file; a tensor it does not fit
    drops it. Memory then never holds more planes than without it. Taken on the reading thread, given
    back on the writing one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: tuple[str, list[np.ndarray]] | None = None

    def take(self, dtype: str, count: int) -> list[np.ndarray]:
        """Planes for ``count`` elements of ``dtype``: the kept set if it fits, else new arrays."""
        with self._lock:
            free, self._free = self._free, None
        if free is not None and free[0] == dtype and count <= free[1][0].size <= 2 * count:
            return [array[:count] for array in free[1]]
        return [np.empty(count, spec.symbol_dtype) for spec in dtypes.layout(dtype)]

    def give(self, dtype: str, arrays: list[np.ndarray]) -> None:
        """Hand back the planes of a tensor that is written: nothing reads or writes them any more."""
        with self._lock:
            self._free = dtype, [array if array.base is None else array.base for array in arrays]


def _read_in_blocks(fd: int, tensor: TensorEntry, digest: _Sha256Behind, pool: Executor | None,
                    buffers: _PlaneBuffers | None = None) -> _TensorInput:
    """Read a large tensor, hashing it: read, checksummed and split a block at a time, the blocks side by
    side on ``pool``, so that only its planes are held (about its size), never its bytes and its planes
    together. The sha256 is fed here, in file order.
    """
    size, count = dtypes.itemsize(tensor.dtype), (tensor.end - tensor.start) // dtypes.itemsize(tensor.dtype)
    read = _reader(fd, tensor)
    specs = dtypes.layout(tensor.dtype)
    arrays = (buffers or _PlaneBuffers()).take(tensor.dtype, count)
    counts = [codec.ChunkCounts.zeros(count, spec) for spec in specs]

    def block(first: int) -> tuple[np.ndarray, list[int]]:
        end = min(first + READ_ELEMENTS, count)
        data = read(first * size, end * size)
        planes.split_into(data, tensor.dtype, [array[first:end] for array in arrays])
        rows = slice(first // codec.CHUNK_SYMBOLS, -(-end // codec.CHUNK_SYMBOLS))  # a block is whole chunks
        for array, plane_counts in zip(arrays, counts):
            plane_counts.count(array[first:end], rows)
        return data, _stripe_hashes(data, codec.CHUNK_SYMBOLS * size, tensor.start + first * size)
    key, hashes = 0, []
    blocks = ordered_map(pool, (functools.partial(block, first) for first in range(0, count, READ_ELEMENTS)))
    for k, (data, block_hashes) in enumerate(blocks):
        digest.update(data)
        if k == 0:
            key = dedup_key(data)
        hashes += block_hashes
    return _TensorInput(tensor, key, read, planes=arrays, hashes=hashes, counts=counts)


def _large(span: tuple[int, int, TensorEntry | None]) -> bool:
    """Whether a span is coded with its chunks spread over the pool (a tensor of it is read in blocks)."""
    start, end, tensor = span
    return (end - start) // (dtypes.itemsize(tensor.dtype) if tensor else 1) > READ_ELEMENTS


DEDUP_KEY_BYTES = 1 << 16


def dedup_key(data: np.ndarray) -> int:
    """The key under which ``sources.Dedup`` files a tensor (with its size): XXH64 of its first
    ``DEDUP_KEY_BYTES`` bytes. A key for finding candidates, not a proof: Dedup compares candidates
    byte for byte. 64 KiB, not the whole first block of 1 Mi elements it once hashed: that was a
    second pass over most of a small model's bytes (~4% of packing MiniLM F32). Two different tensors
    of one size whose first 64 KiB agree cost one byte comparison more, nothing else."""
    return stripe_hash(data[:DEDUP_KEY_BYTES], 0)


def dedup_keys(src: Path) -> list[tuple[TensorEntry, int]]:
    """Every tensor of a safetensors file with its dedup key, as packing computes it: what a shard
    packed apart on a cluster must know of the shards before it to store the same copies a
    one-machine pack stores."""
    with open(src, "rb") as f:
        return [(t, dedup_key(read_exact(f.fileno(), t.start, min(t.end - t.start, DEDUP_KEY_BYTES))))
                for t in read_layout(src).tensors]


def _tensor_segment(src: Path, item: _TensorInput, base: BaseSet | None, dedup: Dedup | None, archive: str,
                    sources: _Sources) -> tuple[Segment, Callable[[Executor | None], Coded]]:
    """The segment of one tensor (a copy of one seen before, a delta to the base, or coded whole),
    and the coding work still to do, as a function of the executor to spread its chunks over."""
    tensor = item.tensor
    seg = Segment(KIND_TENSOR, tensor.end - tensor.start, [], tensor.name, tensor.dtype, tensor.shape,
                  stripe=codec.CHUNK_SYMBOLS)
    seen = dedup.find(tensor, item.key, item.read) if dedup is not None else None
    if seen is not None:
        seg.ref, seg.ref_name, seg.hashes = REF_COPY, seen.tensor.name, item.hashes
        if seen.archive != archive:
            rel = os.path.relpath(seen.archive, start=os.path.dirname(archive) or ".")
            seg.source = sources.index(SOURCE_SIBLING, Path(rel).as_posix(), dedup.sha256[seen.archive])
        return seg, lambda pool: ([], [])
    if dedup is not None:
        dedup.add(item.key, Stored(archive, src, tensor))
    specs = dtypes.layout(tensor.dtype)
    base_file = base.match(tensor.name, tensor.dtype, tensor.shape) if base is not None else None
    coded_planes, transforms = None, [TRANSFORM_NONE] * len(specs)  # None: the tensor's own planes
    if base_file is not None:
        seg.source = sources.index(SOURCE_BASE, base.names[base_file], base_file.sha256)
        seg.ref_name = tensor.name
        data = base_file.tensor_bytes(tensor.name, 0, seg.count)
        reference = planes.split(data, tensor.dtype)
        if all(np.array_equal(r, p) for r, p in zip(reference, item.planes)):
            seg.ref, seg.hashes = REF_COPY, item.hashes
            return seg, lambda pool: ([], [])
        seg.ref = REF_DELTA
        # Two delta models; the one with the lower order-0 entropy is coded.
        best = [codec.best_transform(p, r, s.bits) for p, r, s in zip(item.planes, reference, specs)]
        delta = planes.split(codec.word_difference(planes.merge(item.planes, tensor.dtype), data,
                                                   dtypes.itemsize(tensor.dtype)), tensor.dtype)
        if sum(entropy_bits(histogram(p, s.bits)) for p, s in zip(delta, specs)) < sum(b[2] for b in best):
            coded_planes, transforms = delta, [TRANSFORM_WORD_SUB] * len(specs)
        else:
            coded_planes, transforms = [b[1] for b in best], [b[0] for b in best]

    def code(pool: Executor | None) -> Coded:
        """Every plane's table fitted side by side (on the pool if any), then their stripes, lazily."""
        seg.hashes = item.hashes
        return codec.encode_planes(coded_planes or item.planes, specs, transforms, pool,
                                   None if coded_planes else item.counts)
    return seg, code


def pack_stream(src: Path, out: BinaryIO, pool: Executor, progress: Progress = lambda n: None,
                base: BaseSet | None = None, dedup: Dedup | None = None, archive: str = "") -> Index:
    """Write the .wpk of safetensors file ``src`` to ``out`` (positioned at 0); return its index.

    ``base``: code tensors matching a base tensor (name, dtype, shape) as a delta to it. ``dedup``:
    store tensors identical to one stored before (in this file, or in an earlier archive of the
    same pack run; ``archive`` is this one's path in the packed folder) as a copy of it.

    Small tensors are coded whole on worker threads, several side by side; a large tensor is coded
    with its chunks spread over the pool and written as they come. Output is in file order either
    way, and memory holds the planes of the tensor being coded and of the next one (read meanwhile, see
    ``_read_ahead``) plus a window of small tensors and chunks.
    """
    spans = list(_spans(src))
    with _Sha256Behind() as digest:
        return _pack_spans(src, spans, digest, out, pool, progress, base, dedup, archive)


def _pack_spans(src: Path, spans: list, digest: _Sha256Behind, out: BinaryIO, pool: Executor, progress: Progress,
                base: BaseSet | None, dedup: Dedup | None, archive: str) -> Index:
    segments: list[Segment] = []
    sources = _Sources()
    pending: deque[tuple[list[Segment], Future]] = deque()
    write_preamble(out)
    offset = written_back = PREAMBLE.size

    def emit(seg: Segment, coded: Coded) -> None:
        """Write a segment's chunks stripe by stripe (chunk k of every plane, then k + 1): the bytes a
        stripe decodes from are contiguous, so a reader can decode it as soon as they have arrived."""
        nonlocal offset, written_back
        seg.planes, stripes = coded
        for stripe in stripes:
            for record, c in zip(seg.planes, stripe):
                if c is not None:
                    record.chunks.append(Chunk(offset, len(c.payload), c.checksum, c.mode, c.table))
                    out.write(c.payload)
                    offset += len(c.payload)
        if offset - written_back >= WRITEBACK_BYTES:  # start the disk write early: the final fsync then waits less
            out.flush()
            start_writeback(out.fileno(), written_back, offset - written_back)
            written_back = offset
        segments.append(seg)

    def flush(limit: int) -> None:
        while len(pending) > limit:
            segs, future = pending.popleft()
            for seg, coded in zip(segs, future.result()):
                emit(seg, coded)

    def code_small(codes: list[Callable[[Executor | None], Coded]]) -> list[Coded]:
        """Code small segments whole, one after the other, on the worker running this (chunks materialised here)."""
        return [(records, list(stripes)) for records, stripes in (code(None) for code in codes)]

    # Small segments are coded in the runs they are read in (``_grouped_spans``): a run is handed to a worker
    # as one job once its last span has arrived, as handing a job over costs more than coding a bias.
    run_ends = {group[-1][1] for group in _grouped_spans(spans)}
    run: list[tuple[Segment, Callable[[Executor | None], Coded]]] = []

    # With one coding thread, the reading thread is the second core: it splits the blocks itself.
    splitters = pool if thread_count(pool) > 1 else None
    buffers = _PlaneBuffers()
    with open(src, "rb") as f, closing(_read_ahead(f.fileno(), spans, digest, splitters, buffers)) as reads:
        for span, item in reads:
            start, end, tensor = span
            if tensor is None:
                seg = Segment(KIND_BYTES, end - start, [], stripe=codec.BYTES_CHUNK,
                              hashes=_stripe_hashes(item, codec.BYTES_CHUNK, start))
                code = functools.partial(codec.encode_bytes, item)
            else:
                seg, code = _tensor_segment(src, item, base, dedup, archive, sources)
            if _large(span):
                flush(0)
                emit(seg, code(pool))
                if isinstance(item, _TensorInput):  # its planes are written: the next tensors may reuse them
                    buffers.give(tensor.dtype, item.planes)
            else:
                run.append((seg, code))
                if end in run_ends:
                    pending.append(([seg for seg, _ in run], pool.submit(code_small, [code for _, code in run])))
                    run = []
                    flush(WINDOW_PER_THREAD * thread_count(pool))
            progress(end - start)
        flush(0)
    index = Index(sum(s.length for s in segments), digest.digest(), segments, sources.list)
    write_index(out, index, offset)
    if dedup is not None:
        dedup.sha256[archive] = index.original_sha256
    return index


READ_AHEAD_BYTES = 1 << 26  # besides the next spans, spans are read ahead while their bytes stay under this


def _read_ahead(fd: int, spans: list, digest: _Sha256Behind, pool: Executor | None = None,
                buffers: _PlaneBuffers | None = None) -> Iterator[tuple[tuple, np.ndarray | _TensorInput]]:
    """Each span with its bytes (verbatim bytes), or its ``_TensorInput``, read in order on a thread of its own.

    While the caller codes one tensor, the next is read, hashed and split into planes beside it:
    done by the caller, that serial work left the coding threads idle between large tensors. The
    next spans are always read ahead, further ones only while they stay under ``READ_AHEAD_BYTES``,
    so memory holds at most the span being coded, the next ones, and that much more. One reading
    thread keeps ``digest`` fed in file order; the blocks of a large tensor are read and split on
    ``pool``, beside the coding (one thread could not keep up with the coding threads). Small spans
    are read together, up to ``JOB_BYTES`` at a time: one read, one hash update and one hand-over for
    a run of biases and norms, not one each.
    """
    def read(group: list[tuple[int, int, TensorEntry | None]]) -> list[np.ndarray | _TensorInput]:
        if _large(group[0]) and group[0][2] is not None:
            return [_read_in_blocks(fd, group[0][2], digest, pool, buffers)]
        first = group[0][0]
        data = read_exact(fd, first, group[-1][1] - first)
        digest.update(data)
        return [data[a - first:b - first] if tensor is None else _whole_tensor(fd, tensor, data[a - first:b - first])
                for a, b, tensor in group]

    pending: deque[tuple[list, Future]] = deque()
    with ThreadPoolExecutor(1, thread_name_prefix="weightpack-read") as reader:
        try:
            ahead = 0
            for group in _grouped_spans(spans):
                size = group[-1][1] - group[0][0]
                while len(pending) > 1 and ahead + size > READ_AHEAD_BYTES:
                    done, future = pending.popleft()
                    ahead -= done[-1][1] - done[0][0]
                    yield from zip(done, future.result())
                pending.append((group, reader.submit(read, group)))
                ahead += size
            while pending:
                done, future = pending.popleft()
                yield from zip(done, future.result())
        finally:  # an early exit: reads not started are dropped, the one running is waited for
            for _, future in pending:
                future.cancel()


def _grouped_spans(spans: list) -> Iterator[list]:
    """Runs of consecutive small spans of at least ``JOB_BYTES`` (the last may hold less); a large span alone."""
    for group in _grouped(spans, lambda span: JOB_BYTES if _large(span) else span[1] - span[0]):
        if _large(group[-1]):
            if group[:-1]:
                yield group[:-1]
            yield group[-1:]
        else:
            yield group


class _Sha256Behind:
    """The sha256 of the bytes given to ``update``, hashed in order on a thread of its own.

    It is one serial pass over the whole file: hashed by the reading thread, it would cap packing
    at ~1.6 GB/s and delay every tensor's hand-over to the coding threads. At most ``WINDOW`` blocks
    wait, so memory stays bounded when hashing is the slower side.
    """

    WINDOW = 4

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="weightpack-sha256")
        self._pending: deque[Future] = deque()

    def update(self, data: np.ndarray) -> None:
        self._pending.append(self._thread.submit(self._hash.update, data))
        while len(self._pending) > self.WINDOW:
            self._pending.popleft().result()

    def digest(self) -> bytes:
        for future in self._pending:
            future.result()
        return self._hash.digest()

    def __enter__(self) -> _Sha256Behind:
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.shutdown(cancel_futures=True)


class ArchiveReader:
    """An open .wpk: its validated index, and decoding of any segment (or element range) alone.

    Tensors stored as a copy of, or a delta to, another tensor are resolved through this archive
    (``SELF``), a sibling archive in the same folder, or ``base`` (found by sha256). A referenced
    tensor must itself be stored whole or against the base, so references never chain or loop.
    """

    def __init__(self, path: Path, pool: Executor, base: BaseSet | None = None, *, index: Index | None = None,
                 available: Callable[[int], None] | None = None, name: Path | None = None) -> None:
        """``index`` and ``available``: for an archive still arriving at ``path`` (a download), its index
        (fetched apart) and ``available(end)``, which returns once the first ``end`` bytes are there.
        ``name``: how errors name the archive (default: its path)."""
        self.path, self.pool, self.base, self._available = Path(path), pool, base, available
        self.name = name or self.path
        self._file = open(self.path, "rb")  # noqa: SIM115 -- closed by close() / __exit__
        try:
            self.index = index or read_index(self._file, os.fstat(self._file.fileno()).st_size)
        except BaseException:
            self._file.close()
            raise
        self.tensors = {s.name: s for s in self.index.segments if s.kind == KIND_TENSOR}
        self._siblings: dict[int, ArchiveReader] = {}

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for sibling in self._siblings.values():
            sibling.close()
        self._file.close()

    @property
    def sha256(self) -> bytes:
        return self.index.original_sha256

    def entry(self, name: str) -> tuple[str, tuple[int, ...]] | None:
        seg = self.tensors.get(name)
        return (seg.dtype, seg.shape) if seg else None

    def read(self, offset: int, size: int) -> np.ndarray:
        """Stored bytes of the archive (for chunks, whose offsets the index has validated)."""
        if self._available is not None:
            self._available(offset + size)
        return read_exact(self._file.fileno(), offset, size)

    def read_into(self, pieces: list[tuple[int, np.ndarray]]) -> None:
        """Read each ``(offset, destination)`` piece of the archive (chunks validated by the index); pieces
        that lie back to back (a run of stripes' chunks) are read by one ``preadv``."""
        if self._available is not None and pieces:
            self._available(max(offset + out.size for offset, out in pieces))
        read_exact_into(self._file.fileno(), pieces)

    def _source(self, seg: Segment):
        """The archive or base file holding the tensor ``seg`` refers to, checked to be the right one."""
        if seg.source == SELF:
            source = self
        else:
            src = self.index.sources[seg.source]
            if src.kind == SOURCE_SIBLING:
                if seg.source not in self._siblings:
                    path = self.path.parent / src.name
                    if not path.is_file():
                        raise WeightpackError(f"tensor {seg.name!r} is stored in {path}, which is missing")
                    self._siblings[seg.source] = ArchiveReader(path, self.pool, self.base)
                source = self._siblings[seg.source]
            elif self.base is None:
                raise WeightpackError(f"packed against a base checkpoint ({src.name}, sha256 {src.sha256.hex()[:16]}"
                                      "...): give it with --base / base=")
            else:
                source = self.base.by_sha256(src.sha256)
                if source is None:
                    raise WeightpackError(f"the base given is missing or different: no file in it has the sha256 "
                                          f"{src.sha256.hex()[:16]}... of {src.name}, which this archive was packed "
                                          "against")
            if source.sha256 != src.sha256:
                raise IntegrityError(f"{src.name} is not the file this archive refers to (sha256 differs)")
        if source.entry(seg.ref_name) != (seg.dtype, seg.shape):
            raise FormatError(f"tensor {seg.name!r} refers to {seg.ref_name!r}, which is missing or differs")
        if isinstance(source, ArchiveReader):
            target = source.tensors[seg.ref_name]
            if target.ref != REF_NONE and (target.source == SELF or
                                          source.index.sources[target.source].kind == SOURCE_SIBLING):
                raise FormatError(f"tensor {seg.name!r} refers to {seg.ref_name!r}, which is itself a reference")
        return source

    def tensor_bytes(self, name: str, first: int, end: int) -> np.ndarray:
        """Bytes of elements ``first`` to ``end`` of tensor ``name``, for a tensor referring to it.

        Decoded in the calling thread: the caller is already a pool worker, and waiting on the pool
        from inside it could deadlock.
        """
        return self.segment_bytes(self.tensors[name], first, end, parallel=False)

    def _stripes(self, seg: Segment, first: int = 0, end: int | None = None) -> list[tuple[int, int, _Fill]]:
        """``(k, elements, fill)`` for each stripe holding elements ``first`` to ``end`` of a segment.

        ``fill(out)`` decodes stripe ``k`` into ``out`` (uint8, its size in bytes) and checks it
        against its recorded XXH64: stripes are independent and fill on any thread.
        """
        where = f"tensor {seg.name!r}" if seg.kind == KIND_TENSOR else "header/verbatim bytes"
        source = self._source(seg) if seg.ref != REF_NONE else None
        decoders = [codec.PlaneDecoder(p, where) for p in seg.planes]
        step, end = seg.stripe, seg.count if end is None else end
        size = seg.itemsize
        # None: no reference; False: per-plane transforms; True: one difference of whole words
        word_sub = None if seg.ref != REF_DELTA else any(p.transform == TRANSFORM_WORD_SUB for p in seg.planes)
        sizes = [(k, min(step, seg.count - k * step)) for k in range(first // step, -(-end // step))]
        if StripeDecoder.takes(seg):  # nearly every stripe: decoded by the stripe kernel (see stripe.py)
            whole = StripeDecoder(seg, decoders, where, self.read_into)
            return [(k, n, Stripe(whole, k, n)) for k, n in sizes]

        def fill(k: int, n: int, out: np.ndarray) -> None:
            if seg.ref == REF_COPY:
                out[:] = source.tensor_bytes(seg.ref_name, k * step, k * step + n)
            else:
                reference = source.tensor_bytes(seg.ref_name, k * step, k * step + n) if seg.ref == REF_DELTA else None
                refs = planes.split(reference, seg.dtype) if word_sub is False else [None] * len(decoders)
                parts = [d.chunk(k, _SCRATCH.get(j, n, d.dtype), self.read, r)
                         for j, (d, r) in enumerate(zip(decoders, refs))]
                if seg.kind == KIND_BYTES:
                    out[:] = parts[0]
                else:
                    planes.merge_into(parts, seg.dtype, out)
                if word_sub:
                    out[:] = codec.undo_word_difference(out, reference, size)
            if stripe_hash(out, seg.start + k * step * size) != seg.hashes[k]:
                raise damage("stripe", where, k=k)
        return [(k, n, functools.partial(fill, k, n)) for k, n in sizes]

    def segment_bytes(self, seg: Segment, first: int = 0, end: int | None = None,
                      parallel: bool = True) -> np.ndarray:
        """The original bytes of elements ``first`` to ``end`` of one segment (uint8), checksums verified.

        Only the stripes holding them are decoded, in parallel, each straight into its place.
        """
        end = seg.count if end is None else end
        data, pieces, lo = self._plan(seg, first, end)
        self._fill_all(pieces, parallel)
        return data[(first - lo) * seg.itemsize:(end - lo) * seg.itemsize]

    def segments_bytes(self, segments: Iterable[Segment]) -> list[np.ndarray]:
        """The original bytes of whole segments (uint8 each), checksums verified: ``segment_bytes`` of each,
        but the small ones decode side by side too (a model's biases and norms)."""
        plans = [self._plan(seg, 0, seg.count) for seg in segments]
        self._fill_all([piece for _, pieces, _ in plans for piece in pieces], parallel=True)
        return [data for data, _, _ in plans]

    def _plan(self, seg: Segment, first: int, end: int) -> tuple[np.ndarray, list[tuple[np.ndarray, _Fill]], int]:
        """An array for the stripes holding elements ``first`` to ``end`` of ``seg``, each stripe's part of it
        with its ``fill``, and the first element the array holds."""
        size, stripes = seg.itemsize, self._stripes(seg, first, end)
        lo = stripes[0][0] * seg.stripe if stripes else first
        data = np.empty(sum(n for _, n, _ in stripes) * size, np.uint8)
        return data, [(data[(k * seg.stripe - lo) * size:(k * seg.stripe - lo + n) * size], fill)
                      for k, n, fill in stripes], lo

    def _fill_all(self, pieces: list[tuple[np.ndarray, _Fill]], parallel: bool) -> None:
        """``fill(out)`` of every piece, in jobs (``job_bytes``) on the pool (here if one job)."""
        def job(group: list[tuple[np.ndarray, _Fill]]) -> None:
            for out, fill in group:
                fill(out)
        pool = self.pool if parallel else None
        groups = list(_grouped(pieces, lambda piece: piece[0].size,
                               job_bytes(sum(out.size for out, _ in pieces), pool)))
        pool = pool if len(groups) > 1 else None
        for _ in ordered_map(pool, [functools.partial(job, group) for group in groups]):
            pass

    def restore(self, out: int | None, progress: Progress = lambda n: None, sha256: bool = False) -> None:
        """Decode the whole original file into file descriptor ``out`` (or nowhere).

        Every stripe is checked against its XXH64 by the worker that decoded it; a job's stripes are
        consecutive, and it writes them at their offset (``os.pwrite``) itself: nothing serial but
        scheduling. ``sha256``: also check the original file's sha256 (one serial pass over the bytes,
        in order; see checksum.py).
        """
        digest = hashlib.sha256() if sha256 else None

        def restore_job(stripes: list[tuple[int, _Fill]], offset: int, size: int) -> np.ndarray | int:
            data = np.empty(size, np.uint8) if digest is not None else _SCRATCH.get("out", size, np.uint8)
            _fill_consecutive(stripes, data)
            if out is not None:
                write_at(out, data, offset)
            return data if digest is not None else size

        def jobs() -> Iterator[Callable[[], np.ndarray | int]]:
            stripes = ((n * seg.itemsize, fill) for seg in self.index.segments for _, n, fill in self._stripes(seg))
            offset = 0
            # With the sha256, each job's bytes wait in memory to be hashed in order, and the hash (one core) sets
            # the pace, not the GIL: small jobs keep that memory small.
            at_least = JOB_BYTES if digest is not None else job_bytes(self.index.original_size, self.pool)
            for group in _grouped(stripes, lambda stripe: stripe[0], at_least):
                size = sum(n for n, _ in group)
                yield functools.partial(restore_job, group, offset, size)
                offset += size
        for result in ordered_map(self.pool, jobs()):  # the stripes of small tensors decode side by side too
            if digest is not None:
                digest.update(result)
                result = result.size
            progress(result)
        if digest is not None and digest.digest() != self.index.original_sha256:
            raise IntegrityError("restored bytes do not match the original sha256")


_Fill = Callable[[np.ndarray], None]


def _fill_consecutive(stripes: list[tuple[int, _Fill]], data: np.ndarray) -> None:
    """Fill ``data`` with consecutive stripes (each its size in bytes and its fill), each run of those the
    stripe kernel decodes by one call (``stripe.decode_run``): a job gives the GIL up twice a run, not twice
    a stripe (MiniLM BF16: ~45 jobs, ~290 stripes, ~190 of them small tensors')."""
    run, at = [], 0
    for n, fill in stripes:
        if isinstance(fill, Stripe):
            run.append((fill, at))
        else:
            if run:
                decode_run(run, data)
                run = []
            fill(data[at:at + n])
        at += n
    if run:
        decode_run(run, data)


def warm_up_decoder() -> None:
    """Load the decoding kernels that every model needs (from numba's cache, or compiling them), so that a
    later decode does not wait for them: run beside a download, it takes numba's start-up (see ``jit``) and,
    on a machine's first run, compiling them off the critical path. The stripe kernel decodes every tensor
    stored whole; the header's stripe is checked by XXH64 alone. The plane-by-plane decoders (copies and
    deltas of other tensors) load at their first use."""
    warm_up_stripes()
    stripe_hash(np.zeros(8, np.uint8), 0)


class _Scratch(threading.local):
    """Each worker thread's reused buffers: decoding allocates nothing per stripe once warm."""

    def get(self, key: object, n: int, dtype: np.dtype) -> np.ndarray:
        nbytes = n * np.dtype(dtype).itemsize
        buf = self.__dict__.get(key)
        if buf is None or buf.size < nbytes:
            buf = self.__dict__[key] = np.empty(nbytes, np.uint8)
        return buf[:nbytes].view(dtype)


_SCRATCH = _Scratch()


def write_at(fd: int, data: np.ndarray, offset: int) -> None:
    """Write all of ``data`` at ``offset`` of ``fd`` (thread-safe; the GIL is released while writing)."""
    view, start = memoryview(data).cast("B"), offset
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
    start_writeback(fd, start, offset - start)
