"""Read the layout of a safetensors file exactly as written, validating everything before trusting it.

weightpack restores files byte for byte, so it does not re-serialise the header: it records where
each tensor's bytes lie and keeps every other byte (header length, header JSON with its padding, any
gap between tensors, trailing bytes) verbatim. ``write``
produces checkpoints in the layout the ``safetensors`` library writes (used by the demo and tests),
for any dtype, BF16 included, without torch.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from .dtypes import DTYPES, itemsize
from .errors import FormatError

MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors file; ``start``/``end`` are absolute offsets in the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class Layout:
    """Where things are in a safetensors file: header span, tensors in file order, metadata."""

    file_size: int
    data_start: int
    tensors: list[TensorEntry]
    metadata: dict[str, str] | None


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise FormatError("header JSON has duplicate keys")
    return dict(pairs)


def _entry(name: str, info: object, data_size: int, data_start: int) -> TensorEntry:
    if not isinstance(info, dict) or set(info) - {"dtype", "shape", "data_offsets"}:
        raise FormatError(f"tensor {name!r}: malformed header entry")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in DTYPES:
        raise FormatError(f"tensor {name!r}: unsupported dtype {dtype!r}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise FormatError(f"tensor {name!r}: shape must be a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(type(o) is int for o in offsets) or not 0 <= offsets[0] <= offsets[1] <= data_size):
        raise FormatError(f"tensor {name!r}: data_offsets outside the data area")
    if math.prod(shape) * itemsize(dtype) != offsets[1] - offsets[0]:
        nbytes = offsets[1] - offsets[0]
        raise FormatError(f"tensor {name!r}: shape {shape} and {dtype} do not match its {nbytes} bytes")
    return TensorEntry(name, dtype, tuple(shape), data_start + offsets[0], data_start + offsets[1])


def parse_header(prefix: bytes, file_size: int) -> Layout:
    """Validate the header at the start of a safetensors file of ``file_size`` bytes."""
    if file_size < 8 or len(prefix) < 8:
        raise FormatError("not a safetensors file: shorter than its 8-byte header length")
    (header_len,) = struct.unpack("<Q", prefix[:8])
    if header_len > MAX_HEADER_BYTES or 8 + header_len > file_size:
        raise FormatError(f"not a safetensors file: header length {header_len} exceeds the file")
    if len(prefix) < 8 + header_len:
        raise FormatError("header is truncated")
    try:
        header = json.loads(prefix[8:8 + header_len].decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise FormatError(f"header is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise FormatError("header JSON is not an object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict)
                                     and all(isinstance(v, str) for v in metadata.values())):
        raise FormatError("__metadata__ must map strings to strings")
    data_start = 8 + header_len
    tensors = sorted((_entry(name, info, file_size - data_start, data_start) for name, info in header.items()),
                     key=lambda t: (t.start, t.end))
    for before, after in itertools.pairwise(tensors):
        if after.start < before.end:
            raise FormatError(f"tensors {before.name!r} and {after.name!r} overlap")
    return Layout(file_size, data_start, tensors, metadata)


def read_layout(path: Path) -> Layout:
    """Parse and validate the header of the safetensors file at ``path``."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        prefix = f.read(8)
        if len(prefix) == 8:
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len <= MAX_HEADER_BYTES:
                prefix += f.read(header_len)
        return parse_header(prefix, size)


def write(path: Path, tensors: dict[str, tuple[str, tuple[int, ...], bytes]],
          metadata: dict[str, str] | None = None) -> None:
    """Write ``{name: (dtype, shape, little-endian bytes)}`` the way the safetensors library lays it out:
    tensors ordered by decreasing alignment then name, header padded with spaces to 8 bytes."""
    order = sorted(tensors, key=lambda n: (-itemsize(tensors[n][0]), n))
    header: dict[str, object] = {"__metadata__": metadata} if metadata is not None else {}
    offset = 0
    for name in order:
        dtype, shape, data = tensors[name]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for name in order:
            f.write(tensors[name][2])

