"""``weightpack demo``: pack and unpack the real all-MiniLM-L6-v2 folder in F32, BF16 and F16.

Shows what a user gets on a real model: packed size, the plane bound, speed, and that every
restored file is byte-identical (sha256) to the original.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path

from . import api, minilm
from .describe import info
from .safetensors_layout import write


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_demo(threads: int | None = None, quiet: bool = False) -> dict:
    """Run the round trip for each dtype; print a table unless ``quiet``; return the measurements."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="weightpack-demo-") as tmp:
        warm_up_s = _warm_up(Path(tmp) / "warm-up")
        for dtype in minilm.DTYPES:
            src = minilm.write_variant(Path(tmp) / dtype, dtype)
            checkpoint = src / minilm.CHECKPOINT
            start = time.perf_counter()
            packed = api.pack(src, Path(tmp) / f"{dtype}.wpk", threads=threads, verify=False)
            pack_s = time.perf_counter() - start
            start = time.perf_counter()
            restored = api.unpack(packed, Path(tmp) / f"{dtype}.restored", threads=threads)
            unpack_s = time.perf_counter() - start
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
        print(f"(warm-up: {warm_up_s:.1f} s; the first run on a machine compiles weightpack's kernels, later runs "
              "load them from numba's cache)\n")
        print("all-MiniLM-L6-v2 (22.7M parameters), model folder packed and unpacked:\n")
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


def _warm_up(folder: Path) -> float:
    """Pack and unpack one tensor of each dtype, so that the timings below are of the work, not of
    compiling the kernels (about 30 s on a new machine, once); return how long it took."""
    start = time.perf_counter()
    tensors = minilm.load(minilm.model_dir() / minilm.CHECKPOINT)
    name, tensor = next((n, t) for n, t in tensors.items() if t[0] == "F32" and len(t[1]) == 2)
    folder.mkdir()
    for dtype in minilm.DTYPES:
        write(folder / f"{dtype}.safetensors", {name: minilm.convert(tensor, dtype)}, {"format": "pt"})
        packed = api.pack(folder / f"{dtype}.safetensors", folder / f"{dtype}.wpk")
        api.unpack(packed, folder / f"{dtype}.restored")
    return time.perf_counter() - start
