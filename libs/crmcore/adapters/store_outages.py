"""Store outages: telling "the database cannot be reached" apart from other errors, and a
circuit breaker that answers at once while the database is known to be down.

`is_store_unavailable(error)` is true for the errors of a database that is down, restarting or
out of reach (the library's `OperationalError` / `InterfaceError`, psycopg's of the same names
and its pool timeout, SQLite's "database is locked", `crmcore.domain.errors.Unavailable`). Such
an error says nothing about the command or event at hand: it is answered UNAVAILABLE (gRPC),
never retried batch after batch behind a queue (group commit), and never counts towards parking
an event (bus consumers): it is retried once the store is back.

`StoreBreaker` bounds how long callers wait while the database is down. Without it every call
waits its own connect timeout, so calls queued behind one another (a group-commit writer, a
pool's waiting clients) wait several timeouts, past their clients' deadlines. Once a call has
given up on the store (`tripped`), the breaker is open: every new call fails at once with
`StoreUnavailable` (UNAVAILABLE), except one probe at most every `probe_every_s`, which tries
the store for real; the first call that reaches the store again closes it. So no call waits
much beyond one connect timeout, and the services recover by themselves within a probe
interval of the database coming back.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator

from eventsourcing.persistence import InterfaceError, OperationalError

from crmcore.domain.errors import Unavailable

#: SQLite's words for a database another process holds (busy timeout spent) or cannot open.
_SQLITE_UNAVAILABLE = ("database is locked", "database table is locked", "unable to open")


def _psycopg_unavailable() -> tuple[type[BaseException], ...]:
    """psycopg's errors of a lost or unreachable server (its pool timeouts are among its
    OperationalErrors), when the PostgreSQL extra is installed."""
    try:
        import psycopg
    except ImportError:  # without the PostgreSQL extra there is no server to lose
        return ()
    return (psycopg.OperationalError, psycopg.InterfaceError)


_UNAVAILABLE: tuple[type[BaseException], ...] = (
    Unavailable,
    OperationalError,
    InterfaceError,
    *_psycopg_unavailable(),
)


def is_store_unavailable(error: BaseException) -> bool:
    """True when `error` means the store cannot be reached right now (retry later), not that
    the call or its data is wrong."""
    if isinstance(error, sqlite3.OperationalError):
        return any(words in str(error).lower() for words in _SQLITE_UNAVAILABLE)
    if isinstance(error, _UNAVAILABLE):
        return True
    cause = error.__cause__
    return cause is not None and cause is not error and is_store_unavailable(cause)


def _server_answered(error: BaseException) -> bool:
    """True when `error` (or what caused it) carries a SQLSTATE the server sent that is not
    about the connection: a lock or statement timeout, a deadlock, a serialisation failure.
    Those are retried like an outage, but the server is up: they do not trip a breaker."""
    seen: BaseException | None = error
    while seen is not None:
        sqlstate = getattr(seen, "sqlstate", None)
        if isinstance(sqlstate, str):
            # Class 08: connection exception; 57P: shutdown, crash, starting up.
            return not sqlstate.startswith(("08", "57P"))
        seen = seen.__cause__ if seen.__cause__ is not seen else None
    return False


def is_outage(error: BaseException) -> bool:
    """True when `error` says the server itself is out of reach (not a timeout or conflict it
    answered): what trips a `StoreBreaker`."""
    return is_store_unavailable(error) and not _server_answered(error)


class StoreUnavailable(OperationalError):
    """Refused without trying: the store was found down moments ago (UNAVAILABLE)."""


#: Default pause between two probes of a store found down.
PROBE_EVERY_S = 0.5


class StoreBreaker:
    """Fails calls at once while the store is known to be down (see the module docstring)."""

    def __init__(
        self,
        name: str,
        *,
        probe_every_s: float = PROBE_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.probe_every_s = probe_every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._open = False
        self._next_probe_at = 0.0
        self._reason = ""
        #: Calls refused without trying, since the start (for tests and logs).
        self.refused = 0

    @property
    def is_open(self) -> bool:
        return self._open

    def admit(self) -> None:
        """Returns when the call may try the store; raises `StoreUnavailable` otherwise."""
        with self._lock:
            if not self._open:
                return
            now = self._clock()
            if now >= self._next_probe_at:
                # This call is the probe; others wait for its outcome until the next slot.
                self._next_probe_at = now + self.probe_every_s
                return
            self.refused += 1
            reason = self._reason
        raise StoreUnavailable(f"{self.name} is unavailable (retry later): {reason}")

    def tripped(self, error: BaseException) -> None:
        """A call gave up on the store: open (or keep open) the breaker."""
        with self._lock:
            if not self._open:
                self._next_probe_at = self._clock() + self.probe_every_s
            self._open = True
            self._reason = str(error).strip().splitlines()[0][:200] if str(error) else ""

    def reached(self) -> None:
        """A call reached the store (whatever its outcome): close the breaker."""
        if self._open:
            with self._lock:
                self._open = False

    @contextlib.contextmanager
    def guarded(self) -> Iterator[None]:
        """Runs the body as one store call: refused at once while open; an outage error
        raised by the body trips the breaker, anything else (success or another error, which
        the store answered) closes it."""
        self.admit()
        try:
            yield
        except BaseException as error:
            if isinstance(error, StoreUnavailable):
                raise
            if is_outage(error):
                self.tripped(error)
            elif isinstance(error, Exception):
                self.reached()
            raise
        self.reached()


_breakers: dict[str, StoreBreaker] = {}
_breakers_lock = threading.Lock()


def breaker_for(server: str) -> StoreBreaker:
    """The process's breaker of one database server (`host:port`): the event store, the read
    models and the key vaults on that server share it, so one finding it down spares the
    others their own connect timeouts."""
    with _breakers_lock:
        breaker = _breakers.get(server)
        if breaker is None:
            breaker = _breakers[server] = StoreBreaker(f"PostgreSQL at {server}")
        return breaker
