"""Probe: how fast can several threads write one output file, as unpack's workers do?

    python benchmarks/probe_writes.py [--gib 1] [--threads 1,2,4,8,16] [--dir /dev/shm]

Unpack's workers each write their job's decoded bytes into the one output file with ``pwrite``. Linux
takes the file's inode lock for a buffered write, so writes to one file run one at a time whatever
the threads: their speed is a ceiling for a many-core unpack of one file, which a machine's page
cache sets, not weightpack. This measures it beside the alternative a worker could use, the file
mapped into memory, its job's pages made present with ``madvise(MADV_POPULATE_WRITE)`` (which
returns an error where a fault on a full disk would kill the process with SIGBUS) and then written
(here by a copy; a decoder would write them itself). Each thread writes every ``threads``-th 1 MiB
block of a fresh file of ``--gib`` GiB; GB/s is the file's size over the time until all threads
are done.
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import tempfile
import threading
import time
from collections.abc import Callable

import numpy as np

BLOCK = 1 << 20
MADV_POPULATE_WRITE = 23  # Linux 5.14+

_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def _timed(path: str, size: int, threads: int, writer: Callable[[int, int, int], Callable[[int], None]]) -> float:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, size)
        work = writer(fd, size, threads)
        pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        start = time.perf_counter()
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        return size / (time.perf_counter() - start) / 1e9
    finally:
        os.close(fd)
        os.unlink(path)


def _pwrite(block: np.ndarray) -> Callable[[int, int, int], Callable[[int], None]]:
    def writer(fd: int, size: int, threads: int) -> Callable[[int], None]:
        def work(t: int) -> None:
            for offset in range(t * BLOCK, size, threads * BLOCK):
                os.pwrite(fd, block, offset)
        return work
    return writer


def _mapped(block: np.ndarray) -> Callable[[int, int, int], Callable[[int], None]]:
    def writer(fd: int, size: int, threads: int) -> Callable[[int], None]:
        mapped = np.frombuffer(mmap.mmap(fd, size), np.uint8)
        base = mapped.ctypes.data

        def work(t: int) -> None:
            for offset in range(t * BLOCK, size, threads * BLOCK):
                if _libc.madvise(base + offset, BLOCK, MADV_POPULATE_WRITE) != 0:
                    raise OSError(ctypes.get_errno(), "madvise(MADV_POPULATE_WRITE)")
                mapped[offset:offset + BLOCK] = block
        return work
    return writer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--threads", default="1,2,4,8,16")
    parser.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir())
    args = parser.parse_args()
    size = int(args.gib * (1 << 30)) // BLOCK * BLOCK
    block = np.random.default_rng(0).integers(0, 256, BLOCK, dtype=np.uint8)
    path = os.path.join(args.dir, f".probe_writes.{os.getpid()}")
    print(f"one file of {size / 1e9:.2f} GB in {args.dir}, 1 MiB blocks, GB/s ({os.cpu_count()} cores)")
    print("| threads | pwrite | mapped, populated, written |")
    print("|---|---|---|")
    for threads in (int(t) for t in args.threads.split(",")):
        row = []
        for method in (_pwrite(block), _mapped(block)):
            try:
                row.append(f"{_timed(path, size, threads, method):.2f}")
            except OSError as exc:
                row.append(f"n/a ({exc.strerror})")
        print(f"| {threads} | {row[0]} | {row[1]} |", flush=True)


if __name__ == "__main__":
    main()
