"""A PostgreSQL server stopped and started again under the stores' own callers: once a call
found it down, the next ones are answered at once (no queue of connect timeouts), every call
queued behind a failed group commit fails with it, and a bus consumer holds its events through
the outage instead of parking them; everything recovers by itself when the server is back."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from uuid import uuid4

import pytest
from psycopg.conninfo import make_conninfo

from crmcore.adapters import envelope
from crmcore.adapters.jetstream import EventConsumer
from crmcore.adapters.readmodels import PostgresReadModelStore
from crmcore.adapters.relay import OutboxRelay
from crmcore.adapters.store_outages import StoreUnavailable, is_store_unavailable
from crmcore.config import BusSettings, PersistenceSettings
from tests.integration.bus import DogRegistered, Kennel, dog_history, last_notification_id, running
from tests.support.postgres import RestartablePostgres

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]


def _until(condition: Callable[[], bool], within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not done within {within_s:.0f} s")
        time.sleep(0.1)


@pytest.fixture
def names(restartable_postgres: RestartablePostgres) -> Iterator[PostgresReadModelStore]:
    """A read-model store on the private server, waiting 1 s for a connection."""
    server = restartable_postgres.server
    conninfo = make_conninfo(
        dbname=server.create_database(),
        host=server.host,
        port=str(server.port),
        user=server.user,
        password=server.password,
        connect_timeout="1",
    )
    store = PostgresReadModelStore(conninfo, wait_s=1.0)
    store.create("CREATE TABLE IF NOT EXISTS names (dog TEXT PRIMARY KEY, name TEXT)")
    try:
        yield store
    finally:
        store.close_store()


def _succeeds(call: Callable[[], object]) -> bool:
    """True when `call` works; False when it failed on the outage; raises anything else."""
    try:
        call()
    except Exception as error:
        if not is_store_unavailable(error):
            raise
        return False
    return True


def test_a_store_found_down_answers_at_once_until_a_probe_finds_it_back(
    restartable_postgres: RestartablePostgres, names: PostgresReadModelStore
) -> None:
    assert names.query("SELECT 1") == [(1,)]
    restartable_postgres.halt()
    try:
        # It tries, and gives up after waiting for a connection.
        assert not _succeeds(lambda: names.query("SELECT 1"))
        assert names.breaker.refused == 0
        assert names.breaker.is_open
        # The next calls are refused without waiting for a connection.
        refused_before = names.breaker.refused
        with pytest.raises(StoreUnavailable):
            names.query("SELECT 1")
        with pytest.raises(StoreUnavailable), names.transaction() as cursor:
            cursor.execute("SELECT 1")
        assert names.breaker.refused == refused_before + 2
    finally:
        restartable_postgres.resume()
    # Back by itself: a probe reaches the server and closes the breaker.
    _until(lambda: _succeeds(lambda: names.query("SELECT 1")))
    assert not names.breaker.is_open
    assert names.query("SELECT 1") == [(1,)]


def test_calls_queued_behind_a_failed_group_commit_fail_with_it(
    restartable_postgres: RestartablePostgres,
) -> None:
    server = restartable_postgres.server
    persistence = server.persistence(server.create_database())
    app = Kennel(persistence, group_commit=True)
    try:
        app.record(*dog_history(uuid4(), renames=0))
        restartable_postgres.halt()
        outcomes: list[BaseException | None] = []
        lock = threading.Lock()

        def register() -> None:
            try:
                app.record(*dog_history(uuid4(), renames=1))
            except BaseException as error:
                with lock:
                    outcomes.append(error)
            else:
                with lock:
                    outcomes.append(None)

        try:
            threads = [threading.Thread(target=register) for _ in range(12)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
        finally:
            restartable_postgres.resume()
        assert len(outcomes) == 12
        assert all(error is not None and is_store_unavailable(error) for error in outcomes), [
            repr(error) for error in outcomes
        ]
        # One batch tried the store; the calls queued behind it failed with its very error,
        # and later ones were refused at once (StoreUnavailable): none waited its own turn.
        tried = {id(error) for error in outcomes if not isinstance(error, StoreUnavailable)}
        assert len(tried) <= 2, [repr(error) for error in outcomes]
        # Once the server is back, recording works again; nothing of a failed call was stored.
        _until(lambda: _succeeds(lambda: app.record(*dog_history(uuid4(), renames=0))))
        # (Counted: a crash makes PostgreSQL's sequences skip values.)
        assert len(app.recorder.select_notifications(start=1, limit=1_000)) == 2
    finally:
        app.stop_writer()
        app.close()


@contextlib.asynccontextmanager
async def _consuming(consumer: EventConsumer) -> AsyncIterator[None]:
    task = asyncio.create_task(consumer.run())
    try:
        yield
    finally:
        consumer.stop()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, timeout=30)


@pytest.mark.nats
async def test_a_consumer_holds_its_events_through_a_store_outage_and_parks_none(
    tmp_path: Path,
    bus_settings: BusSettings,
    restartable_postgres: RestartablePostgres,
    names: PostgresReadModelStore,
) -> None:
    app = Kennel(PersistenceSettings.sqlite(tmp_path / "data"))
    dogs = 5
    for _ in range(dogs):
        app.record(*dog_history(uuid4(), renames=0))
    relay = OutboxRelay(app, bus_settings)
    async with running(relay):
        await relay.wait_for(last_notification_id(app), 30)

    def store_name(event: DogRegistered) -> None:
        with names.transaction() as cursor:
            cursor.execute(
                "INSERT INTO names VALUES (?, ?) ON CONFLICT (dog) DO NOTHING",
                (str(event.originator_id), event.name),
            )

    async def on_registered(event: DogRegistered, cloud_event: envelope.Envelope) -> None:
        await asyncio.to_thread(store_name, event)

    consumer = EventConsumer(
        bus_settings,
        durable="names_through_outage",
        subjects=["crm.dog.>"],
        handlers={DogRegistered: on_registered},
        # Few deliveries and a short ack wait: an outage far longer than both.
        max_deliver=2,
        ack_wait_s=2.0,
        retry_delays_s=(0.05,),
        outage_delays_s=(0.1, 0.3),
    )
    restartable_postgres.halt()
    resumed = False
    try:
        async with _consuming(consumer):
            deadline = asyncio.get_running_loop().time() + 30
            while consumer.stats.held < 10:
                assert asyncio.get_running_loop().time() < deadline, consumer.stats
                await asyncio.sleep(0.1)
            # Longer than the ack wait and than max_deliver retries with their delays.
            await asyncio.sleep(5.0)
            await asyncio.to_thread(restartable_postgres.resume)
            resumed = True
            deadline = asyncio.get_running_loop().time() + 30
            while consumer.stats.handled < dogs:
                assert asyncio.get_running_loop().time() < deadline, consumer.stats
                await asyncio.sleep(0.1)
    finally:
        if not resumed:
            restartable_postgres.resume()
    assert consumer.stats.parked == 0, consumer.stats.parked_ids
    assert consumer.stats.retried == 0  # an outage is not the event's fault
    assert len(names.query("SELECT dog FROM names")) == dogs
