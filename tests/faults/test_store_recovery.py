"""What the fault runs found, each pinned down on its own: a data key acknowledged as stored
survives a crash of PostgreSQL; the metrics feed outlives its database going away in the
middle of the stream (the failed batch comes again, counted once); services starting together
on a fresh database may create the same read-model tables at the same moment."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from uuid import UUID, uuid4

import pytest

from crmcore.adapters.keyvault import KeyVault, open_key_store
from crmcore.adapters.readmodels import open_read_model_store
from crmcore.adapters.store_outages import is_store_unavailable
from crmcore.application.metrics import BUS_SOURCE, MetricsFeed, MetricsProjection
from crmcore.config import BusSettings, PersistenceSettings
from tests.integration.metrics.history import Day, publish, stopped, wait_for_position
from tests.integration.metrics.test_feed import expect_the_morning, monday
from tests.support.postgres import RestartablePostgres

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]


def test_a_key_stored_for_new_subjects_survives_a_crash_of_the_database(
    restartable_postgres: RestartablePostgres,
) -> None:
    server = restartable_postgres.server
    persistence = server.persistence(server.create_database())
    vault = KeyVault(open_key_store(persistence, "crash_keys"))
    made: dict[UUID, bytes] = {}
    # Keys stored one transaction after the other, as registrations do, the last ones
    # moments before the crash: each returned, so events sealed with it may be stored next.
    for _ in range(20):
        subject = uuid4()
        made[subject] = vault.new_key(subject)
        vault.store_pending()

    restartable_postgres.halt()
    restartable_postgres.resume()

    vault.close_vault()
    vault.store.close_store()
    reopened = KeyVault(open_key_store(persistence, "crash_keys"))
    try:
        assert {subject: reopened.existing_key(subject) for subject in made} == made
    finally:
        reopened.close_vault()
        reopened.store.close_store()


@pytest.mark.nats
async def test_the_metrics_feed_outlives_a_crash_of_its_database(
    restartable_postgres: RestartablePostgres, bus_settings: BusSettings
) -> None:
    server = restartable_postgres.server
    persistence = server.persistence(server.create_database())
    projection = MetricsProjection(open_read_model_store(persistence, "metrics"))
    day = Day()
    day.morning(0, 5)
    published = day.events()
    first = await publish(bus_settings, published)
    feed = MetricsFeed(projection, bus_settings, batch=7)
    running = asyncio.create_task(feed.run())
    try:
        await wait_for_position(projection, first)
        await asyncio.to_thread(restartable_postgres.halt)
        day.morning(5, 10)
        last = await publish(bus_settings, day.events()[len(published) :])
        # The feed meets the database gone with the next batch: it must fail and go on.
        for _ in range(600):
            if feed.stats.last_error:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the feed met no error with its database down for 30 s")
        await asyncio.to_thread(restartable_postgres.resume)
        # Until a probe finds the server back, the store answers "unavailable" at once (as
        # a client is told UNAVAILABLE and retries): wait for it to answer again.
        await _reachable(projection)
        await wait_for_position(projection, last, within_s=60)
    finally:
        feed.stop()
        await stopped(running)
    try:
        assert not running.done() or running.exception() is None
        # Every call of the morning once, although a batch failed and came again.
        expect_the_morning(monday(projection))
        assert projection.store.position(BUS_SOURCE) == last
        assert feed.stats.reconnects >= 1
    finally:
        projection.close_store()


async def _reachable(projection: MetricsProjection, within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    while True:
        try:
            projection.position()
        except Exception as error:
            if not is_store_unavailable(error) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
        else:
            return


def _create_together(persistence: PersistenceSettings, table: str, sessions: int) -> None:
    """`sessions` stores (connections of their own) creating the same tables at once."""
    stores = [open_read_model_store(persistence, "race") for _ in range(sessions)]
    start = threading.Barrier(sessions)

    def create(store_index: int) -> None:
        start.wait()
        stores[store_index].create(
            f"CREATE TABLE IF NOT EXISTS {table} (id TEXT PRIMARY KEY, n BIGINT NOT NULL)",
            f"CREATE INDEX IF NOT EXISTS {table}_n ON {table} (n)",
        )

    try:
        with ThreadPoolExecutor(sessions) as pool:
            for done in [pool.submit(create, index) for index in range(sessions)]:
                done.result()
    finally:
        for store in stores:
            store.close_store()


def test_read_models_created_by_several_sessions_at_once(
    postgres_persistence: PersistenceSettings,
) -> None:
    # Fresh tables each round: the race is on the first creation (projection_positions in
    # the first round, which every read model creates too).
    for round_number in range(4):
        _create_together(postgres_persistence, f"race_rows_{round_number}", sessions=6)

    store = open_read_model_store(postgres_persistence, "race")
    try:
        tables = store.query(
            "SELECT count(*) FROM information_schema.tables WHERE table_name LIKE ?",
            ("race\\_rows\\_%",),
        )
        assert tables == [(4,)]
    finally:
        store.close_store()
