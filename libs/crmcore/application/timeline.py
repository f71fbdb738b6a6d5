"""The customer timeline: one customer's interactions, cases, survey responses and feedback.

An in-process projection (the embedded mode's "customer 360" history) that follows the
notification log of an `InteractionApplication` from the last position it processed. One entry
per item, updated as its events arrive, newest first. Applying the same notification twice
changes nothing: the projection remembers its position, and each item the version it has seen.

An entry's summary is the text an agent wants first (the last public message or the resolution,
a survey comment, a feedback text) when the events carry it: they do here, read from the
interaction application. Events received over the bus carry none of it (the interaction
service publishes personal text blanked), so there the summary says what happened from the
non-personal facts the events do carry: an interaction's status and queue, how many messages
and who wrote the last one, holds, transfers, escalations and reopenings; a feedback's
sentiment, score, topics and source; a survey's kind and score.
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
from crmcore.domain.feedback import SURVEY_SCALES, FeedbackEvent, SurveyAnswered
from crmcore.domain.interaction import (
    AuthorKind,
    Escalated,
    InteractionEvent,
    InteractionOpened,
    InteractionStatus,
    MessageAdded,
    PutOnHold,
    Reopened,
    Resolved,
    Transferred,
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


class InteractionFacts(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What an interaction's events told the timeline besides its entry: the non-personal facts
    its summary is made of while no text is known (module docstring)."""

    #: The summary is a text (a public message, the resolution): events without one keep it.
    shows_text: bool = False
    messages: int = 0
    last_author: AuthorKind | None = None
    #: Whether the last message was public (False: an internal note).
    last_public: bool = True
    holds: int = 0
    transfers: int = 0
    escalations: int = 0
    #: Where the last escalation went: tier and/or department ("" before any).
    escalated_to: str = ""
    reopens: int = 0


class _Item(msgspec.Struct, kw_only=True):
    customer_id: UUID | None
    version: int
    entry: TimelineEntry
    facts: InteractionFacts = msgspec.field(default_factory=InteractionFacts)


