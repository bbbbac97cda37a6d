"""The Python API: pack, unpack, verify and describe files and model folders.

A file ``X.safetensors`` becomes ``X.wpk``; a folder becomes a folder in which every
``*.safetensors`` is replaced by its ``.wpk`` and every other file (index.json, config, tokenizer,
in subfolders too) is copied as is. Default destinations, when ``dst`` is None:

=======================  ==========================  ============================
operation                source                      destination
=======================  ==========================  ============================
pack a file              ``m.safetensors``           ``m.wpk``
pack a folder            ``model/``                  ``model.wpk/``
unpack a file            ``m.wpk``                   ``m.safetensors``
unpack a folder          ``model.wpk/``              ``model/``
=======================  ==========================  ============================

(A source without the expected suffix gets ``.wpk`` / ``.safetensors`` / ``.unpacked`` appended.)
Every output is built under a temporary name, verified, and only then renamed into place.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from . import manifest
from .atomic import atomic_output, check_free
from .container import (
    CHUNK_MODE_NAMES,
    CODEC_NAMES,
    KIND_TENSOR,
    REF_COPY,
    REF_NONE,
    SELF,
    SOURCE_BASE,
    TRANSFORM_NAMES,
    Index,
    PlaneRecord,
    Segment,
)
from .errors import WeightpackError
from .planes import layout
from .sources import BaseSet, Dedup
from .wpkfile import ArchiveReader, pack_stream

SAFETENSORS, WPK = ".safetensors", ".wpk"


@contextmanager
def _workers(threads: int | None, base: str | os.PathLike | None = None) -> Iterator[tuple[ThreadPoolExecutor,
                                                                                         BaseSet | None]]:
    """The thread pool of one operation, and the base checkpoint opened if one is given."""
    with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:
        if base is None:
            yield pool, None
            return
        with _about(Path(base)):
            base_set = BaseSet(Path(base), lambda p: ArchiveReader(p, pool))
        try:
            yield pool, base_set
        finally:
            base_set.close()


@contextmanager
def _about(path: Path) -> Iterator[None]:
    """Make every failure inside name ``path``: one line a user can act on."""
    try:
        yield
    except WeightpackError as exc:
        msg = str(exc)
        raise type(exc)(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    except OSError as exc:
        name = exc.filename or path
        raise WeightpackError(f"{name}: {exc.strerror or exc}") from None


def _default_dst(src: Path, from_suffix: str, to_suffix: str, folder_suffix: str) -> Path:
    if src.is_dir():
        if from_suffix != WPK:
            return src.with_name(src.name + WPK)
        return src.with_name(src.name[:-len(WPK)] if src.name.endswith(WPK) else src.name + folder_suffix)
    if src.name.endswith(from_suffix):
        return src.with_name(src.name[:-len(from_suffix)] + to_suffix)
    return src.with_name(src.name + to_suffix)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


# Set (by the CLI, on Ctrl-C or SIGTERM) to stop the operation at its next step; it then cleans up.
CANCEL = threading.Event()


class _Bar(tqdm):
    """The progress bar, also the place where long work notices a cancellation request."""

    def update(self, n: float = 1) -> bool | None:
        if CANCEL.is_set():
            raise KeyboardInterrupt
        return super().update(n)


def _bar(total: int, enabled: bool, desc: str) -> tqdm:
    return _Bar(total=total, unit="B", unit_scale=True, desc=desc, disable=not enabled, file=sys.stderr,
                leave=False)


def copy_verified(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    if _sha256(src) != _sha256(dst):
        raise WeightpackError(f"{dst}: copy does not match its source")


def _sha256(path: Path) -> bytes:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").digest()


def _pack_file(src: Path, tmp: Path, pool: ThreadPoolExecutor, verify: bool, bar: tqdm, base: BaseSet | None,
               dedup: Dedup | None = None, archive: str = "") -> Index:
    with _about(src):
        with open(tmp, "wb") as out:
            index = pack_stream(src, out, pool, bar.update, base, dedup, archive)
        if verify:
            with ArchiveReader(tmp, pool, base) as reader:
                reader.restore(None)
    return index


def _check_entry(reader: ArchiveReader, expected: manifest.Entry | None) -> None:
    """An archive of a packed folder must be what the folder's manifest says it is."""
    if expected is not None and (expected.original_sha256 != reader.sha256.hex()
                                 or expected.original_size != reader.index.original_size):
        raise WeightpackError(f"does not match the sha256/size that {manifest.MANIFEST} records for it")


