"""KPI maths: the definitions of DOMAIN.md ("KPIs"), their policies, and staffing by Erlang C.

Pure functions and small values, no storage. The metrics projection
(`crmcore.application.metrics`) counts what happened into additive `Tally` values per
15-minute interval and dimension; everything here turns tallies (and, for the KPIs that
depend on a time window, per-issue facts) into the numbers a support manager reads.

- Durations are kept in whole milliseconds, so sums are exact and a tally can be added and
  subtracted without rounding drift. Each duration KPI reports count, mean (exact, from the
  sum), median and p90 (nearest rank, read from a `Histogram`).
- `Histogram`: fixed bins (`BOUNDARIES_MS`), so merging two histograms is adding counts. Bins
  are 1 ms wide at every whole second up to 10 minutes and at the longer service-level
  thresholds, and log-spaced (≈4.4 % wide) elsewhere: a percentile is exact to 1 ms where the
  values are whole seconds and within one bin otherwise; "how many within T" is exact for
  every T in `THRESHOLDS_S`.
- Every rate is a `Rate` that states the policy it was computed with.
- Staffing: Erlang C (`erlang_c`, `staffing`), which ignores abandonment and so over-staffs.
"""

from __future__ import annotations

import bisect
import enum
import math
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import msgspec

from crmcore.domain.errors import InvalidValue

MS_PER_S = 1000
INTERVAL_MS = 15 * 60 * MS_PER_S

# --- thresholds and histogram bins ---------------------------------------------------------

#: Thresholds a policy may name (seconds): every whole second up to 10 minutes, then the
#: usual targets of e-mail and ticket queues. "Within T" is exact for each of them.
THRESHOLDS_S: tuple[int, ...] = (
    *range(0, 601),
    900,
    1200,
    1800,
    2700,
    3600,
    5400,
    7200,
    10800,
    14400,
    21600,
    28800,
    43200,
    86400,
    172800,
    259200,
    604800,
)
_THRESHOLD_SET = frozenset(THRESHOLDS_S)
#: Ratio between neighbouring log-spaced bin boundaries (16 bins per doubling).
LOG_BIN_RATIO = 2 ** (1 / 16)
_LONGEST_MS = 100 * 86400 * MS_PER_S


def _boundaries() -> tuple[int, ...]:
    points = {0}
    value = 1.0
    while value < _LONGEST_MS:
        points.add(round(value))
        value *= LOG_BIN_RATIO
    for seconds in THRESHOLDS_S:
        # [T, T+1 ms) is a bin of its own: "< T" and "≤ T" are both exact.
        points.update((seconds * MS_PER_S, seconds * MS_PER_S + 1))
    return tuple(sorted(points))


#: Lower bounds of the histogram bins in milliseconds; bin i holds [B[i], B[i+1]), the last
#: bin everything from 100 days up. Stored bin numbers depend on it: changing it needs a
#: rebuild of the read models (`HISTOGRAM_LAYOUT` names the layout in the store).
BOUNDARIES_MS: tuple[int, ...] = _boundaries()
HISTOGRAM_LAYOUT = f"v1:{len(BOUNDARIES_MS)}"


def bin_of(milliseconds: int) -> int:
    """The bin a duration falls in (negative durations, from skewed clocks, count as 0)."""
    if milliseconds <= 0:
        return 0
    return bisect.bisect_right(BOUNDARIES_MS, milliseconds) - 1


def check_threshold(seconds: int, field: str) -> int:
    """A threshold a policy may use (see `THRESHOLDS_S`)."""
    if seconds not in _THRESHOLD_SET:
        raise InvalidValue(
            field,
            f"{seconds} s is not a supported threshold: use a whole number of seconds from 0 "
            "to 600, or one of 900, 1200, 1800, 2700, 3600, 5400, 7200, 10800, 14400, 21600, "
            "28800, 43200, 86400, 172800, 259200, 604800",
        )
    return seconds


class Histogram:
    """Counts of durations per fixed bin: mergeable by adding counts (also negative ones, which
    is how a projection takes back what it counted before a fact changed)."""

    __slots__ = ("counts",)

    def __init__(self, counts: Mapping[int, int] | None = None) -> None:
        self.counts: dict[int, int] = dict(counts) if counts else {}

    def add(self, milliseconds: int, count: int = 1) -> None:
        index = bin_of(milliseconds)
        self.counts[index] = self.counts.get(index, 0) + count

    def add_bin(self, index: int, count: int) -> None:
        self.counts[index] = self.counts.get(index, 0) + count

    def merge(self, other: Histogram) -> Histogram:
        for index, count in other.counts.items():
            self.counts[index] = self.counts.get(index, 0) + count
        return self

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def count_below(self, milliseconds: int) -> int:
        """How many durations are < `milliseconds`, which must be a bin boundary."""
        index = bisect.bisect_left(BOUNDARIES_MS, milliseconds)
        if index >= len(BOUNDARIES_MS) or BOUNDARIES_MS[index] != milliseconds:
            raise ValueError(f"{milliseconds} ms is not a histogram bin boundary")
        return sum(count for bin_index, count in self.counts.items() if bin_index < index)

    def count_at_most(self, milliseconds: int) -> int:
        """How many durations are ≤ `milliseconds` (`milliseconds` + 1 must be a boundary)."""
        return self.count_below(milliseconds + 1)

    def percentile(self, fraction: float) -> float | None:
        """The nearest-rank percentile in milliseconds (the smallest value with at least
        `fraction` of the values at or below it), placed inside its bin by rank; None when
        empty."""
        total = self.total
        if total <= 0:
            return None
        rank = max(1, math.ceil(fraction * total))
        seen = 0
        for index in sorted(self.counts):
            count = self.counts[index]
            if count <= 0:
                continue
            if seen + count >= rank:
                low = BOUNDARIES_MS[index]
                if index + 1 >= len(BOUNDARIES_MS):
                    return float(low)
                width = BOUNDARIES_MS[index + 1] - low
                if width <= 1:
                    return float(low)
                return low + width * (rank - seen - 1) / count
            seen += count
        return float(BOUNDARIES_MS[max(self.counts)])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Histogram):
            return NotImplemented
        return {k: v for k, v in self.counts.items() if v} == {
            k: v for k, v in other.counts.items() if v
        }

    def __repr__(self) -> str:
        return f"Histogram({ {k: v for k, v in sorted(self.counts.items()) if v} })"


