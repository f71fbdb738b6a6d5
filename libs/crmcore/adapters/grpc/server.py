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

from crmcore.adapters.grpc.access import AccessInterceptor
from crmcore.adapters.grpc.calls import DeadlineInterceptor
from crmcore.adapters.grpc.errors import DomainErrorInterceptor
from crmcore.adapters.grpc.tls import server_credentials
from crmcore.adapters.grpc.wire import MalformedRequestInterceptor
from crmcore.config import DEFAULT_MAX_MESSAGE_BYTES, ServerTlsSettings

MAX_MESSAGE_BYTES = DEFAULT_MAX_MESSAGE_BYTES


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
    #: The plaintext health-only server (`health_address`), when there is one.
    health_server: grpc.aio.Server | None = None
    health_port: int | None = None

    async def stop(self, grace: float = 5.0) -> None:
        """Reports NOT_SERVING, lets in-flight RPCs finish for `grace` seconds, then stops."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        if self.health_server is not None:
            await self.health_server.stop(0)
        self.stopped.set()


async def start_server(
    services: Sequence[ServiceBinding],
    address: str,
    *,
    access: AccessInterceptor,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    tls: ServerTlsSettings | None = None,
    health_address: str | None = None,
) -> RunningServer:
    """Starts a gRPC server on `address` (`host:port`, port 0 picks a free one). Every call
    but health and reflection passes `access` (token, scope, rate) first: there is no open
    mode."""
    server = grpc.aio.server(
        # Undecodable request bytes: INVALID_ARGUMENT (after authentication, when present).
        # DeadlineInterceptor: blocking calls never start after the client's deadline (calls.py).
        interceptors=[
            access,
            DomainErrorInterceptor(),
            DeadlineInterceptor(),
            MalformedRequestInterceptor(),
        ],
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
    # With TLS settings the port speaks TLS only (mutual TLS with a client CA): no plaintext.
    if tls is not None:
        port = server.add_secure_port(address, server_credentials(tls))
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    running = RunningServer(server=server, port=port, health=health, service_names=names)
    if health_address is not None:
        # Kubernetes' gRPC probes cannot speak TLS: the same health service, alone, in clear.
        running.health_server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health, running.health_server)
        running.health_port = running.health_server.add_insecure_port(health_address)
        if running.health_port == 0:
            await server.stop(0)
            raise OSError(f"cannot listen on {health_address}")
        await running.health_server.start()
    for name in ("", *names):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    return running


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
