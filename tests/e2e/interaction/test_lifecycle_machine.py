"""The interaction lifecycle as a hypothesis state machine, driven through the gRPC API.

Arbitrary sequences of commands on a few interactions (human and bot conversations, several
agents): each command succeeds exactly when the lifecycle (DOMAIN.md; `TRANSITIONS`) allows
it, leading to the status it names; a refused command is FAILED_PRECONDITION and stores
nothing; and whatever happened, the server's interaction is never in an impossible state
(an agent exactly while someone handles it, an offer exactly while offered, a hold time
exactly while on hold, a wait start once queued, one transcript entry per message).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, rule, run_state_machine_as_test

from crm.v1 import common_pb2, interaction_pb2
from crmcore.domain.interaction import (
    TRANSITIONS,
    InteractionCommand,
    InteractionStatus,
)
from tests.e2e.interaction.conftest import ThreadedService, stored_position

pb = interaction_pb2
C = InteractionCommand
AGENTS = (
    "00000000-0000-4000-8000-00000000a11c",
    "00000000-0000-4000-8000-000000000b0b",
)
CUSTOMERS = (
    "00000000-0000-4000-8000-0000000074a0",
    "00000000-0000-4000-8000-0000000da4a0",
)
#: The status numbers of the API, by domain status.
STATUS = {
    status: pb.InteractionStatus.Value(f"INTERACTION_STATUS_{status.name}")
    for status in InteractionStatus
}
WITH_AGENT = {InteractionStatus.ACTIVE, InteractionStatus.ON_HOLD, InteractionStatus.WRAP_UP}
NEVER_QUEUED = {InteractionStatus.CREATED, InteractionStatus.CONTAINED}
COMMANDS = tuple(command for command in InteractionCommand if command is not C.LINK_TO_CASE)


@dataclass
class Expected:
    """What the test knows about one interaction."""

    status: InteractionStatus
    bot: bool
    customer: str = ""
    offered_to: str = ""
    messages: int = 0


def request_for(
    command: InteractionCommand, interaction_id: str, agent: str, customer: str
) -> tuple[str, Any]:
    """The RPC and request carrying out `command`."""
    i = interaction_id
    requests: dict[InteractionCommand, tuple[str, Any]] = {
        C.IDENTIFY_CUSTOMER: (
            "IdentifyCustomer",
            pb.IdentifyCustomerRequest(interaction_id=i, customer_id=customer),
        ),
        C.QUEUE: (
            "QueueInteraction",
            pb.QueueInteractionRequest(interaction_id=i, queue="support"),
        ),
        C.OFFER: ("OfferInteraction", pb.OfferInteractionRequest(interaction_id=i, agent_id=agent)),
        C.DECLINE_OFFER: (
            "DeclineOffer",
            pb.DeclineOfferRequest(interaction_id=i, agent_id=agent),
        ),
        C.ANSWER: (
            "AnswerInteraction",
            pb.AnswerInteractionRequest(interaction_id=i, agent_id=agent),
        ),
        C.HOLD: ("HoldInteraction", pb.HoldInteractionRequest(interaction_id=i)),
        C.RESUME: ("ResumeInteraction", pb.ResumeInteractionRequest(interaction_id=i)),
        C.ADD_MESSAGE: (
            "AddMessage",
            pb.AddMessageRequest(
                interaction_id=i, author_kind=pb.AUTHOR_KIND_CUSTOMER, text="まだですか？"
            ),
        ),
        C.TRANSFER: (
            "TransferInteraction",
            pb.TransferInteractionRequest(interaction_id=i, reason="tier 2", to_queue="tier2"),
        ),
        C.ESCALATE: (
            "EscalateInteraction",
            pb.EscalateInteractionRequest(interaction_id=i, reason="legal", tier=2),
        ),
        C.START_WRAP_UP: ("StartWrapUp", pb.StartWrapUpRequest(interaction_id=i)),
        C.RESOLVE: ("ResolveInteraction", pb.ResolveInteractionRequest(interaction_id=i)),
        C.REOPEN: ("ReopenInteraction", pb.ReopenInteractionRequest(interaction_id=i)),
        C.CLOSE: ("CloseInteraction", pb.CloseInteractionRequest(interaction_id=i)),
        C.ABANDON: ("AbandonInteraction", pb.AbandonInteractionRequest(interaction_id=i)),
        C.BOT_CONTAIN: ("ContainInBot", pb.ContainInBotRequest(interaction_id=i)),
        C.HAND_OFF_TO_HUMAN: (
            "HandOffToHuman",
            pb.HandOffToHumanRequest(interaction_id=i, queue="support", reason="bot gave up"),
        ),
    }
    return requests[command]


def allowed(expected: Expected, command: InteractionCommand, agent: str, customer: str) -> bool:
    """Whether the lifecycle lets `command` run now with these arguments."""
    if not TRANSITIONS[command].allows(expected.status, expected.bot):
        return False
    if command is C.DECLINE_OFFER:
        return expected.offered_to == agent
    if command is C.ANSWER and expected.status is InteractionStatus.OFFERED:
        return expected.offered_to == agent
    if command is C.IDENTIFY_CUSTOMER:
        return expected.customer != customer
    return True


class InteractionLifecycle(RuleBasedStateMachine):
    service: ThreadedService

    interactions = Bundle("interactions")

    def __init__(self) -> None:
        super().__init__()
        self.stub = self.service.stub
        self.expected: dict[str, Expected] = {}

    @rule(target=interactions, bot=st.booleans())
    def open(self, bot: bool) -> str:
        channel = common_pb2.CHANNEL_CHATBOT if bot else common_pb2.CHANNEL_CHAT
        opened = self.stub.OpenInteraction(pb.OpenInteractionRequest(channel=channel))
        self.expected[opened.id] = Expected(status=InteractionStatus.CREATED, bot=bot)
        return opened.id

    @rule(
        interaction=interactions,
        command=st.sampled_from(COMMANDS),
        agent=st.sampled_from(AGENTS),
        customer=st.sampled_from(CUSTOMERS),
    )
    def command(
        self, interaction: str, command: InteractionCommand, agent: str, customer: str
    ) -> None:
        expected = self.expected[interaction]
        should_pass = allowed(expected, command, agent, customer)
        rpc, request = request_for(command, interaction, agent, customer)
        call: Callable[[Any], pb.Interaction] = getattr(self.stub, rpc)
        before = stored_position(self.service.service)
        refusal: grpc.RpcError | None = None
        try:
            reply = call(request)
        except grpc.RpcError as error:
            refusal = error
        if refusal is not None:
            code = refusal.code()
            assert code is grpc.StatusCode.FAILED_PRECONDITION, (command, refusal)
            assert not should_pass, (command, expected, refusal)
            assert stored_position(self.service.service) == before
            self.check(interaction)
            return
        assert should_pass, (command, expected)
        target = TRANSITIONS[command].next_status(expected.status)
        assert reply.status == STATUS[target], (command, expected, reply.status)
        expected.status = target
        if command is C.OFFER:
            expected.offered_to = agent
        elif target is not InteractionStatus.OFFERED:
            # An offer stands while the interaction stays offered (identifying the customer or
            # a message does not withdraw it) and ends with any other status.
            expected.offered_to = ""
        if command is C.IDENTIFY_CUSTOMER:
            expected.customer = customer
        if command is C.ADD_MESSAGE:
            expected.messages += 1
        self.check(interaction)

    def check(self, interaction: str) -> None:
        """The server's interaction matches what we know and is a possible one."""
        expected = self.expected[interaction]
        got = self.stub.GetInteraction(pb.GetInteractionRequest(id=interaction))
        status = expected.status
        assert got.status == STATUS[status]
        assert got.customer_id == expected.customer
        assert got.handled_by_bot == expected.bot
        assert got.offered_agent_id == expected.offered_to
        assert bool(got.agent_id) == (status in WITH_AGENT)
        assert got.HasField("hold_start_time") == (status is InteractionStatus.ON_HOLD)
        if status not in NEVER_QUEUED and status is not InteractionStatus.CLOSED:
            assert got.HasField("queue_time")
            assert got.queue_time.ToDatetime() >= got.create_time.ToDatetime()
        if status in WITH_AGENT:
            assert got.agent_id in got.agent_ids
        assert len(got.transcript) == expected.messages
        assert got.hold_seconds >= 0
        assert int(got.etag) >= 1


@pytest.mark.timeout(600)
def test_the_lifecycle_holds_through_the_api(
    threaded_interaction_service: ThreadedService,
) -> None:
    InteractionLifecycle.service = threaded_interaction_service
    run_state_machine_as_test(
        InteractionLifecycle,
        settings=settings(
            max_examples=150,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
