"""The InteractionService gRPC servicer: protobuf ⇄ domain, nothing else.

Every rule lives in crmcore (the interaction application, its views and SLA clocks). This
module checks only what the protobuf form adds (ids that are not UUIDs, unspecified or unknown
enum numbers), names fields as the request names them, and runs the blocking application calls
on the service's thread pool. Domain errors pass through: the interceptor of
crmcore.adapters.grpc maps them to status codes.

`LiveEvents` feeds StreamInteractionEvents: one task follows the application's notification
log (only while someone streams; woken at once after every command of this servicer, and
polling for what other writers store: the routing consumer, the SLA scheduler, another
instance) and hands each interaction event to the streams of that interaction. Following the
log rather than the bus keeps the stream working without NATS and without the relay's delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, TypeVar, cast
from uuid import UUID

import grpc
from google.protobuf.duration_pb2 import Duration

from crm.v1 import common_pb2, interaction_pb2, interaction_pb2_grpc
from crmcore.adapters.envelope import event_type
from crmcore.adapters.grpc.calls import BlockingCalls
from crmcore.adapters.grpc.convert import (
    enum_member,
    enum_numbers,
    numbers_of,
    parse_optional_uuid,
    parse_uuid,
    renamed_fields,
    required_member,
    timestamp_message,
)
from crmcore.application.interaction_views import InteractionViews
from crmcore.application.interactions import InteractionApplication, survey_feedback_id
from crmcore.application.sla_scheduler import ClockView, SlaClocks
from crmcore.domain.case import DEFAULT_REOPEN_WINDOW, Case, CasePriority, CaseStatus
from crmcore.domain.errors import InvalidValue, NotFound, Unavailable
from crmcore.domain.feedback import (
    Feedback,
    FeedbackCategory,
    FeedbackSource,
    Sentiment,
    Setter,
    SurveyKind,
    SurveyResponse,
)
from crmcore.domain.interaction import (
    FINAL_STATUSES,
    AuthorKind,
    DeclineReason,
    Escalation,
    Interaction,
    InteractionEvent,
    InteractionStatus,
    RoutingRequirements,
    SkillRequirement,
    TranscriptEntry,
)
from crmcore.domain.sla import ClockState, SlaMetric
from crmcore.domain.values import Channel, Direction

log = logging.getLogger(__name__)

E = TypeVar("E", bound=enum.Enum)
T = TypeVar("T")

if TYPE_CHECKING:  # the stubs make it generic; at run time it is not subscriptable
    Context = grpc.aio.ServicerContext[object, object]

pb = interaction_pb2


_CHANNELS = enum_numbers(Channel, common_pb2.Channel.Value, "CHANNEL_")
_DIRECTIONS = enum_numbers(Direction, common_pb2.Direction.Value, "DIRECTION_")
_STATUSES = enum_numbers(InteractionStatus, pb.InteractionStatus.Value, "INTERACTION_STATUS_")
_AUTHORS = enum_numbers(AuthorKind, pb.AuthorKind.Value, "AUTHOR_KIND_")
_DECLINES = enum_numbers(DeclineReason, pb.DeclineReason.Value, "DECLINE_REASON_")
_CASE_STATUSES = enum_numbers(CaseStatus, pb.CaseStatus.Value, "CASE_STATUS_")
_PRIORITIES = enum_numbers(CasePriority, pb.CasePriority.Value, "CASE_PRIORITY_")
_SURVEY_KINDS = enum_numbers(SurveyKind, pb.SurveyKind.Value, "SURVEY_KIND_")
_SOURCES = enum_numbers(FeedbackSource, pb.FeedbackSource.Value, "FEEDBACK_SOURCE_")
_CATEGORIES = enum_numbers(FeedbackCategory, pb.FeedbackCategory.Value, "FEEDBACK_CATEGORY_")
_SENTIMENTS = enum_numbers(Sentiment, pb.Sentiment.Value, "SENTIMENT_")
_SETTERS = enum_numbers(Setter, pb.Setter.Value, "SETTER_")
_METRICS = enum_numbers(SlaMetric, pb.SlaMetric.Value, "SLA_METRIC_")
_CLOCK_STATES = enum_numbers(ClockState, pb.SlaClockState.Value, "SLA_CLOCK_STATE_")
_VIEWS = {pb.INTERACTION_VIEW_BASIC: False, pb.INTERACTION_VIEW_FULL: True}


_CHANNEL_NUMBERS = cast(dict[Channel, common_pb2.Channel.ValueType], numbers_of(_CHANNELS))
_DIRECTION_NUMBERS = cast(dict[Direction, common_pb2.Direction.ValueType], numbers_of(_DIRECTIONS))
_STATUS_NUMBERS = cast(
    dict[InteractionStatus, pb.InteractionStatus.ValueType], numbers_of(_STATUSES)
)
_AUTHOR_NUMBERS = cast(dict[AuthorKind, pb.AuthorKind.ValueType], numbers_of(_AUTHORS))
_CASE_STATUS_NUMBERS = cast(dict[CaseStatus, pb.CaseStatus.ValueType], numbers_of(_CASE_STATUSES))
_PRIORITY_NUMBERS = cast(dict[CasePriority, pb.CasePriority.ValueType], numbers_of(_PRIORITIES))
_SURVEY_NUMBERS = cast(dict[SurveyKind, pb.SurveyKind.ValueType], numbers_of(_SURVEY_KINDS))
_SOURCE_NUMBERS = cast(dict[FeedbackSource, pb.FeedbackSource.ValueType], numbers_of(_SOURCES))
_CATEGORY_NUMBERS = cast(
    dict[FeedbackCategory, pb.FeedbackCategory.ValueType], numbers_of(_CATEGORIES)
)
_SENTIMENT_NUMBERS = cast(dict[Sentiment, pb.Sentiment.ValueType], numbers_of(_SENTIMENTS))
_SETTER_NUMBERS = cast(dict[Setter, pb.Setter.ValueType], numbers_of(_SETTERS))
_METRIC_NUMBERS = cast(dict[SlaMetric, pb.SlaMetric.ValueType], numbers_of(_METRICS))
_CLOCK_STATE_NUMBERS = cast(dict[ClockState, pb.SlaClockState.ValueType], numbers_of(_CLOCK_STATES))


# --- protobuf → domain ----------------------------------------------------------------------


def _optional_text(text: str) -> str | None:
    return text if text else None


def _requirements(
    given: interaction_pb2.QueueRequirements, field: str = "requirements"
) -> RoutingRequirements:
    """The requirements as the domain takes them (it checks skills, levels and language)."""
    return RoutingRequirements(
        skills=tuple(
            SkillRequirement(skill=skill.skill, min_level=skill.min_level or 1)
            for skill in given.skills
        ),
        language=given.language or None,
        priority=given.priority,
        preferred_agent_id=parse_optional_uuid(
            given.preferred_agent_id, f"{field}.preferred_agent_id"
        ),
        last_agent_id=parse_optional_uuid(given.last_agent_id, f"{field}.last_agent_id"),
    )


def _duration(given: Duration, field: str) -> timedelta:
    try:
        return given.ToTimedelta()
    except (OverflowError, ValueError):
        raise InvalidValue(field, "out of range") from None


# --- domain → protobuf ----------------------------------------------------------------------


def _id(value: UUID | None) -> str:
    return "" if value is None else str(value)


def _channel(channel: Channel | None) -> common_pb2.Channel.ValueType:
    return common_pb2.CHANNEL_UNSPECIFIED if channel is None else _CHANNEL_NUMBERS[channel]


def requirements_message(given: RoutingRequirements) -> interaction_pb2.QueueRequirements:
    return pb.QueueRequirements(
        skills=[
            pb.RequiredSkill(skill=skill.skill, min_level=skill.min_level) for skill in given.skills
        ],
        language=given.language or "",
        priority=given.priority,
        preferred_agent_id=_id(given.preferred_agent_id),
        last_agent_id=_id(given.last_agent_id),
    )


def _entry_message(entry: TranscriptEntry) -> interaction_pb2.TranscriptEntry:
    return pb.TranscriptEntry(
        author_kind=_AUTHOR_NUMBERS[entry.author_kind],
        author_id=_id(entry.author_id),
        text=entry.text,
        public=entry.public,
        create_time=timestamp_message(entry.at),
    )


def _escalation_message(escalation: Escalation) -> interaction_pb2.Escalation:
    return pb.Escalation(
        tier=escalation.tier or 0,
        department=escalation.department or "",
        reason=escalation.reason,
        agent_id=_id(escalation.agent_id),
        escalate_time=timestamp_message(escalation.at),
    )


def interaction_message(
    state: Interaction, *, transcript: bool = True
) -> interaction_pb2.Interaction:
    return pb.Interaction(
        id=str(state.id),
        channel=_CHANNEL_NUMBERS[state.channel],
        direction=_DIRECTION_NUMBERS[state.direction],
        status=_STATUS_NUMBERS[state.status],
        handled_by_bot=state.handled_by_bot,
        customer_id=_id(state.customer_id),
        case_id=_id(state.case_id),
        contact_reason=state.contact_reason or "",
        tags=list(state.tags),
        queue=state.queue or "",
        requirements=requirements_message(state.requirements),
        agent_id=_id(state.agent_id),
        offered_agent_id=_id(state.offered_agent_id),
        agent_ids=[str(agent) for agent in state.agents],
        resolved_by_agent_id=_id(state.resolved_by),
        resolution=state.resolution or "",
        hold_seconds=state.hold_seconds,
        transfer_count=state.transfer_count,
        reopen_count=state.reopen_count,
        escalations=[_escalation_message(each) for each in state.escalations],
        transcript=[_entry_message(entry) for entry in state.transcript] if transcript else [],
        create_time=timestamp_message(state.created_on),
        update_time=timestamp_message(state.modified_on),
        queue_time=timestamp_message(state.queued_at),
        wait_start_time=timestamp_message(state.waiting_since),
        offer_time=timestamp_message(state.offered_at),
        answer_time=timestamp_message(state.answered_at),
        first_response_time=timestamp_message(state.first_agent_response_at),
        hold_start_time=timestamp_message(state.hold_started_at),
        wrap_up_start_time=timestamp_message(state.wrap_up_started_at),
        resolve_time=timestamp_message(state.resolved_at),
        first_resolve_time=timestamp_message(state.first_resolved_at),
        close_time=timestamp_message(state.closed_at),
        abandon_time=timestamp_message(state.abandoned_at),
        contain_time=timestamp_message(state.contained_at),
        hand_off_time=timestamp_message(state.handed_off_at),
        etag=str(state.version),
    )


def case_message(case: Case) -> interaction_pb2.Case:
    window = Duration()
    window.FromTimedelta(case.reopen_window)
    return pb.Case(
        id=str(case.id),
        subject=case.subject,
        status=_CASE_STATUS_NUMBERS[case.status],
        priority=_PRIORITY_NUMBERS[case.priority],
        customer_id=_id(case.customer_id),
        reason=case.reason or "",
        channel=_channel(case.channel),
        interaction_ids=[str(each) for each in case.interaction_ids],
        repeat_contact_count=case.repeat_contact_count,
        reopen_window=window,
        first_response_time=timestamp_message(case.first_response_at),
        first_response_agent_id=_id(case.first_response_agent_id),
        resolution=case.resolution or "",
        solve_time=timestamp_message(case.solved_at),
        first_solve_time=timestamp_message(case.first_solved_at),
        close_time=timestamp_message(case.closed_at),
        reopen_count=case.reopen_count,
        reopenable_until_time=timestamp_message(case.reopenable_until()),
        create_time=timestamp_message(case.created_on),
        update_time=timestamp_message(case.modified_on),
        etag=str(case.version),
    )


def _clock_message(view: ClockView) -> interaction_pb2.SlaClock:
    target = None
    if view.target is not None:
        target = Duration()
        target.FromTimedelta(view.target)
    return pb.SlaClock(
        metric=_METRIC_NUMBERS[view.metric],
        cycle=view.cycle,
        state=_CLOCK_STATE_NUMBERS[view.state],
        policy=view.policy or "",
        target=target,
        start_time=timestamp_message(view.started_at),
        due_time=timestamp_message(view.due_at),
        at_risk_time=timestamp_message(view.at_risk_at),
        end_time=timestamp_message(view.ended_at),
        breached=view.breached,
        at_risk_recorded=view.at_risk_recorded,
        breach_recorded=view.breach_recorded,
    )


def survey_message(response: SurveyResponse, feedback_id: str) -> interaction_pb2.SurveyResponse:
    return pb.SurveyResponse(
        id=str(response.id),
        survey_id=response.survey_id,
        kind=_SURVEY_NUMBERS[response.kind],
        score=response.score,
        comment=response.comment,
        customer_id=_id(response.customer_id),
        interaction_id=_id(response.interaction_id),
        case_id=_id(response.case_id),
        agent_id=_id(response.agent_id),
        channel=_channel(response.channel),
        create_time=timestamp_message(response.created_on),
        feedback_id=feedback_id,
    )


def feedback_message(feedback: Feedback) -> interaction_pb2.Feedback:
    return pb.Feedback(
        id=str(feedback.id),
        source=_SOURCE_NUMBERS[feedback.source],
        text=feedback.text,
        customer_id=_id(feedback.customer_id),
        interaction_id=_id(feedback.interaction_id),
        case_id=_id(feedback.case_id),
        survey_response_id=_id(feedback.survey_response_id),
        channel=_channel(feedback.channel),
        category=_CATEGORY_NUMBERS[feedback.category],
        category_set_by=_SETTER_NUMBERS[feedback.category_set_by],
        sentiment=_SENTIMENT_NUMBERS[feedback.sentiment],
        sentiment_score=feedback.sentiment_score,
        sentiment_set_by=_SETTER_NUMBERS[feedback.sentiment_set_by],
        topics=list(feedback.topics),
        topics_set_by=_SETTER_NUMBERS[feedback.topics_set_by],
        create_time=timestamp_message(feedback.created_on),
        update_time=timestamp_message(feedback.modified_on),
    )


# --- live events ----------------------------------------------------------------------------

#: Put in a stream's queue when the service stops.
_CLOSING = object()


class LiveEvents:
    """Hands each stored interaction event to the streams of its interaction (module
    docstring). `run()` works until `stop()`."""

    def __init__(
        self,
        app: InteractionApplication,
        calls: BlockingCalls,
        *,
        poll_interval_s: float = 0.05,
        batch_size: int = 500,
    ) -> None:
        self.app = app
        self.calls = calls
        self.poll_interval_s = poll_interval_s
        self.batch_size = batch_size
        self._streams: dict[UUID, set[asyncio.Queue[object]]] = {}
        self._position: int | None = None
        self._news = asyncio.Event()
        self._stopping = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def nudge(self) -> None:
        """Something was stored: look now rather than at the next poll (any thread)."""
        loop = self._loop
        if loop is not None and self._streams:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._news.set)

    def stop(self) -> None:
        """Ends every stream (with UNAVAILABLE) and the feed."""
        self._stopping.set()
        for queues in self._streams.values():
            for queue in queues:
                queue.put_nowait(_CLOSING)

    @contextlib.asynccontextmanager
    async def subscribe(self, interaction_id: UUID) -> AsyncIterator[asyncio.Queue[object]]:
        """A queue receiving every event of the interaction stored from now on (and perhaps
        a few earlier ones: the caller drops versions it has)."""
        if self._stopping.is_set():
            raise Unavailable("the service is stopping")
        queue: asyncio.Queue[object] = asyncio.Queue()
        if self._position is None:
            self._position = await self.calls(self._last_position)
        self._streams.setdefault(interaction_id, set()).add(queue)
        try:
            yield queue
        finally:
            queues = self._streams.get(interaction_id)
            if queues is not None:
                queues.discard(queue)
                if not queues:
                    del self._streams[interaction_id]
            if not self._streams:
                self._position = None

    def _last_position(self) -> int:
        return self.app.recorder.max_notification_id() or 0

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            if self._streams and self._position is not None:
                try:
                    await self._dispatch_new()
                except Exception:
                    log.exception("live events: reading the notification log failed")
            stop = asyncio.ensure_future(self._stopping.wait())
            news = asyncio.ensure_future(self._news.wait())
            try:
                await asyncio.wait(
                    {stop, news}, timeout=self.poll_interval_s, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                stop.cancel()
                news.cancel()
            self._news.clear()

    async def _dispatch_new(self) -> None:
        while self._streams and self._position is not None:
            start = self._position
            last, read, events = await self.calls(self._read_after, start)
            if self._position != start:
                return  # everyone left (and perhaps someone came) while reading
            for event in events:
                for queue in self._streams.get(event.originator_id, ()):
                    queue.put_nowait(event)
            self._position = last
            if read < self.batch_size:
                return

    def _read_after(self, position: int) -> tuple[int, int, list[InteractionEvent]]:
        """(last notification id read, how many were read, the interaction events)."""
        notifications = self.app.recorder.select_notifications(
            start=position, limit=self.batch_size, inclusive_of_start=False
        )
        if not notifications:
            return position, 0, []
        events = [
            event
            for event in map(self.app.mapper.to_domain_event, notifications)
            if isinstance(event, InteractionEvent)
        ]
        return notifications[-1].id, len(notifications), events


# --- the servicer ---------------------------------------------------------------------------


class InteractionServicer(interaction_pb2_grpc.InteractionServiceServicer):
    def __init__(
        self,
        app: InteractionApplication,
        views: InteractionViews,
        clocks: SlaClocks,
        calls: BlockingCalls,
        live: LiveEvents,
    ) -> None:
        self.app = app
        self.views = views
        self.clocks = clocks
        self.calls = calls
        self.live = live

    async def _write(self, function: Callable[..., T], /, *args: object, **kwargs: object) -> T:
        """Runs a storing call, then wakes the live feed."""
        result = await self.calls(function, *args, **kwargs)
        self.live.nudge()
        return result

    # --- interactions ---

    async def OpenInteraction(
        self, request: interaction_pb2.OpenInteractionRequest, context: Context
    ) -> interaction_pb2.Interaction:
        channel = required_member(request.channel, _CHANNELS, "channel")
        direction = enum_member(request.direction, _DIRECTIONS, "direction", required=False)
        customer_id = parse_optional_uuid(request.customer_id, "customer_id")
        case_id = parse_optional_uuid(request.case_id, "case_id")
        reason = _optional_text(request.contact_reason)
        if (
            request.link_repeat_contact
            and case_id is None
            and customer_id is not None
            and reason is not None
        ):
            case_id = await self.calls(self.views.repeat_case_for, customer_id, reason)
        state = await self._write(
            self.app.open_interaction,
            channel=channel.value,
            direction=(direction or Direction.INBOUND).value,
            customer_id=customer_id,
            case_id=case_id,
            contact_reason=reason,
            tags=list(request.tags),
            handled_by_bot=request.handled_by_bot,
            request_id=request.request_id or None,
        )
        return interaction_message(state)

    async def GetInteraction(
        self, request: interaction_pb2.GetInteractionRequest, context: Context
    ) -> interaction_pb2.Interaction:
        interaction_id = parse_uuid(request.id, "id")
        return interaction_message(await self.calls(self.app.get_interaction, interaction_id))

    async def ListInteractions(
        self, request: interaction_pb2.ListInteractionsRequest, context: Context
    ) -> interaction_pb2.ListInteractionsResponse:
        status = enum_member(request.status, _STATUSES, "status", required=False)
        full = False if request.view == 0 else _VIEWS.get(request.view)
        if full is None:
            raise InvalidValue("view", f"unknown value {request.view}")
        page = await self.calls(
            self.views.list_interactions,
            customer_id=parse_optional_uuid(request.customer_id, "customer_id"),
            case_id=parse_optional_uuid(request.case_id, "case_id"),
            agent_id=parse_optional_uuid(request.agent_id, "agent_id"),
            status=status.value if status is not None else "",
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListInteractionsResponse(
            interactions=[interaction_message(each, transcript=full) for each in page.interactions],
            next_page_token=page.next_page_token,
        )

    async def StreamInteractionEvents(
        self, request: interaction_pb2.StreamInteractionEventsRequest, context: Context
    ) -> AsyncIterator[interaction_pb2.InteractionUpdate]:
        interaction_id = parse_uuid(request.interaction_id, "interaction_id")
        async with self.live.subscribe(interaction_id) as queue:
            state = await self.calls(self.app.get_interaction, interaction_id)
            yield pb.InteractionUpdate(
                event="snapshot",
                event_time=timestamp_message(state.modified_on),
                interaction=interaction_message(state),
            )
            while state.status not in FINAL_STATUSES:
                item = await queue.get()
                if item is _CLOSING:
                    raise Unavailable("the service is stopping; subscribe again")
                event = cast(InteractionEvent, item)
                if event.originator_version <= state.version:
                    continue
                if event.originator_version == state.version + 1:
                    state = event.mutate(state)
                else:  # a gap (should not happen): read the state afresh
                    state = await self.calls(self.app.get_interaction, interaction_id)
                yield pb.InteractionUpdate(
                    event=event.event_name(),
                    event_type=event_type(type(event)),
                    event_time=timestamp_message(event.timestamp),
                    interaction=interaction_message(state),
                )

    async def IdentifyCustomer(
        self, request: interaction_pb2.IdentifyCustomerRequest, context: Context
    ) -> interaction_pb2.Interaction:
        interaction_id = parse_uuid(request.interaction_id, "interaction_id")
        customer_id = parse_uuid(request.customer_id, "customer_id")
        return interaction_message(
            await self._write(self.app.identify_customer, interaction_id, customer_id)
        )

    async def QueueInteraction(
        self, request: interaction_pb2.QueueInteractionRequest, context: Context
    ) -> interaction_pb2.Interaction:
        interaction_id = parse_uuid(request.interaction_id, "interaction_id")
        requirements = _requirements(request.requirements)
        state = await self._write(
            self.app.queue, interaction_id, queue=request.queue, requirements=requirements
        )
        return interaction_message(state)

    async def OfferInteraction(
        self, request: interaction_pb2.OfferInteractionRequest, context: Context
    ) -> interaction_pb2.Interaction:
        interaction_id = parse_uuid(request.interaction_id, "interaction_id")
        agent_id = parse_uuid(request.agent_id, "agent_id")
        return interaction_message(await self._write(self.app.offer, interaction_id, agent_id))

    async def DeclineOffer(
        self, request: interaction_pb2.DeclineOfferRequest, context: Context
    ) -> interaction_pb2.Interaction:
        interaction_id = parse_uuid(request.interaction_id, "interaction_id")
        agent_id = parse_uuid(request.agent_id, "agent_id")
        reason = enum_member(request.reason, _DECLINES, "reason", required=False)
        state = await self._write(
            self.app.decline_offer,
            interaction_id,
            agent_id,
            (reason or DeclineReason.REJECTED).value,
        )
        return interaction_message(state)

    async def AnswerInteraction(
        self, request: interaction_pb2.AnswerInteractionRequest, context: Context
    ) -> interaction_pb2.Interaction:
        interaction_id = parse_uuid(request.interaction_id, "interaction_id")
        agent_id = parse_uuid(request.agent_id, "agent_id")
        return interaction_message(await self._write(self.app.answer, interaction_id, agent_id))

    async def HoldInteraction(
        self, request: interaction_pb2.HoldInteractionRequest, context: Context
    ) -> interaction_pb2.Interaction:
        interaction_id = parse_uuid(request.interaction_id, "interaction_id")
        return interaction_message(await self._write(self.app.hold, interaction_id))

    async def ResumeInteraction(
        self, request: interaction_pb2.ResumeInteractionRequest, context: Context
    ) -> interaction_pb2.Interaction:
        interaction_id = parse_uuid(request.interaction_id, "interaction_id")
        return interaction_message(await self._write(self.app.resume, interaction_id))

    async def AddMessage(
        self, request: interaction_pb2.AddMessageRequest, context: Context
    ) -> interaction_pb2.Interaction:
        interaction_id = parse_uuid(request.interaction_id, "interaction_id")
        author = required_member(request.author_kind, _AUTHORS, "author_kind")
        author_id = parse_optional_uuid(request.author_id, "author_id")
        with renamed_fields({"public": "internal"}):
            state = await self._write(
                self.app.add_message,
                interaction_id,
                author_kind=author.value,
                text=request.text,
                author_id=author_id,
                public=not request.internal,
            )
        return interaction_message(state)

    async def TransferInteraction(
        self, request: interaction_pb2.TransferInteractionRequest, context: Context
    ) -> interaction_pb2.Interaction:
        interaction_id = parse_uuid(request.interaction_id, "interaction_id")
        to_agent_id = parse_optional_uuid(request.to_agent_id, "to_agent_id")
        requirements = (
            _requirements(request.requirements) if request.HasField("requirements") else None
        )
        state = await self._write(
            self.app.transfer,
            interaction_id,
            reason=request.reason,
            to_queue=_optional_text(request.to_queue),
            to_agent_id=to_agent_id,
            requirements=requirements,
        )
        return interaction_message(state)

    async def EscalateInteraction(
        self, request: interaction_pb2.EscalateInteractionRequest, context: Context
    ) -> interaction_pb2.Interaction:
        interaction_id = parse_uuid(request.interaction_id, "interaction_id")
        state = await self._write(
            self.app.escalate,
            interaction_id,
            reason=request.reason,
            tier=request.tier or None,
            department=_optional_text(request.department),
        )
        return interaction_message(state)

    async def StartWrapUp(
        self, request: interaction_pb2.StartWrapUpRequest, context: Context
    ) -> interaction_pb2.Interaction:
        interaction_id = parse_uuid(request.interaction_id, "interaction_id")
        return interaction_message(await self._write(self.app.start_wrap_up, interaction_id))

    async def ResolveInteraction(
        self, request: interaction_pb2.ResolveInteractionRequest, context: Context
    ) -> interaction_pb2.Interaction:
        interaction_id = parse_uuid(request.interaction_id, "interaction_id")
        state = await self._write(
            self.app.resolve,
            interaction_id,
            resolution=_optional_text(request.resolution),
            contact_reason=_optional_text(request.contact_reason),
        )
        return interaction_message(state)

    async def ReopenInteraction(
        self, request: interaction_pb2.ReopenInteractionRequest, context: Context
    ) -> interaction_pb2.Interaction:
        interaction_id = parse_uuid(request.interaction_id, "interaction_id")
        state = await self._write(
            self.app.reopen, interaction_id, reason=_optional_text(request.reason)
        )
        return interaction_message(state)

    async def CloseInteraction(
        self, request: interaction_pb2.CloseInteractionRequest, context: Context
    ) -> interaction_pb2.Interaction:
        interaction_id = parse_uuid(request.interaction_id, "interaction_id")
        return interaction_message(await self._write(self.app.close_interaction, interaction_id))

    async def AbandonInteraction(
        self, request: interaction_pb2.AbandonInteractionRequest, context: Context
    ) -> interaction_pb2.Interaction:
        interaction_id = parse_uuid(request.interaction_id, "interaction_id")
        return interaction_message(await self._write(self.app.abandon, interaction_id))

    async def ContainInBot(
        self, request: interaction_pb2.ContainInBotRequest, context: Context
    ) -> interaction_pb2.Interaction:
        interaction_id = parse_uuid(request.interaction_id, "interaction_id")
        state = await self._write(
            self.app.bot_contain, interaction_id, resolution=_optional_text(request.resolution)
        )
        return interaction_message(state)

    async def HandOffToHuman(
        self, request: interaction_pb2.HandOffToHumanRequest, context: Context
    ) -> interaction_pb2.Interaction:
        interaction_id = parse_uuid(request.interaction_id, "interaction_id")
        requirements = (
            _requirements(request.requirements) if request.HasField("requirements") else None
        )
        state = await self._write(
            self.app.hand_off_to_human,
            interaction_id,
            queue=request.queue,
            reason=request.reason,
            requirements=requirements,
        )
        return interaction_message(state)

    # --- cases ---

    async def OpenCase(
        self, request: interaction_pb2.OpenCaseRequest, context: Context
    ) -> interaction_pb2.Case:
        customer_id = parse_optional_uuid(request.customer_id, "customer_id")
        priority = enum_member(request.priority, _PRIORITIES, "priority", required=False)
        interaction_ids = [
            parse_uuid(each, f"interaction_ids[{index}]")
            for index, each in enumerate(request.interaction_ids)
        ]
        window = (
            _duration(request.reopen_window, "reopen_window")
            if request.HasField("reopen_window")
            else DEFAULT_REOPEN_WINDOW
        )
        channel = enum_member(request.channel, _CHANNELS, "channel", required=False)
        case = await self._write(
            self.app.open_case,
            subject=request.subject,
            customer_id=customer_id,
            reason=_optional_text(request.reason),
            priority=(priority or CasePriority.NORMAL).value,
            interaction_ids=interaction_ids,
            reopen_window=window,
            channel=None if channel is None else channel.value,
            request_id=request.request_id or None,
        )
        return case_message(case)

    async def GetCase(
        self, request: interaction_pb2.GetCaseRequest, context: Context
    ) -> interaction_pb2.Case:
        case_id = parse_uuid(request.id, "id")
        return case_message(await self.calls(self.app.get_case, case_id))

    async def ListCases(
        self, request: interaction_pb2.ListCasesRequest, context: Context
    ) -> interaction_pb2.ListCasesResponse:
        status = enum_member(request.status, _CASE_STATUSES, "status", required=False)
        page = await self.calls(
            self.views.list_cases,
            customer_id=parse_optional_uuid(request.customer_id, "customer_id"),
            status=status.value if status is not None else "",
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListCasesResponse(
            cases=[case_message(case) for case in page.cases],
            next_page_token=page.next_page_token,
        )

    async def LinkInteractionToCase(
        self, request: interaction_pb2.LinkInteractionToCaseRequest, context: Context
    ) -> interaction_pb2.Case:
        case_id = parse_uuid(request.case_id, "case_id")
        interaction_id = parse_uuid(request.interaction_id, "interaction_id")
        return case_message(
            await self._write(self.app.link_interaction_to_case, case_id, interaction_id)
        )

    async def ChangeCaseStatus(
        self, request: interaction_pb2.ChangeCaseStatusRequest, context: Context
    ) -> interaction_pb2.Case:
        case_id = parse_uuid(request.case_id, "case_id")
        status = required_member(request.status, _CASE_STATUSES, "status")
        return case_message(await self._write(self.app.change_case_status, case_id, status.value))

    async def SolveCase(
        self, request: interaction_pb2.SolveCaseRequest, context: Context
    ) -> interaction_pb2.Case:
        case_id = parse_uuid(request.case_id, "case_id")
        case = await self._write(
            self.app.solve_case, case_id, resolution=_optional_text(request.resolution)
        )
        return case_message(case)

    async def ReopenCase(
        self, request: interaction_pb2.ReopenCaseRequest, context: Context
    ) -> interaction_pb2.Case:
        case_id = parse_uuid(request.case_id, "case_id")
        case = await self._write(
            self.app.reopen_case, case_id, reason=_optional_text(request.reason)
        )
        return case_message(case)

    async def CloseCase(
        self, request: interaction_pb2.CloseCaseRequest, context: Context
    ) -> interaction_pb2.Case:
        case_id = parse_uuid(request.case_id, "case_id")
        return case_message(await self._write(self.app.close_case, case_id))

    async def GetCaseSla(
        self, request: interaction_pb2.GetCaseSlaRequest, context: Context
    ) -> interaction_pb2.CaseSla:
        case_id = parse_uuid(request.case_id, "case_id")
        await self.calls(self.app.get_case, case_id)  # NOT_FOUND for an unknown case
        clocks = await self.calls(self.clocks.clocks_of, case_id)
        return pb.CaseSla(case_id=str(case_id), clocks=[_clock_message(each) for each in clocks])

    async def GetInteractionSla(
        self, request: interaction_pb2.GetInteractionSlaRequest, context: Context
    ) -> interaction_pb2.InteractionSla:
        interaction_id = parse_uuid(request.interaction_id, "interaction_id")
        # NOT_FOUND for an unknown interaction
        await self.calls(self.app.get_interaction, interaction_id)
        clocks = await self.calls(self.clocks.clocks_of_interaction, interaction_id)
        case_id = await self.calls(self.clocks.linked_case_of, interaction_id)
        return pb.InteractionSla(
            interaction_id=str(interaction_id),
            case_id="" if case_id is None else str(case_id),
            clocks=[_clock_message(each) for each in clocks],
        )

    # --- voice of the customer ---

    async def RecordSurveyResponse(
        self, request: interaction_pb2.RecordSurveyResponseRequest, context: Context
    ) -> interaction_pb2.SurveyResponse:
        kind = required_member(request.kind, _SURVEY_KINDS, "kind")
        response = await self._write(
            self.app.record_survey_response,
            survey_id=request.survey_id,
            kind=kind.value,
            score=request.score,
            comment=request.comment,
            customer_id=parse_optional_uuid(request.customer_id, "customer_id"),
            interaction_id=parse_optional_uuid(request.interaction_id, "interaction_id"),
            case_id=parse_optional_uuid(request.case_id, "case_id"),
            agent_id=parse_optional_uuid(request.agent_id, "agent_id"),
            capture_comment=True,
        )
        feedback_id = survey_feedback_id(response.id) if response.comment else None
        return survey_message(response, _id(feedback_id))

    async def GetSurveyResponse(
        self, request: interaction_pb2.GetSurveyResponseRequest, context: Context
    ) -> interaction_pb2.SurveyResponse:
        if bool(request.id) == bool(request.survey_id):
            raise InvalidValue("id", "give exactly one of id and survey_id")
        if request.id:
            response = await self.calls(self.app.get_survey_response, parse_uuid(request.id, "id"))
        else:
            response = await self.calls(self.app.get_survey_response_of, request.survey_id)
        return survey_message(response, await self.calls(self._comment_feedback, response))

    def _comment_feedback(self, response: SurveyResponse) -> str:
        if not response.comment:
            return ""
        feedback_id = survey_feedback_id(response.id)
        try:
            self.app.get_feedback(feedback_id)
        except NotFound:
            return ""
        return str(feedback_id)

    async def CaptureFeedback(
        self, request: interaction_pb2.CaptureFeedbackRequest, context: Context
    ) -> interaction_pb2.Feedback:
        source = enum_member(request.source, _SOURCES, "source", required=False)
        category = enum_member(request.category, _CATEGORIES, "category", required=False)
        sentiment = enum_member(request.sentiment, _SENTIMENTS, "sentiment", required=False)
        set_by = enum_member(request.set_by, _SETTERS, "set_by", required=False)
        feedback = await self._write(
            self.app.capture_feedback,
            text=request.text,
            source=(source or FeedbackSource.OTHER).value,
            customer_id=parse_optional_uuid(request.customer_id, "customer_id"),
            interaction_id=parse_optional_uuid(request.interaction_id, "interaction_id"),
            case_id=parse_optional_uuid(request.case_id, "case_id"),
            survey_response_id=parse_optional_uuid(
                request.survey_response_id, "survey_response_id"
            ),
            category=None if category is None else category.value,
            sentiment=None if sentiment is None else sentiment.value,
            sentiment_score=(
                request.sentiment_score if request.HasField("sentiment_score") else None
            ),
            topics=list(request.topics),
            set_by=(set_by or Setter.AGENT).value,
        )
        return feedback_message(feedback)

    async def ClassifyFeedback(
        self, request: interaction_pb2.ClassifyFeedbackRequest, context: Context
    ) -> interaction_pb2.Feedback:
        feedback_id = parse_uuid(request.feedback_id, "feedback_id")
        set_by = required_member(request.set_by, _SETTERS, "set_by")
        category = enum_member(request.category, _CATEGORIES, "category", required=False)
        sentiment = enum_member(request.sentiment, _SENTIMENTS, "sentiment", required=False)
        feedback = await self._write(
            self.app.classify_feedback,
            feedback_id,
            set_by=set_by.value,
            category=None if category is None else category.value,
            sentiment=None if sentiment is None else sentiment.value,
            sentiment_score=(
                request.sentiment_score if request.HasField("sentiment_score") else None
            ),
            topics=list(request.topics) if request.set_topics else None,
        )
        return feedback_message(feedback)

    async def GetFeedback(
        self, request: interaction_pb2.GetFeedbackRequest, context: Context
    ) -> interaction_pb2.Feedback:
        feedback_id = parse_uuid(request.id, "id")
        return feedback_message(await self.calls(self.app.get_feedback, feedback_id))
