"""Order-0 entropy models: symbol counts, the empirical entropy bound, and quantised frequency tables.

A ``FrequencyTable`` is what the rANS kernel codes with: frequencies summing to ``1 << precision``
with every present symbol at least 1. Its precision is chosen per plane by total cost: a finer
table quantises probabilities better, but costs more bytes to store (which matters for the many
small tensors of a checkpoint) and codes less exactly once ``1 << precision`` nears the coder's
state lower bound (``RANS_LOSS_BITS``).

Serialised table (little-endian), see docs/FORMAT.md:
``u8 precision | u16 first | u16 span | ceil(span / 8) bytes presence bitmap | LEB128 frequency per
present symbol``, where the bitmap covers symbols ``first`` to ``first + span - 1``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from . import rans
from .errors import FormatError
from .jit import njit


@njit(cache=True, nogil=True)
def _count(symbols: np.ndarray, counts: np.ndarray, parts: np.ndarray) -> None:
    """Four sub-histograms, so that runs of one symbol do not wait on the same counter, then summed;
    ``parts``: their scratch (``4 * counts.size`` entries, any contents).

    Flat and summed by a loop rather than a 2-D array and ``+=`` of rows: the same counts, 10%
    faster, and 0.2-0.5 s less to compile on a machine's first run. A 1-bit plane (F16's sign) is
    counted as a sum instead: 0.03 against 0.42 ns a symbol."""
    m = counts.size
    if m == 2:
        ones = 0
        for v in symbols:
            ones += v
        counts[0] += symbols.size - ones
        counts[1] += ones
        return
    for s in range(4 * m):
        parts[s] = 0
    n = symbols.size - symbols.size % 4
    for i in range(0, n, 4):
        parts[symbols[i]] += 1
        parts[m + symbols[i + 1]] += 1
        parts[2 * m + symbols[i + 2]] += 1
        parts[3 * m + symbols[i + 3]] += 1
    for i in range(n, symbols.size):
        parts[symbols[i]] += 1
    for s in range(m):
        counts[s] += parts[s] + parts[m + s] + parts[2 * m + s] + parts[3 * m + s]


def histogram(symbols: np.ndarray, width: int) -> np.ndarray:
    """Counts of every symbol value of a ``width``-bit plane."""
    counts = np.zeros(1 << width, np.int64)
    _count(symbols.ravel(), counts, np.empty(4 << width, np.int64))
    return counts


# A sample: runs of SAMPLE_RUN symbols every SAMPLE_STEP, one symbol in ~8. The step is not a power of two,
# so that the runs drift across the columns of a tensor whose rows are (a column set apart from the others
# is seen in its share), and a run is a 64-byte cache line of an 8-bit plane. Chunks shorter than SAMPLE_MIN
# are always counted whole: their sample would be too small to tell near-random from nearly so.
SAMPLE_RUN, SAMPLE_STEP, SAMPLE_MIN = 64, 520, 1 << 14
_NO_SAMPLE = np.zeros(0)  # ``sample_bits`` of a plane counted whole: empty, never written


def count_chunks(symbols: np.ndarray, chunk: int, counts: np.ndarray, sample_bits: np.ndarray | None = None,
                 threshold: float = 0.0) -> None:
    """Add to row ``k`` of ``counts`` (zeros, ``2**width`` columns) the histogram of the ``k``-th run of
    ``chunk`` symbols (the last may be shorter).

    A plane coder needs both the plane's counts (for its table) and each chunk's (for the chunk's
    mode): their rows sum to the plane's, so the symbols are counted once, not twice.

    ``sample_bits`` (zeros, a float per row): count each chunk of at least ``SAMPLE_MIN`` symbols from a
    sample first; where the sample's entropy estimate (``sample_entropy``) is at least ``threshold`` bits
    a symbol, its row keeps the sample's counts and ``sample_bits[k]`` the estimate, else the chunk is
    counted whole. A sample costs ~0.2 ns a symbol here against ~1.05 for counting every one.
    """
    _count_chunks(symbols, chunk, counts, np.empty(4 * counts.shape[1], np.int64),
                  _NO_SAMPLE if sample_bits is None else sample_bits, threshold)


@njit(cache=True, nogil=True)
def _count_chunks(symbols: np.ndarray, chunk: int, counts: np.ndarray, parts: np.ndarray, sample_bits: np.ndarray,
                  threshold: float) -> None:
    for k in range(counts.shape[0]):
        part = symbols[k * chunk:(k + 1) * chunk]
        if sample_bits.size and part.size >= SAMPLE_MIN:
            row = counts[k]
            for start in range(0, part.size, SAMPLE_STEP):
                for i in range(start, min(start + SAMPLE_RUN, part.size)):
                    row[part[i]] += 1
            estimate = sample_entropy(row)
            if estimate >= threshold:
                sample_bits[k] = estimate
                continue
            for s in range(row.size):
                row[s] = 0
        _count(part, counts[k], parts)


@njit(cache=True, nogil=True)
def sample_entropy(counts: np.ndarray) -> float:
    """Entropy in bits a symbol of the distribution ``counts`` were sampled from, estimated with the
    Miller-Madow correction: the empirical entropy of a sample is low by about (present values - 1) /
    (2 samples ln 2), ~0.011 bits for a near-random 8-bit chunk's sample of 32 Ki symbols."""
    total = _sum(counts)
    return (entropy_bits(counts) + (present_symbols(counts) - 1) / (2 * np.log(2))) / total


