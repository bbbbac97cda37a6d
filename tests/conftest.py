"""Shared fixtures: the real all-MiniLM-L6-v2 checkpoint in F32, BF16 and F16, written once per session."""

from __future__ import annotations

import os

# numba.cuda runs the GPU kernels in its simulator unless told otherwise (CI has no GPU); on a GPU
# machine, NUMBA_ENABLE_CUDASIM=0 runs the same tests on the hardware. Read when numba is imported.
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import hashlib
from pathlib import Path

import pytest

from weightpack import minilm
from weightpack.paths import walk


def sha256_tree(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``folder`` (or of the file itself), links followed."""
    if folder.is_file():
        return {folder.name: hashlib.sha256(folder.read_bytes()).hexdigest()}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in walk(folder)}


@pytest.fixture(scope="session")
def minilm_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{dtype: model folder} for F32 (the published file), BF16 and F16 (rounded to nearest even)."""
    root = tmp_path_factory.mktemp("minilm")
    return {dtype: minilm.write_variant(root / dtype, dtype) for dtype in minilm.DTYPES}


@pytest.fixture(scope="session")
def bf16_file(minilm_dirs: dict[str, Path]) -> Path:
    return minilm_dirs["BF16"] / minilm.CHECKPOINT


@pytest.fixture(scope="session")
def bf16_wpk(bf16_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A packed BF16 MiniLM, shared read-only by tests that inspect or damage copies of it."""
    import weightpack

    return weightpack.pack(bf16_file, tmp_path_factory.mktemp("packed") / "model.wpk")
