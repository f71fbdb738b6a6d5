"""The routing engine: which agent gets which work, when — deterministic and replayable.

The engine is a fold over the routing context's events plus a decision step:

- `apply(event)` folds one stored event (agents, queues, tasks) into the engine's state. It
  never decides anything and reads no clock, so replaying the event log rebuilds the state.
- `decide(now)` returns the events the state calls for at `now` — offers, time-outs, offers
  taken back from agents who left, fallbacks — having applied them. Same state and same `now`,
  same events: the application stores them, and a replica replaying the log agrees.

Nothing here does I/O or reads the wall clock: the caller passes `now` (it never goes back).

The rules (DOMAIN.md, "Agents and routing"):

- Order of work: smaller `rank` first, where rank = waiting_since − (queue priority + work
  priority) × `priority_wait_seconds`. A priority point is worth a fixed amount of wait, so
  higher priority goes first and long waits still age past it, without ever re-keying.
- Choice of agent for a piece of work: its preferred agent (an explicit transfer), then its
  last agent (sticky), if able to take it now; then the best proficiency (levels summed over
  the required skills), then the lowest load, then the longest idle, then the agent id.
- An agent takes work only while available, not cooling down after a missed offer, with room
  on the channel counting pending offers, within cross-channel exclusivity.
- Whenever something changes, `decide` runs the one canonical greedy: of all waiting work
  that some agent may take, the work first in order goes to its best agent; repeat. Freed
  capacity therefore pulls the oldest eligible work across every queue the agent serves (a
  small queue is never starved by a busy one), and new work goes to the best agent free.
- Routing steps widen a wait on time by themselves (timers); a rejected, timed-out or revoked
  offer puts the work back with its rank unchanged, and misses put the agent on cooldown (and
  away after the queue's `max_misses`). Work never goes to, or stays offered to, an agent who
  is not available.

Speed comes from indexes (this class): agents bucketed by profile (`matching.Profile`) in heaps
per channel keyed by (load, idle, id), holding only agents able to take that channel now;
waiting work in heaps per (demand, channel) keyed by rank; per-profile lists of the work heaps
it may take and per-demand lists of eligible profiles grouped by proficiency. The engine only
ever looks at what changed: after a change, every pair of waiting work and agent that could
be matched involves a changed agent or a changed piece of work (everything else was settled
by the previous `decide`). `ScanEngine` (crmcore.domain.routing.scan) makes the same decisions
by scanning every agent and every task, as the reference the tests and the benchmark compare
against.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import cast
from uuid import UUID

import msgspec

from crmcore.domain import values
from crmcore.domain.agent import (
    EXCLUSIVE_CHANNELS,
    Agent,
    AgentCapacityChanged,
    AgentCooldownCleared,
    AgentOfferMissed,
    AgentPresenceChanged,
    AgentProfileUpdated,
    AgentRegistered,
    AgentSkillsChanged,
    AgentWorkAssigned,
    AgentWorkReleased,
    OfferMissReason,
    Presence,
    Requirements,
    SkillRequirement,
)
from crmcore.domain.base import DomainEvent
from crmcore.domain.errors import InvalidValue, NotFound, RuleViolation
from crmcore.domain.queue import (
    FallbackKind,
    OverflowPool,
    PoolKind,
    Queue,
    QueueArchived,
    QueueCreated,
    QueueRoutingStepsChanged,
    QueueUpdated,
)
from crmcore.domain.routing.matching import (
    EPOCH,
    AgentEntry,
    AgentSlot,
    BucketEntry,
    Demand,
    DemandKey,
    Profile,
    ProfileKey,
    TaskSlot,
    demand_key,
    eligible,
    from_us,
    proficiency,
    profile_key,
    serves_queue,
    to_us,
)
from crmcore.domain.task import (
    AgentRule,
    Attribute,
    Decision,
    MatchDirection,
    ReleaseReason,
    RevokeReason,
    RoutingAccepted,
    RoutingAssigned,
    RoutingOffered,
    RoutingOfferRevoked,
    RoutingRejected,
    RoutingTimedOut,
    Task,
    TaskFellBack,
    TaskQueued,
    TaskReleased,
    TaskSource,
    TaskStatus,
)
from crmcore.domain.values import Channel

_EXPIRE, _COOLDOWN, _WIDEN = 0, 1, 2
#: (due, kind, id as int, token, slot): a token that no longer matches makes it a no-op.
TimerEntry = tuple[int, int, int, int, "AgentSlot | TaskSlot"]
#: (rank, task id as int, sequence, task, agent who pulled it or None) in one `decide`.
_Candidate = tuple[int, int, int, TaskSlot, "AgentSlot | None"]
#: The agent chosen for a task, the rule that chose it and the agent's proficiency.
Choice = tuple[AgentSlot, AgentRule, int]

#: With at most this many changed agents, settled work is only compared among them.
_FEW_FREED = 16
MAX_PRIORITY_WAIT_SECONDS = 24 * 3600.0
MAX_MISS_COOLDOWN_SECONDS = 3600.0


class RoutingPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """Engine-wide settings: what a priority point is worth in wait, and how long an agent
    who missed an offer is left alone."""

    priority_wait_seconds: float = 60.0
    miss_cooldown_seconds: float = 10.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.priority_wait_seconds <= MAX_PRIORITY_WAIT_SECONDS:
            raise InvalidValue(
                "priority_wait_seconds",
                f"must be between 0 and {MAX_PRIORITY_WAIT_SECONDS:g}",
            )
        if not 0.0 <= self.miss_cooldown_seconds <= MAX_MISS_COOLDOWN_SECONDS:
            raise InvalidValue(
                "miss_cooldown_seconds", f"must be between 0 and {MAX_MISS_COOLDOWN_SECONDS:g}"
            )


class QueueDayStats(msgspec.Struct, frozen=True, kw_only=True):
    """What happened to one queue's work on one UTC day, counted from events.

    `answered_within` counts work assigned within the queue's service-level threshold of the
    customer's first enqueue; abandons are work that left while not yet assigned."""

    queue: str
    day: date
    queued: int = 0
    answered: int = 0
    answered_within: int = 0
    abandoned: int = 0
    fell_back: int = 0

    def service_level(self) -> float | None:
        """Answered within the threshold over answered plus abandoned (abandons count against
        it); None before anything was answered or abandoned."""
        handled = self.answered + self.abandoned
        return self.answered_within / handled if handled else None


class RoutingSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the engine knows, as plain aggregates: restoring it and replaying the events
    stored after it gives the engine back. `clock` is the last `now` it decided at."""

    clock: datetime | None
    agents: tuple[Agent, ...]
    queues: tuple[Queue, ...]
    tasks: tuple[Task, ...]
    stats: tuple[QueueDayStats, ...]


class QueueStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A queue right now: work waiting (and its oldest wait), offered and being worked; the
    agents serving it (meeting its requirements, taking one of its channels) able to take its
    work now, and those logged in but not able now; and today's counts."""

    queue: Queue
    waiting: int
    offered: int
    assigned: int
    oldest_waiting_since: datetime | None
    oldest_wait_seconds: float
    agents_available: int
    agents_busy: int
    today: QueueDayStats


