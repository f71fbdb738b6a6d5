"""Event bus tests against a real NATS server: relay, stream, consumers, CLI.

Shared here: a tiny `Dog` aggregate and its application (events of many aggregates and
versions, cheap to make), a way to run a relay for the length of a block, and a reader of
everything a stream holds, as a subscriber would see it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import ClassVar
from uuid import UUID, uuid4

import nats
import nats.errors
import pytest
from eventsourcing.application import Application
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from crmcore.adapters import envelope
from crmcore.adapters.jetstream import EventConsumer, Handlers, connect
from crmcore.adapters.relay import OutboxRelay
from crmcore.application.base import CRMApplication
from crmcore.config import BusSettings
from crmcore.domain.base import Aggregate, Event, advance

T0 = datetime(2025, 4, 1, 9, 0, tzinfo=UTC)


class Dog(Aggregate, frozen=True, kw_only=True):
    name: str


class DogEvent(Event["Dog"], frozen=True, kw_only=True):
    context: ClassVar[str] = "dog"


class DogRegistered(DogEvent, frozen=True, kw_only=True):
    name: str

    def mutate(self, state: Dog | None) -> Dog:
        return Dog(
            id=self.originator_id,
            version=self.originator_version,
            created_on=self.timestamp,
            modified_on=self.timestamp,
            name=self.name,
        )


class DogRenamed(DogEvent, frozen=True, kw_only=True):
    name: str

    def apply(self, state: Dog) -> Dog:
        return advance(state, self, name=self.name)


class Kennel(CRMApplication):
    name = "kennel"
    aggregate_kind = "dog"


def dog_history(dog_id: UUID, renames: int, start: datetime = T0) -> list[DogEvent]:
    """A dog registered as Rex and renamed `renames` times (Rex-1, Rex-2…)."""
    events: list[DogEvent] = [
        DogRegistered(originator_id=dog_id, originator_version=1, timestamp=start, name="Rex")
    ]
    for number in range(1, renames + 1):
        events.append(
            DogRenamed(
                originator_id=dog_id,
                originator_version=number + 1,
                timestamp=start + timedelta(seconds=number),
                name=f"Rex-{number}",
            )
        )
    return events


def store_dogs(app: Kennel, dogs: int, renames: int) -> list[DogEvent]:
    """Stores the histories of `dogs` dogs, interleaved version by version; returns them."""
    histories = [dog_history(uuid4(), renames) for _ in range(dogs)]
    stored: list[DogEvent] = []
    for version in range(renames + 1):
        step = [history[version] for history in histories]
        app.record(*step)
        stored.extend(step)
    return stored


async def until(condition: Callable[[], bool], *, within_s: float = 30) -> None:
    """Waits until `condition()` holds, checking every 10 ms; fails after `within_s`."""
    for _ in range(int(within_s * 100)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"condition still false after {within_s}s")


def last_notification_id(app: Application[UUID]) -> int:
    return app.recorder.max_notification_id() or 0


@contextlib.asynccontextmanager
async def running(relay: OutboxRelay) -> AsyncIterator[asyncio.Task[None]]:
    """Runs the relay for the block, then stops it and waits for it to finish."""
    task = asyncio.create_task(relay.run())
    try:
        yield task
    finally:
        relay.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, timeout=30)


async def read_stream(settings: BusSettings, subject: str = "crm.>") -> list[Msg]:
    """Every message the stream holds on `subject`, in stream order, as a new subscriber
    starting from the beginning receives them (connecting with the credentials and TLS of
    `settings`, as the services do)."""
    nc = await connect(settings, name="test-stream-reader", reconnect=False)
    try:
        js = nc.jetstream()
        info = await js.stream_info(settings.stream, subjects_filter=subject)
        expected = sum((info.state.subjects or {}).values()) if info.state.subjects else 0
        subscription = await js.pull_subscribe(
            subject,
            stream=settings.stream,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=30,
            ),
        )
        messages: list[Msg] = []
        while len(messages) < expected:
            try:
                messages.extend(await subscription.fetch(min(1000, expected - len(messages)), 5))
            except nats.errors.TimeoutError:
                break
        return messages
    finally:
        await nc.close()


async def relay_and_consume(app: Kennel, settings: BusSettings, durable: str) -> list[str]:
    """Publishes everything `app` stored with a relay, then reads it back with the durable
    consumer `durable`; the names of the dogs registered (six events: 3 dogs, 1 rename)."""
    relay = OutboxRelay(app, settings)
    async with running(relay):
        await relay.wait_for(last_notification_id(app), 30)
    names: list[str] = []

    async def on_registered(event: DogRegistered, cloud_event: envelope.Envelope) -> None:
        names.append(event.name)

    consumer = EventConsumer(
        settings,
        durable=durable,
        subjects=["crm.dog.>"],
        handlers=Handlers().on(DogRegistered, on_registered),
    )
    consuming = asyncio.create_task(consumer.run())
    try:
        await until(lambda: consumer.stats.handled + consumer.stats.ignored == 6)
    finally:
        consumer.stop()
        await consuming
    return names


def warnings_about(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    """The warnings (and worse) logged whose message contains `text` (any case)."""
    return [
        record
        for record in caplog.records
        if record.levelno >= logging.WARNING and text.lower() in record.getMessage().lower()
    ]


async def stream_message_count(settings: BusSettings) -> int:
    nc = await nats.connect(settings.url)
    try:
        info = await nc.jetstream().stream_info(settings.stream)
        return info.state.messages
    finally:
        await nc.close()
