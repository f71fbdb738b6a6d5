"""Read models beside the events: tables plus a projection position, committed together.

A projection applies a batch of events and records how far it got in ONE transaction, so an
event replayed after a crash or a redelivery is never counted twice (ARCHITECTURE.md, "Storage").
The same SQL runs on both engines: SQLite (embedded default; in memory for the in-memory
persistence choice) and PostgreSQL (production). Write statements with `?` placeholders and
portable SQL (`INSERT … ON CONFLICT … DO UPDATE` works on both).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal, Protocol

from crmcore.config import PersistenceSettings

Dialect = Literal["sqlite", "postgres"]
Row = tuple[Any, ...]

_POSITIONS_TABLE = """
CREATE TABLE IF NOT EXISTS projection_positions (
    projection TEXT PRIMARY KEY,
    position BIGINT NOT NULL
)
"""

#: PostgreSQL advisory lock serialising the creation of read-model tables (see `create`).
_SCHEMA_LOCK = 0x63726D5F736368  # "crm_sch"


class Cursor(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ()) -> None: ...
    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> None: ...
    def fetchall(self) -> list[Row]: ...
    def fetchone(self) -> Row | None: ...


class BulkCursor(Cursor, Protocol):
    """A PostgreSQL cursor: also loads many rows at once with binary `COPY`."""

    def copy_rows(
        self,
        table: str,
        columns: Sequence[str],
        types: Sequence[str],
        rows: Iterable[Sequence[Any]],
    ) -> None: ...


class _SqliteCursor:
    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._cursor.execute(sql, tuple(params))

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        self._cursor.executemany(sql, [tuple(p) for p in params])

    def fetchall(self) -> list[Row]:
        return [tuple(row) for row in self._cursor.fetchall()]

    def fetchone(self) -> Row | None:
        row = self._cursor.fetchone()
        return None if row is None else tuple(row)


class _PostgresCursor:
    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._cursor.execute(_to_pyformat(sql), tuple(params))

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        self._cursor.executemany(_to_pyformat(sql), [tuple(p) for p in params])

    def copy_rows(
        self,
        table: str,
        columns: Sequence[str],
        types: Sequence[str],
        rows: Iterable[Sequence[Any]],
    ) -> None:
        """Loads `rows` into `table` with binary `COPY` (`types`: the PostgreSQL type of each
        column, e.g. "int8", "text", "bytea"): rows are encoded by psycopg's C code, many times
        faster than parameters of an `INSERT`."""
        with self._cursor.copy(
            f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(list(types))
            write = copy.write_row
            for row in rows:
                write(row)

    def fetchall(self) -> list[Row]:
        return [tuple(row) for row in self._cursor.fetchall()]

    def fetchone(self) -> Row | None:
        row = self._cursor.fetchone()
        return None if row is None else tuple(row)


def _to_pyformat(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


class ReadModelStore:
    """Tables of read models and the positions of the projections that fill them."""

    dialect: Dialect

    def transaction(self) -> contextlib.AbstractContextManager[Cursor]:
        raise NotImplementedError

    def close_store(self) -> None:
        raise NotImplementedError

    def create(self, *statements: str) -> None:
        """Creates tables and indexes (statements must be idempotent: IF NOT EXISTS)."""
        with self.transaction() as cursor:
            for statement in (_POSITIONS_TABLE, *statements):
                cursor.execute(statement)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Runs one read statement outside any explicit transaction (one round trip, no lock)."""
        raise NotImplementedError

    def position(self, projection: str) -> int:
        """How far `projection` got (0 before its first event)."""
        rows = self.query(
            "SELECT position FROM projection_positions WHERE projection = ?", (projection,)
        )
        return int(rows[0][0]) if rows else 0

    @staticmethod
    def save_position(cursor: Cursor, projection: str, position: int) -> None:
        """Records the position inside the caller's transaction (with the read-model rows)."""
        cursor.execute(
            "INSERT INTO projection_positions (projection, position) VALUES (?, ?) "
            "ON CONFLICT (projection) DO UPDATE SET position = excluded.position",
            (projection, position),
        )


class SqliteReadModelStore(ReadModelStore):
    dialect: Dialect = "sqlite"

    def __init__(self, path: str) -> None:
        # One connection shared under a lock: SQLite has one writer anyway, and an in-memory
        # database exists only for the connection that created it.
        self._connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        if path != ":memory:":
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute("PRAGMA synchronous=NORMAL")
        self._connection.execute("PRAGMA busy_timeout=10000")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Cursor]:
        with self._lock:
            cursor = self._connection.cursor()
            cursor.execute("BEGIN IMMEDIATE")
            try:
                yield _SqliteCursor(cursor)
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            else:
                cursor.execute("COMMIT")
            finally:
                cursor.close()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._lock:
            return [tuple(row) for row in self._connection.execute(sql, tuple(params)).fetchall()]

    def close_store(self) -> None:
        self._connection.close()


