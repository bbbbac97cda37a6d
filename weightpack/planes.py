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


def _words(data: np.ndarray, size: int) -> np.ndarray:
    return data.view(np.dtype(f"<u{size}"))


def _narrow(values: np.ndarray, bits: int) -> np.ndarray:
    return values.astype(np.uint8 if bits <= 8 else np.uint16)


def split(data: np.ndarray, dtype: str) -> list[np.ndarray]:
    """Planes of the little-endian tensor bytes ``data`` (uint8, length a multiple of the itemsize)."""
    size, ebits, mbits = DTYPES[dtype]
    if ebits == 0:
        if size == 1:
            return [data]
        columns = data.reshape(-1, size)
        return [np.ascontiguousarray(columns[:, k]) for k in range(size - 1, -1, -1)]
    words = _words(data, size)
    rest = mbits - TOP_MANTISSA_BITS
    low_bits = rest % 8
    head = _narrow((words >> rest) & ((1 << (ebits + TOP_MANTISSA_BITS)) - 1), ebits + TOP_MANTISSA_BITS)
    sign = words >> (8 * size - 1)
    sign_mantissa = ((sign << low_bits) | ((words >> (rest - low_bits)) & ((1 << low_bits) - 1))).astype(np.uint8)
    low = [((words >> (8 * k)) & 0xFF).astype(np.uint8) for k in range(rest // 8 - 1, -1, -1)]
    return [head, sign_mantissa, *low]


def merge(planes: list[np.ndarray], dtype: str) -> np.ndarray:
    """Inverse of ``split``: the tensor bytes (uint8) rebuilt from its planes."""
    size, ebits, mbits = DTYPES[dtype]
    if ebits == 0:
        if size == 1:
            return planes[0]
        return np.stack(planes[::-1], axis=1).reshape(-1)
    word = np.dtype(f"<u{size}")
    rest = mbits - TOP_MANTISSA_BITS
    low_bits = rest % 8
    head, sign_mantissa, *low = (p.astype(word) for p in planes)
    words = ((sign_mantissa >> low_bits) << (8 * size - 1)) | (head << rest)
    words |= (sign_mantissa & ((1 << low_bits) - 1)) << (rest - low_bits)
    for k, byte in zip(range(rest // 8 - 1, -1, -1), low):
        words |= byte << (8 * k)
    return words.view(np.uint8)
