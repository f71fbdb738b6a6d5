"""Erasure reaches the interaction service: once the customer service erases a customer, what
the customer said in their interactions is unreadable everywhere in the interaction service.

The service runs with a private NATS stream; the customer service is its application and its
relay publishing to the same stream. Taro calls, chats anonymously (identified later), opens a
case and complains; a duplicate of Taro is merged into him; then Taro is erased. Afterwards no
personal text is readable through the gRPC API, in any file of the interaction service's data
directory, or in anything it published (before or after), and a new personal text for Taro is
refused; the history (statuses, agents, channels, times) stays.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import grpc
import nats
import pytest

from crm.v1 import common_pb2, interaction_pb2, interaction_pb2_grpc
from crmcore.adapters.envelope import decode
from crmcore.adapters.relay import OutboxRelay
from crmcore.application.customers import CustomerApplication
from crmcore.config import BusSettings
from services.interaction.bootstrap import InteractionService
from tests.support.auth import channel_for

pytestmark = pytest.mark.nats

pb = interaction_pb2
if TYPE_CHECKING:
    Stub = interaction_pb2_grpc.InteractionServiceAsyncStub

SAID = "please send the invoice to my home in Setagaya"
NOTE = "caller is Taro Yamada, card ending 4417"
RESOLUTION = "refund of 3,000 yen sent to Yamada"
ANONYMOUS = "hi, it is Taro from the Shibuya shop"
DUPLICATE_SAID = "this is my other number, 090-1234-5678"
SUBJECT = "Yamada invoice dispute"
COMPLAINT = "the agent was rude and the app crashes every time"
PERSONAL = (SAID, NOTE, RESOLUTION, ANONYMOUS, DUPLICATE_SAID, SUBJECT, COMPLAINT)
WITHIN_S = 20.0


def readable_in(data: bytes) -> list[str]:
    return [text for text in PERSONAL if text.encode() in data]


async def eventually(check: Callable[[], Awaitable[bool]], within_s: float = WITHIN_S) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"{check.__qualname__} did not hold within {within_s}s")
        await asyncio.sleep(0.05)


async def published_by(settings: BusSettings, source: str) -> list[bytes]:
    """Every message of the stream whose CloudEvents source is `source`."""
    nc = await nats.connect(settings.url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(settings.stream)
        payloads = []
        for sequence in range(info.state.first_seq, info.state.last_seq + 1):
            message = await js.get_msg(settings.stream, sequence)
            if message.data and decode(message.data).source == source:
                payloads.append(message.data)
        return payloads
    finally:
        await nc.close()


@pytest.fixture
async def stub(bus_interaction_service: InteractionService) -> AsyncIterator[Stub]:
    async with channel_for(bus_interaction_service) as channel:
        yield interaction_pb2_grpc.InteractionServiceStub(channel)


async def message(stub: Stub, interaction_id: str, text: str, **fields: object) -> None:
    await stub.AddMessage(
        pb.AddMessageRequest(
            interaction_id=interaction_id,
            author_kind=fields.pop("author_kind", pb.AUTHOR_KIND_CUSTOMER),  # type: ignore[arg-type]
            text=text,
            **fields,  # type: ignore[arg-type]
        )
    )


class TestErasureReachesInteractions:
    async def test_nothing_personal_is_readable_after_the_customer_is_erased(
        self,
        bus_interaction_service: InteractionService,
        stub: Stub,
        bus_settings: BusSettings,
    ) -> None:
        service = bus_interaction_service
        customers = CustomerApplication()
        taro = customers.register(name="Taro Yamada")
        duplicate = customers.register(name="T. Yamada")
        agent = "00000000-0000-4000-8000-0000000a6e17"

        call = await stub.OpenInteraction(
            pb.OpenInteractionRequest(channel=common_pb2.CHANNEL_PHONE, customer_id=str(taro.id))
        )
        await message(stub, call.id, SAID)
        await stub.QueueInteraction(pb.QueueInteractionRequest(interaction_id=call.id, queue="q"))
        await stub.AnswerInteraction(
            pb.AnswerInteractionRequest(interaction_id=call.id, agent_id=agent)
        )
        await message(
            stub, call.id, NOTE, author_kind=pb.AUTHOR_KIND_AGENT, author_id=agent, internal=True
        )
        await stub.ResolveInteraction(
            pb.ResolveInteractionRequest(interaction_id=call.id, resolution=RESOLUTION)
        )
        chat = await stub.OpenInteraction(
            pb.OpenInteractionRequest(channel=common_pb2.CHANNEL_CHAT)
        )
        await message(stub, chat.id, ANONYMOUS)
        await stub.IdentifyCustomer(
            pb.IdentifyCustomerRequest(interaction_id=chat.id, customer_id=str(taro.id))
        )
        other = await stub.OpenInteraction(
            pb.OpenInteractionRequest(channel=common_pb2.CHANNEL_SMS, customer_id=str(duplicate.id))
        )
        await message(stub, other.id, DUPLICATE_SAID)
        case = await stub.OpenCase(
            pb.OpenCaseRequest(subject=SUBJECT, interaction_ids=[call.id, chat.id])
        )
        feedback = await stub.CaptureFeedback(
            pb.CaptureFeedbackRequest(
                text=COMPLAINT,
                source=pb.FEEDBACK_SOURCE_COMPLAINT,
                customer_id=str(taro.id),
            )
        )
        before = await stub.GetInteraction(pb.GetInteractionRequest(id=call.id))
        assert [entry.text for entry in before.transcript] == [SAID, NOTE]

        # The customer service merges the duplicate into Taro, then erases Taro.
        customer_relay = OutboxRelay(customers, bus_settings, source="customer")
        relaying = asyncio.create_task(customer_relay.run())
        try:
            customers.merge(duplicate.id, taro.id)
            customers.erase(taro.id)

            async def transcripts_are_blank() -> bool:
                texts = []
                for interaction_id in (call.id, chat.id, other.id):
                    got = await stub.GetInteraction(pb.GetInteractionRequest(id=interaction_id))
                    texts += [entry.text for entry in got.transcript]
                return set(texts) == {""}

            await eventually(transcripts_are_blank)
        finally:
            customer_relay.stop()
            await relaying

        # The API: texts blank, the history whole.
        after = await stub.GetInteraction(pb.GetInteractionRequest(id=call.id))
        assert after.resolution == ""
        assert [(e.author_kind, e.public, e.create_time) for e in after.transcript] == [
            (e.author_kind, e.public, e.create_time) for e in before.transcript
        ]
        assert (after.status, after.channel, list(after.agent_ids)) == (
            before.status,
            before.channel,
            list(before.agent_ids),
        )
        got_case = await stub.GetCase(pb.GetCaseRequest(id=case.id))
        got_feedback = await stub.GetFeedback(pb.GetFeedbackRequest(id=feedback.id))
        for answer in (after, got_case, got_feedback):
            assert readable_in(answer.SerializeToString()) == []
        assert got_feedback.category == feedback.category

        # Nothing new and personal is stored for Taro.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await message(stub, chat.id, "my new address is ...")
        assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION

        # The store: every file the service keeps, and its events read back.
        await service.relay.wait_for(  # type: ignore[union-attr]
            service.app.recorder.max_notification_id() or 0, within_s=WITHIN_S
        )
        data_dir = service.settings.service.persistence.data_dir
        files = [path for path in data_dir.rglob("*") if path.is_file()]
        assert any(path.name.startswith("interactions_keys") for path in files)
        for path in files:
            assert readable_in(path.read_bytes()) == [], path
        for notification in service.app.recorder.select_notifications(start=1, limit=10_000):
            event = service.app.mapper.to_domain_event(notification)
            assert readable_in(repr(event).encode()) == [], event

        # The bus: nothing the interaction service published ever held a personal text.
        published = await published_by(bus_settings, "/crm/interaction")
        assert len(published) >= 10
        for payload in published:
            assert readable_in(payload) == [], payload
