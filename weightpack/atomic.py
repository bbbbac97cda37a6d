"""Atomic outputs: build under a temporary name beside the destination, publish by rename when complete.

Whatever happens before publication (an exception, Ctrl-C, a full disk), the temporary is removed
and nothing appears under the final name. Existing outputs are replaced only when asked to, and only
by an output of the same kind (see ``paths.check_destination``). A temporary left by a process that
was killed outright (SIGKILL, power loss) is named after its writer's host and process id, and the
next run writing the same destination removes it once that process is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputExistsError, WeightpackError
from .paths import check_destination

PARTIAL = ".wpk-partial"


def _linux_call(name: str, *argtypes: type) -> object:
    """A libc function of Linux's (``sync_file_range``, ``fallocate``), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        func = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    func.argtypes = list(argtypes)
    return func


_SYNC_FILE_RANGE = _linux_call("sync_file_range", ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
SYNC_FILE_RANGE_WRITE = 2  # start writing the range's dirty pages back, without waiting
_FALLOCATE = _linux_call("fallocate", ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_FSTATFS = _linux_call("fstatfs", ctypes.c_int, ctypes.c_void_p)
# File systems in memory (``statfs``'s f_type): tmpfs (/dev/shm, /run, many containers' /tmp), ramfs, hugetlbfs.
_IN_MEMORY = {0x01021994, 0x858458F6, 0x958458F6}


def _in_memory(fd: int) -> bool:
    """Whether the file open as ``fd`` lies in memory, where reserving is writing (see ``preallocate``)."""
    if _FSTATFS is None:
        return False
    buf = ctypes.create_string_buffer(256)  # struct statfs (120 bytes on 64-bit Linux), f_type first
    return _FSTATFS(fd, buf) == 0 and ctypes.c_long.from_buffer(buf).value in _IN_MEMORY


def preallocate(fd: int, size: int, *, required: bool = True, name: str | os.PathLike | None = None) -> None:
    """Reserve ``size`` bytes of disk for a file just created, about to be written (Linux, where the file
    system can).

    Writing into reserved blocks costs the kernel much less than allocating them as the writes come,
    most where threads write one file side by side (ext4 allocates under the file's lock): unpacking
    1.18 GiB took 0.8-0.9 s of system time instead of 1.8-2.2 s, and 1 GB written by one thread
    0.33-0.35 s instead of 0.38-0.46. A full disk is then found before any work is done. Unless
    ``required``: ``size`` is an upper bound of what will be written, reserved only if the disk has
    room for it, and a failure to reserve it is no error. A failed reservation is given back (ext4
    keeps what it could reserve). Not glibc's ``posix_fallocate``, which writes zeros where the file
    system cannot reserve: a no-op there. ``name``: the file errors name.

    In memory (tmpfs) nothing is reserved, only the room checked: there, reserving allocates and zeroes
    every page at once, a serial pass before any work starts that the writes then make anyway, beside
    the work (MiniLM F32 on /dev/shm: ~40 ms, the main thread alone, at the start of a 150-180 ms unpack).
    """
    if _FALLOCATE is None or size <= 0:
        return
    in_memory = _in_memory(fd)
    if in_memory or not required:
        disk = os.fstatvfs(fd)
        if disk.f_bavail * disk.f_frsize < size:
            if required:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), name)
            return
        if in_memory:
            return
    if _FALLOCATE(fd, 0, 0, size) != 0:
        err = ctypes.get_errno()
        with contextlib.suppress(OSError):  # e.g. a descriptor that cannot be written at all
            os.ftruncate(fd, 0)
        if required and err not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise OSError(err, os.strerror(err), name)


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a just-written range to disk, without waiting for it.

    Outputs are fsynced before they are published; started early, range by range, the writeback
    overlaps the decoding and the final fsync has little left to wait for (45 MB here: the fsync
    took ~25 ms alone, ~0 ms after this). A no-op where the call does not exist.
    """
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, length, SYNC_FILE_RANGE_WRITE)


def _temporary(final: Path) -> Path:
    """``.NAME.HOST.PID.RANDOM.wpk-partial`` beside ``final``: hidden, and traceable to its writer."""
    return final.parent / f".{final.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:12]}{PARTIAL}"


def _writer_gone(host: str, pid: str) -> bool:
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's (shared storage), or not ours: left alone
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


def remove_stale(final: Path) -> list[Path]:
    """Remove temporaries of ``final`` whose writing process no longer exists; return them."""
    prefix = f".{final.name}."
    stale = []
    if not final.parent.is_dir():
        return stale
    for p in final.parent.iterdir():
        if p.name.startswith(prefix) and p.name.endswith(PARTIAL):
            parts = p.name[len(prefix):-len(PARTIAL)].rsplit(".", 2)
            if len(parts) == 3 and _writer_gone(parts[0], parts[1]):
                _remove(p)
                stale.append(p)
    return stale


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


@contextmanager
def atomic_output(final: Path, overwrite: bool = False, directory: bool = False,
                  writes: Iterable[str] = ()) -> Iterator[Path]:
    """Yield a temporary path (a new empty folder if ``directory``) to fill; publish it as ``final``.

    The caller writes and verifies everything inside the ``with`` block; only a block that completes
    publishes. Files are fsynced before the rename so that a crash cannot publish a hole. Errors
    name ``final``, never the temporary. ``writes``: see ``paths.check_destination``.
    """
    final, writes = Path(final), list(writes)
    check_destination(final, overwrite, directory, writes)
    tmp = _temporary(final)
    try:  # from the first byte on disk: an interrupt anywhere below still removes the temporary
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(final)
        if directory:
            tmp.mkdir()
        yield tmp
        _fsync_tree(tmp)
        with _signals_deferred():
            _publish(tmp, final, overwrite, directory, writes)
    except BaseException as exc:
        _remove(tmp)
        if isinstance(exc, (OSError, WeightpackError)) and str(tmp) in str(exc):
            raise _renamed(exc, str(tmp), str(final)) from None
        raise


def _renamed(exc: BaseException, tmp: str, final: str) -> BaseException:
    """The same error, naming the user's path instead of the temporary one."""
    if isinstance(exc, OSError) and exc.filename is not None:
        return type(exc)(exc.errno, exc.strerror, os.fspath(exc.filename).replace(tmp, final))
    return type(exc)(str(exc).replace(tmp, final))


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


def _publish(tmp: Path, final: Path, overwrite: bool, directory: bool, writes: list[str]) -> None:
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
    check_destination(final, overwrite, directory, writes)  # again: it may have changed meanwhile
    if not directory:
        _replace_file(tmp, final)
        return
    old = _temporary(final)
    os.rename(final, old)
    os.rename(tmp, final)
    _remove(old)


def _replace_file(tmp: Path, final: Path) -> None:
    """``os.replace``, with the replaced file freed on a thread of its own (POSIX).

    The kernel frees a file's pages when its last reference goes: done by the rename, that made
    replacing a 90 MB output ~20 ms slower than writing a new one, in the caller's time. Here the
    replaced file is held open across the rename, and closed (freed) by a thread, beside whatever
    the caller does next. Nothing is left behind: the file has no name any more, and a process that
    exits first frees it as it exits.
    """
    try:
        old = os.open(final, os.O_RDONLY | os.O_NOFOLLOW) if os.name == "posix" else None
    except OSError:  # a symbolic link (replaced, not followed), or unreadable: freed by the rename
        old = None
    try:
        os.replace(tmp, final)
    finally:
        if old is not None:
            threading.Thread(target=os.close, args=(old,), name="weightpack-free", daemon=True).start()
