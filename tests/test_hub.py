"""The Hub hook, with the real huggingface_hub client against a Hub-compatible server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import HfApi

import weightpack
from weightpack import hub as wh
from weightpack.errors import WeightpackError

from .conftest import sha256_tree
from .hub_server import FakeHub

TOKEN = "hf_weightpack_test"


@pytest.fixture
def hub() -> FakeHub:
    with FakeHub() as server:
        yield server
    assert server.unknown == [], f"the client called endpoints the test server lacks: {server.unknown}"


def _pull(hub: FakeHub, tmp_path: Path, repo: str, dst: str = "pulled", **kw) -> Path:
    return wh.pull(repo, tmp_path / dst, token=TOKEN, endpoint=hub.url, cache_dir=tmp_path / "cache", **kw)


def test_push_then_pull_restores_the_model_byte_for_byte(hub: FakeHub, minilm_dirs: dict[str, Path],
                                                          tmp_path: Path) -> None:
    src = minilm_dirs["BF16"]
    wh.push(src, "alice/minilm", token=TOKEN, endpoint=hub.url)
    stored = hub.repos["alice/minilm"].commits[hub.repos["alice/minilm"].branches["main"]]
    assert "model.wpk" in stored and "model.safetensors" not in stored
    assert len(stored["model.wpk"]) < 0.67 * (src / "model.safetensors").stat().st_size
    assert json.loads(stored["weightpack.json"])["archives"]["model.wpk"]["original"] == "model.safetensors"
    pulled = _pull(hub, tmp_path, "alice/minilm")
    assert sha256_tree(pulled) == sha256_tree(src)


def test_pull_of_a_repo_that_is_not_packed_just_downloads_it(hub: FakeHub, minilm_dirs: dict[str, Path],
                                                              tmp_path: Path) -> None:
    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo("bob/plain")
    api.upload_folder(repo_id="bob/plain", folder_path=minilm_dirs["F16"])
    pulled = _pull(hub, tmp_path, "bob/plain")
    assert sha256_tree(pulled) == sha256_tree(minilm_dirs["F16"])
    assert not any(p.is_symlink() for p in pulled.rglob("*")), "pull must give real files, not cache links"


def test_revisions_are_pinned(hub: FakeHub, minilm_dirs: dict[str, Path], tmp_path: Path) -> None:
    first = wh.push(minilm_dirs["BF16"], "alice/versions", token=TOKEN, endpoint=hub.url)
    wh.push(minilm_dirs["F16"], "alice/versions", token=TOKEN, endpoint=hub.url, commit_message="F16 now")
    wh.push(minilm_dirs["F32"], "alice/versions", token=TOKEN, endpoint=hub.url, revision="f32-branch")
    assert sha256_tree(_pull(hub, tmp_path, "alice/versions", "v1", revision=first)) == \
        sha256_tree(minilm_dirs["BF16"])
    assert sha256_tree(_pull(hub, tmp_path, "alice/versions", "main")) == sha256_tree(minilm_dirs["F16"])
    assert sha256_tree(_pull(hub, tmp_path, "alice/versions", "branch", revision="f32-branch")) == \
        sha256_tree(minilm_dirs["F32"])


def test_a_download_cut_off_mid_file_leaves_nothing_and_says_so(hub: FakeHub, minilm_dirs: dict[str, Path],
                                                                tmp_path: Path) -> None:
    wh.push(minilm_dirs["F16"], "alice/flaky", token=TOKEN, endpoint=hub.url)
    hub.cut_off.add("model.wpk")
    with pytest.raises(WeightpackError, match="alice/flaky") as err:
        _pull(hub, tmp_path, "alice/flaky")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "pulled").exists()
    hub.cut_off.clear()  # the connection is back: the same call now succeeds from a clean state
    assert sha256_tree(_pull(hub, tmp_path, "alice/flaky")) == sha256_tree(minilm_dirs["F16"])


def test_missing_repo_and_missing_revision_are_clear_errors(hub: FakeHub, minilm_dirs: dict[str, Path],
                                                            tmp_path: Path) -> None:
    with pytest.raises(WeightpackError, match="nobody/nothing: repository not found"):
        _pull(hub, tmp_path, "nobody/nothing")
    wh.push(minilm_dirs["F16"], "alice/one", token=TOKEN, endpoint=hub.url)
    with pytest.raises(WeightpackError, match="alice/one: revision not found"):
        _pull(hub, tmp_path, "alice/one", revision="no-such-branch")
    assert not (tmp_path / "pulled").exists()


def _cli(hub: FakeHub, tmp_path: Path, *args: str, offline: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_XET="1",
               HF_TOKEN=TOKEN, HF_HUB_OFFLINE="1" if offline else "0")
    return subprocess.run([sys.executable, "-m", "weightpack", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def test_cli_push_and_pull_and_offline_mode(hub: FakeHub, minilm_dirs: dict[str, Path], tmp_path: Path) -> None:
    packed = weightpack.pack(minilm_dirs["BF16"], tmp_path / "packed")  # an already packed folder is pushed as is
    result = _cli(hub, tmp_path, "push", str(packed), "carol/cli", "--commit-message", "from the CLI", "-q")
    assert result.returncode == 0 and result.stderr == "", result.stderr  # -q: huggingface_hub's bars too
    result = _cli(hub, tmp_path, "pull", "carol/cli", "-o", str(tmp_path / "out"), "--json")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert json.loads(result.stdout)["destination"] == str(tmp_path / "out")
    assert sha256_tree(tmp_path / "out") == sha256_tree(minilm_dirs["BF16"])
    hub.server.shutdown()  # the Hub is gone: offline mode serves the cached snapshot
    result = _cli(hub, tmp_path, "pull", "carol/cli", "-o", str(tmp_path / "offline"), offline=True)
    assert result.returncode == 0, result.stderr
    assert sha256_tree(tmp_path / "offline") == sha256_tree(minilm_dirs["BF16"])
    result = _cli(hub, tmp_path, "pull", "carol/never-pulled", "-o", str(tmp_path / "x"), offline=True)
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "carol/never-pulled" in result.stderr


def test_pulled_folder_loads_in_transformers(hub: FakeHub, minilm_dirs: dict[str, Path], tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    wh.push(minilm_dirs["F32"], "alice/tf", token=TOKEN, endpoint=hub.url)
    pulled = _pull(hub, tmp_path, "alice/tf")
    model = transformers.AutoModel.from_pretrained(pulled)
    reference = transformers.AutoModel.from_pretrained(minilm_dirs["F32"])
    ids = torch.tensor([[101, 7592, 2088, 102]])
    with torch.no_grad():
        assert torch.equal(model(ids).last_hidden_state, reference(ids).last_hidden_state)


def test_a_damaged_packed_folder_is_never_pushed(hub: FakeHub, minilm_dirs: dict[str, Path], tmp_path: Path) -> None:
    packed = weightpack.pack(minilm_dirs["F16"], tmp_path / "packed")
    data = bytearray((packed / "model.wpk").read_bytes())
    data[1000] ^= 0x40
    (packed / "model.wpk").write_bytes(bytes(data))
    with pytest.raises(WeightpackError, match="checksum mismatch"):
        wh.push(packed, "alice/damaged", token=TOKEN, endpoint=hub.url)
    assert "alice/damaged" not in hub.repos


def test_a_delta_folder_is_pushed_and_pulled_with_its_base(hub: FakeHub, minilm_dirs: dict[str, Path],
                                                           tmp_path: Path) -> None:
    from weightpack import minilm
    from weightpack.safetensors_layout import write

    base = minilm_dirs["BF16"]
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    write(tuned / "model.safetensors", minilm.finetune(minilm.load(base / minilm.CHECKPOINT), 0.01), {"format": "pt"})
    (tuned / "config.json").write_bytes((base / "config.json").read_bytes())
    wh.push(tuned, "dave/tuned", token=TOKEN, endpoint=hub.url, base=base)  # packed on the fly against it
    assert sha256_tree(_pull(hub, tmp_path, "dave/tuned", base=base)) == sha256_tree(tuned)
    packed = weightpack.pack(tuned, tmp_path / "packed", base=base)  # packed first: verified against it
    result = _cli(hub, tmp_path, "push", str(packed), "dave/tuned2", "--base", str(base), "-q")
    assert result.returncode == 0, result.stderr
    result = _cli(hub, tmp_path, "pull", "dave/tuned2", "-o", str(tmp_path / "out"), "--base", str(base), "-q")
    assert result.returncode == 0, result.stderr
    assert sha256_tree(tmp_path / "out") == sha256_tree(tuned)
    result = _cli(hub, tmp_path, "pull", "dave/tuned2", "-o", str(tmp_path / "nobase"), "-q")
    assert result.returncode == 1 and "--base" in result.stderr and not (tmp_path / "nobase").exists()


def test_pull_refuses_a_repo_whose_manifest_lists_a_missing_file(hub: FakeHub, minilm_dirs: dict[str, Path],
                                                                 tmp_path: Path) -> None:
    wh.push(minilm_dirs["F16"], "erin/incomplete", token=TOKEN, endpoint=hub.url)
    repo = hub.repos["erin/incomplete"]
    files = dict(repo.commits[repo.branches["main"]])
    del files["vocab.txt"]
    repo.commit(files, "main", "vocab.txt lost")
    with pytest.raises(WeightpackError, match=r"erin/incomplete.*missing vocab\.txt") as err:
        _pull(hub, tmp_path, "erin/incomplete")
    assert "\n" not in str(err.value) and not (tmp_path / "pulled").exists()


def test_an_archive_failing_its_checksum_mid_stream_leaves_nothing_and_the_cache_usable(
        hub: FakeHub, minilm_dirs: dict[str, Path], tmp_path: Path) -> None:
    wh.push(minilm_dirs["BF16"], "erin/damaged", token=TOKEN, endpoint=hub.url)
    repo = hub.repos["erin/damaged"]
    good = dict(repo.commits[repo.branches["main"]])
    bad = bytearray(good["model.wpk"])
    bad[len(bad) // 3] ^= 0x01
    repo.commit({**good, "model.wpk": bytes(bad)}, "main", "damaged in transit")
    with pytest.raises(WeightpackError, match=r"erin/damaged: .*model\.wpk.*(checksum|inconsistent)") as err:
        _pull(hub, tmp_path, "erin/damaged")
    assert "\n" not in str(err.value) and not (tmp_path / "pulled").exists()
    assert not list(tmp_path.glob(".pulled*"))  # no temporary left either
    repo.commit(good, "main", "fixed")  # the next pull works, through the same cache
    assert sha256_tree(_pull(hub, tmp_path, "erin/damaged")) == sha256_tree(minilm_dirs["BF16"])


def test_a_truncated_archive_in_a_repo_is_named_with_the_repo(hub: FakeHub, minilm_dirs: dict[str, Path],
                                                              tmp_path: Path) -> None:
    wh.push(minilm_dirs["F16"], "erin/cut", token=TOKEN, endpoint=hub.url)
    repo = hub.repos["erin/cut"]
    files = dict(repo.commits[repo.branches["main"]])
    repo.commit({**files, "model.wpk": files["model.wpk"][:len(files["model.wpk"]) // 2]}, "main", "cut")
    with pytest.raises(WeightpackError, match=r"^erin/cut: model\.wpk: .*truncated") as err:
        _pull(hub, tmp_path, "erin/cut")
    assert "\n" not in str(err.value) and not (tmp_path / "pulled").exists()


def test_from_pretrained_refuses_a_repo_whose_config_differs_from_its_manifest(
        hub: FakeHub, minilm_dirs: dict[str, Path], tmp_path: Path) -> None:
    """The config and tokenizer build the model as much as the weights do: checked as ``pull`` checks them."""
    transformers = pytest.importorskip("transformers")
    wh.push(minilm_dirs["BF16"], "erin/edited", token=TOKEN, endpoint=hub.url)
    repo = hub.repos["erin/edited"]
    files = dict(repo.commits[repo.branches["main"]])
    repo.commit({**files, "config.json": files["config.json"].replace(b'"gelu"', b'"relu"')}, "main", "edited")
    with pytest.raises(WeightpackError, match=r"^erin/edited: .*config\.json: differs from the file recorded"):
        weightpack.from_pretrained(transformers.AutoModel, "erin/edited", token=TOKEN, endpoint=hub.url,
                                   cache_dir=tmp_path / "cache")
    repo.commit({**files, "extra.txt": b"unlisted"}, "main", "added")
    with pytest.raises(WeightpackError, match=r"^erin/edited: .*not listed in weightpack\.json: extra\.txt"):
        weightpack.from_pretrained(transformers.AutoModel, "erin/edited", token=TOKEN, endpoint=hub.url,
                                   cache_dir=tmp_path / "cache")


def test_from_pretrained_builds_the_model_from_a_packed_repo(hub: FakeHub, minilm_dirs: dict[str, Path],
                                                             tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    wh.push(minilm_dirs["BF16"], "erin/model", token=TOKEN, endpoint=hub.url)
    model = weightpack.from_pretrained(transformers.AutoModel, "erin/model", token=TOKEN, endpoint=hub.url,
                                       cache_dir=tmp_path / "cache")
    reference = transformers.AutoModel.from_pretrained(minilm_dirs["BF16"])
    assert model.dtype == torch.bfloat16  # the checkpoint's dtype, as transformers gives it
    got, want = model.state_dict(), reference.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert not list((tmp_path / "cache").rglob("*.safetensors"))  # nothing unpacked to disk


def test_an_archive_is_decoded_while_it_downloads(hub: FakeHub, minilm_dirs: dict[str, Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Streaming: stripes are decoded as their bytes land in the cache, not after the whole file."""
    wh.push(minilm_dirs["BF16"], "erin/stream", token=TOKEN, endpoint=hub.url)
    seen = []
    wait = wh._Arrival.__call__
    monkeypatch.setattr(wh._Arrival, "__call__", lambda self, end: seen.append(self.download.done()) or wait(self, end))
    hub.rate = 40e6  # ~0.75 s for the 30 MB archive
    assert sha256_tree(_pull(hub, tmp_path, "erin/stream")) == sha256_tree(minilm_dirs["BF16"])
    assert False in seen, "no stripe was read before the download finished"


