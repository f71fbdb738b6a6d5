"""Running the synchronous library from grpc.aio servicers: a dedicated thread pool.

The eventsourcing library (and so every crmcore application) blocks. A servicer hands each
blocking call to `BlockingCalls`, whose pool is sized by the service settings
(`CRM_WORKER_THREADS`, default 64) rather than asyncio's small default pool: concurrent RPCs must
reach the group-commit writer together for their events to share a transaction.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class BlockingCalls:
    """`await calls(function, *args, **kwargs)` runs the call in the pool, off the event loop."""

    def __init__(self, threads: int, *, name: str = "blocking-call") -> None:
        if threads < 1:
            raise ValueError("at least one thread is needed")
        self.threads = threads
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)

    async def __call__(self, function: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, functools.partial(function, *args, **kwargs)
        )

    def shutdown(self, *, wait: bool = True) -> None:
        """Lets running calls finish (when `wait`) and refuses new ones."""
        self._executor.shutdown(wait=wait, cancel_futures=not wait)
