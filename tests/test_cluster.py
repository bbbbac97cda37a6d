"""Many checkpoints at once, here and on a real Ray cluster started on 127.0.0.1 (two simulated nodes).

A cluster pack writes the bytes a one-machine pack writes; a worker killed mid-task is retried with
no partial or duplicate output; a model that cannot be read fails alone, named with its node; Ctrl-C
cancels the cluster's tasks and leaves nothing behind; without --cluster, Ray is never imported.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import weightpack
from weightpack import cluster
from weightpack.cli import main

from .conftest import sha256_tree

LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}  # Ray stays on 127.0.0.1


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A real Ray cluster of two nodes of one CPU each, on loopback; yields its address."""
    saved = {k: os.environ.get(k) for k in LOOPBACK}
    os.environ.update(LOOPBACK)  # before Ray is imported: it reads them then
    ray_cluster_utils = pytest.importorskip("ray.cluster_utils")
    nodes = ray_cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1,
                                                                           "include_dashboard": False})
    nodes.add_node(num_cpus=1)
    assert nodes.address.startswith("127.0.0.1:"), nodes.address
    try:
        yield nodes.address
    finally:
        nodes.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory, minilm_dirs: dict[str, Path]) -> dict[str, Path]:
    """A sharded folder whose later shards repeat a tensor of the first (in a subfolder too), and a file."""
    root = tmp_path_factory.mktemp("sources")
    g = torch.Generator().manual_seed(0)
    shared = torch.randn(512, 384, generator=g).to(torch.bfloat16)
    model = root / "model"
    (model / "sub").mkdir(parents=True)
    save_file({"a": shared, "b": torch.randn(300, generator=g).to(torch.bfloat16)}, model / "m-1.safetensors")
    save_file({"c": shared.clone(), "d": torch.randn(1000, 70, generator=g)}, model / "m-2.safetensors")
    save_file({"e": shared.clone(), "f": torch.randn(10, generator=g).half()}, model / "sub" / "m-3.safetensors")
    (model / "config.json").write_text("{}")
    single = root / "minilm.safetensors"
    single.write_bytes((minilm_dirs["BF16"] / "model.safetensors").read_bytes())
    return {"model": model, "file": single}