def test_the_next_shard_downloads_while_the_one_before_is_still_decoding(
        hub: FakeHub, minilm_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sharded model: each archive's download starts once the one before it has downloaded, not once
    it is decoded, so the link carries the next shard while the last stripes of a shard decode; the
    first one's as soon as the manifest is checked, while the decoder is still being loaded."""
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    for k, dtype in enumerate(("BF16", "F16"), 1):  # two different checkpoints, so that neither is a copy
        shutil.copyfile(minilm_dirs[dtype] / "model.safetensors", sharded / f"model-0000{k}-of-00002.safetensors")
    wh.push(sharded, "erin/sharded", token=TOKEN, endpoint=hub.url)
    under_way = []
    opened = wh.RepoFiles.archive
    monkeypatch.setattr(wh.RepoFiles, "archive",
                        lambda self, name, *a: under_way.append(name in self._downloads) or opened(self, name, *a))
    hub.rate = 100e6
    assert sha256_tree(_pull(hub, tmp_path, "erin/sharded")) == sha256_tree(sharded)
    assert under_way == [True, True]


def test_a_pull_downloads_the_weights_and_the_other_files_before_its_decoder_is_ready(
        hub: FakeHub, minilm_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing a pull downloads waits for numba's start-up: by the time the first archive is opened for
    decoding, it and every other file of the repo are downloading (or done)."""
    wh.push(minilm_dirs["BF16"], "erin/early", token=TOKEN, endpoint=hub.url)
    under_way = []
    opened = wh.RepoFiles.archive
    monkeypatch.setattr(wh.RepoFiles, "archive",
                        lambda self, name, *a: under_way.append(set(self._downloads)) or opened(self, name, *a))
    assert sha256_tree(_pull(hub, tmp_path, "erin/early")) == sha256_tree(minilm_dirs["BF16"])
    others = {p.relative_to(minilm_dirs["BF16"]).as_posix() for p in minilm_dirs["BF16"].rglob("*")
              if p.is_file() and p.suffix != ".safetensors"}
    assert under_way == [others | {"model.wpk"}]


def test_from_pretrained_downloads_the_weights_beside_the_other_files(
        hub: FakeHub, minilm_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    transformers = pytest.importorskip("transformers")
    wh.push(minilm_dirs["BF16"], "erin/beside", token=TOKEN, endpoint=hub.url)
    started = []
    make, download = wh.RepoFiles.__init__, huggingface_hub.snapshot_download
    monkeypatch.setattr(wh.RepoFiles, "__init__",
                        lambda self, *a, **k: started.append("weights") or make(self, *a, **k))
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda *a, **k: started.append("others") or download(*a, **k))
    weightpack.from_pretrained(transformers.AutoModel, "erin/beside", token=TOKEN, endpoint=hub.url,
                               cache_dir=tmp_path / "cache")
    assert started == ["weights", "others"]


def test_from_pretrained_decodes_each_archive_while_it_downloads(
        hub: FakeHub, minilm_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The time to a ready model: weights decode into memory as their bytes arrive, not after the
    whole repo has downloaded."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    wh.push(minilm_dirs["BF16"], "erin/streamed-model", token=TOKEN, endpoint=hub.url)
    seen = []
    wait = wh._Arrival.__call__
    monkeypatch.setattr(wh._Arrival, "__call__", lambda self, end: seen.append(self.download.done()) or wait(self, end))
    hub.rate = 40e6  # ~0.75 s for the 30 MB archive
    model = weightpack.from_pretrained(transformers.AutoModel, "erin/streamed-model", token=TOKEN, endpoint=hub.url,
                                       cache_dir=tmp_path / "cache")
    reference = transformers.AutoModel.from_pretrained(minilm_dirs["BF16"])
    got, want = model.state_dict(), reference.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert False in seen, "no stripe was read before the download finished"
