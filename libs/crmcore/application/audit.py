"""The audit trail of a customer: who (which token, or which part of the system) did what, when.

Every stored event names its `actor` (stamped by `CRMApplication.record` from the current
principal). The audit of one customer lists, newest first:

- the customer's own events, read from the customer application's event store: its own and
  those of every customer merged into it (a merged-away id keeps resolving to the survivor),
  the erasure included — read in their public form, so nothing personal is ever decoded;
- the events of interactions, cases, survey responses and feedback about that customer, which
  the customer service receives from the bus for the Customer 360 timeline: the timeline
  projection records each of them in `AuditLog` (table `customer_audit`, in the customer
  service's read-model store, in the same transaction as its timeline entry).

An entry holds the time, the actor, the service that stored the event, the action (the event's
CloudEvents type, e.g. `crm.customer.profile_updated.v1`), the aggregate and its version, and
the names of the fields the event set (`changed_fields`) — never their values, so an erased
customer's audit still lists the whole history without anything personal in it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import cast
from uuid import UUID

import msgspec
from eventsourcing.persistence import Mapper

from crmcore.adapters.envelope import event_type
from crmcore.adapters.mapper import MsgspecMapper
from crmcore.adapters.readmodels import Cursor, ReadModelStore
from crmcore.application.customers import CustomerApplication
from crmcore.domain.base import DomainEvent
from crmcore.domain.customer import CustomerEvent
from crmcore.domain.errors import InvalidValue

DEFAULT_PAGE_SIZE = 50
#: Larger page sizes are lowered to this (AIP-158: coerce, do not refuse).
MAX_PAGE_SIZE = 500

#: `AuditEntry.service` of the customer's own events.
CUSTOMER_SERVICE = "customer"
#: `AuditEntry.service` of the interaction, case and VOC events (the interaction service
#: stores them all).
INTERACTION_SERVICE = "interaction"

#: Fields every event has: they say which event it is, not what it changed.
_ENVELOPE_FIELDS = frozenset(DomainEvent.__struct_fields__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_token_encoder = msgspec.msgpack.Encoder()


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One event in a customer's audit trail: who did what to which aggregate, when."""

    occurred_at: datetime
    #: `token:<name>`, `system:<name>`, or "" when nobody was identified.
    actor: str
    #: The service that stored the event: `customer`, `interaction`.
    service: str
    #: The event's CloudEvents type, e.g. `crm.customer.profile_updated.v1`.
    action: str
    aggregate_id: UUID
    aggregate_version: int
    #: The customer the event was about (a customer merged into the one asked for keeps its id).
    customer_id: UUID
    #: Names of the fields the event set (never their values).
    fields: tuple[str, ...]


class AuditPage(msgspec.Struct, frozen=True, kw_only=True):
    #: The customer whose audit it is (the survivor when a merged-away id was asked for).
    customer_id: UUID
    entries: tuple[AuditEntry, ...]
    #: Token of the next page; "" on the last one.
    next_page_token: str


def changed_fields(event: DomainEvent) -> tuple[str, ...]:
    """The names of the fields an event sets, for the audit trail.

    An event naming its changes (`changed`, e.g. a profile update) gives those; any other
    gives its own fields that hold a value — not the identity, version, time and actor every
    event has, not the facts its context's base event repeats on every event (an interaction's
    channel, status…), and not `previous…` values (what a field was before is not a change).
    Only names: an erased customer's events give the same names as before the erasure."""
    changed = getattr(event, "changed", None)
    if isinstance(changed, tuple) and all(isinstance(name, str) for name in changed):
        return cast(tuple[str, ...], changed)
    common = _ENVELOPE_FIELDS | _context_fields(type(event))
    return tuple(
        name
        for name in type(event).__struct_fields__
        if name not in common
        and not name.startswith("previous")
        and getattr(event, name) is not None
    )


_context_fields_cache: dict[type[DomainEvent], frozenset[str]] = {}


def _context_fields(cls: type[DomainEvent]) -> frozenset[str]:
    """Fields of the context's base event (the first class in the hierarchy naming a context:
    `InteractionEvent`, `CaseEvent`, `CustomerEvent`…)."""
    found = _context_fields_cache.get(cls)
    if found is None:
        base = next(
            (
                ancestor
                for ancestor in reversed(cls.__mro__)
                if isinstance(ancestor, type)
                and issubclass(ancestor, DomainEvent)
                and ancestor.__dict__.get("context")
            ),
            DomainEvent,
        )
        found = _context_fields_cache[cls] = frozenset(base.__struct_fields__)
    return found


