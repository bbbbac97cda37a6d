"""Many checkpoints at once: pack, unpack or verify several sources, on this machine or a Ray cluster.

``pack_many(["a/", "m.safetensors"], "out/")`` writes ``out/a.wpk/`` and ``out/m.wpk``: each source
under its default name in the destination folder (beside its source when there is none; one source
follows the rules of ``pack``). One source failing does not stop the others: the returned
``Summary`` says what was done and what failed, and why.

With ``address`` (anything ``ray.init(address=...)`` takes: ``"auto"``, ``"127.0.0.1:6379"``,
``"ray://host:10001"``) the work runs as Ray tasks on an existing cluster, one task per safetensors
file (per shard), and sources and destinations must lie on storage that every node sees. Without
it, this machine's cores do the work and Ray is never imported.

A cluster run keeps every promise of a one-machine run:

- **The same bytes.** A one-machine pack of a folder stores a tensor identical to one in an earlier
  shard as a copy of it. Before coding, small tasks compute every shard's dedup keys; each shard's
  task is then given the earlier shards' tensors it may copy, and waits for those shards only. What
  it writes is byte for byte what ``weightpack.pack`` writes.
- **Atomic outputs.** This process owns every temporary; tasks write into it; a model is published
  when all its files are written and verified (a task verifies the archive it wrote), else removed.
- **Faults.** Ray retries a task whose worker died; the retry rewrites its file from the start. A
  model whose task fails is reported failed, with the file and the node, and the others finish. A
  cancellation (Ctrl-C: ``CANCEL``) cancels the model's tasks, waits for them to stop, and
  removes its temporaries; models published before it stay, complete and verified.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from . import api, manifest
from .atomic import atomic_output
from .errors import CANCEL, WeightpackError, about
from .paths import MANIFEST, destination, destination_in, existing, tree_size
from .safetensors_layout import TensorEntry
from .sources import Dedup, Earlier, copies_to_look_for
from .wpkfile import dedup_keys

MODELS_IN_FLIGHT = 32  # models whose tasks are queued on the cluster at once (this process waits on each)
TASK_RETRIES = 3  # runs of a task whose worker or node dies before its model fails
POLL_SECONDS = 0.2  # how often a waiting model looks for a cancellation request
CANCEL_GRACE_SECONDS = 10.0  # how long a task asked to stop may take before its worker is killed
CONNECT_SECONDS = 5.0  # a cluster address that does not answer this fast is reported unreachable
T = TypeVar("T")


@dataclass
class Outcome:
    """What became of one source: done (``error`` is None) or failed."""

    source: str
    destination: str | None
    error: str | None = None
    source_bytes: int = 0
    destination_bytes: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Summary:
    """A run over several sources: one outcome per source, in the order given."""

    outcomes: list[Outcome]
    seconds: float

    @property
    def done(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.ok]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    def as_dict(self) -> dict[str, Any]:
        before = sum(o.source_bytes for o in self.done)
        after = sum(o.destination_bytes for o in self.done)
        return {"done": len(self.done), "failed": len(self.failed), "source_bytes": before,
                "destination_bytes": after, "ratio": after / before if before else 0.0,
                "seconds": round(self.seconds, 3), "outcomes": [vars(o) for o in self.outcomes]}


def pack_many(sources: Sequence[str | os.PathLike], dst: str | os.PathLike | None = None, *,
              address: str | None = None, overwrite: bool = False, threads: int | None = None,
              verify: bool = True, progress: bool = False, base: str | os.PathLike | None = None) -> Summary:
    """Pack every source (file or model folder) into ``dst`` (a folder), on ``address``'s Ray cluster if given.

    The options are ``weightpack.pack``'s; on a cluster, ``threads`` is the threads (and CPUs
    requested) of each task, default 1.
    """
    def here(src: Path, final: Path | None) -> None:
        api.pack(src, final, overwrite=overwrite, threads=threads, verify=verify, progress=progress, base=base)

    def there(cluster: _Cluster, src: Path, final: Path | None) -> None:
        cluster.pack(src, final, overwrite=overwrite, verify=verify, base=base)
    return _run(_plan(sources, dst, packing=True), here, there, address, threads, progress)


def unpack_many(sources: Sequence[str | os.PathLike], dst: str | os.PathLike | None = None, *,
                address: str | None = None, overwrite: bool = False, threads: int | None = None,
                progress: bool = False, base: str | os.PathLike | None = None, sha256: bool = False) -> Summary:
    """Restore every source (.wpk or packed folder) into ``dst`` (a folder); options as ``pack_many``'s."""
    def here(src: Path, final: Path | None) -> None:
        api.unpack(src, final, overwrite=overwrite, threads=threads, progress=progress, base=base, sha256=sha256)

    def there(cluster: _Cluster, src: Path, final: Path | None) -> None:
        cluster.unpack(src, final, overwrite=overwrite, base=base, sha256=sha256)
    return _run(_plan(sources, dst, packing=False), here, there, address, threads, progress)


