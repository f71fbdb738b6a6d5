"""The durable consumer helper against a real NATS server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from uuid import uuid4

import nats
import pytest

from crmcore.adapters import envelope
from crmcore.adapters.jetstream import EventConsumer, Handlers, ProcessedIds, connect
from crmcore.adapters.nats_server import NatsServer
from crmcore.adapters.relay import OutboxRelay
from crmcore.config import BusSettings, PersistenceSettings
from tests.integration.bus import (
    DogRegistered,
    DogRenamed,
    Kennel,
    dog_history,
    last_notification_id,
    running,
    store_dogs,
    until,
)

pytestmark = pytest.mark.nats


@contextlib.asynccontextmanager
async def consuming(consumer: EventConsumer) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(consumer.run())
    try:
        yield task
    finally:
        consumer.stop()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, timeout=30)


async def publish_dogs(app: Kennel, bus: BusSettings) -> None:
    relay = OutboxRelay(app, bus)
    async with running(relay):
        await relay.wait_for(last_notification_id(app), 30)


class NameBook:
    """A read model of dog names in SQLite, updated together with the ids it has applied
    (one transaction), which is what makes its handling idempotent across crashes. It keeps
    the version of each dog, so an older event redelivered late cannot undo a newer one."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS names (dog TEXT PRIMARY KEY, name TEXT, version INT)"
        )
        self.db.execute("CREATE TABLE IF NOT EXISTS applied (event_id TEXT PRIMARY KEY)")
        self.db.execute("CREATE TABLE IF NOT EXISTS log (event_id TEXT)")

    async def contains(self, cloud_event: envelope.Envelope) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM applied WHERE event_id = ?", (cloud_event.id,)
        ).fetchone()
        return row is not None

    async def add(self, cloud_event: envelope.Envelope) -> None:
        pass  # recorded by `apply`, in the same transaction as the change

    def apply(self, cloud_event: envelope.Envelope, dog: str, name: str) -> None:
        self.db.execute("BEGIN")
        self.db.execute(
            "INSERT INTO names VALUES (?, ?, ?) ON CONFLICT (dog) DO UPDATE "
            "SET name = excluded.name, version = excluded.version "
            "WHERE excluded.version > names.version",
            (dog, name, cloud_event.version),
        )
        self.db.execute("INSERT INTO applied VALUES (?)", (cloud_event.id,))
        self.db.execute("INSERT INTO log VALUES (?)", (cloud_event.id,))
        self.db.execute("COMMIT")

    def applications(self) -> list[str]:
        return [row[0] for row in self.db.execute("SELECT event_id FROM log")]


class Crashed(BaseException):
    """A process dying in the middle of a batch (escapes every `except Exception`)."""


class TestDispatch:
    async def test_each_event_type_goes_to_its_handler_and_others_are_skipped(
        self, tmp_path: Path, bus_settings: BusSettings
    ) -> None:
        app = Kennel(PersistenceSettings.sqlite(tmp_path / "data"))
        store_dogs(app, dogs=3, renames=2)
        await publish_dogs(app, bus_settings)
        registered: list[str] = []

        async def on_registered(event: DogRegistered, cloud_event: envelope.Envelope) -> None:
            registered.append(event.name)

        consumer = EventConsumer(
            bus_settings,
            durable="registrations",
            subjects=["crm.dog.>"],
            handlers=Handlers().on(DogRegistered, on_registered),
        )
        async with consuming(consumer):
            await until(lambda: consumer.stats.handled + consumer.stats.ignored == 9)
        assert registered == ["Rex", "Rex", "Rex"]
        assert consumer.stats.ignored == 6

    async def test_an_event_delivered_twice_is_applied_once(
        self, tmp_path: Path, bus_settings: BusSettings
    ) -> None:
        dog = dog_history(uuid4(), renames=0)[0]
        payload = envelope.encode(dog, id="kennel:1", source="/crm/kennel")
        nc = await connect(bus_settings, name="test-publisher")
        try:
            await nc.jetstream().add_stream(name=bus_settings.stream, subjects=["crm.>"])
            # The same event outside the de-duplication window: a different Nats-Msg-Id.
            for msg_id in ("first-try", "second-try"):
                await nc.jetstream().publish(
                    "crm.dog.registered", payload, headers={"Nats-Msg-Id": msg_id}
                )
        finally:
            await nc.close()
        seen: list[str] = []

        async def on_registered(event: DogRegistered, cloud_event: envelope.Envelope) -> None:
            seen.append(cloud_event.id)

        consumer = EventConsumer(
            bus_settings,
            durable="once",
            subjects=["crm.dog.>"],
            handlers={DogRegistered: on_registered},
        )
        async with consuming(consumer):
            await until(lambda: consumer.stats.handled + consumer.stats.duplicates == 2)
        assert seen == ["kennel:1"]
        assert consumer.stats.duplicates == 1


