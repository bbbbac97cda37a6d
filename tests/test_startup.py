"""Start-up: a short command loads what it needs, and nothing more (see ``weightpack.jit``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from weightpack import minilm

# Modules numba imports only to compile (its "registry refresh"): unicode, typed containers, and
# the array-math implementations, whose import probes scipy's BLAS.
COMPILER_ONLY = ("numba.typed.typeddict", "numba.np.arraymath", "numba.np.linalg")


def printed(code: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> list[str]:
    """The words ``python -c CODE ARGS`` prints in a child process (``env``: its environment, if not this
    one's), which must succeed."""
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def loaded_after(*args: str, cache: Path | None = None) -> set[str]:
    """The modules a child process has loaded once ``weightpack ARGS`` has run in it (with numba's
    cache in ``cache``, if given)."""
    code = ("import sys\nfrom weightpack.cli import main\nstatus = main(sys.argv[1:])\n"
            "print(' '.join(sys.modules))\nsys.exit(status)")
    env = dict(os.environ, **({"NUMBA_CACHE_DIR": str(cache)} if cache else {}))
    return set(printed(code, *args, env=env))


# numba's array implementation (and the string code it imports): what cached code that allocates
# arrays or takes views needs, ~50 ms to import. No decoding kernel does either (see ``rans.decode``).
ARRAY_IMPLEMENTATION = ("numba.np.arrayobj", "numba.cpython.unicode")


def test_unpacking_with_a_warm_cache_loads_no_compiler(bf16_wpk: Path, tmp_path: Path) -> None:
    loaded_after("unpack", str(bf16_wpk), "-o", str(tmp_path / "first.safetensors"), "-q")  # fills the cache
    loaded = loaded_after("unpack", str(bf16_wpk), "-o", str(tmp_path / "second.safetensors"), "-q")
    assert "weightpack.rans" in loaded and not loaded & set(COMPILER_ONLY + ARRAY_IMPLEMENTATION)
    assert (tmp_path / "second.safetensors").stat().st_size > 0


def test_packing_with_a_warm_cache_loads_no_compiler_and_no_array_implementation(bf16_file: Path,
                                                                                 tmp_path: Path) -> None:
    """The coding kernels follow the decoding ones' start-up rules: nothing allocated or viewed inside."""
    loaded_after("pack", str(bf16_file), "-o", str(tmp_path / "first.wpk"), "-q")  # fills the cache
    loaded = loaded_after("pack", str(bf16_file), "-o", str(tmp_path / "second.wpk"), "-q")
    assert "weightpack.rans" in loaded and not loaded & set(COMPILER_ONLY + ARRAY_IMPLEMENTATION)


def test_help_and_usage_errors_answer_before_anything_heavy_is_imported() -> None:
    for args, status in ((["--help"], 0), (["unpack"], 2)):
        result = subprocess.run([sys.executable, "-X", "importtime", "-m", "weightpack", *args],
                                capture_output=True, text=True)
        imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line}
        assert result.returncode == status and "weightpack.cli" in imported
        assert not imported & {"numba", "numpy", "weightpack.api"}


def test_info_reads_the_index_without_loading_numba(bf16_wpk: Path) -> None:
    loaded = loaded_after("info", str(bf16_wpk), "-q")
    assert "weightpack.describe" in loaded and "numba" not in loaded


def test_a_damaged_kernel_cache_is_compiled_again_not_an_error(bf16_wpk: Path, bf16_file: Path,
                                                               tmp_path: Path) -> None:
    cache, out = tmp_path / "numba-cache", tmp_path / "m.safetensors"
    loaded_after("unpack", str(bf16_wpk), "-o", str(out), "-q", cache=cache)
    entries = sorted(cache.rglob("*.nb[ci]"))
    for k, entry in enumerate(entries):  # cut short, as by a crash or a full disk while numba wrote them
        entry.write_bytes(entry.read_bytes()[:k % 7 * 10])
    loaded_after("unpack", str(bf16_wpk), "-o", str(out), "-q", "-f", cache=cache)
    assert out.read_bytes() == bf16_file.read_bytes()
    loaded = loaded_after("unpack", str(bf16_wpk), "-o", str(out), "-q", "-f", cache=cache)  # cached anew
    assert not loaded & set(COMPILER_ONLY)


