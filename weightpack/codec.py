"""Plane codecs: choose how each plane is stored (rANS, constant, raw, zstd) and code it in chunks.

A plane is cut into chunks of ``CHUNK_SYMBOLS`` symbols that are coded independently, so that the
work spreads over threads and damage stays local to one chunk. A rANS plane has one table fitted to
the whole plane, and each chunk picks what costs it least, table bytes included:

- ``CHUNK_PLANE``: rANS with the plane's table;
- ``CHUNK_OWN``: rANS with a table of its own (kept in the zstd-compressed index, where the tables
  of neighbouring chunks compress against each other), when its statistics differ from the plane's:
  rows of an embedding matrix differ in scale, parts of some F32 tensors carry fewer mantissa bits;
- ``CHUNK_RAW``: the symbols bit-packed at the plane's width, when coding saves less than
  ``MIN_CODING_GAIN`` (decoding is then a copy).

A plane with one symbol value costs two bytes (``CODEC_CONST``); a plane no chunk can shrink is
stored raw (``CODEC_RAW``, bit-packed).

The chunks' histograms drive every choice. A float's low mantissa planes are nearly random and nearly
always stored raw, so their chunks are counted from a sample of one symbol in eight first, and whole only
where the sample shows that coding might pay (``ChunkCounts``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np
import zstandard

from . import bitpack, rans
from .checksum import chunk_checksum
from .container import (
    CHUNK_OWN,
    CHUNK_PLANE,
    CHUNK_RAW,
    CODEC_CONST,
    CODEC_RANS,
    CODEC_RAW,
    CODEC_ZSTD,
    TRANSFORM_NONE,
    TRANSFORM_SUB,
    TRANSFORM_WORD_SUB,
    TRANSFORM_XOR,
    PlaneRecord,
    unzstd,
)
from .dtypes import Plane
from .entropy import FrequencyTable, count_chunks, entropy_bits, histogram
from .errors import FormatError, damage
from .parallel import ordered_map

CHUNK_SYMBOLS = 1 << 18
BYTES_CHUNK = 1 << 22  # verbatim runs (headers, gaps) go through zstd in chunks of 4 MiB
# Verbatim runs are mostly the safetensors header (JSON). On MiniLM's 11.5 kB header level 14 costs 1.1 ms
# against 5.5 ms at level 19, for 13 more bytes (1161 against 1148).
ZSTD_LEVEL = 14
OWN_TABLE_MIN_PRECISION = 10  # coarser tables never pay for a chunk of 256 Ki symbols
# Coding must save this share of a chunk's raw size, or the chunk is stored raw: a raw chunk decodes
# as a copy, several times faster than rANS, and near-random planes (low mantissa bits) gain ~0.1%.
MIN_CODING_GAIN = 0.01


@dataclass
class EncodedChunk:
    """A coded chunk and its checksum, computed where it was coded (a worker thread), not by the writer.

    ``payload`` (uint8) is a view, not a copy: of the encoder's output buffer, of the bit-packed symbols, or
    of the plane itself for a raw 8-bit chunk. Copying every chunk into a ``bytes`` cost a pass over most
    of the archive, and fresh pages to fault in, before the one copy that matters (into the file)."""

    payload: np.ndarray
    mode: int = CHUNK_PLANE
    table: bytes = b""  # the chunk's own frequency table (CHUNK_OWN), stored in the index
    checksum: int = field(init=False)

    def __post_init__(self) -> None:
        self.checksum = chunk_checksum(self.payload)


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def apply_transform(transform: int, symbols: np.ndarray, reference: np.ndarray, bits: int) -> np.ndarray:
    """The symbols coded for a plane given the same plane of a reference tensor (identity for NONE)."""
    if transform == TRANSFORM_XOR:
        return symbols ^ reference
    if transform == TRANSFORM_SUB:
        return (symbols - reference) & symbols.dtype.type((1 << bits) - 1)
    return symbols


def invert_transform(transform: int, coded: np.ndarray, reference: np.ndarray, bits: int) -> np.ndarray:
    if transform == TRANSFORM_XOR:
        return coded ^ reference
    if transform == TRANSFORM_SUB:
        return (coded + reference) & coded.dtype.type((1 << bits) - 1)
    return coded


def best_transform(symbols: np.ndarray, reference: np.ndarray, bits: int) -> tuple[int, np.ndarray, float]:
    """For a plane and the same plane of a reference tensor: whichever of as is, XOR, or difference
    modulo ``2**bits`` has the lowest order-0 entropy, as (transform, symbols to code, entropy in bits)."""
    candidates = []
    for t in (TRANSFORM_NONE, TRANSFORM_XOR, TRANSFORM_SUB):
        coded = apply_transform(t, symbols, reference, bits)
        candidates.append((entropy_bits(histogram(coded, bits)), t, coded))
    cost, transform, coded = min(candidates, key=lambda c: (c[0], c[1]))
    return transform, coded, cost


def word_difference(data: np.ndarray, reference: np.ndarray, itemsize: int) -> np.ndarray:
    """The zigzag-coded difference ``data - reference`` of whole words (mod ``2**(8 * itemsize)``), as
    bytes: a small change of a value, carries across mantissa bits included, becomes a small number,
    and zigzag (0, -1, 1, -2, ... -> 0, 1, 2, 3, ...) keeps its sign out of the high bits."""
    bits = 8 * itemsize
    d = (data.view(f"<u{itemsize}") - reference.view(f"<u{itemsize}")).view(f"<i{itemsize}")
    return ((d << 1) ^ (d >> (bits - 1))).view(np.uint8)


def undo_word_difference(delta: np.ndarray, reference: np.ndarray, itemsize: int) -> np.ndarray:
    z = delta.view(f"<u{itemsize}")
    d = (z >> 1) ^ (-(z & 1).view(f"<i{itemsize}")).view(f"<u{itemsize}")
    return (d + reference.view(f"<u{itemsize}")).view(np.uint8)


Stripe = list[EncodedChunk | None]  # chunk k of every plane of a tensor (None: a constant plane has no chunks)


# A chunk of a nearly random plane whose sample estimates its entropy at this share of the plane's width or
# more is stored raw without being counted whole: coding it would have to save MIN_CODING_GAIN, and no
# table codes below a chunk's entropy. The other half of MIN_CODING_GAIN is the margin for the sample's
# error (under 0.006 bits a symbol on every chunk of MiniLM's near-random planes).
SAMPLED_RAW_SHARE = 1 - MIN_CODING_GAIN / 2


@dataclass
class ChunkCounts:
    """A plane's histogram of each chunk (a row of ``rows`` each), as its model needs them.

    A nearly random plane (``dtypes.Plane.nearly_random``: F32's low mantissa bytes, BF16's sign and low
    mantissa bits) is nearly always stored raw, and counting every symbol of it was most of packing's
    histogram time for nothing (~3 ns of an F32 weight's ~11, ~1 of BF16's ~7: RESULTS.md). Its chunks
    are counted from a sample first: ``sample_bits[k] > 0`` says the sample of chunk ``k`` (its row)
    showed it cannot be coded, and estimates its entropy, in bits a symbol.
    """

    rows: np.ndarray
    sample_bits: np.ndarray
    plane: Plane

    @classmethod
    def zeros(cls, n: int, plane: Plane) -> ChunkCounts:
        """Empty counts for a plane of ``n`` symbols."""
        chunks = -(-n // CHUNK_SYMBOLS)
        return cls(np.zeros((chunks, 1 << plane.bits), np.int64), np.zeros(chunks), plane)

    def count(self, symbols: np.ndarray, rows: slice = slice(None)) -> None:
        """Count ``symbols``: a run of whole chunks of the plane (but the last), those of ``rows``."""
        sample = self.plane.nearly_random
        count_chunks(symbols, CHUNK_SYMBOLS, self.rows[rows], self.sample_bits[rows] if sample else None,
                     SAMPLED_RAW_SHARE * self.plane.bits)

    @property
    def sampled(self) -> np.ndarray:
        """Which chunks were sampled and found to be stored raw (a bool each)."""
        return self.sample_bits > 0

    def known_raw(self, n: int) -> tuple[np.ndarray, int]:
        """For a plane some of whose chunks were sampled: which chunks are known to be stored raw (sampled, or
        counted whole with as high an entropy), and the plane's bound in bits (``info``'s plane bound) for
        its ``n`` symbols, estimated.

        Where every chunk is near-random, the bound is the sum of the chunks' (their samples' estimates for
        sampled ones): within a thousandth of a bit a symbol of the plane's on MiniLM. Otherwise (rare: a few
        chunks of an F32 embedding's low bytes) it is the entropy of the plane's counts, sampled rows scaled
        up to their chunk's size: the chunks differ, and the plane's bound is more than the sum of theirs."""
        sampled = self.sampled
        raw, threshold = sampled.copy(), SAMPLED_RAW_SHARE * self.plane.bits
        sizes = np.minimum(CHUNK_SYMBOLS, n - CHUNK_SYMBOLS * np.arange(len(raw)))
        bound = float((sizes[sampled] * self.sample_bits[sampled]).sum())
        for k in np.flatnonzero(~sampled):
            bits = entropy_bits(self.rows[k])
            raw[k], bound = bits >= threshold * sizes[k], bound + bits
        if not raw.all():
            scale = np.where(sampled, sizes / self.rows.sum(axis=1), 1.0)
            p = (self.rows * scale[:, None]).sum(axis=0) / n
            p = p[p > 0]
            bound = -n * float((p * np.log2(p)).sum())
        return raw, math.ceil(bound)


def encode_planes(planes: list[np.ndarray], specs: Sequence[Plane], transforms: list[int],
                  pool: Executor | None, counts: list[ChunkCounts] | None = None
                  ) -> tuple[list[PlaneRecord], Iterator[Stripe]]:
    """Code a tensor's planes: their records, and their chunks stripe by stripe, in order.

    ``planes`` are what is coded: for a delta, already transformed as ``transforms`` record.
    ``specs``: what each plane is (``dtypes.layout``). ``counts``: each plane's chunk histograms, if counted
    already. A large tensor's are counted by the jobs that split its blocks, side by side; counted by each
    plane's modelling job instead, a plane of a large tensor was one thread's pass while the other cores
    waited.

    The planes' tables are fitted side by side on ``pool`` (or in this thread if None); then each stripe
    is one job, a bounded window ahead, so a caller writing stripes out as they come holds only a
    few in memory. One job per stripe, not per chunk: handing a job to a thread costs ~150 us here,
    more than a raw 8-bit chunk's whole coding (a view and its checksum). The records are final
    once every stripe has been consumed.
    """
    counts = counts or [None] * len(planes)
    models = list(ordered_map(pool, (functools.partial(_plane_model, p, spec, c)
                                     for p, spec, c in zip(planes, specs, counts))))
    for (record, _), transform in zip(models, transforms):
        record.transform = transform
    jobs = [chunk_jobs for _, chunk_jobs in models]
    stripes = (functools.partial(_stripe, [chunks[k] if k < len(chunks) else None for chunks in jobs])
               for k in range(max(map(len, jobs), default=0)))
    records = [record for record, _ in models]
    return records, _drop_unused_tables(records, ordered_map(pool, stripes))


def _stripe(jobs: list[Callable[[], EncodedChunk] | None]) -> Stripe:
    return [None if job is None else job() for job in jobs]


def _rans_stream(symbols: np.ndarray, table: FrequencyTable) -> np.ndarray:
    out = np.empty(rans.max_stream_bytes(symbols.size), np.uint8)
    return out[rans.encode(symbols, table.encoder_table, out):]


def _encode_chunk(symbols: np.ndarray, counts: np.ndarray, bits: int, shared: FrequencyTable) -> EncodedChunk:
    """One chunk (``counts``: its histogram) in whichever mode is estimated smallest (raw unless coding
    saves MIN_CODING_GAIN)."""
    raw = symbols.size * bits
    plane_bits, bound, present = shared.chunk_costs(counts)
    costs = {CHUNK_PLANE: plane_bits, CHUNK_RAW: raw * (1 - MIN_CODING_GAIN)}
    own = None
    if bound + 8 * present < min(costs.values()):  # a table of its own may pay
        own = FrequencyTable.fit(counts, OWN_TABLE_MIN_PRECISION)
        if own is not None:
            costs[CHUNK_OWN] = own.coded_bits(counts) + 8 * (own.serialized_size() + 2)
    mode = min(costs, key=costs.get)
    if mode == CHUNK_RAW:
        return EncodedChunk(bitpack.pack(symbols, bits), CHUNK_RAW)
    if mode == CHUNK_OWN:
        return EncodedChunk(_rans_stream(symbols, own), CHUNK_OWN, own.to_bytes())
    return EncodedChunk(_rans_stream(symbols, shared))


def _plane_model(symbols: np.ndarray, spec: Plane,
                 per_chunk: ChunkCounts | None) -> tuple[PlaneRecord, list[Callable[[], EncodedChunk]]]:
    """A plane's record (its codec, and its table if rANS) and the job coding each of its chunks;
    ``per_chunk``: its chunks' histograms, if counted already.

    Chunks known to be stored raw (``ChunkCounts.known_raw``: sampled) are left out of the plane's table,
    which is fitted to the chunks that may use it; a plane none of whose chunks may is stored raw."""
    bits = spec.bits
    if per_chunk is None:
        per_chunk = ChunkCounts.zeros(symbols.size, spec)
        per_chunk.count(symbols)
    slices = _chunks(symbols.size, CHUNK_SYMBOLS)
    if per_chunk.sampled.any():
        raw, bound = per_chunk.known_raw(symbols.size)
        counts = per_chunk.rows[~raw].sum(axis=0)
        entropy = entropy_bits(counts)  # of the chunks that may be coded
    else:  # every chunk counted whole: the plane's exact bound
        raw, counts = per_chunk.sampled, per_chunk.rows.sum(axis=0)
        entropy = entropy_bits(counts)
        bound = math.ceil(entropy)
        present = np.flatnonzero(counts)
        if present.size == 1:
            return PlaneRecord(CODEC_CONST, bits, bound, 0, int(present[0]).to_bytes(2, "little")), []
    if not raw.all():
        coded = [s for s, known_raw in zip(slices, raw) if not known_raw]
        raw_bytes = sum(bitpack.packed_size(s.stop - s.start, bits) for s in coded)
        states = rans.header_bytes(CHUNK_SYMBOLS) * len(coded)
        # No table codes below the entropy: where even that does not pay (near-random low mantissa bytes
        # counted whole), fitting one would be wasted (~7% of packing F16's CPU, before samples).
        table = FrequencyTable.fit(counts) if entropy / 8 + states < raw_bytes else None
        if table is not None:
            record = PlaneRecord(CODEC_RANS, bits, bound, CHUNK_SYMBOLS, table.to_bytes())
            if table.coded_bits(counts) / 8 + len(record.params) + states < raw_bytes:
                return record, [functools.partial(_raw_chunk, symbols[s], bits, CHUNK_RAW) if raw[k] else
                                functools.partial(_encode_chunk, symbols[s], per_chunk.rows[k], bits, table)
                                for k, s in enumerate(slices)]
    return (PlaneRecord(CODEC_RAW, bits, bound, CHUNK_SYMBOLS, b""),
            [functools.partial(_raw_chunk, symbols[s], bits) for s in slices])


def _raw_chunk(symbols: np.ndarray, bits: int, mode: int = CHUNK_PLANE) -> EncodedChunk:
    """A chunk bit-packed: of a raw plane (``CHUNK_PLANE``, as every chunk of a codec but rANS), or a raw
    chunk of a rANS plane (``CHUNK_RAW``)."""
    return EncodedChunk(bitpack.pack(symbols, bits), mode)


def _drop_unused_tables(records: list[PlaneRecord], stripes: Iterator[Stripe]) -> Iterator[Stripe]:
    """Pass the stripes through; once all are seen, drop each rANS plane's table if none of its chunks used it."""
    used = [False] * len(records)
    for stripe in stripes:
        for k, chunk in enumerate(stripe):
            used[k] |= chunk is not None and chunk.mode == CHUNK_PLANE
        yield stripe
    for record, plane_used in zip(records, used):
        if record.codec == CODEC_RANS and not plane_used:
            record.params = b""


