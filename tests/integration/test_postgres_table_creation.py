"""Services started together on a fresh PostgreSQL database all open their event stores.

In a deployment every service and every replica starts at once, and on a new database each
creates the event store's types, tables, indexes and functions. The library's
`CREATE … IF NOT EXISTS` is not safe against the same statement in another session (the later
one fails on a unique index of the catalog, e.g. "duplicate key value violates unique
constraint pg_type_typname_nsp_index"), so `crmcore.adapters.postgres` creates them one
process at a time, under an advisory lock (`table_creation_lock`).
"""

from __future__ import annotations

import multiprocessing
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from multiprocessing.synchronize import Barrier
from typing import Any
from uuid import UUID

import psycopg
import pytest
from eventsourcing.persistence import OperationalError, Tracking
from eventsourcing.utils import Environment

from crmcore.adapters.postgres import TlsPostgresFactory, table_creation_lock
from crmcore.application.access import AccessApplication
from crmcore.application.customers import CustomerApplication
from crmcore.application.interactions import InteractionApplication
from crmcore.config import PersistenceSettings
from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.postgres

#: Processes started together; each holds a few connections (pools of one, plus the lock's).
PROCESSES = 8
#: Guards against a hung test only; nothing is asserted about how long anything takes.
PATIENCE_S = 120.0


def start_a_service(
    index: int, persistence: PersistenceSettings, start: Barrier, results: Any
) -> None:
    """What a customer and an interaction service process do at start (each opens the token
    store too), then one write and read of each store."""
    try:
        start.wait(timeout=PATIENCE_S)
        access = AccessApplication(persistence)
        customers = CustomerApplication(persistence)
        interactions = InteractionApplication(persistence)
        try:
            token = access.issue_token(f"service {index}", ["customers:read"])
            assert access.verify(token.bearer).name == f"service {index}"
            relay_positions = customers.factory.tracking_recorder()
            interactions.factory.tracking_recorder()

            customer = customers.register(name=f"Caller {index}")
            contact = interactions.open_interaction(channel="phone", customer_id=customer.id)
            assert customers.get(customer.id).name == f"Caller {index}"
            assert interactions.get_interaction(contact.id).customer_id == customer.id
            relay_positions.insert_tracking(Tracking(f"relay-{index}", 1))
            assert relay_positions.max_tracking_id(f"relay-{index}") == 1
        finally:
            access.close()
            customers.shut_down()
            interactions.close()
        results.put((index, "", str(customer.id)))
    except BaseException as error:
        summary = "".join(traceback.format_exception_only(error)).strip()
        results.put((index, summary, ""))


