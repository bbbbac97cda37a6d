"""A stripe of a tensor decoded by one compiled call: what unpack and loading do for nearly every stripe.

A stripe is chunk ``k`` of every plane of a tensor (``codec.py``). Decoded plane by plane through
``codec.PlaneDecoder``, a stripe cost ~10 calls into numba: a read, a checksum and a decode per plane,
a merge, a hash. Each call gives the GIL up and takes it back, and on two cores that waiting was
17 ms of a 90 ms F32 unpack (*Where two cores go* in benchmarks/RESULTS.md); on many cores it is
what stops scaling first. Here a stripe costs two:

1. one ``preadv`` of the stripe's chunks, which lie back to back in the archive, each into an 8-byte
   aligned place of the worker's buffer, so that the kernel can read them as 16- and 64-bit words;
2. one nogil kernel (``_decode_stripe``) that, plane by plane, checks the chunk's checksum, then
   decodes it (rANS with the plane's table or a table of its own, bit-packed, or constant) into the
   worker's symbol rows, merges the rows into the stripe's words, and checks the stripe's XXH64.

The kernel calls the same compiled steps as the plane-by-plane path (``rans._decode``,
``bitpack.unpack_chunk``, ``planes._merge_float``, ``checksum._xxh64``, ``entropy._parse_table``), so
there is one decoder, not two. Everything the index says about a chunk has been validated when the
archive was opened (``container.read_index``); the kernel checks the rest itself (checksums, sizes,
tables, streams) and returns what it found instead of raising, and Python names the problem.

Tensors stored as a copy of or a delta to another one, and verbatim runs (the safetensors header,
zstd-compressed), still decode through ``codec.PlaneDecoder``: a sliver of any model.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from . import rans
from .bitpack import unpack_chunk
from .checksum import _xxh64
from .codec import PlaneDecoder
from .container import CHUNK_OWN, CHUNK_RAW, CODEC_CONST, CODEC_RAW, KIND_TENSOR, REF_NONE, Segment
from .dtypes import DTYPES, TOP_MANTISSA_BITS
from .entropy import _TABLE_ERRORS, _fill_decoder_entries, _parse_table
from .errors import FormatError, IntegrityError
from .jit import njit
from .planes import _merge_float

# A plane's row of the kernel's ``plan``: where its chunk lies in the worker's buffer, its size and
# checksum, how it is decoded, the plane's width, where its decoder table lies (in ``shared``, or for a
# chunk with a table of its own, that table in ``tables``), and EXTRA: a constant plane's value, the
# plane table's precision, or the length of the chunk's own table.
START, SIZE, CHECKSUM, HOW, BITS, TABLE, EXTRA = range(7)
CONST, RAW, SHARED, OWN, NO_TABLE = range(5)  # HOW; NO_TABLE: the chunk uses a table its plane lacks
MAX_PLANES = 8  # U64's and F64's

# What the kernel returns: 0, or ``problem << 8 | plane``.
BAD_CHECKSUM, BAD_RAW_SIZE, BAD_STREAM, MISSING_TABLE, BAD_STRIPE = 1, 2, 3, 4, 5
BAD_TABLE = 16  # + the table parser's error (entropy._TABLE_ERRORS)


# Every argument's type is the same whatever the dtype (the output is given in each word size, the
# rows as one 2-D array, the tables concatenated), so that numba compiles the kernel once, not once
# per dtype: with the steps it inlines, that is ~1.3 s of a machine's first run for each.

@njit(cache=True, nogil=True)
def _decode_stripe(stored: np.ndarray, stored16: np.ndarray, stored64: np.ndarray, plan: np.ndarray, n: int,
                   shared: np.ndarray, tables: np.ndarray, rows: np.ndarray, bytes_: np.ndarray, own: np.ndarray,
                   freq: np.ndarray, states: np.ndarray, layout: np.ndarray, out: np.ndarray, out16: np.ndarray,
                   out32: np.ndarray, out64: np.ndarray, seed: int, expected: np.uint64) -> int:
    """Decode one stripe of ``n`` elements into ``out`` (uint8); 0 if every check passed, else
    ``problem << 8 | plane``.

    ``stored`` (with its views ``stored16``, ``stored64``): the chunks, each at an 8-aligned ``START``;
    ``plan``: one row per plane; ``shared``: the planes' decoder tables; ``tables``: the chunks' own
    tables, serialised; ``rows``: a symbol row per plane (``MAX_PLANES`` rows of at least ``n``),
    ``bytes_`` two byte rows (a float's coded low mantissa bytes, narrowed for the merge); ``own``,
    ``freq``, ``states``: scratch for a chunk's own table and the rANS lanes. ``layout``: itemsize,
    exponent bits (0: integer bytes), and for floats the mantissa bits below the coded top bits, those
    of them above whole bytes, and its whole bytes. ``out16``, ``out32``, ``out64``: ``out`` as words
    (``out16`` and ``out32`` empty but the one of a float's itemsize; ``out64`` covers at least the
    whole 32-byte blocks the hash reads).
    """
    floats, low = layout[1] != 0, (stored[:0], stored[:0])
    for j in range(plan.shape[0]):
        chunk = plan[j]
        # A float's raw low mantissa byte (most of F32's and F16's) is merged from where it lies: no copy.
        in_place = floats and j >= 2 and chunk[HOW] == RAW
        problem = _decode_chunk(stored, stored16, stored64, chunk, n, shared, tables, rows[j, :n], own, freq, states,
                                in_place)
        if problem:
            return problem << 8 | j
        if floats and j >= 2:
            if in_place:
                byte = stored[chunk[START]:chunk[START] + n]
            else:
                byte = bytes_[j - 2, :n]
                for i in range(n):
                    byte[i] = rows[j, i]
            low = (byte, low[1]) if j == 2 else (low[0], byte)
    itemsize, n_low, rest, low_bits = layout[0], layout[4], layout[2], layout[3]
    if not floats:
        for j in range(plan.shape[0]):  # integer bytes, most significant plane first
            at = itemsize - 1 - j
            for i in range(n):
                out[i * itemsize + at] = rows[j, i]
    elif itemsize == 2:
        _merge_float(rows[0], rows[1], low, n_low, rest, low_bits, out16[:n])
    else:
        _merge_float(rows[0], rows[1], low, n_low, rest, low_bits, out32[:n])
    if _xxh64(out, out64[:out.size // 32 * 4], seed) != expected:
        return BAD_STRIPE << 8
    return 0


@njit(cache=True, nogil=True, inline="always")
def _decode_chunk(stored: np.ndarray, stored16: np.ndarray, stored64: np.ndarray, chunk: np.ndarray, n: int,
                  shared: np.ndarray, tables: np.ndarray, symbols: np.ndarray, own: np.ndarray, freq: np.ndarray,
                  states: np.ndarray, in_place: bool) -> int:
    """One plane's chunk into ``symbols`` (``n``), but a raw 8-bit chunk ``in_place`` is only checked; 0,
    or the problem found."""
    how = chunk[HOW]
    if how == CONST:
        for i in range(n):
            symbols[i] = chunk[EXTRA]
        return 0
    start, size = chunk[START], chunk[SIZE]
    data = stored[start:start + size]
    checksum = _xxh64(data, stored64[start // 8:start // 8 + size // 32 * 4], np.int64(0)) & np.uint64(0xFFFFFFFF)
    if np.int64(checksum) != chunk[CHECKSUM]:
        return BAD_CHECKSUM
    if how == RAW:
        if in_place:
            return 0 if size == n else BAD_RAW_SIZE
        return 0 if unpack_chunk(data, chunk[BITS], symbols) else BAD_RAW_SIZE
    if how == NO_TABLE:
        return MISSING_TABLE
    if how == OWN:
        table, bits = tables[chunk[TABLE]:chunk[TABLE] + chunk[EXTRA]], chunk[BITS]
        for s in range(1 << bits):
            freq[s] = 0
        error = _parse_table(table, freq[:1 << bits])
        if error:
            return BAD_TABLE + error
        entries = own[:1 << table[0]]
        _fill_decoder_entries(freq[:1 << bits], entries)
        precision = np.int64(table[0])
    else:
        entries = shared[chunk[TABLE]:chunk[TABLE] + (1 << chunk[EXTRA])]
        precision = chunk[EXTRA]
    if size & 1 or not rans._decode(stored16[start // 2:(start + size) // 2], states, precision, entries, symbols):
        return BAD_STREAM
    return 0


_NO_WORDS = {np.dtype(t): np.zeros(0, t) for t in (np.uint16, np.uint32, np.uint64)}  # the word sizes not used


class StripeDecoder:
    """Decodes the stripes of one tensor stored whole (not a copy or delta), each by one kernel call.

    Built per segment when its stripes are planned; the planes' shared decoder tables are built at first
    use, by whichever worker gets there (two building them at once build the same tables).
    """

    def __init__(self, seg: Segment, decoders: list[PlaneDecoder], where: str) -> None:
        self.seg, self.decoders, self.where = seg, decoders, where
        size, ebits, mbits = DTYPES[seg.dtype]
        rest = mbits - TOP_MANTISSA_BITS if ebits else 0
        self.layout = np.array([size, ebits, rest, rest % 8, rest // 8], np.int64)
        self.itemsize = size
        at, self.table_at = 0, []  # each plane's table's place in ``shared``
        for d in decoders:
            self.table_at.append(at)
            at += 0 if d.shared is None else 1 << d.shared.precision
        self._shared: np.ndarray | None = None

    @staticmethod
    def takes(seg: Segment) -> bool:
        """Whether ``seg`` decodes this way: a tensor stored whole (the index validated its planes) of an
        integer dtype or of a 16- or 32-bit float (F64 and the 8-bit floats, rare in checkpoints, decode
        plane by plane: merging them here too cost ~0.6 s more of a machine's first run)."""
        return (seg.kind == KIND_TENSOR and seg.ref == REF_NONE
                and (DTYPES[seg.dtype][1] == 0 or DTYPES[seg.dtype][0] in (2, 4)))

    def fill(self, k: int, n: int, out: np.ndarray, read_into: Callable[[list[tuple[int, np.ndarray]]], None]) -> None:
        """Decode stripe ``k`` (``n`` elements) into ``out`` (uint8) and check it; ``read_into(pieces)``
        reads each ``(archive offset, destination)`` piece. IntegrityError or FormatError naming the
        tensor and the chunk if anything does not check out.

        The Python here is what every stripe costs on top of its kernel, holding the GIL: what many
        threads would wait on. Keep it lean."""
        plan, pieces, tables, chunks = [], [], [], []
        at = own_at = 0
        for plane, decoder, table_at in zip(self.seg.planes, self.decoders, self.table_at):
            if plane.codec == CODEC_CONST:
                plan += (0, 0, 0, CONST, plane.bits, 0, decoder.value)
                chunks.append(None)
                continue
            c = plane.chunks[k]
            if plane.codec == CODEC_RAW or c.mode == CHUNK_RAW:
                how, table, extra = RAW, 0, 0
            elif c.mode == CHUNK_OWN:
                how, table, extra = OWN, own_at, len(c.table)
                tables.append(c.table)
                own_at += extra
            elif decoder.shared is None:
                how, table, extra = NO_TABLE, 0, 0
            else:
                how, table, extra = SHARED, table_at, decoder.shared.precision
            plan += (at, c.size, c.checksum, how, plane.bits, table, extra)
            pieces.append((c.offset, c.size, at))
            chunks.append(c)
            at += -(-c.size // 8) * 8
        work = _WORK.get(self.seg.stripe, at)
        stored = work.stored
        read_into([(offset, stored[start:start + size]) for offset, size, start in pieces])
        nbytes = n * self.itemsize
        aligned = out.__array_interface__["data"][0] % 8 == 0  # word views need it
        target = out if aligned else work.aligned(nbytes)
        out16 = target.view(np.uint16) if self.itemsize == 2 else _NO_WORDS[np.dtype(np.uint16)]
        out32 = target.view(np.uint32) if self.itemsize == 4 else _NO_WORDS[np.dtype(np.uint32)]
        problem = _decode_stripe(stored, work.stored16, work.stored64, np.array(plan, np.int64).reshape(-1, 7), n,
                                 self._tables(), np.frombuffer(bytearray(b"".join(tables)), np.uint8), work.rows,
                                 work.bytes, work.own, work.freq, work.states, self.layout, target, out16, out32,
                                 target[:nbytes - nbytes % 8].view(np.uint64),
                                 self.seg.start + k * self.seg.stripe * self.itemsize, np.uint64(self.seg.hashes[k]))
        if problem:
            self._raise(problem >> 8, chunks[problem & 0xFF], k)
        if target is not out:
            out[:] = target

    def _tables(self) -> np.ndarray:
        if self._shared is None:
            tables = [d.shared_entries() for d in self.decoders if d.shared is not None]
            self._shared = np.concatenate(tables) if tables else _NO_WORDS[np.dtype(np.uint64)].view(np.int64)
        return self._shared

    def _raise(self, problem: int, chunk: object, k: int) -> None:
        where = self.where
        if problem == BAD_STRIPE:
            raise IntegrityError(f"{where}: stripe {k} does not match its recorded checksum")
        if problem == BAD_CHECKSUM:
            raise IntegrityError(f"{where}: checksum mismatch in chunk at offset {chunk.offset}")
        if problem == BAD_STREAM:
            raise IntegrityError(f"{where}: rANS chunk at offset {chunk.offset} is inconsistent")
        if problem == BAD_RAW_SIZE:
            raise FormatError(f"{where}: raw chunk at offset {chunk.offset} has the wrong size")
        if problem == MISSING_TABLE:
            raise FormatError(f"{where}: chunk at offset {chunk.offset} uses a table the plane lacks")
        raise FormatError(f"{where}: frequency table {_TABLE_ERRORS[problem - BAD_TABLE]}")


def warm_up() -> None:
    """Load the stripe kernel (from numba's cache, or compiling it: ~5 s on a machine's first run), on a
    stripe of one element of two constant planes. Its one signature serves every dtype it takes."""
    work = _WORK.get(1, 8)
    out = np.zeros(8, np.uint8)
    plan = np.zeros((2, 7), np.int64)
    plan[:, HOW] = CONST
    no_tables = _NO_WORDS[np.dtype(np.uint64)].view(np.int64)
    _decode_stripe(work.stored, work.stored16, work.stored64, plan, 1, no_tables, np.zeros(0, np.uint8), work.rows,
                   work.bytes, work.own, work.freq, work.states, np.array([2, 8, 5, 5, 0]), out, out.view(np.uint16),
                   _NO_WORDS[np.dtype(np.uint32)], out.view(np.uint64), 0, np.uint64(0))


class _Work:
    """One worker's buffers for decoding stripes: the stored chunks (and their word views), a symbol row
    per plane, and the kernel's scratch. Reused from stripe to stripe: decoding allocates nothing."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.rows = np.empty((MAX_PLANES, step), np.uint16)
        self.bytes = np.empty((2, step), np.uint8)
        self.own = np.empty(1 << rans.MAX_PRECISION, np.int64)
        self.freq = np.empty(1 << 16, np.int64)
        self.states = np.empty(rans.WIDE_LANES, np.int64)
        self.resize(1 << 16)
        self._aligned = np.empty(0, np.uint64)

    def resize(self, nbytes: int) -> None:
        """Room for ``nbytes`` of stored chunks, as bytes and as 16- and 64-bit words."""
        self.stored64 = np.empty(-(-nbytes // 8), np.uint64)
        self.stored = self.stored64.view(np.uint8)
        self.stored16 = self.stored64.view(np.uint16)

    def aligned(self, nbytes: int) -> np.ndarray:
        """An 8-aligned buffer of ``nbytes`` (a stripe whose place in the output is not aligned)."""
        if self._aligned.size * 8 < nbytes:
            self._aligned = np.empty(-(-nbytes // 8), np.uint64)
        return self._aligned.view(np.uint8)[:nbytes]


class _Workers(threading.local):
    def get(self, step: int, stored: int) -> _Work:
        work = self.__dict__.get("work")
        if work is None or work.step < step:
            work = self.__dict__["work"] = _Work(step)
        if work.stored.size < stored:
            work.resize(stored)
        return work


_WORK = _Workers()
