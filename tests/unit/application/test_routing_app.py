"""The routing application: commands through the engine, one transaction each, interaction
events from the bus, time driven by the clock it is given, listeners, recovery from a failed
store."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest
from eventsourcing.persistence import IntegrityError

from crmcore.application.routing import RoutingApplication
from crmcore.domain.agent import (
    AgentOfferMissed,
    Presence,
    Requirements,
    Skill,
    SkillRequirement,
)
from crmcore.domain.base import DomainEvent
from crmcore.domain.errors import ConcurrencyConflict, NotFound, RuleViolation
from crmcore.domain.interaction import Interaction, InteractionEvent, RoutingRequirements
from crmcore.domain.interaction import SkillRequirement as AskedSkill
from crmcore.domain.queue import RoutingStep, SetMinLevel
from crmcore.domain.routing import RoutingPolicy
from crmcore.domain.task import (
    AgentRule,
    ReleaseReason,
    RoutingOffered,
    TaskQueued,
    TaskReleased,
    TaskStatus,
)

T0 = datetime(2025, 4, 1, 9, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def app(clock: FakeClock) -> Iterator[RoutingApplication]:
    application = RoutingApplication(clock=clock, policy=RoutingPolicy(miss_cooldown_seconds=10))
    yield application
    application.shutdown()


def stored(app: RoutingApplication) -> list[DomainEvent]:
    notifications = app.recorder.select_notifications(start=None, limit=10_000)
    return [app.mapper.to_domain_event(n) for n in notifications]  # type: ignore[misc]


def kinds(events: Sequence[DomainEvent]) -> list[str]:
    return [type(event).__name__ for event in events]


def billing_floor(app: RoutingApplication) -> tuple[UUID, UUID]:
    """A billing chat queue and Aiko, available, who speaks Japanese and does billing at 4."""
    app.create_queue(
        name="Billing",
        channels=["chat"],
        requirements=Requirements(skills=(SkillRequirement(skill="billing", min_level=3),)),
        offer_timeout_seconds=20,
        max_misses=3,
    )
    aiko = app.register_agent(
        display_name="Aiko",
        skills=[Skill(name="billing", level=4)],
        languages=["ja"],
        capacity={"chat": 2},
    )
    app.set_presence(aiko.id, Presence.AVAILABLE)
    queue = app.find_queue("billing")
    assert queue is not None
    return queue.id, aiko.id


class TestOffersThroughTheApplication:
    def test_submitted_work_is_offered_accepted_and_completed(
        self, app: RoutingApplication
    ) -> None:
        _, aiko = billing_floor(app)

        task = app.submit_task(queue="Billing", channel="chat")
        assert task.status is TaskStatus.OFFERED
        assert task.agent_id == aiko
        assert app.offers_for(aiko) == [task]

        accepted = app.accept_offer(task.id, aiko)
        assert accepted.status is TaskStatus.ASSIGNED
        assert app.get_agent(aiko).holds(task.id)

        done = app.complete_task(task.id)
        assert done.status is TaskStatus.RELEASED
        assert app.get_agent(aiko).work == ()
        assert app.get_task(task.id).status is TaskStatus.RELEASED

    def test_each_command_and_its_decisions_are_stored_together(
        self, app: RoutingApplication
    ) -> None:
        _, aiko = billing_floor(app)
        before = len(stored(app))

        task = app.submit_task(queue="Billing", channel="chat")
        app.accept_offer(task.id, aiko)

        assert kinds(stored(app)[before:]) == [
            "TaskQueued",
            "RoutingOffered",
            "RoutingAccepted",
            "RoutingAssigned",
            "AgentWorkAssigned",
        ]

    def test_submitting_again_with_the_same_request_id_returns_the_first_task(
        self, app: RoutingApplication
    ) -> None:
        billing_floor(app)

        first = app.submit_task(queue="Billing", channel="chat", request_id="ticket-42")
        again = app.submit_task(queue="Billing", channel="chat", request_id="ticket-42")

        assert again.id == first.id
        assert len([e for e in stored(app) if isinstance(e, TaskQueued)]) == 1

    def test_work_submitted_to_an_unknown_queue_is_refused(self, app: RoutingApplication) -> None:
        with pytest.raises(NotFound):
            app.submit_task(queue="Nowhere", channel="chat")

    def test_only_the_offered_agent_can_accept(self, app: RoutingApplication) -> None:
        billing_floor(app)
        other = app.register_agent(display_name="Other")
        task = app.submit_task(queue="Billing", channel="chat")

        with pytest.raises(RuleViolation):
            app.accept_offer(task.id, other.id)

    def test_an_agent_coming_online_pulls_waiting_work(self, app: RoutingApplication) -> None:
        _, aiko = billing_floor(app)
        app.set_presence(aiko, Presence.BREAK)
        task = app.submit_task(queue="Billing", channel="chat")
        late = app.register_agent(
            display_name="Late", skills=[Skill(name="billing", level=5)], capacity={"chat": 1}
        )

        app.set_presence(late.id, Presence.AVAILABLE)

        assert app.get_task(task.id).agent_id == late.id


class TestTime:
    def test_an_unanswered_offer_times_out_on_the_clock(
        self, app: RoutingApplication, clock: FakeClock
    ) -> None:
        _, aiko = billing_floor(app)
        task = app.submit_task(queue="Billing", channel="chat")
        assert app.next_deadline() == T0 + timedelta(seconds=20)

        assert app.tick(clock.advance(19)) == []
        decided = app.tick(clock.advance(1))

        assert kinds(decided) == ["RoutingTimedOut", "AgentOfferMissed"]
        assert app.get_task(task.id).status is TaskStatus.WAITING
        assert app.next_deadline() == T0 + timedelta(seconds=30)
        again = app.tick(clock.advance(10))
        assert [(type(e), e.originator_id) for e in again] == [(RoutingOffered, task.id)]
        assert app.get_agent(aiko).missed_offers == 1

    def test_routing_steps_widen_on_the_clock(
        self, app: RoutingApplication, clock: FakeClock
    ) -> None:
        queue_id, aiko = billing_floor(app)
        app.change_routing_steps(
            queue_id,
            [RoutingStep(after_seconds=60, action=SetMinLevel(skill="billing", level=1))],
        )
        app.set_presence(aiko, Presence.BREAK)
        junior = app.register_agent(
            display_name="Junior", skills=[Skill(name="billing", level=1)], capacity={"chat": 1}
        )
        app.set_presence(junior.id, Presence.AVAILABLE)
        task = app.submit_task(queue="Billing", channel="chat")
        assert task.status is TaskStatus.WAITING

        assert app.tick(clock.advance(59)) == []
        app.tick(clock.advance(1))

        assert app.get_task(task.id).agent_id == junior.id


class TestInteractionEvents:
    def queued(
        self, clock: FakeClock, *, last_agent: UUID | None = None
    ) -> tuple[Interaction, InteractionEvent]:
        opened = Interaction.open(interaction_id=uuid4(), channel="chat", at=clock())
        interaction = opened.mutate(None)
        event = interaction.enqueue(
            queue="Billing",
            requirements=RoutingRequirements(
                skills=(AskedSkill(skill="billing", min_level=2),),
                priority=3,
                last_agent_id=last_agent,
            ),
            at=clock(),
        )
        return event.mutate(interaction), event

    def test_a_queued_interaction_becomes_work_offered_to_an_agent(
        self, app: RoutingApplication, clock: FakeClock
    ) -> None:
        _, aiko = billing_floor(app)
        interaction, queued = self.queued(clock)

        routed = app.handle_interaction_event(queued)

        assert kinds(routed) == ["TaskQueued", "RoutingOffered"]
        task = app.get_task(interaction.id)
        assert (task.agent_id, task.priority, task.interaction_version) == (aiko, 3, 2)

    def test_a_redelivered_event_changes_nothing(
        self, app: RoutingApplication, clock: FakeClock
    ) -> None:
        billing_floor(app)
        _, queued = self.queued(clock)
        app.handle_interaction_event(queued)
        before = len(stored(app))

        assert app.handle_interaction_event(queued) == []
        assert len(stored(app)) == before

    def test_answering_accepts_the_offer_and_wrap_up_frees_the_agent(
        self, app: RoutingApplication, clock: FakeClock
    ) -> None:
        _, aiko = billing_floor(app)
        interaction, queued = self.queued(clock)
        app.handle_interaction_event(queued)
        offered = interaction.offer(aiko, at=clock())
        interaction = offered.mutate(interaction)
        assert app.handle_interaction_event(offered) == []

        answered = interaction.answer(aiko, at=clock.advance(3))
        interaction = answered.mutate(interaction)
        assert kinds(app.handle_interaction_event(answered)) == [
            "RoutingAccepted",
            "RoutingAssigned",
            "AgentWorkAssigned",
        ]
        assert app.handle_interaction_event(answered) == []

        wrap_up = interaction.start_wrap_up(at=clock.advance(60))
        released = app.handle_interaction_event(wrap_up)

        assert kinds(released) == ["TaskReleased", "AgentWorkReleased"]
        assert isinstance(released[0], TaskReleased)
        assert released[0].reason is ReleaseReason.WRAP_UP
        assert app.get_agent(aiko).work == ()
        resolved = wrap_up.mutate(interaction).resolve(at=clock.advance(5))
        assert app.handle_interaction_event(resolved) == []

    def test_a_transfer_frees_the_agent_and_requeues_keeping_the_wait(
        self, app: RoutingApplication, clock: FakeClock
    ) -> None:
        _, aiko = billing_floor(app)
        specialist = app.register_agent(
            display_name="Specialist", skills=[Skill(name="billing", level=3)], capacity={"chat": 1}
        )
        interaction, queued = self.queued(clock)
        app.handle_interaction_event(queued)
        app.accept_offer(interaction.id, aiko)
        answered = interaction.answer(aiko, at=clock.advance(5))
        interaction = answered.mutate(interaction)
        app.handle_interaction_event(answered)
        app.set_presence(specialist.id, Presence.AVAILABLE)

        transfer = interaction.transfer(
            reason="needs a specialist", to_agent_id=specialist.id, at=clock.advance(30)
        )
        routed = app.handle_interaction_event(transfer)

        assert kinds(routed) == [
            "TaskReleased",
            "AgentWorkReleased",
            "TaskQueued",
            "RoutingOffered",
        ]
        assert app.get_agent(aiko).work == ()
        task = app.get_task(interaction.id)
        assert (task.queued_at, task.waiting_since) == (T0, T0)
        assert task.agent_id == specialist.id
        assert task.decision is not None
        assert task.decision.agent_rule is AgentRule.PREFERRED_AGENT

    def test_an_interaction_abandoned_while_waiting_leaves_routing(
        self, app: RoutingApplication, clock: FakeClock
    ) -> None:
        queue_id, aiko = billing_floor(app)
        app.set_presence(aiko, Presence.BREAK)
        interaction, queued = self.queued(clock)
        app.handle_interaction_event(queued)

        abandoned = interaction.abandon(at=clock.advance(40))
        app.handle_interaction_event(abandoned)

        assert app.get_task(interaction.id).status is TaskStatus.RELEASED
        status = app.queue_status(queue_id)
        assert (status.waiting, status.today.abandoned) == (0, 1)

    def test_work_answered_by_someone_routing_does_not_know_leaves_routing(
        self, app: RoutingApplication, clock: FakeClock
    ) -> None:
        _, aiko = billing_floor(app)
        app.set_presence(aiko, Presence.BREAK)
        interaction, queued = self.queued(clock)
        app.handle_interaction_event(queued)

        answered = interaction.answer(uuid4(), at=clock.advance(10))
        routed = app.handle_interaction_event(answered)

        assert kinds(routed) == ["TaskReleased"]
        assert app.get_task(interaction.id).release_reason is ReleaseReason.ANSWERED_ELSEWHERE


class TestListenersAndRecovery:
    def test_listeners_hear_every_stored_batch_in_order(self, app: RoutingApplication) -> None:
        heard: list[list[str]] = []
        remove = app.add_listener(lambda events: heard.append(kinds(events)))
        billing_floor(app)
        app.submit_task(queue="Billing", channel="chat")
        remove()
        app.submit_task(queue="Billing", channel="chat")

        assert heard[-1] == ["TaskQueued", "RoutingOffered"]
        assert ["QueueCreated", "QueueNameClaimed"] in heard

    def test_a_failed_store_leaves_the_engine_as_the_store_is(
        self, app: RoutingApplication, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        _, aiko = billing_floor(app)
        real_save = app.save

        def failing_save(*events: object) -> None:
            raise IntegrityError("someone else wrote first")

        monkeypatch.setattr(app, "save", failing_save)
        with pytest.raises(ConcurrencyConflict):
            app.submit_task(queue="Billing", channel="chat")
        monkeypatch.setattr(app, "save", real_save)

        assert app.offers_for(aiko) == []
        assert app.engine.tasks() == []
        task = app.submit_task(queue="Billing", channel="chat")
        assert task.agent_id == aiko

    def test_an_explanation_and_status_come_from_the_engine(self, app: RoutingApplication) -> None:
        queue_id, aiko = billing_floor(app)
        task = app.submit_task(queue="Billing", channel="chat")

        explained = app.explain(task.id)
        status = app.queue_status(queue_id)

        assert explained.decision is not None
        assert explained.task.agent_id == aiko
        assert (status.offered, status.agents_available) == (1, 1)


class TestWorkforceCommandsGoThroughTheEngine:
    def test_an_agent_read_is_the_engines_state(self, app: RoutingApplication) -> None:
        _, aiko = billing_floor(app)
        task = app.submit_task(queue="Billing", channel="chat")
        app.accept_offer(task.id, aiko)

        agent = app.get_agent(aiko)

        assert agent.holds(task.id)
        assert agent == app.engine.agent(aiko)

    def test_a_stale_version_is_refused(self, app: RoutingApplication) -> None:
        _, aiko = billing_floor(app)

        with pytest.raises(ConcurrencyConflict):
            app.update_agent_profile(aiko, display_name="Aiko T.", expected_version=1)

    def test_missed_offers_take_an_agent_away_after_the_queues_limit(
        self, app: RoutingApplication
    ) -> None:
        queue_id, aiko = billing_floor(app)
        app.update_queue(queue_id, max_misses=1)
        task = app.submit_task(queue="Billing", channel="chat")

        app.reject_offer(task.id, aiko)

        assert app.get_agent(aiko).presence is Presence.BREAK
        missed = [e for e in stored(app) if isinstance(e, AgentOfferMissed)]
        assert len(missed) == 1