def test_services_started_together_on_a_fresh_database_all_open(
    postgres_persistence: PersistenceSettings,
) -> None:
    # Pools of one connection, so that eight processes stay well within `max_connections`.
    persistence = PersistenceSettings.postgres(
        **{**_connection_of(postgres_persistence), "pool_size": 1}
    )
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(PROCESSES)
    results = context.Queue()
    processes = [
        context.Process(target=start_a_service, args=(index, persistence, start, results))
        for index in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    try:
        outcomes = [results.get(timeout=PATIENCE_S) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=PATIENCE_S)
            if process.is_alive():
                process.kill()

    failures = sorted((index, error) for index, error, _ in outcomes if error)
    assert failures == []
    customers = CustomerApplication(persistence)
    try:
        names = {customers.get(UUID(customer_id)).name for _, _, customer_id in outcomes}
    finally:
        customers.shut_down()
    assert names == {f"Caller {index}" for index in range(PROCESSES)}


def _connection_of(persistence: PersistenceSettings) -> dict[str, Any]:
    env = persistence.library_env
    return {
        "dbname": env["POSTGRES_DBNAME"],
        "host": env["POSTGRES_HOST"],
        "port": int(env["POSTGRES_PORT"]),
        "user": env["POSTGRES_USER"],
        "password": env["POSTGRES_PASSWORD"],
    }


# --- the lock, step by step ----------------------------------------------------------------


@pytest.fixture
def factories(
    postgres_persistence: PersistenceSettings,
) -> Iterator[Callable[[], TlsPostgresFactory]]:
    """Makes factories of an application "lamps" on the test's fresh database."""
    made: list[TlsPostgresFactory] = []

    def factory() -> TlsPostgresFactory:
        made.append(
            TlsPostgresFactory(Environment("lamps", postgres_persistence.application_env("lamps")))
        )
        return made[-1]

    yield factory
    for each in made:
        each.close()


def admin(postgres_persistence: PersistenceSettings) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(**_connection_of(postgres_persistence), autocommit=True)


def waiting_for_the_lock(connection: psycopg.Connection[tuple[Any, ...]]) -> int:
    """The server process waiting for an advisory lock in this database (waits until one does;
    the test's own deadline only guards against a hang)."""
    deadline = time.monotonic() + PATIENCE_S
    while time.monotonic() < deadline:
        row = connection.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchone()
        if row is not None:
            return int(row[0])
        time.sleep(0.02)
    raise AssertionError("nobody waited for the table-creation lock")


def in_a_thread(work: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


class TestTableCreationLock:
    def test_tables_are_created_only_once_the_lock_is_free(
        self, factories: Callable[[], TlsPostgresFactory], postgres_persistence: PersistenceSettings
    ) -> None:
        with admin(postgres_persistence) as connection:
            with table_creation_lock(factories().datastore):
                creating, errors = in_a_thread(lambda: factories().application_recorder())
                waiting_for_the_lock(connection)
                assert self.table_exists(connection) is False
            creating.join(timeout=PATIENCE_S)
            assert errors == []
            assert self.table_exists(connection) is True

    def test_the_lock_is_released_when_creation_fails(
        self, factories: Callable[[], TlsPostgresFactory]
    ) -> None:
        with (
            pytest.raises(RuntimeError, match="creation failed"),
            table_creation_lock(factories().datastore),
        ):
            raise RuntimeError("creation failed")

        def take_the_lock() -> None:
            with table_creation_lock(factories().datastore):
                pass

        # Released: another session gets it (the server frees it as the closed session ends,
        # so it is waited for, not polled once).
        taking, errors = in_a_thread(take_the_lock)
        taking.join(timeout=PATIENCE_S)
        assert not taking.is_alive()
        assert errors == []

    def test_a_connection_lost_while_waiting_fails_as_the_library_would(
        self, factories: Callable[[], TlsPostgresFactory], postgres_persistence: PersistenceSettings
    ) -> None:
        def wait_for_the_lock() -> None:
            with table_creation_lock(factories().datastore):
                pass

        with admin(postgres_persistence) as connection:
            with table_creation_lock(factories().datastore):
                waiting, errors = in_a_thread(wait_for_the_lock)
                connection.execute(
                    "SELECT pg_terminate_backend(%s)", (waiting_for_the_lock(connection),)
                )
                waiting.join(timeout=PATIENCE_S)
            assert len(errors) == 1
            assert isinstance(errors[0], OperationalError)
            assert "cannot take the table-creation lock" in str(errors[0])

    def test_an_unreachable_server_fails_as_the_library_would(
        self, postgres_server: PostgresServer
    ) -> None:
        env = PersistenceSettings.postgres(
            dbname="crm", host="127.0.0.1", port=closed_port(), user=postgres_server.user
        ).application_env("lamps")
        factory = TlsPostgresFactory(Environment("lamps", {**env, "POSTGRES_CONNECT_TIMEOUT": "1"}))
        try:
            with (
                pytest.raises(OperationalError, match="cannot take the table-creation lock"),
                table_creation_lock(factory.datastore),
            ):
                pass
        finally:
            factory.close()

    @staticmethod
    def table_exists(connection: psycopg.Connection[tuple[Any, ...]]) -> bool:
        row = connection.execute("SELECT to_regclass('public.lamps_events') IS NOT NULL").fetchone()
        assert row is not None
        return bool(row[0])


def closed_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
