"""Routing engine latency at contact-centre scale, indexed vs a plain scan, same decisions.

The floor: 10,000 agents in a few hundred skill profiles (skills with levels, languages, a
team, channel capacities), 100,000 tasks waiting in queues whose routing steps widen three
times (lower a level, drop a skill, add an overflow team) — every agent of the backlog queues
is full. A second, smaller pool of agents serves queues with no backlog. Then, on a simulated
clock, two kinds of events alternate:

- "agent frees capacity → next task": a backlog agent finishes a task; the latency is that of
  folding the release into the engine and deciding, which offers the agent the first waiting
  work in order it may take (the offer is then accepted, untimed);
- "task arrives → agent": new work arrives (mostly in a queue with free agents, where it is
  offered to the best of them; else it joins the backlog); the offer is accepted and the work
  finished at once, untimed, so that pool keeps room.

Time moves 10 ms per event and the clock ticks between events (widening steps fire on their
own), untimed: the service's clock loop does that work, not the event. Both engines start from
the same snapshot; the first `--compare` events of each kind run on both, and every decision
of the indexed engine must equal the scan's. The garbage collector runs normally; the loaded
state is moved out of its sight with `gc.freeze()` (what the service does after loading).
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

from bench.service import percentile
from crmcore.domain.agent import Agent, Presence, Requirements, Skill, SkillRequirement
from crmcore.domain.base import DomainEvent
from crmcore.domain.queue import (
    AddOverflowPool,
    DropSkill,
    OverflowPool,
    PoolKind,
    Queue,
    RoutingStep,
    SetMinLevel,
)
from crmcore.domain.routing import RoutingEngine, RoutingSnapshot, ScanEngine
from crmcore.domain.task import ReleaseReason, RoutingOffered, Task, TaskStatus

T0 = datetime(2025, 4, 1, 9, 0, tzinfo=UTC)
BACKLOG_SKILLS = [f"product-{n}" for n in range(30)]
SERVICE_SKILLS = [f"service-{n}" for n in range(6)]
TEAMS = [f"team-{n}" for n in range(20)]
LANGUAGES = ["ja", "en", "zh", "ko"]
BACKLOG_SHAPES: list[dict[str, int]] = [
    {"phone": 1},
    {"chat": 3},
    {"chat": 2, "email": 4},
    {"email": 6},
    {"phone": 1, "email": 3},
]
SERVICE_SHAPES: list[dict[str, int]] = [{"chat": 3}, {"phone": 1}, {"chat": 2, "email": 2}]
STEP_MINUTES = (1, 3, 7)


@dataclass(frozen=True)
class Floor:
    snapshot: RoutingSnapshot
    backlog_queues: list[Queue]
    service_queues: list[Queue]
    service_agents: list[UUID]
    profiles: int
    waiting: int
    setup_seconds: float


@dataclass(frozen=True)
class Op:
    """One measured event: a backlog task finished, or new work arrived."""

    kind: str
    task_id: UUID
    queue: str = ""
    channel: str = ""
    last_agent: UUID | None = None


def uuid_from(rng: random.Random) -> UUID:
    return UUID(int=rng.getrandbits(128), version=4)


def build_floor(agents: int, tasks: int, profiles: int, seed: int) -> Floor:
    """The loaded floor as a snapshot (built with the indexed engine, then settled)."""
    started = time.perf_counter()
    rng = random.Random(seed)
    engine = RoutingEngine()
    events: list[DomainEvent] = []

    backlog_queues: list[Queue] = []
    for number in range(60):
        first, second = rng.sample(BACKLOG_SKILLS, 2)
        created = Queue.create(
            uuid_from(rng),
            name=f"Backlog {number}",
            channels=[rng.choice(["phone", "chat", "email"])],
            requirements=Requirements(
                skills=(
                    SkillRequirement(skill=first, min_level=rng.choice((3, 4))),
                    SkillRequirement(skill=second, min_level=3),
                ),
                language="ja" if number % 3 else None,
            ),
            priority=rng.randint(0, 2),
            offer_timeout_seconds=20,
            routing_steps=[
                RoutingStep(
                    after_seconds=STEP_MINUTES[0] * 60, action=SetMinLevel(skill=first, level=2)
                ),
                RoutingStep(after_seconds=STEP_MINUTES[1] * 60, action=DropSkill(skill=second)),
                RoutingStep(
                    after_seconds=STEP_MINUTES[2] * 60,
                    action=AddOverflowPool(
                        pool=OverflowPool(kind=PoolKind.TEAM, name=rng.choice(TEAMS))
                    ),
                ),
            ],
            at=T0 - timedelta(hours=1),
        )
        events.append(created)
        backlog_queues.append(created.mutate(None))
    service_queues: list[Queue] = []
    for number, skill in enumerate(SERVICE_SKILLS):
        for channel in ("chat", "phone"):
            created = Queue.create(
                uuid_from(rng),
                name=f"Service {number} {channel}",
                channels=[channel],
                requirements=Requirements(
                    skills=(SkillRequirement(skill=skill, min_level=2),), language="ja"
                ),
                offer_timeout_seconds=20,
                routing_steps=[
                    RoutingStep(
                        after_seconds=minutes * 60, action=SetMinLevel(skill=skill, level=1)
                    )
                    for minutes in (2,)
                ],
                at=T0 - timedelta(hours=1),
            )
            events.append(created)
            service_queues.append(created.mutate(None))

    service_profiles = max(1, profiles // 10)
    shapes: list[tuple[list[Skill], list[str], list[str], dict[str, int]]] = []
    for number in range(profiles):
        if number < service_profiles:
            picked = rng.sample(SERVICE_SKILLS, 2)
            shapes.append(
                (
                    [Skill(name=name, level=rng.randint(2, 5)) for name in picked],
                    ["ja"] if number % 2 else ["ja", "en"],
                    ["service"],
                    SERVICE_SHAPES[number % len(SERVICE_SHAPES)],
                )
            )
        else:
            picked = rng.sample(BACKLOG_SKILLS, 3)
            shapes.append(
                (
                    [Skill(name=name, level=rng.randint(1, 5)) for name in picked],
                    ["ja", *rng.sample(LANGUAGES[1:], rng.randint(0, 1))],
                    [rng.choice(TEAMS)],
                    BACKLOG_SHAPES[number % len(BACKLOG_SHAPES)],
                )
            )
    service_agents: list[UUID] = []
    backlog_capacity = 0
    for number in range(agents):
        shape = number % profiles if number < profiles else rng.randrange(profiles)
        skills, languages, teams, capacity = shapes[shape]
        agent_id = uuid_from(rng)
        registered = Agent.register(
            agent_id,
            display_name=f"Agent {number}",
            teams=teams,
            skills=skills,
            languages=languages,
            capacity=capacity,
            at=T0 - timedelta(hours=1),
        )
        agent = registered.mutate(None)
        events.append(registered)
        events.extend(agent.set_presence(Presence.AVAILABLE, at=T0 - timedelta(minutes=59)))
        if shape < service_profiles:
            service_agents.append(agent_id)
        else:
            backlog_capacity += (
                max(capacity.values()) if "phone" in capacity else sum(capacity.values())
            )
    engine.apply_all(events)
    engine.decide(T0 - timedelta(minutes=59))

    # The backlog: enough work that `tasks` still wait once every able agent is full.
    for _ in range(tasks + backlog_capacity):
        queue = rng.choice(backlog_queues)
        since = T0 - timedelta(seconds=rng.uniform(0, 600))
        engine.apply(
            Task.enqueue(
                uuid_from(rng),
                queue=queue.name,
                channel=queue.channels[0],
                priority=rng.randint(0, 3),
                waiting_since=since,
                at=since,
            )
        )
    engine.decide(T0)
    for task in engine.tasks():
        if task.status is TaskStatus.OFFERED and task.agent_id is not None:
            engine.apply_all(engine.accept(task.id, task.agent_id, at=T0))
    assert engine.decide(T0) == []
    waiting = sum(1 for task in engine.tasks() if task.status is TaskStatus.WAITING)
    return Floor(
        snapshot=engine.snapshot(),
        backlog_queues=backlog_queues,
        service_queues=service_queues,
        service_agents=service_agents,
        profiles=len({(a.skills, a.languages, a.teams, a.capacity) for a in engine.agents()}),
        waiting=waiting,
        setup_seconds=time.perf_counter() - started,
    )


def plan(floor: Floor, engine: RoutingEngine, count: int, seed: int) -> list[Op]:
    """`count` events, alternating a backlog agent finishing a task and new work arriving."""
    rng = random.Random(seed + 1)
    held = sorted(
        (task.id for task in engine.tasks() if task.status is TaskStatus.ASSIGNED),
        key=lambda task_id: task_id.int,
    )
    rng.shuffle(held)
    ops: list[Op] = []
    for number in range(count):
        if number % 2 == 0:
            ops.append(Op(kind="free", task_id=held[number // 2 % len(held)]))
            continue
        to_backlog = rng.random() < 0.3
        queue = rng.choice(floor.backlog_queues if to_backlog else floor.service_queues)
        sticky = None if to_backlog or rng.random() > 0.2 else rng.choice(floor.service_agents)
        ops.append(
            Op(
                kind="arrive",
                task_id=uuid_from(rng),
                queue=queue.name,
                channel=queue.channels[0],
                last_agent=sticky,
            )
        )
    return ops


class Runner:
    """Drives one engine through the plan; times the measured part of each event."""

    def __init__(self, engine: RoutingEngine) -> None:
        self.engine = engine
        self.now = T0 + timedelta(seconds=1)
        self.timings: dict[str, list[float]] = {"free": [], "arrive": [], "tick": []}
        self.decisions: list[list[DomainEvent]] = []

    def run(self, op: Op) -> None:
        engine = self.engine
        self.now += timedelta(milliseconds=10)
        now = self.now
        self._timed("tick", lambda: engine.decide(now))
        if op.kind == "free":
            task = engine.task(op.task_id)
            if task is None or task.status is not TaskStatus.ASSIGNED:
                self.decisions.append([])
                return
            inputs: Sequence[DomainEvent] = engine.release(
                op.task_id, ReleaseReason.COMPLETED, at=now
            )
        else:
            inputs = (
                Task.enqueue(
                    op.task_id,
                    queue=op.queue,
                    channel=op.channel,
                    last_agent_id=op.last_agent,
                    at=now,
                ),
            )

        def measured() -> list[DomainEvent]:
            engine.apply_all(inputs)
            return engine.decide(now)

        decided = self._timed(op.kind, measured)
        self.decisions.append(decided)
        self._follow_up(op, decided)

    def _follow_up(self, op: Op, decided: list[DomainEvent]) -> None:
        """Untimed: offers are accepted; work that arrived in a service queue is finished
        at once so that pool keeps room."""
        engine, now = self.engine, self.now
        for event in decided:
            if isinstance(event, RoutingOffered):
                engine.apply_all(engine.accept(event.originator_id, event.agent_id, at=now))
        self.decisions.append(engine.decide(now))
        if op.kind == "arrive" and not op.queue.startswith("Backlog"):
            task = engine.task(op.task_id)
            if task is not None and task.status is TaskStatus.ASSIGNED:
                engine.apply_all(engine.release(op.task_id, ReleaseReason.COMPLETED, at=now))
                self.decisions.append(engine.decide(now))

    def _timed(self, kind: str, work: Callable[[], list[DomainEvent]]) -> list[DomainEvent]:
        started = time.perf_counter_ns()
        result = work()
        self.timings[kind].append((time.perf_counter_ns() - started) / 1000)
        return result


def main(argv: Sequence[str]) -> dict[str, object]:
    parser = argparse.ArgumentParser(prog="python -m bench routing", description=__doc__)
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--tasks", type=int, default=100_000, help="tasks left waiting")
    parser.add_argument("--profiles", type=int, default=300)
    parser.add_argument("--events", type=int, default=10_000, help="measured events")
    parser.add_argument("--compare", type=int, default=80, help="events of each kind scanned")
    parser.add_argument("--seed", type=int, default=7)
    options = parser.parse_args(argv)

    floor = build_floor(options.agents, options.tasks, options.profiles, options.seed)
    print(
        f"floor: {options.agents} agents in {floor.profiles} profiles, {floor.waiting} tasks "
        f"waiting in {len(floor.backlog_queues)} backlog queues with {len(STEP_MINUTES)} "
        f"widening steps, {len(floor.service_queues)} service queues "
        f"(built in {floor.setup_seconds:.1f} s)"
    )
    indexed = Runner(RoutingEngine.restore(floor.snapshot, settled=True))
    indexed.engine.warm()  # what the routing application does after loading
    scan = Runner(ScanEngine.restore(floor.snapshot, settled=True))
    ops = plan(floor, indexed.engine, options.events, options.seed)
    gc.collect()
    gc.freeze()

    compared = ops[: 2 * options.compare]
    identical = True
    started = time.perf_counter()
    for op in compared:
        indexed.run(op)
        scan.run(op)
        identical = identical and indexed.decisions == scan.decisions
    scan_seconds = time.perf_counter() - started
    compared_indexed = {kind: list(values) for kind, values in indexed.timings.items()}
    for op in ops[len(compared) :]:
        indexed.run(op)
    offers = sum(
        1 for decided in indexed.decisions for event in decided if isinstance(event, RoutingOffered)
    )

    free, arrive, tick = (indexed.timings[kind] for kind in ("free", "arrive", "tick"))
    scan_all = scan.timings["free"] + scan.timings["arrive"]
    indexed_compared = compared_indexed["free"] + compared_indexed["arrive"]
    speedup = statistics.median(scan_all) / statistics.median(indexed_compared)
    print(
        f"agent frees capacity → next task: p50 {percentile(free, 0.5):.1f} µs, "
        f"p99 {percentile(free, 0.99):.1f} µs over {len(free)} events"
    )
    print(
        f"task arrives → agent:             p50 {percentile(arrive, 0.5):.1f} µs, "
        f"p99 {percentile(arrive, 0.99):.1f} µs over {len(arrive)} events"
    )
    print(
        f"clock ticks between events:       p50 {percentile(tick, 0.5):.1f} µs, "
        f"p99 {percentile(tick, 0.99):.1f} µs ({offers} offers in all)"
    )
    print(
        f"plain scan on the first {len(compared)} events: p50 "
        f"{percentile(scan.timings['free'], 0.5) / 1000:.1f} ms (frees), "
        f"{percentile(scan.timings['arrive'], 0.5) / 1000:.1f} ms (arrivals); "
        f"indexed {speedup:.0f}× faster at p50; decisions "
        f"{'identical' if identical else 'DIFFERENT'} ({scan_seconds:.1f} s)"
    )
    return {
        "agents": options.agents,
        "profiles": floor.profiles,
        "tasks_waiting": floor.waiting,
        "widening_steps": len(STEP_MINUTES),
        "events": len(ops),
        "next_task_p50_us": round(percentile(free, 0.5), 1),
        "next_task_p99_us": round(percentile(free, 0.99), 1),
        "next_agent_p50_us": round(percentile(arrive, 0.5), 1),
        "next_agent_p99_us": round(percentile(arrive, 0.99), 1),
        "tick_p50_us": round(percentile(tick, 0.5), 1),
        "tick_p99_us": round(percentile(tick, 0.99), 1),
        "scan_next_task_p50_us": round(percentile(scan.timings["free"], 0.5), 1),
        "scan_next_agent_p50_us": round(percentile(scan.timings["arrive"], 0.5), 1),
        "compared_events": len(compared),
        "speedup_vs_scan_p50": round(speedup, 1),
        "identical_assignments": identical,
    }
