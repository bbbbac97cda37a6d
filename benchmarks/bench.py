"""Benchmark: weightpack vs zstd (3, 19) and zipnn on the real all-MiniLM-L6-v2 in F32, BF16 and F16.

    pip install torch==2.13.0 -e ".[bench]" && python benchmarks/bench.py [--repeat 3] [--json out.json]

Every codec compresses the same checkpoint file in the same run; every round trip is checked for
byte equality and reported honestly. Speeds are original bytes per second, best of ``--repeat``.
weightpack runs through its public file API (reads and writes files in a temporary folder, in the
page cache); zstd and zipnn work on in-memory bytes, which favours them slightly.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numba
import zstandard

import weightpack
from weightpack import minilm

ZIPNN_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


def best_time(func: Callable[[], object], repeat: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = func()
        best = min(best, time.perf_counter() - start)
    return best, result


def row(name: str, original: bytes, packed_size: int, enc_s: float, dec_s: float, lossless: bool) -> dict:
    return {"codec": name, "ratio": packed_size / len(original), "encode_MBps": len(original) / enc_s / 1e6,
            "decode_MBps": len(original) / dec_s / 1e6, "lossless": lossless}


def bench_weightpack(path: Path, tmp: Path, threads: int, repeat: int) -> tuple[dict, dict]:
    wpk, back = tmp / "m.wpk", tmp / "back.safetensors"
    enc_s, _ = best_time(lambda: weightpack.pack(path, wpk, overwrite=True, threads=threads, verify=False), repeat)
    dec_s, _ = best_time(lambda: weightpack.unpack(wpk, back, overwrite=True, threads=threads), repeat)
    original = path.read_bytes()
    report = weightpack.info(wpk)
    name = f"weightpack (-j {threads})"
    return row(name, original, wpk.stat().st_size, enc_s, dec_s, back.read_bytes() == original), report


def bench_zstd(original: bytes, level: int, repeat: int) -> dict:
    cctx, dctx = zstandard.ZstdCompressor(level=level, threads=-1), zstandard.ZstdDecompressor()
    enc_s, packed = best_time(lambda: cctx.compress(original), repeat)
    dec_s, back = best_time(lambda: dctx.decompress(packed), repeat)
    return row(f"zstd -{level}", original, len(packed), enc_s, dec_s, back == original)


def bench_zipnn(original: bytes, dtype: str, repeat: int) -> dict:
    try:
        from zipnn import ZipNN
    except ImportError:
        return {"codec": "zipnn", "error": "not installed (pip install zipnn)"}
    codec = ZipNN(input_format="byte", bytearray_dtype=ZIPNN_DTYPES[dtype], threads=os.cpu_count())
    enc_s, packed = best_time(lambda: codec.compress(original), repeat)
    dec_s, back = best_time(lambda: codec.decompress(packed), repeat)
    return row("zipnn", original, len(packed), enc_s, dec_s, bytes(back) == original)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    machine = {"cpu": platform.processor() or platform.machine(), "cores": cores, "python": platform.python_version(),
               "numba": numba.__version__, "weightpack": weightpack.__version__}
    try:
        with open("/proc/cpuinfo") as f:
            machine["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    results = {"machine": machine, "model": "all-MiniLM-L6-v2 model.safetensors", "dtypes": {}}
    print(f"machine: {machine['cpu']}, {cores} cores; best of {args.repeat}\n")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weightpack.pack(minilm.write_variant(tmp / "warm", "BF16", with_extras=False), tmp / "warm.wpk")  # JIT warm-up
        for dtype in minilm.DTYPES:
            path = minilm.write_variant(tmp / dtype, dtype, with_extras=False) / minilm.CHECKPOINT
            original = path.read_bytes()
            rows = []
            for threads in sorted({1, cores}):
                wp_row, report = bench_weightpack(path, tmp, threads, args.repeat)
                rows.append(wp_row)
            rows += [bench_zstd(original, 3, args.repeat), bench_zstd(original, 19, 1),
                     bench_zipnn(original, dtype, args.repeat)]
            tensor_bytes = report["tensor_bytes"]
            bound = (len(original) - tensor_bytes + report["tensor_bound_bytes"]) / len(original)
            results["dtypes"][dtype] = {"original_bytes": len(original), "order0_bound_ratio": bound,
                                        "tensor_packed_ratio": report["tensor_packed_bytes"] / tensor_bytes,
                                        "tensor_bound_ratio": report["tensor_bound_bytes"] / tensor_bytes,
                                        "rows": rows}
            print(f"{dtype}: {len(original) / 1e6:.1f} MB, per-tensor order-0 plane bound {100 * bound:.2f}% "
                  f"(tensor data: packed {100 * report['tensor_packed_bytes'] / tensor_bytes:.3f}%, "
                  f"bound {100 * report['tensor_bound_bytes'] / tensor_bytes:.3f}%)")
            print(f"| {'codec':<18} | {'packed/original':>15} | {'encode MB/s':>11} | {'decode MB/s':>11} | lossless |")
            print(f"|{'-' * 20}|{'-' * 17}|{'-' * 13}|{'-' * 13}|----------|")
            for r in rows:
                if "error" in r:
                    print(f"| {r['codec']:<18} | {r['error']} |")
                    continue
                print(f"| {r['codec']:<18} | {100 * r['ratio']:14.2f}% | {r['encode_MBps']:11.0f} | "
                      f"{r['decode_MBps']:11.0f} | {'yes' if r['lossless'] else 'NO'} |")
            print()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
