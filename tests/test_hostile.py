"""Bad input: every damaged, truncated or lying file is refused with one line and exit 1, nothing left behind."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import weightpack
from weightpack.cli import main

from .fuzzing import check, mutate, small_checkpoint
from .hostile_cases import ARCHIVE_CASES, SAFETENSORS_CASES

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    """(original checkpoint bytes, its archive bytes) for a small real checkpoint using every codec."""
    root = tmp_path_factory.mktemp("small")
    src = small_checkpoint(root / "small.safetensors")
    return src.read_bytes(), weightpack.pack(src, root / "small.wpk").read_bytes()


def _refused(capsys: pytest.CaptureFixture, args: list[str], fragment: str, path: Path) -> None:
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("weightpack: error: "), err
    assert str(path) in err and fragment in err, err


@pytest.mark.parametrize(("name", "edit", "fragment"), ARCHIVE_CASES, ids=[c[0] for c in ARCHIVE_CASES])
def test_damaged_archives_are_refused(small: tuple[bytes, bytes], tmp_path: Path, capsys: pytest.CaptureFixture,
                                      name: str, edit, fragment: str) -> None:
    bad = tmp_path / "bad.wpk"
    bad.write_bytes(edit(small[1]))
    _refused(capsys, ["verify", str(bad)], fragment, bad)
    _refused(capsys, ["unpack", str(bad), "-o", str(tmp_path / "out.safetensors")], fragment, bad)
    assert [p.name for p in tmp_path.iterdir()] == ["bad.wpk"]


@pytest.mark.parametrize(("name", "content", "fragment"), SAFETENSORS_CASES, ids=[c[0] for c in SAFETENSORS_CASES])
def test_malformed_checkpoints_are_refused_by_pack(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                   name: str, content: bytes, fragment: str) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(content)
    _refused(capsys, ["pack", str(bad)], fragment, bad)
    assert [p.name for p in tmp_path.iterdir()] == ["bad.safetensors"]


def test_a_bad_file_inside_a_folder_leaves_no_folder_behind(bf16_file: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "model"
    src.mkdir()
    (src / "a.safetensors").write_bytes(bf16_file.read_bytes())
    (src / "b.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    _refused(capsys, ["pack", str(src), "-o", str(tmp_path / "out")], "not valid JSON", src / "b.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**64 - 1))
def test_any_mutation_is_refused_or_harmless(small: tuple[bytes, bytes], tmp_path: Path, seed: int) -> None:
    check(mutate(small[1], random.Random(seed)), small[0], tmp_path)


def test_fuzz_real_archive_for_twenty_seconds(small: tuple[bytes, bytes], tmp_path: Path) -> None:
    rng, deadline, outcomes = random.Random(1234), time.monotonic() + 20, {"refused": 0, "restored": 0}
    while time.monotonic() < deadline:
        outcomes[check(mutate(small[1], rng), small[0], tmp_path)] += 1
    assert outcomes["refused"] > 100


def test_fuzz_with_numba_bounds_checking(tmp_path: Path) -> None:
    """The same fuzzer with every array access of the jitted kernels bounds-checked (IndexError = failure)."""
    env = dict(os.environ, NUMBA_BOUNDSCHECK="1", NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))
    result = subprocess.run([sys.executable, str(REPO / "tools" / "fuzz.py"), "--seconds", "15", "--seed", "7"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 failures" in result.stdout
