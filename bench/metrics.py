"""Metrics projection: replay of 1,000,000 events into fresh read models; event-to-KPI freshness.

1. A synthetic contact-centre history of `--events` events (default 1,000,000) over
   `--days` days: 50 agents in 5 teams, each team working one of 5 queues on one of 3
   channels, 6 contact reasons, 10 hours a day; each call is
   opened, queued, offered, answered (with the agent's work assigned), replied to, wrapped up,
   resolved (work released) and closed, or abandoned after a wait, and some are rated. Events
   are built from template events of real aggregates (`msgspec.structs.replace`) and encoded as
   the CloudEvents JSON the relays publish, before any timing starts.
2. Replay: the encoded events decoded (`EventDecoder`, as the bus feed does) and applied in
   batches of `--batch` (one transaction each, with the position) into fresh read models:
   SQLite (a file in a temporary directory) and PostgreSQL (a fresh database on the configured
   server, else a private one; `tests.support.postgres`). Timed from the first decode to the
   last commit. Pipelined as `crm metrics rebuild` is (the database commits one batch while
   the next is built); `--synchronous` replays one batch at a time for comparison. NATS
   transport is not part of it (see 3 for the full path).
3. Freshness: the metrics bus feed (`MetricsFeed`, SQLite read models) following a NATS stream
   (the configured NATS_URL, else a private server) while `--rate` events/s (default 1,000)
   are published for `--seconds` seconds; for each event, the time from just before its
   publish to the commit that made it visible to queries. p50 and p99.

Figures: `replay_sqlite_per_s`, `replay_postgres_per_s` (target ≥ 50,000 each),
`freshness_p50_ms`, `freshness_p99_ms` (target p99 ≤ 250 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import msgspec
import nats

from crmcore.adapters.envelope import encode, event_id, source_of, to_message
from crmcore.adapters.jetstream import ensure_stream
from crmcore.adapters.nats_server import NatsServer
from crmcore.adapters.readmodels import SqliteReadModelStore, open_read_model_store
from crmcore.application.metrics import (
    EventDecoder,
    KpiQuery,
    MetricsFeed,
    MetricsProjection,
    gc_paused,
)
from crmcore.config import BusSettings, bus_from_env
from crmcore.domain import kpis
from crmcore.domain.agent import Agent, AgentEvent
from crmcore.domain.base import DomainEvent
from crmcore.domain.feedback import SurveyResponse
from crmcore.domain.interaction import Interaction, InteractionEvent
from crmcore.domain.queue import Queue
from crmcore.domain.values import Channel

START = datetime(2025, 3, 3, tzinfo=UTC)
TEAMS = ("north", "south", "east", "west", "night")
QUEUES = ("billing", "tech", "sales", "delivery", "vip")
REASONS = ("billing", "refund", "login", "delivery", "broken", "cancel")
CHANNELS = ("phone", "chat", "email")


# --- the history -----------------------------------------------------------------------------


class _Templates:
    """One valid life of each kind, from the aggregates' own commands, to copy from."""

    def __init__(self) -> None:
        agent_id = UUID(int=1)
        registered = Agent.register(
            agent_id,
            display_name="template",
            teams=["north"],
            capacity={"phone": 1, "chat": 3, "email": 5},
            at=START,
        )
        agent = registered.mutate(None)
        (available,) = agent.set_presence("available", at=START)
        agent = available.mutate(agent)
        assigned = agent.assign_work(UUID(int=2), "phone", at=START)
        released = assigned.mutate(agent).release_work(UUID(int=2), at=START)
        (offline,) = released.mutate(assigned.mutate(agent)).set_presence("offline", at=START)
        self.agent = (registered, available, assigned, released, offline)

        opened = Interaction.open(
            interaction_id=UUID(int=3), channel="phone", contact_reason="billing", at=START
        )
        state = opened.mutate(None)
        answered_life: list[InteractionEvent] = [opened]

        def step(event: InteractionEvent) -> None:
            nonlocal state
            answered_life.append(event)
            state = event.mutate(state)

        step(state.enqueue(queue="billing", at=START))
        step(state.offer(agent_id, at=START))
        step(state.answer(agent_id, at=START))
        step(state.add_message(author_kind="agent", author_id=agent_id, text="Hello!", at=START))
        step(state.start_wrap_up(at=START))
        step(state.resolve(at=START))
        step(state.close(at=START))
        self.answered = tuple(answered_life)
        queued = self.answered[1].mutate(opened.mutate(None))
        self.abandoned = (opened, self.answered[1], queued.abandon(at=START))
        self.survey = SurveyResponse.answer(
            survey_id="template", kind="csat", score=5, interaction_id=UUID(int=3), at=START
        )
        self.queue = Queue.create(UUID(int=4), name="billing", channels=["phone"], at=START)