class TaskExplanation(msgspec.Struct, frozen=True, kw_only=True):
    """Why work is where it is: what it asks now, how many agents could take it, where it
    stands in the order of work, and the reasons of its last offer (`decision`)."""

    task: Task
    queue_known: bool
    step: int
    requirements: Requirements | None
    pools: tuple[OverflowPool, ...]
    next_step_at: datetime | None
    waited_seconds: float
    effective_wait_seconds: float
    agents_meeting: int
    agents_able_now: int
    decision: Decision | None
    summary: str


class _QueueInfo:
    """What the engine keeps per queue: the queue, a number for cache keys, the waits (µs)
    at which what its work asks changes, and its offer timeout."""

    __slots__ = ("number", "queue", "schedule", "timeout")

    def __init__(self, queue: Queue, number: int) -> None:
        self.queue = queue
        self.number = number
        self.schedule = tuple(seconds * 1_000_000 for seconds in _schedule(queue))
        self.timeout = timedelta(seconds=queue.offer_timeout_seconds)


class _DayCounts:
    __slots__ = ("abandoned", "answered", "answered_within", "fell_back", "queued")

    def __init__(self) -> None:
        self.queued = 0
        self.answered = 0
        self.answered_within = 0
        self.abandoned = 0
        self.fell_back = 0


def _schedule(queue: Queue) -> tuple[int, ...]:
    """The waits (seconds) at which what the queue's work asks changes: its routing steps,
    and the service-level threshold when it has overflow queues (their agents join then)."""
    moments = {step.after_seconds for step in queue.routing_steps}
    if queue.overflow_queues:
        moments.add(queue.service_level.threshold_seconds)
    return tuple(sorted(moments))


def merge_requirements(base: Requirements, own: Requirements) -> Requirements:
    """The queue's requirements with the work's own: every skill at the higher of the two
    levels; the work's language over the queue's."""
    levels = {req.skill: req.min_level for req in base.skills}
    for req in own.skills:
        levels[req.skill] = max(levels.get(req.skill, 0), req.min_level)
    return Requirements(
        skills=tuple(
            SkillRequirement(skill=name, min_level=level) for name, level in levels.items()
        ),
        language=own.language or base.language,
    )


