"""Composition root of the interaction service: builds everything from the settings, and stops it.

- the interaction application (group commit: concurrent RPCs share transactions; the latest
  states of recent aggregates kept in memory) and its read
  models: the interaction and case lists (`InteractionViews`) and the SLA clocks
  (`SlaClocks`), each in its own store beside the events;
- the SLA scheduler, every `sla_tick_s`, recording at-risk and breached events as deadlines
  pass (once each, whatever restarts);
- the live feed of StreamInteractionEvents (`LiveEvents`, following the notification log);
- the gRPC server (health, reflection, domain-error interceptor) with the servicer, whose
  blocking calls run on a pool of `worker_threads` threads;
- with a bus: the outbox relay publishing every event (`crm.interaction.>`, `crm.voc.>`) and
  a durable JetStream consumer of `crm.routing.>` recording offers, acceptances, rejections,
  timeouts and revocations on the interactions (once per task version, durable);
- with a bus, a durable consumer of the customer service's `crm.customer.erased` and
  `crm.customer.duplicate_absorbed`: an erasure crypto-shreds the customer's personal data
  kept here (`InteractionApplication.erase_customer`), a merge hands the duplicate's keys to
  the survivor (`merge_customers`); both are safe to repeat, so a redelivery changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from crm.v1 import interaction_pb2, interaction_pb2_grpc
from crmcore.adapters.envelope import Envelope
from crmcore.adapters.grpc.access import ServiceAccess, open_service_access
from crmcore.adapters.grpc.calls import BlockingCalls
from crmcore.adapters.grpc.server import RunningServer, ServiceBinding, start_server
from crmcore.adapters.jetstream import EventConsumer, Handlers
from crmcore.adapters.relay import OutboxRelay
from crmcore.application.interaction_views import InteractionViews
from crmcore.application.interactions import InteractionApplication
from crmcore.application.principal import (
    ROUTING_CONSUMER_PRINCIPAL,
    SLA_SCHEDULER_PRINCIPAL,
    running_as,
)
from crmcore.application.sla_scheduler import SlaClocks, SlaScheduler
from crmcore.domain.customer import CustomerErased, DuplicateAbsorbed
from crmcore.domain.task import (
    RoutingAccepted,
    RoutingAssigned,
    RoutingOffered,
    RoutingOfferRevoked,
    RoutingRejected,
    RoutingTimedOut,
    TaskEvent,
)
from services.interaction.config import InteractionServiceSettings
from services.interaction.servicer import InteractionServicer, LiveEvents

log = logging.getLogger(__name__)

SERVICE_NAME = interaction_pb2.DESCRIPTOR.services_by_name["InteractionService"].full_name
#: Durable name of the JetStream consumer of routing decisions.
ROUTING_CONSUMER = "interaction-assignments"
ROUTING_SUBJECTS = ("crm.routing.>",)
#: The routing events recorded on interactions (`InteractionApplication.apply_routing_event`).
ROUTING_EVENTS: tuple[type[TaskEvent], ...] = (
    RoutingOffered,
    RoutingAccepted,
    RoutingAssigned,
    RoutingRejected,
    RoutingTimedOut,
    RoutingOfferRevoked,
)
#: Durable name of the JetStream consumer of erasures and merges of customers.
CUSTOMER_CONSUMER = "interaction-erasures"
CUSTOMER_SUBJECTS = ("crm.customer.erased", "crm.customer.duplicate_absorbed")
#: How long the background tasks get to return once asked to stop.
BACKGROUND_STOP_S = 2.0


@dataclass
class InteractionService:
    """One running interaction service (`start`), stopped with `stop()`."""

    settings: InteractionServiceSettings
    app: InteractionApplication
    views: InteractionViews
    clocks: SlaClocks
    scheduler: SlaScheduler
    calls: BlockingCalls
    live: LiveEvents
    servicer: InteractionServicer
    relay: OutboxRelay | None = None
    consumer: EventConsumer | None = None
    customer_consumer: EventConsumer | None = None
    server: RunningServer | None = None
    access: ServiceAccess | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
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
        """Ends the live streams, drains the RPCs in flight (health NOT_SERVING meanwhile),
        stops the scheduler and the bus clients, stores what the group-commit writer holds,
        and closes the stores."""
        if self._stopped:
            return
        self._stopped = True
        if grace is None:
            grace = self.settings.service.shutdown_grace_s
        self.live.stop()
        if self.server is not None and not self.server.stopped.is_set():
            await self.server.stop(grace)
        self.stopping.set()
        if self.consumer is not None:
            self.consumer.stop()
        if self.customer_consumer is not None:
            self.customer_consumer.stop()
        if self.relay is not None:
            self.relay.stop()
        await _finish(self.tasks, within_s=BACKGROUND_STOP_S)
        self.calls.shutdown(wait=True)
        if self.access is not None:
            await asyncio.to_thread(self.access.close)
        await asyncio.to_thread(self._close_stores)

    def _close_stores(self) -> None:
        self.app.stop_writer()
        self.app.close()
        self.views.close_views()
        self.clocks.close_clocks()


def build(
    settings: InteractionServiceSettings, *, now: Callable[[], datetime] | None = None
) -> InteractionService:
    """The service's parts, wired but not running (no server, no bus connection yet).

    `now` is the SLA scheduler's clock (tests move it; default: the real time)."""
    service = settings.service
    app = InteractionApplication(
        service.persistence, group_commit=True, state_cache_size=settings.state_cache_size
    )
    views = InteractionViews(app)
    clocks = SlaClocks(app, settings.sla_policies)
    clocks.recompute_open_clocks()  # the policies may have changed since the last run
    scheduler = SlaScheduler(app, clocks) if now is None else SlaScheduler(app, clocks, now=now)
    calls = BlockingCalls(service.worker_threads, name="interaction-rpc")
    live = LiveEvents(app, calls)
    servicer = InteractionServicer(app, views, clocks, calls, live)
    running = InteractionService(
        settings=settings,
        app=app,
        views=views,
        clocks=clocks,
        scheduler=scheduler,
        calls=calls,
        live=live,
        servicer=servicer,
    )
    if settings.bus is not None:
        running.relay = OutboxRelay(app, settings.bus, source="interaction")
        # Publish as soon as a command is stored, not at the next poll.
        app.add_record_listener(running.relay.nudge)
        running.consumer = EventConsumer(
            settings.bus,
            durable=ROUTING_CONSUMER,
            subjects=ROUTING_SUBJECTS,
            handlers=_routing_handlers(running),
        )
        running.customer_consumer = EventConsumer(
            settings.bus,
            durable=CUSTOMER_CONSUMER,
            subjects=CUSTOMER_SUBJECTS,
            handlers=_customer_handlers(running),
        )
    return running


