"""``weightpack.json``: the manifest of a packed folder, which tells readers (and the Hub) what it holds.

For each archive: the original file name, size and sha256. Written deterministically (sorted keys,
no timestamps) so that re-packing an unchanged model gives an identical file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .container import VERSION
from .errors import FormatError

MANIFEST = "weightpack.json"


@dataclass(frozen=True)
class Entry:
    original: str
    original_size: int
    original_sha256: str


def dumps(entries: dict[str, Entry]) -> bytes:
    """The manifest for ``{archive path relative to the folder: Entry}``."""
    doc = {"format": "weightpack", "format_version": VERSION,
           "files": {path: asdict(e) for path, e in sorted(entries.items())}}
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def read(folder: Path) -> dict[str, Entry] | None:
    """The manifest of a packed folder, validated; None if the folder has none."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_bytes())
        if doc.get("format") != "weightpack":
            raise ValueError("not a weightpack manifest")
        if doc.get("format_version") != VERSION:
            raise ValueError(f"unsupported format version {doc.get('format_version')}")
        entries = {p: Entry(**e) for p, e in doc["files"].items()}
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise FormatError(f"{path}: invalid manifest ({exc})") from None
    for p, e in entries.items():
        if Path(e.original).is_absolute() or ".." in Path(e.original).parts or ".." in Path(p).parts:
            raise FormatError(f"{path}: manifest names a file outside the folder: {p} -> {e.original}")
    return entries