class RoutingEngine:
    """Routing state, indexes and decisions (module docstring)."""

    #: Whether work settled by an earlier decision is compared only with changed agents.
    _narrow_settled_work = True

    def __init__(self, policy: RoutingPolicy | None = None) -> None:
        self.policy = policy or RoutingPolicy()
        self._priority_us = round(self.policy.priority_wait_seconds * 1_000_000)
        self._cooldown = timedelta(seconds=self.policy.miss_cooldown_seconds)
        self._now_us = 0
        self._now = EPOCH
        #: The latest time an applied event carries.
        self._latest = EPOCH
        #: (expiry, its µs) of the offers made at the current clock, per offer timeout.
        self._expiries: dict[timedelta, tuple[datetime, int]] = {}
        self._expiry_hint: tuple[datetime | None, int] = (None, 0)
        self._agents: dict[int, AgentSlot] = {}
        self._queues: dict[UUID, Queue] = {}
        self._queues_by_name: dict[str, Queue] = {}
        self._info: dict[str, _QueueInfo] = {}
        #: Numbers the queue infos (cache keys); a changed queue gets a new one.
        self._queue_numbers = 0
        self._tasks: dict[int, TaskSlot] = {}
        self._tasks_by_queue: dict[str, dict[int, TaskSlot]] = {}
        self._profiles: dict[ProfileKey, Profile] = {}
        self._demands: dict[DemandKey, Demand] = {}
        self._demand_list: list[Demand] = []
        self._demand_at: dict[tuple[int, int, int], tuple[Demand, FallbackKind | None]] = {}
        self._requirement_ids: dict[Requirements, int] = {}
        self._timers: list[TimerEntry] = []
        # What changed since the last decision (ordered sets).
        self._unplaced: dict[int, TaskSlot] = {}
        self._placed_now: dict[int, TaskSlot] = {}
        self._freed: dict[int, AgentSlot] = {}
        self._stale: dict[int, AgentSlot] = {}
        self._revoking: dict[int, AgentSlot] = {}
        self._settling = False
        self._stats_day: date | None = None
        self._day_start = self._day_end = EPOCH
        self._stats: dict[str, _DayCounts] = {}
        self._emitted: list[DomainEvent] | None = None
        # Indexes (the agent heaps live on the profiles).
        self._buckets: dict[tuple[int, Channel], list[BucketEntry]] = {}
        self._handlers: dict[type[DomainEvent], Callable[[DomainEvent], None]] = {
            AgentRegistered: self._agent_registered,
            AgentProfileUpdated: self._agent_reprofiled,
            AgentSkillsChanged: self._agent_reprofiled,
            AgentCapacityChanged: self._agent_reprofiled,
            AgentPresenceChanged: self._agent_presence_changed,
            AgentWorkAssigned: self._agent_work_changed,
            AgentWorkReleased: self._agent_work_changed,
            AgentOfferMissed: self._agent_missed_offer,
            AgentCooldownCleared: self._agent_changed,
            QueueCreated: self._queue_changed,
            QueueUpdated: self._queue_changed,
            QueueRoutingStepsChanged: self._queue_changed,
            QueueArchived: self._queue_changed,
            TaskQueued: self._task_queued,
            RoutingOffered: self._task_offered,
            RoutingRejected: self._offer_ended,
            RoutingTimedOut: self._offer_ended,
            RoutingOfferRevoked: self._offer_ended,
            RoutingAccepted: self._task_accepted,
            RoutingAssigned: self._task_assigned,
            TaskReleased: self._task_left,
            TaskFellBack: self._task_left,
        }

    # --- folding events -------------------------------------------------------------------

    def apply(self, event: DomainEvent) -> None:
        """Folds a stored event into the state; events of other kinds are ignored."""
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)
            if event.timestamp > self._latest:
                self._latest = event.timestamp

    def apply_all(self, events: Iterable[DomainEvent]) -> None:
        for event in events:
            self.apply(event)

    def _agent_registered(self, event: DomainEvent) -> None:
        agent = cast(AgentRegistered, event).mutate(None)
        slot = AgentSlot(agent, self._profile_of(agent))
        slot.profile.members += 1
        self._agents[slot.id_int] = slot
        self._agent_touched(slot)

    def _agent_reprofiled(self, event: DomainEvent) -> None:
        slot = self._agents.get(event.originator_id.int)
        if slot is None:
            return
        slot.agent = event.mutate(slot.agent)
        slot.profile.members -= 1
        slot.profile = self._profile_of(slot.agent)
        slot.profile.members += 1
        slot.refresh()
        self._agent_touched(slot)

    def _agent_changed(self, event: DomainEvent) -> None:
        slot = self._agents.get(event.originator_id.int)
        if slot is None:
            return
        slot.agent = event.mutate(slot.agent)
        slot.refresh()
        self._agent_touched(slot)

    def _agent_work_changed(self, event: DomainEvent) -> None:
        slot = self._agents.get(event.originator_id.int)
        if slot is None:
            return
        slot.agent = event.mutate(slot.agent)
        slot.work_changed()
        self._agent_touched(slot)

    def _agent_presence_changed(self, event: DomainEvent) -> None:
        self._agent_changed(event)
        slot = self._agents.get(event.originator_id.int)
        if slot is not None and not slot.available and slot.offers:
            self._revoking[slot.id_int] = slot

    def _agent_missed_offer(self, event: DomainEvent) -> None:
        self._agent_changed(event)
        slot = self._agents.get(event.originator_id.int)
        if slot is not None and slot.cooldown_us:
            heapq.heappush(self._timers, (slot.cooldown_us, _COOLDOWN, slot.id_int, 0, slot))

    def _agent_touched(self, slot: AgentSlot) -> None:
        slot.stamp += 1
        self._stale[slot.id_int] = slot
        if not self._settling:
            self._freed[slot.id_int] = slot

    def _profile_of(self, agent: Agent) -> Profile:
        key = profile_key(agent)
        profile = self._profiles.get(key)
        if profile is None:
            profile = self._profiles[key] = Profile(len(self._profiles), key)
            self._profile_added(profile)
        return profile

    def _queue_changed(self, event: DomainEvent) -> None:
        old = self._queues.get(event.originator_id)
        if old is None and not isinstance(event, QueueCreated):
            return  # a queue this state never saw created: nothing to change
        queue: Queue = event.mutate(old)
        self._queues[queue.id] = queue
        if old is not None:
            self._queues_by_name.pop(old.name.lower(), None)
            self._info.pop(old.name.lower(), None)
        key = queue.name.lower()
        self._queues_by_name[key] = queue
        self._info[key] = self._queue_info(queue)
        self._demand_at.clear()
        self._eligibility_changed()
        # Its own work asks something else now; work whose pools name it (or that was
        # waiting for a queue of that name) may find other agents.
        for slot in self._tasks.values():
            if slot.task.status is TaskStatus.WAITING and (
                slot.queue_key == key
                or slot.demand is None
                or any(pool.kind is PoolKind.QUEUE for pool in slot.demand.pools)
            ):
                self._unplace(slot)

    def _queue_info(self, queue: Queue) -> _QueueInfo:
        self._queue_numbers += 1
        return _QueueInfo(queue, self._queue_numbers)

    def _task_queued(self, event: DomainEvent) -> None:
        queued = cast(TaskQueued, event)
        old = self._tasks.get(queued.originator_id.int)
        if old is not None:
            self._forget(old)
        slot = TaskSlot(queued.mutate(None))
        slot.req_id = self._requirement_id(queued.requirements)
        self._tasks[slot.id_int] = slot
        self._tasks_by_queue.setdefault(slot.queue_key, {})[slot.id_int] = slot
        self._unplaced[slot.id_int] = slot
        counts = self._counts(queued.timestamp, slot.queue_key)
        if counts is not None:
            counts.queued += 1

    def _requirement_id(self, requirements: Requirements) -> int:
        if not requirements.skills and requirements.language is None:
            return 0
        known = self._requirement_ids.get(requirements)
        if known is None:
            known = self._requirement_ids[requirements] = len(self._requirement_ids) + 1
        return known

    def _task_offered(self, event: DomainEvent) -> None:
        offered = cast(RoutingOffered, event)
        slot = self._tasks.get(offered.originator_id.int)
        if slot is None:
            return
        slot.task = offered.mutate(slot.task)
        self._leave_bucket(slot)
        slot.demand = None  # placed again if it comes back
        slot.stamp += 1
        if self._unplaced:
            self._unplaced.pop(slot.id_int, None)
        agent = self._agents.get(offered.agent_id.int)
        if agent is not None:
            agent.add_offer(slot.id_int, offered.channel)
            agent.stamp += 1
            self._stale[agent.id_int] = agent
        # The offer this engine just made knows its expiry in µs; a replayed one converts.
        hint = self._expiry_hint
        expires_us = hint[1] if hint[0] is offered.expires_at else to_us(offered.expires_at)
        heapq.heappush(self._timers, (expires_us, _EXPIRE, slot.id_int, slot.task.offers, slot))

    def _offer_ended(self, event: DomainEvent) -> None:
        slot = self._tasks.get(event.originator_id.int)
        if slot is None:
            return
        agent_id = slot.task.agent_id
        slot.task = event.mutate(slot.task)
        self._drop_offer(slot.id_int, agent_id, freed=True)
        self._unplace(slot)

    def _task_accepted(self, event: DomainEvent) -> None:
        slot = self._tasks.get(event.originator_id.int)
        if slot is None:
            return
        agent_id = slot.task.agent_id
        slot.task = event.mutate(slot.task)
        self._drop_offer(slot.id_int, agent_id, freed=False)

    def _task_assigned(self, event: DomainEvent) -> None:
        assigned = cast(RoutingAssigned, event)
        slot = self._tasks.get(assigned.originator_id.int)
        if slot is None:
            return
        slot.task = assigned.mutate(slot.task)
        slot.stamp += 1
        self._unplaced.pop(slot.id_int, None)
        counts = self._counts(assigned.timestamp, slot.queue_key)
        if counts is not None:
            counts.answered += 1
            info = self._info.get(slot.queue_key)
            threshold = info.queue.service_level.threshold_seconds if info else 0
            if (assigned.timestamp - assigned.queued_at).total_seconds() <= threshold:
                counts.answered_within += 1

    def _task_left(self, event: DomainEvent) -> None:
        slot = self._tasks.get(event.originator_id.int)
        if slot is None:
            return
        if slot.task.status is TaskStatus.OFFERED:
            self._drop_offer(slot.id_int, slot.task.agent_id, freed=True)
        counts = self._counts(event.timestamp, slot.queue_key)
        if counts is not None:
            if isinstance(event, TaskFellBack):
                counts.fell_back += 1
            elif (
                isinstance(event, TaskReleased)
                and event.reason is ReleaseReason.ABANDONED
                and slot.task.status is not TaskStatus.ASSIGNED
            ):
                counts.abandoned += 1
        self._forget(slot)

    def _drop_offer(self, task_key: int, agent_id: UUID | None, *, freed: bool) -> None:
        agent = self._agents.get(agent_id.int) if agent_id is not None else None
        if agent is None or agent.offers.pop(task_key, None) is None:
            return
        agent.recount()
        if freed:
            self._agent_touched(agent)
        else:
            agent.stamp += 1
            self._stale[agent.id_int] = agent

    def _unplace(self, slot: TaskSlot) -> None:
        self._leave_bucket(slot)
        slot.stamp += 1
        slot.demand = None
        self._unplaced[slot.id_int] = slot

    def _leave_bucket(self, slot: TaskSlot) -> None:
        """Drops the task's bucket entry now when it is the bucket's first (as it usually is:
        the oldest work is offered, and widens, first) — rather than leaving it for the next
        agent looking in that bucket to pop."""
        demand = slot.demand
        if demand is not None:
            heap = self._buckets.get((demand.number, slot.channel))
            if heap and heap[0][3] is slot:
                heapq.heappop(heap)

    def _forget(self, slot: TaskSlot) -> None:
        self._leave_bucket(slot)
        slot.stamp += 1
        slot.live = False
        key = slot.id_int
        del self._tasks[key]
        in_queue = self._tasks_by_queue.get(slot.queue_key)
        if in_queue is not None:
            in_queue.pop(key, None)
            if not in_queue:
                del self._tasks_by_queue[slot.queue_key]
        if self._unplaced:
            self._unplaced.pop(key, None)
        if self._placed_now:
            self._placed_now.pop(key, None)

    def _counts(self, timestamp: datetime, queue_key: str) -> _DayCounts | None:
        if not self._day_start <= timestamp < self._day_end:
            if timestamp < self._day_start:
                return None  # a late event of an earlier day: today's figures stay today's
            day = timestamp.astimezone(UTC).date()
            self._start_day(day)
        counts = self._stats.get(queue_key)
        if counts is None:
            counts = self._stats[queue_key] = _DayCounts()
        return counts

    def _start_day(self, day: date) -> None:
        self._stats_day = day
        self._stats = {}
        self._day_start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        self._day_end = self._day_start + timedelta(days=1)

    # --- deciding -------------------------------------------------------------------------

    def decide(self, now: datetime) -> list[DomainEvent]:
        """The events due at `now` (already applied): time-outs, revoked offers, fallbacks and
        offers, in the order they happened. Empty when nothing is due."""
        if now is not self._now:
            self._advance_clock(now)
        emitted: list[DomainEvent] = []
        self._emitted = emitted
        try:
            if self._timers and self._timers[0][0] <= self._now_us:
                self._fire_timers()
            if self._revoking:
                self._revoke_offers()
            if self._unplaced:
                self._place_unplaced()
            if self._freed or self._placed_now:
                self._match()
            else:
                self._refresh_stale()
        finally:
            self._emitted = None
            self._freed.clear()
            self._placed_now.clear()
        return emitted

    def settle(self) -> list[DomainEvent]:
        """Decides at the latest moment the state knows of (its clock, or the latest event
        applied): after a restore and replay this finds nothing to do when the events were
        stored with their decisions, and puts right whatever was left undecided otherwise."""
        return self.decide(max(self._now, self._latest))

    def warm(self) -> None:
        """Builds the indexes' lazy parts (eligibility of every profile for every demand in
        use) now, so the first decisions after a start do not pay for them."""
        for profile in self._profiles.values():
            if profile.buckets is None:
                self._profile_buckets(profile)
        for number, channel in self._buckets:
            demand = self._demand_list[number]
            if channel not in demand.agent_groups:
                self._agent_groups(demand, channel)

    def next_deadline(self) -> datetime | None:
        """When `decide` next has something to do without any new event: the earliest offer
        expiry, end of a cooldown or routing step (None: nothing is scheduled)."""
        if self._unplaced or self._freed or self._revoking:
            return self._now
        timers = self._timers
        while timers and not self._timer_valid(timers[0]):
            heapq.heappop(timers)
        return from_us(timers[0][0]) if timers else None

    @property
    def clock(self) -> datetime:
        """The latest `now` the engine decided at."""
        return self._now

    def _advance_clock(self, now: datetime) -> None:
        if now is self._now:
            return
        moment = now if now.tzinfo is UTC else values.aware(now, "now").astimezone(UTC)
        moment_us = to_us(moment)
        if moment_us > self._now_us:
            self._now_us = moment_us
            self._now = moment
            self._expiries = {}

    def _emit(self, event: DomainEvent) -> None:
        assert self._emitted is not None, "events are emitted only while deciding"
        self._emitted.append(event)
        self.apply(event)

    def _timer_valid(self, entry: TimerEntry) -> bool:
        due, kind, _, token, slot = entry
        if kind == _COOLDOWN:
            agent = cast(AgentSlot, slot)
            return agent.cooldown_us == due
        task = cast(TaskSlot, slot)
        if not task.live:
            return False
        if kind == _EXPIRE:
            return task.task.status is TaskStatus.OFFERED and task.task.offers == token
        return task.task.status is TaskStatus.WAITING and task.stamp == token

    def _fire_timers(self) -> None:
        timers = self._timers
        now_us = self._now_us
        while timers and timers[0][0] <= now_us:
            entry = heapq.heappop(timers)
            if not self._timer_valid(entry):
                continue
            kind, slot = entry[1], entry[4]
            if kind == _EXPIRE:
                self._time_out(cast(TaskSlot, slot))
            elif kind == _COOLDOWN:
                self._agent_touched(cast(AgentSlot, slot))
            else:
                self._unplace(cast(TaskSlot, slot))

    def _time_out(self, slot: TaskSlot) -> None:
        task = slot.task
        agent = self._agents.get(task.agent_id.int) if task.agent_id is not None else None
        info = self._info.get(slot.queue_key)
        self._emit(task.time_out(at=self._now))
        if agent is not None:
            for event in agent.agent.miss_offer(
                task.id,
                reason=OfferMissReason.TIMEOUT,
                cooldown=self._cooldown,
                max_misses=info.queue.max_misses if info is not None else None,
                at=self._now,
            ):
                self._emit(event)

    def _revoke_offers(self) -> None:
        revoking = sorted(self._revoking.values(), key=lambda slot: slot.id_int)
        self._revoking.clear()
        for agent in revoking:
            if agent.available:
                continue
            for task_key in sorted(agent.offers):
                slot = self._tasks[task_key]
                self._emit(slot.task.revoke(RevokeReason.AGENT_UNAVAILABLE, at=self._now))

    def _place_unplaced(self) -> None:
        while self._unplaced:
            batch = sorted(self._unplaced.values(), key=lambda slot: slot.id_int)
            self._unplaced = {}
            for slot in batch:
                if slot.live and slot.task.status is TaskStatus.WAITING:
                    self._place(slot)

    def _place(self, slot: TaskSlot) -> None:
        """Works out what the task asks at its current step, puts it in its bucket and sets the
        timer of its next step; or hands it to the queue's fallback."""
        info = self._info.get(slot.queue_key)
        slot.stamp += 1
        if info is None:
            slot.demand = None  # waits for a queue of that name
            return
        task = slot.task
        schedule = info.schedule
        step = bisect.bisect_right(schedule, self._now_us - slot.ws_us) if schedule else 0
        known = self._demand_at.get((info.number, slot.req_id, step))
        demand, fallback = known or self._demand_for(info, task.requirements, slot.req_id, step)
        if fallback is not None:
            self._emit(task.fall_back(fallback, at=self._now))
            return
        slot.demand = demand
        slot.step = step
        slot.rank = slot.ws_us - (info.queue.priority + task.priority) * self._priority_us
        self._bucket(slot)
        if step < len(schedule):
            heapq.heappush(
                self._timers,
                (slot.ws_us + schedule[step], _WIDEN, slot.id_int, slot.stamp, slot),
            )
        if not self._settling:
            self._placed_now[slot.id_int] = slot

    def _demand_for(
        self, info: _QueueInfo, requirements: Requirements, req_id: int, step: int
    ) -> tuple[Demand, FallbackKind | None]:
        queue = info.queue
        waited = info.schedule[step - 1] // 1_000_000 if step else 0
        merged = merge_requirements(queue.requirements, requirements)
        routing = msgspec.structs.replace(queue, requirements=merged).effective_requirements(waited)
        pools = list(routing.extra_pools)
        if queue.overflow_queues and waited >= queue.service_level.threshold_seconds:
            for name in queue.overflow_queues:
                pool = OverflowPool(kind=PoolKind.QUEUE, name=name)
                if pool not in pools:
                    pools.append(pool)
        demand = self._intern(routing.requirements, tuple(pools))
        found = self._demand_at[(info.number, req_id, step)] = (demand, routing.fallback)
        return found

    def _intern(self, requirements: Requirements, pools: tuple[OverflowPool, ...]) -> Demand:
        key = demand_key(requirements, pools)
        demand = self._demands.get(key)
        if demand is None:
            ordered = tuple(sorted(pools, key=lambda pool: (str(pool.kind), pool.name.lower())))
            demand = self._demands[key] = Demand(len(self._demand_list), key, ordered)
            self._demand_list.append(demand)
        return demand

    def _refresh_stale(self) -> None:
        if self._stale:
            stale = self._stale
            self._stale = {}
            for agent in stale.values():
                self._index_agent(agent)

    def _match(self) -> None:
        """The canonical greedy (module docstring): candidates are the work placed now and,
        for every changed agent, the first waiting work it may take; the first in order goes to
        its best agent, and the agent that pulled it looks again."""
        fresh = self._placed_now
        if self._narrow_settled_work and len(self._freed) + len(fresh) == 1:
            self._match_one()
            return
        self._refresh_stale()
        freed = sorted(self._freed.values(), key=lambda agent: agent.id_int)
        narrow = self._narrow_settled_work and len(freed) <= _FEW_FREED
        candidates: list[_Candidate] = []
        sequence = 0
        for slot in fresh.values():
            if slot.demand is not None:
                candidates.append((slot.rank, slot.id_int, sequence, slot, None))
                sequence += 1
        for agent in freed:
            entry = self._best_task_for(agent)
            if entry is not None:
                candidates.append((entry[0], entry[1], sequence, entry[3], agent))
                sequence += 1
        heapq.heapify(candidates)
        while candidates:
            _, _, _, slot, source = heapq.heappop(candidates)
            if slot.live and slot.demand is not None and slot.task.status is TaskStatus.WAITING:
                # Work settled by an earlier decision had no agent then: only the changed
                # agents can take it now.
                if narrow and slot.id_int not in fresh:
                    choice = self._best_among(slot, freed)
                else:
                    choice = self._best_agent_for(slot)
                if choice is not None:
                    agent, rule, score = choice
                    self._offer(slot, agent, rule, score, pulled=slot.id_int not in fresh)
                    self._refresh_stale()
            # The agent that pulled it looks again once the work is gone (to it or to a better
            # agent); work still waiting would be its first choice again, so it stops.
            if source is not None and (not slot.live or slot.task.status is not TaskStatus.WAITING):
                entry = self._best_task_for(source)
                if entry is not None:
                    heapq.heappush(candidates, (entry[0], entry[1], sequence, entry[3], source))
                    sequence += 1

    def _match_one(self) -> None:
        """`_match` when one thing changed (the usual case), without the candidate heap: a
        freed agent pulls work until it is full or nothing it may take waits; work placed
        now goes to its best agent."""
        if self._freed:
            # The agent's buckets hold only work it may take, on channels it has room on.
            agent = next(iter(self._freed.values()))
            while (entry := self._best_task_for(agent)) is not None:
                slot = entry[3]
                task = slot.task
                demand = slot.demand
                assert demand is not None
                preferred, last = task.preferred_agent_id, task.last_agent_id
                if preferred is not None and preferred.int == agent.id_int:
                    rule = AgentRule.PREFERRED_AGENT
                elif last is not None and last.int == agent.id_int:
                    rule = AgentRule.LAST_AGENT
                else:
                    rule = AgentRule.BEST_MATCH
                self._offer(slot, agent, rule, proficiency(agent.profile, demand), pulled=True)
            self._refresh_stale()
        else:
            self._refresh_stale()
            slot = next(iter(self._placed_now.values()))
            if slot.demand is not None and slot.task.status is TaskStatus.WAITING:
                found = self._best_agent_for(slot)
                if found is not None:
                    self._offer(slot, found[0], found[1], found[2], pulled=False)
                    self._refresh_stale()

    def _offer(
        self, slot: TaskSlot, agent: AgentSlot, rule: AgentRule, score: int, *, pulled: bool
    ) -> None:
        task = slot.task
        info = self._info[slot.queue_key]
        demand = slot.demand
        assert demand is not None
        waited = (self._now_us - slot.ws_us) / 1_000_000
        priority = info.queue.priority + task.priority
        expiry = self._expiries.get(info.timeout)
        if expiry is None:
            expires_at = self._now + info.timeout
            expiry = self._expiries[info.timeout] = (expires_at, to_us(expires_at))
        self._expiry_hint = expiry
        decision = Decision(
            direction=MatchDirection.AGENT_TO_WORK if pulled else MatchDirection.WORK_TO_AGENT,
            agent_rule=rule,
            step=slot.step,
            requirements=demand.requirements,
            pools=demand.pools,
            proficiency=score,
            load=agent.load,
            idle_since=agent.agent.idle_since,
            priority=priority,
            waited_seconds=waited,
            effective_wait_seconds=waited + priority * self.policy.priority_wait_seconds,
        )
        offered = task.offer(agent.id, expires_at=expiry[0], decision=decision, at=self._now)
        assert self._emitted is not None
        self._emitted.append(offered)
        self._task_offered(offered)

    # --- choosing (the indexed way; ScanEngine overrides these) ---------------------------

    def _allowed(self, profile: Profile, demand: Demand) -> bool:
        verdict = demand.verdicts.get(profile.number)
        if verdict is None:
            verdict = demand.verdicts[profile.number] = eligible(
                profile, demand, self._queues_by_name
            )
        return verdict

    def _best_agent_for(self, slot: TaskSlot) -> Choice | None:
        """The best agent able to take the task now, from the indexes."""
        task = slot.task
        demand = slot.demand
        assert demand is not None
        channel = slot.channel
        now_us = self._now_us
        for agent_id, rule in (
            (task.preferred_agent_id, AgentRule.PREFERRED_AGENT),
            (task.last_agent_id, AgentRule.LAST_AGENT),
        ):
            if agent_id is not None:
                agent = self._agents.get(agent_id.int)
                if (
                    agent is not None
                    and agent.can_take(channel, now_us)
                    and self._allowed(agent.profile, demand)
                ):
                    return agent, rule, proficiency(agent.profile, demand)
        groups = demand.agent_groups.get(channel)
        if groups is None:
            groups = self._agent_groups(demand, channel)
        for score, heaps in groups:
            best: AgentEntry | None = None
            for heap in heaps:
                if not heap:
                    continue
                top = heap[0]
                while top[3] != top[4].stamp:
                    heapq.heappop(heap)
                    if not heap:
                        break
                    top = heap[0]
                else:
                    if best is None or top < best:
                        best = top
            if best is not None:
                return best[4], AgentRule.BEST_MATCH, score
        return None

    def _best_among(self, slot: TaskSlot, agents: Iterable[AgentSlot]) -> Choice | None:
        """The best of `agents` for the task, by the same rules as `_best_agent_for`."""
        task = slot.task
        demand = slot.demand
        assert demand is not None
        channel = slot.channel
        now_us = self._now_us
        preferred = -1 if task.preferred_agent_id is None else task.preferred_agent_id.int
        last = -1 if task.last_agent_id is None else task.last_agent_id.int
        best: tuple[int, int, float, int, int] | None = None
        chosen: AgentSlot | None = None
        for agent in agents:
            if not agent.can_take(channel, now_us) or not self._allowed(agent.profile, demand):
                continue
            tier = 0 if agent.id_int == preferred else 1 if agent.id_int == last else 2
            key = (
                tier,
                -proficiency(agent.profile, demand),
                agent.load,
                agent.idle_us,
                agent.id_int,
            )
            if best is None or key < best:
                best, chosen = key, agent
        if best is None or chosen is None:
            return None
        rule = (AgentRule.PREFERRED_AGENT, AgentRule.LAST_AGENT, AgentRule.BEST_MATCH)[best[0]]
        return chosen, rule, -best[1]

    def _best_task_for(self, agent: AgentSlot) -> BucketEntry | None:
        """The first waiting work in order that the agent may take now, from the indexes."""
        # `AgentSlot.can_take`, its agent-wide part checked once.
        if not agent.available or agent.cooldown_us > self._now_us or agent.exclusive:
            return None
        profile = agent.profile
        lists = profile.buckets
        if lists is None:
            lists = self._profile_buckets(profile)
        best: BucketEntry | None = None
        counts, limits, busy = agent.counts, agent.limits, agent.total > 0
        for channel in profile.channels:
            if (busy and channel in EXCLUSIVE_CHANNELS) or counts.get(channel, 0) >= limits[
                channel
            ]:
                continue
            for heap in lists.get(channel, ()):
                if not heap:
                    continue
                top = heap[0]
                while top[2] != top[3].stamp:
                    heapq.heappop(heap)
                    if not heap:
                        break
                    top = heap[0]
                else:
                    if best is None or top < best:
                        best = top
        return best

    # --- index upkeep (no-ops in ScanEngine) ----------------------------------------------

    def _bucket(self, slot: TaskSlot) -> None:
        demand = slot.demand
        assert demand is not None
        key = (demand.number, slot.channel)
        heap = self._buckets.get(key)
        if heap is None:
            heap = self._buckets[key] = []
            for profile in self._profiles.values():
                if (
                    profile.buckets is not None
                    and slot.channel in profile.channels
                    and self._allowed(profile, demand)
                ):
                    profile.buckets.setdefault(slot.channel, []).append(heap)
        heapq.heappush(heap, (slot.rank, slot.id_int, slot.stamp, slot))

    def _index_agent(self, agent: AgentSlot) -> None:
        if not agent.available or agent.cooldown_us > self._now_us:
            return
        entry = (agent.load, agent.idle_us, agent.id_int, agent.stamp, agent)
        profile = agent.profile
        for channel, heap in profile.heaps.items():
            if agent.can_take(channel, self._now_us):
                heapq.heappush(heap, entry)
                if len(heap) > 4 * profile.members + 32:
                    # Entries of agents that changed since sink below the live ones; they
                    # are dropped here, not only when they reach the top.
                    heap[:] = [kept for kept in heap if kept[3] == kept[4].stamp]
                    heapq.heapify(heap)

    def _profile_added(self, profile: Profile) -> None:
        for demand in self._demand_list:
            demand.groups = None
            demand.agent_groups = {}

    def _eligibility_changed(self) -> None:
        for demand in self._demand_list:
            demand.verdicts = {}
            demand.groups = None
            demand.agent_groups = {}
        for profile in self._profiles.values():
            profile.buckets = None

    def _group_profiles(self, demand: Demand) -> list[tuple[int, list[Profile]]]:
        by_score: dict[int, list[Profile]] = {}
        for profile in self._profiles.values():
            if self._allowed(profile, demand):
                by_score.setdefault(proficiency(profile, demand), []).append(profile)
        groups = sorted(by_score.items(), key=lambda item: -item[0])
        demand.groups = groups
        return groups

    def _agent_groups(
        self, demand: Demand, channel: Channel
    ) -> list[tuple[int, list[list[AgentEntry]]]]:
        groups = demand.groups
        if groups is None:
            groups = self._group_profiles(demand)
        by_channel = [
            (score, [profile.heaps[channel] for profile in profiles if channel in profile.heaps])
            for score, profiles in groups
        ]
        found = demand.agent_groups[channel] = [group for group in by_channel if group[1]]
        return found

    def _profile_buckets(self, profile: Profile) -> dict[Channel, list[list[BucketEntry]]]:
        lists: dict[Channel, list[list[BucketEntry]]] = {}
        for (number, channel), heap in self._buckets.items():
            if channel in profile.channels and self._allowed(profile, self._demand_list[number]):
                lists.setdefault(channel, []).append(heap)
        profile.buckets = lists
        return lists

    # --- commands: events for the application to store (not applied) ----------------------

    def submit(
        self,
        task_id: UUID,
        *,
        queue: str,
        channel: Channel | str,
        requirements: Requirements | None = None,
        priority: int = 0,
        preferred_agent_id: UUID | None = None,
        last_agent_id: UUID | None = None,
        attributes: Sequence[Attribute] = (),
        waiting_since: datetime | None = None,
        previous: Task | None = None,
        at: datetime,
    ) -> TaskQueued:
        """Work submitted directly by a system that routes its own work, into an existing,
        active queue (NotFound, RuleViolation otherwise). `waiting_since` (default now) is
        when the customer started waiting, if earlier (an e-mail received an hour ago)."""
        named = self.queue_named(queue)
        if named is None:
            raise NotFound("queue", queue)
        if named.archived:
            raise RuleViolation(f"queue {named.name!r} is archived and takes no new work")
        if previous is None and (open_task := self._tasks.get(task_id.int)) is not None:
            previous = open_task.task
        return Task.enqueue(
            task_id,
            queue=named.name,
            channel=channel,
            requirements=requirements,
            priority=priority,
            preferred_agent_id=preferred_agent_id,
            last_agent_id=last_agent_id,
            source=TaskSource.DIRECT,
            attributes=attributes,
            waiting_since=waiting_since,
            previous=previous,
            at=at,
        )

    def accept(
        self, task_id: UUID, agent_id: UUID, *, interaction_version: int = 0, at: datetime
    ) -> tuple[DomainEvent, ...]:
        """The offered agent takes the work: accepted, assigned, in the agent's hands."""
        task = self._open_task(task_id)
        agent = self._agent(agent_id)
        accepted, assigned = task.accept(agent_id, interaction_version=interaction_version, at=at)
        return (accepted, assigned, agent.assign_work(task_id, task.channel, at=at))

    def reject(
        self, task_id: UUID, agent_id: UUID, *, interaction_version: int = 0, at: datetime
    ) -> tuple[DomainEvent, ...]:
        """The offered agent says no: the work keeps its place, the agent cools down."""
        return self.miss(
            task_id,
            agent_id,
            OfferMissReason.REJECTED,
            interaction_version=interaction_version,
            at=at,
        )

    def miss(
        self,
        task_id: UUID,
        agent_id: UUID,
        reason: OfferMissReason,
        *,
        interaction_version: int = 0,
        at: datetime,
    ) -> tuple[DomainEvent, ...]:
        """The offered agent rejected the offer or let it time out: the work goes back with
        its place kept; the agent cools down (and goes away after the queue's max misses)."""
        task = self._open_task(task_id)
        agent = self._agent(agent_id)
        if reason is OfferMissReason.REJECTED:
            ended: DomainEvent = task.reject(
                agent_id, interaction_version=interaction_version, at=at
            )
        else:
            if task.agent_id != agent_id:
                raise RuleViolation(f"task {task_id} is not offered to agent {agent_id}")
            ended = task.time_out(interaction_version=interaction_version, at=at)
        info = self._info.get(task.queue.lower())
        missed = agent.miss_offer(
            task_id,
            reason=reason,
            cooldown=self._cooldown,
            max_misses=info.queue.max_misses if info is not None else None,
            at=at,
        )
        return (ended, *missed)

    def release(
        self,
        task_id: UUID,
        reason: ReleaseReason | str,
        *,
        interaction_version: int = 0,
        at: datetime,
    ) -> tuple[DomainEvent, ...]:
        """The work leaves routing; the agent holding it gets the room back."""
        task = self._open_task(task_id)
        released = task.release(reason, interaction_version=interaction_version, at=at)
        if task.status is TaskStatus.ASSIGNED and task.agent_id is not None:
            holder = self._agents.get(task.agent_id.int)
            if holder is not None and holder.agent.holds(task_id):
                return (released, holder.agent.release_work(task_id, at=at))
        return (released,)

    def _open_task(self, task_id: UUID) -> Task:
        slot = self._tasks.get(task_id.int)
        if slot is None:
            raise NotFound("task", task_id)
        return slot.task

    def _agent(self, agent_id: UUID) -> Agent:
        slot = self._agents.get(agent_id.int)
        if slot is None:
            raise NotFound("agent", agent_id)
        return slot.agent

    # --- queries --------------------------------------------------------------------------

    def agent(self, agent_id: UUID) -> Agent | None:
        slot = self._agents.get(agent_id.int)
        return None if slot is None else slot.agent

    def agents(self) -> list[Agent]:
        return [slot.agent for slot in self._agents.values()]

    def queue(self, queue_id: UUID) -> Queue | None:
        return self._queues.get(queue_id)

    def queue_named(self, name: str) -> Queue | None:
        return self._queues_by_name.get(" ".join(name.split()).lower())

    def queues(self) -> list[Queue]:
        return list(self._queues.values())

    def task(self, task_id: UUID) -> Task | None:
        """An open task (waiting, offered or assigned); tasks that left are not kept."""
        slot = self._tasks.get(task_id.int)
        return None if slot is None else slot.task

    def tasks(self) -> list[Task]:
        return [slot.task for slot in self._tasks.values()]

    def offers_for(self, agent_id: UUID) -> list[Task]:
        """The tasks offered to the agent now, in order of offer."""
        slot = self._agents.get(agent_id.int)
        if slot is None:
            return []
        offered = [self._tasks[task_id].task for task_id in slot.offers]
        return sorted(offered, key=lambda task: (task.offered_at or EPOCH, task.id.int))

    def load_of(self, agent_id: UUID) -> float:
        """The agent's load counting pending offers (`matching` module docstring)."""
        slot = self._agents.get(agent_id.int)
        return 0.0 if slot is None else slot.load

    def waiting_order(self, task: Task) -> int:
        """The rank of waiting work (smaller first) as the engine orders it."""
        queue = self.queue_named(task.queue)
        priority = task.priority + (queue.priority if queue is not None else 0)
        return to_us(task.waiting_since) - priority * self._priority_us

    def day_stats(self, queue_name: str, day: date) -> QueueDayStats:
        key = " ".join(queue_name.split()).lower()
        counts = self._stats.get(key) if day == self._stats_day else None
        if counts is None:
            return QueueDayStats(queue=key, day=day)
        return _stats_struct(key, day, counts)

    def queue_status(self, queue_id: UUID, now: datetime) -> QueueStatus:
        queue = self._queues.get(queue_id)
        if queue is None:
            raise NotFound("queue", queue_id)
        moment = values.aware(now, "now").astimezone(UTC)
        now_us = to_us(moment)
        waiting = offered = assigned = 0
        oldest: datetime | None = None
        for slot in self._tasks_by_queue.get(queue.name.lower(), {}).values():
            status = slot.task.status
            if status is TaskStatus.WAITING:
                waiting += 1
                if oldest is None or slot.task.waiting_since < oldest:
                    oldest = slot.task.waiting_since
            elif status is TaskStatus.OFFERED:
                offered += 1
            else:
                assigned += 1
        serving: dict[int, bool] = {}
        available = busy = 0
        for agent in self._agents.values():
            profile = agent.profile
            serves = serving.get(profile.number)
            if serves is None:
                serves = serving[profile.number] = serves_queue(profile, queue)
            if not serves or agent.agent.presence is Presence.OFFLINE:
                continue
            if any(agent.can_take(channel, now_us) for channel in queue.channels):
                available += 1
            else:
                busy += 1
        return QueueStatus(
            queue=queue,
            waiting=waiting,
            offered=offered,
            assigned=assigned,
            oldest_waiting_since=oldest,
            oldest_wait_seconds=max(0.0, (moment - oldest).total_seconds()) if oldest else 0.0,
            agents_available=available,
            agents_busy=busy,
            today=self.day_stats(queue.name, moment.date()),
        )

    def explain(self, task: Task, now: datetime) -> TaskExplanation:
        """Why `task` is where it is (open or not; a task that left is explained from its
        stored state and last decision)."""
        moment = values.aware(now, "now").astimezone(UTC)
        now_us = to_us(moment)
        queue = self.queue_named(task.queue)
        ws_us = to_us(task.waiting_since)
        waited = max(0.0, (now_us - ws_us) / 1_000_000)
        if queue is None or not task.is_open:
            return TaskExplanation(
                task=task,
                queue_known=queue is not None,
                step=0,
                requirements=None,
                pools=(),
                next_step_at=None,
                waited_seconds=waited,
                effective_wait_seconds=waited,
                agents_meeting=0,
                agents_able_now=0,
                decision=task.decision,
                summary=_summary(task, queue, None, 0, 0),
            )
        info = self._info[queue.name.lower()]
        schedule = info.schedule
        step = bisect.bisect_right(schedule, now_us - ws_us)
        demand, fallback = self._demand_for(
            info, task.requirements, self._requirement_id(task.requirements), step
        )
        meeting = able = 0
        for agent in self._agents.values():
            if (
                agent.agent.presence is Presence.OFFLINE
                or task.channel not in agent.profile.channels
            ):
                continue
            if eligible(agent.profile, demand, self._queues_by_name):
                meeting += 1
                if agent.can_take(task.channel, now_us):
                    able += 1
        priority = queue.priority + task.priority
        return TaskExplanation(
            task=task,
            queue_known=True,
            step=step,
            requirements=demand.requirements,
            pools=demand.pools,
            next_step_at=from_us(ws_us + schedule[step]) if step < len(schedule) else None,
            waited_seconds=waited,
            effective_wait_seconds=waited + priority * self.policy.priority_wait_seconds,
            agents_meeting=meeting,
            agents_able_now=able,
            decision=task.decision,
            summary=_summary(task, queue, demand if fallback is None else None, meeting, able),
        )

    # --- snapshots ------------------------------------------------------------------------

    def snapshot(self) -> RoutingSnapshot:
        """The state as plain aggregates, in a canonical order (cheap: they are immutable)."""
        stats = (
            tuple(
                _stats_struct(key, self._stats_day, counts)
                for key, counts in sorted(self._stats.items())
            )
            if self._stats_day is not None
            else ()
        )
        return RoutingSnapshot(
            clock=self._now if self._now_us else None,
            agents=tuple(
                slot.agent for slot in sorted(self._agents.values(), key=lambda s: s.id_int)
            ),
            queues=tuple(sorted(self._queues.values(), key=lambda queue: queue.id.int)),
            tasks=tuple(slot.task for slot in sorted(self._tasks.values(), key=lambda s: s.id_int)),
            stats=stats,
        )

    @classmethod
    def restore(
        cls,
        snapshot: RoutingSnapshot,
        policy: RoutingPolicy | None = None,
        *,
        settled: bool = False,
    ) -> RoutingEngine:
        """An engine holding the snapshot's state. Its first `decide` reconsiders every agent
        and every piece of work, unless `settled` says the snapshot was taken right after a
        `decide` at its `clock` (nothing was left to match), which saves that work."""
        engine = cls(policy)
        engine._settling = settled
        if snapshot.clock is not None:
            engine._advance_clock(snapshot.clock)
        for queue in snapshot.queues:
            engine._queues[queue.id] = queue
            engine._queues_by_name[queue.name.lower()] = queue
            engine._info[queue.name.lower()] = engine._queue_info(queue)
        for agent in snapshot.agents:
            slot = AgentSlot(agent, engine._profile_of(agent))
            slot.profile.members += 1
            engine._agents[slot.id_int] = slot
            engine._agent_touched(slot)
            if slot.cooldown_us:
                heapq.heappush(engine._timers, (slot.cooldown_us, _COOLDOWN, slot.id_int, 0, slot))
        for task in snapshot.tasks:
            task_slot = TaskSlot(task)
            task_slot.req_id = engine._requirement_id(task.requirements)
            engine._tasks[task_slot.id_int] = task_slot
            engine._tasks_by_queue.setdefault(task_slot.queue_key, {})[task_slot.id_int] = task_slot
            if task.status is TaskStatus.WAITING:
                engine._unplaced[task_slot.id_int] = task_slot
            elif task.status is TaskStatus.OFFERED and task.agent_id is not None:
                holder = engine._agents.get(task.agent_id.int)
                if holder is not None:
                    holder.offers[task_slot.id_int] = task.channel
                    holder.recount()
                if task.offer_expires_at is not None:
                    heapq.heappush(
                        engine._timers,
                        (
                            to_us(task.offer_expires_at),
                            _EXPIRE,
                            task_slot.id_int,
                            task.offers,
                            task_slot,
                        ),
                    )
        if snapshot.stats:
            engine._start_day(snapshot.stats[0].day)
            for stats in snapshot.stats:
                counts = engine._stats[stats.queue] = _DayCounts()
                counts.queued = stats.queued
                counts.answered = stats.answered
                counts.answered_within = stats.answered_within
                counts.abandoned = stats.abandoned
                counts.fell_back = stats.fell_back
        if settled:
            due: list[DomainEvent] = []
            engine._emitted = due
            engine._place_unplaced()
            engine._refresh_stale()
            engine._emitted = None
            engine._settling = False
            if due:
                raise ValueError("the snapshot is not settled: work was due for its fallback")
        return engine