def _shorten(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= SUMMARY_LENGTH else flat[: SUMMARY_LENGTH - 1] + "…"


_STATUS_PHRASES = {
    InteractionStatus.CREATED: "opened",
    InteractionStatus.QUEUED: "waiting",
    InteractionStatus.OFFERED: "offered to an agent",
    InteractionStatus.ACTIVE: "with an agent",
    InteractionStatus.ON_HOLD: "on hold",
    InteractionStatus.WRAP_UP: "in wrap-up",
    InteractionStatus.RESOLVED: "resolved",
    InteractionStatus.CLOSED: "closed",
    InteractionStatus.ABANDONED: "abandoned while waiting",
    InteractionStatus.CONTAINED: "resolved by the bot",
}


def _times(count: int) -> str:
    return "once" if count == 1 else f"{count} times"


def _counted(facts: InteractionFacts, event: InteractionEvent) -> InteractionFacts:
    """`facts` after `event` (texts left aside: they may be blank)."""
    if isinstance(event, MessageAdded):
        return msgspec.structs.replace(
            facts,
            messages=facts.messages + 1,
            last_author=event.entry.author_kind,
            last_public=event.entry.public,
        )
    if isinstance(event, PutOnHold):
        return msgspec.structs.replace(facts, holds=facts.holds + 1)
    if isinstance(event, Transferred):
        return msgspec.structs.replace(facts, transfers=facts.transfers + 1)
    if isinstance(event, Escalated):
        tier = event.escalation.tier
        target = ", ".join(
            part for part in (f"tier {tier}" if tier else "", event.escalation.department) if part
        )
        return msgspec.structs.replace(
            facts, escalations=facts.escalations + 1, escalated_to=target
        )
    if isinstance(event, Reopened):
        return msgspec.structs.replace(facts, reopens=facts.reopens + 1)
    return facts


def _interaction_text(event: InteractionEvent) -> str:
    """The text an agent reads first that `event` carries: a public message or a resolution
    ("" when it has none, or carries it blanked as on the bus)."""
    if isinstance(event, MessageAdded) and event.entry.public:
        return event.entry.text.strip()
    if isinstance(event, Resolved) and event.resolution:
        return event.resolution.strip()
    return ""


def _interaction_summary(facts: InteractionFacts, event: InteractionEvent) -> str:
    """What happened, without a word anyone wrote, most telling first (a long one is cut):
    "resolved · 3 messages, last: agent · queue billing · transferred once"."""
    parts = [_STATUS_PHRASES.get(event.status, str(event.status))]
    if facts.messages:
        noun = "message" if facts.messages == 1 else "messages"
        last = f"{facts.messages} {noun}, last: {facts.last_author}"
        parts.append(last if facts.last_public else f"{last} (internal note)")
    if event.queue:
        parts.append(f"queue {event.queue}")
    if facts.escalations:
        escalated = "escalated" if facts.escalations == 1 else f"escalated {facts.escalations}×"
        parts.append(f"{escalated} to {facts.escalated_to}" if facts.escalated_to else escalated)
    if facts.transfers:
        parts.append(f"transferred {_times(facts.transfers)}")
    if facts.reopens:
        parts.append(f"reopened {_times(facts.reopens)}")
    if facts.holds:
        parts.append(f"held {_times(facts.holds)}")
    return _shorten(" · ".join(parts))


def _survey_summary(event: SurveyAnswered) -> str:
    """The comment; else the kind and score on its scale: "CSAT score 4 (scale 1–5)"."""
    if event.comment.strip():
        return _shorten(event.comment)
    low, high = SURVEY_SCALES[event.kind]
    return f"{str(event.kind).upper()} score {event.score} (scale {low}–{high})"


def _feedback_summary(event: FeedbackEvent) -> str:
    """The text; else what its classification says beyond the title's category and sentiment:
    "negative sentiment -0.60 · topics: delivery, courier · source: complaint"."""
    if event.text.strip():
        return _shorten(event.text)
    sentiment = f"{event.sentiment} sentiment"
    if event.sentiment_score is not None:
        sentiment += f" {event.sentiment_score:+.2f}"
    parts = [sentiment]
    if event.topics:
        parts.append("topics: " + ", ".join(event.topics))
    parts.append(f"source: {event.source}")
    return _shorten(" · ".join(parts))


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
        if item is None and not isinstance(event, InteractionOpened):
            return  # its opening was never seen (a log that starts later)
        previous = None if item is None else item.entry
        facts = InteractionFacts() if item is None else _counted(item.facts, event)
        text = _interaction_text(event)
        if text:
            summary = _shorten(text)
            facts = msgspec.structs.replace(facts, shows_text=True)
        elif facts.shows_text and previous is not None:
            summary = previous.summary  # the last text stays until another replaces it
        else:
            summary = _interaction_summary(facts, event)
        entry = TimelineEntry(
            kind=TimelineKind.INTERACTION,
            id=event.originator_id,
            title=self._interaction_title(event),
            summary=summary,
            status=str(event.status),
            channel=event.channel if previous is None else previous.channel,
            occurred_at=event.timestamp if previous is None else previous.occurred_at,
            updated_at=event.timestamp,
        )
        self._put(event, event.customer_id, entry, facts)

    @staticmethod
    def _interaction_title(event: InteractionEvent) -> str:
        label = f"{event.channel} ({event.direction})".replace("_", " ")
        return f"{label}: {event.contact_reason}" if event.contact_reason else label

    def _case(self, item: _Item | None, event: CaseEvent) -> None:
        if isinstance(event, CaseOpened):
            entry = TimelineEntry(
                kind=TimelineKind.CASE,
                id=event.originator_id,
                # The subject is personal: the bus carries it blank.
                title=event.subject.strip() or f"{event.priority} priority case",
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
            summary=_survey_summary(event),
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
                summary=_feedback_summary(event),
                status="captured" if event.originator_version == 1 else "classified",
                channel=event.channel,
                occurred_at=event.timestamp,
                updated_at=event.timestamp,
            )
        else:
            entry = msgspec.structs.replace(
                item.entry,
                title=title,
                summary=_feedback_summary(event),
                status="classified",
                updated_at=event.timestamp,
            )
        self._put(event, event.customer_id, entry)

    def _put(
        self,
        event: DomainEvent,
        customer_id: UUID | None,
        entry: TimelineEntry,
        facts: InteractionFacts | None = None,
    ) -> None:
        """Stores the item's entry under its customer (moving it when the customer changed)."""
        item_id = event.originator_id
        previous = self._items.get(item_id)
        if previous is not None and previous.customer_id != customer_id:
            self._forget(previous.customer_id, item_id)
        self._items[item_id] = _Item(
            customer_id=customer_id,
            version=event.originator_version,
            entry=entry,
            facts=InteractionFacts() if facts is None else facts,
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
