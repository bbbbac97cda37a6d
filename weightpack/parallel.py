"""Ordered, bounded parallelism: the one way weightpack spreads work over threads.

The numba kernels release the GIL (``nogil=True``), so plain threads run them on every core. Jobs
are submitted at most ``window`` ahead of the consumer and yielded in submission order, so output
can be written sequentially while memory holds only a window of results, whatever the input size.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import TypeVar

T = TypeVar("T")
WINDOW = 8


def ordered_map(pool: Executor | None, jobs: Iterable[Callable[[], T]], window: int = WINDOW) -> Iterator[T]:
    """Run ``jobs`` on ``pool`` (or one by one in this thread if None), yielding results in order."""
    if pool is None:
        yield from (job() for job in jobs)
        return
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
