"""The interaction application in memory: every command stores its events, every refusal
stores nothing."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from uuid import UUID, uuid4

import pytest

from crmcore.application.interactions import InteractionApplication
from crmcore.domain.case import CaseStatus
from crmcore.domain.errors import (
    AlreadyExists,
    DomainError,
    InvalidValue,
    NotFound,
    RuleViolation,
)
from crmcore.domain.feedback import FeedbackCategory, Setter, SurveyKind, survey_response_id
from crmcore.domain.interaction import (
    InteractionStatus,
    RoutingRequirements,
    SkillRequirement,
)
from crmcore.domain.values import Channel

MONDAY_9AM = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
ALICE = UUID("00000000-0000-4000-8000-00000000a11c")
BOB = UUID("00000000-0000-4000-8000-000000000b0b")
TARO = UUID("00000000-0000-4000-8000-0000000074a0")
HANAKO = UUID("00000000-0000-4000-8000-0000000da4a0")


def at(seconds: float) -> datetime:
    return MONDAY_9AM + timedelta(seconds=seconds)


@pytest.fixture
def app() -> Iterator[InteractionApplication]:
    application = InteractionApplication()
    yield application
    application.close()


def stored(app: InteractionApplication) -> int:
    return app.recorder.max_notification_id() or 0


@contextmanager
def refused(
    app: InteractionApplication, error: type[DomainError] = RuleViolation
) -> Iterator[None]:
    """The block raises `error` and stores nothing."""
    before = stored(app)
    with pytest.raises(error):
        yield
    assert stored(app) == before


def call_in_progress(app: InteractionApplication, agent: UUID = ALICE) -> UUID:
    interaction = app.open_interaction(channel="phone", customer_id=TARO, at=at(0))
    app.queue(interaction.id, queue="billing", at=at(5))
    app.offer(interaction.id, agent, at=at(10))
    app.answer(interaction.id, agent, at=at(20))
    return interaction.id


def resolved_call(app: InteractionApplication) -> UUID:
    interaction_id = call_in_progress(app)
    app.resolve(interaction_id, contact_reason="refund", at=at(60))
    return interaction_id


class TestOpeningInteractions:
    def test_an_opened_interaction_is_stored(self, app: InteractionApplication) -> None:
        interaction = app.open_interaction(
            channel="email", customer_id=TARO, contact_reason="invoice", at=at(0)
        )
        assert app.get_interaction(interaction.id) == interaction
        assert interaction.channel is Channel.EMAIL
        assert stored(app) == 1

    def test_a_retried_request_returns_the_first_interaction(
        self, app: InteractionApplication
    ) -> None:
        first = app.open_interaction(channel="phone", request_id="cti-call-981", at=at(0))
        before = stored(app)
        again = app.open_interaction(channel="phone", request_id="cti-call-981", at=at(3))
        assert again == first
        assert stored(app) == before

    def test_different_requests_open_different_interactions(
        self, app: InteractionApplication
    ) -> None:
        first = app.open_interaction(channel="phone", request_id="cti-call-981", at=at(0))
        second = app.open_interaction(channel="phone", request_id="cti-call-982", at=at(0))
        assert first.id != second.id

    def test_a_retry_that_loses_the_race_gets_the_winners_interaction(self) -> None:
        class LateRetry(InteractionApplication):
            """Misses the first request's key on its first look, as a concurrent retry does."""

            looked = False

            def _created_by_request(self, operation: str, request_id: str | None) -> UUID | None:
                if not self.looked:
                    self.looked = True
                    return None
                return super()._created_by_request(operation, request_id)

        app = LateRetry()
        app.looked = True
        first = app.open_interaction(channel="chat", request_id="widget-7", at=at(0))
        app.looked = False
        assert app.open_interaction(channel="chat", request_id="widget-7", at=at(1)) == first
        assert stored(app) == 2

    def test_a_blank_request_id_is_refused(self, app: InteractionApplication) -> None:
        with refused(app, InvalidValue):
            app.open_interaction(channel="phone", request_id=" ", at=at(0))

    def test_an_unknown_channel_stores_nothing(self, app: InteractionApplication) -> None:
        with refused(app, InvalidValue):
            app.open_interaction(channel="fax", at=at(0))

    def test_an_interaction_opened_on_a_case_is_linked_both_ways(
        self, app: InteractionApplication
    ) -> None:
        case = app.open_case(subject="Double charge", customer_id=TARO, at=at(0))
        interaction = app.open_interaction(
            channel="phone", customer_id=TARO, case_id=case.id, at=at(10)
        )
        assert interaction.case_id == case.id
        assert app.get_case(case.id).interaction_ids == (interaction.id,)

    def test_an_unknown_case_stores_nothing(self, app: InteractionApplication) -> None:
        with refused(app, NotFound):
            app.open_interaction(channel="phone", case_id=uuid4(), at=at(0))

    def test_a_case_of_another_customer_stores_nothing(self, app: InteractionApplication) -> None:
        case = app.open_case(subject="Double charge", customer_id=TARO, at=at(0))
        with refused(app):
            app.open_interaction(channel="phone", customer_id=HANAKO, case_id=case.id, at=at(1))


