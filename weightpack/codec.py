"""Plane codecs: choose how each plane is stored (rANS, constant, raw, zstd) and code it in chunks.

A plane is cut into chunks of ``CHUNK_SYMBOLS`` symbols that are coded independently, so that the
work spreads over threads and damage stays local to one chunk. The choice of codec is made from the
histogram before any coding: rANS when its estimated size (coded bits, table, per-chunk states) is
smaller than storing the plane raw, a single symbol when the plane is constant.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np
import zstandard

from . import rans
from .container import (
    CODEC_CONST,
    CODEC_RANS,
    CODEC_RAW,
    CODEC_ZSTD,
    TRANSFORM_NONE,
    TRANSFORM_SUB,
    TRANSFORM_XOR,
    PlaneRecord,
    unzstd,
)
from .entropy import FrequencyTable, entropy_bits, histogram
from .errors import FormatError, IntegrityError

CHUNK_SYMBOLS = 1 << 18
BYTES_CHUNK = 1 << 22  # verbatim runs (headers, gaps) go through zstd in chunks of 4 MiB
ZSTD_LEVEL = 19
CHUNK_OVERHEAD_BYTES = rans.HEADER_BYTES + 16  # coder states, plus the chunk's index entry


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _rans_chunk(symbols: np.ndarray, table: np.ndarray) -> bytes:
    out = np.empty(rans.max_stream_bytes(symbols.size), np.uint8)
    start = rans.encode(symbols, table, out)
    return out[start:].tobytes()


def apply_transform(transform: int, symbols: np.ndarray, reference: np.ndarray, bits: int) -> np.ndarray:
    """The symbols coded for a plane given the same plane of a reference tensor (identity for NONE)."""
    if transform == TRANSFORM_XOR:
        return symbols ^ reference
    if transform == TRANSFORM_SUB:
        return (symbols - reference) & symbols.dtype.type((1 << bits) - 1)
    return symbols


def invert_transform(transform: int, coded: np.ndarray, reference: np.ndarray, bits: int) -> np.ndarray:
    if transform == TRANSFORM_XOR:
        return coded ^ reference
    if transform == TRANSFORM_SUB:
        return (coded + reference) & coded.dtype.type((1 << bits) - 1)
    return coded


def encode_plane(symbols: np.ndarray, bits: int, pool: Executor,
                 reference: np.ndarray | None = None) -> tuple[PlaneRecord, list[bytes]]:
    """Code one plane; return its record (chunks without offsets yet) and the chunk payloads in order.

    With a ``reference`` (the same plane of a base tensor) the plane is coded as is, XORed with the
    reference, or as its difference modulo ``2**bits``: whichever has the lowest order-0 entropy.
    """
    transform = TRANSFORM_NONE
    if reference is not None:
        candidates = {t: apply_transform(t, symbols, reference, bits)
                      for t in (TRANSFORM_NONE, TRANSFORM_XOR, TRANSFORM_SUB)}
        transform = min(candidates, key=lambda t: entropy_bits(histogram(candidates[t], bits)))
        symbols = candidates[transform]
    record, payloads = _encode_symbols(symbols, bits, pool)
    record.transform = transform
    return record, payloads


def _encode_symbols(symbols: np.ndarray, bits: int, pool: Executor) -> tuple[PlaneRecord, list[bytes]]:
    counts = histogram(symbols, bits)
    bound = int(np.ceil(entropy_bits(counts)))
    raw_bytes = symbols.size * symbols.itemsize
    present = np.flatnonzero(counts)
    if present.size == 1:
        return PlaneRecord(CODEC_CONST, bits, bound, 0, int(present[0]).to_bytes(2, "little")), []
    table = FrequencyTable.fit(counts) if present.size > 1 else None
    if table is not None:
        params = table.to_bytes()
        slices = _chunks(symbols.size, CHUNK_SYMBOLS)
        estimate = table.coded_bits(counts) / 8 + len(params) + CHUNK_OVERHEAD_BYTES * len(slices)
        if estimate < raw_bytes:
            enc = table.encoder_table()
            payloads = list(pool.map(lambda s: _rans_chunk(symbols[s], enc), slices))
            if sum(map(len, payloads)) + len(params) < raw_bytes:
                return PlaneRecord(CODEC_RANS, bits, bound, CHUNK_SYMBOLS, params), payloads
    payloads = [symbols[s].astype(symbols.dtype.newbyteorder("<")).tobytes()
                for s in _chunks(symbols.size, CHUNK_SYMBOLS)]
    return PlaneRecord(CODEC_RAW, bits, bound, CHUNK_SYMBOLS, b""), payloads


def encode_bytes(data: np.ndarray, pool: Executor) -> tuple[PlaneRecord, list[bytes]]:
    """Verbatim bytes (safetensors header, gaps): zstd per chunk, or raw where zstd does not pay."""
    slices = _chunks(len(data), BYTES_CHUNK)
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=False, write_content_size=True)
    packed = list(pool.map(lambda s: compressor.compress(data[s].tobytes()), slices)) if slices else []
    if sum(map(len, packed)) < len(data):
        return PlaneRecord(CODEC_ZSTD, 8, 8 * len(data), BYTES_CHUNK, b""), packed
    return PlaneRecord(CODEC_RAW, 8, 8 * len(data), BYTES_CHUNK, b""), [data[s].tobytes() for s in slices]


class PlaneDecoder:
    """Decodes one plane chunk by chunk, so that memory stays bounded whatever size a plane claims.

    Everything about the plane is validated here, before any chunk reaches the rANS kernel: the
    table, the constant, and (per chunk) the CRC and the stored size the codec implies.
    """

    def __init__(self, plane: PlaneRecord, where: str) -> None:
        self.plane, self.where = plane, where
        self.dtype = np.dtype(np.uint8 if plane.bits <= 8 else np.uint16)
        if plane.codec == CODEC_CONST:
            value = int.from_bytes(plane.params, "little") if len(plane.params) == 2 else -1
            if not 0 <= value < 1 << plane.bits:
                raise FormatError(f"{where}: invalid constant plane")
            self.value = value
        elif plane.codec == CODEC_RANS:
            try:
                self.table = FrequencyTable.from_bytes(plane.params, plane.bits)
            except FormatError as exc:
                raise FormatError(f"{where}: {exc}") from None
            self.slot_symbol, self.slot_info = self.table.decoder_tables(self.dtype)
        elif plane.params:
            raise FormatError(f"{where}: unexpected codec parameters")

    def chunk(self, k: int, n: int, read: Callable[[int, int], np.ndarray],
              reference: np.ndarray | None = None) -> np.ndarray:
        """Symbols ``k * chunk_symbols`` to that plus ``n`` of the plane; reads and checks chunk ``k``.

        ``reference`` is the same stretch of the reference tensor's plane, for a delta-coded plane.
        """
        coded = self._coded(k, n, read)
        if self.plane.transform == TRANSFORM_NONE:
            return coded
        return invert_transform(self.plane.transform, coded, reference, self.plane.bits)

    def _coded(self, k: int, n: int, read: Callable[[int, int], np.ndarray]) -> np.ndarray:
        if self.plane.codec == CODEC_CONST:
            return np.full(n, self.value, self.dtype)
        info = self.plane.chunks[k]
        data = read(info.offset, info.size)
        if zlib.crc32(data) != info.crc32:
            raise IntegrityError(f"{self.where}: checksum mismatch in chunk at offset {info.offset}")
        if self.plane.codec == CODEC_RAW:
            if info.size != n * self.dtype.itemsize:
                raise FormatError(f"{self.where}: raw chunk has the wrong size")
            out = data.view(self.dtype.newbyteorder("<")).astype(self.dtype, copy=False)
            if self.plane.bits < 8 * self.dtype.itemsize and n and int(out.max()) >> self.plane.bits:
                raise FormatError(f"{self.where}: raw symbols exceed the plane width")
            return out
        if self.plane.codec == CODEC_ZSTD:
            return np.frombuffer(unzstd(data, n, f"{self.where}: zstd chunk"), np.uint8)
        out = np.empty(n, self.dtype)
        if not rans.decode(data, self.table.precision, self.slot_symbol, self.slot_info, out):
            raise IntegrityError(f"{self.where}: rANS chunk at offset {info.offset} is inconsistent")
        return out
