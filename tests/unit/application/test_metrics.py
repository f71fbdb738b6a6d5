"""The metrics projection, scenario by scenario: small contact-centre histories whose KPIs are
worked out by hand in the comments, then checked against what the projection reports.

All times are on Monday 2025-03-03 (UTC) unless a test says otherwise; `at(s)` is 09:00 plus s
seconds, `day(n, h)` is n days later at h o'clock.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import ClassVar, TypeVar
from uuid import UUID, uuid4

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crmcore.adapters.readmodels import SqliteReadModelStore
from crmcore.application.customers import CustomerApplication
from crmcore.application.interactions import InteractionApplication
from crmcore.application.metrics import (
    BUS_SOURCE,
    EXPORT_COLUMNS,
    Dimension,
    KpiQuery,
    KpiRow,
    KpiTarget,
    MetricsProjection,
    ReadModelMismatch,
    StaffingRequest,
    open_metrics,
    prometheus_text,
)
from crmcore.application.sla_scheduler import SlaClocks, SlaScheduler
from crmcore.application.workforce import WorkforceApplication
from crmcore.config import ConfigurationError, PersistenceSettings, metrics_from_env
from crmcore.domain import kpis
from crmcore.domain.agent import Agent, AgentEvent, Presence
from crmcore.domain.base import DomainEvent
from crmcore.domain.case import Case, CaseEvent, CasePriority
from crmcore.domain.customer import Customer, CustomerEvent
from crmcore.domain.errors import DomainError, InvalidValue, NotFound
from crmcore.domain.feedback import (
    Feedback,
    FeedbackEvent,
    SurveyAnswered,
    SurveyResponse,
)
from crmcore.domain.interaction import (
    Abandoned,
    Answered,
    HandedOffToHuman,
    Interaction,
    InteractionCommand,
    InteractionEvent,
    InteractionOpened,
    Queued,
    Resolved,
    RoutingRequirements,
    Transferred,
)
from crmcore.domain.kpis import (
    AbandonTreatment,
    Interval,
    KpiPolicy,
    KpiValues,
    ServiceLevelPolicy,
)
from crmcore.domain.queue import ServiceLevelTarget
from crmcore.domain.sla import (
    SlaBreached,
    SlaEvent,
    SlaEventKind,
    SlaMetric,
    SlaPolicies,
    SlaRecord,
    business_calendar,
    interaction_priority,
    interaction_sla_record_id,
    mark,
    sla_policy,
    sla_record_id,
)
from crmcore.domain.values import Channel
from services.metrics.config import settings_from_env

T = TypeVar("T")

MONDAY = datetime(2025, 3, 3, tzinfo=UTC)
NINE = MONDAY + timedelta(hours=9)
DAY_MS = 86_400_000


def at(seconds: float) -> datetime:
    return NINE + timedelta(seconds=seconds)


def day(n: float, hour: float = 0) -> datetime:
    return MONDAY + timedelta(days=n, hours=hour)


def ms(moment: datetime) -> int:
    return kpis.to_ms(moment)


class Centre:
    """A contact centre in memory: the applications and the metrics projection over them."""

    def __init__(self) -> None:
        memory = PersistenceSettings.in_memory()
        self.interactions = InteractionApplication(memory)
        self.workforce = WorkforceApplication(memory)
        self.customers = CustomerApplication(memory)
        self.metrics = MetricsProjection(SqliteReadModelStore(":memory:"))

    def agent(self, name: str, team: str, **capacity: int) -> UUID:
        return self.workforce.register_agent(
            display_name=name, teams=[team], capacity=capacity or {"phone": 1}, at=day(-1)
        ).id

    def call(
        self,
        *,
        queued: float,
        queue: str = "billing",
        reason: str | None = "billing",
        channel: str = "phone",
        customer: UUID | None = None,
        case: UUID | None = None,
        opened: datetime | None = None,
    ) -> UUID:
        interaction = self.interactions.open_interaction(
            channel=channel,
            contact_reason=reason,
            customer_id=customer,
            case_id=case,
            at=opened or at(queued),
        )
        self.interactions.queue(interaction.id, queue=queue, at=opened or at(queued))
        return interaction.id

    def handled_call(
        self,
        agent: UUID,
        when: datetime,
        *,
        customer: UUID | None = None,
        case: UUID | None = None,
        reason: str = "billing",
    ) -> UUID:
        """Queued at `when`, answered 10 s later, resolved after 5 minutes."""
        call = self.call(queued=0, customer=customer, case=case, reason=reason, opened=when)
        self.interactions.answer(call, agent, at=when + timedelta(seconds=10))
        self.interactions.resolve(call, at=when + timedelta(minutes=5))
        return call

    def catch_up(self) -> None:
        self.metrics.catch_up(self.workforce, self.customers, self.interactions)

    def report(
        self,
        *,
        start: datetime = MONDAY,
        end: datetime | None = None,
        group_by: tuple[Dimension, ...] = (),
        interval: Interval = Interval.PERIOD,
        policy: KpiPolicy | None = None,
        as_of: datetime | None = None,
        filters: dict[Dimension, tuple[str, ...]] | None = None,
    ) -> dict[tuple[str, ...], KpiValues]:
        self.catch_up()
        report = self.metrics.kpis(
            KpiQuery(
                start_ms=ms(start),
                end_ms=ms(end or start + timedelta(days=1)),
                interval=interval,
                group_by=group_by,
                policy=policy or KpiPolicy(),
                as_of_ms=ms(as_of or day(30)),
                filters=filters or {},
            )
        )
        return {row.group: row.values for row in report.rows}

    def totals(self, **kwargs: object) -> KpiValues:
        return self.report(**kwargs)[()]  # type: ignore[arg-type]


@pytest.fixture
def centre() -> Iterator[Centre]:
    centre = Centre()
    yield centre
    centre.metrics.store.close_store()


class TestServiceLevel:
    """Six calls to "billing" (T = 20 s):
    answered after 10 s, 30 s and exactly 20 s; abandoned after 3 s, 15 s and 45 s."""

    @pytest.fixture
    def six_calls(self, centre: Centre) -> Centre:
        sato = centre.agent("Sato", "tier1")
        for queued, answered_after in ((0, 10), (60, 30), (300, 20)):
            call = centre.call(queued=queued)
            centre.interactions.answer(call, sato, at=at(queued + answered_after))
        for queued, waited in ((120, 3), (180, 15), (240, 45)):
            call = centre.call(queued=queued)
            centre.interactions.abandon(call, at=at(queued + waited))
        return centre

    @pytest.mark.parametrize(
        ("abandons", "short_s", "expected"),
        [
            (AbandonTreatment.MISSED, 0, 2 / 6),
            (AbandonTreatment.EXCLUDED, 0, 2 / 3),
            (AbandonTreatment.MET_WITHIN_THRESHOLD, 0, 4 / 6),
            (AbandonTreatment.EXCLUDED_WITHIN_THRESHOLD, 0, 2 / 4),
            (AbandonTreatment.MISSED, 5, 2 / 5),
            (AbandonTreatment.MET_WITHIN_THRESHOLD, 5, 3 / 5),
            (AbandonTreatment.EXCLUDED_WITHIN_THRESHOLD, 5, 2 / 4),
        ],
    )
    def test_each_abandon_policy(
        self, six_calls: Centre, abandons: AbandonTreatment, short_s: int, expected: float
    ) -> None:
        policy = KpiPolicy(
            service_level=ServiceLevelPolicy(
                threshold_s=20, abandons=abandons, short_abandon_s=short_s
            )
        )
        values = six_calls.totals(policy=policy)
        assert values.service_level.value == pytest.approx(expected)
        assert values.service_level.policy == policy.service_level.describe()

    def test_counts_rates_and_speed_of_answer(self, six_calls: Centre) -> None:
        values = six_calls.totals()
        assert (values.offered, values.answered, values.abandoned) == (6, 3, 3)
        assert values.answer_rate.value == 0.5
        assert values.abandonment_rate.value == 0.5
        # ASA over 10, 30, 20 s: mean 20; nearest-rank median 20, p90 30
        assert values.asa.mean_s == 20
        assert values.asa.median_s == pytest.approx(20, abs=1e-3)
        assert values.asa.p90_s == pytest.approx(30, abs=1e-3)
        # abandon waits 3, 15, 45 s
        assert values.abandon_wait.mean_s == 21

    def test_a_shorter_threshold_is_a_query_away(self, six_calls: Centre) -> None:
        policy = KpiPolicy(service_level=ServiceLevelPolicy(threshold_s=10))
        assert six_calls.totals(policy=policy).service_level.value == pytest.approx(1 / 6)

    def test_outcomes_count_in_the_interval_the_contact_arrived(self, centre: Centre) -> None:
        # queued 09:14:50, answered 09:15:20 (30 s): counted in the 09:00 quarter-hour
        sato = centre.agent("Sato", "tier1")
        call = centre.call(queued=14 * 60 + 50)
        centre.interactions.answer(call, sato, at=at(15 * 60 + 20))
        centre.catch_up()
        report = centre.metrics.kpis(
            KpiQuery(
                start_ms=ms(NINE),
                end_ms=ms(NINE + timedelta(hours=1)),
                interval=Interval.MINUTES_15,
            )
        )
        # (the 09:15 row holds the first-response SLA the answer met, in the interval it did)
        assert [
            (row.interval_start_ms, row.values.answered, row.values.sla_first_response.met)
            for row in report.rows
        ] == [(ms(NINE), 1, 0), (ms(NINE + timedelta(minutes=15)), 0, 1)]

    def test_a_queue_with_its_own_threshold_gets_it_in_the_live_view(self, centre: Centre) -> None:
        centre.workforce.create_queue(
            name="vip",
            channels=["phone"],
            service_level=ServiceLevelTarget(fraction=0.9, threshold_seconds=30),
            at=day(-1),
        )
        sato = centre.agent("Sato", "tier1")
        call = centre.call(queued=0, queue="vip")
        centre.interactions.answer(call, sato, at=at(25))  # within 30 s, not within 20 s
        centre.catch_up()
        live = centre.metrics.live(ms(at(60)))
        (vip,) = live.queues
        assert vip.service_level_today.value == 1.0
        assert "30 s" in vip.service_level_today.policy
        assert live.service_level_today.value == 0.0  # the default policy: 20 s


class TestHandling:
    """Sato (tier1) and Kato (tier2) handle three calls:

    1. Sato answers 09:00:10, holds 09:01:00–09:01:30, wraps up 09:03:10, resolves 09:04:10:
       handle 240 s = talk 150 + hold 30 + after-contact work 60.
    2. Sato answers 09:10:20 and transfers to "tech" at 09:11:20 (60 s, transferred); Kato
       answers 09:12:00 and resolves 09:14:00 (120 s of talk).
    3. Kato answers 09:20:05, escalates 09:21:00, wraps up 09:25:05, resolves 09:26:05:
       handle 360 s = talk 300 + after-contact work 60, escalated.

    Four agent segments: 240, 60, 120, 360 s → AHT 195 s, median 120, p90 360;
    transfers 1/4, escalations 1/4.
    """

    @pytest.fixture
    def three_calls(self, centre: Centre) -> tuple[Centre, UUID, UUID]:
        sato = centre.agent("Sato", "tier1")
        kato = centre.agent("Kato", "tier2")
        calls = centre.interactions
        first = centre.call(queued=0)
        calls.answer(first, sato, at=at(10))
        calls.hold(first, at=at(60))
        calls.resume(first, at=at(90))
        calls.start_wrap_up(first, at=at(190))
        calls.resolve(first, at=at(250))
        second = centre.call(queued=600)
        calls.answer(second, sato, at=at(620))
        calls.transfer(second, reason="needs a technician", to_queue="tech", at=at(680))
        calls.answer(second, kato, at=at(720))
        calls.resolve(second, at=at(840))
        third = centre.call(queued=1200)
        calls.answer(third, kato, at=at(1205))
        calls.escalate(third, reason="refund above limit", tier=2, at=at(1260))
        calls.start_wrap_up(third, at=at(1505))
        calls.resolve(third, at=at(1565))
        return centre, sato, kato

    def test_average_handle_time_and_its_parts(
        self, three_calls: tuple[Centre, UUID, UUID]
    ) -> None:
        values = three_calls[0].totals()
        assert values.handled == 4
        assert values.aht.mean_s == 195
        assert values.aht.median_s == pytest.approx(120, abs=1e-3)
        assert values.aht.p90_s == pytest.approx(360, abs=1e-3)
        assert values.mean_talk_s == (150 + 60 + 120 + 300) / 4
        assert values.mean_hold_s == 30 / 4
        assert values.mean_acw_s == (60 + 60) / 4
        assert values.transfer_rate.value == 0.25
        assert values.escalation_rate.value == 0.25

    def test_per_agent_each_segment_belongs_to_its_agent(
        self, three_calls: tuple[Centre, UUID, UUID]
    ) -> None:
        centre, sato, kato = three_calls
        by_agent = centre.report(group_by=(Dimension.AGENT,))
        assert by_agent[(str(sato),)].handled == 2
        assert by_agent[(str(sato),)].aht.mean_s == 150  # (240 + 60) / 2
        assert by_agent[(str(sato),)].transfer_rate.value == 0.5
        assert by_agent[(str(kato),)].aht.mean_s == 240  # (120 + 360) / 2
        assert by_agent[(str(kato),)].escalation_rate.value == 0.5

    def test_by_team_and_queue(self, three_calls: tuple[Centre, UUID, UUID]) -> None:
        centre = three_calls[0]
        by_team = centre.report(group_by=(Dimension.TEAM,))
        assert by_team[("tier1",)].handled == 2
        assert by_team[("tier2",)].handled == 2
        by_queue = centre.report(group_by=(Dimension.QUEUE,))
        # arrivals count in the first queue; Kato's part of call 2 was handled for "tech"
        assert by_queue[("billing",)].offered == 3
        assert by_queue[("billing",)].handled == 3
        assert by_queue[("tech",)].handled == 1
        assert by_queue[("tech",)].offered == 0

    def test_a_reason_given_at_the_end_moves_everything_to_it(self, centre: Centre) -> None:
        sato = centre.agent("Sato", "tier1")
        call = centre.call(queued=0, reason=None)
        centre.interactions.answer(call, sato, at=at(5))
        centre.catch_up()  # counted under no reason first
        centre.interactions.resolve(call, contact_reason="refund", at=at(65))
        by_reason = centre.report(group_by=(Dimension.REASON,))
        assert list(by_reason) == [("refund",)]
        assert (by_reason[("refund",)].offered, by_reason[("refund",)].handled) == (1, 1)

    def test_filters_keep_only_the_values_asked_for(
        self, three_calls: tuple[Centre, UUID, UUID]
    ) -> None:
        centre, sato, _ = three_calls
        values = centre.totals(filters={Dimension.AGENT: (str(sato),)})
        assert values.handled == 2


class TestFirstResponse:
    def test_only_an_agents_public_reply_counts(self, centre: Centre) -> None:
        # chat opened 09:00, internal note 09:01, public reply 09:02 → 120 s
        # e-mail opened 09:00, reply 10:00 → 3600 s
        sato = centre.agent("Sato", "tier1", chat=3, email=5)
        calls = centre.interactions
        chat = centre.call(queued=0, channel="chat")
        calls.answer(chat, sato, at=at(30))
        calls.add_message(chat, author_kind="customer", text="hello?", at=at(40))
        calls.add_message(
            chat, author_kind="agent", author_id=sato, text="note", public=False, at=at(60)
        )
        calls.add_message(chat, author_kind="agent", author_id=sato, text="Hi!", at=at(120))
        mail = centre.call(queued=0, channel="email")
        calls.answer(mail, sato, at=at(3000))
        calls.add_message(mail, author_kind="agent", author_id=sato, text="Dear…", at=at(3600))
        values = centre.totals()
        assert values.first_response.count == 2
        assert values.first_response.mean_s == (120 + 3600) / 2
        # both within the default 3600 s of calendar time
        assert values.first_response_within_calendar_target.value == 1.0
        half_hour = KpiPolicy(first_response_target_s=1800)
        within = centre.totals(policy=half_hour).first_response_within_calendar_target
        assert within.value == 0.5


class TestFirstContactResolution:
    """Six billing cases, each solved on Monday at 10:10 after one call answered by Sato:

    - K1 alice: nothing else happens                                 → FCR
    - K2 bob: bob calls again about billing on Thursday (day 3)      → repeat: not FCR
    - K3 carol: carol calls again about billing on day 9             → after the window: FCR
    - K4 dan: the case is reopened on day 2 and solved again         → not FCR
    - K5 eve: the call was transferred to Kato before it was solved  → two agents: not FCR
    - K6 fay: a second call is linked to her case on day 1           → repeat: not FCR
    With N = 7 days the windows close on day 7 at 10:10.
    """

    @pytest.fixture
    def cases(self, centre: Centre) -> dict[str, UUID]:
        self.sato = centre.agent("Sato", "tier1")
        self.kato = centre.agent("Kato", "tier1")
        return {name: uuid4() for name in ("alice", "bob", "carol", "dan", "eve", "fay")}

    def solved_case(self, centre: Centre, customer: UUID, *, transfer: bool = False) -> UUID:
        case = centre.interactions.open_case(
            subject="double charge", customer_id=customer, reason="billing", at=day(0, 10)
        )
        call = centre.call(queued=0, customer=customer, case=case.id, opened=day(0, 10))
        centre.interactions.answer(call, self.sato, at=day(0, 10.01))
        if transfer:
            centre.interactions.transfer(
                call, reason="specialist", to_queue="tech", at=day(0, 10.05)
            )
            centre.interactions.answer(call, self.kato, at=day(0, 10.06))
        centre.interactions.resolve(call, at=day(0, 10.1))
        centre.interactions.solve_case(case.id, at=day(0, 10 + 10 / 60))
        return case.id

    def first_week(self, centre: Centre, customers: dict[str, UUID]) -> dict[str, UUID]:
        cases = {
            name: self.solved_case(centre, customer)
            for name, customer in customers.items()
            if name != "eve"
        }
        cases["eve"] = self.solved_case(centre, customers["eve"], transfer=True)
        fay_again = centre.call(queued=0, customer=customers["fay"], opened=day(1, 9))
        centre.interactions.link_interaction_to_case(cases["fay"], fay_again, at=day(1, 9))
        centre.interactions.reopen_case(cases["dan"], reason="charged again", at=day(2, 9))
        centre.interactions.solve_case(cases["dan"], at=day(2, 11))
        centre.call(queued=0, customer=customers["bob"], opened=day(3, 9))
        return cases

    def test_provisional_while_the_windows_are_open(
        self, centre: Centre, cases: dict[str, UUID]
    ) -> None:
        self.first_week(centre, cases)
        values = centre.totals(as_of=day(3, 12))
        # no window has closed: no final rate yet; alice and carol are FCR so far
        assert values.issues_resolved == 6
        assert values.fcr.value is None
        assert values.fcr.denominator == 0
        assert values.fcr_provisional.value == pytest.approx(2 / 6)
        assert values.fcr_pending == 2

    def test_final_once_the_windows_close(self, centre: Centre, cases: dict[str, UUID]) -> None:
        self.first_week(centre, cases)
        centre.call(queued=0, customer=cases["carol"], opened=day(9, 9))
        values = centre.totals(as_of=day(10))
        assert values.fcr.value == pytest.approx(2 / 6)  # alice and carol
        assert values.fcr.denominator == 6
        assert values.fcr_pending == 0
        assert values.reopen_rate.value == pytest.approx(1 / 6)  # dan

    def test_a_longer_window_catches_the_later_repeat(
        self, centre: Centre, cases: dict[str, UUID]
    ) -> None:
        self.first_week(centre, cases)
        centre.call(queued=0, customer=cases["carol"], opened=day(9, 9))
        values = centre.totals(as_of=day(11), policy=KpiPolicy(fcr_window_days=10))
        assert values.fcr.value == pytest.approx(1 / 6)  # alice only
        assert "10 days" in values.fcr.policy

    def test_a_reopen_after_the_window_leaves_fcr_final(self, centre: Centre) -> None:
        self.sato = centre.agent("Sato", "tier1")
        customer = uuid4()
        case = centre.interactions.open_case(
            subject="x",
            customer_id=customer,
            reason="billing",
            reopen_window=timedelta(days=14),
            at=day(0, 10),
        )
        call = centre.call(queued=0, customer=customer, case=case.id, opened=day(0, 10))
        centre.interactions.answer(call, self.sato, at=day(0, 10.01))
        centre.interactions.resolve(call, at=day(0, 10.1))
        centre.interactions.solve_case(case.id, at=day(0, 10.2))
        centre.interactions.reopen_case(case.id, at=day(8))  # inside 14 days, after 7
        values = centre.totals(as_of=day(9))
        assert values.fcr.value == 1.0
        assert values.reopen_rate.value == 1.0

    def test_an_interaction_outside_any_case_is_an_issue_of_its_own(self, centre: Centre) -> None:
        # ken: resolved call, no repeat → FCR; lia: resolved call, calls again on day 2 → not
        sato = centre.agent("Sato", "tier1")
        ken, lia = uuid4(), uuid4()
        centre.handled_call(sato, day(0, 9), customer=ken)
        centre.handled_call(sato, day(0, 9), customer=lia)
        centre.call(queued=0, customer=lia, opened=day(2, 9))
        centre.call(queued=0, customer=lia, reason="delivery", opened=day(2, 10))
        values = centre.totals(as_of=day(8))
        assert values.issues_created == 2
        assert values.issues_resolved == 2
        assert values.fcr.value == 0.5
        assert values.resolution_rate.value == 1.0
        # repeat contacts: lia's day-2 billing call is a repeat of Monday's; delivery is not
        week = centre.totals(end=day(7), as_of=day(8))
        # of ken, lia, lia's billing and lia's delivery call
        assert week.repeat_contact_rate.value == pytest.approx(1 / 4)

    def test_resolution_rate_and_times(self, centre: Centre) -> None:
        # Three calls on Monday; two resolved after 5 minutes; one still open.
        sato = centre.agent("Sato", "tier1")
        centre.handled_call(sato, day(0, 9))
        centre.handled_call(sato, day(0, 10))
        open_call = centre.call(queued=0, opened=day(0, 11))
        centre.interactions.answer(open_call, sato, at=day(0, 11.1))
        values = centre.totals()
        assert values.resolution_rate.value == pytest.approx(2 / 3)
        assert values.first_resolution.mean_s == 300
        assert values.full_resolution.median_s == 300
        assert values.resolution_within_calendar_target.value == 1.0


OFFICE_POLICIES = SlaPolicies(
    calendar=business_calendar(hours="mon-fri 09:00-18:00"),
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


class SlaCentre(Centre):
    """A centre whose interaction service runs the SLA scheduler on office hours (Mon–Fri
    09:00–18:00 UTC; standard policy: first response 2 h, next response 1 h, resolution 8 h,
    at risk at 75 %), and whose metrics know the same policies."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics.store.close_store()
        self.metrics = MetricsProjection(
            SqliteReadModelStore(":memory:"), sla_policies=OFFICE_POLICIES
        )
        self.clocks = SlaClocks(self.interactions, OFFICE_POLICIES)
        self.scheduler = SlaScheduler(self.interactions, self.clocks)
        #: case → its interaction
        self.mails: dict[UUID, UUID] = {}

    def email_case(self, agent: UUID, opened: datetime, priority: str = "normal") -> UUID:
        mail = self.interactions.open_interaction(channel="email", customer_id=TARO, at=opened)
        case = self.interactions.open_case(
            subject="Invoice wrong", interaction_ids=[mail.id], priority=priority, at=opened
        )
        self.interactions.queue(mail.id, queue="billing", at=opened)
        self.interactions.answer(mail.id, agent, at=opened)
        self.mails[case.id] = mail.id
        return case.id

    def write(self, case: UUID, author: str, when: datetime, agent: UUID | None = None) -> None:
        self.interactions.add_message(
            self.mails[case], author_kind=author, author_id=agent, text="…", at=when
        )

    def tick(self, when: datetime) -> list[str]:
        return [
            f"{type(event).__name__} {event.metric} {event.cycle}"
            for event in self.scheduler.run_once(when)
        ]


