"""The MetricsService gRPC servicer: protobuf ⇄ crmcore.application.metrics, nothing else.

Every KPI definition lives in crmcore (`domain.kpis` and the metrics projection). This module
checks only what the protobuf form adds (unspecified or unknown enum numbers, periods, ids,
page tokens), fills the policy fields a request leaves unset with the service's defaults,
names fields as the request names them, and runs the blocking queries on the service's thread
pool. Domain errors pass through: the interceptor of crmcore.adapters.grpc maps them to codes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

import grpc
from google.protobuf import empty_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from crm.v1 import metrics_pb2, metrics_pb2_grpc
from crmcore.adapters.grpc.calls import BlockingCalls
from crmcore.application.metrics import (
    ChangeNotifier,
    Dimension,
    FeedStats,
    KpiQuery,
    KpiReport,
    KpiTarget,
    LiveState,
    MetricsProjection,
    StaffingRequest,
    TargetStatus,
    TopicCount,
)
from crmcore.domain import kpis
from crmcore.domain.errors import InvalidValue
from crmcore.domain.kpis import (
    AbandonTreatment,
    DurationStats,
    Interval,
    KpiPolicy,
    KpiValues,
    NamedPeriod,
    Rate,
    ServiceLevelPolicy,
)

if TYPE_CHECKING:  # the stubs make it generic; at run time it is not subscriptable
    Context = grpc.aio.ServicerContext[object, object]

K = TypeVar("K")
V = TypeVar("V")

TARGET_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:crm:metrics:kpi-target")
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MAX_REQUEST_ID_LENGTH = 128

_INTERVALS: dict[metrics_pb2.Interval.ValueType, Interval] = {
    metrics_pb2.INTERVAL_UNSPECIFIED: Interval.PERIOD,
    metrics_pb2.INTERVAL_15_MINUTES: Interval.MINUTES_15,
    metrics_pb2.INTERVAL_HOUR: Interval.HOUR,
    metrics_pb2.INTERVAL_DAY: Interval.DAY,
    metrics_pb2.INTERVAL_WEEK: Interval.WEEK,
    metrics_pb2.INTERVAL_MONTH: Interval.MONTH,
}
_DIMENSIONS: dict[metrics_pb2.Dimension.ValueType, Dimension] = {
    metrics_pb2.DIMENSION_CHANNEL: Dimension.CHANNEL,
    metrics_pb2.DIMENSION_QUEUE: Dimension.QUEUE,
    metrics_pb2.DIMENSION_TEAM: Dimension.TEAM,
    metrics_pb2.DIMENSION_AGENT: Dimension.AGENT,
    metrics_pb2.DIMENSION_CONTACT_REASON: Dimension.REASON,
}
_PERIODS: dict[metrics_pb2.NamedPeriod.ValueType, NamedPeriod] = {
    metrics_pb2.NAMED_PERIOD_TODAY: NamedPeriod.TODAY,
    metrics_pb2.NAMED_PERIOD_YESTERDAY: NamedPeriod.YESTERDAY,
    metrics_pb2.NAMED_PERIOD_LAST_7_DAYS: NamedPeriod.LAST_7_DAYS,
    metrics_pb2.NAMED_PERIOD_LAST_30_DAYS: NamedPeriod.LAST_30_DAYS,
    metrics_pb2.NAMED_PERIOD_THIS_WEEK: NamedPeriod.THIS_WEEK,
    metrics_pb2.NAMED_PERIOD_LAST_WEEK: NamedPeriod.LAST_WEEK,
    metrics_pb2.NAMED_PERIOD_THIS_MONTH: NamedPeriod.THIS_MONTH,
    metrics_pb2.NAMED_PERIOD_LAST_MONTH: NamedPeriod.LAST_MONTH,
}
_ABANDONS: dict[metrics_pb2.AbandonTreatment.ValueType, AbandonTreatment] = {
    metrics_pb2.ABANDON_TREATMENT_MISSED: AbandonTreatment.MISSED,
    metrics_pb2.ABANDON_TREATMENT_EXCLUDED: AbandonTreatment.EXCLUDED,
    metrics_pb2.ABANDON_TREATMENT_MET_WITHIN_THRESHOLD: AbandonTreatment.MET_WITHIN_THRESHOLD,
    metrics_pb2.ABANDON_TREATMENT_EXCLUDED_WITHIN_THRESHOLD: (
        AbandonTreatment.EXCLUDED_WITHIN_THRESHOLD
    ),
}
_TOPIC_KINDS = {
    "contact_reason": metrics_pb2.TOPIC_KIND_CONTACT_REASON,
    "feedback_topic": metrics_pb2.TOPIC_KIND_FEEDBACK_TOPIC,
}


def _inverse(mapping: Mapping[K, V]) -> dict[V, K]:
    return {value: key for key, value in mapping.items()}


_INTERVAL_NUMBERS = _inverse(_INTERVALS)
_DIMENSION_NUMBERS = _inverse(_DIMENSIONS)
_ABANDON_NUMBERS = _inverse(_ABANDONS)


def _now_ms() -> int:
    return kpis.to_ms(datetime.now(UTC))


# --- protobuf → crmcore -----------------------------------------------------------------------


def _member(number: K, members: Mapping[K, V], field: str) -> V:
    member = members.get(number)
    if member is None:
        reason = "must be set" if number == 0 else f"unknown value {number}"
        raise InvalidValue(field, reason)
    return member


#: Timestamp.seconds of 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z: the range a
#: google.protobuf.Timestamp may hold (and the service can echo back).
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799


#: The times a requested period may span (UTC): 1970-01-01 to 2200-01-01.
_PERIOD_MIN_MS, _PERIOD_MAX_MS = 0, 7_258_118_400_000


def _ms_of(stamp: Timestamp, field: str) -> int:
    if not (_MIN_SECONDS <= stamp.seconds <= _MAX_SECONDS and 0 <= stamp.nanos < 1_000_000_000):
        raise InvalidValue(field, "not a time between 0001-01-01 and 9999-12-31")
    return stamp.seconds * 1000 + stamp.nanos // 1_000_000


def period_ms(
    period: metrics_pb2.Period,
    projection: MetricsProjection,
    now_ms: int,
    field: str = "period",
    default: NamedPeriod = NamedPeriod.TODAY,
) -> tuple[int, int]:
    """[start, end) of a requested period (unset: `default`)."""
    kind = period.WhichOneof("kind")
    if kind == "range":
        if not period.range.HasField("start_time") or not period.range.HasField("end_time"):
            raise InvalidValue(f"{field}.range", "needs start_time and end_time")
        start = _ms_of(period.range.start_time, f"{field}.range.start_time")
        end = _ms_of(period.range.end_time, f"{field}.range.end_time")
        # Reports reach before and after a period (the previous one for trends, whole local
        # days): bounded so that those stay representable, and so are the answers.
        for name, moment in (("start_time", start), ("end_time", end)):
            if not _PERIOD_MIN_MS <= moment <= _PERIOD_MAX_MS:
                raise InvalidValue(
                    f"{field}.range.{name}", "must be between 1970-01-01 and 2200-01-01"
                )
        if end <= start:
            raise InvalidValue(f"{field}.range.end_time", "must be after start_time")
        return start, end
    named = default if kind is None else _member(period.named, _PERIODS, f"{field}.named")
    return kpis.named_period(named, now_ms, projection.calendar)


def filters_of(
    filters: Iterator[metrics_pb2.Filter] | list[metrics_pb2.Filter], field: str = "filters"
) -> dict[Dimension, tuple[str, ...]]:
    found: dict[Dimension, tuple[str, ...]] = {}
    for index, item in enumerate(filters):
        dimension = _member(item.dimension, _DIMENSIONS, f"{field}[{index}].dimension")
        if not item.values:
            raise InvalidValue(f"{field}[{index}].values", "name at least one value")
        found[dimension] = (*found.get(dimension, ()), *item.values)
    return found


def policy_of(message: metrics_pb2.KpiPolicy, default: KpiPolicy) -> KpiPolicy:
    """The request's policy: each field it sets, the service's default for the others."""
    level = message.service_level
    default_level = default.service_level
    service_level = ServiceLevelPolicy(
        threshold_s=(
            level.threshold_seconds
            if level.HasField("threshold_seconds")
            else default_level.threshold_s
        ),
        abandons=(
            _member(level.abandons, _ABANDONS, "policy.service_level.abandons")
            if level.abandons
            else default_level.abandons
        ),
        short_abandon_s=(
            level.short_abandon_seconds
            if level.HasField("short_abandon_seconds")
            else default_level.short_abandon_s
        ),
    )
    try:
        service_level.checked()
    except InvalidValue as error:
        raise InvalidValue(
            error.field.replace("service_level_policy.", "policy.service_level."), error.reason
        ) from None
    policy = KpiPolicy(
        service_level=service_level,
        fcr_window_days=(
            message.fcr_window_days
            if message.HasField("fcr_window_days")
            else default.fcr_window_days
        ),
        bot_repeat_window_hours=(
            message.bot_repeat_window_hours
            if message.HasField("bot_repeat_window_hours")
            else default.bot_repeat_window_hours
        ),
        first_response_target_s=(
            message.first_response_target_seconds
            if message.HasField("first_response_target_seconds")
            else default.first_response_target_s
        ),
        resolution_target_s=(
            message.resolution_target_seconds
            if message.HasField("resolution_target_seconds")
            else default.resolution_target_s
        ),
    )
    return policy.checked()


def kpi_query(
    request: metrics_pb2.GetKpisRequest, projection: MetricsProjection, now_ms: int
) -> KpiQuery:
    start, end = period_ms(request.period, projection, now_ms)
    group_by = tuple(
        _member(number, _DIMENSIONS, f"group_by[{index}]")
        for index, number in enumerate(request.group_by)
    )
    return KpiQuery(
        start_ms=start,
        end_ms=end,
        interval=_member(request.interval, _INTERVALS, "interval"),
        group_by=group_by,
        filters=filters_of(list(request.filters)),
        policy=policy_of(request.policy, projection.policy),
        as_of_ms=(
            _ms_of(request.as_of_time, "as_of_time") if request.HasField("as_of_time") else now_ms
        ),
    )


# --- crmcore → protobuf -----------------------------------------------------------------------


def _timestamp(milliseconds: int | None) -> Timestamp | None:
    if milliseconds is None:
        return None
    stamp = Timestamp()
    stamp.FromMilliseconds(milliseconds)
    return stamp


def rate_message(value: Rate) -> metrics_pb2.Rate:
    message = metrics_pb2.Rate(
        numerator=value.numerator, denominator=value.denominator, policy=value.policy
    )
    if value.value is not None:
        message.value = value.value
    return message


def duration_message(stats: DurationStats) -> metrics_pb2.DurationStats:
    message = metrics_pb2.DurationStats(count=stats.count)
    if stats.mean_s is not None:
        message.mean_seconds = stats.mean_s
    if stats.median_s is not None:
        message.median_seconds = stats.median_s
    if stats.p90_s is not None:
        message.p90_seconds = stats.p90_s
    return message


def sla_message(attainment: kpis.SlaAttainment) -> metrics_pb2.SlaAttainment:
    return metrics_pb2.SlaAttainment(
        met=attainment.met,
        breached=attainment.breached,
        at_risk=attainment.at_risk,
        attainment=rate_message(attainment.attainment),
    )


def kpis_message(values: KpiValues) -> metrics_pb2.Kpis:
    message = metrics_pb2.Kpis(
        created=values.created,
        offered=values.offered,
        answered=values.answered,
        abandoned=values.abandoned,
        short_abandons=values.short_abandons,
        handled=values.handled,
        transferred_out=values.transferred_out,
        escalated=values.escalated,
        service_level=rate_message(values.service_level),
        answer_rate=rate_message(values.answer_rate),
        abandonment_rate=rate_message(values.abandonment_rate),
        answer_wait=duration_message(values.asa),
        abandon_wait=duration_message(values.abandon_wait),
        first_response=duration_message(values.first_response),
        handle_time=duration_message(values.aht),
        transfer_rate=rate_message(values.transfer_rate),
        escalation_rate=rate_message(values.escalation_rate),
        issues_created=values.issues_created,
        issues_resolved=values.issues_resolved,
        fcr=rate_message(values.fcr),
        fcr_provisional=rate_message(values.fcr_provisional),
        fcr_pending=values.fcr_pending,
        resolution_rate=rate_message(values.resolution_rate),
        reopen_rate=rate_message(values.reopen_rate),
        first_resolution=duration_message(values.first_resolution),
        full_resolution=duration_message(values.full_resolution),
        bot_conversations=values.bot_conversations,
        bot_containment=rate_message(values.bot_containment),
        bot_containment_provisional=rate_message(values.bot_containment_provisional),
        csat=rate_message(values.csat),
        nps=rate_message(values.nps),
        ces=rate_message(values.ces),
        occupancy=rate_message(values.occupancy),
        weighted_occupancy=rate_message(values.weighted_occupancy),
        logged_in_hours=values.logged_in_hours,
        handled_per_logged_in_hour=rate_message(values.handled_per_logged_in_hour),
        handled_per_agent_day=rate_message(values.handled_per_agent_day),
        first_response_within_calendar_target=rate_message(
            values.first_response_within_calendar_target
        ),
        resolution_within_calendar_target=rate_message(values.resolution_within_calendar_target),
        repeat_contact_rate=rate_message(values.repeat_contact_rate),
        sla_first_response=sla_message(values.sla_first_response),
        sla_next_response=sla_message(values.sla_next_response),
        sla_resolution=sla_message(values.sla_resolution),
    )
    if values.mean_talk_s is not None:
        message.mean_talk_seconds = values.mean_talk_s
    if values.mean_hold_s is not None:
        message.mean_hold_seconds = values.mean_hold_s
    if values.mean_acw_s is not None:
        message.mean_after_contact_work_seconds = values.mean_acw_s
    return message


def policy_message(policy: KpiPolicy) -> metrics_pb2.KpiPolicy:
    level = policy.service_level
    return metrics_pb2.KpiPolicy(
        service_level=metrics_pb2.ServiceLevelPolicy(
            threshold_seconds=level.threshold_s,
            abandons=_ABANDON_NUMBERS[level.abandons],
            short_abandon_seconds=level.short_abandon_s,
        ),
        fcr_window_days=policy.fcr_window_days,
        bot_repeat_window_hours=policy.bot_repeat_window_hours,
        first_response_target_seconds=policy.first_response_target_s,
        resolution_target_seconds=policy.resolution_target_s,
    )


def report_message(report: KpiReport, time_zone: str) -> metrics_pb2.KpiReport:
    retention = report.retention
    return metrics_pb2.KpiReport(
        start_time=_timestamp(report.start_ms),
        end_time=_timestamp(report.end_ms),
        interval=_INTERVAL_NUMBERS[report.interval],
        group_by=[_DIMENSION_NUMBERS[dimension] for dimension in report.group_by],
        policy=policy_message(report.policy),
        as_of_time=_timestamp(report.as_of_ms),
        rows=[
            metrics_pb2.KpiRow(
                interval_start_time=_timestamp(row.interval_start_ms),
                interval_end_time=_timestamp(row.interval_end_ms),
                group=[
                    metrics_pb2.DimensionValue(dimension=_DIMENSION_NUMBERS[dimension], value=value)
                    for dimension, value in zip(report.group_by, row.group, strict=True)
                ],
                kpis=kpis_message(row.values),
            )
            for row in report.rows
        ],
        retention=metrics_pb2.Retention(
            active_at_start=retention.active_at_start,
            retained=retention.retained,
            retention=rate_message(retention.retention),
            churn=rate_message(retention.churn),
        ),
        stream_position=report.position,
        time_zone=time_zone,
    )


def live_message(live: LiveState, lag: int) -> metrics_pb2.LiveState:
    backlog = live.backlog
    return metrics_pb2.LiveState(
        as_of_time=_timestamp(live.as_of_ms),
        queues=[
            metrics_pb2.QueueNow(
                queue=queue.queue,
                waiting=queue.waiting,
                oldest_waiting_since_time=_timestamp(queue.oldest_waiting_since_ms),
                oldest_wait_seconds=queue.oldest_wait_s,
                service_level_today=rate_message(queue.service_level_today),
                offered_today=queue.offered_today,
                answered_today=queue.answered_today,
                abandoned_today=queue.abandoned_today,
            )
            for queue in live.queues
        ],
        agents_by_presence=live.agents_by_presence,
        teams=[
            metrics_pb2.TeamNow(
                team=team.team,
                agents_by_presence=team.by_presence,
                agents_with_work=team.with_work,
            )
            for team in live.teams
        ],
        backlog=metrics_pb2.Backlog(
            open_interactions=backlog.open_interactions,
            by_age=backlog.by_age,
            oldest_open_since_time=_timestamp(backlog.oldest_open_since_ms),
            open_cases=backlog.open_cases,
            oldest_open_case_since_time=_timestamp(backlog.oldest_open_case_since_ms),
        ),
        service_level_today=rate_message(live.service_level_today),
        stream_position=live.position,
        consumer_lag=lag,
    )


def _filter_messages(filters: Mapping[str, tuple[str, ...]]) -> list[metrics_pb2.Filter]:
    return [
        metrics_pb2.Filter(dimension=_DIMENSION_NUMBERS[Dimension(key)], values=list(values))
        for key, values in filters.items()
    ]


def target_message(status: TargetStatus) -> metrics_pb2.KpiTarget:
    target, progress = status.target, status.progress
    progress_message = metrics_pb2.TargetProgress(
        expected=progress.expected,
        on_track=progress.on_track,
        achieved=progress.achieved,
        measured_from_time=_timestamp(status.measured_from_ms),
        measured_to_time=_timestamp(status.measured_to_ms),
    )
    if progress.current is not None:
        progress_message.current = progress.current
    if progress.progress is not None:
        progress_message.progress = progress.progress
    return metrics_pb2.KpiTarget(
        id=target.id,
        kpi=target.kpi,
        baseline=target.baseline,
        target=target.target,
        start_time=_timestamp(target.start_ms),
        deadline_time=_timestamp(target.deadline_ms),
        window_days=target.window_days,
        filters=_filter_messages(target.filters),
        description=target.description,
        create_time=_timestamp(target.created_ms),
        progress=progress_message,
    )


# --- the servicer --------------------------------------------------------------------------------


class MetricsServicer(metrics_pb2_grpc.MetricsServiceServicer):
    def __init__(
        self,
        projection: MetricsProjection,
        calls: BlockingCalls,
        *,
        feed_stats: FeedStats | None = None,
    ) -> None:
        self.projection = projection
        self.calls = calls
        self.feed_stats = feed_stats

    def _lag(self) -> int:
        return self.feed_stats.lag if self.feed_stats is not None else 0

    # --- KPIs ---

    def _report(self, request: metrics_pb2.GetKpisRequest) -> metrics_pb2.KpiReport:
        query = kpi_query(request, self.projection, _now_ms())
        return report_message(self.projection.kpis(query), self.projection.calendar.name)

    async def GetKpis(
        self, request: metrics_pb2.GetKpisRequest, context: Context
    ) -> metrics_pb2.KpiReport:
        return await self.calls(self._report, request)

    def _live(self) -> metrics_pb2.LiveState:
        return live_message(self.projection.live(_now_ms()), self._lag())

    async def GetLiveState(
        self, request: metrics_pb2.GetLiveStateRequest, context: Context
    ) -> metrics_pb2.LiveState:
        return await self.calls(self._live)

    def _update(self, request: metrics_pb2.GetKpisRequest) -> metrics_pb2.KpiUpdate:
        return metrics_pb2.KpiUpdate(live=self._live(), report=self._report(request))

    async def StreamKpis(
        self, request: metrics_pb2.StreamKpisRequest, context: Context
    ) -> AsyncIterator[metrics_pb2.KpiUpdate]:
        kpis_request = request.kpis if request.HasField("kpis") else metrics_pb2.GetKpisRequest()
        if request.min_interval_seconds < 0 or request.heartbeat_seconds < 0:
            raise InvalidValue("min_interval_seconds", "must not be negative")
        min_interval = max(0.1, request.min_interval_seconds or 1.0)
        heartbeat = max(min_interval, request.heartbeat_seconds or 15.0)
        # Checks the request once up front, so a bad one fails before the first update.
        try:
            kpi_query(kpis_request, self.projection, _now_ms())
        except InvalidValue as error:  # named as the field of this request
            raise InvalidValue(f"kpis.{error.field}", error.reason) from None
        notifier = ChangeNotifier(self.projection)
        try:
            while True:
                yield await self.calls(self._update, kpis_request)
                await asyncio.sleep(min_interval)
                await notifier.wait(heartbeat)
        finally:
            notifier.close()

    # --- staffing, reasons, export ---

    def _staffing(self, request: metrics_pb2.GetStaffingRequest) -> metrics_pb2.StaffingPlan:
        now = _now_ms()
        forecast = request.forecast if request.HasField("forecast") else None
        interval = _member(request.interval, _INTERVALS, "interval")
        if interval is Interval.PERIOD:
            interval = Interval.MINUTES_15
        start, end = (0, 0) if forecast else period_ms(request.period, self.projection, now)
        report = self.projection.staffing(
            StaffingRequest(
                start_ms=start,
                end_ms=end,
                interval=interval,
                filters=filters_of(list(request.filters)),
                target_fraction=(
                    request.target_fraction if request.HasField("target_fraction") else 0.8
                ),
                threshold_s=(
                    request.threshold_seconds if request.HasField("threshold_seconds") else 20.0
                ),
                shrinkage=request.shrinkage,
                max_occupancy=(request.max_occupancy if request.HasField("max_occupancy") else 1.0),
                contacts=forecast.contacts if forecast else None,
                interval_s=forecast.interval_seconds if forecast else None,
                handle_s=(
                    forecast.handle_seconds
                    if forecast
                    else (request.handle_seconds if request.HasField("handle_seconds") else None)
                ),
            )
        )
        return metrics_pb2.StaffingPlan(
            intervals=[
                metrics_pb2.StaffingInterval(
                    interval_start_time=_timestamp(row.interval_start_ms),
                    contacts=row.result.contacts,
                    interval_seconds=row.result.interval_s,
                    handle_seconds=row.result.handle_s,
                    traffic_erlangs=row.result.traffic_erlangs,
                    agents=row.result.agents,
                    scheduled=row.result.scheduled,
                    service_level=row.result.service_level,
                    probability_wait=row.result.probability_wait,
                    asa_seconds=row.result.asa_s,
                    occupancy=row.result.occupancy,
                )
                for row in report.rows
            ],
            handle_seconds=report.handle_s,
            peak_agents=report.peak_agents,
            peak_scheduled=report.peak_scheduled,
            note=report.note,
        )

    async def GetStaffing(
        self, request: metrics_pb2.GetStaffingRequest, context: Context
    ) -> metrics_pb2.StaffingPlan:
        try:
            return await self.calls(self._staffing, request)
        except InvalidValue as error:  # the Erlang C model's names → this request's fields
            forecast = request.HasField("forecast")
            field = {
                "contacts": "forecast.contacts",
                "interval": "forecast.interval_seconds" if forecast else "interval",
                "handle_seconds": "forecast.handle_seconds" if forecast else "handle_seconds",
                "target.fraction": "target_fraction",
                "target.threshold_seconds": "threshold_seconds",
            }.get(error.field, error.field)
            raise InvalidValue(field, error.reason) from None

    def _reasons(
        self, request: metrics_pb2.GetContactReasonsRequest
    ) -> metrics_pb2.ContactReasonReport:
        if request.limit < 0 or request.min_count < 0:
            raise InvalidValue("limit", "must not be negative")
        start, end = period_ms(
            request.period, self.projection, _now_ms(), default=NamedPeriod.LAST_7_DAYS
        )
        report = self.projection.contact_reasons(
            start,
            end,
            limit=min(request.limit or 20, 200),
            min_count=request.min_count or 3,
        )

        def topic(count: TopicCount) -> metrics_pb2.TopicCount:
            return metrics_pb2.TopicCount(
                kind=_TOPIC_KINDS[count.kind],
                name=count.name,
                count=count.count,
                previous_count=count.previous_count,
                share=count.share,
                rise_score=count.rise_score,
            )

        return metrics_pb2.ContactReasonReport(
            start_time=_timestamp(report.start_ms),
            end_time=_timestamp(report.end_ms),
            previous_start_time=_timestamp(report.previous_start_ms),
            top_contact_reasons=[topic(count) for count in report.top_contact_reasons],
            rising=[topic(count) for count in report.rising],
        )

    async def GetContactReasons(
        self, request: metrics_pb2.GetContactReasonsRequest, context: Context
    ) -> metrics_pb2.ContactReasonReport:
        return await self.calls(self._reasons, request)

    async def ExportInteractions(
        self, request: metrics_pb2.ExportInteractionsRequest, context: Context
    ) -> AsyncIterator[metrics_pb2.ExportChunk]:
        start, end = period_ms(request.period, self.projection, _now_ms())
        chunks = self.projection.export_interactions(start, end, filters_of(list(request.filters)))
        while True:
            chunk = await self.calls(next, chunks, None)
            if chunk is None:
                return
            yield metrics_pb2.ExportChunk(data=chunk.encode())

    # --- targets ---

    def _target_status(self, target: KpiTarget) -> metrics_pb2.KpiTarget:
        return target_message(self.projection.target_status(target))

    def _create_target(self, request: metrics_pb2.CreateKpiTargetRequest) -> metrics_pb2.KpiTarget:
        given = request.kpi_target
        if not given.HasField("start_time") or not given.HasField("deadline_time"):
            raise InvalidValue(
                "kpi_target.deadline_time", "start_time and deadline_time are needed"
            )
        request_id = request.request_id.strip()
        if len(request_id) > MAX_REQUEST_ID_LENGTH:
            raise InvalidValue("request_id", f"longer than {MAX_REQUEST_ID_LENGTH} characters")
        filters = filters_of(list(given.filters), "kpi_target.filters")
        try:
            target = self.projection.create_target(
                KpiTarget(
                    id=str(uuid.uuid5(TARGET_NAMESPACE, request_id)) if request_id else "",
                    kpi=given.kpi,
                    baseline=given.baseline,
                    target=given.target,
                    start_ms=_ms_of(given.start_time, "target.start_time"),
                    deadline_ms=_ms_of(given.deadline_time, "target.deadline_time"),
                    window_days=given.window_days or 28,
                    filters={str(key): values for key, values in filters.items()},
                    description=given.description,
                )
            )
        except InvalidValue as error:
            raise InvalidValue(
                error.field.replace("target.", "kpi_target.", 1), error.reason
            ) from None
        return self._target_status(target)

    async def CreateKpiTarget(
        self, request: metrics_pb2.CreateKpiTargetRequest, context: Context
    ) -> metrics_pb2.KpiTarget:
        return await self.calls(self._create_target, request)

    def _get_target(self, target_id: str) -> metrics_pb2.KpiTarget:
        return self._target_status(self.projection.target(_target_id(target_id)))

    async def GetKpiTarget(
        self, request: metrics_pb2.GetKpiTargetRequest, context: Context
    ) -> metrics_pb2.KpiTarget:
        return await self.calls(self._get_target, request.id)

    def _list_targets(
        self, request: metrics_pb2.ListKpiTargetsRequest
    ) -> metrics_pb2.ListKpiTargetsResponse:
        if request.page_size < 0:
            raise InvalidValue("page_size", "must not be negative")
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        token = request.page_token
        if token and not (token.isascii() and token.isdigit() and len(token) < 10):
            raise InvalidValue("page_token", "not a page token this service issued")
        offset = int(token) if token else 0
        targets = self.projection.targets()
        page = targets[offset : offset + size]
        following = offset + size
        return metrics_pb2.ListKpiTargetsResponse(
            kpi_targets=[self._target_status(target) for target in page],
            next_page_token=str(following) if following < len(targets) else "",
        )

    async def ListKpiTargets(
        self, request: metrics_pb2.ListKpiTargetsRequest, context: Context
    ) -> metrics_pb2.ListKpiTargetsResponse:
        return await self.calls(self._list_targets, request)

    async def DeleteKpiTarget(
        self, request: metrics_pb2.DeleteKpiTargetRequest, context: Context
    ) -> empty_pb2.Empty:
        await self.calls(self.projection.delete_target, _target_id(request.id))
        return empty_pb2.Empty()


def _target_id(text: str) -> str:
    if not text:
        raise InvalidValue("id", "must be set")
    try:
        parsed = uuid.UUID(text)
    except ValueError:
        parsed = None
    if parsed is None or str(parsed) != text.lower():
        raise InvalidValue("id", "not a target id (a UUID)")
    return str(parsed)
