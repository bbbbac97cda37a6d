"""The .wpk container: preamble, payload chunks, index, footer. See docs/FORMAT.md for every field.

This module knows the byte layout and nothing about how planes are coded. It writes a stream front
to back (payload first, then the zstd-compressed index, so packing needs no seeking and bounded
memory) and reads an archive by its footer, validating every size, offset and count against the
file before anything else trusts it.
"""

from __future__ import annotations

import functools
import struct
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np
import zstandard

from .dtypes import itemsize, layout
from .errors import FormatError, IntegrityError

MAGIC = b"\x89WPK\r\n\x1a\n"
FOOTER_MAGIC = b"WPKINDEX"
VERSION = 3
PREAMBLE = struct.Struct("<8sHHI")  # magic, version, flags, reserved
FOOTER = struct.Struct("<QQQII8s")  # index offset, stored length, raw length, index crc32, footer crc32, magic
CHUNK = struct.Struct("<QIIB")  # offset, stored size, checksum (checksum.chunk_checksum), mode

CODEC_RAW, CODEC_CONST, CODEC_RANS, CODEC_ZSTD = 0, 1, 2, 3
# How a chunk of a rANS plane is stored: with the plane's table, with its own table, or raw (bit-packed).
# Chunks of other codecs are always CHUNK_PLANE.
CHUNK_PLANE, CHUNK_OWN, CHUNK_RAW = 0, 1, 2
CHUNK_MODE_NAMES = {CHUNK_PLANE: "plane", CHUNK_OWN: "own", CHUNK_RAW: "raw"}
CODEC_NAMES = {CODEC_RAW: "raw", CODEC_CONST: "const", CODEC_RANS: "rans", CODEC_ZSTD: "zstd"}
KIND_BYTES, KIND_TENSOR = 0, 1
REF_NONE, REF_COPY, REF_DELTA = 0, 1, 2  # a tensor stored whole, as a copy of another, or as a delta to it
TRANSFORM_NONE, TRANSFORM_XOR, TRANSFORM_SUB = 0, 1, 2  # plane = p, p ^ ref, or p - ref (mod 2**bits)
TRANSFORM_WORD_SUB = 3  # every plane is a plane of (word - ref_word) mod 2**(8 * itemsize)
TRANSFORM_NAMES = {TRANSFORM_NONE: "", TRANSFORM_XOR: "xor", TRANSFORM_SUB: "sub", TRANSFORM_WORD_SUB: "word-sub"}
SOURCE_BASE, SOURCE_SIBLING = 1, 2  # another checkpoint (--base), or another archive of the same folder
SELF = 0xFF  # source index meaning "this archive"
MAX_CHUNK_SYMBOLS = 1 << 24  # bounds the memory one chunk can ask for
# An archive may expand at most this much (beyond 1 GiB): more is refused as a decompression bomb.
# Real checkpoints expand about 1.5x; only whole files of constant tensors come anywhere near this.
MAX_EXPANSION = 1 << 16
ALWAYS_ALLOWED_BYTES = 1 << 30
MAX_INDEX_BYTES = 1 << 30  # a sanity bound on the decompressed index: ~1 GiB is millions of tensors
# The index is compressed once every chunk is written: on the serial path, after the coding threads are done.
# Level 9 against 15 (MiniLM F32): 1.4 against 5.3 ms for 610 more bytes, 0.0007% of the archive.
INDEX_ZSTD_LEVEL = 9


@dataclass
class Chunk:
    offset: int
    size: int
    checksum: int  # checksum.chunk_checksum of the stored bytes
    mode: int = CHUNK_PLANE
    table: bytes = b""  # the chunk's own frequency table (CHUNK_OWN)


@dataclass
class PlaneRecord:
    """How one plane (or one run of verbatim bytes) is stored: codec, parameters, chunks."""

    codec: int
    bits: int
    bound_bits: int  # order-0 entropy of the plane, rounded up: the limit for a static coder
    chunk_symbols: int
    params: bytes
    chunks: list[Chunk] = field(default_factory=list)
    transform: int = TRANSFORM_NONE  # how the coded symbols relate to the reference tensor's plane

    @property
    def stored_bytes(self) -> int:
        return sum(c.size + len(c.table) for c in self.chunks) + len(self.params)


