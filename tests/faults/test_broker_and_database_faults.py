"""Broker and database faults under load: NATS stopped and started again (commands keep
succeeding, the relay catches up, nothing lost or duplicated downstream); PostgreSQL cut off
and started again (clients get UNAVAILABLE within their deadlines — never INTERNAL, UNKNOWN
or a hang — and the services recover by themselves without losing anything acknowledged)."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from crmcore.adapters.nats_server import NatsServer
from tests.support.postgres import RestartablePostgres
from tests.support.processes import (
    LoadRunner,
    LoadSettings,
    ProcessStack,
    measure_recovery,
    nats_outage,
    postgres_outage,
    reconcile,
)

pytestmark = [pytest.mark.nats, pytest.mark.postgres, pytest.mark.timeout(180)]

PROGRESS = 25
OUTAGE_S = 4.0


def test_a_nats_outage_delays_the_bus_but_no_command(
    stack: ProcessStack, restartable_nats: NatsServer
) -> None:
    load = LoadRunner(stack, LoadSettings(clients=6, hurried_every=10**9)).start()
    try:
        load.wait_for_acknowledged(PROGRESS)
        before = len(load.ledger.acknowledged())
        fault = nats_outage(restartable_nats, OUTAGE_S)
        during = len(load.ledger.acknowledged()) - before
        load.wait_for_acknowledged(len(load.ledger.acknowledged()) + PROGRESS)
    finally:
        ledger = load.stop()
    measure_recovery(ledger, [fault])

    result = asyncio.run(reconcile(stack, ledger))

    assert during > 0, "no command was acknowledged while NATS was down"
    # Every call meant to succeed did, at once (the refused ones were refused as meant).
    codes = ledger.codes_between(fault.began, fault.ended, meant_to_succeed=True)
    assert set(codes) == {"OK"}, codes
    assert result.consistent, result.describe()
    assert result.in_store == result.on_bus == result.acknowledged, result.describe()
    assert result.in_kpis == result.kpi_counted, result.describe()
    assert not ledger.gave_up()
    assert not ledger.unexpected(), ledger.unexpected()[:5]


def test_a_postgres_outage_answers_unavailable_then_recovers(
    stack_on_private_postgres: ProcessStack, restartable_postgres: RestartablePostgres
) -> None:
    stack = stack_on_private_postgres
    load = LoadRunner(stack, LoadSettings(clients=6, hurried_every=10**9, deadline_s=5.0)).start()
    try:
        load.wait_for_acknowledged(PROGRESS)
        fault = postgres_outage(restartable_postgres, OUTAGE_S)
        load.wait_for_acknowledged(len(load.ledger.acknowledged()) + PROGRESS, within_s=60)
    finally:
        ledger = load.stop()
    measure_recovery(ledger, [fault])

    result = asyncio.run(reconcile(stack, ledger))

    # Calls sent while the server was down: UNAVAILABLE once the store gave up connecting,
    # or OK when it came back in time; never INTERNAL, UNKNOWN or a hang to the deadline.
    while_down = [
        a
        for a in ledger.attempts
        if fault.began <= a.started <= fault.ended and not a.command.startswith("refused")
    ]
    codes = Counter(a.code for a in while_down)
    assert codes["UNAVAILABLE"] > 0, codes
    assert set(codes) <= {"OK", "UNAVAILABLE"}, [
        (a.command, a.code, round(a.started - fault.began, 2), round(a.ended - a.started, 2))
        for a in while_down
        if a.code not in ("OK", "UNAVAILABLE")
    ]
    hung = [
        (a.command, round(a.started - fault.began, 2), round(a.ended - a.started, 2))
        for a in ledger.attempts
        # A call already in flight at the cut may wait out its deadline (its outcome is
        # ambiguous and it is retried); one sent to a server known to be down must not.
        if a.code == "DEADLINE_EXCEEDED" and a.started >= fault.began
    ]
    assert not hung, f"calls hung to their deadline (command, start after cut, s): {hung}"
    assert fault.recovery_s is not None
    assert result.consistent, result.describe()
    assert result.in_store == result.on_bus == result.acknowledged, result.describe()
    assert result.in_kpis == result.kpi_counted, result.describe()
    assert not ledger.gave_up()
    assert not ledger.unexpected(), ledger.unexpected()[:5]
    for service in stack.services.values():
        assert service.running, service.log_tail()
        assert service.starts == 1, service.log_tail()
