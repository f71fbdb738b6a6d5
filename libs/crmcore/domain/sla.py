"""Service-level agreements (SLA): business calendars, policies, clocks, and SLA events.

Everything here is pure: no clock, no storage.

- `BusinessCalendar`: a time zone, weekly business hours and holidays. `add(start, target,
  pauses)` is the moment `target` business time after `start` has run out, skipping nights,
  weekends, holidays and the given pauses; `elapsed(start, end, pauses)` the business time
  between two moments. Daylight-saving changes follow the time zone's rules (business hours
  are local wall-clock times; a day that is an hour short has an hour less of business time).
- `SlaPolicy` / `SlaPolicies`: targets for first response, next response and resolution, by
  channel and case priority; the first policy that matches a case applies (like an ordered
  policy list in a help desk). A policy may use its own calendar (e.g. 24/7 for urgent work).
  The same policies apply to an interaction outside any case (a chat, an e-mail nobody made a
  case of): its priority is `interaction_priority` of its routing priority.
- `SlaClock`: one measured target of one case or interaction — started, paused while the case
  waits on the customer, met or stopped. Its deadline is the calendar's `add` from its start
  over its pauses; while paused the deadline is unknown (the clock does not run).
- `SlaRecord`: which at-risk and breached events a case (or an interaction outside a case) has
  had. Its events `SlaAtRisk` and `SlaBreached` (bus subjects `crm.interaction.sla_at_risk`,
  `crm.interaction.sla_breached`) are recorded at most once per subject, metric, cycle and
  kind: the record refuses a repeat, and the store refuses a concurrent second writer. An
  event names its case (`case_id`), or, for an interaction outside a case, `case_id` None and
  the interaction (`interaction_id`).
"""

from __future__ import annotations

import enum
import functools
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, ClassVar, NamedTuple
from uuid import NAMESPACE_URL, UUID, uuid5
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from crmcore.domain import values
from crmcore.domain.base import Aggregate, Event, advance
from crmcore.domain.case import CasePriority
from crmcore.domain.errors import InvalidValue, RuleViolation
from crmcore.domain.values import Channel

MINUTES_PER_DAY = 24 * 60
#: How far ahead a deadline is searched for; a calendar without business time in this span
#: gives no deadline at all.
MAX_SEARCH_DAYS = 5 * 366
MAX_HOLIDAYS = 1_000
MAX_POLICIES = 100
MAX_TARGET = timedelta(days=365)
DEFAULT_AT_RISK_FRACTION = 0.75

SLA_RECORD_NAMESPACE = uuid5(NAMESPACE_URL, "urn:crm:interaction:sla-record")
INTERACTION_SLA_RECORD_NAMESPACE = uuid5(
    NAMESPACE_URL, "urn:crm:interaction:interaction-sla-record"
)
#: Routing priority (0–10, `crmcore.domain.interaction`) from which an interaction outside a
#: case counts as high, and as urgent, for its SLA policy; below it is normal.
HIGH_ROUTING_PRIORITY = 5
URGENT_ROUTING_PRIORITY = 8

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HOURS = re.compile(r"(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})")
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


class SlaMetric(enum.StrEnum):
    """What an SLA target measures (DOMAIN.md, "Interaction and case"); for an interaction
    outside a case: opened → first public agent reply (a voice channel: the answer), and
    opened → resolved (`crmcore.application.sla_scheduler`)."""

    #: Case created → first public reply of an agent.
    FIRST_RESPONSE = "first_response"
    #: A customer's message after the first reply → the agent's next public reply.
    NEXT_RESPONSE = "next_response"
    #: Case created → solved (time while solved before a reopening does not count).
    RESOLUTION = "resolution"


class SlaSubject(enum.StrEnum):
    """What a set of SLA clocks measures: a case, or an interaction that is in no case."""

    CASE = "case"
    INTERACTION = "interaction"


