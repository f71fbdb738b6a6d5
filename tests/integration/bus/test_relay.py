"""The outbox relay against a real NATS server and every kind of event store."""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import cast
from uuid import UUID, uuid4

import msgspec
import pytest
from cloudevents.core.formats.json import JSONFormat
from cloudevents.v1.http import from_json

import crmcore.application
from crmcore.adapters import envelope
from crmcore.adapters.nats_server import NatsServer
from crmcore.adapters.relay import OutboxRelay
from crmcore.adapters.schemas import event_classes, example_event
from crmcore.application.base import CRMApplication
from crmcore.config import BusSettings, PersistenceSettings
from crmcore.domain.base import DomainEvent
from tests.integration.bus import (
    Dog,
    Kennel,
    dog_history,
    last_notification_id,
    read_stream,
    running,
    store_dogs,
    stream_message_count,
    until,
)

pytestmark = pytest.mark.nats


def application_classes() -> list[type[CRMApplication]]:
    """Every concrete application of the library (subclasses of CRMApplication); where one
    extends another under the same name (routing over the workforce), the most derived."""
    for module in pkgutil.iter_modules(crmcore.application.__path__, "crmcore.application."):
        importlib.import_module(module.name)
    found: list[type[CRMApplication]] = []
    pending = list(CRMApplication.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__.startswith("crmcore.application."):
            found.append(cls)
    most_derived = [
        cls
        for cls in found
        if not any(
            other is not cls and issubclass(other, cls) and other.name == cls.name
            for other in found
        )
    ]
    return sorted(most_derived, key=lambda cls: cls.name)


def published_form(event: DomainEvent) -> DomainEvent:
    """What the bus may see of an event: its redacted form when it declares personal data."""
    redacted = getattr(event, "redacted", None)
    return cast(DomainEvent, redacted()) if callable(redacted) else event


@pytest.fixture
def applications(persistence: PersistenceSettings) -> Iterator[list[CRMApplication]]:
    apps = [cls(persistence) for cls in application_classes()]
    try:
        yield apps
    finally:
        for app in apps:
            shut_down = getattr(app, "shut_down", None)
            if callable(shut_down):
                shut_down()
            else:
                app.close()


class TestEveryEventOfEveryApplication:
    async def test_arrives_exactly_once_as_a_cloudevent_any_sdk_reads(
        self, applications: list[CRMApplication], bus_settings: BusSettings
    ) -> None:
        classes = event_classes()
        assert len(applications) >= 3, "customers, interactions and routing at least"
        assert len(classes) > 40
        expected: dict[str, tuple[str, DomainEvent]] = {}
        for app in applications:
            for cls in classes:
                event = example_event(cls, originator_id=uuid4())
                app.record(event)
                notification_id = last_notification_id(app)
                expected[envelope.event_id(app.name, notification_id)] = (app.name, event)

        relays = [OutboxRelay(app, bus_settings, batch_size=25) for app in applications]
        for relay in relays:
            async with running(relay):
                await relay.wait_for(last_notification_id(relay.app), 30)

        messages = await read_stream(bus_settings)
        ids = Counter(message.header["Nats-Msg-Id"] for message in messages if message.header)
        assert set(ids) == set(expected)
        assert max(ids.values()) == 1
        registry = envelope.EventRegistry(classes)
        for message in messages:
            assert message.header is not None
            assert message.header["Content-Type"] == "application/cloudevents+json"
            application, stored = expected[message.header["Nats-Msg-Id"]]
            parsed = JSONFormat().read(None, message.data)
            legacy = from_json(message.data)
            assert parsed.get_id() == legacy["id"] == message.header["Nats-Msg-Id"]
            assert parsed.get_source() == f"/crm/{application}"
            assert parsed.get_type() == envelope.event_type(type(stored))
            assert parsed.get_subject() == str(stored.originator_id)
            assert parsed.get_time() == stored.timestamp
            assert parsed.get_extension("crmversion") == stored.originator_version
            for name, value in stored.bus_attributes().items():
                assert parsed.get_extension(name) == value
            assert message.subject == stored.bus_subject()
            decoded = registry.event_of(envelope.decode(message.data))
            assert decoded == published_form(stored)
            assert parsed.get_data() == msgspec.json.decode(
                msgspec.json.encode(published_form(stored))
            )


class TestPositionAndRestarts:
    async def test_a_relay_killed_before_recording_republishes_and_jetstream_drops_duplicates(
        self, tmp_path: object, bus_settings: BusSettings
    ) -> None:
        app = Kennel(PersistenceSettings.sqlite(f"{tmp_path}/data"))
        store_dogs(app, dogs=5, renames=6)
        stored = last_notification_id(app)

        class Killed(BaseException):
            pass

        class KilledBeforeRecording(OutboxRelay):
            def _record_position(self, notification_id: int) -> None:
                raise Killed

        crashing = KilledBeforeRecording(app, bus_settings, batch_size=1000)
        with pytest.raises(Killed):
            await crashing.run()
        assert await stream_message_count(bus_settings) == stored

        restarted = OutboxRelay(app, bus_settings)
        async with running(restarted):
            await restarted.wait_for(stored, 30)
        assert restarted.stats.duplicates == stored
        assert restarted.stats.published == 0
        assert await stream_message_count(bus_settings) == stored
        messages = await read_stream(bus_settings)
        assert len({message.header["Nats-Msg-Id"] for message in messages if message.header}) == (
            stored
        )

    async def test_the_position_survives_a_restart_of_the_service(
        self, tmp_path: object, bus_settings: BusSettings
    ) -> None:
        settings = PersistenceSettings.sqlite(f"{tmp_path}/data")
        first_app = Kennel(settings)
        store_dogs(first_app, dogs=3, renames=2)
        first = OutboxRelay(first_app, bus_settings)
        async with running(first):
            await first.wait_for(9, 30)
        first_app.close()

        second_app = Kennel(settings)
        second_app.record(*dog_history(uuid4(), renames=1))
        second = OutboxRelay(second_app, bus_settings)
        async with running(second):
            await second.wait_for(11, 30)
        assert second.stats.published == 2
        assert second.stats.duplicates == 0
        assert await stream_message_count(bus_settings) == 11


class TestNatsOutage:
    async def test_commands_keep_working_and_the_backlog_arrives_in_per_aggregate_order(
        self, tmp_path: object, restartable_nats: NatsServer
    ) -> None:
        bus = BusSettings(nats_url=restartable_nats.url, duplicate_window_s=600)
        app = Kennel(PersistenceSettings.sqlite(f"{tmp_path}/data"))
        relay = OutboxRelay(
            app, bus, batch_size=50, ack_timeout_s=2, backoff_initial_s=0.05, backoff_max_s=0.5
        )
        async with running(relay):
            store_dogs(app, dogs=4, renames=4)
            await relay.wait_for(last_notification_id(app), 30)

            # A backlog big enough that the server dies while the relay is publishing it.
            store_dogs(app, dogs=40, renames=50)
            await relay.wait_for(21, 30)
            restartable_nats.kill()
            failures_before = relay.stats.failures
            await until(lambda: relay.stats.failures > failures_before)

            # Commands are accepted while NATS is away.
            during_outage = store_dogs(app, dogs=10, renames=3)
            assert app.load(during_outage[-1].originator_id, Dog).name == "Rex-3"

            restartable_nats.start()
            await relay.wait_for(last_notification_id(app), 60)

        messages = await read_stream(bus)
        ids = Counter(message.header["Nats-Msg-Id"] for message in messages if message.header)
        assert len(ids) == last_notification_id(app) == 20 + 40 * 51 + 10 * 4
        assert max(ids.values()) == 1
        versions: dict[str, list[int]] = defaultdict(list)
        for message in messages:
            cloud_event = envelope.decode(message.data)
            assert cloud_event.version is not None
            versions[cloud_event.subject].append(cloud_event.version)
        for history in versions.values():
            assert history == list(range(1, len(history) + 1))

    async def test_a_relay_started_while_nats_is_down_publishes_once_it_is_up(
        self, tmp_path: object, restartable_nats: NatsServer
    ) -> None:
        bus = BusSettings(nats_url=restartable_nats.url)
        restartable_nats.stop()
        app = Kennel(PersistenceSettings.sqlite(f"{tmp_path}/data"))
        app.record(*dog_history(UUID(int=7), renames=2))
        relay = OutboxRelay(app, bus, backoff_initial_s=0.05, backoff_max_s=0.2)
        async with running(relay):
            await until(lambda: relay.stats.failures >= 2)
            assert relay.position == 0
            restartable_nats.start()
            await relay.wait_for(3, 30)
        assert relay.stats.published == 3


@pytest.mark.postgres
class TestPostgresWakeUp:
    async def test_listen_notify_wakes_the_relay_without_polling(
        self, postgres_persistence: PersistenceSettings, bus_settings: BusSettings
    ) -> None:
        app = Kennel(postgres_persistence)
        try:
            # Polling every minute: only a NOTIFY can make the relay publish within the test.
            relay = OutboxRelay(app, bus_settings, listen_poll_interval_s=60)
            async with running(relay):
                app.record(*dog_history(uuid4(), renames=0))
                await relay.wait_for(1, 30)
                # Give the relay time to settle into its minute-long wait: what follows then
                # reaches it only through NOTIFY.
                await asyncio.sleep(0.2)
                app.record(*dog_history(uuid4(), renames=1))
                await relay.wait_for(3, 10)
        finally:
            app.close()
