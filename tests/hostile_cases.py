"""Named hostile inputs, each with the refusal it must get. Used by tests/test_hostile.py and by
tools/hostile_table.py, which prints the table in docs/HOSTILE.md from these same cases."""

from __future__ import annotations

import copy
import json
import os
import struct
from collections.abc import Callable
from pathlib import Path

from weightpack.container import CHUNK_OWN, CHUNK_RAW, PREAMBLE, Index

from .fuzzing import parse, rebuild

ArchiveEdit = Callable[[bytes], bytes]


def _edit_index(edit: Callable[[Index, bytearray], None]) -> ArchiveEdit:
    """An archive with its index (and maybe payload) edited, every checksum recomputed to match."""
    def apply(archive: bytes) -> bytes:
        payload, index = parse(archive)
        index = copy.deepcopy(index)
        data = bytearray(payload)
        edit(index, data)
        return rebuild(archive, bytes(data), index)
    apply.behind_valid_checksums = True
    return apply


def _tensor(index: Index, dtype: str = "BF16"):
    return next(s for s in index.segments if s.dtype == dtype)


def _copy(index: Index):
    return next(s for s in index.segments if s.name == "tied")


def _set_version(a: bytes, version: int) -> bytes:
    return a[:8] + struct.pack("<H", version) + a[10:]


def _rans_chunk(index: Index):
    return next(p for p in _tensor(index).planes if p.codec == 2).chunks[0]


def _set(obj: object, **fields: object) -> None:
    for k, v in fields.items():
        setattr(obj, k, v)


