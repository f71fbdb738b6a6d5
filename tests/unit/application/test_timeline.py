"""The customer timeline: one entry per interaction, case, survey response and feedback,
newest first, following the interaction application's notification log idempotently."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crmcore.application.interactions import InteractionApplication
from crmcore.application.timeline import CustomerTimeline, TimelineEntry, TimelineKind
from crmcore.domain.base import DomainEvent
from crmcore.domain.values import Channel

MONDAY_9AM = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
ALICE = UUID("00000000-0000-4000-8000-00000000a11c")
TARO = UUID("00000000-0000-4000-8000-0000000074a0")
HANAKO = UUID("00000000-0000-4000-8000-0000000da4a0")


def at(minutes: float) -> datetime:
    return MONDAY_9AM + timedelta(minutes=minutes)


@pytest.fixture
def app() -> Iterator[InteractionApplication]:
    application = InteractionApplication()
    yield application
    application.close()


def stored_events(app: InteractionApplication) -> list[tuple[int, DomainEvent]]:
    events = []
    for notification in app.recorder.select_notifications(start=1, limit=10_000):
        event = app.mapper.to_domain_event(notification)
        assert isinstance(event, DomainEvent)
        events.append((notification.id, event))
    return events


def kinds(entries: tuple[TimelineEntry, ...]) -> list[TimelineKind]:
    return [entry.kind for entry in entries]


class TestBuildingTheTimeline:
    def test_every_item_of_the_customer_appears_once_newest_first(
        self, app: InteractionApplication
    ) -> None:
        call = app.open_interaction(
            channel="phone", customer_id=TARO, contact_reason="refund", at=at(0)
        )
        app.queue(call.id, queue="billing", at=at(1))
        app.answer(call.id, ALICE, at=at(2))
        app.add_message(call.id, author_kind="agent", author_id=ALICE, text="Hello", at=at(3))
        app.resolve(call.id, resolution="Refund issued", at=at(10))
        case = app.open_case(subject="Double charge", interaction_ids=[call.id], at=at(11))
        app.record_survey_response(
            survey_id="csat-1",
            kind="csat",
            score=5,
            comment="Great",
            interaction_id=call.id,
            at=at(20),
        )
        app.capture_feedback(text="Great service", interaction_id=call.id, at=at(21))

        timeline = CustomerTimeline()
        assert timeline.catch_up(app) == app.recorder.max_notification_id()
        entries = timeline.entries(TARO)

        assert kinds(entries) == [
            TimelineKind.FEEDBACK,
            TimelineKind.SURVEY_RESPONSE,
            TimelineKind.CASE,
            TimelineKind.INTERACTION,
        ]
        feedback, survey, case_entry, interaction = entries
        assert interaction.id == call.id
        assert interaction.status == "resolved"
        assert interaction.channel is Channel.PHONE
        assert interaction.title == "phone (inbound): refund"
        assert interaction.summary == "Refund issued"
        assert interaction.occurred_at == at(0)
        assert interaction.updated_at == at(11)  # linked to the case
        assert case_entry.id == case.id
        assert case_entry.title == "Double charge"
        assert case_entry.status == "new"
        assert survey.title == "CSAT 5"
        assert survey.summary == "Great"
        assert feedback.summary == "Great service"
        assert feedback.status == "captured"

    def test_other_customers_do_not_see_it(self, app: InteractionApplication) -> None:
        app.open_interaction(channel="email", customer_id=TARO, at=at(0))
        timeline = CustomerTimeline()
        timeline.catch_up(app)
        assert timeline.entries(HANAKO) == ()

    def test_entries_follow_the_items_as_events_arrive(self, app: InteractionApplication) -> None:
        timeline = CustomerTimeline()
        chat = app.open_interaction(channel="chat", customer_id=TARO, at=at(0))
        timeline.catch_up(app)
        assert timeline.entries(TARO)[0].status == "created"
        app.queue(chat.id, queue="web", at=at(1))
        app.add_message(chat.id, author_kind="customer", text="Where is my parcel?", at=at(2))
        assert timeline.catch_up(app) == 2
        entry = timeline.entries(TARO)[0]
        assert entry.status == "queued"
        assert entry.summary == "Where is my parcel?"
        assert entry.updated_at == at(2)

    def test_internal_notes_are_not_shown_as_the_summary(self, app: InteractionApplication) -> None:
        chat = app.open_interaction(channel="chat", customer_id=TARO, at=at(0))
        app.queue(chat.id, queue="web", at=at(1))
        app.answer(chat.id, ALICE, at=at(2))
        app.add_message(chat.id, author_kind="customer", text="Hi", at=at(3))
        app.add_message(
            chat.id, author_kind="agent", author_id=ALICE, text="angry", public=False, at=at(4)
        )
        timeline = CustomerTimeline()
        timeline.catch_up(app)
        assert timeline.entries(TARO)[0].summary == "Hi"

    def test_a_reclassified_feedback_keeps_one_entry(self, app: InteractionApplication) -> None:
        feedback = app.capture_feedback(text="Upload crashes", customer_id=TARO, at=at(0))
        app.classify_feedback(feedback.id, set_by="model", category="bug", sentiment="negative")
        timeline = CustomerTimeline()
        timeline.catch_up(app)
        (entry,) = timeline.entries(TARO)
        assert entry.title == "bug (negative)"
        assert entry.status == "classified"


class TestIdentification:
    def test_an_anonymous_contact_appears_once_the_customer_is_known(
        self, app: InteractionApplication
    ) -> None:
        call = app.open_interaction(channel="phone", at=at(0))
        timeline = CustomerTimeline()
        timeline.catch_up(app)
        assert timeline.entries(TARO) == ()
        app.identify_customer(call.id, TARO, at=at(1))
        timeline.catch_up(app)
        assert [entry.id for entry in timeline.entries(TARO)] == [call.id]

    def test_a_corrected_identification_moves_the_entry(self, app: InteractionApplication) -> None:
        call = app.open_interaction(channel="phone", customer_id=TARO, at=at(0))
        app.identify_customer(call.id, HANAKO, at=at(1))
        timeline = CustomerTimeline()
        timeline.catch_up(app)
        assert timeline.entries(TARO) == ()
        assert [entry.id for entry in timeline.entries(HANAKO)] == [call.id]


class TestPaging:
    def test_pages_cut_the_newest_first_list(self, app: InteractionApplication) -> None:
        ids = [
            app.open_interaction(channel="email", customer_id=TARO, at=at(minute)).id
            for minute in range(5)
        ]
        timeline = CustomerTimeline()
        timeline.catch_up(app)
        newest_first = list(reversed(ids))
        assert [entry.id for entry in timeline.entries(TARO, limit=2)] == newest_first[:2]
        assert [entry.id for entry in timeline.entries(TARO, limit=2, offset=2)] == newest_first[
            2:4
        ]
        assert [entry.id for entry in timeline.entries(TARO, limit=2, offset=4)] == newest_first[4:]
        assert timeline.entries(TARO, limit=2, offset=6) == ()

    def test_a_negative_page_is_refused(self) -> None:
        with pytest.raises(ValueError, match="negative"):
            CustomerTimeline().entries(TARO, limit=-1)


class TestIdempotency:
    def test_applying_the_same_notification_twice_changes_nothing(
        self, app: InteractionApplication
    ) -> None:
        call = app.open_interaction(channel="phone", customer_id=TARO, at=at(0))
        app.queue(call.id, queue="billing", at=at(1))
        timeline = CustomerTimeline()
        for position, event in stored_events(app):
            assert timeline.apply(position, event)
        before = timeline.entries(TARO)
        for position, event in stored_events(app):
            assert not timeline.apply(position, event)
        assert timeline.entries(TARO) == before
        assert timeline.position == 2

    def test_catching_up_again_processes_nothing(self, app: InteractionApplication) -> None:
        app.open_interaction(channel="phone", customer_id=TARO, at=at(0))
        timeline = CustomerTimeline()
        assert timeline.catch_up(app) == 1
        assert timeline.catch_up(app) == 0

    def test_catching_up_in_small_batches_reads_everything(
        self, app: InteractionApplication
    ) -> None:
        for minute in range(7):
            app.open_interaction(channel="sms", customer_id=TARO, at=at(minute))
        timeline = CustomerTimeline()
        assert timeline.catch_up(app, batch_size=3) == 7
        assert len(timeline.entries(TARO)) == 7

    @settings(max_examples=25, deadline=None)
    @given(st.lists(st.integers(min_value=0, max_value=8), min_size=1, max_size=20))
    def test_replays_in_any_pattern_give_the_timeline_of_one_pass(self, replays: list[int]) -> None:
        """Whatever notifications are applied again (a consumer restarting from an older
        position), the timeline is the one of a single pass."""
        app = InteractionApplication()
        call = app.open_interaction(channel="phone", customer_id=TARO, at=at(0))
        app.queue(call.id, queue="billing", at=at(1))
        app.answer(call.id, ALICE, at=at(2))
        app.resolve(call.id, at=at(3))
        case = app.open_case(subject="Refund", interaction_ids=[call.id], at=at(4))
        app.solve_case(case.id, at=at(5))
        events = stored_events(app)
        once = CustomerTimeline()
        once.catch_up(app)

        replayed = CustomerTimeline()
        for upto in replays:
            for position, event in events[: upto + 1]:
                replayed.apply(position, event)
        replayed.catch_up(app)
        assert replayed.entries(TARO) == once.entries(TARO)
        app.close()