def history(events: int, days: int, seed: int = 7) -> list[DomainEvent]:
    """`events` events of a contact centre over `days` days, in per-aggregate order."""
    rng = random.Random(seed)
    t = _Templates()
    replace = msgspec.structs.replace
    out: list[DomainEvent] = []
    ids = iter(range(10_000, 100_000_000))
    agents = [UUID(int=next(ids)) for _ in range(50)]
    versions = dict.fromkeys(agents, 0)

    def agent_event(template: AgentEvent, agent: UUID, at: datetime, **changes: Any) -> None:
        versions[agent] += 1
        out.append(
            replace(
                template,
                originator_id=agent,
                originator_version=versions[agent],
                timestamp=at,
                **changes,
            )
        )

    for number, agent in enumerate(agents):
        agent_event(t.agent[0], agent, START, teams=(TEAMS[number % len(TEAMS)],))
    for name in QUEUES:
        out.append(replace(t.queue, originator_id=UUID(int=next(ids)), name=name))
    # ~9.3 events per call on average (10 answered, 3 abandoned, a survey now and then)
    per_day = max(1, round(events / 9.2 / days) + 1)
    for day in range(days):
        opening = START + timedelta(days=day, hours=8)
        for agent in agents:
            agent_event(t.agent[1], agent, opening)
        for call in range(per_day):
            if len(out) >= events:
                break
            arrival = opening + timedelta(seconds=call * 36_000 / per_day)
            interaction = UUID(int=next(ids))
            # Each team works one queue and one channel (as routing would send it to them).
            agent = rng.choice(agents)
            team = agents.index(agent) % len(TEAMS)
            channel = Channel(CHANNELS[team % len(CHANNELS)])
            common = {
                "originator_id": interaction,
                "channel": channel,
                "contact_reason": rng.choice(REASONS),
                "queue": QUEUES[team],
            }
            wait = timedelta(seconds=rng.expovariate(1 / 25))
            if rng.random() < 0.1:
                for template, offset in zip(t.abandoned, (0, 0, 1), strict=True):
                    at = arrival + wait * offset
                    extra: dict[str, Any] = {}
                    if template is t.abandoned[0]:
                        extra = {"queue": None}
                    elif template is t.abandoned[1]:
                        extra = {"queued_at": arrival, "waiting_since": arrival}
                    else:
                        extra = {"queued_at": arrival, "waited_seconds": wait.total_seconds()}
                    out.append(replace(template, **{**common, **extra, "timestamp": at}))
                continue
            answered = arrival + wait
            talk = timedelta(seconds=rng.uniform(60, 600))
            wrap = answered + talk
            resolved = wrap + timedelta(seconds=rng.uniform(10, 120))
            times = (
                arrival,
                arrival,
                answered,
                answered,
                answered + talk / 3,
                wrap,
                resolved,
                resolved,
            )
            for template, at in zip(t.answered, times, strict=True):
                changes: dict[str, Any] = {**common, "timestamp": at}
                if template is t.answered[0]:
                    changes["queue"] = None
                if hasattr(template, "queued_at"):
                    changes["queued_at"] = arrival
                if hasattr(template, "waiting_since"):
                    changes["waiting_since"] = arrival
                if template.agent_id is not None:
                    changes["agent_id"] = agent
                if hasattr(template, "created_at"):
                    changes["created_at"] = arrival
                if hasattr(template, "answered_at"):
                    changes["answered_at"] = answered
                if hasattr(template, "agents"):
                    changes["agents"] = (agent,)
                out.append(replace(template, **changes))
                if template is t.answered[3]:
                    agent_event(t.agent[2], agent, answered, work_id=interaction, channel=channel)
            agent_event(t.agent[3], agent, resolved, work_id=interaction)
            if rng.random() < 0.1:
                out.append(
                    replace(
                        t.survey,
                        originator_id=UUID(int=next(ids)),
                        timestamp=resolved + timedelta(minutes=5),
                        survey_id=f"s{interaction.int}",
                        score=rng.randint(1, 5),
                        interaction_id=interaction,
                        agent_id=agent,
                    )
                )
        for agent in agents:
            agent_event(t.agent[4], agent, opening + timedelta(hours=11))
    return out[:events]