TARO = UUID("00000000-0000-4000-8000-0000000074a0")


def hour(day_offset: int, hours: float) -> datetime:
    return MONDAY + timedelta(days=day_offset, hours=hours)


class TestSlaAttainment:
    """SLA attainment counts the interaction service's SLA events (deadlines in business
    hours), not calendar time.

    Case A (Sato, Monday): opened 09:00; first reply 10:00 (met, 1 h of 2 h); the customer
    writes 10:30, Sato replies 11:00 (next response #1 met); the customer writes 13:00, at
    13:50 it is at risk (45 of 60 min), at 14:05 breached (due 14:00), Sato replies 15:00
    (too late: breached); solved 16:00 (resolution met: 7 h of 8 h).
    Case B (Suzuki): opened Monday 17:30; first reply Tuesday 10:00: 16.5 h of calendar time
    but 1.5 business hours (30 min Monday, 1 h Tuesday): met. Resolution due after 8 business
    hours, Tuesday 16:30 (at risk at 6 h, Tuesday 14:30): at risk at 15:00, breached at 17:00;
    solved Wednesday 09:30.
    Case C (urgent chat policy: only a 10-minute first response, on a 24/7 calendar): opened
    Monday 20:00, answered 20:05, solved 20:30: its resolution has no target, so it is not
    counted."""

    @pytest.fixture
    def office(self) -> Iterator[SlaCentre]:
        centre = SlaCentre()
        sato = centre.agent("Sato", "tier1", email=5, chat=3)
        suzuki = centre.agent("Suzuki", "tier2", email=5, chat=3)
        a = centre.email_case(sato, hour(0, 9))
        centre.write(a, "agent", hour(0, 10), sato)
        centre.write(a, "customer", hour(0, 10.5))
        centre.write(a, "agent", hour(0, 11), sato)
        centre.write(a, "customer", hour(0, 13))
        assert centre.tick(hour(0, 13 + 50 / 60)) == ["SlaAtRisk next_response 2"]
        assert centre.tick(hour(0, 14 + 5 / 60)) == ["SlaBreached next_response 2"]
        centre.write(a, "agent", hour(0, 15), sato)
        centre.interactions.solve_case(a, at=hour(0, 16))
        b = centre.email_case(suzuki, hour(0, 17.5))
        chat = centre.interactions.open_interaction(
            channel="chat", customer_id=TARO, at=hour(0, 20)
        )
        c = centre.interactions.open_case(
            subject="Down", interaction_ids=[chat.id], priority="urgent", at=hour(0, 20)
        ).id
        centre.mails[c] = chat.id
        centre.interactions.queue(chat.id, queue="chat", at=hour(0, 20))
        centre.interactions.answer(chat.id, suzuki, at=hour(0, 20))
        centre.write(c, "agent", hour(0, 20 + 5 / 60), suzuki)
        centre.interactions.solve_case(c, at=hour(0, 20.5))
        centre.write(b, "agent", hour(1, 10), suzuki)
        assert centre.tick(hour(1, 15)) == ["SlaAtRisk resolution 1"]
        assert centre.tick(hour(1, 17)) == ["SlaBreached resolution 1"]
        centre.interactions.solve_case(b, at=hour(2, 9.5))
        yield centre
        centre.clocks.close_clocks()
        centre.metrics.store.close_store()

    def test_met_and_breached_by_metric_over_the_days(self, office: SlaCentre) -> None:
        values = office.totals(end=hour(3, 0))
        first, following, resolution = (
            values.sla_first_response,
            values.sla_next_response,
            values.sla_resolution,
        )
        assert (first.met, first.breached, first.at_risk) == (3, 0, 0)  # A, B and C
        assert first.attainment.value == 1.0
        assert "business hours" in first.attainment.policy
        assert (following.met, following.breached, following.at_risk) == (1, 1, 1)
        assert following.attainment.value == 0.5
        assert (resolution.met, resolution.breached, resolution.at_risk) == (1, 1, 1)
        assert resolution.attainment.value == 0.5  # C's resolution had no target
        # In calendar time B's first reply took 16.5 h: over the 2 h (7200 s) of the policy.
        calendar = office.totals(
            end=hour(3, 0), policy=KpiPolicy(first_response_target_s=7200)
        ).first_response_within_calendar_target
        assert (calendar.numerator, calendar.denominator) == (2, 3)
        assert "calendar time" in calendar.policy

    def test_each_clock_counts_when_it_was_decided(self, office: SlaCentre) -> None:
        monday = office.report(start=MONDAY, end=hour(1, 0))[()]
        assert (monday.sla_next_response.met, monday.sla_next_response.breached) == (1, 1)
        # A's and C's first responses were on Monday, B's on Tuesday; B's resolution was
        # breached at its deadline on Tuesday, although it was solved on Wednesday.
        assert (monday.sla_first_response.met, monday.sla_resolution.met) == (2, 1)
        tuesday = office.report(start=hour(1, 0), end=hour(2, 0))[()]
        assert (tuesday.sla_first_response.met, tuesday.sla_resolution.breached) == (1, 1)
        # B was solved on Wednesday (an issue resolved), but no SLA clock was decided then.
        wednesday = office.report(start=hour(2, 0), end=hour(3, 0))[()]
        assert wednesday.issues_resolved == 1
        assert (wednesday.sla_resolution.met, wednesday.sla_resolution.breached) == (0, 0)

    def test_by_agent_and_channel(self, office: SlaCentre) -> None:
        by_agent = office.report(end=hour(3, 0), group_by=(Dimension.AGENT,))
        agents = {
            agent.name: agent.id for agent in office.metrics.agents()
        }  # the first agent of each case's first interaction
        sato, suzuki = by_agent[(agents["Sato"],)], by_agent[(agents["Suzuki"],)]
        assert (sato.sla_next_response.met, sato.sla_next_response.breached) == (1, 1)
        assert (sato.sla_resolution.met, sato.sla_resolution.breached) == (1, 0)
        assert (suzuki.sla_first_response.met, suzuki.sla_resolution.breached) == (2, 1)
        chats = office.totals(end=hour(3, 0), filters={Dimension.CHANNEL: ("chat",)})
        assert (chats.sla_first_response.met, chats.sla_resolution.met) == (1, 0)

    def test_a_breach_is_counted_once_however_often_it_arrives(self, office: SlaCentre) -> None:
        office.catch_up()
        breaches = [
            event
            for event in office.interactions.recorder.select_notifications(start=1, limit=10_000)
            if event.topic.endswith("SlaBreached")
        ]
        assert len(breaches) == 2
        events = [office.interactions.mapper.to_domain_event(n) for n in breaches]
        office.metrics.apply_events([e for e in events if isinstance(e, DomainEvent)])
        values = office.totals(end=hour(3, 0))
        assert (values.sla_next_response.breached, values.sla_resolution.breached) == (1, 1)

    def test_interactions_outside_a_case_count_by_their_own_clocks(self) -> None:
        """Three contacts in no case, Monday, office policies:
        - a phone call answered 09:00:30 and resolved 09:10: first response (the answer on a
          voice channel) and resolution both met;
        - a chat answered at 09:00, first agent reply 09:05, resolved 09:20, but the
          interaction service recorded its first-response breach (due 09:03, business hours,
          at risk first): breached, not met; the customer writes 09:10 and gets the next
          reply 09:15 (next response met); its resolution met;
        - an urgent chat (routing priority 9: the "urgent chat" policy, first response only)
          with the same conversation: first response met; next response and resolution
          without a target;
        - an outbound call (not timed)."""
        centre = SlaCentre()
        sato = centre.agent("Sato", "tier1", phone=1, chat=3)
        phone = centre.call(queued=0)
        centre.interactions.answer(phone, sato, at=at(30))
        centre.interactions.resolve(phone, at=at(600))
        chats = []
        for priority in (0, 9):
            chat = centre.interactions.open_interaction(channel="chat", at=at(0)).id
            centre.interactions.queue(
                chat, queue="chat", requirements=RoutingRequirements(priority=priority), at=at(0)
            )
            centre.interactions.answer(chat, sato, at=at(0))
            for author, when in (("agent", 300), ("customer", 600), ("agent", 900)):
                centre.interactions.add_message(
                    chat, author_kind=author, author_id=sato, text="Hi", at=at(when)
                )
            centre.interactions.resolve(chat, at=at(1200))
            chats.append(chat)
        record = None
        for kind in (SlaEventKind.AT_RISK, SlaEventKind.BREACHED):
            event = mark(
                record,
                interaction_id=chats[0],
                kind=kind,
                metric=SlaMetric.FIRST_RESPONSE,
                cycle=1,
                policy="standard",
                target=timedelta(minutes=3),
                started_at=at(0),
                due_at=at(180),
                channel=Channel.CHAT,
                at=at(200),
            )
            record = event.mutate(record)
            centre.interactions.record(event)
        outbound = centre.interactions.open_interaction(
            channel="phone", direction="outbound", at=at(0)
        ).id
        centre.interactions.queue(outbound, queue="callbacks", at=at(1300))
        centre.interactions.answer(outbound, sato, at=at(1300))
        centre.interactions.resolve(outbound, at=at(1400))
        values = centre.totals()
        first, resolution = values.sla_first_response, values.sla_resolution
        assert (first.met, first.breached, first.at_risk) == (2, 1, 1)
        assert (values.sla_next_response.met, values.sla_next_response.breached) == (1, 0)
        assert (resolution.met, resolution.breached) == (2, 0)
        by_channel = centre.report(group_by=(Dimension.CHANNEL,))
        assert by_channel[("chat",)].sla_first_response.breached == 1
        assert by_channel[("phone",)].sla_first_response.met == 1
        centre.clocks.close_clocks()
        centre.metrics.store.close_store()

    def test_an_sla_event_of_an_unknown_case_counts_nothing(self) -> None:
        projection = MetricsProjection(SqliteReadModelStore(":memory:"))
        event = SlaBreached(
            originator_id=uuid4(),
            originator_version=1,
            timestamp=hour(0, 12),
            case_id=uuid4(),
            customer_id=None,
            channel=None,
            priority=CasePriority.NORMAL,
            policy="standard",
            metric=SlaMetric.FIRST_RESPONSE,
            cycle=1,
            target_seconds=7200,
            started_at=hour(0, 9),
            due_at=hour(0, 11),
        )
        projection.apply_events([event])
        assert projection.stats.orphan_events == 1
        report = projection.kpis(KpiQuery(start_ms=ms(MONDAY), end_ms=ms(hour(1, 0))))
        assert report.rows[0].values.sla_first_response.breached == 0
        projection.store.close_store()