def test_other_numba_code_in_the_process_loads_as_numba_does(tmp_path: Path) -> None:
    (tmp_path / "theirs.py").write_text("from numba import njit\n\n@njit(cache=True)\ndef f(x):\n    return x + 1\n")
    code = "import sys, weightpack.jit, theirs\nassert theirs.f(1) == 2\nprint(' '.join(sys.modules))"
    env = dict(os.environ, PYTHONPATH=str(tmp_path), NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    for _ in range(2):  # compiled, then loaded from the cache
        words = printed(code, env=env, cwd=tmp_path)
    assert set(COMPILER_ONLY) <= set(words)  # numba's own loading: its full refresh


def test_a_first_run_compiles_one_rans_decoder_for_planes_of_every_width(minilm_dirs: dict[str, Path],
                                                                         tmp_path: Path) -> None:
    """Compiling is most of a first run on a new machine (a fresh container's first pull): narrow
    planes (F16's 7-bit exponent) decode through the same compiled rANS decoder as wide ones
    (BF16's 10-bit), and warming the decoder up compiles nothing that only packing uses."""
    import weightpack

    archives = [str(weightpack.pack(minilm_dirs[d] / minilm.CHECKPOINT, tmp_path / f"{d}.wpk"))
                for d in ("BF16", "F16")]
    code = ("import sys, weightpack\nfrom weightpack import entropy, rans\n"
            "from weightpack.wpkfile import warm_up_decoder\n"
            "warm_up_decoder()\nwriters = len(entropy._serialize.signatures)\n"
            "for a in sys.argv[1:]:\n    weightpack.unpack(a, a + '.out')\n"
            "print(len(rans._decode.signatures), writers)")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "empty-cache"))
    assert printed(code, *archives, env=env) == ["1", "0"]


def test_a_first_pack_compiles_one_rans_encoder_and_one_checksum_kernel(tmp_path: Path) -> None:
    """Packing codes uint8 planes (F16's 7-bit exponent symbols, an integer tensor's bytes) through the
    encoder compiled for uint16 ones, and checksums zstd chunks (a header) with the kernel compiled for
    every other checksum: a first pack on a new machine compiles each once."""
    import numpy as np

    from weightpack.safetensors_layout import write

    rng = np.random.default_rng(0)
    weights = (rng.standard_normal(1 << 16) * 0.02).astype(np.float32)
    write(tmp_path / "m.safetensors", {"f16": ("F16", (256, 256), weights.astype(np.float16).tobytes()),
                                       "bf16": ("BF16", (256, 256), minilm.to_bf16(weights).tobytes()),
                                       "ids": ("I64", (1, 4096), np.arange(4096, dtype=np.int64).tobytes())})
    code = ("import sys, weightpack\nfrom weightpack import checksum, rans\n"
            "weightpack.pack(sys.argv[1], sys.argv[1] + '.wpk')\n"
            "print(len(rans._encode.signatures), len(checksum._xxh64.signatures))")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "empty-cache"))
    assert printed(code, str(tmp_path / "m.safetensors"), env=env) == ["1", "1"]


def test_numba_imported_beside_other_threads_skips_what_it_only_probes() -> None:
    """numba's import probes SciPy and PyYAML (see ``jit._import_numba``); imported on a thread beside others,
    as ``pull`` imports it beside its first Hub requests, it still goes without them."""
    code = ("import sys, threading\n"
            "threading.Thread(target=threading.Event().wait, daemon=True).start()\n"
            "loader = threading.Thread(target=__import__, args=('weightpack.jit',))\n"
            "loader.start(); loader.join()\n"
            "print('weightpack.jit' in sys.modules, 'scipy' in sys.modules, 'yaml' in sys.modules)")
    assert printed(code) == ["True", "False", "False"]


