"""Composition root of the customer service: builds everything from the settings, and stops it.

- the customer application (group commit: concurrent RPCs share transactions) with its key
  vault, and its read models (`CustomerViews`: directory and Customer 360 timeline);
- the gRPC server (health, reflection, domain-error interceptor) with the servicer, whose
  blocking calls run on a pool of `worker_threads` threads;
- with a bus: the outbox relay publishing the customer events (redacted: no personal data
  leaves the service) and a durable JetStream consumer projecting the interaction and VOC
  events into the timeline (idempotent: each entry remembers the version of its item).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from crm.v1 import customer_pb2, customer_pb2_grpc
from crmcore.adapters.envelope import Envelope
from crmcore.adapters.grpc.access import ServiceAccess, open_service_access
from crmcore.adapters.grpc.calls import BlockingCalls
from crmcore.adapters.grpc.server import RunningServer, ServiceBinding, start_server
from crmcore.adapters.jetstream import EventConsumer, Handlers
from crmcore.adapters.relay import OutboxRelay
from crmcore.application.customer_views import (
    TIMELINE_SUBJECTS,
    CustomerViews,
    timeline_event_classes,
)
from crmcore.application.customers import CustomerApplication
from crmcore.domain.base import DomainEvent
from services.customer.config import CustomerServiceSettings
from services.customer.servicer import CustomerServicer

log = logging.getLogger(__name__)

SERVICE_NAME = customer_pb2.DESCRIPTOR.services_by_name["CustomerService"].full_name
#: Durable name of the JetStream consumer feeding the timeline.
TIMELINE_CONSUMER = "customer-timeline"
#: How long the relay and the consumer get to return once asked to stop.
BUS_STOP_S = 2.0


@dataclass
class CustomerService:
    """One running customer service (`start`), stopped with `stop()`."""

    settings: CustomerServiceSettings
    app: CustomerApplication
    views: CustomerViews
    calls: BlockingCalls
    servicer: CustomerServicer
    relay: OutboxRelay | None = None
    consumer: EventConsumer | None = None
    server: RunningServer | None = None
    access: ServiceAccess | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stopped: bool = False

    @property
    def port(self) -> int:
        assert self.server is not None, "the service is not started"
        return self.server.port

    @property
    def address(self) -> str:
        host = self.settings.service.address.rpartition(":")[0] or "127.0.0.1"
        return f"{host}:{self.port}"

    async def stop(self, grace: float | None = None) -> None:
        """Drains the RPCs in flight (health NOT_SERVING meanwhile), stops the bus clients,
        stores what the group-commit writer holds, and closes the stores."""
        if self._stopped:
            return
        self._stopped = True
        if grace is None:
            grace = self.settings.service.shutdown_grace_s
        if self.server is not None and not self.server.stopped.is_set():
            await self.server.stop(grace)
        if self.consumer is not None:
            self.consumer.stop()
        if self.relay is not None:
            self.relay.stop()
        await _finish(self.tasks, within_s=BUS_STOP_S)
        self.calls.shutdown(wait=True)
        if self.access is not None:
            await asyncio.to_thread(self.access.close)
        await asyncio.to_thread(self._close_stores)

    def _close_stores(self) -> None:
        self.app.shut_down()
        self.views.close_views()


def build(settings: CustomerServiceSettings) -> CustomerService:
    """The service's parts, wired but not running (no server, no bus connection yet)."""
    service = settings.service
    app = CustomerApplication(
        service.persistence,
        default_region=service.default_region,
        group_commit=True,
        index_secret=service.index_secret,
    )
    views = CustomerViews(app)
    calls = BlockingCalls(service.worker_threads, name="customer-rpc")
    servicer = CustomerServicer(app, views, calls)
    running = CustomerService(
        settings=settings, app=app, views=views, calls=calls, servicer=servicer
    )
    if settings.bus is not None:
        running.relay = OutboxRelay(app, settings.bus, source="customer")
        # Publish as soon as a command is stored, not at the next poll.
        app.add_record_listener(running.relay.nudge)
        running.consumer = EventConsumer(
            settings.bus,
            durable=TIMELINE_CONSUMER,
            subjects=TIMELINE_SUBJECTS,
            handlers=_timeline_handlers(views, calls),
        )
    return running


def _timeline_handlers(views: CustomerViews, calls: BlockingCalls) -> Handlers:
    async def project(event: Any, envelope: Envelope) -> None:
        await calls(views.timeline.apply, event)

    handlers = Handlers()
    event_class: type[DomainEvent]
    for event_class in timeline_event_classes():
        handlers.on(event_class, project)
    return handlers


async def start(settings: CustomerServiceSettings) -> CustomerService:
    """Builds the service and starts serving on `settings.service.address` (port 0: any)."""
    service = await asyncio.to_thread(build, settings)
    try:
        service.access = await asyncio.to_thread(open_service_access, settings.service)
        service.server = await start_server(
            [
                ServiceBinding(
                    full_name=SERVICE_NAME,
                    add_to_server=lambda server: (
                        customer_pb2_grpc.add_CustomerServiceServicer_to_server(
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
    for runner, name in ((service.relay, "relay"), (service.consumer, "timeline consumer")):
        if runner is not None:
            service.tasks.append(asyncio.create_task(_logged(runner.run(), name)))
    log.info(
        "customer service on %s (%s storage, bus %s)",
        service.address,
        settings.service.persistence.kind,
        "off" if settings.bus is None else settings.bus.url,
    )
    return service


async def _finish(tasks: list[asyncio.Task[None]], *, within_s: float) -> None:
    """Waits for the bus clients to return after `stop()`, cancelling them after `within_s`:
    one stuck connecting to an unreachable NATS server must not hold up the shutdown."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=within_s)
    for task in pending:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def _logged(work: Coroutine[Any, Any, None], name: str) -> None:
    try:
        await work
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("customer service: the %s stopped with an error", name)