class TestBotContainment:
    """Four chatbot conversations on Monday:
    B1 contained at 10:05, nothing follows → contained
    B2 contained at 10:05, the customer phones at 15:00 → not contained (repeat within 24 h)
    B3 handed off to a human at 10:03 → not contained
    B4 contained at 23:05; on Tuesday at 12:00 its window is still open → provisional
    """

    def test_containment_final_and_provisional(self, centre: Centre) -> None:
        calls = centre.interactions
        customers = [uuid4() for _ in range(4)]
        bots = [
            calls.open_interaction(channel="chatbot", customer_id=customer, at=day(0, 10)).id
            for customer in customers[:3]
        ]
        late = calls.open_interaction(channel="chatbot", customer_id=customers[3], at=day(0, 23))
        calls.bot_contain(bots[0], at=day(0, 10 + 5 / 60))
        calls.bot_contain(bots[1], at=day(0, 10 + 5 / 60))
        centre.call(queued=0, customer=customers[1], opened=day(0, 15))
        calls.hand_off_to_human(bots[2], queue="billing", reason="wants a person", at=day(0, 10.05))
        calls.bot_contain(late.id, at=day(0, 23 + 5 / 60))
        values = centre.totals(as_of=day(1, 12))
        assert values.bot_conversations == 4
        assert values.bot_containment.value == pytest.approx(1 / 3)  # B1 of B1, B2, B3
        assert values.bot_containment_provisional.value == pytest.approx(2 / 4)  # B1, B4
        assert "24 h" in values.bot_containment.policy
        assert values.offered == 2  # the hand-off joined a human queue, and B2's phone call


