"""Atomic outputs: build under a temporary name beside the destination, publish by rename when complete.

Whatever happens before publication (an exception, Ctrl-C, a full disk), the temporary is removed
and nothing appears under the final name. Existing outputs are replaced only when asked to.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputExistsError


def _temporary(final: Path) -> Path:
    return final.parent / f".{final.name}.{uuid.uuid4().hex[:12]}.wpk-partial"


def check_free(final: Path, overwrite: bool) -> None:
    """Refuse early if ``final`` exists and may not be replaced."""
    if (final.exists() or final.is_symlink()) and not overwrite:
        raise OutputExistsError(f"{final}: already exists (use -f / overwrite=True to replace it)")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


@contextmanager
def atomic_output(final: Path, overwrite: bool = False, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path (a new empty folder if ``directory``) to fill; publish it as ``final``.

    The caller writes and verifies everything inside the ``with`` block; only a block that completes
    publishes. Files are fsynced before the rename so that a crash cannot publish a hole.
    """
    final = Path(final)
    check_free(final, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(final)
    try:  # from the first byte on disk: an interrupt anywhere below still removes the temporary
        if directory:
            tmp.mkdir()
        yield tmp
        _fsync_tree(tmp)
        with _signals_deferred():
            _publish(tmp, final, overwrite)
    except BaseException:
        _remove(tmp)
        raise


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the renames are done: publishing is one step, never half of one."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    blocked = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _fsync_tree(path: Path) -> None:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _publish(tmp: Path, final: Path, overwrite: bool) -> None:
    if not (final.exists() or final.is_symlink()):
        if tmp.is_dir():
            os.rename(tmp, final)  # fails if a non-empty folder appeared meanwhile
            return
        try:
            os.link(tmp, final)  # never clobbers: fails if the name appeared meanwhile
        except FileExistsError:
            raise OutputExistsError(f"{final}: appeared while writing; not replaced") from None
        except OSError:  # a filesystem without hard links: rename, right after the check above
            os.rename(tmp, final)
        else:
            tmp.unlink()
        return
    check_free(final, overwrite)
    if tmp.is_file() and not final.is_dir():
        os.replace(tmp, final)
        return
    old = _temporary(final)
    os.rename(final, old)
    os.rename(tmp, final)
    _remove(old)