@njit(cache=True, nogil=True)
def _sum(values: np.ndarray) -> int:
    """``values.sum()`` as a loop: array methods cost start-up time (see ``jit``)."""
    total = 0
    for v in values:
        total += v
    return total


@njit(cache=True, nogil=True)
def entropy_bits(counts: np.ndarray) -> float:
    """Order-0 empirical entropy of the whole plane in bits: the bound a static order-0 coder meets."""
    total = float(_sum(counts))
    bits = 0.0
    for c in counts:
        if c > 0:
            bits -= c * np.log2(c / total)
    return bits


@njit(cache=True, nogil=True)
def present_symbols(counts: np.ndarray) -> int:
    """How many symbol values occur at least once."""
    present = 0
    for c in counts:
        present += c > 0
    return present


@njit(cache=True, nogil=True)
def _chunk_costs(counts: np.ndarray, freq: np.ndarray, precision: int) -> tuple:
    """What a chunk's mode choice needs, in one call (one GIL hand-over, not three): the bits coding it
    with a table of ``freq`` costs, its order-0 entropy in bits, and how many symbol values occur."""
    return _coded_bits(counts, freq, precision), entropy_bits(counts), present_symbols(counts)


@njit(cache=True, nogil=True)
def _normalise(counts: np.ndarray, precision: int, freq: np.ndarray, keys: np.ndarray, heap: np.ndarray) -> None:
    """Scale counts into ``freq`` to sum exactly ``1 << precision`` keeping present symbols >= 1, near-minimal
    cost. ``keys`` (float64) and ``heap`` (int64): scratch, ``counts.size`` entries each.

    Start from the floor of the exact scaling, then hand out (or take back) single units where they
    change the coded size least, as measured by ``count * log2((f + 1) / f)``.
    """
    total_out = np.int64(1) << precision
    total_in = _sum(counts)
    for s in range(counts.size):
        freq[s] = max(counts[s] * total_out // total_in, 1) if counts[s] > 0 else 0
    diff = total_out - _sum(freq)
    while diff != 0:
        shrinkable = 0
        for s in range(counts.size):
            if diff > 0:  # fewer than the present symbols: the floors lose less than 1 each
                keys[s] = counts[s] * np.log2((freq[s] + 1) / freq[s]) if counts[s] > 0 else -1.0
            elif freq[s] > 1:  # too many: take back where it costs least
                keys[s] = -(counts[s] * np.log2(freq[s] / (freq[s] - 1)))
                shrinkable += 1
            else:
                keys[s] = -np.inf
        k = _largest(keys, diff if diff > 0 else min(-diff, shrinkable), heap)
        for j in range(k):
            freq[heap[j]] += 1 if diff > 0 else -1
        diff = total_out - _sum(freq)


@njit(cache=True, nogil=True)
def _largest(keys: np.ndarray, k: int, heap: np.ndarray) -> int:
    """Put in ``heap[:k]`` the indices of the ``k`` largest keys, equal keys taken in index order (the set
    that ``np.argsort(-keys, kind="stable")[:k]`` names); return how many were put (``k``, or all the keys
    if there are fewer). A heap of ``k`` rather than a sort: numba takes seconds to compile its sorts, and
    this compiles in a fraction of one."""
    size = 0  # heap[:size]: kept indices; the root is the first to give way
    for i in range(keys.size if k > 0 else 0):
        if size < k:  # sift the newcomer up
            j = size
            size += 1
            while j > 0 and _behind(keys, i, heap[(j - 1) // 2]):
                heap[j] = heap[(j - 1) // 2]
                j = (j - 1) // 2
            heap[j] = i
        elif _behind(keys, heap[0], i):  # it beats the root: sift it down from there
            j = 0
            while 2 * j + 1 < k:
                child = 2 * j + 1
                if child + 1 < k and _behind(keys, heap[child + 1], heap[child]):
                    child += 1
                if not _behind(keys, heap[child], i):
                    break
                heap[j] = heap[child]
                j = child
            heap[j] = i
    return size


@njit(cache=True, nogil=True)
def _behind(keys: np.ndarray, a: int, b: int) -> bool:
    """Whether index ``a`` ranks after ``b``: a smaller key, or the same key and a later index."""
    return keys[a] < keys[b] or (keys[a] == keys[b] and a > b)


@njit(cache=True, nogil=True)
def _coded_bits(counts: np.ndarray, freq: np.ndarray, precision: int) -> float:
    bits = 0.0
    for s in range(counts.size):
        if counts[s] > 0:
            bits += counts[s] * (precision - np.log2(freq[s]))
    return bits


@njit(cache=True, nogil=True)
def _serialized_size(freq: np.ndarray) -> int:
    first, last, size = -1, -1, 5
    for s in range(freq.size):
        if freq[s] > 0:
            if first < 0:
                first = s
            last = s
            size += 1 + (freq[s] >= 128) + (freq[s] >= 16384)
    return size + (last - first + 8) // 8


@njit(cache=True, nogil=True)
def _fit(counts: np.ndarray, lowest: int, highest: int, loss_bits: float, best: np.ndarray, freq: np.ndarray,
         keys: np.ndarray, heap: np.ndarray) -> int:
    """The precision minimising coded bits, the coder's excess and the table's bytes, its frequencies in
    ``best``; 0 if no precision in ``lowest..highest`` fits. ``freq``, ``keys``, ``heap``: scratch for
    ``_normalise`` (every array ``counts.size`` entries, allocated by the caller: see ``jit`` on start-up).
    The cost is close to convex in the precision: walk down from the finest, stop once it has risen for
    two steps."""
    best_precision, best_cost = 0, np.inf
    total = float(_sum(counts))
    for precision in range(highest, lowest - 1, -1):
        _normalise(counts, precision, freq, keys, heap)
        loss = loss_bits * 4.0 ** (precision - highest) * total
        cost = _coded_bits(counts, freq, precision) + loss + 8 * _serialized_size(freq)
        if cost < best_cost:
            best_precision, best_cost = precision, cost
            for s in range(freq.size):
                best[s] = freq[s]
        elif precision < best_precision - 1:
            break
    return best_precision


# Measured excess of the rANS coder over the table's ideal cost, in bits per symbol, at precision 15;
# it shrinks about 4x per bit of precision removed, since it grows as (2**precision / STATE_LOW)**2.
# (BF16 MiniLM, 590 Ki symbols: 0.0035 bits/symbol at 15, 0.0010 at 14, 0.0003 at 13, on both planes.)
RANS_LOSS_BITS = 0.0035


_TABLE_ERRORS = {1: "is truncated", 2: "has an invalid precision or alphabet",
                 3: "is truncated, malformed or has trailing bytes", 4: "does not sum to its total"}


@njit(cache=True, nogil=True)
def _parse_table(data: np.ndarray, freq: np.ndarray) -> int:
    """Fill ``freq`` (zeros, ``2**width`` entries) from a serialised table; 0, or an ``_TABLE_ERRORS`` key.

    Runs without the GIL: tables of their own are parsed for most chunks, by the decoding threads.
    """
    if data.size < 5:
        return 1
    precision = np.int64(data[0])
    first = np.int64(data[1]) | (np.int64(data[2]) << 8)
    span = np.int64(data[3]) | (np.int64(data[4]) << 8)
    if not 1 <= precision <= rans.MAX_PRECISION or span < 1 or first + span > freq.size:
        return 2
    pos = 5 + (span + 7) // 8
    if data.size < pos:
        return 1
    total, present = np.int64(0), 0
    for i in range(span):
        if (data[5 + i // 8] >> (i % 8)) & 1:
            value, shift = np.int64(0), 0
            while True:  # LEB128, at most 3 bytes: 7 bits a byte, least significant first
                if pos >= data.size or shift > 14:
                    return 3
                byte = np.int64(data[pos])
                pos += 1
                value |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    break
            if value == 0:
                return 4
            freq[first + i] = value
            total += value
            present += 1
    if pos != data.size:
        return 3
    if present == 0 or total != np.int64(1) << precision:
        return 4
    return 0


@njit(cache=True, nogil=True)
def _serialize(freq: np.ndarray, precision: int, out: np.ndarray) -> None:
    """Write a table into ``out`` (``_serialized_size(freq)`` bytes): precision, first symbol and span
    (uint16 LE), a bitmap of present symbols over the span (bit ``i % 8`` of byte ``i // 8``), then
    each present frequency as LEB128 (7 bits a byte, least significant first, high bit = more follows).

    Compiled without the GIL: most chunks of a large plane serialise a table of their own.
    """
    first, last = -1, -1
    for s in range(freq.size):
        if freq[s] > 0:
            if first < 0:
                first = s
            last = s
    span = last - first + 1
    out[0], out[1], out[2], out[3], out[4] = precision, first & 0xFF, first >> 8, span & 0xFF, span >> 8
    pos = 5 + (span + 7) // 8
    out[5:pos] = 0
    for i in range(span):
        value = freq[first + i]
        if value == 0:
            continue
        out[5 + i // 8] |= 1 << (i % 8)
        while value >= 0x80:
            out[pos] = (value & 0x7F) | 0x80
            value >>= 7
            pos += 1
        out[pos] = value
        pos += 1


@dataclass(frozen=True)
class FrequencyTable:
    """Quantised symbol frequencies for one plane; ``freq`` is indexed by symbol value."""

    precision: int
    freq: np.ndarray

    @classmethod
    def fit(cls, counts: np.ndarray, min_precision: int = 1) -> FrequencyTable | None:
        """The table that minimises coded bits plus its own serialised size for these counts.

        None if the counts have more distinct symbols than the finest table can hold.
        """
        present = np.flatnonzero(counts)
        lowest = max(min_precision, math.ceil(math.log2(max(present.size, 1))))
        # Fitted on the span of the present symbols alone: the same table (absent symbols take no part in
        # the fit, and their order is kept), 3-10x faster on a 10-bit plane, whose values span a few hundred.
        first, end = (present[0], present[-1] + 1) if present.size else (0, counts.size)
        freq = np.zeros(counts.size, np.int64)
        span = end - first
        work = np.empty((2, span), np.int64)
        precision = _fit(counts[first:end].astype(np.int64), lowest, rans.MAX_PRECISION, RANS_LOSS_BITS,
                         freq[first:end], work[0], np.empty(span), work[1])
        return cls(precision, freq) if precision else None

    def coded_bits(self, counts: np.ndarray) -> float:
        """Bits the rANS coder spends on symbols with these counts (excluding renormalisation flush)."""
        return _coded_bits(counts, self.freq, self.precision)

    def chunk_costs(self, counts: np.ndarray) -> tuple[float, float, int]:
        """For a chunk with these counts: ``coded_bits(counts)``, its entropy in bits, its present symbols."""
        return _chunk_costs(counts, self.freq, self.precision)

    def serialized_size(self) -> int:
        """``len(self.to_bytes())``, without building the bytes."""
        return _serialized_size(self.freq)

    def to_bytes(self) -> bytes:
        out = np.empty(self.serialized_size(), np.uint8)
        _serialize(self.freq, self.precision, out)
        return out.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes | np.ndarray, width: int) -> FrequencyTable:
        """Parse and validate a serialised table for a ``width``-bit plane; FormatError if invalid."""
        freq = np.zeros(1 << width, np.int64)
        error = _parse_table(np.frombuffer(data, np.uint8), freq)
        if error:
            raise FormatError(f"frequency table {_TABLE_ERRORS[error]}")
        return cls(int(data[0]), freq)

    @functools.cached_property
    def encoder_table(self) -> np.ndarray:
        """The rANS encoder's table, built once per table: a plane's shared table codes all its chunks."""
        return rans.encoder_table(self.freq, self.precision)

    def decoder_entries(self) -> np.ndarray:
        """The rANS decoder's table: per slot, ``freq << 32 | (slot - cum) << 16 | symbol`` (one lookup).

        Allocated here, in numpy, and filled by a kernel (a start-up rule: see ``jit``)."""
        entries = np.zeros(1 << self.precision, np.int64)
        _fill_decoder_entries(self.freq, entries)
        return entries


@njit(cache=True, nogil=True)
def _fill_decoder_entries(freq: np.ndarray, entries: np.ndarray) -> None:
    slot = 0
    for s in range(freq.size):
        for k in range(min(freq[s], entries.size - slot)):  # the bound only matters for an invalid table
            entries[slot] = (np.int64(freq[s]) << 32) | (np.int64(k) << 16) | s
            slot += 1
