"""The actor on the bus: every published CloudEvent says who caused it (`actor` extension).

A customer application stores events for a desk agent's token, for the SLA scheduler and for
nobody in particular; its relay publishes them to a real NATS server. Any CloudEvents SDK
reads the `actor` attribute, the envelope passes the project's published JSON Schema, and an
event nobody was identified for carries no `actor` attribute at all.
"""

from __future__ import annotations

import json
from pathlib import Path
from uuid import UUID

import jsonschema  # type: ignore[import-untyped]
import pytest
from cloudevents.core.formats.json import JSONFormat
from cloudevents.v1.http import from_json

from crmcore.adapters import envelope
from crmcore.adapters.relay import OutboxRelay
from crmcore.application.customers import CustomerApplication
from crmcore.application.principal import (
    SLA_SCHEDULER_PRINCIPAL,
    Principal,
    acting_as,
    running_as,
)
from crmcore.config import BusSettings
from tests.integration.bus import last_notification_id, read_stream, running

pytestmark = pytest.mark.nats

ALICE = Principal(token_id="t-1", name="desk-alice", scopes=frozenset({"customers:write"}))
SCHEMAS = Path(__file__).resolve().parents[3] / "schemas"


async def test_every_published_event_names_its_actor_for_any_sdk(
    bus_settings: BusSettings,
) -> None:
    app = CustomerApplication()
    with acting_as(ALICE):
        alice_made = app.register(name="Hanako Suzuki", contact_points=[("email", "h@example.jp")])
    scheduler_made = running_as(SLA_SCHEDULER_PRINCIPAL, app.register)(name="Jiro Sato")
    nobody_made = app.register(name="Saburo Ito")
    expected = {
        alice_made.id: "token:desk-alice",
        scheduler_made.id: "system:sla-scheduler",
        nobody_made.id: None,
    }

    relay = OutboxRelay(app, bus_settings, source="customer")
    async with running(relay):
        await relay.wait_for(last_notification_id(app), 30)
    messages = await read_stream(bus_settings, "crm.customer.>")

    cloudevent_schema = json.loads((SCHEMAS / "cloudevent.json").read_text())
    seen: dict[UUID, str | None] = {}
    for message in messages:
        parsed = JSONFormat().read(None, message.data)
        legacy = from_json(message.data)
        ours = envelope.decode(message.data)
        jsonschema.validate(json.loads(message.data), cloudevent_schema)
        actor = parsed.get_extension("actor")
        assert legacy.get("actor") == actor
        assert ours.actor == (actor or "")
        if parsed.get_type() == "crm.customer.registered.v1":
            seen[UUID(parsed.get_subject())] = actor
        else:  # the contact point claim of Alice's customer, stored in the same command
            assert actor == "token:desk-alice"
    assert seen == expected
    app.shut_down()


def test_an_event_without_an_actor_has_no_actor_attribute() -> None:
    app = CustomerApplication()
    hanako = app.register(name="Hanako Suzuki")
    (stored,) = app.recorder.select_events(hanako.id)
    event = app.mapper.public_view().to_domain_event(stored)  # type: ignore[attr-defined]

    document = json.loads(envelope.encode(event, id="customers:1", source="/crm/customer"))

    assert "actor" not in document
    assert envelope.decode(json.dumps(document).encode()).actor == ""
    app.shut_down()
