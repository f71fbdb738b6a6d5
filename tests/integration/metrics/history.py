"""A small contact-centre day for the metrics integration and end-to-end tests, and helpers to
put its events on the bus the way the services do (CloudEvents, `Nats-Msg-Id`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from uuid import UUID

import nats

from crmcore.adapters.envelope import event_id, source_of, to_message
from crmcore.adapters.jetstream import ensure_stream
from crmcore.application.interactions import InteractionApplication
from crmcore.application.metrics import ChangeNotifier, MetricsProjection
from crmcore.application.workforce import WorkforceApplication
from crmcore.config import BusSettings, PersistenceSettings
from crmcore.domain.base import DomainEvent

MONDAY = datetime(2025, 3, 3, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return MONDAY + timedelta(hours=9, minutes=minutes)


class Day:
    """Two agents and ten calls to "billing" on Monday morning:

    calls 0–5 answered by Sato after 10 s each and resolved 5 minutes after arriving;
    calls 6–7 abandoned after 40 s; calls 8–9 answered by Kato after 30 s, still talking.
    Offered 10, answered 8, abandoned 2; within 20 s: 6 → service level 6 / 10; handled 6.
    """

    def __init__(self, persistence: PersistenceSettings | None = None) -> None:
        storage = persistence or PersistenceSettings.in_memory()
        self.workforce = WorkforceApplication(storage)
        self.interactions = InteractionApplication(storage)
        self.sato = self.workforce.register_agent(
            display_name="Sato", teams=["tier1"], capacity={"phone": 1}, at=at(-60)
        ).id
        self.kato = self.workforce.register_agent(
            display_name="Kato", teams=["tier2"], capacity={"phone": 1}, at=at(-60)
        ).id
        self.calls: list[UUID] = []

    def morning(self, first: int = 0, last: int = 10) -> None:
        for number in range(first, last):
            start = at(number * 10)
            call = self.interactions.open_interaction(
                channel="phone", contact_reason="billing", at=start
            ).id
            self.calls.append(call)
            self.interactions.queue(call, queue="billing", at=start)
            seconds = timedelta(seconds=1)
            if number < 6:
                self.interactions.answer(call, self.sato, at=start + 10 * seconds)
                self.interactions.resolve(call, at=start + 300 * seconds)
            elif number < 8:
                self.interactions.abandon(call, at=start + 40 * seconds)
            else:
                self.interactions.answer(call, self.kato, at=start + 30 * seconds)

    def events(self) -> list[tuple[str, int, DomainEvent]]:
        """(application, notification id, event) of everything stored, workforce first."""
        found: list[tuple[str, int, DomainEvent]] = []
        for app in (self.workforce, self.interactions):
            for notification in app.recorder.select_notifications(start=1, limit=100_000):
                event = app.mapper.to_domain_event(notification)
                assert isinstance(event, DomainEvent)
                found.append((app.name, notification.id, event))
        return found


async def publish(
    settings: BusSettings,
    events: Sequence[tuple[str, int, DomainEvent]],
    *,
    id_prefix: str = "",
) -> int:
    """Publishes the events as their services' relays would; returns the last stream sequence.
    A different `id_prefix` republishes them under new message ids (as a relay does after
    JetStream's de-duplication window)."""
    nc = await nats.connect(settings.url)
    try:
        js = nc.jetstream()
        await ensure_stream(js, settings)
        last = 0
        for application, notification_id, event in events:
            message = to_message(
                event,
                id=id_prefix + event_id(application, notification_id),
                source=source_of(application),
            )
            ack = await js.publish(message.subject, message.payload, headers=message.headers)
            last = ack.seq
        return last
    finally:
        await nc.close()


async def wait_for_position(
    projection: MetricsProjection, position: int, within_s: float = 30.0
) -> None:
    notifier = ChangeNotifier(projection)
    deadline = time.monotonic() + within_s
    try:
        while projection.position() < position:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"the projection reached {projection.position()}, not {position}"
                )
            await notifier.wait(min(left, 0.5))
    finally:
        notifier.close()


async def stopped(task: asyncio.Task[None]) -> None:
    await asyncio.wait_for(task, timeout=10)
