"""Cases and their SLAs over real gRPC: open, link (repeat contacts), status, solve, reopen
window, close, list; SLA clocks and the scheduler's breach events."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import timedelta
from typing import TYPE_CHECKING

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from crm.v1 import common_pb2, interaction_pb2, interaction_pb2_grpc
from crmcore.domain.sla import SlaBreached
from services.interaction.bootstrap import InteractionService
from tests.e2e.interaction.conftest import MovableClock, refused, stored_position

pb = interaction_pb2
if TYPE_CHECKING:
    Stub = interaction_pb2_grpc.InteractionServiceAsyncStub

ALICE = "00000000-0000-4000-8000-00000000a11c"
TARO = "00000000-0000-4000-8000-0000000074a0"
HANAKO = "00000000-0000-4000-8000-0000000da4a0"
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
CS = pb.CaseStatus


async def expect(
    service: InteractionService,
    call: Awaitable[object],
    code: grpc.StatusCode,
    field: str | None = None,
) -> None:
    before = stored_position(service)
    refusal = await refused(call)
    assert refusal.code == code, refusal
    if field is not None:
        assert refusal.fields == (field,), refusal
    assert stored_position(service) == before


async def email(stub: Stub, customer: str = TARO, reason: str = "billing") -> pb.Interaction:
    return await stub.OpenInteraction(
        pb.OpenInteractionRequest(
            channel=common_pb2.CHANNEL_EMAIL, customer_id=customer, contact_reason=reason
        )
    )


def days(count: int) -> Duration:
    window = Duration()
    window.FromTimedelta(timedelta(days=count))
    return window


class TestOpeningCases:
    async def test_a_case_groups_its_interactions_and_takes_their_customer_and_channel(
        self, stub: Stub
    ) -> None:
        mail = await email(stub)
        case = await stub.OpenCase(
            pb.OpenCaseRequest(
                subject="Charged twice",
                reason="billing",
                priority=pb.CASE_PRIORITY_HIGH,
                interaction_ids=[mail.id],
            )
        )
        assert (case.status, case.priority, case.customer_id) == (
            CS.CASE_STATUS_NEW,
            pb.CASE_PRIORITY_HIGH,
            TARO,
        )
        assert (list(case.interaction_ids), case.channel) == ([mail.id], common_pb2.CHANNEL_EMAIL)
        assert case.reopen_window.ToTimedelta() == timedelta(days=7)
        linked = await stub.GetInteraction(pb.GetInteractionRequest(id=mail.id))
        assert linked.case_id == case.id

    async def test_the_same_request_id_returns_the_first_case(
        self, interaction_service: InteractionService, stub: Stub
    ) -> None:
        first = await stub.OpenCase(pb.OpenCaseRequest(subject="Lost", request_id="mail-7"))
        stored = stored_position(interaction_service)
        again = await stub.OpenCase(pb.OpenCaseRequest(subject="Lost", request_id="mail-7"))
        assert again.id == first.id
        assert stored_position(interaction_service) == stored

    @pytest.mark.parametrize(
        ("fields", "field"),
        [
            ({}, "subject"),
            ({"subject": "s", "customer_id": "taro"}, "customer_id"),
            ({"subject": "s", "priority": 9}, "priority"),
            ({"subject": "s", "channel": 77}, "channel"),
            ({"subject": "s", "interaction_ids": ["x"]}, "interaction_ids[0]"),
            ({"subject": "s", "reopen_window": days(400)}, "reopen_window"),
            ({"subject": "s", "reason": " "}, "reason"),
        ],
    )
    async def test_invalid_input_is_refused_naming_the_field(
        self,
        interaction_service: InteractionService,
        stub: Stub,
        fields: dict[str, object],
        field: str,
    ) -> None:
        request = pb.OpenCaseRequest(**fields)  # type: ignore[arg-type]
        await expect(interaction_service, stub.OpenCase(request), INVALID, field)

    async def test_an_unknown_interaction_is_not_found(
        self, interaction_service: InteractionService, stub: Stub
    ) -> None:
        await expect(
            interaction_service,
            stub.OpenCase(pb.OpenCaseRequest(subject="s", interaction_ids=[UNKNOWN_ID])),
            NOT_FOUND,
        )


class TestRepeatContacts:
    async def test_a_repeat_contact_on_the_same_reason_joins_the_case(self, stub: Stub) -> None:
        first = await email(stub, reason="Delivery")
        case = await stub.OpenCase(
            pb.OpenCaseRequest(subject="Parcel late", reason="delivery", interaction_ids=[first.id])
        )
        again = await stub.OpenInteraction(
            pb.OpenInteractionRequest(
                channel=common_pb2.CHANNEL_PHONE,
                customer_id=TARO,
                contact_reason="delivery",
                link_repeat_contact=True,
            )
        )
        assert again.case_id == case.id
        grouped = await stub.GetCase(pb.GetCaseRequest(id=case.id))
        assert (list(grouped.interaction_ids), grouped.repeat_contact_count) == (
            [first.id, again.id],
            1,
        )

    async def test_another_reason_or_customer_opens_no_link(self, stub: Stub) -> None:
        first = await email(stub, reason="delivery")
        await stub.OpenCase(
            pb.OpenCaseRequest(subject="Parcel", reason="delivery", interaction_ids=[first.id])
        )
        for customer, reason in ((TARO, "billing"), (HANAKO, "delivery")):
            other = await stub.OpenInteraction(
                pb.OpenInteractionRequest(
                    channel=common_pb2.CHANNEL_PHONE,
                    customer_id=customer,
                    contact_reason=reason,
                    link_repeat_contact=True,
                )
            )
            assert other.case_id == ""

    async def test_linking_by_hand(
        self, interaction_service: InteractionService, stub: Stub
    ) -> None:
        case = await stub.OpenCase(pb.OpenCaseRequest(subject="Parcel", customer_id=TARO))
        mail = await email(stub)
        linked = await stub.LinkInteractionToCase(
            pb.LinkInteractionToCaseRequest(case_id=case.id, interaction_id=mail.id)
        )
        assert list(linked.interaction_ids) == [mail.id]
        await expect(
            interaction_service,
            stub.LinkInteractionToCase(
                pb.LinkInteractionToCaseRequest(case_id=case.id, interaction_id=mail.id)
            ),
            PRECONDITION,
        )
        hanakos = await email(stub, customer=HANAKO)
        await expect(
            interaction_service,
            stub.LinkInteractionToCase(
                pb.LinkInteractionToCaseRequest(case_id=case.id, interaction_id=hanakos.id)
            ),
            PRECONDITION,
        )
        await expect(
            interaction_service,
            stub.LinkInteractionToCase(
                pb.LinkInteractionToCaseRequest(case_id="c", interaction_id=mail.id)
            ),
            INVALID,
            "case_id",
        )
        await expect(
            interaction_service,
            stub.LinkInteractionToCase(
                pb.LinkInteractionToCaseRequest(case_id=case.id, interaction_id=UNKNOWN_ID)
            ),
            NOT_FOUND,
        )


class TestWorkingACase:
    async def test_pending_solved_reopened_solved_closed(self, stub: Stub) -> None:
        case = await stub.OpenCase(pb.OpenCaseRequest(subject="Login fails", customer_id=TARO))
        pending = await stub.ChangeCaseStatus(
            pb.ChangeCaseStatusRequest(case_id=case.id, status=CS.CASE_STATUS_PENDING)
        )
        assert pending.status == CS.CASE_STATUS_PENDING
        solved = await stub.SolveCase(
            pb.SolveCaseRequest(case_id=case.id, resolution="Password reset")
        )
        assert (solved.status, solved.resolution) == (CS.CASE_STATUS_SOLVED, "Password reset")
        assert solved.HasField("reopenable_until_time")
        reopened = await stub.ReopenCase(pb.ReopenCaseRequest(case_id=case.id, reason="Again"))
        assert (reopened.status, reopened.reopen_count) == (CS.CASE_STATUS_OPEN, 1)
        await stub.SolveCase(pb.SolveCaseRequest(case_id=case.id))
        closed = await stub.CloseCase(pb.CloseCaseRequest(case_id=case.id))
        assert closed.status == CS.CASE_STATUS_CLOSED
        assert closed.HasField("first_solve_time")

    async def test_refusals_store_nothing(
        self, interaction_service: InteractionService, stub: Stub
    ) -> None:
        case = await stub.OpenCase(pb.OpenCaseRequest(subject="Login fails"))
        for call, code, field in (
            (
                stub.ChangeCaseStatus(pb.ChangeCaseStatusRequest(case_id=case.id)),
                INVALID,
                "status",
            ),
            (
                stub.ChangeCaseStatus(
                    pb.ChangeCaseStatusRequest(case_id=case.id, status=CS.CASE_STATUS_SOLVED)
                ),
                PRECONDITION,
                None,
            ),
            (stub.ReopenCase(pb.ReopenCaseRequest(case_id=case.id)), PRECONDITION, None),
            (stub.CloseCase(pb.CloseCaseRequest(case_id=case.id)), PRECONDITION, None),
            (stub.SolveCase(pb.SolveCaseRequest(case_id="nope")), INVALID, "case_id"),
            (stub.GetCase(pb.GetCaseRequest(id=UNKNOWN_ID)), NOT_FOUND, None),
            (stub.GetCase(pb.GetCaseRequest(id="")), INVALID, "id"),
            (stub.CloseCase(pb.CloseCaseRequest(case_id=UNKNOWN_ID)), NOT_FOUND, None),
            (
                stub.ReopenCase(pb.ReopenCaseRequest(case_id=UNKNOWN_ID)),
                NOT_FOUND,
                None,
            ),
            (
                stub.ChangeCaseStatus(
                    pb.ChangeCaseStatusRequest(case_id=UNKNOWN_ID, status=CS.CASE_STATUS_OPEN)
                ),
                NOT_FOUND,
                None,
            ),
        ):
            await expect(interaction_service, call, code, field)

    async def test_a_case_cannot_be_reopened_after_its_window(
        self, interaction_service: InteractionService, stub: Stub
    ) -> None:
        case = await stub.OpenCase(
            pb.OpenCaseRequest(subject="Login", reopen_window=Duration(nanos=1_000))
        )
        await stub.SolveCase(pb.SolveCaseRequest(case_id=case.id))
        # The window of one microsecond is over by the time the next call arrives.
        before = stored_position(interaction_service)
        refusal = await refused(stub.ReopenCase(pb.ReopenCaseRequest(case_id=case.id)))
        assert refusal.code == PRECONDITION
        assert "reopen window" in refusal.message
        assert stored_position(interaction_service) == before

    async def test_list_cases_by_customer_and_status(self, stub: Stub) -> None:
        first = await stub.OpenCase(pb.OpenCaseRequest(subject="A", customer_id=TARO))
        second = await stub.OpenCase(pb.OpenCaseRequest(subject="B", customer_id=TARO))
        await stub.OpenCase(pb.OpenCaseRequest(subject="C", customer_id=HANAKO))
        await stub.SolveCase(pb.SolveCaseRequest(case_id=first.id))
        page = await stub.ListCases(pb.ListCasesRequest(customer_id=TARO, page_size=1))
        assert [case.id for case in page.cases] == [second.id]
        rest = await stub.ListCases(
            pb.ListCasesRequest(customer_id=TARO, page_size=1, page_token=page.next_page_token)
        )
        assert [case.id for case in rest.cases] == [first.id]
        solved = await stub.ListCases(pb.ListCasesRequest(status=CS.CASE_STATUS_SOLVED))
        assert [case.id for case in solved.cases] == [first.id]

    async def test_list_cases_refuses_bad_filters(
        self, interaction_service: InteractionService, stub: Stub
    ) -> None:
        for request, field in (
            (pb.ListCasesRequest(customer_id="x"), "customer_id"),
            (pb.ListCasesRequest(status=CS.ValueType(12)), "status"),
            (pb.ListCasesRequest(page_size=-5), "page_size"),
            (pb.ListCasesRequest(page_token="%%%"), "page_token"),
        ):
            await expect(interaction_service, stub.ListCases(request), INVALID, field)


class TestSla:
    async def test_the_clocks_of_a_new_case(self, stub: Stub) -> None:
        case = await stub.OpenCase(pb.OpenCaseRequest(subject="Down", customer_id=TARO))
        sla = await stub.GetCaseSla(pb.GetCaseSlaRequest(case_id=case.id))
        assert sla.case_id == case.id
        assert [(c.metric, c.state, c.policy) for c in sla.clocks] == [
            (pb.SLA_METRIC_FIRST_RESPONSE, pb.SLA_CLOCK_STATE_RUNNING, "test standard"),
            (pb.SLA_METRIC_RESOLUTION, pb.SLA_CLOCK_STATE_RUNNING, "test standard"),
        ]
        first = sla.clocks[0]
        assert first.target.ToTimedelta() == timedelta(hours=1)
        assert first.due_time.ToDatetime() - first.start_time.ToDatetime() == timedelta(hours=1)
        assert not first.breached

    async def test_pending_pauses_the_clocks(self, stub: Stub) -> None:
        case = await stub.OpenCase(pb.OpenCaseRequest(subject="Down", customer_id=TARO))
        await stub.ChangeCaseStatus(
            pb.ChangeCaseStatusRequest(case_id=case.id, status=CS.CASE_STATUS_PENDING)
        )
        sla = await stub.GetCaseSla(pb.GetCaseSlaRequest(case_id=case.id))
        assert {clock.state for clock in sla.clocks} == {pb.SLA_CLOCK_STATE_PAUSED}
        assert not any(clock.HasField("due_time") for clock in sla.clocks)

    async def test_the_scheduler_records_a_breach_once_when_the_deadline_passes(
        self, interaction_service: InteractionService, stub: Stub, clock: MovableClock
    ) -> None:
        case = await stub.OpenCase(pb.OpenCaseRequest(subject="Down", customer_id=TARO))
        clock.now += timedelta(minutes=61)
        scheduler = interaction_service.scheduler
        events = await asyncio.to_thread(scheduler.run_once)
        assert [type(event) for event in events] == [SlaBreached]
        assert await asyncio.to_thread(scheduler.run_once) == []
        sla = await stub.GetCaseSla(pb.GetCaseSlaRequest(case_id=case.id))
        first = sla.clocks[0]
        assert (first.breached, first.breach_recorded, first.at_risk_recorded) == (
            True,
            True,
            False,
        )

    async def test_the_service_runs_the_scheduler_by_itself(
        self, interaction_service: InteractionService, stub: Stub, clock: MovableClock
    ) -> None:
        case = await stub.OpenCase(pb.OpenCaseRequest(subject="Down", customer_id=TARO))
        clock.now += timedelta(minutes=50)  # past 75 % of the first-response hour
        for _ in range(200):
            sla = await stub.GetCaseSla(pb.GetCaseSlaRequest(case_id=case.id))
            if sla.clocks[0].at_risk_recorded:
                break
            await asyncio.sleep(0.05)
        assert sla.clocks[0].at_risk_recorded
        assert not sla.clocks[0].breach_recorded

    async def test_refusals(self, interaction_service: InteractionService, stub: Stub) -> None:
        await expect(
            interaction_service,
            stub.GetCaseSla(pb.GetCaseSlaRequest(case_id="c")),
            INVALID,
            "case_id",
        )
        await expect(
            interaction_service,
            stub.GetCaseSla(pb.GetCaseSlaRequest(case_id=UNKNOWN_ID)),
            NOT_FOUND,
        )