def _unpack_file(src: Path, tmp: Path, pool: ThreadPoolExecutor, bar: tqdm, base: BaseSet | None,
                 expected: manifest.Entry | None = None) -> None:
    with _about(src), ArchiveReader(src, pool, base) as reader:
        _check_entry(reader, expected)
        free = shutil.disk_usage(tmp.parent).free
        if reader.index.original_size > free:
            raise WeightpackError(f"restoring needs {reader.index.original_size} bytes, "
                                  f"{tmp.parent} has {free} free")
        with open(tmp, "wb") as out:
            reader.restore(out, bar.update)


def pack(src: str | os.PathLike, dst: str | os.PathLike | None = None, *, overwrite: bool = False,
         threads: int | None = None, verify: bool = True, progress: bool = False,
         base: str | os.PathLike | None = None) -> Path:
    """Pack a safetensors file or a model folder; return the destination.

    ``verify`` decodes each new archive and checks its sha256 against the source before publishing it.
    ``threads`` defaults to every core; ``progress`` shows a tqdm bar on stderr. ``base`` (a file or
    folder, plain or packed) codes tensors matching a base tensor by name, dtype and shape as a delta
    to it; unpacking then needs the same base. Tensors identical to one stored earlier (in the same
    file or another shard of the folder) are stored once.
    """
    src = Path(src)
    if not src.exists():
        raise WeightpackError(f"{src}: no such file or folder")
    dst = Path(dst) if dst is not None else _default_dst(src, SAFETENSORS, WPK, WPK)
    check_free(dst, overwrite)
    with _workers(threads, base) as (pool, base_set):
        if src.is_file():
            with _bar(src.stat().st_size, progress, "pack") as bar, atomic_output(dst, overwrite) as tmp:
                _pack_file(src, tmp, pool, verify, bar, base_set, Dedup())
            return dst
        files = _files(src)
        for f in files:
            if f.suffix == WPK or f.relative_to(src) == Path(manifest.MANIFEST):
                raise WeightpackError(f"{f}: the folder holds weightpack files already; is it packed?")
        entries, dedup = {}, Dedup()
        with _bar(sum(f.stat().st_size for f in files), progress, "pack") as bar, \
                atomic_output(dst, overwrite, directory=True) as tmp:
            for f in files:
                rel = f.relative_to(src)
                if f.suffix == SAFETENSORS:
                    out = tmp / rel.with_suffix(WPK)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    archive = rel.with_suffix(WPK).as_posix()
                    index = _pack_file(f, out, pool, verify, bar, base_set, dedup, archive)
                    entries[archive] = manifest.Entry(rel.as_posix(), index.original_size,
                                                      index.original_sha256.hex())
                else:
                    with _about(f):
                        copy_verified(f, tmp / rel)
                    bar.update(f.stat().st_size)
            (tmp / manifest.MANIFEST).write_bytes(manifest.dumps(entries))
    return dst


