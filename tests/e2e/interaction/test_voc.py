"""Surveys and VOC feedback over real gRPC: CSAT, NPS, CES responses tied to interaction,
case and agent; one response per survey; classification by rule and by agent."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING

import grpc
import pytest

from crm.v1 import common_pb2, interaction_pb2, interaction_pb2_grpc
from services.interaction.bootstrap import InteractionService
from tests.e2e.interaction.conftest import refused, stored_position

pb = interaction_pb2
if TYPE_CHECKING:
    Stub = interaction_pb2_grpc.InteractionServiceAsyncStub

ALICE = "00000000-0000-4000-8000-00000000a11c"
TARO = "00000000-0000-4000-8000-0000000074a0"
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
EXISTS = grpc.StatusCode.ALREADY_EXISTS


async def expect(
    service: InteractionService,
    call: Awaitable[object],
    code: grpc.StatusCode,
    field: str | None = None,
) -> None:
    before = stored_position(service)
    refusal = await refused(call)
    assert refusal.code == code, refusal
    if field is not None:
        assert refusal.fields == (field,), refusal
    assert stored_position(service) == before


async def handled_chat(stub: Stub) -> tuple[pb.Interaction, pb.Case]:
    """A chat with Taro that Alice answered and resolved, in a case."""
    chat = await stub.OpenInteraction(
        pb.OpenInteractionRequest(channel=common_pb2.CHANNEL_CHAT, customer_id=TARO)
    )
    case = await stub.OpenCase(pb.OpenCaseRequest(subject="Refund", interaction_ids=[chat.id]))
    await stub.QueueInteraction(pb.QueueInteractionRequest(interaction_id=chat.id, queue="q"))
    await stub.AnswerInteraction(
        pb.AnswerInteractionRequest(interaction_id=chat.id, agent_id=ALICE)
    )
    await stub.AddMessage(
        pb.AddMessageRequest(
            interaction_id=chat.id, author_kind=pb.AUTHOR_KIND_CUSTOMER, text="返金はまだですか？"
        )
    )
    await stub.ResolveInteraction(pb.ResolveInteractionRequest(interaction_id=chat.id))
    return chat, case


class TestSurveys:
    async def test_a_response_is_tied_to_interaction_case_agent_and_channel(
        self, stub: Stub
    ) -> None:
        chat, case = await handled_chat(stub)
        response = await stub.RecordSurveyResponse(
            pb.RecordSurveyResponseRequest(
                survey_id="csat-2025-0001",
                kind=pb.SURVEY_KIND_CSAT,
                score=5,
                interaction_id=chat.id,
            )
        )
        assert (response.customer_id, response.case_id, response.agent_id) == (
            TARO,
            case.id,
            ALICE,
        )
        assert (response.channel, response.score, response.feedback_id) == (
            common_pb2.CHANNEL_CHAT,
            5,
            "",
        )
        for request in (
            pb.GetSurveyResponseRequest(id=response.id),
            pb.GetSurveyResponseRequest(survey_id="csat-2025-0001"),
        ):
            assert await stub.GetSurveyResponse(request) == response

    async def test_a_comment_becomes_classified_feedback(self, stub: Stub) -> None:
        chat, _ = await handled_chat(stub)
        response = await stub.RecordSurveyResponse(
            pb.RecordSurveyResponseRequest(
                survey_id="nps-7",
                kind=pb.SURVEY_KIND_NPS,
                score=2,
                comment="電話がつながらない。最悪です。",
                interaction_id=chat.id,
            )
        )
        assert response.feedback_id
        feedback = await stub.GetFeedback(pb.GetFeedbackRequest(id=response.feedback_id))
        assert (feedback.source, feedback.survey_response_id) == (
            pb.FEEDBACK_SOURCE_SURVEY,
            response.id,
        )
        assert (feedback.category, feedback.category_set_by) == (
            pb.FEEDBACK_CATEGORY_COMPLAINT,
            pb.SETTER_RULE,
        )
        assert feedback.sentiment == pb.SENTIMENT_NEGATIVE
        assert list(feedback.topics) == ["wait-time"]
        again = await stub.GetSurveyResponse(pb.GetSurveyResponseRequest(survey_id="nps-7"))
        assert again.feedback_id == response.feedback_id

    @pytest.mark.parametrize(
        ("kind", "low", "high"),
        [(pb.SURVEY_KIND_CSAT, 1, 5), (pb.SURVEY_KIND_NPS, 0, 10), (pb.SURVEY_KIND_CES, 1, 7)],
    )
    async def test_scores_outside_the_scale_are_invalid(
        self,
        interaction_service: InteractionService,
        stub: Stub,
        kind: pb.SurveyKind.ValueType,
        low: int,
        high: int,
    ) -> None:
        for score in (low, high):
            await stub.RecordSurveyResponse(
                pb.RecordSurveyResponseRequest(survey_id=f"{kind}-{score}", kind=kind, score=score)
            )
        for score in (low - 1, high + 1):
            await expect(
                interaction_service,
                stub.RecordSurveyResponse(
                    pb.RecordSurveyResponseRequest(survey_id=f"x{score}", kind=kind, score=score)
                ),
                INVALID,
                "score",
            )

    async def test_a_survey_is_answered_once(
        self, interaction_service: InteractionService, stub: Stub
    ) -> None:
        request = pb.RecordSurveyResponseRequest(
            survey_id="ces-1", kind=pb.SURVEY_KIND_CES, score=6, comment="Easy"
        )
        await stub.RecordSurveyResponse(request)
        await expect(interaction_service, stub.RecordSurveyResponse(request), EXISTS)

    async def test_refusals(self, interaction_service: InteractionService, stub: Stub) -> None:
        for call, code, field in (
            (
                stub.RecordSurveyResponse(pb.RecordSurveyResponseRequest(survey_id="s", score=3)),
                INVALID,
                "kind",
            ),
            (
                stub.RecordSurveyResponse(
                    pb.RecordSurveyResponseRequest(kind=pb.SURVEY_KIND_CSAT, score=3)
                ),
                INVALID,
                "survey_id",
            ),
            (
                stub.RecordSurveyResponse(
                    pb.RecordSurveyResponseRequest(
                        survey_id="s", kind=pb.SURVEY_KIND_CSAT, score=3, agent_id="alice"
                    )
                ),
                INVALID,
                "agent_id",
            ),
            (
                stub.RecordSurveyResponse(
                    pb.RecordSurveyResponseRequest(
                        survey_id="s", kind=pb.SURVEY_KIND_CSAT, score=3, interaction_id=UNKNOWN_ID
                    )
                ),
                NOT_FOUND,
                None,
            ),
            (stub.GetSurveyResponse(pb.GetSurveyResponseRequest()), INVALID, "id"),
            (
                stub.GetSurveyResponse(pb.GetSurveyResponseRequest(id=UNKNOWN_ID, survey_id="s")),
                INVALID,
                "id",
            ),
            (stub.GetSurveyResponse(pb.GetSurveyResponseRequest(id="x")), INVALID, "id"),
            (
                stub.GetSurveyResponse(pb.GetSurveyResponseRequest(survey_id="never")),
                NOT_FOUND,
                None,
            ),
        ):
            await expect(interaction_service, call, code, field)


class TestFeedback:
    async def test_a_complaint_is_classified_by_rule(self, stub: Stub) -> None:
        feedback = await stub.CaptureFeedback(
            pb.CaptureFeedbackRequest(
                text="The app crashes when I try to pay", source=pb.FEEDBACK_SOURCE_COMPLAINT
            )
        )
        assert (feedback.category, feedback.category_set_by) == (
            pb.FEEDBACK_CATEGORY_BUG,
            pb.SETTER_RULE,
        )
        assert feedback.sentiment == pb.SENTIMENT_NEGATIVE
        assert feedback.HasField("sentiment_score")
        assert feedback.sentiment_score < 0
        assert list(feedback.topics) == ["app", "billing"]

    async def test_an_agent_tags_a_transcript(self, stub: Stub) -> None:
        chat, case = await handled_chat(stub)
        feedback = await stub.CaptureFeedback(
            pb.CaptureFeedbackRequest(
                source=pb.FEEDBACK_SOURCE_TRANSCRIPT,
                interaction_id=chat.id,
                category=pb.FEEDBACK_CATEGORY_QUESTION,
                topics=["refund"],
            )
        )
        assert feedback.text == "返金はまだですか？"
        assert (feedback.customer_id, feedback.case_id, feedback.channel) == (
            TARO,
            case.id,
            common_pb2.CHANNEL_CHAT,
        )
        assert (feedback.category_set_by, feedback.topics_set_by, feedback.sentiment_set_by) == (
            pb.SETTER_AGENT,
            pb.SETTER_AGENT,
            pb.SETTER_RULE,
        )

    async def test_an_agent_overrides_the_rule_and_the_rule_cannot_take_it_back(
        self, interaction_service: InteractionService, stub: Stub
    ) -> None:
        feedback = await stub.CaptureFeedback(pb.CaptureFeedbackRequest(text="Great, thanks"))
        assert feedback.category == pb.FEEDBACK_CATEGORY_PRAISE
        corrected = await stub.ClassifyFeedback(
            pb.ClassifyFeedbackRequest(
                feedback_id=feedback.id,
                set_by=pb.SETTER_AGENT,
                category=pb.FEEDBACK_CATEGORY_COMPLAINT,
                sentiment=pb.SENTIMENT_NEGATIVE,
                sentiment_score=-0.8,
                topics=["sarcasm"],
                set_topics=True,
            )
        )
        assert (corrected.category, corrected.category_set_by) == (
            pb.FEEDBACK_CATEGORY_COMPLAINT,
            pb.SETTER_AGENT,
        )
        assert (corrected.sentiment_score, list(corrected.topics)) == (-0.8, ["sarcasm"])
        assert await stub.GetFeedback(pb.GetFeedbackRequest(id=feedback.id)) == corrected
        await expect(
            interaction_service,
            stub.ClassifyFeedback(
                pb.ClassifyFeedbackRequest(
                    feedback_id=feedback.id,
                    set_by=pb.SETTER_RULE,
                    category=pb.FEEDBACK_CATEGORY_PRAISE,
                )
            ),
            PRECONDITION,
        )

    async def test_refusals(self, interaction_service: InteractionService, stub: Stub) -> None:
        feedback = await stub.CaptureFeedback(pb.CaptureFeedbackRequest(text="ok"))
        for call, code, field in (
            (stub.CaptureFeedback(pb.CaptureFeedbackRequest()), INVALID, "text"),
            (
                stub.CaptureFeedback(
                    pb.CaptureFeedbackRequest(text="t", source=pb.FeedbackSource.ValueType(9))
                ),
                INVALID,
                "source",
            ),
            (
                stub.CaptureFeedback(pb.CaptureFeedbackRequest(text="t", sentiment_score=0.5)),
                INVALID,
                "sentiment",
            ),
            (
                stub.CaptureFeedback(
                    pb.CaptureFeedbackRequest(
                        text="t", sentiment=pb.SENTIMENT_POSITIVE, sentiment_score=2.0
                    )
                ),
                INVALID,
                "sentiment_score",
            ),
            (
                stub.CaptureFeedback(
                    pb.CaptureFeedbackRequest(text="t", interaction_id=UNKNOWN_ID)
                ),
                NOT_FOUND,
                None,
            ),
            (
                stub.CaptureFeedback(
                    pb.CaptureFeedbackRequest(text="t", survey_response_id=UNKNOWN_ID)
                ),
                NOT_FOUND,
                None,
            ),
            (
                stub.ClassifyFeedback(
                    pb.ClassifyFeedbackRequest(
                        feedback_id=feedback.id, category=pb.FEEDBACK_CATEGORY_BUG
                    )
                ),
                INVALID,
                "set_by",
            ),
            (
                stub.ClassifyFeedback(
                    pb.ClassifyFeedbackRequest(feedback_id=feedback.id, set_by=pb.SETTER_AGENT)
                ),
                INVALID,
                "category",
            ),
            (
                stub.ClassifyFeedback(
                    pb.ClassifyFeedbackRequest(
                        feedback_id=UNKNOWN_ID,
                        set_by=pb.SETTER_AGENT,
                        category=pb.FEEDBACK_CATEGORY_BUG,
                    )
                ),
                NOT_FOUND,
                None,
            ),
            (stub.GetFeedback(pb.GetFeedbackRequest(id="f")), INVALID, "id"),
            (stub.GetFeedback(pb.GetFeedbackRequest(id=UNKNOWN_ID)), NOT_FOUND, None),
        ):
            await expect(interaction_service, call, code, field)
