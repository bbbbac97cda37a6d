"""``weightpack info``: what an archive or packed folder holds, read from the indexes alone.

Nothing here decodes, so describing an archive loads none of the coding kernels (nor numba).
"""

from __future__ import annotations

import os
from pathlib import Path

from . import manifest
from .container import (
    CHUNK_MODE_NAMES,
    CHUNK_RAW,
    CODEC_NAMES,
    CODEC_RANS,
    CODEC_RAW,
    KIND_TENSOR,
    REF_COPY,
    REF_NONE,
    SELF,
    SOURCE_BASE,
    TRANSFORM_NAMES,
    Index,
    PlaneRecord,
    Segment,
    read_index,
)
from .dtypes import layout
from .errors import about
from .paths import MANIFEST, existing


def info(src: str | os.PathLike) -> dict:
    """Describe a .wpk, or each archive of a packed folder then its totals, from the indexes alone.

    Per tensor and plane: the codec, bits achieved, and the plane bound: the order-0 empirical
    entropy of each plane of each tensor, what a static per-tensor coder of weightpack's planes
    cannot beat. ``bits`` are stored bits per symbol, tables and chunk states included.
    """
    src = existing(src)
    if src.is_file():
        return _info_file(src)
    record = manifest.read_packed(src)
    archives = [_info_file(src / name) for name in record.archives]
    kept = sum(f.size for f in record.files.values())
    original = sum(a["original_bytes"] for a in archives) + kept
    packed = sum(a["packed_bytes"] for a in archives) + kept + (src / MANIFEST).stat().st_size
    return {"folder": str(src), "archives": archives, "files": len(record.files), "original_bytes": original,
            "packed_bytes": packed, "ratio": packed / original if original else 0.0}


def _info_file(src: Path) -> dict:
    with about(src), open(src, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        index = read_index(f, file_size)
    tensors = _describe_tensors(index)
    tensor_bytes = sum(t["original_bytes"] for t in tensors)
    return {
        "file": str(src), "original_bytes": index.original_size, "packed_bytes": file_size,
        "ratio": file_size / index.original_size if index.original_size else 0.0,
        "tensor_bytes": tensor_bytes,
        "tensor_packed_bytes": sum(t["packed_bytes"] for t in tensors),
        "tensor_bound_bytes": sum(t["bound_bytes"] for t in tensors),
        "sha256": index.original_sha256.hex(), "tensors": tensors,
        "references": [{"kind": "base" if s.kind == SOURCE_BASE else "sibling", "name": s.name,
                        "sha256": s.sha256.hex()} for s in index.sources],
    }


def _chunk_modes(plane: PlaneRecord) -> dict[str, int]:
    """How many chunks of a plane use its table, a table of their own, or are stored raw."""
    return {name: sum(c.mode == mode for c in plane.chunks) for mode, name in CHUNK_MODE_NAMES.items()}


def _codec_name(plane: PlaneRecord) -> str:
    """The codec a plane really uses: a rANS plane whose chunks are all stored raw is raw."""
    if plane.codec == CODEC_RANS and plane.chunks and all(c.mode == CHUNK_RAW for c in plane.chunks):
        return CODEC_NAMES[CODEC_RAW]
    return CODEC_NAMES[plane.codec]


def _describe_tensors(index: Index) -> list[dict]:
    tensors = []
    for seg in index.segments:
        if seg.kind != KIND_TENSOR:
            continue
        plane_rows = [{
            "plane": spec.name, "codec": _codec_name(p) + (f"({TRANSFORM_NAMES[p.transform]})"
                                                          if p.transform else ""),
            "bits": 8 * p.stored_bytes / seg.count if seg.count else 0.0,
            "bound_bits": p.bound_bits / seg.count if seg.count else 0.0,
            "chunks": _chunk_modes(p),
        } for spec, p in zip(layout(seg.dtype), seg.planes)]
        tensors.append({
            "name": seg.name, "dtype": seg.dtype, "shape": list(seg.shape), "original_bytes": seg.length,
            "packed_bytes": sum(p.stored_bytes for p in seg.planes),
            "bound_bytes": sum(p.bound_bits for p in seg.planes) / 8, "planes": plane_rows,
            "reference": _describe_reference(seg, index),
        })
    return tensors


def _describe_reference(seg: Segment, index: Index) -> str:
    if seg.ref == REF_NONE:
        return ""
    where = "this file" if seg.source == SELF else index.sources[seg.source].name
    kind = "copy of" if seg.ref == REF_COPY else "delta to"
    origin = "base " if seg.source != SELF and index.sources[seg.source].kind == SOURCE_BASE else ""
    return f"{kind} {origin}{seg.ref_name!r} in {where}"
