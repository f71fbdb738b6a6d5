"""Who the interaction service names as the actor of what it stores.

A caller's commands name the caller's token; what the service does on its own names the part
of the system that did it: routing decisions arriving on the bus `system:routing-consumer`,
SLA breaches its scheduler finds `system:sla-scheduler` (the scheduler here runs on its own
loop, every 50 ms of the test's settings, on a clock the test moves).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, cast
from uuid import UUID

import msgspec
import nats
import pytest

from crm.v1 import common_pb2, interaction_pb2, interaction_pb2_grpc
from crmcore.adapters.envelope import to_message
from crmcore.adapters.grpc.channels import open_channel
from crmcore.adapters.schemas import example_event
from crmcore.config import BusSettings
from crmcore.domain.base import DomainEvent
from crmcore.domain.sla import SlaBreached, sla_record_id
from crmcore.domain.task import RoutingOffered
from services.interaction.bootstrap import InteractionService
from tests.e2e.interaction.conftest import MovableClock
from tests.support.auth import service_token

pb = interaction_pb2
if TYPE_CHECKING:
    Stub = interaction_pb2_grpc.InteractionServiceAsyncStub

ALICE_AGENT = UUID("00000000-0000-4000-8000-00000000a11c")
TARO = "00000000-0000-4000-8000-0000000074a0"
WITHIN_S = 20.0


@pytest.fixture
async def desk(interaction_service: InteractionService) -> AsyncIterator[Stub]:
    bearer = service_token(interaction_service, "interactions:write", name="desk-alice")
    async with open_channel(interaction_service.address, token=bearer) as channel:
        yield interaction_pb2_grpc.InteractionServiceStub(channel)


@pytest.fixture
async def bus_desk(bus_interaction_service: InteractionService) -> AsyncIterator[Stub]:
    bearer = service_token(bus_interaction_service, "interactions:write", name="desk-alice")
    async with open_channel(bus_interaction_service.address, token=bearer) as channel:
        yield interaction_pb2_grpc.InteractionServiceStub(channel)


def stored(service: InteractionService, aggregate_id: str) -> list[DomainEvent]:
    app = service.app
    return [
        cast(DomainEvent, app.mapper.to_domain_event(event))
        for event in app.recorder.select_events(UUID(aggregate_id))
    ]


async def until_stored(
    service: InteractionService,
    aggregate_id: str,
    found: Callable[[list[DomainEvent]], bool],
) -> list[DomainEvent]:
    deadline = time.monotonic() + WITHIN_S
    while True:
        events = await asyncio.to_thread(stored, service, aggregate_id)
        if found(events):
            return events
        if time.monotonic() > deadline:
            pytest.fail(f"not stored within {WITHIN_S}s: {[type(e).__name__ for e in events]}")
        await asyncio.sleep(0.05)


def actors(events: list[DomainEvent]) -> list[tuple[str, str]]:
    return [(type(event).__name__, event.actor) for event in events]


async def test_an_sla_breach_names_the_scheduler(
    interaction_service: InteractionService, desk: Stub, clock: MovableClock
) -> None:
    case = await desk.OpenCase(pb.OpenCaseRequest(subject="Down", customer_id=TARO))
    clock.now += timedelta(hours=2)

    sla_events = await until_stored(
        interaction_service,
        str(sla_record_id(UUID(case.id))),
        lambda events: any(isinstance(event, SlaBreached) for event in events),
    )

    assert actors(stored(interaction_service, case.id)) == [("CaseOpened", "token:desk-alice")]
    assert {event.actor for event in sla_events} == {"system:sla-scheduler"}


@pytest.mark.nats
async def test_a_routing_decision_from_the_bus_names_the_routing_consumer(
    bus_interaction_service: InteractionService, bus_desk: Stub, bus_settings: BusSettings
) -> None:
    call = await bus_desk.OpenInteraction(
        pb.OpenInteractionRequest(channel=common_pb2.CHANNEL_PHONE, customer_id=TARO)
    )
    await bus_desk.QueueInteraction(pb.QueueInteractionRequest(interaction_id=call.id, queue="q"))
    offer = msgspec.structs.replace(
        example_event(RoutingOffered, originator_id=UUID(call.id), version=2),
        agent_id=ALICE_AGENT,
        actor="system:routing-engine",
    )
    message = to_message(offer, id="routing:1", source="/crm/routing")
    assert bus_interaction_service.relay is not None
    stored_so_far = bus_interaction_service.app.recorder.max_notification_id() or 0
    await bus_interaction_service.relay.wait_for(stored_so_far, within_s=WITHIN_S)  # stream made
    nc = await nats.connect(bus_settings.url)
    try:
        await nc.jetstream().publish(
            message.subject, message.payload, stream=bus_settings.stream, headers=message.headers
        )
    finally:
        await nc.close()

    events = await until_stored(bus_interaction_service, call.id, lambda events: len(events) >= 3)

    assert actors(events) == [
        ("InteractionOpened", "token:desk-alice"),
        ("Queued", "token:desk-alice"),
        ("Offered", "system:routing-consumer"),
    ]
