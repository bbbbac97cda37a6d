"""Start-up: a short command loads what it needs, and nothing more (see ``weightpack.jit``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# Modules numba imports only to compile (its "registry refresh"): unicode, typed containers, and
# the array-math implementations, whose import probes scipy's BLAS.
COMPILER_ONLY = ("numba.typed.typeddict", "numba.np.arraymath", "numba.np.linalg")


def loaded_after(*args: str) -> set[str]:
    """The modules a child process has loaded once ``weightpack ARGS`` has run in it."""
    code = ("import sys\nfrom weightpack.cli import main\nstatus = main(sys.argv[1:])\n"
            "print(' '.join(sys.modules))\nsys.exit(status)")
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_unpacking_with_a_warm_cache_loads_no_compiler(bf16_wpk: Path, tmp_path: Path) -> None:
    loaded_after("unpack", str(bf16_wpk), "-o", str(tmp_path / "first.safetensors"), "-q")  # fills the cache
    loaded = loaded_after("unpack", str(bf16_wpk), "-o", str(tmp_path / "second.safetensors"), "-q")
    assert "weightpack.rans" in loaded and not loaded & set(COMPILER_ONLY)
    assert (tmp_path / "second.safetensors").stat().st_size > 0


def test_info_reads_the_index_without_loading_numba(bf16_wpk: Path) -> None:
    loaded = loaded_after("info", str(bf16_wpk), "-q")
    assert "weightpack.describe" in loaded and "numba" not in loaded
