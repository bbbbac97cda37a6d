"""The rANS kernel: a static-table range-ANS coder in numba, after Fabian Giesen's ryg_rans.

One call codes one chunk of symbols. Symbols are unsigned integers below the table's alphabet size;
frequencies sum to ``1 << precision``.

Constants:

- ``LANES = 4``: four independent coder states, symbol ``i`` belongs to lane ``i % 4``. The four
  dependency chains overlap in the CPU's pipeline, which is where most of the speed comes from.
- ``STATE_LOW = 1 << 15``: the lower bound L of a normalised state. States live in
  ``[L, L << 16) = [2**15, 2**31)``: a 32-bit word whose top bit stays clear, held in an int64.
  The clear top bit is what makes ryg's 32-bit reciprocal exact (Alverson's bound holds for x < 2**31)
  and keeps ``x * reciprocal < 2**63``, so all arithmetic is plain signed int64 without overflow.
- ``MAX_PRECISION = 15``: ``L >> precision`` must be at least 1.
- Renormalisation moves 16 bits at a time. A symbol costs at most ``precision <= 15`` bits, so one
  16-bit step per symbol is always enough, which is what lets both loops be branch-free.

Chunk stream layout: ``LANES`` little-endian uint32 final encoder states (lane 0 first), then the
little-endian uint16 renormalisation words in the order the decoder consumes them. The decoder
checks that it consumed every word exactly and that every lane returns to ``L``, the encoder's
initial state: a cheap end-to-end consistency check on top of the container's CRC.

The decoder is memory-safe for any input bytes: every word read is clamped inside the stream, the
states cannot leave ``[L, 2**31)`` (see ``decode``), and table lookups index a table of exactly
``1 << precision`` entries with ``x & mask``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

LANES = 4
STATE_LOW = 1 << 15
STATE_BITS = 31
MAX_PRECISION = 15
HEADER_BYTES = 4 * LANES


def max_stream_bytes(n_symbols: int) -> int:
    """Capacity an encoder output buffer needs: the states plus at most one word per symbol."""
    return HEADER_BYTES + 2 * n_symbols + 2 * LANES


@njit(cache=True, nogil=True)
def encoder_table(freq: np.ndarray, precision: int) -> np.ndarray:
    """Per-symbol encoder constants, one row each: x_max, reciprocal, shift, bias, complement.

    ``q = x // f`` becomes ``(x * reciprocal) >> (32 + shift)``; ``x' = (q << n) + x % f + cum`` is
    rewritten as ``x + bias + q * complement`` with ``complement = 2**n - f``. For ``f == 1`` the
    reciprocal ``2**32 - 1`` gives ``q = x - 1`` and the bias absorbs the difference (ryg_rans).
    """
    table = np.zeros((freq.size, 5), np.int64)
    total = np.int64(1) << precision
    cum = np.int64(0)
    for s in range(freq.size):
        f = np.int64(freq[s])
        if f == 0:
            continue
        table[s, 0] = ((STATE_LOW >> precision) << 16) * f
        table[s, 4] = total - f
        if f == 1:
            table[s, 1] = (np.int64(1) << 32) - 1
            table[s, 2] = 0
            table[s, 3] = cum + total - 1
        else:
            shift = 0
            while f > (np.int64(1) << shift):
                shift += 1
            table[s, 1] = ((np.int64(1) << (shift + 31)) + f - 1) // f
            table[s, 2] = shift - 1
            table[s, 3] = cum
        cum += f
    return table


@njit(cache=True, nogil=True, inline="always")
def _encode_step(x: int, s: int, table: np.ndarray, out: np.ndarray, pos: int) -> tuple:
    """Push symbol ``s`` onto state ``x``; return the new state and write position."""
    # Renormalise without a branch: always write the low word just below pos, keep it only if needed.
    emit = np.int64(x >= table[s, 0])
    out[pos - 2] = x & 0xFF
    out[pos - 1] = (x >> 8) & 0xFF
    pos -= 2 * emit
    x >>= 16 * emit
    q = ((x * table[s, 1]) >> 32) >> table[s, 2]
    return x + table[s, 3] + q * table[s, 4], pos


@njit(cache=True, nogil=True)
def encode(symbols: np.ndarray, table: np.ndarray, out: np.ndarray) -> int:
    """Encode ``symbols`` into the tail of ``out``; return where the stream starts (``out[start:]``).

    ``out`` needs ``max_stream_bytes(symbols.size)`` bytes. Symbols are coded last to first, so the
    words are written backwards and the decoder reads them forwards.
    """
    states = np.full(LANES, STATE_LOW, np.int64)
    pos = out.size
    n_full = symbols.size - symbols.size % LANES
    for i in range(symbols.size - 1, n_full - 1, -1):
        states[i % LANES], pos = _encode_step(states[i % LANES], symbols[i], table, out, pos)
    for base in range(n_full - LANES, -1, -LANES):
        for lane in range(LANES - 1, -1, -1):
            states[lane], pos = _encode_step(states[lane], symbols[base + lane], table, out, pos)
    for lane in range(LANES - 1, -1, -1):
        pos -= 4
        x = states[lane]
        for k in range(4):
            out[pos + k] = (x >> (8 * k)) & 0xFF
    return pos


@njit(cache=True, nogil=True, inline="always")
def _decode_step(x: int, precision: int, slot_symbol: np.ndarray, slot_info: np.ndarray,
                 stream: np.ndarray, p: int, last: int) -> tuple:
    """Pop one symbol from state ``x``; return the symbol, the new state and read position."""
    slot = x & ((1 << precision) - 1)
    info = np.int64(slot_info[slot])
    x = (info >> 16) * (x >> precision) + (info & 0xFFFF)
    need = np.int64(x < STATE_LOW)
    q = min(p, last)
    word = np.int64(stream[q]) | (np.int64(stream[q + 1]) << 8)
    return slot_symbol[slot], (x << (16 * need)) | (word * need), p + 2 * need


@njit(cache=True, nogil=True)
def decode(stream: np.ndarray, precision: int, slot_symbol: np.ndarray, slot_info: np.ndarray,
           out: np.ndarray) -> bool:
    """Decode ``out.size`` symbols from ``stream`` (uint8); return whether the stream was consistent.

    Safety for hostile input: with ``x`` in ``[L, 2**31)`` and ``f <= 2**n``, the decode step gives
    ``1 <= x' < 2**31`` and one renormalisation brings it back into ``[L, 2**31)``. Word reads are
    clamped to the last word of the stream; running past its end is reported, never performed.
    """
    nbytes = stream.size
    if nbytes < HEADER_BYTES or nbytes & 1:
        return False
    states = np.empty(LANES, np.int64)
    for lane in range(LANES):
        x = np.int64(0)
        for k in range(4):
            x |= np.int64(stream[4 * lane + k]) << (8 * k)
        if x < STATE_LOW or x >= (np.int64(1) << STATE_BITS):
            return False
        states[lane] = x
    last = nbytes - 2
    p = HEADER_BYTES
    n_full = out.size - out.size % LANES
    for base in range(0, n_full, LANES):
        for lane in range(LANES):
            out[base + lane], states[lane], p = _decode_step(
                states[lane], precision, slot_symbol, slot_info, stream, p, last)
    for i in range(n_full, out.size):
        out[i], states[i % LANES], p = _decode_step(
            states[i % LANES], precision, slot_symbol, slot_info, stream, p, last)
    if p != nbytes:
        return False
    return (states == STATE_LOW).all()