class TestOccupancy:
    """Ann (chat, capacity 3): available 09:00; chat 1 09:00–09:20, chat 2 09:10–09:30;
    offline 09:40.  Occupied 30 min (1800 s), idle 10 min (600 s); weighted by load:
    10 min × 1/3 + 10 min × 2/3 + 10 min × 1/3 = 800 s.  Occupancy 0.75, weighted 1/3.

    Ben (phone): available 10:00; call 10:05–10:10; after-call work 10:10–10:12; available
    again until offline at 10:20.  Occupied 300 + 120 = 420 s, idle 300 + 480 = 780 s:
    occupancy 0.35 (a phone call fills him: weighted the same).
    """

    @pytest.fixture
    def shifts(self, centre: Centre) -> tuple[Centre, UUID, UUID]:
        workforce = centre.workforce
        ann = centre.agent("Ann", "chat", chat=3)
        ben = centre.agent("Ben", "voice", phone=1)
        chats = [uuid4(), uuid4()]
        workforce.set_presence(ann, "available", at=at(0))
        workforce.assign_work(ann, chats[0], "chat", at=at(0))
        workforce.assign_work(ann, chats[1], "chat", at=at(600))
        workforce.release_work(ann, chats[0], at=at(1200))
        workforce.release_work(ann, chats[1], at=at(1800))
        workforce.set_presence(ann, "offline", at=at(2400))
        call = uuid4()
        workforce.set_presence(ben, "available", at=at(3600))
        workforce.assign_work(ben, call, "phone", at=at(3900))
        workforce.release_work(ben, call, at=at(4200))
        workforce.set_presence(ben, "after_call_work", at=at(4200))
        workforce.set_presence(ben, "available", at=at(4320))
        workforce.set_presence(ben, "offline", at=at(4800))
        return centre, ann, ben

    def test_concurrent_chats_plain_and_capacity_weighted(
        self, shifts: tuple[Centre, UUID, UUID]
    ) -> None:
        centre, ann, ben = shifts
        by_agent = centre.report(group_by=(Dimension.AGENT,))
        assert by_agent[(str(ann),)].occupancy.value == 0.75
        assert by_agent[(str(ann),)].weighted_occupancy.value == pytest.approx(1 / 3)
        assert by_agent[(str(ann),)].logged_in_hours == pytest.approx(2400 / 3600)
        assert by_agent[(str(ben),)].occupancy.value == pytest.approx(0.35)
        assert by_agent[(str(ben),)].weighted_occupancy.value == pytest.approx(0.35)
        everyone = centre.totals()
        assert everyone.occupancy.value == pytest.approx(2220 / 3600)
        assert everyone.weighted_occupancy.value == pytest.approx(1220 / 3600)

    def test_time_is_split_over_quarter_hours(self, shifts: tuple[Centre, UUID, UUID]) -> None:
        # 09:00–09:15: Ann occupied 900 s, weighted 600 × 1/3 + 300 × 2/3 = 400 s
        centre, ann, _ = shifts
        centre.catch_up()
        report = centre.metrics.kpis(
            KpiQuery(
                start_ms=ms(NINE),
                end_ms=ms(NINE + timedelta(minutes=15)),
                interval=Interval.MINUTES_15,
                filters={Dimension.AGENT: (str(ann),)},
            )
        )
        (row,) = report.rows
        assert row.values.occupancy.numerator == 900
        assert row.values.weighted_occupancy.numerator == 400

    def test_live_agents_by_presence(self, centre: Centre) -> None:
        ann = centre.agent("Ann", "chat", chat=3)
        centre.agent("Ben", "voice")
        centre.workforce.set_presence(ann, "available", at=at(0))
        centre.workforce.assign_work(ann, uuid4(), "chat", at=at(10))
        centre.catch_up()
        live = centre.metrics.live(ms(at(60)))
        assert live.agents_by_presence["available"] == 1
        assert live.agents_by_presence["offline"] == 1
        chat_team = next(team for team in live.teams if team.team == "chat")
        assert chat_team.with_work == 1


class TestProductivity:
    def test_handled_per_logged_in_hour_and_per_agent_day(self, centre: Centre) -> None:
        # Sato is logged in 09:00–11:00 and handles three calls: 1.5 per hour, 3 per day
        sato = centre.agent("Sato", "tier1")
        centre.workforce.set_presence(sato, "available", at=at(0))
        for minutes in (5, 30, 60):
            centre.handled_call(sato, at(minutes * 60))
        centre.workforce.set_presence(sato, "offline", at=at(7200))
        values = centre.totals()
        assert values.handled_per_logged_in_hour.value == 1.5
        assert values.handled_per_agent_day.value == 3


class TestSurveys:
    def test_csat_nps_ces_by_agent(self, centre: Centre) -> None:
        # Sato's calls rated CSAT 5, 4, 3 and NPS 10, 6; CES 2 and 6 → mean 4
        sato = centre.agent("Sato", "tier1")
        calls = [centre.handled_call(sato, at(minutes * 60)) for minutes in range(5)]
        answers = [("csat", 5), ("csat", 4), ("csat", 3), ("nps", 10), ("nps", 6)]
        for number, (call, (kind, score)) in enumerate(zip(calls, answers, strict=True)):
            centre.interactions.record_survey_response(
                survey_id=f"s{number}", kind=kind, score=score, interaction_id=call, at=at(3600)
            )
        for number, score in enumerate((2, 6)):
            centre.interactions.record_survey_response(
                survey_id=f"ces{number}",
                kind="ces",
                score=score,
                interaction_id=calls[0],
                at=at(3600),
            )
        values = centre.report(group_by=(Dimension.AGENT,))[(str(sato),)]
        assert values.csat.value == pytest.approx(2 / 3)
        assert values.nps.value == 0.0  # 1 promoter − 1 detractor
        assert values.ces.value == 4.0


