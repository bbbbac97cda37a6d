"""Ordered, bounded parallelism: the one way weightpack spreads work over threads.

The numba kernels release the GIL (``nogil=True``), so plain threads run them on every core. Jobs
are submitted at most ``window`` ahead of the consumer and yielded in submission order, so output
can be written sequentially while memory holds only a window of results, whatever the input size.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, wait
from typing import Any, TypeVar

T = TypeVar("T")
WINDOW_PER_THREAD = 2  # jobs in flight per worker: one running, one queued, so no worker waits on the consumer


def ordered_map(pool: Executor | None, jobs: Iterable[Callable[[], T]], window: int | None = None) -> Iterator[T]:
    """Run ``jobs`` on ``pool`` (or one by one in this thread if None), yielding results in order.

    On an early exit (an error, a cancellation, the consumer stopping), queued jobs are cancelled
    and running ones are waited for: when this returns, no job of it touches anything any more (a
    file a job writes into can be closed and removed safely).
    """
    if pool is None:
        yield from (job() for job in jobs)
        return
    window = window or WINDOW_PER_THREAD * getattr(pool, "_max_workers", 4)
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


def submit(pool: Executor | None, fn: Callable[..., T], *args: Any) -> Future[T]:
    """``pool.submit``, or run now (in this thread) without a pool."""
    if pool is not None:
        return pool.submit(fn, *args)
    future: Future[T] = Future()
    future.set_result(fn(*args))
    return future
