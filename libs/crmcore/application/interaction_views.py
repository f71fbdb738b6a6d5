"""The read models of the interaction service: lists of interactions and cases.

Both tables live in one `ReadModelStore` ("interactions_views", beside the events) and follow
the interaction application's own notification log; each batch of events and the projection
position are committed in one transaction, so a replayed event never applies twice (each row
also remembers the version of its aggregate). Queries catch up first, so an interaction is
listed as soon as the call opening it returned.

- `list_interactions`: by customer, case, agent (every agent who answered it) and status,
  newest first, in pages; the page itself is read from the event store (the rows only say
  which interactions, in which order).
- `list_cases`: by customer and status, newest first.
- `repeat_case_for`: the case a repeat contact of the same customer about the same reason
  belongs to: the customer's newest case with that reason (compared case-insensitively) that
  is still being worked, or solved and inside its reopen window.
- `RoutingProgress`: the last routing event version applied per task, so that the consumer
  of `crm.routing.>` recognises a redelivered event even after a restart.

Page tokens are opaque, tied to their query (another filter refuses them), and hold the
position of the last row shown.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from uuid import UUID

import msgspec
from eventsourcing.utils import get_topic

from crmcore.adapters.readmodels import Cursor, ReadModelStore, open_read_model_store
from crmcore.application.interactions import InteractionApplication
from crmcore.domain import values
from crmcore.domain.base import DomainEvent
from crmcore.domain.case import (
    Case,
    CaseEvent,
    CaseOpened,
    CaseReopened,
    CaseSolved,
    CaseStatus,
)
from crmcore.domain.errors import InvalidValue
from crmcore.domain.interaction import (
    Answered,
    Interaction,
    InteractionEvent,
    InteractionOpened,
    InteractionStatus,
    LinkedToCase,
)
from crmcore.domain.task import TaskEvent

VIEWS_STORE_NAME = "interactions_views"
DEFAULT_PAGE_SIZE = 50
#: Larger page sizes are lowered to this (AIP-158: coerce, do not refuse).
MAX_PAGE_SIZE = 500
DEFAULT_BATCH_SIZE = 500

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_token_encoder = msgspec.msgpack.Encoder()

_TABLES = (
    """CREATE TABLE IF NOT EXISTS interaction_index (
        interaction_id TEXT PRIMARY KEY,
        seq BIGINT NOT NULL,
        version INTEGER NOT NULL,
        customer_id TEXT,
        case_id TEXT,
        status TEXT NOT NULL,
        channel TEXT NOT NULL,
        updated_at BIGINT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS interaction_index_seq ON interaction_index (seq)",
    "CREATE INDEX IF NOT EXISTS interaction_index_customer ON interaction_index (customer_id, seq)",
    "CREATE INDEX IF NOT EXISTS interaction_index_case ON interaction_index (case_id, seq)",
    "CREATE INDEX IF NOT EXISTS interaction_index_status ON interaction_index (status, seq)",
    """CREATE TABLE IF NOT EXISTS interaction_agents (
        agent_id TEXT NOT NULL,
        interaction_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        PRIMARY KEY (agent_id, interaction_id)
    )""",
    "CREATE INDEX IF NOT EXISTS interaction_agents_seq ON interaction_agents (agent_id, seq)",
    """CREATE TABLE IF NOT EXISTS case_index (
        case_id TEXT PRIMARY KEY,
        seq BIGINT NOT NULL,
        version INTEGER NOT NULL,
        customer_id TEXT,
        reason_key TEXT,
        status TEXT NOT NULL,
        reopen_window_s DOUBLE PRECISION NOT NULL,
        solved_at BIGINT,
        updated_at BIGINT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS case_index_seq ON case_index (seq)",
    "CREATE INDEX IF NOT EXISTS case_index_customer ON case_index (customer_id, seq)",
    "CREATE INDEX IF NOT EXISTS case_index_status ON case_index (status, seq)",
    "CREATE INDEX IF NOT EXISTS case_index_reason ON case_index (customer_id, reason_key, seq)",
    """CREATE TABLE IF NOT EXISTS routing_progress (
        task_id TEXT PRIMARY KEY,
        version INTEGER NOT NULL
    )""",
)


class InteractionPage(msgspec.Struct, frozen=True, kw_only=True):
    interactions: tuple[Interaction, ...]
    #: Token of the next page; "" on the last one.
    next_page_token: str


class CasePage(msgspec.Struct, frozen=True, kw_only=True):
    cases: tuple[Case, ...]
    next_page_token: str


def checked_page_size(requested: int, field: str = "page_size") -> int:
    """0 → the default (50); above 500 → 500; negative → InvalidValue."""
    if requested < 0:
        raise InvalidValue(field, "must not be negative")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def _fingerprint(*parts: object) -> bytes:
    return hashlib.sha256(_token_encoder.encode([str(part) for part in parts])).digest()[:8]


def _encode_token(fingerprint: bytes, seq: int) -> str:
    raw = _token_encoder.encode([fingerprint, seq])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str, fingerprint: bytes, field: str = "page_token") -> int | None:
    """The position a page token continues after (None for "" = the first page)."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        decoded = msgspec.msgpack.decode(raw, type=tuple[bytes, int])
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise InvalidValue(field, "not a page token this service issued") from None
    if decoded[0] != fingerprint:
        raise InvalidValue(field, "belongs to another query (its filters changed)")
    return decoded[1]


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def reason_key(reason: str | None) -> str | None:
    """How contact reasons compare: trimmed, case-folded, spaces collapsed."""
    if reason is None:
        return None
    return " ".join(reason.split()).casefold() or None


def _locked_position(cursor: Cursor, dialect: str, projection: str) -> int:
    """The projection's position, locked until the caller's transaction ends (two service
    instances sharing the database never project the same events at once)."""
    cursor.execute(
        "INSERT INTO projection_positions (projection, position) VALUES (?, 0) "
        "ON CONFLICT (projection) DO NOTHING",
        (projection,),
    )
    lock = " FOR UPDATE" if dialect == "postgres" else ""  # SQLite: BEGIN IMMEDIATE already
    cursor.execute(
        f"SELECT position FROM projection_positions WHERE projection = ?{lock}", (projection,)
    )
    row = cursor.fetchone()
    return int(row[0]) if row else 0


def _subclasses(cls: type[Any]) -> list[type[Any]]:
    found: list[type[Any]] = []
    for subclass in cls.__subclasses__():
        found += [subclass, *_subclasses(subclass)]
    return found


class InteractionViews:
    """Lists of interactions and cases of one interaction application (module docstring)."""

    PROJECTION = "interaction_views"

    def __init__(self, app: InteractionApplication, store: ReadModelStore | None = None) -> None:
        self.app = app
        self._owns_store = store is None
        self.store = store or open_read_model_store(app.persistence, VIEWS_STORE_NAME)
        self.store.create(*_TABLES)
        self.routing_progress = RoutingProgress(self.store)
        self._lock = threading.Lock()
        self._topics = frozenset(
            get_topic(cls) for cls in (*_subclasses(InteractionEvent), *_subclasses(CaseEvent))
        )

    @property
    def position(self) -> int:
        return self.store.position(self.PROJECTION)

    def close_views(self) -> None:
        if self._owns_store:
            self.store.close_store()

    # --- the projection ---------------------------------------------------------------------

    def catch_up(self, *, batch_size: int = DEFAULT_BATCH_SIZE) -> int:
        """Projects every event stored after the saved position; returns how many were read."""
        read = 0
        with self._lock:
            while True:
                with self.store.transaction() as cursor:
                    position = _locked_position(cursor, self.store.dialect, self.PROJECTION)
                    notifications = self.app.recorder.select_notifications(
                        start=position, limit=batch_size, inclusive_of_start=False
                    )
                    if not notifications:
                        return read
                    for notification in notifications:
                        if notification.topic in self._topics:
                            event = cast(DomainEvent, self.app.mapper.to_domain_event(notification))
                            self._apply(cursor, notification.id, event)
                    ReadModelStore.save_position(cursor, self.PROJECTION, notifications[-1].id)
                read += len(notifications)

    def _apply(self, cursor: Cursor, position: int, event: DomainEvent) -> None:
        if isinstance(event, InteractionEvent):
            self._interaction(cursor, position, event)
        elif isinstance(event, CaseEvent):
            self._case(cursor, position, event)

    def _interaction(self, cursor: Cursor, position: int, event: InteractionEvent) -> None:
        interaction_id = str(event.originator_id)
        customer_id = None if event.customer_id is None else str(event.customer_id)
        if isinstance(event, InteractionOpened):
            cursor.execute(
                "INSERT INTO interaction_index (interaction_id, seq, version, customer_id, "
                "case_id, status, channel, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (interaction_id) DO NOTHING",
                (
                    interaction_id,
                    position,
                    event.originator_version,
                    customer_id,
                    None if event.case_id is None else str(event.case_id),
                    str(event.status),
                    str(event.channel),
                    _micros(event.timestamp),
                ),
            )
            return
        cursor.execute(
            "SELECT version, seq FROM interaction_index WHERE interaction_id = ?",
            (interaction_id,),
        )
        row = cursor.fetchone()
        if row is None or int(row[0]) >= event.originator_version:
            return  # opened before the log we follow began, or seen already
        seq = int(row[1])
        changes: dict[str, object] = {
            "version": event.originator_version,
            "customer_id": customer_id,
            "status": str(event.status),
            "updated_at": _micros(event.timestamp),
        }
        if isinstance(event, LinkedToCase):
            changes["case_id"] = str(event.case_id)
        if isinstance(event, Answered) and event.agent_id is not None:
            cursor.execute(
                "INSERT INTO interaction_agents (agent_id, interaction_id, seq) VALUES (?, ?, ?) "
                "ON CONFLICT (agent_id, interaction_id) DO NOTHING",
                (str(event.agent_id), interaction_id, seq),
            )
        assignments = ", ".join(f"{column} = ?" for column in changes)
        cursor.execute(
            f"UPDATE interaction_index SET {assignments} WHERE interaction_id = ?",
            (*changes.values(), interaction_id),
        )

    def _case(self, cursor: Cursor, position: int, event: CaseEvent) -> None:
        case_id = str(event.originator_id)
        customer_id = None if event.customer_id is None else str(event.customer_id)
        if isinstance(event, CaseOpened):
            cursor.execute(
                "INSERT INTO case_index (case_id, seq, version, customer_id, reason_key, status, "
                "reopen_window_s, solved_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?) "
                "ON CONFLICT (case_id) DO NOTHING",
                (
                    case_id,
                    position,
                    event.originator_version,
                    customer_id,
                    reason_key(event.reason),
                    str(event.status),
                    event.reopen_window.total_seconds(),
                    _micros(event.timestamp),
                ),
            )
            return
        cursor.execute("SELECT version FROM case_index WHERE case_id = ?", (case_id,))
        row = cursor.fetchone()
        if row is None or int(row[0]) >= event.originator_version:
            return
        changes: dict[str, object] = {
            "version": event.originator_version,
            "status": str(event.status),
            "updated_at": _micros(event.timestamp),
        }
        if isinstance(event, CaseSolved):
            changes["solved_at"] = _micros(event.timestamp)
        elif isinstance(event, CaseReopened):
            changes["solved_at"] = None
        assignments = ", ".join(f"{column} = ?" for column in changes)
        cursor.execute(
            f"UPDATE case_index SET {assignments} WHERE case_id = ?", (*changes.values(), case_id)
        )

    # --- queries ----------------------------------------------------------------------------

    def list_interactions(
        self,
        *,
        customer_id: UUID | None = None,
        case_id: UUID | None = None,
        agent_id: UUID | None = None,
        status: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> InteractionPage:
        """Interactions matching every given filter (None or "" = any), newest first."""
        size = checked_page_size(page_size)
        wanted_status = values.enum_value(InteractionStatus, status, "status") if status else None
        fingerprint = _fingerprint("interactions", customer_id, case_id, agent_id, wanted_status)
        before = _decode_token(page_token, fingerprint)
        self.catch_up()
        sql = ["SELECT i.interaction_id, i.seq FROM interaction_index i"]
        params: list[object] = []
        if agent_id is not None:
            sql.append(
                "JOIN interaction_agents a "
                "ON a.interaction_id = i.interaction_id AND a.agent_id = ?"
            )
            params.append(str(agent_id))
        sql.append("WHERE 1 = 1")
        for column, value in (
            ("customer_id", customer_id),
            ("case_id", case_id),
            ("status", wanted_status),
        ):
            if value is not None:
                sql.append(f"AND i.{column} = ?")
                params.append(str(value))
        if before is not None:
            sql.append("AND i.seq < ?")
            params.append(before)
        sql.append("ORDER BY i.seq DESC LIMIT ?")
        params.append(size + 1)
        rows = self.store.query(" ".join(sql), params)
        found = tuple(self.app.get_interaction(UUID(str(row[0]))) for row in rows[:size])
        next_token = _encode_token(fingerprint, int(rows[size - 1][1])) if len(rows) > size else ""
        return InteractionPage(interactions=found, next_page_token=next_token)

    def list_cases(
        self,
        *,
        customer_id: UUID | None = None,
        status: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> CasePage:
        """Cases matching every given filter, newest first."""
        size = checked_page_size(page_size)
        wanted_status = values.enum_value(CaseStatus, status, "status") if status else None
        fingerprint = _fingerprint("cases", customer_id, wanted_status)
        before = _decode_token(page_token, fingerprint)
        self.catch_up()
        sql = ["SELECT case_id, seq FROM case_index WHERE 1 = 1"]
        params: list[object] = []
        if customer_id is not None:
            sql.append("AND customer_id = ?")
            params.append(str(customer_id))
        if wanted_status is not None:
            sql.append("AND status = ?")
            params.append(str(wanted_status))
        if before is not None:
            sql.append("AND seq < ?")
            params.append(before)
        sql.append("ORDER BY seq DESC LIMIT ?")
        params.append(size + 1)
        rows = self.store.query(" ".join(sql), params)
        found = tuple(self.app.get_case(UUID(str(row[0]))) for row in rows[:size])
        next_token = _encode_token(fingerprint, int(rows[size - 1][1])) if len(rows) > size else ""
        return CasePage(cases=found, next_page_token=next_token)

    def repeat_case_for(
        self, customer_id: UUID, reason: str | None, *, at: datetime | None = None
    ) -> UUID | None:
        """The case a new contact of `customer_id` about `reason` repeats (module docstring);
        None when there is none (or no reason was given)."""
        key = reason_key(reason)
        if key is None:
            return None
        now = _micros(at or datetime.now(UTC))
        self.catch_up()
        rows = self.store.query(
            "SELECT case_id, status, reopen_window_s, solved_at FROM case_index "
            "WHERE customer_id = ? AND reason_key = ? AND status <> ? ORDER BY seq DESC",
            (str(customer_id), key, str(CaseStatus.CLOSED)),
        )
        for case_id, status, window_s, solved_at in rows:
            if status != CaseStatus.SOLVED:
                return UUID(str(case_id))
            if solved_at is not None and now <= int(solved_at) + int(float(window_s) * 1e6):
                return UUID(str(case_id))
        return None


class RoutingProgress:
    """The version of the last routing event applied per task (durable, in the views store)."""

    def __init__(self, store: ReadModelStore) -> None:
        self.store = store

    def applied(self, task_id: UUID) -> int:
        rows = self.store.query(
            "SELECT version FROM routing_progress WHERE task_id = ?", (str(task_id),)
        )
        return int(rows[0][0]) if rows else 0

    def record(self, task_id: UUID, version: int) -> None:
        """Remembers `version` (never moves backwards)."""
        with self.store.transaction() as cursor:
            cursor.execute(
                "INSERT INTO routing_progress (task_id, version) VALUES (?, ?) "
                "ON CONFLICT (task_id) DO UPDATE SET version = excluded.version "
                "WHERE routing_progress.version < excluded.version",
                (str(task_id), version),
            )

    def apply(self, app: InteractionApplication, event: TaskEvent) -> Interaction | None:
        """Records a routing decision on its interaction once: an event whose task version
        was applied already (a redelivery, also after a restart) changes nothing. A crash
        between the two steps is harmless too: applying a decision again finds the
        interaction moved on and does nothing."""
        if event.originator_version <= self.applied(event.originator_id):
            return None
        changed = app.apply_routing_event(event)
        self.record(event.originator_id, event.originator_version)
        return changed
