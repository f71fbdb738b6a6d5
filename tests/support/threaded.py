"""A service started on an asyncio loop of its own thread, for synchronous gRPC clients
(hypothesis and blocking stubs cannot run inside the test's own loop)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar


class Running(Protocol):
    @property
    def address(self) -> str: ...

    async def stop(self, grace: float | None = None) -> None: ...


R = TypeVar("R", bound=Running)


@dataclass
class ThreadedLoop:
    """An asyncio loop on a thread of its own, running a service until `close()`."""

    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    stop: asyncio.Event

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(timeout=30)
        self.loop.close()


def serve_in_thread(start: Callable[[], Coroutine[Any, Any, R]]) -> tuple[R, ThreadedLoop]:
    """The service `start()` returns, serving on a new loop in a daemon thread until the
    returned loop is closed (then stopped with a half-second grace). A failed start raises."""
    ready = threading.Event()
    started: list[R] = []
    failed: list[BaseException] = []
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def serve() -> None:
        try:
            service = await start()
        except BaseException as error:
            failed.append(error)
            ready.set()
            raise
        started.append(service)
        ready.set()
        await stop.wait()
        await service.stop(grace=0.5)

    thread = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    thread.start()
    ready.wait(timeout=60)
    if failed:
        raise failed[0]
    (service,) = started
    return service, ThreadedLoop(loop=loop, thread=thread, stop=stop)
