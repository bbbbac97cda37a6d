"""Peak memory and throughput of pack and unpack on a large synthetic checkpoint.

    python benchmarks/bench_memory.py [--gib 4] [--dtype BF16] [--dir /path/with/space]

Generates the checkpoint with tools/make_large_checkpoint.py, then runs ``weightpack pack`` and
``weightpack unpack`` each in a fresh process and reports its peak RSS (ru_maxrss) beside the
largest tensor's size, and the time taken. The restored file is checked byte for byte (sha256).
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUN = ("import resource, sys; from weightpack.cli import main; rc = main(sys.argv[1:]); "
       "print('maxrss_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")


def run(*args: str) -> tuple[float, int]:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", RUN, *args, "-q"], capture_output=True, text=True, check=True)
    rss_kib = int(result.stdout.split("maxrss_kib")[1].split()[0])
    return time.perf_counter() - start, rss_kib * 1024


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=4.0)
    parser.add_argument("--dtype", default="BF16")
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from tools.make_large_checkpoint import plan, write
    from weightpack.dtypes import itemsize

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        src, wpk, back = Path(tmp) / "big.safetensors", Path(tmp) / "big.wpk", Path(tmp) / "back.safetensors"
        write(src, int(args.gib * 2**30), args.dtype, 0)
        largest = max(r * c for _, (r, c) in plan(int(args.gib * 2**30), args.dtype)) * itemsize(args.dtype)
        size = src.stat().st_size
        pack_s, pack_rss = run("pack", str(src), "-o", str(wpk))
        unpack_s, unpack_rss = run("unpack", str(wpk), "-o", str(back))
        identical = sha256(src) == sha256(back)
        ratio = wpk.stat().st_size / size
    print(f"checkpoint: {size / 2**30:.2f} GiB {args.dtype}, largest tensor {largest / 2**20:.0f} MiB, "
          f"packed to {100 * ratio:.2f}%")
    print("| step | time | throughput | peak RSS | RSS / largest tensor |")
    print("|---|---|---|---|---|")
    for name, secs, rss in (("pack", pack_s, pack_rss), ("unpack", unpack_s, unpack_rss)):
        print(f"| {name} | {secs:.1f} s | {size / secs / 1e6:.0f} MB/s | {rss / 2**20:.0f} MiB | "
              f"{rss / largest:.2f}x |")
    print(f"restored byte-identical: {'yes' if identical else 'NO'}")


if __name__ == "__main__":
    main()
