"""Beyond one checkpoint: deltas to a base model, tensors stored once, constant bit planes for free."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import weightpack
from weightpack import api, dtypes, minilm
from weightpack.cli import main
from weightpack.errors import WeightpackError
from weightpack.safetensors_layout import write

from .conftest import sha256_tree


@pytest.fixture(scope="module")
def bf16_tensors(minilm_dirs: dict[str, Path]) -> dict:
    return minilm.load(minilm_dirs["BF16"] / minilm.CHECKPOINT)


@pytest.fixture(scope="module")
def finetuned(bf16_tensors: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fine-tune of BF16 MiniLM: every weight nudged by 1% (relative, Gaussian), rounded back to BF16."""
    path = tmp_path_factory.mktemp("ft") / "model.safetensors"
    write(path, minilm.finetune(bf16_tensors, 0.01), {"format": "pt"})
    return path


def test_fine_tune_packed_against_its_base_is_smaller_and_byte_identical(
        finetuned: Path, minilm_dirs: dict[str, Path], tmp_path: Path) -> None:
    base = minilm_dirs["BF16"]
    alone = weightpack.pack(finetuned, tmp_path / "alone.wpk")
    delta = weightpack.pack(finetuned, tmp_path / "delta.wpk", base=base)
    assert delta.stat().st_size < 0.9 * alone.stat().st_size
    report = weightpack.info(delta)
    assert report["references"][0]["kind"] == "base"
    assert any(t["reference"].startswith("delta to base") for t in report["tensors"])
    assert any(p["codec"].endswith("(word-sub)") for t in report["tensors"] for p in t["planes"])
    restored = weightpack.unpack(delta, tmp_path / "restored.safetensors", base=base)
    assert restored.read_bytes() == finetuned.read_bytes()


@pytest.mark.parametrize("form", ["packed folder", "packed file"])
def test_the_base_may_be_given_packed(finetuned: Path, minilm_dirs: dict[str, Path], tmp_path: Path,
                                      form: str) -> None:
    packed_base = weightpack.pack(minilm_dirs["BF16"], tmp_path / "base.wpk")
    base = packed_base if form == "packed folder" else packed_base / "model.wpk"
    delta = weightpack.pack(finetuned, tmp_path / "delta.wpk", base=base)
    # packed against the packed base, restored against the plain one: the base is matched by content
    restored = weightpack.unpack(delta, tmp_path / "r.safetensors", base=minilm_dirs["BF16"])
    assert restored.read_bytes() == finetuned.read_bytes()
    with weightpack.safe_open(delta, framework="np", base=base) as f:
        assert f.get_tensor("pooler.dense.weight").shape == (384, 384)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dtype=st.sampled_from(sorted(dtypes.DTYPES)), n=st.integers(0, 3000), seed=st.integers(0, 2**32 - 1),
       changed=st.floats(0, 1))
def test_deltas_of_any_dtype_round_trip(tmp_path: Path, dtype: str, n: int, seed: int, changed: float) -> None:
    rng = np.random.default_rng(seed)
    size = dtypes.itemsize(dtype)
    base = rng.integers(0, 256, n * size, dtype=np.uint8)
    tuned = base.copy()
    flip = rng.random(n * size) < changed * 0.1  # some bytes changed, carries and sign flips included
    tuned[flip] = rng.integers(0, 256, int(flip.sum()), dtype=np.uint8)
    base_path, tuned_path = tmp_path / "base.safetensors", tmp_path / "tuned.safetensors"
    write(base_path, {"w": (dtype, (n,), base.tobytes())})
    write(tuned_path, {"w": (dtype, (n,), tuned.tobytes())})
    packed = weightpack.pack(tuned_path, tmp_path / "t.wpk", base=base_path, overwrite=True)
    restored = weightpack.unpack(packed, tmp_path / "r.safetensors", base=base_path, overwrite=True)
    assert restored.read_bytes() == tuned_path.read_bytes()


