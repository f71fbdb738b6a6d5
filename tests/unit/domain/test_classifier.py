"""The keyword/rule VOC classifier in Japanese and English, and the agent's override."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crmcore.application.interactions import InteractionApplication, survey_feedback_id
from crmcore.domain.classifier import classify
from crmcore.domain.errors import RuleViolation
from crmcore.domain.feedback import (
    Feedback,
    FeedbackCategory,
    Sentiment,
    Setter,
    SurveyKind,
)

AT = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
FEEDBACK = UUID("00000000-0000-4000-8000-0000000feed0")
ALICE = UUID("00000000-0000-4000-8000-00000000a11c")
TARO = UUID("00000000-0000-4000-8000-0000000074a0")

C = FeedbackCategory


class TestCategories:
    @pytest.mark.parametrize(
        ("text", "category"),
        [
            ("The app crashes every time I open it", C.BUG),
            ("アプリが起動しません", C.BUG),
            ("ログインできないのですが", C.BUG),
            ("Terrible service, never again", C.COMPLAINT),
            ("電話がつながらない。最悪です。", C.COMPLAINT),
            ("Please add an export to CSV", C.REQUEST),
            ("ダークモードを追加してほしいです", C.REQUEST),
            ("It would be nice if the page loaded faster", C.SUGGESTION),
            ("画面の文字を大きくしたらどうでしょう。改善を提案します", C.SUGGESTION),
            ("How do I change my delivery address?", C.QUESTION),
            ("請求書の送付先を変更する方法を教えてください", C.QUESTION),
            ("Thank you, the agent was very helpful!", C.PRAISE),
            ("丁寧に対応していただき、ありがとうございました", C.PRAISE),
            ("order 4711", C.OTHER),
        ],
    )
    def test_each_category_in_both_languages(self, text: str, category: FeedbackCategory) -> None:
        assert classify(text).category is category

    def test_a_bug_outranks_thanks_in_the_same_message(self) -> None:
        assert classify("Thanks, but the app still crashes").category is C.BUG

    def test_a_question_mark_alone_loses_to_a_complaint(self) -> None:
        assert classify("Why is it so terrible?").category is C.COMPLAINT

    def test_without_a_category_phrase_a_negative_text_is_a_complaint(self) -> None:
        assert classify("The staff was not helpful at all").category is C.COMPLAINT

    def test_a_negation_inside_a_japanese_phrase_is_no_praise(self) -> None:
        # "満足" is praise; "満足していない" (not satisfied) is longer and wins.
        result = classify("正直、満足していないです")
        assert result.category is C.COMPLAINT
        assert result.sentiment is Sentiment.NEGATIVE

    def test_full_width_letters_are_read_as_ascii(self) -> None:
        assert classify("ＴＨＡＮＫ ＹＯＵ").category is C.PRAISE


class TestSentiment:
    def test_positive_and_negative_words_set_label_and_score(self) -> None:
        happy = classify("Great support, very friendly and quick")
        assert happy.sentiment is Sentiment.POSITIVE
        assert happy.sentiment_score > 0.5
        angry = classify("遅いし、対応もひどい")
        assert angry.sentiment is Sentiment.NEGATIVE
        assert angry.sentiment_score < -0.5

    def test_an_english_negation_flips_the_word_after_it(self) -> None:
        assert classify("not good").sentiment is Sentiment.NEGATIVE
        assert classify("no problem at all").sentiment is Sentiment.POSITIVE

    def test_mixed_words_cancel_out(self) -> None:
        mixed = classify("good price but slow delivery")
        assert mixed.sentiment is Sentiment.NEUTRAL
        assert mixed.sentiment_score == 0.0

    def test_a_survey_score_counts_half(self) -> None:
        assert classify("Too slow", survey=(SurveyKind.CSAT, 2)).sentiment_score == -0.5
        assert classify("", survey=(SurveyKind.NPS, 10)).sentiment_score == 1.0
        # CES 7 means "very easy": positive.
        assert classify("ok", survey=(SurveyKind.CES, 7)).sentiment is Sentiment.POSITIVE

    @given(st.text(max_size=200))
    def test_any_text_gets_a_score_in_range_and_a_matching_label(self, text: str) -> None:
        result = classify(text)
        assert -1.0 <= result.sentiment_score <= 1.0
        if result.sentiment is Sentiment.POSITIVE:
            assert result.sentiment_score > 0
        if result.sentiment is Sentiment.NEGATIVE:
            assert result.sentiment_score < 0


class TestTopics:
    def test_topics_in_order_of_mention(self) -> None:
        assert classify("The invoice was wrong and now I want a refund").topics == (
            "billing",
            "refund",
        )
        assert classify("荷物が届かないし、電話もつながらない").topics == ("delivery", "wait-time")

    def test_english_words_match_whole_words_only(self) -> None:
        # "happy" contains "app"; "applause" too: neither is about the app.
        assert "app" not in classify("happy applause").topics
        assert classify("The app froze").topics == ("app",)


class TestCapturingAndOverriding:
    def test_what_the_caller_did_not_say_is_set_by_rule(self) -> None:
        captured = Feedback.capture(
            feedback_id=FEEDBACK,
            text="配送が遅すぎる。最悪",
            category="complaint",
            set_by="agent",
            by_rule=classify("配送が遅すぎる。最悪"),
            at=AT,
        )
        assert (captured.category, captured.category_set_by) == (C.COMPLAINT, Setter.AGENT)
        assert (captured.sentiment, captured.sentiment_set_by) == (
            Sentiment.NEGATIVE,
            Setter.RULE,
        )
        assert (captured.topics, captured.topics_set_by) == (("delivery",), Setter.RULE)

    def test_an_agent_overrides_the_rules_and_the_rules_cannot_take_it_back(self) -> None:
        feedback = Feedback.capture(
            feedback_id=FEEDBACK, text="Great", by_rule=classify("Great"), at=AT
        ).mutate(None)
        assert (feedback.category, feedback.category_set_by) == (C.PRAISE, Setter.RULE)
        corrected = feedback.classify(
            set_by="agent", category="complaint", at=AT + timedelta(minutes=1)
        ).mutate(feedback)
        assert (corrected.category, corrected.category_set_by) == (C.COMPLAINT, Setter.AGENT)
        with pytest.raises(RuleViolation):
            corrected.classify(set_by="rule", category="praise", at=AT + timedelta(minutes=2))


class TestTheApplicationClassifies:
    def test_captured_feedback_is_classified_by_rule(self) -> None:
        app = InteractionApplication()
        feedback = app.capture_feedback(text="The app crashes on login", at=AT)
        assert (feedback.category, feedback.category_set_by) == (C.BUG, Setter.RULE)
        assert feedback.topics == ("app", "account")

    def test_a_survey_comment_becomes_feedback_in_the_same_transaction(self) -> None:
        app = InteractionApplication()
        response = app.record_survey_response(
            survey_id="csat-1",
            kind="csat",
            score=1,
            comment="電話がつながらない",
            customer_id=TARO,
            capture_comment=True,
            at=AT,
        )
        feedback = app.get_feedback(survey_feedback_id(response.id))
        assert feedback.survey_response_id == response.id
        assert feedback.customer_id == TARO
        assert (feedback.category, feedback.sentiment) == (C.COMPLAINT, Sentiment.NEGATIVE)
        assert app.recorder.max_notification_id() == 2

    def test_an_agent_tags_a_transcript_with_the_customers_own_words(self) -> None:
        app = InteractionApplication()
        chat = app.open_interaction(channel="chat", customer_id=TARO, at=AT)
        app.add_message(chat.id, author_kind="customer", text="返金してほしい", at=AT)
        app.add_message(chat.id, author_kind="agent", author_id=ALICE, text="承知しました", at=AT)
        app.add_message(chat.id, author_kind="customer", text="早めにお願いします", at=AT)
        feedback = app.capture_feedback(
            text="",
            source="transcript",
            interaction_id=chat.id,
            category="request",
            set_by="agent",
            at=AT,
        )
        assert feedback.text == "返金してほしい\n早めにお願いします"
        assert (feedback.category, feedback.category_set_by) == (C.REQUEST, Setter.AGENT)
        assert feedback.topics == ("refund",)