def _big_file(path: Path, megabytes: int) -> Path:
    """A synthetic BF16 checkpoint (sizes for fault tests; ratios are measured on real weights)."""
    g = torch.Generator().manual_seed(1)
    save_file({f"w{k}": torch.randn(megabytes // 4, 1 << 19, generator=g).to(torch.bfloat16) for k in range(2)}, path)
    return path


def _tasks_running(name: str) -> list[int]:
    """Pids of Ray workers now running task ``name`` (Ray titles a busy worker ``ray::NAME``)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(f"ray::{name}".encode()):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _wait_for_task(name: str, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = _tasks_running(name)
        if pids:
            return pids[0]
        time.sleep(0.02)
    raise AssertionError(f"no Ray worker ran {name} within {timeout} s")


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if "wpk-partial" in p.name] if folder.exists() else []


def test_a_cluster_pack_writes_the_bytes_of_a_one_machine_pack(ray_cluster: str, sources: dict[str, Path],
                                                               tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    weightpack.pack(sources["model"], ref / "model.wpk")
    weightpack.pack(sources["file"], ref / "minilm.wpk")
    summary = cluster.pack_many([sources["model"], sources["file"]], tmp_path / "out", address=ray_cluster)
    assert [o.error for o in summary.outcomes] == [None, None]
    assert sha256_tree(tmp_path / "out" / "model.wpk") == sha256_tree(ref / "model.wpk")
    assert (tmp_path / "out" / "minilm.wpk").read_bytes() == (ref / "minilm.wpk").read_bytes()
    report = weightpack.info(tmp_path / "out" / "model.wpk")
    copies = [t["reference"] for a in report["archives"] for t in a["tensors"] if t["reference"]]
    assert copies == ["copy of 'a' in m-1.wpk", "copy of 'a' in ../m-1.wpk"]  # found across shards, as here
    assert summary.as_dict()["done"] == 2 and 0 < summary.as_dict()["ratio"] < 1


def test_a_cluster_unpacks_and_verifies_what_it_packed(ray_cluster: str, sources: dict[str, Path],
                                                       tmp_path: Path) -> None:
    packed = cluster.pack_many([sources["model"], sources["file"]], tmp_path / "packed", address=ray_cluster)
    archives = [Path(o.destination) for o in packed.outcomes]
    checked = cluster.verify_many(archives, address=ray_cluster)
    assert [o.error for o in checked.outcomes] == [None, None]
    summary = cluster.unpack_many(archives, tmp_path / "back", address=ray_cluster)
    assert [o.error for o in summary.outcomes] == [None, None]
    assert sha256_tree(tmp_path / "back" / "model") == sha256_tree(sources["model"])
    assert (tmp_path / "back" / "minilm.safetensors").read_bytes() == sources["file"].read_bytes()


def test_a_worker_killed_mid_task_is_retried_with_no_partial_or_duplicate_output(ray_cluster: str,
                                                                                  tmp_path: Path) -> None:
    big = _big_file(tmp_path / "big.safetensors", 48)
    expected = weightpack.pack(big, tmp_path / "expected.wpk").read_bytes()
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(big.read_bytes())
    out = tmp_path / "out"
    run = subprocess.Popen([sys.executable, "-m", "weightpack", "pack", str(big), str(copy), "-o", str(out),
                            "--cluster", ray_cluster, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    victim = _wait_for_task("_pack_task")
    time.sleep(0.3)
    os.kill(victim, signal.SIGKILL)
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr
    assert json.loads(stdout)["done"] == 2
    assert sorted(p.name for p in out.iterdir()) == ["big.wpk", "copy.wpk"]
    assert (out / "big.wpk").read_bytes() == expected and (out / "copy.wpk").read_bytes() == expected


def test_a_model_a_node_cannot_read_fails_alone_named_with_file_and_node(ray_cluster: str, sources: dict[str, Path],
                                                                         tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "m-1.safetensors").write_bytes((sources["model"] / "m-1.safetensors").read_bytes())
    (broken / "m-2.safetensors").write_bytes((sources["model"] / "m-2.safetensors").read_bytes()[:5000])
    out = tmp_path / "out"
    code = main(["pack", str(broken), str(sources["file"]), "-o", str(out), "--cluster", ray_cluster, "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and err[0].startswith(f"weightpack: error: {broken / 'm-2.safetensors'}: "), err
    assert "(on node 127.0.0.1 (" in err[0]
    assert sorted(p.name for p in out.iterdir()) == ["minilm.wpk"]  # the other model finished; nothing else left


def test_ctrl_c_cancels_the_cluster_tasks_and_leaves_nothing_behind(ray_cluster: str, tmp_path: Path) -> None:
    big = _big_file(tmp_path / "big.safetensors", 96)
    links = [tmp_path / f"link-{k}.safetensors" for k in range(5)]  # more tasks than the cluster's two CPUs: the
    for link in links:  # interrupt always finds work queued, however fast one pack is
        os.link(big, link)
    out = tmp_path / "out"
    run = subprocess.Popen([sys.executable, "-m", "weightpack", "pack", str(big), *map(str, links), "-o", f"{out}/",
                            "--cluster", ray_cluster], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_task("_pack_task")
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr
    assert stderr.strip() == "weightpack: interrupted; no partial output was left behind"
    assert list(out.iterdir()) == []
    deadline = time.monotonic() + 30
    while _tasks_running("_pack_task") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _tasks_running("_pack_task") == []  # cancelled on the cluster, not left running


def test_an_unreachable_cluster_is_one_clear_line(sources: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    assert main(["pack", str(sources["file"]), "-o", f"{tmp_path}/", "--cluster", "127.0.0.1:1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("weightpack: error: cannot reach the Ray cluster at 127.0.0.1:1: ") and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_several_sources_here_each_get_their_default_name_and_ray_stays_unloaded(sources: dict[str, Path],
                                                                                 tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = ("import sys; from weightpack.cli import main; code = main(sys.argv[1:]); "
              "assert 'ray' not in sys.modules, 'ray imported'; sys.exit(code)")
    run = subprocess.run([sys.executable, "-c", script, "pack", str(sources["model"]), str(sources["file"]),
                          str(tmp_path / "missing.safetensors"), "-o", str(out)], capture_output=True, text=True)
    assert run.returncode == 1, run.stderr  # one source is missing; the others are done
    assert run.stderr.strip() == f"weightpack: error: {tmp_path / 'missing.safetensors'}: no such file or folder"
    assert "2 done, 1 failed" in run.stdout
    assert sorted(p.name for p in out.iterdir()) == ["minilm.wpk", "model.wpk"]
    assert sha256_tree(out / "model.wpk") == sha256_tree(weightpack.pack(sources["model"], tmp_path / "ref.wpk"))


def test_two_sources_with_one_destination_are_refused_before_anything_is_written(sources: dict[str, Path],
                                                                                 tmp_path: Path,
                                                                                 capsys: pytest.CaptureFixture) -> None:
    twin = tmp_path / "elsewhere" / sources["file"].name
    twin.parent.mkdir()
    twin.write_bytes(sources["file"].read_bytes())
    out = tmp_path / "out"
    assert main(["pack", str(sources["file"]), str(twin), "-o", str(out)]) == 1
    assert "several sources would be written there" in capsys.readouterr().err
    assert not out.exists()
    assert main(["pack", str(sources["file"]), str(twin), "-o", str(twin)]) == 1
    assert "is a file; several sources need a destination folder" in capsys.readouterr().err
