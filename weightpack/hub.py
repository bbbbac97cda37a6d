"""The Hugging Face Hub hook: push a model packed, pull it back restored, with ``huggingface_hub``.

A packed repo is an ordinary model repo holding ``*.wpk`` files, every other file as is, and
``weightpack.json`` (see ``manifest.py``), which is how ``pull`` knows to unpack. Downloads go
through ``snapshot_download``, so the local cache is reused, interrupted downloads resume, and
``HF_HUB_OFFLINE=1`` is honoured. What ``pull`` writes is the original folder, byte for byte,
ready for ``transformers``' ``from_pretrained(DIR)``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from . import manifest
from .atomic import atomic_output
from .errors import CANCEL, WeightpackError, about
from .paths import MANIFEST, check_destination, walk

# The decoder (numba, numpy: ~0.3 s to import) is imported by ``pull`` on a thread of its own, beside its
# first requests to the Hub, and where it is used; importing this module does not wait for it.
if TYPE_CHECKING:
    from .sources import BaseSet
    from .wpkfile import ArchiveReader


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

    from . import api

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
    # The decoder imported and its kernels loaded (numba: ~0.4 s) while the first requests wait on the network:
    # the manifest, the listing and the first files take a few round trips (100 ms each on a distant link).
    threading.Thread(target=_load_decoder, daemon=True, name="weightpack-warm-up").start()
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    from huggingface_hub.constants import is_offline_mode
    from huggingface_hub.errors import EntryNotFoundError

    dst = Path(dst) if dst is not None else Path(repo_id.rstrip("/").split("/")[-1])
    if not overwrite:  # refuse before downloading; what -f may replace is decided once the files are known
        check_destination(dst, overwrite, folder=True)
    options = {"token": token, "cache_dir": cache_dir, "endpoint": endpoint}
    hf = HfApi(endpoint=endpoint, token=token)
    with _hub_errors(repo_id), _hub_bars(progress), ThreadPoolExecutor(1) as beside:
        # The repo's listing is asked for beside the manifest (one round trip less): by the same revision,
        # it names the same commit unless the repo changed in between, when it is asked for again by commit.
        info = None if is_offline_mode() else beside.submit(hf.model_info, repo_id, revision=revision)
        try:  # the manifest by revision (which records it in the cache, for offline use later)
            record_path = Path(hf_hub_download(repo_id, MANIFEST, revision=revision, **options))
        except EntryNotFoundError:
            record_path = None
        if record_path is not None and info is not None:  # packed: stream it, pinned to that commit
            commit = record_path.parent.name  # the snapshot folder of the cache is named by the commit
            listed = info.result()
            names = ([s.rfilename for s in listed.siblings or []] if listed.sha == commit
                     else hf.list_repo_files(repo_id, revision=commit))

    if record_path is not None and not is_offline_mode():
        with _about_repo(repo_id):
            record = manifest.read(record_path.parent)
            record.check_listing(Path(f"commit {commit[:12]}"), names)
            source = RepoFiles(repo_id, commit, progress=progress, archives=list(record.archives),
                               files=list(record.files), **options)
            # Only now: importing the decoder waits for the warm-up's imports (numba: ~0.4 s), which the
            # first archive's download, started above, no longer does.
            from . import api

            return api.unpack_from(record, source, dst, overwrite=overwrite, threads=threads, progress=progress,
                                   base=base)
    with _hub_errors(repo_id), _hub_bars(progress):  # offline (the cache only), or a repo that is not packed
        snapshot = Path(snapshot_download(repo_id, revision=revision, **options))
    from . import api

    if (snapshot / MANIFEST).is_file():
        with _about_repo(repo_id):
            return api.unpack(snapshot, dst, overwrite=overwrite, threads=threads, progress=progress, base=base)
    files = walk(snapshot)
    names = [f.relative_to(snapshot).as_posix() for f in files]
    with atomic_output(dst, overwrite, directory=True, writes=names) as tmp:
        for f, name in zip(files, names):
            api.copy_checked(f, tmp / name)
    return dst


def _load_decoder() -> None:
    from .wpkfile import warm_up_decoder

    warm_up_decoder()


@contextmanager
def _about_repo(repo_id: str) -> Iterator[None]:
    """Errors from a file of the repo (named by its path in the cache) also name the repo."""
    try:
        yield
    except WeightpackError as exc:
        message = str(exc).replace(f": {repo_id}: ", ": ")  # a download error inside names the repo already
        raise type(exc)(message if message.startswith(f"{repo_id}: ") else f"{repo_id}: {message}") from None


# Small files (config, tokenizer, index.json) fetched side by side, beside the archives, as many at once as
# huggingface_hub's snapshot_download does: each costs a download two round trips (HEAD, then GET), and MiniLM's
# twelve in waves of 4 (three of them: six round trips, 0.6 s at 100 ms each) made a packed pull 0.3 s slower
# than the plain one over a distant link, where 8 take two waves.
FETCHERS = 8


class RepoFiles:
    """The files of a packed repo at one commit, as an ``api.FolderSource``.

    Every file is downloaded with ``hf_hub_download`` into huggingface_hub's cache, as any download
    (tokens, revisions, the cache itself work as usual). An archive is also *streamed*: its index
    is fetched first with three small range requests (preamble, footer, index), then, while
    ``hf_hub_download`` writes the file, its stripes are decoded as their bytes land in the cache's
    temporary file (a stripe's chunks are contiguous, in file order). Where that cannot be done (the
    file is cached already, the server ignores ranges, the download's temporary file is not found,
    the archive refers to a sibling), the archive is decoded once downloaded. What is streamed is
    checked like anything else: every chunk's checksum and every stripe's XXH64.

    Archives are restored one after the other, in the order of ``archives``. The first one starts
    downloading when this is made (the manifest checked), and ``files`` (config, tokenizer) beside it,
    ``FETCHERS`` at a time, not once the decoder is loaded: importing numba took ~0.4 s of a pull with
    the link idle. The next archive starts as soon as the one before it has *downloaded*, not once it
    is decoded. Decoding a file's last stripes and fetching the next one's index then happen while the
    link carries the next file, instead of leaving the link idle between the shards of a large model.
    """

    archives_at_once = 1  # they arrive one after the other, and each decodes as it arrives
    FIND_PARTIAL_S = 10.0  # how long to look for the download's temporary file before decoding after it
    INDEX_GUESS = 1 << 18  # bytes fetched from an archive's end for its index: MiniLM's is ~15-20 kB

    def __init__(self, repo_id: str, commit: str, *, token: str | None, cache_dir: str | os.PathLike | None,
                 endpoint: str | None, progress: bool = False, archives: list[str] | None = None,
                 files: list[str] | None = None) -> None:
        self.repo_id, self.commit, self.progress = repo_id, commit, progress
        self.token, self.cache_dir, self.endpoint = token, cache_dir, endpoint
        self._next = dict(itertools.pairwise(archives or []))  # the archive restored after each one
        self._downloads: dict[str, Future] = {}
        self._lock = threading.Lock()
        self._files = set(files or [])
        self._fetching = threading.Semaphore(FETCHERS)  # small files downloading at once
        if archives:  # the link starts carrying the weights now, while the decoder is still being loaded
            self._download(archives[0])
        for name in files or []:  # and the small files beside them
            self._download(name)

    def file(self, name: str) -> Path:
        future = self._downloads.get(name)
        return future.result() if future is not None else self._get(name)

    def _get(self, name: str) -> Path:
        from huggingface_hub import hf_hub_download

        with _hub_errors(self.repo_id), _hub_bars(self.progress):
            return Path(hf_hub_download(self.repo_id, name, revision=self.commit, token=self.token,
                                        cache_dir=self.cache_dir, endpoint=self.endpoint))

    def _download(self, name: str) -> Future:
        """The download of ``name`` into the cache, started now unless it is under way; once it has
        succeeded, the next archive's starts.

        On a daemon thread: if the pull fails meanwhile, a download of the next archive is not waited
        for (huggingface_hub resumes its partial file at the next pull), and never holds up the exit.
        """
        with self._lock:
            future = self._downloads.get(name)
            if future is None:
                future = self._downloads[name] = Future()
                threading.Thread(target=self._fetch, args=(name, future), daemon=True,
                                 name="weightpack-download").start()
        return future

    def _fetch(self, name: str, future: Future) -> None:
        try:
            with self._fetching if name in self._files else contextlib.nullcontext():
                path = self._get(name)
        except BaseException as exc:  # handed to whoever opens the archive or asks for the file
            future.set_exception(exc)
            return
        future.set_result(path)
        if name in self._next:
            self._download(self._next[name])

    @contextmanager
    def archive(self, name: str, pool: ThreadPoolExecutor, base: BaseSet | None) -> Iterator[ArchiveReader]:
        from .wpkfile import ArchiveReader

        download = self._download(name)
        streamed = self._streamed(name, download, pool, base)
        if streamed is None:
            with about(Path(name)):
                reader = ArchiveReader(download.result(), pool, base)
            with reader:
                yield reader
            return
        reader, arrival = streamed
        with arrival, reader:
            yield reader
        download.result()  # the cache holds the whole file, checked by huggingface_hub

    def _streamed(self, name: str, download: Future, pool: ThreadPoolExecutor,
                  base: BaseSet | None) -> tuple[ArchiveReader, _Arrival] | None:
        """A reader of the archive as it downloads (and what it waits on), or None where it cannot be streamed."""
        from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
        from huggingface_hub.file_download import repo_folder_name

        from .container import FOOTER, PREAMBLE, SOURCE_SIBLING, PartialArchive, read_index
        from .wpkfile import ArchiveReader

        url = hf_hub_url(self.repo_id, name, revision=self.commit, endpoint=self.endpoint)
        # The file's metadata, its preamble and its last INDEX_GUESS bytes (the footer, and the index unless it
        # is larger) are asked for side by side: one round trip to the server before decoding can start, not
        # four one after the other (100 ms each on a distant link).
        with ThreadPoolExecutor(3, thread_name_prefix="weightpack-index") as requests:
            tail_future = requests.submit(self._range, url, f"-{self.INDEX_GUESS}")
            head_future = requests.submit(self._range, url, f"0-{PREAMBLE.size - 1}")
            with _hub_errors(self.repo_id):
                meta = get_hf_file_metadata(url, token=self.token)
            (head, _), (tail, total) = head_future.result(), tail_future.result()
        size, etag = meta.size, meta.etag
        blobs = Path(self.cache_dir or constants.HF_HUB_CACHE) / repo_folder_name(repo_id=self.repo_id,
                                                                                   repo_type="model") / "blobs"
        if not size or not etag or size < PREAMBLE.size + FOOTER.size or (blobs / etag).exists():
            return None
        if head is None or tail is None or total != size or len(tail) < FOOTER.size:
            return None
        index_offset = FOOTER.unpack(tail[-FOOTER.size:])[0]
        if not 0 < index_offset < size:
            return None  # refused properly once downloaded
        if index_offset < size - len(tail):  # an index larger than the guess: the rest of it
            rest, _ = self._range(url, f"{index_offset}-{size - len(tail) - 1}")
            if rest is None:
                return None
            tail = rest + tail
        with _about_repo(self.repo_id), about(Path(name)):
            index = read_index(PartialArchive(head, tail, size), size)
        if any(s.kind == SOURCE_SIBLING for s in index.sources):
            return None
        partial = self._find_partial(blobs, etag, download)
        if partial is None:
            return None
        try:
            fd = os.open(partial, os.O_RDONLY)
        except OSError:  # renamed into place meanwhile: decode it from there
            return None
        arrival = _Arrival(fd, download)
        try:
            return ArchiveReader(partial, pool, base, index=index, available=arrival, name=Path(name)), arrival
        except OSError:
            os.close(fd)
            return None

    def _range(self, url: str, spec: str) -> tuple[bytes | None, int | None]:
        """The bytes of a file that the range ``spec`` names (``"START-LAST"``, or ``"-N"`` for the last N),
        and the file's size; ``(None, None)`` if the server will not send that range."""
        from huggingface_hub.utils import build_hf_headers, get_session

        headers = {**build_hf_headers(token=self.token), "Range": f"bytes={spec}"}
        try:  # best effort: any failure here means decoding after the download, which reports real errors
            response = get_session().get(url, headers=headers, follow_redirects=True)
        except Exception:
            return None, None
        match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", response.headers.get("Content-Range", ""))
        if response.status_code != 206 or match is None:
            return None, None
        first, last, total = map(int, match.groups())
        start, _, end = spec.partition("-")
        asked = (max(total - int(end), 0), total - 1) if not start else (int(start), int(end))
        if (first, last) != asked or len(response.content) != last - first + 1:  # exactly the range asked for
            return None, None
        return response.content, total

    def _find_partial(self, blobs: Path, etag: str, download: Future) -> Path | None:
        """The temporary file huggingface_hub is downloading the blob into (``<etag>*.incomplete``)."""
        deadline = time.monotonic() + self.FIND_PARTIAL_S
        while not download.done() and time.monotonic() < deadline:
            found = sorted(blobs.glob(f"{etag}*.incomplete"), key=lambda p: p.stat().st_mtime if p.exists() else 0)
            if found:
                return found[-1]
            time.sleep(0.005)
        return None


class _Arrival:
    """``available(end)`` of a file being downloaded: waits until it holds ``end`` bytes."""

    def __init__(self, fd: int, download: Future) -> None:
        self.fd, self.download = fd, download

    def __enter__(self) -> _Arrival:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # the file this was watching grow (the reader holds its own)

    def __call__(self, end: int) -> None:
        while os.fstat(self.fd).st_size < end:
            if CANCEL.is_set():
                raise KeyboardInterrupt
            if self.download.done():
                self.download.result()  # the download's own error, if it failed
                if os.fstat(self.fd).st_size < end:
                    raise WeightpackError(f"downloaded archive is shorter ({os.fstat(self.fd).st_size} bytes) "
                                          f"than its index says ({end})")
                return
            time.sleep(0.002)
