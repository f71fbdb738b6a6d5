"""A contact-centre floor for routing tests: queues, agents, work and a clock around one engine.

Every change goes the way the routing application makes it: a command returns events, the
engine folds them in, then decides at the floor's clock; `log` keeps every event in order, so
a test can replay it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid5

from crmcore.domain.agent import Presence, Requirements, Skill, SkillRequirement
from crmcore.domain.base import DomainEvent
from crmcore.domain.queue import Queue, RoutingStep, ServiceLevelTarget
from crmcore.domain.routing import RoutingEngine, RoutingPolicy
from crmcore.domain.task import Decision, ReleaseReason, RoutingOffered, Task, TaskStatus

T0 = datetime(2025, 4, 1, 9, 0, tzinfo=UTC)
NAMES = UUID("6d1f0e2a-6a43-4c59-9a7a-2f3c1f6f0a01")


def named(name: str) -> UUID:
    """A stable id per name, so runs (and tie-breaks by id) repeat exactly."""
    return uuid5(NAMES, name)


def requirements(
    skills: Mapping[str, int] | None = None, language: str | None = None
) -> Requirements:
    return Requirements(
        skills=tuple(
            SkillRequirement(skill=name, min_level=level) for name, level in (skills or {}).items()
        ),
        language=language,
    )


class Floor:
    def __init__(self, engine: RoutingEngine | None = None, policy: RoutingPolicy | None = None):
        self.engine = engine if engine is not None else RoutingEngine(policy)
        self.now = T0
        self.log: list[DomainEvent] = []
        self.decided: list[DomainEvent] = []

    # --- driving ---

    def run(self, events: DomainEvent | Iterable[DomainEvent] = ()) -> list[DomainEvent]:
        """Applies a command's events and decides at the clock; returns the decisions."""
        given = (events,) if isinstance(events, DomainEvent) else tuple(events)
        self.engine.apply_all(given)
        self.log.extend(given)
        self.decided = self.engine.decide(self.now)
        self.log.extend(self.decided)
        return self.decided

    def advance(self, seconds: float) -> list[DomainEvent]:
        self.now += timedelta(seconds=seconds)
        return self.run()

    def queue(
        self,
        name: str,
        *,
        channels: Sequence[str] = ("chat",),
        skills: Mapping[str, int] | None = None,
        language: str | None = None,
        priority: int = 0,
        steps: Sequence[RoutingStep] = (),
        offer_timeout: int = 30,
        max_misses: int = 3,
        overflow: Sequence[str] = (),
        threshold: int = 20,
    ) -> Queue:
        self.run(
            Queue.create(
                named(f"queue:{name}"),
                name=name,
                channels=channels,
                requirements=requirements(skills, language),
                priority=priority,
                routing_steps=steps,
                offer_timeout_seconds=offer_timeout,
                max_misses=max_misses,
                overflow_queues=overflow,
                service_level=ServiceLevelTarget(fraction=0.8, threshold_seconds=threshold),
                at=self.now,
            )
        )
        queue = self.engine.queue_named(name)
        assert queue is not None
        return queue

    def agent(
        self,
        name: str,
        *,
        skills: Mapping[str, int] | None = None,
        languages: Sequence[str] = (),
        teams: Sequence[str] = (),
        capacity: Mapping[str, int] | None = None,
        presence: Presence = Presence.AVAILABLE,
        agent_id: UUID | None = None,
    ) -> UUID:
        from crmcore.domain.agent import Agent

        identity = agent_id or named(f"agent:{name}")
        self.run(
            Agent.register(
                identity,
                display_name=name,
                teams=teams,
                skills=[Skill(name=skill, level=level) for skill, level in (skills or {}).items()],
                languages=languages,
                capacity=capacity if capacity is not None else {"chat": 3},
                at=self.now,
            )
        )
        if presence is not Presence.OFFLINE:
            self.presence(identity, presence)
        return identity

    def presence(self, agent_id: UUID, presence: Presence) -> list[DomainEvent]:
        agent = self.engine.agent(agent_id)
        assert agent is not None
        return self.run(agent.set_presence(presence, at=self.now))

    def capacity(self, agent_id: UUID, capacity: Mapping[str, int]) -> list[DomainEvent]:
        agent = self.engine.agent(agent_id)
        assert agent is not None
        return self.run(agent.change_capacity(capacity, at=self.now))

    def skills(self, agent_id: UUID, skills: Mapping[str, int]) -> list[DomainEvent]:
        agent = self.engine.agent(agent_id)
        assert agent is not None
        return self.run(
            agent.change_skills([Skill(name=s, level=lv) for s, lv in skills.items()], at=self.now)
        )

    def submit(
        self,
        queue: str,
        name: str,
        *,
        channel: str = "chat",
        priority: int = 0,
        skills: Mapping[str, int] | None = None,
        language: str | None = None,
        last_agent: UUID | None = None,
        preferred_agent: UUID | None = None,
        waited: float = 0.0,
    ) -> UUID:
        """Work `name` arrives in `queue` (having waited `waited` seconds already)."""
        task_id = named(f"task:{name}")
        since = self.now - timedelta(seconds=waited)
        event = self.engine.submit(
            task_id,
            queue=queue,
            channel=channel,
            requirements=requirements(skills, language),
            priority=priority,
            last_agent_id=last_agent,
            preferred_agent_id=preferred_agent,
            waiting_since=since,
            at=self.now,
        )
        self.run(event)
        return task_id

    def accept(self, task_id: UUID) -> list[DomainEvent]:
        task = self.task(task_id)
        assert task.agent_id is not None
        return self.run(self.engine.accept(task_id, task.agent_id, at=self.now))

    def reject(self, task_id: UUID) -> list[DomainEvent]:
        task = self.task(task_id)
        assert task.agent_id is not None
        return self.run(self.engine.reject(task_id, task.agent_id, at=self.now))

    def complete(
        self, task_id: UUID, reason: ReleaseReason = ReleaseReason.COMPLETED
    ) -> list[DomainEvent]:
        return self.run(self.engine.release(task_id, reason, at=self.now))

    # --- looking ---

    def task(self, task_id: UUID) -> Task:
        task = self.engine.task(task_id)
        assert task is not None, f"task {task_id} is not open"
        return task

    def decision(self, task_id: UUID) -> Decision:
        decision = self.task(task_id).decision
        assert decision is not None, f"task {task_id} was never offered"
        return decision

    def offered_to(self, task_id: UUID) -> UUID | None:
        task = self.engine.task(task_id)
        if task is None or task.status is not TaskStatus.OFFERED:
            return None
        return task.agent_id

    def offers(self, events: Iterable[DomainEvent] | None = None) -> list[tuple[UUID, UUID]]:
        """(task, agent) of every offer among `events` (default: the last decisions)."""
        return [
            (event.originator_id, event.agent_id)
            for event in (self.decided if events is None else events)
            if isinstance(event, RoutingOffered)
        ]
