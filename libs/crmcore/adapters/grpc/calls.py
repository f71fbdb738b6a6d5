"""Running the synchronous library from grpc.aio servicers: a dedicated thread pool.

The eventsourcing library (and so every crmcore application) blocks. A servicer hands each
blocking call to `BlockingCalls`, whose pool is sized by the service settings
(`CRM_WORKER_THREADS`, default 64) rather than asyncio's small default pool: concurrent RPCs must
reach the group-commit writer together for their events to share a transaction.

Two things cross from the RPC into the worker thread:

- the context variables of the RPC (`contextvars.copy_context()`), so that what an interceptor
  set for the call — the authenticated `current_principal` above all — is what the application
  code sees while it stores events;
- the RPC's deadline. `DeadlineInterceptor` records it in `rpc_deadline` for each call, and a
  blocking call that reaches a worker thread after that deadline is not started: it raises
  `DeadlineExpired` (DEADLINE_EXCEEDED to the client) and stores nothing. A call queued behind
  busy threads therefore never writes on behalf of a client that has stopped waiting. A call
  that has started runs to its end (a store write is not interrupted halfway).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import grpc

from crmcore.adapters.grpc.handlers import WrappingInterceptor, rebuilt_by_response

P = ParamSpec("P")
T = TypeVar("T")

if TYPE_CHECKING:  # the stubs make it generic; at run time it is not subscriptable
    Handler = grpc.RpcMethodHandler[Any, Any]
    Context = grpc.aio.ServicerContext[Any, Any]

#: When the RPC being handled must be answered by, on the `time.monotonic()` clock (None: the
#: client set no deadline). Set by `DeadlineInterceptor`; read by `BlockingCalls`.
rpc_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "rpc_deadline", default=None
)


class DeadlineExpired(Exception):
    """The RPC's deadline passed before its blocking call could start (DEADLINE_EXCEEDED)."""


class BlockingCalls:
    """`await calls(function, *args, **kwargs)` runs the call in the pool, off the event loop,
    in a copy of the caller's context; refused with `DeadlineExpired` once the caller's RPC
    deadline has passed."""

    def __init__(self, threads: int, *, name: str = "blocking-call") -> None:
        if threads < 1:
            raise ValueError("at least one thread is needed")
        self.threads = threads
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)

    async def __call__(self, function: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        call = functools.partial(function, *args, **kwargs)
        return await loop.run_in_executor(
            self._executor, context.run, _unless_expired, call, rpc_deadline.get()
        )

    def shutdown(self, *, wait: bool = True) -> None:
        """Lets running calls finish (when `wait`) and refuses new ones."""
        self._executor.shutdown(wait=wait, cancel_futures=not wait)


def _unless_expired(call: Callable[[], T], deadline: float | None) -> T:
    # Checked in the worker thread, just before the call: the time spent queued counts.
    if deadline is not None and time.monotonic() >= deadline:
        raise DeadlineExpired("deadline exceeded before the call started; nothing was done")
    return call()


class DeadlineInterceptor(WrappingInterceptor):
    """Puts each RPC's deadline in `rpc_deadline` while its handler runs."""

    def wrap(self, handler: Handler, method: str) -> Handler:
        return rebuilt_by_response(handler, _unary_with_deadline, _stream_with_deadline)


def _deadline_of(context: Context) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _unary_with_deadline(behaviour: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    async def call(request: Any, context: Context) -> Any:
        token = rpc_deadline.set(_deadline_of(context))
        try:
            return await behaviour(request, context)
        finally:
            rpc_deadline.reset(token)

    return call


def _stream_with_deadline(behaviour: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
    async def call(request: Any, context: Context) -> AsyncIterator[Any]:
        # Set, not reset: an async generator may be resumed from another context, where a
        # reset token would not be valid; the RPC's task ends with the stream anyway.
        rpc_deadline.set(_deadline_of(context))
        async for response in behaviour(request, context):
            yield response

    return call
