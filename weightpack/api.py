"""The Python API: pack, unpack and verify files and model folders (``info`` is in ``describe``).

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
An existing folder given for a file's output receives it inside; see ``paths`` for every rule.
Every output is built under a temporary name, verified, and only then renamed into place. A packed
folder's ``weightpack.json`` lists every file with its size and sha256, and ``unpack`` and
``verify`` check all of them.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from . import manifest
from .atomic import atomic_output, preallocate
from .compile_beside import decoder_ready
from .container import (
    Index,
)
from .errors import CANCEL, WeightpackError, about
from .hub import FETCHERS
from .parallel import side_by_side, thread_count
from .paths import MANIFEST, SAFETENSORS, WPK, destination, existing, walk
from .sources import BaseSet, Dedup, Earlier, copies_to_look_for
from .wpkfile import ArchiveReader, dedup_keys, pack_stream, warm_up_decoder


@contextmanager
def workers(threads: int | None, base: str | os.PathLike | None = None) -> Iterator[tuple[ThreadPoolExecutor,
                                                                                        BaseSet | None]]:
    """The thread pool of one operation, and the base checkpoint opened if one is given."""
    with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:
        if base is None:
            yield pool, None
            return
        with about(Path(base)):
            base_set = BaseSet(Path(base), lambda p: ArchiveReader(p, pool))
        try:
            yield pool, base_set
        finally:
            base_set.close()


class Progress:
    """Progress of one operation: a tqdm bar on stderr when ``enabled`` (tqdm is imported only then:
    short commands stay quick to start), and the place where long work notices a cancellation request."""

    def __init__(self, total: int, enabled: bool, desc: str) -> None:
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="B", unit_scale=True, desc=desc, file=sys.stderr, leave=False)

    def update(self, n: int) -> None:
        if CANCEL.is_set():
            raise KeyboardInterrupt
        if self._bar is not None:
            self._bar.update(n)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()


def _bar(total: int, enabled: bool, desc: str) -> Progress:
    return Progress(total, enabled, desc)


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def copy_checked(src: Path, dst: Path, expected: str | None = None) -> manifest.File:
    """Copy a file; check the copy against the source's sha256 (or ``expected``); return its record."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    before = expected or sha256_file(src)
    shutil.copyfile(src, dst)
    after = sha256_file(dst)
    if after != before:
        raise WeightpackError(f"{src}: differs from its recorded sha256 (copied {after[:16]}..., "
                              f"expected {before[:16]}...)")
    return manifest.File(dst.stat().st_size, after)


def pack_archive(src: Path, tmp: Path, pool: ThreadPoolExecutor, verify: bool, progress: Callable[[int], None],
                 base: BaseSet | None, dedup: Dedup | None = None, archive: str = "") -> Index:
    """Pack one safetensors file into ``tmp`` (a temporary name), decoding it again if ``verify``.

    ``dedup`` and ``archive``: see ``wpkfile.pack_stream``. The one step of packing that a cluster
    task runs (``weightpack.cluster``), so that both give the same bytes.
    """
    with about(src):
        with open(tmp, "wb") as out:
            preallocate(out.fileno(), src.stat().st_size, required=False)  # an archive is all but never larger
            index = pack_stream(src, out, pool, progress, base, dedup, archive)
            out.truncate()  # where the archive ends: the rest of the reservation is given back
        if verify:  # every stripe decoded and checked against the XXH64 of the source's bytes
            decoder_ready()
            with ArchiveReader(tmp, pool, base) as reader:
                reader.restore(None)
    return index


def open_archive(path: Path, pool: ThreadPoolExecutor, base: BaseSet | None = None) -> ArchiveReader:
    with about(path):
        return ArchiveReader(path, pool, base)


def _check_archive(reader: ArchiveReader, expected: manifest.Archive | None) -> None:
    """An archive of a packed folder must be what the folder's manifest says it is."""
    if expected is not None and (expected.original_sha256 != reader.sha256.hex()
                                 or expected.original_size != reader.index.original_size):
        raise WeightpackError(f"does not match the sha256/size that {MANIFEST} records for it")


