"""The safetensors dtypes weightpack knows, and the planes each is split into (``planes`` does the splitting).

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

import functools
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

    @property
    def nearly_random(self) -> bool:
        """A float's low mantissa plane (``sign_mantissa`` and ``mantissa_<k>``, of more than one bit): nearly
        always stored raw, so ``codec`` counts it from a sample first."""
        return self.bits > 1 and self.name.startswith(("sign_mantissa", "mantissa_"))


def itemsize(dtype: str) -> int:
    """Bytes per element of a safetensors dtype; FormatError for dtypes weightpack does not know."""
    try:
        return DTYPES[dtype][0]
    except KeyError:
        raise FormatError(f"unsupported dtype {dtype!r}") from None


TOP_MANTISSA_BITS = 2


def fields(dtype: str) -> tuple[int, int, int, int, int]:
    """Where a word's planes lie, as the split, merge and decode kernels take it: ``(itemsize, exponent
    bits, rest, rest % 8, rest // 8)``, ``rest`` being the mantissa bits below the ``TOP_MANTISSA_BITS``
    coded with the exponent: ``rest % 8`` of them lie under the sign, ``rest // 8`` whole bytes are planes
    of their own. ``(itemsize, 0, 0, 0, 0)`` for an integer or bool dtype (a plane per byte)."""
    size, (_, ebits, mbits) = itemsize(dtype), DTYPES[dtype]
    rest = mbits - TOP_MANTISSA_BITS if ebits else 0
    return size, ebits, rest, rest % 8, rest // 8


@functools.cache  # asked for each tensor packed, read or described; a dtype's planes never change
def layout(dtype: str) -> tuple[Plane, ...]:
    """The planes a tensor of ``dtype`` is split into, in storage order."""
    size, ebits, _, low_bits, low_bytes = fields(dtype)
    if ebits == 0:
        return tuple(Plane(f"byte_{k}", 8) for k in range(size - 1, -1, -1))
    return (Plane("exponent_top", ebits + TOP_MANTISSA_BITS), Plane("sign_mantissa", 1 + low_bits),
            *(Plane(f"mantissa_{k}", 8) for k in range(low_bytes - 1, -1, -1)))
