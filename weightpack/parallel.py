"""Ordered, bounded parallelism: the one way weightpack spreads work over threads.

The numba kernels release the GIL (``nogil=True``), so plain threads run them on every core. Jobs
are submitted at most ``window`` ahead of the consumer and yielded in submission order, so output
can be written sequentially while memory holds only a window of results, whatever the input size.
Whole tasks that each run such jobs (the archives of a folder) run a few at a time with
``side_by_side``, which stops them all at the first failure.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor, as_completed, wait
from typing import TypeVar

T = TypeVar("T")
WINDOW_PER_THREAD = 2  # jobs in flight per worker: one running, one queued, so no worker waits on the consumer


def thread_count(pool: Executor | None) -> int:
    """The threads of ``pool``: what sizes windows and jobs (1 without a pool: this thread does the work)."""
    return getattr(pool, "_max_workers", 1)


def ordered_map(pool: Executor | None, jobs: Iterable[Callable[[], T]], window: int | None = None) -> Iterator[T]:
    """Run ``jobs`` on ``pool`` (or one by one in this thread if None), yielding results in order.

    On an early exit (an error, a cancellation, the consumer stopping), queued jobs are cancelled
    and running ones are waited for: when this returns, no job of it touches anything any more (a
    file a job writes into can be closed and removed safely).
    """
    if pool is None:
        yield from (job() for job in jobs)
        return
    window = window or WINDOW_PER_THREAD * thread_count(pool)
    pending: deque[Future] = deque()
    try:
        for job in jobs:
            pending.append(pool.submit(job))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        wait(pending)


def side_by_side(calls: list[Callable[[Callable[[int], None]], None]], at_once: int, update: Callable[[int], None],
                 beside: list[Future] | None = None) -> None:
    """Run ``call(progress)`` for each call, ``at_once`` at a time, while the work ``beside`` (futures of work
    already started) goes on; return when all are done.

    ``progress(n)`` passes ``n`` to ``update``, or, once anything has failed, stops the call that reports
    it: the first failure stops the rest at their next step, and is raised here once they have stopped
    (``ordered_map`` would raise it only in its turn, and let the calls before it run to their end).
    """
    stopped = threading.Event()

    def progress(n: int) -> None:
        if stopped.is_set():
            raise _Stopped
        update(n)
    with ThreadPoolExecutor(at_once, thread_name_prefix="weightpack-side") as runners:
        work = [*(beside or []), *(runners.submit(call, progress) for call in calls)]
        try:
            for future in as_completed(work):
                future.result()
        except BaseException:
            stopped.set()
            for future in work:
                future.cancel()
            wait(work)
            raise


class _Stopped(Exception):
    """A call of ``side_by_side`` stopped because another one failed (never reported: that failure is)."""