def exact_percentile(values: Iterable[float], fraction: float) -> float | None:
    """Nearest-rank percentile of exact values (same definition as `Histogram.percentile`)."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


# --- what the projection counts ------------------------------------------------------------

#: Additive counters of a tally (and columns of the bucket table). `_ms` are milliseconds.
COUNTERS: tuple[str, ...] = (
    # contacts opened (interval of creation)
    "created",
    # queue outcomes, in the interval of the first enqueue (arrival)
    "offered",
    "answered",
    "abandoned",
    "answer_wait_ms",
    "abandon_wait_ms",
    # agent handling, one per agent segment, in the interval the segment ended
    "handled",
    "handle_ms",
    "talk_ms",
    "hold_ms",
    "acw_ms",
    "transferred_out",
    "escalated",
    # first public agent reply, in the interval it was written
    "first_responses",
    "first_response_ms",
    # surveys, in the interval they were answered
    "csat_responses",
    "csat_satisfied",
    "nps_responses",
    "nps_promoters",
    "nps_detractors",
    "ces_responses",
    "ces_total",
    # agent time, split over the intervals it spans
    "logged_in_ms",
    "idle_ms",
    "occupied_ms",
    "weighted_occupied_ms",
)
#: Histograms of a tally, with the stable numbers they are stored under.
HISTOGRAMS: Mapping[str, int] = {
    "answer_wait": 1,
    "abandon_wait": 2,
    "handle": 3,
    "first_response": 4,
}
HISTOGRAM_NAMES: Mapping[int, str] = {number: name for name, number in HISTOGRAMS.items()}


class Tally:
    """Additive counts and histograms of one interval and group (or a sum of them)."""

    __slots__ = ("counts", "histograms")

    def __init__(self) -> None:
        self.counts: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.histograms: dict[str, Histogram] = {name: Histogram() for name in HISTOGRAMS}

    def merge(self, other: Tally) -> Tally:
        for name, value in other.counts.items():
            self.counts[name] += value
        for name, histogram in other.histograms.items():
            self.histograms[name].merge(histogram)
        return self

    def __getitem__(self, name: str) -> int:
        return self.counts[name]

    def is_empty(self) -> bool:
        return not any(self.counts.values()) and not any(
            any(h.counts.values()) for h in self.histograms.values()
        )


# --- values reported ---------------------------------------------------------------------


class Rate(msgspec.Struct, frozen=True, kw_only=True):
    """numerator / denominator, and the policy it was computed with; `value` None when the
    denominator is 0 (nothing to measure, which is not 0 %)."""

    numerator: float
    denominator: float
    policy: str
    value: float | None = None


def rate(numerator: float, denominator: float, policy: str) -> Rate:
    return Rate(
        numerator=numerator,
        denominator=denominator,
        policy=policy,
        value=(numerator / denominator) if denominator > 0 else None,
    )


class DurationStats(msgspec.Struct, frozen=True, kw_only=True):
    """Seconds: count, exact mean, and nearest-rank median and p90."""

    count: int
    mean_s: float | None = None
    median_s: float | None = None
    p90_s: float | None = None


def duration_stats(count: int, total_ms: int, histogram: Histogram | None) -> DurationStats:
    if count <= 0:
        return DurationStats(count=0)
    median = histogram.percentile(0.5) if histogram is not None else None
    p90 = histogram.percentile(0.9) if histogram is not None else None
    return DurationStats(
        count=count,
        mean_s=total_ms / count / MS_PER_S,
        median_s=None if median is None else median / MS_PER_S,
        p90_s=None if p90 is None else p90 / MS_PER_S,
    )


def exact_duration_stats(values_ms: Iterable[int]) -> DurationStats:
    values = list(values_ms)
    if not values:
        return DurationStats(count=0)
    median = exact_percentile(values, 0.5)
    p90 = exact_percentile(values, 0.9)
    assert median is not None
    assert p90 is not None
    return DurationStats(
        count=len(values),
        mean_s=sum(values) / len(values) / MS_PER_S,
        median_s=median / MS_PER_S,
        p90_s=p90 / MS_PER_S,
    )


# --- policies ------------------------------------------------------------------------------


class AbandonTreatment(enum.StrEnum):
    """How abandoned contacts enter the service level (after short abandons are dropped)."""

    #: answered within T / (answered + abandoned): every abandon is a miss (the strictest).
    MISSED = "missed"
    #: answered within T / answered: abandons are left out.
    EXCLUDED = "excluded"
    #: (answered within T + abandoned within T) / (answered + abandoned).
    MET_WITHIN_THRESHOLD = "met_within_threshold"
    #: answered within T / (answered + abandoned after T): abandons within T are left out.
    EXCLUDED_WITHIN_THRESHOLD = "excluded_within_threshold"


class ServiceLevelPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """Service level = contacts answered within `threshold_s` over the contacts counted.

    `short_abandon_s` τ: abandons after a wait < τ (misdials, instant hang-ups) are dropped
    from everything — service level, answer rate and abandonment rate — 0 keeps them all."""

    threshold_s: int = 20
    abandons: AbandonTreatment = AbandonTreatment.MISSED
    short_abandon_s: int = 0

    def checked(self, field: str = "service_level_policy") -> ServiceLevelPolicy:
        check_threshold(self.threshold_s, f"{field}.threshold_seconds")
        check_threshold(self.short_abandon_s, f"{field}.short_abandon_seconds")
        return self

    def describe(self) -> str:
        formula = {
            AbandonTreatment.MISSED: "answered within {t} s / (answered + abandoned)",
            AbandonTreatment.EXCLUDED: "answered within {t} s / answered (abandons excluded)",
            AbandonTreatment.MET_WITHIN_THRESHOLD: (
                "(answered within {t} s + abandoned within {t} s) / (answered + abandoned)"
            ),
            AbandonTreatment.EXCLUDED_WITHIN_THRESHOLD: (
                "answered within {t} s / (answered + abandoned after {t} s)"
            ),
        }[self.abandons].format(t=self.threshold_s)
        return formula + self.short_abandon_note()

    def short_abandon_note(self) -> str:
        if self.short_abandon_s <= 0:
            return "; no short-abandon exclusion"
        return f"; abandons under {self.short_abandon_s} s dropped"


class KpiPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a KPI's value depends on besides the events (DOMAIN.md, "KPIs").

    - `service_level`: see `ServiceLevelPolicy`.
    - `fcr_window_days` N: a resolved issue counts as first-contact-resolved if it had one
      agent contact, was not reopened, and the same customer made no contact on the same
      reason within N days of its first resolution. Provisional until the window closes.
    - `bot_repeat_window_hours`: a contained bot conversation followed by another contact of
      the same customer within this window was not really contained.
    - `first_response_target_s`, `resolution_target_s`: calendar-time targets of the
      `*_within_calendar_target` figures. They are not the SLA: SLA attainment
      (`sla_attainment`) counts the interaction service's SLA events, whose deadlines run in
      the business hours of the SLA policies.
    """

    service_level: ServiceLevelPolicy = msgspec.field(default_factory=ServiceLevelPolicy)
    fcr_window_days: int = 7
    bot_repeat_window_hours: int = 24
    first_response_target_s: int = 3600
    resolution_target_s: int = 86400

    def checked(self) -> KpiPolicy:
        self.service_level.checked()
        if not 1 <= self.fcr_window_days <= 90:
            raise InvalidValue("policy.fcr_window_days", "must be between 1 and 90 days")
        if not 1 <= self.bot_repeat_window_hours <= 24 * 30:
            raise InvalidValue("policy.bot_repeat_window_hours", "must be between 1 and 720")
        check_threshold(self.first_response_target_s, "policy.first_response_target_seconds")
        if self.resolution_target_s <= 0:
            raise InvalidValue("policy.resolution_target_seconds", "must be positive")
        return self

    @property
    def fcr_window_ms(self) -> int:
        return self.fcr_window_days * 86400 * MS_PER_S

    @property
    def bot_repeat_window_ms(self) -> int:
        return self.bot_repeat_window_hours * 3600 * MS_PER_S