class TestRetention:
    def test_active_at_the_start_and_still_at_the_end(self, centre: Centre) -> None:
        # A, B, D active before Monday; B churns on Wednesday; D is merged into A (a duplicate
        # leaves the population); C becomes active on Tuesday (not there at the start).
        register = centre.customers.register
        a = register(name="A", lifecycle="active", at=day(-10)).id
        b = register(name="B", lifecycle="active", at=day(-10)).id
        d = register(name="D", lifecycle="active", at=day(-10)).id
        c = register(name="C", at=day(-10)).id
        centre.customers.change_lifecycle(b, "churned", at=day(2))
        centre.customers.change_lifecycle(c, "active", at=day(1))
        centre.customers.merge(d, a, at=day(3))
        centre.catch_up()
        report = centre.metrics.kpis(
            KpiQuery(start_ms=ms(day(0)), end_ms=ms(day(7)), as_of_ms=ms(day(8)))
        )
        assert report.retention.active_at_start == 2  # A, B
        assert report.retention.retained == 1  # A
        assert report.retention.retention.value == 0.5
        assert report.retention.churn.value == 0.5


class TestStaffing:
    def test_erlang_c_from_observed_arrivals_and_handle_time(self, centre: Centre) -> None:
        # 25 calls queued between 09:00 and 09:15, each handled in 180 s:
        # λ = 25 / 900 s, A = 5 Erlangs → the plan Erlang C gives for that
        sato = centre.agent("Sato", "tier1")
        for n in range(25):
            call = centre.call(queued=n * 30)
            centre.interactions.answer(call, sato, at=at(n * 30))
            centre.interactions.resolve(call, at=at(n * 30 + 180))
        centre.catch_up()
        report = centre.metrics.staffing(
            StaffingRequest(
                start_ms=ms(NINE),
                end_ms=ms(NINE + timedelta(minutes=15)),
                interval=Interval.MINUTES_15,
                target_fraction=0.8,
                threshold_s=20,
                shrinkage=0.25,
            )
        )
        (row,) = report.rows
        assert report.handle_s == 180
        assert row.result.traffic_erlangs == pytest.approx(5.0)
        expected = kpis.staffing(
            contacts=25,
            interval_s=900,
            handle_s=180,
            target_fraction=0.8,
            threshold_s=20,
            shrinkage=0.25,
        )
        assert row.result == expected
        assert "ignores abandonment" in report.note

    def test_a_forecast_needs_no_history(self, centre: Centre) -> None:
        report = centre.metrics.staffing(
            StaffingRequest(contacts=100, interval_s=1800, handle_s=180)
        )
        assert report.peak_agents == 14


class TestTopics:
    def test_top_contact_reasons_and_rising_topics(self, centre: Centre) -> None:
        # Last week: 2 billing, 1 delivery. This week: 3 billing, 4 delivery, 1 login;
        # feedback this week mentions "app-crash" twice (last week never).
        for reason, count, week in (
            ("billing", 2, -7),
            ("delivery", 1, -7),
            ("billing", 3, 0),
            ("delivery", 4, 0),
            ("login", 1, 0),
        ):
            for n in range(count):
                centre.call(queued=0, reason=reason, opened=day(week + n % 5, 9))
        for n in range(2):
            centre.interactions.capture_feedback(
                text="the app crashes", topics=["app-crash"], set_by="model", at=day(1, 9 + n)
            )
        centre.catch_up()
        report = centre.metrics.contact_reasons(ms(day(0)), ms(day(7)), min_count=2)
        assert [(t.name, t.count, t.previous_count) for t in report.top_contact_reasons] == [
            ("delivery", 4, 1),
            ("billing", 3, 2),
            ("login", 1, 0),
        ]
        # rise: delivery (4 − 1)/√2 ≈ 2.12; app-crash (2 − 0)/1 = 2; billing (3 − 2)/√3 ≈ 0.58
        assert [(t.kind, t.name) for t in report.rising] == [
            ("contact_reason", "delivery"),
            ("feedback_topic", "app-crash"),
            ("contact_reason", "billing"),
        ]


class TestLiveAndBacklog:
    def test_waiting_now_oldest_wait_and_backlog(self, centre: Centre) -> None:
        first = centre.call(queued=0)
        centre.call(queued=60)
        centre.call(queued=30, queue="tech")
        centre.interactions.open_case(subject="late parcel", at=at(0))
        centre.catch_up()
        live = centre.metrics.live(ms(at(120)))
        billing = next(queue for queue in live.queues if queue.queue == "billing")
        assert billing.waiting == 2
        assert billing.oldest_wait_s == 120
        assert billing.oldest_waiting_since_ms == ms(at(0))
        assert live.backlog.open_interactions == 3
        assert live.backlog.by_age["under_1h"] == 3
        assert live.backlog.open_cases == 1
        centre.interactions.abandon(first, at=at(130))
        centre.catch_up()
        live = centre.metrics.live(ms(at(7200)))
        assert live.backlog.by_age == {
            "under_1h": 0,
            "1h_to_4h": 2,
            "4h_to_24h": 0,
            "1d_to_3d": 0,
            "over_3d": 0,
        }


class TestExport:
    def test_one_csv_row_per_interaction(self, centre: Centre) -> None:
        sato = centre.agent("Sato", "tier1")
        call = centre.handled_call(sato, at(0))
        centre.call(queued=600, reason="delivery")
        centre.catch_up()
        text = "".join(centre.metrics.export_interactions(ms(MONDAY), ms(day(1)), page=1))
        rows = list(csv.DictReader(io.StringIO(text)))
        assert list(rows[0]) == list(EXPORT_COLUMNS)
        assert [row["contact_reason"] for row in rows] == ["billing", "delivery"]
        assert rows[0]["interaction_id"] == str(call)
        assert rows[0]["wait_seconds"] == "10.000"
        assert rows[0]["handle_seconds"] == "290.000"
        assert rows[1]["status"] == "queued"

    def test_filters_apply(self, centre: Centre) -> None:
        centre.call(queued=0, reason="delivery")
        centre.call(queued=0, reason="billing")
        centre.catch_up()
        text = "".join(
            centre.metrics.export_interactions(
                ms(MONDAY), ms(day(1)), {Dimension.REASON: ["delivery"]}
            )
        )
        assert len(text.strip().splitlines()) == 2


class TestTargets:
    def test_fcr_from_75_to_85_percent(self, centre: Centre) -> None:
        sato = centre.agent("Sato", "tier1")
        for hour in (9, 10, 11, 12):
            centre.handled_call(sato, day(0, hour), customer=uuid4())
        centre.catch_up()
        target = centre.metrics.create_target(
            KpiTarget(
                kpi="fcr_provisional",
                baseline=0.75,
                target=0.85,
                start_ms=ms(day(-50)),
                deadline_ms=ms(day(50)),
                window_days=7,
                description="FCR 75 % → 85 %",
            )
        )
        assert centre.metrics.target(target.id) == target
        status = centre.metrics.target_status(target, now_ms=ms(day(0, 18)))
        assert status.progress.current == 1.0
        assert status.progress.expected == pytest.approx(0.80, abs=1e-3)
        assert status.progress.on_track
        assert status.progress.achieved
        centre.metrics.delete_target(target.id)
        assert centre.metrics.targets() == []
        with pytest.raises(NotFound):
            centre.metrics.target(target.id)

    def test_an_unknown_kpi_is_refused(self, centre: Centre) -> None:
        with pytest.raises(InvalidValue) as refused:
            centre.metrics.create_target(
                KpiTarget(kpi="happiness", baseline=0, target=1, start_ms=0, deadline_ms=1)
            )
        assert refused.value.field == "target.kpi"


class TestExactlyOnce:
    def test_a_redelivered_batch_changes_nothing(self, centre: Centre) -> None:
        sato = centre.agent("Sato", "tier1")
        centre.handled_call(sato, at(0))
        events = [
            (n.id, centre.interactions.mapper.to_domain_event(n))
            for n in centre.interactions.recorder.select_notifications(start=1, limit=100)
        ]
        centre.metrics.catch_up(centre.workforce)
        metrics = centre.metrics
        assert metrics.apply(events, source="bus-test") == len(events)  # type: ignore[arg-type]
        assert metrics.apply(events, source="bus-test") == 0  # type: ignore[arg-type]
        assert (
            metrics.kpis(KpiQuery(start_ms=ms(MONDAY), end_ms=ms(day(1)))).rows[0].values.handled
            == 1
        )

    def test_an_event_republished_at_a_new_position_is_not_counted_twice(
        self, centre: Centre
    ) -> None:
        sato = centre.agent("Sato", "tier1")
        centre.handled_call(sato, at(0))
        events = [
            centre.interactions.mapper.to_domain_event(n)
            for n in centre.interactions.recorder.select_notifications(start=1, limit=100)
        ]
        centre.metrics.catch_up(centre.workforce)
        centre.metrics.apply_events(events)  # type: ignore[arg-type]
        centre.metrics.apply_events(events)  # type: ignore[arg-type]
        assert centre.metrics.stats.stale_events == len(events)
        values = centre.metrics.kpis(KpiQuery(start_ms=ms(MONDAY), end_ms=ms(day(1)))).rows[0]
        assert values.values.offered == 1

    def test_the_store_remembers_its_time_zone(self, tmp_path: object) -> None:
        path = f"{tmp_path}/metrics.sqlite"
        MetricsProjection(SqliteReadModelStore(path), time_zone="Asia/Tokyo").store.close_store()
        with pytest.raises(ReadModelMismatch, match="Asia/Tokyo"):
            MetricsProjection(SqliteReadModelStore(path), time_zone="UTC")

    def test_a_failed_commit_in_a_pipeline_is_applied_again_later(self) -> None:
        """The writer thread's commit of batch 2 fails (its table is gone): batch 3, built on
        it, is dropped too, the error comes out, the store holds batch 1 with its position,
        and feeding again from there gives what one pass gives."""
        sato = Agent.register(
            UUID(int=1), display_name="Sato", teams=["tier1"], capacity={"phone": 1}, at=NINE
        )
        (available,) = sato.mutate(None).set_presence("available", at=at(60))
        survey = SurveyResponse.answer(survey_id="s1", kind="csat", score=5, at=at(120))
        (offline,) = available.mutate(sato.mutate(None)).set_presence("offline", at=at(3600))
        items: list[tuple[int, DomainEvent | None]] = list(
            enumerate([sato, available, survey, offline], 1)
        )
        reference = MetricsProjection(SqliteReadModelStore(":memory:"))
        reference.apply(items)
        store = SqliteReadModelStore(":memory:")
        projection = MetricsProjection(store)
        with store.transaction() as cursor:
            cursor.execute("DROP TABLE metrics_surveys")

        def feed_pipelined() -> None:
            with projection.pipelined():
                projection.apply(items[:2])
                projection.apply(items[2:3])
                projection.apply(items[3:])

        with pytest.raises(sqlite3.OperationalError, match="metrics_surveys"):
            feed_pipelined()
        assert projection.position() == 2
        assert store.position(BUS_SOURCE) == 2
        projection = MetricsProjection(store)  # the table is back
        projection.apply(items)
        assert dump(projection) == dump(reference)
        assert everything(projection) == everything(reference)
        reference.store.close_store()
        store.close_store()

    def test_a_store_of_the_older_table_layout_must_be_rebuilt(self, tmp_path: object) -> None:
        """v1 kept histograms in a table of their own and had no SLA table: opening such a
        store refuses; the rebuild's projection drops the old tables and starts afresh."""
        path = f"{tmp_path}/metrics.sqlite"
        old = SqliteReadModelStore(path)
        old.create(
            "CREATE TABLE IF NOT EXISTS metrics_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            "CREATE TABLE metrics_buckets (grain SMALLINT, start_ms BIGINT, dims INTEGER)",
            "CREATE TABLE metrics_histograms (grain SMALLINT, start_ms BIGINT, dims INTEGER)",
        )
        with old.transaction() as cursor:
            cursor.execute("INSERT INTO metrics_meta VALUES ('time_zone', 'UTC')")
            cursor.execute(
                "INSERT INTO metrics_meta VALUES ('histograms', ?)", (kpis.HISTOGRAM_LAYOUT,)
            )
        old.close_store()
        with pytest.raises(ReadModelMismatch, match="tables 'v1'"):
            MetricsProjection(SqliteReadModelStore(path))
        rebuilt = MetricsProjection.for_rebuild(SqliteReadModelStore(path))
        rebuilt.reset()
        sato = Agent.register(
            UUID(int=1), display_name="Sato", teams=["tier1"], capacity={"phone": 1}, at=NINE
        )
        assert rebuilt.apply_events([sato]) == 1
        tables = {row[0] for row in rebuilt.store.query("SELECT name FROM sqlite_master")}
        assert "metrics_histograms" not in tables
        rebuilt.store.close_store()
        MetricsProjection(SqliteReadModelStore(path)).store.close_store()  # v2 now

    def test_reset_empties_the_read_models_but_keeps_targets(self, centre: Centre) -> None:
        sato = centre.agent("Sato", "tier1")
        centre.handled_call(sato, at(0))
        centre.catch_up()
        centre.metrics.create_target(
            KpiTarget(kpi="csat", baseline=0.8, target=0.9, start_ms=0, deadline_ms=1)
        )
        centre.metrics.reset()
        assert centre.metrics.position("metrics:interactions") == 0
        assert centre.totals(as_of=day(1)).offered == 1  # caught up again from the start
        assert len(centre.metrics.targets()) == 1