def test_what_numbas_import_skips_is_hidden_from_its_thread_only() -> None:
    """Another thread importing SciPy or PyYAML while numba is imported gets it, as a user's thread would."""
    code = ("import importlib, sys, threading\n"
            "from weightpack.jit import _Absent\n"
            "sys.meta_path.insert(0, _Absent(['colorsys']))\n"
            "try:\n"
            "    importlib.import_module('colorsys')\n"
            "    print('imported')\n"
            "except ModuleNotFoundError:\n"
            "    print('absent')\n"
            "other = threading.Thread(target=importlib.import_module, args=('colorsys',))\n"
            "other.start(); other.join()\n"
            "print('colorsys' in sys.modules)")
    assert printed(code) == ["absent", "True"]


def test_a_warm_unpack_starts_nothing_only_other_numba_code_needs(bf16_wpk: Path, tmp_path: Path) -> None:
    """The kernels allocate nothing, so they are compiled without numba's runtime and loading them does not
    start it (an LLVM compile of its helpers, ~45 ms of a short command); nor do their first calls scan
    the installed packages for numba extensions (~45 ms) or import ``numpy.ma`` (~20 ms): see
    ``weightpack.jit``."""
    code = ("import sys\nfrom weightpack.cli import main\nassert main(sys.argv[1:]) == 0\n"
            "from numba.core import entrypoints\nfrom numba.core.runtime import rtsys\n"
            "print(rtsys._init, entrypoints._already_initialized, 'numpy.ma' in sys.modules)")
    for name in ("first", "second"):  # the first fills the cache
        words = printed(code, "unpack", str(bf16_wpk), "-o", str(tmp_path / f"{name}.safetensors"), "-q")
    assert words == ["False", "False", "False"]
    assert (tmp_path / "second.safetensors").read_bytes() == (tmp_path / "first.safetensors").read_bytes()


def test_a_cached_kernel_that_needs_numbas_runtime_gets_it(tmp_path: Path) -> None:
    """A cache entry whose code calls numba's runtime (compiled by another version whose source files kept
    their stamps) starts it before it is linked: linked without it, the kernel would crash the process."""
    (tmp_path / "allocating.py").write_text(
        "import numba\nimport numpy as np\n\n\n@numba.njit(cache=True)\ndef ones(n):\n    return np.ones(n)\n")
    code = ("import sys, weightpack.jit\nweightpack.__path__.append(sys.argv[1])  # a kernel of weightpack's own\n"
            "from weightpack import allocating\n"
            "print(allocating.ones(3).sum(), sum(allocating.ones.stats.cache_hits.values()))")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    for hits in ("0", "1"):  # compiled, then loaded from the cache
        assert printed(code, str(tmp_path), env=env) == ["3.0", hits]


def test_the_program_gives_numpys_blas_one_thread_unless_the_environment_says(bf16_wpk: Path,
                                                                              tmp_path: Path) -> None:
    """OpenBLAS starts a thread per core when numpy loads it, each spinning ~0.1 s for work weightpack never
    gives it (see ``cli.run``); a number the user set is theirs."""
    code = ("import atexit, os, sys\n"
            "atexit.register(lambda: print(os.environ.get('OPENBLAS_NUM_THREADS'), 'numpy' in sys.modules))\n"
            "sys.argv[0] = 'weightpack'\nfrom weightpack.cli import run\nrun()")
    for given, expected in ((None, "1"), ("3", "3")):
        env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
        env.update({"OPENBLAS_NUM_THREADS": given} if given else {})
        words = printed(code, "unpack", str(bf16_wpk), "-o", str(tmp_path / f"{expected}.safetensors"), "-q",
                        env=env)
        assert words == [expected, "True"]
