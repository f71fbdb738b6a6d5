"""StreamInteractionEvents: an agent desktop follows one interaction live."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
import pytest

from crm.v1 import common_pb2, interaction_pb2, interaction_pb2_grpc
from services.interaction.bootstrap import InteractionService
from tests.e2e.interaction.conftest import refusal_of

pb = interaction_pb2
if TYPE_CHECKING:
    Stub = interaction_pb2_grpc.InteractionServiceAsyncStub

ALICE = "00000000-0000-4000-8000-00000000a11c"
TARO = "00000000-0000-4000-8000-0000000074a0"
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"
S = pb.InteractionStatus
WITHIN_S = 10


async def updates(
    stub: Stub, interaction_id: str
) -> tuple[AsyncIterator[pb.InteractionUpdate], pb.InteractionUpdate]:
    """The stream and its first message (once it arrived, every later event is streamed)."""
    stream = stub.StreamInteractionEvents(
        pb.StreamInteractionEventsRequest(interaction_id=interaction_id)
    ).__aiter__()
    first = await asyncio.wait_for(stream.__anext__(), WITHIN_S)
    return stream, first


async def rest_of(stream: AsyncIterator[pb.InteractionUpdate]) -> list[pb.InteractionUpdate]:
    async def collect() -> list[pb.InteractionUpdate]:
        return [update async for update in stream]

    return await asyncio.wait_for(collect(), WITHIN_S)


async def open_chat(stub: Stub) -> pb.Interaction:
    return await stub.OpenInteraction(
        pb.OpenInteractionRequest(channel=common_pb2.CHANNEL_CHAT, customer_id=TARO)
    )


class TestFollowingAnInteraction:
    async def test_a_snapshot_then_every_event_until_it_closes(self, stub: Stub) -> None:
        chat = await open_chat(stub)
        stream, snapshot = await updates(stub, chat.id)
        assert (snapshot.event, snapshot.event_type) == ("snapshot", "")
        assert snapshot.interaction.status == S.INTERACTION_STATUS_CREATED

        await stub.QueueInteraction(pb.QueueInteractionRequest(interaction_id=chat.id, queue="q"))
        await stub.AnswerInteraction(
            pb.AnswerInteractionRequest(interaction_id=chat.id, agent_id=ALICE)
        )
        await stub.AddMessage(
            pb.AddMessageRequest(
                interaction_id=chat.id, author_kind=pb.AUTHOR_KIND_CUSTOMER, text="もしもし"
            )
        )
        await stub.ResolveInteraction(pb.ResolveInteractionRequest(interaction_id=chat.id))
        await stub.CloseInteraction(pb.CloseInteractionRequest(interaction_id=chat.id))

        received = await rest_of(stream)
        assert [(u.event, u.interaction.status) for u in received] == [
            ("queued", S.INTERACTION_STATUS_QUEUED),
            ("answered", S.INTERACTION_STATUS_ACTIVE),
            ("message_added", S.INTERACTION_STATUS_ACTIVE),
            ("resolved", S.INTERACTION_STATUS_RESOLVED),
            ("closed", S.INTERACTION_STATUS_CLOSED),
        ]
        assert received[1].event_type == "crm.interaction.answered.v1"
        assert [entry.text for entry in received[2].interaction.transcript] == ["もしもし"]
        assert [u.interaction.etag for u in received] == ["2", "3", "4", "5", "6"]

    async def test_each_stream_gets_only_its_own_interaction(self, stub: Stub) -> None:
        mine, other = await open_chat(stub), await open_chat(stub)
        stream, _ = await updates(stub, mine.id)
        await stub.QueueInteraction(pb.QueueInteractionRequest(interaction_id=other.id, queue="q"))
        await stub.QueueInteraction(pb.QueueInteractionRequest(interaction_id=mine.id, queue="q"))
        await stub.AbandonInteraction(pb.AbandonInteractionRequest(interaction_id=mine.id))
        received = await rest_of(stream)
        assert {u.interaction.id for u in received} == {mine.id}
        assert [u.event for u in received] == ["queued", "abandoned"]

    async def test_a_finished_interaction_ends_the_stream_after_its_snapshot(
        self, stub: Stub
    ) -> None:
        chat = await open_chat(stub)
        await stub.QueueInteraction(pb.QueueInteractionRequest(interaction_id=chat.id, queue="q"))
        await stub.AbandonInteraction(pb.AbandonInteractionRequest(interaction_id=chat.id))
        stream, snapshot = await updates(stub, chat.id)
        assert snapshot.interaction.status == S.INTERACTION_STATUS_ABANDONED
        assert await rest_of(stream) == []

    async def test_two_desktops_follow_the_same_interaction(self, stub: Stub) -> None:
        chat = await open_chat(stub)
        first, _ = await updates(stub, chat.id)
        second, _ = await updates(stub, chat.id)
        await stub.QueueInteraction(pb.QueueInteractionRequest(interaction_id=chat.id, queue="q"))
        await stub.AbandonInteraction(pb.AbandonInteractionRequest(interaction_id=chat.id))
        assert [u.event for u in await rest_of(first)] == ["queued", "abandoned"]
        assert [u.event for u in await rest_of(second)] == ["queued", "abandoned"]

    async def test_stopping_the_service_ends_open_streams_as_unavailable(
        self, interaction_service: InteractionService, stub: Stub
    ) -> None:
        chat = await open_chat(stub)
        stream, _ = await updates(stub, chat.id)
        await interaction_service.stop(grace=1.0)
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await rest_of(stream)
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE


class TestRefusals:
    @pytest.mark.parametrize(
        ("interaction_id", "code"),
        [
            ("", grpc.StatusCode.INVALID_ARGUMENT),
            ("chat-1", grpc.StatusCode.INVALID_ARGUMENT),
            (UNKNOWN_ID, grpc.StatusCode.NOT_FOUND),
        ],
    )
    async def test_bad_or_unknown_ids(
        self, stub: Stub, interaction_id: str, code: grpc.StatusCode
    ) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await updates(stub, interaction_id)
        refusal = refusal_of(refused.value)
        assert refusal.code == code
        if code is grpc.StatusCode.INVALID_ARGUMENT:
            assert refusal.fields == ("interaction_id",)
