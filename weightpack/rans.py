"""The rANS kernel: a static-table range-ANS coder in numba, after Fabian Giesen's ryg_rans.

One call codes one chunk of symbols. Symbols are unsigned integers below the table's alphabet size;
frequencies sum to ``1 << precision``.

Constants:

- ``lanes(n)``: independent coder states, symbol ``i`` belongs to lane ``i % lanes``. The
  dependency chains overlap in the CPU's pipeline, which is where most of the speed comes from.
  A chunk of at least ``WIDE_MIN = 65536`` symbols has ``WIDE_LANES = 16``: as fast as 4 lanes on
  a CPU (~420 M symbols/s a core here; 32 lanes too, 8 slower), and half a GPU warp, which decodes
  a chunk with one lane per thread. Smaller chunks have ``NARROW_LANES = 4``: each lane's final
  state costs 4 bytes, which small tensors (biases, norms) would feel.
- ``STATE_LOW = 1 << 15``: the lower bound L of a normalised state. States live in
  ``[L, L << 16) = [2**15, 2**31)``: a 32-bit word whose top bit stays clear, held in a 64-bit
  integer (signed in the decoder, unsigned in the encoder). The clear top bit is what makes ryg's
  32-bit reciprocal exact (Alverson's bound holds for x < 2**31) and keeps ``x * reciprocal < 2**63``:
  no arithmetic overflows.
- ``MAX_PRECISION = 15``: ``L >> precision`` must be at least 1.
- Renormalisation moves 16 bits at a time. A symbol costs at most ``precision <= 15`` bits, so one
  16-bit step per symbol is always enough. The decoder loads the next word whether it needs it or
  not, and keeps it or not (a select: twice as fast here as a branch, which mispredicts on about a
  quarter of the symbols), written as arithmetic on the comparison's 0 or 1 so that the loaded word
  is used either way: written as an ``if``, LLVM may sink the load into a branch, as it did once the
  kernels were compiled without numba's runtime (a chunk 1.36 against 0.44 ms; see ``jit``). The
  encoder writes the low word always and keeps it or not. So a group of ``lanes`` symbols reads at
  most ``lanes`` words: the decoder's loops run only over groups that cannot reach past the stream's
  end, and need no bounds check on their reads (see ``_decode``).
- Array indices in both loops are unsigned, which spares numba's negative-index wraparound
  (+23% on each loop here).
- One table lookup per decoded symbol: the decoder's table holds, per slot of ``1 << precision``,
  ``freq << 32 | (slot - cum) << 16 | symbol`` in one int64.

Chunk stream layout: ``lanes(n)`` little-endian uint32 final encoder states (lane 0 first), then
the little-endian uint16 renormalisation words in the order the decoder consumes them (lane by lane
within each group of ``lanes`` symbols: the order a GPU warp finds with a ballot). The decoder
checks that it consumed every word exactly and that every lane returns to ``L``, the encoder's
initial state: a cheap end-to-end consistency check on top of the container's checksums.

The decoder is memory-safe for any input bytes: every word read lies inside the stream (by the bound
above, or clamped near its end), the states cannot leave ``[L, 2**31)`` (see ``_decode``), and table
lookups index a table of exactly ``1 << precision`` entries with ``x & mask``.
"""

from __future__ import annotations

import sys

import numpy as np

from .jit import njit

if sys.byteorder != "little":  # the decoder reads the stream's words in native order
    raise ImportError("weightpack's rANS decoder needs a little-endian machine")

WIDE_LANES, NARROW_LANES, WIDE_MIN = 16, 4, 1 << 16
STATE_LOW = 1 << 15
STATE_BITS = 31
MAX_PRECISION = 15


@njit(cache=True, nogil=True)
def lanes(n_symbols: int) -> int:
    """Coder states of a chunk of ``n_symbols``."""
    return WIDE_LANES if n_symbols >= WIDE_MIN else NARROW_LANES


def header_bytes(n_symbols: int) -> int:
    """Bytes of a chunk's final states."""
    return 4 * lanes(n_symbols)