def encode_bytes(data: np.ndarray, pool: Executor | None) -> tuple[list[PlaneRecord], list[Stripe]]:
    """Verbatim bytes (safetensors header, gaps), as one plane: zstd per chunk, or raw where zstd does not pay."""
    slices = _chunks(len(data), BYTES_CHUNK)
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=False, write_content_size=True)
    packed = list(ordered_map(pool, (functools.partial(_zstd_chunk, compressor, data[s]) for s in slices)))
    if sum(len(c.payload) for c in packed) < len(data):
        return [PlaneRecord(CODEC_ZSTD, 8, 8 * len(data), BYTES_CHUNK, b"")], [[c] for c in packed]
    return [PlaneRecord(CODEC_RAW, 8, 8 * len(data), BYTES_CHUNK, b"")], [[EncodedChunk(data[s])] for s in slices]


def _zstd_chunk(compressor: zstandard.ZstdCompressor, data: np.ndarray) -> EncodedChunk:
    # Copied into a bytearray (a header's kilobyte): an array over ``bytes`` is read-only, and its checksum
    # would compile a second XXH64 kernel for read-only arrays, 0.5 s of a machine's first pack.
    return EncodedChunk(np.frombuffer(bytearray(compressor.compress(data)), np.uint8))


class PlaneDecoder:
    """Decodes one plane chunk by chunk, so that memory stays bounded whatever size a plane claims.

    Everything about the plane is validated here, before any chunk reaches the rANS kernel: the
    tables, the constant, and (per chunk) the checksum and the size the chunk's mode implies. Chunks
    decode into a buffer the caller gives (a worker's reused scratch), so the hot path allocates
    nothing but what the decoder tables of chunks with their own table need.
    """

    # Every coded plane decodes to uint16, the narrow ones too: one compiled rANS decoder instead of two
    # (1.2-1.7 s less compiling on a machine's first run), at the same speed. An 8-bit plane comes back as
    # uint8 (see ``chunk``).
    dtype = np.dtype(np.uint16)

    def __init__(self, plane: PlaneRecord, where: str) -> None:
        self.plane, self.where = plane, where
        self.shared: FrequencyTable | None = None
        self._shared_entries: np.ndarray | None = None
        if plane.codec == CODEC_CONST:
            value = int.from_bytes(plane.params, "little") if len(plane.params) == 2 else -1
            if not 0 <= value < 1 << plane.bits:
                raise FormatError(f"{where}: invalid constant plane")
            self.value = value
        elif plane.codec == CODEC_RANS and plane.params:
            self.shared = self._table(plane.params)
        elif plane.params:
            raise FormatError(f"{where}: unexpected codec parameters")

    def shared_entries(self) -> np.ndarray:
        """The decoder table of the plane's table (which it must have), built once, on first use, by
        whichever worker gets there."""
        if self._shared_entries is None:
            self._shared_entries = self.shared.decoder_entries()
        return self._shared_entries

    def _table(self, data: bytes) -> FrequencyTable:
        try:
            return FrequencyTable.from_bytes(data, self.plane.bits)
        except FormatError as exc:
            raise FormatError(f"{self.where}: {exc}") from None

    def chunk(self, k: int, out: np.ndarray, read: Callable[[int, int], np.ndarray],
              reference: np.ndarray | None = None) -> np.ndarray:
        """The symbols of chunk ``k`` (``out.size`` of them), decoded into ``out`` (uint16) where they need
        decoding.

        An 8-bit plane's symbols come back as uint8. A raw chunk of one (most of F32's and F16's low mantissa
        bytes) is its stored bytes as they are, checksummed: no copy. ``reference`` is the same stretch of
        the reference tensor's plane, for a delta-coded plane.
        """
        symbols = self._coded(k, out, read)
        if self.plane.bits == 8 and symbols.dtype != np.uint8:
            symbols = symbols.astype(np.uint8)  # a coded 8-bit chunk (a few of F32's low bytes): rare
        if self.plane.transform in (TRANSFORM_NONE, TRANSFORM_WORD_SUB):  # a word difference is undone whole
            return symbols
        return invert_transform(self.plane.transform, symbols, reference, self.plane.bits)

    def _coded(self, k: int, out: np.ndarray, read: Callable[[int, int], np.ndarray]) -> np.ndarray:
        if self.plane.codec == CODEC_CONST:
            out.fill(self.value)
            return out
        info = self.plane.chunks[k]
        data = read(info.offset, info.size)
        if chunk_checksum(data) != info.checksum:
            raise damage("checksum", self.where, info.offset)
        if self.plane.codec == CODEC_ZSTD:
            out[:] = np.frombuffer(unzstd(data, out.size, f"{self.where}: zstd chunk"), np.uint8)
        elif self.plane.codec == CODEC_RAW or info.mode == CHUNK_RAW:
            if self.plane.bits == 8:
                if data.size != out.size:
                    raise damage("raw size", self.where, info.offset)
                return data
            self._raw(data, out, info.offset)
        else:
            if info.mode == CHUNK_OWN:
                table = self._table(info.table)
                precision, entries = table.precision, table.decoder_entries()
            elif self.shared is None:
                raise damage("no table", self.where, info.offset)
            else:
                precision, entries = self.shared.precision, self.shared_entries()
            if not rans.decode(data, precision, entries, out):
                raise damage("stream", self.where, info.offset)
        return out

    def _raw(self, data: np.ndarray, out: np.ndarray, offset: int) -> None:
        if not bitpack.unpack_into(data, self.plane.bits, out):  # masks each symbol to the plane's width
            raise damage("raw size", self.where, offset)
