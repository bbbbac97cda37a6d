"""The rANS kernel and its frequency tables: exact round trips, near-entropy cost, safety on garbage."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightpack import codec, rans
from weightpack.dtypes import Plane
from weightpack.entropy import (
    SAMPLE_MIN,
    SAMPLE_RUN,
    SAMPLE_STEP,
    FrequencyTable,
    _largest,
    _normalise,
    count_chunks,
    entropy_bits,
    histogram,
)
from weightpack.errors import FormatError


def _roundtrip(symbols: np.ndarray, bits: int) -> bytes:
    table = FrequencyTable.fit(histogram(symbols, bits))
    out = np.empty(rans.max_stream_bytes(symbols.size), np.uint8)
    stream = out[rans.encode(symbols, table.encoder_table, out):]
    back = np.empty_like(symbols)
    assert rans.decode(stream, table.precision, table.decoder_entries(), back)
    assert np.array_equal(back, symbols)
    return stream.tobytes()


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 5000), alphabet=st.integers(2, 256),
       skew=st.floats(0.1, 8.0))
def test_round_trip_of_any_distribution_and_length(seed: int, n: int, alphabet: int, skew: float) -> None:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(alphabet, 1 / skew))
    symbols = rng.choice(alphabet, n, p=p).astype(np.uint8)
    if np.unique(symbols).size > 1:
        _roundtrip(symbols, 8)


def test_wide_alphabets_round_trip() -> None:
    symbols = np.random.default_rng(0).integers(0, 2048, 100_003).astype(np.uint16)
    _roundtrip(symbols, 11)


def test_rare_symbols_with_frequency_one_round_trip() -> None:
    symbols = np.zeros(200_001, np.uint8)
    symbols[::997] = np.arange(symbols[::997].size) % 200 + 1
    _roundtrip(symbols, 8)


def test_coded_size_is_close_to_the_empirical_entropy() -> None:
    rng = np.random.default_rng(1)
    symbols = np.clip(rng.normal(120, 3, 1 << 20), 0, 255).astype(np.uint8)
    bound_bytes = entropy_bits(histogram(symbols, 8)) / 8
    assert len(_roundtrip(symbols, 8)) < bound_bytes * 1.003 + 64


@settings(max_examples=300, deadline=None)
@given(stream=st.binary(min_size=0, max_size=600), n=st.integers(0, 400), precision=st.integers(1, 15))
def test_decoder_survives_arbitrary_bytes(stream: bytes, n: int, precision: int) -> None:
    freq = np.zeros(256, np.int64)
    freq[: 1 << min(precision, 8)] = (1 << precision) >> min(precision, 8)
    out = np.zeros(n, np.uint8)
    rans.decode(np.frombuffer(stream, np.uint8), precision, FrequencyTable(precision, freq).decoder_entries(),
                out)  # must not crash


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.sampled_from([300, rans.WIDE_MIN, rans.WIDE_MIN + 13]),
       cut=st.integers(0, 40), flips=st.integers(0, 3))
def test_decoder_reads_nothing_outside_its_stream(seed: int, n: int, cut: int, flips: int) -> None:
    """A stream cut short or with bits flipped decodes to the same symbols and verdict whatever lies past
    its end: the decoder's reads stay inside the stream, in its unchecked loops and near the end alike."""
    rng = np.random.default_rng(seed)
    symbols = np.clip(rng.normal(8, 2, n), 0, 15).astype(np.uint8)
    table = FrequencyTable.fit(histogram(symbols, 4))
    buf = np.empty(rans.max_stream_bytes(n), np.uint8)
    stream = buf[rans.encode(symbols, table.encoder_table, buf):].copy()
    stream = stream[:max(0, stream.size - 2 * cut)]
    for _ in range(flips if stream.size else 0):
        stream[rng.integers(stream.size)] ^= np.uint8(1 << rng.integers(8))
    verdicts = set()
    for fill in (0x00, 0xFF, 0x5A):
        padded = np.full(stream.size + 64, fill, np.uint8)
        padded[:stream.size] = stream
        out = np.zeros(n, np.uint8)
        verdicts.add((rans.decode(padded[:stream.size], table.precision, table.decoder_entries(), out), out.tobytes()))
    assert len(verdicts) == 1
    if cut == flips == 0:
        assert verdicts == {(True, symbols.tobytes())}