def max_stream_bytes(n_symbols: int) -> int:
    """Capacity an encoder output buffer needs: the states plus at most one word per symbol."""
    return 4 * WIDE_LANES + 2 * n_symbols + 2 * WIDE_LANES


def encoder_table(freq: np.ndarray, precision: int) -> np.ndarray:
    """Per-symbol encoder constants, four uint32 each (16 bytes: a 10-bit plane's table fits in L1):
    x_max, reciprocal, bias, complement | (32 + shift) << 16.

    ``q = x // f`` becomes ``(x * reciprocal) >> (32 + shift)``; ``x' = (q << n) + x % f + cum`` is
    rewritten as ``x + bias + q * complement`` with ``complement = 2**n - f``. For ``f == 1`` the
    reciprocal ``2**32 - 1`` gives ``q = x - 1`` and the bias absorbs the difference (ryg_rans).
    Allocated here, filled by a kernel (as every array of the coding kernels: see ``jit`` on start-up).
    """
    table = np.zeros(4 * freq.size, np.uint32)
    _fill_encoder_table(freq, precision, table)
    return table


@njit(cache=True, nogil=True)
def _fill_encoder_table(freq: np.ndarray, precision: int, table: np.ndarray) -> None:
    total = np.int64(1) << precision
    cum = np.int64(0)
    for s in range(freq.size):
        f = np.int64(freq[s])
        if f == 0:
            continue
        table[4 * s] = ((STATE_LOW >> precision) << 16) * f
        if f == 1:
            table[4 * s + 1], shift, table[4 * s + 2] = (np.int64(1) << 32) - 1, 0, cum + total - 1
        else:
            shift = 0
            while f > (np.int64(1) << shift):
                shift += 1
            table[4 * s + 1], shift, table[4 * s + 2] = ((np.int64(1) << (shift + 31)) + f - 1) // f, shift - 1, cum
        table[4 * s + 3] = (total - f) | ((32 + shift) << 16)
        cum += f


def encode(symbols: np.ndarray, table: np.ndarray, out: np.ndarray) -> int:
    """Encode ``symbols`` into the tail of ``out``; return where the stream starts (``out[start:]``).

    ``out`` needs ``max_stream_bytes(symbols.size)`` bytes. Symbols are coded as uint16 whatever the
    plane's width, as they are decoded: one compiled encoder instead of two, 1.4-1.6 s less compiling
    on a machine's first pack. A uint8 chunk (F16's exponent symbols, a coded low mantissa byte, an
    integer tensor's byte) is widened first, for ~5% of its coding time. The output's words view and
    the lanes' states are made here, in numpy (see ``jit`` on start-up).
    """
    return _encode(symbols.astype(np.uint16, copy=False), table, out, out.view(np.uint16),
                   np.empty(WIDE_LANES, np.uint64))


@njit(cache=True, nogil=True)
def _encode(symbols: np.ndarray, table: np.ndarray, out: np.ndarray, words: np.ndarray, states: np.ndarray) -> int:
    """``encode`` of uint16 symbols into ``out``, also seen as ``words`` (uint16); ``states``: scratch for
    the lanes' states. Symbols are coded last to first, so the words are written backwards and the
    decoder reads them forwards: the last, partial group of lanes first, then every whole group, its
    lanes from last to first (``_encode_wide``, ``_encode_narrow``)."""
    n_lanes = lanes(symbols.size)
    for lane in range(n_lanes):
        states[lane] = STATE_LOW
    pos = np.uint64(words.size)  # unsigned indices: no wraparound check
    n_full = np.uint64(symbols.size - symbols.size % n_lanes)
    for j in range(np.uint64(symbols.size) - n_full):
        lane = np.uint64(symbols.size) - n_full - np.uint64(1) - j
        states[lane], pos = _put(states[lane], symbols[n_full + lane], table, words, pos)
    if n_lanes == WIDE_LANES:
        pos = _encode_wide(states, symbols, table, words, pos, n_full)
    else:
        pos = _encode_narrow(states, symbols, table, words, pos, n_full)
    start = 2 * pos - 4 * n_lanes
    for lane in range(n_lanes):
        for k in range(4):
            out[start + 4 * lane + k] = (states[lane] >> np.uint64(8 * k)) & np.uint64(0xFF)
    return np.int64(start)


