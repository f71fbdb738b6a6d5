"""The read models of the customer service: the customer directory and the Customer 360 timeline.

Both live in one `ReadModelStore` ("customers_views": beside the events, in the same SQLite
directory or PostgreSQL database) and are updated together with their projection position in
one transaction, so replaying an event never applies it twice (ARCHITECTURE.md, "Storage").

- `CustomerDirectory` follows the customer application's own notification log and keeps what
  `ListCustomers` filters on (lifecycle, segment, tags) in order of registration; a page is then
  read from the event store, customer by customer. It catches up before every query, so a
  customer is listed as soon as the call creating it returned.
- `TimelineProjection` keeps one entry per interaction, case, survey response and feedback of a
  customer (the event → entry rules are those of `crmcore.application.timeline`), fed from the
  interaction events: over JetStream in the service, or straight from an in-process
  `InteractionApplication` (`catch_up`). Each entry remembers the version of its item, so a
  redelivered or replayed event changes nothing.

Personal data stays crypto-shredded here too: the directory keeps tags only as keyed hashes,
and an entry's title and summary (free text a customer wrote or said) are sealed with the
customer's data key, so erasing the customer makes them unreadable in the read models as well.
A summary made of non-personal facts (for events from the bus, whose texts are blank) is
sealed the same way, with the counts the next one is made of (messages, transfers, …).
Titles that only name a channel, reason, score or category (all but a case's subject) are also
kept in clear, so an erased customer's history still shows what happened, not what was said.

The timeline projection also records every event it receives, with its actor, in the audit
log (`crmcore.application.audit`): who did what to which customer, never a personal value.

`CustomerViews` bundles them for library users and the gRPC servicer: `list_customers`,
`customer_view` (profile plus timeline, newest first) and `customer_audit`, with opaque page
tokens.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from uuid import UUID

import msgspec
from eventsourcing.utils import get_topic

from crmcore.adapters.keyvault import KeyDestroyed, KeyVault
from crmcore.adapters.readmodels import Cursor, ReadModelStore, open_read_model_store
from crmcore.application.audit import INTERACTION_SERVICE, AuditLog, AuditPage, CustomerAudit
from crmcore.application.customers import CustomerApplication
from crmcore.application.interactions import InteractionApplication
from crmcore.application.timeline import (
    CustomerTimeline,
    InteractionFacts,
    TimelineEntry,
    TimelineKind,
    _Item,
)
from crmcore.domain import values
from crmcore.domain.base import DomainEvent
from crmcore.domain.case import CaseEvent
from crmcore.domain.customer import (
    MAX_SEGMENT_LENGTH,
    Customer,
    CustomerErased,
    CustomerEvent,
    CustomerMergedInto,
    CustomerProfileUpdated,
    CustomerRegistered,
    Lifecycle,
    LifecycleChanged,
    SubscriptionChanged,
)
from crmcore.domain.errors import InvalidValue
from crmcore.domain.feedback import FeedbackEvent, SurveyAnswered
from crmcore.domain.interaction import InteractionEvent

VIEWS_STORE_NAME = "customers_views"
DEFAULT_PAGE_SIZE = 50
#: Larger page sizes are lowered to this (AIP-158: coerce, do not refuse).
MAX_PAGE_SIZE = 500
DEFAULT_BATCH_SIZE = 500

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_token_encoder = msgspec.msgpack.Encoder()


# --- pages ----------------------------------------------------------------------------------


class CustomerPage(msgspec.Struct, frozen=True, kw_only=True):
    customers: tuple[Customer, ...]
    #: Token of the next page; "" on the last one.
    next_page_token: str


class CustomerView(msgspec.Struct, frozen=True, kw_only=True):
    """Customer 360: the profile and one page of the timeline, newest first."""

    customer: Customer
    timeline: tuple[TimelineEntry, ...]
    next_page_token: str


def checked_page_size(requested: int, field: str = "page_size") -> int:
    """0 → the default (50); above 500 → 500; negative → InvalidValue."""
    if requested < 0:
        raise InvalidValue(field, "must not be negative")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def _fingerprint(*parts: object) -> bytes:
    """Ties a page token to the query it continues: another query refuses it."""
    return hashlib.sha256(_token_encoder.encode(parts)).digest()[:8]


def _encode_token(fingerprint: bytes, *position: object) -> str:
    raw = _token_encoder.encode([fingerprint, *position])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str, fingerprint: bytes, field: str = "page_token") -> list[Any] | None:
    """The position a page token continues from (None for "" = the first page)."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        decoded = msgspec.msgpack.decode(raw, type=list[Any])
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise InvalidValue(field, "not a page token this service issued") from None
    if len(decoded) < 2 or decoded[0] != fingerprint:
        raise InvalidValue(field, "belongs to another query (filters or customer changed)")
    return decoded[1:]


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _moment(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def _locked_position(cursor: Cursor, dialect: str, projection: str) -> int:
    """The projection's position, locked until the caller's transaction ends (so two service
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


# --- the directory --------------------------------------------------------------------------

_DIRECTORY_TABLES = (
    """CREATE TABLE IF NOT EXISTS customer_directory (
        customer_id TEXT PRIMARY KEY,
        seq BIGINT NOT NULL,
        version INTEGER NOT NULL,
        lifecycle TEXT NOT NULL,
        segment TEXT NOT NULL,
        subscription TEXT NOT NULL,
        merged_into TEXT,
        erased INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX IF NOT EXISTS customer_directory_seq ON customer_directory (seq)",
    "CREATE INDEX IF NOT EXISTS customer_directory_lifecycle "
    "ON customer_directory (lifecycle, seq)",
    "CREATE INDEX IF NOT EXISTS customer_directory_segment ON customer_directory (segment, seq)",
    """CREATE TABLE IF NOT EXISTS customer_directory_tags (
        tag_key TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        PRIMARY KEY (tag_key, customer_id)
    )""",
    "CREATE INDEX IF NOT EXISTS customer_directory_tags_seq "
    "ON customer_directory_tags (tag_key, seq)",
)


class CustomerDirectory:
    """What ListCustomers filters on, projected from the customer application's events."""

    PROJECTION = "customer_directory"

    def __init__(self, app: CustomerApplication, store: ReadModelStore) -> None:
        self.app = app
        self.store = store
        self._lock = threading.Lock()
        self._topics = frozenset(get_topic(cls) for cls in _subclasses(CustomerEvent))
        store.create(*_DIRECTORY_TABLES)

    @property
    def position(self) -> int:
        return self.store.position(self.PROJECTION)

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
                            event = self.app.mapper.to_domain_event(notification)
                            self._apply(cursor, notification.id, cast(CustomerEvent, event))
                    ReadModelStore.save_position(cursor, self.PROJECTION, notifications[-1].id)
                read += len(notifications)

    def page(
        self,
        *,
        lifecycle: str = "",
        segment: str = "",
        tag: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> CustomerPage:
        """One page of customers matching every given filter ("" = any), in order of
        registration. Merged duplicates are left out (they live on in their survivor)."""
        size = checked_page_size(page_size)
        wanted_lifecycle = (
            values.enum_value(Lifecycle, lifecycle, "lifecycle") if lifecycle else None
        )
        wanted_segment = values.text(segment, "segment", max_length=MAX_SEGMENT_LENGTH).strip()
        wanted_tag = values.text(tag, "tag", max_length=MAX_SEGMENT_LENGTH).strip().lower()
        fingerprint = _fingerprint("customers", wanted_lifecycle, wanted_segment, wanted_tag)
        position = _decode_token(page_token, fingerprint)
        after = _int_at(position, 0)
        self.catch_up()
        sql = ["SELECT d.customer_id, d.seq FROM customer_directory d"]
        params: list[object] = []
        if wanted_tag:
            sql.append("JOIN customer_directory_tags t ON t.customer_id = d.customer_id")
            sql.append("AND t.tag_key = ?")
            params.append(self.app.index_key("tag", wanted_tag))
        sql.append("WHERE d.merged_into IS NULL AND d.seq > ?")
        params.append(after)
        if wanted_lifecycle is not None:
            sql.append("AND d.lifecycle = ?")
            params.append(str(wanted_lifecycle))
        if wanted_segment:
            sql.append("AND d.segment = ?")
            params.append(wanted_segment)
        sql.append("ORDER BY d.seq LIMIT ?")
        params.append(size + 1)
        rows = self.store.query(" ".join(sql), params)
        customers = tuple(self.app.get(UUID(str(row[0]))) for row in rows[:size])
        next_token = _encode_token(fingerprint, int(rows[size - 1][1])) if len(rows) > size else ""
        return CustomerPage(customers=customers, next_page_token=next_token)

    # --- projection ---

    def _apply(self, cursor: Cursor, position: int, event: CustomerEvent) -> None:
        customer_id = str(event.originator_id)
        if isinstance(event, CustomerRegistered):
            cursor.execute(
                "INSERT INTO customer_directory "
                "(customer_id, seq, version, lifecycle, segment, subscription) "
                "VALUES (?, ?, ?, ?, ?, 'none') ON CONFLICT (customer_id) DO NOTHING",
                (customer_id, position, event.originator_version, event.lifecycle, event.segment),
            )
            self._replace_tags(cursor, customer_id, position, event.tags)
            return
        cursor.execute(
            "SELECT version, seq FROM customer_directory WHERE customer_id = ?", (customer_id,)
        )
        row = cursor.fetchone()
        if row is None or int(row[0]) >= event.originator_version:
            return  # never registered here, or seen already
        seq = int(row[1])
        changes: dict[str, object] = {}
        if isinstance(event, CustomerProfileUpdated):
            if "segment" in event.changed and event.segment is not None:
                changes["segment"] = event.segment
            if "tags" in event.changed and event.tags is not None:
                self._replace_tags(cursor, customer_id, seq, event.tags)
        elif isinstance(event, LifecycleChanged):
            changes["lifecycle"] = str(event.lifecycle)
        elif isinstance(event, SubscriptionChanged):
            changes["subscription"] = str(event.status)
        elif isinstance(event, CustomerMergedInto):
            changes["merged_into"] = str(event.survivor_id)
            self._replace_tags(cursor, customer_id, seq, ())
        elif isinstance(event, CustomerErased):
            changes["erased"] = 1
            self._replace_tags(cursor, customer_id, seq, ())
        assignments = "".join(f", {column} = ?" for column in changes)
        cursor.execute(
            f"UPDATE customer_directory SET version = ?{assignments} WHERE customer_id = ?",
            (event.originator_version, *changes.values(), customer_id),
        )

    def _replace_tags(
        self, cursor: Cursor, customer_id: str, seq: int, tags: Sequence[str]
    ) -> None:
        cursor.execute("DELETE FROM customer_directory_tags WHERE customer_id = ?", (customer_id,))
        keys = sorted({self.app.index_key("tag", tag) for tag in tags if tag})
        if keys:
            cursor.executemany(
                "INSERT INTO customer_directory_tags (tag_key, customer_id, seq) VALUES (?, ?, ?)",
                [(key, customer_id, seq) for key in keys],
            )


def _int_at(position: list[Any] | None, index: int, default: int = 0) -> int:
    if position is None:
        return default
    value = position[index] if index < len(position) else None
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidValue("page_token", "not a page token this service issued")
    return value


# --- the timeline ---------------------------------------------------------------------------

_TIMELINE_TABLES = (
    """CREATE TABLE IF NOT EXISTS customer_timeline (
        item_id TEXT PRIMARY KEY,
        customer_id TEXT,
        version INTEGER NOT NULL,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        channel TEXT,
        occurred_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        public_title TEXT NOT NULL,
        sealed INTEGER NOT NULL,
        texts {bytes_type} NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS customer_timeline_newest "
    "ON customer_timeline (customer_id, occurred_at DESC, item_id DESC)",
)

#: The base classes of the events the timeline is projected from.
TIMELINE_EVENT_BASES: tuple[type[DomainEvent], ...] = (
    InteractionEvent,
    CaseEvent,
    SurveyAnswered,
    FeedbackEvent,
)
#: Entry kinds whose title says nothing personal ("phone (inbound): billing", "CSAT 5").
_PUBLIC_TITLE_KINDS = frozenset(
    {TimelineKind.INTERACTION, TimelineKind.SURVEY_RESPONSE, TimelineKind.FEEDBACK}
)
#: What the customer service subscribes to on the bus for the timeline.
TIMELINE_SUBJECTS = ("crm.interaction.>", "crm.voc.>")


def timeline_event_classes() -> tuple[type[DomainEvent], ...]:
    """Every concrete event class the timeline projects (for the bus consumer's handlers)."""
    found: dict[type[DomainEvent], None] = {}
    for base in TIMELINE_EVENT_BASES:
        # A base with subclasses is abstract (never stored); one without is itself an event.
        for cls in tuple(_subclasses(base)) or (base,):
            found[cls] = None
    return tuple(found)


class _Texts(msgspec.Struct, array_like=True, frozen=True):
    title: str
    summary: str
    #: What the next summary of an interaction is made of (None: a row written before the
    #: timeline kept them, or a kind that has none).
    facts: InteractionFacts | None = None


_texts_decoder = msgspec.msgpack.Decoder(_Texts)


class TimelineProjection:
    """Customer timelines in SQL tables (module docstring)."""

    #: Position when following an in-process interaction application (`catch_up`).
    PROJECTION = "customer_timeline"

    def __init__(
        self, store: ReadModelStore, key_vault: KeyVault, *, audit_log: AuditLog | None = None
    ) -> None:
        """`audit_log`: where each projected event is also recorded with its actor (the
        customer's audit trail, `crmcore.application.audit`)."""
        self.store = store
        self.key_vault = key_vault
        self.audit_log = audit_log
        self._topics = frozenset(get_topic(cls) for cls in timeline_event_classes())
        bytes_type = "BYTEA" if store.dialect == "postgres" else "BLOB"
        store.create(*(sql.format(bytes_type=bytes_type) for sql in _TIMELINE_TABLES))

    def apply(self, event: DomainEvent) -> bool:
        """Projects one event; False (and nothing changes) when its item already reached its
        version or the event makes no entry (e.g. a later event of an item never opened)."""
        with self.store.transaction() as cursor:
            return self._apply(cursor, event)

    def catch_up(self, app: InteractionApplication, *, batch_size: int = DEFAULT_BATCH_SIZE) -> int:
        """Projects the events an in-process interaction application stored after the saved
        position (embedded mode; the service reads them from JetStream instead)."""
        read = 0
        while True:
            with self.store.transaction() as cursor:
                position = _locked_position(cursor, self.store.dialect, self.PROJECTION)
                notifications = app.recorder.select_notifications(
                    start=position, limit=batch_size, inclusive_of_start=False
                )
                if not notifications:
                    return read
                for notification in notifications:
                    if notification.topic in self._topics:
                        event = app.mapper.to_domain_event(notification)
                        self._apply(cursor, cast(DomainEvent, event))
                ReadModelStore.save_position(cursor, self.PROJECTION, notifications[-1].id)
            read += len(notifications)

    def entries(
        self,
        customer_ids: Sequence[UUID],
        *,
        page_size: int = 0,
        page_token: str = "",
        query_key: object = None,
    ) -> tuple[tuple[TimelineEntry, ...], str]:
        """One page of the entries of the given customers together, newest first, and the
        token of the next page ("" on the last). `query_key` ties tokens to one query."""
        size = checked_page_size(page_size)
        fingerprint = _fingerprint("timeline", str(query_key))
        position = _decode_token(page_token, fingerprint)
        if not customer_ids:
            return (), ""
        placeholders = ", ".join("?" for _ in customer_ids)
        sql = (
            "SELECT item_id, customer_id, kind, status, channel, occurred_at, updated_at, "
            "sealed, texts, public_title FROM customer_timeline "
            f"WHERE customer_id IN ({placeholders})"
        )
        params: list[object] = [str(customer_id) for customer_id in customer_ids]
        if position is not None:
            occurred, item = _int_at(position, 0), position[1] if len(position) > 1 else None
            if not isinstance(item, str):
                raise InvalidValue("page_token", "not a page token this service issued")
            sql += " AND (occurred_at < ? OR (occurred_at = ? AND item_id < ?))"
            params += [occurred, occurred, item]
        sql += " ORDER BY occurred_at DESC, item_id DESC LIMIT ?"
        params.append(size + 1)
        rows = self.store.query(sql, params)
        entries = tuple(self._entry(row) for row in rows[:size])
        next_token = ""
        if len(rows) > size:
            last = rows[size - 1]
            next_token = _encode_token(fingerprint, int(last[5]), str(last[0]))
        return entries, next_token

    def entry(self, item_id: UUID) -> TimelineEntry | None:
        rows = self.store.query(
            "SELECT item_id, customer_id, kind, status, channel, occurred_at, updated_at, "
            "sealed, texts, public_title FROM customer_timeline WHERE item_id = ?",
            (str(item_id),),
        )
        return self._entry(rows[0]) if rows else None

    # --- projection ---

    def _apply(self, cursor: Cursor, event: DomainEvent) -> bool:
        if self.audit_log is not None:
            # Every event, even one that changes no entry: the audit lists what happened.
            self.audit_log.record(cursor, event, service=INTERACTION_SERVICE)
        item_id = str(event.originator_id)
        cursor.execute(
            "SELECT item_id, customer_id, kind, status, channel, occurred_at, updated_at, "
            "sealed, texts, public_title, version FROM customer_timeline WHERE item_id = ?",
            (item_id,),
        )
        row = cursor.fetchone()
        previous: _Item | None = None
        if row is not None:
            if int(row[10]) >= event.originator_version:
                return False
            customer = None if row[1] is None else UUID(str(row[1]))
            stored, stored_facts = self._read(row)
            previous = _Item(
                customer_id=customer, version=int(row[10]), entry=stored, facts=stored_facts
            )
        item = _next_item(previous, event)
        if item is None:
            return False
        entry = item.entry
        customer_id = cast(UUID | None, getattr(event, "customer_id", None))
        facts = item.facts if entry.kind is TimelineKind.INTERACTION else None
        sealed, texts = self._texts(item_id, customer_id, entry, facts)
        cursor.execute(
            "INSERT INTO customer_timeline (item_id, customer_id, version, kind, status, channel,"
            " occurred_at, updated_at, public_title, sealed, texts)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (item_id) DO UPDATE SET customer_id = excluded.customer_id,"
            " version = excluded.version, kind = excluded.kind, status = excluded.status,"
            " channel = excluded.channel, occurred_at = excluded.occurred_at,"
            " updated_at = excluded.updated_at, public_title = excluded.public_title,"
            " sealed = excluded.sealed, texts = excluded.texts",
            (
                item_id,
                None if customer_id is None else str(customer_id),
                event.originator_version,
                str(entry.kind),
                entry.status,
                None if entry.channel is None else str(entry.channel),
                _micros(entry.occurred_at),
                _micros(entry.updated_at),
                entry.title if entry.kind in _PUBLIC_TITLE_KINDS else "",
                1 if sealed else 0,
                texts,
            ),
        )
        return True

    def _texts(
        self,
        item_id: str,
        customer_id: UUID | None,
        entry: TimelineEntry,
        facts: InteractionFacts | None,
    ) -> tuple[bool, bytes]:
        """Title and summary (with the facts the next summary is made of) as stored: sealed
        with the customer's key; blank when that key was destroyed (an erased customer); in
        clear only while no customer is known."""
        plain = _token_encoder.encode(_Texts(title=entry.title, summary=entry.summary, facts=facts))
        if customer_id is None:
            return False, plain
        try:
            sealed = self.key_vault.seal(
                customer_id, plain, _texts_associated(item_id, str(customer_id))
            )
        except KeyDestroyed:
            public_title = entry.title if entry.kind in _PUBLIC_TITLE_KINDS else ""
            return False, _token_encoder.encode(_Texts(title=public_title, summary=""))
        return True, sealed

    def _entry(self, row: Sequence[Any]) -> TimelineEntry:
        return self._read(row)[0]

    def _read(self, row: Sequence[Any]) -> tuple[TimelineEntry, InteractionFacts]:
        """The entry of a row, and the facts its next summary is made of."""
        item_id, customer_id, kind, status, channel, occurred, updated, sealed, texts = row[:9]
        public_title = str(row[9])
        raw = bytes(texts)
        if sealed:
            opened = self.key_vault.open(
                UUID(str(customer_id)), raw, _texts_associated(str(item_id), str(customer_id))
            )
            decoded = _Texts(public_title, "") if opened is None else _texts_decoder.decode(opened)
        else:
            decoded = _texts_decoder.decode(raw)
        facts = decoded.facts
        if facts is None:
            # Written before the facts were kept: a summary there was a text, to keep.
            facts = InteractionFacts(shows_text=bool(decoded.summary))
        entry = TimelineEntry(
            kind=TimelineKind(kind),
            id=UUID(str(item_id)),
            title=decoded.title,
            summary=decoded.summary,
            status=str(status),
            channel=None if channel is None else values.Channel(channel),
            occurred_at=_moment(int(occurred)),
            updated_at=_moment(int(updated)),
        )
        return entry, facts


def _texts_associated(item_id: str, customer_id: str) -> bytes:
    return f"timeline:{item_id}:{customer_id}".encode()


def _next_item(previous: _Item | None, event: DomainEvent) -> _Item | None:
    """The item after `event`, by the rules of the in-memory timeline (one source of truth):
    a scratch `CustomerTimeline` holding only this item applies the event."""
    scratch = CustomerTimeline()
    if previous is not None:
        scratch._items[event.originator_id] = previous
    scratch.apply(1, event)
    return scratch._items.get(event.originator_id)


def _subclasses(cls: type[Any]) -> Iterator[type[Any]]:
    for subclass in cls.__subclasses__():
        yield subclass
        yield from _subclasses(subclass)


# --- both, for library users and the service ------------------------------------------------


class CustomerViews:
    """The customer directory and the Customer 360 of one customer application, in-process."""

    def __init__(self, app: CustomerApplication, store: ReadModelStore | None = None) -> None:
        self.app = app
        self._owns_store = store is None
        self.store = store or open_read_model_store(app.persistence, VIEWS_STORE_NAME)
        self.directory = CustomerDirectory(app, self.store)
        self.audit_log = AuditLog(self.store)
        self.timeline = TimelineProjection(self.store, app.key_vault, audit_log=self.audit_log)
        self.audit = CustomerAudit(app, self.audit_log)

    def list_customers(
        self,
        *,
        lifecycle: str = "",
        segment: str = "",
        tag: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> CustomerPage:
        return self.directory.page(
            lifecycle=lifecycle,
            segment=segment,
            tag=tag,
            page_size=page_size,
            page_token=page_token,
        )

    def customer_view(
        self, customer_id: UUID, *, page_size: int = 0, page_token: str = ""
    ) -> CustomerView:
        """The customer (a merged id resolves to its survivor) and a page of its timeline:
        its own items and those of every customer merged into it, newest first."""
        customer = self.app.resolve(customer_id)
        entries, next_token = self.timeline.entries(
            (customer.id, *customer.merged_ids),
            page_size=page_size,
            page_token=page_token,
            query_key=customer.id,
        )
        return CustomerView(customer=customer, timeline=entries, next_page_token=next_token)

    def customer_audit(
        self,
        customer_id: UUID,
        *,
        page_size: int = 0,
        page_token: str = "",
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> AuditPage:
        """A page of the customer's audit trail, newest first (`CustomerAudit.page`)."""
        return self.audit.page(
            customer_id, page_size=page_size, page_token=page_token, since=since, until=until
        )

    def close_views(self) -> None:
        if self._owns_store:
            self.store.close_store()
