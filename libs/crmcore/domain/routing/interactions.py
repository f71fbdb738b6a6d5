"""Interaction events as routing sees them: work arriving, and work leaving.

The routing service consumes `crm.interaction.>`. An interaction that is queued (also handed
off by a bot, reopened, transferred) becomes a task whose id is the interaction id; wrap-up,
resolution, closing and abandonment take it out of routing and free the agent who had it. An
interaction answered by an agent routing had offered it to is that offer accepted; answered by
someone else, the work is theirs (picked from the queue). An offer the interaction service saw
declined is that offer missed. Everything else is not routing's business.

Every task event produced carries the interaction event's version, so an event delivered twice
(the bus delivers at least once) changes nothing the second time. The interaction service
records routing's own decisions (offered, answered, declined) on the interaction and publishes
them again; routing recognises those as its own and leaves them be.
"""

from __future__ import annotations

from datetime import datetime

from crmcore.domain.agent import OfferMissReason, Requirements, SkillRequirement
from crmcore.domain.base import DomainEvent
from crmcore.domain.errors import AlreadyExists, RuleViolation
from crmcore.domain.interaction import (
    Abandoned,
    Answered,
    Closed,
    DeclineReason,
    HandedOffToHuman,
    InteractionEvent,
    OfferDeclined,
    Queued,
    Reopened,
    Resolved,
    RoutingRequirements,
    Transferred,
    WrapUpStarted,
)
from crmcore.domain.routing.engine import RoutingEngine
from crmcore.domain.task import ReleaseReason, RevokeReason, Task, TaskSource, TaskStatus

#: Interaction events that put work in a queue.
QUEUEING: tuple[type[InteractionEvent], ...] = (Queued, HandedOffToHuman, Reopened, Transferred)
#: Interaction events that take work out of routing, and why.
RELEASING: dict[type[InteractionEvent], ReleaseReason] = {
    WrapUpStarted: ReleaseReason.WRAP_UP,
    Resolved: ReleaseReason.RESOLVED,
    Closed: ReleaseReason.CLOSED,
    Abandoned: ReleaseReason.ABANDONED,
}
#: Every interaction event class routing acts on (what its consumer subscribes to).
ROUTED_EVENTS: tuple[type[InteractionEvent], ...] = (
    *QUEUEING,
    *RELEASING,
    Answered,
    OfferDeclined,
)


def needs_stored_task(event: InteractionEvent) -> bool:
    """Whether the task's stored history matters for `event` even when the engine no longer
    holds the task (work queued again after it left routing continues the same aggregate)."""
    return isinstance(event, QUEUEING)


def requirements_of(raw: RoutingRequirements) -> Requirements:
    return Requirements(
        skills=tuple(
            SkillRequirement(skill=req.skill, min_level=req.min_level) for req in raw.skills
        ),
        language=raw.language,
    )


def routing_events_for(
    engine: RoutingEngine, event: InteractionEvent, stored: Task | None, *, at: datetime
) -> tuple[DomainEvent, ...]:
    """The routing events an interaction event calls for (module docstring); `stored` is the
    task as stored when the engine does not hold it (see `needs_stored_task`)."""
    task = engine.task(event.originator_id) or stored
    version = event.originator_version
    if task is not None and version <= task.interaction_version:
        return ()  # seen before
    if isinstance(event, QUEUEING):
        return _queue(engine, event, task, at)
    if task is None or not task.is_open:
        return ()
    reason = RELEASING.get(type(event))
    if reason is not None:
        return engine.release(task.id, reason, interaction_version=version, at=at)
    if isinstance(event, Answered) and event.agent_id is not None:
        return _answered(engine, task, event, at)
    if (
        isinstance(event, OfferDeclined)
        and event.reason is not DeclineReason.REVOKED
        and event.agent_id is not None
        and task.status is TaskStatus.OFFERED
        and task.agent_id == event.agent_id
        and task.offered_at is not None
        and event.timestamp >= task.offered_at
    ):
        # A decline the interaction service recorded for routing's own rejection or time-out
        # of an earlier offer to the same agent is older than the offer pending now.
        why = (
            OfferMissReason.TIMEOUT
            if event.reason is DeclineReason.TIMEOUT
            else OfferMissReason.REJECTED
        )
        return engine.miss(task.id, event.agent_id, why, interaction_version=version, at=at)
    return ()


def _queue(
    engine: RoutingEngine, event: InteractionEvent, task: Task | None, at: datetime
) -> tuple[DomainEvent, ...]:
    version = event.originator_version
    if isinstance(event, Transferred):
        queue = event.to_queue or event.queue
        requirements, queued_at, since = event.requirements, event.queued_at, event.waiting_since
    elif isinstance(event, Queued | HandedOffToHuman):
        queue = event.queue
        requirements, queued_at, since = event.requirements, event.queued_at, event.waiting_since
    elif isinstance(event, Reopened):
        queue = event.queue
        requirements, queued_at, since = (
            event.requirements,
            event.waiting_since,
            event.waiting_since,
        )
    else:
        return ()
    if queue is None:
        return ()
    produced: list[DomainEvent] = []
    previous = task
    if task is not None and task.is_open:
        why = (
            ReleaseReason.TRANSFERRED if isinstance(event, Transferred) else ReleaseReason.REQUEUED
        )
        released = engine.release(task.id, why, interaction_version=version, at=at)
        produced.extend(released)
        previous = released[0].mutate(task)
    produced.append(
        Task.enqueue(
            event.originator_id,
            queue=queue,
            channel=event.channel,
            requirements=requirements_of(requirements),
            priority=requirements.priority,
            preferred_agent_id=requirements.preferred_agent_id,
            last_agent_id=requirements.last_agent_id,
            queued_at=queued_at,
            waiting_since=since,
            source=TaskSource.INTERACTION,
            interaction_version=version,
            previous=previous,
            at=at,
        )
    )
    return tuple(produced)


def _answered(
    engine: RoutingEngine, task: Task, event: Answered, at: datetime
) -> tuple[DomainEvent, ...]:
    agent_id = event.agent_id
    assert agent_id is not None
    version = event.originator_version
    if task.status is TaskStatus.ASSIGNED:
        return ()  # routing assigned it already (the accepted offer came back to us)
    try:
        if task.status is TaskStatus.OFFERED and task.agent_id == agent_id:
            return engine.accept(task.id, agent_id, interaction_version=version, at=at)
        agent = engine.agent(agent_id)
        if agent is None:
            raise RuleViolation(f"agent {agent_id} is not known to routing")
        produced: list[DomainEvent] = []
        state = task
        if task.status is TaskStatus.OFFERED:
            revoked = task.revoke(RevokeReason.ANSWERED_BY_ANOTHER, at=at)
            produced.append(revoked)
            state = revoked.mutate(task)
        work = agent.assign_work(task.id, task.channel, at=at)
        produced.append(state.assign_to(agent_id, interaction_version=version, at=at))
        produced.append(work)
        return tuple(produced)
    except (RuleViolation, AlreadyExists):
        # The answering agent is unknown to routing or has no room by its rules: the work
        # is theirs all the same, so it leaves routing.
        return engine.release(
            task.id, ReleaseReason.ANSWERED_ELSEWHERE, interaction_version=version, at=at
        )