# As in decoding, the lanes' states live in registers, as named scalars, not in an array: a
# 16-lane loop takes them out of ``states`` before it starts and puts them back once it ends.

@njit(cache=True, nogil=True)
def _load16(states: np.ndarray) -> tuple:
    return (states[0], states[1], states[2], states[3], states[4], states[5], states[6], states[7],
            states[8], states[9], states[10], states[11], states[12], states[13], states[14], states[15])


@njit(cache=True, nogil=True)
def _store16(states: np.ndarray, x0: np.integer, x1: np.integer, x2: np.integer, x3: np.integer, x4: np.integer,
             x5: np.integer, x6: np.integer, x7: np.integer, x8: np.integer, x9: np.integer, x10: np.integer,
             x11: np.integer, x12: np.integer, x13: np.integer, x14: np.integer, x15: np.integer) -> None:
    states[0], states[1], states[2], states[3], states[4], states[5], states[6], states[7] = \
        x0, x1, x2, x3, x4, x5, x6, x7
    states[8], states[9], states[10], states[11], states[12], states[13], states[14], states[15] = \
        x8, x9, x10, x11, x12, x13, x14, x15


@njit(cache=True, nogil=True)
def _encode_wide(states: np.ndarray, symbols: np.ndarray, table: np.ndarray, words: np.ndarray, pos: np.uint64,
                 n_full: np.uint64) -> np.uint64:
    """Every whole group of a 16-lane chunk, last first; ``states`` updated, the stream position returned."""
    x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15 = _load16(states)
    i = n_full
    while i > np.uint64(0):
        i -= np.uint64(WIDE_LANES)
        x12, x13, x14, x15, pos = _put4(x12, x13, x14, x15, symbols, i + np.uint64(12), table, words, pos)
        x8, x9, x10, x11, pos = _put4(x8, x9, x10, x11, symbols, i + np.uint64(8), table, words, pos)
        x4, x5, x6, x7, pos = _put4(x4, x5, x6, x7, symbols, i + np.uint64(4), table, words, pos)
        x0, x1, x2, x3, pos = _put4(x0, x1, x2, x3, symbols, i, table, words, pos)
    _store16(states, x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15)
    return pos


@njit(cache=True, nogil=True)
def _encode_narrow(states: np.ndarray, symbols: np.ndarray, table: np.ndarray, words: np.ndarray, pos: np.uint64,
                   n_full: np.uint64) -> np.uint64:
    """``_encode_wide`` for a 4-lane chunk."""
    x0, x1, x2, x3 = states[0], states[1], states[2], states[3]
    i = n_full
    while i > np.uint64(0):
        i -= np.uint64(NARROW_LANES)
        x0, x1, x2, x3, pos = _put4(x0, x1, x2, x3, symbols, i, table, words, pos)
    states[0], states[1], states[2], states[3] = x0, x1, x2, x3
    return pos


@njit(cache=True, nogil=True)
def _put(x: np.uint64, s: int, table: np.ndarray, words: np.ndarray, pos: np.uint64) -> tuple:
    """``(x, pos)`` after coding symbol ``s`` into state ``x``. Renormalises first: the low word is
    always written just below ``pos``, which moves down only if the word is emitted."""
    e = np.uint64(4) * np.uint64(s)
    x_max, reciprocal, bias, rest = table[e], table[e + np.uint64(1)], table[e + np.uint64(2)], table[e + np.uint64(3)]
    words[pos - np.uint64(1)] = x & np.uint64(0xFFFF)
    if x >= x_max:
        pos -= np.uint64(1)
        x >>= np.uint64(16)
    q = (x * np.uint64(reciprocal)) >> np.uint64(rest >> 16)
    return x + np.uint64(bias) + q * np.uint64(rest & 0xFFFF), pos


