"""Loading without unpacking: safe_open / load_file give exactly what safetensors gives for the original."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.numpy
import safetensors.torch
import torch

import weightpack
from weightpack import minilm
from weightpack.errors import WeightpackError


def _bits(t: torch.Tensor) -> torch.Tensor:
    """Bit pattern of a tensor, so that comparisons are exact (NaN and -0 included)."""
    return t.contiguous().view(torch.uint8)


@pytest.fixture(scope="module")
def packed(minilm_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("loading")
    return {dt: weightpack.pack(minilm_dirs[dt] / minilm.CHECKPOINT, root / f"{dt}.wpk") for dt in minilm.DTYPES}


@pytest.mark.parametrize("dtype", minilm.DTYPES)
def test_torch_tensors_are_bit_identical_to_safetensors(packed: dict[str, Path], minilm_dirs: dict[str, Path],
                                                        dtype: str) -> None:
    reference = safetensors.torch.load_file(minilm_dirs[dtype] / minilm.CHECKPOINT)
    loaded = weightpack.load_file(packed[dtype], framework="pt")
    assert loaded.keys() == reference.keys()
    for name, tensor in reference.items():
        assert loaded[name].dtype == tensor.dtype and loaded[name].shape == tensor.shape
        assert torch.equal(_bits(loaded[name]), _bits(tensor)), name
    if dtype == "BF16":
        assert loaded["embeddings.word_embeddings.weight"].dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", ["F32", "F16"])
def test_numpy_arrays_are_identical_to_safetensors(packed: dict[str, Path], minilm_dirs: dict[str, Path],
                                                   dtype: str) -> None:
    reference = safetensors.numpy.load_file(minilm_dirs[dtype] / minilm.CHECKPOINT)
    loaded = weightpack.load_file(packed[dtype], framework="np")
    for name, array in reference.items():
        assert loaded[name].dtype == array.dtype and np.array_equal(loaded[name], array), name


def test_numpy_bf16_is_the_raw_bit_pattern(packed: dict[str, Path], minilm_dirs: dict[str, Path]) -> None:
    reference = safetensors.torch.load_file(minilm_dirs["BF16"] / minilm.CHECKPOINT)
    with weightpack.safe_open(packed["BF16"], framework="np") as f:
        bits = f.get_tensor("pooler.dense.weight")
    assert bits.dtype == np.uint16
    exact = (bits.astype(np.uint32) << 16).view(np.float32)
    assert np.array_equal(exact, reference["pooler.dense.weight"].float().numpy())


def test_keys_metadata_and_slices_mirror_safetensors(packed: dict[str, Path], minilm_dirs: dict[str, Path]) -> None:
    name = "embeddings.word_embeddings.weight"
    with safetensors.safe_open(minilm_dirs["BF16"] / minilm.CHECKPOINT, "pt") as ref, \
            weightpack.safe_open(packed["BF16"], framework="pt") as f:
        assert sorted(f.keys()) == sorted(ref.keys()) and f.metadata() == ref.metadata()
        s, r = f.get_slice(name), ref.get_slice(name)
        assert s.get_shape() == r.get_shape() and s.get_dtype() == r.get_dtype()
        for key in (slice(0, 10), slice(30000, None), slice(100, 1000, 7), 5, -1, slice(9, 9), (slice(2, 4), 3)):
            assert torch.equal(_bits(s[key]), _bits(r[key])), key


def test_each_tensor_holds_its_own_bytes_and_a_slice_only_its_rows(packed: dict[str, Path]) -> None:
    for tensor in weightpack.load_file(packed["BF16"], framework="pt").values():
        assert tensor.untyped_storage().nbytes() == tensor.nbytes  # shares (and pins) no other tensor's bytes
    with weightpack.safe_open(packed["BF16"], framework="pt") as f:
        rows = f.get_slice("embeddings.word_embeddings.weight")[10:12]
    assert rows.untyped_storage().nbytes() == rows.nbytes == 2 * 384 * 2  # not the stripe it was decoded from


def test_only_the_rows_asked_for_are_decoded(packed: dict[str, Path]) -> None:
    with weightpack.safe_open(packed["F32"], framework="np") as f:
        reader, decoded = f._reader, []
        original = reader._stripes

        def spy(seg, first=0, end=None):
            stripes = original(seg, first, end)
            decoded.extend(k for k, _, _ in stripes)
            return stripes
        reader._stripes = spy
        rows = f.get_slice("embeddings.word_embeddings.weight")[10:12]
        assert decoded == [0] and rows.shape == (2, 384)  # one stripe of the 45 of this tensor
        decoded.clear()
        f.get_slice("embeddings.word_embeddings.weight")[30000:30001]
        assert decoded == [30000 * 384 // reader.tensors["embeddings.word_embeddings.weight"].stripe]


def test_errors_name_the_file_and_tensor(packed: dict[str, Path], tmp_path: Path) -> None:
    with weightpack.safe_open(packed["F16"]) as f, pytest.raises(WeightpackError, match="no tensor named 'nope'"):
        f.get_tensor("nope")
    bad = tmp_path / "bad.wpk"
    bad.write_bytes(b"garbage" * 20)
    with pytest.raises(WeightpackError, match=r"bad\.wpk: not a weightpack archive"):
        weightpack.safe_open(bad)


def test_packed_folder_loads_into_transformers_without_writing_safetensors(minilm_dirs: dict[str, Path],
                                                                           tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    packed = weightpack.pack(minilm_dirs["F32"], tmp_path / "packed")
    model = transformers.AutoModel.from_config(transformers.AutoConfig.from_pretrained(packed))
    missing, unexpected = model.load_state_dict(weightpack.load_folder(packed), strict=False)
    assert missing == [] and set(unexpected) <= {"embeddings.position_ids"}
    reference = transformers.AutoModel.from_pretrained(minilm_dirs["F32"])
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(ids).last_hidden_state, reference(ids).last_hidden_state)
    assert not list(tmp_path.rglob("*.safetensors"))


def test_pack_unpack_and_numpy_loading_never_import_torch(bf16_file: Path, tmp_path: Path) -> None:
    code = (f"import sys, weightpack; p = weightpack.pack({str(bf16_file)!r}, {str(tmp_path / 'm.wpk')!r}); "
            f"weightpack.unpack(p, {str(tmp_path / 'm.safetensors')!r}); weightpack.load_file(p, framework='np'); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _same_weights(model, reference) -> bool:
    got, want = model.state_dict(), reference.state_dict()
    return got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_from_pretrained_builds_a_sharded_packed_folder_and_passes_plain_ones_through(
        minilm_dirs: dict[str, Path], tmp_path: Path) -> None:
    """A sharded checkpoint (index.json) packed, loaded without writing weights; a plain folder as transformers."""
    transformers = pytest.importorskip("transformers")
    from weightpack.safetensors_layout import write

    tensors = minilm.load(minilm_dirs["F16"] / minilm.CHECKPOINT)
    src = tmp_path / "sharded"
    src.mkdir()
    names, weight_map = list(tensors), {}
    for k, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        shard = f"model-{k + 1:05d}-of-00002.safetensors"
        write(src / shard, {n: tensors[n] for n in part}, {"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    (src / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (src / "config.json").write_bytes((minilm_dirs["F16"] / "config.json").read_bytes())
    packed = weightpack.pack(src, tmp_path / "packed")
    reference = transformers.AutoModel.from_pretrained(src)
    model = weightpack.from_pretrained(transformers.AutoModel, packed)
    assert model.dtype == reference.dtype == torch.float16 and _same_weights(model, reference)
    assert sorted(p.name for p in tmp_path.rglob("*.safetensors")) == sorted(set(weight_map.values()))  # no copy
    plain = weightpack.from_pretrained(transformers.AutoModel, src)  # not packed: transformers as is
    assert _same_weights(plain, reference)
