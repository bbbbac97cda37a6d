"""Planes: split and merge are exact inverses for every bit pattern of every dtype."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightpack import bitpack, dtypes, planes


@pytest.mark.parametrize("dtype", ["BF16", "F16"])
def test_every_16_bit_pattern_survives_split_and_merge(dtype: str) -> None:
    data = np.arange(1 << 16, dtype="<u2").view(np.uint8)  # NaN payloads, +-0, +-inf, subnormals all included
    assert planes.merge(planes.split(data, dtype), dtype).tobytes() == data.tobytes()


@pytest.mark.parametrize("dtype", ["F8_E4M3", "F8_E5M2", "U8", "I8", "BOOL", "F8_E8M0"])
def test_every_8_bit_pattern_survives_split_and_merge(dtype: str) -> None:
    data = np.arange(256, dtype=np.uint8)
    assert planes.merge(planes.split(data, dtype), dtype).tobytes() == data.tobytes()


@pytest.mark.parametrize("dtype", sorted(dtypes.DTYPES))
@settings(deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 300))
def test_random_words_of_every_dtype_survive(dtype: str, seed: int, n: int) -> None:
    size = dtypes.itemsize(dtype)
    data = np.random.default_rng(seed).integers(0, 256, n * size, dtype=np.uint8)
    split = planes.split(data, dtype)
    for plane, spec in zip(split, dtypes.layout(dtype)):
        assert plane.dtype == spec.symbol_dtype and plane.size == n
        assert n == 0 or int(plane.max()) < 1 << spec.bits
    assert planes.merge(split, dtype).tobytes() == data.tobytes()


def test_float_planes_pair_the_exponent_with_the_top_mantissa_bits() -> None:
    assert [(p.name, p.bits) for p in dtypes.layout("BF16")] == [("exponent_top", 10), ("sign_mantissa", 6)]
    assert [(p.name, p.bits) for p in dtypes.layout("F16")] == [
        ("exponent_top", 7), ("sign_mantissa", 1), ("mantissa_0", 8)]
    assert [p.bits for p in dtypes.layout("F32")] == [10, 6, 8, 8]
    assert [p.bits for p in dtypes.layout("F64")] == [13, 3, 8, 8, 8, 8, 8, 8]
    assert [p.bits for p in dtypes.layout("F8_E4M3")] == [6, 2]
    value = np.array([-1.75], "<f4").view(np.uint8)  # sign 1, exponent 127, mantissa 0b11 then zeros
    assert [int(p[0]) for p in planes.split(value, "F32")] == [127 << 2 | 0b11, 1 << 5, 0, 0]


def test_integer_dtypes_split_into_bytes_most_significant_first() -> None:
    data = np.array([0x0102], "<u2").view(np.uint8)
    assert [int(p[0]) for p in planes.split(data, "I16")] == [0x01, 0x02]


@pytest.mark.parametrize("bits", range(1, 8))
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 1001])
def test_raw_planes_are_stored_at_their_width_lsb_first(bits: int, n: int) -> None:
    symbols = np.random.default_rng(bits * 7919 + n).integers(0, 1 << bits, n).astype(np.uint8)
    stored = bitpack.pack(symbols, bits).tobytes()
    as_bits = np.unpackbits(symbols[:, None], axis=1, bitorder="little")[:, :bits].ravel()
    assert stored == np.packbits(as_bits, bitorder="little").tobytes()  # symbol i at bits i*width..
    back = np.empty(n, np.uint8)
    assert bitpack.unpack_into(np.frombuffer(stored, np.uint8), bits, back)
    assert np.array_equal(back, symbols)
    assert not bitpack.unpack_into(np.frombuffer(stored + b"\0", np.uint8), bits, back)  # wrong length
