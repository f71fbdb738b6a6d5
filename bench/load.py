"""Concurrent gRPC load for the service benchmarks, and the ceiling the transport sets on it.

`run_load` drives `clients` concurrent callers (coroutines of one asyncio loop, 64 by default)
over `CHANNELS` grpc.aio channels, shared round robin, every call carrying the bench token. The
callers take their work from one shared iterator, so each starts its next item as soon as its
previous one is done; each call made through `timed` leaves its latency, and the rate is those
calls per second of the whole run.

`rpc_ceiling` is the same load made of `grpc.health.v1.Health/Check` calls to the same
service. Health needs no token (the channels carry it all the same, as for the commands) and
does no work, so its rate is that of the gRPC round trip alone, client and server together, on
this machine: no command measured the same way can be faster. Where the load generator, the
service and PostgreSQL share a few cores, this ceiling can be the bound of a command figure,
not the store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from crmcore.adapters.grpc.channels import open_channel

CLIENTS = 64
CHANNELS = 4
WARM_UP_CHECKS = 200

Reply = TypeVar("Reply")
Stub = TypeVar("Stub")
Work = TypeVar("Work")


class Timed(Protocol):
    """Awaits one call and records its latency."""

    async def __call__(self, call: Awaitable[Reply], /) -> Reply: ...


@dataclass(frozen=True)
class Load:
    """What one run of concurrent callers measured."""

    calls: int
    seconds: float
    latencies: list[float]  # of each call, in seconds

    @property
    def per_s(self) -> float:
        return self.calls / self.seconds


async def run_load(
    address: str,
    token: str,
    stub: Callable[[grpc.aio.Channel], Stub],
    work: Iterable[Work],
    caller: Callable[[Stub, Iterator[Work], Timed], Awaitable[None]],
    clients: int = CLIENTS,
) -> Load:
    """Runs `clients` copies of `caller` at once, each with a stub of one of the channels, the
    shared iterator of `work` and the function timing its calls, until `work` runs out."""
    channels = [open_channel(address, token=token) for _ in range(CHANNELS)]
    stubs = [stub(channel) for channel in channels]
    remaining = iter(work)
    latencies: list[float] = []

    async def timed(call: Awaitable[Reply]) -> Reply:
        started = time.perf_counter()
        reply = await call
        latencies.append(time.perf_counter() - started)
        return reply

    try:
        started = time.perf_counter()
        await asyncio.gather(
            *(caller(stubs[number % len(stubs)], remaining, timed) for number in range(clients))
        )
        seconds = time.perf_counter() - started
    finally:
        for channel in channels:
            await channel.close(None)
    return Load(calls=len(latencies), seconds=seconds, latencies=latencies)


async def _check(stub: Any, remaining: Iterator[int], timed: Timed) -> None:
    request = health_pb2.HealthCheckRequest()
    for _ in remaining:
        await timed(stub.Check(request, timeout=60))


async def rpc_ceiling(address: str, token: str, calls: int, clients: int = CLIENTS) -> Load:
    """`calls` empty health checks from `clients` concurrent callers, as `run_load` makes them,
    after a few to warm up (as the command figures are measured after a warm-up)."""
    stub = health_pb2_grpc.HealthStub
    await run_load(address, token, stub, range(WARM_UP_CHECKS), _check, clients)
    return await run_load(address, token, stub, range(calls), _check, clients)
