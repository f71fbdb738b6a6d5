"""Hostile messages on the subjects the services consume: set aside, never fatal.

Anyone who can publish on the bus can publish anything. For every consumer of the four
services (the customer timeline, the interaction service's routing decisions, the routing
service's interaction events, the metrics projection) the test publishes, with plain nats-py,
a barrage on a subject the consumer reads: bytes that are not JSON, JSON that is not a
CloudEvent, CloudEvents with missing or mistyped attributes, an unknown type, a known type
whose data lacks fields or has them mistyped, deeply nested JSON, a payload near NATS's size
limit, a wrong Content-Type — and then one valid event. The consumer keeps running, handles
the valid event, and accounts for every hostile one: the event consumers park what they cannot
read (a copy on `crm.parked.<durable>`) and skip types they do not know; the metrics feed
skips what it cannot read and moves its position past it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import msgspec
import nats
import pytest

from crmcore.adapters.envelope import CONTENT_TYPE, MSG_ID_HEADER, event_type, to_message
from crmcore.adapters.jetstream import PARKED_PREFIX, ConsumerStats
from crmcore.adapters.schemas import example_event
from crmcore.application.metrics import stream_last_sequence
from crmcore.config import BusSettings, PersistenceSettings
from crmcore.domain.base import DomainEvent
from crmcore.domain.interaction import (
    InteractionOpened,
    Queued,
    RoutingRequirements,
    SkillRequirement,
)
from crmcore.domain.task import RoutingOffered
from tests.e2e.customer import conftest as customer_e2e
from tests.e2e.interaction import conftest as interaction_e2e
from tests.e2e.metrics import conftest as metrics_e2e
from tests.e2e.routing import conftest as routing_e2e
from tests.integration.bus import until

pytestmark = pytest.mark.nats

WITHIN_S = 60
#: Below NATS's default max_payload (1 MiB), with the headers and the envelope around it.
HUGE = 900_000


@dataclass(frozen=True)
class Hostile:
    """One hostile message, and whether an event consumer must park it (True) or may skip it
    as a type it does not handle (False)."""

    label: str
    body: bytes
    parked: bool
    content_type: str = CONTENT_TYPE
    #: broken only in attributes the metrics projection does not read (it needs type, data)
    attributes_only: bool = False


def cloud_event(event_class: type[DomainEvent], **changes: Any) -> dict[str, Any]:
    """A valid CloudEvent of `event_class` as JSON values, with `changes` applied (a value of
    None removes the attribute)."""
    message = to_message(example_event(event_class), id="x", source="/crm/hostile")
    document: dict[str, Any] = json.loads(message.payload)
    for name, value in changes.items():
        if value is None:
            document.pop(name, None)
        else:
            document[name] = value
    return document


def body(document: Any) -> bytes:
    return json.dumps(document).encode()


def barrage(known: type[DomainEvent]) -> list[Hostile]:
    """Every kind of hostile message, for a consumer that handles `known`."""
    valid = cloud_event(known)
    data = valid["data"]
    first_string = next(name for name, value in data.items() if isinstance(value, str))
    return [
        Hostile("bytes", b"\x00\xff\xfe\x80 not json at all", parked=True),
        Hostile("empty", b"", parked=True),
        Hostile("json array", b"[1, 2, 3]", parked=True),
        Hostile("json string", b'"crm"', parked=True),
        Hostile("json null", b"null", parked=True),
        Hostile("not a cloudevent", body({"hello": "world", "type": valid["type"]}), parked=True),
        Hostile(
            "specversion 0.3",
            body(cloud_event(known, specversion="0.3")),
            parked=True,
            attributes_only=True,
        ),
        Hostile("no id", body(cloud_event(known, id=None)), parked=True, attributes_only=True),
        Hostile("no type", body(cloud_event(known, type=None)), parked=True),
        Hostile("numeric type", body(cloud_event(known, type=42)), parked=True),
        Hostile("no data", body(cloud_event(known, data=None)), parked=True),
        Hostile(
            "bad time",
            body(cloud_event(known, time="yesterday")),
            parked=True,
            attributes_only=True,
        ),
        Hostile(
            "object extension",
            body(cloud_event(known, crmversion={"a": 1})),
            parked=True,
            attributes_only=True,
        ),
        Hostile("nested", b'{"specversion": "1.0", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", True),
        Hostile("unknown type", body(cloud_event(known, type="crm.hostile.teleported.v1")), False),
        Hostile("data missing fields", body(cloud_event(known, data={})), parked=True),
        Hostile("data not an object", body(cloud_event(known, data=[1, 2])), parked=True),
        Hostile(
            "data mistyped",
            body(cloud_event(known, data={**data, "originator_version": "seven"})),
            parked=True,
        ),
        Hostile(
            "data huge string",
            body(cloud_event(known, data={**data, first_string: "\u202e" + "x" * HUGE})),
            # Too long for the domain or not: handled, or parked after its retries.
            parked=False,
        ),
        Hostile("xml", b"<event type='crm'/>", parked=True, content_type="application/xml"),
        Hostile(
            "wrong content type",
            body(cloud_event(known, data={})),
            parked=True,
            content_type="text/plain; charset=latin-1",
        ),
    ]


async def publish(settings: BusSettings, subject: str, hostile: list[Hostile]) -> None:
    nc = await nats.connect(settings.url)
    try:
        js = nc.jetstream()
        for message in hostile:
            await js.publish(
                subject,
                message.body,
                stream=settings.stream,
                headers={MSG_ID_HEADER: f"hostile-{uuid4()}", "Content-Type": message.content_type},
            )
    finally:
        await nc.close()


async def publish_valid(settings: BusSettings, event: DomainEvent) -> None:
    message = to_message(event, id=f"valid-{uuid4()}", source="/crm/hostile")
    nc = await nats.connect(settings.url)
    try:
        await nc.jetstream().publish(
            message.subject, message.payload, stream=settings.stream, headers=message.headers
        )
    finally:
        await nc.close()


async def parked_copies(settings: BusSettings, durable: str) -> int:
    nc = await nats.connect(settings.url)
    try:
        info = await nc.jetstream().stream_info(
            settings.stream, subjects_filter=f"{PARKED_PREFIX}.{durable}"
        )
        return int((info.state.subjects or {}).get(f"{PARKED_PREFIX}.{durable}", 0))
    finally:
        await nc.close()


async def waited(check: Callable[[], bool], what: str) -> None:
    try:
        await until(check, within_s=WITHIN_S)
    except AssertionError:
        raise AssertionError(what) from None


async def ensure_stream_exists(settings: BusSettings) -> None:
    """Waits until the service's consumer has created the stream (it does at connection)."""
    nc = await nats.connect(settings.url)
    try:
        async with asyncio.timeout(WITHIN_S):
            while True:
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await nc.jetstream().stream_info(settings.stream)
                    return
                await asyncio.sleep(0.05)
    finally:
        await nc.close()


