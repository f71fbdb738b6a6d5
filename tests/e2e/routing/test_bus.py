"""The routing service on the event bus: work arrives from `crm.interaction.*` events, leaves on
the lifecycle events, and every decision is published on `crm.routing.*` as a CloudEvent any
subscriber reads with nats-py and json alone."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

import grpc
import nats
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from crm.v1 import common_pb2, routing_pb2, routing_pb2_grpc
from crmcore.adapters.envelope import to_message
from crmcore.config import BusSettings
from crmcore.domain.base import DomainEvent
from crmcore.domain.interaction import Interaction, RoutingRequirements, SkillRequirement
from crmcore.domain.task import TaskQueued
from services.routing.bootstrap import RoutingService
from tests.e2e.routing.conftest import MovableClock
from tests.support.auth import channel_for

pytestmark = pytest.mark.nats

pb = routing_pb2
if TYPE_CHECKING:
    Stub = routing_pb2_grpc.RoutingServiceAsyncStub

WITHIN_S = 20
_published = 0


@pytest.fixture
async def stub(bus_routing_service: RoutingService) -> AsyncIterator[Stub]:
    async with channel_for(bus_routing_service) as channel:
        yield routing_pb2_grpc.RoutingServiceStub(channel)


async def interaction_service_publishes(settings: BusSettings, *events: DomainEvent) -> None:
    """What the interaction service's relay does: one CloudEvent per event, de-dup id set."""
    global _published
    nc = await nats.connect(settings.url)
    try:
        js = nc.jetstream()
        for event in events:
            _published += 1
            message = to_message(event, id=f"interactions:{_published}", source="/crm/interaction")
            await js.publish(message.subject, message.payload, headers=message.headers)
    finally:
        await nc.close()


