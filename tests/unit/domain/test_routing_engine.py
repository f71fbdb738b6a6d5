"""The routing engine, rule by rule, on hand-made contact-centre floors.

Each scenario runs on the indexed engine and on the reference scan (`ScanEngine`): both must
make exactly the decisions the rule asks for.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from uuid import UUID

import msgspec
import pytest

from crmcore.domain.agent import (
    AgentOfferMissed,
    AgentPresenceChanged,
    Presence,
    Requirements,
    SkillRequirement,
)
from crmcore.domain.errors import InvalidValue, NotFound, RuleViolation
from crmcore.domain.queue import (
    AddOverflowPool,
    DropSkill,
    Fallback,
    FallbackKind,
    OverflowPool,
    PoolKind,
    RoutingStep,
    SetMinLevel,
)
from crmcore.domain.routing import RoutingEngine, RoutingPolicy, ScanEngine
from crmcore.domain.task import (
    AgentRule,
    MatchDirection,
    ReleaseReason,
    RevokeReason,
    RoutingOfferRevoked,
    RoutingRejected,
    RoutingTimedOut,
    TaskFellBack,
    TaskReleased,
    TaskStatus,
)
from tests.unit.domain.routing_floor import T0, Floor, named

EngineFactory = Callable[[], RoutingEngine]


@pytest.fixture(params=["indexed", "scan"])
def floor(request: pytest.FixtureRequest) -> Floor:
    engine = RoutingEngine() if request.param == "indexed" else ScanEngine()
    return Floor(engine)


class TestStickyAgent:
    def test_the_last_agent_gets_the_work_back_over_a_better_agent(self, floor: Floor) -> None:
        floor.queue("Billing", skills={"billing": 2})
        haruto = floor.agent("Haruto", skills={"billing": 2})
        floor.agent("Yui", skills={"billing": 5})

        task = floor.submit("Billing", "refund #1", last_agent=haruto)

        assert floor.offered_to(task) == haruto
        assert floor.decision(task).agent_rule is AgentRule.LAST_AGENT

    def test_a_busy_last_agent_is_passed_over_for_the_best_available(self, floor: Floor) -> None:
        floor.queue("Billing", skills={"billing": 2})
        haruto = floor.agent("Haruto", skills={"billing": 2}, presence=Presence.BREAK)
        yui = floor.agent("Yui", skills={"billing": 5})

        task = floor.submit("Billing", "refund #1", last_agent=haruto)

        assert floor.offered_to(task) == yui

    def test_a_last_agent_who_no_longer_qualifies_is_not_sticky(self, floor: Floor) -> None:
        floor.queue("Billing", skills={"billing": 4})
        haruto = floor.agent("Haruto", skills={"billing": 2})
        yui = floor.agent("Yui", skills={"billing": 4})

        task = floor.submit("Billing", "refund #1", last_agent=haruto)

        assert floor.offered_to(task) == yui

    def test_an_explicit_transfer_target_beats_the_last_agent(self, floor: Floor) -> None:
        floor.queue("Billing")
        haruto = floor.agent("Haruto")
        sota = floor.agent("Sota")

        task = floor.submit("Billing", "refund #1", last_agent=haruto, preferred_agent=sota)

        assert floor.offered_to(task) == sota
        assert floor.decision(task).agent_rule is AgentRule.PREFERRED_AGENT


class TestChoosingTheAgent:
    def test_best_proficiency_wins_summed_over_the_required_skills(self, floor: Floor) -> None:
        floor.queue("Router support", skills={"routers": 2, "japanese": 2})
        floor.agent("Specialist", skills={"routers": 5, "japanese": 2})  # sum 7
        allround = floor.agent("All-rounder", skills={"routers": 4, "japanese": 4})  # sum 8

        task = floor.submit("Router support", "no internet")

        assert floor.offered_to(task) == allround
        decision = floor.task(task).decision
        assert decision is not None
        assert decision.proficiency == 8
        assert decision.agent_rule is AgentRule.BEST_MATCH

    def test_among_equally_proficient_agents_the_least_loaded_wins(self, floor: Floor) -> None:
        floor.queue("Chat")
        busy = floor.agent("Busy Ren", capacity={"chat": 2})
        floor.run(_held(floor, busy, "earlier chat"))
        calm = floor.agent("Calm Mio", capacity={"chat": 2})

        task = floor.submit("Chat", "hello")

        assert floor.offered_to(task) == calm

    def test_among_equally_loaded_agents_the_longest_idle_wins(self, floor: Floor) -> None:
        floor.queue("Chat")
        fresh = floor.agent("Fresh Kaito")
        floor.now += timedelta(seconds=5)
        floor.agent("Just back Aoi")
        floor.now += timedelta(seconds=5)

        task = floor.submit("Chat", "hello")

        assert floor.offered_to(task) == fresh

    def test_a_complete_tie_is_broken_by_agent_id(self, floor: Floor) -> None:
        floor.queue("Chat")
        low = floor.agent("Twin A", agent_id=UUID(int=1))
        floor.agent("Twin B", agent_id=UUID(int=2))

        task = floor.submit("Chat", "hello")

        assert floor.offered_to(task) == low

    def test_load_counts_pending_offers(self, floor: Floor) -> None:
        floor.queue("Chat")
        first = floor.agent("Kenta", capacity={"chat": 2}, agent_id=UUID(int=1))
        second = floor.agent("Rin", capacity={"chat": 2}, agent_id=UUID(int=2))
        floor.now += timedelta(seconds=1)

        one = floor.submit("Chat", "one")
        two = floor.submit("Chat", "two")

        assert floor.offered_to(one) == first
        assert floor.offered_to(two) == second
        assert floor.engine.load_of(first) == pytest.approx(0.5)


class TestOrderOfWork:
    def test_freed_capacity_pulls_the_oldest_waiting_work(self, floor: Floor) -> None:
        floor.queue("Chat")
        agent = floor.agent("Sakura", capacity={"chat": 1})
        held = floor.submit("Chat", "first")
        floor.accept(held)
        floor.now += timedelta(seconds=1)
        newer = floor.submit("Chat", "newer", waited=10)
        older = floor.submit("Chat", "older", waited=50)

        floor.complete(held)

        assert floor.offers() == [(older, agent)]
        assert floor.decision(older).direction is MatchDirection.AGENT_TO_WORK
        assert floor.task(newer).status is TaskStatus.WAITING

    def test_a_priority_point_is_worth_a_fixed_wait(self) -> None:
        floor = Floor(policy=RoutingPolicy(priority_wait_seconds=60))
        floor.queue("Chat")
        agent = floor.agent("Sakura", capacity={"chat": 1}, presence=Presence.BREAK)
        long_wait = floor.submit("Chat", "waited 3 min", waited=180)
        urgent = floor.submit("Chat", "priority 2, waited 70 s", priority=2, waited=70)
        aged = floor.submit("Chat", "waited 4 min", waited=240)

        floor.presence(agent, Presence.AVAILABLE)
        # Effective waits: 180 s, 70 + 2 × 60 = 190 s, 240 s.
        assert floor.offers() == [(aged, agent)]
        floor.accept(aged)
        floor.complete(aged)
        assert floor.offers() == [(urgent, agent)]
        floor.accept(urgent)
        floor.complete(urgent)
        assert floor.offers() == [(long_wait, agent)]

    def test_the_queue_priority_adds_to_the_works(self, floor: Floor) -> None:
        floor.queue("VIP", priority=10)
        floor.queue("Chat")
        agent = floor.agent("Sakura", capacity={"chat": 1}, presence=Presence.BREAK)
        floor.submit("Chat", "ordinary", waited=300)
        vip = floor.submit("VIP", "vip", waited=1)

        floor.presence(agent, Presence.AVAILABLE)

        assert floor.offers() == [(vip, agent)]

    def test_a_small_queue_is_not_starved_by_a_busy_one(self, floor: Floor) -> None:
        floor.queue("Busy sales", skills={"sales": 1})
        floor.queue("Tiny billing", skills={"billing": 1})
        agent = floor.agent(
            "Hina", skills={"sales": 3, "billing": 3}, capacity={"chat": 1}, presence=Presence.BREAK
        )
        for number in range(20):
            floor.submit("Busy sales", f"sale {number}", waited=30 - number)
        billing = floor.submit("Tiny billing", "invoice question", waited=45)

        floor.presence(agent, Presence.AVAILABLE)

        assert floor.offers() == [(billing, agent)]

    def test_an_agent_takes_work_on_any_channel_it_has_room_on_oldest_first(
        self, floor: Floor
    ) -> None:
        floor.queue("Mail", channels=("email",))
        floor.queue("Chat")
        agent = floor.agent("Daiki", capacity={"chat": 1, "email": 1}, presence=Presence.BREAK)
        chat = floor.submit("Chat", "chat", waited=20)
        mail = floor.submit("Mail", "mail", channel="email", waited=600)

        floor.presence(agent, Presence.AVAILABLE)

        assert floor.offers() == [(mail, agent), (chat, agent)]


class TestWideningSteps:
    def test_a_lowered_level_lets_more_agents_in_on_time_by_itself(self, floor: Floor) -> None:
        floor.queue(
            "Billing",
            skills={"billing": 4},
            steps=[RoutingStep(after_seconds=30, action=SetMinLevel(skill="billing", level=2))],
        )
        junior = floor.agent("Junior", skills={"billing": 2})
        task = floor.submit("Billing", "refund")
        assert floor.offered_to(task) is None
        assert floor.engine.next_deadline() == T0 + timedelta(seconds=30)

        assert floor.advance(29) == []
        floor.advance(1)

        assert floor.offered_to(task) == junior
        decision = floor.task(task).decision
        assert decision is not None
        assert decision.step == 1

    def test_a_later_step_can_raise_a_level_again(self, floor: Floor) -> None:
        floor.queue(
            "Billing",
            skills={"billing": 3},
            steps=[RoutingStep(after_seconds=10, action=SetMinLevel(skill="billing", level=5))],
        )
        task = floor.submit("Billing", "refund")
        floor.advance(10)
        floor.agent("Middle", skills={"billing": 3})

        assert floor.offered_to(task) is None

    def test_a_dropped_skill_is_no_longer_asked(self, floor: Floor) -> None:
        floor.queue(
            "Billing in Japanese",
            skills={"billing": 2, "keigo": 3},
            steps=[RoutingStep(after_seconds=60, action=DropSkill(skill="keigo"))],
        )
        casual = floor.agent("Casual", skills={"billing": 3})
        task = floor.submit("Billing in Japanese", "refund")

        floor.advance(59)
        assert floor.offered_to(task) is None
        floor.advance(1)
        assert floor.offered_to(task) == casual

    def test_an_overflow_team_joins_and_ranks_below_skilled_agents(self, floor: Floor) -> None:
        floor.queue(
            "Billing",
            skills={"billing": 3},
            steps=[
                RoutingStep(
                    after_seconds=60,
                    action=AddOverflowPool(pool=OverflowPool(kind=PoolKind.TEAM, name="sales")),
                )
            ],
        )
        seller = floor.agent("Seller", teams=("sales",))
        task = floor.submit("Billing", "refund")
        assert floor.offered_to(task) is None

        floor.advance(60)

        assert floor.offered_to(task) == seller
        decision = floor.task(task).decision
        assert decision is not None
        assert decision.proficiency == 0
        assert decision.pools == (OverflowPool(kind=PoolKind.TEAM, name="sales"),)

    def test_a_pool_waives_skills_but_not_the_language(self, floor: Floor) -> None:
        floor.queue(
            "Japanese billing",
            skills={"billing": 3},
            language="ja",
            steps=[
                RoutingStep(
                    after_seconds=0,
                    action=AddOverflowPool(pool=OverflowPool(kind=PoolKind.TEAM, name="sales")),
                )
            ],
        )
        floor.agent("English seller", teams=("sales",), languages=("en",))
        japanese = floor.agent("Japanese seller", teams=("sales",), languages=("ja",))

        task = floor.submit("Japanese billing", "refund")

        assert floor.offered_to(task) == japanese

    def test_overflow_queues_join_once_the_service_level_is_at_risk(self, floor: Floor) -> None:
        floor.queue("Retention", skills={"retention": 3})
        floor.queue("Cancellations", skills={"cancel": 3}, overflow=("Retention",), threshold=20)
        keeper = floor.agent("Keeper", skills={"retention": 4})
        task = floor.submit("Cancellations", "please cancel")
        assert floor.offered_to(task) is None

        floor.advance(20)

        assert floor.offered_to(task) == keeper

    def test_the_last_step_hands_the_work_to_the_fallback(self, floor: Floor) -> None:
        floor.queue(
            "Billing",
            skills={"billing": 5},
            steps=[RoutingStep(after_seconds=300, action=Fallback(to=FallbackKind.CALLBACK))],
        )
        task = floor.submit("Billing", "refund")

        decided = floor.advance(300)

        assert [type(event) for event in decided] == [TaskFellBack]
        assert decided[0].originator_id == task
        assert floor.engine.task(task) is None

    def test_work_offered_when_its_fallback_comes_falls_back_once_it_returns(
        self, floor: Floor
    ) -> None:
        floor.queue(
            "Billing",
            steps=[RoutingStep(after_seconds=20, action=Fallback(to=FallbackKind.BOT))],
            offer_timeout=30,
        )
        floor.agent("Slow Sho")
        task = floor.submit("Billing", "refund")
        assert floor.offered_to(task) is not None

        floor.advance(20)
        assert floor.offered_to(task) is not None
        decided = floor.advance(10)

        assert [type(event) for event in decided] == [
            RoutingTimedOut,
            AgentOfferMissed,
            TaskFellBack,
        ]


class TestExclusivity:
    def test_an_agent_on_a_call_gets_nothing_else(self, floor: Floor) -> None:
        floor.queue("Calls", channels=("phone",))
        floor.queue("Chat")
        agent = floor.agent("Takumi", capacity={"phone": 1, "chat": 3})
        call = floor.submit("Calls", "call", channel="phone")
        floor.accept(call)

        chat = floor.submit("Chat", "chat")

        assert floor.offered_to(chat) is None
        floor.complete(call)
        assert floor.offers() == [(chat, agent)]

    def test_an_agent_chatting_gets_no_call(self, floor: Floor) -> None:
        floor.queue("Calls", channels=("phone",))
        floor.queue("Chat")
        floor.agent("Takumi", capacity={"phone": 1, "chat": 3})
        floor.accept(floor.submit("Chat", "chat"))

        call = floor.submit("Calls", "call", channel="phone")

        assert floor.offered_to(call) is None

    def test_a_pending_call_offer_holds_the_agent_for_the_call(self, floor: Floor) -> None:
        floor.queue("Calls", channels=("phone",))
        floor.queue("Chat")
        floor.agent("Takumi", capacity={"phone": 1, "chat": 3})
        floor.submit("Calls", "call", channel="phone")

        chat = floor.submit("Chat", "chat")

        assert floor.offered_to(chat) is None


class TestMissedOffers:
    def test_a_rejected_offer_goes_back_in_its_place_and_the_agent_cools_down(
        self, floor: Floor
    ) -> None:
        floor.queue("Chat")
        picky = floor.agent("Picky", capacity={"chat": 1}, agent_id=UUID(int=1))
        older = floor.submit("Chat", "older", waited=60)
        assert floor.offered_to(older) == picky
        newer = floor.submit("Chat", "newer", waited=5)

        decided = floor.reject(older)

        assert [type(event) for event in decided] == []
        assert floor.task(older).status is TaskStatus.WAITING
        other = floor.agent("Other", capacity={"chat": 1}, agent_id=UUID(int=2))
        assert floor.offers() == [(older, other)]
        assert floor.offered_to(newer) is None

    def test_the_cooling_agent_gets_offers_again_when_the_cooldown_ends(self) -> None:
        floor = Floor(policy=RoutingPolicy(miss_cooldown_seconds=10))
        floor.queue("Chat")
        agent = floor.agent("Picky", capacity={"chat": 1})
        task = floor.submit("Chat", "refund")
        floor.reject(task)
        assert floor.offered_to(task) is None
        assert floor.engine.next_deadline() == T0 + timedelta(seconds=10)

        assert floor.advance(9.9) == []
        floor.advance(0.1)

        assert floor.offers() == [(task, agent)]

    def test_a_timed_out_offer_goes_back_and_the_agent_cools_down(self, floor: Floor) -> None:
        floor.queue("Chat", offer_timeout=15)
        floor.agent("Asleep", capacity={"chat": 1}, agent_id=UUID(int=1))
        task = floor.submit("Chat", "refund")

        decided = floor.advance(15)

        assert [type(event) for event in decided] == [RoutingTimedOut, AgentOfferMissed]
        awake = floor.agent("Awake", capacity={"chat": 1}, agent_id=UUID(int=2))
        assert floor.offers() == [(task, awake)]

    def test_too_many_misses_take_the_agent_away_and_revoke_its_offers(self, floor: Floor) -> None:
        floor.queue("Chat", max_misses=2, offer_timeout=10)
        absent = floor.agent("Absent", capacity={"chat": 3})
        first = floor.submit("Chat", "first", waited=3)
        second = floor.submit("Chat", "second", waited=2)
        assert floor.offered_to(first) == absent
        assert floor.offered_to(second) == absent
        floor.reject(first)
        assert floor.offered_to(second) == absent

        decided = floor.reject(second)

        agent = floor.engine.agent(absent)
        assert agent is not None
        assert agent.presence is Presence.BREAK
        assert decided == []
        assert floor.task(first).status is TaskStatus.WAITING

    def test_an_agent_who_goes_on_break_has_pending_offers_revoked(self, floor: Floor) -> None:
        floor.queue("Chat")
        leaving = floor.agent("Leaving", agent_id=UUID(int=1))
        task = floor.submit("Chat", "refund")
        assert floor.offered_to(task) == leaving
        staying = floor.agent("Staying", agent_id=UUID(int=2))

        decided = floor.presence(leaving, Presence.BREAK)

        assert isinstance(decided[0], RoutingOfferRevoked)
        assert decided[0].reason is RevokeReason.AGENT_UNAVAILABLE
        assert floor.offers() == [(task, staying)]


class TestPresence:
    def test_work_never_goes_to_an_offline_agent(self, floor: Floor) -> None:
        floor.queue("Chat")
        floor.agent("Gone", presence=Presence.OFFLINE)
        task = floor.submit("Chat", "refund")

        assert floor.offered_to(task) is None

    @pytest.mark.parametrize("presence", [Presence.BUSY, Presence.BREAK, Presence.AFTER_CALL_WORK])
    def test_only_available_agents_are_offered_work(self, floor: Floor, presence: Presence) -> None:
        floor.queue("Chat")
        agent = floor.agent("Nao", presence=presence)
        task = floor.submit("Chat", "refund")
        assert floor.offered_to(task) is None

        floor.presence(agent, Presence.AVAILABLE)

        assert floor.offers() == [(task, agent)]

    def test_an_agent_logging_in_pulls_the_waiting_work_up_to_capacity(self, floor: Floor) -> None:
        floor.queue("Chat")
        tasks = [floor.submit("Chat", f"chat {n}", waited=10 - n) for n in range(4)]
        agent = floor.agent("Late Riko", capacity={"chat": 3})

        assert floor.offers() == [(task, agent) for task in tasks[:3]]


class TestLeavingRouting:
    def test_released_work_frees_the_agent_for_the_next(self, floor: Floor) -> None:
        floor.queue("Chat")
        agent = floor.agent("Emi", capacity={"chat": 1})
        first = floor.submit("Chat", "first")
        floor.accept(first)
        second = floor.submit("Chat", "second")
        assert floor.offered_to(second) is None

        floor.complete(first, ReleaseReason.WRAP_UP)

        assert floor.offers() == [(second, agent)]
        assert floor.engine.agent(agent) is not None
        assert floor.engine.agent(agent).work == ()  # type: ignore[union-attr]

    def test_abandoned_offered_work_frees_the_offer(self, floor: Floor) -> None:
        floor.queue("Chat")
        agent = floor.agent("Emi", capacity={"chat": 1})
        first = floor.submit("Chat", "first")
        second = floor.submit("Chat", "second")

        decided = floor.complete(first, ReleaseReason.ABANDONED)

        assert floor.offers(decided) == [(second, agent)]
        assert isinstance(floor.log[-2], TaskReleased)

    def test_work_waits_for_a_queue_that_does_not_exist_yet(self) -> None:
        floor = Floor()
        floor.queue("Chat")
        agent = floor.agent("Emi")
        event = floor.engine.submit(named("task:early"), queue="Chat", channel="chat", at=T0)
        orphan = msgspec.structs.replace(event, queue="Later")
        floor.run(orphan)
        assert floor.offered_to(orphan.originator_id) is None

        floor.queue("Later")

        assert floor.offers() == [(orphan.originator_id, agent)]


class TestQueueChanges:
    def test_a_changed_queue_keeps_asking_its_own_requirements(self, floor: Floor) -> None:
        billing = floor.queue("Billing", skills={"billing": 3})
        floor.queue("Sales", skills={"sales": 3})
        floor.run(billing.update(priority=5, at=floor.now))
        seller = floor.agent("Seller", skills={"sales": 5})
        biller = floor.agent("Biller", skills={"billing": 5})

        sale = floor.submit("Sales", "sale")
        bill = floor.submit("Billing", "bill")

        assert floor.offered_to(sale) == seller
        assert floor.offered_to(bill) == biller

    def test_raising_a_queues_requirements_moves_its_waiting_work(self, floor: Floor) -> None:
        billing = floor.queue("Billing", skills={"billing": 1})
        floor.agent("Junior", skills={"billing": 1}, presence=Presence.BREAK)
        task = floor.submit("Billing", "bill")
        floor.run(
            billing.update(
                requirements=Requirements(skills=(SkillRequirement(skill="billing", min_level=4),)),
                at=floor.now,
            )
        )

        floor.presence(named("agent:Junior"), Presence.AVAILABLE)
        assert floor.offered_to(task) is None
        senior = floor.agent("Senior", skills={"billing": 4})
        assert floor.offered_to(task) == senior


class TestCommandsRefused:
    def test_accepting_an_offer_made_to_someone_else(self) -> None:
        floor = Floor()
        floor.queue("Chat")
        floor.agent("Emi")
        other = floor.agent("Other", presence=Presence.BREAK)
        task = floor.submit("Chat", "refund")

        with pytest.raises(RuleViolation):
            floor.engine.accept(task, other, at=floor.now)

    def test_submitting_to_an_unknown_queue(self) -> None:
        with pytest.raises(NotFound):
            RoutingEngine().submit(named("x"), queue="Nowhere", channel="chat", at=T0)

    def test_a_policy_out_of_range(self) -> None:
        with pytest.raises(InvalidValue):
            RoutingPolicy(priority_wait_seconds=-1)


class TestQueueStatusAndExplanations:
    def test_queue_status_counts_work_agents_and_todays_service_level(self) -> None:
        floor = Floor()
        queue = floor.queue("Chat", threshold=20)
        quick = floor.agent("Quick", capacity={"chat": 1})
        floor.agent("Resting", presence=Presence.BREAK)
        answered = floor.submit("Chat", "answered quickly")
        floor.accept(answered)
        floor.submit("Chat", "waiting", waited=40)
        floor.submit("Chat", "abandoning", waited=10)
        floor.complete(named("task:abandoning"), ReleaseReason.ABANDONED)
        floor.now += timedelta(seconds=5)

        status = floor.engine.queue_status(queue.id, floor.now)

        assert (status.waiting, status.offered, status.assigned) == (1, 0, 1)
        assert status.oldest_wait_seconds == pytest.approx(45)
        assert (status.agents_available, status.agents_busy) == (0, 2)
        assert (status.today.queued, status.today.answered, status.today.abandoned) == (3, 1, 1)
        assert status.today.service_level() == pytest.approx(0.5)
        assert quick in {task.agent_id for task in floor.engine.tasks()}

    def test_an_explanation_says_what_the_work_asks_and_who_could_take_it(self) -> None:
        floor = Floor()
        floor.queue(
            "Billing",
            skills={"billing": 4},
            steps=[RoutingStep(after_seconds=60, action=SetMinLevel(skill="billing", level=2))],
        )
        floor.agent("Junior", skills={"billing": 2}, presence=Presence.BREAK)
        task = floor.submit("Billing", "refund")

        explained = floor.engine.explain(floor.task(task), floor.now)

        assert explained.step == 0
        assert explained.agents_meeting == 0
        assert explained.next_step_at == T0 + timedelta(seconds=60)
        assert "billing≥4" in explained.summary

    def test_an_offer_is_explained_by_its_decision(self) -> None:
        floor = Floor()
        floor.queue("Billing", skills={"billing": 2})
        floor.agent("Senior", skills={"billing": 5})
        task = floor.submit("Billing", "refund", waited=12)

        explained = floor.engine.explain(floor.task(task), floor.now)

        assert explained.decision is not None
        assert explained.decision.proficiency == 5
        assert explained.decision.waited_seconds == pytest.approx(12)
        assert "best_match" in explained.summary


class TestReplay:
    def test_replaying_the_log_rebuilds_the_state(self) -> None:
        floor = _busy_floor()

        replayed = RoutingEngine()
        replayed.apply_all(floor.log)

        assert _facts(replayed) == _facts(floor.engine)
        assert replayed.settle() == []
        assert replayed.decide(floor.now) == []

    def test_a_snapshot_restores_the_state(self) -> None:
        floor = _busy_floor()

        restored = RoutingEngine.restore(floor.engine.snapshot())

        assert _facts(restored) == _facts(floor.engine)
        assert restored.settle() == []
        assert restored.decide(floor.now) == []

    def test_the_restored_engine_goes_on_deciding_like_the_original(self) -> None:
        floor = _busy_floor()
        twin = Floor(RoutingEngine.restore(floor.engine.snapshot()))
        assert twin.engine.settle() == []
        twin.now = floor.now
        before = len(floor.log)

        for each in (floor, twin):
            each.advance(45)
            each.submit("Billing", "late refund")

        assert len(floor.log) > before
        assert floor.log[before:] == twin.log
        assert _facts(twin.engine) == _facts(floor.engine)


def _held(floor: Floor, agent: UUID, name: str) -> tuple[AgentPresenceChanged, ...]:
    """Events giving `agent` some chat work outside routing (as if picked elsewhere)."""
    state = floor.engine.agent(agent)
    assert state is not None
    return (state.assign_work(named(f"work:{name}"), "chat", at=floor.now),)  # type: ignore[return-value]


def _facts(engine: RoutingEngine) -> object:
    return msgspec.structs.replace(engine.snapshot(), clock=None)


def _busy_floor() -> Floor:
    floor = Floor()
    floor.queue(
        "Billing",
        skills={"billing": 3},
        steps=[RoutingStep(after_seconds=30, action=SetMinLevel(skill="billing", level=1))],
        offer_timeout=20,
    )
    floor.queue("Chat")
    agents = [
        floor.agent("Ai", skills={"billing": 4}, capacity={"chat": 2}),
        floor.agent("Bo", skills={"billing": 1}, capacity={"chat": 1}),
        floor.agent("Chi", capacity={"chat": 2, "phone": 1}, presence=Presence.BREAK),
    ]
    for number in range(6):
        floor.submit("Billing" if number % 2 else "Chat", f"work {number}", waited=number)
    first_offer = next(task for task in floor.engine.tasks() if task.status is TaskStatus.OFFERED)
    floor.accept(first_offer.id)
    floor.advance(25)
    floor.presence(agents[2], Presence.AVAILABLE)
    rejected = next(task for task in floor.engine.tasks() if task.status is TaskStatus.OFFERED)
    floor.reject(rejected.id)
    floor.advance(40)
    assert any(isinstance(event, RoutingRejected) for event in floor.log)
    return floor