class TestACallThroughTheContactCentre:
    def test_every_step_is_stored_with_the_times_the_kpis_need(
        self, app: InteractionApplication
    ) -> None:
        call = app.open_interaction(channel="phone", at=at(0))
        app.identify_customer(call.id, TARO, at=at(2))
        app.queue(
            call.id,
            queue="billing",
            requirements=RoutingRequirements(
                skills=(SkillRequirement(skill="billing", min_level=2),), language="ja"
            ),
            at=at(5),
        )
        app.offer(call.id, ALICE, at=at(10))
        app.decline_offer(call.id, ALICE, "timeout", at=at(25))
        app.offer(call.id, BOB, at=at(30))
        app.answer(call.id, BOB, at=at(35))
        app.add_message(call.id, author_kind="agent", author_id=BOB, text="Hello", at=at(36))
        app.hold(call.id, at=at(60))
        app.resume(call.id, at=at(90))
        app.hold(call.id, at=at(100))
        app.transfer(call.id, reason="needs tier 2", to_queue="tier2", at=at(110))
        app.answer(call.id, ALICE, at=at(140))
        app.escalate(call.id, reason="refund over limit", department="finance", at=at(150))
        app.start_wrap_up(call.id, at=at(200))
        app.resolve(call.id, resolution="Refund approved", contact_reason="refund", at=at(230))
        final = app.close_interaction(call.id, at=at(240))

        assert final == app.get_interaction(call.id)
        assert final.status is InteractionStatus.CLOSED
        assert final.customer_id == TARO
        assert final.queued_at == at(5)
        assert final.answered_at == at(35)
        assert final.first_agent_response_at == at(36)
        assert final.hold_seconds == 40.0
        assert final.transfer_count == 1
        assert final.agents == (BOB, ALICE)
        assert final.resolved_by == ALICE
        assert len(final.escalations) == 1
        assert final.wrap_up_started_at == at(200)
        assert final.resolved_at == at(230)
        assert final.closed_at == at(240)
        assert final.version == stored(app) == 17

    def test_a_transfer_keeps_the_customers_original_queue_time(
        self, app: InteractionApplication
    ) -> None:
        call = call_in_progress(app)
        after = app.transfer(call, reason="specialist", to_agent_id=BOB, at=at(100))
        assert after.queued_at == at(5)
        assert after.requirements.preferred_agent_id == BOB

    def test_a_reopened_interaction_waits_again(self, app: InteractionApplication) -> None:
        call = resolved_call(app)
        reopened = app.reopen(call, reason="still double charged", at=at(600))
        assert reopened.status is InteractionStatus.QUEUED
        assert reopened.waiting_since == at(600)
        assert reopened.reopen_count == 1

    def test_a_caller_who_hangs_up_in_the_queue_abandons(self, app: InteractionApplication) -> None:
        call = app.open_interaction(channel="phone", at=at(0))
        app.queue(call.id, queue="billing", at=at(5))
        assert app.abandon(call.id, at=at(50)).abandoned_at == at(50)

    def test_times_in_any_zone_are_stored_as_the_same_instants(
        self, app: InteractionApplication
    ) -> None:
        tokyo = timezone(timedelta(hours=9), "JST")
        opened_at = datetime(2025, 3, 3, 18, 0, tzinfo=tokyo)
        call = app.open_interaction(channel="phone", at=opened_at)
        queued = app.queue(call.id, queue="billing", at=opened_at + timedelta(seconds=5))
        assert app.get_interaction(call.id) == queued
        assert queued.created_at == MONDAY_9AM

    def test_a_reopening_may_give_no_reason(self, app: InteractionApplication) -> None:
        call = resolved_call(app)
        assert app.reopen(call, at=at(600)).reopen_count == 1

    def test_without_a_time_the_command_happens_now(self, app: InteractionApplication) -> None:
        before = datetime.now(UTC)
        interaction = app.open_interaction(channel="chat")
        interaction = app.queue(interaction.id, queue="web")
        assert interaction.queued_at is not None
        assert before <= interaction.created_at <= interaction.queued_at
        assert interaction.queued_at.utcoffset() == timedelta(0)


