"""The customer timeline: one customer's interactions, cases, survey responses and feedback.

An in-process projection (the embedded mode's "customer 360" history) that follows the
notification log of an `InteractionApplication` from the last position it processed. One entry
per item, updated as its events arrive, newest first. Applying the same notification twice
changes nothing: the projection remembers its position, and each item the version it has seen.
"""

from __future__ import annotations

import enum
import threading
from datetime import datetime
from uuid import UUID

import msgspec

from crmcore.application.interactions import InteractionApplication
from crmcore.domain.base import DomainEvent
from crmcore.domain.case import CaseEvent, CaseOpened
from crmcore.domain.feedback import FeedbackEvent, SurveyAnswered
from crmcore.domain.interaction import (
    InteractionEvent,
    InteractionOpened,
    MessageAdded,
    Resolved,
)
from crmcore.domain.values import Channel

SUMMARY_LENGTH = 140
DEFAULT_PAGE_SIZE = 50
DEFAULT_BATCH_SIZE = 500


class TimelineKind(enum.StrEnum):
    INTERACTION = "interaction"
    CASE = "case"
    SURVEY_RESPONSE = "survey_response"
    FEEDBACK = "feedback"


class TimelineEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One item of a customer's history as an agent sees it in the timeline."""

    kind: TimelineKind
    id: UUID
    title: str
    summary: str
    status: str
    channel: Channel | None
    #: When the item started (ordering key: newest first).
    occurred_at: datetime
    #: When its last event happened.
    updated_at: datetime


class _Item(msgspec.Struct, kw_only=True):
    customer_id: UUID | None
    version: int
    entry: TimelineEntry


