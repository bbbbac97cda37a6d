"""Raw planes at their true width: symbols of ``bits`` bits packed into a little-endian bit stream.

A 6-bit plane stored in bytes would waste a quarter of its space; packed, a plane that no entropy
coder can shrink costs exactly its width. 8- and 16-bit planes are plain little-endian bytes.
"""

from __future__ import annotations

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
    _pack(symbols, bits, out)
    return out.tobytes()


def unpack(data: np.ndarray, bits: int, n: int) -> np.ndarray | None:
    """``n`` symbols from a bit stream, or None if its length is not exactly what ``n`` symbols need."""
    dtype = np.dtype(np.uint8 if bits <= 8 else np.uint16)
    if data.size != packed_size(n, bits):
        return None
    if bits in (8, 16):
        return data.view(dtype.newbyteorder("<")).astype(dtype, copy=False)
    out = np.empty(n, dtype)
    return out if _unpack(data, bits, out) else None
