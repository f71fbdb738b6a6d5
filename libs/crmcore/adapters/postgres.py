"""PostgreSQL with TLS: the eventsourcing library's factory, plus libpq's TLS parameters.

The library connects with host, port, user and password only. `PostgresFactory` (the
`PERSISTENCE_MODULE` of `CRM_PERSISTENCE=postgres`) also reads, like the library's own settings
and with the same optional application-name prefix:

- `POSTGRES_SSLMODE`: libpq's `sslmode` (`disable`, `allow`, `prefer`, `require`, `verify-ca`,
  `verify-full`); `verify-full` checks the server's certificate and its name;
- `POSTGRES_SSLROOTCERT`: the CA certificate(s) the server's certificate is checked against;
- `POSTGRES_SSLCERT`, `POSTGRES_SSLKEY`: a client certificate and key, for servers that
  authenticate clients by certificate;

and adds them to the parameters of every pooled connection. With TLS configured, the factory
makes one connection at once so that a wrong CA or an untrusted server fails at start with
libpq's own words ("certificate verify failed"), not later as a pool timeout. The read models
(`crmcore.adapters.readmodels`) connect with the same parameters (`tls_parameters`).

Its recorders create their tables one process at a time (`TablesCreatedOneAtATime`), so that
services and replicas started together on a fresh database do not fail on each other's DDL.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg
from eventsourcing.persistence import InterfaceError, OperationalError
from eventsourcing.postgres import (
    PostgresAggregateRecorder,
    PostgresApplicationRecorder,
    PostgresDatastore,
    PostgresProcessRecorder,
    PostgresRecorder,
    PostgresTrackingRecorder,
)
from eventsourcing.postgres import PostgresFactory as LibraryPostgresFactory
from eventsourcing.utils import Environment
from psycopg.conninfo import conninfo_to_dict

from crmcore.adapters.store_outages import StoreBreaker, breaker_for, is_outage

#: libpq parameter → the setting that gives it.
TLS_SETTINGS = {
    "sslmode": "POSTGRES_SSLMODE",
    "sslrootcert": "POSTGRES_SSLROOTCERT",
    "sslcert": "POSTGRES_SSLCERT",
    "sslkey": "POSTGRES_SSLKEY",
}


def tls_parameters(setting: Callable[[str], str | None]) -> dict[str, str]:
    """libpq TLS parameters from the settings that are given (`setting(name)` looks one up)."""
    parameters: dict[str, str] = {}
    for parameter, name in TLS_SETTINGS.items():
        value = (setting(name) or "").strip()
        if value:
            parameters[parameter] = value
    return parameters


#: Pause between two attempts of a store call that lost its connection.
RETRY_PAUSE_S = 0.2
F = TypeVar("F", bound=Callable[..., Any])


def breaker_of(datastore: Any) -> StoreBreaker:
    """The process's breaker of the server `datastore` (the library's) connects to."""
    kwargs = datastore.pool.kwargs
    assert isinstance(kwargs, dict)
    return breaker_for(f"{kwargs.get('host')}:{kwargs.get('port')}")


def _retried_within_connect_timeout(method: F) -> F:
    """The library's recorder method without its own retry (ten attempts, each waiting up to
    the connect timeout for a connection: over 20 s with the server down, past any client's
    deadline), retried instead while the time spent stays within one connect timeout. A
    connection the server dropped (a restart) fails at once and is retried on a fresh one; a
    server that is down fails the call after about one connect timeout, which the services
    answer as UNAVAILABLE. Then the server's breaker (`crmcore.adapters.store_outages`) is
    open: later calls fail at once, except a probe every half second, until one reaches the
    server again, so calls queued behind one another do not each wait a connect timeout."""
    inner: Callable[..., Any] = getattr(method, "__wrapped__", method)

    @functools.wraps(inner)
    def retried(self: Any, *args: Any, **kwargs: Any) -> Any:
        breaker = breaker_of(self.datastore)
        breaker.admit()
        budget_s = float(self.datastore.pool.timeout)
        started = time.monotonic()
        while True:
            try:
                result = inner(self, *args, **kwargs)
            except (InterfaceError, OperationalError) as error:
                if time.monotonic() - started + RETRY_PAUSE_S > budget_s:
                    if is_outage(error):
                        breaker.tripped(error)
                    else:
                        breaker.reached()
                    raise
                time.sleep(RETRY_PAUSE_S)
            except Exception:
                breaker.reached()  # the server answered (a conflict, bad data, …)
                raise
            else:
                breaker.reached()
                return result

    return retried  # type: ignore[return-value]


#: PostgreSQL advisory lock serialising the creation of event-store tables (see
#: `TablesCreatedOneAtATime`).
_TABLE_CREATION_LOCK = 0x63726D5F657673  # "crm_evs"


@contextlib.contextmanager
def table_creation_lock(datastore: PostgresDatastore) -> Iterator[None]:
    """Holds the table-creation lock of `datastore`'s database, on a connection of its own:
    the library's `create_table` takes connections from the pool, which may have room for only
    one. Closing the connection releases the lock, whatever happened meanwhile. A server that
    cannot be reached (or is lost while waiting) raises `OperationalError`, as the library's
    own calls do."""
    pool = datastore.pool
    assert isinstance(pool.kwargs, dict)
    parameters = {key: value for key, value in pool.kwargs.items() if key != "row_factory"}
    if pool.get_password_func is not None:
        parameters["password"] = pool.get_password_func()
    conninfo = pool.conninfo() if callable(pool.conninfo) else pool.conninfo
    try:
        connection = psycopg.connect(
            conninfo, autocommit=True, connect_timeout=max(1, round(pool.timeout)), **parameters
        )
    except psycopg.OperationalError as error:
        raise OperationalError(f"cannot take the table-creation lock: {error}") from error
    with connection:
        try:
            connection.execute("SELECT pg_advisory_lock(%s)", (_TABLE_CREATION_LOCK,))
        except psycopg.OperationalError as error:
            raise OperationalError(f"cannot take the table-creation lock: {error}") from error
        yield


class TablesCreatedOneAtATime(PostgresRecorder):
    """A recorder whose `create_table` waits for any other process creating tables in the same
    database. The library's `CREATE … IF NOT EXISTS` is not safe against the same statement in
    another session (both find the type or table missing, the later one then fails on a unique
    index of the catalog: "duplicate key value violates unique constraint
    pg_type_typname_nsp_index"; `CREATE OR REPLACE FUNCTION` fails with "tuple concurrently
    updated"), which every pod of a deployment started on a fresh database would meet. The
    library creates composite types each in a transaction of their own, so a lock held across
    its whole `create_table` (a session lock), not a transaction-scoped one, serialises it; the
    process that waited then finds everything there."""

    def create_table(self) -> None:
        with table_creation_lock(self.datastore):
            super().create_table()


class BoundedRetryAggregateRecorder(TablesCreatedOneAtATime, PostgresAggregateRecorder):
    """The library's aggregate recorder, retrying a lost connection within a time budget."""

    insert_events = _retried_within_connect_timeout(PostgresAggregateRecorder.insert_events)
    select_events = _retried_within_connect_timeout(PostgresAggregateRecorder.select_events)


class BoundedRetryApplicationRecorder(TablesCreatedOneAtATime, PostgresApplicationRecorder):
    """The library's application recorder, retrying a lost connection within a time budget."""

    insert_events = _retried_within_connect_timeout(PostgresApplicationRecorder.insert_events)
    select_events = _retried_within_connect_timeout(PostgresApplicationRecorder.select_events)
    select_notifications = _retried_within_connect_timeout(
        PostgresApplicationRecorder.select_notifications
    )
    max_notification_id = _retried_within_connect_timeout(
        PostgresApplicationRecorder.max_notification_id
    )


class OneAtATimeTrackingRecorder(TablesCreatedOneAtATime, PostgresTrackingRecorder):
    """The library's tracking recorder (the outbox relays' positions), creating its table one
    process at a time: its first creation also records a migration row, which two processes
    creating it together would both insert."""


class OneAtATimeProcessRecorder(TablesCreatedOneAtATime, PostgresProcessRecorder):
    """The library's process recorder, creating its tables one process at a time."""


class TlsPostgresFactory(LibraryPostgresFactory):
    """The library's PostgreSQL factory, connecting with the configured TLS parameters, with
    recorders whose calls give up on a server that is down within the connect timeout, and
    whose tables are created one process at a time."""

    aggregate_recorder_class = BoundedRetryAggregateRecorder
    application_recorder_class = BoundedRetryApplicationRecorder
    tracking_recorder_class = OneAtATimeTrackingRecorder
    process_recorder_class = OneAtATimeProcessRecorder

    def __init__(self, env: Environment | dict[str, str] | None):
        super().__init__(env)
        parameters = tls_parameters(self.env.get)
        if not parameters:
            return
        kwargs = self.datastore.pool.kwargs
        assert isinstance(kwargs, dict)
        kwargs.update(parameters)
        options = {key: value for key, value in kwargs.items() if key != "row_factory"}
        check_connection(
            connect_timeout=self.env.get(self.POSTGRES_CONNECT_TIMEOUT) or "5", **options
        )


def check_connection(**parameters: Any) -> None:
    """Connects once with libpq `parameters`; a failure (an untrusted certificate, a server
    without TLS under `sslmode=require`, …) raises `OperationalError` in libpq's words."""
    try:
        with psycopg.connect(**parameters):
            pass
    except psycopg.OperationalError as error:
        shown = {**conninfo_to_dict(parameters.get("conninfo", "")), **parameters}
        raise OperationalError(
            f"cannot connect to PostgreSQL at {shown.get('host')}:{shown.get('port')} "
            f"with sslmode={shown.get('sslmode', 'prefer')}: {str(error).strip()}"
        ) from error