def unpack(src: str | os.PathLike, dst: str | os.PathLike | None = None, *, overwrite: bool = False,
           threads: int | None = None, progress: bool = False, base: str | os.PathLike | None = None) -> Path:
    """Restore the original file or folder from a .wpk or packed folder; return the destination.

    Each restored file's sha256 is checked against the one recorded at packing before it is published.
    ``base`` is required for archives packed against one, and must be that same base (checked by sha256).
    """
    src = Path(src)
    if not src.exists():
        raise WeightpackError(f"{src}: no such file or folder")
    dst = Path(dst) if dst is not None else _default_dst(src, WPK, SAFETENSORS, ".unpacked")
    check_free(dst, overwrite)
    with _workers(threads, base) as (pool, base_set):
        if src.is_file():
            with _bar(src.stat().st_size, progress, "unpack") as bar, atomic_output(dst, overwrite) as tmp:
                _unpack_file(src, tmp, pool, bar, base_set)
            return dst
        files = _files(src)
        entries = _manifest_entries(src, files)
        names = {f.relative_to(src) for f in files}
        total = sum(e.original_size for e in entries.values()) if entries else 0
        with _bar(total, progress, "unpack") as bar, atomic_output(dst, overwrite, directory=True) as tmp:
            for f in files:
                rel = f.relative_to(src)
                if rel == Path(manifest.MANIFEST) and entries is not None:
                    continue
                if f.suffix != WPK:
                    with _about(f):
                        copy_verified(f, tmp / rel)
                    continue
                entry = entries[rel.as_posix()] if entries is not None else None
                original = Path(entry.original) if entry else rel.with_suffix(SAFETENSORS)
                if original in names:
                    raise WeightpackError(f"{f}: both it and {original} exist")
                (tmp / original).parent.mkdir(parents=True, exist_ok=True)
                _unpack_file(f, tmp / original, pool, bar, base_set, entry)
    return dst


def _manifest_entries(folder: Path, files: list[Path]) -> dict[str, manifest.Entry] | None:
    """The packed folder's manifest, checked to list exactly the archives the folder holds."""
    entries = manifest.read(folder)
    archives = {f.relative_to(folder).as_posix() for f in files if f.suffix == WPK}
    if entries is not None and set(entries) != archives:
        raise WeightpackError(f"{folder / manifest.MANIFEST}: lists {sorted(entries)} but the folder holds "
                              f"{sorted(archives)}")
    return entries


def verify(src: str | os.PathLike, *, threads: int | None = None, progress: bool = False,
           base: str | os.PathLike | None = None) -> int:
    """Fully decode a .wpk (or every .wpk of a packed folder, checked against its manifest) and check
    all checksums and sha256s; write nothing. Return the number of archives checked."""
    src = Path(src)
    if not src.exists():
        raise WeightpackError(f"{src}: no such file or folder")
    entries = None
    if src.is_file():
        files = [src]
    else:
        everything = _files(src)
        files, entries = [f for f in everything if f.suffix == WPK], _manifest_entries(src, everything)
    with _workers(threads, base) as (pool, base_set), \
            _bar(sum(f.stat().st_size for f in files), progress, "verify") as bar:
        for f in files:
            with _about(f), ArchiveReader(f, pool, base_set) as reader:
                _check_entry(reader, entries.get(f.relative_to(src).as_posix()) if entries else None)
                reader.restore(None)
            bar.update(f.stat().st_size)
    return len(files)


def _describe_reference(seg: Segment, index: Index) -> str:
    if seg.ref == REF_NONE:
        return ""
    where = "this file" if seg.source == SELF else index.sources[seg.source].name
    kind = "copy of" if seg.ref == REF_COPY else "delta to"
    origin = "base " if seg.source != SELF and index.sources[seg.source].kind == SOURCE_BASE else ""
    return f"{kind} {origin}{seg.ref_name!r} in {where}"


def info(src: str | os.PathLike) -> dict:
    """Describe a .wpk from its index alone: per tensor and plane, the codec, bits achieved, and the bound.

    The bound is the order-0 empirical entropy of each plane of each tensor: what a static per-tensor
    order-0 coder cannot beat. ``bits`` are stored bits per symbol, tables and chunk states included.
    """
    src = Path(src)
    with _about(src), _workers(1) as (pool, _), ArchiveReader(src, pool) as reader:
        index = reader.index
        file_size = src.stat().st_size
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


def _describe_tensors(index: Index) -> list[dict]:
    tensors = []
    for seg in index.segments:
        if seg.kind != KIND_TENSOR:
            continue
        plane_rows = [{
            "plane": spec.name, "codec": CODEC_NAMES[p.codec] + (f"({TRANSFORM_NAMES[p.transform]})"
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