@njit(cache=True, nogil=True)
def _put4(x0: np.uint64, x1: np.uint64, x2: np.uint64, x3: np.uint64, symbols: np.ndarray, i: np.uint64,
          table: np.ndarray, words: np.ndarray, pos: np.uint64) -> tuple:
    """Code symbols ``i + 3`` down to ``i`` into the four lanes' states, last first."""
    x3, pos = _put(x3, symbols[i + np.uint64(3)], table, words, pos)
    x2, pos = _put(x2, symbols[i + np.uint64(2)], table, words, pos)
    x1, pos = _put(x1, symbols[i + np.uint64(1)], table, words, pos)
    x0, pos = _put(x0, symbols[i], table, words, pos)
    return x0, x1, x2, x3, pos


def decode(stream: np.ndarray, precision: int, entries: np.ndarray, out: np.ndarray) -> bool:
    """Decode ``out.size`` symbols from ``stream`` (uint8); return whether the stream was consistent.

    ``entries``: the decoder table (``entropy.FrequencyTable.decoder_entries``), ``1 << precision``
    slots. The stream's words view and the lanes' states are made here, in numpy, not in the kernel
    (a start-up rule: see ``jit``).
    """
    if stream.size & 1:
        return False
    return _decode(stream.view(np.uint16), np.empty(WIDE_LANES, np.int64), precision, entries, out)


