"""The CloudEvents 1.0 envelope of every event on the bus (ARCHITECTURE.md, "Events on the bus").

JSON structured mode as the CloudEvents NATS binding defines it: the whole event is the message
body and the `Content-Type` header is `application/cloudevents+json`. Attributes:

- `id`: `<application>:<notification id>`, unique per stored event and the same each time the
  relay republishes it (it is also the `Nats-Msg-Id` JetStream de-duplicates on);
- `source`: `/crm/<application>`; `type`: `crm.<context>.<event>.v1`; `subject`: the aggregate
  id; `time`: when the event happened (RFC 3339); `datacontenttype`: `application/json`;
- `data`: the event struct as JSON (its JSON Schema is in the repository's `schemas/` folder);
- extension attributes: the event's `bus_attributes()` (customer id, VOC category, sentiment…),
  `crmversion`, the aggregate version the event produced, and `actor`, who caused the event
  (`token:<name>`, `system:<name>`; left out when nobody was identified).

Encoding and decoding use msgspec; `EventRegistry` maps a `type` back to the event class.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

import msgspec

from crmcore.domain.base import DomainEvent

SPECVERSION = "1.0"
#: Content type of a structured-mode CloudEvent (the NATS binding's `Content-Type` header).
CONTENT_TYPE = "application/cloudevents+json"
DATA_CONTENT_TYPE = "application/json"
#: Extension attribute carrying the aggregate version of the event.
VERSION_ATTRIBUTE = "crmversion"
#: Extension attribute naming who caused the event (the stored event's `actor`).
ACTOR_ATTRIBUTE = "actor"
#: JetStream's de-duplication header.
MSG_ID_HEADER = "Nats-Msg-Id"

_CORE_ATTRIBUTES = frozenset(
    {
        "specversion",
        "id",
        "source",
        "type",
        "subject",
        "time",
        "datacontenttype",
        "dataschema",
        "data",
        "data_base64",
    }
)
_EXTENSION_NAME = re.compile(r"[a-z0-9]{1,20}")

TEvent = TypeVar("TEvent", bound=DomainEvent)
ExtensionValue = str | int | bool

_encoder = msgspec.json.Encoder()
_wire_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])


#: What decoding a message can raise: msgspec's errors, and RecursionError for JSON nested
#: deeper than the decoder's stack (anyone on the bus can publish `[[[[…]]]]`).
UNREADABLE: tuple[type[Exception], ...] = (msgspec.DecodeError, RecursionError)


class EnvelopeError(ValueError):
    """A message is not a CloudEvent this project can read, or an event cannot be wrapped."""


def event_type(cls: type[DomainEvent]) -> str:
    """The CloudEvents `type` of an event class: `crm.<context>.<event>.v1`."""
    name = _types.get(cls)
    if name is None:
        if not cls.context:
            raise EnvelopeError(f"{cls.__name__} has no context, so it has no bus type")
        name = _types[cls] = f"crm.{cls.context}.{cls.event_name()}.v1"
    return name


def bus_subject(event: DomainEvent) -> str:
    """`event.bus_subject()`, computed once per class when the class does not override it."""
    cls = type(event)
    subject = _fixed_subjects.get(cls)
    if subject is None:
        if type(event).bus_subject is not DomainEvent.bus_subject:
            return event.bus_subject()
        subject = _fixed_subjects[cls] = event.bus_subject()
    return subject


# Per-class caches: the relay wraps tens of thousands of events per second.
_types: dict[type[DomainEvent], str] = {}
_fixed_subjects: dict[type[DomainEvent], str] = {}
_valid_extension_names: set[str] = set()


def source_of(application: str) -> str:
    """The CloudEvents `source` of everything an application publishes."""
    return f"/crm/{application}"


def event_id(application: str, notification_id: int) -> str:
    """The id of a stored event on the bus (CloudEvents `id` and `Nats-Msg-Id`)."""
    return f"{application}:{notification_id}"


class BusMessage(msgspec.Struct, frozen=True, kw_only=True):
    """What goes on the wire for one event: NATS subject, headers and body."""

    subject: str
    payload: bytes
    headers: dict[str, str]

    @property
    def msg_id(self) -> str:
        return self.headers[MSG_ID_HEADER]


def extension_attributes(event: DomainEvent) -> dict[str, ExtensionValue]:
    """The extension attributes of an event, checked against the CloudEvents naming rules."""
    attributes: dict[str, ExtensionValue] = {}
    for name, value in event.bus_attributes().items():
        if name not in _valid_extension_names:
            if not _EXTENSION_NAME.fullmatch(name) or name in _CORE_ATTRIBUTES:
                raise EnvelopeError(
                    f"{type(event).__name__}.bus_attributes(): {name!r} is not a valid "
                    "CloudEvents extension name (lower-case letters and digits, not a core "
                    "attribute)"
                )
            _valid_extension_names.add(name)
        attributes[name] = value
    attributes[VERSION_ATTRIBUTE] = event.originator_version
    if event.actor:
        attributes[ACTOR_ATTRIBUTE] = event.actor
    return attributes


class _Head(msgspec.Struct, frozen=True):
    """The fixed attributes, encoded in this order (extensions and data are appended)."""

    specversion: str
    id: str
    source: str
    type: str
    subject: UUID
    time: datetime
    datacontenttype: str


def encode(event: DomainEvent, *, id: str, source: str) -> bytes:
    """The event as a CloudEvents JSON document (structured mode)."""
    timestamp = event.timestamp
    if timestamp.tzinfo is None:
        # CloudEvents requires an offset; the domain only makes aware times, so this is a guard.
        timestamp = timestamp.replace(tzinfo=UTC)
    head = _encoder.encode(
        _Head(
            SPECVERSION,
            id,
            source,
            event_type(type(event)),
            event.originator_id,
            timestamp,
            DATA_CONTENT_TYPE,
        )
    )
    # Splice `{head…, extensions…, "data": event}` without building an intermediate dict.
    # (extension_attributes always holds crmversion, so the spliced object is never empty)
    extensions = _encoder.encode(extension_attributes(event))
    return b"".join((head[:-1], b",", extensions[1:-1], b',"data":', _encoder.encode(event), b"}"))


def to_message(event: DomainEvent, *, id: str, source: str) -> BusMessage:
    """The NATS message publishing `event`: subject from `bus_subject()`, de-dup id header."""
    return BusMessage(
        subject=bus_subject(event),
        payload=encode(event, id=id, source=source),
        headers={MSG_ID_HEADER: id, "Content-Type": CONTENT_TYPE},
    )


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """A CloudEvent read from the bus; `data` stays raw JSON until decoded into a class."""

    id: str
    source: str
    type: str
    subject: str
    time: datetime
    data: msgspec.Raw
    datacontenttype: str = DATA_CONTENT_TYPE
    extensions: dict[str, ExtensionValue] = msgspec.field(default_factory=dict)

    @property
    def version(self) -> int | None:
        """The aggregate version the event produced (`crmversion`), when present."""
        value = self.extensions.get(VERSION_ATTRIBUTE)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def actor(self) -> str:
        """Who caused the event (`actor`): `token:<name>`, `system:<name>`, "" when unknown."""
        value = self.extensions.get(ACTOR_ATTRIBUTE)
        return value if isinstance(value, str) else ""

    def data_as(self, cls: builtins.type[TEvent]) -> TEvent:
        """The payload decoded (and type-checked) into the event class `cls`."""
        try:
            return msgspec.json.decode(self.data, type=cls)
        except UNREADABLE as error:
            raise EnvelopeError(
                f"{self.type} {self.id}: data is not a {cls.__name__}: {error}"
            ) from None

    def data_json(self) -> Any:
        """The payload as plain JSON values (for display)."""
        return msgspec.json.decode(self.data)


def _field(wire: Mapping[str, msgspec.Raw], name: str, kind: type[Any]) -> Any:
    raw = wire.get(name)
    if raw is None:
        raise EnvelopeError(f"CloudEvent without {name!r}")
    try:
        return msgspec.json.decode(raw, type=kind)
    except UNREADABLE as error:
        raise EnvelopeError(f"CloudEvent attribute {name!r}: {error}") from None


def decode(payload: bytes) -> Envelope:
    """Reads a structured-mode CloudEvent published by this project (or anyone following it)."""
    try:
        wire = _wire_decoder.decode(payload)
    except UNREADABLE as error:
        raise EnvelopeError(f"not a JSON CloudEvent: {error}") from None
    specversion = _field(wire, "specversion", str)
    if specversion != SPECVERSION:
        raise EnvelopeError(f"CloudEvents specversion {specversion!r}, expected {SPECVERSION}")
    if "data" not in wire:
        raise EnvelopeError("CloudEvent without JSON 'data'")
    extensions = {
        name: _field(wire, name, ExtensionValue)  # type: ignore[arg-type]
        for name in wire
        if name not in _CORE_ATTRIBUTES
    }
    return Envelope(
        id=_field(wire, "id", str),
        source=_field(wire, "source", str),
        type=_field(wire, "type", str),
        subject=_field(wire, "subject", str),
        time=_field(wire, "time", datetime),
        datacontenttype=(
            _field(wire, "datacontenttype", str) if "datacontenttype" in wire else DATA_CONTENT_TYPE
        ),
        data=wire["data"],
        extensions=extensions,
    )


class EventRegistry:
    """Maps CloudEvents `type`s to event classes, so consumers get typed events back.

    Only the listed classes can be decoded: a message never makes us import anything.
    """

    def __init__(self, classes: Iterable[type[DomainEvent]] = ()) -> None:
        self._classes: dict[str, type[DomainEvent]] = {}
        for cls in classes:
            self.add(cls)

    def add(self, cls: type[DomainEvent]) -> None:
        name = event_type(cls)
        existing = self._classes.get(name)
        if existing is not None and existing is not cls:
            raise EnvelopeError(
                f"{cls.__qualname__} and {existing.__qualname__} both have type {name}"
            )
        self._classes[name] = cls

    def __contains__(self, type_name: object) -> bool:
        return type_name in self._classes

    def __len__(self) -> int:
        return len(self._classes)

    def types(self) -> list[str]:
        return sorted(self._classes)

    def class_for(self, type_name: str) -> type[DomainEvent] | None:
        return self._classes.get(type_name)

    def event_of(self, envelope: Envelope) -> DomainEvent:
        """The typed event inside `envelope` (EnvelopeError for a type not registered)."""
        cls = self._classes.get(envelope.type)
        if cls is None:
            raise EnvelopeError(f"no event class registered for type {envelope.type!r}")
        return envelope.data_as(cls)
