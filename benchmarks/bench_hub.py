"""Time to model: a packed Hub repo against the original, through the same bandwidth-capped loopback Hub.

    python benchmarks/bench_hub.py [--rates 100,500,1000] [--gib 1] [--shards 1] [--latency 0] [--cold]
                                   [--json out.json]

The Hub is the test suite's Hub-compatible server (tests/hub_server.py) on 127.0.0.1, sending each
download no faster than the rate (MB/s), and answers every request ``--latency`` ms late (a round trip
to a distant server, which loopback hides). Two repos hold the same model: the original files, and the
folder packed by weightpack. For each rate, each step runs in a fresh process with an empty cache:

- *to files*: the original repo with ``snapshot_download`` (the files are then on disk, usable),
  against ``weightpack pull`` of the packed repo (downloads, decodes each archive while the next one
  downloads, checks every file against weightpack.json, publishes the folder);
- *to model* (MiniLM only): ``snapshot_download`` then ``AutoModel.from_pretrained(folder)``,
  against ``weightpack.from_pretrained(AutoModel, repo)`` (weights decoded in memory);
- *to files, first run* (with ``--cold``): the same as *to files*, the pull with an empty numba
  cache, as on a new machine or in a fresh container: its kernels are compiled, not loaded.

Times are measured inside the process, from the call to the result, so Python's start-up and
imports (the same for both: about 1 s, and ~6 s more for transformers with torch and BERT's code,
which it imports at its first use) are left out; peak RSS is the whole process's (VmHWM: the
server's memory, which a forked child's ru_maxrss would inherit, is not counted); disk is the
cache plus the destination afterwards. The server is Python on the same 2 cores as the client:
the rate is a cap, and "achieved" says what the original repo's download really reached.
Models: MiniLM BF16 and F32 (real weights) and a synthetic BF16 checkpoint of ``--gib`` GiB
(tools/make_large_checkpoint.py; for size, not ratio), in ``--shards`` files as a large model is.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from huggingface_hub import HfApi  # noqa: E402
from steal import cpu_ticks, stolen_since  # noqa: E402

import weightpack  # noqa: E402
from tests.hub_server import FakeHub  # noqa: E402
from weightpack import minilm  # noqa: E402

TOKEN = "hf_bench"
STEP = r"""
import json, sys, time
from pathlib import Path
kind, repo, endpoint, cache, out = sys.argv[1:6]
import weightpack
from huggingface_hub import snapshot_download
if kind.endswith("model"):  # transformers imports torch, its Auto classes and a model's code at first use: not timed
    import transformers
    import transformers.models.bert.modeling_bert  # MiniLM's
    transformers.AutoModel
start = time.perf_counter()
if kind == "plain-files":
    snapshot_download(repo, cache_dir=cache, endpoint=endpoint, token="hf_bench")
elif kind == "packed-files":
    weightpack.hub.pull(repo, out, cache_dir=cache, endpoint=endpoint, token="hf_bench")
elif kind == "plain-model":
    folder = snapshot_download(repo, cache_dir=cache, endpoint=endpoint, token="hf_bench")
    transformers.AutoModel.from_pretrained(folder)
else:
    weightpack.from_pretrained(transformers.AutoModel, repo, cache_dir=cache, endpoint=endpoint, token="hf_bench")
seconds = time.perf_counter() - start
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))  # this process's own peak
print(json.dumps({"seconds": seconds, "peak_rss": int(hwm.split()[1]) * 1024}))
"""


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) if path.exists() else 0


def step(kind: str, repo: str, hub: FakeHub, tmp: Path, cold: bool = False) -> dict:
    """One step in a fresh process; ``cold``: with an empty numba cache, as a new machine's first run."""
    cache, out = tmp / f"cache-{kind}", tmp / f"out-{kind}"
    env = dict(os.environ, HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_XET="1",
               TRANSFORMERS_VERBOSITY="error")
    if cold:
        env["NUMBA_CACHE_DIR"] = str(tmp / "numba-cache-cold")
        subprocess.run(["rm", "-rf", env["NUMBA_CACHE_DIR"]], check=True)
    result = subprocess.run([sys.executable, "-c", STEP, kind, repo, hub.url, str(cache), str(out)], env=env,
                            capture_output=True, text=True, check=True)
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    measured["disk"] = tree_bytes(cache) + tree_bytes(out)
    for path in (cache, out):
        subprocess.run(["rm", "-rf", str(path)], check=True)
    return measured


