"""``weightpack demo``: pack and unpack the real all-MiniLM-L6-v2 folder in F32, BF16 and F16.

Shows what a user gets on a real model: packed size, the plane bound, speed, and that every
restored file is byte-identical (sha256) to the original.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import api, minilm
from .compile_beside import DecoderBeside
from .describe import info

TIMED_RUNS = 3


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_demo(threads: int | None = None, quiet: bool = False, progress: bool = False) -> dict:
    """Run the round trip for each dtype; print a table unless ``quiet``; return the measurements.

    Each dtype's round trip runs once untimed first (the warm-up): which kernels a model needs
    depends on its data (a raw 10-bit chunk, a 1-bit plane), and on a new machine each one is
    compiled at its first use. Then ``TIMED_RUNS`` timed round trips, of which the best speeds are
    shown: one run of a 45 MB model varies by a third on a busy or small machine.
    ``progress``: name each step on stderr as it starts (a first run is ~20 s of compiling, which
    a new user would otherwise watch in silence).
    """
    rows, warm_up_s = [], 0.0
    with tempfile.TemporaryDirectory(prefix="weightpack-demo-") as tmp, _Steps(progress) as step, \
            DecoderBeside.if_cold():
        for dtype in minilm.DTYPES:
            src = minilm.write_variant(Path(tmp) / dtype, dtype)
            checkpoint = src / minilm.CHECKPOINT
            step(f"{dtype}: warm-up round trip (compiles the kernels on a machine's first run)")
            start = time.perf_counter()
            _remove(*_round_trip(src, Path(tmp) / f"{dtype}-warm-up", threads)[:2])
            warm_up_s += time.perf_counter() - start
            step(f"{dtype}: timed round trips")
            times = []
            for run in range(TIMED_RUNS):
                packed, restored, pack_s, unpack_s = _round_trip(src, Path(tmp) / f"{dtype}-{run}", threads)
                times.append((pack_s, unpack_s))
                if run < TIMED_RUNS - 1:  # the last run's outputs are kept, and checked
                    _remove(packed, restored)
            pack_s, unpack_s = min(t[0] for t in times), min(t[1] for t in times)
            report = info(packed / "model.wpk")
            size = checkpoint.stat().st_size
            rows.append({
                "dtype": dtype, "original_bytes": size, "packed_bytes": report["packed_bytes"],
                "ratio": report["ratio"],
                "bound_ratio": (size - report["tensor_bytes"] + report["tensor_bound_bytes"]) / size,
                "pack_MBps": size / pack_s / 1e6, "unpack_MBps": size / unpack_s / 1e6,
                "identical": _digests(src) == _digests(restored),
            })
    if not quiet:
        print(f"(warm-up, one untimed round trip per dtype: {warm_up_s:.1f} s; the first run on a machine also "
              "compiles weightpack's kernels, later runs load them from numba's cache)\n")
        print(f"all-MiniLM-L6-v2 (22.7M parameters), model folder packed and unpacked, best of {TIMED_RUNS} runs\n"
              "(pack without its post-pack verification; unpack checks every stripe and fsyncs what it writes):\n")
        print(f"{'dtype':<6} {'original':>10} {'packed':>10} {'ratio':>8} {'bound':>8} "
              f"{'pack':>11} {'unpack':>11}  byte-identical")
        for r in rows:
            print(f"{r['dtype']:<6} {r['original_bytes'] / 1e6:7.1f} MB {r['packed_bytes'] / 1e6:7.1f} MB "
                  f"{100 * r['ratio']:7.2f}% {100 * r['bound_ratio']:7.2f}% {r['pack_MBps']:6.0f} MB/s "
                  f"{r['unpack_MBps']:6.0f} MB/s  {'yes (sha256 equal)' if r['identical'] else 'NO'}")
        print("\nratio = packed/original checkpoint; bound = the plane bound: the order-0 entropy of each of\n"
              "weightpack's planes, per tensor (what a static per-tensor coder of them cannot beat; per-chunk tables\n"
              "go below it). benchmarks/RESULTS.md also quotes the classic order-0 limit of whole-byte planes.")
    return {"model": "all-MiniLM-L6-v2", "warm_up_seconds": warm_up_s, "results": rows,
            "ok": all(r["identical"] for r in rows)}


class _Steps:
    """A line on stderr counting the demo's steps and naming the one running (tqdm, imported only when
    shown)."""

    def __init__(self, enabled: bool) -> None:
        self._bar, self._running = None, False
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=2 * len(minilm.DTYPES), file=sys.stderr, leave=False,
                             bar_format="demo: {n_fmt}/{total_fmt} done, {desc} [{elapsed}]")

    def __call__(self, what: str) -> None:
        """Step ``what`` starts (the one before it, if any, is done)."""
        if self._bar is not None:
            self._bar.set_description_str(what, refresh=not self._running)
            if self._running:
                self._bar.update(1)  # shows the new description too
            self._running = True

    def __enter__(self) -> _Steps:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()


def _remove(*folders: Path) -> None:
    """Outputs not needed any more: deleted, so that their pages are not still being written back while
    the next run is timed."""
    for folder in folders:
        shutil.rmtree(folder)


def _round_trip(src: Path, into: Path, threads: int | None) -> tuple[Path, Path, float, float]:
    """Pack folder ``src`` into ``into``.wpk and unpack it into ``into``.restored: both paths and times."""
    start = time.perf_counter()
    packed = api.pack(src, into.with_name(f"{into.name}.wpk"), threads=threads, verify=False)
    pack_s = time.perf_counter() - start
    start = time.perf_counter()
    restored = api.unpack(packed, into.with_name(f"{into.name}.restored"), threads=threads)
    return packed, restored, pack_s, time.perf_counter() - start