def _shorten(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= SUMMARY_LENGTH else flat[: SUMMARY_LENGTH - 1] + "…"


class CustomerTimeline:
    """Customer histories built from the interaction application's events."""

    def __init__(self) -> None:
        self._position = 0
        self._items: dict[UUID, _Item] = {}
        self._by_customer: dict[UUID, set[UUID]] = {}
        self._lock = threading.Lock()

    @property
    def position(self) -> int:
        """The id of the last notification processed (0: none yet)."""
        return self._position

    def catch_up(self, app: InteractionApplication, *, batch_size: int = DEFAULT_BATCH_SIZE) -> int:
        """Processes every notification stored after `position`; returns how many."""
        processed = 0
        with self._lock:
            while True:
                notifications = app.recorder.select_notifications(
                    start=self._position + 1, limit=batch_size
                )
                if not notifications:
                    return processed
                for notification in notifications:
                    event = app.mapper.to_domain_event(notification)
                    if isinstance(event, DomainEvent):
                        self._apply(event)
                    self._position = max(self._position, notification.id)
                    processed += 1

    def apply(self, position: int, event: DomainEvent) -> bool:
        """Applies the event stored at notification `position`; False (and nothing changes)
        when that position was processed already."""
        with self._lock:
            if position <= self._position:
                return False
            self._apply(event)
            self._position = position
            return True

    def entries(
        self, customer_id: UUID, limit: int = DEFAULT_PAGE_SIZE, offset: int = 0
    ) -> tuple[TimelineEntry, ...]:
        """A page of the customer's history, newest first."""
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must not be negative")
        with self._lock:
            entries = [
                self._items[item_id].entry for item_id in self._by_customer.get(customer_id, ())
            ]
        entries.sort(key=lambda entry: (entry.occurred_at, entry.id.int), reverse=True)
        return tuple(entries[offset : offset + limit])

    def entry(self, item_id: UUID) -> TimelineEntry | None:
        with self._lock:
            item = self._items.get(item_id)
            return item.entry if item is not None else None

    # --- projection -------------------------------------------------------------------------

    def _apply(self, event: DomainEvent) -> None:
        item = self._items.get(event.originator_id)
        if item is not None and event.originator_version <= item.version:
            return
        if isinstance(event, InteractionEvent):
            self._interaction(item, event)
        elif isinstance(event, CaseEvent):
            self._case(item, event)
        elif isinstance(event, SurveyAnswered):
            self._survey(event)
        elif isinstance(event, FeedbackEvent):
            self._feedback(item, event)

    def _interaction(self, item: _Item | None, event: InteractionEvent) -> None:
        if isinstance(event, InteractionOpened):
            entry = TimelineEntry(
                kind=TimelineKind.INTERACTION,
                id=event.originator_id,
                title=self._interaction_title(event),
                summary="",
                status=str(event.status),
                channel=event.channel,
                occurred_at=event.timestamp,
                updated_at=event.timestamp,
            )
            self._put(event, event.customer_id, entry)
            return
        if item is None:
            return  # its opening was never seen (a log that starts later)
        summary = item.entry.summary
        if isinstance(event, MessageAdded) and event.entry.public:
            summary = _shorten(event.entry.text)
        elif isinstance(event, Resolved) and event.resolution:
            summary = _shorten(event.resolution)
        entry = msgspec.structs.replace(
            item.entry,
            title=self._interaction_title(event),
            summary=summary,
            status=str(event.status),
            updated_at=event.timestamp,
        )
        self._put(event, event.customer_id, entry)

    @staticmethod
    def _interaction_title(event: InteractionEvent) -> str:
        label = f"{event.channel} ({event.direction})".replace("_", " ")
        return f"{label}: {event.contact_reason}" if event.contact_reason else label

    def _case(self, item: _Item | None, event: CaseEvent) -> None:
        if isinstance(event, CaseOpened):
            entry = TimelineEntry(
                kind=TimelineKind.CASE,
                id=event.originator_id,
                title=event.subject,
                summary=event.reason or "",
                status=str(event.status),
                channel=None,
                occurred_at=event.timestamp,
                updated_at=event.timestamp,
            )
        elif item is None:
            return
        else:
            entry = msgspec.structs.replace(
                item.entry, status=str(event.status), updated_at=event.timestamp
            )
        self._put(event, event.customer_id, entry)

    def _survey(self, event: SurveyAnswered) -> None:
        entry = TimelineEntry(
            kind=TimelineKind.SURVEY_RESPONSE,
            id=event.originator_id,
            title=f"{str(event.kind).upper()} {event.score}",
            summary=_shorten(event.comment),
            status="answered",
            channel=event.channel,
            occurred_at=event.timestamp,
            updated_at=event.timestamp,
        )
        self._put(event, event.customer_id, entry)

    def _feedback(self, item: _Item | None, event: FeedbackEvent) -> None:
        title = f"{event.category} ({event.sentiment})"
        if item is None:
            entry = TimelineEntry(
                kind=TimelineKind.FEEDBACK,
                id=event.originator_id,
                title=title,
                summary=_shorten(event.text),
                status="captured" if event.originator_version == 1 else "classified",
                channel=event.channel,
                occurred_at=event.timestamp,
                updated_at=event.timestamp,
            )
        else:
            entry = msgspec.structs.replace(
                item.entry, title=title, status="classified", updated_at=event.timestamp
            )
        self._put(event, event.customer_id, entry)

    def _put(self, event: DomainEvent, customer_id: UUID | None, entry: TimelineEntry) -> None:
        """Stores the item's entry under its customer (moving it when the customer changed)."""
        item_id = event.originator_id
        previous = self._items.get(item_id)
        if previous is not None and previous.customer_id != customer_id:
            self._forget(previous.customer_id, item_id)
        self._items[item_id] = _Item(
            customer_id=customer_id, version=event.originator_version, entry=entry
        )
        if customer_id is not None:
            self._by_customer.setdefault(customer_id, set()).add(item_id)

    def _forget(self, customer_id: UUID | None, item_id: UUID) -> None:
        if customer_id is None:
            return
        items = self._by_customer.get(customer_id)
        if items is not None:
            items.discard(item_id)
            if not items:
                del self._by_customer[customer_id]