def interaction_priority(routing_priority: int) -> CasePriority:
    """The priority an interaction outside a case has for choosing its SLA policy: routing
    priority 0–4 (0 is the default) normal, 5–7 high, 8–10 urgent. Nothing maps to low: the
    default routing priority is already the lowest one."""
    if routing_priority >= URGENT_ROUTING_PRIORITY:
        return CasePriority.URGENT
    if routing_priority >= HIGH_ROUTING_PRIORITY:
        return CasePriority.HIGH
    return CasePriority.NORMAL


class ClockState(enum.StrEnum):
    RUNNING = "running"
    #: The case waits on the customer: the clock does not run.
    PAUSED = "paused"
    #: The target was reached (the reply was sent, the case solved).
    MET = "met"
    #: The clock no longer matters (the case was solved before any reply, or closed).
    STOPPED = "stopped"


class SlaEventKind(enum.StrEnum):
    AT_RISK = "at_risk"
    BREACHED = "breached"


# --- the calendar ---------------------------------------------------------------------------


class BusinessHours(msgspec.Struct, frozen=True, kw_only=True):
    """Business time on one weekday (0 Monday … 6 Sunday), in minutes after local midnight:
    `start_minute` 0–1439, `end_minute` after it, up to 1440 (midnight at the end)."""

    weekday: int
    start_minute: int
    end_minute: int


class Pause(msgspec.Struct, frozen=True, kw_only=True):
    """A span in which a clock did not run; `end` None: it has not resumed yet."""

    start: datetime
    end: datetime | None = None


def _always() -> tuple[BusinessHours, ...]:
    return tuple(
        BusinessHours(weekday=day, start_minute=0, end_minute=MINUTES_PER_DAY) for day in range(7)
    )


class BusinessCalendar(msgspec.Struct, frozen=True, kw_only=True):
    """When the organisation works: weekly local hours in a time zone, minus holidays.

    The default is always open (24/7, UTC). Build checked calendars with `business_calendar`.
    """

    time_zone: str = "UTC"
    hours: tuple[BusinessHours, ...] = msgspec.field(default_factory=_always)
    holidays: tuple[date, ...] = ()

    @property
    def zone(self) -> ZoneInfo:
        return _prepared(self).zone

    def is_business_time(self, moment: datetime) -> bool:
        moment = _utc(moment)
        for start, end in self.intervals_from(moment):
            return start <= moment < end
        return False

    def intervals_from(self, moment: datetime) -> Iterator[tuple[datetime, datetime]]:
        """The business intervals (UTC) from `moment` on, the first one clipped to start at
        `moment`; at most `MAX_SEARCH_DAYS` days ahead."""
        start = _utc(moment)
        prepared = _prepared(self)
        zone, by_day, holidays = prepared.zone, prepared.by_day, prepared.holidays
        # Start a day early: local midnight may lie before `moment` in UTC terms.
        first_day = start.astimezone(zone).date() - timedelta(days=1)
        for offset in range(MAX_SEARCH_DAYS + 1):
            day = first_day + timedelta(days=offset)
            if day in holidays:
                continue
            for start_minute, end_minute in by_day[day.weekday()]:
                begin = _local_moment(day, start_minute, zone)
                end = _local_moment(day, end_minute, zone)
                if end <= begin or end <= start:
                    continue
                yield max(begin, start), end

    def add(
        self, start: datetime, duration: timedelta, pauses: Sequence[Pause] = ()
    ) -> datetime | None:
        """The moment `duration` of business time after `start` has run out, not counting the
        pauses. None when it never runs out: a pause without an end comes first (the clock is
        stopped), or the calendar has no business time left in `MAX_SEARCH_DAYS`."""
        start = _utc(start)
        if duration <= timedelta(0):
            return start
        remaining = duration
        ordered = _ordered(pauses)
        for begin, end in self.intervals_from(start):
            segments, stopped = _unpaused(begin, end, ordered)
            for segment_start, segment_end in segments:
                length = segment_end - segment_start
                if length >= remaining:
                    return segment_start + remaining
                remaining -= length
            if stopped:
                return None
        return None

    def elapsed(self, start: datetime, end: datetime, pauses: Sequence[Pause] = ()) -> timedelta:
        """Business time between `start` and `end`, not counting the pauses."""
        start, end = _utc(start), _utc(end)
        total = timedelta(0)
        if end <= start:
            return total
        ordered = _ordered(pauses)
        for begin, stop in self.intervals_from(start):
            if begin >= end:
                break
            segments, _ = _unpaused(begin, min(stop, end), ordered)
            total += sum((b - a for a, b in segments), timedelta(0))
        return total


