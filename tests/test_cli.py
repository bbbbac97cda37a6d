"""The command line: what each command prints, writes and returns."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from weightpack.cli import main


def run(*args: str) -> subprocess.CompletedProcess:
    """The real entry point in a child process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "weightpack", *args], capture_output=True, text=True)


def test_pack_unpack_verify_info(bf16_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    wpk, back = tmp_path / "m.wpk", tmp_path / "m.safetensors"
    assert main(["pack", str(bf16_file), "-o", str(wpk)]) == 0
    assert "packed" in capsys.readouterr().out
    assert main(["verify", str(wpk)]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["unpack", str(wpk), "-o", str(back), "-q"]) == 0
    assert capsys.readouterr().out == ""
    assert back.read_bytes() == bf16_file.read_bytes()
    assert main(["info", str(wpk)]) == 0
    out = capsys.readouterr().out
    assert "plane bound" in out and "exponent_top:rans" in out


def test_info_json_reports_bound_and_achieved_bits_per_plane(bf16_wpk: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["info", str(bf16_wpk), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    weight = next(t for t in report["tensors"] if t["name"].endswith("query.weight"))
    head = weight["planes"][0]
    assert head["plane"] == "exponent_top" and head["codec"].startswith("rans")
    assert abs(head["bits"] - head["bound_bits"]) < 0.05 and head["chunks"]["plane"] + head["chunks"]["own"] >= 1
    embedding = next(t for t in report["tensors"] if t["name"] == "embeddings.word_embeddings.weight")
    assert embedding["planes"][0]["chunks"]["own"] > 0  # its rows differ in scale: chunks fit their own tables
    assert report["tensor_packed_bytes"] < report["tensor_bound_bytes"]  # below the per-tensor order-0 limit


def test_pack_json_summary(bf16_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["pack", str(bf16_file), "-o", str(tmp_path / "m.wpk"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["destination_bytes"] < summary["source_bytes"]


def test_existing_output_is_kept_unless_forced(bf16_file: Path, tmp_path: Path) -> None:
    dst = tmp_path / "m.wpk"
    dst.write_bytes(b"precious")
    result = run("pack", str(bf16_file), "-o", str(dst))
    assert result.returncode == 1 and dst.read_bytes() == b"precious"
    assert result.stderr.count("\n") == 1 and str(dst) in result.stderr and "-f" in result.stderr
    assert run("pack", str(bf16_file), "-o", str(dst), "-f", "-q").returncode == 0
    assert dst.read_bytes()[:4] == b"\x89WPK"


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert run("pack").returncode == 2
    assert run("frobnicate", "x").returncode == 2
    assert run("pack", str(tmp_path), "-j", "0").returncode == 2


def test_errors_are_one_line_naming_the_file_without_traceback(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.wpk"
    bogus.write_bytes(b"this is not an archive at all, not even close" * 3)
    for args in (["unpack", str(bogus)], ["verify", str(bogus)], ["info", str(bogus)],
                 ["pack", str(tmp_path / "missing.safetensors")]):
        result = run(*args)
        assert result.returncode == 1, args
        assert result.stderr.startswith("weightpack: error: ") and result.stderr.count("\n") == 1, result.stderr
        assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bogus.wpk"]  # nothing left behind


def test_folder_defaults_mirror_each_other(minilm_dirs: dict[str, Path], tmp_path: Path) -> None:
    src = tmp_path / "model"
    src.mkdir()
    for f in minilm_dirs["F16"].iterdir():
        if f.is_file():
            (src / f.name).write_bytes(f.read_bytes())
    assert main(["pack", str(src), "-q"]) == 0
    assert (tmp_path / "model.wpk" / "model.wpk").is_file()
    assert main(["unpack", str(tmp_path / "model.wpk"), "-q"]) == 1  # model/ exists: not overwritten
    assert main(["unpack", str(tmp_path / "model.wpk"), "-q", "-f"]) == 0
    assert (src / "model.safetensors").read_bytes() == (minilm_dirs["F16"] / "model.safetensors").read_bytes()


def test_verify_of_a_folder_checks_its_manifest(minilm_dirs: dict[str, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    packed = tmp_path / "packed"
    assert main(["pack", str(minilm_dirs["F16"]), "-o", str(packed), "-q"]) == 0
    assert main(["verify", str(packed), "-q"]) == 0
    (packed / "model.wpk").rename(packed / "other.wpk")
    assert main(["verify", str(packed)]) == 1
    assert "missing model.wpk; not listed in weightpack.json: other.wpk" in capsys.readouterr().err


def test_demo_names_each_step_while_it_runs(capsys: pytest.CaptureFixture) -> None:
    """A first run is ~20 s of compiling: on a terminal the demo says what it is doing meanwhile."""
    from weightpack.demo import run_demo

    run_demo(quiet=True, progress=True)
    err = capsys.readouterr().err
    assert "0/6 done, F32: warm-up round trip" in err and "5/6 done, F16: timed round trip" in err


def test_a_first_pack_or_demo_readies_the_decoder_in_a_second_process() -> None:
    """On a machine's first run that process compiles the decoder into numba's cache on a second core
    while the first pack compiles the coding kernels (each process compiles on one core at a time), and
    decoding waits for it; here, with the cache warm, it only loads it. It must succeed: a failure would
    leave the compiling to the decoding, as before."""
    from weightpack.compile_beside import DecoderBeside, decoder_ready

    with DecoderBeside() as beside:
        decoder_ready()  # what unpacking and a pack's verification do first
        assert beside.wait() == 0


def test_demo_round_trips_every_dtype_byte_for_byte(capsys: pytest.CaptureFixture) -> None:
    assert main(["demo", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and [r["dtype"] for r in report["results"]] == ["F32", "BF16", "F16"]
    assert all(r["identical"] and r["ratio"] < r["bound_ratio"] + 0.001 for r in report["results"])
