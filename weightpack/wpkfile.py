"""One checkpoint <-> one .wpk: pack a safetensors file into an archive stream, read an archive back.

Packing walks the file in order as a list of segments (verbatim header bytes, each tensor's data,
any gaps), so the concatenation of the decoded segments is the original file, byte for byte. Input
is read and processed one tensor at a time: memory stays bounded by the largest tensor.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import BinaryIO

import numpy as np

from . import codec, planes
from .container import (
    CODEC_CONST,
    KIND_BYTES,
    KIND_TENSOR,
    PREAMBLE,
    Chunk,
    Index,
    Segment,
    read_index,
    write_index,
    write_preamble,
)
from .errors import FormatError, IntegrityError
from .safetensors_layout import read_layout

Progress = Callable[[int], None]


def _read_exact(fd: int, offset: int, size: int) -> np.ndarray:
    """``size`` bytes at ``offset`` (thread-safe, no shared file position); FormatError if the file is short."""
    buf = np.empty(size, np.uint8)
    view, done = memoryview(buf), 0
    while done < size:
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise FormatError("file is shorter than its header says (truncated?)")
        done += n
    return buf


def _spans(src: Path) -> Iterator[tuple[int, int, object]]:
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


def pack_stream(src: Path, out: BinaryIO, pool: Executor, progress: Progress = lambda n: None) -> Index:
    """Write the .wpk of safetensors file ``src`` to ``out`` (positioned at 0); return its index."""
    spans = list(_spans(src))
    digest = hashlib.sha256()
    segments: list[Segment] = []
    write_preamble(out)
    offset = PREAMBLE.size
    with open(src, "rb") as f:
        for start, end, tensor in spans:
            data = _read_exact(f.fileno(), start, end - start)
            digest.update(data)
            if tensor is None:
                coded = [codec.encode_bytes(data, pool)]
                seg = Segment(KIND_BYTES, end - start, [])
            else:
                coded = [codec.encode_plane(p, spec.bits, pool)
                         for p, spec in zip(planes.split(data, tensor.dtype), planes.layout(tensor.dtype))]
                seg = Segment(KIND_TENSOR, end - start, [], tensor.name, tensor.dtype, tensor.shape)
            for record, payloads in coded:
                for payload in payloads:
                    record.chunks.append(Chunk(offset, len(payload), zlib.crc32(payload)))
                    out.write(payload)
                    offset += len(payload)
                seg.planes.append(record)
            segments.append(seg)
            progress(end - start)
    index = Index(sum(s.length for s in segments), digest.digest(), segments)
    write_index(out, index, offset)
    return index


class ArchiveReader:
    """An open .wpk: its validated index, and decoding of any one segment without the others."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file = open(self.path, "rb")  # noqa: SIM115 -- closed by close() / __exit__
        try:
            size = os.fstat(self._file.fileno()).st_size
            self.index = read_index(self._file, size)
        except BaseException:
            self._file.close()
            raise

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def _read(self, offset: int, size: int) -> np.ndarray:
        return _read_exact(self._file.fileno(), offset, size)

    def stripes(self, seg: Segment, pool: Executor, first: int = 0, end: int | None = None) -> Iterator[np.ndarray]:
        """The original bytes of one segment, one chunk-sized stripe at a time, every checksum verified.

        Stripe ``k`` is chunk ``k`` of every plane, merged; only the stripes holding elements
        ``first`` to ``end`` are decoded. Stripes are decoded in parallel, a bounded window ahead of
        the consumer, so memory stays bounded by the chunk size, not by the tensor size.
        """
        where = f"tensor {seg.name!r}" if seg.kind == KIND_TENSOR else "header/verbatim bytes"
        decoders = [codec.PlaneDecoder(p, where) for p in seg.planes]
        step = self.stripe_elements(seg)
        end = seg.count if end is None else end
        jobs = [(k, min(step, seg.count - k * step)) for k in range(first // step, -(-end // step))]

        def stripe(job: tuple[int, int]) -> np.ndarray:
            parts = [d.chunk(job[0], job[1], self._read) for d in decoders]
            return parts[0] if seg.kind == KIND_BYTES else planes.merge(parts, seg.dtype)
        yield from _ordered_map(pool, stripe, jobs)

    @staticmethod
    def stripe_elements(seg: Segment) -> int:
        return next((p.chunk_symbols for p in seg.planes if p.codec != CODEC_CONST), codec.CHUNK_SYMBOLS)

    def segment_bytes(self, seg: Segment, pool: Executor, first: int = 0, end: int | None = None) -> np.ndarray:
        """The original bytes of elements ``first`` to ``end`` of one segment (uint8), checksums verified."""
        end = seg.count if end is None else end
        parts = list(self.stripes(seg, pool, first, end))
        data = np.concatenate(parts) if parts else np.empty(0, np.uint8)
        size = planes.itemsize(seg.dtype) if seg.kind == KIND_TENSOR else 1
        skip = first % self.stripe_elements(seg) * size
        return data[skip:skip + (end - first) * size]

    def restore(self, out: BinaryIO | None, pool: Executor, progress: Progress = lambda n: None) -> None:
        """Decode the whole original file into ``out`` (or nowhere) and check its sha256."""
        digest = hashlib.sha256()
        for seg in self.index.segments:
            for data in self.stripes(seg, pool):
                digest.update(data)
                if out is not None:
                    out.write(data)
                progress(data.size)
        if digest.digest() != self.index.original_sha256:
            raise IntegrityError("restored bytes do not match the original sha256")


def _ordered_map(pool: Executor, func: Callable, jobs: list, window: int = 8) -> Iterator:
    """``pool.map`` that keeps at most ``window`` results in flight, yielding them in order."""
    pending: deque[Future] = deque()
    try:
        for job in jobs:
            pending.append(pool.submit(func, job))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
