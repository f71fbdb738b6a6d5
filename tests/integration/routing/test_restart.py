"""The routing state survives restarts on real stores (SQLite, PostgreSQL): rebuilt from the
latest snapshot plus the events stored after it, or from the events alone, and deciding on
exactly as an application that never stopped."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import NAMESPACE_URL, UUID, uuid5

import msgspec
import pytest

from crmcore.adapters.readmodels import open_read_model_store
from crmcore.application.routing import RoutingApplication
from crmcore.config import PersistenceSettings
from crmcore.domain.agent import Presence, Requirements, Skill, SkillRequirement
from crmcore.domain.base import DomainEvent
from crmcore.domain.queue import RoutingStep, SetMinLevel
from crmcore.domain.task import TaskStatus

T0 = datetime(2025, 4, 1, 9, 0, tzinfo=UTC)
NAMES = uuid5(NAMESPACE_URL, "urn:test:routing-restart")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PersistenceSettings]:
    if request.param == "sqlite":
        yield PersistenceSettings.sqlite(tmp_path / "data")
    else:
        yield request.getfixturevalue("postgres_persistence")


def facts(app: RoutingApplication) -> object:
    return msgspec.structs.replace(app.engine.snapshot(), clock=None)


def stored(app: RoutingApplication) -> list[DomainEvent]:
    events = []
    for notification in app.recorder.select_notifications(start=None, limit=100_000):
        event = app.mapper.to_domain_event(notification)
        assert isinstance(event, DomainEvent)
        events.append(event)
    return events


def a_busy_morning(app: RoutingApplication, clock: Clock) -> list[UUID]:
    """Queues, agents, work offered, accepted, rejected and waiting; some time passed. Ids
    are fixed, so two stores given the same morning hold the same events."""
    app.create_queue(
        queue_id=uuid5(NAMES, "queue:billing"),
        name="Billing",
        channels=["chat", "email"],
        requirements=Requirements(skills=(SkillRequirement(skill="billing", min_level=3),)),
        offer_timeout_seconds=30,
        routing_steps=[
            RoutingStep(after_seconds=120, action=SetMinLevel(skill="billing", level=1))
        ],
    )
    agents = [
        app.register_agent(
            agent_id=uuid5(NAMES, f"agent:{name}"),
            display_name=name,
            skills=[Skill(name="billing", level=level)],
            capacity={"chat": 2, "email": 3},
        ).id
        for name, level in (("Aiko", 5), ("Ren", 3), ("Sho", 1))
    ]
    for agent in agents:
        app.set_presence(agent, Presence.AVAILABLE)
    tasks = [
        app.submit_task(
            queue="Billing", channel="chat" if n % 2 else "email", request_id=f"morning-{n}"
        ).id
        for n in range(12)
    ]
    clock.advance(5)
    for task_id in tasks[:4]:
        task = app.get_task(task_id)
        if task.status is TaskStatus.OFFERED and task.agent_id is not None:
            app.accept_offer(task_id, task.agent_id)
    offered = [t for t in (app.get_task(task) for task in tasks) if t.status is TaskStatus.OFFERED]
    assert offered, "the morning needs an offer to reject"
    assert offered[0].agent_id is not None
    app.reject_offer(offered[0].id, offered[0].agent_id)
    clock.advance(40)
    app.tick()
    return tasks


def the_rest_of_the_morning(app: RoutingApplication, clock: Clock, tasks: list[UUID]) -> None:
    clock.advance(90)
    app.tick()
    for task_id in tasks:
        task = app.get_task(task_id)
        if task.status is TaskStatus.ASSIGNED:
            app.complete_task(task_id)
            break
    app.submit_task(queue="Billing", channel="chat", request_id="late")
    clock.advance(30)
    app.tick()


def reopen(storage: PersistenceSettings, clock: Clock) -> RoutingApplication:
    return RoutingApplication(storage, clock=clock, snapshot_every=1_000_000)


class TestRestarting:
    def test_after_a_graceful_stop_the_snapshot_brings_everything_back(
        self, storage: PersistenceSettings
    ) -> None:
        clock = Clock()
        before = reopen(storage, clock)
        a_busy_morning(before, clock)
        expected = facts(before)
        before.shutdown()

        after = reopen(storage, clock)
        try:
            assert facts(after) == expected
        finally:
            after.shutdown()

    def test_after_a_crash_the_snapshot_and_the_events_after_it_bring_everything_back(
        self, storage: PersistenceSettings
    ) -> None:
        clock = Clock()
        before = reopen(storage, clock)
        tasks = a_busy_morning(before, clock)
        assert before.save_snapshot()
        the_rest_of_the_morning(before, clock, tasks)
        expected = facts(before)
        before.close()  # a crash: no last snapshot

        after = reopen(storage, clock)
        try:
            assert facts(after) == expected
        finally:
            after.shutdown()

    def test_an_unreadable_snapshot_is_ignored_and_the_events_replayed(
        self, storage: PersistenceSettings
    ) -> None:
        clock = Clock()
        before = reopen(storage, clock)
        a_busy_morning(before, clock)
        expected = facts(before)
        before.shutdown()
        snapshots = open_read_model_store(storage, "routing_snapshots")
        with snapshots.transaction() as cursor:
            cursor.execute("UPDATE routing_snapshots SET state = ?", (b"\x00not msgpack",))
        snapshots.close_store()

        after = reopen(storage, clock)
        try:
            assert facts(after) == expected
        finally:
            after.shutdown()

    def test_a_restarted_application_decides_as_one_that_never_stopped(
        self, storage: PersistenceSettings, tmp_path: Path
    ) -> None:
        clock, steady_clock = Clock(), Clock()
        restarted = reopen(storage, clock)
        steady = reopen(PersistenceSettings.sqlite(tmp_path / "steady"), steady_clock)
        tasks = a_busy_morning(restarted, clock)
        assert a_busy_morning(steady, steady_clock) == tasks
        split = len(stored(restarted))
        assert stored(steady) == stored(restarted)
        restarted.shutdown()

        restarted = reopen(storage, clock)
        try:
            the_rest_of_the_morning(restarted, clock, tasks)
            the_rest_of_the_morning(steady, steady_clock, tasks)
            assert len(stored(restarted)) > split
            assert stored(restarted)[split:] == stored(steady)[split:]
            assert facts(restarted) == facts(steady)
        finally:
            restarted.shutdown()
            steady.shutdown()