def audit_entry(event: DomainEvent, *, service: str, customer_id: UUID) -> AuditEntry:
    """The audit entry of a stored event about `customer_id`."""
    return AuditEntry(
        occurred_at=_aware(event.timestamp),
        actor=event.actor,
        service=service,
        action=event_type(type(event)),
        aggregate_id=event.originator_id,
        aggregate_version=event.originator_version,
        customer_id=customer_id,
        fields=changed_fields(event),
    )


# --- the order of a trail, and where a page starts -------------------------------------------


class _Key(msgspec.Struct, array_like=True, frozen=True, order=True):
    """Sort key of an entry (newest first = descending): time, then aggregate, then version."""

    micros: int
    aggregate_id: str
    version: int


def _key(entry: AuditEntry) -> _Key:
    return _Key(_micros(entry.occurred_at), str(entry.aggregate_id), entry.aggregate_version)


def _micros(moment: datetime) -> int:
    return (_aware(moment) - _EPOCH) // timedelta(microseconds=1)


def _moment(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def checked_page_size(requested: int) -> int:
    """0 → the default (50); above 500 → 500; negative → InvalidValue naming `page_size`."""
    if requested < 0:
        raise InvalidValue("page_size", "must not be negative")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


class _Token(msgspec.Struct, array_like=True, frozen=True):
    query: bytes
    after: _Key


_token_decoder = msgspec.msgpack.Decoder(_Token)


def _query_fingerprint(customer_id: UUID, since: datetime | None, until: datetime | None) -> bytes:
    """Ties a page token to the query it continues: another customer or range refuses it."""
    parts = (
        str(customer_id),
        None if since is None else _micros(since),
        None if until is None else _micros(until),
    )
    return hashlib.sha256(_token_encoder.encode(parts)).digest()[:8]


def _encode_token(query: bytes, after: _Key) -> str:
    raw = _token_encoder.encode(_Token(query=query, after=after))
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str, query: bytes) -> _Key | None:
    """Where the page continues (None for "": the first page); InvalidValue naming
    `page_token` for anything this service did not issue for this query."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        decoded = _token_decoder.decode(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise InvalidValue("page_token", "not a page token this service issued") from None
    if decoded.query != query:
        raise InvalidValue("page_token", "belongs to another query (customer or range changed)")
    return decoded.after


# --- the events about a customer that other services stored ----------------------------------

_AUDIT_TABLES = (
    """CREATE TABLE IF NOT EXISTS customer_audit (
        aggregate_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        customer_id TEXT,
        occurred_at BIGINT NOT NULL,
        actor TEXT NOT NULL,
        service TEXT NOT NULL,
        action TEXT NOT NULL,
        fields TEXT NOT NULL,
        PRIMARY KEY (aggregate_id, version)
    )""",
    "CREATE INDEX IF NOT EXISTS customer_audit_newest "
    "ON customer_audit (customer_id, occurred_at DESC, aggregate_id DESC, version DESC)",
)


class AuditLog:
    """The events of other services about customers (interactions, cases, surveys, feedback),
    one row each: who, what, which aggregate, which field names. Filled by the timeline
    projection in its own transaction (`record`); recording an event twice changes nothing."""

    def __init__(self, store: ReadModelStore) -> None:
        self.store = store
        store.create(*_AUDIT_TABLES)

    def record(self, cursor: Cursor, event: DomainEvent, *, service: str) -> None:
        """Adds the event (once). An event about no customer yet (an anonymous contact) is
        kept too, and moves to the customer once one of its aggregate's events names one."""
        customer_id = getattr(event, "customer_id", None)
        customer = str(customer_id) if isinstance(customer_id, UUID) else None
        aggregate_id = str(event.originator_id)
        cursor.execute(
            "INSERT INTO customer_audit (aggregate_id, version, customer_id, occurred_at, actor,"
            " service, action, fields) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (aggregate_id, version) DO NOTHING",
            (
                aggregate_id,
                event.originator_version,
                customer,
                _micros(event.timestamp),
                event.actor,
                service,
                event_type(type(event)),
                ",".join(changed_fields(event)),
            ),
        )
        if customer is not None:
            cursor.execute(
                "UPDATE customer_audit SET customer_id = ?"
                " WHERE aggregate_id = ? AND customer_id IS NULL",
                (customer, aggregate_id),
            )

    def entries(
        self,
        customer_ids: Sequence[UUID],
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        after: _Key | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
    ) -> list[AuditEntry]:
        """Up to `limit` entries about the given customers, newest first: at or after `since`,
        before `until`, and after (older than) the entry of key `after`."""
        if not customer_ids or limit <= 0:
            return []
        placeholders = ", ".join("?" for _ in customer_ids)
        sql = (
            "SELECT aggregate_id, version, customer_id, occurred_at, actor, service, action,"
            f" fields FROM customer_audit WHERE customer_id IN ({placeholders})"
        )
        params: list[object] = [str(customer_id) for customer_id in customer_ids]
        if since is not None:
            sql += " AND occurred_at >= ?"
            params.append(_micros(since))
        if until is not None:
            sql += " AND occurred_at < ?"
            params.append(_micros(until))
        if after is not None:
            sql += (
                " AND (occurred_at < ? OR (occurred_at = ? AND (aggregate_id < ?"
                " OR (aggregate_id = ? AND version < ?))))"
            )
            params += [
                after.micros,
                after.micros,
                after.aggregate_id,
                after.aggregate_id,
                after.version,
            ]
        sql += " ORDER BY occurred_at DESC, aggregate_id DESC, version DESC LIMIT ?"
        params.append(limit)
        return [
            AuditEntry(
                occurred_at=_moment(int(row[3])),
                actor=str(row[4]),
                service=str(row[5]),
                action=str(row[6]),
                aggregate_id=UUID(str(row[0])),
                aggregate_version=int(row[1]),
                customer_id=UUID(str(row[2])),
                fields=tuple(name for name in str(row[7]).split(",") if name),
            )
            for row in self.store.query(sql, params)
        ]


