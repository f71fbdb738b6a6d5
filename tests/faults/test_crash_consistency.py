"""Crash consistency: under a sustained command load each service in turn is killed with
SIGKILL and restarted. Every acknowledged command must then be in the store, on the bus and
in the KPIs exactly once; refused commands leave nothing; commands whose outcome the client
could not know (connection cut, deadline too short) are retried with the same request_id and
count once."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.processes import (
    SERVICES,
    LoadRunner,
    LoadSettings,
    ProcessStack,
    kill_and_restart,
    measure_recovery,
    reconcile,
)

pytestmark = [pytest.mark.nats, pytest.mark.postgres, pytest.mark.timeout(180)]

#: Acknowledged commands between two faults: the load must make progress after each restart.
PROGRESS = 25


def test_kill_9_of_each_service_loses_and_duplicates_nothing(stack: ProcessStack) -> None:
    load = LoadRunner(stack, LoadSettings(clients=6)).start()
    faults = []
    try:
        load.wait_for_acknowledged(PROGRESS)
        for name in SERVICES:
            faults.append(kill_and_restart(stack, name))
            load.wait_for_acknowledged(len(load.ledger.acknowledged()) + PROGRESS)
    finally:
        ledger = load.stop()
    recovery = measure_recovery(ledger, faults)

    result = asyncio.run(reconcile(stack, ledger))

    assert result.consistent, result.describe()
    assert result.in_store == result.on_bus == result.acknowledged > 0, result.describe()
    assert result.in_kpis == result.kpi_counted, result.describe()
    assert not ledger.gave_up(), [command.key for command in ledger.gave_up()]
    assert not ledger.unexpected(), ledger.unexpected()[:5]
    assert all(seconds is not None for seconds in recovery.values()), recovery
    # The hurried creates were ambiguous, and refused commands were among the load.
    assert any(command.ambiguous for command in ledger.commands)
    assert result.refused > 0
    for service in stack.services.values():
        assert service.starts == 2
