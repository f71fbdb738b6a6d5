"""Starting and stopping a service's gRPC server: health, reflection, error mapping, SIGTERM.

Every service builds its server the same way (ARCHITECTURE.md, "gRPC conventions"): the
standard health service (SERVING once started, NOT_SERVING while draining), reflection for
grpcurl and friends, the domain-error interceptor, and a graceful stop on SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from crmcore.adapters.grpc.errors import DomainErrorInterceptor

MAX_MESSAGE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class ServiceBinding:
    """One gRPC service of a server: its full name and how to add its servicer."""

    full_name: str
    add_to_server: Callable[[grpc.aio.Server], None]


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: HealthServicer
    service_names: tuple[str, ...]
    stopped: asyncio.Event = field(default_factory=asyncio.Event)

    async def stop(self, grace: float = 5.0) -> None:
        """Reports NOT_SERVING, lets in-flight RPCs finish for `grace` seconds, then stops."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        self.stopped.set()


async def start_server(
    services: Sequence[ServiceBinding],
    address: str,
    *,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
) -> RunningServer:
    """Starts a gRPC server on `address` (`host:port`, port 0 picks a free one)."""
    server = grpc.aio.server(
        interceptors=[DomainErrorInterceptor()],
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ],
    )
    for service in services:
        service.add_to_server(server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    names = tuple(service.full_name for service in services)
    reflection.enable_server_reflection(
        (
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    for name in ("", *names):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server=server, port=port, health=health, service_names=names)


async def serve_until_signalled(running: RunningServer, *, grace: float = 5.0) -> None:
    """Runs until SIGTERM or SIGINT, then stops gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):  # not on every platform
            loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.ensure_future(running.stopped.wait())
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    stopper.cancel()
    if not running.stopped.is_set():
        await running.stop(grace)