# --- the query --------------------------------------------------------------------------------


class CustomerAudit:
    """The audit trail of customers (module docstring): their own events and the log."""

    def __init__(self, app: CustomerApplication, log: AuditLog) -> None:
        self.app = app
        self.log = log
        mapper: Mapper[UUID] = app.mapper
        # The public view decodes every event in its redacted form without opening any key:
        # the audit only needs field names, so it never reads a personal value.
        self._mapper = mapper.public_view() if isinstance(mapper, MsgspecMapper) else mapper

    def page(
        self,
        customer_id: UUID,
        *,
        page_size: int = 0,
        page_token: str = "",
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> AuditPage:
        """One page of the customer's audit trail, newest first: events at or after `since`
        and before `until` (both optional). NotFound for an unknown customer; InvalidValue
        naming `page_size`, `page_token` or `end_time` for a bad request."""
        size = checked_page_size(page_size)
        if since is not None and until is not None and _aware(until) <= _aware(since):
            raise InvalidValue("end_time", "must be after start_time")
        customer = self.app.resolve(customer_id)
        query = _query_fingerprint(customer.id, since, until)
        after = _decode_token(page_token, query)
        members = (customer.id, *customer.merged_ids)
        candidates = [
            entry
            for entry in self._own_entries(members)
            if _within(entry, since, until) and (after is None or _key(entry) < after)
        ]
        candidates += self.log.entries(
            members, since=since, until=until, after=after, limit=size + 1
        )
        candidates.sort(key=_key, reverse=True)
        entries = tuple(candidates[:size])
        next_token = _encode_token(query, _key(entries[-1])) if len(candidates) > size else ""
        return AuditPage(customer_id=customer.id, entries=entries, next_page_token=next_token)

    def _own_entries(self, customer_ids: Iterable[UUID]) -> list[AuditEntry]:
        """The stored events of the customers' own aggregates (a customer has few)."""
        entries = []
        for customer_id in customer_ids:
            for stored in self.app.recorder.select_events(customer_id):
                event = self._mapper.to_domain_event(stored)
                if isinstance(event, CustomerEvent):
                    entries.append(
                        audit_entry(event, service=CUSTOMER_SERVICE, customer_id=customer_id)
                    )
        return entries


def _within(entry: AuditEntry, since: datetime | None, until: datetime | None) -> bool:
    moment = _micros(entry.occurred_at)
    if since is not None and moment < _micros(since):
        return False
    return until is None or moment < _micros(until)