class TestBotConversations:
    def test_a_bot_contains_the_conversation(self, app: InteractionApplication) -> None:
        chat = app.open_interaction(channel="chatbot", customer_id=TARO, at=at(0))
        app.add_message(chat.id, author_kind="customer", text="Reset my password", at=at(1))
        app.add_message(chat.id, author_kind="bot", text="Here is a link", at=at(2))
        contained = app.bot_contain(chat.id, resolution="password reset", at=at(3))
        assert contained.status is InteractionStatus.CONTAINED
        assert app.close_interaction(chat.id, at=at(4)).status is InteractionStatus.CLOSED

    def test_a_hand_off_brings_the_transcript_to_a_human(self, app: InteractionApplication) -> None:
        chat = app.open_interaction(channel="chatbot", customer_id=TARO, at=at(0))
        app.add_message(chat.id, author_kind="customer", text="I want a refund", at=at(1))
        handed = app.hand_off_to_human(
            chat.id, queue="billing", reason="refund requested", at=at(2)
        )
        assert handed.status is InteractionStatus.QUEUED
        assert handed.queued_at == at(2)
        assert len(handed.transcript) == 1


class TestRefusals:
    @pytest.mark.parametrize(
        "command",
        [
            lambda app, i: app.offer(i, ALICE, at=at(1)),
            lambda app, i: app.decline_offer(i, ALICE, at=at(1)),
            lambda app, i: app.answer(i, ALICE, at=at(1)),
            lambda app, i: app.hold(i, at=at(1)),
            lambda app, i: app.resume(i, at=at(1)),
            lambda app, i: app.transfer(i, reason="x", to_queue="q", at=at(1)),
            lambda app, i: app.escalate(i, reason="x", tier=2, at=at(1)),
            lambda app, i: app.start_wrap_up(i, at=at(1)),
            lambda app, i: app.resolve(i, at=at(1)),
            lambda app, i: app.reopen(i, reason="x", at=at(1)),
            lambda app, i: app.close_interaction(i, at=at(1)),
            lambda app, i: app.abandon(i, at=at(1)),
            lambda app, i: app.bot_contain(i, at=at(1)),
            lambda app, i: app.hand_off_to_human(i, queue="q", reason="x", at=at(1)),
        ],
    )
    def test_commands_out_of_order_store_nothing(
        self, app: InteractionApplication, command: object
    ) -> None:
        interaction = app.open_interaction(channel="phone", at=at(0))
        with refused(app):
            command(app, interaction.id)  # type: ignore[operator]

    def test_a_change_back_in_time_stores_nothing(self, app: InteractionApplication) -> None:
        call = call_in_progress(app)
        with refused(app):
            app.hold(call, at=at(1))

    def test_an_unknown_interaction_is_not_found(self, app: InteractionApplication) -> None:
        with refused(app, NotFound):
            app.hold(uuid4(), at=at(1))

    def test_a_case_is_not_an_interaction(self, app: InteractionApplication) -> None:
        case = app.open_case(subject="x", at=at(0))
        with pytest.raises(NotFound) as missing:
            app.get_interaction(case.id)
        assert missing.value.kind == "interaction"


