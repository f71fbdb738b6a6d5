"""Event bus tests against a real NATS server: relay, stream, consumers, CLI.

Shared here: a tiny `Dog` aggregate and its application (events of many aggregates and
versions, cheap to make), a way to run a relay for the length of a block, and a reader of
everything a stream holds, as a subscriber would see it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import ClassVar
from uuid import UUID, uuid4

import nats
import nats.errors
from eventsourcing.application import Application
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

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
    starting from the beginning receives them."""
    nc = await nats.connect(settings.url)
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


async def stream_message_count(settings: BusSettings) -> int:
    nc = await nats.connect(settings.url)
    try:
        info = await nc.jetstream().stream_info(settings.stream)
        return info.state.messages
    finally:
        await nc.close()
