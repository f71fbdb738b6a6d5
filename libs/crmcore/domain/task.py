"""Tasks: the work the routing engine places, from arrival in a queue to leaving routing.

A `Task` is one piece of work waiting for an agent, offered to one, or held by one. Work comes
from interactions (the task id is the interaction id) or straight from a system that routes its
own work (`SubmitTask`). Its life in routing is:

    queued ─▶ waiting ─▶ offered ─▶ accepted/assigned ─▶ released
                 ▲          │ rejected, timed out, revoked (back in its place)
                 └──────────┘
    waiting ─▶ fell back (call-back or bot, a queue's last routing step)

The events are published on `crm.routing.<event>`: `task_queued`, `offered`, `accepted`,
`rejected`, `timed_out`, `offer_revoked`, `assigned`, `task_released`, `task_fell_back`. An
offer carries a `Decision`: why this agent, why this work — the answer to "explain routing".

Commands check the task's status and return events; the routing engine (crmcore.domain.routing)
decides when to call them and keeps the agents' side (their aggregates' events) in step.

Tasks, their events and decisions are immutable trees of values, so they can never be part of
a reference cycle: they are declared `gc=False`, which keeps the hundred thousand tasks an
engine may hold out of the garbage collector's work.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import ClassVar
from uuid import NAMESPACE_URL, UUID, uuid5

import msgspec

from crmcore.domain import values
from crmcore.domain.agent import Requirements, check_requirements
from crmcore.domain.base import Aggregate, Event, advance
from crmcore.domain.errors import InvalidValue, RuleViolation
from crmcore.domain.queue import FallbackKind, OverflowPool, queue_name
from crmcore.domain.values import Channel

MIN_TASK_PRIORITY = 0
MAX_TASK_PRIORITY = 10
MAX_ATTRIBUTES = 50
MAX_ATTRIBUTE_LENGTH = 500
MAX_REQUEST_ID_LENGTH = 128

TASK_REQUEST_NAMESPACE = uuid5(NAMESPACE_URL, "urn:crm:routing:task-request-id")


class TaskStatus(enum.StrEnum):
    WAITING = "waiting"
    OFFERED = "offered"
    ASSIGNED = "assigned"
    RELEASED = "released"
    FELL_BACK = "fell_back"


#: Statuses in which the task is still routing's business.
OPEN_STATUSES: frozenset[TaskStatus] = frozenset(
    {TaskStatus.WAITING, TaskStatus.OFFERED, TaskStatus.ASSIGNED}
)


class TaskSource(enum.StrEnum):
    """Where the work came from: an interaction (its events drive the task) or a system that
    submitted it directly and completes it itself."""

    INTERACTION = "interaction"
    DIRECT = "direct"


class ReleaseReason(enum.StrEnum):
    """Why work left routing (and, if an agent held it, freed the agent's capacity)."""

    WRAP_UP = "wrap_up"
    RESOLVED = "resolved"
    CLOSED = "closed"
    ABANDONED = "abandoned"
    TRANSFERRED = "transferred"
    REQUEUED = "requeued"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    #: Someone routing does not know (or who has no room) answered it.
    ANSWERED_ELSEWHERE = "answered_elsewhere"


class RevokeReason(enum.StrEnum):
    """Why an offer was taken back without the agent missing it."""

    AGENT_UNAVAILABLE = "agent_unavailable"
    ANSWERED_BY_ANOTHER = "answered_by_another"


class MatchDirection(enum.StrEnum):
    """Who looked for whom: work that became routable chose the best agent, or an agent with
    freed capacity pulled the oldest eligible work."""

    WORK_TO_AGENT = "work_to_agent"
    AGENT_TO_WORK = "agent_to_work"


class AgentRule(enum.StrEnum):
    """Which rule picked the agent, in the order they are tried."""

    PREFERRED_AGENT = "preferred_agent"
    LAST_AGENT = "last_agent"
    BEST_MATCH = "best_match"
    #: The agent took the work themselves (answered it from the queue).
    PICKED = "picked"


class Attribute(msgspec.Struct, frozen=True, kw_only=True):
    """A key/value a submitting system attaches to its task (shown to the agent)."""

    key: str
    value: str


class Decision(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Why this agent got this work, as the engine saw it at the moment of the offer.

    Why this work: `direction` (pulled by a freed agent, or looking for an agent itself),
    `priority` and `waited_seconds`, combined into `effective_wait_seconds` (the order of all
    waiting work); `step` routing steps reached, which made it ask `requirements` and consider
    the agents of `pools`. Why this agent: `agent_rule`, then `proficiency` (the agent's levels
    summed over the required skills), `load` (0–1, before the offer) and `idle_since`.
    """

    direction: MatchDirection
    agent_rule: AgentRule
    step: int
    requirements: Requirements
    pools: tuple[OverflowPool, ...]
    proficiency: int
    load: float
    idle_since: datetime | None
    priority: int
    waited_seconds: float
    effective_wait_seconds: float


def _at(at: datetime) -> datetime:
    return values.aware(at, "at").astimezone(UTC)


def task_priority(value: int, field: str = "priority") -> int:
    return values.score(value, field, low=MIN_TASK_PRIORITY, high=MAX_TASK_PRIORITY)


def check_attributes(raw: Sequence[Attribute], field: str = "attributes") -> tuple[Attribute, ...]:
    if len(raw) > MAX_ATTRIBUTES:
        raise InvalidValue(field, f"more than {MAX_ATTRIBUTES} attributes")
    seen: dict[str, int] = {}
    checked: list[Attribute] = []
    for index, attribute in enumerate(raw):
        key = values.required_text(attribute.key, f"{field}[{index}].key", max_length=64)
        if key in seen:
            raise InvalidValue(
                f"{field}[{index}].key", f"duplicate key {key!r} (also {field}[{seen[key]}])"
            )
        seen[key] = index
        value = values.text(attribute.value, f"{field}[{index}].value", max_length=500)
        checked.append(Attribute(key=key, value=value))
    return tuple(checked)


def request_task_id(request_id: str) -> UUID:
    """The id of the task a `SubmitTask` with `request_id` creates: a retry names the same
    task, so the store's uniqueness of (task, version 1) makes submitting idempotent."""
    checked = values.required_text(request_id, "request_id", max_length=MAX_REQUEST_ID_LENGTH)
    return uuid5(TASK_REQUEST_NAMESPACE, checked)


class Task(Aggregate, frozen=True, kw_only=True, gc=False):
    """One piece of work in routing (module docstring).

    `queue` is the queue's name (how interactions name it); `requirements` and `priority`
    (0–10) are the work's own, added to its queue's. `queued_at` is when the customer started
    waiting (kept across transfers); `waiting_since` where routing counts the current wait from
    (widening steps, order of work). `agent_id` is the agent it is offered to or held by.
    `interaction_version` is the last interaction event applied (redeliveries are ignored).
    """

    queue: str
    channel: Channel
    requirements: Requirements
    priority: int
    preferred_agent_id: UUID | None
    last_agent_id: UUID | None
    queued_at: datetime
    waiting_since: datetime
    source: TaskSource
    attributes: tuple[Attribute, ...]
    interaction_version: int
    status: TaskStatus
    agent_id: UUID | None = None
    offered_at: datetime | None = None
    offer_expires_at: datetime | None = None
    assigned_at: datetime | None = None
    offers: int = 0
    decision: Decision | None = None
    release_reason: ReleaseReason | None = None
    fallback: FallbackKind | None = None

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    # --- commands ---

    @classmethod
    def enqueue(
        cls,
        task_id: UUID,
        *,
        queue: str,
        channel: Channel | str,
        requirements: Requirements | None = None,
        priority: int = 0,
        preferred_agent_id: UUID | None = None,
        last_agent_id: UUID | None = None,
        queued_at: datetime | None = None,
        waiting_since: datetime | None = None,
        source: TaskSource = TaskSource.DIRECT,
        attributes: Sequence[Attribute] = (),
        interaction_version: int = 0,
        previous: Task | None = None,
        at: datetime,
    ) -> TaskQueued:
        """Puts work in a queue; `previous` is the task's earlier life (it must have left
        routing: work waits in one place at a time). The wait counts from `waiting_since`
        (default now), the customer's from `queued_at` (default `waiting_since`)."""
        timestamp = _at(at)
        checked_queue = queue_name(queue, "queue")
        checked_channel = values.enum_value(Channel, channel, "channel")
        checked_requirements = check_requirements(requirements or Requirements())
        since = timestamp if waiting_since is None else _at(waiting_since)
        first = since if queued_at is None else _at(queued_at)
        if previous is not None and previous.is_open:
            raise RuleViolation(
                f"task {task_id} is {previous.status}; release it before queueing it again"
            )
        return TaskQueued(
            originator_id=task_id,
            originator_version=1 if previous is None else previous.version + 1,
            timestamp=timestamp,
            interaction_version=interaction_version,
            queue=checked_queue,
            channel=checked_channel,
            requirements=checked_requirements,
            priority=task_priority(priority),
            preferred_agent_id=preferred_agent_id,
            last_agent_id=last_agent_id,
            queued_at=first,
            waiting_since=since,
            source=source,
            attributes=check_attributes(attributes),
        )

    def offer(
        self, agent_id: UUID, *, expires_at: datetime, decision: Decision, at: datetime
    ) -> RoutingOffered:
        self._require(TaskStatus.WAITING, "offered")
        return RoutingOffered(
            originator_id=self.id,
            originator_version=self.version + 1,
            timestamp=at,
            agent_id=agent_id,
            channel=self.channel,
            expires_at=expires_at,
            decision=decision,
        )

    def accept(
        self, agent_id: UUID, *, interaction_version: int = 0, at: datetime
    ) -> tuple[RoutingAccepted, RoutingAssigned]:
        """The offered agent takes the work: accepted, and from now on the agent's."""
        timestamp = _at(at)
        self._require_offered_to(agent_id)
        return (
            RoutingAccepted(
                originator_id=self.id,
                originator_version=self.version + 1,
                timestamp=timestamp,
                interaction_version=interaction_version,
                agent_id=agent_id,
            ),
            RoutingAssigned(
                originator_id=self.id,
                originator_version=self.version + 2,
                timestamp=timestamp,
                interaction_version=interaction_version,
                agent_id=agent_id,
                channel=self.channel,
                queue=self.queue,
                queued_at=self.queued_at,
                agent_rule=self.decision.agent_rule if self.decision else AgentRule.BEST_MATCH,
            ),
        )

    def reject(
        self, agent_id: UUID, *, interaction_version: int = 0, at: datetime
    ) -> RoutingRejected:
        """The offered agent said no: the work goes back to its place in the queue."""
        timestamp = _at(at)
        self._require_offered_to(agent_id)
        return RoutingRejected(
            originator_id=self.id,
            originator_version=self.version + 1,
            timestamp=timestamp,
            interaction_version=interaction_version,
            agent_id=agent_id,
        )

    def time_out(self, *, interaction_version: int = 0, at: datetime) -> RoutingTimedOut:
        """Nobody answered the offer in time: the work goes back to its place."""
        self._require(TaskStatus.OFFERED, "timed out")
        assert self.agent_id is not None
        return RoutingTimedOut(
            originator_id=self.id,
            originator_version=self.version + 1,
            timestamp=_at(at),
            interaction_version=interaction_version,
            agent_id=self.agent_id,
        )

    def revoke(self, reason: RevokeReason, *, at: datetime) -> RoutingOfferRevoked:
        """Takes the offer back through no fault of the agent (no cooldown)."""
        self._require(TaskStatus.OFFERED, "revoked")
        assert self.agent_id is not None
        return RoutingOfferRevoked(
            originator_id=self.id,
            originator_version=self.version + 1,
            timestamp=_at(at),
            agent_id=self.agent_id,
            reason=reason,
        )

    def assign_to(
        self, agent_id: UUID, *, interaction_version: int = 0, at: datetime
    ) -> RoutingAssigned:
        """The work becomes `agent_id`'s without an offer (they picked it from the queue)."""
        if self.status is not TaskStatus.WAITING:
            raise RuleViolation(f"task {self.id} is {self.status}, not waiting")
        return RoutingAssigned(
            originator_id=self.id,
            originator_version=self.version + 1,
            timestamp=_at(at),
            interaction_version=interaction_version,
            agent_id=agent_id,
            channel=self.channel,
            queue=self.queue,
            queued_at=self.queued_at,
            agent_rule=AgentRule.PICKED,
        )

    def release(
        self, reason: ReleaseReason | str, *, interaction_version: int = 0, at: datetime
    ) -> TaskReleased:
        """The work leaves routing; whoever held it (or had it offered) has room again."""
        why = values.enum_value(ReleaseReason, reason, "reason")
        timestamp = _at(at)
        if not self.is_open:
            raise RuleViolation(f"task {self.id} already left routing ({self.status})")
        return TaskReleased(
            originator_id=self.id,
            originator_version=self.version + 1,
            timestamp=timestamp,
            interaction_version=interaction_version,
            reason=why,
            from_status=self.status,
            agent_id=self.agent_id,
            queue=self.queue,
        )

    def fall_back(self, to: FallbackKind, *, at: datetime) -> TaskFellBack:
        """The queue's last resort: a call-back is offered, or a bot takes over."""
        self._require(TaskStatus.WAITING, "handed to a fallback")
        return TaskFellBack(
            originator_id=self.id,
            originator_version=self.version + 1,
            timestamp=_at(at),
            to=to,
            queue=self.queue,
        )

    def _require(self, status: TaskStatus, doing: str) -> None:
        if self.status is not status:
            raise RuleViolation(f"task {self.id} is {self.status}; only {status} work is {doing}")

    def _require_offered_to(self, agent_id: UUID) -> None:
        if self.status is not TaskStatus.OFFERED or self.agent_id != agent_id:
            raise RuleViolation(f"task {self.id} is not offered to agent {agent_id}")


# --- events ------------------------------------------------------------------------------------


class TaskEvent(Event[Task], frozen=True, kw_only=True, gc=False):
    """An event of a task; `interaction_version` is the interaction event that caused it (0 if
    none), so a redelivered interaction event is recognised and ignored."""

    context: ClassVar[str] = "routing"

    interaction_version: int = 0

    def bus_attributes(self) -> dict[str, str]:
        return {"taskid": str(self.originator_id)}

    def _moved(self, state: Task, **changes: object) -> Task:
        return advance(
            state,
            self,
            interaction_version=max(state.interaction_version, self.interaction_version),
            **changes,
        )


class TaskQueued(TaskEvent, frozen=True, kw_only=True):
    """Work entered a queue (again, after a transfer or reopening: a fresh start in routing)."""

    queue: str
    channel: Channel
    requirements: Requirements
    priority: int
    preferred_agent_id: UUID | None
    last_agent_id: UUID | None
    queued_at: datetime
    waiting_since: datetime
    source: TaskSource
    attributes: tuple[Attribute, ...]

    def mutate(self, state: Task | None) -> Task:
        # Deliberately independent of any earlier life: the engine forgets tasks that left
        # routing, and its state must equal the store's projection.
        return Task(
            id=self.originator_id,
            version=self.originator_version,
            created_on=self.timestamp,
            modified_on=self.timestamp,
            queue=self.queue,
            channel=self.channel,
            requirements=self.requirements,
            priority=self.priority,
            preferred_agent_id=self.preferred_agent_id,
            last_agent_id=self.last_agent_id,
            queued_at=self.queued_at,
            waiting_since=self.waiting_since,
            source=self.source,
            attributes=self.attributes,
            interaction_version=self.interaction_version,
            status=TaskStatus.WAITING,
        )


class RoutingOffered(TaskEvent, frozen=True, kw_only=True):
    agent_id: UUID
    channel: Channel
    expires_at: datetime
    decision: Decision

    def bus_attributes(self) -> dict[str, str]:
        return {"taskid": str(self.originator_id), "agentid": str(self.agent_id)}

    def mutate(self, state: Task | None) -> Task:
        # The hot path of routing: one replace, no helper layers (same result as `_moved`).
        if state is None:
            raise ValueError("RoutingOffered cannot start a task")
        return msgspec.structs.replace(
            state,
            version=self.originator_version,
            modified_on=self.timestamp,
            interaction_version=max(state.interaction_version, self.interaction_version),
            status=TaskStatus.OFFERED,
            agent_id=self.agent_id,
            offered_at=self.timestamp,
            offer_expires_at=self.expires_at,
            offers=state.offers + 1,
            decision=self.decision,
        )


class _OfferEnded(TaskEvent, frozen=True, kw_only=True):
    """An offer ended without the agent taking the work: back to waiting, place kept."""

    agent_id: UUID

    def bus_attributes(self) -> dict[str, str]:
        return {"taskid": str(self.originator_id), "agentid": str(self.agent_id)}

    def apply(self, state: Task) -> Task:
        return self._moved(
            state,
            status=TaskStatus.WAITING,
            agent_id=None,
            offered_at=None,
            offer_expires_at=None,
        )


class RoutingRejected(_OfferEnded, frozen=True, kw_only=True):
    pass


class RoutingTimedOut(_OfferEnded, frozen=True, kw_only=True):
    pass


class RoutingOfferRevoked(_OfferEnded, frozen=True, kw_only=True):
    reason: RevokeReason


class RoutingAccepted(TaskEvent, frozen=True, kw_only=True):
    agent_id: UUID

    def bus_attributes(self) -> dict[str, str]:
        return {"taskid": str(self.originator_id), "agentid": str(self.agent_id)}


class RoutingAssigned(TaskEvent, frozen=True, kw_only=True):
    """The work is the agent's now (after an accepted offer, or picked by the agent)."""

    agent_id: UUID
    channel: Channel
    queue: str
    queued_at: datetime
    agent_rule: AgentRule

    def bus_attributes(self) -> dict[str, str]:
        return {"taskid": str(self.originator_id), "agentid": str(self.agent_id)}

    def apply(self, state: Task) -> Task:
        return self._moved(
            state,
            status=TaskStatus.ASSIGNED,
            agent_id=self.agent_id,
            assigned_at=self.timestamp,
            offer_expires_at=None,
        )


class TaskReleased(TaskEvent, frozen=True, kw_only=True):
    reason: ReleaseReason
    from_status: TaskStatus
    agent_id: UUID | None
    queue: str

    def bus_attributes(self) -> dict[str, str]:
        attributes = {"taskid": str(self.originator_id)}
        if self.agent_id is not None:
            attributes["agentid"] = str(self.agent_id)
        return attributes

    def apply(self, state: Task) -> Task:
        return self._moved(
            state,
            status=TaskStatus.RELEASED,
            release_reason=self.reason,
            offer_expires_at=None,
        )


class TaskFellBack(TaskEvent, frozen=True, kw_only=True):
    to: FallbackKind
    queue: str

    def apply(self, state: Task) -> Task:
        return self._moved(state, status=TaskStatus.FELL_BACK, fallback=self.to)
