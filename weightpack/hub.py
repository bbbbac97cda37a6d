"""The Hugging Face Hub hook: push a model packed, pull it back restored, with ``huggingface_hub``.

A packed repo is an ordinary model repo holding ``*.wpk`` files, every other file as is, and
``weightpack.json`` (see ``manifest.py``), which is how ``pull`` knows to unpack. Downloads go
through ``snapshot_download``, so the local cache is reused, interrupted downloads resume, and
``HF_HUB_OFFLINE=1`` is honoured. What ``pull`` writes is the original folder, byte for byte,
ready for ``transformers``' ``from_pretrained(DIR)``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import api, manifest
from .atomic import atomic_output
from .errors import WeightpackError
from .paths import MANIFEST, check_destination, walk


@contextmanager
def _hub_errors(repo_id: str) -> Iterator[None]:
    """Turn huggingface_hub's exceptions into one-line WeightpackErrors naming the repo."""
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except RepositoryNotFoundError:
        raise WeightpackError(f"{repo_id}: repository not found (or no access: check the token)") from None
    except RevisionNotFoundError as exc:
        raise WeightpackError(f"{repo_id}: revision not found ({_first_line(exc)})") from None
    except LocalEntryNotFoundError as exc:
        raise WeightpackError(f"{repo_id}: not in the local cache and the Hub is unreachable or offline "
                              f"({_first_line(exc)})") from None
    except HfHubHTTPError as exc:
        raise WeightpackError(f"{repo_id}: Hub request failed: {_first_line(exc)}") from None
    except WeightpackError:
        raise
    except Exception as exc:  # the HTTP stack's own errors (dropped connections, timeouts) vary by version
        raise WeightpackError(f"{repo_id}: transfer failed: {type(exc).__name__}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


@contextmanager
def _hub_bars(enabled: bool) -> Iterator[None]:
    """huggingface_hub's own progress bars, silenced unless ``enabled`` (``-q``, ``--json``, a pipe)."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    if not enabled:
        disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


def push(src: str | os.PathLike, repo_id: str, *, revision: str | None = None, private: bool = False,
         token: str | None = None, commit_message: str | None = None, endpoint: str | None = None,
         threads: int | None = None, progress: bool = False, base: str | os.PathLike | None = None) -> str:
    """Upload a model folder packed (packing it on the fly unless it is packed already); return the commit id.

    Creates the repo (and the ``revision`` branch) if needed. Uses ``HfApi.upload_folder``, with
    huggingface_hub's own progress bars when ``progress``. ``base``: the base checkpoint of a delta
    folder (to pack against, or to verify an already packed folder with).
    """
    from huggingface_hub import HfApi

    src = Path(src)
    if not src.is_dir():
        raise WeightpackError(f"{src}: push takes a model folder (packed or not)")
    hf = HfApi(endpoint=endpoint, token=token)
    with tempfile.TemporaryDirectory(prefix="weightpack-push-") as tmp:
        if (src / MANIFEST).is_file():  # packed already: check it fully before publishing it
            api.verify(src, threads=threads, progress=progress, base=base)
            folder = src
        else:  # packing verifies each archive it writes
            folder = api.pack(src, Path(tmp) / "packed", threads=threads, progress=progress, base=base)
        message = commit_message or f"Upload {src.name} packed with weightpack"
        with _hub_errors(repo_id), _hub_bars(progress):
            hf.create_repo(repo_id, private=private, exist_ok=True)
            if revision is not None:
                hf.create_branch(repo_id, branch=revision, exist_ok=True)
            info = hf.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision,
                                    commit_message=message)
    return info.oid


def pull(repo_id: str, dst: str | os.PathLike | None = None, *, revision: str | None = None,
         token: str | None = None, overwrite: bool = False, cache_dir: str | os.PathLike | None = None,
         endpoint: str | None = None, threads: int | None = None, progress: bool = False,
         base: str | os.PathLike | None = None) -> Path:
    """Download a repo and restore its original files into ``dst`` (default: the repo's name); return it.

    A packed repo is unpacked and every file checked against its ``weightpack.json``; a repo that is
    not packed is simply downloaded. Nothing appears at ``dst`` unless everything succeeded.
    ``base``: the base checkpoint a delta repo was packed against.
    """
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    from huggingface_hub.constants import is_offline_mode
    from huggingface_hub.errors import EntryNotFoundError

    dst = Path(dst) if dst is not None else Path(repo_id.rstrip("/").split("/")[-1])
    if not overwrite:  # refuse before downloading; what -f may replace is decided once the files are known
        check_destination(dst, overwrite, folder=True)
    options = {"token": token, "cache_dir": cache_dir, "endpoint": endpoint}
    with _hub_errors(repo_id), _hub_bars(progress):
        try:  # the manifest first, by revision (which records it in the cache, for offline use later)
            record_path = Path(hf_hub_download(repo_id, MANIFEST, revision=revision, **options))
        except EntryNotFoundError:
            record_path = None
        if record_path is not None and not is_offline_mode():  # packed: stream it, pinned to that commit
            commit = record_path.parent.name  # the snapshot folder of the cache is named by the commit
            names = HfApi(endpoint=endpoint, token=token).list_repo_files(repo_id, revision=commit)

    if record_path is not None and not is_offline_mode():
        def fetch(name: str) -> Path:
            with _hub_errors(repo_id), _hub_bars(progress):
                return Path(hf_hub_download(repo_id, name, revision=commit, **options))
        with _about_repo(repo_id):
            record = manifest.read(record_path.parent)
            record.check_listing(Path(f"commit {commit[:12]}"), names)
            return api.unpack_fetched(record, fetch, dst, overwrite=overwrite, threads=threads, progress=progress,
                                      base=base)
    with _hub_errors(repo_id), _hub_bars(progress):  # offline (the cache only), or a repo that is not packed
        snapshot = Path(snapshot_download(repo_id, revision=revision, **options))
    if (snapshot / MANIFEST).is_file():
        with _about_repo(repo_id):
            return api.unpack(snapshot, dst, overwrite=overwrite, threads=threads, progress=progress, base=base)
    files = walk(snapshot)
    names = [f.relative_to(snapshot).as_posix() for f in files]
    with atomic_output(dst, overwrite, directory=True, writes=names) as tmp:
        for f, name in zip(files, names):
            api.copy_checked(f, tmp / name)
    return dst


@contextmanager
def _about_repo(repo_id: str) -> Iterator[None]:
    """Errors from a file of the repo (named by its path in the cache) also name the repo."""
    try:
        yield
    except WeightpackError as exc:
        raise type(exc)(f"{repo_id}: {exc}") from None