def verify_many(sources: Sequence[str | os.PathLike], *, address: str | None = None, threads: int | None = None,
                progress: bool = False, base: str | os.PathLike | None = None) -> Summary:
    """Decode and check every source (.wpk or packed folder) fully; write nothing."""
    def here(src: Path, final: Path | None) -> None:
        api.verify(src, threads=threads, progress=progress, base=base)

    def there(cluster: _Cluster, src: Path, final: Path | None) -> None:
        cluster.verify(src, base=base)
    return _run(_plan(sources, None, packing=None), here, there, address, threads, progress)


Job = tuple[Path, Path | None, str | None]  # source, destination, or the reason it cannot be done


def _plan(sources: Sequence[str | os.PathLike], dst: str | os.PathLike | None, packing: bool | None) -> list[Job]:
    """Each source's destination (None for verify), or why the source cannot be processed.

    Two sources that would write the same destination are refused before anything starts.
    """
    if not sources:
        raise WeightpackError("no sources given")
    folder = Path(dst) if dst is not None and len(sources) > 1 else None
    if folder is not None and folder.exists() and not folder.is_dir():
        raise WeightpackError(f"{dst}: is a file; several sources need a destination folder")
    jobs: list[Job] = []
    for given in sources:
        src = Path(given)
        try:
            src = existing(src)
            final = (None if packing is None else destination_in(src, folder, packing) if folder is not None
                     else destination(src, dst, packing))
        except WeightpackError as exc:
            jobs.append((src, None, str(exc)))
            continue
        jobs.append((src, final, None))
    finals = [final.resolve() for _, final, error in jobs if final is not None and error is None]
    twice = sorted({f for f in finals if finals.count(f) > 1})
    if twice:
        raise WeightpackError(f"{twice[0]}: several sources would be written there (rename one of them)")
    return jobs


def _run(jobs: list[Job], here: Callable[[Path, Path | None], None],
         there: Callable[[_Cluster, Path, Path | None], None], address: str | None, threads: int | None,
         progress: bool) -> Summary:
    """Do every job, here one after the other (each uses every core), or side by side on the cluster."""
    start = time.perf_counter()
    if address is None:
        return Summary([_outcome(job, here) for job in jobs], time.perf_counter() - start)
    total = sum(tree_size(src) for src, _, error in jobs if error is None)
    with _Cluster(address, threads or 1, total, progress) as cluster, \
            ThreadPoolExecutor(min(MODELS_IN_FLIGHT, len(jobs)), thread_name_prefix="weightpack-model") as models:
        futures = [models.submit(_outcome, job, lambda src, final: there(cluster, src, final)) for job in jobs]
        try:
            wait(futures)
        except KeyboardInterrupt:  # Ctrl-C in this thread (a Python caller's): every model stops at its next step
            CANCEL.set()
            wait(futures)
            CANCEL.clear()
            raise
        outcomes = []
        for future in futures:
            try:
                outcomes.append(future.result())
            except KeyboardInterrupt:  # a model stopped on a cancellation request: cleaned up, so is the run
                raise KeyboardInterrupt from None
    return Summary(outcomes, time.perf_counter() - start)


def _outcome(job: Job, work: Callable[[Path, Path | None], None]) -> Outcome:
    src, final, error = job
    outcome = Outcome(str(src), None if final is None else str(final), error)
    if error is not None:
        return outcome
    if CANCEL.is_set():
        raise KeyboardInterrupt
    start = time.perf_counter()
    try:
        with about(src):
            work(src, final)
    except WeightpackError as exc:
        outcome.error = _first_line(exc)
        return outcome
    outcome.seconds = round(time.perf_counter() - start, 3)
    outcome.source_bytes = tree_size(src)
    outcome.destination_bytes = tree_size(final) if final is not None else 0
    return outcome