def _stats_struct(key: str, day: date, counts: _DayCounts) -> QueueDayStats:
    return QueueDayStats(
        queue=key,
        day=day,
        queued=counts.queued,
        answered=counts.answered,
        answered_within=counts.answered_within,
        abandoned=counts.abandoned,
        fell_back=counts.fell_back,
    )


def _summary(
    task: Task, queue: Queue | None, demand: Demand | None, meeting: int, able: int
) -> str:
    """One sentence for a person reading an explanation."""
    if queue is None:
        return f"no queue named {task.queue!r} exists; the work waits until one is created"
    if task.status is TaskStatus.RELEASED:
        return f"the work left routing ({task.release_reason})"
    if task.status is TaskStatus.FELL_BACK:
        return f"the work was handed to the queue's fallback ({task.fallback})"
    if task.status is not TaskStatus.WAITING:
        decision = task.decision
        if decision is None:
            return f"the work is {task.status} (picked by the agent)"
        why_work = (
            "the agent had room and this was the first work in order it may take"
            if decision.direction is MatchDirection.AGENT_TO_WORK
            else "the work looked for the best agent able to take it"
        )
        return (
            f"{task.status} to agent {task.agent_id}: {why_work}; agent chosen by "
            f"{decision.agent_rule} (proficiency {decision.proficiency}, load "
            f"{decision.load:.2f})"
        )
    if demand is None:
        return "the work reached its queue's fallback and leaves routing at the next decision"
    asked = ", ".join(f"{req.skill}≥{req.min_level}" for req in demand.requirements.skills)
    asks = f"it asks {asked or 'no skill'}"
    if demand.language:
        asks += f" in {demand.language}"
    if meeting == 0:
        return f"waiting: {asks}, and no logged-in agent on {task.channel} meets that"
    if able == 0:
        return f"waiting: {asks}; {meeting} agent(s) meet it but none can take it now"
    return f"waiting: {asks}; {able} agent(s) could take it and it is offered at the next decision"