def _routing_handlers(service: InteractionService) -> Handlers:
    async def record(event: TaskEvent, envelope: Envelope) -> None:
        apply = running_as(ROUTING_CONSUMER_PRINCIPAL, service.views.routing_progress.apply)
        changed = await service.calls(apply, service.app, event)
        if changed is not None:
            service.live.nudge()

    handlers = Handlers()
    for event_class in ROUTING_EVENTS:
        handlers.on(event_class, record)
    return handlers


def _customer_handlers(service: InteractionService) -> Handlers:
    async def erase(event: CustomerErased, envelope: Envelope) -> None:
        destroyed = await service.calls(service.app.erase_customer, event.originator_id)
        log.info("customer %s erased: %d data keys destroyed", event.originator_id, len(destroyed))

    async def merge(event: DuplicateAbsorbed, envelope: Envelope) -> None:
        await service.calls(
            service.app.merge_customers, event.duplicate_id, event.originator_id, event.merged_ids
        )

    return Handlers().on(CustomerErased, erase).on(DuplicateAbsorbed, merge)


async def start(
    settings: InteractionServiceSettings, *, now: Callable[[], datetime] | None = None
) -> InteractionService:
    """Builds the service and starts serving on `settings.service.address` (port 0: any)."""
    service = await asyncio.to_thread(build, settings, now=now)
    try:
        service.access = await asyncio.to_thread(open_service_access, settings.service)
        service.server = await start_server(
            [
                ServiceBinding(
                    full_name=SERVICE_NAME,
                    add_to_server=lambda server: (
                        interaction_pb2_grpc.add_InteractionServiceServicer_to_server(
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
    runners: list[tuple[Coroutine[Any, Any, None], str]] = [
        (service.live.run(), "live event feed"),
        (_schedule_sla(service), "SLA scheduler"),
    ]
    if service.relay is not None:
        runners.append((service.relay.run(), "relay"))
    if service.consumer is not None:
        runners.append((service.consumer.run(), "routing consumer"))
    if service.customer_consumer is not None:
        runners.append((service.customer_consumer.run(), "customer consumer"))
    for work, name in runners:
        service.tasks.append(asyncio.create_task(_logged(work, name)))
    log.info(
        "interaction service on %s (%s storage, bus %s, %d SLA policies)",
        service.address,
        settings.service.persistence.kind,
        "off" if settings.bus is None else settings.bus.url,
        len(settings.sla_policies.policies),
    )
    return service


async def _schedule_sla(service: InteractionService) -> None:
    """Runs the SLA scheduler every tick until the service stops."""
    tick = service.settings.sla_tick_s
    while not service.stopping.is_set():
        try:
            await service.calls(running_as(SLA_SCHEDULER_PRINCIPAL, service.scheduler.run_once))
        except Exception:
            log.exception("SLA scheduler round failed; retrying next tick")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(service.stopping.wait(), timeout=tick)


async def _finish(tasks: list[asyncio.Task[None]], *, within_s: float) -> None:
    """Waits for the background tasks to return after `stop()`, cancelling them after
    `within_s`: one stuck connecting to an unreachable NATS must not hold up the shutdown."""
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
        log.exception("interaction service: the %s stopped with an error", name)
