"""Dtype planes: split a tensor's bytes into planes of similar statistics, and merge them back exactly.

Floating point values are split by field, because the fields behave very differently in trained
weights: the exponent is highly skewed (about 2.6 bits of information in BF16's 8), the top
mantissa bits depend on it (within a binade, values near its low end are more likely), and the
rest of the mantissa is nearly random. One rule covers every float format with ``e`` exponent and
``m`` mantissa bits:

1. ``exponent_top``: the exponent with the top 2 mantissa bits below it (``e + 2`` bits), coded as
   one symbol, so the coder sees their joint distribution with one symbol per weight;
2. ``sign_mantissa``: the sign above the next ``(m - 2) % 8`` mantissa bits (nearly random);
3. ``mantissa_<k>``: the remaining ``(m - 2) // 8`` mantissa bytes, most significant first.

So BF16 is 10 | 6 bits; F16 7 | 1 | 8; F32 10 | 6 | 8 | 8; F64 13 | 3 | 8 x 6. Integer and bool
dtypes are split into their little-endian bytes, most significant first. Every plane holds symbols
of ``bits`` bits in a uint8 array, or uint16 for planes wider than 8 bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import FormatError
from .jit import njit

# dtype -> (itemsize, exponent bits, mantissa bits); exponent bits 0 means "split into bytes".
DTYPES: dict[str, tuple[int, int, int]] = {
    "BOOL": (1, 0, 0), "U8": (1, 0, 0), "I8": (1, 0, 0), "F8_E8M0": (1, 0, 0),
    "U16": (2, 0, 0), "I16": (2, 0, 0), "U32": (4, 0, 0), "I32": (4, 0, 0),
    "U64": (8, 0, 0), "I64": (8, 0, 0),
    "F8_E4M3": (1, 4, 3), "F8_E5M2": (1, 5, 2),
    "F16": (2, 5, 10), "BF16": (2, 8, 7), "F32": (4, 8, 23), "F64": (8, 11, 52),
}


@dataclass(frozen=True)
class Plane:
    """One plane of a dtype: its name and how many bits each of its symbols holds."""

    name: str
    bits: int

    @property
    def symbol_dtype(self) -> np.dtype:
        return np.dtype(np.uint8 if self.bits <= 8 else np.uint16)


def itemsize(dtype: str) -> int:
    """Bytes per element of a safetensors dtype; FormatError for dtypes weightpack does not know."""
    try:
        return DTYPES[dtype][0]
    except KeyError:
        raise FormatError(f"unsupported dtype {dtype!r}") from None


TOP_MANTISSA_BITS = 2


def layout(dtype: str) -> list[Plane]:
    """The planes a tensor of ``dtype`` is split into, in storage order."""
    itemsize(dtype)
    size, ebits, mbits = DTYPES[dtype]
    if ebits == 0:
        return [Plane(f"byte_{k}", 8) for k in range(size - 1, -1, -1)]
    rest = mbits - TOP_MANTISSA_BITS
    return ([Plane("exponent_top", ebits + TOP_MANTISSA_BITS), Plane("sign_mantissa", 1 + rest % 8)]
            + [Plane(f"mantissa_{k}", 8) for k in range(rest // 8 - 1, -1, -1)])


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
    size, ebits, mbits = DTYPES[dtype]
    columns = data.reshape(-1, size)
    if ebits == 0:
        for k, out in zip(range(size - 1, -1, -1), outs):
            out[:] = columns[:, k]
        return
    rest = mbits - TOP_MANTISSA_BITS
    head, sign_mantissa, *low = outs
    _split_float(_words(data, size), rest, ebits + TOP_MANTISSA_BITS, rest % 8, head, sign_mantissa,
                 tuple(low) or _NO_LOWS, len(low))


def merge(planes: list[np.ndarray], dtype: str) -> np.ndarray:
    """Inverse of ``split``: the tensor bytes (uint8) rebuilt from its planes."""
    out = np.empty(planes[0].size * DTYPES[dtype][0], np.uint8)
    merge_into(planes, dtype, out)
    return out


def merge_into(planes: list[np.ndarray], dtype: str, out: np.ndarray) -> None:
    """``merge`` writing into ``out`` (uint8, the planes' element count times the itemsize)."""
    size, ebits, mbits = DTYPES[dtype]
    columns = out.reshape(-1, size)
    if ebits == 0:
        for k, byte in zip(range(size - 1, -1, -1), planes):
            columns[:, k] = byte
        return
    rest = mbits - TOP_MANTISSA_BITS
    head, sign_mantissa, *low = planes
    _merge_float(head, sign_mantissa, tuple(low) or _NO_LOWS, len(low), rest, rest % 8,
                 out.view(np.dtype(f"<u{size}")))
