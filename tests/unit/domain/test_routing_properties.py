"""Properties of routing on random floors driven by random scripts.

Whatever happens: no agent ever holds or is offered more than its capacity allows (nor beside
an exclusive item, nor while unavailable or cooling down), no work is offered or held twice,
every waiting piece of work that some able agent may take is offered (the engine leaves no
match undone), and replaying the events rebuilds the same state. The indexed engine makes
exactly the reference scan's decisions, and the same matches as the rule written out over
everything (`ScanEngine(exhaustive=True)`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crmcore.domain.agent import (
    Agent,
    AgentEvent,
    Presence,
    Requirements,
    exclusivity_conflict,
)
from crmcore.domain.base import DomainEvent
from crmcore.domain.errors import DomainError
from crmcore.domain.queue import (
    AddOverflowPool,
    DropSkill,
    Fallback,
    FallbackKind,
    OverflowPool,
    PoolKind,
    Queue,
    QueueEvent,
    RoutingAction,
    RoutingStep,
    SetMinLevel,
)
from crmcore.domain.routing import RoutingEngine, ScanEngine, merge_requirements
from crmcore.domain.routing.matching import AgentSlot, Profile, profile_key, to_us
from crmcore.domain.task import (
    ReleaseReason,
    RoutingAccepted,
    RoutingAssigned,
    RoutingOffered,
    RoutingOfferRevoked,
    RoutingRejected,
    RoutingTimedOut,
    Task,
    TaskEvent,
    TaskFellBack,
    TaskQueued,
    TaskReleased,
    TaskStatus,
)
from crmcore.domain.values import Channel
from tests.unit.domain.routing_floor import Floor

SKILLS = ("billing", "sales", "tech")
TEAMS = ("red", "blue")
LANGUAGES = ("ja", "en")
CHANNELS = ("chat", "email", "phone")
PRESENCES = (Presence.AVAILABLE, Presence.BREAK, Presence.BUSY, Presence.OFFLINE)

levels = st.integers(min_value=1, max_value=5)
skill_sets = st.dictionaries(st.sampled_from(SKILLS), levels, max_size=3)
capacities = st.fixed_dictionaries(
    {
        "chat": st.integers(min_value=0, max_value=3),
        "email": st.integers(min_value=0, max_value=2),
        "phone": st.integers(min_value=0, max_value=1),
    }
)


@dataclass(frozen=True)
class QueueSpec:
    name: str
    channels: tuple[str, ...]
    skills: dict[str, int]
    language: str | None
    priority: int
    steps: tuple[RoutingStep, ...]
    offer_timeout: int
    max_misses: int
    overflow: tuple[str, ...]


@dataclass(frozen=True)
class AgentSpec:
    name: str
    skills: dict[str, int]
    languages: tuple[str, ...]
    teams: tuple[str, ...]
    capacity: dict[str, int]


@st.composite
def steps_for(
    draw: st.DrawFn, skills: dict[str, int], others: Sequence[str]
) -> tuple[RoutingStep, ...]:
    required = dict(skills)
    steps: list[RoutingStep] = []
    after = 0
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        after += draw(st.integers(min_value=1, max_value=40))
        choices: list[RoutingAction] = [
            AddOverflowPool(
                pool=OverflowPool(kind=PoolKind.TEAM, name=draw(st.sampled_from(TEAMS)))
            )
        ]
        if others:
            choices.append(
                AddOverflowPool(
                    pool=OverflowPool(kind=PoolKind.QUEUE, name=draw(st.sampled_from(others)))
                )
            )
        if required:
            skill = draw(st.sampled_from(sorted(required)))
            choices.append(SetMinLevel(skill=skill, level=draw(levels)))
            choices.append(DropSkill(skill=skill))
        action = draw(st.sampled_from(choices))
        if isinstance(action, SetMinLevel):
            required[action.skill] = action.level
        elif isinstance(action, DropSkill):
            del required[action.skill]
        steps.append(RoutingStep(after_seconds=after, action=action))
    if draw(st.integers(min_value=0, max_value=4)) == 0:
        to = draw(st.sampled_from(list(FallbackKind)))
        steps.append(RoutingStep(after_seconds=after + 60, action=Fallback(to=to)))
    return tuple(steps)


@st.composite
def queue_specs(draw: st.DrawFn) -> list[QueueSpec]:
    names = [f"Q{n}" for n in range(draw(st.integers(min_value=1, max_value=3)))]
    specs = []
    for name in names:
        others = [other for other in names if other != name]
        skills = draw(
            st.dictionaries(
                st.sampled_from(SKILLS), st.integers(min_value=1, max_value=3), max_size=2
            )
        )
        specs.append(
            QueueSpec(
                name=name,
                channels=tuple(
                    draw(st.lists(st.sampled_from(CHANNELS), min_size=1, max_size=2, unique=True))
                ),
                skills=skills,
                language=draw(st.sampled_from((None, None, None, *LANGUAGES))),
                priority=draw(st.integers(min_value=0, max_value=3)),
                steps=draw(steps_for(skills, others)),
                offer_timeout=draw(st.integers(min_value=3, max_value=30)),
                max_misses=draw(st.integers(min_value=1, max_value=3)),
                overflow=tuple(draw(st.lists(st.sampled_from(others), unique=True, max_size=1)))
                if others
                else (),
            )
        )
    return specs


agent_specs = st.lists(
    st.builds(
        AgentSpec,
        name=st.just(""),
        skills=skill_sets,
        languages=st.lists(st.sampled_from(LANGUAGES), unique=True, min_size=1, max_size=2).map(
            tuple
        ),
        teams=st.lists(st.sampled_from(TEAMS), unique=True, max_size=1).map(tuple),
        capacity=capacities,
    ),
    min_size=1,
    max_size=6,
)

index = st.integers(min_value=0, max_value=50)


@dataclass(frozen=True)
class Submit:
    queue: int
    channel: str
    priority: int
    skills: dict[str, int]
    last_agent: int | None
    preferred_agent: int | None
    waited: int


@dataclass(frozen=True)
class SetPresence:
    agent: int
    presence: Presence


@dataclass(frozen=True)
class Respond:
    accept: bool
    offer: int


@dataclass(frozen=True)
class Complete:
    task: int
    reason: ReleaseReason


@dataclass(frozen=True)
class Tick:
    seconds: int


@dataclass(frozen=True)
class SetCapacity:
    agent: int
    capacity: dict[str, int]


@dataclass(frozen=True)
class SetSkills:
    agent: int
    skills: dict[str, int]


@dataclass(frozen=True)
class ChangeQueue:
    queue: int
    priority: int
    offer_timeout: int
    max_misses: int
    overflow: bool


Action = Submit | SetPresence | Respond | Complete | Tick | SetCapacity | SetSkills | ChangeQueue

submits = st.builds(
    Submit,
    queue=index,
    channel=st.sampled_from(CHANNELS),
    priority=st.integers(min_value=0, max_value=3),
    skills=st.dictionaries(
        st.sampled_from(SKILLS), st.integers(min_value=1, max_value=3), max_size=1
    ),
    last_agent=st.none() | index,
    preferred_agent=st.none() | index,
    waited=st.integers(min_value=0, max_value=90),
)
actions: st.SearchStrategy[Action] = st.one_of(
    submits,
    submits,
    submits,
    st.builds(
        SetPresence,
        agent=index,
        presence=st.sampled_from((Presence.AVAILABLE, Presence.AVAILABLE, *PRESENCES)),
    ),
    st.builds(Respond, accept=st.just(True), offer=index),
    st.builds(Respond, accept=st.booleans(), offer=index),
    st.builds(Complete, task=index, reason=st.sampled_from(list(ReleaseReason))),
    st.builds(Tick, seconds=st.integers(min_value=1, max_value=45)),
    st.builds(SetCapacity, agent=index, capacity=capacities),
    st.builds(SetSkills, agent=index, skills=skill_sets),
    st.builds(
        ChangeQueue,
        queue=index,
        priority=st.integers(min_value=0, max_value=5),
        offer_timeout=st.integers(min_value=3, max_value=30),
        max_misses=st.integers(min_value=1, max_value=3),
        overflow=st.booleans(),
    ),
)


@dataclass(frozen=True)
class Script:
    queues: list[QueueSpec]
    agents: list[AgentSpec]
    actions: list[Action]


scripts = st.builds(
    Script,
    queues=queue_specs(),
    agents=agent_specs,
    actions=st.lists(actions, min_size=10, max_size=50),
)


def play(script: Script, engine: RoutingEngine, check: bool = False) -> Floor:
    """Runs the script on a floor around `engine`; with `check`, after every step."""
    floor = Floor(engine)
    referee = Referee()
    for spec in script.queues:
        floor.queue(
            spec.name,
            channels=spec.channels,
            skills=spec.skills,
            language=spec.language,
            priority=spec.priority,
            steps=spec.steps,
            offer_timeout=spec.offer_timeout,
            max_misses=spec.max_misses,
            overflow=spec.overflow,
        )
    agents = [
        floor.agent(
            f"agent {number}",
            skills=spec.skills,
            languages=spec.languages,
            teams=spec.teams,
            capacity=spec.capacity,
            presence=Presence.AVAILABLE,
        )
        for number, spec in enumerate(script.agents)
    ]
    for number, action in enumerate(script.actions):
        with contextlib.suppress(DomainError):  # a refused command changes nothing
            _perform(floor, script, agents, number, action)
        if check:
            referee.watch(floor.log)
            assert_nothing_left_undone(floor)
    return floor


def _perform(floor: Floor, script: Script, agents: list[UUID], number: int, action: Action) -> None:
    def agent(position: int) -> UUID:
        return agents[position % len(agents)]

    if isinstance(action, Submit):
        floor.submit(
            script.queues[action.queue % len(script.queues)].name,
            f"work {number}",
            channel=action.channel,
            priority=action.priority,
            skills=action.skills,
            last_agent=None if action.last_agent is None else agent(action.last_agent),
            preferred_agent=(
                None if action.preferred_agent is None else agent(action.preferred_agent)
            ),
            waited=action.waited,
        )
    elif isinstance(action, SetPresence):
        floor.presence(agent(action.agent), action.presence)
    elif isinstance(action, Respond):
        offered = sorted(
            (task for task in floor.engine.tasks() if task.status is TaskStatus.OFFERED),
            key=lambda task: task.id.int,
        )
        if offered:
            task = offered[action.offer % len(offered)]
            (floor.accept if action.accept else floor.reject)(task.id)
    elif isinstance(action, Complete):
        open_tasks = sorted(floor.engine.tasks(), key=lambda task: task.id.int)
        if open_tasks:
            floor.complete(open_tasks[action.task % len(open_tasks)].id, action.reason)
    elif isinstance(action, Tick):
        floor.advance(action.seconds)
    elif isinstance(action, SetCapacity):
        floor.capacity(agent(action.agent), action.capacity)
    elif isinstance(action, ChangeQueue):
        spec = script.queues[action.queue % len(script.queues)]
        queue = floor.engine.queue_named(spec.name)
        assert queue is not None
        others = [other.name for other in script.queues if other.name != spec.name]
        floor.run(
            queue.update(
                priority=action.priority,
                offer_timeout_seconds=action.offer_timeout,
                max_misses=action.max_misses,
                overflow_queues=others[:1] if action.overflow else [],
                at=floor.now,
            )
        )
    else:
        floor.skills(agent(action.agent), action.skills)


_OFFER_ENDINGS = (RoutingAccepted, RoutingRejected, RoutingTimedOut, RoutingOfferRevoked)


class Referee:
    """Follows the log and checks every offer and assignment against the rules as the
    aggregates state them (agent capacity and presence, the queue's widening, pools) —
    independently of the engine's own bookkeeping."""

    def __init__(self) -> None:
        self.seen = 0
        self.agents: dict[UUID, Agent] = {}
        self.queues: dict[str, Queue] = {}
        self.tasks: dict[UUID, Task] = {}
        self.offers: dict[UUID, tuple[UUID, Channel]] = {}
        self.held: dict[UUID, UUID] = {}

    def watch(self, log: Sequence[DomainEvent]) -> None:
        for event in log[self.seen :]:
            self.see(event)
        self.seen = len(log)

    def see(self, event: DomainEvent) -> None:
        key = event.originator_id
        if isinstance(event, AgentEvent):
            self.agents[key] = event.mutate(self.agents.get(key))
        elif isinstance(event, QueueEvent):
            known = next((q for q in self.queues.values() if q.id == key), None)
            queue = event.mutate(known)
            self.queues[queue.name.lower()] = queue
        elif isinstance(event, TaskEvent):
            if isinstance(event, RoutingOffered):
                self.check_offer(event)
                self.offers[key] = (event.agent_id, event.channel)
            elif isinstance(event, _OFFER_ENDINGS):
                assert self.offers.pop(key)[0] == getattr(event, "agent_id", None)
            elif isinstance(event, RoutingAssigned):
                assert key not in self.held, "work assigned twice"
                self.held[key] = event.agent_id
            elif isinstance(event, TaskReleased | TaskFellBack):
                self.offers.pop(key, None)
                self.held.pop(key, None)
            before = None if isinstance(event, TaskQueued) else self.tasks[key]
            self.tasks[key] = event.mutate(before)
        holders = [item.work_id for agent in self.agents.values() for item in agent.work]
        assert len(holders) == len(set(holders)), "the same work is in two agents' hands"

    def check_offer(self, offer: RoutingOffered) -> None:
        agent = self.agents[offer.agent_id]
        assert offer.originator_id not in self.offers, "work offered twice"
        assert offer.originator_id not in self.held, "held work offered"
        offered = [channel for who, channel in self.offers.values() if who == agent.id]
        assert has_room(agent, offered, offer.channel, offer.timestamp), "offer without room"
        task = self.tasks[offer.originator_id]
        queue = self.queues[task.queue.lower()]
        assert qualifies(agent, task, queue, self.queues.get, offer.timestamp), (
            f"agent {agent.display_name} does not qualify for work {task.id}"
        )


def asks_now(
    queue: Queue, task: Task, now: datetime
) -> tuple[Requirements, list[OverflowPool], FallbackKind | None]:
    """What the work asks at `now`, straight from the queue's rules."""
    waited = (now - task.waiting_since).total_seconds()
    merged = merge_requirements(queue.requirements, task.requirements)
    routing = msgspec.structs.replace(queue, requirements=merged).effective_requirements(waited)
    pools = list(routing.extra_pools)
    if queue.overflow_queues and waited >= queue.service_level.threshold_seconds:
        pools.extend(OverflowPool(kind=PoolKind.QUEUE, name=name) for name in queue.overflow_queues)
    return routing.requirements, pools, routing.fallback


def has_room(agent: Agent, offered: list[Channel], channel: Channel, now: datetime) -> bool:
    """Available, not cooling down, room on the channel counting offers, exclusivity."""
    if agent.presence is not Presence.AVAILABLE or agent.cooling_down(now):
        return False
    in_hand = [item.channel for item in agent.work] + offered
    if exclusivity_conflict(in_hand, channel) is not None:
        return False
    return agent.items_on(channel) + offered.count(channel) < agent.capacity.limit(channel)


def qualifies(
    agent: Agent,
    task: Task,
    queue: Queue,
    queue_named: Callable[[str], Queue | None],
    now: datetime,
) -> bool:
    """The requirements the work asks at `now` met, or one of its pools joined (the language
    is asked all the same)."""
    requirements, pools, _ = asks_now(queue, task, now)
    if agent.meets(requirements):
        return True
    if requirements.language is not None and not agent.speaks(requirements.language):
        return False
    for pool in pools:
        if pool.kind is PoolKind.TEAM and agent.belongs_to(pool.name):
            return True
        if pool.kind is PoolKind.QUEUE:
            other = queue_named(pool.name.lower())
            if (
                other is not None
                and agent.meets(other.requirements)
                and any(agent.capacity.limit(channel) for channel in other.channels)
            ):
                return True
    return False


def may_take(floor: Floor, agent: Agent, task: Task, now: datetime) -> bool:
    """The rules of DOMAIN.md applied by hand to the engine's facts."""
    offered = [
        other.channel
        for other in floor.engine.tasks()
        if other.status is TaskStatus.OFFERED and other.agent_id == agent.id
    ]
    queue = floor.engine.queue_named(task.queue)
    assert queue is not None
    return has_room(agent, offered, task.channel, now) and qualifies(
        agent, task, queue, floor.engine.queue_named, now
    )


def assert_nothing_left_undone(floor: Floor) -> None:
    now = floor.engine.clock
    for task in floor.engine.tasks():
        queue = floor.engine.queue_named(task.queue)
        if task.status is not TaskStatus.WAITING or queue is None:
            continue
        _, _, fallback = asks_now(queue, task, now)
        assert fallback is None, "work that reached its fallback is still waiting"
        for agent in floor.engine.agents():
            assert not may_take(floor, agent, task, now), (
                f"work {task.id} waits although agent {agent.display_name} may take it"
            )


def matches(log: Sequence[DomainEvent]) -> list[tuple[str, UUID, UUID | None]]:
    """The decisions as (event, work, agent), without the reasons' wording."""
    return [
        (type(event).__name__, event.originator_id, getattr(event, "agent_id", None))
        for event in log
    ]


def facts(engine: RoutingEngine) -> object:
    return msgspec.structs.replace(engine.snapshot(), clock=None)


class TestRoutingProperties:
    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(scripts)
    def test_the_rules_always_hold(self, script: Script) -> None:
        play(script, RoutingEngine(), check=True)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(scripts)
    def test_the_indexes_make_the_scans_decisions(self, script: Script) -> None:
        indexed = play(script, RoutingEngine())
        scanned = play(script, ScanEngine())
        written_out = play(script, ScanEngine(exhaustive=True))

        assert indexed.log == scanned.log
        assert matches(indexed.log) == matches(written_out.log)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(scripts)
    def test_replaying_the_events_rebuilds_the_same_state(self, script: Script) -> None:
        floor = play(script, RoutingEngine())

        replayed = RoutingEngine()
        replayed.apply_all(floor.log)
        restored = RoutingEngine.restore(floor.engine.snapshot())

        assert facts(replayed) == facts(floor.engine)
        assert facts(restored) == facts(floor.engine)
        assert replayed.settle() == []
        assert restored.settle() == []
        later = floor.now + timedelta(seconds=60)
        assert replayed.decide(later) == restored.decide(later) == floor.engine.decide(later)


class TestTheEnginesViewOfAnAgent:
    @settings(max_examples=200, deadline=None)
    @given(capacities, st.lists(st.sampled_from(CHANNELS), max_size=6))
    def test_load_and_room_agree_with_the_agent_when_no_offer_is_pending(
        self, capacity: dict[str, int], channels: list[str]
    ) -> None:
        at = datetime(2025, 4, 1, 9, 0, tzinfo=UTC)
        agent = Agent.register(uuid4(), display_name="A", capacity=capacity, at=at).mutate(None)
        agent = agent.set_presence(Presence.AVAILABLE, at=at)[0].mutate(agent)
        for channel in channels:
            with contextlib.suppress(DomainError):
                agent = agent.assign_work(uuid4(), channel, at=at).mutate(agent)

        slot = AgentSlot(agent, Profile(0, profile_key(agent)))

        assert slot.load == pytest.approx(agent.load())
        for channel in Channel:
            assert slot.can_take(channel, to_us(at)) == agent.can_take(channel, at)
