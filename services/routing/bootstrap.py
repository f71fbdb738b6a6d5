"""Composition root of the routing service: builds everything from the settings, and stops it.

- the routing application (engine rebuilt from its snapshot and the events after it);
- the gRPC server (health, reflection, domain-error interceptor) with the servicer, whose
  blocking calls run on a pool of `worker_threads` threads, and the offer feeds of StreamOffers;
- the clock loop: sleeps until the engine's next deadline (an offer expiring, a cooldown
  ending, a routing step widening) or until something was stored, then lets time act (`tick`);
- with a bus: the outbox relay publishing the routing events (`crm.routing.*`) and a durable
  JetStream consumer of `crm.interaction.>` bringing work in and taking it out (idempotent:
  each task remembers the last interaction version applied).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from crm.v1 import routing_pb2, routing_pb2_grpc
from crmcore.adapters.envelope import Envelope
from crmcore.adapters.grpc.access import ServiceAccess, open_service_access
from crmcore.adapters.grpc.calls import BlockingCalls
from crmcore.adapters.grpc.server import RunningServer, ServiceBinding, start_server
from crmcore.adapters.jetstream import EventConsumer, Handlers
from crmcore.adapters.relay import OutboxRelay
from crmcore.application.principal import ROUTING_ENGINE_PRINCIPAL, running_as
from crmcore.application.routing import RoutingApplication, system_clock
from crmcore.domain.base import DomainEvent
from crmcore.domain.interaction import InteractionEvent
from crmcore.domain.routing import ROUTED_EVENTS
from services.routing.config import RoutingServiceSettings
from services.routing.servicer import OfferFeeds, RoutingServicer

log = logging.getLogger(__name__)

SERVICE_NAME = routing_pb2.DESCRIPTOR.services_by_name["RoutingService"].full_name
#: Durable name of the JetStream consumer of interaction events.
INTERACTION_CONSUMER = "routing-interactions"
INTERACTION_SUBJECTS = ("crm.interaction.>",)
#: The clock loop looks at least this often (seconds), deadline or not.
MAX_SLEEP_S = 1.0
#: How long the background tasks get to return once asked to stop.
BACKGROUND_STOP_S = 2.0


@dataclass
class RoutingService:
    """One running routing service (`start`), stopped with `stop()`."""

    settings: RoutingServiceSettings
    app: RoutingApplication
    calls: BlockingCalls
    feeds: OfferFeeds
    servicer: RoutingServicer
    relay: OutboxRelay | None = None
    consumer: EventConsumer | None = None
    server: RunningServer | None = None
    access: ServiceAccess | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    detach: list[Callable[[], None]] = field(default_factory=list)
    _stopped: bool = False

    @property
    def port(self) -> int:
        assert self.server is not None, "the service is not started"
        return self.server.port

    @property
    def address(self) -> str:
        host = self.settings.service.address.rpartition(":")[0] or "127.0.0.1"
        return f"{host}:{self.port}"

    def poke(self) -> None:
        """Wakes the clock loop now (e.g. a test moved its clock on)."""
        self.wake.set()

    async def stop(self, grace: float | None = None) -> None:
        """Ends the offer streams, drains the RPCs in flight (health NOT_SERVING meanwhile),
        stops the clock loop and the bus clients, writes a last snapshot, closes the stores."""
        if self._stopped:
            return
        self._stopped = True
        if grace is None:
            grace = self.settings.service.shutdown_grace_s
        self.feeds.close()
        if self.server is not None and not self.server.stopped.is_set():
            await self.server.stop(grace)
        self.stopping.set()
        self.wake.set()
        if self.consumer is not None:
            self.consumer.stop()
        if self.relay is not None:
            self.relay.stop()
        await _finish(self.tasks, within_s=BACKGROUND_STOP_S)
        for detach in self.detach:
            detach()
        self.calls.shutdown(wait=True)
        if self.access is not None:
            await asyncio.to_thread(self.access.close)
        await asyncio.to_thread(self.app.shutdown)


def build(
    settings: RoutingServiceSettings, *, clock: Callable[[], datetime] = system_clock
) -> RoutingService:
    """The service's parts, wired but not running (no server, no bus connection yet)."""
    service = settings.service
    app = RoutingApplication(
        service.persistence,
        clock=clock,
        policy=settings.policy,
        snapshot_every=settings.snapshot_every,
    )
    calls = BlockingCalls(service.worker_threads, name="routing-rpc")
    feeds = OfferFeeds(app)
    running = RoutingService(
        settings=settings,
        app=app,
        calls=calls,
        feeds=feeds,
        servicer=RoutingServicer(app, calls, feeds),
    )
    if settings.bus is not None:
        running.relay = OutboxRelay(app, settings.bus, source="routing")
        running.consumer = EventConsumer(
            settings.bus,
            durable=INTERACTION_CONSUMER,
            subjects=INTERACTION_SUBJECTS,
            handlers=_interaction_handlers(app, calls),
        )
    return running