class _Cluster:
    """A connection to a Ray cluster, the tasks weightpack runs there, and one progress bar for all."""

    def __init__(self, address: str, threads: int, total: int, progress: bool) -> None:
        _check_reachable(address)
        import ray

        self.ray, self.threads, self._owned = ray, threads, not ray.is_initialized()
        if self._owned:
            try:
                ray.init(address=address, logging_level="ERROR", log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise WeightpackError(f"cannot connect to the Ray cluster at {address}: {_first_line(exc)}") from None
        task = ray.remote(num_cpus=threads, max_retries=TASK_RETRIES)
        self._keys = ray.remote(num_cpus=1, max_retries=TASK_RETRIES)(_keys_task)
        self._pack, self._unpack, self._verify = task(_pack_task), task(_unpack_task), task(_verify_task)
        self._bar = api.Progress(total, progress, "cluster")
        self._lock = threading.Lock()

    def __enter__(self) -> _Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.__exit__()
        if self._owned:
            self.ray.shutdown()

    def _advance(self, n: int) -> None:
        with self._lock:
            self._bar.update(n)

    @contextmanager
    def _tasks(self) -> Iterator[list[Any]]:
        """The tasks of one model. If anything in the block fails (a task, a copy, a cancellation), all
        of them are cancelled and waited for: nothing writes into the model's temporary once it is removed."""
        tasks: list[Any] = []
        try:
            yield tasks
        except BaseException:
            self._cancel(tasks)
            raise

    def pack(self, src: Path, final: Path, *, overwrite: bool, verify: bool, base: str | os.PathLike | None) -> None:
        if src.is_file():
            with atomic_output(final, overwrite) as tmp, self._tasks() as tasks:
                tasks.append(self._pack.remote(str(src), str(tmp), "", [], self.threads, verify, base))
                self._results(tasks)
            return
        plan = api.packable(src)
        weights, archives = plan.weights, [plan.archive(f) for f in plan.weights]
        with atomic_output(final, overwrite, directory=True, writes=plan.writes) as tmp, self._tasks() as tasks:
            tasks += [self._keys.remote(str(f)) for f in weights]
            keys = self._results(tasks, count=False)
            shards: list[Any] = []
            for f, archive, (earlier, before) in zip(weights, archives, copies_to_look_for(weights, archives, keys)):
                (tmp / archive).parent.mkdir(parents=True, exist_ok=True)
                shards.append(self._pack.remote(str(f), str(tmp / archive), archive, earlier, self.threads, verify,
                                                base, *[shards[j] for j in before]))
            tasks += shards
            record = manifest.Manifest()
            files = {plan.name(f): self._copy(f, tmp / plan.name(f)) for f in plan.others}  # while shards are coded
            for f, archive, shard in zip(weights, archives, self._results(shards)):
                record.archives[archive] = manifest.Archive(plan.name(f), shard["size"], shard["sha256"])
            record.files.update(files)
            (tmp / MANIFEST).write_bytes(record.dumps())

    def unpack(self, src: Path, final: Path, *, overwrite: bool, base: str | os.PathLike | None,
               sha256: bool) -> None:
        if src.is_file():
            with atomic_output(final, overwrite) as tmp, self._tasks() as tasks:
                tasks.append(self._unpack.remote(str(src), str(tmp), None, self.threads, base, sha256))
                self._results(tasks)
            return
        record = manifest.read_packed(src)
        with atomic_output(final, overwrite, directory=True, writes=record.restored_names()) as tmp, \
                self._tasks() as tasks:
            for name, entry in record.archives.items():
                (tmp / entry.original).parent.mkdir(parents=True, exist_ok=True)
                tasks.append(self._unpack.remote(str(src / name), str(tmp / entry.original), entry, self.threads,
                                                 base, sha256))
            for name, entry in record.files.items():
                self._copy(src / name, tmp / name, entry.sha256)
            self._results(tasks)

    def verify(self, src: Path, *, base: str | os.PathLike | None) -> None:
        record = None if src.is_file() else manifest.read_packed(src)
        with self._tasks() as tasks:
            if record is None:
                tasks.append(self._verify.remote(str(src), None, self.threads, base))
            else:
                tasks += [self._verify.remote(str(src / name), entry, self.threads, base)
                          for name, entry in record.archives.items()]
                api.check_files(src, record, self._advance)
            self._results(tasks)

    def _copy(self, src: Path, dst: Path, sha256: str | None = None) -> manifest.File:
        """A small file of a model (config, tokenizer), copied and checked by this process."""
        dst.parent.mkdir(parents=True, exist_ok=True)
        with about(src):
            record = api.copy_checked(src, dst, sha256)
        self._advance(record.size)
        return record

    def _results(self, tasks: list[Any], count: bool = True) -> list[Any]:
        """The tasks' results, in order, once all are done (counted on the progress bar as they finish);
        the first failure as a WeightpackError naming the file and the node; a cancellation request
        as KeyboardInterrupt."""
        ray = self.ray
        try:
            pending = list(tasks)
            while pending:
                if CANCEL.is_set():
                    raise KeyboardInterrupt
                ready, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_SECONDS)
                for result in ray.get(ready):
                    if count:
                        self._advance(result["bytes"])
            return ray.get(tasks)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if isinstance(exc.cause, WeightpackError) else exc
            raise WeightpackError(_first_line(cause)) from None
        except ray.exceptions.RayError as exc:  # a worker or node lost more often than retried, a cancelled task
            raise WeightpackError(f"a task was lost: {type(exc).__name__}: {_first_line(exc)}") from None

    def _cancel(self, tasks: list[Any]) -> None:
        """Stop the tasks still running and wait until every one has ended.

        They are asked first (a KeyboardInterrupt in the task, which unwinds it within a stripe);
        only those still running after ``CANCEL_GRACE_SECONDS`` are force-killed. Force-cancelling
        at once crashed the driver: a task whose result was already on its way was failed by the
        cancellation, then completed by its reply (ray 2.60 aborts on a CHECK in
        ``TaskManager::CompletePendingTask``; seen in this suite's cluster tests).
        """
        ray = self.ray
        for force, grace in ((False, CANCEL_GRACE_SECONDS), (True, None)):
            _, running = ray.wait(tasks, num_returns=len(tasks), timeout=0, fetch_local=False) if tasks else ([], [])
            if not running:
                return
            for task in running:
                ray.cancel(task, force=force)
            ray.wait(running, num_returns=len(running), timeout=grace, fetch_local=False)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_reachable(address: str) -> None:
    """Refuse at once a HOST:PORT that does not answer (Ray itself retries for minutes)."""
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():
        return  # "auto", "ray://...", "local": Ray checks those itself, quickly
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as exc:
        raise WeightpackError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