def restore_archive(reader: ArchiveReader, expected: manifest.Archive | None, tmp: Path,
                    progress: Callable[[int], None], sha256: bool) -> None:
    """Restore an open archive into ``tmp``, after checking it is the one ``expected`` (its manifest entry)."""
    with about(reader.name):
        _check_archive(reader, expected)
        free = shutil.disk_usage(tmp.parent).free
        if reader.index.original_size > free:
            raise WeightpackError(f"restoring needs {reader.index.original_size} bytes, "
                                  f"{tmp.parent} has {free} free")
        with open(tmp, "wb") as out:
            preallocate(out.fileno(), reader.index.original_size, name=tmp.parent)
            reader.restore(out.fileno(), progress, sha256)


@dataclass
class FolderPlan:
    """What packing a model folder writes: an archive per safetensors file, a copy of every other
    file, and ``weightpack.json`` (names relative to the folder, POSIX)."""

    root: Path
    weights: list[Path]
    others: list[Path]

    def name(self, f: Path) -> str:
        return f.relative_to(self.root).as_posix()

    def archive(self, f: Path) -> str:
        return f.relative_to(self.root).with_suffix(WPK).as_posix()

    @property
    def writes(self) -> list[str]:
        return [self.archive(f) for f in self.weights] + [self.name(f) for f in self.others] + [MANIFEST]


def packable(src: Path) -> FolderPlan:
    """The plan of packing a model folder, refusing one that cannot be packed."""
    files = walk(src)
    for f in files:
        if f.suffix == WPK or f.relative_to(src) == Path(MANIFEST):
            raise WeightpackError(f"{f}: the folder holds weightpack files already; is it packed?")
    weights = [f for f in files if f.suffix == SAFETENSORS]
    if not weights:
        raise WeightpackError(f"{src}: no .safetensors files in the folder: nothing to pack "
                              "(weightpack packs safetensors checkpoints only)")
    return FolderPlan(src, weights, [f for f in files if f.suffix != SAFETENSORS])


def pack(src: str | os.PathLike, dst: str | os.PathLike | None = None, *, overwrite: bool = False,
         threads: int | None = None, verify: bool = True, progress: bool = False,
         base: str | os.PathLike | None = None) -> Path:
    """Pack a safetensors file or a model folder; return the destination.

    ``verify`` decodes each new archive before publishing it, every stripe checked against the XXH64 of the
    source's bytes recorded while packing (not its sha256 again: see docs/FORMAT.md, *Integrity*).
    ``threads`` defaults to every core; ``progress`` shows a tqdm bar on stderr. ``base`` (a file or
    folder, plain or packed) codes tensors matching a base tensor by name, dtype and shape as a delta
    to it; unpacking then needs the same base. Tensors identical to one stored earlier (in the same
    file or another shard of the folder) are stored once. ``overwrite`` replaces only an output of
    the same kind (see ``weightpack.paths``).
    """
    src = existing(src)
    dst = destination(src, dst, packing=True)
    if src.is_file():
        with workers(threads, base) as (pool, base_set), _bar(src.stat().st_size, progress, "pack") as bar, \
                atomic_output(dst, overwrite) as tmp:
            pack_archive(src, tmp, pool, verify, bar.update, base_set, Dedup())
        return dst
    plan = packable(src)
    with workers(threads, base) as (pool, base_set), \
            _bar(sum(f.stat().st_size for f in plan.weights + plan.others), progress, "pack") as bar, \
            atomic_output(dst, overwrite, directory=True, writes=plan.writes) as tmp:
        record = manifest.Manifest()
        for f, index in zip(plan.weights, _pack_shards(plan, tmp, pool, verify, bar.update, base_set)):
            record.archives[plan.archive(f)] = manifest.Archive(plan.name(f), index.original_size,
                                                                index.original_sha256.hex())
        for f in plan.others:
            with about(f):
                record.files[plan.name(f)] = copy_checked(f, tmp / plan.name(f))
            bar.update(f.stat().st_size)
        (tmp / MANIFEST).write_bytes(record.dumps())
    return dst


# Local archives packed, restored or verified side by side: a shard's last jobs, index and fsync overlap the
# next one's work, and two files are written (the writes to one file take turns on its inode lock: see
# benchmarks/probe_writes.py) or hashed (one serial sha256 pass a file) at once.
ARCHIVES_AT_ONCE = 2


def _at_once(wanted: int, pool: ThreadPoolExecutor) -> int:
    """Archives handled side by side: never more than the threads asked for (``-j 1``: one after the other)."""
    return min(wanted, thread_count(pool))


