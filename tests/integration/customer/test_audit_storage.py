"""The audit trail on every storage: the customer's events and the audit log beside the views.

The interaction events about a customer are recorded in the audit log by the timeline
projection (here fed straight from an interaction application on the same storage): once each
however often they arrive, newest first with the customer's own events, page by page, and —
on durable storage — still there when the service reopens its stores.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import cast
from uuid import UUID

import pytest

from crmcore.application.audit import AuditEntry
from crmcore.application.customer_views import CustomerViews
from crmcore.application.customers import CustomerApplication
from crmcore.application.interactions import InteractionApplication
from crmcore.application.principal import Principal, acting_as
from crmcore.config import PersistenceSettings
from crmcore.domain.base import DomainEvent

MONDAY = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
DESK = Principal(token_id="t-1", name="desk-alice")
CTI = Principal(token_id="t-2", name="cti-gateway")


def at(minutes: float) -> datetime:
    return MONDAY + timedelta(minutes=minutes)


@pytest.fixture
def apps(
    persistence: PersistenceSettings,
) -> Iterator[tuple[CustomerApplication, InteractionApplication]]:
    customers = CustomerApplication(persistence)
    interactions = InteractionApplication(persistence)
    yield customers, interactions
    customers.shut_down()
    interactions.close()


def trail(views: CustomerViews, customer_id: UUID, page_size: int = 2) -> list[AuditEntry]:
    entries: list[AuditEntry] = []
    token = ""
    while True:
        page = views.customer_audit(customer_id, page_size=page_size, page_token=token)
        entries += page.entries
        token = page.next_page_token
        if not token:
            return entries


def test_the_audit_log_lists_each_event_once_with_its_actor(
    apps: tuple[CustomerApplication, InteractionApplication],
) -> None:
    customers, interactions = apps
    views = CustomerViews(customers)
    try:
        with acting_as(DESK):
            hanako = customers.register(name="Hanako Suzuki", at=at(0))
        with acting_as(CTI):
            walk_in = interactions.open_interaction(channel="chat", at=at(1))
            interactions.identify_customer(walk_in.id, hanako.id, at=at(2))
            interactions.queue(walk_in.id, queue="general", at=at(3))
        views.timeline.catch_up(interactions)
        notifications = interactions.recorder.select_notifications(start=1, limit=100)
        for notification in notifications:  # delivered again: nothing changes
            views.timeline.apply(
                cast(DomainEvent, interactions.mapper.to_domain_event(notification))
            )

        entries = trail(views, hanako.id)

        assert [(entry.actor, entry.action, entry.aggregate_version) for entry in entries] == [
            ("token:cti-gateway", "crm.interaction.queued.v1", 3),
            ("token:cti-gateway", "crm.interaction.customer_identified.v1", 2),
            ("token:cti-gateway", "crm.interaction.opened.v1", 1),
            ("token:desk-alice", "crm.customer.registered.v1", 1),
        ]
        assert {entry.customer_id for entry in entries} == {hanako.id}
    finally:
        views.close_views()


@pytest.mark.parametrize(
    "persistence",
    [
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ],
    indirect=True,
)
def test_the_audit_log_survives_reopening_the_stores(
    apps: tuple[CustomerApplication, InteractionApplication],
) -> None:
    customers, interactions = apps
    views = CustomerViews(customers)
    with acting_as(DESK):
        hanako = customers.register(name="Hanako Suzuki", at=at(0))
    with acting_as(CTI):
        interactions.open_interaction(channel="phone", customer_id=hanako.id, at=at(1))
    views.timeline.catch_up(interactions)
    before = trail(views, hanako.id)
    views.close_views()

    reopened = CustomerViews(customers)
    try:
        assert trail(reopened, hanako.id, page_size=1) == before
        assert len(before) == 2
    finally:
        reopened.close_views()
