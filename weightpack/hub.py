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
from .atomic import atomic_output, check_free
from .errors import WeightpackError


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


def push(src: str | os.PathLike, repo_id: str, *, revision: str | None = None, private: bool = False,
         token: str | None = None, commit_message: str | None = None, endpoint: str | None = None,
         threads: int | None = None, progress: bool = False) -> str:
    """Upload a model folder packed (packing it on the fly unless it is packed already); return the commit id.

    Creates the repo (and the ``revision`` branch) if needed. Uses ``HfApi.upload_folder``, with
    huggingface_hub's own progress bars.
    """
    from huggingface_hub import HfApi

    src = Path(src)
    if not src.is_dir():
        raise WeightpackError(f"{src}: push takes a model folder (packed or not)")
    hf = HfApi(endpoint=endpoint, token=token)
    with tempfile.TemporaryDirectory(prefix="weightpack-push-") as tmp:
        if (src / manifest.MANIFEST).is_file():  # packed already: check it fully before publishing it
            api.verify(src, threads=threads, progress=progress)
            folder = src
        else:  # packing verifies each archive it writes
            folder = api.pack(src, Path(tmp) / "packed", threads=threads, progress=progress)
        message = commit_message or f"Upload {src.name} packed with weightpack"
        with _hub_errors(repo_id):
            hf.create_repo(repo_id, private=private, exist_ok=True)
            if revision is not None:
                hf.create_branch(repo_id, branch=revision, exist_ok=True)
            info = hf.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision,
                                    commit_message=message)
    return info.oid


def pull(repo_id: str, dst: str | os.PathLike | None = None, *, revision: str | None = None,
         token: str | None = None, overwrite: bool = False, cache_dir: str | os.PathLike | None = None,
         endpoint: str | None = None, threads: int | None = None, progress: bool = False) -> Path:
    """Download a repo and restore its original files into ``dst`` (default: the repo's name); return it.

    A packed repo is unpacked and every restored file checked against its sha256; a repo that is not
    packed is simply downloaded. Nothing appears at ``dst`` unless everything succeeded.
    """
    from huggingface_hub import snapshot_download

    dst = Path(dst) if dst is not None else Path(repo_id.rstrip("/").split("/")[-1])
    check_free(dst, overwrite)
    with _hub_errors(repo_id):
        snapshot = Path(snapshot_download(repo_id, revision=revision, token=token, cache_dir=cache_dir,
                                          endpoint=endpoint))
    if (snapshot / manifest.MANIFEST).is_file():
        return api.unpack(snapshot, dst, overwrite=overwrite, threads=threads, progress=progress)
    with atomic_output(dst, overwrite, directory=True) as tmp:
        for f in sorted(p for p in snapshot.rglob("*") if p.is_file()):
            api.copy_verified(f, tmp / f.relative_to(snapshot))
    return dst