def still_running(tasks: list[asyncio.Task[None]]) -> bool:
    return all(not task.done() for task in tasks)


async def survives_the_barrage(
    settings: BusSettings,
    *,
    durable: str,
    stats: ConsumerStats,
    tasks: list[asyncio.Task[None]],
    subject: str,
    known: type[DomainEvent],
    valid: DomainEvent,
) -> None:
    """The event consumer `durable` parks or skips every hostile message and handles `valid`."""
    await ensure_stream_exists(settings)
    hostile = barrage(known)
    await publish(settings, subject, hostile)
    await publish_valid(settings, valid)
    must_park = sum(message.parked for message in hostile)
    await waited(lambda: stats.handled >= 1, "the valid event was not handled")
    await waited(
        lambda: stats.handled + stats.parked + stats.ignored >= len(hostile) + 1,
        f"not every message was accounted for: {stats}",
    )
    assert still_running(tasks), "a service task stopped"
    assert stats.parked >= must_park, stats
    assert stats.ignored >= 1, stats  # the unknown type
    assert await parked_copies(settings, durable) == stats.parked
    assert event_type(type(valid)) == event_type(known)


# --- the four consumers -------------------------------------------------------------------------


async def test_the_customer_timeline_consumer(tmp_path: Path, bus_settings: BusSettings) -> None:
    settings = customer_e2e.service_settings(
        PersistenceSettings.sqlite(tmp_path / "data"), bus_settings
    )
    async with customer_e2e.running(settings) as service:
        assert service.consumer is not None
        await survives_the_barrage(
            bus_settings,
            durable=service.consumer.durable,
            stats=service.consumer.stats,
            tasks=service.tasks,
            subject="crm.interaction.opened",
            known=InteractionOpened,
            valid=example_event(InteractionOpened, originator_id=uuid4()),
        )


async def test_the_interaction_services_routing_consumer(
    tmp_path: Path, bus_settings: BusSettings
) -> None:
    settings = interaction_e2e.service_settings(
        PersistenceSettings.sqlite(tmp_path / "data"), bus_settings
    )
    async with interaction_e2e.running(settings, interaction_e2e.MovableClock()) as service:
        assert service.consumer is not None
        await survives_the_barrage(
            bus_settings,
            durable=service.consumer.durable,
            stats=service.consumer.stats,
            tasks=service.tasks,
            subject="crm.routing.offered",
            known=RoutingOffered,
            # of an interaction this service does not have: recorded as nothing to do
            valid=example_event(RoutingOffered, originator_id=uuid4()),
        )


async def test_the_routing_services_interaction_consumer(
    tmp_path: Path, bus_settings: BusSettings
) -> None:
    settings = routing_e2e.service_settings(
        PersistenceSettings.sqlite(tmp_path / "data"), bus_settings
    )
    async with routing_e2e.running(settings, routing_e2e.MovableClock()) as service:
        assert service.consumer is not None
        await survives_the_barrage(
            bus_settings,
            durable=service.consumer.durable,
            stats=service.consumer.stats,
            tasks=service.tasks,
            subject="crm.interaction.queued",
            known=Queued,
            valid=msgspec.structs.replace(
                example_event(Queued, originator_id=uuid4()),
                queue="Billing",
                requirements=RoutingRequirements(skills=(SkillRequirement(skill="billing"),)),
            ),
        )


async def test_the_metrics_projection(tmp_path: Path, bus_settings: BusSettings) -> None:
    settings = metrics_e2e.service_settings(tmp_path / "metrics", bus_settings)
    async with metrics_e2e.running(settings) as service:
        assert service.feed is not None
        feed = service.feed
        await ensure_stream_exists(bus_settings)
        hostile = barrage(InteractionOpened)
        for subject in ("crm.interaction.opened", "crm.voc.feedback.bug", "crm.routing.offered"):
            await publish(bus_settings, subject, hostile)
        await publish_valid(bus_settings, example_event(InteractionOpened, originator_id=uuid4()))
        last = await stream_last_sequence(bus_settings)
        await waited(lambda: feed.position >= last, f"the feed stopped before {last}: {feed.stats}")
        assert still_running(service.tasks), f"the feed stopped: {feed.stats.last_error}"
        # all three copies of each unreadable message were counted and skipped
        unreadable = sum(message.parked and not message.attributes_only for message in hostile)
        assert feed.decoder.unreadable >= 3 * unreadable, feed.stats
