"""The interaction application, its lists and its SLA clocks on every storage engine
(memory, SQLite, PostgreSQL): group commit under concurrent commands, read models that survive
a restart, routing progress that is durable."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from uuid import UUID

import msgspec

from crmcore.adapters.schemas import example_event
from crmcore.application.interaction_views import InteractionViews
from crmcore.application.interactions import InteractionApplication
from crmcore.application.sla_scheduler import SlaClocks, SlaScheduler
from crmcore.config import PersistenceSettings
from crmcore.domain.interaction import InteractionStatus
from crmcore.domain.sla import SlaPolicies, business_calendar, sla_policy
from crmcore.domain.task import RoutingOffered

ALICE = UUID("00000000-0000-4000-8000-00000000a11c")
TARO = UUID("00000000-0000-4000-8000-0000000074a0")
MONDAY_9 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
POLICIES = SlaPolicies(
    calendar=business_calendar(hours="mon-fri 09:00-18:00"),
    policies=(sla_policy(name="standard", first_response="2h", resolution="8h"),),
)


def at(minutes: float) -> datetime:
    return MONDAY_9 + timedelta(minutes=minutes)


class TestGroupCommit:
    def test_concurrent_contacts_are_all_stored_whole(
        self, persistence: PersistenceSettings
    ) -> None:
        app = InteractionApplication(persistence, group_commit=True)
        done: list[UUID] = []
        failures: list[BaseException] = []
        lock = threading.Lock()

        def handle_contacts(agent: UUID) -> None:
            try:
                for _ in range(10):
                    call = app.open_interaction(channel="phone", customer_id=TARO)
                    app.queue(call.id, queue="billing")
                    app.answer(call.id, agent)
                    app.add_message(call.id, author_kind="agent", author_id=agent, text="Hello")
                    app.resolve(call.id, resolution="Done")
                    with lock:
                        done.append(call.id)
            except BaseException as error:
                failures.append(error)

        agents = [UUID(int=number + 1) for number in range(16)]
        threads = [threading.Thread(target=handle_contacts, args=(agent,)) for agent in agents]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        try:
            assert failures == []
            assert len(done) == 160
            for interaction_id in done:
                state = app.get_interaction(interaction_id)
                assert (state.status, state.version, len(state.transcript)) == (
                    InteractionStatus.RESOLVED,
                    5,
                    1,
                )
            assert app.recorder.max_notification_id() == 160 * 5
        finally:
            app.stop_writer()
            app.close()


class TestReadModels:
    def test_lists_and_clocks_on_each_engine(self, persistence: PersistenceSettings) -> None:
        app = InteractionApplication(persistence)
        views = InteractionViews(app)
        clocks = SlaClocks(app, POLICIES)
        try:
            mail = app.open_interaction(channel="email", customer_id=TARO, at=at(0))
            case = app.open_case(subject="Refund", interaction_ids=[mail.id], at=at(0))
            assert [each.id for each in views.list_interactions(case_id=case.id).interactions] == [
                mail.id
            ]
            assert [each.id for each in views.list_cases(customer_id=TARO).cases] == [case.id]
            events = SlaScheduler(app, clocks).run_once(at(121))
            assert [(type(e).__name__, e.metric) for e in events] == [
                ("SlaBreached", "first_response")
            ]
            assert clocks.clocks_of(case.id, now=at(121))[0].breach_recorded
        finally:
            clocks.close_clocks()
            views.close_views()
            app.close()

    def test_positions_and_routing_progress_survive_a_restart(
        self, durable_persistence: PersistenceSettings
    ) -> None:
        persistence = durable_persistence
        app = InteractionApplication(persistence)
        views = InteractionViews(app)
        call = app.open_interaction(channel="phone", customer_id=TARO, at=at(0))
        app.queue(call.id, queue="billing", at=at(1))
        offer = msgspec.structs.replace(
            example_event(RoutingOffered, originator_id=call.id, version=2),
            agent_id=ALICE,
            timestamp=at(2),
        )
        assert views.routing_progress.apply(app, offer) is not None
        assert views.catch_up() > 0
        views.close_views()
        app.close()

        app = InteractionApplication(persistence)
        views = InteractionViews(app)
        try:
            assert views.catch_up() == 0
            app.decline_offer(call.id, ALICE, "timeout", at=at(3))
            # The old offer, redelivered after the restart, must not offer it again.
            assert views.routing_progress.apply(app, offer) is None
            assert app.get_interaction(call.id).status is InteractionStatus.QUEUED
        finally:
            views.close_views()
            app.close()


class TestInteractionSlaAcrossRestarts:
    """The clocks of an interaction outside any case, on a durable engine: a restarted
    scheduler, or one whose read model has not seen an event another one recorded, never
    records a breach twice."""

    def test_a_restarted_scheduler_does_not_repeat_an_interactions_breach(
        self, durable_persistence: PersistenceSettings
    ) -> None:
        persistence = durable_persistence
        app = InteractionApplication(persistence)
        clocks = SlaClocks(app, POLICIES)
        chat = app.open_interaction(channel="chat", customer_id=TARO, at=at(0)).id
        try:
            events = SlaScheduler(app, clocks).run_once(at(121))
            assert [(type(e).__name__, e.metric, e.interaction_id) for e in events] == [
                ("SlaBreached", "first_response", chat)
            ]
            stored = app.recorder.max_notification_id()
        finally:
            clocks.close_clocks()
            app.close()

        app = InteractionApplication(persistence)
        clocks = SlaClocks(app, POLICIES)
        try:
            assert SlaScheduler(app, clocks).run_once(at(122)) == []
            assert app.recorder.max_notification_id() == stored
            (first, resolution) = clocks.clocks_of_interaction(chat, now=at(122))
            assert (first.breach_recorded, resolution.breach_recorded) == (True, False)
            # The resolution clock runs on across the restart: due after 8 business hours.
            assert [type(e).__name__ for e in SlaScheduler(app, clocks).run_once(at(481))] == [
                "SlaBreached"
            ]
        finally:
            clocks.close_clocks()
            app.close()

    def test_an_event_recorded_but_not_yet_projected_is_not_recorded_again(
        self, durable_persistence: PersistenceSettings
    ) -> None:
        app = InteractionApplication(durable_persistence)
        clocks = SlaClocks(app, POLICIES)
        try:
            chat = app.open_interaction(channel="email", customer_id=TARO, at=at(0)).id
            clocks.catch_up()
            (due,) = clocks.due(at(121))
            # Another scheduler recorded it; this one's read model has not seen that yet.
            assert (
                app.record_interaction_sla_event(
                    chat,
                    kind=due.kind,
                    metric=due.metric,
                    cycle=due.cycle,
                    policy=due.policy,
                    target=due.target,
                    started_at=due.started_at,
                    due_at=due.due_at,
                    at=at(121),
                )
                is not None
            )
            stored = app.recorder.max_notification_id()
            assert SlaScheduler(app, clocks).run_once(at(122)) == []
            assert app.recorder.max_notification_id() == stored
        finally:
            clocks.close_clocks()
            app.close()
