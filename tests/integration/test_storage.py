"""The event store behind every application, on each persistence choice.

A tiny aggregate (a lamp that is installed and switched) stands in for the real ones: what is
checked here is storage — round trips, atomic multi-aggregate saves, version clashes, reopening,
per-application tables and the notification log — not any business rule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import ClassVar
from uuid import UUID, uuid4

import pytest

from crmcore.application.base import CRMApplication
from crmcore.config import PersistenceSettings
from crmcore.domain.base import Aggregate, Event, advance
from crmcore.domain.errors import ConcurrencyConflict, NotFound
from tests.support.postgres import PostgresServer

MORNING = datetime(2025, 4, 1, 9, 0, tzinfo=UTC)


class Lamp(Aggregate, frozen=True, kw_only=True):
    room: str
    lit: bool


class LampEvent(Event[Lamp], frozen=True, kw_only=True):
    context: ClassVar[str] = "storage_check"


class LampInstalled(LampEvent, frozen=True, kw_only=True):
    room: str

    def mutate(self, state: Lamp | None) -> Lamp:
        return Lamp(
            id=self.originator_id,
            version=self.originator_version,
            created_on=self.timestamp,
            modified_on=self.timestamp,
            room=self.room,
            lit=False,
        )


class LampSwitched(LampEvent, frozen=True, kw_only=True):
    lit: bool

    def apply(self, state: Lamp) -> Lamp:
        return advance(state, self, lit=self.lit)


class StorageCheck(CRMApplication):
    name = "storage_check"
    aggregate_kind = "lamp"


class OtherStorageCheck(CRMApplication):
    name = "other_storage_check"
    aggregate_kind = "lamp"


def installed(lamp_id: UUID, room: str, minutes: int = 0) -> LampInstalled:
    return LampInstalled(
        originator_id=lamp_id,
        originator_version=1,
        timestamp=MORNING + timedelta(minutes=minutes),
        room=room,
    )


def switched(lamp_id: UUID, version: int, lit: bool, minutes: int = 1) -> LampSwitched:
    return LampSwitched(
        originator_id=lamp_id,
        originator_version=version,
        timestamp=MORNING + timedelta(minutes=minutes),
        lit=lit,
    )


AppOpener = Callable[[type[CRMApplication], PersistenceSettings], CRMApplication]


@pytest.fixture
def open_app() -> Iterator[AppOpener]:
    """Opens applications and closes them after the test (before its database is dropped)."""
    opened: list[CRMApplication] = []

    def opener(kind: type[CRMApplication], settings: PersistenceSettings) -> CRMApplication:
        app = kind(settings)
        opened.append(app)
        return app

    yield opener
    for app in opened:
        app.close()


@pytest.fixture
def app(persistence: PersistenceSettings, open_app: AppOpener) -> CRMApplication:
    return open_app(StorageCheck, persistence)


def logged(app: CRMApplication) -> list[tuple[UUID | str, int, str]]:
    """(aggregate id, version, event class name) of every stored event, in log order."""
    notifications = app.notification_log.select(start=1, limit=app.log_section_size)
    return [
        (
            notification.originator_id,
            notification.originator_version,
            notification.topic.rsplit(":", 1)[-1],
        )
        for notification in notifications
    ]


class TestRoundTrip:
    def test_a_stored_event_loads_back_as_the_aggregate(self, app: CRMApplication) -> None:
        kitchen = uuid4()

        app.record(installed(kitchen, "kitchen"))

        assert app.load(kitchen, Lamp) == Lamp(
            id=kitchen,
            version=1,
            created_on=MORNING,
            modified_on=MORNING,
            room="kitchen",
            lit=False,
        )

    def test_later_events_move_the_aggregate_on(self, app: CRMApplication) -> None:
        kitchen = uuid4()
        app.record(installed(kitchen, "kitchen"))

        app.record(switched(kitchen, version=2, lit=True, minutes=5))

        lamp = app.load(kitchen, Lamp)
        assert (lamp.version, lamp.lit, lamp.modified_on) == (
            2,
            True,
            MORNING + timedelta(minutes=5),
        )
        assert lamp.created_on == MORNING

    def test_an_unknown_id_is_not_found(self, app: CRMApplication) -> None:

        with pytest.raises(NotFound, match="lamp"):
            app.load(uuid4(), Lamp)


class TestAtomicRecording:
    def test_events_of_several_aggregates_are_stored_by_one_record_call(
        self, app: CRMApplication
    ) -> None:
        kitchen, hall = uuid4(), uuid4()

        app.record(
            installed(kitchen, "kitchen"),
            switched(kitchen, version=2, lit=True),
            installed(hall, "hall"),
        )

        assert app.load(kitchen, Lamp).lit is True
        assert app.load(hall, Lamp).room == "hall"
        assert logged(app) == [
            (kitchen, 1, "LampInstalled"),
            (kitchen, 2, "LampSwitched"),
            (hall, 1, "LampInstalled"),
        ]

    def test_a_version_clash_is_a_concurrency_conflict_and_stores_nothing(
        self, app: CRMApplication
    ) -> None:
        kitchen, hall = uuid4(), uuid4()
        app.record(installed(kitchen, "kitchen"), switched(kitchen, version=2, lit=True))

        with pytest.raises(ConcurrencyConflict):
            # The hall lamp is new, but the kitchen switch was decided on a stale version 1.
            app.record(installed(hall, "hall"), switched(kitchen, version=2, lit=False))

        with pytest.raises(NotFound):
            app.load(hall, Lamp)
        assert app.load(kitchen, Lamp).lit is True
        assert len(logged(app)) == 2

    def test_creating_an_existing_aggregate_again_is_a_concurrency_conflict(
        self, app: CRMApplication
    ) -> None:
        kitchen = uuid4()
        app.record(installed(kitchen, "kitchen"))

        with pytest.raises(ConcurrencyConflict):
            app.record(installed(kitchen, "pantry"))

        assert app.load(kitchen, Lamp).room == "kitchen"


class TestNotificationLog:
    def test_lists_every_event_in_the_order_it_was_recorded(self, app: CRMApplication) -> None:
        kitchen, hall = uuid4(), uuid4()

        app.record(installed(hall, "hall"))
        app.record(installed(kitchen, "kitchen"))
        app.record(switched(hall, version=2, lit=True))
        app.record(switched(kitchen, version=2, lit=True), switched(hall, version=3, lit=False))

        assert logged(app) == [
            (hall, 1, "LampInstalled"),
            (kitchen, 1, "LampInstalled"),
            (hall, 2, "LampSwitched"),
            (kitchen, 2, "LampSwitched"),
            (hall, 3, "LampSwitched"),
        ]
        notifications = app.notification_log.select(start=1, limit=10)
        ids = [notification.id for notification in notifications]
        assert ids == sorted(ids)
        assert len(set(ids)) == len(ids)

    def test_reads_on_from_a_position(self, app: CRMApplication) -> None:
        lamps = [uuid4() for _ in range(4)]
        for minutes, lamp in enumerate(lamps):
            app.record(installed(lamp, f"room {minutes}", minutes=minutes))
        first_two = app.notification_log.select(start=1, limit=2)

        rest = app.notification_log.select(
            start=first_two[-1].id, limit=10, inclusive_of_start=False
        )

        assert [notification.originator_id for notification in rest] == lamps[2:]


class TestDurability:
    def test_stored_events_survive_reopening_the_application(
        self,
        durable_persistence: PersistenceSettings,
        open_app: AppOpener,
    ) -> None:
        first = open_app(StorageCheck, durable_persistence)
        kitchen = uuid4()
        first.record(installed(kitchen, "kitchen"), switched(kitchen, version=2, lit=True))
        first.close()

        reopened = open_app(StorageCheck, durable_persistence)

        assert reopened.load(kitchen, Lamp).lit is True
        assert logged(reopened) == [
            (kitchen, 1, "LampInstalled"),
            (kitchen, 2, "LampSwitched"),
        ]

    def test_applications_with_different_names_keep_their_events_apart(
        self,
        durable_persistence: PersistenceSettings,
        open_app: AppOpener,
    ) -> None:
        storage = open_app(StorageCheck, durable_persistence)
        other = open_app(OtherStorageCheck, durable_persistence)
        kitchen = uuid4()

        storage.record(installed(kitchen, "kitchen"))

        assert logged(other) == []
        with pytest.raises(NotFound):
            other.load(kitchen, Lamp)
        # The same id is free in the other application: nothing is shared.
        other.record(installed(kitchen, "garage"))
        assert storage.load(kitchen, Lamp).room == "kitchen"
        assert other.load(kitchen, Lamp).room == "garage"


@pytest.mark.postgres
class TestPostgresTables:
    def test_each_application_has_its_own_table_in_the_shared_database(
        self,
        postgres_server: PostgresServer,
        postgres_persistence: PersistenceSettings,
        open_app: AppOpener,
    ) -> None:
        open_app(StorageCheck, postgres_persistence).record(installed(uuid4(), "kitchen"))
        open_app(OtherStorageCheck, postgres_persistence)

        dbname = postgres_persistence.library_env["POSTGRES_DBNAME"]
        with postgres_server.connect(dbname) as connection:
            tables = {
                row[0]
                for row in connection.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
                )
            }
            stored = connection.execute("SELECT count(*) FROM storage_check_events").fetchone()

        assert {"storage_check_events", "other_storage_check_events"} <= tables
        assert stored == (1,)
