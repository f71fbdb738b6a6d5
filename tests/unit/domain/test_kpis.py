"""KPI maths: histograms, service-level policies, FCR and containment windows, Erlang C."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crmcore.domain import kpis
from crmcore.domain.errors import InvalidValue
from crmcore.domain.kpis import (
    AbandonTreatment,
    Calendar,
    ContainmentStatus,
    FcrStatus,
    Histogram,
    Interval,
    IssueFacts,
    NamedPeriod,
    ServiceLevelPolicy,
    Tally,
)

S = 1000  # ms
DAY = 86_400_000


def tally_of(answered_waits_s: list[float], abandoned_waits_s: list[float]) -> Tally:
    tally = Tally()
    for wait in answered_waits_s:
        tally.counts["offered"] += 1
        tally.counts["answered"] += 1
        tally.counts["answer_wait_ms"] += round(wait * S)
        tally.histograms["answer_wait"].add(round(wait * S))
    for wait in abandoned_waits_s:
        tally.counts["offered"] += 1
        tally.counts["abandoned"] += 1
        tally.counts["abandon_wait_ms"] += round(wait * S)
        tally.histograms["abandon_wait"].add(round(wait * S))
    return tally


class TestHistogram:
    def test_whole_seconds_are_exact(self) -> None:
        histogram = Histogram()
        for seconds in (10, 20, 30):
            histogram.add(seconds * S)
        # nearest rank: median = 2nd of 3, p90 = 3rd of 3
        assert histogram.percentile(0.5) == 20 * S
        assert histogram.percentile(0.9) == 30 * S
        assert histogram.count_at_most(20 * S) == 2
        assert histogram.count_below(20 * S) == 1

    def test_merging_is_adding_counts(self) -> None:
        monday, tuesday = Histogram(), Histogram()
        monday.add(5 * S)
        tuesday.add(5 * S)
        tuesday.add(700 * S)
        week = Histogram().merge(monday).merge(tuesday)
        assert week.total == 3
        assert week.counts[kpis.bin_of(5 * S)] == 2

    def test_taking_back_a_value_empties_its_bin(self) -> None:
        histogram = Histogram()
        histogram.add(42 * S)
        histogram.add(42 * S, -1)
        assert histogram == Histogram()
        assert histogram.percentile(0.5) is None

    def test_a_threshold_must_be_a_bin_boundary(self) -> None:
        with pytest.raises(ValueError, match="not a histogram bin boundary"):
            Histogram().count_below(20 * S + 500)

    @given(st.lists(st.integers(min_value=0, max_value=30 * DAY), min_size=1, max_size=60))
    def test_percentiles_fall_in_the_bin_of_the_exact_nearest_rank(self, values: list[int]) -> None:
        histogram = Histogram()
        for value in values:
            histogram.add(value)
        for fraction in (0.5, 0.9):
            exact = kpis.exact_percentile(values, fraction)
            estimate = histogram.percentile(fraction)
            assert exact is not None
            assert estimate is not None
            assert kpis.bin_of(round(estimate)) == kpis.bin_of(round(exact)) or (
                abs(estimate - exact) <= max(1.0, exact * (kpis.LOG_BIN_RATIO - 1))
            )

    @given(
        st.lists(st.integers(min_value=0, max_value=2 * DAY), max_size=40),
        st.sampled_from(kpis.THRESHOLDS_S),
    )
    def test_within_a_supported_threshold_is_exact(self, values: list[int], seconds: int) -> None:
        histogram = Histogram()
        for value in values:
            histogram.add(value)
        assert histogram.count_at_most(seconds * S) == sum(v <= seconds * S for v in values)
        assert histogram.count_below(seconds * S) == sum(v < seconds * S for v in values)


class TestServiceLevelPolicies:
    # Six contacts queued for "billing", T = 20 s:
    #   answered after 10 s, 30 s and exactly 20 s  → A = 3, answered within T = 2 (10, 20)
    #   abandoned after 3 s, 15 s and 45 s          → Ab = 3, abandoned within T = 2 (3, 15)
    TALLY = tally_of([10, 30, 20], [3, 15, 45])

    @pytest.mark.parametrize(
        ("abandons", "short_s", "expected"),
        [
            (AbandonTreatment.MISSED, 0, 2 / 6),  # 2 / (3 + 3)
            (AbandonTreatment.EXCLUDED, 0, 2 / 3),  # 2 / 3
            (AbandonTreatment.MET_WITHIN_THRESHOLD, 0, 4 / 6),  # (2 + 2) / (3 + 3)
            (AbandonTreatment.EXCLUDED_WITHIN_THRESHOLD, 0, 2 / 4),  # 2 / (6 − 2)
            # τ = 5 s drops the 3-second abandon: Ab = 2 (15, 45), abandoned within T = 1
            (AbandonTreatment.MISSED, 5, 2 / 5),  # 2 / (3 + 2)
            (AbandonTreatment.EXCLUDED, 5, 2 / 3),
            (AbandonTreatment.MET_WITHIN_THRESHOLD, 5, 3 / 5),  # (2 + 1) / 5
            (AbandonTreatment.EXCLUDED_WITHIN_THRESHOLD, 5, 2 / 4),  # 2 / (5 − 1)
        ],
    )
    def test_each_policy_counts_abandons_its_way(
        self, abandons: AbandonTreatment, short_s: int, expected: float
    ) -> None:
        policy = ServiceLevelPolicy(threshold_s=20, abandons=abandons, short_abandon_s=short_s)
        level = kpis.service_level(kpis.queue_outcomes(self.TALLY, policy), policy)
        assert level.value == pytest.approx(expected)
        assert "20 s" in level.policy

    def test_short_abandons_leave_answer_and_abandonment_rates_too(self) -> None:
        policy = ServiceLevelPolicy(threshold_s=20, short_abandon_s=5)
        outcomes = kpis.queue_outcomes(self.TALLY, policy)
        assert outcomes.offered == 5
        assert outcomes.short_abandons == 1
        assert kpis.answer_rate(outcomes, policy).value == pytest.approx(3 / 5)
        assert kpis.abandonment_rate(outcomes, policy).value == pytest.approx(2 / 5)
        assert "under 5 s dropped" in kpis.abandonment_rate(outcomes, policy).policy

    def test_a_contact_answered_exactly_at_the_threshold_is_within_it(self) -> None:
        policy = ServiceLevelPolicy(threshold_s=20, abandons=AbandonTreatment.EXCLUDED)
        tally = tally_of([20], [])
        assert kpis.service_level(kpis.queue_outcomes(tally, policy), policy).value == 1.0

    def test_nothing_to_measure_is_no_value_not_zero(self) -> None:
        policy = ServiceLevelPolicy()
        level = kpis.service_level(kpis.queue_outcomes(Tally(), policy), policy)
        assert level.value is None
        assert level.denominator == 0

    def test_an_unsupported_threshold_is_refused_naming_the_field(self) -> None:
        with pytest.raises(InvalidValue) as refused:
            ServiceLevelPolicy(threshold_s=601).checked()
        assert refused.value.field == "service_level_policy.threshold_seconds"


class TestSurveysAndOccupancy:
    def test_csat_nps_ces(self) -> None:
        tally = Tally()
        # CSAT 5, 4, 3, 1 → 2 satisfied of 4; NPS 10, 9, 8, 6, 0 → 2 promoters − 2 detractors;
        # CES 2, 3, 7 → mean 4
        tally.counts.update(
            csat_responses=4,
            csat_satisfied=2,
            nps_responses=5,
            nps_promoters=2,
            nps_detractors=2,
            ces_responses=3,
            ces_total=12,
        )
        assert kpis.csat(tally).value == 0.5
        assert kpis.nps(tally).value == 0.0
        assert kpis.ces(tally).value == 4.0

    def test_load_of_concurrent_chats_is_items_over_capacity(self) -> None:
        assert kpis.agent_load({"chat": 3}, {"chat": 2}, exclusive=False) == pytest.approx(2 / 3)
        assert kpis.agent_load({"chat": 3, "email": 5}, {"chat": 3}, exclusive=False) == 0.5
        assert kpis.agent_load({"phone": 1, "chat": 3}, {"phone": 1}, exclusive=True) == 1.0


def issue(**changes: object) -> IssueFacts:
    base: dict[str, object] = {
        "created_ms": 0,
        "first_resolved_ms": 10 * S,
        "resolved_ms": 10 * S,
        "agent_contacts": 1,
        "agents": 1,
        "reopened_ms": None,
        "repeat_at_ms": None,
    }
    base.update(changes)
    return IssueFacts(**base)  # type: ignore[arg-type]


class TestFirstContactResolution:
    WINDOW = 7 * DAY

    def test_provisional_until_the_window_closes_then_achieved(self) -> None:
        assert kpis.fcr_status(issue(), as_of_ms=3 * DAY, window_ms=self.WINDOW) is (
            FcrStatus.PROVISIONAL
        )
        assert kpis.fcr_status(issue(), as_of_ms=8 * DAY, window_ms=self.WINDOW) is (
            FcrStatus.ACHIEVED
        )

    @pytest.mark.parametrize(
        "failure",
        [
            {"agent_contacts": 2},
            {"agent_contacts": 0},
            {"agents": 2},
            {"reopened_ms": 2 * DAY},
            {"repeat_at_ms": 3 * DAY},
        ],
    )
    def test_fails_on_a_second_contact_a_reopen_or_a_repeat_inside_the_window(
        self, failure: dict[str, int]
    ) -> None:
        assert kpis.fcr_status(issue(**failure), as_of_ms=DAY, window_ms=self.WINDOW) is (
            FcrStatus.FAILED
        )

    def test_what_happens_after_the_window_leaves_a_final_fcr_alone(self) -> None:
        late = issue(reopened_ms=9 * DAY, repeat_at_ms=10 * DAY)
        assert kpis.fcr_status(late, as_of_ms=11 * DAY, window_ms=self.WINDOW) is (
            FcrStatus.ACHIEVED
        )

    def test_final_rate_counts_only_closed_windows(self) -> None:
        counts = kpis.FcrCounts(resolved=4, achieved=1, provisional=2, failed=1, failed_final=1)
        final, provisional = kpis.fcr_rates(counts, 7)
        assert final.value == 0.5  # 1 achieved / (1 achieved + 1 failed, both windows closed)
        assert provisional.value == 0.75  # (1 + 2) / 4
        assert "7 days" in final.policy


class TestBotContainment:
    WINDOW = 24 * 3_600_000

    def test_contained_once_the_repeat_window_closes_without_another_contact(self) -> None:
        def status(repeat: int | None, as_of: int, handed_off: bool = False) -> ContainmentStatus:
            return kpis.containment_status(
                contained_ms=0,
                handed_off=handed_off,
                repeat_at_ms=repeat,
                as_of_ms=as_of,
                window_ms=self.WINDOW,
            )

        assert status(None, 2 * 3_600_000) is ContainmentStatus.PROVISIONAL
        assert status(None, self.WINDOW) is ContainmentStatus.CONTAINED
        assert status(5 * 3_600_000, self.WINDOW) is ContainmentStatus.NOT_CONTAINED
        assert status(30 * 3_600_000, 2 * self.WINDOW) is ContainmentStatus.CONTAINED
        assert status(None, self.WINDOW, handed_off=True) is ContainmentStatus.NOT_CONTAINED


class TestErlangC:
    def test_first_reference_100_contacts_per_half_hour(self) -> None:
        # DOMAIN.md: 100 contacts / 30 min, AHT 180 s, 80 % in 20 s ⇒ 14 agents, SL 88.8 %,
        # P(wait) 17.4 %
        plan = kpis.staffing(
            contacts=100, interval_s=1800, handle_s=180, target_fraction=0.8, threshold_s=20
        )
        assert plan.traffic_erlangs == 10.0
        assert plan.agents == 14
        assert round(plan.service_level * 100, 1) == 88.8
        assert round(plan.probability_wait * 100, 1) == 17.4

    def test_second_reference_360_contacts_per_half_hour(self) -> None:
        # DOMAIN.md: 360 / 30 min, AHT 240 s, 55 agents, T = 15 s ⇒ P(wait) 23.9 %, ASA 8.2 s
        traffic = 360 / 1800 * 240
        assert traffic == 48.0
        assert round(kpis.erlang_c(55, traffic) * 100, 1) == 23.9
        assert round(kpis.erlang_asa(55, traffic, 240), 1) == 8.2

    def test_shrinkage_schedules_more_people(self) -> None:
        plan = kpis.staffing(
            contacts=100,
            interval_s=1800,
            handle_s=180,
            target_fraction=0.8,
            threshold_s=20,
            shrinkage=0.3,
        )
        assert plan.scheduled == math.ceil(14 / 0.7) == 20

    def test_max_occupancy_can_ask_for_more_agents(self) -> None:
        plan = kpis.staffing(
            contacts=100,
            interval_s=1800,
            handle_s=180,
            target_fraction=0.8,
            threshold_s=20,
            max_occupancy=0.6,
        )
        assert plan.agents == 17  # 10 Erlangs / 17 ≤ 0.6
        assert plan.occupancy <= 0.6

    def test_no_contacts_need_no_agents(self) -> None:
        plan = kpis.staffing(
            contacts=0, interval_s=1800, handle_s=180, target_fraction=0.8, threshold_s=20
        )
        assert plan.agents == 0
        assert plan.scheduled == 0

    def test_too_few_agents_never_reach_any_level(self) -> None:
        assert kpis.erlang_c(10, 10.0) == 1.0
        assert kpis.erlang_service_level(9, 10.0, 180, 20) == 0.0
        assert kpis.erlang_asa(10, 10.0, 180) == math.inf

    @given(
        st.floats(min_value=0.5, max_value=200),
        st.floats(min_value=30, max_value=900),
        st.floats(min_value=0.5, max_value=0.99),
    )
    def test_the_plan_meets_the_target_and_one_agent_less_does_not(
        self, traffic: float, handle_s: float, fraction: float
    ) -> None:
        plan = kpis.staffing(
            contacts=traffic / handle_s * 1800,
            interval_s=1800,
            handle_s=handle_s,
            target_fraction=fraction,
            threshold_s=20,
        )
        assert plan.service_level >= fraction
        assert plan.agents > plan.traffic_erlangs
        fewer = plan.agents - 1
        assert fewer <= plan.traffic_erlangs or (
            kpis.erlang_service_level(fewer, plan.traffic_erlangs, handle_s, 20) < fraction
        )

    @given(
        st.floats(min_value=0.0, max_value=300),
        st.floats(min_value=30, max_value=900),
        st.floats(min_value=0.5, max_value=0.99),
        st.floats(min_value=0.3, max_value=1.0),
    )
    def test_the_search_finds_what_trying_every_agent_count_finds(
        self, traffic: float, handle_s: float, fraction: float, occupancy: float
    ) -> None:
        plan = kpis.staffing(
            contacts=traffic / handle_s * 1800,
            interval_s=1800,
            handle_s=handle_s,
            target_fraction=fraction,
            threshold_s=20,
            max_occupancy=occupancy,
        )
        agents = 0 if plan.traffic_erlangs <= 0 else 1
        while plan.traffic_erlangs > 0 and not (
            kpis.erlang_service_level(agents, plan.traffic_erlangs, handle_s, 20) >= fraction
            and plan.traffic_erlangs / agents <= occupancy
        ):
            agents += 1
        assert plan.agents == agents
        assert plan.service_level == pytest.approx(
            kpis.erlang_service_level(agents, plan.traffic_erlangs, handle_s, 20)
        )

    def test_a_forecast_near_the_limit_is_planned(self) -> None:
        # 90,000 Erlangs: the search carries B(N, A) from one N to the next, so this takes
        # one pass over N rather than one per candidate (a quadratic search took seconds).
        plan = kpis.staffing(
            contacts=900_000, interval_s=1800, handle_s=180, target_fraction=0.8, threshold_s=20
        )
        assert plan.traffic_erlangs == 90_000.0
        assert plan.service_level >= 0.8
        assert kpis.erlang_service_level(plan.agents - 1, 90_000.0, 180, 20) < 0.8

    def test_an_occupancy_cap_needing_too_many_agents_is_refused_before_searching(self) -> None:
        with pytest.raises(InvalidValue) as refused:
            kpis.staffing(
                contacts=100,
                interval_s=1800,
                handle_s=180,
                target_fraction=0.8,
                threshold_s=20,
                max_occupancy=1e-9,
            )
        assert refused.value.field == "contacts"

    def test_the_note_says_abandonment_is_ignored(self) -> None:
        assert "ignores abandonment" in kpis.ERLANG_C_NOTE


class TestCalendar:
    def test_days_weeks_and_months_are_local(self) -> None:
        tokyo = Calendar("Asia/Tokyo")
        # 2025-03-05 16:00 UTC is Thursday 2025-03-06 01:00 in Tokyo
        moment = kpis.to_ms(datetime(2025, 3, 5, 16, 0, tzinfo=UTC))
        assert tokyo.local(tokyo.interval_start(moment, Interval.DAY)).date() == date(2025, 3, 6)
        assert tokyo.local(tokyo.interval_start(moment, Interval.WEEK)).date() == date(2025, 3, 3)
        assert tokyo.local(tokyo.interval_start(moment, Interval.MONTH)).date() == date(2025, 3, 1)
        assert tokyo.interval_start(moment, Interval.HOUR) == moment

    def test_named_periods(self) -> None:
        utc = Calendar("UTC")
        now = kpis.to_ms(datetime(2025, 3, 5, 10, 30, tzinfo=UTC))
        start, end = kpis.named_period(NamedPeriod.LAST_MONTH, now, utc)
        assert kpis.from_ms(start) == datetime(2025, 2, 1, tzinfo=UTC)
        assert kpis.from_ms(end) == datetime(2025, 3, 1, tzinfo=UTC)
        start, end = kpis.named_period(NamedPeriod.TODAY, now, utc)
        assert end - start == DAY

    def test_an_unknown_time_zone_is_refused(self) -> None:
        with pytest.raises(InvalidValue):
            Calendar("Mars/Olympus_Mons")


class TestTargets:
    def test_fcr_from_75_to_85_percent_halfway_through(self) -> None:
        # Baseline 75 % on day 0, 85 % due on day 100; on day 50 the line says 80 %.
        progress = kpis.target_progress(
            baseline=0.75,
            target=0.85,
            start_ms=0,
            deadline_ms=100 * DAY,
            now_ms=50 * DAY,
            current=0.81,
        )
        assert progress.expected == pytest.approx(0.80)
        assert progress.progress == pytest.approx(0.6)
        assert progress.on_track
        assert not progress.achieved

    def test_a_lower_is_better_target_is_on_track_below_the_line(self) -> None:
        # ASA from 40 s to 20 s: on day 50 of 100 the line says 30 s; 35 s is behind.
        progress = kpis.target_progress(
            baseline=40,
            target=20,
            start_ms=0,
            deadline_ms=100 * DAY,
            now_ms=50 * DAY,
            current=35,
        )
        assert progress.expected == pytest.approx(30)
        assert not progress.on_track
        assert progress.progress == pytest.approx(0.25)