# --- the queue KPIs --------------------------------------------------------------------------


class QueueOutcomes(msgspec.Struct, frozen=True, kw_only=True):
    """What the service-level family counts, after dropping short abandons."""

    offered: int
    answered: int
    answered_within: int
    abandoned: int
    abandoned_within: int
    short_abandons: int


def queue_outcomes(tally: Tally, policy: ServiceLevelPolicy) -> QueueOutcomes:
    threshold_ms = policy.threshold_s * MS_PER_S
    answered = tally.histograms["answer_wait"]
    abandoned = tally.histograms["abandon_wait"]
    short = abandoned.count_below(policy.short_abandon_s * MS_PER_S)
    within = abandoned.count_at_most(threshold_ms)
    return QueueOutcomes(
        offered=tally["offered"] - short,
        answered=tally["answered"],
        answered_within=answered.count_at_most(threshold_ms),
        abandoned=tally["abandoned"] - short,
        abandoned_within=max(0, within - short),
        short_abandons=short,
    )


def service_level(outcomes: QueueOutcomes, policy: ServiceLevelPolicy) -> Rate:
    """Service level under `policy` (DOMAIN.md: answered within T / queued)."""
    answered, abandoned = outcomes.answered, outcomes.abandoned
    numerator = outcomes.answered_within
    match policy.abandons:
        case AbandonTreatment.MISSED:
            denominator = answered + abandoned
        case AbandonTreatment.EXCLUDED:
            denominator = answered
        case AbandonTreatment.MET_WITHIN_THRESHOLD:
            numerator += outcomes.abandoned_within
            denominator = answered + abandoned
        case AbandonTreatment.EXCLUDED_WITHIN_THRESHOLD:
            denominator = answered + abandoned - outcomes.abandoned_within
    return rate(numerator, denominator, policy.describe())


def answer_rate(outcomes: QueueOutcomes, policy: ServiceLevelPolicy) -> Rate:
    """A / Q: first answers over contacts queued (still-waiting contacts count in Q)."""
    return rate(
        outcomes.answered, outcomes.offered, "answered / queued" + policy.short_abandon_note()
    )


def abandonment_rate(outcomes: QueueOutcomes, policy: ServiceLevelPolicy) -> Rate:
    """Ab / Q: contacts that left the queue before any answer over contacts queued."""
    return rate(
        outcomes.abandoned,
        outcomes.offered,
        "abandoned before an answer / queued" + policy.short_abandon_note(),
    )


# --- agents --------------------------------------------------------------------------------


def occupancy(tally: Tally) -> Rate:
    occupied, idle = tally["occupied_ms"], tally["idle_ms"]
    return rate(
        occupied / MS_PER_S,
        (occupied + idle) / MS_PER_S,
        "seconds with contacts in hand or in after-contact work / (those + seconds available "
        "and idle)",
    )


def weighted_occupancy(tally: Tally) -> Rate:
    occupied, idle = tally["occupied_ms"], tally["idle_ms"]
    return rate(
        tally["weighted_occupied_ms"] / MS_PER_S,
        (occupied + idle) / MS_PER_S,
        "capacity-weighted: ∫ load dt / (seconds occupied + seconds idle), where load is the "
        "mean over the agent's channels of items in hand / capacity (an exclusive channel or "
        "after-contact work = 1)",
    )


