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
from numba import njit

from .errors import FormatError

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
                 sign_mantissa: np.ndarray) -> None:
    top = np.uint64(8 * words.itemsize - 1)
    rest_, low_bits_ = np.uint64(rest), np.uint64(low_bits)
    head_mask, low_mask = np.uint64((1 << head_bits) - 1), np.uint64((1 << low_bits) - 1)
    for i in range(words.size):
        w = np.uint64(words[i])
        head[i] = (w >> rest_) & head_mask
        sign_mantissa[i] = ((w >> top) << low_bits_) | ((w >> (rest_ - low_bits_)) & low_mask)


@njit(cache=True, nogil=True)
def _merge_float(head: np.ndarray, sign_mantissa: np.ndarray, rest: int, low_bits: int, words: np.ndarray) -> None:
    top = np.uint64(8 * words.itemsize - 1)
    rest_, low_bits_ = np.uint64(rest), np.uint64(low_bits)
    low_mask = np.uint64((1 << low_bits) - 1)
    for i in range(words.size):
        sm = np.uint64(sign_mantissa[i])
        words[i] = ((sm >> low_bits_) << top) | (np.uint64(head[i]) << rest_) | ((sm & low_mask) << (rest_ - low_bits_))


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
    _split_float(_words(data, size), rest, ebits + TOP_MANTISSA_BITS, rest % 8, head, sign_mantissa)
    for k, out in zip(range(rest // 8 - 1, -1, -1), low):  # the low mantissa bytes are whole bytes of each word
        out[:] = columns[:, k]


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
    _merge_float(head, sign_mantissa, rest, rest % 8, out.view(np.dtype(f"<u{size}")))
    for k, byte in zip(range(rest // 8 - 1, -1, -1), low):
        columns[:, k] = byte