def publish(hub: FakeHub, folder: Path, name: str) -> tuple[str, str]:
    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo(f"bench/{name}-plain")
    api.upload_folder(repo_id=f"bench/{name}-plain", folder_path=folder)
    weightpack.hub.push(folder, f"bench/{name}-packed", token=TOKEN, endpoint=hub.url)
    return f"bench/{name}-plain", f"bench/{name}-packed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="100,500,1000", help="link rates in MB/s")
    parser.add_argument("--gib", type=float, default=1.0, help="size of the synthetic checkpoint (0: skip it)")
    parser.add_argument("--shards", type=int, default=1, help="files the synthetic checkpoint is split into")
    parser.add_argument("--latency", type=float, default=0.0, help="ms each request is answered late")
    parser.add_argument("--cold", action="store_true",
                        help="also pull each packed repo to files with an empty numba cache (a first run)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp, FakeHub() as hub:
        tmp = Path(tmp)
        if args.latency:
            print(f"every request answered {args.latency:g} ms late\n")
        models = [(f"MiniLM {d}", minilm.write_variant(tmp / d, d), True) for d in ("BF16", "F32")]
        if args.gib:
            big = tmp / "synthetic"
            big.mkdir()
            names = (["model.safetensors"] if args.shards == 1 else
                     [f"model-{k:05d}-of-{args.shards:05d}.safetensors" for k in range(1, args.shards + 1)])
            for seed, name in enumerate(names):  # seeds differ: no shard is a copy of another
                subprocess.run([sys.executable, str(REPO / "tools" / "make_large_checkpoint.py"), str(big / name),
                                "--gib", str(args.gib / args.shards), "--seed", str(seed)], check=True)
            shards = f" in {args.shards} shards" if args.shards > 1 else ""
            models.append((f"synthetic BF16 {args.gib:g} GiB{shards}", big, False))
        print("| model | link cap MB/s (achieved) | step | original repo | packed repo | speed-up | "
              "peak RSS orig / packed | disk orig / packed | CPU stolen |")
        print("|---|---|---|---|---|---|---|---|---|")
        for label, folder, with_model in models:
            hub.latency = 0.0  # publishing is not timed
            plain, packed = publish(hub, folder, label.split()[0].lower() + label.split()[-1].replace(".", ""))
            hub.latency = args.latency / 1e3
            for rate in rates:
                hub.rate = rate * 1e6
                kinds = [("files", "plain-files", "packed-files", False)]
                if args.cold:
                    kinds.append(("files, first run", "plain-files", "packed-files", True))
                if with_model:
                    kinds.append(("model", "plain-model", "packed-model", False))
                for what, plain_kind, packed_kind, cold in kinds:
                    ticks = cpu_ticks()
                    a, b = step(plain_kind, plain, hub, tmp), step(packed_kind, packed, hub, tmp, cold)
                    stolen = stolen_since(ticks)
                    results.append({"model": label, "rate_MBps": rate, "to": what, "original": a, "packed": b,
                                    "cpu_stolen": stolen})
                    achieved = tree_bytes(folder) / a["seconds"] / 1e6
                    print(f"| {label} | {rate:.0f} ({achieved:.0f}) | to {what} | {a['seconds']:.2f} s | "
                          f"{b['seconds']:.2f} s | "
                          f"**{a['seconds'] / b['seconds']:.2f}x** | {a['peak_rss'] / 2**20:.0f} / "
                          f"{b['peak_rss'] / 2**20:.0f} MiB | {a['disk'] / 1e6:.0f} / {b['disk'] / 1e6:.0f} MB | "
                          f"{100 * stolen:.0f}% |",
                          flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