# --- live projection = batch recomputation ------------------------------------------------------


class History:
    """Builds a random but valid event history of a small contact centre from drawn actions,
    through the aggregates' own commands (a refused command is just skipped)."""

    CHANNELS = ("phone", "chat", "email", "chatbot")
    REASONS = (None, "billing", "delivery")

    def __init__(self) -> None:
        self.events: list[DomainEvent] = []
        self.now = NINE
        self.agents: dict[UUID, Agent] = {}
        self.interactions: dict[UUID, Interaction] = {}
        self.cases: dict[UUID, Case] = {}
        self.customers: dict[UUID, Customer] = {}
        self.feedback: dict[UUID, Feedback] = {}
        self.sla_records: dict[UUID, SlaRecord] = {}
        self.surveys = 0
        self.ids = 0
        for number, team in enumerate(("north", "south", "north")):
            agent_id = UUID(int=number + 1)
            self._record(
                Agent.register(
                    agent_id,
                    display_name=f"agent {number}",
                    teams=[team],
                    capacity={"phone": 1, "chat": 2, "email": 3},
                    at=self.now,
                )
            )
        for number in range(3):
            self._record(
                Customer.register(
                    UUID(int=100 + number),
                    name=f"customer {number}",
                    lifecycle="active" if number else "prospect",
                    at=self.now,
                )
            )

    def _record(self, *events: DomainEvent) -> None:
        for event in events:
            self.events.append(event)
            key = event.originator_id
            if isinstance(event, AgentEvent):
                self.agents[key] = event.mutate(self.agents.get(key))
            elif isinstance(event, InteractionEvent):
                self.interactions[key] = event.mutate(self.interactions.get(key))
            elif isinstance(event, CaseEvent):
                self.cases[key] = event.mutate(self.cases.get(key))
            elif isinstance(event, CustomerEvent):
                self.customers[key] = event.mutate(self.customers.get(key))
            elif isinstance(event, FeedbackEvent):
                self.feedback[key] = event.mutate(self.feedback.get(key))
            elif isinstance(event, SlaEvent):
                self.sla_records[key] = event.mutate(self.sla_records.get(key))

    def step(self, data: st.DataObject) -> None:
        self.now += timedelta(seconds=data.draw(st.sampled_from((0, 1, 7, 20, 45, 300, 4000))))
        action = data.draw(st.sampled_from(self.ACTIONS))
        with contextlib.suppress(DomainError):  # the history only keeps what is allowed
            action(self, data)

    def new_id(self) -> UUID:
        """Ids in creation order: a drawn history is the same every time it is replayed."""
        self.ids += 1
        return UUID(int=1000 + self.ids)

    def pick(self, data: st.DataObject, items: dict[UUID, T]) -> T | None:
        if not items:
            return None
        return items[data.draw(st.sampled_from(sorted(items)))]

    def open(self, data: st.DataObject) -> None:
        customer = data.draw(st.sampled_from((None, *sorted(self.customers))))
        self._record(
            Interaction.open(
                interaction_id=self.new_id(),
                channel=data.draw(st.sampled_from(self.CHANNELS)),
                customer_id=customer,
                contact_reason=data.draw(st.sampled_from(self.REASONS)),
                at=self.now,
            )
        )

    COMMANDS: ClassVar[dict[str, InteractionCommand]] = {
        "queue": InteractionCommand.QUEUE,
        "offer": InteractionCommand.OFFER,
        "answer": InteractionCommand.ANSWER,
        "hold": InteractionCommand.HOLD,
        "resume": InteractionCommand.RESUME,
        "message": InteractionCommand.ADD_MESSAGE,
        "transfer": InteractionCommand.TRANSFER,
        "escalate": InteractionCommand.ESCALATE,
        "wrap_up": InteractionCommand.START_WRAP_UP,
        "resolve": InteractionCommand.RESOLVE,
        "reopen": InteractionCommand.REOPEN,
        "close": InteractionCommand.CLOSE,
        "abandon": InteractionCommand.ABANDON,
        "contain": InteractionCommand.BOT_CONTAIN,
        "hand_off": InteractionCommand.HAND_OFF_TO_HUMAN,
        "identify": InteractionCommand.IDENTIFY_CUSTOMER,
    }

    def interaction_command(self, data: st.DataObject) -> None:
        interaction = self.pick(data, self.interactions)
        if interaction is None:
            return
        agent = self.pick(data, self.agents)
        assert agent is not None
        now = self.now
        commands: dict[str, Callable[[], DomainEvent]] = {
            "queue": lambda: interaction.enqueue(
                queue=data.draw(st.sampled_from(("billing", "tech"))),
                # a routing priority picks the SLA policy of an interaction in no case
                requirements=RoutingRequirements(priority=data.draw(st.sampled_from((0, 9)))),
                at=now,
            ),
            "offer": lambda: interaction.offer(agent.id, at=now),
            "answer": lambda: interaction.answer(interaction.offered_agent_id or agent.id, at=now),
            "hold": lambda: interaction.hold(at=now),
            "resume": lambda: interaction.resume(at=now),
            "message": lambda: interaction.add_message(
                author_kind=data.draw(st.sampled_from(("agent", "customer"))),
                author_id=agent.id,
                text="hello",
                at=now,
            ),
            "transfer": lambda: interaction.transfer(reason="other team", to_queue="tech", at=now),
            "escalate": lambda: interaction.escalate(reason="refund", tier=2, at=now),
            "wrap_up": lambda: interaction.start_wrap_up(at=now),
            "resolve": lambda: interaction.resolve(
                contact_reason=data.draw(st.sampled_from(("billing", "delivery", "login"))),
                at=now,
            ),
            "reopen": lambda: interaction.reopen(at=now),
            "close": lambda: interaction.close(at=now),
            "abandon": lambda: interaction.abandon(at=now),
            "contain": lambda: interaction.bot_contain(at=now),
            "hand_off": lambda: interaction.hand_off_to_human(
                queue="billing", reason="asks for a person", at=now
            ),
            "identify": lambda: interaction.identify_customer(
                data.draw(st.sampled_from(sorted(self.customers))), at=now
            ),
        }
        allowed = sorted(name for name in commands if interaction.can(self.COMMANDS[name]))
        if allowed:
            self._record(commands[data.draw(st.sampled_from(allowed))]())

    def agent_command(self, data: st.DataObject) -> None:
        agent = self.pick(data, self.agents)
        assert agent is not None
        choice = data.draw(st.sampled_from(("presence", "assign", "release")))
        if choice == "presence":
            presence = data.draw(st.sampled_from((*Presence, Presence.AVAILABLE)))
            self._record(*agent.set_presence(presence, at=self.now))
        elif choice == "assign":
            channel = data.draw(st.sampled_from(("phone", "chat", "email")))
            self._record(agent.assign_work(self.new_id(), channel, at=self.now))
        elif agent.work:
            work = data.draw(st.sampled_from([item.work_id for item in agent.work]))
            self._record(agent.release_work(work, at=self.now))

    def case_command(self, data: st.DataObject) -> None:
        choice = data.draw(
            st.sampled_from(
                ("open", "link", "respond", "solve", "reopen", "close", "sla", "interaction_sla")
            )
        )
        if choice == "interaction_sla":
            self.interaction_sla(data)
            return
        case = self.pick(data, self.cases)
        if choice == "open" or case is None:
            customer = data.draw(st.sampled_from(sorted(self.customers)))
            self._record(
                Case.open(
                    case_id=self.new_id(),
                    subject="issue",
                    customer_id=customer,
                    reason=data.draw(st.sampled_from(("billing", "delivery"))),
                    at=self.now,
                )
            )
        elif choice == "link":
            interaction = self.pick(data, self.interactions)
            if interaction is None or interaction.case_id is not None:
                return
            self._record(
                case.link_interaction(
                    interaction.id, interaction_customer_id=interaction.customer_id, at=self.now
                ),
                interaction.link_to_case(case.id, at=self.now),
            )
        elif choice == "respond":
            agent = self.pick(data, self.agents)
            assert agent is not None
            self._record(
                case.record_first_response(
                    agent_id=agent.id,
                    interaction_id=case.interaction_ids[0] if case.interaction_ids else UUID(int=9),
                    at=self.now,
                )
            )
        elif choice == "solve":
            self._record(case.solve(at=self.now))
        elif choice == "reopen":
            self._record(case.reopen(at=self.now))
        elif choice == "close":
            self._record(case.close(at=self.now))
        else:  # what the interaction service's SLA scheduler records
            due = self.now - timedelta(minutes=data.draw(st.sampled_from((0, 30, 600))))
            self._record(
                mark(
                    self.sla_records.get(sla_record_id(case.id)),
                    case_id=case.id,
                    kind=data.draw(st.sampled_from(tuple(SlaEventKind))),
                    metric=data.draw(st.sampled_from(tuple(SlaMetric))),
                    cycle=data.draw(st.integers(1, 3)),
                    policy="standard",
                    target=timedelta(hours=1),
                    started_at=due - timedelta(hours=1),
                    due_at=due,
                    customer_id=case.customer_id,
                    priority=case.priority,
                    at=self.now,
                )
            )

    def interaction_sla(self, data: st.DataObject) -> None:
        """What the SLA scheduler records for an interaction outside a case (its channel and
        priority as the scheduler saw them, which later events may change)."""
        interaction = self.pick(
            data, {key: i for key, i in self.interactions.items() if i.case_id is None}
        )
        if interaction is None:
            return
        due = self.now - timedelta(minutes=data.draw(st.sampled_from((0, 30))))
        self._record(
            mark(
                self.sla_records.get(interaction_sla_record_id(interaction.id)),
                interaction_id=interaction.id,
                kind=data.draw(st.sampled_from(tuple(SlaEventKind))),
                metric=data.draw(st.sampled_from(tuple(SlaMetric))),
                cycle=data.draw(st.integers(1, 2)),
                policy="standard",
                target=timedelta(minutes=5),
                started_at=due - timedelta(minutes=5),
                due_at=due,
                channel=data.draw(st.sampled_from((interaction.channel, None))),
                priority=data.draw(st.sampled_from((CasePriority.NORMAL, CasePriority.URGENT))),
                at=self.now,
            )
        )

    def voice_of_customer(self, data: st.DataObject) -> None:
        interaction = self.pick(data, self.interactions)
        choice = data.draw(st.sampled_from(("survey", "feedback", "classify", "lifecycle")))
        if choice == "survey":
            kind = data.draw(st.sampled_from(("csat", "nps", "ces")))
            low, high = {"csat": (1, 5), "nps": (0, 10), "ces": (1, 7)}[kind]
            self.surveys += 1
            self._record(
                SurveyResponse.answer(
                    survey_id=f"survey-{self.surveys}",
                    kind=kind,
                    score=data.draw(st.integers(low, high)),
                    interaction_id=interaction.id if interaction else None,
                    agent_id=interaction.last_agent_id if interaction else None,
                    at=self.now,
                )
            )
        elif choice == "feedback":
            self._record(
                Feedback.capture(
                    feedback_id=self.new_id(),
                    text="slow app",
                    topics=data.draw(st.lists(st.sampled_from(("app", "price", "login")))),
                    set_by="model",
                    at=self.now,
                )
            )
        elif choice == "classify":
            feedback = self.pick(data, self.feedback)
            if feedback is not None:
                self._record(
                    feedback.classify(
                        set_by="agent",
                        topics=data.draw(st.lists(st.sampled_from(("app", "price", "refund")))),
                        at=self.now,
                    )
                )
        else:
            customer = self.pick(data, self.customers)
            assert customer is not None
            to = data.draw(st.sampled_from(("active", "churned")))
            self._record(customer.change_lifecycle(to, at=self.now))

    ACTIONS: ClassVar[tuple[Callable[[History, st.DataObject], None], ...]] = (
        open,
        interaction_command,
        interaction_command,
        interaction_command,
        interaction_command,
        agent_command,
        case_command,
        voice_of_customer,
    )


