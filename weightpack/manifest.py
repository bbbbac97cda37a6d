"""``weightpack.json``: the manifest of a packed folder, which says what every file of it must be.

For each archive: the original file's name, size and sha256 (the sha256 is what the Hub's LFS
pointers use). For every other file (config, tokenizer, index.json, ...): its size and sha256. So a
packed folder is checked whole: a file missing, added or changed is named, not only damaged
weights. Written deterministically (sorted keys, no timestamps) so that re-packing an unchanged
model gives an identical file. Its own version, ``format_version``, is checked on reading.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import FormatError, WeightpackError
from .paths import MANIFEST, walk

VERSION = 2
# The Hub adds this to every repo it creates: a pulled packed folder may hold it unlisted (it is not restored).
HUB_BOOKKEEPING = ".gitattributes"


@dataclass(frozen=True)
class Archive:
    """An archive of the folder: what it restores."""

    original: str
    original_size: int
    original_sha256: str


@dataclass(frozen=True)
class File:
    """A file of the folder kept as is."""

    size: int
    sha256: str


@dataclass
class Manifest:
    archives: dict[str, Archive] = field(default_factory=dict)  # archive path (relative, POSIX) -> original
    files: dict[str, File] = field(default_factory=dict)  # every other file, by path

    def dumps(self) -> bytes:
        doc = {"format": "weightpack", "format_version": VERSION,
               "archives": {p: asdict(a) for p, a in sorted(self.archives.items())},
               "files": {p: asdict(f) for p, f in sorted(self.files.items())}}
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()

    def restored_names(self) -> list[str]:
        """The paths ``unpack`` writes: each archive's original, and every other file."""
        return sorted([a.original for a in self.archives.values()] + list(self.files))

    def check_listing(self, folder: Path, present: list[str]) -> None:
        """Refuse a folder holding other files than the manifest lists, naming what is missing or extra."""
        listed = set(self.archives) | set(self.files) | {MANIFEST}
        missing, extra = sorted(listed - set(present)), sorted(set(present) - listed - {HUB_BOOKKEEPING})
        if missing or extra:
            parts = ([f"missing {', '.join(missing)}"] if missing else []) + \
                    ([f"not listed in {MANIFEST}: {', '.join(extra)}"] if extra else [])
            raise WeightpackError(f"{folder}: {'; '.join(parts)}")

    def check_file(self, rel: str, size: int, sha256: str, path: Path) -> None:
        """Refuse a kept file whose size or sha256 differs from what was recorded at packing."""
        expected = self.files[rel]
        if size != expected.size or sha256 != expected.sha256:
            raise WeightpackError(f"{path}: differs from the file recorded in {MANIFEST} "
                                  f"(size {size}, expected {expected.size}; sha256 {sha256[:16]}..., "
                                  f"expected {expected.sha256[:16]}...)")


def read(folder: Path) -> Manifest:
    """The validated manifest of a packed folder; WeightpackError if the folder is not one."""
    path = folder / MANIFEST
    if not folder.is_dir():
        raise WeightpackError(f"{folder}: no such folder")
    if not path.is_file():
        raise WeightpackError(f"{folder}: not a packed folder (it has no {MANIFEST})")
    try:
        doc = json.loads(path.read_bytes())
        if doc.get("format") != "weightpack":
            raise ValueError("not a weightpack manifest")
        if doc.get("format_version") != VERSION:
            raise ValueError(f"unsupported format version {doc.get('format_version')} (this weightpack reads "
                             f"{VERSION})")
        result = Manifest({p: Archive(**a) for p, a in doc["archives"].items()},
                          {p: File(**f) for p, f in doc["files"].items()})
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise FormatError(f"{path}: invalid manifest ({exc})") from None
    names = [*result.archives, *result.files, *result.restored_names()]
    for name in names:
        p = Path(name)
        if p.is_absolute() or ".." in p.parts or not p.parts or name == MANIFEST:
            raise FormatError(f"{path}: manifest names a file outside the folder or reserved: {name!r}")
    restored = result.restored_names()
    if len(set(restored)) != len(restored):
        raise FormatError(f"{path}: manifest restores two files under one name")
    return result


def read_packed(folder: Path, archives_elsewhere: bool = False) -> Manifest:
    """The manifest of a packed folder, checked to list exactly the files the folder holds.

    ``archives_elsewhere``: the folder holds every file but the archives, which come from elsewhere
    (a Hub repo's, downloading as they are decoded)."""
    record = read(folder)
    present = [f.relative_to(folder).as_posix() for f in walk(folder)]
    record.check_listing(folder, present + (list(record.archives) if archives_elsewhere else []))
    return record
