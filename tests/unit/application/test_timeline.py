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


def as_on_the_bus(app: InteractionApplication) -> list[tuple[int, DomainEvent]]:
    """The stored events as the interaction service publishes them: personal texts blanked."""
    events = []
    for position, event in stored_events(app):
        redacted = getattr(event, "redacted", None)
        events.append((position, redacted() if redacted is not None else event))
    return events


def fed_from_the_bus(app: InteractionApplication) -> CustomerTimeline:
    timeline = CustomerTimeline()
    for position, event in as_on_the_bus(app):
        timeline.apply(position, event)
    return timeline


class TestSummariesWithoutText:
    """Over the bus the events carry no personal text: the summary tells what happened from
    the facts they do carry, and never a word anyone wrote."""

    PERSONAL = ("Where is my parcel", "Checking", "rude customer", "courier lost it", "Sorry")

    def assert_nothing_personal(self, timeline: CustomerTimeline) -> None:
        for entry in timeline.entries(TARO):
            for words in self.PERSONAL:
                assert words not in f"{entry.title} {entry.summary}", entry

    def test_an_interaction_tells_its_messages_status_and_handling(
        self, app: InteractionApplication
    ) -> None:
        chat = app.open_interaction(
            channel="chat", customer_id=TARO, contact_reason="delivery", at=at(0)
        )
        assert fed_from_the_bus(app).entries(TARO)[0].summary == "opened"
        app.queue(chat.id, queue="web", at=at(1))
        app.add_message(chat.id, author_kind="customer", text="Where is my parcel?", at=at(2))
        timeline = fed_from_the_bus(app)
        assert timeline.entries(TARO)[0].summary == (
            "waiting · 1 message, last: customer · queue web"
        )

        app.answer(chat.id, ALICE, at=at(3))
        app.add_message(chat.id, author_kind="agent", author_id=ALICE, text="Checking", at=at(4))
        app.add_message(
            chat.id,
            author_kind="agent",
            author_id=ALICE,
            text="rude customer",
            public=False,
            at=at(5),
        )
        app.hold(chat.id, at=at(6))
        timeline = fed_from_the_bus(app)
        assert timeline.entries(TARO)[0].summary == (
            "on hold · 3 messages, last: agent (internal note) · queue web · held once"
        )

        app.resume(chat.id, at=at(7))
        app.escalate(chat.id, reason="courier lost it", tier=2, department="logistics", at=at(8))
        app.transfer(chat.id, reason="courier lost it", to_queue="claims", at=at(9))
        app.answer(chat.id, HANAKO, at=at(10))
        app.add_message(chat.id, author_kind="agent", author_id=HANAKO, text="Sorry", at=at(11))
        app.resolve(chat.id, resolution="courier lost it, refunded", at=at(12))
        timeline = fed_from_the_bus(app)
        (entry,) = timeline.entries(TARO)
        assert entry.summary == (
            "resolved · 4 messages, last: agent · queue claims · escalated to tier 2, logistics"
            " · transferred once · held once"
        )
        assert (entry.title, entry.status) == ("chat (inbound): delivery", "resolved")
        self.assert_nothing_personal(timeline)

        app.reopen(chat.id, reason="courier lost it again", at=at(20))
        app.add_message(
            chat.id, author_kind="system", text="rude customer", public=False, at=at(21)
        )
        # Too long for one line: cut, the most telling facts first.
        assert fed_from_the_bus(app).entries(TARO)[0].summary == (
            "waiting · 5 messages, last: system (internal note) · queue claims"
            " · escalated to tier 2, logistics · transferred once · reopened once · hel…"
        )

    def test_a_bot_conversation_resolved_by_the_bot(self, app: InteractionApplication) -> None:
        chat = app.open_interaction(channel="chat", customer_id=TARO, handled_by_bot=True)
        app.add_message(chat.id, author_kind="customer", text="Where is my parcel?")
        app.add_message(chat.id, author_kind="bot", text="It arrives today")
        app.bot_contain(chat.id, resolution="Sorry, told the date")
        (entry,) = fed_from_the_bus(app).entries(TARO)
        assert entry.summary == "resolved by the bot · 2 messages, last: bot"

    def test_feedback_tells_its_classification(self, app: InteractionApplication) -> None:
        feedback = app.capture_feedback(
            text="The courier lost it, rude customer service",
            source="complaint",
            customer_id=TARO,
            category="complaint",
            sentiment="negative",
            sentiment_score=-0.6,
            topics=["delivery", "courier"],
            set_by="agent",
            at=at(0),
        )
        timeline = fed_from_the_bus(app)
        (entry,) = timeline.entries(TARO)
        assert (entry.title, entry.summary) == (
            "complaint (negative)",
            "negative sentiment -0.60 · topics: delivery, courier · source: complaint",
        )
        app.classify_feedback(feedback.id, set_by="agent", sentiment="neutral", topics=["parcel"])
        timeline = fed_from_the_bus(app)
        (entry,) = timeline.entries(TARO)
        assert (entry.title, entry.summary, entry.status) == (
            "complaint (neutral)",
            "neutral sentiment · topics: parcel · source: complaint",
            "classified",
        )
        self.assert_nothing_personal(timeline)

    def test_a_survey_tells_its_kind_and_score(self, app: InteractionApplication) -> None:
        app.record_survey_response(
            survey_id="nps-1", kind="nps", score=3, comment="courier lost it", customer_id=TARO
        )
        (entry,) = fed_from_the_bus(app).entries(TARO)
        assert (entry.title, entry.summary) == ("NPS 3", "NPS score 3 (scale 0–10)")

    def test_a_case_is_named_by_its_priority(self, app: InteractionApplication) -> None:
        app.open_case(subject="courier lost it", customer_id=TARO, reason="delivery")
        (entry,) = fed_from_the_bus(app).entries(TARO)
        assert (entry.title, entry.summary) == ("normal priority case", "delivery")


class TestSummariesWithText:
    """Read from the interaction application the texts are there: they stay the summary."""

    def test_a_text_stays_the_summary_until_another_replaces_it(
        self, app: InteractionApplication
    ) -> None:
        chat = app.open_interaction(channel="chat", customer_id=TARO, at=at(0))
        app.queue(chat.id, queue="web", at=at(1))
        timeline = CustomerTimeline()
        timeline.catch_up(app)
        assert timeline.entries(TARO)[0].summary == "waiting · queue web"

        app.add_message(chat.id, author_kind="customer", text="Where is my parcel?", at=at(2))
        app.answer(chat.id, ALICE, at=at(3))
        app.hold(chat.id, at=at(4))
        timeline.catch_up(app)
        assert timeline.entries(TARO)[0].summary == "Where is my parcel?"
        app.resume(chat.id, at=at(5))
        app.resolve(chat.id, at=at(6))  # without a resolution: the message stays
        timeline.catch_up(app)
        assert timeline.entries(TARO)[0].summary == "Where is my parcel?"

    def test_feedback_and_surveys_show_their_words(self, app: InteractionApplication) -> None:
        feedback = app.capture_feedback(text="Courier was rude", customer_id=TARO, at=at(0))
        app.classify_feedback(feedback.id, set_by="agent", category="complaint")
        app.record_survey_response(
            survey_id="ces-1", kind="ces", score=2, customer_id=TARO, at=at(1)
        )
        timeline = CustomerTimeline()
        timeline.catch_up(app)
        survey, classified = timeline.entries(TARO)
        assert classified.summary == "Courier was rude"
        assert survey.summary == "CES score 2 (scale 1–7)"  # answered without a comment