class PostgresReadModelStore(ReadModelStore):
    dialect: Dialect = "postgres"

    def __init__(
        self, conninfo: str, *, schema: str = "", pool_size: int = 4, wait_s: float = 5.0
    ) -> None:
        """`wait_s`: how long a caller waits for a connection before PoolTimeout (which
        the gRPC services answer as UNAVAILABLE) while the server is unreachable."""
        from psycopg_pool import ConnectionPool

        options = f"-c search_path={schema},public" if schema else None
        # Autocommit: a read is one round trip; writes open their transaction explicitly.
        kwargs: dict[str, Any] = {"autocommit": True}
        if options:
            kwargs["options"] = options
        self._pool = ConnectionPool(
            conninfo,
            min_size=1,
            max_size=pool_size,
            kwargs=kwargs,
            open=True,
            # Not the pool's default 30 s: a server that is down must not hang the caller.
            timeout=wait_s,
            # A connection the server dropped (restart, failover) is replaced, not handed out.
            check=ConnectionPool.check_connection,
        )
        # Shared with the event store on the same server: while it is down, calls fail at
        # once (UNAVAILABLE) instead of each waiting `wait_s` (crmcore.adapters.store_outages).
        from psycopg.conninfo import conninfo_to_dict

        from crmcore.adapters.store_outages import breaker_for

        server = conninfo_to_dict(conninfo)
        self.breaker = breaker_for(f"{server.get('host')}:{server.get('port')}")
        if schema:
            with self._pool.connection() as connection, connection.transaction():
                connection.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                connection.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')

    def create(self, *statements: str) -> None:
        """Creates tables and indexes, one process at a time: `CREATE … IF NOT EXISTS` is not
        safe against the same creation in another session (both find the table missing, the
        second fails on a unique index of the catalog), which services started together on
        a fresh database would meet. A transaction-scoped advisory lock serialises them; the
        one waiting then finds everything there."""
        with self.transaction() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK,))
            for statement in (_POSITIONS_TABLE, *statements):
                cursor.execute(statement)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Cursor]:
        with (
            self.breaker.guarded(),
            self._pool.connection() as connection,
            connection.transaction(),
            connection.cursor() as cursor,
        ):
            yield _PostgresCursor(cursor)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self.breaker.guarded(), self._pool.connection() as connection:
            rows = connection.execute(_to_pyformat(sql), tuple(params)).fetchall()
        return [tuple(row) for row in rows]

    def close_store(self) -> None:
        self._pool.close()


def open_read_model_store(persistence: PersistenceSettings, name: str) -> ReadModelStore:
    """The read-model store called `name` on the engine the persistence settings choose."""
    if persistence.kind == "memory":
        return SqliteReadModelStore(":memory:")
    if persistence.kind == "sqlite":
        persistence.data_dir.mkdir(parents=True, exist_ok=True)
        return SqliteReadModelStore(str(persistence.data_dir / f"{name}.sqlite"))
    env = persistence.application_env(name)

    def setting(key: str, default: str = "") -> str:
        return env.get(f"{name.upper()}_{key}") or env.get(key) or default

    from psycopg.conninfo import make_conninfo

    from crmcore.adapters.postgres import check_connection, tls_parameters

    conninfo = make_conninfo(
        dbname=setting("POSTGRES_DBNAME"),
        host=setting("POSTGRES_HOST", "127.0.0.1"),
        port=setting("POSTGRES_PORT", "5432"),
        user=setting("POSTGRES_USER", "postgres"),
        password=setting("POSTGRES_PASSWORD"),
        connect_timeout=setting("POSTGRES_CONNECT_TIMEOUT", "5"),
        # The same TLS as the event store's connections (crmcore.adapters.postgres).
        **tls_parameters(setting),
    )
    if tls_parameters(setting):
        # A TLS mistake fails here in libpq's words, not later as a pool timeout.
        check_connection(conninfo=conninfo)
    return PostgresReadModelStore(
        conninfo,
        schema=setting("POSTGRES_SCHEMA"),
        pool_size=int(setting("POSTGRES_POOL_SIZE", "4")),
        wait_s=float(setting("POSTGRES_CONNECT_TIMEOUT", "5")),
    )
