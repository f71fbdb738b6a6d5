"""The case aggregate: statuses, linking interactions, solving and the reopen window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crmcore.domain.case import (
    CASE_STATUS_CHANGES,
    CASE_TRANSITIONS,
    DEFAULT_REOPEN_WINDOW,
    Case,
    CaseCommand,
    CaseEvent,
    CaseInteractionLinked,
    CaseOpened,
    CasePriority,
    CaseSolved,
    CaseStatus,
)
from crmcore.domain.errors import InvalidValue, RuleViolation

MONDAY_9AM = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
TARO = UUID("00000000-0000-4000-8000-0000000074a0")
HANAKO = UUID("00000000-0000-4000-8000-0000000da4a0")
ALICE = UUID("00000000-0000-4000-8000-00000000a11c")
FIRST_CALL = UUID("00000000-0000-4000-8000-000000000001")
SECOND_CALL = UUID("00000000-0000-4000-8000-000000000002")


def at(hours: float) -> datetime:
    return MONDAY_9AM + timedelta(hours=hours)


def after(state: Case, *events: CaseEvent) -> Case:
    for event in events:
        state = event.mutate(state)
    return state


def new_case(reopen_window: timedelta = DEFAULT_REOPEN_WINDOW) -> Case:
    return Case.open(
        case_id=uuid4(),
        subject="Double charge on invoice 1042",
        customer_id=TARO,
        reason="billing",
        reopen_window=reopen_window,
        at=MONDAY_9AM,
    ).mutate(None)


def solved_case(reopen_window: timedelta = DEFAULT_REOPEN_WINDOW) -> Case:
    case = new_case(reopen_window)
    return after(case, case.solve(resolution="Refunded", at=at(2)))


class TestOpening:
    def test_a_new_case_has_a_subject_reason_and_normal_priority(self) -> None:
        event = Case.open(
            case_id=uuid4(), subject="  Double charge ", customer_id=TARO, at=MONDAY_9AM
        )
        case = event.mutate(None)
        assert case.status is CaseStatus.NEW
        assert case.subject == "Double charge"
        assert case.priority is CasePriority.NORMAL
        assert case.reopen_window == timedelta(days=7)
        assert case.created_at == MONDAY_9AM
        assert isinstance(event, CaseOpened)
        assert event.bus_subject() == "crm.interaction.case_opened"
        assert event.bus_attributes() == {"customerid": str(TARO)}

    def test_an_unknown_priority_is_refused(self) -> None:
        with pytest.raises(InvalidValue) as refused:
            Case.open(case_id=uuid4(), subject="x", priority="asap", at=MONDAY_9AM)
        assert refused.value.field == "priority"

    def test_a_case_needs_a_subject(self) -> None:
        with pytest.raises(InvalidValue) as refused:
            Case.open(case_id=uuid4(), subject="  ", at=MONDAY_9AM)
        assert refused.value.field == "subject"

    @pytest.mark.parametrize("window", [timedelta(0), timedelta(days=-1), timedelta(days=400)])
    def test_a_reopen_window_must_be_positive_and_at_most_a_year(self, window: timedelta) -> None:
        with pytest.raises(InvalidValue) as refused:
            Case.open(case_id=uuid4(), subject="x", reopen_window=window, at=MONDAY_9AM)
        assert refused.value.field == "reopen_window"

    def test_a_case_of_an_unknown_customer_has_no_customer_attribute(self) -> None:
        event = Case.open(case_id=uuid4(), subject="x", at=MONDAY_9AM)
        assert event.bus_attributes() == {}


class TestLinkingInteractions:
    def test_the_first_interaction_is_not_a_repeat_contact_the_second_is(self) -> None:
        case = new_case()
        first = case.link_interaction(FIRST_CALL, interaction_customer_id=TARO, at=at(1))
        case = after(case, first)
        second = case.link_interaction(SECOND_CALL, interaction_customer_id=None, at=at(30))
        case = after(case, second)
        assert isinstance(first, CaseInteractionLinked)
        assert not first.repeat_contact
        assert second.repeat_contact
        assert second.interaction_count == 2
        assert case.interaction_ids == (FIRST_CALL, SECOND_CALL)
        assert case.repeat_contact_count == 1

    def test_an_interaction_is_linked_once(self) -> None:
        case = new_case()
        case = after(
            case, case.link_interaction(FIRST_CALL, interaction_customer_id=TARO, at=at(1))
        )
        with pytest.raises(RuleViolation):
            case.link_interaction(FIRST_CALL, interaction_customer_id=TARO, at=at(2))

    def test_an_interaction_with_another_customer_is_refused(self) -> None:
        with pytest.raises(RuleViolation, match="another customer"):
            new_case().link_interaction(FIRST_CALL, interaction_customer_id=HANAKO, at=at(1))

    def test_a_closed_case_takes_no_more_interactions(self) -> None:
        case = solved_case()
        case = after(case, case.close(at=at(3)))
        with pytest.raises(RuleViolation):
            case.link_interaction(FIRST_CALL, interaction_customer_id=TARO, at=at(4))


class TestStatusChanges:
    def test_waiting_on_the_customer_is_pending(self) -> None:
        case = new_case()
        case = after(case, case.change_status("open", at=at(1)))
        event = case.change_status("pending", at=at(2))
        case = after(case, event)
        assert case.status is CaseStatus.PENDING
        assert event.previous_status is CaseStatus.OPEN

    @pytest.mark.parametrize(
        ("start", "target"),
        [
            (status, target)
            for status in CASE_STATUS_CHANGES
            for target in CaseStatus
            if target not in CASE_STATUS_CHANGES[status]
        ],
    )
    def test_moves_outside_the_table_are_refused(
        self, start: CaseStatus, target: CaseStatus
    ) -> None:
        case = new_case()
        if start is not CaseStatus.NEW:
            case = after(case, case.change_status(start, at=at(1)))
        with pytest.raises(RuleViolation):
            case.change_status(target, at=at(2))

    def test_an_unknown_status_is_refused(self) -> None:
        with pytest.raises(InvalidValue) as refused:
            new_case().change_status("snoozed", at=at(1))
        assert refused.value.field == "status"

    def test_a_solved_case_changes_status_only_by_reopening_or_closing(self) -> None:
        with pytest.raises(RuleViolation):
            solved_case().change_status("open", at=at(3))


class TestFirstResponse:
    def test_the_first_response_is_recorded_once(self) -> None:
        case = new_case()
        case = after(
            case, case.record_first_response(agent_id=ALICE, interaction_id=FIRST_CALL, at=at(1))
        )
        assert case.first_response_at == at(1)
        assert case.first_response_agent_id == ALICE
        with pytest.raises(RuleViolation):
            case.record_first_response(agent_id=ALICE, interaction_id=FIRST_CALL, at=at(2))


class TestSolving:
    def test_solving_records_the_time_and_the_kpi_facts(self) -> None:
        case = new_case()
        case = after(
            case, case.link_interaction(FIRST_CALL, interaction_customer_id=TARO, at=at(1))
        )
        event = case.solve(resolution="Refunded", at=at(2))
        case = after(case, event)
        assert case.status is CaseStatus.SOLVED
        assert case.solved_at == at(2)
        assert case.first_solved_at == at(2)
        assert case.resolution == "Refunded"
        assert isinstance(event, CaseSolved)
        assert event.first_solution
        assert event.interaction_count == 1
        assert event.created_at == MONDAY_9AM

    def test_a_solved_case_cannot_be_solved_again(self) -> None:
        with pytest.raises(RuleViolation):
            solved_case().solve(at=at(3))


class TestReopenWindow:
    def test_a_case_reopened_inside_the_window_is_open_again(self) -> None:
        case = solved_case()
        event = case.reopen(reason="charged again", at=at(2) + timedelta(days=6))
        case = after(case, event)
        assert case.status is CaseStatus.OPEN
        assert case.reopen_count == 1
        assert case.solved_at is None
        assert case.first_solved_at == at(2)
        assert event.solved_at == at(2)
        second = case.solve(at=at(200))
        assert not second.first_solution
        assert second.reopen_count == 1

    def test_the_last_instant_of_the_window_still_reopens(self) -> None:
        case = solved_case()
        assert case.reopenable_until() == at(2) + timedelta(days=7)
        reopened = after(case, case.reopen(at=at(2) + timedelta(days=7)))
        assert reopened.status is CaseStatus.OPEN

    def test_after_the_window_the_issue_needs_a_new_case(self) -> None:
        case = solved_case()
        with pytest.raises(RuleViolation, match="new case"):
            case.reopen(at=at(2) + timedelta(days=7, seconds=1))

    @given(st.integers(min_value=1, max_value=30), st.integers(min_value=0, max_value=60 * 24 * 40))
    def test_a_custom_window_decides(self, days: int, minutes_later: int) -> None:
        case = solved_case(reopen_window=timedelta(days=days))
        when = at(2) + timedelta(minutes=minutes_later)
        if timedelta(minutes=minutes_later) <= timedelta(days=days):
            assert after(case, case.reopen(at=when)).status is CaseStatus.OPEN
        else:
            with pytest.raises(RuleViolation):
                case.reopen(at=when)

    def test_a_closed_case_is_never_reopened(self) -> None:
        case = solved_case()
        case = after(case, case.close(at=at(3)))
        assert case.closed_at == at(3)
        assert case.reopenable_until() is None
        with pytest.raises(RuleViolation):
            case.reopen(at=at(4))

    def test_only_solved_cases_close(self) -> None:
        with pytest.raises(RuleViolation):
            new_case().close(at=at(1))


class TestTime:
    def test_a_change_dated_before_the_last_one_is_refused(self) -> None:
        case = solved_case()
        with pytest.raises(RuleViolation, match="back in time"):
            case.close(at=at(1))


class TestTransitionTable:
    def test_every_command_has_a_rule(self) -> None:
        assert set(CASE_TRANSITIONS) == set(CaseCommand)

    def test_every_status_is_reachable(self) -> None:
        reached = {CaseStatus.NEW}
        reached |= {rule.target for rule in CASE_TRANSITIONS.values() if rule.target is not None}
        for targets in CASE_STATUS_CHANGES.values():
            reached |= targets
        assert reached == set(CaseStatus)
