"""The workforce application: agents and queues stored as events, unique names, idempotency."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest
from hypothesis import given, settings

from crmcore.application.workforce import WorkforceApplication
from crmcore.domain.agent import Agent, Presence, Skill
from crmcore.domain.errors import (
    AlreadyExists,
    ConcurrencyConflict,
    DomainError,
    InvalidValue,
    NotFound,
    RuleViolation,
)
from crmcore.domain.queue import (
    DropSkill,
    Fallback,
    FallbackKind,
    Queue,
    Requirements,
    RoutingStep,
    SkillRequirement,
)
from crmcore.domain.values import Channel
from tests.unit.domain.test_agent import (
    Assign,
    ChangeCapacity,
    Command,
    Release,
    SetPresence,
    assert_assignment_fits,
    assert_rules_hold,
    capacities,
    commands,
    work_for,
)

T0 = datetime(2025, 4, 1, 9, 0, tzinfo=UTC)
BILLING = Requirements(
    skills=(
        SkillRequirement(skill="billing", min_level=4),
        SkillRequirement(skill="japanese", min_level=3),
    )
)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def app() -> Iterator[WorkforceApplication]:
    application = WorkforceApplication()
    yield application
    application.close()


def stored(app: WorkforceApplication) -> int:
    """How many events the application has stored (the notification log's max id)."""
    return app.recorder.max_notification_id() or 0


def available_aiko(app: WorkforceApplication) -> Agent:
    aiko = app.register_agent(
        display_name="Aiko Tanaka",
        teams=["billing"],
        skills=[Skill(name="billing", level=4)],
        capacity={"phone": 1, "chat": 3, "email": 5},
        at=T0,
    )
    return app.set_presence(aiko.id, Presence.AVAILABLE, at=at(1))


class TestRegisteringAgents:
    def test_a_registered_agent_is_stored_and_read_back(self, app: WorkforceApplication) -> None:
        aiko = app.register_agent(display_name="Aiko Tanaka", languages=["ja"], at=T0)

        assert app.get_agent(aiko.id) == aiko
        assert aiko.presence is Presence.OFFLINE

    def test_a_retried_registration_returns_the_first_agent_and_stores_nothing(
        self, app: WorkforceApplication
    ) -> None:
        first = app.register_agent(display_name="Aiko Tanaka", request_id="req-7", at=T0)
        events_after_first = stored(app)

        retried = app.register_agent(display_name="Aiko Tanaka", request_id="req-7", at=at(5))

        assert retried == first
        assert stored(app) == events_after_first

    def test_another_request_id_registers_another_agent(self, app: WorkforceApplication) -> None:
        first = app.register_agent(display_name="Aiko Tanaka", request_id="req-7", at=T0)
        second = app.register_agent(display_name="Aiko Tanaka", request_id="req-8", at=T0)

        assert second.id != first.id

    def test_a_concurrent_retry_that_loses_the_race_returns_the_winners_agent(
        self, app: WorkforceApplication, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        winner = app.register_agent(display_name="Aiko Tanaka", request_id="req-7", at=T0)
        # The loser looked before the winner stored its key, so only the store can stop it.
        looked_up = app._agent_for_request
        lookups: list[UUID] = []

        def too_early(key_id: UUID) -> Agent | None:
            lookups.append(key_id)
            return None if len(lookups) == 1 else looked_up(key_id)

        monkeypatch.setattr(app, "_agent_for_request", too_early)
        events_before = stored(app)

        loser = app.register_agent(display_name="Aiko Tanaka", request_id="req-7", at=at(1))

        assert loser == winner
        assert len(lookups) == 2
        assert stored(app) == events_before

    def test_registering_an_existing_agent_id_is_refused(self, app: WorkforceApplication) -> None:
        aiko = app.register_agent(display_name="Aiko Tanaka", at=T0)

        with pytest.raises(AlreadyExists):
            app.register_agent(display_name="Someone Else", agent_id=aiko.id, at=T0)

    def test_an_empty_request_id_names_its_field(self, app: WorkforceApplication) -> None:
        with pytest.raises(InvalidValue) as raised:
            app.register_agent(display_name="Aiko Tanaka", request_id=" ", at=T0)
        assert raised.value.field == "request_id"

    def test_without_a_time_the_command_happens_now(self, app: WorkforceApplication) -> None:
        before = datetime.now(UTC)
        aiko = app.register_agent(display_name="Aiko Tanaka")
        after = datetime.now(UTC)

        assert before <= aiko.created_on <= after


class TestWorkingAgents:
    def test_commands_return_the_state_the_store_rebuilds(self, app: WorkforceApplication) -> None:
        aiko = available_aiko(app)
        call, chat = uuid4(), uuid4()

        states = [
            app.assign_work(aiko.id, call, "phone", at=at(10)),
            app.release_work(aiko.id, call, at=at(200)),
            app.set_presence(aiko.id, "after_call_work", at=at(201)),
            app.set_presence(aiko.id, "available", at=at(230)),
            app.assign_work(aiko.id, chat, Channel.CHAT, at=at(240)),
            app.update_agent_profile(aiko.id, teams=["billing", "tier2"], at=at(250)),
            app.change_agent_skills(aiko.id, [Skill(name="billing", level=5)], at=at(260)),
            app.change_agent_capacity(aiko.id, {"chat": 2}, at=at(270)),
            app.record_missed_offer(
                aiko.id, uuid4(), reason="timeout", cooldown=timedelta(seconds=20), at=at(280)
            ),
            app.clear_agent_cooldown(aiko.id, at=at(285)),
        ]

        assert app.get_agent(aiko.id) == states[-1]
        assert [state.version for state in states] == list(range(3, 13))
        final = states[-1]
        assert final.work[0].work_id == chat
        assert final.capacity.limit(Channel.CHAT) == 2
        assert final.cooldown_until is None

    def test_the_max_miss_rule_takes_the_agent_away(self, app: WorkforceApplication) -> None:
        aiko = available_aiko(app)

        for second in (10, 20):
            aiko = app.record_missed_offer(
                aiko.id,
                uuid4(),
                reason="rejected",
                cooldown=timedelta(seconds=5),
                max_misses=2,
                at=at(second),
            )

        assert aiko.presence is Presence.BREAK
        assert app.get_agent(aiko.id) == aiko

    def test_a_command_that_changes_nothing_stores_nothing(self, app: WorkforceApplication) -> None:
        aiko = available_aiko(app)
        events_before = stored(app)

        unchanged = app.set_presence(aiko.id, "available", at=at(10))

        assert unchanged == aiko
        assert stored(app) == events_before

    def test_a_stale_expected_version_is_a_conflict(self, app: WorkforceApplication) -> None:
        aiko = available_aiko(app)

        with pytest.raises(ConcurrencyConflict, match="version 2, not the expected 1"):
            app.update_agent_profile(aiko.id, display_name="Aiko T.", expected_version=1, at=at(10))
        renamed = app.update_agent_profile(
            aiko.id, display_name="Aiko T.", expected_version=2, at=at(10)
        )
        assert renamed.display_name == "Aiko T."


class TestQueues:
    def test_a_created_queue_is_found_by_id_and_by_name_in_any_case(
        self, app: WorkforceApplication
    ) -> None:
        queue = app.create_queue(name="Billing JP", channels=["chat"], requirements=BILLING, at=T0)

        assert app.get_queue(queue.id) == queue
        assert app.find_queue("billing jp") == queue
        assert app.find_queue("  BILLING   JP ") == queue
        assert app.find_queue("Refunds") is None

    def test_a_name_is_taken_in_any_case_and_the_refusal_stores_nothing(
        self, app: WorkforceApplication
    ) -> None:
        app.create_queue(name="Billing JP", channels=["chat"], at=T0)
        events_before = stored(app)

        with pytest.raises(AlreadyExists, match="BILLING jp"):
            app.create_queue(name="BILLING jp", channels=["email"], at=at(1))

        assert stored(app) == events_before

    def test_the_store_refuses_a_second_name_claim_made_at_the_same_moment(
        self, app: WorkforceApplication, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        first = app.create_queue(name="Billing JP", channels=["chat"], at=T0)
        looked_up = app._name_claim
        lookups: list[str] = []

        def too_early(name: str) -> object:
            lookups.append(name)
            return None if len(lookups) == 1 else looked_up(name)

        monkeypatch.setattr(app, "_name_claim", too_early)
        events_before = stored(app)

        with pytest.raises(AlreadyExists):
            app.create_queue(name="billing jp", channels=["chat"], at=at(1))

        assert len(lookups) == 2
        assert stored(app) == events_before
        assert app.find_queue("Billing JP") == first

    def test_an_archived_queue_keeps_its_name(self, app: WorkforceApplication) -> None:
        queue = app.create_queue(name="Billing JP", channels=["chat"], at=T0)
        archived = app.archive_queue(queue.id, at=at(10))

        assert archived.archived
        assert app.find_queue("Billing JP") == archived
        with pytest.raises(AlreadyExists):
            app.create_queue(name="Billing JP", channels=["chat"], at=at(20))

    def test_updates_and_routing_steps_are_stored(self, app: WorkforceApplication) -> None:
        queue = app.create_queue(name="Billing JP", channels=["chat"], requirements=BILLING, at=T0)

        updated = app.update_queue(
            queue.id, expected_version=1, priority=70, overflow_queues=["General"], at=at(10)
        )
        stepped = app.change_routing_steps(
            queue.id,
            [
                RoutingStep(after_seconds=60, action=DropSkill(skill="japanese")),
                RoutingStep(after_seconds=300, action=Fallback(to=FallbackKind.BOT)),
            ],
            expected_version=2,
            at=at(20),
        )

        assert (updated.priority, updated.overflow_queues) == (70, ("General",))
        assert app.get_queue(queue.id) == stepped
        effective = stepped.effective_requirements(60).requirements
        assert [requirement.skill for requirement in effective.skills] == ["billing"]

    def test_a_stale_expected_version_is_a_conflict(self, app: WorkforceApplication) -> None:
        queue = app.create_queue(name="Billing JP", channels=["chat"], at=T0)
        app.update_queue(queue.id, priority=10, at=at(10))

        with pytest.raises(ConcurrencyConflict):
            app.update_queue(queue.id, expected_version=1, priority=20, at=at(20))
        assert app.get_queue(queue.id).priority == 10


class TestNotFound:
    @pytest.mark.parametrize(
        ("command", "kind"),
        [
            (lambda app, some_id: app.get_agent(some_id), "agent"),
            (lambda app, some_id: app.set_presence(some_id, "available"), "agent"),
            (lambda app, some_id: app.assign_work(some_id, uuid4(), "chat"), "agent"),
            (lambda app, some_id: app.get_queue(some_id), "queue"),
            (lambda app, some_id: app.update_queue(some_id, priority=1), "queue"),
            (lambda app, some_id: app.archive_queue(some_id), "queue"),
        ],
        ids=[
            "get agent",
            "set presence",
            "assign work",
            "get queue",
            "update queue",
            "archive queue",
        ],
    )
    def test_not_found_says_what_was_missing(
        self,
        app: WorkforceApplication,
        command: Callable[[WorkforceApplication, UUID], object],
        kind: str,
    ) -> None:
        missing = uuid4()

        with pytest.raises(NotFound) as raised:
            command(app, missing)

        assert raised.value.kind == kind
        assert str(raised.value) == f"{kind} {missing} not found"

    def test_an_agent_id_is_not_a_queue_and_a_queue_id_is_not_an_agent(
        self, app: WorkforceApplication
    ) -> None:
        aiko = app.register_agent(display_name="Aiko Tanaka", at=T0)
        queue = app.create_queue(name="Billing JP", channels=["chat"], at=T0)

        with pytest.raises(NotFound, match=r"^queue "):
            app.get_queue(aiko.id)
        with pytest.raises(NotFound, match=r"^agent "):
            app.get_agent(queue.id)


Refused = Callable[[WorkforceApplication, Agent, Queue], object]


class TestRefusedCommandsStoreNothing:
    @pytest.mark.parametrize(
        ("command", "error"),
        [
            (lambda app, aiko, queue: app.assign_work(aiko.id, uuid4(), "sms"), RuleViolation),
            (lambda app, aiko, queue: app.assign_work(aiko.id, uuid4(), "chat"), RuleViolation),
            (
                lambda app, aiko, queue: app.assign_work(aiko.id, aiko.work[0].work_id, "phone"),
                AlreadyExists,
            ),
            (lambda app, aiko, queue: app.release_work(aiko.id, uuid4()), NotFound),
            (lambda app, aiko, queue: app.set_presence(aiko.id, "offline"), RuleViolation),
            (lambda app, aiko, queue: app.set_presence(aiko.id, "away"), InvalidValue),
            (
                lambda app, aiko, queue: app.change_agent_capacity(aiko.id, {"chat": 99}),
                InvalidValue,
            ),
            (
                lambda app, aiko, queue: app.change_agent_skills(
                    aiko.id, [Skill(name="billing", level=9)]
                ),
                InvalidValue,
            ),
            (
                lambda app, aiko, queue: app.record_missed_offer(
                    aiko.id, aiko.work[0].work_id, reason="timeout", cooldown=timedelta(0)
                ),
                RuleViolation,
            ),
            (lambda app, aiko, queue: app.update_queue(queue.id, priority=500), InvalidValue),
            (
                lambda app, aiko, queue: app.change_routing_steps(
                    queue.id, [RoutingStep(after_seconds=10, action=DropSkill(skill="refunds"))]
                ),
                InvalidValue,
            ),
            (
                lambda app, aiko, queue: app.update_queue(queue.id, expected_version=7, priority=1),
                ConcurrencyConflict,
            ),
            (
                lambda app, aiko, queue: app.create_queue(name="billing jp", channels=["chat"]),
                AlreadyExists,
            ),
            (lambda app, aiko, queue: app.create_queue(name="Refunds", channels=[]), InvalidValue),
        ],
        ids=[
            "no sms capacity",
            "exclusive phone in hand",
            "same work twice",
            "unknown work released",
            "offline with work",
            "unknown presence",
            "capacity above 20",
            "level above 5",
            "missed offer of work in hand",
            "priority above 100",
            "dropping an unrequired skill",
            "stale expected version",
            "queue name taken",
            "queue without channels",
        ],
    )
    def test_a_refused_command_leaves_the_store_as_it_was(
        self, app: WorkforceApplication, command: Refused, error: type[DomainError]
    ) -> None:
        aiko = available_aiko(app)
        aiko = app.assign_work(aiko.id, uuid4(), "phone", at=at(10))
        queue = app.create_queue(name="Billing JP", channels=["chat"], requirements=BILLING, at=T0)
        events_before = stored(app)

        with pytest.raises(error):
            command(app, aiko, queue)

        assert stored(app) == events_before
        assert app.get_agent(aiko.id) == aiko
        assert app.get_queue(queue.id) == queue


def run_command(app: WorkforceApplication, agent: Agent, command: Command, step: int) -> Agent:
    when = at(step)
    if isinstance(command, Assign):
        return app.assign_work(agent.id, work_for(agent, command, step), command.channel, at=when)
    if isinstance(command, Release):
        return app.release_work(agent.id, work_for(agent, command, step), at=when)
    if isinstance(command, SetPresence):
        return app.set_presence(agent.id, command.presence, at=when)
    assert isinstance(command, ChangeCapacity)
    return app.change_agent_capacity(agent.id, command.capacity, at=when)


@settings(deadline=None, max_examples=60)
@given(capacity=capacities, script=commands)
def test_stored_events_rebuild_exactly_the_state_the_commands_returned(
    capacity: dict[str, int], script: list[Command]
) -> None:
    app = WorkforceApplication()
    try:
        agent = app.register_agent(display_name="Aiko", capacity=capacity, at=T0)
        agent = app.set_presence(agent.id, Presence.AVAILABLE, at=T0)
        for step, command in enumerate(script, start=1):
            events_before = stored(app)
            try:
                returned = run_command(app, agent, command, step)
            except (RuleViolation, AlreadyExists, NotFound):
                assert stored(app) == events_before
                assert app.get_agent(agent.id) == agent
                continue
            assert app.get_agent(agent.id) == returned
            assert_rules_hold(returned)
            assert_assignment_fits(agent, returned, command)
            agent = returned
    finally:
        app.close()