def agent_load(capacity: Mapping[str, int], items: Mapping[str, int], *, exclusive: bool) -> float:
    """How full an agent is, 0.0 to 1.0: the mean over the channels the agent takes (or has
    work on) of items / capacity, each capped at 1; an exclusive item in hand = 1 (the same
    rule as `Agent.load`)."""
    if exclusive:
        return 1.0
    fractions: list[float] = []
    for channel in set(capacity) | set(items):
        limit = capacity.get(channel, 0)
        held = items.get(channel, 0)
        if limit > 0:
            fractions.append(min(1.0, held / limit))
        elif held > 0:
            fractions.append(1.0)
    return sum(fractions) / len(fractions) if fractions else 0.0


# --- surveys -----------------------------------------------------------------------------------


def csat(tally: Tally) -> Rate:
    return rate(
        tally["csat_satisfied"], tally["csat_responses"], "responses 4–5 / all responses (1–5)"
    )


def nps(tally: Tally) -> Rate:
    """% promoters − % detractors, as a fraction (-1.0 … 1.0); numerator = promoters −
    detractors."""
    return rate(
        tally["nps_promoters"] - tally["nps_detractors"],
        tally["nps_responses"],
        "(promoters 9–10 − detractors 0–6) / responses (0–10)",
    )


def ces(tally: Tally) -> Rate:
    """Mean effort on the 1–7 scale (reported as a Rate: total / responses)."""
    return rate(tally["ces_total"], tally["ces_responses"], "mean of 1–7 effort answers")


# --- issues: FCR, resolution, reopen ----------------------------------------------------------


class IssueFacts(msgspec.Struct, frozen=True, kw_only=True):
    """What FCR needs to know about one issue (a case, or an interaction outside any case).

    `agent_contacts`: interactions of the issue an agent answered up to its first resolution;
    `agents`: the agents of that contact (more than one after a transfer to another agent);
    `reopened_ms`: its first reopening; `repeat_at_ms`: the first contact of the same customer
    on the same reason after the first resolution (None: none yet). What happens after the
    window has closed no longer changes the issue's FCR: it is final then."""

    created_ms: int
    first_resolved_ms: int | None
    resolved_ms: int | None
    agent_contacts: int
    agents: int
    reopened_ms: int | None
    repeat_at_ms: int | None


class FcrStatus(enum.StrEnum):
    NOT_RESOLVED = "not_resolved"
    #: resolved, no failure known, window still open
    PROVISIONAL = "provisional"
    #: window closed without failure
    ACHIEVED = "achieved"
    #: not exactly one agent contact, or a reopen or a repeat contact inside the window
    FAILED = "failed"


def fcr_status(issue: IssueFacts, *, as_of_ms: int, window_ms: int) -> FcrStatus:
    if issue.first_resolved_ms is None:
        return FcrStatus.NOT_RESOLVED
    window_end = issue.first_resolved_ms + window_ms
    repeated = issue.repeat_at_ms is not None and issue.repeat_at_ms <= window_end
    reopened = issue.reopened_ms is not None and issue.reopened_ms <= window_end
    if issue.agent_contacts != 1 or issue.agents > 1 or reopened or repeated:
        return FcrStatus.FAILED
    return FcrStatus.ACHIEVED if as_of_ms >= window_end else FcrStatus.PROVISIONAL


class FcrCounts(msgspec.Struct, kw_only=True):
    resolved: int = 0
    achieved: int = 0
    provisional: int = 0
    failed: int = 0
    #: failed issues whose window has closed too (the final rate's denominator needs them)
    failed_final: int = 0


def fcr_rates(counts: FcrCounts, window_days: int) -> tuple[Rate, Rate]:
    """(final, provisional) FCR. Final: over resolved issues whose N-day window has closed;
    provisional: over every resolved issue, counting open windows without failure as FCR."""
    final = rate(
        counts.achieved,
        counts.achieved + counts.failed_final,
        f"issues resolved with one agent contact, not reopened, no repeat contact on the same "
        f"reason within {window_days} days / resolved issues whose {window_days}-day window "
        "has closed",
    )
    provisional = rate(
        counts.achieved + counts.provisional,
        counts.resolved,
        f"as final, counting issues whose {window_days}-day window is still open and has no "
        "failure yet as first-contact-resolved / all resolved issues",
    )
    return final, provisional


class ContainmentStatus(enum.StrEnum):
    NOT_CONTAINED = "not_contained"
    PROVISIONAL = "provisional"
    CONTAINED = "contained"


def containment_status(
    *,
    contained_ms: int | None,
    handed_off: bool,
    repeat_at_ms: int | None,
    as_of_ms: int,
    window_ms: int,
) -> ContainmentStatus:
    """A bot conversation is contained if the bot resolved it without a human and the customer
    made no other contact within the repeat window after it."""
    if contained_ms is None or handed_off:
        return ContainmentStatus.NOT_CONTAINED
    window_end = contained_ms + window_ms
    if repeat_at_ms is not None and repeat_at_ms <= window_end:
        return ContainmentStatus.NOT_CONTAINED
    if as_of_ms >= window_end:
        return ContainmentStatus.CONTAINED
    return ContainmentStatus.PROVISIONAL


class IssueTally(msgspec.Struct, kw_only=True):
    """Issues (cases, and interactions outside any case that an agent answered) of one row:
    created in the period, and first resolved in it with what FCR and SLA need."""

    created: int = 0
    fcr: FcrCounts = msgspec.field(default_factory=FcrCounts)
    reopened: int = 0
    resolved_within_target: int = 0
    first_resolution_ms: list[int] = msgspec.field(default_factory=list)
    full_resolution_ms: list[int] = msgspec.field(default_factory=list)

    def count(self, issue: IssueFacts, *, as_of_ms: int, window_ms: int, target_ms: int) -> None:
        """Counts an issue first resolved in the period."""
        status = fcr_status(issue, as_of_ms=as_of_ms, window_ms=window_ms)
        if status is FcrStatus.NOT_RESOLVED or issue.first_resolved_ms is None:
            return
        fcr = self.fcr
        fcr.resolved += 1
        if status is FcrStatus.ACHIEVED:
            fcr.achieved += 1
        elif status is FcrStatus.PROVISIONAL:
            fcr.provisional += 1
        else:
            fcr.failed += 1
            if as_of_ms >= issue.first_resolved_ms + window_ms:
                fcr.failed_final += 1
        if issue.reopened_ms is not None:
            self.reopened += 1
        first = max(0, issue.first_resolved_ms - issue.created_ms)
        self.first_resolution_ms.append(first)
        if first <= target_ms:
            self.resolved_within_target += 1
        if issue.resolved_ms is not None:
            self.full_resolution_ms.append(max(0, issue.resolved_ms - issue.created_ms))