def _flip_payload(index: Index, data: bytearray) -> None:
    c = _rans_chunk(index)
    data[c.offset - PREAMBLE.size + c.size // 2] ^= 0x10


def _raw_plane_flip(index: Index, data: bytearray) -> None:
    c = next(p for p in _tensor(index, "F32").planes if p.codec == 0).chunks[0]
    data[c.offset - PREAMBLE.size] ^= 0x01  # valid checksum, valid codec: only the sha256 can tell


def _overlap(index: Index, data: bytearray) -> None:
    chunks = [c for s in index.segments for p in s.planes for c in p.chunks]
    chunks[1].offset = chunks[0].offset


def _bad_table(index: Index, data: bytearray) -> None:
    plane = next(p for p in _tensor(index).planes if p.codec == 2)
    plane.params = plane.params[:-1] + bytes([plane.params[-1] ^ 1])


# (name, how the archive is damaged, a fragment the one-line error must contain)
ARCHIVE_CASES: list[tuple[str, ArchiveEdit, str]] = [
    ("empty file", lambda a: b"", "bad magic"),
    ("random bytes", lambda a: bytes(range(256)) * 4, "bad magic"),
    ("wrong magic", lambda a: b"PK\x03\x04" + a[4:], "bad magic"),
    ("unknown version 4", lambda a: _set_version(a, 4), "unsupported format version 4"),
    ("older version 2", lambda a: _set_version(a, 2), "unsupported format version 2"),
    ("unknown flag set", lambda a: a[:10] + b"\x01\x00" + a[12:], "unsupported format flags"),
    ("truncated in the payload", lambda a: a[: len(a) // 2], "footer not found"),
    ("truncated in the footer", lambda a: a[:-5], "footer not found"),
    ("trailing garbage", lambda a: a + b"\x00" * 7, "footer not found"),
    ("index byte flipped", lambda a: a[:-60] + bytes([a[-60] ^ 0xFF]) + a[-59:], "checksum mismatch"),
    ("footer field flipped", lambda a: a[:-30] + bytes([a[-30] ^ 1]) + a[-29:], "footer checksum mismatch"),
    ("payload byte flipped", lambda a: a[:40] + bytes([a[40] ^ 1]) + a[41:], "checksum mismatch in chunk"),
    ("rANS stream garbled behind a valid checksum", _edit_index(_flip_payload), "rANS chunk"),
    ("raw plane altered behind a valid checksum", _edit_index(_raw_plane_flip), "does not match its recorded checksum"),
    ("stripe checksum altered", _edit_index(lambda i, d: _set(_tensor(i), hashes=[h ^ 1 for h in _tensor(i).hashes])),
     "does not match its recorded checksum"),
    ("stripe size 0", _edit_index(lambda i, d: _set(_tensor(i), stripe=0)), "invalid stripe size"),
    ("stripe size not the chunk size", _edit_index(lambda i, d: _set(_tensor(i), stripe=_tensor(i).stripe // 2,
                                                                      hashes=_tensor(i).hashes * 2)),
     "not chunked by its stripe size"),
    ("frequency table not summing to its total", _edit_index(_bad_table), "does not sum to its total"),
    ("a chunk's own table cut short behind a valid checksum",
     _edit_index(lambda i, d: _set(_rans_chunk(i), mode=CHUNK_OWN, table=b"\x0f\x00")), "frequency table is truncated"),
    ("a coded chunk read as raw behind a valid checksum",
     _edit_index(lambda i, d: _set(_rans_chunk(i), mode=CHUNK_RAW)), "has the wrong size"),
    ("a chunk using a table its plane lacks", _edit_index(
        lambda i, d: _set(next(p for p in _tensor(i).planes if p.codec == 2), params=b"")),
     "uses a table the plane lacks"),
    ("chunks overlapping", _edit_index(_overlap), "overlap or leave unchecked gaps"),
    ("chunk beyond the payload", _edit_index(lambda i, d: _set(_rans_chunk(i), size=2**32 - 1)),
     "outside the payload"),
    ("chunk count lying", _edit_index(lambda i, d: _tensor(i).planes[0].chunks.append(copy.copy(_rans_chunk(i)))),
     "chunks, expected"),
    ("huge segment length", _edit_index(lambda i, d: _set(i.segments[0], length=2**63)),
     "exceed the original file size"),
    ("original size 2^64-1", _edit_index(lambda i, d: _set(i, original_size=2**64 - 1)), "original size"),
    ("shape product overflowing 64 bits", _edit_index(lambda i, d: _set(_tensor(i), shape=(2**40, 2**40))),
     "does not match its length"),
    ("unknown dtype", _edit_index(lambda i, d: _set(_tensor(i), dtype="Q7")), "unsupported dtype"),
    ("unknown codec", _edit_index(lambda i, d: _set(_tensor(i).planes[0], codec=9)), "unknown codec"),
    ("chunk size 0", _edit_index(lambda i, d: _set(_tensor(i).planes[0], chunk_symbols=0)), "invalid chunk size"),
    ("plane widths not the dtype's", _edit_index(lambda i, d: _set(_tensor(i).planes[0], bits=7)), "expected"),
    ("segment missing", _edit_index(lambda i, d: i.segments.pop()), "does not describe the whole"),
    ("copy of a tensor that does not exist", _edit_index(lambda i, d: _set(_copy(i), ref_name="nope")),
     "which is missing or differs"),
    ("copy of itself (a reference loop)", _edit_index(lambda i, d: _set(_copy(i), ref_name="tied")),
     "itself a reference"),
    ("reference to a source the index lacks", _edit_index(lambda i, d: _set(_copy(i), source=7)),
     "refers to source 7"),
    ("constant out of range", _edit_index(lambda i, d: _set(
        next(p for s in i.segments for p in s.planes if p.codec == 1), params=b"\xff\xff")), "invalid constant"),
]


def _safetensors(header: object, data: bytes = b"", raw_header: bytes | None = None) -> bytes:
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def _t(dtype: str = "F32", shape: list | None = None, offsets: list | None = None) -> dict:
    return {"dtype": dtype, "shape": [2] if shape is None else shape,
            "data_offsets": [0, 8] if offsets is None else offsets}


# (name, file contents, a fragment the one-line error must contain)
SAFETENSORS_CASES: list[tuple[str, bytes, str]] = [
    ("empty file", b"", "shorter than its 8-byte header length"),
    ("header length beyond the file", struct.pack("<Q", 10**6) + b"{}", "exceeds the file"),
    ("header length 2^64-1", b"\xff" * 8 + b"{}", "exceeds the file"),
    ("invalid JSON", _safetensors(None, raw_header=b"{not json"), "not valid JSON"),
    ("header not UTF-8", _safetensors(None, raw_header=b'{"\xff": 1}'), "not valid JSON"),
    ("header not an object", _safetensors([1, 2]), "not an object"),
    ("duplicate tensor names", _safetensors(None, b"\x00" * 8,
                                            raw_header=b'{"a":' + json.dumps(_t()).encode() + b',"a":'
                                            + json.dumps(_t()).encode() + b"}"), "duplicate keys"),
    ("unknown dtype", _safetensors({"w": _t("F7")}, b"\x00" * 8), "unsupported dtype"),
    ("offsets outside the data", _safetensors({"w": _t(offsets=[0, 800])}, b"\x00" * 8), "outside the data area"),
    ("offsets reversed", _safetensors({"w": _t(offsets=[8, 0])}, b"\x00" * 8), "outside the data area"),
    ("shape and size disagree", _safetensors({"w": _t(shape=[3])}, b"\x00" * 8), "do not match"),
    ("negative dimension", _safetensors({"w": _t(shape=[-2])}, b"\x00" * 8), "non-negative"),
    ("shape product overflowing", _safetensors({"w": _t(shape=[2**40, 2**40])}, b"\x00" * 8), "do not match"),
    ("tensors overlapping", _safetensors({"a": _t(), "b": _t(offsets=[4, 12])}, b"\x00" * 12), "overlap"),
    ("metadata not strings", _safetensors({"__metadata__": {"k": 1}}), "__metadata__"),
    ("data truncated", _safetensors({"w": _t(offsets=[0, 8])}, b"\x00" * 3), "outside the data area"),
]


# ---------------------------------------------------------------- folders and destinations

def _edit(path, text: bytes):
    path.write_bytes(text)
    return path


# (name, setup, a fragment the one-line error must contain). ``setup(tmp, model, packed)`` gets a small model
# folder and its packed copy in ``tmp`` and returns (the command's arguments, the path the error must name).
# Every case is refused with exit 1 and leaves the user's files as they were.
FOLDER_CASES: list[tuple[str, Callable, str]] = [
    ("pack a file onto itself with -f", (lambda tmp, model, packed: (
        ["pack", str(model / "model.safetensors"), "-o", str(model / "model.safetensors"), "-f"],
        model / "model.safetensors")), "is the source itself"),
    ("pack a folder into a folder inside it", (lambda tmp, model, packed: (
        ["pack", str(model), "-o", str(model / "sub")], model / "sub")), "lies inside the source"),
    ("pack a folder onto a folder containing it", (lambda tmp, model, packed: (
        ["pack", str(model), "-o", str(tmp), "-f"], tmp)), "contains the source"),
    ("pack a folder onto an existing file with -f", (lambda tmp, model, packed: (
        ["pack", str(model), "-o", str(_edit(tmp / "notes.txt", b"mine")), "-f"], tmp / "notes.txt")),
     "is a file, the output is a folder"),
    ("pack a folder onto a folder of other files with -f", (lambda tmp, model, packed: (
        ["pack", str(model), "-o", str(_edit(_mkdir(tmp / "mine") / "thesis.tex", b"years").parent), "-f"],
        tmp / "mine")), "holding other files"),
    ("pack a folder without safetensors", (lambda tmp, model, packed: (
        ["pack", str(_edit(_mkdir(tmp / "bin") / "pytorch_model.bin", b"pickle").parent)], tmp / "bin")),
     "no .safetensors files"),
    ("pack a device", (lambda tmp, model, packed: (["pack", os.devnull], Path(os.devnull))),
     "not a regular file or folder"),
    ("unpack a named pipe", (lambda tmp, model, packed: (
        ["unpack", str(_fifo(tmp / "pipe.wpk")), "-o", str(tmp / "out")], tmp / "pipe.wpk")),
     "not a regular file or folder"),
    ("pack a folder holding a symbolic link loop", (lambda tmp, model, packed: (
        ["pack", str(_symlink(model / "loop", model).parent)], model / "loop")), "symbolic link loop"),
    ("pack a folder holding a dangling link", (lambda tmp, model, packed: (
        ["pack", str(_symlink(model / "gone.json", tmp / "nowhere").parent)], model / "gone.json")),
     "dangling symbolic link"),
    ("verify an unpacked folder", (lambda tmp, model, packed: (["verify", str(model)], model)),
     "not a packed folder"),
    ("unpack an unpacked folder", (lambda tmp, model, packed: (
        ["unpack", str(model), "-o", str(tmp / "out")], model)), "not a packed folder"),
    ("info of an unpacked folder", (lambda tmp, model, packed: (["info", str(model)], model)),
     "not a packed folder"),
    ("verify a packed folder whose config.json was edited", (lambda tmp, model, packed: (
        ["verify", str(_edit(packed / "config.json", b'{"edited": true}').parent)], packed / "config.json")),
     "differs from the file recorded in weightpack.json"),
    ("unpack a packed folder whose vocab.txt was deleted", (lambda tmp, model, packed: (
        ["unpack", str(_unlink(packed / "vocab.txt")), "-o", str(tmp / "out")], packed)), "missing vocab.txt"),
    ("verify a packed folder with a file added", (lambda tmp, model, packed: (
        ["verify", str(_edit(packed / "extra.bin", b"?").parent)], packed)),
     "not listed in weightpack.json: extra.bin"),
]


def _mkdir(path):
    path.mkdir()
    return path


def _fifo(path):
    os.mkfifo(path)
    return path


def _symlink(link, target):
    link.symlink_to(target)
    return link


def _unlink(path):
    path.unlink()
    return path.parent