async def subscriber_reads(settings: BusSettings, subject: str, count: int) -> list[dict[str, Any]]:
    nc = await nats.connect(settings.url)
    try:
        js = nc.jetstream()
        subscription = await js.pull_subscribe(
            subject,
            durable=f"reader-{uuid4().hex[:8]}",
            stream=settings.stream,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        received: list[dict[str, Any]] = []
        while len(received) < count:
            for message in await subscription.fetch(count - len(received), timeout=WITHIN_S):
                received.append(json.loads(message.data))
                await message.ack()
        return received
    finally:
        await nc.close()


async def eventually(service: RoutingService, check: Callable[[], Awaitable[bool]]) -> None:
    """Waits until `check` holds, looking again after every commit of the service (the
    consumer works in the background)."""
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()

    def heard(events: object) -> None:
        loop.call_soon_threadsafe(changed.set)

    remove = service.app.add_listener(heard)
    try:
        async with asyncio.timeout(WITHIN_S):
            while not await check():
                await changed.wait()
                changed.clear()
    finally:
        remove()


async def everything_published(service: RoutingService) -> int:
    """Waits until the relay has published everything stored; returns how many events."""
    assert service.relay is not None
    stored = service.app.recorder.max_notification_id() or 0
    await service.relay.wait_for(stored, within_s=WITHIN_S)
    return stored


async def agent_ready(stub: Stub) -> routing_pb2.Agent:
    await stub.CreateQueue(
        pb.CreateQueueRequest(
            queue=pb.RoutingQueue(
                name="Billing",
                channels=[common_pb2.CHANNEL_CHAT],
                requirements=pb.WorkRequirements(
                    skills=[pb.RoutingSkillRequirement(skill="billing", min_level=2)]
                ),
            )
        )
    )
    agent = await stub.RegisterAgent(
        pb.RegisterAgentRequest(
            agent=pb.Agent(
                display_name="Aiko",
                skills=[pb.AgentSkill(name="billing", level=4)],
                capacity=[pb.ChannelCapacity(channel=common_pb2.CHANNEL_CHAT, limit=1)],
            )
        )
    )
    return await stub.SetPresence(
        pb.SetPresenceRequest(agent_id=agent.id, presence=pb.AGENT_PRESENCE_AVAILABLE)
    )


class TestWorkFromInteractions:
    async def test_a_queued_interaction_is_offered_answered_and_freed_on_resolution(
        self,
        bus_routing_service: RoutingService,
        bus_settings: BusSettings,
        stub: Stub,
        clock: MovableClock,
    ) -> None:
        aiko = await agent_ready(stub)
        stream = stub.StreamOffers(pb.StreamOffersRequest(agent_id=aiko.id))
        opened = Interaction.open(interaction_id=uuid4(), channel="chat", at=clock())
        interaction = opened.mutate(None)
        queued = interaction.enqueue(
            queue="Billing",
            requirements=RoutingRequirements(skills=(SkillRequirement(skill="billing"),)),
            at=clock(),
        )
        interaction = queued.mutate(interaction)

        await interaction_service_publishes(bus_settings, opened, queued)

        offered = await asyncio.wait_for(stream.read(), timeout=WITHIN_S)
        assert isinstance(offered, pb.RoutingOfferEvent)
        assert offered.kind == pb.OFFER_EVENT_KIND_OFFERED
        assert offered.task.id == str(interaction.id)
        assert offered.task.source == pb.ROUTING_TASK_SOURCE_INTERACTION

        (published,) = await subscriber_reads(bus_settings, "crm.routing.offered", 1)
        assert published["type"] == "crm.routing.offered.v1"
        assert published["source"] == "/crm/routing"
        assert published["subject"] == str(interaction.id)
        assert published["agentid"] == aiko.id
        assert published["data"]["decision"]["agent_rule"] == "best_match"

        answered = interaction.answer(UUID(aiko.id), at=clock.advance(5))
        interaction = answered.mutate(interaction)
        resolved = interaction.resolve(at=clock.advance(120))
        await interaction_service_publishes(bus_settings, answered, resolved)

        async def released() -> bool:
            task = await stub.GetTask(pb.GetTaskRequest(id=str(interaction.id)))
            return task.state == pb.ROUTING_TASK_STATE_RELEASED

        await eventually(bus_routing_service, released)
        agent = await stub.GetAgent(pb.GetAgentRequest(id=aiko.id))
        assert agent.work == []
        count = await everything_published(bus_routing_service)
        kinds = [
            event["type"] for event in await subscriber_reads(bus_settings, "crm.routing.>", count)
        ]
        assert "crm.routing.assigned.v1" in kinds
        assert "crm.routing.task_released.v1" in kinds
        stream.cancel()

    async def test_an_event_delivered_twice_routes_the_work_once(
        self,
        bus_routing_service: RoutingService,
        bus_settings: BusSettings,
        stub: Stub,
        clock: MovableClock,
    ) -> None:
        await agent_ready(stub)
        opened = Interaction.open(interaction_id=uuid4(), channel="chat", at=clock())
        queued = opened.mutate(None).enqueue(queue="Billing", at=clock())
        later = Interaction.open(interaction_id=uuid4(), channel="chat", at=clock())
        later_queued = later.mutate(None).enqueue(queue="Billing", at=clock())

        # The consumer handles events in order: once the later work is in, the repeat was seen.
        await interaction_service_publishes(
            bus_settings, opened, queued, queued, later, later_queued
        )

        async def later_is_in() -> bool:
            try:
                await stub.GetTask(pb.GetTaskRequest(id=str(later_queued.originator_id)))
            except grpc.aio.AioRpcError:
                return False
            return True

        await eventually(bus_routing_service, later_is_in)
        task = await stub.GetTask(pb.GetTaskRequest(id=str(queued.originator_id)))
        assert (task.state, task.offers) == (pb.ROUTING_TASK_STATE_OFFERED, 1)
        app = bus_routing_service.app
        stored = [
            app.mapper.to_domain_event(notification)
            for notification in app.recorder.select_notifications(start=None, limit=1_000)
        ]
        assert [event.originator_id for event in stored if isinstance(event, TaskQueued)] == [
            queued.originator_id,
            later_queued.originator_id,
        ]
