"""Raw planes at their true width: symbols of ``bits`` bits packed into a little-endian bit stream.

A 6-bit plane stored in bytes would waste a quarter of its space; packed, a plane that no entropy
coder can shrink costs exactly its width. 8- and 16-bit planes are plain little-endian bytes.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit


def packed_size(n: int, bits: int) -> int:
    return (n * bits + 7) // 8


@njit(cache=True, nogil=True)
def _pack(symbols: np.ndarray, bits: int, out: np.ndarray) -> None:
    acc, filled, pos = np.int64(0), 0, 0
    for s in symbols:
        acc |= np.int64(s) << filled
        filled += bits
        while filled >= 8:
            out[pos] = acc & 0xFF
            acc >>= 8
            filled -= 8
            pos += 1
    if filled > 0:
        out[pos] = acc & 0xFF


@njit(cache=True, nogil=True)
def _pack_groups_of(symbols: np.ndarray, bits: int, out: np.ndarray) -> int:
    """Widths up to 7: every 8 symbols fill exactly ``bits`` bytes, written as one word. ``bits`` is
    a literal: each width is compiled apart, its shifts constants that LLVM vectorises."""
    numba.literally(bits)
    groups = symbols.size // 8
    for g in range(groups):
        word = np.uint64(0)
        for j in range(8):
            word |= np.uint64(symbols[g * 8 + j]) << np.uint64(j * bits)
        for k in range(bits):
            out[g * bits + k] = (word >> np.uint64(8 * k)) & np.uint64(0xFF)
    return groups * 8


@njit(cache=True, nogil=True)
def _pack_groups(symbols: np.ndarray, bits: int, out: np.ndarray) -> int:
    if bits == 1:
        return _pack_groups_of(symbols, 1, out)
    if bits == 2:
        return _pack_groups_of(symbols, 2, out)
    if bits == 3:
        return _pack_groups_of(symbols, 3, out)
    if bits == 4:
        return _pack_groups_of(symbols, 4, out)
    if bits == 5:
        return _pack_groups_of(symbols, 5, out)
    if bits == 6:
        return _pack_groups_of(symbols, 6, out)
    return _pack_groups_of(symbols, 7, out)


@njit(cache=True, nogil=True)
def _unpack_groups_of(data: np.ndarray, bits: int, out: np.ndarray) -> int:
    """Widths up to 7: every 8 symbols fill exactly ``bits`` bytes, read as one word. ``bits`` is a
    literal, as in ``_pack_groups_of`` (2x faster here than one loop for every width)."""
    numba.literally(bits)
    mask = np.uint64((1 << bits) - 1)
    groups = out.size // 8
    for g in range(groups):
        word = np.uint64(0)
        for k in range(bits):
            word |= np.uint64(data[g * bits + k]) << np.uint64(8 * k)
        for j in range(8):
            out[g * 8 + j] = (word >> np.uint64(j * bits)) & mask
    return groups * 8


@njit(cache=True, nogil=True)
def _unpack_groups(data: np.ndarray, bits: int, out: np.ndarray) -> int:
    if bits == 1:
        return _unpack_groups_of(data, 1, out)
    if bits == 2:
        return _unpack_groups_of(data, 2, out)
    if bits == 3:
        return _unpack_groups_of(data, 3, out)
    if bits == 4:
        return _unpack_groups_of(data, 4, out)
    if bits == 5:
        return _unpack_groups_of(data, 5, out)
    if bits == 6:
        return _unpack_groups_of(data, 6, out)
    return _unpack_groups_of(data, 7, out)


@njit(cache=True, nogil=True)
def _unpack(data: np.ndarray, bits: int, out: np.ndarray) -> bool:
    acc, filled, pos = np.int64(0), 0, 0
    mask = (1 << bits) - 1
    for i in range(out.size):
        while filled < bits:
            if pos >= data.size:
                return False
            acc |= np.int64(data[pos]) << filled
            pos += 1
            filled += 8
        out[i] = acc & mask
        acc >>= bits
        filled -= bits
    return pos == data.size


def pack(symbols: np.ndarray, bits: int) -> bytes:
    """The symbols (each below ``2**bits``) as a bit stream, LSB first."""
    if bits in (8, 16):
        return symbols.astype(symbols.dtype.newbyteorder("<"), copy=False).tobytes()
    out = np.zeros(packed_size(symbols.size, bits), np.uint8)
    done = _pack_groups(symbols, bits, out) if bits < 8 else 0
    _pack(symbols[done:], bits, out[done * bits // 8:])
    return out.tobytes()


def unpack_into(data: np.ndarray, bits: int, out: np.ndarray) -> bool:
    """Fill ``out`` (uint8 for widths up to 8, else uint16) from a bit stream; False if the stream's
    length is not exactly what ``out.size`` symbols need."""
    if data.size != packed_size(out.size, bits):
        return False
    if bits in (8, 16):
        out[:] = data.view(out.dtype.newbyteorder("<"))
        return True
    done = _unpack_groups(data, bits, out) if bits < 8 else 0
    return _unpack(data[done * bits // 8:], bits, out[done:])
