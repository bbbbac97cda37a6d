"""Stripes of tensors decoded a run at a time by one compiled call: what unpack and loading do for nearly
every stripe.

A stripe is chunk ``k`` of every plane of a tensor (``codec.py``). Decoded plane by plane through
``codec.PlaneDecoder``, a stripe cost ~10 calls into numba: a read, a checksum and a decode per plane,
a merge, a hash. Each call gives the GIL up and takes it back, and the Python around them holds it:
on many cores that is what stops decoding first, as every decoding thread waits on the one GIL. Here
a run of stripes (a worker's job: several of a large tensor, dozens of small ones) costs two calls
and a few numpy operations, however many stripes and chunks it holds:

1. one ``pread`` of the bytes from the run's first chunk to its last: a run's chunks lie back to
   back in the archive (it is written stripe by stripe, in file order);
2. one nogil kernel (``_decode_stripes``) that, stripe by stripe and plane by plane, copies the
   chunk to an 8-byte aligned place (the kernel reads it as 16- and 64-bit words), checks its
   checksum, decodes it (rANS with the plane's table or a table of its own, bit-packed, or
   constant) into the worker's symbol rows, merges the rows into the stripe's words in the output,
   and checks the stripe's XXH64.

What the kernel needs to know of each chunk and stripe is laid out in numpy arrays once per tensor
(``StripeDecoder``), so a run's arrays are slices of them (or, for a run of several small tensors,
their concatenation): no Python per stripe or per chunk while decoding. That Python mattered more
than its size says: run between kernels, whose data has pushed it out of the caches, a line of it
costs ~10x what it does in a loop (*Jobs that hold the GIL less* in benchmarks/RESULTS.md).

The kernel calls the same compiled steps as the plane-by-plane path (``rans._decode``,
``bitpack.unpack_chunk``, ``planes._merge_float``, ``checksum._xxh64``, ``entropy._parse_table``), so
there is one decoder, not two. Everything the index says about a chunk has been validated when the
archive was opened (``container.read_index``); the kernel checks the rest itself (checksums, sizes,
tables, streams, that every chunk lies in what was read) and returns what it found instead of
raising, and Python names the problem.

Tensors stored as a copy of or a delta to another one, and verbatim runs (the safetensors header,
zstd-compressed), still decode through ``codec.PlaneDecoder``: a sliver of any model.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from . import rans
from .bitpack import unpack_chunk
from .checksum import _xxh64
from .codec import PlaneDecoder
from .container import CHUNK_OWN, CHUNK_RAW, CODEC_CONST, CODEC_RAW, KIND_TENSOR, REF_NONE, Segment
from .dtypes import DTYPES, fields
from .entropy import _TABLE_ERRORS, _fill_decoder_entries, _parse_table
from .errors import FormatError, WeightpackError, damage
from .jit import njit
from .planes import _merge_float

ReadInto = Callable[[list[tuple[int, np.ndarray]]], None]  # reads (archive offset, destination) pieces

# A plane's row of the kernel's ``plan``: where its chunk lies in the archive, its size and checksum, how
# it is decoded, the plane's width, where its decoder table lies (in ``shared``, or for a chunk with a
# table of its own, that table in ``tables``; both from the stripe's bases), and EXTRA: a constant
# plane's value, the plane table's precision, or the length of the chunk's own table.
OFFSET, SIZE, CHECKSUM, HOW, BITS, TABLE, EXTRA = range(7)
CONST, RAW, SHARED, OWN, NO_TABLE = range(5)  # HOW; NO_TABLE: the chunk uses a table its plane lacks
MAX_PLANES = 8  # U64's and F64's

# A stripe's row of the kernel's ``stripes``: its planes, its elements, the five ``dtypes.fields`` of its
# dtype from LAYOUT on, its hash's seed (its byte offset in the original file), and where its tensor's
# tables begin in ``shared`` and ``tables``.
PLANES, ELEMENTS, LAYOUT, SEED, SHARED_AT, OWN_AT = 0, 1, 2, 7, 8, 9
STRIPE_FIELDS = 10

# What the kernel returns: 0, or ``stripe << 16 | problem << 8 | plane``.
BAD_CHECKSUM, BAD_RAW_SIZE, BAD_STREAM, MISSING_TABLE, BAD_STRIPE, NO_ROOM = 1, 2, 3, 4, 5, 6
BAD_TABLE = 16  # + the table parser's error (entropy._TABLE_ERRORS)

# Every argument's type is the same whatever the dtype (the output is given in each word size, the
# rows as one 2-D array, the tables concatenated), so that numba compiles the kernel once, not once
# per dtype: with the steps it inlines, that is ~1.3 s of a machine's first run for each.

@njit(cache=True, nogil=True)
def _decode_stripes(stored: np.ndarray, stored16: np.ndarray, stored64: np.ndarray, starts: np.ndarray,
                    plan: np.ndarray, stripes: np.ndarray, expected: np.ndarray, shared: np.ndarray,
                    tables: np.ndarray, rows: np.ndarray, bytes_: np.ndarray, own: np.ndarray, freq: np.ndarray,
                    states: np.ndarray, spare: np.ndarray, spare16: np.ndarray, spare32: np.ndarray,
                    spare64: np.ndarray, out: np.ndarray, out16: np.ndarray, out32: np.ndarray,
                    out64: np.ndarray) -> int:
    """Decode a run of consecutive stripes into ``out`` (uint8, seen as words ``out16``, ``out32``,
    ``out64``: its whole 8-byte words); 0 if every check passed, else ``stripe << 16 | problem << 8 |
    plane``.

    ``stored`` (with its views ``stored16``, ``stored64``): the run's chunks, each at the 8-aligned place
    ``starts`` gives for its row of ``plan`` (a row per plane of each stripe); ``stripes``: a row per
    stripe, ``expected`` its XXH64. A stripe that the word views of ``out`` do not reach (after an
    odd-sized tensor, or in the last bytes of ``out``) is decoded into ``spare`` (and its views) and
    copied. Nothing is read or written outside the arrays given: a stripe or chunk that does not fit
    them is refused. The rest: ``_decode_stripe``.
    """
    first = at = 0
    for s in range(stripes.shape[0]):
        planes, n, itemsize = stripes[s, PLANES], stripes[s, ELEMENTS], stripes[s, LAYOUT]
        nbytes = n * itemsize
        if (n > rows.shape[1] or planes > rows.shape[0] or first + planes > plan.shape[0]
                or first + planes > starts.size or at + nbytes > out.size):
            return s << 16 | NO_ROOM << 8
        for j in range(first, first + planes):
            if starts[j] < 0 or starts[j] % 8 or starts[j] + plan[j, SIZE] > stored.size:
                return s << 16 | NO_ROOM << 8 | (j - first)
        direct = at % 8 == 0 and at + nbytes <= out64.size * 8
        if not direct and nbytes > spare.size:
            return s << 16 | NO_ROOM << 8
        base = at if direct else 0
        o8, o16, o32, o64 = (out, out16, out32, out64) if direct else (spare, spare16, spare32, spare64)
        problem = _decode_stripe(stored, stored16, stored64, plan[first:first + planes],
                                 starts[first:first + planes], n, shared, stripes[s, SHARED_AT], tables,
                                 stripes[s, OWN_AT], rows, bytes_, own, freq, states, stripes[s, LAYOUT:LAYOUT + 5],
                                 o8[base:base + nbytes], o16[base // 2:(base + nbytes) // 2],
                                 o32[base // 4:(base + nbytes) // 4], o64[base // 8:(base + nbytes) // 8],
                                 stripes[s, SEED], expected[s])
        if problem:
            return s << 16 | problem
        if not direct:
            for i in range(nbytes):
                out[at + i] = spare[i]
        first += planes
        at += nbytes
    return 0


@njit(cache=True, nogil=True, inline="always")
def _decode_stripe(stored: np.ndarray, stored16: np.ndarray, stored64: np.ndarray, plan: np.ndarray,
                   starts: np.ndarray, n: int, shared: np.ndarray, shared_at: int, tables: np.ndarray, own_at: int,
                   rows: np.ndarray, bytes_: np.ndarray, own: np.ndarray, freq: np.ndarray, states: np.ndarray,
                   layout: np.ndarray, out: np.ndarray, out16: np.ndarray, out32: np.ndarray, out64: np.ndarray,
                   seed: int, expected: np.uint64) -> int:
    """Decode one stripe of ``n`` elements into ``out`` (uint8); 0 if every check passed, else
    ``problem << 8 | plane``. One stripe of ``_decode_stripes``.

    ``stored`` (with its views ``stored16``, ``stored64``): the chunks, plane ``j``'s at the 8-aligned
    ``starts[j]``; ``plan``: one row per plane; ``shared``: decoder tables, this tensor's from
    ``shared_at``; ``tables``: chunks' own tables, serialised, this tensor's from ``own_at``; ``rows``: a
    symbol row per plane (``MAX_PLANES`` rows of at least ``n``), ``bytes_`` two byte rows (a float's
    coded low mantissa bytes, narrowed for the merge); ``own``, ``freq``, ``states``: scratch for a
    chunk's own table and the rANS lanes. ``layout``: ``dtypes.fields`` of the dtype (itemsize,
    exponent bits (0: integer bytes), and for floats the mantissa bits below the coded top bits, those
    of them above whole bytes, and its whole bytes). ``out16``, ``out32``, ``out64``: ``out`` as words
    (those of other word sizes are not used).
    """
    floats, low = layout[1] != 0, (stored[:0], stored[:0])
    for j in range(plan.shape[0]):
        chunk, start = plan[j], starts[j]
        # A float's raw low mantissa byte (most of F32's and F16's) is merged from where it lies: no copy.
        in_place = floats and j >= 2 and chunk[HOW] == RAW
        problem = _decode_chunk(stored, stored16, stored64, chunk, start, n, shared, shared_at, tables, own_at,
                                rows[j, :n], own, freq, states, in_place)
        if problem:
            return problem << 8 | j
        if floats and j >= 2:
            if in_place:
                byte = stored[start:start + n]
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
def _decode_chunk(stored: np.ndarray, stored16: np.ndarray, stored64: np.ndarray, chunk: np.ndarray, start: int,
                  n: int, shared: np.ndarray, shared_at: int, tables: np.ndarray, own_at: int, symbols: np.ndarray,
                  own: np.ndarray, freq: np.ndarray, states: np.ndarray, in_place: bool) -> int:
    """One plane's chunk, at ``start`` of ``stored``, into ``symbols`` (``n``), but a raw 8-bit chunk
    ``in_place`` is only checked; 0, or the problem found."""
    how = chunk[HOW]
    if how == CONST:
        for i in range(n):
            symbols[i] = chunk[EXTRA]
        return 0
    size = chunk[SIZE]
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
        at, bits = own_at + chunk[TABLE], chunk[BITS]
        table = tables[at:at + chunk[EXTRA]]
        for s in range(1 << bits):
            freq[s] = 0
        error = _parse_table(table, freq[:1 << bits])
        if error:
            return BAD_TABLE + error
        entries = own[:1 << table[0]]
        _fill_decoder_entries(freq[:1 << bits], entries)
        precision = np.int64(table[0])
    else:
        at = shared_at + chunk[TABLE]
        entries = shared[at:at + (1 << chunk[EXTRA])]
        precision = chunk[EXTRA]
    if size & 1 or not rans._decode(stored16[start // 2:(start + size) // 2], states, precision, entries, symbols):
        return BAD_STREAM
    return 0


class _Arrays(NamedTuple):
    """A tensor's stripes as the kernel takes them (``StripeDecoder.arrays``), laid out once, so that a run of
    them costs a few slices (see the module's docstring)."""

    plan: np.ndarray  # int64, a row per plane of each stripe (stripes * planes rows)
    stripes: np.ndarray  # int64, a row per stripe (its SHARED_AT and OWN_AT: 0, this tensor's tables alone)
    expected: np.ndarray  # uint64, each stripe's XXH64
    shared: np.ndarray  # int64, the planes' decoder tables end to end
    tables: np.ndarray  # uint8, the chunks' own tables end to end
    planes: int
    step: int  # elements a stripe
    stripe_bytes: int


class StripeDecoder:
    """What the stripe kernel needs of one tensor stored whole (not a copy or delta): its planes, its
    decoders (which validated the planes' tables and constants), where it is read from, and (built at
    first use, by whichever worker gets there) the kernel's arrays for all its stripes."""

    def __init__(self, seg: Segment, decoders: list[PlaneDecoder], where: str, read_into: ReadInto) -> None:
        self.seg, self.decoders, self.where, self.read_into = seg, decoders, where, read_into
        self.itemsize = fields(seg.dtype)[0]
        self._arrays: _Arrays | None = None
        self._lock = threading.Lock()

    @staticmethod
    def takes(seg: Segment) -> bool:
        """Whether ``seg`` decodes this way: a tensor stored whole (the index validated its planes) of an
        integer dtype or of a 16- or 32-bit float (F64 and the 8-bit floats, rare in checkpoints, decode
        plane by plane: merging them here too cost ~0.6 s more of a machine's first run)."""
        return (seg.kind == KIND_TENSOR and seg.ref == REF_NONE
                and (DTYPES[seg.dtype][1] == 0 or DTYPES[seg.dtype][0] in (2, 4)))

    def arrays(self) -> _Arrays:
        """The kernel's arrays for every stripe, laid out once (numpy, a few list comprehensions a plane)."""
        if self._arrays is None:
            with self._lock:
                if self._arrays is None:
                    self._arrays = self._lay_out()
        return self._arrays

    def _lay_out(self) -> _Arrays:
        seg, n_planes = self.seg, len(self.seg.planes)
        count = seg.stripes
        plan = np.zeros((count, n_planes, 7), np.int64)
        shared, own, shared_at, own_at = [], [], 0, 0
        for j, (plane, decoder) in enumerate(zip(seg.planes, self.decoders)):
            rows = plan[:, j]
            rows[:, BITS] = plane.bits
            if plane.codec == CODEC_CONST:
                rows[:, HOW], rows[:, EXTRA] = CONST, decoder.value
                continue
            chunks = plane.chunks
            rows[:, OFFSET:CHECKSUM + 1] = [(c.offset, c.size, c.checksum) for c in chunks]
            if plane.codec == CODEC_RAW:
                rows[:, HOW] = RAW
                continue
            if decoder.shared is None:
                rows[:, HOW] = NO_TABLE
            else:
                rows[:, HOW], rows[:, TABLE], rows[:, EXTRA] = SHARED, shared_at, decoder.shared.precision
                shared.append(decoder.shared_entries())
                shared_at += 1 << decoder.shared.precision
            for k, c in enumerate(chunks):
                if c.mode == CHUNK_RAW:
                    rows[k, HOW] = RAW
                elif c.mode == CHUNK_OWN:
                    rows[k, HOW], rows[k, TABLE], rows[k, EXTRA] = OWN, own_at, len(c.table)
                    own.append(c.table)
                    own_at += len(c.table)
        first = np.arange(count) * seg.stripe  # each stripe's first element
        stripes = np.zeros((count, STRIPE_FIELDS), np.int64)
        stripes[:, PLANES:LAYOUT + 5] = (n_planes, 0, *fields(seg.dtype))
        stripes[:, ELEMENTS] = np.minimum(seg.stripe, seg.count - first)
        stripes[:, SEED] = seg.start + first * self.itemsize
        return _Arrays(plan.reshape(-1, 7), stripes, np.array(seg.hashes, np.uint64), _end_to_end(shared),
                       np.frombuffer(bytearray(b"".join(own)), np.uint8),  # writable: one kernel type
                       n_planes, seg.stripe, seg.stripe * self.itemsize)

    def problem(self, problem: int, k: int, plane: int) -> WeightpackError:
        """The error for what the kernel found in stripe ``k``, in ``plane``: the words every decoder uses
        for the same finding (``errors.damage``)."""
        if problem >= BAD_TABLE:
            return FormatError(f"{self.where}: frequency table {_TABLE_ERRORS[problem - BAD_TABLE]}")
        if problem == NO_ROOM:
            return WeightpackError(f"{self.where}: stripe {k} does not fit the decoder's buffers (a weightpack bug)")
        chunk = None
        if problem != BAD_STRIPE and self.seg.planes[plane].codec != CODEC_CONST:
            chunk = self.seg.planes[plane].chunks[k]
        return damage(_DAMAGE_OF[problem], self.where, chunk.offset if chunk else None, k)


def _end_to_end(tables: list[np.ndarray]) -> np.ndarray:
    """Decoder tables (int64) end to end, as the kernel takes them: a lone one as it is, not a copy (most
    tensors have one coded plane, and most runs of stripes one tensor)."""
    if len(tables) == 1:
        return tables[0]
    return np.concatenate(tables) if tables else np.zeros(0, np.int64)


_DAMAGE_OF = {BAD_STRIPE: "stripe", BAD_CHECKSUM: "checksum", BAD_STREAM: "stream", BAD_RAW_SIZE: "raw size",
              MISSING_TABLE: "no table"}  # what the kernel reports -> its words (``errors.damage``)


class StripeRun(NamedTuple):
    """Stripes ``first`` to ``end`` of a tensor the stripe kernel decodes (``decode_runs``)."""

    decoder: StripeDecoder
    first: int
    end: int

    @property
    def seg(self) -> Segment:
        return self.decoder.seg

    @property
    def nbytes(self) -> int:
        seg = self.decoder.seg
        return (min(self.end * seg.stripe, seg.count) - self.first * seg.stripe) * self.decoder.itemsize

    def split(self, nbytes: int) -> tuple[StripeRun, StripeRun | None]:
        """The fewest first stripes holding at least ``nbytes`` bytes, and the rest (None if none)."""
        cut = min(self.end, self.first + max(1, -(-nbytes // (self.decoder.seg.stripe * self.decoder.itemsize))))
        return self._replace(end=cut), (self._replace(first=cut) if cut < self.end else None)


def decode_runs(runs: list[StripeRun], out: np.ndarray) -> None:
    """Decode runs of stripes, back to back in ``out`` (uint8, exactly their bytes), and check them: one read
    of all their chunks (stripes consecutive in the file have them back to back), each to an 8-aligned
    place of the worker's buffer, and one kernel call, so the runs give the GIL up and take it back
    twice, whatever their number. Every run comes from the archive of the first one. IntegrityError or
    FormatError naming the tensor and the chunk if anything does not check out.

    The Python here is what every run costs on top of the kernel, holding the GIL: what many threads
    would wait on. Keep it lean.
    """
    whole = out[:out.size - out.size % 8]  # for its word views
    words = whole.view(np.uint64)
    if not words.flags.aligned:  # the kernel sees its output as words: decoded aside, copied
        aside = np.empty(-(-out.size // 8), np.uint64).view(np.uint8)[:out.size]
        decode_runs(runs, aside)
        out[:] = aside
        return
    if len(runs) == 1:  # (the kernel's arrays are slices of the tensor's: no copy)
        (run,) = runs
        a, first, end = run.decoder.arrays(), run.first, run.end
        plan, stripes, expected = a.plan[first * a.planes:end * a.planes], a.stripes[first:end], a.expected[first:end]
        shared, tables, step, spare = a.shared, a.tables, a.step, a.stripe_bytes
    else:
        arrays = [r.decoder.arrays() for r in runs]
        plan = np.concatenate([a.plan[r.first * a.planes:r.end * a.planes] for r, a in zip(runs, arrays)])
        stripes = np.concatenate([a.stripes[r.first:r.end] for r, a in zip(runs, arrays)])
        expected = np.concatenate([a.expected[r.first:r.end] for r, a in zip(runs, arrays)])
        counts = [r.end - r.first for r in runs]
        stripes[:, SHARED_AT] = np.repeat(np.cumsum([0] + [a.shared.size for a in arrays[:-1]]), counts)
        stripes[:, OWN_AT] = np.repeat(np.cumsum([0] + [a.tables.size for a in arrays[:-1]]), counts)
        shared, tables = _end_to_end([a.shared for a in arrays]), np.concatenate([a.tables for a in arrays])
        step, spare = max(a.step for a in arrays), max(a.stripe_bytes for a in arrays)
    sizes = plan[:, SIZE]
    room = (sizes + 7) & -8
    starts = np.cumsum(room) - room
    work = _WORK.get(step, int(starts[-1] + room[-1]) if starts.size else 0, spare)
    stored = work.stored
    runs[0].decoder.read_into([(offset, stored[at:at + size]) for offset, at, size
                               in zip(plan[:, OFFSET].tolist(), starts.tolist(), sizes.tolist()) if size])
    problem = _decode_stripes(stored, work.stored16, work.stored64, starts, plan, stripes, expected, shared, tables,
                              work.rows, work.bytes, work.own, work.freq, work.states, work.spare, work.spare16,
                              work.spare32, work.spare64, out, whole.view(np.uint16), whole.view(np.uint32), words)
    if problem:
        s = problem >> 16
        for r in runs:
            if s < r.end - r.first:
                raise r.decoder.problem(problem >> 8 & 0xFF, r.first + s, problem & 0xFF)
            s -= r.end - r.first


def warm_up() -> None:
    """Load the stripe kernel (from numba's cache, or compiling it: ~5 s on a machine's first run), on a
    stripe of one element of two constant planes. Its one signature serves every dtype it takes."""
    work = _WORK.get(1, 8, 8)
    out = np.zeros(8, np.uint8)
    plan = np.zeros((2, 7), np.int64)
    plan[:, HOW] = CONST
    stripes = np.array([[2, 1, *fields("BF16"), 0, 0, 0]], np.int64)
    _decode_stripes(work.stored, work.stored16, work.stored64, np.zeros(2, np.int64), plan, stripes,
                    np.zeros(1, np.uint64), np.zeros(0, np.int64), np.zeros(0, np.uint8), work.rows, work.bytes,
                    work.own, work.freq, work.states, work.spare, work.spare16, work.spare32, work.spare64, out,
                    out.view(np.uint16), out.view(np.uint32), out.view(np.uint64))


def _words(nbytes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """An 8-byte aligned buffer of at least ``nbytes`` bytes, as bytes and as 16-, 32- and 64-bit words."""
    words = np.empty(-(-nbytes // 8), np.uint64)
    return words.view(np.uint8), words.view(np.uint16), words.view(np.uint32), words


class _Work:
    """One worker's buffers for decoding stripes: a run's chunks (and their word views), a symbol row per
    plane, a spare stripe, and the kernel's scratch. Reused from run to run: decoding allocates nothing
    once they have grown."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.rows = np.empty((MAX_PLANES, step), np.uint16)
        self.bytes = np.empty((2, step), np.uint8)
        self.own = np.empty(1 << rans.MAX_PRECISION, np.int64)
        self.freq = np.empty(1 << 16, np.int64)
        self.states = np.empty(rans.WIDE_LANES, np.int64)
        self.stored, self.stored16, _, self.stored64 = _words(0)
        self.spare, self.spare16, self.spare32, self.spare64 = _words(0)


class _Workers(threading.local):
    def get(self, step: int, stored: int, spare: int) -> _Work:
        """This thread's buffers, with rows of ``step`` symbols, room for ``stored`` bytes of chunks and a
        spare stripe of ``spare`` bytes, at least."""
        work = self.__dict__.get("work")
        if work is None or work.step < step:
            work = self.__dict__["work"] = _Work(step)
        if work.stored.size < stored:
            work.stored, work.stored16, _, work.stored64 = _words(stored)
        if work.spare.size < spare:
            work.spare, work.spare16, work.spare32, work.spare64 = _words(spare)
        return work


_WORK = _Workers()
