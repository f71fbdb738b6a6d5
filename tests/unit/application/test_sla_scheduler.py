"""The SLA due-date read model and the scheduler: events when deadlines pass, each once,
across restarts and rival schedulers; pauses while pending; next-response cycles;
reopening; late breaches; policies chosen by channel and priority."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import pytest

from crmcore.application.interactions import InteractionApplication
from crmcore.application.sla_scheduler import SlaClocks, SlaScheduler
from crmcore.config import PersistenceSettings
from crmcore.domain.errors import NotFound
from crmcore.domain.sla import (
    ClockState,
    SlaAtRisk,
    SlaBreached,
    SlaEvent,
    SlaMetric,
    SlaPolicies,
    business_calendar,
    sla_policy,
)

ALICE = UUID("00000000-0000-4000-8000-00000000a11c")
TARO = UUID("00000000-0000-4000-8000-0000000074a0")
#: Monday 3 March 2025, 09:00 UTC: the office opens.
MONDAY_9 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)

OFFICE = business_calendar(hours="mon-fri 09:00-18:00")
POLICIES = SlaPolicies(
    calendar=OFFICE,
    policies=(
        sla_policy(
            name="urgent chat",
            channels=["chat"],
            priorities=["urgent"],
            first_response="10m",
            calendar=business_calendar(hours="always"),
        ),
        sla_policy(
            name="standard",
            first_response="2h",
            next_response="1h",
            resolution="8h",
            at_risk_fraction=0.75,
        ),
    ),
)


def at(hours: float) -> datetime:
    return MONDAY_9 + timedelta(hours=hours)


def names(events: list[SlaEvent]) -> list[tuple[str, str, int]]:
    return [(type(event).__name__, str(event.metric), event.cycle) for event in events]


@pytest.fixture
def app() -> Iterator[InteractionApplication]:
    application = InteractionApplication()
    yield application
    application.close()


@pytest.fixture
def clocks(app: InteractionApplication) -> Iterator[SlaClocks]:
    projection = SlaClocks(app, POLICIES)
    yield projection
    projection.close_clocks()


@pytest.fixture
def scheduler(app: InteractionApplication, clocks: SlaClocks) -> SlaScheduler:
    return SlaScheduler(app, clocks)


def email_case(app: InteractionApplication, priority: str = "normal") -> tuple[UUID, UUID]:
    """An e-mail from Taro at 09:00 Monday and the case opened for it."""
    mail = app.open_interaction(channel="email", customer_id=TARO, at=MONDAY_9)
    case = app.open_case(
        subject="Invoice wrong", interaction_ids=[mail.id], priority=priority, at=MONDAY_9
    )
    return mail.id, case.id


def reply(app: InteractionApplication, interaction_id: UUID, hours: float) -> None:
    state = app.get_interaction(interaction_id)
    if state.status.value == "created":
        app.queue(interaction_id, queue="billing", at=at(hours))
        app.answer(interaction_id, ALICE, at=at(hours))
    app.add_message(
        interaction_id, author_kind="agent", author_id=ALICE, text="Looking into it", at=at(hours)
    )


class TestDeadlines:
    def test_a_case_gets_the_clocks_of_its_policy(
        self, app: InteractionApplication, clocks: SlaClocks
    ) -> None:
        _, case = email_case(app)
        views = clocks.clocks_of(case, now=at(0))
        assert [(v.metric, v.policy, v.due_at) for v in views] == [
            (SlaMetric.FIRST_RESPONSE, "standard", at(2)),
            (SlaMetric.RESOLUTION, "standard", at(8)),  # 09:00 + 8 business hours = 17:00
        ]
        assert views[0].at_risk_at == at(1.5)

    def test_a_case_without_a_matching_policy_has_clocks_without_deadlines(
        self, app: InteractionApplication
    ) -> None:
        clocks = SlaClocks(app, SlaPolicies())
        _, case = email_case(app)
        assert all(view.due_at is None for view in clocks.clocks_of(case, now=at(0)))
        assert SlaScheduler(app, clocks).run_once(at(1_000)) == []

    def test_the_channel_of_the_first_interaction_chooses_the_policy(
        self, app: InteractionApplication, clocks: SlaClocks
    ) -> None:
        case = app.open_case(subject="Down!", priority="urgent", at=MONDAY_9)
        assert clocks.clocks_of(case.id, now=at(0))[0].policy == "standard"
        chat = app.open_interaction(channel="chat", customer_id=TARO, at=at(0.1))
        app.link_interaction_to_case(case.id, chat.id, at=at(0.1))
        first = clocks.clocks_of(case.id, now=at(0.1))[0]
        assert (first.policy, first.due_at) == ("urgent chat", MONDAY_9 + timedelta(minutes=10))

    def test_an_unknown_case_has_no_clocks(self, clocks: SlaClocks) -> None:
        with pytest.raises(NotFound):
            clocks.clocks_of(UUID(int=5))


class TestTheScheduler:
    def test_at_risk_then_breached_each_once(
        self, app: InteractionApplication, scheduler: SlaScheduler
    ) -> None:
        email_case(app)
        assert scheduler.run_once(at(1.4)) == []
        assert names(scheduler.run_once(at(1.6))) == [("SlaAtRisk", "first_response", 1)]
        assert scheduler.run_once(at(1.7)) == []
        assert names(scheduler.run_once(at(2.1))) == [("SlaBreached", "first_response", 1)]
        assert scheduler.run_once(at(2.2)) == []

    def test_only_the_breach_when_both_are_due(
        self, app: InteractionApplication, scheduler: SlaScheduler
    ) -> None:
        email_case(app)
        assert names(scheduler.run_once(at(2.5))) == [("SlaBreached", "first_response", 1)]
        assert scheduler.run_once(at(2.6)) == []

    def test_a_reply_in_time_meets_the_first_response_target(
        self, app: InteractionApplication, scheduler: SlaScheduler, clocks: SlaClocks
    ) -> None:
        mail, case = email_case(app)
        reply(app, mail, 1)
        assert scheduler.run_once(at(3)) == []
        first = clocks.clocks_of(case, now=at(3))[0]
        assert (first.state, first.breached, first.ended_at) == (ClockState.MET, False, at(1))

    def test_a_reply_after_the_deadline_is_a_breach_even_when_nobody_was_watching(
        self, app: InteractionApplication, scheduler: SlaScheduler
    ) -> None:
        mail, _ = email_case(app)
        reply(app, mail, 3)  # the scheduler did not run before: breached at 11:00
        assert names(scheduler.run_once(at(3.1))) == [("SlaBreached", "first_response", 1)]

    def test_the_breach_event_carries_what_subscribers_need(
        self, app: InteractionApplication, scheduler: SlaScheduler
    ) -> None:
        _, case = email_case(app, priority="high")
        (event,) = scheduler.run_once(at(2.1))
        assert isinstance(event, SlaBreached)
        assert (event.case_id, event.customer_id, event.priority) == (case, TARO, "high")
        assert (event.channel, event.policy, event.target_seconds) == ("email", "standard", 7200)
        assert (event.started_at, event.due_at, event.timestamp) == (at(0), at(2), at(2.1))
        assert event.bus_subject() == "crm.interaction.sla_breached"


class TestPausesAndCycles:
    def test_pending_on_the_customer_stops_the_clocks(
        self, app: InteractionApplication, scheduler: SlaScheduler, clocks: SlaClocks
    ) -> None:
        mail, case = email_case(app)
        reply(app, mail, 0.5)
        app.change_case_status(case, "pending", at=at(1))
        paused = clocks.clocks_of(case, now=at(5))[-1]
        assert (paused.metric, paused.state, paused.due_at) == (
            SlaMetric.RESOLUTION,
            ClockState.PAUSED,
            None,
        )
        assert scheduler.run_once(at(30)) == []  # Tuesday afternoon: still waiting
        app.change_case_status(case, "open", at=at(24))  # Tuesday 09:00
        resumed = clocks.clocks_of(case, now=at(24))[-1]
        # 1 h ran on Monday; 7 h more from Tuesday 09:00 → Tuesday 16:00.
        assert resumed.due_at == at(24 + 7)

    def test_each_customer_message_waiting_for_a_reply_is_a_next_response_cycle(
        self, app: InteractionApplication, scheduler: SlaScheduler, clocks: SlaClocks
    ) -> None:
        mail, case = email_case(app)
        reply(app, mail, 0.5)
        app.add_message(mail, author_kind="customer", text="Still wrong", at=at(1))
        app.add_message(mail, author_kind="customer", text="Hello?", at=at(1.2))  # same wait
        reply(app, mail, 1.5)
        app.add_message(mail, author_kind="customer", text="And now?", at=at(3))
        cycles = [
            (view.cycle, view.state, view.due_at)
            for view in clocks.clocks_of(case, now=at(3))
            if view.metric is SlaMetric.NEXT_RESPONSE
        ]
        assert cycles == [(1, ClockState.MET, at(2)), (2, ClockState.RUNNING, at(4))]
        assert names(scheduler.run_once(at(4.5))) == [("SlaBreached", "next_response", 2)]

    def test_an_internal_note_is_no_reply(
        self, app: InteractionApplication, clocks: SlaClocks
    ) -> None:
        mail, case = email_case(app)
        app.queue(mail, queue="billing", at=at(0.1))
        app.answer(mail, ALICE, at=at(0.1))
        app.add_message(
            mail, author_kind="agent", author_id=ALICE, text="angry", public=False, at=at(0.2)
        )
        assert clocks.clocks_of(case, now=at(1))[0].state is ClockState.RUNNING

    def test_a_reopened_case_runs_its_resolution_clock_on(
        self, app: InteractionApplication, scheduler: SlaScheduler, clocks: SlaClocks
    ) -> None:
        mail, case = email_case(app)
        reply(app, mail, 0.5)
        app.solve_case(case, resolution="Refunded", at=at(6))  # 6 h used
        assert scheduler.run_once(at(10)) == []
        app.reopen_case(case, reason="Refund missing", at=at(24))  # Tuesday 09:00
        resolution = clocks.clocks_of(case, now=at(24))[-1]
        assert (resolution.state, resolution.due_at) == (ClockState.RUNNING, at(26))
        assert names(scheduler.run_once(at(26.5))) == [("SlaBreached", "resolution", 1)]

    def test_closing_stops_every_clock(
        self, app: InteractionApplication, scheduler: SlaScheduler, clocks: SlaClocks
    ) -> None:
        _, case = email_case(app)
        app.solve_case(case, at=at(0.5))
        app.close_case(case, at=at(0.6))
        states = {view.state for view in clocks.clocks_of(case, now=at(1))}
        assert states == {ClockState.MET, ClockState.STOPPED}
        assert scheduler.run_once(at(100)) == []


class TestOnceOnly:
    def test_a_restarted_scheduler_does_not_repeat_an_event(self, tmp_path: Path) -> None:
        persistence = PersistenceSettings.sqlite(tmp_path / "data")
        app = InteractionApplication(persistence)
        clocks = SlaClocks(app, POLICIES)
        email_case(app)
        assert len(SlaScheduler(app, clocks).run_once(at(2.1))) == 1
        clocks.close_clocks()
        app.close()

        app = InteractionApplication(persistence)
        clocks = SlaClocks(app, POLICIES)
        try:
            assert SlaScheduler(app, clocks).run_once(at(2.2)) == []
        finally:
            clocks.close_clocks()
            app.close()

    def test_an_event_recorded_but_not_yet_projected_is_not_recorded_again(
        self, app: InteractionApplication, clocks: SlaClocks
    ) -> None:
        _, case = email_case(app)
        clocks.catch_up()
        due = clocks.due(at(2.1))
        assert len(due) == 1
        # Another scheduler recorded it; this one's read model has not seen that yet.
        first = app.record_sla_event(
            case,
            kind=due[0].kind,
            metric=due[0].metric,
            cycle=due[0].cycle,
            policy=due[0].policy,
            target=due[0].target,
            started_at=due[0].started_at,
            due_at=due[0].due_at,
            at=at(2.1),
        )
        assert first is not None
        stored = app.recorder.max_notification_id()
        assert SlaScheduler(app, clocks).run_once(at(2.2)) == []
        assert app.recorder.max_notification_id() == stored

    def test_rival_schedulers_record_each_event_once(self, tmp_path: Path) -> None:
        persistence = PersistenceSettings.sqlite(tmp_path / "data")
        app = InteractionApplication(persistence)
        for _ in range(5):
            email_case(app)
        rivals = [SlaClocks(app, POLICIES, store=None) for _ in range(2)]
        recorded: list[SlaEvent] = []
        lock = threading.Lock()

        def run(clocks: SlaClocks) -> None:
            events = SlaScheduler(app, clocks).run_once(at(2.5))
            with lock:
                recorded.extend(events)

        threads = [threading.Thread(target=run, args=(clocks,)) for clocks in rivals]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        try:
            assert len(recorded) == 5
            assert all(isinstance(event, SlaBreached) for event in recorded)
        finally:
            for clocks in rivals:
                clocks.close_clocks()
            app.close()

    def test_at_risk_and_breach_are_separate_marks(
        self, app: InteractionApplication, scheduler: SlaScheduler
    ) -> None:
        _, case = email_case(app)
        events = scheduler.run_once(at(1.6)) + scheduler.run_once(at(2.1))
        assert [type(event) for event in events] == [SlaAtRisk, SlaBreached]
        record = app.get_sla_record(case)
        assert record is not None
        assert record.marks == ("first_response:1:at_risk", "first_response:1:breached")
