"""Probe: where a pack's CPU goes, step by step, in nanoseconds per element of the checkpoint.

    python benchmarks/probe_pack.py [--repeat 10] [--dtypes F32,BF16,F16]

Each step packing does to MiniLM (the real weights, in F32, BF16 and F16) is timed alone, in one
thread, on every tensor of the file, its inputs and outputs warm (allocated once, outside the
timing): the file's sha256, splitting tensors into planes, each plane's histograms by chunk,
modelling each plane (fitting its table, choosing each chunk's mode), coding every chunk (rANS, bit
packing, each chunk's XXH64), and the XXH64 of each stripe of the original. Each figure is the best
of ``--repeat`` passes. The sum is what the kernels cost; a pack costs more (threads handing work
over, reading and writing the files, fresh pages: see RESULTS.md, *Packing's CPU per element*), and
on two threads it is spread over both cores.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from weightpack import codec, dtypes, minilm, planes
from weightpack.checksum import stripe_hash
from weightpack.safetensors_layout import read_layout


def best(step: Callable[[], object], repeat: int) -> float:
    step()
    fastest = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        step()
        fastest = min(fastest, time.perf_counter() - start)
    return fastest


def probe(path: Path, repeat: int) -> dict[str, float]:
    """Seconds of each step over the whole file."""
    raw = np.fromfile(path, np.uint8)
    tensors = read_layout(path).tensors
    data = [raw[t.start:t.end] for t in tensors]
    specs = [dtypes.layout(t.dtype) for t in tensors]
    split = [planes.split(d, t.dtype) for d, t in zip(data, tensors)]
    counts = [[codec.ChunkCounts.zeros(p.size, s) for p, s in zip(ps, ss)] for ps, ss in zip(split, specs)]
    for ps, cs in zip(split, counts):
        for p, c in zip(ps, cs):
            c.count(p)

    def fresh() -> list[list[codec.ChunkCounts]]:  # each pass its own copy, as a pack has
        return [[replace(c, rows=c.rows.copy()) for c in cs] for cs in counts]
    copies = iter([fresh() for _ in range(repeat + 2)])
    models = [[codec._plane_model(p, s, c) for p, s, c in zip(ps, ss, cs)]
              for ps, ss, cs in zip(split, specs, next(copies))]
    stripe = {t.name: codec.CHUNK_SYMBOLS * dtypes.itemsize(t.dtype) for t in tensors}

    def histograms() -> None:
        for ps, cs in zip(split, counts):
            for p, c in zip(ps, cs):
                c.rows[:], c.sample_bits[:] = 0, 0
                c.count(p)

    return {
        "sha256 of the file": best(lambda: hashlib.sha256(raw).digest(), repeat),
        "split into planes": best(lambda: [planes.split_into(d, t.dtype, ps)
                                           for d, t, ps in zip(data, tensors, split)], repeat),
        "histograms by chunk": best(histograms, repeat),
        "plane models (tables, modes)": best(lambda: [[codec._plane_model(p, s, c) for p, s, c in zip(ps, ss, cs)]
                                                      for ps, ss, cs in zip(split, specs, next(copies))], repeat),
        "chunks coded (rANS, bits, XXH64)": best(lambda: [[job() for _, jobs in ms for job in jobs]
                                                          for ms in models], repeat),
        "stripe XXH64 of the original": best(lambda: [[stripe_hash(d[a:a + stripe[t.name]], a)
                                                       for a in range(0, d.size, stripe[t.name])]
                                                      for d, t in zip(data, tensors)], repeat),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--dtypes", default="F32,BF16,F16")
    args = parser.parse_args()
    names = args.dtypes.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for dtype in names:
            path = minilm.write_variant(Path(tmp) / dtype, dtype, with_extras=False) / minilm.CHECKPOINT
            elements = sum((t.end - t.start) // dtypes.itemsize(t.dtype) for t in read_layout(path).tensors)
            results[dtype] = {step: 1e9 * s / elements for step, s in probe(path, args.repeat).items()}
    steps = list(next(iter(results.values())))
    print(f"MiniLM, ns per element, one thread, best of {args.repeat} (python {sys.version.split()[0]})\n")
    print("| step | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for step in [*steps, "sum"]:
        cells = [results[d][step] if step != "sum" else sum(results[d].values()) for d in names]
        print(f"| {step} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