class _Prepared(NamedTuple):
    zone: ZoneInfo
    by_day: dict[int, list[tuple[int, int]]]
    holidays: frozenset[date]


@functools.lru_cache(maxsize=256)
def _prepared(calendar: BusinessCalendar) -> _Prepared:
    """The calendar in the form the maths needs (cached: calendars are few and immutable)."""
    by_day: dict[int, list[tuple[int, int]]] = {day: [] for day in range(7)}
    for block in calendar.hours:
        by_day[block.weekday].append((block.start_minute, block.end_minute))
    return _Prepared(
        zone=_zone(calendar.time_zone, "time_zone"),
        by_day={day: _merged(spans) for day, spans in by_day.items()},
        holidays=frozenset(calendar.holidays),
    )


def _utc(moment: datetime) -> datetime:
    return values.aware(moment, "at").astimezone(UTC)


def _zone(name: str, field: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidValue(field, f"{name!r} is not an IANA time zone like 'Asia/Tokyo'") from None


def _local_moment(day: date, minute: int, zone: ZoneInfo) -> datetime:
    """Local wall-clock `minute` of `day` in UTC (a time skipped by a daylight-saving change
    maps to the same distance after the change)."""
    if minute >= MINUTES_PER_DAY:
        day, minute = day + timedelta(days=1), minute - MINUTES_PER_DAY
    local = datetime.combine(day, time(minute // 60, minute % 60), tzinfo=zone)
    return local.astimezone(UTC)


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _ordered(pauses: Sequence[Pause]) -> list[Pause]:
    return sorted(
        (Pause(start=_utc(p.start), end=None if p.end is None else _utc(p.end)) for p in pauses),
        key=lambda pause: pause.start,
    )


def _unpaused(
    begin: datetime, end: datetime, pauses: Sequence[Pause]
) -> tuple[list[tuple[datetime, datetime]], bool]:
    """The parts of [begin, end) outside every pause, in order; and whether a pause without an
    end starts before `end` (nothing after it counts)."""
    segments = [(begin, end)]
    stopped = False
    for pause in pauses:
        pause_end = pause.end
        if pause_end is None:
            if pause.start >= end:
                continue
            stopped = True
            pause_end = end
        kept: list[tuple[datetime, datetime]] = []
        for start, stop in segments:
            if pause_end <= start or pause.start >= stop:
                kept.append((start, stop))
                continue
            if start < pause.start:
                kept.append((start, pause.start))
            if pause_end < stop:
                kept.append((pause_end, stop))
        segments = kept
    return segments, stopped


# --- building calendars from their written form ---------------------------------------------


def weekly_hours(spec: str, field: str = "hours") -> tuple[BusinessHours, ...]:
    """Weekly hours written as `"mon-fri 09:00-18:00; sat 10:00-14:00"` (several spans of a
    day separated by commas: `"mon-fri 09:00-12:00,13:00-18:00"`; `24:00` ends at midnight;
    `"always"` for 24/7)."""
    text = spec.strip().lower()
    if text in ("always", "24/7"):
        return _always()
    blocks: list[BusinessHours] = []
    for part_index, part in enumerate(p.strip() for p in text.split(";")):
        if not part:
            continue
        days_text, _, spans_text = part.partition(" ")
        days = _weekday_range(days_text, f"{field}[{part_index}]")
        for span in spans_text.split(","):
            match = _HOURS.fullmatch(span.strip())
            if match is None:
                raise InvalidValue(
                    f"{field}[{part_index}]",
                    f"{span.strip()!r} is not a span like '09:00-18:00'",
                )
            start_h, start_m, end_h, end_m = (int(group) for group in match.groups())
            start, end = start_h * 60 + start_m, end_h * 60 + end_m
            if start_m > 59 or end_m > 59 or start >= MINUTES_PER_DAY or end > MINUTES_PER_DAY:
                raise InvalidValue(f"{field}[{part_index}]", f"{span.strip()!r} is not a time")
            if end <= start:
                raise InvalidValue(
                    f"{field}[{part_index}]", f"{span.strip()!r} ends before it starts"
                )
            blocks += [BusinessHours(weekday=d, start_minute=start, end_minute=end) for d in days]
    if not blocks:
        raise InvalidValue(field, "names no business hours")
    return tuple(blocks)


def _weekday_range(text: str, field: str) -> list[int]:
    first, _, last = text.partition("-")
    if first not in WEEKDAYS or (last and last not in WEEKDAYS):
        raise InvalidValue(field, f"{text!r} is not a weekday or range like 'mon-fri'")
    start = WEEKDAYS.index(first)
    stop = WEEKDAYS.index(last) if last else start
    if stop < start:
        raise InvalidValue(field, f"{text!r}: a range runs forward, e.g. 'mon-fri'")
    return list(range(start, stop + 1))


def business_calendar(
    *,
    time_zone: str = "UTC",
    hours: str | Sequence[BusinessHours] = "always",
    holidays: Sequence[date | str] = (),
    field: str = "calendar",
) -> BusinessCalendar:
    """A checked calendar: a real time zone, some business hours, ISO dates as holidays."""
    _zone(time_zone, f"{field}.time_zone")
    blocks = weekly_hours(hours, f"{field}.hours") if isinstance(hours, str) else tuple(hours)
    if not blocks:
        raise InvalidValue(f"{field}.hours", "names no business hours")
    for index, block in enumerate(blocks):
        if not (
            0 <= block.weekday <= 6
            and 0 <= block.start_minute < block.end_minute <= MINUTES_PER_DAY
        ):
            raise InvalidValue(f"{field}.hours[{index}]", "not a span of one weekday")
    if len(holidays) > MAX_HOLIDAYS:
        raise InvalidValue(f"{field}.holidays", f"more than {MAX_HOLIDAYS} holidays")
    days: list[date] = []
    for index, holiday in enumerate(holidays):
        if isinstance(holiday, date):
            days.append(holiday)
            continue
        try:
            days.append(date.fromisoformat(holiday.strip()))
        except ValueError:
            raise InvalidValue(
                f"{field}.holidays[{index}]", f"{holiday!r} is not a date like 2025-01-01"
            ) from None
    return BusinessCalendar(
        time_zone=time_zone, hours=tuple(blocks), holidays=tuple(sorted(set(days)))
    )


def duration(value: str | float, field: str) -> timedelta:
    """A target: seconds as a number, or `"1h30m"`, `"45m"`, `"2d"` (calendar days of 24 h of
    business time, not working days), `"90s"`. Positive and at most a year."""
    if isinstance(value, bool):
        raise InvalidValue(field, "not a duration")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise InvalidValue(field, "not a duration")
        seconds = float(value)
    else:
        text = value.strip().lower().replace(" ", "")
        match = _DURATION.fullmatch(text)
        if not text or match is None:
            raise InvalidValue(field, f"{value!r} is not a duration like '1h30m' or '45m'")
        days, hours, minutes, secs = (int(group or 0) for group in match.groups())
        seconds = float(((days * 24 + hours) * 60 + minutes) * 60 + secs)
    if seconds <= 0:
        raise InvalidValue(field, "must be longer than 0")
    target = timedelta(seconds=seconds)
    if target > MAX_TARGET:
        raise InvalidValue(field, f"longer than {MAX_TARGET.days} days")
    return target


# --- policies -------------------------------------------------------------------------------


class SlaPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """Targets for the cases it matches: channels and priorities it applies to (empty: any);
    a target None is not measured. `calendar` None: the policy set's calendar. A clock is
    "at risk" once `at_risk_fraction` of its target has run."""

    name: str
    channels: tuple[Channel, ...] = ()
    priorities: tuple[CasePriority, ...] = ()
    first_response: timedelta | None = None
    next_response: timedelta | None = None
    resolution: timedelta | None = None
    calendar: BusinessCalendar | None = None
    at_risk_fraction: float = DEFAULT_AT_RISK_FRACTION

    def target(self, metric: SlaMetric) -> timedelta | None:
        if metric is SlaMetric.FIRST_RESPONSE:
            return self.first_response
        if metric is SlaMetric.NEXT_RESPONSE:
            return self.next_response
        return self.resolution

    def matches(self, channel: Channel | None, priority: CasePriority) -> bool:
        """A case whose channel is not known yet matches only policies for any channel."""
        channel_ok = not self.channels or (channel is not None and channel in self.channels)
        return channel_ok and (not self.priorities or priority in self.priorities)


class SlaPolicies(msgspec.Struct, frozen=True, kw_only=True):
    """An ordered list of policies and the calendar they use unless they name their own."""

    calendar: BusinessCalendar = msgspec.field(default_factory=BusinessCalendar)
    policies: tuple[SlaPolicy, ...] = ()

    def policy_for(self, channel: Channel | None, priority: CasePriority) -> SlaPolicy | None:
        """The first policy matching the case (None: no SLA applies)."""
        return next((p for p in self.policies if p.matches(channel, priority)), None)

    def named(self, name: str) -> SlaPolicy | None:
        return next((p for p in self.policies if p.name == name), None)

    def calendar_of(self, policy: SlaPolicy) -> BusinessCalendar:
        return policy.calendar or self.calendar


def sla_policy(
    *,
    name: str,
    channels: Sequence[str] = (),
    priorities: Sequence[str] = (),
    first_response: str | float | timedelta | None = None,
    next_response: str | float | timedelta | None = None,
    resolution: str | float | timedelta | None = None,
    calendar: BusinessCalendar | None = None,
    at_risk_fraction: float = DEFAULT_AT_RISK_FRACTION,
    field: str = "policy",
) -> SlaPolicy:
    """A checked policy (targets as durations, see `duration`)."""

    def target(value: str | float | timedelta | None, key: str) -> timedelta | None:
        if value is None:
            return None
        if isinstance(value, timedelta):
            return duration(value.total_seconds(), f"{field}.{key}")
        return duration(value, f"{field}.{key}")

    if not (
        isinstance(at_risk_fraction, int | float)
        and math.isfinite(at_risk_fraction)
        and 0 < at_risk_fraction < 1
    ):
        raise InvalidValue(f"{field}.at_risk_fraction", "must be between 0 and 1 (exclusive)")
    return SlaPolicy(
        name=values.required_text(name, f"{field}.name", max_length=100),
        channels=tuple(
            values.enum_value(Channel, channel, f"{field}.channels[{index}]")
            for index, channel in enumerate(channels)
        ),
        priorities=tuple(
            values.enum_value(CasePriority, priority, f"{field}.priorities[{index}]")
            for index, priority in enumerate(priorities)
        ),
        first_response=target(first_response, "first_response"),
        next_response=target(next_response, "next_response"),
        resolution=target(resolution, "resolution"),
        calendar=calendar,
        at_risk_fraction=float(at_risk_fraction),
    )


#: Office hours Monday to Friday, 09:00–18:00 UTC, no holidays: the default calendar.
DEFAULT_CALENDAR = BusinessCalendar(
    hours=tuple(BusinessHours(weekday=day, start_minute=540, end_minute=1080) for day in range(5))
)

#: Used when the service is given no policies: targets by priority, any channel, in the
#: default calendar's business hours.
DEFAULT_POLICIES = SlaPolicies(
    calendar=DEFAULT_CALENDAR,
    policies=(
        SlaPolicy(
            name="urgent",
            priorities=(CasePriority.URGENT,),
            first_response=timedelta(hours=1),
            next_response=timedelta(hours=2),
            resolution=timedelta(hours=8),
        ),
        SlaPolicy(
            name="high",
            priorities=(CasePriority.HIGH,),
            first_response=timedelta(hours=4),
            next_response=timedelta(hours=8),
            resolution=timedelta(hours=24),
        ),
        SlaPolicy(
            name="normal",
            priorities=(CasePriority.NORMAL,),
            first_response=timedelta(hours=8),
            next_response=timedelta(hours=16),
            resolution=timedelta(hours=40),
        ),
        SlaPolicy(
            name="low",
            priorities=(CasePriority.LOW,),
            first_response=timedelta(hours=24),
            next_response=timedelta(hours=40),
            resolution=timedelta(hours=80),
        ),
    ),
)


class _CalendarSpec(msgspec.Struct, forbid_unknown_fields=True):
    time_zone: str = "UTC"
    hours: str = "always"
    holidays: list[str] = msgspec.field(default_factory=list)


class _PolicySpec(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    channels: list[str] = msgspec.field(default_factory=list)
    priorities: list[str] = msgspec.field(default_factory=list)
    first_response: str | float | None = None
    next_response: str | float | None = None
    resolution: str | float | None = None
    calendar: _CalendarSpec | None = None
    at_risk_fraction: float = DEFAULT_AT_RISK_FRACTION


class _PoliciesSpec(msgspec.Struct, forbid_unknown_fields=True):
    calendar: _CalendarSpec = msgspec.field(default_factory=_CalendarSpec)
    policies: list[_PolicySpec] = msgspec.field(default_factory=list)


def policies_from_json(text: str | bytes) -> SlaPolicies:
    """Policies written as JSON (how operators configure them), e.g.::

    {"calendar": {"time_zone": "Asia/Tokyo", "hours": "mon-fri 09:00-18:00",
                  "holidays": ["2025-01-01"]},
     "policies": [{"name": "urgent chat", "channels": ["chat"], "priorities": ["urgent"],
                   "first_response": "5m", "resolution": "4h",
                   "calendar": {"hours": "always"}}]}
    """
    try:
        spec = msgspec.json.decode(text, type=_PoliciesSpec)
    except msgspec.ValidationError as error:
        raise InvalidValue("policies", str(error)) from None
    except msgspec.DecodeError as error:
        raise InvalidValue("policies", f"not JSON: {error}") from None
    if len(spec.policies) > MAX_POLICIES:
        raise InvalidValue("policies", f"more than {MAX_POLICIES} policies")

    def calendar(given: _CalendarSpec, field: str) -> BusinessCalendar:
        return business_calendar(
            time_zone=given.time_zone, hours=given.hours, holidays=given.holidays, field=field
        )

    names: set[str] = set()
    policies: list[SlaPolicy] = []
    for index, given in enumerate(spec.policies):
        field = f"policies[{index}]"
        policy = sla_policy(
            name=given.name,
            channels=given.channels,
            priorities=given.priorities,
            first_response=given.first_response,
            next_response=given.next_response,
            resolution=given.resolution,
            calendar=None
            if given.calendar is None
            else calendar(given.calendar, f"{field}.calendar"),
            at_risk_fraction=given.at_risk_fraction,
            field=field,
        )
        if policy.name in names:
            raise InvalidValue(f"{field}.name", f"{policy.name!r} is used twice")
        names.add(policy.name)
        policies.append(policy)
    return SlaPolicies(calendar=calendar(spec.calendar, "calendar"), policies=tuple(policies))


# --- clocks ---------------------------------------------------------------------------------


class SlaClock(msgspec.Struct, frozen=True, kw_only=True):
    """One measured target of one case (or interaction outside a case): `metric`, its `cycle`
    (1 for first response and resolution; next response counts each customer message that
    waits for a reply)."""

    metric: SlaMetric
    cycle: int
    started_at: datetime
    pauses: tuple[Pause, ...] = ()
    state: ClockState = ClockState.RUNNING
    #: When it was met or stopped.
    ended_at: datetime | None = None

    @property
    def running(self) -> bool:
        return self.state is ClockState.RUNNING

    def pause(self, at: datetime) -> SlaClock:
        if self.state is not ClockState.RUNNING:
            return self
        return msgspec.structs.replace(
            self, state=ClockState.PAUSED, pauses=(*self.pauses, Pause(start=at))
        )

    def resume(self, at: datetime) -> SlaClock:
        if self.state is not ClockState.PAUSED:
            return self
        return msgspec.structs.replace(
            self, state=ClockState.RUNNING, pauses=self._closed_pauses(at)
        )

    def meet(self, at: datetime) -> SlaClock:
        """The target was reached at `at` (a pause running until then ends)."""
        if self.state not in (ClockState.RUNNING, ClockState.PAUSED):
            return self
        return msgspec.structs.replace(
            self, state=ClockState.MET, ended_at=at, pauses=self._closed_pauses(at)
        )

    def stop(self, at: datetime) -> SlaClock:
        if self.state not in (ClockState.RUNNING, ClockState.PAUSED):
            return self
        return msgspec.structs.replace(
            self, state=ClockState.STOPPED, ended_at=at, pauses=self._closed_pauses(at)
        )

    def restart(self, at: datetime) -> SlaClock:
        """A met clock runs on (a solved case was reopened): the time in between is a pause."""
        if self.state is not ClockState.MET or self.ended_at is None:
            return self
        return msgspec.structs.replace(
            self,
            state=ClockState.RUNNING,
            ended_at=None,
            pauses=(*self.pauses, Pause(start=self.ended_at, end=at)),
        )

    def deadline(self, target: timedelta, calendar: BusinessCalendar) -> datetime | None:
        """When the target runs out (None while paused before it does)."""
        return calendar.add(self.started_at, target, self._pauses_for_deadline())

    def at_risk_time(
        self, target: timedelta, fraction: float, calendar: BusinessCalendar
    ) -> datetime | None:
        return calendar.add(self.started_at, target * fraction, self._pauses_for_deadline())

    def used(self, calendar: BusinessCalendar, now: datetime) -> timedelta:
        """Business time the clock has run until `now` (or until it ended)."""
        end = self.ended_at if self.ended_at is not None else now
        return calendar.elapsed(self.started_at, end, self.pauses)

    def _pauses_for_deadline(self) -> tuple[Pause, ...]:
        # A met or stopped clock's deadline is the one it had while running: its pauses all
        # ended, and the time after it ended does not matter to whether it was late.
        return self.pauses

    def _closed_pauses(self, at: datetime) -> tuple[Pause, ...]:
        return tuple(Pause(start=p.start, end=at) if p.end is None else p for p in self.pauses)


# --- the SLA record of a case and its events ------------------------------------------------


def sla_record_id(case_id: UUID) -> UUID:
    return uuid5(SLA_RECORD_NAMESPACE, str(case_id))


def interaction_sla_record_id(interaction_id: UUID) -> UUID:
    """The id of the SLA record of an interaction outside a case."""
    return uuid5(INTERACTION_SLA_RECORD_NAMESPACE, str(interaction_id))


def mark_key(metric: SlaMetric, cycle: int, kind: SlaEventKind) -> str:
    return f"{metric}:{cycle}:{kind}"


class SlaRecord(Aggregate, frozen=True, kw_only=True):
    """The at-risk and breached events a case, or an interaction outside a case (`case_id`
    None), has had (keys from `mark_key`)."""

    case_id: UUID | None
    interaction_id: UUID | None = None
    marks: tuple[str, ...] = ()

    def has(self, metric: SlaMetric, cycle: int, kind: SlaEventKind) -> bool:
        return mark_key(metric, cycle, kind) in self.marks


class SlaEvent(Event[SlaRecord], frozen=True, kw_only=True):
    """A deadline of a case's SLA came close or passed. Carries what a subscriber and the
    KPIs need: the case, its customer, channel and priority, the policy, the metric and
    cycle, the target (business seconds), when the clock started and when it was due.

    For an interaction outside a case, `case_id` is None and `interaction_id` names it (its
    priority is `interaction_priority` of its routing priority)."""

    context: ClassVar[str] = "interaction"
    kind: ClassVar[SlaEventKind]

    case_id: UUID | None
    customer_id: UUID | None
    channel: Channel | None
    priority: CasePriority
    policy: str
    metric: SlaMetric
    cycle: int
    target_seconds: float
    started_at: datetime
    due_at: datetime
    interaction_id: UUID | None = None

    @property
    def subject(self) -> SlaSubject:
        return SlaSubject.CASE if self.case_id is not None else SlaSubject.INTERACTION

    @property
    def subject_id(self) -> UUID:
        """The case, or the interaction outside a case, whose clock this is."""
        subject_id = self.case_id or self.interaction_id
        assert subject_id is not None, "an SLA event names its case or interaction"
        return subject_id

    def bus_attributes(self) -> dict[str, str]:
        attributes = {"slametric": str(self.metric)}
        if self.case_id is not None:
            attributes["caseid"] = str(self.case_id)
        if self.interaction_id is not None:
            attributes["interactionid"] = str(self.interaction_id)
        if self.customer_id is not None:
            attributes["customerid"] = str(self.customer_id)
        return attributes

    def mutate(self, state: SlaRecord | None) -> SlaRecord:
        key = mark_key(self.metric, self.cycle, self.kind)
        if state is None:
            return SlaRecord(
                id=self.originator_id,
                version=self.originator_version,
                created_on=self.timestamp,
                modified_on=self.timestamp,
                case_id=self.case_id,
                interaction_id=self.interaction_id,
                marks=(key,),
            )
        return advance(state, self, marks=(*state.marks, key))


class SlaAtRisk(SlaEvent, frozen=True, kw_only=True):
    """`at_risk_fraction` of the target has run and the target is not met yet."""

    kind: ClassVar[SlaEventKind] = SlaEventKind.AT_RISK
    at_risk_at: datetime


class SlaBreached(SlaEvent, frozen=True, kw_only=True):
    """The target ran out before it was met (also recorded late, when it was met after its
    deadline while nothing was watching)."""

    kind: ClassVar[SlaEventKind] = SlaEventKind.BREACHED


def mark(
    record: SlaRecord | None,
    *,
    case_id: UUID | None = None,
    interaction_id: UUID | None = None,
    kind: SlaEventKind,
    metric: SlaMetric,
    cycle: int,
    policy: str,
    target: timedelta,
    started_at: datetime,
    due_at: datetime,
    at_risk_at: datetime | None = None,
    customer_id: UUID | None = None,
    channel: Channel | None = None,
    priority: CasePriority = CasePriority.NORMAL,
    at: datetime,
) -> SlaEvent:
    """The at-risk or breached event of one clock of a case (`case_id`), or of an interaction
    outside a case (`interaction_id` alone); RuleViolation when it had that event."""
    timestamp = values.aware(at, "at")
    if case_id is not None:
        record_id, whose = sla_record_id(case_id), f"case {case_id}"
    elif interaction_id is not None:
        record_id = interaction_sla_record_id(interaction_id)
        whose = f"interaction {interaction_id}"
    else:
        raise InvalidValue("case_id", "an SLA event names a case or an interaction")
    if record is not None:
        if record.has(metric, cycle, kind):
            raise RuleViolation(f"{whose} already has its {kind} event for {metric} #{cycle}")
        timestamp = max(timestamp, record.modified_on)
    facts: Mapping[str, Any] = {
        "originator_id": record_id,
        "originator_version": 1 if record is None else record.version + 1,
        "timestamp": timestamp,
        "case_id": case_id,
        "interaction_id": interaction_id,
        "customer_id": customer_id,
        "channel": channel,
        "priority": priority,
        "policy": policy,
        "metric": metric,
        "cycle": cycle,
        "target_seconds": target.total_seconds(),
        "started_at": started_at,
        "due_at": due_at,
    }
    if kind is SlaEventKind.AT_RISK:
        return SlaAtRisk(**facts, at_risk_at=at_risk_at or due_at)
    return SlaBreached(**facts)
