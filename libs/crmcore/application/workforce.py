"""The workforce application of the routing context: agents and queues, commands and queries.

Each command loads an aggregate, lets it decide (the aggregate returns events or raises a
`DomainError`), stores the events in one transaction and returns the new state. Uniqueness and
idempotency are the store's job: a queue's `QueueNameClaim` and an agent registration's
`AgentRequestKey` are written in the same `record()` call as the first event, so a second
writer fails on the store's uniqueness of (aggregate id, version).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TypeVar
from uuid import UUID, uuid4

from crmcore.application.base import CRMApplication, project
from crmcore.domain.agent import (
    Agent,
    AgentRequestKey,
    Capacity,
    OfferMissReason,
    Presence,
    Skill,
    request_key_id,
)
from crmcore.domain.base import Aggregate, DomainEvent
from crmcore.domain.errors import AlreadyExists, ConcurrencyConflict, NotFound
from crmcore.domain.queue import (
    Queue,
    QueueNameClaim,
    Requirements,
    RoutingStep,
    ServiceLevelTarget,
    name_claim_id,
    queue_name,
)
from crmcore.domain.values import Channel

TState = TypeVar("TState", bound=Aggregate)

Produced = DomainEvent | Iterable[DomainEvent]


class WorkforceApplication(CRMApplication):
    """Agents (who can take which work, and what they have in hand) and queues (where work
    waits and what it asks for). The routing engine reads both and drives `assign_work`,
    `release_work` and `record_missed_offer`."""

    name = "routing"
    aggregate_kind = "agent or queue"

    # --- agents ---

    def register_agent(
        self,
        *,
        display_name: str,
        teams: Sequence[str] = (),
        skills: Sequence[Skill] = (),
        languages: Sequence[str] = (),
        capacity: Capacity | Mapping[str, int] | None = None,
        agent_id: UUID | None = None,
        request_id: str | None = None,
        at: datetime | None = None,
    ) -> Agent:
        """Registers an agent (offline, nothing in hand). A retry with the same `request_id`
        returns the agent the first call registered instead of registering another."""
        when = _now(at)
        key_id = None if request_id is None else request_key_id(request_id)
        if key_id is not None and (earlier := self._agent_for_request(key_id)) is not None:
            return earlier
        registered = Agent.register(
            agent_id or uuid4(),
            display_name=display_name,
            teams=teams,
            skills=skills,
            languages=languages,
            capacity=capacity,
            at=when,
        )
        events: list[DomainEvent] = [registered]
        if request_id is not None:
            events.append(AgentRequestKey.record(request_id, registered.originator_id, at=when))
        try:
            self.record(*events)
        except ConcurrencyConflict:
            # A concurrent retry of the same request won the race: answer with its agent.
            if key_id is not None and (earlier := self._agent_for_request(key_id)) is not None:
                return earlier
            raise AlreadyExists(f"agent {registered.originator_id} already exists") from None
        return registered.mutate(None)

    def update_agent_profile(
        self,
        agent_id: UUID,
        *,
        display_name: str | None = None,
        teams: Sequence[str] | None = None,
        languages: Sequence[str] | None = None,
        expected_version: int | None = None,
        at: datetime | None = None,
    ) -> Agent:
        when = _now(at)
        return self._execute(
            "agent",
            agent_id,
            Agent,
            lambda agent: agent.update_profile(
                display_name=display_name, teams=teams, languages=languages, at=when
            ),
            expected_version,
        )

    def change_agent_skills(
        self,
        agent_id: UUID,
        skills: Sequence[Skill],
        *,
        expected_version: int | None = None,
        at: datetime | None = None,
    ) -> Agent:
        when = _now(at)
        return self._execute(
            "agent",
            agent_id,
            Agent,
            lambda agent: agent.change_skills(skills, at=when),
            expected_version,
        )

    def change_agent_capacity(
        self,
        agent_id: UUID,
        capacity: Capacity | Mapping[str, int],
        *,
        expected_version: int | None = None,
        at: datetime | None = None,
    ) -> Agent:
        when = _now(at)
        return self._execute(
            "agent",
            agent_id,
            Agent,
            lambda agent: agent.change_capacity(capacity, at=when),
            expected_version,
        )

    def set_presence(
        self, agent_id: UUID, presence: Presence | str, *, at: datetime | None = None
    ) -> Agent:
        when = _now(at)
        return self._execute(
            "agent", agent_id, Agent, lambda agent: agent.set_presence(presence, at=when)
        )

    def assign_work(
        self,
        agent_id: UUID,
        work_id: UUID,
        channel: Channel | str,
        *,
        at: datetime | None = None,
    ) -> Agent:
        when = _now(at)
        return self._execute(
            "agent", agent_id, Agent, lambda agent: agent.assign_work(work_id, channel, at=when)
        )

    def release_work(self, agent_id: UUID, work_id: UUID, *, at: datetime | None = None) -> Agent:
        when = _now(at)
        return self._execute(
            "agent", agent_id, Agent, lambda agent: agent.release_work(work_id, at=when)
        )

    def record_missed_offer(
        self,
        agent_id: UUID,
        work_id: UUID,
        *,
        reason: OfferMissReason | str,
        cooldown: timedelta,
        max_misses: int | None = None,
        at: datetime | None = None,
    ) -> Agent:
        """Counts a rejected or timed-out offer and starts the cooldown; with the queue's
        `max_misses`, reaching it also takes an available agent away (to break)."""
        when = _now(at)
        return self._execute(
            "agent",
            agent_id,
            Agent,
            lambda agent: agent.miss_offer(
                work_id, reason=reason, cooldown=cooldown, max_misses=max_misses, at=when
            ),
        )

    def clear_agent_cooldown(self, agent_id: UUID, *, at: datetime | None = None) -> Agent:
        when = _now(at)
        return self._execute("agent", agent_id, Agent, lambda agent: agent.clear_cooldown(at=when))

    def get_agent(self, agent_id: UUID) -> Agent:
        return self._load("agent", agent_id, Agent)

    # --- queues ---

    def create_queue(
        self,
        *,
        name: str,
        channels: Sequence[Channel | str],
        requirements: Requirements | None = None,
        priority: int = 0,
        service_level: ServiceLevelTarget | None = None,
        offer_timeout_seconds: int = 30,
        max_misses: int = 3,
        overflow_queues: Sequence[str] = (),
        routing_steps: Sequence[RoutingStep] = (),
        queue_id: UUID | None = None,
        at: datetime | None = None,
    ) -> Queue:
        """Creates a queue; its name (in any case) must not be taken by another queue, archived
        ones included (AlreadyExists)."""
        when = _now(at)
        created = Queue.create(
            queue_id or uuid4(),
            name=name,
            channels=channels,
            requirements=requirements,
            priority=priority,
            service_level=service_level,
            offer_timeout_seconds=offer_timeout_seconds,
            max_misses=max_misses,
            overflow_queues=overflow_queues,
            routing_steps=routing_steps,
            at=when,
        )
        if self._name_claim(created.name) is not None:
            raise _name_taken(created.name)
        claim = QueueNameClaim.claim(created.name, created.originator_id, at=when)
        try:
            self.record(created, claim)
        except ConcurrencyConflict:
            if self._name_claim(created.name) is not None:
                raise _name_taken(created.name) from None
            raise AlreadyExists(f"queue {created.originator_id} already exists") from None
        return created.mutate(None)

    def update_queue(
        self,
        queue_id: UUID,
        *,
        expected_version: int | None = None,
        channels: Sequence[Channel | str] | None = None,
        requirements: Requirements | None = None,
        priority: int | None = None,
        service_level: ServiceLevelTarget | None = None,
        offer_timeout_seconds: int | None = None,
        max_misses: int | None = None,
        overflow_queues: Sequence[str] | None = None,
        at: datetime | None = None,
    ) -> Queue:
        """Changes the given settings (None: unchanged). The name is the queue's key and does
        not change."""
        when = _now(at)
        return self._execute(
            "queue",
            queue_id,
            Queue,
            lambda queue: queue.update(
                channels=channels,
                requirements=requirements,
                priority=priority,
                service_level=service_level,
                offer_timeout_seconds=offer_timeout_seconds,
                max_misses=max_misses,
                overflow_queues=overflow_queues,
                at=when,
            ),
            expected_version,
        )

    def change_routing_steps(
        self,
        queue_id: UUID,
        routing_steps: Sequence[RoutingStep],
        *,
        expected_version: int | None = None,
        at: datetime | None = None,
    ) -> Queue:
        when = _now(at)
        return self._execute(
            "queue",
            queue_id,
            Queue,
            lambda queue: queue.change_routing_steps(routing_steps, at=when),
            expected_version,
        )

    def archive_queue(
        self,
        queue_id: UUID,
        *,
        expected_version: int | None = None,
        at: datetime | None = None,
    ) -> Queue:
        when = _now(at)
        return self._execute(
            "queue", queue_id, Queue, lambda queue: queue.archive(at=when), expected_version
        )

    def get_queue(self, queue_id: UUID) -> Queue:
        return self._load("queue", queue_id, Queue)

    def find_queue(self, name: str) -> Queue | None:
        """The queue called `name` (any case), archived or not; None if there is none."""
        claim = self._name_claim(queue_name(name))
        return None if claim is None else self.get_queue(claim.queue_id)

    # --- plumbing ---

    def _load(self, kind: str, aggregate_id: UUID, cls: type[TState]) -> TState:
        try:
            return self.load(aggregate_id, cls)
        except NotFound:
            raise NotFound(kind, aggregate_id) from None

    def _execute(
        self,
        kind: str,
        aggregate_id: UUID,
        cls: type[TState],
        command: Callable[[TState], Produced],
        expected_version: int | None = None,
    ) -> TState:
        """Loads, checks the expected version (etag), runs the command, stores its events
        (none when the command changes nothing) and returns the new state."""
        state = self._load(kind, aggregate_id, cls)
        if expected_version is not None and expected_version != state.version:
            raise ConcurrencyConflict(
                f"{kind} {aggregate_id} is at version {state.version}, "
                f"not the expected {expected_version}; reload and retry"
            )
        produced = command(state)
        events = (produced,) if isinstance(produced, DomainEvent) else tuple(produced)
        if not events:
            return state
        try:
            self.record(*events)
        except ConcurrencyConflict:
            raise ConcurrencyConflict(
                f"{kind} {aggregate_id} was changed concurrently; reload and retry"
            ) from None
        new_state: TState = project(state, events)
        return new_state

    def _agent_for_request(self, key_id: UUID) -> Agent | None:
        try:
            key = self.load(key_id, AgentRequestKey)
        except NotFound:
            return None
        return self.get_agent(key.agent_id)

    def _name_claim(self, name: str) -> QueueNameClaim | None:
        try:
            return self.load(name_claim_id(name), QueueNameClaim)
        except NotFound:
            return None


def _now(at: datetime | None) -> datetime:
    return datetime.now(UTC) if at is None else at


def _name_taken(name: str) -> AlreadyExists:
    return AlreadyExists(f"a queue named {name!r} already exists")
