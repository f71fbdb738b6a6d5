"""SLA clocks projected in batches (`SlaClocks.catch_up` reads a batch's rows once, applies
its events in memory, writes each changed row once) match the same events projected one
catch-up per event, on SQLite files and on PostgreSQL: many events on the same case and
interactions, at-risk and breached events recorded in between, deadlines recomputed."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import msgspec
import pytest

from crmcore.adapters.readmodels import ReadModelStore, open_read_model_store
from crmcore.application import sla_scheduler
from crmcore.application.interactions import InteractionApplication
from crmcore.application.sla_scheduler import DEFAULT_BATCH_SIZE, SlaClocks, SlaScheduler
from crmcore.config import PersistenceSettings
from crmcore.domain.interaction import RoutingRequirements
from crmcore.domain.sla import (
    SlaAtRisk,
    SlaBreached,
    SlaEvent,
    SlaPolicies,
    business_calendar,
    sla_policy,
)

ALICE = UUID("00000000-0000-4000-8000-00000000a11c")
TARO = UUID("00000000-0000-4000-8000-0000000074a0")
#: Monday 3 March 2025, 09:00 UTC: the office opens.
MONDAY_9 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
POLICIES = SlaPolicies(
    calendar=business_calendar(hours="mon-fri 09:00-18:00"),
    policies=(
        sla_policy(
            name="urgent chat",
            channels=["chat"],
            priorities=["urgent"],
            first_response="10m",
            next_response="5m",
            calendar=business_calendar(hours="always"),
        ),
        sla_policy(
            name="standard",
            first_response="2h",
            next_response="1h",
            resolution="8h",
            at_risk_fraction=0.75,
        ),
    ),
)
#: Every table of the read model, with the order its rows are compared in.
TABLES = {
    "sla_cases": "case_id",
    "sla_interactions": "interaction_id",
    "sla_links": "interaction_id",
    "sla_clocks": "case_id, metric, cycle",
}


def at(hours: float) -> datetime:
    return MONDAY_9 + timedelta(hours=hours)


@pytest.fixture
def app(durable_persistence: PersistenceSettings) -> Iterator[InteractionApplication]:
    application = InteractionApplication(durable_persistence)
    yield application
    application.close()


def own_store(persistence: PersistenceSettings, name: str) -> ReadModelStore:
    """A read-model store no other in the test shares: its own SQLite file, or its own
    PostgreSQL schema."""
    env = {**persistence.library_env, f"{name.upper()}_POSTGRES_SCHEMA": name}
    return open_read_model_store(msgspec.structs.replace(persistence, library_env=env), name)


def dump(store: ReadModelStore) -> dict[str, list[tuple[Any, ...]]]:
    return {
        table: [
            tuple(bytes(value) if isinstance(value, memoryview) else value for value in row)
            for row in store.query(f"SELECT * FROM {table} ORDER BY {order}")
        ]
        for table, order in TABLES.items()
    }


def message(app: InteractionApplication, interaction_id: UUID, author: str, hours: float) -> None:
    app.add_message(
        interaction_id,
        author_kind=author,
        author_id=ALICE if author == "agent" else None,
        text="…",
        at=at(hours),
    )


def busy_day(app: InteractionApplication, scheduler: SlaScheduler) -> list[SlaEvent]:
    """Many events on one case and a few interactions, the scheduler recording at-risk and
    breached events in between; returns those it recorded."""
    recorded: list[SlaEvent] = []
    mail = app.open_interaction(channel="email", customer_id=TARO, at=at(0)).id
    case = app.open_case(subject="Invoice wrong", interaction_ids=[mail], at=at(0)).id
    app.queue(mail, queue="billing", at=at(0.1))
    app.answer(mail, ALICE, at=at(0.1))
    chat = app.open_interaction(channel="chat", customer_id=TARO, at=at(0.2)).id
    app.queue(chat, queue="support", requirements=RoutingRequirements(priority=9), at=at(0.25))
    recorded += scheduler.run_once(at(0.35))  # the urgent chat's first response at risk
    recorded += scheduler.run_once(at(0.4))  # … and breached
    app.answer(chat, ALICE, at=at(0.5))
    for cycle in range(6):
        start = 1 + cycle
        message(app, mail, "agent", start)
        message(app, mail, "customer", start + 0.2)
        message(app, mail, "customer", start + 0.3)  # the same wait
        message(app, chat, "agent", start)
        message(app, chat, "customer", start + 0.1)
        if cycle == 2:
            recorded += scheduler.run_once(at(start + 0.5))
            app.change_case_status(case, "pending", at=at(start + 0.6))
        if cycle == 3:
            app.change_case_status(case, "open", at=at(start + 0.5))
    app.transfer(
        chat,
        reason="Billing question",
        to_queue="billing",
        requirements=RoutingRequirements(priority=2),
        at=at(7),
    )
    app.answer(chat, ALICE, at=at(7.2))
    app.resolve(chat, resolution="Answered", at=at(7.5))
    app.reopen(chat, reason="Not answered", at=at(7.8))
    recorded += scheduler.run_once(at(8.5))
    app.link_interaction_to_case(case, chat, at=at(8.6))  # the case's clocks count now
    message(app, chat, "customer", 8.7)
    app.solve_case(case, resolution="Refunded", at=at(8.8))
    app.reopen_case(case, reason="Refund missing", at=at(24))
    bot = app.open_interaction(channel="chat", customer_id=TARO, handled_by_bot=True, at=at(24))
    app.hand_off_to_human(bot.id, queue="support", reason="Wants a human", at=at(24.2))
    app.answer(bot.id, ALICE, at=at(24.3))
    message(app, bot.id, "agent", 24.4)
    message(app, bot.id, "customer", 24.5)
    call = app.open_interaction(channel="phone", customer_id=TARO, at=at(25)).id
    app.queue(call, queue="support", at=at(25))
    app.answer(call, ALICE, at=at(25.1))
    app.resolve(call, resolution="Answered", at=at(25.2))
    app.close_interaction(call, at=at(25.3))
    in_case = app.open_interaction(channel="phone", customer_id=TARO, case_id=case, at=at(26))
    message(app, in_case.id, "customer", 26.1)
    recorded += scheduler.run_once(at(30))
    app.solve_case(case, resolution="Refunded again", at=at(30.5))
    app.close_case(case, at=at(31))
    recorded += scheduler.run_once(at(40))
    return recorded


class TestBatchesMatchOneEventAtATime:
    @pytest.mark.parametrize("small_parts", [False, True], ids=["default_parts", "small_parts"])
    def test_one_batch_gives_the_clocks_of_one_catch_up_per_event(
        self,
        app: InteractionApplication,
        durable_persistence: PersistenceSettings,
        monkeypatch: pytest.MonkeyPatch,
        small_parts: bool,
    ) -> None:
        if small_parts:  # rows read in many `IN` lists, written in many statements, breathing
            monkeypatch.setattr(sla_scheduler, "SQLITE_IDS_PER_SELECT", 2)
            monkeypatch.setattr(sla_scheduler, "ROWS_PER_WRITE", 2)
            monkeypatch.setattr(sla_scheduler, "BREATH_EVERY_S", 0)
            monkeypatch.setattr(sla_scheduler, "BREATH_S", 0)
        live = SlaClocks(app, POLICIES)  # caught up at each scheduler round
        recorded = busy_day(app, SlaScheduler(app, live))
        assert {type(event) for event in recorded} == {SlaAtRisk, SlaBreached}
        events = app.recorder.max_notification_id()
        assert events is not None
        assert events < DEFAULT_BATCH_SIZE  # so "whole" is one batch

        batch_sizes = {"stepwise": 1, "chunks": 7, "whole": DEFAULT_BATCH_SIZE}
        stores = {name: own_store(durable_persistence, name) for name in batch_sizes}
        try:
            dumps = {}
            for name, batch_size in batch_sizes.items():
                clocks = SlaClocks(app, POLICIES, store=stores[name])
                assert clocks.catch_up(batch_size=batch_size) == events
                assert clocks.position == events
                dumps[name] = dump(stores[name])
            live.catch_up()
            dumps["live"] = dump(live.store)

            stepwise = dumps["stepwise"]
            assert len(stepwise["sla_cases"]) == 1
            assert len(stepwise["sla_interactions"]) == 4  # mail, chat, bot, call
            assert len(stepwise["sla_links"]) == 3  # mail, chat, in_case
            flags = {(row[11], row[12]) for row in stepwise["sla_clocks"]}
            assert {(1, 1), (1, 0), (0, 0)} <= flags  # breached and at-risk events recorded
            assert any(row[1] == "next_response" and row[2] > 1 for row in stepwise["sla_clocks"])
            for name in ("chunks", "whole", "live"):
                assert dumps[name] == stepwise, name
        finally:
            live.close_clocks()
            for store in stores.values():
                store.close_store()

    def test_recomputing_in_chunks_gives_the_deadlines_of_one_pass(
        self,
        app: InteractionApplication,
        durable_persistence: PersistenceSettings,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        live = SlaClocks(app, POLICIES)
        busy_day(app, SlaScheduler(app, live))
        for _ in range(3):  # clocks still running at the end
            opened = app.open_interaction(channel="chat", customer_id=TARO, at=at(41)).id
            app.queue(opened, queue="support", at=at(41))
        quicker = SlaPolicies(
            calendar=business_calendar(hours="always"),
            policies=(sla_policy(name="quick", first_response="30m", resolution="4h"),),
        )
        stores = {name: own_store(durable_persistence, name) for name in ("one_pass", "chunked")}
        try:
            counts = {}
            for name, chunk in (("one_pass", sla_scheduler.RECOMPUTE_CHUNK), ("chunked", 2)):
                monkeypatch.setattr(sla_scheduler, "RECOMPUTE_CHUNK", chunk)
                clocks = SlaClocks(app, POLICIES, store=stores[name])
                clocks.catch_up()
                before = dump(stores[name])
                clocks.policies = quicker
                counts[name] = clocks.recompute_open_clocks()
                after = dump(stores[name])
                assert after != before
                assert clocks.position == app.recorder.max_notification_id()
            assert counts["one_pass"] == counts["chunked"] >= 6
            assert dump(stores["one_pass"]) == dump(stores["chunked"])
            open_clocks = [
                row
                for row in dump(stores["chunked"])["sla_clocks"]
                if row[3] in ("running", "paused")
            ]
            assert open_clocks
            assert all(row[5] in ("quick", None) for row in open_clocks)
        finally:
            live.close_clocks()
            for store in stores.values():
                store.close_store()
