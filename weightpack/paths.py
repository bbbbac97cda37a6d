"""Where outputs go, and what a folder holds: the rules every command follows before writing a byte.

Destinations follow ``cp``/``tar``/``zstd`` conventions, so that nothing a user owns is lost:

- an existing folder given as the destination of a one-file operation receives the output inside
  it, under the default name (``pack m.safetensors -o dir/`` writes ``dir/m.wpk``); a trailing
  ``/`` means a folder, created if needed;
- ``overwrite`` (``-f``) replaces only an output of the same kind: a file by a file, a folder by a
  folder, and a folder only if it is empty, a packed folder (it holds ``weightpack.json``), or holds
  nothing but files the operation itself writes;
- a destination that is the source, lies inside it, or contains it is refused.

Folders are walked following symbolic links (a Hugging Face cache snapshot is made of them), with
loops and dangling links refused rather than skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from .errors import OutputExistsError, WeightpackError

SAFETENSORS, WPK = ".safetensors", ".wpk"
MANIFEST = "weightpack.json"


def default_destination(src: Path, packing: bool) -> Path:
    """``m.safetensors`` <-> ``m.wpk`` for files, ``model/`` <-> ``model.wpk/`` for folders.

    A source without the expected suffix gets ``.wpk``, ``.safetensors`` or ``.unpacked`` appended.
    """
    if packing:
        if src.is_dir() or not src.name.endswith(SAFETENSORS):
            return src.with_name(src.name + WPK)
        return src.with_name(src.name[:-len(SAFETENSORS)] + WPK)
    if src.name.endswith(WPK) and src.name != WPK:
        return src.with_name(src.name[:-len(WPK)] + ("" if src.is_dir() else SAFETENSORS))
    return src.with_name(src.name + (".unpacked" if src.is_dir() else SAFETENSORS))


def _means_folder(dst: str | os.PathLike) -> bool:
    text = os.fspath(dst)
    return text.endswith(os.sep) or (os.altsep is not None and text.endswith(os.altsep))


def destination(src: Path, dst: str | os.PathLike | None, packing: bool) -> Path:
    """The path an operation on ``src`` writes, given the user's ``dst`` (None: the default)."""
    default = default_destination(src, packing)
    if dst is None:
        final = default
    elif src.is_file() and (Path(dst).is_dir() or _means_folder(dst)):
        final = Path(dst) / default.name
    else:
        final = Path(dst)
    _refuse_overlap(src, final)
    return final


def destination_in(src: Path, folder: Path, packing: bool) -> Path:
    """Where ``src``'s output goes when one command handles several sources into ``folder``: its default name."""
    final = folder / default_destination(src, packing).name
    _refuse_overlap(src, final)
    return final


def _refuse_overlap(src: Path, final: Path) -> None:
    source, target = src.resolve(), final.resolve()
    if target == source:
        raise WeightpackError(f"{final}: the destination is the source itself")
    if source in target.parents:
        raise WeightpackError(f"{final}: the destination lies inside the source {src}")
    if target in source.parents:
        raise WeightpackError(f"{final}: the destination contains the source {src}")


def check_destination(final: Path, overwrite: bool, folder: bool, writes: Iterable[str] = ()) -> None:
    """Refuse early unless ``final`` is free, or may be replaced: see the module's rules.

    ``writes`` are the paths (relative, POSIX) a folder operation writes; a folder holding only
    those is taken as an earlier output of the same operation.
    """
    if not (final.exists() or final.is_symlink()):
        return
    if not overwrite:
        raise OutputExistsError(f"{final}: already exists (use -f / overwrite=True to replace it)")
    if final.is_symlink():
        raise OutputExistsError(f"{final}: is a symbolic link; not replaced (remove it first)")
    if folder and not final.is_dir():
        raise OutputExistsError(f"{final}: is a file, the output is a folder; not replaced")
    if not folder and final.is_dir():
        raise OutputExistsError(f"{final}: is a folder, the output is a file; not replaced")
    if folder and not _made_by_us(final, set(writes)):
        raise OutputExistsError(f"{final}: is a folder holding other files; -f replaces only an empty folder, "
                                "a packed folder, or an earlier output of this command")


def _made_by_us(folder: Path, writes: set[str]) -> bool:
    if (folder / MANIFEST).is_file():
        return True
    return all(p.relative_to(folder).as_posix() in writes for p in walk(folder))


def tree_size(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def walk(folder: Path) -> list[Path]:
    """Every file under ``folder``, sorted, following symbolic links to files and folders.

    A link loop or a dangling link is a WeightpackError: silently dropping a file of a model is
    how a restored model ends up incomplete.
    """
    files = []
    for root, dirs, names in os.walk(folder, followlinks=True):
        here = Path(root)
        ancestors = {os.path.realpath(folder / up) for up in here.relative_to(folder).parents}
        if here != folder and os.path.realpath(here) in ancestors:
            raise WeightpackError(f"{here}: symbolic link loop (leads back to a folder it is in)")
        dirs.sort()
        for name in names:
            path = here / name
            if not path.is_file():
                what = "dangling symbolic link" if path.is_symlink() else "not a regular file"
                raise WeightpackError(f"{path}: {what}")
            files.append(path)
    return sorted(files)


def existing(src: str | os.PathLike) -> Path:
    """``src`` as a Path, refused with one clear line unless it exists."""
    src = Path(src)
    if not (src.exists() or src.is_symlink()):
        raise WeightpackError(f"{src}: no such file or folder")
    if not src.exists():
        raise WeightpackError(f"{src}: dangling symbolic link")
    if not (src.is_file() or src.is_dir()):  # a device, a named pipe, a socket: no checkpoint, and reading may block
        raise WeightpackError(f"{src}: not a regular file or folder")
    return src
