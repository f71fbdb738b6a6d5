"""Fixtures of the fault suite: the four services as processes on a fresh PostgreSQL database
and a NATS server of the test's own, with their logs printed when a test fails."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from crmcore.adapters.nats_server import NatsServer
from crmcore.config import PersistenceSettings
from tests.support.postgres import RestartablePostgres
from tests.support.processes import ProcessStack


def _running(
    persistence: PersistenceSettings, nats: NatsServer, work_dir: Path
) -> Iterator[ProcessStack]:
    stack = ProcessStack(persistence=persistence, nats_url=nats.url, work_dir=work_dir)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        # Shown when the test failed (pytest shows a passing test's output to nobody): the
        # end of each service's log, and why a service answered INTERNAL or DATA_LOSS.
        print(stack.logs())
        for traceback in stack.unexpected_errors():
            print(traceback)


@pytest.fixture
def stack(
    postgres_persistence: PersistenceSettings, restartable_nats: NatsServer, tmp_path: Path
) -> Iterator[ProcessStack]:
    """The services on a fresh database of the shared server and a private NATS server."""
    yield from _running(postgres_persistence, restartable_nats, tmp_path / "stack")


@pytest.fixture
def stack_on_private_postgres(
    restartable_postgres: RestartablePostgres, restartable_nats: NatsServer, tmp_path: Path
) -> Iterator[ProcessStack]:
    """The services on a PostgreSQL server of the test's own, which it may halt and resume."""
    server = restartable_postgres.server
    persistence = server.persistence(server.create_database())
    yield from _running(persistence, restartable_nats, tmp_path / "stack")