# The tasks, run on the cluster's workers. Each names its node in any error.

def _node() -> str:
    import ray

    return f"node {ray.util.get_node_ip_address()} ({ray.get_runtime_context().get_node_id()[:12]})"


def _on_node(path: str, work: Callable[[], T]) -> T:
    try:
        with about(path):
            return work()
    except WeightpackError as exc:
        raise WeightpackError(f"{exc} (on {_node()})") from None


def _keys_task(src: str) -> list[tuple[TensorEntry, int]]:
    return _on_node(src, lambda: dedup_keys(Path(src)))


def _pack_task(src: str, out: str, archive: str, earlier: Earlier, threads: int, verify: bool,
               base: str | os.PathLike | None, *before: dict[str, Any]) -> dict[str, Any]:
    """Pack one file into ``out``; ``before``: the results of the earlier shards it may copy from."""
    def work() -> dict[str, Any]:
        dedup = Dedup.after(earlier, {shard["archive"]: bytes.fromhex(shard["sha256"]) for shard in before})
        with api.workers(threads, base) as (pool, base_set):
            index = api.pack_archive(Path(src), Path(out), pool, verify, _quiet, base_set, dedup, archive)
        return {"archive": archive, "size": index.original_size, "sha256": index.original_sha256.hex(),
                "bytes": index.original_size}
    return _on_node(src, work)


def _unpack_task(src: str, out: str, expected: manifest.Archive | None, threads: int,
                 base: str | os.PathLike | None, sha256: bool) -> dict[str, Any]:
    def work() -> dict[str, Any]:
        with api.workers(threads, base) as (pool, base_set), api.open_archive(Path(src), pool, base_set) as reader:
            api.restore_archive(reader, expected, Path(out), _quiet, sha256)
        return {"bytes": os.path.getsize(src)}
    return _on_node(src, work)


def _verify_task(src: str, expected: manifest.Archive | None, threads: int,
                 base: str | os.PathLike | None) -> dict[str, Any]:
    def work() -> dict[str, Any]:
        with api.workers(threads, base) as (pool, base_set):
            api.verify_archive(Path(src), expected, pool, base_set)
        return {"bytes": os.path.getsize(src)}
    return _on_node(src, work)


def _quiet(n: int) -> None:
    """Progress of a task: counted by the driver when the task is done."""
