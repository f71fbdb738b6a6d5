"""Voice of the customer: survey responses on their scales, feedback and who classified it."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crmcore.domain.errors import InvalidValue, RuleViolation
from crmcore.domain.feedback import (
    SURVEY_SCALES,
    Feedback,
    FeedbackCaptured,
    FeedbackCategory,
    FeedbackClassified,
    FeedbackSource,
    Sentiment,
    Setter,
    SurveyAnswered,
    SurveyKind,
    SurveyResponse,
    survey_response_id,
)
from crmcore.domain.values import Channel

MONDAY_9AM = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
TARO = UUID("00000000-0000-4000-8000-0000000074a0")
ALICE = UUID("00000000-0000-4000-8000-00000000a11c")
CALL = UUID("00000000-0000-4000-8000-000000000001")

kinds = st.sampled_from(list(SurveyKind))


def at(minutes: float) -> datetime:
    return MONDAY_9AM + timedelta(minutes=minutes)


def captured(**kwargs: object) -> Feedback:
    event = Feedback.capture(
        feedback_id=uuid4(),
        text="The app crashes when I upload a receipt",
        customer_id=TARO,
        at=MONDAY_9AM,
        **kwargs,  # type: ignore[arg-type]
    )
    return event.mutate(None)


class TestSurveyScales:
    @given(kinds, st.data())
    def test_a_score_on_the_scale_of_its_kind_is_recorded(
        self, kind: SurveyKind, data: st.DataObject
    ) -> None:
        low, high = SURVEY_SCALES[kind]
        score = data.draw(st.integers(low, high))
        event = SurveyResponse.answer(survey_id="survey-77", kind=kind, score=score, at=MONDAY_9AM)
        response = event.mutate(None)
        assert response.score == score
        assert response.kind is kind

    @given(kinds, st.data())
    def test_a_score_off_the_scale_is_refused_naming_score(
        self, kind: SurveyKind, data: st.DataObject
    ) -> None:
        low, high = SURVEY_SCALES[kind]
        score = data.draw(st.integers().filter(lambda value: not low <= value <= high))
        with pytest.raises(InvalidValue) as refused:
            SurveyResponse.answer(survey_id="survey-77", kind=kind, score=score, at=MONDAY_9AM)
        assert refused.value.field == "score"

    def test_the_scales_are_csat_1_5_nps_0_10_ces_1_7(self) -> None:
        assert dict(SURVEY_SCALES) == {
            SurveyKind.CSAT: (1, 5),
            SurveyKind.NPS: (0, 10),
            SurveyKind.CES: (1, 7),
        }

    def test_an_unknown_kind_is_refused(self) -> None:
        with pytest.raises(InvalidValue) as refused:
            SurveyResponse.answer(survey_id="s", kind="stars", score=3, at=MONDAY_9AM)
        assert refused.value.field == "kind"


class TestSurveyResponses:
    def test_a_response_is_tied_to_interaction_case_agent_and_customer(self) -> None:
        event = SurveyResponse.answer(
            survey_id="survey-77",
            kind="csat",
            score=4,
            comment="  Quick and kind ",
            customer_id=TARO,
            interaction_id=CALL,
            agent_id=ALICE,
            channel="phone",
            at=MONDAY_9AM,
        )
        response = event.mutate(None)
        assert response.comment == "Quick and kind"
        assert response.interaction_id == CALL
        assert response.agent_id == ALICE
        assert response.channel is Channel.PHONE

    def test_the_response_id_derives_from_the_survey_so_each_survey_is_answered_once(
        self,
    ) -> None:
        event = SurveyResponse.answer(survey_id="survey-77", kind="nps", score=9, at=MONDAY_9AM)
        assert event.originator_id == survey_response_id("survey-77")
        assert survey_response_id("survey-77") != survey_response_id("survey-78")

    @pytest.mark.parametrize("kind", list(SurveyKind))
    def test_responses_are_published_by_kind(self, kind: SurveyKind) -> None:
        event = SurveyResponse.answer(
            survey_id="s", kind=kind, score=SURVEY_SCALES[kind][0], customer_id=TARO, at=MONDAY_9AM
        )
        assert isinstance(event, SurveyAnswered)
        assert event.bus_subject() == f"crm.voc.survey.{kind}"
        assert event.bus_attributes()["customerid"] == str(TARO)

    def test_a_blank_survey_id_is_refused(self) -> None:
        with pytest.raises(InvalidValue) as refused:
            SurveyResponse.answer(survey_id=" ", kind="csat", score=3, at=MONDAY_9AM)
        assert refused.value.field == "survey_id"


class TestCapturingFeedback:
    def test_unclassified_feedback_is_other_and_neutral_by_rule(self) -> None:
        feedback = captured()
        assert feedback.source is FeedbackSource.OTHER
        assert feedback.category is FeedbackCategory.OTHER
        assert feedback.category_set_by is Setter.RULE
        assert feedback.sentiment is Sentiment.NEUTRAL
        assert feedback.sentiment_score is None
        assert feedback.sentiment_set_by is Setter.RULE
        assert feedback.topics == ()

    def test_a_classification_given_at_capture_is_set_by_whoever_gave_it(self) -> None:
        feedback = captured(
            source="complaint",
            category="bug",
            sentiment="negative",
            sentiment_score=-0.8,
            topics=["Receipts", "upload"],
            set_by="agent",
        )
        assert feedback.source is FeedbackSource.COMPLAINT
        assert feedback.category is FeedbackCategory.BUG
        assert feedback.category_set_by is Setter.AGENT
        assert feedback.sentiment is Sentiment.NEGATIVE
        assert feedback.sentiment_score == -0.8
        assert feedback.topics == ("receipts", "upload")
        assert feedback.topics_set_by is Setter.AGENT

    def test_what_is_not_given_stays_with_the_rule(self) -> None:
        feedback = captured(category="bug", set_by="model")
        assert feedback.category_set_by is Setter.MODEL
        assert feedback.sentiment_set_by is Setter.RULE

    @pytest.mark.parametrize(
        ("field", "kwargs"),
        [
            ("category", {"category": "rant"}),
            ("sentiment", {"sentiment": "furious"}),
            ("source", {"source": "pigeon"}),
            ("set_by", {"set_by": "oracle"}),
            ("sentiment", {"sentiment_score": 0.5}),
        ],
    )
    def test_unknown_values_are_refused(self, field: str, kwargs: dict[str, object]) -> None:
        with pytest.raises(InvalidValue) as refused:
            captured(**kwargs)
        assert refused.value.field == field

    @given(
        st.floats(allow_nan=True, allow_infinity=True).filter(
            lambda value: math.isnan(value) or not -1.0 <= value <= 1.0
        )
    )
    def test_a_sentiment_score_outside_minus_one_to_one_is_refused(self, score: float) -> None:
        with pytest.raises(InvalidValue) as refused:
            captured(sentiment="negative", sentiment_score=score)
        assert refused.value.field == "sentiment_score"

    def test_empty_feedback_is_refused(self) -> None:
        with pytest.raises(InvalidValue) as refused:
            Feedback.capture(feedback_id=uuid4(), text="  ", at=MONDAY_9AM)
        assert refused.value.field == "text"


class TestClassifying:
    def test_a_model_classifies_what_a_rule_had_defaulted(self) -> None:
        feedback = captured()
        event = feedback.classify(
            set_by="model", category="bug", sentiment="negative", sentiment_score=-0.6, at=at(1)
        )
        feedback = event.mutate(feedback)
        assert feedback.category is FeedbackCategory.BUG
        assert feedback.category_set_by is Setter.MODEL
        assert feedback.sentiment_score == -0.6
        assert feedback.topics_set_by is Setter.RULE
        assert isinstance(event, FeedbackClassified)
        assert event.previous_category is FeedbackCategory.OTHER

    def test_a_model_does_not_overwrite_an_agents_correction(self) -> None:
        feedback = captured()
        feedback = feedback.classify(set_by="agent", category="complaint", at=at(1)).mutate(
            feedback
        )
        with pytest.raises(RuleViolation, match="set by agent"):
            feedback.classify(set_by="model", category="bug", at=at(2))
        # but the model may still set what nobody above it touched
        feedback = feedback.classify(set_by="model", topics=["receipts"], at=at(2)).mutate(feedback)
        assert feedback.category is FeedbackCategory.COMPLAINT
        assert feedback.topics == ("receipts",)

    def test_a_rule_does_not_overwrite_a_model(self) -> None:
        feedback = captured(sentiment="negative", set_by="model")
        with pytest.raises(RuleViolation):
            feedback.classify(set_by="rule", sentiment="neutral", at=at(1))

    def test_an_agent_confirming_a_models_value_takes_it_over(self) -> None:
        feedback = captured(category="bug", set_by="model")
        feedback = feedback.classify(set_by="agent", category="bug", at=at(1)).mutate(feedback)
        assert feedback.category_set_by is Setter.AGENT

    def test_a_classification_that_changes_nothing_is_refused(self) -> None:
        feedback = captured(category="bug", set_by="model")
        with pytest.raises(RuleViolation, match="already"):
            feedback.classify(set_by="model", category="bug", at=at(1))

    def test_a_classification_names_something_to_set(self) -> None:
        with pytest.raises(InvalidValue):
            captured().classify(set_by="agent", at=at(1))


class TestFeedbackOnTheBus:
    def test_feedback_is_published_by_category_with_customer_category_and_sentiment(
        self,
    ) -> None:
        event = Feedback.capture(
            feedback_id=uuid4(),
            text="Please add dark mode",
            customer_id=TARO,
            category="suggestion",
            sentiment="positive",
            set_by="customer",
            at=MONDAY_9AM,
        )
        assert isinstance(event, FeedbackCaptured)
        assert event.bus_subject() == "crm.voc.feedback.suggestion"
        assert event.bus_attributes() == {
            "customerid": str(TARO),
            "voccategory": "suggestion",
            "vocsentiment": "positive",
        }

    def test_a_reclassification_is_published_under_the_new_category(self) -> None:
        feedback = captured()
        event = feedback.classify(set_by="model", category="bug", at=at(1))
        assert event.bus_subject() == "crm.voc.feedback.bug"
        assert event.text == feedback.text

    def test_anonymous_feedback_has_no_customer_attribute(self) -> None:
        event = Feedback.capture(feedback_id=uuid4(), text="Great!", at=MONDAY_9AM)
        assert "customerid" not in event.bus_attributes()
