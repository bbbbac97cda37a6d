"""Peak memory and throughput of pack and unpack on a large synthetic checkpoint, by thread count.

    python benchmarks/bench_memory.py [--gib 4] [--dtype BF16] [--threads 1,2] [--dir /path/with/space]

Generates the checkpoint with tools/make_large_checkpoint.py, then runs ``weightpack pack`` and
``weightpack unpack`` (``-j N`` for each of ``--threads``; default: all cores) each in a fresh process
and reports its peak RSS (ru_maxrss) beside the largest tensor's size, the time the command took
(measured inside the process: Python's start-up and imports are left out), and how many cores it
kept busy (its CPU time over that time). Thread counts are taken in turns, pack then unpack, so that
the machine's drift falls on all of them alike. Every restored file is checked byte for byte (sha256).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUN = ("import resource, sys, time; from weightpack.cli import main; "
       "t, c = time.perf_counter(), time.process_time(); rc = main(sys.argv[1:]); "
       "print('seconds', time.perf_counter() - t, 'cpu', time.process_time() - c, "
       "'maxrss_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")


def run(*args: str) -> tuple[float, float, int]:
    """A CLI command in a fresh process: its (seconds, cores kept busy, peak RSS in bytes)."""
    result = subprocess.run([sys.executable, "-c", RUN, *args, "-q"], capture_output=True, text=True, check=True)
    fields = result.stdout.split()
    seconds, cpu, rss_kib = (float(fields[fields.index(k) + 1]) for k in ("seconds", "cpu", "maxrss_kib"))
    return seconds, cpu / seconds, int(rss_kib) * 1024


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=4.0)
    parser.add_argument("--dtype", default="BF16")
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--threads", default=str(os.cpu_count() or 1), help="comma-separated thread counts")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of turns; each figure is its best")
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    sys.path.insert(0, str(REPO))
    from tools.make_large_checkpoint import plan, write
    from weightpack.dtypes import itemsize

    best: dict[tuple[str, int], tuple[float, float, int]] = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        src = Path(tmp) / "big.safetensors"
        write(src, int(args.gib * 2**30), args.dtype, 0)
        largest = max(r * c for _, (r, c) in plan(int(args.gib * 2**30), args.dtype)) * itemsize(args.dtype)
        size, digest = src.stat().st_size, sha256(src)
        identical, archives = True, set()
        for _ in range(args.repeat):
            for j in threads:
                wpk, back = Path(tmp) / f"big-{j}.wpk", Path(tmp) / f"back-{j}.safetensors"
                for step, command in (("pack", ("pack", str(src), "-o", str(wpk), "-j", str(j), "-f")),
                                      ("unpack", ("unpack", str(wpk), "-o", str(back), "-j", str(j), "-f"))):
                    measured = run(*command)
                    if measured[0] < best.get((step, j), (math.inf,))[0]:
                        best[step, j] = measured
                identical &= sha256(back) == digest
                archives.add(sha256(wpk))
                packed_size = wpk.stat().st_size
                back.unlink()
                wpk.unlink()
        ratio = packed_size / size
    print(f"checkpoint: {size / 2**30:.2f} GiB {args.dtype}, largest tensor {largest / 2**20:.0f} MiB, "
          f"packed to {100 * ratio:.2f}%")
    print("| step | threads | time | throughput | cores busy | peak RSS | RSS / largest tensor |")
    print("|---|---|---|---|---|---|---|")
    for (step, j), (secs, cores, rss) in sorted(best.items()):
        print(f"| {step} | {j} | {secs:.2f} s | {size / secs / 1e6:.0f} MB/s | {cores:.2f} | {rss / 2**20:.0f} MiB | "
              f"{rss / largest:.2f}x |")
    print(f"restored byte-identical: {'yes' if identical else 'NO'}; the same archive at every thread count: "
          f"{'yes' if len(archives) == 1 else 'NO'}")


if __name__ == "__main__":
    main()
