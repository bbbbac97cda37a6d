"""Tools to damage archives on purpose: shared by the hostile-input tests and tools/fuzz.py.

``rebuild`` re-serialises an edited index with fresh, valid checksums, so that a mutation reaches
the validation and decoding code behind the checksums instead of stopping at the first checksum.
"""

from __future__ import annotations

import copy
import io
import os
import random
from pathlib import Path

import weightpack
from weightpack import minilm
from weightpack.checksum import chunk_checksum
from weightpack.container import PREAMBLE, Index, read_index, write_index
from weightpack.errors import WeightpackError
from weightpack.safetensors_layout import write


def small_checkpoint(path: Path) -> Path:
    """A small real checkpoint: a few MiniLM tensors in BF16 and F32, an I64 one, a constant one and a
    duplicate (every codec, and a reference)."""
    tensors = minilm.load(minilm.model_dir() / minilm.CHECKPOINT)
    picked = {}
    for name, tensor in tensors.items():
        if tensor[0] == "I64" or "layer.0.attention.output" in name:
            picked[name] = tensor
    picked = {n: (minilm.convert(t, "BF16") if "dense.weight" in n else t) for n, t in picked.items()}
    picked["zeros"] = ("F16", (64, 3), bytes(64 * 3 * 2))
    picked["tied"] = picked["encoder.layer.0.attention.output.dense.bias"]  # stored as a copy: a reference
    write(path, picked, {"format": "pt"})
    return path


def parse(archive: bytes) -> tuple[bytes, Index]:
    """Payload bytes and the index of a valid archive."""
    index = read_index(io.BytesIO(archive), len(archive))
    end = max((c.offset + c.size for s in index.segments for p in s.planes for c in p.chunks), default=PREAMBLE.size)
    return archive[PREAMBLE.size:end], index


def rebuild(head: bytes, payload: bytes, index: Index, fix_checksums: bool = True) -> bytes:
    """An archive from a preamble, payload and index; chunk checksums recomputed from the payload if asked."""
    if fix_checksums:
        for seg in index.segments:
            for plane in seg.planes:
                for c in plane.chunks:
                    lo, hi = c.offset - PREAMBLE.size, c.offset - PREAMBLE.size + c.size
                    if 0 <= lo <= hi <= len(payload):
                        c.checksum = chunk_checksum(payload[lo:hi])
    out = io.BytesIO()
    out.write(head[:PREAMBLE.size])
    out.write(payload)
    write_index(out, index, PREAMBLE.size + len(payload))
    return out.getvalue()


def _chunks(index: Index) -> list:
    return [c for s in index.segments for p in s.planes for c in p.chunks]


def mutate(archive: bytes, rng: random.Random) -> bytes:
    """One random damage: raw bit flips, truncation, garbage, or a field or payload edit behind valid checksums."""
    payload, index = parse(archive)
    index = copy.deepcopy(index)
    kind = rng.randrange(9)
    if kind == 0:  # flip a few bits anywhere, checksums left as they are
        data = bytearray(archive)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if kind == 1:
        return archive[:rng.randrange(len(archive))]
    if kind == 2:
        return archive + os.urandom(rng.randint(1, 64))
    if kind in (3, 4):  # damage a payload chunk, with its checksum fixed: the decoder sees the garbage
        data = bytearray(payload)
        chunks = _chunks(index)
        if chunks and payload:
            c = rng.choice(chunks)
            lo = c.offset - PREAMBLE.size
            for _ in range(rng.randint(1, 8)):
                if c.size:
                    data[lo + rng.randrange(c.size)] = rng.randrange(256)
        return rebuild(archive, bytes(data), index)
    seg = rng.choice(index.segments)
    plane = rng.choice(seg.planes) if seg.planes else None
    if kind == 5 and plane is not None:  # lie about a chunk's place or size
        if plane.chunks:
            c = rng.choice(plane.chunks)
            setattr(c, rng.choice(["offset", "size"]), rng.choice([0, 1, 2**32 - 1, c.size + rng.randint(-9, 9),
                                                                  c.offset + rng.randint(-9, 9)]) % 2**32)
    elif kind == 6 and plane is not None:  # garbage codec parameters (frequency table, constant)
        params = bytearray(plane.params or b"\x00\x00")
        params[rng.randrange(len(params))] = rng.randrange(256)
        plane.params = bytes(params) if rng.random() < 0.8 else os.urandom(rng.randint(0, 40))
    elif kind == 7:  # lie about sizes, shapes and counts
        field = rng.choice(["length", "shape", "count_codec", "chunk_symbols", "original_size"])
        if field == "length":
            seg.length = rng.choice([0, seg.length + 1, 2**63, seg.length * 2])
        elif field == "shape" and seg.shape:
            seg.shape = tuple(rng.choice([d, 0, 2**40, 2**63]) for d in seg.shape)
        elif field == "count_codec" and plane is not None:
            plane.codec = rng.randrange(6)
        elif field == "chunk_symbols" and plane is not None:
            plane.chunk_symbols = rng.choice([0, 1, 3, plane.chunk_symbols * 2, 2**32 - 1])
        else:
            index.original_size = rng.choice([0, index.original_size + 1, 2**64 - 1])
    else:  # reorder, drop or duplicate segments
        segs = index.segments
        if rng.random() < 0.5 and len(segs) > 1:
            i, j = rng.randrange(len(segs)), rng.randrange(len(segs))
            segs[i], segs[j] = segs[j], segs[i]
        elif rng.random() < 0.5:
            segs.pop(rng.randrange(len(segs)))
        else:
            segs.append(copy.deepcopy(rng.choice(segs)))
    return rebuild(archive, payload, index)


def check(archive: bytes, original: bytes, workdir: Path) -> str:
    """Unpack a (damaged) archive: it must either restore exactly ``original`` or be refused cleanly.

    Returns "refused" or "restored"; anything else (another exception, a wrong result) raises.
    """
    src, dst = workdir / "fuzz.wpk", workdir / "fuzz.safetensors"
    src.write_bytes(archive)
    try:
        weightpack.unpack(src, dst, overwrite=True, threads=2)
    except WeightpackError as exc:
        assert str(exc).startswith(str(src)), exc
        assert not dst.exists(), "a refused archive left output behind"
        return "refused"
    assert dst.read_bytes() == original, "an archive was accepted but restored different bytes"
    dst.unlink()
    return "restored"
