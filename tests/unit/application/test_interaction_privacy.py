"""Crypto-shredding in the interaction application: what customers said is sealed with their
key in the application's own vault, and erasing the customer makes it unreadable while the
history (times, agents, channels, statuses) and the classification stay.

Also the vault's ownership of keys (`KeyVault.assign_owner` / `destroy_owned`): keys made for
an interaction before its customer was known, and the keys of merged customers, go with the
customer they were handed to.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import cast
from uuid import UUID, uuid4

import pytest

from crmcore.adapters.keyvault import KeyVault
from crmcore.adapters.mapper import MsgspecMapper
from crmcore.adapters.readmodels import SqliteReadModelStore
from crmcore.application.interactions import InteractionApplication
from crmcore.domain.base import DomainEvent
from crmcore.domain.errors import RuleViolation
from crmcore.domain.feedback import FeedbackCaptured, FeedbackCategory, Sentiment
from crmcore.domain.interaction import AuthorKind, InteractionStatus, MessageAdded

MONDAY = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
SAID = "my card number is 4417 and I live in Setagaya"
NOTE = "caller sounded like Mr Yamada from the Shibuya branch"
RESOLUTION = "refund sent to Yamada's account"
SUBJECT = "Yamada invoice dispute"
COMMENT = "the agent was rude and the app crashes every time"
PERSONAL = (SAID, NOTE, RESOLUTION, SUBJECT, COMMENT)


def at(minutes: float) -> datetime:
    return MONDAY + timedelta(minutes=minutes)


def readable(data: bytes | str) -> list[str]:
    raw = data.encode() if isinstance(data, str) else data
    return [text for text in PERSONAL if text.encode() in raw]


@pytest.fixture
def app() -> InteractionApplication:
    return InteractionApplication(state_cache_size=100)


def converse(app: InteractionApplication, customer_id: UUID | None) -> UUID:
    """A chat with everything personal an interaction holds; returns its id."""
    agent = uuid4()
    chat = app.open_interaction(channel="chat", customer_id=customer_id, at=at(0))
    app.add_message(chat.id, author_kind="customer", text=SAID, at=at(1))
    app.queue(chat.id, queue="billing", at=at(2))
    app.answer(chat.id, agent, at=at(3))
    app.add_message(
        chat.id, author_kind="agent", author_id=agent, text=NOTE, public=False, at=at(4)
    )
    app.add_message(chat.id, author_kind="agent", author_id=agent, text="hello", at=at(5))
    app.escalate(chat.id, reason=NOTE, tier=2, at=at(6))
    app.resolve(chat.id, resolution=RESOLUTION, at=at(7))
    return chat.id


def stored_events(app: InteractionApplication) -> list[DomainEvent]:
    return [
        cast(DomainEvent, app.mapper.to_domain_event(notification))
        for notification in app.recorder.select_notifications(start=1, limit=10_000)
    ]


class TestSealing:
    def test_what_is_said_is_stored_sealed_and_reads_back_whole(
        self, app: InteractionApplication
    ) -> None:
        customer = uuid4()
        chat_id = converse(app, customer)

        for notification in app.recorder.select_notifications(start=1, limit=10_000):
            assert readable(notification.state) == []
        chat = app.get_interaction(chat_id)
        assert [entry.text for entry in chat.transcript] == [SAID, NOTE, "hello"]
        assert chat.resolution == RESOLUTION
        assert chat.escalations[0].reason == NOTE

    def test_the_public_view_the_relay_uses_holds_no_personal_text(
        self, app: InteractionApplication
    ) -> None:
        chat_id = converse(app, uuid4())
        app.open_case(subject=SUBJECT, interaction_ids=[chat_id], at=at(8))
        app.record_survey_response(
            survey_id="s-1",
            kind="csat",
            score=1,
            comment=COMMENT,
            interaction_id=chat_id,
            capture_comment=True,
            at=at(9),
        )
        public = cast(MsgspecMapper, app.mapper).public_view()
        published = [
            public.to_domain_event(notification)
            for notification in app.recorder.select_notifications(start=1, limit=10_000)
        ]
        assert len(published) > 10
        for event in published:
            assert readable(repr(event)) == [], event
        # What departments act on is still there.
        (feedback,) = [event for event in published if isinstance(event, FeedbackCaptured)]
        assert (feedback.category, feedback.topics) == (FeedbackCategory.BUG, ("support", "app"))
        assert feedback.sentiment is Sentiment.NEGATIVE
        assert feedback.text == ""
        messages = [event for event in published if isinstance(event, MessageAdded)]
        assert [(m.entry.author_kind, m.entry.public) for m in messages] == [
            (AuthorKind.CUSTOMER, True),
            (AuthorKind.AGENT, False),
            (AuthorKind.AGENT, True),
        ]


class TestErasure:
    def test_erasing_the_customer_blanks_every_text_and_keeps_the_history(
        self, app: InteractionApplication
    ) -> None:
        customer = uuid4()
        chat_id = converse(app, customer)
        case = app.open_case(subject=SUBJECT, interaction_ids=[chat_id], at=at(8))
        app.solve_case(case.id, resolution=RESOLUTION, at=at(9))
        survey = app.record_survey_response(
            survey_id="s-1",
            kind="csat",
            score=1,
            comment=COMMENT,
            interaction_id=chat_id,
            capture_comment=True,
            at=at(10),
        )
        feedback = app.capture_feedback(
            text=COMMENT, source="complaint", customer_id=customer, at=at(11)
        )
        before = app.get_interaction(chat_id)

        destroyed = app.erase_customer(customer)

        assert destroyed[0] == customer
        chat = app.get_interaction(chat_id)
        assert [entry.text for entry in chat.transcript] == ["", "", ""]
        assert [(e.author_kind, e.author_id, e.public, e.at) for e in chat.transcript] == [
            (e.author_kind, e.author_id, e.public, e.at) for e in before.transcript
        ]
        assert chat.resolution == ""
        assert (chat.escalations[0].reason, chat.escalations[0].tier) == ("", 2)
        assert (chat.status, chat.agents, chat.channel, chat.answered_at) == (
            InteractionStatus.RESOLVED,
            before.agents,
            before.channel,
            before.answered_at,
        )
        solved = app.get_case(case.id)
        assert (solved.subject, solved.resolution, solved.status) == ("", "", case.status.SOLVED)
        assert app.get_survey_response(survey.id).comment == ""
        assert app.get_survey_response(survey.id).score == 1
        kept = app.get_feedback(feedback.id)
        assert (kept.text, kept.category) == ("", feedback.category)
        for event in stored_events(app):
            assert readable(repr(event)) == [], event

    def test_an_interaction_identified_later_is_reached_through_its_own_key(
        self, app: InteractionApplication
    ) -> None:
        customer = uuid4()
        chat_id = converse(app, None)
        app.identify_customer(chat_id, customer, at=at(8))
        app.add_message(chat_id, author_kind="customer", text=SAID, at=at(9))
        assert app.key_vault.owner_of(chat_id) == customer

        destroyed = app.erase_customer(customer)

        assert set(destroyed) == {customer, chat_id}
        texts = [entry.text for entry in app.get_interaction(chat_id).transcript]
        assert texts == ["", "", "", ""]

    def test_an_anonymous_interaction_linked_to_the_customers_case_is_reached(
        self, app: InteractionApplication
    ) -> None:
        customer = uuid4()
        chat_id = converse(app, None)
        case = app.open_case(subject=SUBJECT, customer_id=customer, at=at(8))
        app.link_interaction_to_case(case.id, chat_id, at=at(9))

        app.erase_customer(customer)

        assert [e.text for e in app.get_interaction(chat_id).transcript] == ["", "", ""]
        assert app.get_case(case.id).subject == ""

    def test_erasing_another_customer_reaches_nothing_of_this_one(
        self, app: InteractionApplication
    ) -> None:
        chat_id = converse(app, uuid4())
        anonymous_id = converse(app, None)
        app.erase_customer(uuid4())
        assert app.get_interaction(chat_id).transcript[0].text == SAID
        assert app.get_interaction(anonymous_id).transcript[0].text == SAID

    def test_a_merged_customers_interactions_go_with_the_survivor(
        self, app: InteractionApplication
    ) -> None:
        duplicate, survivor, merged_before = uuid4(), uuid4(), uuid4()
        duplicate_chat = converse(app, duplicate)
        older_chat = converse(app, merged_before)
        anonymous_chat = converse(app, None)
        app.identify_customer(anonymous_chat, duplicate, at=at(8))
        app.merge_customers(duplicate, survivor, [merged_before])

        app.erase_customer(survivor)

        for chat_id in (duplicate_chat, older_chat, anonymous_chat):
            assert {e.text for e in app.get_interaction(chat_id).transcript} == {""}

    def test_erasing_twice_changes_nothing(self, app: InteractionApplication) -> None:
        customer = uuid4()
        chat_id = converse(app, customer)
        first = app.erase_customer(customer)
        assert app.erase_customer(customer) == first
        assert app.get_interaction(chat_id).transcript[0].text == ""

    def test_new_personal_text_for_an_erased_customer_is_refused(
        self, app: InteractionApplication
    ) -> None:
        customer = uuid4()
        chat_id = converse(app, customer)
        app.erase_customer(customer)
        stored = app.recorder.max_notification_id()

        with pytest.raises(RuleViolation, match="erased"):
            app.capture_feedback(text=COMMENT, customer_id=customer, at=at(20))
        with pytest.raises(RuleViolation, match="erased"):
            app.reopen(chat_id, reason=NOTE, at=at(20))
        assert app.recorder.max_notification_id() == stored
        # What says nothing personal is still recorded: the history goes on.
        assert app.close_interaction(chat_id, at=at(21)).status is InteractionStatus.CLOSED
        later = app.open_interaction(channel="phone", customer_id=customer, at=at(22))
        assert later.customer_id == customer

    def test_identifying_an_interaction_as_an_erased_customer_destroys_its_key(
        self, app: InteractionApplication
    ) -> None:
        customer = uuid4()
        app.erase_customer(customer)
        chat_id = converse(app, None)
        app.identify_customer(chat_id, customer, at=at(8))
        assert app.key_vault.is_destroyed(chat_id)
        assert app.get_interaction(chat_id).transcript[0].text == ""


class TestKeyOwners:
    def vault(self) -> KeyVault:
        return KeyVault(SqliteReadModelStore(":memory:"))

    def test_destroying_an_owner_destroys_what_was_handed_to_it_transitively(self) -> None:
        vault = self.vault()
        survivor, duplicate, interaction, unrelated = uuid4(), uuid4(), uuid4(), uuid4()
        for subject in (survivor, duplicate, interaction, unrelated):
            vault.create_key(subject)
        vault.assign_owner(interaction, duplicate)
        vault.assign_owner(duplicate, survivor)

        destroyed = vault.destroy_owned(survivor)

        assert destroyed[0] == survivor
        assert set(destroyed) == {survivor, duplicate, interaction}
        assert not vault.is_destroyed(unrelated)
        assert all(vault.is_destroyed(subject) for subject in destroyed)

    def test_a_later_owner_replaces_the_earlier_one(self) -> None:
        vault = self.vault()
        interaction, wrong, right = uuid4(), uuid4(), uuid4()
        vault.create_key(interaction)
        vault.assign_owner(interaction, wrong)
        vault.assign_owner(interaction, right)
        assert vault.owner_of(interaction) == right
        vault.destroy_owned(wrong)
        assert not vault.is_destroyed(interaction)

    def test_a_key_handed_to_a_destroyed_owner_is_destroyed_at_once(self) -> None:
        vault = self.vault()
        owner, subject = uuid4(), uuid4()
        vault.create_key(subject)
        vault.destroy_owned(owner)
        assert vault.assign_owner(subject, owner) is True
        assert vault.is_destroyed(subject)

    def test_a_pending_key_handed_over_and_destroyed_is_never_stored(self) -> None:
        vault = self.vault()
        owner, subject = uuid4(), uuid4()
        vault.new_key(subject)
        vault.assign_owner(subject, owner)
        vault.destroy_owned(owner)
        vault.store_pending()
        assert vault.is_destroyed(subject)
        assert vault.existing_key(subject) is None

    def test_ownership_cycles_end(self) -> None:
        vault = self.vault()
        first, second = uuid4(), uuid4()
        vault.assign_owner(first, second)
        vault.assign_owner(second, first)
        assert set(vault.destroy_owned(first)) == {first, second}

    def test_a_subject_is_not_its_own_owner(self) -> None:
        vault = self.vault()
        subject = uuid4()
        assert vault.assign_owner(subject, subject) is False
        assert vault.owner_of(subject) is None
