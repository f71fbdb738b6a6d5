"""The interaction lifecycle as a state machine: arbitrary commands, legal or not, against an
in-memory InteractionApplication, checked against the one transition table.

Legal commands move the status as `TRANSITIONS` says and store their events; illegal ones raise
RuleViolation and store nothing. After every step each aggregate rebuilt from the store equals
the state the commands returned, and its timestamps are in the order the KPIs assume.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from crmcore.application.interactions import InteractionApplication
from crmcore.domain.errors import DomainError, InvalidValue, RuleViolation
from crmcore.domain.interaction import (
    TRANSITIONS,
    AuthorKind,
    DeclineReason,
    Interaction,
    InteractionCommand,
    InteractionStatus,
)
from crmcore.domain.values import Channel

# Hypothesis stops shrinking a failure after 300 s; let it report before the default timeout.
pytestmark = pytest.mark.timeout(600)

MONDAY_9AM = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
ALICE = UUID("00000000-0000-4000-8000-00000000a11c")
BOB = UUID("00000000-0000-4000-8000-000000000b0b")
TARO = UUID("00000000-0000-4000-8000-0000000074a0")
HANAKO = UUID("00000000-0000-4000-8000-0000000da4a0")
MAX_INTERACTIONS = 3

agents = st.sampled_from([ALICE, BOB])
customers = st.sampled_from([TARO, HANAKO])
queues = st.sampled_from(["billing", "tier2", "web"])
reasons = st.sampled_from(list(DeclineReason))
authors = st.sampled_from(list(AuthorKind))
pauses = st.integers(min_value=0, max_value=3_600)
#: Mostly human conversations: a bot conversation ends quickly (contained or handed off).
bot_flags = st.sampled_from([False, False, False, True])
steps = st.sampled_from(["moving", "moving", "moving", "moving", "any", "any", "past", "open"])
#: Which of the open interactions a rule acts on (modulo how many there are).
picks = st.integers(min_value=0, max_value=MAX_INTERACTIONS - 1)

_C = InteractionCommand
_S = InteractionStatus
WITH_AN_AGENT = frozenset({_S.ACTIVE, _S.ON_HOLD, _S.WRAP_UP})


class InteractionLifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.app = InteractionApplication()
        self.clock = MONDAY_9AM
        self.tracked: dict[UUID, Interaction] = {}
        self.case_id: UUID | None = None

    # --- helpers ----------------------------------------------------------------------------

    def pick(self, index: int) -> Interaction:
        states = list(self.tracked.values())
        return states[index % len(states)]

    def stored(self) -> int:
        return self.app.recorder.max_notification_id() or 0

    def later(self, seconds: int) -> datetime:
        self.clock += timedelta(seconds=seconds)
        return self.clock

    def attempt(
        self,
        before: Interaction,
        command: InteractionCommand,
        action: Callable[[], Interaction],
        *,
        bad_arguments: type[DomainError] | None = None,
        events: int = 1,
    ) -> None:
        """Runs `action`, expecting what the transition table says and, when the status allows
        the command, `bad_arguments` (None: success with `events` stored)."""
        stored_before = self.stored()
        transition = TRANSITIONS[command]
        if not transition.allows(before.status, before.handled_by_bot):
            with pytest.raises(RuleViolation):
                action()
            assert self.stored() == stored_before
            return
        if bad_arguments is not None:
            with pytest.raises(bad_arguments):
                action()
            assert self.stored() == stored_before
            return
        after = action()
        event(f"{command} accepted")
        assert after.status is transition.next_status(before.status)
        assert after.version == before.version + 1
        assert self.stored() == stored_before + events
        self.tracked[after.id] = after

    # --- setup ------------------------------------------------------------------------------

    @initialize(
        channel=st.sampled_from(list(Channel)), with_bot=bot_flags, customer=st.none() | customers
    )
    def open_the_case_and_a_first_interaction(
        self, channel: Channel, with_bot: bool, customer: UUID | None
    ) -> None:
        self.case_id = self.app.open_case(subject="The issue", at=self.clock).id
        self.open_interaction(channel, with_bot, customer, when=self.later(1))

    def open_interaction(
        self, channel: Channel, with_bot: bool, customer: UUID | None, when: datetime
    ) -> None:
        opened = self.app.open_interaction(
            channel=channel, customer_id=customer, handled_by_bot=with_bot, at=when
        )
        assert opened.status is _S.CREATED
        assert opened.handled_by_bot == (with_bot or channel is Channel.CHATBOT)
        self.tracked[opened.id] = opened

    # --- the one rule: mostly a command the status allows, sometimes anything ---------------

    @rule(which=picks, step=steps, data=st.data())
    def act(self, which: int, step: str, data: st.DataObject) -> None:
        """One step on one interaction. `moving`: a command the status allows that changes it
        (so runs get deep into the lifecycle); `any`: any command, mostly refused; `past`: a
        change dated before the last one; `open`: another interaction to interleave."""
        state = self.pick(which)
        if step == "open" and len(self.tracked) < MAX_INTERACTIONS:
            self.open_interaction(
                data.draw(st.sampled_from(list(Channel)), label="channel"),
                data.draw(bot_flags, label="with_bot"),
                data.draw(st.none() | customers, label="customer"),
                when=self.later(data.draw(pauses, label="pause")),
            )
        elif step == "past":
            self.change_in_the_past(state, data)
        elif step == "any":
            command = data.draw(st.sampled_from(list(InteractionCommand)), label="command")
            self.run(state, command, data)
        else:
            allowed = sorted(command for command in InteractionCommand if state.can(command))
            moving = [command for command in allowed if TRANSITIONS[command].target is not None]
            self.run(state, data.draw(st.sampled_from(moving or allowed), label="command"), data)

    def change_in_the_past(self, state: Interaction, data: st.DataObject) -> None:
        """Whatever the status, a change dated before the last one is refused."""
        seconds_back = data.draw(st.integers(1, 600), label="seconds_back")
        customer = data.draw(customers, label="customer")
        before = self.stored()
        with pytest.raises(RuleViolation):
            self.app.identify_customer(
                state.id, customer, at=state.modified_on - timedelta(seconds=seconds_back)
            )
        assert self.stored() == before

    def run(self, state: Interaction, command: InteractionCommand, data: st.DataObject) -> None:
        """Draws arguments for `command` (valid ones, except where noted) and attempts it."""
        app, interaction_id = self.app, state.id
        when = self.later(data.draw(pauses, label="pause"))

        def draw_agent() -> UUID:
            # The offered agent, mostly: offers answered or declined by another are refused.
            return data.draw(
                st.sampled_from([state.offered_agent_id or ALICE, ALICE, BOB]), label="agent"
            )

        if command is _C.IDENTIFY_CUSTOMER:
            customer = data.draw(customers, label="customer")
            self.attempt(
                state,
                command,
                lambda: app.identify_customer(interaction_id, customer, at=when),
                bad_arguments=RuleViolation if customer == state.customer_id else None,
            )
        elif command is _C.LINK_TO_CASE:
            assert self.case_id is not None
            case_id = self.case_id

            def link() -> Interaction:
                app.link_interaction_to_case(case_id, interaction_id, at=when)
                return app.get_interaction(interaction_id)

            self.attempt(
                state,
                command,
                link,
                bad_arguments=RuleViolation if state.case_id is not None else None,
                events=2,  # the case's side of the link, in the same transaction
            )
        elif command is _C.QUEUE:
            queue = data.draw(queues, label="queue")
            self.attempt(state, command, lambda: app.queue(interaction_id, queue=queue, at=when))
        elif command is _C.OFFER:
            agent = draw_agent()
            self.attempt(state, command, lambda: app.offer(interaction_id, agent, at=when))
        elif command is _C.DECLINE_OFFER:
            agent = draw_agent()
            reason = data.draw(reasons, label="reason")
            self.attempt(
                state,
                command,
                lambda: app.decline_offer(interaction_id, agent, reason, at=when),
                bad_arguments=RuleViolation if agent != state.offered_agent_id else None,
            )
        elif command is _C.ANSWER:
            agent = draw_agent()
            offered_to_another = state.status is _S.OFFERED and agent != state.offered_agent_id
            self.attempt(
                state,
                command,
                lambda: app.answer(interaction_id, agent, at=when),
                bad_arguments=RuleViolation if offered_to_another else None,
            )
        elif command is _C.HOLD:
            self.attempt(state, command, lambda: app.hold(interaction_id, at=when))
        elif command is _C.RESUME:
            self.attempt(state, command, lambda: app.resume(interaction_id, at=when))
        elif command is _C.ADD_MESSAGE:
            self.add_message(state, data, when, draw_agent())
        elif command is _C.TRANSFER:
            to_agent = data.draw(st.none() | agents, label="to_agent")
            queue = data.draw(queues, label="queue")
            to_itself = to_agent is not None and to_agent == state.agent_id
            self.attempt(
                state,
                command,
                lambda: app.transfer(
                    interaction_id,
                    reason="needs someone else",
                    to_queue=None if to_agent else queue,
                    to_agent_id=to_agent,
                    at=when,
                ),
                bad_arguments=InvalidValue if to_itself else None,
            )
        elif command is _C.ESCALATE:
            tier = data.draw(st.integers(1, 3), label="tier")
            self.attempt(
                state,
                command,
                lambda: app.escalate(interaction_id, reason="over my limit", tier=tier, at=when),
            )
        elif command is _C.START_WRAP_UP:
            self.attempt(state, command, lambda: app.start_wrap_up(interaction_id, at=when))
        elif command is _C.RESOLVE:
            self.attempt(
                state,
                command,
                lambda: app.resolve(interaction_id, contact_reason="refund", at=when),
            )
        elif command is _C.REOPEN:
            self.attempt(
                state, command, lambda: app.reopen(interaction_id, reason="came back", at=when)
            )
        elif command is _C.CLOSE:
            self.attempt(state, command, lambda: app.close_interaction(interaction_id, at=when))
        elif command is _C.ABANDON:
            self.attempt(state, command, lambda: app.abandon(interaction_id, at=when))
        elif command is _C.BOT_CONTAIN:
            self.attempt(state, command, lambda: app.bot_contain(interaction_id, at=when))
        else:
            assert command is _C.HAND_OFF_TO_HUMAN
            queue = data.draw(queues, label="queue")
            self.attempt(
                state,
                command,
                lambda: app.hand_off_to_human(
                    interaction_id, queue=queue, reason="asked for a human", at=when
                ),
            )

    def add_message(
        self, state: Interaction, data: st.DataObject, when: datetime, agent: UUID
    ) -> None:
        author = data.draw(authors, label="author")
        public = author in (AuthorKind.CUSTOMER, AuthorKind.BOT) or data.draw(
            st.booleans(), label="public"
        )
        # An agent's first public reply on a case is also the case's first response.
        first_reply_on_case = (
            public
            and author is AuthorKind.AGENT
            and state.case_id is not None
            and self.app.get_case(state.case_id).first_response_at is None
        )
        self.attempt(
            state,
            _C.ADD_MESSAGE,
            lambda: self.app.add_message(
                state.id,
                author_kind=author,
                author_id=agent if author is AuthorKind.AGENT else None,
                text=f"{author} says hello",
                public=public,
                at=when,
            ),
            events=2 if first_reply_on_case else 1,
        )

    # --- invariants -------------------------------------------------------------------------

    @invariant()
    def the_store_rebuilds_the_tracked_states(self) -> None:
        for interaction_id, state in self.tracked.items():
            assert self.app.get_interaction(interaction_id) == state

    @invariant()
    def the_status_is_known_and_consistent(self) -> None:
        for state in self.tracked.values():
            assert state.status in set(InteractionStatus)
            assert (state.agent_id is not None) == (state.status in WITH_AN_AGENT)
            assert (state.offered_agent_id is not None) == (state.status is _S.OFFERED)
            assert (state.hold_started_at is not None) == (state.status is _S.ON_HOLD)
            assert state.hold_seconds >= 0
            assert set(state.agents) <= {ALICE, BOB}
            went_through_a_queue = state.status not in (_S.CREATED, _S.CONTAINED) and not (
                state.status is _S.CLOSED and state.contained_at is not None
            )
            assert (state.queued_at is not None) == went_through_a_queue

    @invariant()
    def timestamps_are_in_kpi_order(self) -> None:
        for state in self.tracked.values():
            self.check_timestamps(state)

    def check_timestamps(self, state: Interaction) -> None:
        created = state.created_at
        assert created <= state.modified_on <= self.clock

        def not_before(later: datetime | None, earlier: datetime | None) -> None:
            if later is not None and earlier is not None:
                assert later >= earlier

        for moment in (
            state.queued_at,
            state.offered_at,
            state.answered_at,
            state.first_agent_response_at,
            state.wrap_up_started_at,
            state.resolved_at,
            state.closed_at,
            state.abandoned_at,
            state.contained_at,
            state.handed_off_at,
        ):
            not_before(moment, created)
            not_before(state.modified_on, moment)
        not_before(state.waiting_since, state.queued_at)
        not_before(state.offered_at, state.queued_at)
        not_before(state.answered_at, state.queued_at)
        not_before(state.resolved_at, state.answered_at)
        not_before(state.resolved_at, state.first_resolved_at)
        not_before(state.abandoned_at, state.queued_at)
        not_before(state.closed_at, state.resolved_at or state.contained_at)
        moments = [entry.at for entry in state.transcript]
        assert moments == sorted(moments)


InteractionLifecycle.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestInteractionLifecycle = InteractionLifecycle.TestCase
