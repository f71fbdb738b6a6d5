"""The interaction service on the event bus.

- Departments subscribe to VOC by subject: a subscriber written with nats-py alone (no
  project code: plain JSON CloudEvents) receives the feedback of one category, or of all, and
  survey responses by kind.
- SLA breaches reach subscribers on `crm.interaction.sla_breached`.
- The routing service's decisions (`crm.routing.*`) are recorded on the interaction, and an
  event delivered twice changes nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

import msgspec
import nats
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from crm.v1 import common_pb2, interaction_pb2, interaction_pb2_grpc
from crmcore.adapters.envelope import to_message
from crmcore.adapters.schemas import example_event
from crmcore.config import BusSettings
from crmcore.domain.task import RoutingAccepted, RoutingOffered, TaskEvent
from services.interaction.bootstrap import InteractionService
from tests.e2e.interaction.conftest import MovableClock
from tests.support.auth import channel_for

pytestmark = pytest.mark.nats

pb = interaction_pb2
if TYPE_CHECKING:
    Stub = interaction_pb2_grpc.InteractionServiceAsyncStub

ALICE = "00000000-0000-4000-8000-00000000a11c"
TARO = "00000000-0000-4000-8000-0000000074a0"
WITHIN_S = 20


@pytest.fixture
async def stub(
    bus_interaction_service: InteractionService,
) -> AsyncIterator[interaction_pb2_grpc.InteractionServiceAsyncStub]:
    async with channel_for(bus_interaction_service) as channel:
        yield interaction_pb2_grpc.InteractionServiceStub(channel)


async def published(service: InteractionService) -> None:
    """Waits until the relay has published everything stored so far."""
    assert service.relay is not None
    stored = service.app.recorder.max_notification_id() or 0
    await service.relay.wait_for(stored, within_s=WITHIN_S)


async def department_reads(
    settings: BusSettings, subject: str, durable: str, count: int
) -> list[dict[str, Any]]:
    """What a department's subscriber gets: nats-py and json only."""
    nc = await nats.connect(settings.url)
    try:
        js = nc.jetstream()
        subscription = await js.pull_subscribe(
            subject,
            durable=durable,
            stream=settings.stream,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        received: list[dict[str, Any]] = []
        while len(received) < count:
            for message in await subscription.fetch(count - len(received), timeout=WITHIN_S):
                assert message.headers is not None
                assert message.headers["Content-Type"] == "application/cloudevents+json"
                received.append(json.loads(message.data))
                await message.ack()
        try:  # nothing more than expected
            extra = await subscription.fetch(1, timeout=0.5)
        except nats.errors.TimeoutError:
            extra = []
        assert extra == []
        return received
    finally:
        await nc.close()


class TestVoiceOfTheCustomer:
    async def test_departments_subscribe_to_feedback_by_category(
        self,
        bus_interaction_service: InteractionService,
        bus_settings: BusSettings,
        stub: Stub,
    ) -> None:
        complaint = await stub.CaptureFeedback(
            pb.CaptureFeedbackRequest(
                text="電話がつながらない。最悪です。",
                customer_id=TARO,
                source=pb.FEEDBACK_SOURCE_COMPLAINT,
            )
        )
        await stub.CaptureFeedback(pb.CaptureFeedbackRequest(text="The app crashes at login"))
        await stub.CaptureFeedback(pb.CaptureFeedbackRequest(text="Thank you, very helpful!"))
        await published(bus_interaction_service)

        (event,) = await department_reads(
            bus_settings, "crm.voc.feedback.complaint", "customer-care", 1
        )
        assert event["specversion"] == "1.0"
        assert event["type"] == "crm.voc.feedback_captured.v1"
        assert event["source"] == "/crm/interaction"
        assert event["subject"] == complaint.id
        assert (event["voccategory"], event["vocsentiment"]) == ("complaint", "negative")
        assert event["customerid"] == TARO
        # The customer's words stay in the service (sealed, erasable): the bus carries what
        # departments act on, and the ids to look the words up through the API.
        assert event["data"]["text"] == ""
        assert "電話がつながらない" not in json.dumps(event, ensure_ascii=False)
        assert event["data"]["category_set_by"] == "rule"

        everything = await department_reads(bus_settings, "crm.voc.feedback.*", "voc-team", 3)
        assert sorted(event["data"]["category"] for event in everything) == [
            "bug",
            "complaint",
            "praise",
        ]

    async def test_survey_responses_by_kind_and_their_comments_by_category(
        self,
        bus_interaction_service: InteractionService,
        bus_settings: BusSettings,
        stub: Stub,
    ) -> None:
        await stub.RecordSurveyResponse(
            pb.RecordSurveyResponseRequest(
                survey_id="nps-1", kind=pb.SURVEY_KIND_NPS, score=10, comment="最高のサポート"
            )
        )
        await stub.RecordSurveyResponse(
            pb.RecordSurveyResponseRequest(survey_id="csat-1", kind=pb.SURVEY_KIND_CSAT, score=2)
        )
        await published(bus_interaction_service)
        (nps,) = await department_reads(bus_settings, "crm.voc.survey.nps", "marketing", 1)
        assert (nps["data"]["score"], nps["surveykind"]) == (10, "nps")
        (praise,) = await department_reads(bus_settings, "crm.voc.feedback.praise", "qa", 1)
        assert praise["data"]["text"] == ""
        assert praise["data"]["survey_response_id"]
        assert nps["data"]["comment"] == ""


class TestSlaEvents:
    async def test_a_breach_is_published(
        self,
        bus_interaction_service: InteractionService,
        bus_settings: BusSettings,
        stub: Stub,
        clock: MovableClock,
    ) -> None:
        case = await stub.OpenCase(pb.OpenCaseRequest(subject="Down", customer_id=TARO))
        clock.now += timedelta(hours=2)
        await asyncio.to_thread(bus_interaction_service.scheduler.run_once)
        await published(bus_interaction_service)
        (breach,) = await department_reads(
            bus_settings, "crm.interaction.sla_breached", "escalations", 1
        )
        assert (breach["caseid"], breach["slametric"]) == (case.id, "first_response")
        assert breach["data"]["policy"] == "test standard"


def routing_event(cls: type[TaskEvent], task_id: str, version: int) -> TaskEvent:
    event = example_event(cls, originator_id=UUID(task_id), version=version)
    return msgspec.structs.replace(event, agent_id=UUID(ALICE))


async def publish_routing(settings: BusSettings, event: TaskEvent, message_id: str) -> None:
    """Publishes a routing event the way the routing service's relay does."""
    message = to_message(event, id=message_id, source="/crm/routing")
    nc = await nats.connect(settings.url)
    try:
        await nc.jetstream().publish(
            message.subject, message.payload, stream=settings.stream, headers=message.headers
        )
    finally:
        await nc.close()


class TestRoutingDecisions:
    async def test_offers_and_acceptances_are_recorded_once(
        self,
        bus_interaction_service: InteractionService,
        bus_settings: BusSettings,
        stub: Stub,
    ) -> None:
        call = await stub.OpenInteraction(
            pb.OpenInteractionRequest(channel=common_pb2.CHANNEL_PHONE, customer_id=TARO)
        )
        await stub.QueueInteraction(pb.QueueInteractionRequest(interaction_id=call.id, queue="q"))
        await published(bus_interaction_service)  # the stream exists
        stream = stub.StreamInteractionEvents(
            pb.StreamInteractionEventsRequest(interaction_id=call.id)
        ).__aiter__()
        snapshot = await asyncio.wait_for(stream.__anext__(), WITHIN_S)
        assert snapshot.interaction.status == pb.INTERACTION_STATUS_QUEUED

        offer = routing_event(RoutingOffered, call.id, 2)
        await publish_routing(bus_settings, offer, "routing:1")
        offered = await asyncio.wait_for(stream.__anext__(), WITHIN_S)
        assert (offered.event, offered.interaction.offered_agent_id) == ("offered", ALICE)

        await publish_routing(bus_settings, routing_event(RoutingAccepted, call.id, 3), "routing:2")
        answered = await asyncio.wait_for(stream.__anext__(), WITHIN_S)
        assert (answered.event, answered.interaction.agent_id) == ("answered", ALICE)

        consumer = bus_interaction_service.consumer
        assert consumer is not None
        handled = consumer.stats.handled + consumer.stats.duplicates
        # The same offer again, past JetStream's de-duplication (another message id).
        await publish_routing(bus_settings, offer, "routing:1-again")
        for _ in range(WITHIN_S * 20):
            if consumer.stats.handled + consumer.stats.duplicates > handled:
                break
            await asyncio.sleep(0.05)
        assert consumer.stats.handled + consumer.stats.duplicates > handled
        got = await stub.GetInteraction(pb.GetInteractionRequest(id=call.id))
        assert (got.status, got.etag) == (pb.INTERACTION_STATUS_ACTIVE, answered.interaction.etag)
