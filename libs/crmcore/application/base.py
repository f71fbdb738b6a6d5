"""Base of every crmcore application: explicit name, msgspec mapper, settings-driven storage."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar, TypeVar
from uuid import UUID

import msgspec
from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.persistence import IntegrityError, Mapper, Recording
from eventsourcing.utils import Environment

from crmcore.adapters.mapper import MsgspecMapper
from crmcore.application.group_commit import GroupCommitWriter
from crmcore.application.principal import current_principal
from crmcore.config import PersistenceSettings
from crmcore.domain.base import Aggregate, DomainEvent
from crmcore.domain.errors import ConcurrencyConflict, NotFound

TState = TypeVar("TState", bound=Aggregate)


def project(state: Any, events: Iterable[Any]) -> Any:
    """Folds events into an immutable aggregate state (the library's projector protocol)."""
    for event in events:
        state = event.mutate(state)
    return state


def with_actor(events: tuple[DomainEvent, ...]) -> tuple[DomainEvent, ...]:
    """The events, those without an actor naming the current principal (`actor` of
    `crmcore.application.principal.current_principal`) — read in the calling thread, before
    a group-commit writer thread stores them. Without a principal they stay as they are:
    their actor stays "" (nobody identified)."""
    principal = current_principal.get()
    if principal is None:
        return events
    actor = principal.actor
    return tuple(
        event if event.actor else msgspec.structs.replace(event, actor=actor) for event in events
    )


class CRMApplication(Application[UUID]):
    """An eventsourcing application configured from `PersistenceSettings`, never from os.environ.

    Subclasses set `name` (it names the SQLite file and the PostgreSQL tables) and
    `aggregate_kind` (used in NotFound errors).
    """

    name = "crm"
    aggregate_kind: ClassVar[str] = "aggregate"

    def __init__(
        self, persistence: PersistenceSettings | None = None, *, group_commit: bool = False
    ) -> None:
        """`group_commit=True` coalesces concurrent `record()` calls from many threads into one
        transaction (services under load); the library default stores each call on its own."""
        self.persistence = persistence or PersistenceSettings.in_memory()
        super().__init__(env=self.persistence.application_env(self.name))
        self._writer = GroupCommitWriter(self.save, name=self.name) if group_commit else None
        self._record_listeners: list[Callable[[], None]] = []

    def add_record_listener(self, listener: Callable[[], None]) -> None:
        """Calls `listener` (from the recording thread) after every successful `record()`:
        e.g. the outbox relay's `nudge`, so stored events are published without waiting for
        the next poll."""
        self._record_listeners.append(listener)

    def stop_writer(self) -> None:
        """Stores what is waiting and stops the group-commit writer (if any)."""
        if self._writer is not None:
            self._writer.stop()

    def save(self, *objs: Any, **kwargs: Any) -> list[Recording[UUID]]:
        """The library's `save`, without its per-object `isinstance` check against a runtime
        Protocol when every object is one of our events: on Python 3.11 that check walks the
        protocol's attributes each time, which cost more than mapping the event (a group-commit
        batch saves thousands). Anything else goes through the library unchanged."""
        if not all(isinstance(obj, DomainEvent) for obj in objs):
            return super().save(*objs, **kwargs)
        processing_event: ProcessingEvent[UUID] = ProcessingEvent()
        processing_event.events.extend(objs)
        processing_event.saved_kwargs.update(kwargs)
        recordings = self._record(processing_event)
        self._take_snapshots(processing_event)
        self._notify(recordings)
        self.notify(processing_event.events)  # the library's deprecated hook, kept as it does
        return recordings

    def construct_env(self, name: str, env: Any = None) -> Environment:
        # Deliberately does not merge os.environ: crmcore.config is the one place reading it.
        return Environment(name, dict(env or {}))

    def construct_mapper(self) -> Mapper[UUID]:
        return MsgspecMapper(compressor=self.factory.compressor(), cipher=self.factory.cipher())

    def load(self, aggregate_id: UUID, kind: type[TState]) -> TState:
        """The current state of an aggregate, or NotFound."""
        try:
            state = self.repository.get(aggregate_id, projector_func=project)
        except AggregateNotFoundError:
            raise NotFound(self.aggregate_kind, aggregate_id) from None
        if not isinstance(state, kind):
            raise NotFound(self.aggregate_kind, aggregate_id)
        return state

    def record(self, *events: DomainEvent) -> None:
        """Stores events atomically; a version clash becomes ConcurrencyConflict.

        Each event without an actor is stored with the current principal's (`with_actor`)."""
        events = with_actor(events)
        try:
            if self._writer is None:
                self.save(*events)
            else:
                self._writer.record(events)
        except IntegrityError as error:
            raise ConcurrencyConflict(
                f"{self.aggregate_kind} was changed concurrently; retry with fresh state"
            ) from error
        for listener in self._record_listeners:
            listener()

    def execute(
        self,
        aggregate_id: UUID,
        kind: type[TState],
        command: Callable[[TState], Iterable[DomainEvent] | DomainEvent],
    ) -> TState:
        """Loads an aggregate, runs a command on it, stores its events, returns the new state."""
        state = self.load(aggregate_id, kind)
        produced = command(state)
        events = (produced,) if isinstance(produced, DomainEvent) else tuple(produced)
        self.record(*events)
        return project(state, events)  # type: ignore[no-any-return]
