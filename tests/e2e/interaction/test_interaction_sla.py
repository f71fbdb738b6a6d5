"""SLA clocks of an interaction outside any case over real gRPC (authenticated): its clocks in
`GetInteractionSla`, the service's scheduler recording a breach once when the deadline
passes, and nothing more once the interaction joined a case (whose clocks count then)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import TYPE_CHECKING

import grpc

from crm.v1 import common_pb2, interaction_pb2, interaction_pb2_grpc
from crmcore.domain.sla import SlaBreached
from services.interaction.bootstrap import InteractionService
from tests.e2e.interaction.conftest import MovableClock, refused, stored_position

pb = interaction_pb2
if TYPE_CHECKING:
    Stub = interaction_pb2_grpc.InteractionServiceAsyncStub

TARO = "00000000-0000-4000-8000-0000000074a0"
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


async def chat(stub: Stub) -> pb.Interaction:
    return await stub.OpenInteraction(
        pb.OpenInteractionRequest(channel=common_pb2.CHANNEL_CHAT, customer_id=TARO)
    )


async def sla_of(stub: Stub, interaction: pb.Interaction) -> pb.InteractionSla:
    return await stub.GetInteractionSla(pb.GetInteractionSlaRequest(interaction_id=interaction.id))


class TestInteractionSla:
    async def test_a_chat_outside_a_case_has_clocks_of_its_own(self, stub: Stub) -> None:
        opened = await chat(stub)
        sla = await sla_of(stub, opened)
        assert (sla.interaction_id, sla.case_id) == (opened.id, "")
        assert [(c.metric, c.state, c.policy) for c in sla.clocks] == [
            (pb.SLA_METRIC_FIRST_RESPONSE, pb.SLA_CLOCK_STATE_RUNNING, "test standard"),
            (pb.SLA_METRIC_RESOLUTION, pb.SLA_CLOCK_STATE_RUNNING, "test standard"),
        ]
        first = sla.clocks[0]
        assert first.start_time == opened.create_time
        assert first.due_time.ToDatetime() - first.start_time.ToDatetime() == timedelta(hours=1)

    async def test_the_scheduler_records_the_breach_once(
        self, interaction_service: InteractionService, stub: Stub, clock: MovableClock
    ) -> None:
        opened = await chat(stub)
        clock.now += timedelta(minutes=61)
        scheduler = interaction_service.scheduler
        events = await asyncio.to_thread(scheduler.run_once)
        assert [(type(e), e.metric, str(e.interaction_id), e.case_id) for e in events] == [
            (SlaBreached, "first_response", opened.id, None)
        ]
        assert await asyncio.to_thread(scheduler.run_once) == []
        first = (await sla_of(stub, opened)).clocks[0]
        assert (first.breached, first.breach_recorded) == (True, True)

    async def test_no_breach_once_linked_to_a_case(
        self, interaction_service: InteractionService, stub: Stub, clock: MovableClock
    ) -> None:
        opened = await chat(stub)
        case = await stub.OpenCase(
            pb.OpenCaseRequest(subject="Refund", customer_id=TARO, interaction_ids=[opened.id])
        )
        sla = await sla_of(stub, opened)
        assert sla.case_id == case.id
        assert {c.state for c in sla.clocks} == {pb.SLA_CLOCK_STATE_STOPPED}
        clock.now += timedelta(hours=9)
        events = await asyncio.to_thread(interaction_service.scheduler.run_once)
        assert events  # the case's clocks ran out, the interaction's had stopped
        assert {str(event.case_id) for event in events} == {case.id}
        assert all(event.interaction_id is None for event in events)

    async def test_refusals(self, interaction_service: InteractionService, stub: Stub) -> None:
        before = stored_position(interaction_service)
        invalid = await refused(
            stub.GetInteractionSla(pb.GetInteractionSlaRequest(interaction_id="x"))
        )
        assert (invalid.code, invalid.fields) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            ("interaction_id",),
        )
        unknown = await refused(
            stub.GetInteractionSla(pb.GetInteractionSlaRequest(interaction_id=UNKNOWN_ID))
        )
        assert unknown.code == grpc.StatusCode.NOT_FOUND
        assert stored_position(interaction_service) == before
