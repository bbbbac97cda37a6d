"""Outputs appear complete or not at all: full disks, exceptions and interrupts leave nothing behind."""

from __future__ import annotations

import errno
import io
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import weightpack
from weightpack import api, wpkfile
from weightpack.cli import main
from weightpack.errors import WeightpackError


@pytest.fixture
def failing_disk(monkeypatch: pytest.MonkeyPatch):
    """Make weightpack's own output writes fail after a byte budget (fault injection at its write calls:
    the archive stream of pack, and the positioned writes of unpack's worker threads)."""
    def set_up(budget: int, error: BaseException) -> None:
        left, lock = [budget], threading.Lock()

        def spend(n: int) -> None:
            with lock:
                if left[0] < n:
                    raise error
                left[0] -= n

        class FailingFile(io.FileIO):
            def write(self, data: bytes) -> int:
                spend(len(data))
                return super().write(data)

        real_write_at = wpkfile.write_at

        def write_at(fd: int, data, offset: int) -> None:
            spend(data.nbytes)
            real_write_at(fd, data, offset)

        monkeypatch.setattr(api, "open", lambda path, mode="r": FailingFile(path, mode.replace("b", "")),
                            raising=False)
        monkeypatch.setattr(wpkfile, "write_at", write_at)
    return set_up


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("budget", [0, 1000, 2_000_000])
def test_full_disk_during_pack_leaves_nothing(bf16_file: Path, tmp_path: Path, failing_disk,
                                              capsys: pytest.CaptureFixture, budget: int) -> None:
    failing_disk(budget, OSError(errno.ENOSPC, "No space left on device"))
    assert main(["pack", str(bf16_file), "-o", str(tmp_path / "m.wpk")]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and str(bf16_file) in err and err.count("\n") == 1
    assert _leftovers(tmp_path) == []


def test_full_disk_during_folder_unpack_leaves_nothing(minilm_dirs: dict[str, Path], tmp_path: Path,
                                                       failing_disk) -> None:
    packed = weightpack.pack(minilm_dirs["F16"], tmp_path / "packed")
    failing_disk(5_000_000, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(WeightpackError, match="No space left on device"):
        weightpack.unpack(packed, tmp_path / "restored")
    assert _leftovers(tmp_path) == ["packed"]


def test_interrupt_mid_write_leaves_nothing(bf16_wpk: Path, tmp_path: Path, failing_disk,
                                            capsys: pytest.CaptureFixture) -> None:
    failing_disk(3_000_000, KeyboardInterrupt())
    assert main(["unpack", str(bf16_wpk), "-o", str(tmp_path / "m.safetensors")]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert _leftovers(tmp_path) == []


def test_file_size_limit_from_the_kernel_is_a_clean_error(bf16_file: Path, tmp_path: Path) -> None:
    """A real write failure from the kernel (EFBIG under RLIMIT_FSIZE), through the real entry point."""
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (4_000_000, 4_000_000)); "
            "from weightpack.cli import main; sys.exit(main(sys.argv[1:]))")
    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run([sys.executable, "-c", code, "pack", str(bf16_file), "-o", str(out / "m.wpk")],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "File too large" in result.stderr and "Traceback" not in result.stderr
    assert _leftovers(out) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_real_signal_during_pack_leaves_nothing(minilm_dirs: dict[str, Path], tmp_path: Path, sig: int) -> None:
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "weightpack", "pack", str(minilm_dirs["F32"]), "-o",
                             str(out / "packed"), "-j", "1"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(out.iterdir()) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("pack finished before the signal arrived")
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    assert _leftovers(out) == []