class TestCases:
    def test_a_case_opened_from_an_interaction_takes_its_customer(
        self, app: InteractionApplication
    ) -> None:
        call = call_in_progress(app)
        case = app.open_case(
            subject="Double charge", reason="billing", interaction_ids=[call], at=at(30)
        )
        assert case.customer_id == TARO
        assert case.interaction_ids == (call,)
        assert app.get_case(case.id) == case
        assert app.get_interaction(call).case_id == case.id

    def test_a_retried_case_request_returns_the_first_case(
        self, app: InteractionApplication
    ) -> None:
        first = app.open_case(subject="Double charge", request_id="form-5", at=at(0))
        before = stored(app)
        assert app.open_case(subject="Double charge", request_id="form-5", at=at(1)) == first
        assert stored(app) == before

    def test_a_repeat_contact_is_linked_to_the_case(self, app: InteractionApplication) -> None:
        first_call = resolved_call(app)
        case = app.open_case(subject="Double charge", interaction_ids=[first_call], at=at(70))
        second_call = app.open_interaction(channel="email", customer_id=TARO, at=at(3_600))
        case = app.link_interaction_to_case(case.id, second_call.id, at=at(3_601))
        assert case.interaction_ids == (first_call, second_call.id)
        assert case.repeat_contact_count == 1
        assert app.get_interaction(second_call.id).case_id == case.id

    def test_an_interaction_already_on_another_case_stores_nothing(
        self, app: InteractionApplication
    ) -> None:
        call = call_in_progress(app)
        app.open_case(subject="First", interaction_ids=[call], at=at(30))
        other = app.open_case(subject="Second", customer_id=TARO, at=at(31))
        with refused(app):
            app.link_interaction_to_case(other.id, call, at=at(32))

    def test_the_first_agent_reply_on_a_case_is_its_first_response(
        self, app: InteractionApplication
    ) -> None:
        case = app.open_case(subject="Double charge", customer_id=TARO, at=at(0))
        email = app.open_interaction(channel="email", customer_id=TARO, case_id=case.id, at=at(1))
        app.queue(email.id, queue="billing", at=at(2))
        app.answer(email.id, ALICE, at=at(300))
        app.add_message(
            email.id, author_kind="agent", author_id=ALICE, text="Note", public=False, at=at(350)
        )
        assert app.get_case(case.id).first_response_at is None
        app.add_message(
            email.id, author_kind="agent", author_id=ALICE, text="We are on it", at=at(400)
        )
        assert app.get_case(case.id).first_response_at == at(400)
        app.add_message(email.id, author_kind="agent", author_id=ALICE, text="Done", at=at(500))
        assert app.get_case(case.id).first_response_at == at(400)

    def test_a_case_moves_through_its_statuses(self, app: InteractionApplication) -> None:
        case = app.open_case(subject="Double charge", customer_id=TARO, at=at(0))
        assert app.change_case_status(case.id, "open", at=at(1)).status is CaseStatus.OPEN
        assert app.change_case_status(case.id, "pending", at=at(2)).status is CaseStatus.PENDING
        assert app.solve_case(case.id, resolution="Refunded", at=at(3)).status is CaseStatus.SOLVED
        reopened = app.reopen_case(case.id, reason="charged again", at=at(3) + timedelta(days=2))
        assert reopened.status is CaseStatus.OPEN
        app.solve_case(case.id, at=at(3) + timedelta(days=3))
        closed = app.close_case(case.id, at=at(3) + timedelta(days=4))
        assert closed.status is CaseStatus.CLOSED
        assert closed == app.get_case(case.id)

    def test_reopening_after_the_window_stores_nothing(self, app: InteractionApplication) -> None:
        case = app.open_case(subject="Double charge", customer_id=TARO, at=at(0))
        app.solve_case(case.id, at=at(10))
        with refused(app):
            app.reopen_case(case.id, at=at(10) + timedelta(days=8))

    def test_an_unknown_case_is_not_found_as_a_case(self, app: InteractionApplication) -> None:
        with pytest.raises(NotFound) as missing:
            app.solve_case(uuid4(), at=at(0))
        assert missing.value.kind == "case"


