"""The customer service's read models on every engine: directory and Customer 360 timeline.

Projections are idempotent (replaying changes nothing) and resumable (their position is saved
with their rows); personal texts in them are sealed with the customer's key and die with it.
The timeline is fed straight from the interaction domain's events here, as the embedded mode
does; the service feeds the same projection from JetStream.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import cast
from uuid import UUID

import msgspec
import pytest

from crmcore.adapters.readmodels import open_read_model_store
from crmcore.application.customer_views import VIEWS_STORE_NAME, CustomerViews
from crmcore.application.customers import CustomerApplication
from crmcore.application.interactions import InteractionApplication
from crmcore.application.timeline import TimelineKind
from crmcore.config import PersistenceSettings
from crmcore.domain.base import DomainEvent
from crmcore.domain.errors import InvalidValue

MONDAY = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)


def later(minutes: float) -> datetime:
    return MONDAY + timedelta(minutes=minutes)


@pytest.fixture
def customers(persistence: PersistenceSettings) -> Iterator[CustomerApplication]:
    app = CustomerApplication(persistence, default_region="JP")
    yield app
    app.shut_down()


@pytest.fixture
def views(customers: CustomerApplication) -> Iterator[CustomerViews]:
    opened = CustomerViews(customers)
    yield opened
    opened.close_views()


def names(views: CustomerViews, lifecycle: str = "", segment: str = "", tag: str = "") -> list[str]:
    page = views.list_customers(lifecycle=lifecycle, segment=segment, tag=tag)
    return [customer.name for customer in page.customers]


def redacted(event: DomainEvent) -> DomainEvent:
    """The event as the bus carries it (personal texts blanked)."""
    redact = getattr(event, "redacted", None)
    return cast(DomainEvent, redact()) if redact is not None else event


def interaction_events(interactions: InteractionApplication) -> list[DomainEvent]:
    notifications = interactions.recorder.select_notifications(start=1, limit=1000)
    events = [interactions.mapper.to_domain_event(n) for n in notifications]
    return [event for event in events if isinstance(event, DomainEvent)]


class TestCustomerDirectory:
    def test_filters_and_pages(self, customers: CustomerApplication, views: CustomerViews) -> None:
        customers.register(name="Taro", segment="gold", tags=["VIP"], lifecycle="active")
        customers.register(name="Hanako", segment="gold")
        customers.register(name="Jiro", tags=["vip"])

        assert names(views) == ["Taro", "Hanako", "Jiro"]
        assert names(views, segment="gold") == ["Taro", "Hanako"]
        assert names(views, tag=" Vip ") == ["Taro", "Jiro"]
        assert names(views, lifecycle="active") == ["Taro"]
        first = views.list_customers(page_size=2)
        second = views.list_customers(page_size=2, page_token=first.next_page_token)
        assert [c.name for c in (*first.customers, *second.customers)] == ["Taro", "Hanako", "Jiro"]
        assert second.next_page_token == ""

    def test_changes_and_merges_are_followed(
        self, customers: CustomerApplication, views: CustomerViews
    ) -> None:
        taro = customers.register(name="Taro", tags=["vip"])
        duplicate = customers.register(name="T. Yamada", tags=["vip"])
        assert names(views, tag="vip") == ["Taro", "T. Yamada"]

        customers.update_profile(taro.id, expected_version=None, tags=["calm"], segment="gold")
        customers.merge(duplicate.id, taro.id)
        customers.change_lifecycle(taro.id, "active")

        assert names(views, tag="vip") == []
        assert names(views, tag="calm", segment="gold", lifecycle="active") == ["Taro"]
        assert names(views) == ["Taro"]

    def test_an_erased_customer_keeps_its_place_without_its_tags(
        self, customers: CustomerApplication, views: CustomerViews
    ) -> None:
        taro = customers.register(name="Taro", tags=["vip"], segment="gold")
        customers.erase(taro.id)
        assert names(views, tag="vip") == []
        assert [c.erased for c in views.list_customers(segment="gold").customers] == [True]

    def test_tags_are_kept_only_as_keyed_hashes(
        self, customers: CustomerApplication, views: CustomerViews
    ) -> None:
        customers.register(name="Taro", tags=["prefers-evening-calls"])
        views.directory.catch_up()
        rows = views.store.query("SELECT tag_key FROM customer_directory_tags")
        assert len(rows) == 1
        assert "evening" not in str(rows)

    def test_replaying_the_log_changes_nothing(
        self, customers: CustomerApplication, views: CustomerViews
    ) -> None:
        customers.register(name="Taro", tags=["vip"])
        customers.register(name="Hanako", tags=["vip"])
        before = names(views, tag="vip")
        with views.store.transaction() as cursor:
            cursor.execute("UPDATE projection_positions SET position = 0")

        assert views.directory.catch_up() > 0
        assert names(views, tag="vip") == before

    def test_a_token_from_other_filters_is_refused(
        self, customers: CustomerApplication, views: CustomerViews
    ) -> None:
        for name in ("Taro", "Hanako"):
            customers.register(name=name)
        token = views.list_customers(page_size=1).next_page_token
        with pytest.raises(InvalidValue) as refused:
            views.list_customers(page_size=1, page_token=token, tag="vip")
        assert refused.value.field == "page_token"

    def test_the_position_survives_a_restart(
        self, durable_persistence: PersistenceSettings
    ) -> None:
        app = CustomerApplication(durable_persistence)
        views = CustomerViews(app)
        app.register(name="Taro")
        assert names(views) == ["Taro"]
        views.close_views()
        app.shut_down()

        app = CustomerApplication(durable_persistence)
        reopened = CustomerViews(app)
        try:
            assert reopened.directory.catch_up() == 0
            app.register(name="Hanako")
            assert names(reopened) == ["Taro", "Hanako"]
        finally:
            reopened.close_views()
            app.shut_down()


class TestTimeline:
    def test_every_kind_of_item_newest_first(
        self, customers: CustomerApplication, views: CustomerViews
    ) -> None:
        taro = customers.register(name="Taro")
        interactions = InteractionApplication()
        chat = interactions.open_interaction(
            channel="chat", customer_id=taro.id, contact_reason="delivery", at=later(0)
        )
        interactions.add_message(
            chat.id, author_kind="customer", text="Where is my parcel?", at=later(1)
        )
        interactions.open_case(
            subject="Lost parcel", customer_id=taro.id, interaction_ids=[chat.id], at=later(5)
        )
        interactions.capture_feedback(
            source="agent", text="Courier was rude", customer_id=taro.id, at=later(10)
        )
        interactions.record_survey_response(
            survey_id="s-1", kind="nps", score=9, customer_id=taro.id, at=later(20)
        )

        assert views.timeline.catch_up(interactions) > 0
        view = views.customer_view(taro.id)

        assert [entry.kind for entry in view.timeline] == [
            TimelineKind.SURVEY_RESPONSE,
            TimelineKind.FEEDBACK,
            TimelineKind.CASE,
            TimelineKind.INTERACTION,
        ]
        assert view.timeline[-1].summary == "Where is my parcel?"
        assert view.timeline[2].title == "Lost parcel"

    def test_applying_an_event_twice_or_late_changes_nothing(
        self, customers: CustomerApplication, views: CustomerViews
    ) -> None:
        taro = customers.register(name="Taro")
        interactions = InteractionApplication()
        call = interactions.open_interaction(channel="phone", customer_id=taro.id, at=later(0))
        interactions.add_message(call.id, author_kind="customer", text="first", at=later(1))
        interactions.add_message(call.id, author_kind="customer", text="second", at=later(2))
        opened, first, second = interaction_events(interactions)

        assert [views.timeline.apply(event) for event in (opened, second, first, second)] == [
            True,
            True,
            False,
            False,
        ]
        assert views.timeline.entry(call.id) is not None
        assert [entry.summary for entry in views.customer_view(taro.id).timeline] == ["second"]

    def test_a_later_event_of_an_item_never_opened_makes_no_entry(
        self, customers: CustomerApplication, views: CustomerViews
    ) -> None:
        taro = customers.register(name="Taro")
        interactions = InteractionApplication()
        call = interactions.open_interaction(channel="phone", customer_id=taro.id)
        interactions.add_message(call.id, author_kind="customer", text="hello")
        _, added = interaction_events(interactions)
        assert views.timeline.apply(added) is False
        assert views.customer_view(taro.id).timeline == ()

    def test_an_item_moves_to_the_customer_identified_later(
        self, customers: CustomerApplication, views: CustomerViews
    ) -> None:
        taro = customers.register(name="Taro")
        interactions = InteractionApplication()
        call = interactions.open_interaction(channel="phone")
        interactions.add_message(call.id, author_kind="customer", text="It's Taro")
        interactions.identify_customer(call.id, taro.id)
        views.timeline.catch_up(interactions)
        assert [entry.summary for entry in views.customer_view(taro.id).timeline] == ["It's Taro"]

    def test_pages_are_stable_when_items_start_at_the_same_moment(
        self, customers: CustomerApplication, views: CustomerViews
    ) -> None:
        taro = customers.register(name="Taro")
        interactions = InteractionApplication()
        opened = {
            interactions.open_interaction(channel="email", customer_id=taro.id, at=MONDAY).id
            for _ in range(5)
        }
        views.timeline.catch_up(interactions)

        seen: list[UUID] = []
        token = ""
        while True:
            page = views.customer_view(taro.id, page_size=2, page_token=token)
            seen += [entry.id for entry in page.timeline]
            token = page.next_page_token
            if not token:
                break
        assert sorted(seen, key=str) == sorted(opened, key=str)
        assert len(seen) == 5

    def test_personal_texts_are_sealed_and_die_with_the_customers_key(
        self, customers: CustomerApplication, views: CustomerViews
    ) -> None:
        taro = customers.register(name="Taro")
        interactions = InteractionApplication()
        call = interactions.open_interaction(
            channel="phone", customer_id=taro.id, contact_reason="billing", at=later(0)
        )
        interactions.add_message(call.id, author_kind="customer", text="my flat in Setagaya")
        interactions.open_case(subject="Taro's refund", customer_id=taro.id, at=later(1))
        views.timeline.catch_up(interactions)
        stored = views.store.query("SELECT texts, public_title FROM customer_timeline")
        assert b"Setagaya" not in b"".join(bytes(row[0]) for row in stored)
        assert "refund" not in str([row[1] for row in stored])

        customers.erase(taro.id)
        interactions.add_message(call.id, author_kind="customer", text="still in Setagaya")
        views.timeline.catch_up(interactions)

        timeline = views.customer_view(taro.id).timeline
        assert [(entry.title, entry.summary) for entry in timeline] == [
            ("", ""),
            ("phone (inbound): billing", ""),
        ]

    def test_events_from_the_bus_are_summed_up_without_their_texts(
        self, customers: CustomerApplication, views: CustomerViews
    ) -> None:
        """The service gets the interaction events over the bus, personal texts blanked: the
        summaries tell what happened, counted across events, and die with the customer's key
        like any summary."""
        taro = customers.register(name="Taro")
        interactions = InteractionApplication()
        chat = interactions.open_interaction(
            channel="chat", customer_id=taro.id, contact_reason="delivery", at=later(0)
        )
        interactions.queue(chat.id, queue="web", at=later(1))
        interactions.add_message(
            chat.id, author_kind="customer", text="my flat in Setagaya", at=later(2)
        )
        interactions.answer(chat.id, UUID(int=7), at=later(3))
        interactions.add_message(
            chat.id, author_kind="agent", author_id=UUID(int=7), text="Setagaya, noted", at=later(4)
        )
        interactions.resolve(chat.id, resolution="sent to Setagaya", at=later(5))
        interactions.capture_feedback(
            text="Setagaya courier was rude",
            source="complaint",
            customer_id=taro.id,
            category="complaint",
            sentiment="negative",
            sentiment_score=-0.5,
            topics=["courier"],
            at=later(10),
        )
        for event in interaction_events(interactions):  # one transaction each
            views.timeline.apply(redacted(event))

        feedback, call = views.customer_view(taro.id).timeline
        assert (call.title, call.summary) == (
            "chat (inbound): delivery",
            "resolved · 2 messages, last: agent · queue web",
        )
        assert (feedback.title, feedback.summary) == (
            "complaint (negative)",
            "negative sentiment -0.50 · topics: courier · source: complaint",
        )
        stored = views.store.query("SELECT texts, public_title FROM customer_timeline")
        assert b"Setagaya" not in b"".join(bytes(row[0]) for row in stored)
        assert b"2 messages" not in b"".join(bytes(row[0]) for row in stored)  # sealed

        customers.erase(taro.id)
        interactions.reopen(chat.id, reason="not in Setagaya", at=later(20))
        views.timeline.apply(redacted(interaction_events(interactions)[-1]))
        assert [
            (entry.title, entry.summary) for entry in views.customer_view(taro.id).timeline
        ] == [
            ("complaint (negative)", ""),
            ("chat (inbound): delivery", ""),
        ]

    def test_a_text_stored_before_the_summaries_counted_stays(
        self, customers: CustomerApplication, views: CustomerViews
    ) -> None:
        """A row written before the timeline kept its facts beside the texts: its summary was
        a text, and an event without one keeps it."""
        interactions = InteractionApplication()
        call = interactions.open_interaction(channel="phone", at=later(0))  # no customer yet
        interactions.add_message(call.id, author_kind="customer", text="hello", at=later(1))
        interactions.queue(call.id, queue="billing", at=later(2))
        opened, added, queued = interaction_events(interactions)
        views.timeline.apply(opened)
        views.timeline.apply(added)
        with views.store.transaction() as cursor:  # the texts as they were stored before
            cursor.execute(
                "UPDATE customer_timeline SET texts = ? WHERE item_id = ?",
                (msgspec.msgpack.encode(["phone (inbound)", "hello"]), str(call.id)),
            )
        views.timeline.apply(redacted(queued))
        entry = views.timeline.entry(call.id)
        assert entry is not None
        assert (entry.summary, entry.status) == ("hello", "queued")

    def test_the_timeline_position_survives_a_restart(
        self, durable_persistence: PersistenceSettings
    ) -> None:
        app = CustomerApplication(durable_persistence)
        views = CustomerViews(app)
        interactions = InteractionApplication()
        taro = app.register(name="Taro")
        interactions.open_interaction(channel="phone", customer_id=taro.id)
        assert views.timeline.catch_up(interactions) == 1
        views.close_views()

        store = open_read_model_store(durable_persistence, VIEWS_STORE_NAME)
        reopened = CustomerViews(app, store)
        try:
            assert reopened.timeline.catch_up(interactions) == 0
            interactions.open_interaction(channel="chat", customer_id=taro.id)
            assert reopened.timeline.catch_up(interactions) == 1
            assert len(reopened.customer_view(taro.id).timeline) == 2
        finally:
            store.close_store()
            app.shut_down()
