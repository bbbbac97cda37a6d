"""Where referenced tensors come from: a base checkpoint (``--base``) and tensors already packed.

A fine-tune is coded as a delta to its base, and a tensor seen before (in the same file or an
earlier shard) as a copy of it. ``BaseSet`` opens a base given as a safetensors file, a .wpk, or a
folder of either, and finds its tensors by name and its files by sha256 (so a base packed or
unpacked, or renamed, still matches). ``Dedup`` remembers what a pack run has stored.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .dtypes import itemsize
from .errors import FormatError, WeightpackError
from .safetensors_layout import TensorEntry, read_layout


def read_exact(fd: int, offset: int, size: int) -> np.ndarray:
    """``size`` bytes at ``offset`` (thread-safe, no shared file position); FormatError if the file is short."""
    buf = np.empty(size, np.uint8)
    _preadv_exact(fd, [memoryview(buf)] if size else [], offset)
    return buf


def read_exact_into(fd: int, pieces: list[tuple[int, np.ndarray]]) -> None:
    """Fill each ``(offset, destination)`` piece from the file, one ``preadv`` per run of pieces that lie
    back to back (a run of stripes' chunks: usually all of them); FormatError if the file is short."""
    run: list[memoryview] = []
    start = end = 0
    for offset, out in pieces:
        if not out.size:
            continue
        if run and offset != end:
            _preadv_exact(fd, run, start)
            run = []
        if not run:
            start = end = offset
        run.append(memoryview(out))
        end += out.size
    _preadv_exact(fd, run, start)


_IOV_MAX = 1024  # buffers one preadv takes at most (Linux's IOV_MAX)


def _preadv_exact(fd: int, views: list[memoryview], offset: int) -> None:
    """Fill ``views`` from the file's bytes at ``offset`` on, resuming after short reads."""
    while views:
        n = os.preadv(fd, views[:_IOV_MAX], offset)
        if n == 0:
            raise FormatError("file is shorter than its header says (truncated?)")
        offset += n
        while views and n >= views[0].nbytes:  # drop what was filled; a short read resumes mid-view
            n -= views[0].nbytes
            views = views[1:]
        if n:
            views[0] = views[0][n:]


class SafetensorsFile:
    """Tensors of a plain safetensors file, read by element range."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tensors = {t.name: t for t in read_layout(path).tensors}
        self._fd = os.open(path, os.O_RDONLY)
        self._sha256: bytes | None = None

    @property
    def sha256(self) -> bytes:
        if self._sha256 is None:
            with open(self.path, "rb") as f:
                self._sha256 = hashlib.file_digest(f, "sha256").digest()
        return self._sha256

    def entry(self, name: str) -> tuple[str, tuple[int, ...]] | None:
        t = self.tensors.get(name)
        return (t.dtype, t.shape) if t else None

    def tensor_bytes(self, name: str, first: int, end: int) -> np.ndarray:
        t = self.tensors[name]
        size = itemsize(t.dtype)
        return read_exact(self._fd, t.start + first * size, (end - first) * size)

    def close(self) -> None:
        os.close(self._fd)


class BaseSet:
    """The base checkpoint: every tensor of a file or folder (safetensors or .wpk) by name and by file sha256."""

    def __init__(self, path: Path, open_archive: Callable[[Path], object]) -> None:
        path = Path(path)
        if not path.exists():
            raise WeightpackError(f"{path}: base checkpoint not found")
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*")
                                                    if p.suffix in (".safetensors", ".wpk") and p.is_file())
        if not files:
            raise WeightpackError(f"{path}: no .safetensors or .wpk files in the base")
        self.files = [open_archive(f) if f.suffix == ".wpk" else SafetensorsFile(f) for f in files]
        self.names = {f: p.relative_to(path).as_posix() if path.is_dir() else p.name
                      for f, p in zip(self.files, files)}
        self._by_name: dict[str, object] = {}
        for f in self.files:
            for name in f.tensors:
                self._by_name.setdefault(name, f)

    def match(self, name: str, dtype: str, shape: tuple[int, ...]):
        """The base file holding a tensor of this name, dtype and shape, or None."""
        f = self._by_name.get(name)
        return f if f is not None and f.entry(name) == (dtype, tuple(shape)) else None

    def by_sha256(self, sha: bytes):
        return next((f for f in self.files if f.sha256 == sha), None)

    def close(self) -> None:
        for f in self.files:
            f.close()


@dataclass
class Stored:
    """A tensor stored whole (or against the base) earlier in this pack run."""

    archive: str  # the archive's path in the packed folder
    file: Path  # the safetensors file it came from, to compare bytes
    tensor: TensorEntry


COMPARE_BYTES = 1 << 26  # compare candidate duplicates 64 MiB at a time


class Dedup:
    """Tensors stored so far in a pack run, found again by content: (size, key), then byte comparison.

    The key is a hash of the tensor's first 64 KiB (``wpkfile.dedup_key``): cheap to compute, and a
    tensor only becomes a copy of another once all their bytes compare equal."""

    def __init__(self) -> None:
        self._seen: dict[tuple[int, int], list[Stored]] = {}
        self.sha256: dict[str, bytes] = {}  # archive -> sha256 of its original, once finished

    def find(self, tensor: TensorEntry, key: int, read: Callable[[int, int], np.ndarray]) -> Stored | None:
        """A stored tensor with the same dtype, shape and bytes; ``read(a, b)`` gives bytes a..b of this one."""
        size = tensor.end - tensor.start
        for s in self._seen.get((size, key), []):
            if s.tensor.dtype != tensor.dtype or s.tensor.shape != tensor.shape:
                continue
            with open(s.file, "rb") as f:
                if all(np.array_equal(read_exact(f.fileno(), s.tensor.start + a, min(COMPARE_BYTES, size - a)),
                                      read(a, min(a + COMPARE_BYTES, size)))
                       for a in range(0, size, COMPARE_BYTES)):
                    return s
        return None

    def add(self, key: int, stored: Stored) -> None:
        self._seen.setdefault((stored.tensor.end - stored.tensor.start, key), []).append(stored)

    @classmethod
    def after(cls, earlier: Earlier, sha256: dict[str, bytes]) -> Dedup:
        """What a shard packed apart from the shards before it starts from: their tensors it may store as
        copies (``copies_to_look_for``), and the sha256 of the originals of the archives they lie in."""
        dedup = cls()
        for archive, path, tensor, key in earlier:
            dedup.add(key, Stored(archive, Path(path), tensor))
        dedup.sha256.update(sha256)
        return dedup


Earlier = list[tuple[str, str, TensorEntry, int]]  # (archive, safetensors file, tensor, dedup key)


def copies_to_look_for(weights: list[Path], archives: list[str],
                       keys: list[list[tuple[TensorEntry, int]]]) -> list[tuple[Earlier, list[int]]]:
    """For each shard of a folder (``keys``: its tensors with their ``wpkfile.dedup_key``): the tensors of
    earlier shards it may store as copies, and which shards those are (it needs their sha256).

    This is what lets shards be packed apart (side by side, or on a cluster's nodes) and still store the
    copies a pack of one shard after the other stores. A tensor is a copy candidate of every earlier
    tensor with its size and key. Given in shard and file order, the first candidate whose bytes match
    is the earliest tensor with those bytes, the one a pack shard after shard stores (``Dedup.find``).
    """
    seen: dict[tuple[int, int], Earlier] = {}
    seen_shard: dict[str, int] = {}
    plans = []
    for i, (path, archive, tensors) in enumerate(zip(weights, archives, keys)):
        buckets = dict.fromkeys((t.end - t.start, key) for t, key in tensors)
        earlier = [entry for bucket in buckets for entry in seen.get(bucket, [])]
        plans.append((earlier, sorted({seen_shard[entry[0]] for entry in earlier})))
        for t, key in tensors:
            seen.setdefault((t.end - t.start, key), []).append((archive, str(path), t, key))
        seen_shard[archive] = i
    return plans
