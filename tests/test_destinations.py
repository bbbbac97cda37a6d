"""Nothing the user owns is lost: where outputs go, what -f may replace, and folders checked whole.

Destinations follow cp/tar/zstd conventions (see weightpack/paths.py); every refusal is one line,
exit status 1, and leaves every file as it was.
"""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import weightpack
from weightpack import api, loading
from weightpack.cli import main
from weightpack.errors import WeightpackError

from .conftest import sha256_tree
from .fuzzing import small_checkpoint
from .hostile_cases import FOLDER_CASES


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small model folder as the Hub has them: one checkpoint, a config, a vocabulary."""
    model = tmp_path_factory.mktemp("small") / "model"
    model.mkdir()
    small_checkpoint(model / "model.safetensors")
    (model / "config.json").write_text('{"model_type": "bert"}')
    (model / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    return model


@pytest.fixture
def work(small_model: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(a copy of the small model, its packed folder), both in tmp_path."""
    model = tmp_path / "model"
    model.mkdir()
    for f in small_model.iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    return model, weightpack.pack(model, tmp_path / "packed")


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): ("link" if p.is_symlink() else
                                         sha256_tree(p)[p.name] if p.is_file() else "dir")
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize(("name", "setup", "fragment"), FOLDER_CASES, ids=[c[0] for c in FOLDER_CASES])
def test_folder_and_destination_cases_are_refused_leaving_everything(work: tuple[Path, Path], tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture, name: str,
                                                                     setup, fragment: str) -> None:
    args, named = setup(tmp_path, *work)
    before = _tree(tmp_path)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("weightpack: error: ") and fragment in err, err
    assert str(named) in err, err
    assert _tree(tmp_path) == before


def test_an_existing_folder_receives_a_files_output_and_keeps_its_files(work: tuple[Path, Path],
                                                                         tmp_path: Path) -> None:
    model, packed = work
    outdir = tmp_path / "outdir"
    outdir.mkdir()
    (outdir / "thesis.tex").write_text("years of work")
    assert main(["unpack", str(packed / "model.wpk"), "-o", str(outdir), "-f", "-q"]) == 0
    assert main(["pack", str(model / "model.safetensors"), "-o", str(outdir), "-f", "-q"]) == 0
    assert (outdir / "thesis.tex").read_text() == "years of work"
    assert (outdir / "model.safetensors").read_bytes() == (model / "model.safetensors").read_bytes()
    assert (outdir / "model.wpk").read_bytes() == (packed / "model.wpk").read_bytes()


def test_a_trailing_slash_means_a_folder(work: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = work
    assert main(["pack", str(model / "model.safetensors"), "-o", f"{tmp_path / 'new'}{os.sep}", "-q"]) == 0
    assert (tmp_path / "new").is_dir() and (tmp_path / "new" / "model.wpk").is_file()


def test_force_replaces_only_the_same_kind(work: tuple[Path, Path], tmp_path: Path) -> None:
    model, packed = work
    assert main(["pack", str(model), "-o", str(packed), "-f", "-q"]) == 0  # a packed folder by a packed folder
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["pack", str(model), "-o", str(empty), "-f", "-q"]) == 0  # an empty folder
    restored = weightpack.unpack(packed, tmp_path / "restored")
    assert main(["unpack", str(packed), "-o", str(restored), "-f", "-q"]) == 0  # an earlier output of unpack
    assert sha256_tree(restored) == sha256_tree(model)
    file_out = tmp_path / "m.safetensors"
    file_out.write_bytes(b"old")
    assert main(["unpack", str(packed / "model.wpk"), "-o", str(file_out), "-f", "-q"]) == 0  # a file by a file
    assert file_out.read_bytes() == (model / "model.safetensors").read_bytes()


def test_weightpack_json_records_every_file(work: tuple[Path, Path]) -> None:
    import json

    _, packed = work
    doc = json.loads((packed / "weightpack.json").read_text())
    assert set(doc["files"]) == {"config.json", "vocab.txt"} and set(doc["archives"]) == {"model.wpk"}
    assert doc["files"]["vocab.txt"]["size"] == 12 and len(doc["files"]["vocab.txt"]["sha256"]) == 64
    assert api.verify(packed) == {"archives": 1, "files": 2}