class BotTally(msgspec.Struct, kw_only=True):
    """Bot conversations opened in the period and how many the bot contained."""

    conversations: int = 0
    contained: int = 0
    provisional: int = 0
    #: conversations whose repeat window has closed (the final rate's denominator)
    final: int = 0

    def count(self, status: ContainmentStatus, *, window_closed: bool) -> None:
        self.conversations += 1
        if status is ContainmentStatus.CONTAINED:
            self.contained += 1
        elif status is ContainmentStatus.PROVISIONAL:
            self.provisional += 1
        if window_closed:
            self.final += 1


class RepeatTally(msgspec.Struct, kw_only=True):
    """Contacts of identified customers with a known reason, and how many were repeats."""

    contacts: int = 0
    repeats: int = 0


#: The SLA targets a case has (`crmcore.domain.sla.SlaMetric` values), in report order.
SLA_METRICS: tuple[str, ...] = ("first_response", "next_response", "resolution")


class SlaCounts(msgspec.Struct, kw_only=True):
    """SLA clocks of one metric decided in an interval: met (the target reached without a
    breach event) or breached (an `SlaBreached` event), and how many of them had an at-risk
    event first."""

    met: int = 0
    breached: int = 0
    at_risk: int = 0


class SlaAttainment(msgspec.Struct, frozen=True, kw_only=True):
    """SLA attainment of one metric (DOMAIN.md: % meeting each SLA target)."""

    met: int
    breached: int
    #: decided clocks (met or breached) that had an at-risk event first
    at_risk: int
    attainment: Rate


def sla_attainment(counts: SlaCounts, metric: str) -> SlaAttainment:
    """met / (met + breached) of one SLA metric. Deadlines are the interaction service's, in
    the business hours of the case's SLA policy (pauses while pending on the customer); a clock
    counts when it is met (in the interval it was met) or breached (in the interval of its
    deadline), never both: a breach recorded after the target was reached late wins."""
    label = metric.replace("_", " ")
    return SlaAttainment(
        met=counts.met,
        breached=counts.breached,
        at_risk=counts.at_risk,
        attainment=rate(
            counts.met,
            counts.met + counts.breached,
            f"{label} targets met without a breach / {label} targets met or breached "
            "(business hours of the SLA policies)",
        ),
    )


class KpiValues(msgspec.Struct, frozen=True, kw_only=True):
    """Every KPI of DOMAIN.md for one interval and group (see `kpi_values`)."""

    created: int
    offered: int
    answered: int
    abandoned: int
    short_abandons: int
    handled: int
    transferred_out: int
    escalated: int
    service_level: Rate
    answer_rate: Rate
    abandonment_rate: Rate
    asa: DurationStats
    abandon_wait: DurationStats
    first_response: DurationStats
    aht: DurationStats
    mean_talk_s: float | None
    mean_hold_s: float | None
    mean_acw_s: float | None
    transfer_rate: Rate
    escalation_rate: Rate
    issues_created: int
    issues_resolved: int
    fcr: Rate
    fcr_provisional: Rate
    fcr_pending: int
    resolution_rate: Rate
    reopen_rate: Rate
    first_resolution: DurationStats
    full_resolution: DurationStats
    bot_conversations: int
    bot_containment: Rate
    bot_containment_provisional: Rate
    csat: Rate
    nps: Rate
    ces: Rate
    occupancy: Rate
    weighted_occupancy: Rate
    logged_in_hours: float
    handled_per_logged_in_hour: Rate
    handled_per_agent_day: Rate
    #: SLA attainment from the SLA events (business hours; `sla_attainment`)
    sla_first_response: SlaAttainment
    sla_next_response: SlaAttainment
    sla_resolution: SlaAttainment
    #: calendar-time shares against the policy's `*_target_s` (not the SLA)
    first_response_within_calendar_target: Rate
    resolution_within_calendar_target: Rate
    repeat_contact_rate: Rate