def encoded(events: Sequence[DomainEvent]) -> list[bytes]:
    """The CloudEvents JSON the relays publish for each event."""
    source = source_of("bench")
    return [
        encode(event, id=event_id("bench", number), source=source)
        for number, event in enumerate(events, 1)
    ]


# --- replay ------------------------------------------------------------------------------------


#: Replay inside `MetricsProjection.pipelined()`, as `crm metrics rebuild` does (`--synchronous`:
#: one batch at a time, each committed before the next is built).
PIPELINED = True


def replay(projection: MetricsProjection, payloads: Sequence[bytes], batch: int) -> float:
    """Decodes and applies every payload in batches, as the bus feed does; returns events
    per second (pipelined: timed until every batch has committed)."""
    decoder = EventDecoder()
    started = time.perf_counter()
    with projection.pipelined() if PIPELINED else contextlib.nullcontext():
        for start in range(0, len(payloads), batch):
            chunk = payloads[start : start + batch]
            with gc_paused():
                projection.apply(
                    [
                        (start + offset, decoder.decode(payload))
                        for offset, payload in enumerate(chunk, 1)
                    ]
                )
    elapsed = time.perf_counter() - started
    assert decoder.unreadable == 0
    return len(payloads) / elapsed


def check(projection: MetricsProjection, days: int) -> kpis.KpiValues:
    start = kpis.to_ms(START)
    report = projection.kpis(KpiQuery(start_ms=start, end_ms=start + (days + 1) * 86_400_000))
    return report.rows[0].values


def replay_sqlite(payloads: Sequence[bytes], batch: int, days: int) -> float:
    with tempfile.TemporaryDirectory(prefix="crm-bench-metrics-") as directory:
        projection = MetricsProjection(SqliteReadModelStore(str(Path(directory) / "m.sqlite")))
        rate = replay(projection, payloads, batch)
        values = check(projection, days)
        print(
            f"  checked: offered {values.offered:,}, handled {values.handled:,}, "
            f"service level {values.service_level.value or 0:.3f}, AHT "
            f"{values.aht.mean_s or 0:.0f} s"
        )
        projection.close_store()
    return rate


def replay_postgres(payloads: Sequence[bytes], batch: int, days: int) -> float | None:
    from tests.support.postgres import PostgresProvider, PostgresUnavailable

    provider = PostgresProvider()
    try:
        server = provider.start()
    except PostgresUnavailable as error:
        print(f"  PostgreSQL unavailable, skipped: {error}")
        return None
    dbname = server.create_database("crm_bench_metrics")
    try:
        store = open_read_model_store(server.persistence(dbname), "metrics")
        projection = MetricsProjection(store)
        rate = replay(projection, payloads, batch)
        values = check(projection, days)
        print(f"  checked: offered {values.offered:,}, handled {values.handled:,}")
        projection.close_store()
        return rate
    finally:
        server.drop_database(dbname)
        provider.stop()


# --- freshness ---------------------------------------------------------------------------------


async def freshness(
    settings: BusSettings, events: Sequence[DomainEvent], rate: float, seconds: float
) -> tuple[float, float, int]:
    """p50 and p99 (ms) from publish to the commit making each event visible, and the count."""
    count = min(len(events), int(rate * seconds))
    with tempfile.TemporaryDirectory(prefix="crm-bench-fresh-") as directory:
        projection = MetricsProjection(SqliteReadModelStore(str(Path(directory) / "m.sqlite")))
        published: dict[int, float] = {}
        visible: list[float] = []
        lock = threading.Lock()
        seen = 0
        loop = asyncio.get_running_loop()
        all_visible = asyncio.Event()

        def committed(source: str, position: int) -> None:
            nonlocal seen
            now = time.perf_counter()
            with lock:
                for sequence in range(seen + 1, position + 1):
                    sent = published.get(sequence)
                    if sent is not None:
                        visible.append((now - sent) * 1000)
                seen = max(seen, position)
                if len(visible) >= count:
                    loop.call_soon_threadsafe(all_visible.set)

        projection.add_listener(committed)
        feed = MetricsFeed(projection, settings, batch=1000)
        runner = asyncio.create_task(feed.run())
        nc = await nats.connect(settings.url)
        js = nc.jetstream()
        await ensure_stream(js, settings)
        started = time.perf_counter()
        for number, event in enumerate(events[:count]):
            due = started + number / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            message = to_message(event, id=event_id("bench", number + 1), source="/crm/bench")
            sent = time.perf_counter()
            ack = await js.publish(message.subject, message.payload, headers=message.headers)
            with lock:
                published[ack.seq] = sent
                if ack.seq <= seen:  # committed before the ack came back
                    visible.append((time.perf_counter() - sent) * 1000)
        with lock:
            if len(visible) >= count:
                all_visible.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_visible.wait(), timeout=30)
        feed.stop()
        await runner
        await nc.close()
        projection.close_store()
    ordered = sorted(visible)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return p50, p99, len(ordered)