class TestCrashMidBatch:
    async def test_a_restarted_consumer_resumes_without_applying_anything_twice(
        self, tmp_path: Path, bus_settings: BusSettings
    ) -> None:
        app = Kennel(PersistenceSettings.sqlite(tmp_path / "data"))
        stored = store_dogs(app, dogs=6, renames=4)
        await publish_dogs(app, bus_settings)
        book = NameBook(tmp_path / "names.sqlite")
        applied = 0

        async def remember(
            event: DogRegistered | DogRenamed, cloud_event: envelope.Envelope
        ) -> None:
            nonlocal applied
            book.apply(cloud_event, str(event.originator_id), event.name)
            applied += 1
            if crash_after is not None and applied == crash_after:
                raise Crashed  # after the change is committed, before the ack

        def consumer() -> EventConsumer:
            processed: ProcessedIds = book
            return EventConsumer(
                bus_settings,
                durable="name-book",
                subjects=["crm.dog.>"],
                handlers=Handlers().on(DogRegistered, remember).on(DogRenamed, remember),
                processed=processed,
                batch=10,
                ack_wait_s=1,
            )

        crash_after: int | None = 7
        with pytest.raises(Crashed):
            await consumer().run()
        assert len(book.applications()) == 7

        crash_after = None
        resumed = consumer()
        async with consuming(resumed):
            await until(lambda: len(book.applications()) == len(stored))
            await until(lambda: resumed.stats.duplicates >= 1)
        applications = book.applications()
        assert len(applications) == len(set(applications)) == len(stored)
        names = dict(book.db.execute("SELECT dog, name FROM names").fetchall())
        assert len(names) == 6
        assert set(names.values()) == {"Rex-4"}


class TestPoisonMessages:
    async def test_an_event_failing_every_time_is_parked_after_n_deliveries(
        self, tmp_path: Path, bus_settings: BusSettings, caplog: pytest.LogCaptureFixture
    ) -> None:
        app = Kennel(PersistenceSettings.sqlite(tmp_path / "data"))
        app.record(*dog_history(uuid4(), renames=0))
        poison = dog_history(uuid4(), renames=0)[0]
        app.record(poison)
        app.record(*dog_history(uuid4(), renames=0))
        await publish_dogs(app, bus_settings)
        attempts = 0
        handled: list[str] = []

        async def on_registered(event: DogRegistered, cloud_event: envelope.Envelope) -> None:
            nonlocal attempts
            if event.originator_id == poison.originator_id:
                attempts += 1
                raise ValueError("cannot handle this dog")
            handled.append(cloud_event.id)

        consumer = EventConsumer(
            bus_settings,
            durable="picky",
            subjects=["crm.dog.>"],
            handlers={DogRegistered: on_registered},
            max_deliver=3,
            retry_delays_s=(0.05,),
        )
        with caplog.at_level(logging.ERROR, logger="crmcore.adapters.jetstream"):
            async with consuming(consumer):
                await until(lambda: consumer.stats.parked == 1 and len(handled) == 2)
        assert attempts == 3
        assert consumer.stats.parked_ids == ["kennel:2"]
        assert any("parked kennel:2" in record.getMessage() for record in caplog.records)

        nc = await nats.connect(bus_settings.url)
        try:
            parked = await nc.jetstream().get_last_msg(bus_settings.stream, "crm.parked.picky")
        finally:
            await nc.close()
        assert parked.headers is not None
        assert "cannot handle this dog" in parked.headers["Crm-Parked-Reason"]
        assert envelope.decode(parked.data or b"").id == "kennel:2"


class TestNatsRestart:
    async def test_a_consumer_keeps_going_after_nats_restarts(
        self, tmp_path: Path, restartable_nats: NatsServer
    ) -> None:
        bus = BusSettings(nats_url=restartable_nats.url)
        app = Kennel(PersistenceSettings.sqlite(tmp_path / "data"))
        names: list[str] = []

        async def on_registered(event: DogRegistered, cloud_event: envelope.Envelope) -> None:
            names.append(event.name)

        consumer = EventConsumer(
            bus,
            durable="survivor",
            subjects=["crm.dog.>"],
            handlers={DogRegistered: on_registered},
            fetch_wait_s=0.2,
        )
        async with consuming(consumer):
            app.record(*dog_history(uuid4(), renames=0))
            await publish_dogs(app, bus)
            await until(lambda: len(names) == 1)

            restartable_nats.stop()
            restartable_nats.start()

            app.record(*dog_history(uuid4(), renames=0))
            await publish_dogs(app, bus)
            await until(lambda: len(names) == 2)
        assert names == ["Rex", "Rex"]