def kpi_values(
    tally: Tally,
    *,
    issues: IssueTally,
    bots: BotTally,
    repeats: RepeatTally,
    agent_days: int,
    policy: KpiPolicy,
    sla: Mapping[str, SlaCounts] | None = None,
) -> KpiValues:
    """The KPIs of one interval and group from what was counted (DOMAIN.md, "KPIs");
    `sla`: the SLA clocks decided, by metric (`SLA_METRICS`)."""
    sla = sla or {}
    sl_policy = policy.service_level
    outcomes = queue_outcomes(tally, sl_policy)
    histograms = tally.histograms
    handled = tally["handled"]
    logged_in_hours = tally["logged_in_ms"] / 3_600_000
    first_response_target = policy.first_response_target_s * MS_PER_S
    fcr_final, fcr_provisional = fcr_rates(issues.fcr, policy.fcr_window_days)
    window_h = policy.bot_repeat_window_hours
    return KpiValues(
        created=tally["created"],
        offered=outcomes.offered,
        answered=outcomes.answered,
        abandoned=outcomes.abandoned,
        short_abandons=outcomes.short_abandons,
        handled=handled,
        transferred_out=tally["transferred_out"],
        escalated=tally["escalated"],
        service_level=service_level(outcomes, sl_policy),
        answer_rate=answer_rate(outcomes, sl_policy),
        abandonment_rate=abandonment_rate(outcomes, sl_policy),
        asa=duration_stats(tally["answered"], tally["answer_wait_ms"], histograms["answer_wait"]),
        abandon_wait=duration_stats(
            tally["abandoned"], tally["abandon_wait_ms"], histograms["abandon_wait"]
        ),
        first_response=duration_stats(
            tally["first_responses"], tally["first_response_ms"], histograms["first_response"]
        ),
        aht=duration_stats(handled, tally["handle_ms"], histograms["handle"]),
        mean_talk_s=tally["talk_ms"] / handled / MS_PER_S if handled else None,
        mean_hold_s=tally["hold_ms"] / handled / MS_PER_S if handled else None,
        mean_acw_s=tally["acw_ms"] / handled / MS_PER_S if handled else None,
        transfer_rate=rate(
            tally["transferred_out"], handled, "agent segments ending in a transfer / handled"
        ),
        escalation_rate=rate(
            tally["escalated"], handled, "agent segments with an escalation / handled"
        ),
        issues_created=issues.created,
        issues_resolved=issues.fcr.resolved,
        fcr=fcr_final,
        fcr_provisional=fcr_provisional,
        fcr_pending=issues.fcr.provisional,
        resolution_rate=rate(
            issues.fcr.resolved,
            issues.created,
            "issues first resolved in the period / issues created in the period (an issue is "
            "a case, or an answered interaction outside any case)",
        ),
        reopen_rate=rate(
            issues.reopened, issues.fcr.resolved, "resolved issues reopened since / resolved"
        ),
        first_resolution=exact_duration_stats(issues.first_resolution_ms),
        full_resolution=exact_duration_stats(issues.full_resolution_ms),
        bot_conversations=bots.conversations,
        bot_containment=rate(
            bots.contained,
            bots.final,
            f"bot conversations resolved without a human and no other contact of the customer "
            f"within {window_h} h / bot conversations whose {window_h}-h window has closed",
        ),
        bot_containment_provisional=rate(
            bots.contained + bots.provisional,
            bots.conversations,
            f"as bot containment, counting conversations whose {window_h}-h window is still "
            "open as contained / all bot conversations",
        ),
        csat=csat(tally),
        nps=nps(tally),
        ces=ces(tally),
        occupancy=occupancy(tally),
        weighted_occupancy=weighted_occupancy(tally),
        logged_in_hours=logged_in_hours,
        handled_per_logged_in_hour=rate(
            handled, logged_in_hours, "handled / hours logged in (not offline)"
        ),
        handled_per_agent_day=rate(
            handled, agent_days, "handled / agent-days with time logged in or work handled"
        ),
        sla_first_response=sla_attainment(sla.get("first_response", SlaCounts()), "first_response"),
        sla_next_response=sla_attainment(sla.get("next_response", SlaCounts()), "next_response"),
        sla_resolution=sla_attainment(sla.get("resolution", SlaCounts()), "resolution"),
        first_response_within_calendar_target=rate(
            histograms["first_response"].count_at_most(first_response_target),
            tally["first_responses"],
            f"first public agent reply within {policy.first_response_target_s} s of creation "
            "(calendar time) / first replies",
        ),
        resolution_within_calendar_target=rate(
            issues.resolved_within_target,
            issues.fcr.resolved,
            f"issues first resolved within {policy.resolution_target_s} s of creation "
            "(calendar time) / resolved issues",
        ),
        repeat_contact_rate=rate(
            repeats.repeats,
            repeats.contacts,
            f"contacts whose customer contacted on the same reason in the {policy.fcr_window_days} "
            "days before / contacts of identified customers with a reason",
        ),
    )


def _value(read: Callable[[KpiValues], Rate]) -> Callable[[KpiValues], float | None]:
    return lambda values: read(values).value


#: The KPIs a target can follow, and how to read each from a row of values (rates as
#: fractions, durations in seconds).
KPI_READERS: Mapping[str, Callable[[KpiValues], float | None]] = {
    "service_level": _value(lambda v: v.service_level),
    "answer_rate": _value(lambda v: v.answer_rate),
    "abandonment_rate": _value(lambda v: v.abandonment_rate),
    "asa_seconds": lambda v: v.asa.mean_s,
    "aht_seconds": lambda v: v.aht.mean_s,
    "first_response_median_seconds": lambda v: v.first_response.median_s,
    "first_resolution_median_seconds": lambda v: v.first_resolution.median_s,
    "fcr": _value(lambda v: v.fcr),
    "fcr_provisional": _value(lambda v: v.fcr_provisional),
    "resolution_rate": _value(lambda v: v.resolution_rate),
    "reopen_rate": _value(lambda v: v.reopen_rate),
    "transfer_rate": _value(lambda v: v.transfer_rate),
    "escalation_rate": _value(lambda v: v.escalation_rate),
    "bot_containment": _value(lambda v: v.bot_containment),
    "csat": _value(lambda v: v.csat),
    "nps": _value(lambda v: v.nps),
    "ces": _value(lambda v: v.ces),
    "occupancy": _value(lambda v: v.occupancy),
    "weighted_occupancy": _value(lambda v: v.weighted_occupancy),
    "first_response_sla": _value(lambda v: v.sla_first_response.attainment),
    "next_response_sla": _value(lambda v: v.sla_next_response.attainment),
    "resolution_sla": _value(lambda v: v.sla_resolution.attainment),
    "first_response_within_calendar_target": _value(
        lambda v: v.first_response_within_calendar_target
    ),
    "resolution_within_calendar_target": _value(lambda v: v.resolution_within_calendar_target),
    "repeat_contact_rate": _value(lambda v: v.repeat_contact_rate),
}


class RetentionValues(msgspec.Struct, frozen=True, kw_only=True):
    """Customers active at the period's start still active at its end."""

    active_at_start: int
    retained: int
    retention: Rate
    churn: Rate


def retention_values(active_at_start: int, retained: int) -> RetentionValues:
    return RetentionValues(
        active_at_start=active_at_start,
        retained=retained,
        retention=rate(
            retained,
            active_at_start,
            "customers active at the start still active at the end / active at the start "
            "(merged duplicates left out)",
        ),
        churn=rate(active_at_start - retained, active_at_start, "1 − retention"),
    )