def test_missing_or_wrong_base_is_refused_clearly(finetuned: Path, minilm_dirs: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    delta = weightpack.pack(finetuned, tmp_path / "delta.wpk", base=minilm_dirs["BF16"])
    out = tmp_path / "out.safetensors"
    assert main(["unpack", str(delta), "-o", str(out)]) == 1
    assert "packed against a base checkpoint" in capsys.readouterr().err
    assert main(["unpack", str(delta), "-o", str(out), "--base", str(minilm_dirs["F16"])]) == 1
    err = capsys.readouterr().err
    assert "base given is missing or different" in err and err.count("\n") == 1
    assert main(["verify", str(delta), "--base", str(tmp_path / "nowhere")]) == 1
    assert "base checkpoint not found" in capsys.readouterr().err
    assert not out.exists()


def test_identical_tensors_are_stored_once_within_a_file(bf16_tensors: dict, tmp_path: Path) -> None:
    tied = dict(bf16_tensors)
    tied["lm_head.weight"] = bf16_tensors["embeddings.word_embeddings.weight"]  # tied embeddings, saved twice
    plain, dup = tmp_path / "plain.safetensors", tmp_path / "tied.safetensors"
    write(plain, bf16_tensors)
    write(dup, tied)
    plain_size = weightpack.pack(plain, tmp_path / "plain.wpk").stat().st_size
    packed = weightpack.pack(dup, tmp_path / "tied.wpk")
    assert packed.stat().st_size < plain_size + 1000
    assert weightpack.unpack(packed, tmp_path / "back.safetensors").read_bytes() == dup.read_bytes()
    with weightpack.safe_open(packed, framework="np") as f:
        assert (f.get_tensor("lm_head.weight") == f.get_tensor("embeddings.word_embeddings.weight")).all()


def test_identical_tensors_across_shards_are_stored_once(bf16_tensors: dict, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "sharded"
    src.mkdir()
    names = sorted(bf16_tensors)
    emb = "embeddings.word_embeddings.weight"
    write(src / "model-00001-of-00002.safetensors", {n: bf16_tensors[n] for n in names[:50]})
    second = {n: bf16_tensors[n] for n in names[50:]}
    second["lm_head.weight"] = bf16_tensors[emb]  # a copy of a tensor of the first shard
    write(src / "model-00002-of-00002.safetensors", second)
    packed = weightpack.pack(src, tmp_path / "packed")
    assert (packed / "model-00002-of-00002.wpk").stat().st_size < 0.5 * len(bf16_tensors[emb][2])
    with monkeypatch.context() as m:  # shards are packed side by side: the second waited for the first
        m.setattr(api, "ARCHIVES_AT_ONCE", 1)
        assert sha256_tree(weightpack.pack(src, tmp_path / "one_by_one")) == sha256_tree(packed)
    assert sha256_tree(weightpack.unpack(packed, tmp_path / "restored")) == sha256_tree(src)
    with weightpack.safe_open(packed / "model-00002-of-00002.wpk", framework="np") as f:
        assert f.get_tensor("lm_head.weight").shape == (30522, 384)
    (packed / "model-00001-of-00002.wpk").rename(tmp_path / "moved.wpk")
    with pytest.raises(WeightpackError, match="which is missing"):
        weightpack.verify(packed / "model-00002-of-00002.wpk")


def test_f32_upcast_from_bf16_packs_to_about_the_bf16_size(bf16_tensors: dict, bf16_file: Path,
                                                           tmp_path: Path) -> None:
    upcast = tmp_path / "upcast.safetensors"
    write(upcast, minilm.upcast(bf16_tensors), {"format": "pt"})
    packed = weightpack.pack(upcast, tmp_path / "upcast.wpk")
    bf16_packed = weightpack.pack(bf16_file, tmp_path / "bf16.wpk")
    assert packed.stat().st_size < 1.01 * bf16_packed.stat().st_size
    planes = weightpack.info(packed)["tensors"][-1]["planes"]
    assert [p["codec"] for p in planes][2:] == ["const", "const"]
    assert weightpack.unpack(packed, tmp_path / "back.safetensors").read_bytes() == upcast.read_bytes()