def _interaction_handlers(app: RoutingApplication, calls: BlockingCalls) -> Handlers:
    async def route(event: InteractionEvent, envelope: Envelope) -> None:
        await calls(running_as(ROUTING_ENGINE_PRINCIPAL, app.handle_interaction_event), event)

    handlers = Handlers()
    for event_class in ROUTED_EVENTS:
        handlers.on(event_class, route)
    return handlers


async def start(
    settings: RoutingServiceSettings, *, clock: Callable[[], datetime] = system_clock
) -> RoutingService:
    """Builds the service and starts serving on `settings.service.address` (port 0: any)."""
    service = await asyncio.to_thread(build, settings, clock=clock)
    loop = asyncio.get_running_loop()
    service.detach.append(service.feeds.attach(loop))
    service.detach.append(service.app.add_listener(_after_commit(service, loop)))
    try:
        service.access = await asyncio.to_thread(open_service_access, settings.service)
        service.server = await start_server(
            [
                ServiceBinding(
                    full_name=SERVICE_NAME,
                    add_to_server=lambda server: (
                        routing_pb2_grpc.add_RoutingServiceServicer_to_server(
                            service.servicer, server
                        )
                    ),
                )
            ],
            settings.service.address,
            access=service.access.interceptor,
            tls=settings.service.tls,
            max_message_bytes=settings.service.max_message_bytes,
            health_address=settings.service.health_address,
        )
    except BaseException:
        await service.stop(grace=0)
        raise
    runners: list[tuple[Coroutine[Any, Any, None], str]] = [(_clock_loop(service), "clock loop")]
    if service.relay is not None:
        runners.append((service.relay.run(), "relay"))
    if service.consumer is not None:
        runners.append((service.consumer.run(), "interaction consumer"))
    for runner, name in runners:
        service.tasks.append(asyncio.create_task(_logged(runner, name)))
    log.info(
        "routing service on %s (%s storage, bus %s)",
        service.address,
        settings.service.persistence.kind,
        "off" if settings.bus is None else settings.bus.url,
    )
    return service


def _after_commit(
    service: RoutingService, loop: asyncio.AbstractEventLoop
) -> Callable[[Sequence[DomainEvent]], None]:
    """Called in the storing thread: the relay has news, the clock may have a new deadline."""

    def heard(events: Sequence[DomainEvent]) -> None:
        if service.relay is not None:
            service.relay.nudge()
        with contextlib.suppress(RuntimeError):  # the loop has closed
            loop.call_soon_threadsafe(service.wake.set)

    return heard


async def _clock_loop(service: RoutingService) -> None:
    """Lets time act at every deadline of the engine (offer time-outs, cooldowns, widening)."""
    app = service.app
    while not service.stopping.is_set():
        deadline = await service.calls(app.next_deadline)
        delay = MAX_SLEEP_S
        if deadline is not None:
            delay = min(MAX_SLEEP_S, max(0.0, (deadline - app.clock()).total_seconds()))
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(service.wake.wait(), timeout=delay)
        service.wake.clear()
        if service.stopping.is_set():
            return
        try:
            await service.calls(running_as(ROUTING_ENGINE_PRINCIPAL, app.tick))
        except Exception:
            # The store may be down: the engine is rebuilt on the next call; try again later.
            log.exception("routing clock: tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(service.stopping.wait(), timeout=MAX_SLEEP_S)


async def _logged(runner: Coroutine[Any, Any, None], name: str) -> None:
    try:
        await runner
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("routing %s stopped with an error", name)


async def _finish(tasks: list[asyncio.Task[None]], *, within_s: float) -> None:
    """Waits for the background tasks to return, cancelling them after `within_s`: one stuck
    connecting to an unreachable NATS server must not hold up the shutdown."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=within_s)
    for task in pending:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