# --- staffing: Erlang C --------------------------------------------------------------------

ERLANG_C_NOTE = (
    "Erlang C assumes every caller waits until answered: it ignores abandonment (and "
    "retrials), so it over-staffs when customers hang up."
)


def erlang_b(agents: int, traffic: float) -> float:
    """Blocking probability B(N, A), by the stable recursion B(k) = A·B(k−1) / (k + A·B(k−1))."""
    blocking = 1.0
    for k in range(1, agents + 1):
        blocking = traffic * blocking / (k + traffic * blocking)
    return blocking


def erlang_c(agents: int, traffic: float, *, blocking: float | None = None) -> float:
    """P(wait) = C(N, A) = N·B / (N − A·(1 − B)); 1 when N ≤ A (the queue grows for ever).

    `blocking` is B(N, A) when the caller has it already (see `staffing`)."""
    if traffic <= 0:
        return 0.0
    if agents <= traffic:
        return 1.0
    if blocking is None:
        blocking = erlang_b(agents, traffic)
    return agents * blocking / (agents - traffic * (1 - blocking))


def erlang_service_level(
    agents: int,
    traffic: float,
    handle_s: float,
    threshold_s: float,
    *,
    blocking: float | None = None,
) -> float:
    """SL(t) = 1 − C·e^(−(N − A)·t / h); `blocking` as for `erlang_c`."""
    if traffic <= 0:
        return 1.0
    if agents <= traffic:
        return 0.0
    waiting = erlang_c(agents, traffic, blocking=blocking)
    return 1 - waiting * math.exp(-(agents - traffic) * threshold_s / handle_s)


def erlang_asa(agents: int, traffic: float, handle_s: float) -> float:
    """ASA = C·h / (N − A); infinite when N ≤ A."""
    if traffic <= 0:
        return 0.0
    if agents <= traffic:
        return math.inf
    return erlang_c(agents, traffic) * handle_s / (agents - traffic)


class StaffingResult(msgspec.Struct, frozen=True, kw_only=True):
    """Agents needed for one interval, and what Erlang C predicts with them."""

    contacts: float
    interval_s: float
    handle_s: float
    traffic_erlangs: float
    agents: int
    scheduled: int
    service_level: float
    probability_wait: float
    asa_s: float
    occupancy: float


MAX_AGENTS = 100_000


def staffing(
    *,
    contacts: float,
    interval_s: float,
    handle_s: float,
    target_fraction: float,
    threshold_s: float,
    shrinkage: float = 0.0,
    max_occupancy: float = 1.0,
) -> StaffingResult:
    """The fewest agents N whose Erlang C service level reaches `target_fraction` within
    `threshold_s` (and whose occupancy A/N stays at or under `max_occupancy`), and the people
    to schedule for them: ⌈N / (1 − shrinkage)⌉.

    A = λ·h with λ = contacts / interval. Erlang C ignores abandonment (`ERLANG_C_NOTE`)."""
    # NaN passes every comparison below and infinity never ends the search: refuse both.
    for name, value in (
        ("contacts", contacts),
        ("interval", interval_s),
        ("handle_seconds", handle_s),
    ):
        if not math.isfinite(value):
            raise InvalidValue(name, "must be a finite number")
    if contacts < 0:
        raise InvalidValue("contacts", "must not be negative")
    if interval_s <= 0:
        raise InvalidValue("interval", "must be positive")
    if handle_s <= 0:
        raise InvalidValue("handle_seconds", "must be positive")
    if not 0 < target_fraction < 1:
        raise InvalidValue("target.fraction", "must be between 0 and 1 (exclusive)")
    if threshold_s < 0:
        raise InvalidValue("target.threshold_seconds", "must not be negative")
    if not 0 <= shrinkage < 1:
        raise InvalidValue("shrinkage", "must be at least 0 and below 1")
    if not 0 < max_occupancy <= 1:
        raise InvalidValue("max_occupancy", "must be above 0 and at most 1")
    traffic = contacts / interval_s * handle_s
    if not traffic < MAX_AGENTS:  # more agents than traffic are needed: refuse before searching
        raise InvalidValue("contacts", f"needs more than {MAX_AGENTS} agents")
    # The search starts at the first N above A and at the occupancy cap, and carries B(N, A)
    # from one N to the next (B(N+1) = A·B / (N + 1 + A·B)) rather than recomputing it from
    # B(0) for each: the whole search costs O(N), not O(N²) (seconds of CPU for a large
    # forecast otherwise).
    agents = 0 if traffic <= 0 else max(math.floor(traffic) + 1, math.ceil(traffic / max_occupancy))
    if agents > MAX_AGENTS:  # checked before B(N, A) is computed: that takes N steps
        raise InvalidValue("contacts", f"needs more than {MAX_AGENTS} agents")
    blocking = erlang_b(agents, traffic)
    while traffic > 0:
        level = erlang_service_level(agents, traffic, handle_s, threshold_s, blocking=blocking)
        if level >= target_fraction and traffic / agents <= max_occupancy:
            break
        agents += 1
        if agents > MAX_AGENTS:
            raise InvalidValue("contacts", f"needs more than {MAX_AGENTS} agents")
        blocking = traffic * blocking / (agents + traffic * blocking)
    return StaffingResult(
        contacts=contacts,
        interval_s=interval_s,
        handle_s=handle_s,
        traffic_erlangs=traffic,
        agents=agents,
        scheduled=math.ceil(agents / (1 - shrinkage)) if agents else 0,
        service_level=erlang_service_level(
            agents, traffic, handle_s, threshold_s, blocking=blocking
        ),
        probability_wait=erlang_c(agents, traffic, blocking=blocking) if agents else 0.0,
        asa_s=erlang_asa(agents, traffic, handle_s) if agents else 0.0,
        occupancy=traffic / agents if agents else 0.0,
    )


