"""Stripes of tensors decoded a run at a time by one compiled call: what unpack and loading do for nearly
every stripe.

A stripe is chunk ``k`` of every plane of a tensor (``codec.py``). Decoded plane by plane through
``codec.PlaneDecoder``, a stripe cost ~10 calls into numba: a read, a checksum and a decode per plane,
a merge, a hash. Each call gives the GIL up and takes it back, and on two cores that waiting was
17 ms of a 90 ms F32 unpack (*Where two cores go* in benchmarks/RESULTS.md); on many cores, or beside
other Python threads, it is what stops decoding first. Here a run of stripes (a worker's job: two of a
large BF16 tensor, dozens of small ones) costs two:

1. one ``preadv`` of the run's chunks, which lie back to back in the archive, each into an 8-byte
   aligned place of the worker's buffer, so that the kernel can read them as 16- and 64-bit words;
2. one nogil kernel (``_decode_stripes``) that, stripe by stripe and plane by plane, checks the
   chunk's checksum, then decodes it (rANS with the plane's table or a table of its own, bit-packed,
   or constant) into the worker's symbol rows, merges the rows into the stripe's words in the output,
   and checks the stripe's XXH64.

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
from .container import CHUNK_OWN, CHUNK_RAW, CODEC_CONST, CODEC_RAW, KIND_TENSOR, REF_NONE, Chunk, Segment
from .dtypes import DTYPES, fields
from .entropy import _TABLE_ERRORS, _fill_decoder_entries, _parse_table
from .errors import FormatError, WeightpackError, damage
from .jit import njit
from .planes import _merge_float

ReadInto = Callable[[list[tuple[int, np.ndarray]]], None]  # reads (archive offset, destination) pieces

# A plane's row of the kernel's ``plan``: where its chunk lies in the worker's buffer, its size and
# checksum, how it is decoded, the plane's width, where its decoder table lies (in ``shared``, or for a
# chunk with a table of its own, that table in ``tables``), and EXTRA: a constant plane's value, the
# plane table's precision, or the length of the chunk's own table.
START, SIZE, CHECKSUM, HOW, BITS, TABLE, EXTRA = range(7)
CONST, RAW, SHARED, OWN, NO_TABLE = range(5)  # HOW; NO_TABLE: the chunk uses a table its plane lacks
MAX_PLANES = 8  # U64's and F64's

# What the kernel returns: 0, or ``stripe << 16 | problem << 8 | plane``.
BAD_CHECKSUM, BAD_RAW_SIZE, BAD_STREAM, MISSING_TABLE, BAD_STRIPE, NO_ROOM = 1, 2, 3, 4, 5, 6
BAD_TABLE = 16  # + the table parser's error (entropy._TABLE_ERRORS)


# Every argument's type is the same whatever the dtype (the output is given in each word size, the
# rows as one 2-D array, the tables concatenated), so that numba compiles the kernel once, not once
# per dtype: with the steps it inlines, that is ~1.3 s of a machine's first run for each.

@njit(cache=True, nogil=True)
def _decode_stripes(stored: np.ndarray, stored16: np.ndarray, stored64: np.ndarray, plan: np.ndarray,
                    stripes: np.ndarray, expected: np.ndarray, shared: np.ndarray, tables: np.ndarray, rows: np.ndarray,
                    bytes_: np.ndarray, own: np.ndarray, freq: np.ndarray, states: np.ndarray, out: np.ndarray,
                    out16: np.ndarray, out32: np.ndarray, out64: np.ndarray) -> int:
    """Decode a run of stripes into ``out`` (uint8, seen as words ``out16``, ``out32``, ``out64``); 0 if
    every check passed, else ``stripe << 16 | problem << 8 | plane``.

    ``stripes``: a row per stripe (its first row of ``plan``, its planes, elements, byte offset in ``out``,
    the five ``layout`` fields of ``_decode_stripe``, and its hash's seed), ``expected`` its XXH64; ``plan``: a row per
    plane of each stripe. Every stripe must lie where the word views reach (``decode_run`` sees to it):
    one that does not is refused, never written. The rest: ``_decode_stripe``.
    """
    for s in range(stripes.shape[0]):
        first, planes, n, at, itemsize = stripes[s, 0], stripes[s, 1], stripes[s, 2], stripes[s, 3], stripes[s, 4]
        nbytes = n * itemsize
        if (n > rows.shape[1] or planes > rows.shape[0] or at % 8 != 0 or at + nbytes > out.size
                or at + nbytes > out64.size * 8):
            return s << 16 | NO_ROOM << 8  # not where its word views can reach: never written
        problem = _decode_stripe(stored, stored16, stored64, plan[first:first + planes], n, shared, tables, rows,
                                 bytes_, own, freq, states, stripes[s, 4:9], out[at:at + nbytes],
                                 out16[at // 2:(at + nbytes) // 2], out32[at // 4:(at + nbytes) // 4],
                                 out64[at // 8:(at + nbytes) // 8], stripes[s, 9], expected[s])
        if problem:
            return s << 16 | problem
    return 0


@njit(cache=True, nogil=True, inline="always")
def _decode_stripe(stored: np.ndarray, stored16: np.ndarray, stored64: np.ndarray, plan: np.ndarray, n: int,
                   shared: np.ndarray, tables: np.ndarray, rows: np.ndarray, bytes_: np.ndarray, own: np.ndarray,
                   freq: np.ndarray, states: np.ndarray, layout: np.ndarray, out: np.ndarray, out16: np.ndarray,
                   out32: np.ndarray, out64: np.ndarray, seed: int, expected: np.uint64) -> int:
    """Decode one stripe of ``n`` elements into ``out`` (uint8); 0 if every check passed, else
    ``problem << 8 | plane``. One stripe of ``_decode_stripes``.

    ``stored`` (with its views ``stored16``, ``stored64``): the chunks, each at an 8-aligned ``START``;
    ``plan``: one row per plane; ``shared``: the planes' decoder tables; ``tables``: the chunks' own
    tables, serialised; ``rows``: a symbol row per plane (``MAX_PLANES`` rows of at least ``n``),
    ``bytes_`` two byte rows (a float's coded low mantissa bytes, narrowed for the merge); ``own``,
    ``freq``, ``states``: scratch for a chunk's own table and the rANS lanes. ``layout``: itemsize,
    exponent bits (0: integer bytes), and for floats the mantissa bits below the coded top bits, those
    of them above whole bytes, and its whole bytes. ``out16``, ``out32``, ``out64``: ``out`` as words
    (those of other word sizes are not used).
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


class StripeDecoder:
    """What the stripe kernel needs of one tensor stored whole (not a copy or delta): its planes, its
    decoders (which validated the planes' tables and constants), and where it is read from.

    Built per segment when its stripes are planned; the planes' shared decoder tables are built at first
    use, by whichever worker gets there (two building them at once build the same tables).
    """

    def __init__(self, seg: Segment, decoders: list[PlaneDecoder], where: str, read_into: ReadInto) -> None:
        self.seg, self.decoders, self.where, self.read_into = seg, decoders, where, read_into
        self.layout = fields(seg.dtype)
        self.itemsize = self.layout[0]
        at, self.table_at = 0, []  # each plane's table's place in ``shared_tables()``
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

    def shared_tables(self) -> np.ndarray:
        """The decoder tables of the planes that have one, end to end (int64)."""
        if self._shared is None:
            self._shared = _end_to_end([d.shared_entries() for d in self.decoders if d.shared is not None])
        return self._shared

    def problem(self, problem: int, chunk: Chunk | None, k: int) -> WeightpackError:
        """The error for what the kernel found in stripe ``k`` (``chunk``: the plane's chunk it was in): the
        words every decoder uses for the same finding (``errors.damage``)."""
        if problem >= BAD_TABLE:
            return FormatError(f"{self.where}: frequency table {_TABLE_ERRORS[problem - BAD_TABLE]}")
        if problem == NO_ROOM:
            return WeightpackError(f"{self.where}: stripe {k} does not fit the decoder's buffers (a weightpack bug)")
        return damage(_DAMAGE_OF[problem], self.where, chunk.offset if chunk else None, k)


def _end_to_end(tables: list[np.ndarray]) -> np.ndarray:
    """Decoder tables (int64) end to end, as the kernel takes them: a lone one as it is, not a copy (most
    tensors have one coded plane, and most runs of stripes one tensor)."""
    if len(tables) == 1:
        return tables[0]
    return np.concatenate(tables) if tables else np.zeros(0, np.int64)


_DAMAGE_OF = {BAD_STRIPE: "stripe", BAD_CHECKSUM: "checksum", BAD_STREAM: "stream", BAD_RAW_SIZE: "raw size",
              MISSING_TABLE: "no table"}  # what the kernel reports -> its words (``errors.damage``)


class Stripe:
    """Stripe ``k`` (``n`` elements) of a tensor the stripe kernel decodes. Called with its output (uint8,
    ``n * itemsize`` bytes), it decodes alone; ``decode_run`` decodes a run of them in one call."""

    __slots__ = ("decoder", "k", "n")

    def __init__(self, decoder: StripeDecoder, k: int, n: int) -> None:
        self.decoder, self.k, self.n = decoder, k, n

    def __call__(self, out: np.ndarray) -> None:
        decode_run([(self, 0)], out)


def decode_run(stripes: list[tuple[Stripe, int]], out: np.ndarray) -> None:
    """Decode each ``(stripe, byte offset in out)`` into ``out`` (uint8) and check it: one read of all their
    chunks (stripes consecutive in the file have them back to back) and one kernel call, so a run of
    stripes gives the GIL up and takes it back twice, whatever their number. Every stripe comes from the
    archive of the first one. IntegrityError or FormatError naming the tensor and the chunk if anything
    does not check out.

    The kernel writes a stripe through word views of ``out``; a stripe they cannot reach (at a place not
    8-byte aligned, after an odd-sized tensor, or ending in ``out``'s last bytes, which its 64-bit view
    does not hold) is decoded aside, into an aligned buffer, and copied: a call of its own.
    """
    aligned, reach = out.__array_interface__["data"][0] % 8 == 0, out.size - out.size % 8  # where its views end
    direct, aside = [], []
    for stripe, at in stripes:
        if not aligned or at % 8 or at + stripe.n * stripe.decoder.itemsize > reach:
            aside.append((stripe, at))
        else:
            direct.append((stripe, at))
    if direct:
        _decode_reachable(direct, out)
    for stripe, at in aside:
        nbytes = stripe.n * stripe.decoder.itemsize
        spare = _WORK.get(stripe.n, 0, nbytes).spare[:-(-nbytes // 8) * 8]
        _decode_reachable([(stripe, 0)], spare)
        out[at:at + nbytes] = spare[:nbytes]


def _decode_reachable(stripes: list[tuple[Stripe, int]], out: np.ndarray) -> None:
    """``decode_run`` of stripes that all lie where ``out``'s word views reach (``out`` 8-byte aligned).

    The Python here is what every run costs on top of the kernel, holding the GIL: what many threads
    would wait on. Keep it lean.
    """
    plan, rows, expected, pieces, tables, chunks, shared, shared_at = [], [], [], [], [], [], [], {}
    at = own_at = shared_size = longest = 0
    for stripe, offset in stripes:
        d, k = stripe.decoder, stripe.k
        base = shared_at.get(d)
        if base is None:
            table = d.shared_tables()
            base = shared_at[d] = shared_size
            shared.append(table)
            shared_size += table.size
        seg, stripe_chunks = d.seg, []
        rows.append((len(plan) // 7, len(seg.planes), stripe.n, offset, *d.layout,
                     seg.start + k * seg.stripe * d.itemsize))
        expected.append(seg.hashes[k])
        longest = max(longest, stripe.n)
        for plane, decoder, table_at in zip(seg.planes, d.decoders, d.table_at):
            if plane.codec == CODEC_CONST:
                plan += (0, 0, 0, CONST, plane.bits, 0, decoder.value)
                stripe_chunks.append(None)
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
                how, table, extra = SHARED, base + table_at, decoder.shared.precision
            plan += (at, c.size, c.checksum, how, plane.bits, table, extra)
            pieces.append((c.offset, c.size, at))
            stripe_chunks.append(c)
            at += -(-c.size // 8) * 8
        chunks.append(stripe_chunks)
    work = _WORK.get(longest, at, 0)
    stored = work.stored
    stripes[0][0].decoder.read_into([(offset, stored[start:start + size]) for offset, size, start in pieces])
    whole = out[:out.size - out.size % 8]  # for its word views
    problem = _decode_stripes(stored, work.stored16, work.stored64, np.array(plan, np.int64).reshape(-1, 7),
                              np.array(rows, np.int64), np.array(expected, np.uint64),
                              _end_to_end(shared),
                              np.frombuffer(bytearray(b"".join(tables)), np.uint8), work.rows, work.bytes, work.own,
                              work.freq, work.states, out, whole.view(np.uint16), whole.view(np.uint32),
                              whole.view(np.uint64))
    if problem:
        s, plane = problem >> 16, problem & 0xFF
        stripe = stripes[s][0]
        raise stripe.decoder.problem(problem >> 8 & 0xFF, chunks[s][plane], stripe.k)


def warm_up() -> None:
    """Load the stripe kernel (from numba's cache, or compiling it: ~5 s on a machine's first run), on a
    stripe of one element of two constant planes. Its one signature serves every dtype it takes."""
    work = _WORK.get(1, 8, 8)
    out = np.zeros(8, np.uint8)
    plan = np.zeros((2, 7), np.int64)
    plan[:, HOW] = CONST
    stripes = np.array([[0, 2, 1, 0, 2, 8, 5, 5, 0, 0]], np.int64)
    _decode_stripes(work.stored, work.stored16, work.stored64, plan, stripes, np.zeros(1, np.uint64),
                    np.zeros(0, np.int64), np.zeros(0, np.uint8), work.rows, work.bytes, work.own, work.freq,
                    work.states, out, out.view(np.uint16), out.view(np.uint32), out.view(np.uint64))


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
        self.spare = np.empty(0, np.uint8)

    def resize(self, nbytes: int) -> None:
        """Room for ``nbytes`` of stored chunks, as bytes and as 16- and 64-bit words."""
        self.stored64 = np.empty(-(-nbytes // 8), np.uint64)
        self.stored = self.stored64.view(np.uint8)
        self.stored16 = self.stored64.view(np.uint16)


class _Workers(threading.local):
    def get(self, step: int, stored: int, spare: int) -> _Work:
        """This thread's buffers, with rows of ``step`` symbols, room for ``stored`` bytes of chunks and a
        spare stripe of ``spare`` bytes at least."""
        work = self.__dict__.get("work")
        if work is None or work.step < step:
            work = self.__dict__["work"] = _Work(step)
        if work.stored.size < stored:
            work.resize(stored)
        if work.spare.size < spare:  # 8-byte aligned, whole words: a stripe decoded aside (``decode_run``)
            work.spare = np.empty(-(-spare // 8), np.uint64).view(np.uint8)
        return work


_WORK = _Workers()
