"""Dtype planes: split a tensor's bytes into the planes ``dtypes.layout`` names, and merge them back exactly.

Floats take one pass over the words for every plane (two or more for F64's low bytes); integer and
bool dtypes are copied byte column by byte column.
"""

from __future__ import annotations

import numpy as np

from .dtypes import DTYPES, TOP_MANTISSA_BITS, fields, layout
from .jit import njit


@njit(cache=True, nogil=True)
def _split_float(words: np.ndarray, rest: int, head_bits: int, low_bits: int, head: np.ndarray,
                 sign_mantissa: np.ndarray, lows: tuple, n_low: int) -> None:
    """Every plane of a float tensor: ``lows[:n_low]`` are the low mantissa bytes, most significant
    first (``lows`` holds one unused array when there are none). F16 and F32 (one and two low
    bytes) take one pass over the words; F64 one more per low byte."""
    top = np.uint64(8 * words.itemsize - 1)
    rest_, low_bits_ = np.uint64(rest), np.uint64(low_bits)
    head_mask, low_mask = np.uint64((1 << head_bits) - 1), np.uint64((1 << low_bits) - 1)
    hi, lo = lows[0], lows[n_low - 1] if n_low else lows[0]
    for i in range(words.size):
        w = np.uint64(words[i])
        head[i] = (w >> rest_) & head_mask
        sign_mantissa[i] = ((w >> top) << low_bits_) | ((w >> (rest_ - low_bits_)) & low_mask)
        if n_low == 1 or n_low == 2:  # loop-invariant: compiled as separate loops
            lo[i] = w & np.uint64(0xFF)
        if n_low == 2:
            hi[i] = (w >> np.uint64(8)) & np.uint64(0xFF)
    if n_low > 2:
        for j in range(n_low):
            byte = lows[j]
            for i in range(words.size):
                byte[i] = (np.uint64(words[i]) >> np.uint64(8 * (n_low - 1 - j))) & np.uint64(0xFF)


@njit(cache=True, nogil=True)
def _merge_float(head: np.ndarray, sign_mantissa: np.ndarray, lows: tuple, n_low: int, rest: int, low_bits: int,
                 words: np.ndarray) -> None:
    """Inverse of ``_split_float``, in one pass over the words for F16 and F32."""
    top = np.uint64(8 * words.itemsize - 1)
    rest_, low_bits_ = np.uint64(rest), np.uint64(low_bits)
    low_mask = np.uint64((1 << low_bits) - 1)
    hi, lo = lows[0], lows[n_low - 1] if n_low else lows[0]
    for i in range(words.size):
        sm = np.uint64(sign_mantissa[i])
        w = ((sm >> low_bits_) << top) | (np.uint64(head[i]) << rest_) | ((sm & low_mask) << (rest_ - low_bits_))
        if n_low == 1 or n_low == 2:
            w |= np.uint64(lo[i])
        if n_low == 2:
            w |= np.uint64(hi[i]) << np.uint64(8)
        words[i] = w
    if n_low > 2:
        for j in range(n_low):
            byte = lows[j]
            for i in range(words.size):
                words[i] |= np.uint64(byte[i]) << np.uint64(8 * (n_low - 1 - j))


_NO_LOWS = (np.empty(0, np.uint8),)  # ``lows`` of a float format whose mantissa has no whole low bytes


def _words(data: np.ndarray, size: int) -> np.ndarray:
    return data.view(np.dtype(f"<u{size}"))


def split(data: np.ndarray, dtype: str) -> list[np.ndarray]:
    """Planes of the little-endian tensor bytes ``data`` (uint8, length a multiple of the itemsize)."""
    count = data.size // DTYPES[dtype][0]
    outs = [np.empty(count, spec.symbol_dtype) for spec in layout(dtype)]
    split_into(data, dtype, outs)
    return outs


def split_into(data: np.ndarray, dtype: str, outs: list[np.ndarray]) -> None:
    """``split`` writing into ``outs`` (one array per plane, of the planes' dtypes and element count)."""
    size, ebits, rest, low_bits, _ = fields(dtype)
    columns = data.reshape(-1, size)
    if ebits == 0:
        for k, out in zip(range(size - 1, -1, -1), outs):
            out[:] = columns[:, k]
        return
    head, sign_mantissa, *low = outs
    _split_float(_words(data, size), rest, ebits + TOP_MANTISSA_BITS, low_bits, head, sign_mantissa,
                 tuple(low) or _NO_LOWS, len(low))


def merge(planes: list[np.ndarray], dtype: str) -> np.ndarray:
    """Inverse of ``split``: the tensor bytes (uint8) rebuilt from its planes."""
    out = np.empty(planes[0].size * DTYPES[dtype][0], np.uint8)
    merge_into(planes, dtype, out)
    return out


def merge_into(planes: list[np.ndarray], dtype: str, out: np.ndarray) -> None:
    """``merge`` writing into ``out`` (uint8, the planes' element count times the itemsize)."""
    size, ebits, rest, low_bits, _ = fields(dtype)
    columns = out.reshape(-1, size)
    if ebits == 0:
        for k, byte in zip(range(size - 1, -1, -1), planes):
            columns[:, k] = byte
        return
    head, sign_mantissa, *low = planes
    _merge_float(head, sign_mantissa, tuple(low) or _NO_LOWS, len(low), rest, low_bits,
                 out.view(np.dtype(f"<u{size}")))