def dump(projection: MetricsProjection) -> dict[str, object]:
    """Everything the projection keeps, independent of insertion order and of dims ids."""
    store = projection.store
    dims = {row[0]: tuple(row[1:]) for row in store.query("SELECT * FROM metrics_dims")}
    tables: dict[str, object] = {}
    for table in (
        "metrics_interactions",
        "metrics_cases",
        "metrics_agents",
        "metrics_queues",
        "metrics_surveys",
        "metrics_feedback",
        "metrics_customers",
        "metrics_customer_spans",
        "metrics_sla",
    ):
        tables[table] = sorted(store.query(f"SELECT * FROM {table}"), key=repr)
    tables["buckets"] = sorted(
        (row[0], row[1], dims[row[2]], row[3:-1], sorted(json.loads(row[-1]).items()))
        for row in store.query("SELECT * FROM metrics_buckets")
        if any(row[3:-1]) or json.loads(row[-1])
    )
    tables["topics"] = sorted(row for row in store.query("SELECT * FROM metrics_topics") if row[2])
    return tables


def everything(projection: MetricsProjection) -> tuple[KpiRow, ...]:
    return projection.kpis(
        KpiQuery(
            start_ms=ms(MONDAY),
            end_ms=ms(day(14)),
            interval=Interval.HOUR,
            group_by=tuple(Dimension),
            as_of_ms=ms(day(3)),
        )
    ).rows


