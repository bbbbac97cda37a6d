"""Packing many checkpoints on a Ray cluster: throughput with 1, 2 and 4 simulated nodes, and the cost of a task.

    python benchmarks/bench_cluster.py [--models 8] [--tiny 64] [--json out.json]

A real Ray cluster is started on 127.0.0.1 (``ray.cluster_utils.Cluster``) with 1, 2 or 4 nodes of
one CPU each, all on this machine, so "nodes" share its cores: the figures show what the cluster
path costs and how its scheduling behaves, not what more machines would add (RESULTS.md works that
out from the per-task cost measured here). Sources: ``--models`` copies of the real MiniLM (BF16,
one safetensors file and its config each, as separate model folders). Beside each cluster run, the
same sources packed here without Ray (``pack_many`` with no address: one model after the other,
each on every core). The cost of a task: ``--tiny`` one-tensor files (4 KiB) packed on the cluster;
the wall time per file is scheduling, a worker's start-up share, reading, coding, verifying and
publishing, with almost no coding. Every output is checked byte for byte against a one-machine pack.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray on 127.0.0.1 only
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

from weightpack import cluster, minilm  # noqa: E402


def _sources(root: Path, models: int, tiny: int) -> tuple[list[Path], list[Path]]:
    base = minilm.write_variant(root / "minilm", "BF16")
    folders = []
    for k in range(models):
        folder = root / "models" / f"minilm-{k:02d}"
        shutil.copytree(base, folder)
        folders.append(folder)
    rng = np.random.default_rng(0)
    files = []
    for k in range(tiny):
        path = root / "tiny" / f"t{k:03d}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"w": rng.standard_normal(1024).astype(np.float32)}, str(path))
        files.append(path)
    return folders, files


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _run(sources: list[Path], out: Path, address: str | None) -> tuple[float, cluster.Summary]:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    summary = cluster.pack_many(sources, out, address=address)
    seconds = time.perf_counter() - start
    assert not summary.failed, summary.failed
    return seconds, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--tiny", type=int, default=64)
    parser.add_argument("--nodes", default="1,2,4")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="wpk-cluster-"))
    rows = []
    try:
        folders, tiny = _sources(root, args.models, args.tiny)
        total = sum(f.stat().st_size for d in folders for f in d.rglob("*") if f.is_file())
        reference = root / "reference"
        here, _ = _run(folders, reference, None)
        expected = _tree(reference)
        rows.append({"where": "this machine, no Ray", "nodes": 0, "models_s": here, "MB_s": total / here / 1e6})
        for nodes in map(int, args.nodes.split(",")):
            ray_nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
            for _ in range(nodes - 1):
                ray_nodes.add_node(num_cpus=1)
            try:
                start = time.perf_counter()
                ray.init(address=ray_nodes.address, logging_level="ERROR", log_to_driver=False)
                connect = time.perf_counter() - start  # paid once per command; the runs below reuse it
                _run(folders[:2], root / "warm", ray_nodes.address)  # workers started, kernels loaded
                seconds, summary = _run(folders, root / "out", ray_nodes.address)
                assert _tree(root / "out") == expected, "cluster output differs from a one-machine pack"
                tiny_s, _ = _run(tiny, root / "tiny-out", ray_nodes.address)
                rows.append({"where": f"Ray, {nodes} node(s) x 1 CPU", "nodes": nodes, "models_s": seconds,
                             "MB_s": total / seconds / 1e6, "ratio": summary.as_dict()["ratio"],
                             "task_ms": 1000 * tiny_s / len(tiny), "connect_s": connect})
            finally:
                ray.shutdown()
                ray_nodes.shutdown()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{args.models} MiniLM BF16 model folders, {total / 1e6:.1f} MB; {args.tiny} tiny files for the task cost; "
          f"{os.cpu_count()} cores")
    print(f"{'where':<28} {'pack all (s)':>12} {'MB/s':>8} {'per tiny task (ms)':>19} {'connect (s)':>12}")
    for r in rows:
        task = f"{r['task_ms']:.1f}" if "task_ms" in r else "-"
        connect = f"{r['connect_s']:.2f}" if "connect_s" in r else "-"
        print(f"{r['where']:<28} {r['models_s']:>12.2f} {r['MB_s']:>8.1f} {task:>19} {connect:>12}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