class TestSurveys:
    def test_a_response_takes_customer_case_agent_and_channel_from_the_interaction(
        self, app: InteractionApplication
    ) -> None:
        call = resolved_call(app)
        response = app.record_survey_response(
            survey_id="post-call-981", kind="csat", score=5, interaction_id=call, at=at(120)
        )
        assert response.id == survey_response_id("post-call-981")
        assert response.customer_id == TARO
        assert response.agent_id == ALICE
        assert response.channel is Channel.PHONE
        assert response.kind is SurveyKind.CSAT
        assert app.get_survey_response(response.id) == response
        assert app.get_survey_response_of("post-call-981") == response

    def test_a_survey_is_answered_once(self, app: InteractionApplication) -> None:
        app.record_survey_response(survey_id="nps-q1-taro", kind="nps", score=9, at=at(0))
        with refused(app, AlreadyExists):
            app.record_survey_response(survey_id="nps-q1-taro", kind="nps", score=3, at=at(1))

    def test_a_score_off_the_scale_stores_nothing(self, app: InteractionApplication) -> None:
        with refused(app, InvalidValue):
            app.record_survey_response(survey_id="ces-1", kind="ces", score=8, at=at(0))

    def test_a_response_about_an_unknown_interaction_stores_nothing(
        self, app: InteractionApplication
    ) -> None:
        with refused(app, NotFound):
            app.record_survey_response(
                survey_id="csat-1", kind="csat", score=4, interaction_id=uuid4(), at=at(0)
            )


class TestFeedback:
    def test_feedback_from_a_survey_comment_takes_its_context(
        self, app: InteractionApplication
    ) -> None:
        call = resolved_call(app)
        response = app.record_survey_response(
            survey_id="csat-981", kind="csat", score=2, comment="Too slow", interaction_id=call
        )
        feedback = app.capture_feedback(
            text="Too slow", source="survey", survey_response_id=response.id
        )
        assert feedback.customer_id == TARO
        assert feedback.interaction_id == call
        assert feedback.channel is Channel.PHONE
        assert app.get_feedback(feedback.id) == feedback

    def test_feedback_is_classified_and_stored(self, app: InteractionApplication) -> None:
        feedback = app.capture_feedback(text="Upload crashes", customer_id=TARO, at=at(0))
        classified = app.classify_feedback(
            feedback.id, set_by="model", category="bug", sentiment="negative", at=at(1)
        )
        assert classified.category is FeedbackCategory.BUG
        assert classified.category_set_by is Setter.MODEL
        assert app.get_feedback(feedback.id) == classified

    def test_a_refused_classification_stores_nothing(self, app: InteractionApplication) -> None:
        feedback = app.capture_feedback(
            text="Upload crashes", category="bug", set_by="agent", at=at(0)
        )
        with refused(app):
            app.classify_feedback(feedback.id, set_by="rule", category="other", at=at(1))

    def test_unknown_feedback_is_not_found(self, app: InteractionApplication) -> None:
        with pytest.raises(NotFound) as missing:
            app.get_feedback(uuid4())
        assert missing.value.kind == "feedback"