def _pack_shards(plan: FolderPlan, tmp: Path, pool: ThreadPoolExecutor, verify: bool,
                 update: Callable[[int], None], base: BaseSet | None) -> list[Index]:
    """Pack a folder's safetensors files into ``tmp``, ``ARCHIVES_AT_ONCE`` at a time; their indexes, in order.

    Why side by side: each archive's sha256 is one serial pass (~1 GB/s a core here), and its writes one
    thread's; two shards at once double both ceilings on many cores. The archives are the bytes a pack
    of one shard after the other writes: each shard is told beforehand which tensors of earlier shards it
    may store as copies (``copies_to_look_for``), and one that may copy from an earlier shard waits for it
    to finish (whose sha256 its index records). Shards are taken in order, so the one waited for has
    always started.
    """
    archives = [plan.archive(f) for f in plan.weights]
    keys = []
    for f in plan.weights:
        with about(f):
            keys.append(dedup_keys(f))
    done: list[Future[Index]] = [Future() for _ in archives]

    def pack_one(i: int, earlier: Earlier, before: list[int], progress: Callable[[int], None]) -> None:
        try:
            dedup = Dedup.after(earlier, {archives[j]: done[j].result().original_sha256 for j in before})
            (tmp / archives[i]).parent.mkdir(parents=True, exist_ok=True)
            done[i].set_result(pack_archive(plan.weights[i], tmp / archives[i], pool, verify, progress, base, dedup,
                                            archives[i]))
        except BaseException as exc:  # a shard waiting for this one fails with it
            done[i].set_exception(exc)
            raise
    side_by_side([functools.partial(pack_one, i, *copies)
                  for i, copies in enumerate(copies_to_look_for(plan.weights, archives, keys))],
                 _at_once(ARCHIVES_AT_ONCE, pool), update)
    return [future.result() for future in done]


def unpack(src: str | os.PathLike, dst: str | os.PathLike | None = None, *, overwrite: bool = False,
           threads: int | None = None, progress: bool = False, base: str | os.PathLike | None = None,
           sha256: bool = False) -> Path:
    """Restore the original file or folder from a .wpk or packed folder; return the destination.

    Every restored byte is checked against the checksum recorded for its stripe at packing (XXH64,
    computed by the decoding threads) before the file is published; in a folder, every other file
    is checked against ``weightpack.json``. ``sha256`` also checks each restored file's sha256 (a
    serial pass: see docs/FORMAT.md, "Integrity"). ``base`` is required for archives packed against
    one, and must be that same base (checked by sha256).
    """
    src = existing(src)
    dst = destination(src, dst, packing=False)
    decoder_ready()
    with workers(threads, base) as (pool, base_set):
        if src.is_file():
            with open_archive(src, pool, base_set) as reader, \
                    _bar(reader.index.original_size, progress, "unpack") as bar, atomic_output(dst, overwrite) as tmp:
                restore_archive(reader, None, tmp, bar.update, sha256)
            return dst
        restore_folder(manifest.read_packed(src), LocalFolder(src), dst, overwrite=overwrite, pool=pool, base=base_set,
                       progress=progress, sha256=sha256)
    return dst


class FolderSource(Protocol):
    """Where the files of a packed folder come from: a local folder, or a Hub repo (``hub.py``)."""

    archives_at_once: int  # archives restored side by side (see ``restore_folder``)

    def file(self, name: str) -> Path:
        """The local path of a file of the folder, once it is complete."""

    def archive(self, name: str, pool: ThreadPoolExecutor,
                base: BaseSet | None) -> AbstractContextManager[ArchiveReader]:
        """An open archive of the folder; reading it may wait for its bytes to arrive."""


class LocalFolder:
    """A packed folder on disk, as a FolderSource."""

    archives_at_once = ARCHIVES_AT_ONCE

    def __init__(self, root: Path) -> None:
        self.root = root

    def file(self, name: str) -> Path:
        return self.root / name

    def archive(self, name: str, pool: ThreadPoolExecutor, base: BaseSet | None) -> ArchiveReader:
        return open_archive(self.root / name, pool, base)


def unpack_from(record: manifest.Manifest, source: FolderSource, dst: str | os.PathLike, *,
                overwrite: bool = False, threads: int | None = None, progress: bool = False,
                base: str | os.PathLike | None = None, sha256: bool = False) -> Path:
    """``unpack`` of a packed folder described by ``record`` whose files come from ``source``."""
    with workers(threads, base) as (pool, base_set):
        return restore_folder(record, source, Path(dst), overwrite=overwrite, pool=pool, base=base_set,
                              progress=progress, sha256=sha256)


