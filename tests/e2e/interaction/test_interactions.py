"""Every interaction RPC through a real server and client, including every error path.

Each refusal is checked for its status code, the field its BadRequest details name (for
INVALID_ARGUMENT), and that nothing was stored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING
from uuid import UUID

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from crm.v1 import common_pb2, interaction_pb2, interaction_pb2_grpc
from crmcore.adapters.grpc.channels import open_channel
from services.interaction.bootstrap import SERVICE_NAME, InteractionService
from tests.e2e.interaction.conftest import refused, stored_position

pb = interaction_pb2
if TYPE_CHECKING:
    Stub = interaction_pb2_grpc.InteractionServiceAsyncStub

ALICE = "00000000-0000-4000-8000-00000000a11c"
BOB = "00000000-0000-4000-8000-000000000b0b"
TARO = "00000000-0000-4000-8000-0000000074a0"
HANAKO = "00000000-0000-4000-8000-0000000da4a0"
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
S = pb.InteractionStatus


async def expect(
    service: InteractionService,
    call: Awaitable[object],
    code: grpc.StatusCode,
    field: str | None = None,
) -> str:
    """The call is refused with `code` (naming `field`) and stores nothing; the message."""
    before = stored_position(service)
    refusal = await refused(call)
    assert refusal.code == code, refusal
    if field is not None:
        assert refusal.fields == (field,), refusal
    assert stored_position(service) == before
    return refusal.message


async def open_call(stub: Stub, **fields: object) -> pb.Interaction:
    request = pb.OpenInteractionRequest(channel=common_pb2.CHANNEL_PHONE, **fields)  # type: ignore[arg-type]
    return await stub.OpenInteraction(request)


async def queued_call(stub: Stub, **fields: object) -> pb.Interaction:
    call = await open_call(stub, customer_id=TARO, contact_reason="billing", **fields)
    return await stub.QueueInteraction(
        pb.QueueInteractionRequest(interaction_id=call.id, queue="billing")
    )


async def active_call(stub: Stub, agent: str = ALICE) -> pb.Interaction:
    call = await queued_call(stub)
    return await stub.AnswerInteraction(
        pb.AnswerInteractionRequest(interaction_id=call.id, agent_id=agent)
    )


class TestOpenInteraction:
    async def test_an_anonymous_call_is_opened(self, stub: Stub) -> None:
        call = await open_call(stub, contact_reason="billing", tags=["VIP", "vip"])
        assert UUID(call.id)
        assert (call.status, call.channel, call.direction) == (
            S.INTERACTION_STATUS_CREATED,
            common_pb2.CHANNEL_PHONE,
            common_pb2.DIRECTION_INBOUND,
        )
        assert (call.customer_id, call.contact_reason, list(call.tags)) == ("", "billing", ["vip"])
        assert call.HasField("create_time")
        assert not call.HasField("queue_time")
        assert call.etag == "1"

    async def test_an_outbound_call_back_for_a_known_customer(self, stub: Stub) -> None:
        call = await open_call(stub, customer_id=TARO, direction=common_pb2.DIRECTION_OUTBOUND)
        assert (call.customer_id, call.direction) == (TARO, common_pb2.DIRECTION_OUTBOUND)

    async def test_a_chatbot_conversation_is_handled_by_the_bot(self, stub: Stub) -> None:
        chat = await stub.OpenInteraction(
            pb.OpenInteractionRequest(channel=common_pb2.CHANNEL_CHATBOT)
        )
        assert chat.handled_by_bot

    async def test_the_same_request_id_returns_the_first_interaction(
        self, interaction_service: InteractionService, stub: Stub
    ) -> None:
        first = await open_call(stub, request_id="cti-call-42")
        stored = stored_position(interaction_service)
        again = await open_call(stub, request_id="cti-call-42")
        assert again.id == first.id
        assert stored_position(interaction_service) == stored

    @pytest.mark.parametrize(
        ("fields", "field"),
        [
            ({"channel": common_pb2.CHANNEL_UNSPECIFIED}, "channel"),
            ({"channel": 99}, "channel"),
            ({"direction": 7}, "direction"),
            ({"customer_id": "taro"}, "customer_id"),
            ({"case_id": "123"}, "case_id"),
            ({"contact_reason": "x" * 201}, "contact_reason"),
            ({"tags": ["ok", " "]}, "tags[1]"),
            ({"request_id": "r" * 129}, "request_id"),
        ],
    )
    async def test_invalid_input_is_refused_naming_the_field(
        self,
        interaction_service: InteractionService,
        stub: Stub,
        fields: dict[str, object],
        field: str,
    ) -> None:
        request = pb.OpenInteractionRequest(channel=common_pb2.CHANNEL_PHONE)
        for key, value in fields.items():
            if isinstance(value, list):
                getattr(request, key).extend(value)
            else:
                setattr(request, key, value)
        await expect(interaction_service, stub.OpenInteraction(request), INVALID, field)

    async def test_an_unknown_case_is_not_found(
        self, interaction_service: InteractionService, stub: Stub
    ) -> None:
        await expect(interaction_service, open_call(stub, case_id=UNKNOWN_ID), NOT_FOUND)


class TestGetAndList:
    async def test_get_returns_the_whole_transcript(self, stub: Stub) -> None:
        call = await active_call(stub)
        await stub.AddMessage(
            pb.AddMessageRequest(
                interaction_id=call.id,
                author_kind=pb.AUTHOR_KIND_CUSTOMER,
                text="請求書が二重に届きました",
            )
        )
        await stub.AddMessage(
            pb.AddMessageRequest(
                interaction_id=call.id,
                author_kind=pb.AUTHOR_KIND_AGENT,
                author_id=ALICE,
                text="Customer is upset",
                internal=True,
            )
        )
        got = await stub.GetInteraction(pb.GetInteractionRequest(id=call.id))
        assert [(e.author_kind, e.text, e.public) for e in got.transcript] == [
            (pb.AUTHOR_KIND_CUSTOMER, "請求書が二重に届きました", True),
            (pb.AUTHOR_KIND_AGENT, "Customer is upset", False),
        ]
        assert got.transcript[1].author_id == ALICE

    async def test_get_refuses_bad_and_unknown_ids(
        self, interaction_service: InteractionService, stub: Stub
    ) -> None:
        await expect(
            interaction_service,
            stub.GetInteraction(pb.GetInteractionRequest(id="x")),
            INVALID,
            "id",
        )
        await expect(
            interaction_service, stub.GetInteraction(pb.GetInteractionRequest()), INVALID, "id"
        )
        await expect(
            interaction_service,
            stub.GetInteraction(pb.GetInteractionRequest(id=UNKNOWN_ID)),
            NOT_FOUND,
        )

    async def test_list_by_customer_agent_and_status_in_pages(self, stub: Stub) -> None:
        alices = [await active_call(stub, ALICE) for _ in range(3)]
        bobs = await active_call(stub, BOB)
        await open_call(stub, customer_id=HANAKO)
        page = await stub.ListInteractions(pb.ListInteractionsRequest(agent_id=ALICE, page_size=2))
        assert [each.id for each in page.interactions] == [alices[2].id, alices[1].id]
        assert all(not each.transcript for each in page.interactions)
        rest = await stub.ListInteractions(
            pb.ListInteractionsRequest(agent_id=ALICE, page_size=2, page_token=page.next_page_token)
        )
        assert [each.id for each in rest.interactions] == [alices[0].id]
        assert rest.next_page_token == ""
        of_taro = await stub.ListInteractions(
            pb.ListInteractionsRequest(
                customer_id=TARO, status=S.INTERACTION_STATUS_ACTIVE, page_size=10
            )
        )
        assert {each.id for each in of_taro.interactions} == {bobs.id, *(a.id for a in alices)}

    async def test_the_full_view_includes_transcripts(self, stub: Stub) -> None:
        call = await active_call(stub)
        await stub.AddMessage(
            pb.AddMessageRequest(
                interaction_id=call.id, author_kind=pb.AUTHOR_KIND_AGENT, author_id=ALICE, text="Hi"
            )
        )
        page = await stub.ListInteractions(
            pb.ListInteractionsRequest(customer_id=TARO, view=pb.INTERACTION_VIEW_FULL)
        )
        assert [entry.text for entry in page.interactions[0].transcript] == ["Hi"]

    @pytest.mark.parametrize(
        ("request_fields", "field"),
        [
            ({"page_size": -1}, "page_size"),
            ({"page_token": "garbage"}, "page_token"),
            ({"customer_id": "taro"}, "customer_id"),
            ({"case_id": "c"}, "case_id"),
            ({"agent_id": "a"}, "agent_id"),
            ({"status": 42}, "status"),
            ({"view": 9}, "view"),
        ],
    )
    async def test_list_refuses_bad_filters(
        self,
        interaction_service: InteractionService,
        stub: Stub,
        request_fields: dict[str, object],
        field: str,
    ) -> None:
        request = pb.ListInteractionsRequest(**request_fields)  # type: ignore[arg-type]
        await expect(interaction_service, stub.ListInteractions(request), INVALID, field)


class TestTheLifecycle:
    async def test_queue_answer_hold_resume_wrap_up_resolve_close(self, stub: Stub) -> None:
        call = await open_call(stub, customer_id=TARO)
        queued = await stub.QueueInteraction(
            pb.QueueInteractionRequest(
                interaction_id=call.id,
                queue="billing",
                requirements=pb.QueueRequirements(
                    skills=[pb.RequiredSkill(skill="Billing", min_level=3)],
                    language="JA",
                    priority=5,
                    last_agent_id=BOB,
                ),
            )
        )
        assert (queued.status, queued.queue) == (S.INTERACTION_STATUS_QUEUED, "billing")
        assert [(s.skill, s.min_level) for s in queued.requirements.skills] == [("billing", 3)]
        assert (queued.requirements.language, queued.requirements.priority) == ("ja", 5)
        assert queued.requirements.last_agent_id == BOB
        assert queued.HasField("queue_time")

        offered = await stub.OfferInteraction(
            pb.OfferInteractionRequest(interaction_id=call.id, agent_id=ALICE)
        )
        assert (offered.status, offered.offered_agent_id) == (S.INTERACTION_STATUS_OFFERED, ALICE)
        answered = await stub.AnswerInteraction(
            pb.AnswerInteractionRequest(interaction_id=call.id, agent_id=ALICE)
        )
        assert (answered.status, answered.agent_id, list(answered.agent_ids)) == (
            S.INTERACTION_STATUS_ACTIVE,
            ALICE,
            [ALICE],
        )
        held = await stub.HoldInteraction(pb.HoldInteractionRequest(interaction_id=call.id))
        assert held.status == S.INTERACTION_STATUS_ON_HOLD
        assert held.HasField("hold_start_time")
        resumed = await stub.ResumeInteraction(pb.ResumeInteractionRequest(interaction_id=call.id))
        assert resumed.status == S.INTERACTION_STATUS_ACTIVE
        assert resumed.hold_seconds >= 0
        wrapping = await stub.StartWrapUp(pb.StartWrapUpRequest(interaction_id=call.id))
        assert wrapping.status == S.INTERACTION_STATUS_WRAP_UP
        resolved = await stub.ResolveInteraction(
            pb.ResolveInteractionRequest(
                interaction_id=call.id, resolution="Refund issued", contact_reason="refund"
            )
        )
        assert (resolved.status, resolved.resolution, resolved.contact_reason) == (
            S.INTERACTION_STATUS_RESOLVED,
            "Refund issued",
            "refund",
        )
        assert (resolved.resolved_by_agent_id, resolved.agent_id) == (ALICE, "")
        closed = await stub.CloseInteraction(pb.CloseInteractionRequest(interaction_id=call.id))
        assert closed.status == S.INTERACTION_STATUS_CLOSED
        assert closed.HasField("close_time")

    async def test_identify_the_customer_later(self, stub: Stub) -> None:
        call = await open_call(stub)
        identified = await stub.IdentifyCustomer(
            pb.IdentifyCustomerRequest(interaction_id=call.id, customer_id=HANAKO)
        )
        assert identified.customer_id == HANAKO

    async def test_a_declined_offer_waits_again_keeping_its_place(self, stub: Stub) -> None:
        call = await queued_call(stub)
        await stub.OfferInteraction(
            pb.OfferInteractionRequest(interaction_id=call.id, agent_id=ALICE)
        )
        declined = await stub.DeclineOffer(
            pb.DeclineOfferRequest(
                interaction_id=call.id, agent_id=ALICE, reason=pb.DECLINE_REASON_TIMEOUT
            )
        )
        assert (declined.status, declined.offered_agent_id) == (S.INTERACTION_STATUS_QUEUED, "")
        assert declined.queue_time == call.queue_time

    async def test_a_transfer_keeps_the_customers_wait(self, stub: Stub) -> None:
        call = await active_call(stub)
        transferred = await stub.TransferInteraction(
            pb.TransferInteractionRequest(
                interaction_id=call.id, reason="Needs a specialist", to_queue="tier2"
            )
        )
        assert (transferred.status, transferred.queue, transferred.transfer_count) == (
            S.INTERACTION_STATUS_QUEUED,
            "tier2",
            1,
        )
        assert transferred.queue_time == call.queue_time
        assert transferred.requirements.last_agent_id == "", "not routed back to Alice"

    async def test_a_transfer_to_an_agent_prefers_that_agent(self, stub: Stub) -> None:
        call = await active_call(stub)
        transferred = await stub.TransferInteraction(
            pb.TransferInteractionRequest(
                interaction_id=call.id, reason="Bob knows this customer", to_agent_id=BOB
            )
        )
        assert transferred.requirements.preferred_agent_id == BOB

    async def test_escalation_to_a_tier_and_a_department(self, stub: Stub) -> None:
        call = await active_call(stub)
        escalated = await stub.EscalateInteraction(
            pb.EscalateInteractionRequest(
                interaction_id=call.id, reason="Legal threat", tier=2, department="legal"
            )
        )
        (escalation,) = escalated.escalations
        assert (escalation.tier, escalation.department, escalation.reason) == (
            2,
            "legal",
            "Legal threat",
        )
        assert escalation.agent_id == ALICE
        assert escalated.status == S.INTERACTION_STATUS_ACTIVE

    async def test_reopening_a_resolved_interaction_queues_it_for_the_last_agent(
        self, stub: Stub
    ) -> None:
        call = await active_call(stub)
        await stub.ResolveInteraction(pb.ResolveInteractionRequest(interaction_id=call.id))
        reopened = await stub.ReopenInteraction(
            pb.ReopenInteractionRequest(interaction_id=call.id, reason="Not fixed")
        )
        assert (reopened.status, reopened.reopen_count) == (S.INTERACTION_STATUS_QUEUED, 1)
        assert reopened.requirements.last_agent_id == ALICE

    async def test_a_customer_leaving_the_queue_abandons_it(self, stub: Stub) -> None:
        call = await queued_call(stub)
        abandoned = await stub.AbandonInteraction(
            pb.AbandonInteractionRequest(interaction_id=call.id)
        )
        assert abandoned.status == S.INTERACTION_STATUS_ABANDONED
        assert abandoned.HasField("abandon_time")

    async def test_a_bot_contains_a_conversation(self, stub: Stub) -> None:
        chat = await stub.OpenInteraction(
            pb.OpenInteractionRequest(channel=common_pb2.CHANNEL_CHATBOT, customer_id=TARO)
        )
        contained = await stub.ContainInBot(
            pb.ContainInBotRequest(interaction_id=chat.id, resolution="FAQ answered")
        )
        assert (contained.status, contained.resolution) == (
            S.INTERACTION_STATUS_CONTAINED,
            "FAQ answered",
        )
        closed = await stub.CloseInteraction(pb.CloseInteractionRequest(interaction_id=chat.id))
        assert closed.status == S.INTERACTION_STATUS_CLOSED

    async def test_a_bot_hands_off_to_a_human_with_the_whole_transcript(self, stub: Stub) -> None:
        chat = await stub.OpenInteraction(
            pb.OpenInteractionRequest(channel=common_pb2.CHANNEL_CHATBOT, customer_id=TARO)
        )
        for author, text in (
            (pb.AUTHOR_KIND_CUSTOMER, "パスワードを忘れました"),
            (pb.AUTHOR_KIND_BOT, "リセット用のリンクをお送りします"),
            (pb.AUTHOR_KIND_CUSTOMER, "届きません"),
        ):
            await stub.AddMessage(
                pb.AddMessageRequest(interaction_id=chat.id, author_kind=author, text=text)
            )
        handed = await stub.HandOffToHuman(
            pb.HandOffToHumanRequest(
                interaction_id=chat.id,
                queue="account",
                reason="Bot could not help",
                requirements=pb.QueueRequirements(language="ja"),
            )
        )
        assert (handed.status, handed.queue) == (S.INTERACTION_STATUS_QUEUED, "account")
        assert handed.HasField("hand_off_time")
        assert [entry.text for entry in handed.transcript] == [
            "パスワードを忘れました",
            "リセット用のリンクをお送りします",
            "届きません",
        ]
        answered = await stub.AnswerInteraction(
            pb.AnswerInteractionRequest(interaction_id=chat.id, agent_id=ALICE)
        )
        assert len(answered.transcript) == 3


class TestRefusals:
    async def test_an_illegal_transition_is_a_failed_precondition_and_stores_nothing(
        self, interaction_service: InteractionService, stub: Stub
    ) -> None:
        call = await open_call(stub)
        message = await expect(
            interaction_service,
            stub.AnswerInteraction(
                pb.AnswerInteractionRequest(interaction_id=call.id, agent_id=ALICE)
            ),
            PRECONDITION,
        )
        assert "created" in message
        for illegal in (
            stub.HoldInteraction(pb.HoldInteractionRequest(interaction_id=call.id)),
            stub.ResumeInteraction(pb.ResumeInteractionRequest(interaction_id=call.id)),
            stub.StartWrapUp(pb.StartWrapUpRequest(interaction_id=call.id)),
            stub.ResolveInteraction(pb.ResolveInteractionRequest(interaction_id=call.id)),
            stub.ReopenInteraction(pb.ReopenInteractionRequest(interaction_id=call.id)),
            stub.CloseInteraction(pb.CloseInteractionRequest(interaction_id=call.id)),
            stub.AbandonInteraction(pb.AbandonInteractionRequest(interaction_id=call.id)),
            stub.ContainInBot(pb.ContainInBotRequest(interaction_id=call.id)),
            stub.HandOffToHuman(
                pb.HandOffToHumanRequest(interaction_id=call.id, queue="q", reason="r")
            ),
            stub.OfferInteraction(
                pb.OfferInteractionRequest(interaction_id=call.id, agent_id=ALICE)
            ),
            stub.DeclineOffer(pb.DeclineOfferRequest(interaction_id=call.id, agent_id=ALICE)),
            stub.TransferInteraction(
                pb.TransferInteractionRequest(interaction_id=call.id, reason="r", to_queue="q")
            ),
            stub.EscalateInteraction(
                pb.EscalateInteractionRequest(interaction_id=call.id, reason="r", tier=2)
            ),
        ):
            await expect(interaction_service, illegal, PRECONDITION)

    async def test_a_closed_interaction_takes_no_more_messages(
        self, interaction_service: InteractionService, stub: Stub
    ) -> None:
        call = await active_call(stub)
        await stub.ResolveInteraction(pb.ResolveInteractionRequest(interaction_id=call.id))
        await stub.CloseInteraction(pb.CloseInteractionRequest(interaction_id=call.id))
        await expect(
            interaction_service,
            stub.AddMessage(
                pb.AddMessageRequest(
                    interaction_id=call.id, author_kind=pb.AUTHOR_KIND_CUSTOMER, text="Hello?"
                )
            ),
            PRECONDITION,
        )

    async def test_only_the_offered_agent_may_answer_or_decline(
        self, interaction_service: InteractionService, stub: Stub
    ) -> None:
        call = await queued_call(stub)
        await stub.OfferInteraction(
            pb.OfferInteractionRequest(interaction_id=call.id, agent_id=ALICE)
        )
        await expect(
            interaction_service,
            stub.AnswerInteraction(
                pb.AnswerInteractionRequest(interaction_id=call.id, agent_id=BOB)
            ),
            PRECONDITION,
        )
        await expect(
            interaction_service,
            stub.DeclineOffer(pb.DeclineOfferRequest(interaction_id=call.id, agent_id=BOB)),
            PRECONDITION,
        )

    async def test_a_queue_needs_a_human_conversation(
        self, interaction_service: InteractionService, stub: Stub
    ) -> None:
        chat = await stub.OpenInteraction(
            pb.OpenInteractionRequest(channel=common_pb2.CHANNEL_CHATBOT)
        )
        await expect(
            interaction_service,
            stub.QueueInteraction(pb.QueueInteractionRequest(interaction_id=chat.id, queue="q")),
            PRECONDITION,
        )

    async def test_identifying_the_same_customer_again_is_refused(
        self, interaction_service: InteractionService, stub: Stub
    ) -> None:
        call = await open_call(stub, customer_id=TARO)
        await expect(
            interaction_service,
            stub.IdentifyCustomer(
                pb.IdentifyCustomerRequest(interaction_id=call.id, customer_id=TARO)
            ),
            PRECONDITION,
        )

    @pytest.mark.parametrize(
        ("rpc", "request_message"),
        [
            ("IdentifyCustomer", pb.IdentifyCustomerRequest(customer_id=TARO)),
            ("QueueInteraction", pb.QueueInteractionRequest(queue="q")),
            ("OfferInteraction", pb.OfferInteractionRequest(agent_id=ALICE)),
            ("DeclineOffer", pb.DeclineOfferRequest(agent_id=ALICE)),
            ("AnswerInteraction", pb.AnswerInteractionRequest(agent_id=ALICE)),
            ("HoldInteraction", pb.HoldInteractionRequest()),
            ("ResumeInteraction", pb.ResumeInteractionRequest()),
            (
                "AddMessage",
                pb.AddMessageRequest(author_kind=pb.AUTHOR_KIND_CUSTOMER, text="hi"),
            ),
            ("TransferInteraction", pb.TransferInteractionRequest(reason="r", to_queue="q")),
            ("EscalateInteraction", pb.EscalateInteractionRequest(reason="r", tier=1)),
            ("StartWrapUp", pb.StartWrapUpRequest()),
            ("ResolveInteraction", pb.ResolveInteractionRequest()),
            ("ReopenInteraction", pb.ReopenInteractionRequest()),
            ("CloseInteraction", pb.CloseInteractionRequest()),
            ("AbandonInteraction", pb.AbandonInteractionRequest()),
            ("ContainInBot", pb.ContainInBotRequest()),
            ("HandOffToHuman", pb.HandOffToHumanRequest(queue="q", reason="r")),
        ],
    )
    async def test_every_command_refuses_a_bad_and_an_unknown_interaction_id(
        self,
        interaction_service: InteractionService,
        stub: Stub,
        rpc: str,
        request_message: object,
    ) -> None:
        method = getattr(stub, rpc)
        bad = type(request_message)()
        bad.CopyFrom(request_message)  # type: ignore[attr-defined]
        bad.interaction_id = "not-an-id"  # type: ignore[attr-defined]
        await expect(interaction_service, method(bad), INVALID, "interaction_id")
        unknown = type(request_message)()
        unknown.CopyFrom(request_message)  # type: ignore[attr-defined]
        unknown.interaction_id = UNKNOWN_ID  # type: ignore[attr-defined]
        await expect(interaction_service, method(unknown), NOT_FOUND)

    async def test_invalid_arguments_name_the_request_field(
        self, interaction_service: InteractionService, stub: Stub
    ) -> None:
        created = await open_call(stub)
        queued = await queued_call(stub)
        active = await active_call(stub)
        cases: list[tuple[Awaitable[object], str]] = [
            (
                stub.IdentifyCustomer(pb.IdentifyCustomerRequest(interaction_id=created.id)),
                "customer_id",
            ),
            (stub.QueueInteraction(pb.QueueInteractionRequest(interaction_id=created.id)), "queue"),
            (
                stub.QueueInteraction(
                    pb.QueueInteractionRequest(
                        interaction_id=created.id,
                        queue="q",
                        requirements=pb.QueueRequirements(
                            skills=[
                                pb.RequiredSkill(skill="ok"),
                                pb.RequiredSkill(skill="Bad Skill!"),
                            ]
                        ),
                    )
                ),
                "requirements.skills[1].skill",
            ),
            (
                stub.QueueInteraction(
                    pb.QueueInteractionRequest(
                        interaction_id=created.id,
                        queue="q",
                        requirements=pb.QueueRequirements(
                            skills=[pb.RequiredSkill(skill="a", min_level=6)]
                        ),
                    )
                ),
                "requirements.skills[0].min_level",
            ),
            (
                stub.QueueInteraction(
                    pb.QueueInteractionRequest(
                        interaction_id=created.id,
                        queue="q",
                        requirements=pb.QueueRequirements(priority=11),
                    )
                ),
                "requirements.priority",
            ),
            (
                stub.QueueInteraction(
                    pb.QueueInteractionRequest(
                        interaction_id=created.id,
                        queue="q",
                        requirements=pb.QueueRequirements(language="日本語"),
                    )
                ),
                "requirements.language",
            ),
            (
                stub.QueueInteraction(
                    pb.QueueInteractionRequest(
                        interaction_id=created.id,
                        queue="q",
                        requirements=pb.QueueRequirements(preferred_agent_id="alice"),
                    )
                ),
                "requirements.preferred_agent_id",
            ),
            (
                stub.OfferInteraction(pb.OfferInteractionRequest(interaction_id=queued.id)),
                "agent_id",
            ),
            (
                stub.DeclineOffer(
                    pb.DeclineOfferRequest(
                        interaction_id=queued.id,
                        agent_id=ALICE,
                        reason=pb.DeclineReason.ValueType(8),
                    )
                ),
                "reason",
            ),
            (
                stub.AnswerInteraction(
                    pb.AnswerInteractionRequest(interaction_id=queued.id, agent_id="al")
                ),
                "agent_id",
            ),
            (
                stub.AddMessage(pb.AddMessageRequest(interaction_id=active.id, text="hi")),
                "author_kind",
            ),
            (
                stub.AddMessage(
                    pb.AddMessageRequest(
                        interaction_id=active.id, author_kind=pb.AUTHOR_KIND_CUSTOMER, text=" "
                    )
                ),
                "text",
            ),
            (
                stub.AddMessage(
                    pb.AddMessageRequest(
                        interaction_id=active.id, author_kind=pb.AUTHOR_KIND_AGENT, text="hi"
                    )
                ),
                "author_id",
            ),
            (
                stub.AddMessage(
                    pb.AddMessageRequest(
                        interaction_id=active.id,
                        author_kind=pb.AUTHOR_KIND_CUSTOMER,
                        text="hi",
                        internal=True,
                    )
                ),
                "internal",
            ),
            (
                stub.AddMessage(
                    pb.AddMessageRequest(
                        interaction_id=active.id,
                        author_kind=pb.AUTHOR_KIND_CUSTOMER,
                        text="x" * 10_001,
                    )
                ),
                "text",
            ),
            (
                stub.TransferInteraction(
                    pb.TransferInteractionRequest(interaction_id=active.id, reason="r")
                ),
                "to_queue",
            ),
            (
                stub.TransferInteraction(
                    pb.TransferInteractionRequest(
                        interaction_id=active.id, reason="r", to_queue="q", to_agent_id=BOB
                    )
                ),
                "to_queue",
            ),
            (
                stub.TransferInteraction(
                    pb.TransferInteractionRequest(interaction_id=active.id, to_queue="q")
                ),
                "reason",
            ),
            (
                stub.TransferInteraction(
                    pb.TransferInteractionRequest(
                        interaction_id=active.id, reason="r", to_agent_id=ALICE
                    )
                ),
                "to_agent_id",
            ),
            (
                stub.EscalateInteraction(
                    pb.EscalateInteractionRequest(interaction_id=active.id, reason="r")
                ),
                "tier",
            ),
            (
                stub.EscalateInteraction(
                    pb.EscalateInteractionRequest(interaction_id=active.id, reason="r", tier=10)
                ),
                "tier",
            ),
            (
                stub.EscalateInteraction(
                    pb.EscalateInteractionRequest(interaction_id=active.id, tier=2)
                ),
                "reason",
            ),
            (
                stub.ResolveInteraction(
                    pb.ResolveInteractionRequest(interaction_id=active.id, resolution="x" * 2_001)
                ),
                "resolution",
            ),
        ]
        for call, field in cases:
            await expect(interaction_service, call, INVALID, field)


class TestHealthAndReflection:
    async def test_the_service_reports_serving(
        self, interaction_service: InteractionService
    ) -> None:
        async with open_channel(interaction_service.address) as channel:  # no token: open
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", SERVICE_NAME):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING

    async def test_reflection_lists_the_service(
        self, interaction_service: InteractionService
    ) -> None:
        async with open_channel(interaction_service.address) as channel:  # no token: open
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)

            async def requests() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
                yield reflection_pb2.ServerReflectionRequest(list_services="")

            async for reply in reflection.ServerReflectionInfo(requests()):
                names = {service.name for service in reply.list_services_response.service}
                assert SERVICE_NAME in names
                break