# --- intervals and periods ------------------------------------------------------------------


class Interval(enum.StrEnum):
    """How a period is cut into rows."""

    MINUTES_15 = "15m"
    HOUR = "hour"
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    #: the whole period in one row
    PERIOD = "period"


class Calendar:
    """Local days, weeks (from Monday) and months in one time zone, on epoch milliseconds.

    Every time zone's offset is a multiple of 15 minutes, so a 15-minute interval is the
    same everywhere and the longer ones are unions of them."""

    def __init__(self, time_zone: str = "UTC") -> None:
        try:
            self.zone = ZoneInfo(time_zone)
        except (KeyError, ValueError) as error:
            raise InvalidValue("time_zone", f"unknown time zone {time_zone!r}") from error
        self.name = time_zone
        self._day_of_slot: dict[int, int] = {}

    def local(self, milliseconds: int) -> datetime:
        return datetime.fromtimestamp(milliseconds / MS_PER_S, tz=self.zone)

    def to_ms(self, moment: datetime) -> int:
        return round(moment.timestamp() * MS_PER_S)

    def day_start(self, milliseconds: int) -> int:
        """Start of the local day holding `milliseconds` (cached per 15-minute slot)."""
        slot = milliseconds // INTERVAL_MS
        start = self._day_of_slot.get(slot)
        if start is None:
            local = self.local(slot * INTERVAL_MS)
            midnight = datetime.combine(local.date(), datetime.min.time(), tzinfo=self.zone)
            start = self._day_of_slot[slot] = self.to_ms(midnight)
            if len(self._day_of_slot) > 500_000:
                self._day_of_slot.clear()
        return start

    def midnight(self, day: date) -> int:
        return self.to_ms(datetime.combine(day, datetime.min.time(), tzinfo=self.zone))

    def interval_start(self, milliseconds: int, interval: Interval) -> int:
        if interval is Interval.MINUTES_15:
            return milliseconds - milliseconds % INTERVAL_MS
        if interval is Interval.HOUR:
            local = self.local(milliseconds - milliseconds % INTERVAL_MS)
            return self.to_ms(local.replace(minute=0, second=0, microsecond=0))
        day = self.local(self.day_start(milliseconds)).date()
        if interval is Interval.DAY:
            return self.midnight(day)
        if interval is Interval.WEEK:
            return self.midnight(day - timedelta(days=day.weekday()))
        if interval is Interval.MONTH:
            return self.midnight(day.replace(day=1))
        raise ValueError(f"{interval} has no interval start")

    def is_day_aligned(self, milliseconds: int) -> bool:
        return self.day_start(milliseconds) == milliseconds


class NamedPeriod(enum.StrEnum):
    TODAY = "today"
    YESTERDAY = "yesterday"
    LAST_7_DAYS = "last_7_days"
    LAST_30_DAYS = "last_30_days"
    THIS_WEEK = "this_week"
    LAST_WEEK = "last_week"
    THIS_MONTH = "this_month"
    LAST_MONTH = "last_month"


def named_period(period: NamedPeriod, now_ms: int, calendar: Calendar) -> tuple[int, int]:
    """[start, end) in epoch milliseconds of a named period at `now_ms`, in local days; the
    periods that include today end at the end of today."""
    today = calendar.local(calendar.day_start(now_ms)).date()
    tomorrow = today + timedelta(days=1)
    first_of_month = today.replace(day=1)
    monday = today - timedelta(days=today.weekday())
    spans: dict[NamedPeriod, tuple[date, date]] = {
        NamedPeriod.TODAY: (today, tomorrow),
        NamedPeriod.YESTERDAY: (today - timedelta(days=1), today),
        NamedPeriod.LAST_7_DAYS: (today - timedelta(days=6), tomorrow),
        NamedPeriod.LAST_30_DAYS: (today - timedelta(days=29), tomorrow),
        NamedPeriod.THIS_WEEK: (monday, tomorrow),
        NamedPeriod.LAST_WEEK: (monday - timedelta(days=7), monday),
        NamedPeriod.THIS_MONTH: (first_of_month, tomorrow),
        NamedPeriod.LAST_MONTH: (
            (first_of_month - timedelta(days=1)).replace(day=1),
            first_of_month,
        ),
    }
    start, end = spans[period]
    return calendar.midnight(start), calendar.midnight(end)


def to_ms(moment: datetime) -> int:
    """Epoch milliseconds of an aware datetime (naive ones are taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round(moment.timestamp() * MS_PER_S)


def from_ms(milliseconds: int) -> datetime:
    return datetime.fromtimestamp(milliseconds / MS_PER_S, tz=UTC)


# --- targets -----------------------------------------------------------------------------


class TargetProgress(msgspec.Struct, frozen=True, kw_only=True):
    """Where a KPI stands against a target with a deadline ("FCR 75 % → 85 % by 1 October").

    `expected` is the value a straight line from baseline (at the start) to target (at the
    deadline) gives today; `progress` the share of the way from baseline to target covered
    (can be below 0 or above 1); `on_track` whether the measured value is at or beyond
    `expected` in the target's direction; `achieved` whether it is at or beyond the target."""

    current: float | None
    expected: float
    progress: float | None
    on_track: bool
    achieved: bool


def target_progress(
    *,
    baseline: float,
    target: float,
    start_ms: int,
    deadline_ms: int,
    now_ms: int,
    current: float | None,
) -> TargetProgress:
    span = max(1, deadline_ms - start_ms)
    elapsed = min(max(now_ms - start_ms, 0), span)
    expected = baseline + (target - baseline) * elapsed / span
    if current is None:
        return TargetProgress(
            current=None, expected=expected, progress=None, on_track=False, achieved=False
        )
    rising = target >= baseline
    progress = None if target == baseline else (current - baseline) / (target - baseline)
    on_track = current >= expected if rising else current <= expected
    achieved = current >= target if rising else current <= target
    return TargetProgress(
        current=current,
        expected=expected,
        progress=progress,
        on_track=on_track,
        achieved=achieved,
    )
