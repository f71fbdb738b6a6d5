"""The RoutingService gRPC servicer: protobuf ⇄ domain, nothing else.

Every rule lives in crmcore (the routing application and its engine). This module checks only
what the protobuf form adds (ids that are not UUIDs, unspecified or unknown enum numbers, etags,
update masks, page tokens), names fields as the request names them, and runs the blocking
application calls on the service's thread pool. Domain errors pass through: the interceptor of
crmcore.adapters.grpc maps them to status codes.

`OfferFeeds` feeds StreamOffers: the application tells its listener of every batch of stored
events (in the thread that stored them); offers and what becomes of them are handed, over the
event loop, to the queues of the streams open for that agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, TypeVar, cast
from uuid import UUID

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from crm.v1 import common_pb2, routing_pb2, routing_pb2_grpc
from crmcore.adapters.grpc.calls import BlockingCalls
from crmcore.application.routing import RoutingApplication
from crmcore.domain.agent import Agent, Presence, Requirements, Skill, SkillRequirement
from crmcore.domain.base import DomainEvent
from crmcore.domain.errors import InvalidValue, Unavailable
from crmcore.domain.queue import (
    AddOverflowPool,
    DropSkill,
    Fallback,
    FallbackKind,
    OverflowPool,
    PoolKind,
    Queue,
    RoutingAction,
    RoutingStep,
    ServiceLevelTarget,
    SetMinLevel,
)
from crmcore.domain.routing import QueueStatus, TaskExplanation
from crmcore.domain.task import (
    AgentRule,
    Attribute,
    Decision,
    MatchDirection,
    ReleaseReason,
    RoutingAccepted,
    RoutingOffered,
    RoutingOfferRevoked,
    RoutingRejected,
    RoutingTimedOut,
    Task,
    TaskReleased,
    TaskSource,
    TaskStatus,
)
from crmcore.domain.values import Channel

log = logging.getLogger(__name__)

E = TypeVar("E", bound=enum.Enum)
T = TypeVar("T")

if TYPE_CHECKING:  # the stubs make it generic; at run time it is not subscriptable
    Context = grpc.aio.ServicerContext[object, object]

pb = routing_pb2
DEFAULT_PAGE_SIZE = 100
#: Larger page sizes are lowered to this, as in every service (AIP-158: coerce, do not refuse).
MAX_PAGE_SIZE = 500


def _enum_numbers(domain: type[E], proto_value: Callable[[str], int], prefix: str) -> dict[int, E]:
    """proto number → domain member, by name (`AGENT_PRESENCE_BREAK` ↔ `Presence.BREAK`)."""
    return {proto_value(f"{prefix}{member.name}"): member for member in domain}


def _numbers_of(mapping: Mapping[int, E]) -> dict[E, int]:
    return {member: number for number, member in mapping.items()}


_CHANNELS = _enum_numbers(Channel, common_pb2.Channel.Value, "CHANNEL_")
_PRESENCES = _enum_numbers(Presence, pb.AgentPresence.Value, "AGENT_PRESENCE_")
_POOL_KINDS = _enum_numbers(PoolKind, pb.OverflowPoolKind.Value, "OVERFLOW_POOL_KIND_")
_FALLBACKS = _enum_numbers(FallbackKind, pb.RoutingFallback.Value, "ROUTING_FALLBACK_")
_STATES = _enum_numbers(TaskStatus, pb.RoutingTaskState.Value, "ROUTING_TASK_STATE_")
_SOURCES = _enum_numbers(TaskSource, pb.RoutingTaskSource.Value, "ROUTING_TASK_SOURCE_")
_DIRECTIONS = _enum_numbers(MatchDirection, pb.MatchDirection.Value, "MATCH_DIRECTION_")
_RULES = _enum_numbers(AgentRule, pb.AgentChoiceRule.Value, "AGENT_CHOICE_RULE_")

_CHANNEL_NUMBERS = cast(dict[Channel, common_pb2.Channel.ValueType], _numbers_of(_CHANNELS))
_PRESENCE_NUMBERS = cast(dict[Presence, pb.AgentPresence.ValueType], _numbers_of(_PRESENCES))
_POOL_NUMBERS = cast(dict[PoolKind, pb.OverflowPoolKind.ValueType], _numbers_of(_POOL_KINDS))
_FALLBACK_NUMBERS = cast(dict[FallbackKind, pb.RoutingFallback.ValueType], _numbers_of(_FALLBACKS))
_STATE_NUMBERS = cast(dict[TaskStatus, pb.RoutingTaskState.ValueType], _numbers_of(_STATES))
_SOURCE_NUMBERS = cast(dict[TaskSource, pb.RoutingTaskSource.ValueType], _numbers_of(_SOURCES))
_DIRECTION_NUMBERS = cast(
    dict[MatchDirection, pb.MatchDirection.ValueType], _numbers_of(_DIRECTIONS)
)
_RULE_NUMBERS = cast(dict[AgentRule, pb.AgentChoiceRule.ValueType], _numbers_of(_RULES))

AGENT_FIELDS = frozenset({"display_name", "teams", "languages", "skills", "capacity"})
QUEUE_FIELDS = frozenset(
    {
        "channels",
        "requirements",
        "priority",
        "service_level",
        "offer_timeout_seconds",
        "max_misses",
        "overflow_queues",
        "routing_steps",
        "archived",
    }
)


# --- protobuf → domain ----------------------------------------------------------------------


def _uuid(text: str, field: str) -> UUID:
    """A required id: a UUID in its canonical form (any case)."""
    if not text:
        raise InvalidValue(field, "must be set")
    parsed = _optional_uuid(text, field)
    assert parsed is not None
    return parsed


def _optional_uuid(text: str, field: str) -> UUID | None:
    if not text:
        return None
    try:
        parsed = UUID(text)
    except ValueError:
        parsed = None
    if parsed is None or str(parsed) != text.lower():
        raise InvalidValue(field, "not an id (a UUID like 123e4567-e89b-42d3-a456-426614174000)")
    return parsed


def _member(number: int, members: Mapping[int, E], field: str, *, required: bool) -> E | None:
    if number == 0 and not required:
        return None
    member = members.get(number)
    if member is None:
        raise InvalidValue(field, "must be set" if number == 0 else f"unknown value {number}")
    return member


def _required(number: int, members: Mapping[int, E], field: str) -> E:
    member = _member(number, members, field, required=True)
    assert member is not None
    return member


def _expected_version(etag: str) -> int | None:
    if not etag:
        return None
    if not etag.isdigit():
        raise InvalidValue("etag", "not an etag this service gave out")
    return int(etag)


def _skills(given: Sequence[routing_pb2.AgentSkill], field: str) -> list[Skill]:
    return [Skill(name=skill.name, level=skill.level) for skill in given]


def _capacity(given: Sequence[routing_pb2.ChannelCapacity], field: str) -> dict[str, int]:
    limits: dict[str, int] = {}
    for index, entry in enumerate(given):
        channel = _required(entry.channel, _CHANNELS, f"{field}[{index}].channel")
        if channel.value in limits:
            raise InvalidValue(f"{field}[{index}].channel", f"{channel} is given twice")
        limits[channel.value] = entry.limit
    return limits


def _requirements(given: routing_pb2.WorkRequirements, field: str) -> Requirements:
    """The requirements as the domain takes them (it checks skills, levels and language)."""
    return Requirements(
        skills=tuple(
            SkillRequirement(skill=skill.skill, min_level=skill.min_level) for skill in given.skills
        ),
        language=given.language or None,
    )


def _pool(given: routing_pb2.OverflowPool, field: str) -> OverflowPool:
    return OverflowPool(kind=_required(given.kind, _POOL_KINDS, f"{field}.kind"), name=given.name)


def _steps(given: Sequence[routing_pb2.RoutingStep], field: str) -> list[RoutingStep]:
    steps: list[RoutingStep] = []
    for index, step in enumerate(given):
        where = f"{field}[{index}]"
        kind = step.WhichOneof("action")
        action: RoutingAction
        if kind == "set_min_level":
            action = SetMinLevel(skill=step.set_min_level.skill, level=step.set_min_level.level)
        elif kind == "drop_skill":
            action = DropSkill(skill=step.drop_skill)
        elif kind == "add_overflow_pool":
            pool = _pool(step.add_overflow_pool, f"{where}.add_overflow_pool")
            action = AddOverflowPool(pool=pool)
        elif kind == "fallback":
            action = Fallback(to=_required(step.fallback, _FALLBACKS, f"{where}.fallback"))
        else:
            raise InvalidValue(f"{where}.action", "must be set")
        steps.append(RoutingStep(after_seconds=step.after_seconds, action=action))
    return steps


def _service_level(given: routing_pb2.QueueServiceLevel) -> ServiceLevelTarget:
    return ServiceLevelTarget(fraction=given.fraction, threshold_seconds=given.threshold_seconds)


def _channels(given: Sequence[int], field: str) -> list[Channel]:
    return [_required(number, _CHANNELS, f"{field}[{i}]") for i, number in enumerate(given)]


def _mask(paths: Sequence[str], allowed: frozenset[str], field: str) -> set[str]:
    if not paths:
        raise InvalidValue(f"{field}.paths", "name at least one field to change")
    unknown = sorted(set(paths) - allowed)
    if unknown:
        allowed_names = ", ".join(sorted(allowed))
        raise InvalidValue(
            f"{field}.paths", f"cannot change {', '.join(unknown)}; allowed: {allowed_names}"
        )
    return set(paths)


#: Fields of the requests themselves (not of the resource they carry).
_REQUEST_FIELDS = frozenset({"request_id", "etag", "page_token", "page_size"})


@contextlib.contextmanager
def _fields(prefix: str) -> Iterator[None]:
    """Names an InvalidValue raised inside after the request's own field (`agent.skills[0]…`)."""
    try:
        yield
    except InvalidValue as error:
        if error.field in _REQUEST_FIELDS or error.field.startswith(prefix + "."):
            raise
        raise InvalidValue(f"{prefix}.{error.field}", error.reason) from None