def test_symlinked_files_and_folders_are_followed(small_model: Path, tmp_path: Path) -> None:
    """A Hugging Face cache snapshot links its files; a sub-folder may be a link too. Neither is dropped."""
    model = tmp_path / "model"
    model.mkdir()
    for f in small_model.iterdir():
        (model / f.name).symlink_to(f)
    extra = tmp_path / "elsewhere"
    extra.mkdir()
    (extra / "special_tokens.json").write_text("{}")
    (model / "tokenizer").symlink_to(extra)
    packed = weightpack.pack(model, tmp_path / "packed")
    assert (packed / "tokenizer" / "special_tokens.json").is_file()
    restored = weightpack.unpack(packed, tmp_path / "restored")
    assert sha256_tree(restored) == sha256_tree(model)


def test_load_folder_refuses_what_is_not_a_packed_folder(work: tuple[Path, Path], tmp_path: Path) -> None:
    model, packed = work
    with pytest.raises(WeightpackError, match="not a packed folder"):
        weightpack.load_folder(model, framework="np")
    with pytest.raises(WeightpackError, match="no such folder"):
        weightpack.load_folder(tmp_path / "missing", framework="np")
    assert set(weightpack.load_folder(packed, framework="np")) == set(weightpack.load_file(packed / "model.wpk",
                                                                                         framework="np"))


def test_info_of_a_packed_folder_lists_each_archive_then_totals(work: tuple[Path, Path],
                                                                capsys: pytest.CaptureFixture) -> None:
    _, packed = work
    assert main(["info", str(packed)]) == 0
    out = capsys.readouterr().out
    assert "model.wpk" in out and "1 archive and 2 other files" in out


def test_a_stale_temporary_from_a_killed_run_is_removed_by_the_next(minilm_dirs: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    dst = out / "m.wpk"
    proc = subprocess.Popen([sys.executable, "-m", "weightpack", "pack", str(minilm_dirs["F32"] / "model.safetensors"),
                             "-o", str(dst), "-j", "1"])
    deadline = time.monotonic() + 60
    while not any(out.iterdir()) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if dst.exists():
        pytest.skip("pack finished before the signal arrived")
    assert [p.name.endswith(".wpk-partial") for p in out.iterdir()] == [True]  # what SIGKILL leaves
    other = out / ".m.wpk.otherhost.1.abc.wpk-partial"  # another machine's: not ours to judge
    other.write_bytes(b"")
    assert main(["pack", str(minilm_dirs["F32"] / "model.safetensors"), "-o", str(dst), "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [other.name, "m.wpk"]


def test_errors_name_the_users_path_not_the_temporary(bf16_file: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    """As a read-only folder answers (injected: tests run as root, whom permissions do not stop)."""
    def refuse(path, mode="r"):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(api, "open", refuse, raising=False)
    dst = tmp_path / "ro" / "m.wpk"
    assert main(["pack", str(bf16_file), "-o", str(dst)]) == 1
    err = capsys.readouterr().err
    assert f"{dst}: Permission denied" in err and "partial" not in err, err


def test_unpack_progress_counts_output_bytes(bf16_wpk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    totals = []
    real = api._bar
    monkeypatch.setattr(api, "_bar", lambda total, enabled, desc: totals.append(total) or real(total, False, desc))
    weightpack.unpack(bf16_wpk, tmp_path / "m.safetensors")
    assert totals == [(tmp_path / "m.safetensors").stat().st_size]


def test_info_shows_a_plane_whose_chunks_are_all_raw_as_raw(bf16_wpk: Path) -> None:
    for tensor in weightpack.info(bf16_wpk)["tensors"]:
        for plane in tensor["planes"]:
            if plane["codec"] == "rans":
                assert plane["chunks"]["plane"] + plane["chunks"]["own"] > 0, (tensor["name"], plane)


def test_the_api_is_listed_and_defaults_agree() -> None:
    assert {"pack", "unpack", "verify", "info", "safe_open", "load_file", "load_folder", "hub", "cluster"} <= set(
        dir(weightpack))
    defaults = {inspect.signature(f).parameters["framework"].default
                for f in (loading.safe_open, loading.load_file, loading.load_folder)}
    assert defaults == {"pt"}


def test_help_states_exit_codes_and_bad_threads_get_the_subcommands_usage() -> None:
    run = [sys.executable, "-m", "weightpack"]
    assert "130 interrupted" in subprocess.run([*run, "--help"], capture_output=True, text=True).stdout
    assert "130 interrupted" in subprocess.run([*run, "unpack", "--help"], capture_output=True, text=True).stdout
    result = subprocess.run([*run, "unpack", "x.wpk", "-j", "0"], capture_output=True, text=True)
    assert result.returncode == 2 and "usage: weightpack unpack" in result.stderr
