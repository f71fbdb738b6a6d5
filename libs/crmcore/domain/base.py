"""Building blocks of every aggregate: immutable msgspec state and msgspec events.

Aggregates are frozen `msgspec.Struct` values. A command is a method that checks the rules
against the current state and returns the new events (raising a `DomainError` and returning
nothing when a rule is broken). Each event knows how it changes the state (`mutate`), which is
the protocol the eventsourcing library uses to rebuild an aggregate from stored events.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Generic, TypeVar
from uuid import UUID

import msgspec


class DomainEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A fact that happened to one aggregate, at one version, at one time.

    `originator_id` is annotated as a concrete `UUID` so that typed decoding gives back a UUID.
    `actor` says who caused it (the audit trail): `token:<name>` of the authenticated caller,
    `system:<name>` for a service's own background work, "" when nobody was identified
    (in-process library use without `acting_as`, a service running without authentication,
    events stored before actors were recorded). The application stamps it when storing.
    """

    originator_id: UUID
    originator_version: int
    timestamp: datetime
    actor: str = ""

    #: The bounded context: `customer`, `interaction`, `routing`, `voc`… (each context's base
    #: event sets it); first part of the bus subject and CloudEvents type after `crm.`.
    context: ClassVar[str] = ""

    def mutate(self, state: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not define mutate()")

    @classmethod
    def event_name(cls) -> str:
        """`CustomerRegistered` in context `customer` → `registered`; `ContactPointAdded` →
        `contact_point_added`. Names the event on the bus and in CloudEvents `type`."""
        words = _snake_case(cls.__name__)
        prefix = cls.context + "_"
        return words[len(prefix) :] if words.startswith(prefix) else words

    def bus_subject(self) -> str:
        """NATS subject: `crm.<context>.<event>`; VOC events override it (by category, kind)."""
        return f"crm.{self.context}.{self.event_name()}"

    def bus_attributes(self) -> dict[str, str]:
        """CloudEvents extension attributes subscribers filter on (`customerid`, VOC category…).

        Names are lower-case letters and digits only, as CloudEvents requires."""
        return {}


def _snake_case(name: str) -> str:
    return "".join(
        ("_" + ch.lower()) if ch.isupper() and index else ch.lower()
        for index, ch in enumerate(name)
    )


class Aggregate(msgspec.Struct, frozen=True, kw_only=True):
    """State of one aggregate after its events: identity, version and audit times."""

    id: UUID
    version: int
    created_on: datetime
    modified_on: datetime


TAggregate = TypeVar("TAggregate", bound=Aggregate)


class Event(DomainEvent, Generic[TAggregate], frozen=True, kw_only=True):
    """An event of an aggregate of type `TAggregate` that already exists."""

    def mutate(self, state: TAggregate | None) -> TAggregate:
        if state is None:
            raise ValueError(f"{type(self).__name__} cannot start an aggregate")
        return self.apply(state)

    def apply(self, state: TAggregate) -> TAggregate:
        """Returns the state after this event (subclasses override)."""
        return msgspec.structs.replace(
            state, version=self.originator_version, modified_on=self.timestamp
        )


def advance(state: TAggregate, event: DomainEvent, **changes: Any) -> TAggregate:
    """The state after `event`, with the given fields changed and version and time moved on."""
    return msgspec.structs.replace(
        state, version=event.originator_version, modified_on=event.timestamp, **changes
    )