def test_table_serialisation_round_trips_and_is_validated() -> None:
    counts = np.bincount(np.random.default_rng(2).integers(0, 40, 10_000), minlength=256)
    table = FrequencyTable.fit(counts)
    assert int(table.freq.sum()) == 1 << table.precision and (table.freq[counts > 0] >= 1).all()
    back = FrequencyTable.from_bytes(table.to_bytes(), 8)
    assert back.precision == table.precision and np.array_equal(back.freq, table.freq)
    data = bytearray(table.to_bytes())
    data[-1] ^= 1  # the frequencies no longer sum to the total
    with pytest.raises(FormatError):
        FrequencyTable.from_bytes(bytes(data), 8)
    for bad in (b"", b"\x00\x00\x00\x01\x00", b"\x10\x00\x00\x01\x00\x01", table.to_bytes() + b"\x00",
                b"\x0c\x00\x00\xff\xff", b"\x0c\xff\x00\x02\x00\x03\x01\x01"):
        with pytest.raises(FormatError):
            FrequencyTable.from_bytes(bad, 8)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 3000), chunk=st.integers(1, 700), bits=st.sampled_from([1, 2, 7, 8, 10]),
       seed=st.integers(0, 2**32 - 1))
def test_chunk_histograms_count_each_chunk_and_sum_to_the_plane(n: int, chunk: int, bits: int, seed: int) -> None:
    symbols = np.random.default_rng(seed).integers(0, 1 << bits, n).astype(np.uint16)
    rows = np.zeros((-(-n // chunk), 1 << bits), np.int64)
    count_chunks(symbols, chunk, rows)
    for k, row in enumerate(rows):
        assert np.array_equal(row, np.bincount(symbols[k * chunk:(k + 1) * chunk], minlength=1 << bits))
    assert np.array_equal(histogram(symbols, bits), np.bincount(symbols, minlength=1 << bits))
    assert np.array_equal(rows.sum(axis=0), histogram(symbols, bits))


@settings(max_examples=50, deadline=None)
@given(keys=st.lists(st.sampled_from([-np.inf, -1.0, 0.0, 0.5, 2.0, 7.25]), max_size=60), k=st.integers(0, 60))
def test_table_fitting_picks_the_largest_keys_ties_in_index_order(keys: list[float], k: int) -> None:
    values, k = np.array(keys, np.float64), min(k, len(keys))
    heap = np.empty(len(values), np.int64)
    assert set(heap[:_largest(values, k, heap)]) == set(np.argsort(-values, kind="stable")[:k])


@settings(max_examples=50, deadline=None)
@given(counts=st.lists(st.integers(0, 10**6), min_size=2, max_size=300), precision=st.integers(9, 15))
def test_normalised_tables_sum_exactly_and_keep_every_present_symbol(counts: list[int], precision: int) -> None:
    counts = np.array(counts, np.int64)
    if not 0 < np.count_nonzero(counts) <= 1 << precision:
        return
    freq, heap = np.empty((2, counts.size), np.int64)
    _normalise(counts, precision, freq, np.empty(counts.size), heap)
    assert freq.sum() == 1 << precision and np.array_equal(freq > 0, counts > 0)


def _coded(records: list, stripes) -> list:
    chunks = [(c.payload.tobytes(), c.checksum, c.mode, c.table) for stripe in stripes for c in stripe if c]
    return [(r.codec, r.bits, r.bound_bits, r.params) for r in records] + chunks


def test_a_plane_codes_the_same_whether_its_chunks_were_counted_while_read_or_by_its_model() -> None:
    """Pack counts a large tensor's chunk histograms block by block as it reads them, side by side; the
    archive must not depend on where the counting happened."""
    rng = np.random.default_rng(5)
    n = 3 * codec.CHUNK_SYMBOLS + 1000
    skewed = np.minimum(rng.geometric(0.05, n), 1023).astype(np.uint16)  # 10 bits, like BF16's heads
    c = codec.CHUNK_SYMBOLS
    skewed[c:2 * c] //= 4  # a chunk whose statistics differ: a table of its own
    skewed[2 * c:3 * c] = rng.integers(0, 1024, c)  # one coding cannot shrink: raw
    noise = rng.integers(0, 64, n).astype(np.uint8)  # 6 bits, random: a raw plane, known so from samples
    planes, specs = [skewed, noise], [Plane("exponent_top", 10), Plane("sign_mantissa", 6)]
    counts = [codec.ChunkCounts.zeros(n, spec) for spec in specs]
    for first in range(0, n, 2 * codec.CHUNK_SYMBOLS):  # two blocks of whole chunks, as pack reads them
        rows = slice(first // codec.CHUNK_SYMBOLS, -(-min(first + 2 * codec.CHUNK_SYMBOLS, n) // codec.CHUNK_SYMBOLS))
        for plane, plane_counts in zip(planes, counts):
            plane_counts.count(plane[first:first + 2 * codec.CHUNK_SYMBOLS], rows)
    transforms = [codec.TRANSFORM_NONE] * 2
    by_model = _coded(*codec.encode_planes(planes, specs, transforms, None))
    counted_while_read = _coded(*codec.encode_planes(planes, specs, transforms, None, counts))
    assert by_model == counted_while_read
    assert [record[0] for record in by_model[:2]] == [codec.CODEC_RANS, codec.CODEC_RAW]
    modes = {mode for _, _, mode, _ in by_model[2::2]}  # the first plane's chunks (stripe by stripe)
    assert modes == {codec.CHUNK_PLANE, codec.CHUNK_OWN, codec.CHUNK_RAW}  # every mode took part
    assert list(counts[1].sampled) == [True, True, True, False]  # the last chunk, 1000 symbols, counted whole


@settings(max_examples=40, deadline=None)
@given(chunks=st.lists(st.sampled_from(["random", "skewed"]), min_size=1, max_size=4), short_tail=st.booleans(),
       bits=st.sampled_from([2, 6, 8]), seed=st.integers(0, 2**32 - 1))
def test_a_chunk_is_counted_from_a_sample_only_where_the_sample_shows_it_cannot_be_coded(
        chunks: list[str], short_tail: bool, bits: int, seed: int) -> None:
    """A chunk sampled and found near-random keeps its sample's counts (a run of SAMPLE_RUN symbols every
    SAMPLE_STEP) and an entropy estimate at or above the threshold; any other chunk is counted whole, and so
    is one too short to sample (under SAMPLE_MIN symbols), random or not."""
    rng, chunk, threshold = np.random.default_rng(seed), 3 * SAMPLE_MIN, 0.995 * bits
    chunks = chunks + ["short"] * short_tail
    parts = {"random": lambda: rng.integers(0, 1 << bits, chunk),
             "skewed": lambda: np.minimum(rng.geometric(0.3, chunk), (1 << bits) - 1),
             "short": lambda: rng.integers(0, 1 << bits, SAMPLE_MIN - 1)}
    pieces = [parts[kind]().astype(np.uint8) for kind in chunks]
    symbols = np.concatenate(pieces)
    rows, sample_bits = np.zeros((len(pieces), 1 << bits), np.int64), np.zeros(len(pieces))
    count_chunks(symbols, chunk, rows, sample_bits, threshold)
    for piece, row, estimate, kind in zip(pieces, rows, sample_bits, chunks):
        sample = np.concatenate([piece[a:a + SAMPLE_RUN] for a in range(0, piece.size, SAMPLE_STEP)])
        if estimate > 0:
            assert kind == "random" and estimate >= threshold
            assert np.array_equal(row, np.bincount(sample, minlength=1 << bits))
        else:
            assert kind != "random"  # a skewed chunk, or a short one
            assert np.array_equal(row, np.bincount(piece, minlength=1 << bits))