def _bus(
    argv_url: str | None,
) -> tuple[BusSettings, NatsServer | None, tempfile.TemporaryDirectory[str] | None]:
    configured = argv_url or bus_from_env().nats_url
    if configured:
        return BusSettings(nats_url=configured, stream="CRMBENCH_METRICS"), None, None
    directory = tempfile.TemporaryDirectory(prefix="crm-bench-nats-")
    server = NatsServer(Path(directory.name)).start()
    return BusSettings(nats_url=server.url, stream="CRMBENCH_METRICS"), server, directory


async def _drop_stream(settings: BusSettings) -> None:
    nc = await nats.connect(settings.url)
    try:
        js = nc.jetstream()
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(settings.stream)
    finally:
        await nc.close()


# --- main --------------------------------------------------------------------------------------


def main(argv: Sequence[str]) -> dict[str, object]:
    parser = argparse.ArgumentParser(prog="python -m bench metrics", description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--batch", type=int, default=10_000, help="events per transaction")
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s for freshness")
    parser.add_argument("--seconds", type=float, default=20.0, help="freshness duration")
    parser.add_argument("--nats-url", help="NATS server (default: NATS_URL or a private one)")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument(
        "--synchronous",
        action="store_true",
        help="replay one batch at a time (default: pipelined, a writer thread committing each "
        "batch while the next is built, as `crm metrics rebuild` does)",
    )
    args = parser.parse_args(list(argv))
    global PIPELINED
    PIPELINED = not args.synchronous

    started = time.perf_counter()
    payloads = encoded(history(args.events, args.days))
    print(
        f"history: {len(payloads):,} events over {args.days} days, generated and encoded in "
        f"{time.perf_counter() - started:.1f}s"
    )
    figures: dict[str, object] = {
        "events": len(payloads),
        "batch": args.batch,
        "pipelined": PIPELINED,
    }
    sqlite_rate = replay_sqlite(payloads, args.batch, args.days)
    print(f"replay into fresh SQLite read models: {sqlite_rate:,.0f} events/s")
    figures["replay_sqlite_per_s"] = round(sqlite_rate)
    if not args.skip_postgres:
        postgres_rate = replay_postgres(payloads, args.batch, args.days)
        if postgres_rate is not None:
            print(f"replay into fresh PostgreSQL read models: {postgres_rate:,.0f} events/s")
            figures["replay_postgres_per_s"] = round(postgres_rate)
        else:
            figures["replay_postgres_per_s"] = None
    del payloads

    events = history(round(args.rate * args.seconds), 1, seed=11)
    settings, server, directory = _bus(args.nats_url)
    try:
        asyncio.run(_drop_stream(settings))
        p50, p99, measured = asyncio.run(freshness(settings, events, args.rate, args.seconds))
        asyncio.run(_drop_stream(settings))
    finally:
        if server is not None:
            server.stop()
        if directory is not None:
            directory.cleanup()
    print(
        f"freshness at {args.rate:,.0f} events/s over {args.seconds:.0f}s ({measured:,} events): "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms (publish → committed to the read models)"
    )
    figures["freshness_p50_ms"] = round(p50, 1)
    figures["freshness_p99_ms"] = round(p99, 1)
    figures["freshness_rate_per_s"] = args.rate
    print(f"total {time.perf_counter() - started:.0f}s")
    return figures
