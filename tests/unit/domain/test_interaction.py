"""The interaction aggregate: each command, each refusal, and the times the KPIs read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crmcore.domain.errors import InvalidValue, RuleViolation
from crmcore.domain.interaction import (
    MAX_TRANSCRIPT_ENTRIES,
    TRANSITIONS,
    Abandoned,
    Answered,
    AuthorKind,
    DeclineReason,
    HandedOffToHuman,
    Interaction,
    InteractionCommand,
    InteractionEvent,
    InteractionOpened,
    InteractionStatus,
    MessageAdded,
    Resolved,
    RoutingRequirements,
    SkillRequirement,
    TranscriptEntry,
    Transferred,
)
from crmcore.domain.values import Channel, Direction

MONDAY_9AM = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
ALICE = UUID("00000000-0000-4000-8000-00000000a11c")
BOB = UUID("00000000-0000-4000-8000-000000000b0b")
CAROL = UUID("00000000-0000-4000-8000-0000000ca201")
TARO = UUID("00000000-0000-4000-8000-0000000074a0")


def at(seconds: float) -> datetime:
    return MONDAY_9AM + timedelta(seconds=seconds)


def after(state: Interaction, *events: InteractionEvent) -> Interaction:
    for event in events:
        assert event.originator_version == state.version + 1
        state = event.mutate(state)
    return state


def opened(channel: str = "phone", **kwargs: object) -> Interaction:
    event = Interaction.open(
        interaction_id=uuid4(),
        channel=channel,
        at=MONDAY_9AM,
        **kwargs,  # type: ignore[arg-type]
    )
    return event.mutate(None)


def queued(channel: str = "phone") -> Interaction:
    state = opened(channel, customer_id=TARO)
    return after(state, state.enqueue(queue="billing", at=at(5)))


def active(agent: UUID = ALICE) -> Interaction:
    state = queued()
    state = after(state, state.offer(agent, at=at(10)))
    return after(state, state.answer(agent, at=at(20)))


def bot_conversation() -> Interaction:
    return opened("chatbot", customer_id=TARO)


class TestOpening:
    def test_a_phone_call_starts_created_and_inbound(self) -> None:
        event = Interaction.open(
            interaction_id=uuid4(),
            channel="phone",
            customer_id=TARO,
            contact_reason="  Billing question ",
            tags=["VIP", "vip", "callback"],
            at=MONDAY_9AM,
        )
        state = event.mutate(None)
        assert state.status is InteractionStatus.CREATED
        assert state.channel is Channel.PHONE
        assert state.direction is Direction.INBOUND
        assert state.customer_id == TARO
        assert state.contact_reason == "Billing question"
        assert state.tags == ("vip", "callback")
        assert state.created_at == MONDAY_9AM
        assert state.version == 1
        assert not state.handled_by_bot

    def test_a_chatbot_conversation_is_handled_by_a_bot(self) -> None:
        assert bot_conversation().handled_by_bot

    def test_a_web_chat_can_start_with_a_bot(self) -> None:
        assert opened("chat", handled_by_bot=True).handled_by_bot

    def test_an_unknown_channel_is_refused(self) -> None:
        with pytest.raises(InvalidValue) as refused:
            Interaction.open(interaction_id=uuid4(), channel="pigeon", at=MONDAY_9AM)
        assert refused.value.field == "channel"

    def test_an_unknown_direction_is_refused(self) -> None:
        with pytest.raises(InvalidValue) as refused:
            Interaction.open(
                interaction_id=uuid4(), channel="phone", direction="sideways", at=MONDAY_9AM
            )
        assert refused.value.field == "direction"

    def test_a_time_without_zone_is_refused(self) -> None:
        with pytest.raises(InvalidValue) as refused:
            Interaction.open(interaction_id=uuid4(), channel="phone", at=datetime(2025, 3, 3))
        assert refused.value.field == "at"

    def test_a_blank_contact_reason_is_refused(self) -> None:
        with pytest.raises(InvalidValue) as refused:
            Interaction.open(
                interaction_id=uuid4(), channel="phone", contact_reason="   ", at=MONDAY_9AM
            )
        assert refused.value.field == "contact_reason"


class TestIdentifyingTheCustomer:
    def test_an_anonymous_caller_is_identified_later(self) -> None:
        state = opened()
        event = state.identify_customer(TARO, at=at(3))
        assert event.previous_customer_id is None
        assert after(state, event).customer_id == TARO
        assert event.bus_attributes()["customerid"] == str(TARO)

    def test_a_wrong_identification_can_be_corrected(self) -> None:
        state = opened(customer_id=TARO)
        event = state.identify_customer(BOB, at=at(3))
        assert event.previous_customer_id == TARO
        assert after(state, event).customer_id == BOB

    def test_identifying_the_same_customer_again_changes_nothing_and_is_refused(self) -> None:
        with pytest.raises(RuleViolation):
            opened(customer_id=TARO).identify_customer(TARO, at=at(3))


class TestQueueing:
    def test_queueing_records_the_first_enqueue_and_the_requirements(self) -> None:
        state = opened()
        event = state.enqueue(
            queue=" billing ",
            requirements=RoutingRequirements(
                skills=(SkillRequirement(skill="Billing", min_level=3),),
                language="EN-us",
                priority=7,
                last_agent_id=ALICE,
            ),
            at=at(5),
        )
        state = after(state, event)
        assert state.status is InteractionStatus.QUEUED
        assert state.queue == "billing"
        assert state.queued_at == at(5)
        assert state.waiting_since == at(5)
        assert state.requirements.skills == (SkillRequirement(skill="billing", min_level=3),)
        assert state.requirements.language == "en-US"
        assert state.requirements.priority == 7
        assert state.requirements.last_agent_id == ALICE
        assert event.queue == "billing"

    @given(st.integers().filter(lambda level: not 1 <= level <= 5))
    def test_a_skill_level_outside_one_to_five_is_refused(self, level: int) -> None:
        requirements = RoutingRequirements(
            skills=(
                SkillRequirement(skill="billing", min_level=2),
                SkillRequirement(skill="japanese", min_level=level),
            )
        )
        with pytest.raises(InvalidValue) as refused:
            opened().enqueue(queue="billing", requirements=requirements, at=at(5))
        assert refused.value.field == "requirements.skills[1].min_level"

    @given(st.integers().filter(lambda priority: not 0 <= priority <= 10))
    def test_a_priority_outside_zero_to_ten_is_refused(self, priority: int) -> None:
        with pytest.raises(InvalidValue) as refused:
            opened().enqueue(
                queue="billing", requirements=RoutingRequirements(priority=priority), at=at(5)
            )
        assert refused.value.field == "requirements.priority"

    def test_a_skill_required_twice_is_refused(self) -> None:
        requirements = RoutingRequirements(
            skills=(SkillRequirement(skill="billing"), SkillRequirement(skill="BILLING"))
        )
        with pytest.raises(InvalidValue) as refused:
            opened().enqueue(queue="billing", requirements=requirements, at=at(5))
        assert refused.value.field == "requirements.skills[1].skill"

    def test_a_nonsense_language_is_refused(self) -> None:
        with pytest.raises(InvalidValue) as refused:
            opened().enqueue(
                queue="billing", requirements=RoutingRequirements(language="klingon!"), at=at(5)
            )
        assert refused.value.field == "requirements.language"

    def test_a_blank_queue_is_refused(self) -> None:
        with pytest.raises(InvalidValue) as refused:
            opened().enqueue(queue=" ", at=at(5))
        assert refused.value.field == "queue"

    def test_a_bot_conversation_is_handed_off_rather_than_queued(self) -> None:
        with pytest.raises(RuleViolation, match="not a conversation with a bot"):
            bot_conversation().enqueue(queue="billing", at=at(5))

    def test_queueing_twice_is_refused(self) -> None:
        with pytest.raises(RuleViolation, match="it is queued"):
            queued().enqueue(queue="billing", at=at(6))


class TestOffers:
    def test_an_offer_names_the_agent(self) -> None:
        state = queued()
        event = state.offer(ALICE, at=at(10))
        state = after(state, event)
        assert state.status is InteractionStatus.OFFERED
        assert state.offered_agent_id == ALICE
        assert state.offered_at == at(10)
        assert event.agent_id == ALICE
        assert event.queued_at == at(5)

    @pytest.mark.parametrize("reason", ["rejected", "timeout"])
    def test_a_declined_offer_goes_back_to_the_queue_keeping_the_wait(self, reason: str) -> None:
        state = queued()
        state = after(state, state.offer(ALICE, at=at(10)))
        event = state.decline_offer(ALICE, reason, at=at(30))
        state = after(state, event)
        assert state.status is InteractionStatus.QUEUED
        assert state.queued_at == at(5)
        assert state.waiting_since == at(5)
        assert state.offered_agent_id is None
        assert event.reason is DeclineReason(reason)

    def test_only_the_offered_agent_can_decline(self) -> None:
        state = queued()
        state = after(state, state.offer(ALICE, at=at(10)))
        with pytest.raises(RuleViolation):
            state.decline_offer(BOB, at=at(11))

    def test_an_unknown_decline_reason_is_refused(self) -> None:
        state = queued()
        state = after(state, state.offer(ALICE, at=at(10)))
        with pytest.raises(InvalidValue) as refused:
            state.decline_offer(ALICE, "bored", at=at(11))
        assert refused.value.field == "reason"

    def test_only_the_offered_agent_can_answer_an_offer(self) -> None:
        state = queued()
        state = after(state, state.offer(ALICE, at=at(10)))
        with pytest.raises(RuleViolation):
            state.answer(BOB, at=at(11))

    def test_an_agent_can_pick_queued_work_without_an_offer(self) -> None:
        state = queued()
        state = after(state, state.answer(BOB, at=at(40)))
        assert state.status is InteractionStatus.ACTIVE
        assert state.agent_id == BOB

    def test_nothing_waiting_cannot_be_offered(self) -> None:
        with pytest.raises(RuleViolation):
            opened().offer(ALICE, at=at(1))


class TestAnswering:
    def test_answering_records_the_agent_and_the_answer_time(self) -> None:
        state = queued()
        state = after(state, state.offer(ALICE, at=at(10)))
        event = state.answer(ALICE, at=at(20))
        state = after(state, event)
        assert state.status is InteractionStatus.ACTIVE
        assert state.agent_id == ALICE
        assert state.agents == (ALICE,)
        assert state.answered_at == at(20)
        assert state.offered_agent_id is None
        assert isinstance(event, Answered)
        assert event.queued_at == at(5)
        assert event.first_answer


class TestHolding:
    def test_hold_time_accumulates_over_several_holds(self) -> None:
        state = active()
        state = after(state, state.hold(at=at(30)))
        assert state.hold_started_at == at(30)
        state = after(state, state.resume(at=at(45)))
        state = after(state, state.hold(at=at(60)))
        state = after(state, state.resume(at=at(100)))
        assert state.hold_seconds == 55.0
        assert state.hold_started_at is None
        assert state.status is InteractionStatus.ACTIVE

    @given(st.lists(st.tuples(st.integers(0, 600), st.integers(0, 600)), max_size=8))
    def test_hold_seconds_are_the_sum_of_the_holds(self, holds: list[tuple[int, int]]) -> None:
        state = active()
        clock = 20.0
        for talk, hold in holds:
            clock += talk
            state = after(state, state.hold(at=at(clock)))
            clock += hold
            state = after(state, state.resume(at=at(clock)))
        assert state.hold_seconds == sum(hold for _, hold in holds)

    def test_wrapping_up_ends_a_running_hold(self) -> None:
        state = active()
        state = after(state, state.hold(at=at(30)))
        state = after(state, state.start_wrap_up(at=at(50)))
        assert state.hold_seconds == 20.0
        assert state.hold_started_at is None
        assert state.wrap_up_started_at == at(50)
        assert state.status is InteractionStatus.WRAP_UP

    def test_resuming_what_is_not_on_hold_is_refused(self) -> None:
        with pytest.raises(RuleViolation):
            active().resume(at=at(30))


class TestTransfers:
    def test_a_transfer_to_a_queue_keeps_the_customers_original_wait(self) -> None:
        state = active()
        event = state.transfer(reason="needs tier 2", to_queue="tier2", at=at(60))
        state = after(state, event)
        assert state.status is InteractionStatus.QUEUED
        assert state.queue == "tier2"
        assert state.queued_at == at(5)
        assert state.waiting_since == at(5)
        assert state.agent_id is None
        assert state.transfer_count == 1
        assert state.requirements.last_agent_id is None, "Alice handed it on: not sticky to her"
        assert isinstance(event, Transferred)
        assert event.from_queue == "billing"
        assert event.to_queue == "tier2"
        assert event.agent_id == ALICE

    def test_a_transfer_to_an_agent_prefers_that_agent_in_the_same_queue(self) -> None:
        state = active()
        state = after(state, state.transfer(reason="specialist", to_agent_id=BOB, at=at(60)))
        assert state.queue == "billing"
        assert state.requirements.preferred_agent_id == BOB

    def test_the_next_agent_answering_is_added_to_the_agents(self) -> None:
        state = active()
        state = after(state, state.transfer(reason="specialist", to_agent_id=BOB, at=at(60)))
        state = after(state, state.offer(BOB, at=at(70)))
        state = after(state, state.answer(BOB, at=at(75)))
        assert state.agents == (ALICE, BOB)
        assert state.answered_at == at(20)

    def test_a_transfer_while_on_hold_ends_the_hold(self) -> None:
        state = active()
        state = after(state, state.hold(at=at(30)))
        state = after(state, state.transfer(reason="tier 2", to_queue="tier2", at=at(90)))
        assert state.hold_seconds == 60.0
        assert state.hold_started_at is None

    def test_a_transfer_names_exactly_one_target(self) -> None:
        with pytest.raises(InvalidValue):
            active().transfer(reason="?", at=at(60))
        with pytest.raises(InvalidValue):
            active().transfer(reason="?", to_queue="tier2", to_agent_id=BOB, at=at(60))

    def test_a_transfer_to_oneself_is_refused(self) -> None:
        with pytest.raises(InvalidValue) as refused:
            active(ALICE).transfer(reason="me", to_agent_id=ALICE, at=at(60))
        assert refused.value.field == "to_agent_id"

    def test_a_transfer_needs_a_reason(self) -> None:
        with pytest.raises(InvalidValue) as refused:
            active().transfer(reason=" ", to_queue="tier2", at=at(60))
        assert refused.value.field == "reason"

    def test_waiting_work_cannot_be_transferred(self) -> None:
        with pytest.raises(RuleViolation):
            queued().transfer(reason="x", to_queue="tier2", at=at(60))


class TestEscalation:
    def test_an_escalation_is_recorded_and_the_work_stays_with_the_agent(self) -> None:
        state = active()
        state = after(
            state,
            state.escalate(reason="refund over limit", tier=2, department="finance", at=at(40)),
        )
        assert state.status is InteractionStatus.ACTIVE
        (escalation,) = state.escalations
        assert escalation.tier == 2
        assert escalation.department == "finance"
        assert escalation.agent_id == ALICE
        assert escalation.at == at(40)

    def test_an_escalation_names_a_tier_or_a_department(self) -> None:
        with pytest.raises(InvalidValue):
            active().escalate(reason="help", at=at(40))

    @pytest.mark.parametrize("tier", [0, 10, -1])
    def test_a_tier_outside_one_to_nine_is_refused(self, tier: int) -> None:
        with pytest.raises(InvalidValue) as refused:
            active().escalate(reason="help", tier=tier, at=at(40))
        assert refused.value.field == "tier"


class TestTranscript:
    def test_the_first_public_agent_reply_is_the_first_response(self) -> None:
        state = active()
        state = after(state, state.add_message(author_kind="customer", text="Hello?", at=at(21)))
        state = after(
            state,
            state.add_message(
                author_kind="agent", author_id=ALICE, text="VIP", public=False, at=at(22)
            ),
        )
        assert state.first_agent_response_at is None
        event = state.add_message(author_kind="agent", author_id=ALICE, text="Hi!", at=at(25))
        assert event.first_agent_response
        state = after(state, event)
        later = state.add_message(author_kind="agent", author_id=ALICE, text="So…", at=at(30))
        state = after(state, later)
        assert not later.first_agent_response
        assert state.first_agent_response_at == at(25)
        assert [entry.author_kind for entry in state.transcript] == [
            AuthorKind.CUSTOMER,
            AuthorKind.AGENT,
            AuthorKind.AGENT,
            AuthorKind.AGENT,
        ]
        assert state.transcript[1] == TranscriptEntry(
            author_kind=AuthorKind.AGENT, author_id=ALICE, text="VIP", public=False, at=at(22)
        )

    def test_a_bot_reply_is_not_a_first_response(self) -> None:
        state = bot_conversation()
        state = after(state, state.add_message(author_kind="bot", text="How can I help?", at=at(1)))
        assert state.first_agent_response_at is None

    def test_customers_and_bots_write_no_internal_notes(self) -> None:
        for kind in ("customer", "bot"):
            with pytest.raises(InvalidValue) as refused:
                active().add_message(author_kind=kind, text="psst", public=False, at=at(30))
            assert refused.value.field == "public"

    def test_an_agent_entry_names_the_agent(self) -> None:
        with pytest.raises(InvalidValue) as refused:
            active().add_message(author_kind="agent", text="Hi", at=at(30))
        assert refused.value.field == "author_id"

    @pytest.mark.parametrize("text", ["", "   ", "x" * 10_001, "bell\x07"])
    def test_empty_huge_or_binary_text_is_refused(self, text: str) -> None:
        with pytest.raises(InvalidValue) as refused:
            active().add_message(author_kind="customer", text=text, at=at(30))
        assert refused.value.field == "text"

    def test_an_unknown_author_kind_is_refused(self) -> None:
        with pytest.raises(InvalidValue) as refused:
            active().add_message(author_kind="robot", text="beep", at=at(30))
        assert refused.value.field == "author_kind"

    def test_the_transcript_is_bounded(self) -> None:
        state = active()
        entry = TranscriptEntry(
            author_kind=AuthorKind.CUSTOMER, author_id=None, text=".", public=True, at=at(20)
        )
        full = Interaction(
            **{
                **{field: getattr(state, field) for field in state.__struct_fields__},
                "transcript": (entry,) * MAX_TRANSCRIPT_ENTRIES,
            }
        )
        with pytest.raises(RuleViolation):
            full.add_message(author_kind="customer", text="one more", at=at(30))

    def test_nobody_writes_to_a_closed_interaction(self) -> None:
        state = active()
        state = after(state, state.resolve(at=at(60)))
        state = after(state, state.close(at=at(70)))
        with pytest.raises(RuleViolation):
            state.add_message(author_kind="customer", text="Hello?", at=at(80))


class TestResolution:
    def test_resolving_records_who_resolved_it_and_the_kpi_facts(self) -> None:
        state = active()
        state = after(state, state.hold(at=at(30)))
        state = after(state, state.resume(at=at(40)))
        state = after(state, state.start_wrap_up(at=at(100)))
        event = state.resolve(resolution="Refunded", contact_reason="refund", at=at(130))
        state = after(state, event)
        assert state.status is InteractionStatus.RESOLVED
        assert state.resolved_at == at(130)
        assert state.first_resolved_at == at(130)
        assert state.resolved_by == ALICE
        assert state.agent_id is None
        assert state.contact_reason == "refund"
        assert state.resolution == "Refunded"
        assert isinstance(event, Resolved)
        assert event.created_at == MONDAY_9AM
        assert event.answered_at == at(20)
        assert event.wrap_up_started_at == at(100)
        assert event.hold_seconds == 10.0
        assert event.agents == (ALICE,)
        assert event.first_resolution
        assert event.contact_reason == "refund"

    def test_a_reopened_interaction_waits_again_for_the_agent_who_helped(self) -> None:
        state = active()
        state = after(state, state.resolve(at=at(60)))
        event = state.reopen(reason="still broken", at=at(3_600))
        state = after(state, event)
        assert state.status is InteractionStatus.QUEUED
        assert state.reopen_count == 1
        assert state.queued_at == at(5)
        assert state.waiting_since == at(3_600)
        assert state.requirements.last_agent_id == ALICE
        state = after(state, state.answer(ALICE, at=at(3_700)))
        second = state.resolve(at=at(3_800))
        state = after(state, second)
        assert not second.first_resolution
        assert state.first_resolved_at == at(60)
        assert state.resolved_at == at(3_800)

    def test_a_closed_interaction_cannot_be_reopened(self) -> None:
        state = active()
        state = after(state, state.resolve(at=at(60)))
        state = after(state, state.close(at=at(70)))
        assert state.closed_at == at(70)
        with pytest.raises(RuleViolation):
            state.reopen(reason="again", at=at(80))

    def test_work_on_hold_is_resumed_or_wrapped_up_before_it_is_resolved(self) -> None:
        state = active()
        state = after(state, state.hold(at=at(30)))
        with pytest.raises(RuleViolation):
            state.resolve(at=at(40))


class TestAbandonment:
    def test_a_caller_hanging_up_in_the_queue_abandons(self) -> None:
        state = queued()
        event = state.abandon(at=at(65))
        state = after(state, event)
        assert state.status is InteractionStatus.ABANDONED
        assert state.abandoned_at == at(65)
        assert isinstance(event, Abandoned)
        assert event.waited_seconds == 60.0
        assert event.agent_id is None

    def test_abandoning_while_offered_names_the_offered_agent(self) -> None:
        state = queued()
        state = after(state, state.offer(BOB, at=at(10)))
        event = state.abandon(at=at(12))
        assert event.agent_id == BOB
        assert after(state, event).offered_agent_id is None

    def test_a_conversation_in_progress_is_not_abandoned(self) -> None:
        with pytest.raises(RuleViolation):
            active().abandon(at=at(30))

    def test_nothing_follows_an_abandonment_but_identification(self) -> None:
        state = queued()
        state = after(state, state.abandon(at=at(65)))
        allowed = [command for command in InteractionCommand if state.can(command)]
        assert allowed == [InteractionCommand.IDENTIFY_CUSTOMER, InteractionCommand.LINK_TO_CASE]


class TestBots:
    def test_a_bot_that_resolves_the_conversation_contains_it(self) -> None:
        state = bot_conversation()
        state = after(state, state.add_message(author_kind="bot", text="Done!", at=at(30)))
        state = after(state, state.bot_contain(resolution="Password reset link", at=at(40)))
        assert state.status is InteractionStatus.CONTAINED
        assert state.contained_at == at(40)
        state = after(state, state.close(at=at(50)))
        assert state.status is InteractionStatus.CLOSED

    def test_a_hand_off_carries_the_whole_transcript_to_a_human_queue(self) -> None:
        state = bot_conversation()
        state = after(state, state.add_message(author_kind="customer", text="Refund?", at=at(10)))
        state = after(state, state.add_message(author_kind="bot", text="One moment", at=at(11)))
        event = state.hand_off_to_human(
            queue="billing",
            reason="customer asked for a human",
            requirements=RoutingRequirements(language="ja"),
            at=at(20),
        )
        state = after(state, event)
        assert isinstance(event, HandedOffToHuman)
        assert event.transcript == state.transcript
        assert len(event.transcript) == 2
        assert state.status is InteractionStatus.QUEUED
        assert state.queued_at == at(20)
        assert state.handed_off_at == at(20)
        state = after(state, state.answer(ALICE, at=at(30)))
        assert state.status is InteractionStatus.ACTIVE

    def test_a_human_conversation_has_no_bot_to_contain_it(self) -> None:
        with pytest.raises(RuleViolation, match="not a bot conversation"):
            opened().bot_contain(at=at(10))

    def test_a_bot_cannot_contain_what_was_handed_off(self) -> None:
        state = bot_conversation()
        state = after(state, state.hand_off_to_human(queue="billing", reason="?", at=at(20)))
        with pytest.raises(RuleViolation):
            state.bot_contain(at=at(30))


class TestTime:
    def test_a_change_dated_before_the_last_change_is_refused(self) -> None:
        state = active()
        with pytest.raises(RuleViolation, match="back in time"):
            state.hold(at=at(19))

    def test_a_change_at_the_same_instant_is_fine(self) -> None:
        state = active()
        assert after(state, state.hold(at=at(20))).status is InteractionStatus.ON_HOLD


class TestEvents:
    def test_events_are_named_on_the_interaction_subjects(self) -> None:
        state = opened(customer_id=TARO)
        event = state.enqueue(queue="billing", at=at(5))
        assert InteractionOpened.event_name() == "opened"
        assert MessageAdded.event_name() == "message_added"
        assert event.bus_subject() == "crm.interaction.queued"

    def test_events_carry_the_customer_when_known(self) -> None:
        anonymous = opened()
        assert "customerid" not in anonymous.enqueue(queue="q", at=at(5)).bus_attributes()
        known = opened(customer_id=TARO).enqueue(queue="q", at=at(5))
        assert known.bus_attributes() == {"customerid": str(TARO), "channel": "phone"}

    def test_every_event_says_the_channel_direction_and_status_after_it(self) -> None:
        state = queued("email")
        event = state.offer(ALICE, at=at(10))
        assert event.channel is Channel.EMAIL
        assert event.direction is Direction.INBOUND
        assert event.status is InteractionStatus.OFFERED
        assert event.queue == "billing"
        assert event.customer_id == TARO


class TestTransitionTable:
    def test_every_command_has_a_rule(self) -> None:
        assert set(TRANSITIONS) == set(InteractionCommand)

    def test_nothing_leaves_closed_or_abandoned(self) -> None:
        for status in (InteractionStatus.CLOSED, InteractionStatus.ABANDONED):
            moving = [
                command
                for command, rule in TRANSITIONS.items()
                if status in rule.sources and rule.target not in (None, status)
            ]
            assert moving == []

    def test_every_status_can_be_reached(self) -> None:
        reached = {InteractionStatus.CREATED} | {
            rule.target for rule in TRANSITIONS.values() if rule.target is not None
        }
        assert reached == set(InteractionStatus)