def restore_folder(record: manifest.Manifest, source: FolderSource, dst: Path, *, overwrite: bool,
                   pool: ThreadPoolExecutor, base: BaseSet | None, progress: bool, sha256: bool) -> Path:
    """Restore a packed folder, given its manifest and where its files come from.

    Archives are restored ``source.archives_at_once`` at a time, their jobs sharing the pool, each as its
    bytes arrive when ``source`` streams them (a download: one at a time, as they arrive one after the
    other); the other files are fetched side by side meanwhile, and the decoding kernels loaded. Every
    restored file is checked against the manifest; nothing is published unless all are.
    """
    total = sum(a.original_size for a in record.archives.values()) + sum(f.size for f in record.files.values())
    with _bar(total, progress, "unpack") as bar, \
            atomic_output(dst, overwrite, directory=True, writes=record.restored_names()) as tmp, \
            ThreadPoolExecutor(FETCHERS + 1, thread_name_prefix="weightpack-fetch") as fetchers:

        def restore(name: str, entry: manifest.Archive, update: Callable[[int], None]) -> None:
            (tmp / entry.original).parent.mkdir(parents=True, exist_ok=True)
            with source.archive(name, pool, base) as reader:
                restore_archive(reader, entry, tmp / entry.original, update, sha256)

        beside = [fetchers.submit(warm_up_decoder)]  # load the kernels while the first archive starts arriving
        beside += [fetchers.submit(_restore_file, source, name, entry, tmp, bar)
                   for name, entry in record.files.items()]
        side_by_side([functools.partial(restore, name, entry) for name, entry in record.archives.items()],
                     _at_once(source.archives_at_once, pool), bar.update, beside)
    return dst


def _restore_file(source: FolderSource, name: str, entry: manifest.File, tmp: Path, bar: Progress) -> None:
    path = source.file(name)
    with about(path):
        copy_checked(path, tmp / name, entry.sha256)
    bar.update(entry.size)


def verify(src: str | os.PathLike, *, threads: int | None = None, progress: bool = False,
           base: str | os.PathLike | None = None) -> dict[str, int]:
    """Fully decode a .wpk, or check a whole packed folder against its ``weightpack.json`` (every
    archive decoded, every other file's size and sha256); write nothing.

    Return ``{"archives": n, "files": m}``, what was checked.
    """
    src = existing(src)
    record = manifest.Manifest() if src.is_file() else manifest.read_packed(src)
    archives = [src] if src.is_file() else [src / name for name in record.archives]
    with workers(threads, base) as (pool, base_set), \
            _bar(sum(f.stat().st_size for f in archives) + sum(f.size for f in record.files.values()), progress,
                 "verify") as bar:
        check_files(src, record, bar.update)

        def check(path: Path, progress: Callable[[int], None]) -> None:
            verify_archive(path, record.archives.get(path.relative_to(src).as_posix()) if src.is_dir() else None,
                           pool, base_set, progress)
            bar.update(path.stat().st_size)
        # (An archive's bytes are counted once it is checked; its jobs' progress only notices a cancellation.)
        side_by_side([functools.partial(check, f) for f in archives], _at_once(ARCHIVES_AT_ONCE, pool),
                     lambda n: bar.update(0))
    return {"archives": len(archives), "files": len(record.files)}


def check_files(src: Path, record: manifest.Manifest, progress: Callable[[int], None]) -> None:
    """Check every file of a packed folder that is not an archive against its size and sha256 in ``record``."""
    for name, entry in record.files.items():
        with about(src / name):
            record.check_file(name, (src / name).stat().st_size, sha256_file(src / name), src / name)
        progress(entry.size)


def verify_archive(path: Path, expected: manifest.Archive | None, pool: ThreadPoolExecutor,
                   base: BaseSet | None, progress: Callable[[int], None] = lambda n: None) -> None:
    """Decode an archive fully, checking every checksum, its sha256, and that it is the one ``expected``;
    ``progress(n)`` after each job of ``n`` decoded bytes."""
    with about(path), ArchiveReader(path, pool, base) as reader:
        _check_archive(reader, expected)
        reader.restore(None, progress, sha256=True)
