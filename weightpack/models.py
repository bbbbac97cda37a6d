"""A transformers model straight from a packed folder or Hub repo: no safetensors copy on disk.

``from_pretrained(AutoModel, "user/model-wpk")`` downloads the packed repo (huggingface_hub's cache,
revision, token and offline mode apply), decodes its archives into one state dict (on the CPU, each
archive as it downloads, as ``pull`` does: see ``hub.RepoFiles``) and hands it to
``model_class.from_pretrained`` with the folder's own config: transformers does the rest (dtype,
tied weights, missing keys) as for any checkpoint. A folder or repo that is not packed is passed
to transformers unchanged. transformers and torch are imported only here.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Any

from . import manifest
from .api import check_files
from .errors import WeightpackError
from .hub import RepoFiles, _about_repo, _hub_errors
from .loading import load_folder
from .paths import MANIFEST, WPK
from .wpkfile import warm_up_decoder


def from_pretrained(model_class: Any, repo_id_or_path: str | os.PathLike, *, revision: str | None = None,
                    token: str | None = None, cache_dir: str | os.PathLike | None = None,
                    endpoint: str | None = None, threads: int | None = None,
                    base: str | os.PathLike | None = None, **kwargs: Any) -> Any:
    """``model_class.from_pretrained`` for a packed folder or repo (sharded or not), decoding its weights
    in memory; any other folder or repo id goes to ``model_class.from_pretrained`` as is.

    ``kwargs`` go to transformers (``torch_dtype``, ``device_map``, ...); ``threads`` and ``base`` to
    the decoder (``base``: the base checkpoint a delta folder was packed against). A ``device_map``
    naming one GPU has the weights decoded on that GPU (``weightpack.gpu``), straight into its memory.
    """
    device = _one_gpu(kwargs.get("device_map"))
    packed = _packed_folder(repo_id_or_path, stream=device == "cpu", revision=revision, token=token,
                            cache_dir=cache_dir, endpoint=endpoint)
    if packed is None:
        hub = {k: v for k, v in (("revision", revision), ("token", token), ("cache_dir", cache_dir)) if v}
        return model_class.from_pretrained(repo_id_or_path, **hub, **kwargs)
    from transformers import AutoConfig

    folder, source = packed
    with _about_repo(source.repo_id) if source is not None else contextlib.nullcontext():
        _check_folder(folder, streamed=source is not None)
        config = kwargs.pop("config", None) or AutoConfig.from_pretrained(folder)
        mapping = getattr(model_class, "_model_mapping", None)  # an Auto class: the concrete class for this config
        if mapping is not None:
            try:
                model_class = mapping[type(config)]
            except KeyError:
                raise WeightpackError(f"{folder}: {model_class.__name__} has no model class for "
                                      f"{type(config).__name__}") from None
        state = load_folder(folder, framework="pt", threads=threads, base=base, device=device, source=source)
    return model_class.from_pretrained(None, config=config, state_dict=state, **kwargs)


def _check_folder(folder: Path, streamed: bool) -> None:
    """Refuse a packed folder whose files are not the ones its manifest records (a file missing, added, or
    of another size or sha256), as ``pull`` and ``verify`` do: the config and tokenizer that build the model
    are checked as the weights are. ``streamed``: its archives are not in the folder but still downloading
    (each chunk and stripe is checked as it decodes)."""
    check_files(folder, manifest.read_packed(folder, archives_elsewhere=streamed), lambda n: None)


def _one_gpu(device_map: Any) -> str:
    """Where to decode: on the GPU when the whole model goes to one ("cuda", "cuda:1", {"": "cuda:0"}),
    else on the CPU (transformers then places the tensors itself)."""
    if isinstance(device_map, dict) and set(device_map) == {""}:
        device_map = device_map[""]
    if isinstance(device_map, int):
        device_map = f"cuda:{device_map}"
    text = str(device_map) if device_map is not None else ""
    return text if text == "cuda" or text.startswith("cuda:") else "cpu"


def _packed_folder(repo_id_or_path: str | os.PathLike, stream: bool,
                   **hub: Any) -> tuple[Path, RepoFiles | None] | None:
    """The local packed folder, and where its archives come from; None if it is not packed.

    A local folder holds its archives. A repo id is downloaded into huggingface_hub's cache: all of
    it, or with ``stream`` (decoding on the CPU, online), all but its archives, which then come
    from the returned ``hub.RepoFiles`` (downloading from the start, beside the other files) and decode
    as they download.
    """
    path = Path(repo_id_or_path)
    if path.is_dir():
        return (path, None) if (path / MANIFEST).is_file() else None
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.constants import is_offline_mode
    from huggingface_hub.errors import EntryNotFoundError

    repo_id = os.fspath(repo_id_or_path)
    stream = stream and not is_offline_mode()
    with _hub_errors(repo_id):
        try:
            record_path = Path(hf_hub_download(repo_id, MANIFEST, **hub))
        except EntryNotFoundError:
            return None
        # Packed: load the decoding kernels (numba's start-up) while the rest downloads. A plain repo never
        # pays for it; numba serialises a kernel's first load, so decoding later simply finds it ready.
        threading.Thread(target=warm_up_decoder, daemon=True).start()
        commit = record_path.parent.name  # the cache's snapshot folder is named by the commit: pinned to it
        source = None
        if stream:  # the archives start downloading now (RepoFiles), beside the other files' download
            with _about_repo(repo_id):
                archives = list(manifest.read(record_path.parent).archives)
            source = RepoFiles(repo_id, commit, token=hub.get("token"), cache_dir=hub.get("cache_dir"),
                               endpoint=hub.get("endpoint"), archives=archives)
        folder = Path(snapshot_download(repo_id, **{**hub, "revision": commit},
                                        ignore_patterns=[f"*{WPK}"] if stream else None))
    if not (folder / MANIFEST).is_file():
        raise WeightpackError(f"{repo_id}: {MANIFEST} disappeared from the download")
    return folder, source