@dataclass
class Segment:
    """A contiguous run of the original file: verbatim bytes (header, gaps) or one tensor's data."""

    kind: int
    length: int
    planes: list[PlaneRecord]
    name: str = ""
    dtype: str = ""
    shape: tuple[int, ...] = ()
    ref: int = REF_NONE
    source: int = SELF  # index into Index.sources, or SELF
    ref_name: str = ""  # the tensor this one copies or is a delta to
    stripe: int = 1  # elements (bytes for verbatim runs) per stripe: chunk k of every plane
    hashes: list[int] = field(default_factory=list)  # XXH64 of each stripe's original bytes
    start: int = 0  # where the segment begins in the original file (its place in the index; not stored)

    @property
    def stripes(self) -> int:
        return -(-self.count // self.stripe)

    @property
    def itemsize(self) -> int:
        """Bytes per symbol of each plane's original: a tensor's element size, 1 for a verbatim run."""
        return itemsize(self.dtype) if self.kind == KIND_TENSOR else 1

    @property
    def count(self) -> int:
        """Symbols per plane: elements of a tensor, bytes of a verbatim run."""
        return self.length // self.itemsize


@dataclass
class Source:
    """A file other tensors refer to: a base checkpoint, or a sibling archive of the same folder."""

    kind: int
    name: str  # file name as given at packing (informative) or the sibling's path in the folder
    sha256: bytes  # of the original (safetensors) bytes of that file


@dataclass
class Index:
    original_size: int
    original_sha256: bytes
    segments: list[Segment]
    sources: list[Source] = field(default_factory=list)


# ---------------------------------------------------------------- writing


def write_preamble(out: BinaryIO) -> None:
    out.write(PREAMBLE.pack(MAGIC, VERSION, 0, 0))


def _plane_bytes(plane: PlaneRecord) -> bytes:
    head = struct.pack("<BBBQII", plane.codec, plane.transform, plane.bits, plane.bound_bits, plane.chunk_symbols,
                       len(plane.params))
    chunks = b"".join(CHUNK.pack(c.offset, c.size, c.checksum, c.mode)
                      + (struct.pack("<H", len(c.table)) + c.table if c.mode == CHUNK_OWN else b"")
                      for c in plane.chunks)
    return head + plane.params + struct.pack("<I", len(plane.chunks)) + chunks


def _segment_bytes(seg: Segment) -> bytes:
    out = struct.pack("<BQ", seg.kind, seg.length)
    if seg.kind == KIND_TENSOR:
        name, dtype = seg.name.encode(), seg.dtype.encode()
        out += struct.pack("<H", len(name)) + name + struct.pack("<B", len(dtype)) + dtype
        out += struct.pack(f"<B{len(seg.shape)}Q", len(seg.shape), *seg.shape)
        out += struct.pack("<B", seg.ref)
        if seg.ref != REF_NONE:
            ref_name = seg.ref_name.encode()
            out += struct.pack("<BH", seg.source, len(ref_name)) + ref_name
    out += struct.pack(f"<I{len(seg.hashes)}Q", seg.stripe, *seg.hashes)
    out += struct.pack("<B", len(seg.planes))
    return out + b"".join(_plane_bytes(p) for p in seg.planes)


def write_index(out: BinaryIO, index: Index, offset: int) -> None:
    """Append the index at ``offset`` (the current end of the payload), then the footer."""
    raw = struct.pack("<Q32sB", index.original_size, index.original_sha256, len(index.sources))
    for src in index.sources:
        name = src.name.encode()
        raw += struct.pack("<BH", src.kind, len(name)) + name + src.sha256
    raw += struct.pack("<I", len(index.segments)) + b"".join(_segment_bytes(s) for s in index.segments)
    body = zstandard.ZstdCompressor(level=INDEX_ZSTD_LEVEL, write_checksum=False).compress(raw)
    out.write(body)
    fields = struct.pack("<QQQI", offset, len(body), len(raw), zlib.crc32(body))
    out.write(fields + struct.pack("<I", zlib.crc32(fields)) + FOOTER_MAGIC)


# ---------------------------------------------------------------- reading


def unzstd(data: bytes, size: int, what: str) -> bytes:
    """Decompress one zstd frame that must hold exactly ``size`` bytes.

    The frame's own content size is checked first: python-zstandard allocates what a frame header
    claims, so a hostile header could otherwise ask for any amount of memory.
    """
    try:
        claimed = zstandard.frame_content_size(data)
        if claimed != size:
            raise FormatError(f"{what} claims {claimed} bytes, expected {size}")
        raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise FormatError(f"{what} is corrupt ({exc})") from None
    if len(raw) != size:
        raise FormatError(f"{what} has the wrong size")
    return raw


@functools.cache
def _struct(fmt: str) -> struct.Struct:
    return struct.Struct("<" + fmt)


class _Cursor:
    """Bounds-checked reader over the index bytes: running off the end is a FormatError, not an IndexError.

    Fields are unpacked in place, with one compiled ``Struct`` per format: opening an archive parses
    a record per plane and per chunk before anything decodes (MiniLM: ~400 planes, ~700 chunks)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def _advance(self, n: int) -> int:
        """Where the next ``n`` bytes start; the cursor moves past them."""
        if n < 0 or self.pos + n > len(self.data):
            raise FormatError("index is truncated")
        self.pos += n
        return self.pos - n

    def take(self, n: int) -> bytes:
        start = self._advance(n)
        return self.data[start:start + n]

    def unpack(self, fmt: str | struct.Struct) -> tuple:
        s = _struct(fmt) if isinstance(fmt, str) else fmt
        return s.unpack_from(self.data, self._advance(s.size))


def check_preamble(head: bytes) -> None:
    """Refuse anything that is not a .wpk of a version and flags this reader understands."""
    if len(head) < PREAMBLE.size or head[:8] != MAGIC:
        raise FormatError("not a weightpack archive (bad magic)")
    _, version, flags, reserved = PREAMBLE.unpack(head[:PREAMBLE.size])
    if version != VERSION:
        raise FormatError(f"unsupported format version {version} (this weightpack reads version {VERSION})")
    if flags or reserved:
        raise FormatError(f"unsupported format flags 0x{flags:04x}/{reserved:#x}")


def _read_plane(cur: _Cursor, count: int, payload_end: int) -> PlaneRecord:
    codec, transform, bits, bound_bits, chunk_symbols, params_len = cur.unpack("BBBQII")
    if codec not in CODEC_NAMES or transform not in TRANSFORM_NAMES or not 1 <= bits <= 16:
        raise FormatError(f"unknown codec {codec}, transform {transform} or plane width {bits}")
    params = cur.take(params_len)
    (n_chunks,) = cur.unpack("I")
    if codec == CODEC_CONST:
        expected = 0
    elif not 1 <= chunk_symbols <= MAX_CHUNK_SYMBOLS:
        raise FormatError(f"plane has an invalid chunk size {chunk_symbols}")
    else:
        expected = -(-count // chunk_symbols)
    if n_chunks != expected:
        raise FormatError(f"plane has {n_chunks} chunks, expected {expected}")
    chunks = []
    for _ in range(n_chunks):
        c = Chunk(*cur.unpack(CHUNK))
        if c.mode not in CHUNK_MODE_NAMES or (c.mode != CHUNK_PLANE and codec != CODEC_RANS):
            raise FormatError(f"chunk mode {c.mode} is invalid for codec {codec}")
        if c.mode == CHUNK_OWN:
            c.table = cur.take(cur.unpack("H")[0])
        if c.offset < PREAMBLE.size or c.offset + c.size > payload_end:
            raise FormatError("chunk lies outside the payload")
        chunks.append(c)
    return PlaneRecord(codec, bits, bound_bits, chunk_symbols, params, chunks, transform)


def _text(cur: _Cursor, length_fmt: str, encoding: str = "utf-8") -> str:
    try:
        return cur.take(cur.unpack(length_fmt)[0]).decode(encoding)
    except UnicodeDecodeError:
        raise FormatError("a name in the index is not valid text") from None


def _read_segment(cur: _Cursor, payload_end: int, remaining: int, n_sources: int) -> Segment:
    kind, length = cur.unpack("BQ")
    if length > remaining:
        raise FormatError("segment lengths exceed the original file size")
    if kind == KIND_BYTES:
        seg = Segment(kind, length, [])
    elif kind == KIND_TENSOR:
        name, dtype = _text(cur, "H"), _text(cur, "B", "ascii")
        (ndim,) = cur.unpack("B")
        shape = cur.unpack(f"{ndim}Q")
        size = itemsize(dtype)
        numel = 1
        for d in shape:
            numel *= d
        if numel * size != length:
            raise FormatError(f"tensor {name!r}: shape {list(shape)} does not match its length {length}")
        seg = Segment(kind, length, [], name, dtype, tuple(shape))
        (seg.ref,) = cur.unpack("B")
        if seg.ref not in (REF_NONE, REF_COPY, REF_DELTA):
            raise FormatError(f"tensor {name!r}: unknown reference kind {seg.ref}")
        if seg.ref != REF_NONE:
            (seg.source,) = cur.unpack("B")
            seg.ref_name = _text(cur, "H")
            if seg.source != SELF and seg.source >= n_sources:
                raise FormatError(f"tensor {name!r}: refers to source {seg.source}, the index has {n_sources}")
    else:
        raise FormatError(f"unknown segment kind {kind}")
    (seg.stripe,) = cur.unpack("I")
    if not 1 <= seg.stripe <= MAX_CHUNK_SYMBOLS:
        raise FormatError(f"segment {seg.name!r} has an invalid stripe size {seg.stripe}")
    seg.hashes = np.frombuffer(cur.take(8 * seg.stripes), "<u8").tolist()  # take() bounds the count
    (n_planes,) = cur.unpack("B")
    expected = [p.bits for p in layout(seg.dtype)] if kind == KIND_TENSOR else [8]
    if seg.ref == REF_COPY:
        expected = []
    seg.planes = [_read_plane(cur, seg.count, payload_end) for _ in range(n_planes)]
    if seg.ref != REF_DELTA and any(p.transform != TRANSFORM_NONE for p in seg.planes):
        raise FormatError(f"segment {seg.name!r}: a plane is a delta but the tensor has no reference")
    word_sub = [p.transform == TRANSFORM_WORD_SUB for p in seg.planes]
    if any(word_sub) and not all(word_sub):
        raise FormatError(f"segment {seg.name!r}: a word difference must cover every plane")
    if [p.bits for p in seg.planes] != expected:
        raise FormatError(f"segment {seg.name!r} has planes {[p.bits for p in seg.planes]}, expected {expected}")
    if any(p.chunk_symbols != seg.stripe for p in seg.planes if p.codec != CODEC_CONST):
        raise FormatError(f"segment {seg.name!r}: its planes are not chunked by its stripe size")
    if kind == KIND_BYTES and seg.planes[0].codec not in (CODEC_RAW, CODEC_ZSTD):
        raise FormatError("verbatim bytes must be stored raw or with zstd")
    if kind == KIND_TENSOR and any(p.codec == CODEC_ZSTD for p in seg.planes):
        raise FormatError(f"segment {seg.name!r}: zstd is not a tensor plane codec")
    return seg


def read_index(f: BinaryIO, file_size: int) -> Index:
    """Read and validate preamble, footer and index of an open archive of ``file_size`` bytes."""
    if file_size < PREAMBLE.size + FOOTER.size:
        f.seek(0)
        check_preamble(f.read(PREAMBLE.size))
        raise FormatError("archive is truncated")
    f.seek(0)
    check_preamble(f.read(PREAMBLE.size))
    f.seek(file_size - FOOTER.size)
    footer = f.read(FOOTER.size)
    offset, length, raw_length, index_crc, footer_crc, magic = FOOTER.unpack(footer)
    if magic != FOOTER_MAGIC:
        raise FormatError("archive is truncated or has trailing bytes (footer not found)")
    if zlib.crc32(footer[:28]) != footer_crc:
        raise IntegrityError("footer checksum mismatch")
    if offset < PREAMBLE.size or offset + length != file_size - FOOTER.size or raw_length > MAX_INDEX_BYTES:
        raise FormatError("footer points outside the archive")
    f.seek(offset)
    body = f.read(length)
    if zlib.crc32(body) != index_crc:
        raise IntegrityError("index checksum mismatch")
    raw = unzstd(body, raw_length, "index")
    cur = _Cursor(raw)
    original_size, sha, n_sources = cur.unpack("Q32sB")
    sources = []
    for _ in range(n_sources):
        (kind,) = cur.unpack("B")
        name = _text(cur, "H")
        if kind not in (SOURCE_BASE, SOURCE_SIBLING):
            raise FormatError(f"unknown source kind {kind}")
        sources.append(Source(kind, name, cur.take(32)))
    (n_segments,) = cur.unpack("I")
    if original_size > max(ALWAYS_ALLOWED_BYTES, MAX_EXPANSION * file_size):
        raise FormatError(f"claims an original size of {original_size} bytes from {file_size}: "
                          "refused as a likely decompression bomb")
    segments, total = [], 0
    for _ in range(n_segments):
        seg = _read_segment(cur, offset, original_size - total, n_sources)
        seg.start = total
        total += seg.length
        segments.append(seg)
    if total != original_size or cur.pos != len(raw):
        raise FormatError("index does not describe the whole original file")
    _check_tiling(segments, offset)
    return Index(original_size, sha, segments, sources)


class PartialArchive:
    """The parts of an archive of ``size`` bytes that ``read_index`` reads, as a file: its preamble
    (``head``) and its last ``len(tail)`` bytes (index and footer). Lets a reader validate and use
    the index of an archive that is still being downloaded."""

    def __init__(self, head: bytes, tail: bytes, size: int) -> None:
        self.head, self.tail, self.size, self.pos = head, tail, size, 0

    def seek(self, pos: int) -> None:
        self.pos = pos

    def read(self, n: int) -> bytes:
        start = self.size - len(self.tail)
        if self.pos + n <= len(self.head):
            data = self.head[self.pos:self.pos + n]
        elif self.pos >= start:
            data = self.tail[self.pos - start:self.pos - start + n]
        else:
            raise FormatError("the index lies outside the part of the archive fetched for it")
        self.pos += len(data)
        return data


def _check_tiling(segments: list[Segment], payload_end: int) -> None:
    """Chunks must cover the payload exactly, without gaps or overlaps: every byte is checksummed."""
    spans = sorted((c.offset, c.size) for s in segments for p in s.planes for c in p.chunks)
    pos = PREAMBLE.size
    for start, size in spans:
        if start != pos:
            raise FormatError("payload chunks overlap or leave unchecked gaps")
        pos += size
    if pos != payload_end:
        raise FormatError("payload chunks do not reach the index")