@njit(cache=True, nogil=True)
def _decode(words: np.ndarray, states: np.ndarray, precision: int, entries: np.ndarray, out: np.ndarray) -> bool:
    """``decode`` of the stream as little-endian words (byte order checked at import); ``states``:
    scratch for the lanes' states.

    Safety for hostile input: with ``x`` in ``[L, 2**31)`` and ``f <= 2**n``, the decode step gives
    ``1 <= x' < 2**31`` and one renormalisation brings it back into ``[L, 2**31)``. Words are read
    by whole groups of lanes while ``g`` more groups, reading at most ``g * lanes`` words, cannot pass
    the stream's end; the few symbols left then (a stream's last words, a chunk's last partial group)
    are decoded one by one with their reads clamped to the last word. Running past the end is
    reported, never performed. Without a bound check in the loops: ~10% fewer instructions a symbol.
    """
    n_lanes = lanes(out.size)
    if words.size < 2 * n_lanes or entries.size != 1 << precision:
        return False
    for lane in range(n_lanes):
        x = np.int64(words[2 * lane]) | (np.int64(words[2 * lane + 1]) << 16)
        if x < STATE_LOW or x >= (np.int64(1) << STATE_BITS):
            return False
        states[lane] = x
    mask = np.int64((1 << precision) - 1)
    size, group = np.uint64(words.size), np.uint64(n_lanes)
    p, i = group * np.uint64(2), np.uint64(0)
    n_full = np.uint64(out.size) - np.uint64(out.size) % group
    while True:
        g = min((n_full - i) // group, (size - p) // group)  # groups that cannot read past the end
        if g == 0:
            break
        if n_lanes == WIDE_LANES:
            p = _decode_wide(states, words, p, precision, mask, entries, out, i, i + g * group)
        else:
            p = _decode_narrow(states, words, p, precision, mask, entries, out, i, i + g * group)
        i += g * group
    last = size - np.uint64(1)
    for k in range(i, np.uint64(out.size)):
        lane = k % group
        x = _symbol(states[lane], precision, mask, entries, out, k)
        states[lane], p = _renormalise(x, words, min(p, last), p)
    if p != size:
        return False
    for lane in range(n_lanes):  # noqa: SIM110 - a loop, not ``.all()``: see ``jit`` on start-up
        if states[lane] != STATE_LOW:
            return False
    return True


# The decoding loops keep the lanes' states in registers, as named scalars (an array would cost a
# load and a store per symbol), and take each group of lanes in two passes: first every lane's
# symbol (independent table lookups, which the CPU overlaps), then every lane's renormalisation in
# lane order. The stream position is the one serial dependency between lanes; done symbol by
# symbol, each lane's word read waited on the previous lane's table lookup. 560 against 480 M
# symbols/s on one core here.

@njit(cache=True, nogil=True)
def _decode_wide(states: np.ndarray, words: np.ndarray, p: np.uint64, precision: int, mask: np.int64,
                 entries: np.ndarray, out: np.ndarray, first: np.uint64, end: np.uint64) -> np.uint64:
    """Symbols ``first`` to ``end`` (whole groups) of a 16-lane chunk, whose word reads ``_decode`` has
    bounded; ``states`` updated, the stream position returned."""
    x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15 = _load16(states)
    for i in range(first, end, np.uint64(WIDE_LANES)):
        x0, x1, x2, x3 = _symbols4(x0, x1, x2, x3, precision, mask, entries, out, i)
        x4, x5, x6, x7 = _symbols4(x4, x5, x6, x7, precision, mask, entries, out, i + np.uint64(4))
        x8, x9, x10, x11 = _symbols4(x8, x9, x10, x11, precision, mask, entries, out, i + np.uint64(8))
        x12, x13, x14, x15 = _symbols4(x12, x13, x14, x15, precision, mask, entries, out, i + np.uint64(12))
        x0, x1, x2, x3, p = _renormalise4(x0, x1, x2, x3, words, p)
        x4, x5, x6, x7, p = _renormalise4(x4, x5, x6, x7, words, p)
        x8, x9, x10, x11, p = _renormalise4(x8, x9, x10, x11, words, p)
        x12, x13, x14, x15, p = _renormalise4(x12, x13, x14, x15, words, p)
    _store16(states, x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15)
    return p


@njit(cache=True, nogil=True)
def _decode_narrow(states: np.ndarray, words: np.ndarray, p: np.uint64, precision: int, mask: np.int64,
                   entries: np.ndarray, out: np.ndarray, first: np.uint64, end: np.uint64) -> np.uint64:
    """``_decode_wide`` for a 4-lane chunk."""
    x0, x1, x2, x3 = states[0], states[1], states[2], states[3]
    for i in range(first, end, np.uint64(NARROW_LANES)):
        x0, x1, x2, x3 = _symbols4(x0, x1, x2, x3, precision, mask, entries, out, i)
        x0, x1, x2, x3, p = _renormalise4(x0, x1, x2, x3, words, p)
    states[0], states[1], states[2], states[3] = x0, x1, x2, x3
    return p


@njit(cache=True, nogil=True)
def _symbol(x: np.int64, precision: int, mask: np.int64, entries: np.ndarray, out: np.ndarray,
            i: np.uint64) -> np.int64:
    """Write the symbol state ``x`` holds to ``out[i]``; return the state before renormalisation."""
    e = entries[np.uint64(x & mask)]
    out[i] = e & 0xFFFF
    return (e >> 32) * (x >> precision) + ((e >> 16) & 0xFFFF)


@njit(cache=True, nogil=True)
def _renormalise(x: np.int64, words: np.ndarray, at: np.uint64, p: np.uint64) -> tuple:
    """``(x, p)`` after taking the next word into ``x`` if it fell below L; the word is read at ``at``
    (``p``, or ``p`` clamped inside the stream)."""
    w = np.int64(words[at])  # loaded whether needed or not, and used so: a select, not a branch
    take = np.int64(x < STATE_LOW)  # 0 or 1
    return (x << (take << 4)) | (w & -take), p + np.uint64(take)


@njit(cache=True, nogil=True)
def _symbols4(x0: np.int64, x1: np.int64, x2: np.int64, x3: np.int64, precision: int, mask: np.int64,
              entries: np.ndarray, out: np.ndarray, i: np.uint64) -> tuple:
    return (_symbol(x0, precision, mask, entries, out, i), _symbol(x1, precision, mask, entries, out, i + np.uint64(1)),
            _symbol(x2, precision, mask, entries, out, i + np.uint64(2)),
            _symbol(x3, precision, mask, entries, out, i + np.uint64(3)))


@njit(cache=True, nogil=True)
def _renormalise4(x0: np.int64, x1: np.int64, x2: np.int64, x3: np.int64, words: np.ndarray, p: np.uint64) -> tuple:
    x0, p = _renormalise(x0, words, p, p)
    x1, p = _renormalise(x1, words, p, p)
    x2, p = _renormalise(x2, words, p, p)
    x3, p = _renormalise(x3, words, p, p)
    return x0, x1, x2, x3, p