class TestLiveEqualsBatch:
    """For any event history, the projection fed live — in random batches, with batches
    redelivered, events republished at later positions, and the consumer restarted mid-stream
    — holds exactly what one pass over the whole history computes, and its totals match a
    naive count straight from the events."""

    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.data())
    def test_live_projection_equals_batch_recomputation(self, data: st.DataObject) -> None:
        history = History()
        for _ in range(data.draw(st.integers(10, 120), label="steps")):
            history.step(data)
        events = history.events

        batch = MetricsProjection(SqliteReadModelStore(":memory:"))
        batch.apply(list(enumerate(events, 1)))

        live_store = SqliteReadModelStore(":memory:")
        live = MetricsProjection(live_store)
        # The bus: every event once, plus some republished (by a relay past JetStream's
        # de-duplication window) at a later position.
        bus: list[DomainEvent] = []
        for event in events:
            bus.append(event)
            if data.draw(st.integers(0, 9), label="republish") == 0:
                bus.append(data.draw(st.sampled_from(bus), label="republished"))
        delivered = list(enumerate(bus, 1))
        index = 0
        # Sometimes pipelined (as a rebuild is): batches commit in a writer thread.
        writer = contextlib.ExitStack()
        if data.draw(st.booleans(), label="pipelined"):
            writer.enter_context(live.pipelined())
        while index < len(delivered):
            size = data.draw(st.integers(1, 25), label="batch")
            chunk = delivered[index : index + size]
            if index and data.draw(st.integers(0, 4), label="redeliver") == 0:
                back = data.draw(st.integers(1, index), label="back")
                chunk = delivered[index - back : index] + chunk
            live.apply(chunk)
            index += size
            if data.draw(st.integers(0, 5), label="restart") == 0:
                writer.close()
                live = MetricsProjection(live_store)
                writer = contextlib.ExitStack()
                if data.draw(st.booleans(), label="pipelined"):
                    writer.enter_context(live.pipelined())
        writer.close()

        assert dump(live) == dump(batch)
        assert everything(live) == everything(batch)
        self.matches_a_naive_count(events, batch)
        batch.store.close_store()
        live_store.close_store()

    @staticmethod
    def fed(events: list[DomainEvent], *, batches: int | None) -> MetricsProjection:
        """A projection fed `events` in one batch (None) or in batches of `batches` events,
        restarted after each one (its caches gone: what it knows comes from the store)."""
        store = SqliteReadModelStore(":memory:")
        items = list(enumerate(events, 1))
        size = batches or len(items)
        for start in range(0, len(items), size):
            MetricsProjection(store).apply(items[start : start + size])
        return MetricsProjection(store)

    @staticmethod
    def chat_with_a_met_next_response(
        history: History | None = None,
    ) -> tuple[History, Interaction]:
        """A chat in no case, 09:00: routing priority 0, answered, the agent replies, the
        customer writes at 09:01, the agent's reply at 09:02 meets next response #1 (added
        to `history`, or to a new one)."""
        history = history or History()
        agent = history.agents[UUID(int=1)]
        chat_id = history.new_id()
        history._record(Interaction.open(interaction_id=chat_id, channel="chat", at=history.now))
        chat = history.interactions[chat_id]
        history._record(chat.enqueue(queue="billing", at=history.now))
        chat = history.interactions[chat.id]
        history._record(chat.offer(agent.id, at=history.now))
        chat = history.interactions[chat.id]
        history._record(chat.answer(agent.id, at=history.now))
        for author, seconds in (("agent", 30), ("customer", 60), ("agent", 120)):
            chat = history.interactions[chat.id]
            history._record(
                chat.add_message(
                    author_kind=author, author_id=agent.id, text="hello", at=at(seconds)
                )
            )
        return history, history.interactions[chat.id]

    def test_a_met_next_response_of_an_interaction_linked_to_a_case_later(self) -> None:
        """Regression (a drawn history): the met next response of a chat in no case was
        written when its batch came before the link to a case, and left out when one batch
        held both; now its row is the same however the events are batched, and counts only
        while the chat is in no case."""
        history, chat = self.chat_with_a_met_next_response()
        customer = sorted(history.customers)[0]
        history._record(
            Case.open(case_id=history.new_id(), subject="issue", customer_id=customer, at=at(180))
        )
        case = history.cases[max(history.cases)]
        history._record(
            case.link_interaction(chat.id, interaction_customer_id=None, at=at(200)),
            chat.link_to_case(case.id, at=at(200)),
        )
        link = len(history.events) - 2
        batch = self.fed(history.events, batches=None)
        live = self.fed(history.events, batches=link)  # the link in a batch of its own
        assert dump(live) == dump(batch)
        assert everything(live) == everything(batch)
        rows = batch.store.query(
            "SELECT outcome, decided_ms FROM metrics_sla WHERE subject_id = ?", (str(chat.id),)
        )
        assert rows == [("met", ms(at(120)))]
        unlinked = self.fed(history.events[:link], batches=None)
        report = KpiQuery(start_ms=ms(MONDAY), end_ms=ms(day(1)))
        assert unlinked.kpis(report).rows[0].values.sla_next_response.met == 1
        assert batch.kpis(report).rows[0].values.sla_next_response.met == 0

    @staticmethod
    def at_risk_late(history: History, chat: UUID, metric: SlaMetric) -> None:
        """The SLA scheduler's at-risk event of the chat's `metric` #1 at 09:02:10, without a
        channel and urgent (not what the chat is)."""
        history._record(
            mark(
                history.sla_records.get(interaction_sla_record_id(chat)),
                interaction_id=chat,
                kind=SlaEventKind.AT_RISK,
                metric=metric,
                cycle=1,
                policy="standard",
                target=timedelta(minutes=5),
                started_at=at(60),
                due_at=at(360),
                channel=None,
                priority=CasePriority.URGENT,
                at=at(130),
            )
        )

    def test_an_interactions_clock_keeps_its_interactions_channel_and_priority(self) -> None:
        """Regression: a met next response's row took the channel and priority of whatever
        wrote it first: the interaction's, or, when one batch held both, those of a later SLA
        event of the same clock (here without a channel, and urgent); now they are the
        interaction's in any batching."""
        history, chat = self.chat_with_a_met_next_response()
        self.at_risk_late(history, chat.id, SlaMetric.NEXT_RESPONSE)
        expected = [("met", ms(at(120)), 1, "chat", interaction_priority(0).value)]
        for batches in (None, 1, 2, 3):
            projection = self.fed(history.events, batches=batches)
            rows = projection.store.query(
                "SELECT outcome, decided_ms, at_risk, channel, priority FROM metrics_sla "
                "WHERE subject_id = ?",
                (str(chat.id),),
            )
            assert rows == expected, batches

    def test_a_transfer_at_another_priority_moves_the_clocks_to_its_policy(self) -> None:
        """A chat queued at routing priority 0, answered, and transferred at 9 before the first
        agent reply (a chat's first response): its clocks count under the policy of priority
        9 (the urgent one), as the SLA scheduler times them after the transfer."""
        history = History()
        agent = history.agents[UUID(int=1)]
        chat_id = history.new_id()
        history._record(Interaction.open(interaction_id=chat_id, channel="chat", at=history.now))
        history._record(history.interactions[chat_id].enqueue(queue="billing", at=history.now))
        history._record(history.interactions[chat_id].offer(agent.id, at=at(5)))
        history._record(history.interactions[chat_id].answer(agent.id, at=at(5)))
        history._record(
            history.interactions[chat_id].transfer(
                reason="needs a specialist",
                to_queue="escalations",
                requirements=RoutingRequirements(priority=9),
                at=at(10),
            )
        )
        history._record(history.interactions[chat_id].offer(agent.id, at=at(20)))
        history._record(history.interactions[chat_id].answer(agent.id, at=at(20)))
        history._record(
            history.interactions[chat_id].add_message(
                author_kind="agent", author_id=agent.id, text="hello", at=at(30)
            )
        )
        for batches in (None, 1):
            projection = self.fed(history.events, batches=batches)
            priorities = projection.store.query(
                "SELECT routing_priority FROM metrics_interactions WHERE id = ?", (str(chat_id),)
            )
            assert priorities == [(9,)], batches  # the urgent policy's, as the scheduler's

    def test_an_sla_event_ahead_of_the_cases_own_clock_is_one_clock(self) -> None:
        """Regression: a case's next-response breach (cycle 1) delivered before the customer
        message that starts that wait became a clock of its own, and the wait a second clock
        of the same cycle whose row overwrote the breach; now it is one clock, and the breach
        counts once."""
        history = History()
        agent = history.agents[UUID(int=1)]
        customer = sorted(history.customers)[0]
        history._record(
            Case.open(case_id=history.new_id(), subject="issue", customer_id=customer, at=at(0))
        )
        case = history.cases[max(history.cases)]
        history._record(
            Interaction.open(
                interaction_id=history.new_id(), channel="chat", customer_id=customer, at=at(0)
            )
        )
        chat = history.interactions[max(history.interactions)]
        history._record(
            case.link_interaction(chat.id, interaction_customer_id=customer, at=at(1)),
            chat.link_to_case(case.id, at=at(1)),
        )
        history._record(
            mark(
                None,
                case_id=case.id,
                kind=SlaEventKind.BREACHED,
                metric=SlaMetric.NEXT_RESPONSE,
                cycle=1,
                policy="standard",
                target=timedelta(hours=1),
                started_at=at(10),
                due_at=at(20),
                customer_id=customer,
                at=at(30),
            )
        )
        case = history.cases[case.id]
        history._record(
            case.record_first_response(agent_id=agent.id, interaction_id=chat.id, at=at(40))
        )
        chat = history.interactions[chat.id]
        history._record(chat.enqueue(queue="billing", at=at(40)))
        chat = history.interactions[chat.id]
        history._record(chat.offer(agent.id, at=at(40)))
        chat = history.interactions[chat.id]
        history._record(chat.answer(agent.id, at=at(40)))
        for author, seconds in (("agent", 50), ("customer", 60)):
            chat = history.interactions[chat.id]
            history._record(
                chat.add_message(author_kind=author, author_id=agent.id, text="hi", at=at(seconds))
            )
        for batches in (None, 1):
            projection = self.fed(history.events, batches=batches)
            rows = projection.store.query(
                "SELECT cycle, outcome FROM metrics_sla WHERE subject_id = ? AND metric = ?",
                (str(case.id), SlaMetric.NEXT_RESPONSE.value),
            )
            assert rows == [(1, "breached")], batches
            report = projection.kpis(KpiQuery(start_ms=ms(MONDAY), end_ms=ms(day(1))))
            assert report.rows[0].values.sla_next_response.breached == 1

    @staticmethod
    def matches_a_naive_count(events: list[DomainEvent], projection: MetricsProjection) -> None:
        opened = sum(isinstance(e, InteractionOpened) for e in events)
        queued = {e.originator_id for e in events if isinstance(e, Queued | HandedOffToHuman)}
        answered = {e.originator_id for e in events if isinstance(e, Answered) and e.first_answer}
        abandoned = {e.originator_id for e in events if isinstance(e, Abandoned)} - answered
        handled = sum(isinstance(e, Transferred | Resolved) for e in events)
        waits = sorted(
            round((e.timestamp - e.queued_at).total_seconds())
            for e in events
            if isinstance(e, Answered) and e.first_answer
        )
        csat = [e.score for e in events if isinstance(e, SurveyAnswered) and e.kind == "csat"]
        report = projection.kpis(KpiQuery(start_ms=ms(MONDAY), end_ms=ms(day(14))))
        totals = report.rows[0].values
        assert totals.created == opened
        assert totals.offered == len(queued)
        assert totals.answered == len(answered)
        assert totals.abandoned == len(abandoned)
        assert totals.handled == handled
        assert totals.asa.mean_s == (pytest.approx(sum(waits) / len(waits)) if waits else None)
        if waits:
            # exact to the millisecond up to 10 minutes, within one log-spaced bin beyond
            exact = kpis.exact_percentile(waits, 0.5)
            assert exact is not None
            assert totals.asa.median_s == pytest.approx(
                exact, abs=max(1e-3, exact * (kpis.LOG_BIN_RATIO - 1))
            )
        assert totals.csat.denominator == len(csat)
        assert totals.csat.numerator == sum(score >= 4 for score in csat)


class TestSlaRowsOnEveryEngine:
    def test_case_and_interaction_clocks_written_in_one_batch(
        self, persistence: PersistenceSettings
    ) -> None:
        """A case's clocks, a clock of a chat only an SLA event spoke of and its met next
        response go to one table by three upserts in one transaction (on PostgreSQL each
        through its own staging table: a shared one would merge the rows of one again by the
        rule of the next): every engine holds what one in-memory pass holds, however fed."""
        history, chat = TestLiveEqualsBatch.chat_with_a_met_next_response()
        first_chat = len(history.events)
        TestLiveEqualsBatch.at_risk_late(history, chat.id, SlaMetric.NEXT_RESPONSE)
        TestLiveEqualsBatch.at_risk_late(history, chat.id, SlaMetric.FIRST_RESPONSE)
        _, other = TestLiveEqualsBatch.chat_with_a_met_next_response(history)
        history._record(
            Case.open(case_id=history.new_id(), subject="issue", reason="billing", at=at(140))
        )
        events = list(enumerate(history.events, 1))
        reference = TestLiveEqualsBatch.fed(history.events, batches=None)
        expected = sorted(reference.store.query("SELECT * FROM metrics_sla"), key=repr)
        assert {(row[0], row[4]) for row in expected} >= {
            (str(chat.id), "met"),
            (str(chat.id), "at_risk"),
            (str(other.id), "met"),
            (str(max(history.cases)), "running"),
        }
        projection = open_metrics(persistence)
        # one batch; the first chat, then the rest (its SLA events with the other chat's met
        # clock and the case's); one event at a time
        for cuts in ([], [first_chat], list(range(1, len(events)))):
            projection.reset()
            for start, end in zip([0, *cuts], [*cuts, len(events)], strict=True):
                projection.apply(events[start:end])
            rows = projection.store.query("SELECT * FROM metrics_sla")
            assert sorted((tuple(row) for row in rows), key=repr) == expected, cuts
        projection.close_store()
        reference.store.close_store()


class TestPrometheusAndSettings:
    def test_the_exposition_names_queues_presence_and_policies(self, centre: Centre) -> None:
        centre.agent("Ann", "chat", chat=3)
        centre.call(queued=0, queue='say "hi"')
        centre.catch_up()
        now = ms(at(30))
        report = centre.metrics.kpis(KpiQuery(start_ms=ms(MONDAY), end_ms=ms(day(1)), as_of_ms=now))
        text = prometheus_text(
            centre.metrics, centre.metrics.live(now), report.rows[0].values, now_ms=now
        )
        assert "# TYPE crm_kpi_contacts_waiting gauge" in text
        assert 'crm_kpi_contacts_waiting{queue="say \\"hi\\""} 1' in text
        assert 'crm_kpi_oldest_wait_seconds{queue="say \\"hi\\""} 30' in text
        assert 'crm_kpi_agents{presence="offline"} 1' in text
        assert "crm_metrics_consumer_lag_events 0" in text
        assert text.endswith("\n")

    def test_the_default_policy_comes_from_the_environment(self) -> None:
        settings = settings_from_env(
            {
                "CRM_METRICS_SL_THRESHOLD_S": "30",
                "CRM_METRICS_SL_ABANDONS": "excluded_within_threshold",
                "CRM_METRICS_SHORT_ABANDON_S": "5",
                "CRM_METRICS_FCR_WINDOW_DAYS": "14",
                "CRM_METRICS_TIME_ZONE": "Asia/Tokyo",
                "CRM_METRICS_PROMETHEUS_ADDRESS": "off",
            }
        )
        policy = settings.policy().checked()
        assert policy.service_level == ServiceLevelPolicy(
            threshold_s=30,
            abandons=AbandonTreatment.EXCLUDED_WITHIN_THRESHOLD,
            short_abandon_s=5,
        )
        assert policy.fcr_window_days == 14
        assert settings.metrics.time_zone == "Asia/Tokyo"
        assert settings.metrics.prometheus_address is None
        assert settings.service.address == "127.0.0.1:50054"

    def test_an_unknown_abandon_treatment_is_a_configuration_error(self) -> None:
        with pytest.raises(ConfigurationError, match="CRM_METRICS_SL_ABANDONS"):
            metrics_from_env({"CRM_METRICS_SL_ABANDONS": "sometimes"})
