"""SLA clocks of interactions outside any case: hand-worked deadlines in business hours
(weekend, holidays, another time zone, the time between resolving and reopening), what starts,
meets and stops each clock, the policy chosen by channel and routing priority, and the
scheduler's at-risk and breached events — none after the interaction joined a case."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID
from zoneinfo import ZoneInfo

import pytest

from crmcore.adapters.readmodels import SqliteReadModelStore
from crmcore.application.interactions import InteractionApplication
from crmcore.application.metrics import MetricsProjection
from crmcore.application.sla_scheduler import ClockView, SlaClocks, SlaScheduler
from crmcore.domain.errors import NotFound
from crmcore.domain.interaction import RoutingRequirements
from crmcore.domain.sla import (
    ClockState,
    SlaAtRisk,
    SlaBreached,
    SlaEvent,
    SlaMetric,
    SlaPolicies,
    SlaSubject,
    business_calendar,
    sla_policy,
)

ALICE = UUID("00000000-0000-4000-8000-00000000a11c")
TARO = UUID("00000000-0000-4000-8000-0000000074a0")
TOKYO = ZoneInfo("Asia/Tokyo")
NEW_YORK = ZoneInfo("America/New_York")

#: A Tokyo office: Monday to Friday, 09:00–18:00, closed 1–3 January 2025.
TOKYO_OFFICE = business_calendar(
    time_zone="Asia/Tokyo",
    hours="mon-fri 09:00-18:00",
    holidays=["2025-01-01", "2025-01-02", "2025-01-03"],
)
STANDARD = sla_policy(
    name="standard", first_response="2h", next_response="1h", resolution="8h", at_risk_fraction=0.75
)
POLICIES = SlaPolicies(
    calendar=TOKYO_OFFICE,
    policies=(
        sla_policy(
            name="urgent chat",
            channels=["chat"],
            priorities=["urgent"],
            first_response="10m",
            calendar=business_calendar(hours="always"),
        ),
        sla_policy(name="high", priorities=["high"], first_response="1h"),
        STANDARD,
    ),
)
NEW_YORK_POLICIES = SlaPolicies(
    calendar=business_calendar(time_zone="America/New_York", hours="mon-fri 09:00-17:00"),
    policies=(STANDARD,),
)


def tokyo(month: int, day: int, hour: int, minute: int = 0, year: int = 2025) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=TOKYO)


#: Monday 3 March 2025, 09:00 in Tokyo: the office opens.
MONDAY_9 = tokyo(3, 3, 9)


def at(hours: float) -> datetime:
    return MONDAY_9 + timedelta(hours=hours)


@dataclass
class Centre:
    app: InteractionApplication
    clocks: SlaClocks
    scheduler: SlaScheduler

    def chat(
        self,
        opened: datetime,
        *,
        channel: str = "chat",
        direction: str = "inbound",
        case_id: UUID | None = None,
    ) -> UUID:
        return self.app.open_interaction(
            channel=channel, direction=direction, customer_id=TARO, case_id=case_id, at=opened
        ).id

    def take(self, interaction_id: UUID, when: datetime, priority: int = 0) -> None:
        self.app.queue(
            interaction_id,
            queue="support",
            requirements=RoutingRequirements(priority=priority),
            at=when,
        )
        self.app.answer(interaction_id, ALICE, at=when)

    def write(self, interaction_id: UUID, author: str, when: datetime, public: bool = True) -> None:
        self.app.add_message(
            interaction_id,
            author_kind=author,
            author_id=ALICE if author == "agent" else None,
            text="…",
            public=public,
            at=when,
        )

    def views(self, interaction_id: UUID, now: datetime) -> dict[tuple[SlaMetric, int], ClockView]:
        return {
            (view.metric, view.cycle): view
            for view in self.clocks.clocks_of_interaction(interaction_id, now=now)
        }

    def tick(self, when: datetime) -> list[tuple[str, str, int]]:
        return names(self.scheduler.run_once(when))


def names(events: list[SlaEvent]) -> list[tuple[str, str, int]]:
    return [(type(event).__name__, str(event.metric), event.cycle) for event in events]


def open_centre(policies: SlaPolicies = POLICIES) -> Centre:
    app = InteractionApplication()
    clocks = SlaClocks(app, policies)
    return Centre(app, clocks, SlaScheduler(app, clocks))


@pytest.fixture
def centre() -> Iterator[Centre]:
    opened = open_centre()
    yield opened
    opened.clocks.close_clocks()
    opened.app.close()


FIRST = (SlaMetric.FIRST_RESPONSE, 1)
RESOLUTION = (SlaMetric.RESOLUTION, 1)


class TestHandWorkedDeadlines:
    def test_a_chat_on_friday_evening_is_due_on_monday_morning(self, centre: Centre) -> None:
        chat = centre.chat(tokyo(3, 7, 17, 30))  # Friday 17:30 in Tokyo
        views = centre.views(chat, tokyo(3, 7, 17, 30))
        # 30 minutes on Friday, 1 h 30 on Monday; resolution: 30 min + 7 h 30 on Monday.
        assert views[FIRST].due_at == tokyo(3, 10, 10, 30)
        assert views[FIRST].at_risk_at == tokyo(3, 10, 10)  # 1 h 30 of 2 h
        assert views[RESOLUTION].due_at == tokyo(3, 10, 16, 30)
        assert (views[FIRST].policy, views[FIRST].subject) == ("standard", SlaSubject.INTERACTION)

    def test_the_new_year_holidays_and_the_weekend_after_them_are_skipped(
        self, centre: Centre
    ) -> None:
        mail = centre.chat(tokyo(12, 31, 17, year=2024), channel="email")  # Tuesday 17:00
        views = centre.views(mail, tokyo(12, 31, 17, year=2024))
        # 1 h on 31 December; 1–3 January closed, 4–5 a weekend; 1 h on Monday 6 January.
        assert views[FIRST].due_at == tokyo(1, 6, 10)

    def test_deadlines_follow_the_calendar_of_the_policy_in_its_time_zone(self) -> None:
        centre = open_centre(NEW_YORK_POLICIES)
        try:
            # Monday 08:00 in Tokyo is Sunday 18:00 in New York: the office opens on Monday
            # 09:00 EST (14:00 UTC), so 2 business hours run out at 11:00 EST.
            chat = centre.chat(tokyo(3, 3, 8))
            due = centre.views(chat, tokyo(3, 3, 8))[FIRST].due_at
            assert due == datetime(2025, 3, 3, 11, tzinfo=NEW_YORK)
            assert due == datetime(2025, 3, 3, 16, tzinfo=UTC)
        finally:
            centre.clocks.close_clocks()
            centre.app.close()

    def test_the_time_between_resolving_and_reopening_does_not_count(self, centre: Centre) -> None:
        chat = centre.chat(MONDAY_9)
        centre.take(chat, at(0.5))
        centre.write(chat, "agent", at(0.5))
        centre.app.resolve(chat, at=at(6))  # 6 of 8 business hours used
        resolved = centre.views(chat, at(6))[RESOLUTION]
        assert (resolved.state, resolved.breached) == (ClockState.MET, False)
        assert centre.tick(at(23)) == []  # Monday night … Tuesday 08:00: nothing is owed
        centre.app.reopen(chat, reason="Still broken", at=at(25))  # Tuesday 10:00
        reopened = centre.views(chat, at(25))[RESOLUTION]
        # Paused from Monday 15:00 to Tuesday 10:00: 2 h left from Tuesday 10:00 → 12:00.
        assert (reopened.state, reopened.due_at) == (ClockState.RUNNING, at(27))
        assert centre.tick(at(27.1)) == [("SlaBreached", "resolution", 1)]


class TestWhatMovesTheClocks:
    def test_the_first_public_agent_reply_meets_the_first_response(self, centre: Centre) -> None:
        chat = centre.chat(MONDAY_9)
        centre.take(chat, at(0.2))  # accepting the chat is no reply yet
        centre.write(chat, "agent", at(0.3), public=False)  # nor is an internal note
        assert centre.views(chat, at(0.3))[FIRST].state is ClockState.RUNNING
        centre.write(chat, "agent", at(0.5))
        first = centre.views(chat, at(1))[FIRST]
        assert (first.state, first.ended_at, first.breached) == (ClockState.MET, at(0.5), False)

    def test_on_the_phone_the_answer_is_the_first_response(self, centre: Centre) -> None:
        call = centre.chat(MONDAY_9, channel="phone")
        centre.take(call, at(0.1))
        assert centre.views(call, at(0.1))[FIRST].state is ClockState.MET

    def test_each_customer_message_waiting_for_a_reply_is_a_next_response_cycle(
        self, centre: Centre
    ) -> None:
        chat = centre.chat(MONDAY_9)
        centre.write(chat, "customer", at(0.1))  # before the first reply: not a cycle
        centre.take(chat, at(0.5))
        centre.write(chat, "agent", at(0.5))
        centre.write(chat, "customer", at(1))
        centre.write(chat, "customer", at(1.2))  # the same wait
        centre.write(chat, "agent", at(1.5))
        centre.write(chat, "customer", at(3))
        cycles = [
            (cycle, view.state, view.due_at)
            for (metric, cycle), view in centre.views(chat, at(3)).items()
            if metric is SlaMetric.NEXT_RESPONSE
        ]
        assert cycles == [(1, ClockState.MET, at(2)), (2, ClockState.RUNNING, at(4))]
        assert centre.tick(at(4.1)) == [("SlaBreached", "next_response", 2)]

    def test_resolving_meets_the_resolution_and_stops_the_waits(self, centre: Centre) -> None:
        chat = centre.chat(MONDAY_9)
        centre.take(chat, at(0.5))
        centre.app.start_wrap_up(chat, at=at(1))
        centre.app.resolve(chat, at=at(1))  # nobody ever wrote: the first response stops
        views = centre.views(chat, at(1))
        assert (views[FIRST].state, views[RESOLUTION].state) == (
            ClockState.STOPPED,
            ClockState.MET,
        )
        centre.write(chat, "customer", at(1.5))  # on a resolved interaction: no wait
        assert len(centre.views(chat, at(2))) == 2
        assert centre.tick(at(100)) == []

    def test_an_abandoned_contact_stops_every_clock(self, centre: Centre) -> None:
        chat = centre.chat(MONDAY_9)
        centre.app.queue(chat, queue="support", at=at(0.1))
        centre.app.abandon(chat, at=at(0.2))
        assert {v.state for v in centre.views(chat, at(1)).values()} == {ClockState.STOPPED}
        assert centre.tick(at(100)) == []

    def test_a_closed_contact_stops_every_clock(self, centre: Centre) -> None:
        chat = centre.chat(MONDAY_9)
        centre.take(chat, at(0.1))
        centre.write(chat, "agent", at(0.2))
        centre.write(chat, "customer", at(0.3))
        centre.app.resolve(chat, at=at(0.4))
        centre.app.close_interaction(chat, at=at(0.5))
        states = {view.state for view in centre.views(chat, at(1)).values()}
        assert states == {ClockState.MET, ClockState.STOPPED}
        assert centre.tick(at(100)) == []

    def test_a_bot_conversation_is_timed_from_the_hand_off(self, centre: Centre) -> None:
        bot = centre.chat(MONDAY_9, channel="chatbot")
        assert centre.views(bot, at(1)) == {}
        centre.app.hand_off_to_human(bot, queue="support", reason="Asks for a human", at=at(1))
        views = centre.views(bot, at(1))
        assert (views[FIRST].started_at, views[FIRST].due_at) == (at(1), at(3))

    def test_a_contained_bot_conversation_has_no_clocks(self, centre: Centre) -> None:
        bot = centre.chat(MONDAY_9, channel="chatbot")
        centre.app.bot_contain(bot, at=at(0.1))
        assert centre.views(bot, at(1)) == {}
        assert centre.tick(at(100)) == []

    def test_an_outbound_contact_has_no_clocks(self, centre: Centre) -> None:
        call = centre.chat(MONDAY_9, channel="phone", direction="outbound")
        assert centre.views(call, at(1)) == {}
        assert centre.tick(at(100)) == []

    def test_an_interaction_opened_in_a_case_has_only_the_cases_clocks(
        self, centre: Centre
    ) -> None:
        case = centre.app.open_case(subject="Refund", customer_id=TARO, at=MONDAY_9)
        chat = centre.chat(MONDAY_9, case_id=case.id)
        assert centre.views(chat, at(1)) == {}
        events = centre.scheduler.run_once(at(100))
        assert {(event.case_id, event.interaction_id) for event in events} == {(case.id, None)}

    def test_an_interaction_never_seen_has_no_clocks(self, centre: Centre) -> None:
        assert centre.clocks.clocks_of_interaction(UUID(int=7)) == ()
        with pytest.raises(NotFound):
            centre.clocks.clocks_of(UUID(int=7))  # nor is it a case


class TestPolicyChoice:
    def test_routing_priority_8_makes_a_chat_urgent(self, centre: Centre) -> None:
        chat = centre.chat(at(10))  # Monday 19:00: closed, but urgent chats run 24/7
        assert centre.views(chat, at(10))[FIRST].policy == "standard"
        centre.app.queue(chat, queue="vip", requirements=RoutingRequirements(priority=8), at=at(10))
        first = centre.views(chat, at(10))[FIRST]
        assert (first.policy, first.due_at) == ("urgent chat", at(10) + timedelta(minutes=10))
        (event,) = centre.scheduler.run_once(at(10.2))
        assert (type(event), event.priority, event.policy) == (SlaBreached, "urgent", "urgent chat")

    def test_routing_priority_5_is_high_and_a_transfer_changes_it_again(
        self, centre: Centre
    ) -> None:
        mail = centre.chat(MONDAY_9, channel="email")
        centre.take(mail, at(0.1), priority=5)
        assert centre.views(mail, at(0.1))[FIRST].policy == "high"
        centre.app.transfer(
            mail,
            reason="Billing question",
            to_queue="billing",
            requirements=RoutingRequirements(priority=2),
            at=at(0.2),
        )
        assert centre.views(mail, at(0.2))[FIRST].policy == "standard"

    def test_a_new_policy_set_recomputes_the_open_clocks(self, centre: Centre) -> None:
        chat = centre.chat(MONDAY_9)
        centre.clocks.catch_up()
        centre.clocks.policies = SlaPolicies(
            calendar=TOKYO_OFFICE, policies=(sla_policy(name="quick", first_response="30m"),)
        )
        assert centre.clocks.recompute_open_clocks() == 2
        views = centre.views(chat, MONDAY_9)
        assert (views[FIRST].policy, views[FIRST].due_at) == ("quick", at(0.5))
        assert views[RESOLUTION].policy is None  # "quick" sets no resolution target


class TestTheScheduler:
    def test_at_risk_then_breached_each_once(self, centre: Centre) -> None:
        centre.chat(MONDAY_9)
        assert centre.tick(at(1.4)) == []
        assert centre.tick(at(1.6)) == [("SlaAtRisk", "first_response", 1)]
        assert centre.tick(at(1.7)) == []
        assert centre.tick(at(2.1)) == [("SlaBreached", "first_response", 1)]
        assert centre.tick(at(2.2)) == []

    def test_the_events_name_the_interaction_and_no_case(self, centre: Centre) -> None:
        chat = centre.chat(MONDAY_9)
        (risk,) = centre.scheduler.run_once(at(1.6))
        (breach,) = centre.scheduler.run_once(at(2.1))
        assert isinstance(risk, SlaAtRisk)
        assert isinstance(breach, SlaBreached)
        assert (breach.case_id, breach.interaction_id, breach.subject_id) == (None, chat, chat)
        assert (breach.customer_id, breach.channel, breach.priority) == (TARO, "chat", "normal")
        assert (breach.policy, breach.target_seconds) == ("standard", 7200)
        assert (breach.started_at, breach.due_at, breach.timestamp) == (
            MONDAY_9,
            at(2),
            at(2.1),
        )
        assert breach.bus_subject() == "crm.interaction.sla_breached"
        attributes = breach.bus_attributes()
        assert attributes["interactionid"] == str(chat)
        assert "caseid" not in attributes
        record = centre.app.get_interaction_sla_record(chat)
        assert record is not None
        assert record.marks == ("first_response:1:at_risk", "first_response:1:breached")
        assert (record.case_id, record.interaction_id) == (None, chat)
        view = centre.views(chat, at(2.1))[FIRST]
        assert (view.breached, view.at_risk_recorded, view.breach_recorded) == (True, True, True)

    def test_a_reply_after_the_deadline_is_a_breach_even_when_nobody_was_watching(
        self, centre: Centre
    ) -> None:
        chat = centre.chat(MONDAY_9)
        centre.take(chat, at(3))
        centre.write(chat, "agent", at(3))
        assert centre.tick(at(3.1)) == [("SlaBreached", "first_response", 1)]

    def test_no_event_once_the_interaction_joined_a_case_before_its_deadline(
        self, centre: Centre
    ) -> None:
        chat = centre.chat(MONDAY_9)
        case = centre.app.open_case(subject="Refund", interaction_ids=[chat], at=at(1))
        views = centre.views(chat, at(1))
        assert {view.state for view in views.values()} == {ClockState.STOPPED}
        assert centre.clocks.linked_case_of(chat) == case.id
        events = centre.scheduler.run_once(at(100))
        assert events  # the case's own clocks ran out …
        assert all(event.case_id == case.id for event in events)  # … and nothing else did
        assert centre.app.get_interaction_sla_record(chat) is None

    def test_a_deadline_passed_before_the_link_is_still_a_breach_once(self, centre: Centre) -> None:
        chat = centre.chat(MONDAY_9)
        case = centre.app.open_case(subject="Refund", customer_id=TARO, at=MONDAY_9)
        centre.app.link_interaction_to_case(case.id, chat, at=at(2.5))  # first response due 2 h
        events = centre.scheduler.run_once(at(2.6))
        assert {(type(e).__name__, e.case_id, e.interaction_id) for e in events} == {
            ("SlaBreached", case.id, None),  # the case's first response, due at 2 h too
            ("SlaBreached", None, chat),
        }
        later = centre.scheduler.run_once(at(100))
        assert all(event.case_id == case.id for event in later)

    def test_an_unknown_interaction_is_refused_by_the_application(self, centre: Centre) -> None:
        with pytest.raises(NotFound):
            centre.app.record_interaction_sla_event(
                UUID(int=9),
                kind="breached",
                metric="first_response",
                cycle=1,
                policy="standard",
                target=timedelta(hours=2),
                started_at=MONDAY_9,
                due_at=at(2),
                at=at(2.1),
            )


class TestTheMetricsProjection:
    def test_takes_an_interactions_sla_events_without_counting_them_as_a_cases(
        self, centre: Centre
    ) -> None:
        centre.chat(MONDAY_9)
        assert len(centre.scheduler.run_once(at(2.1))) == 1
        metrics = MetricsProjection(SqliteReadModelStore(":memory:"))
        try:
            assert metrics.catch_up(centre.app) == centre.app.recorder.max_notification_id()
            assert metrics.stats.orphan_events == 0
        finally:
            metrics.store.close_store()