def _page(page_size: int, page_token: str) -> tuple[int, int]:
    """(size, first id as int) of a page; the token is the last id of the previous page."""
    if page_size < 0:
        raise InvalidValue("page_size", "must not be negative")
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    after = -1
    if page_token:
        after = _uuid(page_token, "page_token").int
    return size, after


# --- domain → protobuf ----------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _timestamp(moment: datetime | None) -> Timestamp | None:
    if moment is None:
        return None
    seconds, micros = divmod((moment - _EPOCH) // _MICROSECOND, 1_000_000)
    return Timestamp(seconds=seconds, nanos=micros * 1_000)


def _id(value: UUID | None) -> str:
    return "" if value is None else str(value)


def requirements_message(given: Requirements) -> routing_pb2.WorkRequirements:
    return pb.WorkRequirements(
        skills=[
            pb.RoutingSkillRequirement(skill=req.skill, min_level=req.min_level)
            for req in given.skills
        ],
        language=given.language or "",
    )


def _pool_message(pool: OverflowPool) -> routing_pb2.OverflowPool:
    return pb.OverflowPool(kind=_POOL_NUMBERS[pool.kind], name=pool.name)


def agent_message(agent: Agent, load: float = 0.0) -> routing_pb2.Agent:
    return pb.Agent(
        id=str(agent.id),
        display_name=agent.display_name,
        teams=list(agent.teams),
        skills=[pb.AgentSkill(name=skill.name, level=skill.level) for skill in agent.skills],
        languages=list(agent.languages),
        capacity=[
            pb.ChannelCapacity(
                channel=_CHANNEL_NUMBERS[channel], limit=agent.capacity.limit(channel)
            )
            for channel in agent.capacity.channels()
        ],
        presence=_PRESENCE_NUMBERS[agent.presence],
        presence_change_time=_timestamp(agent.presence_since),
        idle_since_time=_timestamp(agent.idle_since),
        work=[
            pb.AgentWorkItem(task_id=str(item.work_id), channel=_CHANNEL_NUMBERS[item.channel])
            for item in agent.work
        ],
        missed_offers=agent.missed_offers,
        cooldown_expire_time=_timestamp(agent.cooldown_until),
        load=load,
        create_time=_timestamp(agent.created_on),
        update_time=_timestamp(agent.modified_on),
        etag=str(agent.version),
    )


def _step_message(step: RoutingStep) -> routing_pb2.RoutingStep:
    action = step.action
    message = pb.RoutingStep(after_seconds=step.after_seconds)
    if isinstance(action, SetMinLevel):
        message.set_min_level.CopyFrom(pb.MinLevelChange(skill=action.skill, level=action.level))
    elif isinstance(action, DropSkill):
        message.drop_skill = action.skill
    elif isinstance(action, AddOverflowPool):
        message.add_overflow_pool.CopyFrom(_pool_message(action.pool))
    else:
        message.fallback = _FALLBACK_NUMBERS[action.to]
    return message


def queue_message(queue: Queue) -> routing_pb2.RoutingQueue:
    return pb.RoutingQueue(
        id=str(queue.id),
        name=queue.name,
        channels=[_CHANNEL_NUMBERS[channel] for channel in queue.channels],
        requirements=requirements_message(queue.requirements),
        priority=queue.priority,
        service_level=pb.QueueServiceLevel(
            fraction=queue.service_level.fraction,
            threshold_seconds=queue.service_level.threshold_seconds,
        ),
        offer_timeout_seconds=queue.offer_timeout_seconds,
        max_misses=queue.max_misses,
        overflow_queues=list(queue.overflow_queues),
        routing_steps=[_step_message(step) for step in queue.routing_steps],
        archived=queue.archived,
        create_time=_timestamp(queue.created_on),
        update_time=_timestamp(queue.modified_on),
        etag=str(queue.version),
    )


def decision_message(decision: Decision) -> routing_pb2.RoutingDecision:
    return pb.RoutingDecision(
        direction=_DIRECTION_NUMBERS[decision.direction],
        agent_rule=_RULE_NUMBERS[decision.agent_rule],
        step=decision.step,
        requirements=requirements_message(decision.requirements),
        pools=[_pool_message(pool) for pool in decision.pools],
        proficiency=decision.proficiency,
        load=decision.load,
        agent_idle_since_time=_timestamp(decision.idle_since),
        priority=decision.priority,
        waited_seconds=decision.waited_seconds,
        effective_wait_seconds=decision.effective_wait_seconds,
    )


def task_message(task: Task) -> routing_pb2.RoutingTask:
    return pb.RoutingTask(
        id=str(task.id),
        queue=task.queue,
        channel=_CHANNEL_NUMBERS[task.channel],
        requirements=requirements_message(task.requirements),
        priority=task.priority,
        preferred_agent_id=_id(task.preferred_agent_id),
        last_agent_id=_id(task.last_agent_id),
        enqueue_time=_timestamp(task.queued_at),
        wait_start_time=_timestamp(task.waiting_since),
        source=_SOURCE_NUMBERS[task.source],
        attributes=[pb.TaskAttribute(key=a.key, value=a.value) for a in task.attributes],
        state=_STATE_NUMBERS[task.status],
        agent_id=_id(task.agent_id),
        offer_time=_timestamp(task.offered_at),
        offer_expire_time=_timestamp(task.offer_expires_at),
        assign_time=_timestamp(task.assigned_at),
        offers=task.offers,
        decision=decision_message(task.decision) if task.decision is not None else None,
        release_reason=task.release_reason.value if task.release_reason else "",
        fallback=(
            _FALLBACK_NUMBERS[task.fallback] if task.fallback else pb.ROUTING_FALLBACK_UNSPECIFIED
        ),
        create_time=_timestamp(task.created_on),
        update_time=_timestamp(task.modified_on),
    )


def status_message(status: QueueStatus, read_time: datetime) -> routing_pb2.RoutingQueueStatus:
    today = status.today
    fraction = today.service_level()
    return pb.RoutingQueueStatus(
        queue_id=str(status.queue.id),
        queue_name=status.queue.name,
        waiting=status.waiting,
        offered=status.offered,
        assigned=status.assigned,
        oldest_wait_start_time=_timestamp(status.oldest_waiting_since),
        oldest_wait_seconds=status.oldest_wait_seconds,
        agents_available=status.agents_available,
        agents_busy=status.agents_busy,
        today=pb.ServiceLevelToday(
            day=today.day.isoformat(),
            queued=today.queued,
            answered=today.answered,
            answered_within_threshold=today.answered_within,
            abandoned=today.abandoned,
            fell_back=today.fell_back,
            has_fraction=fraction is not None,
            fraction=fraction or 0.0,
            threshold_seconds=status.queue.service_level.threshold_seconds,
            target_fraction=status.queue.service_level.fraction,
        ),
        read_time=_timestamp(read_time),
    )


def explanation_message(explained: TaskExplanation) -> routing_pb2.RoutingExplanation:
    return pb.RoutingExplanation(
        task=task_message(explained.task),
        queue_known=explained.queue_known,
        step=explained.step,
        requirements=(
            requirements_message(explained.requirements) if explained.requirements else None
        ),
        pools=[_pool_message(pool) for pool in explained.pools],
        next_step_time=_timestamp(explained.next_step_at),
        waited_seconds=explained.waited_seconds,
        effective_wait_seconds=explained.effective_wait_seconds,
        agents_meeting=explained.agents_meeting,
        agents_able_now=explained.agents_able_now,
        decision=decision_message(explained.decision) if explained.decision else None,
        summary=explained.summary,
    )


# --- offer streams ----------------------------------------------------------------------------

_CLOSING = object()
#: An offer event for one agent: (kind, reason, the task after it, when).
OfferNews = tuple[int, str, Task, datetime]


class OfferFeeds:
    """Hands offers (and what became of them) to the StreamOffers streams of each agent."""

    def __init__(self, app: RoutingApplication) -> None:
        self.app = app
        self._loop: asyncio.AbstractEventLoop | None = None
        self._streams: dict[UUID, set[asyncio.Queue[object]]] = {}
        self._closed = False

    def attach(self, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        """Starts listening to the application; returns the function that stops it."""
        self._loop = loop
        return self.app.add_listener(self._heard)

    @contextlib.asynccontextmanager
    async def subscribe(self, agent_id: UUID) -> AsyncIterator[asyncio.Queue[object]]:
        if self._closed:
            raise Unavailable("the service is stopping")
        queue: asyncio.Queue[object] = asyncio.Queue()
        self._streams.setdefault(agent_id, set()).add(queue)
        try:
            yield queue
        finally:
            streams = self._streams.get(agent_id)
            if streams is not None:
                streams.discard(queue)
                if not streams:
                    del self._streams[agent_id]

    def close(self) -> None:
        """Ends every stream (the service is stopping)."""
        self._closed = True
        for streams in self._streams.values():
            for queue in streams:
                queue.put_nowait(_CLOSING)

    def _heard(self, events: Sequence[DomainEvent]) -> None:
        # In the thread that stored the events, under the application's lock: keep it short.
        if not self._streams or self._loop is None:
            return
        engine = self.app.engine
        news: list[tuple[UUID, OfferNews]] = []
        for event in events:
            found = _offer_news(event)
            if found is None or found[0] not in self._streams:
                continue
            agent_id, kind, reason = found
            # The task as it stands after this batch: from memory, or from the store when it
            # left routing in this very batch.
            task = engine.task(event.originator_id) or self.app.get_task(event.originator_id)
            news.append((agent_id, (kind, reason, task, event.timestamp)))
        if news:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                self._loop.call_soon_threadsafe(self._deliver, news)

    def _deliver(self, news: list[tuple[UUID, OfferNews]]) -> None:
        for agent_id, item in news:
            for queue in self._streams.get(agent_id, ()):
                queue.put_nowait(item)


def _offer_news(event: DomainEvent) -> tuple[UUID, int, str] | None:
    """(agent, kind, reason) when the event is news for an agent's offer stream."""
    if isinstance(event, RoutingOffered):
        return event.agent_id, pb.OFFER_EVENT_KIND_OFFERED, ""
    if isinstance(event, RoutingAccepted):
        return event.agent_id, pb.OFFER_EVENT_KIND_ACCEPTED, ""
    if isinstance(event, RoutingRejected):
        return event.agent_id, pb.OFFER_EVENT_KIND_REJECTED, ""
    if isinstance(event, RoutingTimedOut):
        return event.agent_id, pb.OFFER_EVENT_KIND_WITHDRAWN, "timed_out"
    if isinstance(event, RoutingOfferRevoked):
        return event.agent_id, pb.OFFER_EVENT_KIND_WITHDRAWN, event.reason.value
    if (
        isinstance(event, TaskReleased)
        and event.from_status is TaskStatus.OFFERED
        and event.agent_id is not None
    ):
        return event.agent_id, pb.OFFER_EVENT_KIND_WITHDRAWN, event.reason.value
    return None


# --- the servicer -----------------------------------------------------------------------------


class RoutingServicer(routing_pb2_grpc.RoutingServiceServicer):
    def __init__(self, app: RoutingApplication, calls: BlockingCalls, feeds: OfferFeeds) -> None:
        self.app = app
        self.calls = calls
        self.feeds = feeds

    def _agent(self, agent: Agent) -> routing_pb2.Agent:
        return agent_message(agent, self.app.engine.load_of(agent.id))

    # --- agents ---

    async def RegisterAgent(
        self, request: routing_pb2.RegisterAgentRequest, context: Context
    ) -> routing_pb2.Agent:
        given = request.agent
        agent_id = _optional_uuid(given.id, "agent.id")
        with _fields("agent"):
            agent = await self.calls(
                self.app.register_agent,
                display_name=given.display_name,
                teams=list(given.teams),
                skills=_skills(given.skills, "skills"),
                languages=list(given.languages),
                capacity=_capacity(given.capacity, "capacity"),
                agent_id=agent_id,
                request_id=request.request_id or None,
            )
        return self._agent(agent)

    async def GetAgent(
        self, request: routing_pb2.GetAgentRequest, context: Context
    ) -> routing_pb2.Agent:
        return self._agent(await self.calls(self.app.get_agent, _uuid(request.id, "id")))

    async def UpdateAgent(
        self, request: routing_pb2.UpdateAgentRequest, context: Context
    ) -> routing_pb2.Agent:
        given = request.agent
        agent_id = _uuid(given.id, "agent.id")
        paths = _mask(request.update_mask.paths, AGENT_FIELDS, "update_mask")
        expected = _expected_version(request.etag)
        with _fields("agent"):
            skills = _skills(given.skills, "skills") if "skills" in paths else None
            capacity = _capacity(given.capacity, "capacity") if "capacity" in paths else None
            agent = await self.calls(
                self.app.update_agent,
                agent_id,
                display_name=given.display_name if "display_name" in paths else None,
                teams=list(given.teams) if "teams" in paths else None,
                languages=list(given.languages) if "languages" in paths else None,
                skills=skills,
                capacity=capacity,
                expected_version=expected,
            )
        return self._agent(agent)

    async def ListAgents(
        self, request: routing_pb2.ListAgentsRequest, context: Context
    ) -> routing_pb2.ListAgentsResponse:
        size, after = _page(request.page_size, request.page_token)
        presence = _member(request.presence, _PRESENCES, "presence", required=False)
        team = request.team.strip().lower()
        agents = await self.calls(self.app.list_agents)
        chosen = [
            agent
            for agent in agents
            if agent.id.int > after
            and (presence is None or agent.presence is presence)
            and (not team or team in agent.teams)
        ]
        page = chosen[:size]
        return pb.ListAgentsResponse(
            agents=[self._agent(agent) for agent in page],
            next_page_token=str(page[-1].id) if len(chosen) > size else "",
        )

    async def SetPresence(
        self, request: routing_pb2.SetPresenceRequest, context: Context
    ) -> routing_pb2.Agent:
        agent_id = _uuid(request.agent_id, "agent_id")
        presence = _required(request.presence, _PRESENCES, "presence")
        return self._agent(await self.calls(self.app.set_presence, agent_id, presence))

    # --- queues ---

    async def CreateQueue(
        self, request: routing_pb2.CreateQueueRequest, context: Context
    ) -> routing_pb2.RoutingQueue:
        given = request.queue
        queue_id = _optional_uuid(given.id, "queue.id")
        with _fields("queue"):
            queue = await self.calls(
                self.app.create_queue_once,
                request_id=request.request_id or None,
                name=given.name,
                channels=_channels(given.channels, "channels"),
                requirements=_requirements(given.requirements, "requirements"),
                priority=given.priority,
                service_level=(
                    _service_level(given.service_level) if given.HasField("service_level") else None
                ),
                offer_timeout_seconds=given.offer_timeout_seconds or 30,
                max_misses=given.max_misses or 3,
                overflow_queues=list(given.overflow_queues),
                routing_steps=_steps(given.routing_steps, "routing_steps"),
                queue_id=queue_id,
            )
        return queue_message(queue)

    async def GetQueue(
        self, request: routing_pb2.GetQueueRequest, context: Context
    ) -> routing_pb2.RoutingQueue:
        return queue_message(await self.calls(self.app.get_queue, _uuid(request.id, "id")))

    async def UpdateQueue(
        self, request: routing_pb2.UpdateQueueRequest, context: Context
    ) -> routing_pb2.RoutingQueue:
        given = request.queue
        queue_id = _uuid(given.id, "queue.id")
        paths = _mask(request.update_mask.paths, QUEUE_FIELDS, "update_mask")
        expected = _expected_version(request.etag)
        if "archived" in paths and not given.archived:
            raise InvalidValue("queue.archived", "an archived queue stays archived")
        with _fields("queue"):
            queue = await self.calls(
                self.app.update_queue_settings,
                queue_id,
                expected_version=expected,
                channels=_channels(given.channels, "channels") if "channels" in paths else None,
                requirements=(
                    _requirements(given.requirements, "requirements")
                    if "requirements" in paths
                    else None
                ),
                priority=given.priority if "priority" in paths else None,
                service_level=(
                    _service_level(given.service_level) if "service_level" in paths else None
                ),
                offer_timeout_seconds=(
                    given.offer_timeout_seconds if "offer_timeout_seconds" in paths else None
                ),
                max_misses=given.max_misses if "max_misses" in paths else None,
                overflow_queues=(
                    list(given.overflow_queues) if "overflow_queues" in paths else None
                ),
                routing_steps=(
                    _steps(given.routing_steps, "routing_steps")
                    if "routing_steps" in paths
                    else None
                ),
                archive="archived" in paths,
            )
        return queue_message(queue)

    async def ListQueues(
        self, request: routing_pb2.ListQueuesRequest, context: Context
    ) -> routing_pb2.ListQueuesResponse:
        size, after = _page(request.page_size, request.page_token)
        queues = await self.calls(self.app.list_queues)
        chosen = [
            queue
            for queue in queues
            if queue.id.int > after and (request.show_archived or not queue.archived)
        ]
        page = chosen[:size]
        return pb.ListQueuesResponse(
            queues=[queue_message(queue) for queue in page],
            next_page_token=str(page[-1].id) if len(chosen) > size else "",
        )

    async def GetQueueStatus(
        self, request: routing_pb2.GetQueueStatusRequest, context: Context
    ) -> routing_pb2.RoutingQueueStatus:
        queue_id = _uuid(request.queue_id, "queue_id")
        now = self.app.clock()
        status = await self.calls(self.app.queue_status, queue_id, at=now)
        return status_message(status, now)

    # --- work ---

    async def SubmitTask(
        self, request: routing_pb2.SubmitTaskRequest, context: Context
    ) -> routing_pb2.RoutingTask:
        given = request.task
        with _fields("task"):
            channel = _required(given.channel, _CHANNELS, "channel")
            requirements = _requirements(given.requirements, "requirements")
            preferred = _optional_uuid(given.preferred_agent_id, "preferred_agent_id")
            last = _optional_uuid(given.last_agent_id, "last_agent_id")
            since = (
                given.wait_start_time.ToDatetime(tzinfo=UTC)
                if given.HasField("wait_start_time")
                else None
            )
            task = await self.calls(
                self.app.submit_task,
                queue=given.queue,
                channel=channel,
                requirements=requirements,
                priority=given.priority,
                preferred_agent_id=preferred,
                last_agent_id=last,
                attributes=[Attribute(key=a.key, value=a.value) for a in given.attributes],
                waiting_since=since,
                request_id=request.request_id or None,
            )
        return task_message(task)

    async def GetTask(
        self, request: routing_pb2.GetTaskRequest, context: Context
    ) -> routing_pb2.RoutingTask:
        return task_message(await self.calls(self.app.get_task, _uuid(request.id, "id")))

    async def CompleteTask(
        self, request: routing_pb2.CompleteTaskRequest, context: Context
    ) -> routing_pb2.RoutingTask:
        task_id = _uuid(request.task_id, "task_id")
        reason = ReleaseReason.CANCELLED if request.cancelled else ReleaseReason.COMPLETED
        return task_message(await self.calls(self.app.complete_task, task_id, reason))

    async def AcceptOffer(
        self, request: routing_pb2.AcceptOfferRequest, context: Context
    ) -> routing_pb2.RoutingTask:
        task_id = _uuid(request.task_id, "task_id")
        agent_id = _uuid(request.agent_id, "agent_id")
        return task_message(await self.calls(self.app.accept_offer, task_id, agent_id))

    async def RejectOffer(
        self, request: routing_pb2.RejectOfferRequest, context: Context
    ) -> routing_pb2.RoutingTask:
        task_id = _uuid(request.task_id, "task_id")
        agent_id = _uuid(request.agent_id, "agent_id")
        return task_message(await self.calls(self.app.reject_offer, task_id, agent_id))

    async def StreamOffers(
        self, request: routing_pb2.StreamOffersRequest, context: Context
    ) -> AsyncIterator[routing_pb2.RoutingOfferEvent]:
        agent_id = _uuid(request.agent_id, "agent_id")
        async with self.feeds.subscribe(agent_id) as queue:
            # Subscribed first, then read: an offer made in between arrives twice at worst.
            pending = await self.calls(self.app.offers_for, agent_id)
            sent: set[tuple[UUID, int]] = set()
            for task in pending:
                sent.add((task.id, task.offers))
                yield pb.RoutingOfferEvent(
                    kind=pb.OFFER_EVENT_KIND_OFFERED,
                    task=task_message(task),
                    event_time=_timestamp(task.offered_at),
                )
            while True:
                item = await queue.get()
                if item is _CLOSING:
                    raise Unavailable("the service is stopping; subscribe again")
                kind, reason, task, when = cast(OfferNews, item)
                if kind == pb.OFFER_EVENT_KIND_OFFERED and (task.id, task.offers) in sent:
                    continue
                yield pb.RoutingOfferEvent(
                    kind=cast(routing_pb2.OfferEventKind.ValueType, kind),
                    task=task_message(task),
                    event_time=_timestamp(when),
                    reason=reason,
                )

    async def ExplainRouting(
        self, request: routing_pb2.ExplainRoutingRequest, context: Context
    ) -> routing_pb2.RoutingExplanation:
        task_id = _uuid(request.task_id, "task_id")
        return explanation_message(await self.calls(self.app.explain, task_id))
