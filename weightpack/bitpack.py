"""Raw planes at their true width: symbols of ``bits`` bits packed into a little-endian bit stream.

A 6-bit plane stored in bytes would waste a quarter of its space; packed, a plane that no entropy
coder can shrink costs exactly its width. 8- and 16-bit planes are plain little-endian bytes.
"""

from __future__ import annotations

import numpy as np

from .jit import njit


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


# The fast loops, for widths up to 7, where every 8 symbols fill exactly ``bits`` bytes, moved as one
# word. ``_pack_width`` and ``_unpack_width`` call them with the common widths as constants (packing 6:
# BF16's and F32's sign and low mantissa bits, and 1: F16's sign; unpacking 6 only), so that LLVM
# compiles a loop for each with constant shifts and vectorises it: 2x faster here than the loop taking
# the width at run time, which serves the other widths (unpacking F16's sign: 0.40 ns a symbol). Every
# width a constant cost ~1 s more compiling on a machine's first run, in the stripe kernel's too.
# One function for all widths, rather than one compiled per width, so that the stripe decoder
# (``stripe.py``) can unpack any plane from inside its one compiled call.

@njit(cache=True, nogil=True)
def _pack_groups(symbols: np.ndarray, bits: int, out: np.ndarray) -> int:
    groups = symbols.size // 8
    for g in range(groups):
        word = np.uint64(0)
        for j in range(8):
            word |= np.uint64(symbols[g * 8 + j]) << np.uint64(j * bits)
        for k in range(bits):
            out[g * bits + k] = (word >> np.uint64(8 * k)) & np.uint64(0xFF)
    return groups * 8


@njit(cache=True, nogil=True)
def _unpack_groups(data: np.ndarray, bits: int, out: np.ndarray) -> int:
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
def _pack_width(symbols: np.ndarray, bits: int, out: np.ndarray) -> int:
    """``_pack_groups`` for widths up to 7, the common ones as constants; how many symbols it packed."""
    if bits == 6:  # BF16's and F32's sign and low mantissa bits
        return _pack_groups(symbols, 6, out)
    if bits == 1:  # F16's sign
        return _pack_groups(symbols, 1, out)
    return _pack_groups(symbols, bits, out) if bits < 8 else 0


@njit(cache=True, nogil=True)
def _unpack_width(data: np.ndarray, bits: int, out: np.ndarray) -> int:
    """``_unpack_groups`` for widths up to 7, the common ones as constants; how many symbols it unpacked."""
    if bits == 6:  # BF16's and F32's sign and low mantissa bits
        return _unpack_groups(data, 6, out)
    return _unpack_groups(data, bits, out) if bits < 8 else 0


@njit(cache=True, nogil=True)
def unpack_chunk(data: np.ndarray, bits: int, out: np.ndarray) -> bool:
    """Fill ``out`` from the bit stream ``data`` (uint8); False if its length is not exactly what
    ``out.size`` symbols of ``bits`` bits need. Each symbol is masked to the width."""
    if data.size != (out.size * bits + 7) // 8:
        return False
    if bits == 8:
        for i in range(out.size):
            out[i] = data[i]
        return True
    done = _unpack_width(data, bits, out)
    # The tail of fewer than 8 symbols, if any (most chunks have none: their sizes are multiples of 8),
    # or a whole chunk of a width the group loops do not take.
    return done == out.size or _unpack(data[done * bits // 8:], bits, out[done:])


def pack(symbols: np.ndarray, bits: int) -> np.ndarray:
    """The symbols (each below ``2**bits``) as a bit stream, LSB first (uint8). At 8 bits, a view of
    ``symbols`` itself, not a copy: what packing writes out as stored (most of F32's and F16's low bytes)."""
    if bits in (8, 16):
        return np.ascontiguousarray(symbols.astype(symbols.dtype.newbyteorder("<"), copy=False)).view(np.uint8)
    out = np.zeros(packed_size(symbols.size, bits), np.uint8)
    done = _pack_width(symbols, bits, out)
    if done < symbols.size:  # a tail of fewer than 8 symbols (or a width the group loops do not take)
        _pack(symbols[done:], bits, out[done * bits // 8:])
    return out


def unpack_into(data: np.ndarray, bits: int, out: np.ndarray) -> bool:
    """Fill ``out`` (uint8 for widths up to 8, else uint16) from a bit stream; False if the stream's
    length is not exactly what ``out.size`` symbols need."""
    return unpack_chunk(data, bits, out)
