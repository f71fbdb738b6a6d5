"""SLA clock maths against hand-worked examples: weekends, holidays, time zones, daylight
saving, pauses; policies; clocks; the once-only SLA record."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from uuid import UUID
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crmcore.domain.case import CasePriority
from crmcore.domain.errors import InvalidValue, RuleViolation
from crmcore.domain.sla import (
    DEFAULT_POLICIES,
    BusinessCalendar,
    ClockState,
    Pause,
    SlaBreached,
    SlaClock,
    SlaEvent,
    SlaEventKind,
    SlaMetric,
    SlaPolicies,
    SlaRecord,
    SlaSubject,
    business_calendar,
    duration,
    interaction_priority,
    interaction_sla_record_id,
    mark,
    policies_from_json,
    sla_policy,
    sla_record_id,
    weekly_hours,
)
from crmcore.domain.values import Channel

TOKYO = ZoneInfo("Asia/Tokyo")
NEW_YORK = ZoneInfo("America/New_York")
CASE = UUID("00000000-0000-4000-8000-00000000ca5e")

#: A Tokyo office: Monday to Friday, 09:00–18:00, closed over the New Year (1–3 January 2025).
TOKYO_OFFICE = business_calendar(
    time_zone="Asia/Tokyo",
    hours="mon-fri 09:00-18:00",
    holidays=["2025-01-01", "2025-01-02", "2025-01-03"],
)
#: A New York office: Monday to Friday, 09:00–17:00.
NEW_YORK_OFFICE = business_calendar(time_zone="America/New_York", hours="mon-fri 09:00-17:00")
ALWAYS_NEW_YORK = business_calendar(time_zone="America/New_York", hours="always")


def tokyo(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=TOKYO)


def new_york(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=NEW_YORK)


def hours(value: float) -> timedelta:
    return timedelta(hours=value)


class TestBusinessHoursInTokyo:
    def test_time_left_on_friday_evening_runs_on_monday_morning(self) -> None:
        # Friday 7 March 17:00: one hour left that day, the second hour Monday 09:00–10:00.
        assert TOKYO_OFFICE.add(tokyo(2025, 3, 7, 17), hours(2)) == tokyo(2025, 3, 10, 10)

    def test_a_deadline_at_closing_time_stays_on_that_day(self) -> None:
        assert TOKYO_OFFICE.add(tokyo(2025, 3, 3, 16), hours(2)) == tokyo(2025, 3, 3, 18)

    def test_work_arriving_at_the_weekend_starts_on_monday_at_nine(self) -> None:
        assert TOKYO_OFFICE.add(tokyo(2025, 3, 8, 12), hours(1)) == tokyo(2025, 3, 10, 10)

    def test_work_arriving_before_opening_counts_from_opening(self) -> None:
        assert TOKYO_OFFICE.add(tokyo(2025, 3, 3, 7), timedelta(minutes=30)) == tokyo(
            2025, 3, 3, 9, 30
        )

    def test_twenty_business_hours_take_two_days_and_two_hours(self) -> None:
        # Monday 9 h, Tuesday 9 h, Wednesday 2 h.
        assert TOKYO_OFFICE.add(tokyo(2025, 3, 3, 9), hours(20)) == tokyo(2025, 3, 5, 11)

    def test_the_new_year_holidays_are_skipped(self) -> None:
        # Tuesday 31 December 17:00: 1 h that day; 1–3 January closed; 4–5 is a weekend.
        assert TOKYO_OFFICE.add(tokyo(2024, 12, 31, 17), hours(2)) == tokyo(2025, 1, 6, 10)

    def test_elapsed_business_time_ignores_nights_and_weekends(self) -> None:
        assert TOKYO_OFFICE.elapsed(tokyo(2025, 3, 7, 17), tokyo(2025, 3, 10, 10)) == hours(2)

    def test_elapsed_over_the_holidays(self) -> None:
        assert TOKYO_OFFICE.elapsed(tokyo(2024, 12, 31, 9), tokyo(2025, 1, 6, 18)) == hours(18)

    def test_nothing_elapses_backwards(self) -> None:
        assert TOKYO_OFFICE.elapsed(tokyo(2025, 3, 4, 9), tokyo(2025, 3, 3, 9)) == timedelta(0)

    def test_business_time_is_told_apart(self) -> None:
        assert TOKYO_OFFICE.is_business_time(tokyo(2025, 3, 3, 9))
        assert not TOKYO_OFFICE.is_business_time(tokyo(2025, 3, 3, 18))
        assert not TOKYO_OFFICE.is_business_time(tokyo(2025, 1, 2, 12))


class TestTimeZones:
    def test_the_same_moment_is_monday_morning_in_tokyo_and_sunday_evening_in_new_york(
        self,
    ) -> None:
        start = datetime(2025, 3, 3, 0, 0, tzinfo=UTC)  # 09:00 JST Monday; 19:00 EST Sunday
        assert TOKYO_OFFICE.add(start, hours(1)) == datetime(2025, 3, 3, 1, 0, tzinfo=UTC)
        # New York opens Monday 09:00 EST = 14:00 UTC.
        assert NEW_YORK_OFFICE.add(start, hours(1)) == datetime(2025, 3, 3, 15, 0, tzinfo=UTC)

    def test_deadlines_are_given_in_utc_whatever_the_input_zone(self) -> None:
        deadline = TOKYO_OFFICE.add(tokyo(2025, 3, 3, 9), hours(1))
        assert deadline is not None
        assert deadline.utcoffset() == timedelta(0)

    def test_business_hours_follow_the_wall_clock_across_daylight_saving(self) -> None:
        # New York moves to daylight time on Sunday 9 March 2025: Friday 16:00 EST plus two
        # business hours is Monday 10:00 EDT (14:00 UTC, not 15:00).
        deadline = NEW_YORK_OFFICE.add(new_york(2025, 3, 7, 16), hours(2))
        assert deadline == new_york(2025, 3, 10, 10)
        assert deadline == datetime(2025, 3, 10, 14, 0, tzinfo=UTC)

    def test_the_short_night_of_spring_forward_has_an_hour_less(self) -> None:
        # Saturday noon EST to Sunday noon EDT is 23 real hours.
        elapsed = ALWAYS_NEW_YORK.elapsed(new_york(2025, 3, 8, 12), new_york(2025, 3, 9, 12))
        assert elapsed == hours(23)

    def test_the_long_night_of_fall_back_has_an_hour_more(self) -> None:
        elapsed = ALWAYS_NEW_YORK.elapsed(new_york(2025, 11, 1, 12), new_york(2025, 11, 2, 12))
        assert elapsed == hours(25)


class TestPauses:
    def test_a_pause_in_the_day_pushes_the_deadline_back(self) -> None:
        # 09:00–10:00 counts (1 h), 10:00–15:00 paused, 15:00–18:00 counts (3 h).
        pause = Pause(start=tokyo(2025, 3, 3, 10), end=tokyo(2025, 3, 3, 15))
        assert TOKYO_OFFICE.add(tokyo(2025, 3, 3, 9), hours(4), [pause]) == tokyo(2025, 3, 3, 18)

    def test_a_pause_over_the_night_only_costs_the_business_hours_it_covers(self) -> None:
        # Monday 09:00–17:00 counts (8 h); paused Monday 17:00 – Tuesday 10:00; 1 h more.
        pause = Pause(start=tokyo(2025, 3, 3, 17), end=tokyo(2025, 3, 4, 10))
        assert TOKYO_OFFICE.add(tokyo(2025, 3, 3, 9), hours(9), [pause]) == tokyo(2025, 3, 4, 11)

    def test_a_pause_that_has_not_ended_stops_the_clock(self) -> None:
        pause = Pause(start=tokyo(2025, 3, 3, 10))
        assert TOKYO_OFFICE.add(tokyo(2025, 3, 3, 9), hours(4), [pause]) is None

    def test_a_deadline_reached_before_an_open_pause_still_stands(self) -> None:
        pause = Pause(start=tokyo(2025, 3, 3, 12))
        assert TOKYO_OFFICE.add(tokyo(2025, 3, 3, 9), hours(2), [pause]) == tokyo(2025, 3, 3, 11)

    def test_pauses_are_not_counted_as_elapsed(self) -> None:
        pause = Pause(start=tokyo(2025, 3, 7, 17, 30), end=tokyo(2025, 3, 10, 9, 30))
        elapsed = TOKYO_OFFICE.elapsed(tokyo(2025, 3, 7, 17), tokyo(2025, 3, 10, 10), [pause])
        assert elapsed == hours(1)

    def test_overlapping_pauses_count_once(self) -> None:
        pauses = [
            Pause(start=tokyo(2025, 3, 3, 10), end=tokyo(2025, 3, 3, 12)),
            Pause(start=tokyo(2025, 3, 3, 11), end=tokyo(2025, 3, 3, 13)),
        ]
        assert TOKYO_OFFICE.add(tokyo(2025, 3, 3, 9), hours(2), pauses) == tokyo(2025, 3, 3, 14)


class TestProperties:
    @settings(max_examples=200, deadline=None)
    @given(
        start=st.datetimes(
            min_value=datetime(2024, 1, 1), max_value=datetime(2026, 12, 31), timezones=st.just(UTC)
        ),
        minutes=st.integers(min_value=1, max_value=60 * 24 * 10),
        calendar=st.sampled_from([TOKYO_OFFICE, NEW_YORK_OFFICE, ALWAYS_NEW_YORK]),
    )
    def test_the_time_added_is_the_time_elapsed(
        self, start: datetime, minutes: int, calendar: BusinessCalendar
    ) -> None:
        target = timedelta(minutes=minutes)
        deadline = calendar.add(start, target)
        assert deadline is not None
        assert deadline > start
        assert calendar.elapsed(start, deadline) == target

    @settings(max_examples=100, deadline=None)
    @given(
        start_minute=st.integers(min_value=0, max_value=60 * 24 * 7),
        pause_offset=st.integers(min_value=0, max_value=60 * 24 * 3),
        pause_length=st.integers(min_value=1, max_value=60 * 24 * 3),
        minutes=st.integers(min_value=1, max_value=60 * 30),
    )
    def test_a_pause_never_brings_a_deadline_forward(
        self, start_minute: int, pause_offset: int, pause_length: int, minutes: int
    ) -> None:
        start = tokyo(2025, 3, 3, 0) + timedelta(minutes=start_minute)
        pause_start = start + timedelta(minutes=pause_offset)
        pause = Pause(start=pause_start, end=pause_start + timedelta(minutes=pause_length))
        target = timedelta(minutes=minutes)
        unpaused = TOKYO_OFFICE.add(start, target)
        paused = TOKYO_OFFICE.add(start, target, [pause])
        assert unpaused is not None
        assert paused is not None
        assert paused >= unpaused
        assert TOKYO_OFFICE.elapsed(start, paused, [pause]) == target


class TestWrittenForms:
    def test_weekly_hours_with_a_lunch_break_and_a_saturday(self) -> None:
        blocks = weekly_hours("mon-fri 09:00-12:00,13:00-18:00; sat 10:00-14:00")
        assert len(blocks) == 11
        calendar = business_calendar(hours="mon-fri 09:00-12:00,13:00-18:00; sat 10:00-14:00")
        monday_11 = datetime(2025, 3, 3, 11, tzinfo=UTC)
        assert calendar.add(monday_11, hours(2)) == datetime(2025, 3, 3, 14, tzinfo=UTC)
        friday_17 = datetime(2025, 3, 7, 17, tzinfo=UTC)
        assert calendar.add(friday_17, hours(2)) == datetime(2025, 3, 8, 11, tzinfo=UTC)

    def test_midnight_at_the_end_of_the_day_is_24_00(self) -> None:
        calendar = business_calendar(hours="sat 18:00-24:00")
        saturday_23 = datetime(2025, 3, 8, 23, tzinfo=UTC)
        assert calendar.add(saturday_23, hours(2)) == datetime(2025, 3, 15, 19, tzinfo=UTC)

    @pytest.mark.parametrize(
        ("spec", "field"),
        [
            ("", "hours"),
            ("mon-fri", "hours[0]"),
            ("fri-mon 09:00-18:00", "hours[0]"),
            ("mon 18:00-09:00", "hours[0]"),
            ("mon 09:00-25:00", "hours[0]"),
            ("someday 09:00-10:00", "hours[0]"),
        ],
    )
    def test_unreadable_hours_are_refused_naming_the_part(self, spec: str, field: str) -> None:
        with pytest.raises(InvalidValue) as refused:
            weekly_hours(spec)
        assert refused.value.field == field

    def test_an_unknown_time_zone_is_refused(self) -> None:
        with pytest.raises(InvalidValue) as refused:
            business_calendar(time_zone="Mars/Olympus_Mons")
        assert refused.value.field == "calendar.time_zone"

    def test_a_holiday_must_be_a_date(self) -> None:
        with pytest.raises(InvalidValue) as refused:
            business_calendar(holidays=["2025-02-30"])
        assert refused.value.field == "calendar.holidays[0]"

    @pytest.mark.parametrize(
        ("written", "expected"),
        [
            ("1h30m", timedelta(minutes=90)),
            ("45m", timedelta(minutes=45)),
            (90, timedelta(seconds=90)),
            ("2d", timedelta(days=2)),
            ("30s", timedelta(seconds=30)),
        ],
    )
    def test_durations(self, written: str | int, expected: timedelta) -> None:
        assert duration(written, "target") == expected

    @pytest.mark.parametrize("written", ["", "0m", "soon", -5, "400d", float("nan")])
    def test_impossible_durations_are_refused(self, written: str | float) -> None:
        with pytest.raises(InvalidValue):
            duration(written, "target")


class TestPolicies:
    POLICIES = policies_from_json(
        """{"calendar": {"time_zone": "Asia/Tokyo", "hours": "mon-fri 09:00-18:00",
                         "holidays": ["2025-01-01"]},
            "policies": [
              {"name": "urgent chat", "channels": ["chat"], "priorities": ["urgent"],
               "first_response": "5m", "resolution": "4h", "calendar": {"hours": "always"}},
              {"name": "urgent", "priorities": ["urgent"], "first_response": "1h",
               "next_response": "2h", "resolution": "8h", "at_risk_fraction": 0.5},
              {"name": "everything else", "first_response": "8h", "resolution": "40h"}
            ]}"""
    )

    def test_the_first_matching_policy_applies(self) -> None:
        chosen = self.POLICIES.policy_for(Channel.CHAT, CasePriority.URGENT)
        assert chosen is not None
        assert chosen.name == "urgent chat"
        chosen = self.POLICIES.policy_for(Channel.EMAIL, CasePriority.URGENT)
        assert chosen is not None
        assert chosen.name == "urgent"
        chosen = self.POLICIES.policy_for(Channel.CHAT, CasePriority.LOW)
        assert chosen is not None
        assert chosen.name == "everything else"

    def test_a_case_without_a_channel_matches_only_policies_for_any_channel(self) -> None:
        chosen = self.POLICIES.policy_for(None, CasePriority.URGENT)
        assert chosen is not None
        assert chosen.name == "urgent"

    def test_a_policy_may_use_its_own_calendar(self) -> None:
        chat = self.POLICIES.named("urgent chat")
        urgent = self.POLICIES.named("urgent")
        assert chat is not None
        assert urgent is not None
        assert self.POLICIES.calendar_of(chat).time_zone == "UTC"
        assert self.POLICIES.calendar_of(urgent).time_zone == "Asia/Tokyo"
        assert self.POLICIES.calendar_of(urgent).holidays == (date(2025, 1, 1),)

    def test_targets_by_metric(self) -> None:
        urgent = self.POLICIES.named("urgent")
        assert urgent is not None
        assert urgent.target(SlaMetric.FIRST_RESPONSE) == hours(1)
        assert urgent.target(SlaMetric.NEXT_RESPONSE) == hours(2)
        assert urgent.target(SlaMetric.RESOLUTION) == hours(8)
        assert urgent.at_risk_fraction == 0.5
        assert self.POLICIES.policies[0].target(SlaMetric.NEXT_RESPONSE) is None

    def test_without_a_match_no_sla_applies(self) -> None:
        only_urgent = SlaPolicies(
            policies=(sla_policy(name="urgent", priorities=["urgent"], resolution="1h"),)
        )
        assert only_urgent.policy_for(Channel.PHONE, CasePriority.NORMAL) is None

    def test_the_default_policies_go_by_priority(self) -> None:
        chosen = DEFAULT_POLICIES.policy_for(Channel.EMAIL, CasePriority.HIGH)
        assert chosen is not None
        assert chosen.first_response == hours(4)

    @pytest.mark.parametrize(
        ("written", "field"),
        [
            ('{"policies": [{"name": "x", "channels": ["fax"]}]}', "policies[0].channels[0]"),
            ('{"policies": [{"name": "x", "priorities": ["asap"]}]}', "policies[0].priorities[0]"),
            ('{"policies": [{"name": "x", "resolution": "never"}]}', "policies[0].resolution"),
            (
                '{"policies": [{"name": "x", "at_risk_fraction": 1.5}]}',
                "policies[0].at_risk_fraction",
            ),
            ('{"policies": [{"name": "x"}, {"name": "x"}]}', "policies[1].name"),
            ('{"calendar": {"time_zone": "Nowhere"}}', "calendar.time_zone"),
            ('{"policies": [{"nmae": "typo"}]}', "policies"),
            ("not json", "policies"),
        ],
    )
    def test_bad_configuration_is_refused_naming_the_place(self, written: str, field: str) -> None:
        with pytest.raises(InvalidValue) as refused:
            policies_from_json(written)
        assert refused.value.field == field


class TestClocks:
    START = tokyo(2025, 3, 3, 9)

    def test_a_pending_case_stops_the_clock_and_resuming_moves_the_deadline(self) -> None:
        clock = SlaClock(metric=SlaMetric.RESOLUTION, cycle=1, started_at=self.START)
        assert clock.deadline(hours(4), TOKYO_OFFICE) == tokyo(2025, 3, 3, 13)
        paused = clock.pause(tokyo(2025, 3, 3, 10))
        assert paused.state is ClockState.PAUSED
        assert paused.deadline(hours(4), TOKYO_OFFICE) is None
        resumed = paused.resume(tokyo(2025, 3, 3, 12))
        assert resumed.deadline(hours(4), TOKYO_OFFICE) == tokyo(2025, 3, 3, 15)

    def test_a_met_clock_keeps_its_deadline_and_says_how_long_it_ran(self) -> None:
        clock = SlaClock(metric=SlaMetric.FIRST_RESPONSE, cycle=1, started_at=self.START)
        met = clock.pause(tokyo(2025, 3, 3, 10)).meet(tokyo(2025, 3, 3, 11))
        assert met.state is ClockState.MET
        assert met.pauses == (Pause(start=tokyo(2025, 3, 3, 10), end=tokyo(2025, 3, 3, 11)),)
        assert met.deadline(hours(2), TOKYO_OFFICE) == tokyo(2025, 3, 3, 12)
        assert met.used(TOKYO_OFFICE, tokyo(2025, 3, 4, 9)) == hours(1)

    def test_a_reopened_case_runs_its_resolution_clock_on_without_the_solved_time(self) -> None:
        clock = SlaClock(metric=SlaMetric.RESOLUTION, cycle=1, started_at=self.START)
        solved = clock.meet(tokyo(2025, 3, 3, 12))
        reopened = solved.restart(tokyo(2025, 3, 3, 16))
        assert reopened.state is ClockState.RUNNING
        # 3 h before solving; 2 h Monday 16:00–18:00 after reopening; the sixth hour on
        # Tuesday 09:00–10:00.
        assert reopened.deadline(hours(6), TOKYO_OFFICE) == tokyo(2025, 3, 4, 10)

    def test_ended_clocks_do_not_change_any_more(self) -> None:
        clock = SlaClock(metric=SlaMetric.FIRST_RESPONSE, cycle=1, started_at=self.START)
        stopped = clock.stop(tokyo(2025, 3, 3, 10))
        assert stopped.pause(tokyo(2025, 3, 3, 11)) == stopped
        assert stopped.meet(tokyo(2025, 3, 3, 11)) == stopped
        assert stopped.restart(tokyo(2025, 3, 3, 11)) == stopped


class TestTheSlaRecord:
    def breach(self, record: SlaRecord | None = None, cycle: int = 1) -> SlaEvent:
        return mark(
            record,
            case_id=CASE,
            kind=SlaEventKind.BREACHED,
            metric=SlaMetric.FIRST_RESPONSE,
            cycle=cycle,
            policy="urgent",
            target=hours(1),
            started_at=tokyo(2025, 3, 3, 9),
            due_at=tokyo(2025, 3, 3, 10),
            at=tokyo(2025, 3, 3, 10, 1),
        )

    def test_a_breach_is_recorded_once_per_metric_and_cycle(self) -> None:
        first = self.breach()
        assert isinstance(first, SlaBreached)
        record = first.mutate(None)
        assert record.has(SlaMetric.FIRST_RESPONSE, 1, SlaEventKind.BREACHED)
        with pytest.raises(RuleViolation):
            self.breach(record)
        second_cycle = self.breach(record, cycle=2)
        assert second_cycle.originator_version == 2

    def test_the_events_are_published_by_kind(self) -> None:
        event = self.breach()
        assert event.bus_subject() == "crm.interaction.sla_breached"
        assert event.bus_attributes()["slametric"] == "first_response"
        assert event.target_seconds == 3600


CHAT = UUID("00000000-0000-4000-8000-0000000c4a70")


class TestInteractionsOutsideCases:
    @pytest.mark.parametrize(
        ("routing_priority", "priority"),
        [
            (0, CasePriority.NORMAL),
            (4, CasePriority.NORMAL),
            (5, CasePriority.HIGH),
            (7, CasePriority.HIGH),
            (8, CasePriority.URGENT),
            (10, CasePriority.URGENT),
        ],
    )
    def test_routing_priority_maps_to_a_policy_priority(
        self, routing_priority: int, priority: CasePriority
    ) -> None:
        assert interaction_priority(routing_priority) is priority

    def breach(self, record: SlaRecord | None = None) -> SlaEvent:
        return mark(
            record,
            interaction_id=CHAT,
            kind=SlaEventKind.BREACHED,
            metric=SlaMetric.FIRST_RESPONSE,
            cycle=1,
            policy="standard",
            target=hours(2),
            started_at=tokyo(2025, 3, 3, 9),
            due_at=tokyo(2025, 3, 3, 11),
            channel=Channel.CHAT,
            at=tokyo(2025, 3, 3, 11, 1),
        )

    def test_an_interactions_record_is_its_own_and_refuses_a_repeat(self) -> None:
        event = self.breach()
        assert (event.case_id, event.interaction_id, event.subject_id) == (None, CHAT, CHAT)
        assert event.subject is SlaSubject.INTERACTION
        assert event.originator_id == interaction_sla_record_id(CHAT) != sla_record_id(CHAT)
        attributes = event.bus_attributes()
        assert attributes["interactionid"] == str(CHAT)
        assert "caseid" not in attributes
        record = event.mutate(None)
        assert (record.case_id, record.interaction_id) == (None, CHAT)
        with pytest.raises(RuleViolation, match="interaction"):
            self.breach(record)

    def test_an_event_names_a_case_or_an_interaction(self) -> None:
        with pytest.raises(InvalidValue):
            mark(
                None,
                kind=SlaEventKind.AT_RISK,
                metric=SlaMetric.RESOLUTION,
                cycle=1,
                policy="standard",
                target=hours(8),
                started_at=tokyo(2025, 3, 3, 9),
                due_at=tokyo(2025, 3, 3, 17),
                at=tokyo(2025, 3, 3, 15),
            )

    def test_a_case_event_stored_before_interaction_ids_existed_still_reads(self) -> None:
        older = msgspec.json.encode(
            {
                "originator_id": str(sla_record_id(CASE)),
                "originator_version": 1,
                "timestamp": "2025-03-03T02:00:00Z",
                "case_id": str(CASE),
                "customer_id": None,
                "channel": "email",
                "priority": "normal",
                "policy": "standard",
                "metric": "first_response",
                "cycle": 1,
                "target_seconds": 3600.0,
                "started_at": "2025-03-03T00:00:00Z",
                "due_at": "2025-03-03T01:00:00Z",
            }
        )
        event = msgspec.json.decode(older, type=SlaBreached)
        assert (event.case_id, event.interaction_id, event.subject) == (
            CASE,
            None,
            SlaSubject.CASE,
        )
