"""The routing application: the engine kept in step with the event store, usable in-process.

`RoutingApplication` is the workforce application (agents, queues; same store, name
"routing") with the routing engine in memory beside it. Every change runs the same way, under
one lock:

1. a command (an agent's presence, a queue's settings, accepting an offer, an interaction
   event from the bus, the clock ticking) produces events — or refuses, changing nothing;
2. the engine folds them in and decides what follows at that moment (offers, time-outs…);
3. both are stored in ONE transaction, then listeners (offer streams, the clock loop) hear
   of them. If storing fails, the engine is rebuilt from the store before the next command,
   so memory never holds what the store does not.

Nothing reads the wall clock except `clock` (given to the constructor; the service passes
`datetime.now(UTC)`, tests a fake). `tick()` lets time act: offer time-outs, cooldowns ending,
routing steps widening; the service's clock loop calls it at `next_deadline()`.

On start the engine is rebuilt from the latest snapshot plus the events stored after it (or
from all events), then settled. Snapshots are written every `snapshot_every` events and by
`shutdown()`, into a table beside the events (`routing_snapshots`); one that cannot be read
(e.g. written by another version) is ignored and the events are replayed from the start.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TypeVar
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

import msgspec

from crmcore.adapters.readmodels import ReadModelStore, open_read_model_store
from crmcore.application.base import CRMApplication, project
from crmcore.application.workforce import WorkforceApplication
from crmcore.config import PersistenceSettings
from crmcore.domain import values
from crmcore.domain.agent import Agent, Capacity, OfferMissReason, Presence, Skill
from crmcore.domain.base import Aggregate, DomainEvent
from crmcore.domain.errors import NotFound
from crmcore.domain.interaction import InteractionEvent
from crmcore.domain.queue import Queue, Requirements, RoutingStep, ServiceLevelTarget
from crmcore.domain.routing import (
    QueueStatus,
    RoutingEngine,
    RoutingPolicy,
    RoutingSnapshot,
    TaskExplanation,
    needs_stored_task,
    routing_events_for,
)
from crmcore.domain.task import Attribute, ReleaseReason, Task, request_task_id
from crmcore.domain.values import Channel

logger = logging.getLogger(__name__)

TState = TypeVar("TState", bound=Aggregate)
Listener = Callable[[Sequence[DomainEvent]], None]
Clock = Callable[[], datetime]

SNAPSHOT_FORMAT = 1
_REPLAY_PAGE = 1_000
QUEUE_REQUEST_NAMESPACE = uuid5(NAMESPACE_URL, "urn:crm:routing:queue-request-id")


def request_queue_id(request_id: str) -> UUID:
    """The id of the queue a CreateQueue with `request_id` creates."""
    checked = values.required_text(request_id, "request_id", max_length=128)
    return uuid5(QUEUE_REQUEST_NAMESPACE, checked)


def system_clock() -> datetime:
    return datetime.now(UTC)


class RoutingApplication(WorkforceApplication):
    """Agents, queues and the routing of work to them (module docstring)."""

    name = "routing"
    aggregate_kind = "agent, queue or task"

    def __init__(
        self,
        persistence: PersistenceSettings | None = None,
        *,
        clock: Clock = system_clock,
        policy: RoutingPolicy | None = None,
        snapshot_every: int = 10_000,
    ) -> None:
        super().__init__(persistence)
        self.clock = clock
        self.policy = policy or RoutingPolicy()
        self.snapshot_every = snapshot_every
        self._lock = threading.RLock()
        self._snapshot_lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._since_snapshot = 0
        self._snapshot_thread: threading.Thread | None = None
        self._stale = False
        self._snapshots = (
            None if self.persistence.kind == "memory" else _SnapshotStore(self.persistence)
        )
        self.engine = self._rebuild()

    # --- agents and queues: the workforce commands, through the engine ---------------------

    def register_agent(
        self,
        *,
        display_name: str,
        teams: Sequence[str] = (),
        skills: Sequence[Skill] = (),
        languages: Sequence[str] = (),
        capacity: Capacity | Mapping[str, int] | None = None,
        agent_id: UUID | None = None,
        request_id: str | None = None,
        at: datetime | None = None,
    ) -> Agent:
        with self._lock:
            return super().register_agent(
                display_name=display_name,
                teams=teams,
                skills=skills,
                languages=languages,
                capacity=capacity,
                agent_id=agent_id,
                request_id=request_id,
                at=at or self.clock(),
            )

    def update_agent_profile(
        self,
        agent_id: UUID,
        *,
        display_name: str | None = None,
        teams: Sequence[str] | None = None,
        languages: Sequence[str] | None = None,
        expected_version: int | None = None,
        at: datetime | None = None,
    ) -> Agent:
        with self._lock:
            return super().update_agent_profile(
                agent_id,
                display_name=display_name,
                teams=teams,
                languages=languages,
                expected_version=expected_version,
                at=at or self.clock(),
            )

    def change_agent_skills(
        self,
        agent_id: UUID,
        skills: Sequence[Skill],
        *,
        expected_version: int | None = None,
        at: datetime | None = None,
    ) -> Agent:
        with self._lock:
            return super().change_agent_skills(
                agent_id, skills, expected_version=expected_version, at=at or self.clock()
            )

    def change_agent_capacity(
        self,
        agent_id: UUID,
        capacity: Capacity | Mapping[str, int],
        *,
        expected_version: int | None = None,
        at: datetime | None = None,
    ) -> Agent:
        with self._lock:
            return super().change_agent_capacity(
                agent_id, capacity, expected_version=expected_version, at=at or self.clock()
            )

    def set_presence(
        self, agent_id: UUID, presence: Presence | str, *, at: datetime | None = None
    ) -> Agent:
        with self._lock:
            return super().set_presence(agent_id, presence, at=at or self.clock())

    def assign_work(
        self,
        agent_id: UUID,
        work_id: UUID,
        channel: Channel | str,
        *,
        at: datetime | None = None,
    ) -> Agent:
        """Gives an agent work routing did not offer (its room counts for routing all the
        same); routed work is taken with `accept_offer`."""
        with self._lock:
            return super().assign_work(agent_id, work_id, channel, at=at or self.clock())

    def release_work(self, agent_id: UUID, work_id: UUID, *, at: datetime | None = None) -> Agent:
        with self._lock:
            return super().release_work(agent_id, work_id, at=at or self.clock())

    def record_missed_offer(
        self,
        agent_id: UUID,
        work_id: UUID,
        *,
        reason: OfferMissReason | str,
        cooldown: timedelta,
        max_misses: int | None = None,
        at: datetime | None = None,
    ) -> Agent:
        with self._lock:
            return super().record_missed_offer(
                agent_id,
                work_id,
                reason=reason,
                cooldown=cooldown,
                max_misses=max_misses,
                at=at or self.clock(),
            )

    def clear_agent_cooldown(self, agent_id: UUID, *, at: datetime | None = None) -> Agent:
        with self._lock:
            return super().clear_agent_cooldown(agent_id, at=at or self.clock())

    def create_queue(
        self,
        *,
        name: str,
        channels: Sequence[Channel | str],
        requirements: Requirements | None = None,
        priority: int = 0,
        service_level: ServiceLevelTarget | None = None,
        offer_timeout_seconds: int = 30,
        max_misses: int = 3,
        overflow_queues: Sequence[str] = (),
        routing_steps: Sequence[RoutingStep] = (),
        queue_id: UUID | None = None,
        at: datetime | None = None,
    ) -> Queue:
        with self._lock:
            return super().create_queue(
                name=name,
                channels=channels,
                requirements=requirements,
                priority=priority,
                service_level=service_level,
                offer_timeout_seconds=offer_timeout_seconds,
                max_misses=max_misses,
                overflow_queues=overflow_queues,
                routing_steps=routing_steps,
                queue_id=queue_id,
                at=at or self.clock(),
            )

    def create_queue_once(
        self,
        *,
        request_id: str | None,
        name: str,
        channels: Sequence[Channel | str],
        requirements: Requirements | None = None,
        priority: int = 0,
        service_level: ServiceLevelTarget | None = None,
        offer_timeout_seconds: int = 30,
        max_misses: int = 3,
        overflow_queues: Sequence[str] = (),
        routing_steps: Sequence[RoutingStep] = (),
        queue_id: UUID | None = None,
        at: datetime | None = None,
    ) -> Queue:
        """`create_queue`, idempotent by `request_id`: the request names the queue's id, so a
        retry finds the queue the first call created (AlreadyExists if it has another name)."""
        with self._lock:
            self._ensure_fresh()
            if request_id is not None:
                queue_id = request_queue_id(request_id)
                earlier = self.engine.queue(queue_id)
                if earlier is not None and earlier.name.lower() == " ".join(name.split()).lower():
                    return earlier
            return self.create_queue(
                name=name,
                channels=channels,
                requirements=requirements,
                priority=priority,
                service_level=service_level,
                offer_timeout_seconds=offer_timeout_seconds,
                max_misses=max_misses,
                overflow_queues=overflow_queues,
                routing_steps=routing_steps,
                queue_id=queue_id,
                at=at,
            )

    def update_queue(
        self,
        queue_id: UUID,
        *,
        expected_version: int | None = None,
        channels: Sequence[Channel | str] | None = None,
        requirements: Requirements | None = None,
        priority: int | None = None,
        service_level: ServiceLevelTarget | None = None,
        offer_timeout_seconds: int | None = None,
        max_misses: int | None = None,
        overflow_queues: Sequence[str] | None = None,
        at: datetime | None = None,
    ) -> Queue:
        with self._lock:
            return super().update_queue(
                queue_id,
                expected_version=expected_version,
                channels=channels,
                requirements=requirements,
                priority=priority,
                service_level=service_level,
                offer_timeout_seconds=offer_timeout_seconds,
                max_misses=max_misses,
                overflow_queues=overflow_queues,
                at=at or self.clock(),
            )

    def change_routing_steps(
        self,
        queue_id: UUID,
        routing_steps: Sequence[RoutingStep],
        *,
        expected_version: int | None = None,
        at: datetime | None = None,
    ) -> Queue:
        with self._lock:
            return super().change_routing_steps(
                queue_id, routing_steps, expected_version=expected_version, at=at or self.clock()
            )

    def archive_queue(
        self,
        queue_id: UUID,
        *,
        expected_version: int | None = None,
        at: datetime | None = None,
    ) -> Queue:
        with self._lock:
            return super().archive_queue(
                queue_id, expected_version=expected_version, at=at or self.clock()
            )

    def update_agent(
        self,
        agent_id: UUID,
        *,
        display_name: str | None = None,
        teams: Sequence[str] | None = None,
        languages: Sequence[str] | None = None,
        skills: Sequence[Skill] | None = None,
        capacity: Capacity | Mapping[str, int] | None = None,
        expected_version: int | None = None,
        at: datetime | None = None,
    ) -> Agent:
        """Changes any of the agent's profile, skills and capacity (None: unchanged) in one
        transaction; a stale `expected_version` is refused (ConcurrencyConflict)."""
        with self._lock:
            when = at or self.clock()

            def changes(agent: Agent) -> list[DomainEvent]:
                produced: list[DomainEvent] = []
                state = agent
                steps: list[Callable[[Agent], Sequence[DomainEvent]]] = [
                    lambda a: a.update_profile(
                        display_name=display_name, teams=teams, languages=languages, at=when
                    )
                ]
                if skills is not None:
                    steps.append(lambda a: a.change_skills(skills, at=when))
                if capacity is not None:
                    steps.append(lambda a: a.change_capacity(capacity, at=when))
                for step in steps:
                    made = step(state)
                    produced.extend(made)
                    state = project(state, made)
                return produced

            return self._execute("agent", agent_id, Agent, changes, expected_version)

    def update_queue_settings(
        self,
        queue_id: UUID,
        *,
        expected_version: int | None = None,
        channels: Sequence[Channel | str] | None = None,
        requirements: Requirements | None = None,
        priority: int | None = None,
        service_level: ServiceLevelTarget | None = None,
        offer_timeout_seconds: int | None = None,
        max_misses: int | None = None,
        overflow_queues: Sequence[str] | None = None,
        routing_steps: Sequence[RoutingStep] | None = None,
        archive: bool = False,
        at: datetime | None = None,
    ) -> Queue:
        """`update_queue`, `change_routing_steps` and `archive_queue` in one transaction (None:
        unchanged). New requirements are checked against the new routing steps."""
        with self._lock:
            when = at or self.clock()

            def changes(queue: Queue) -> list[DomainEvent]:
                produced: list[DomainEvent] = []
                state = queue
                if routing_steps is not None and requirements is not None:
                    # Check the pair as it will stand, whatever order they are applied in.
                    Queue.create(
                        queue.id,
                        name=queue.name,
                        channels=queue.channels,
                        requirements=requirements,
                        routing_steps=routing_steps,
                        at=when,
                    )
                    made: Sequence[DomainEvent] = state.change_routing_steps((), at=when)
                    produced.extend(made)
                    state = project(state, made)
                made = state.update(
                    channels=channels,
                    requirements=requirements,
                    priority=priority,
                    service_level=service_level,
                    offer_timeout_seconds=offer_timeout_seconds,
                    max_misses=max_misses,
                    overflow_queues=overflow_queues,
                    at=when,
                )
                produced.extend(made)
                state = project(state, made)
                if routing_steps is not None:
                    made = state.change_routing_steps(routing_steps, at=when)
                    produced.extend(made)
                    state = project(state, made)
                if archive:
                    produced.extend(state.archive(at=when))
                return produced

            return self._execute("queue", queue_id, Queue, changes, expected_version)

    def find_queue(self, name: str) -> Queue | None:
        with self._lock:
            self._ensure_fresh()
            return self.engine.queue_named(name)

    def list_agents(self) -> list[Agent]:
        """Every agent, in order of id."""
        with self._lock:
            self._ensure_fresh()
            return sorted(self.engine.agents(), key=lambda agent: agent.id.int)

    def list_queues(self) -> list[Queue]:
        """Every queue (archived ones too), in order of id."""
        with self._lock:
            self._ensure_fresh()
            return sorted(self.engine.queues(), key=lambda queue: queue.id.int)

    # --- work -----------------------------------------------------------------------------

    def submit_task(
        self,
        *,
        queue: str,
        channel: Channel | str,
        requirements: Requirements | None = None,
        priority: int = 0,
        preferred_agent_id: UUID | None = None,
        last_agent_id: UUID | None = None,
        attributes: Sequence[Attribute] = (),
        waiting_since: datetime | None = None,
        request_id: str | None = None,
        at: datetime | None = None,
    ) -> Task:
        """Routes work of a system that routes its own (not an interaction): it waits in
        `queue` (by name) and is offered like any other. A retry with the same `request_id`
        returns the task the first call created."""
        with self._lock:
            self._ensure_fresh()
            when = at or self.clock()
            task_id = request_task_id(request_id) if request_id is not None else uuid4()
            if request_id is not None:
                earlier = self.engine.task(task_id) or self._stored_task(task_id)
                if earlier is not None:
                    return earlier
            queued = self.engine.submit(
                task_id,
                queue=queue,
                channel=channel,
                requirements=requirements,
                priority=priority,
                preferred_agent_id=preferred_agent_id,
                last_agent_id=last_agent_id,
                attributes=attributes,
                waiting_since=waiting_since,
                at=when,
            )
            stored = self._commit((queued,), when)
            return self._task_after(task_id, stored)

    def accept_offer(self, task_id: UUID, agent_id: UUID, *, at: datetime | None = None) -> Task:
        """The agent takes the work offered to it."""
        with self._lock:
            self._ensure_fresh()
            when = at or self.clock()
            stored = self._commit(self.engine.accept(task_id, agent_id, at=when), when)
            return self._task_after(task_id, stored)

    def reject_offer(self, task_id: UUID, agent_id: UUID, *, at: datetime | None = None) -> Task:
        """The agent declines: the work goes back in its place, the agent cools down."""
        with self._lock:
            self._ensure_fresh()
            when = at or self.clock()
            stored = self._commit(self.engine.reject(task_id, agent_id, at=when), when)
            return self._task_after(task_id, stored)

    def complete_task(
        self,
        task_id: UUID,
        reason: ReleaseReason | str = ReleaseReason.COMPLETED,
        *,
        at: datetime | None = None,
    ) -> Task:
        """Takes work out of routing (done, or cancelled); its agent has room again."""
        with self._lock:
            self._ensure_fresh()
            when = at or self.clock()
            stored = self._commit(self.engine.release(task_id, reason, at=when), when)
            return self._task_after(task_id, stored)

    def handle_interaction_event(self, event: InteractionEvent) -> list[DomainEvent]:
        """Applies an interaction event from the bus (idempotent: a redelivery changes
        nothing); returns the routing events it caused, decisions included."""
        with self._lock:
            self._ensure_fresh()
            when = self.clock()
            stored_task = None
            if needs_stored_task(event) and self.engine.task(event.originator_id) is None:
                stored_task = self._stored_task(event.originator_id)
            produced = routing_events_for(self.engine, event, stored_task, at=when)
            return self._commit(produced, when) if produced else []

    def tick(self, now: datetime | None = None) -> list[DomainEvent]:
        """Lets time act (offer time-outs, cooldowns ending, steps widening, fallbacks)."""
        with self._lock:
            self._ensure_fresh()
            return self._commit((), now or self.clock())

    def next_deadline(self) -> datetime | None:
        """When `tick` next has something to do (None: nothing is scheduled)."""
        with self._lock:
            self._ensure_fresh()
            return self.engine.next_deadline()

    # --- queries --------------------------------------------------------------------------

    def get_task(self, task_id: UUID) -> Task:
        """An open task from memory, or a finished one from the store."""
        with self._lock:
            self._ensure_fresh()
            task = self.engine.task(task_id) or self._stored_task(task_id)
        if task is None:
            raise NotFound("task", task_id)
        return task

    def offers_for(self, agent_id: UUID) -> list[Task]:
        """The work offered to the agent now (NotFound for an unknown agent)."""
        with self._lock:
            self._ensure_fresh()
            if self.engine.agent(agent_id) is None:
                raise NotFound("agent", agent_id)
            return self.engine.offers_for(agent_id)

    def queue_status(self, queue_id: UUID, *, at: datetime | None = None) -> QueueStatus:
        with self._lock:
            self._ensure_fresh()
            return self.engine.queue_status(queue_id, at or self.clock())

    def explain(self, task_id: UUID, *, at: datetime | None = None) -> TaskExplanation:
        """Why the work is where it is: what it asks, who could take it, why its last offer
        went to that agent."""
        task = self.get_task(task_id)
        with self._lock:
            return self.engine.explain(task, at or self.clock())

    # --- listeners and snapshots ----------------------------------------------------------

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Calls `listener` with every batch of stored events (in order, in the thread that
        stored them); returns a function that removes it."""
        with self._lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return remove

    def save_snapshot(self) -> int | None:
        """Writes a snapshot of the engine now; returns the position it covers (None without
        a snapshot store, i.e. in memory)."""
        if self._snapshots is None:
            return None
        with self._lock:
            self._ensure_fresh()
            snapshot = self.engine.snapshot()
            position = self.recorder.max_notification_id() or 0
            taken_at = self.clock()
            self._since_snapshot = 0
        with self._snapshot_lock:
            self._snapshots.write(position, snapshot, taken_at)
        return position

    def shutdown(self) -> None:
        """Writes a last snapshot and closes the stores (the application is unusable after)."""
        writing = self._snapshot_thread
        if writing is not None:
            writing.join()
        try:
            self.save_snapshot()
        except Exception:
            logger.exception("routing: the last snapshot could not be written")
        if self._snapshots is not None:
            self._snapshots.close()
        self.stop_writer()
        self.close()

    # --- plumbing -------------------------------------------------------------------------

    def record(self, *events: DomainEvent) -> None:
        """Every store of the workforce commands goes through the engine (module docstring)."""
        with self._lock:
            self._ensure_fresh()
            now = max((event.timestamp for event in events), default=None) or self.clock()
            self._commit(events, now)

    def _commit(self, events: Sequence[DomainEvent], now: datetime) -> list[DomainEvent]:
        """Folds `events` in, decides at `now`, stores both in one transaction, tells the
        listeners; returns what was stored. The caller holds the lock."""
        try:
            self.engine.apply_all(events)
            decided = self.engine.decide(now)
            stored = [*events, *decided]
            if stored:
                CRMApplication.record(self, *stored)
        except BaseException:
            self._stale = True
            raise
        if stored:
            self._since_snapshot += len(stored)
            for listener in tuple(self._listeners):
                try:
                    listener(stored)
                except Exception:
                    logger.exception("routing: a listener failed on %d events", len(stored))
            if self._snapshots is not None and self._since_snapshot >= self.snapshot_every:
                self._snapshot_soon()
        return stored

    def _snapshot_soon(self) -> None:
        """Writes a snapshot in a background thread (unless one is being written)."""
        writing = self._snapshot_thread
        if writing is not None and writing.is_alive():
            return
        self._since_snapshot = 0

        def write() -> None:
            try:
                self.save_snapshot()
            except Exception:
                logger.exception("routing: writing a snapshot failed")

        self._snapshot_thread = threading.Thread(target=write, name="routing-snapshot", daemon=True)
        self._snapshot_thread.start()

    def _ensure_fresh(self) -> None:
        if self._stale:
            self.engine = self._rebuild()
            self._stale = False

    def _rebuild(self) -> RoutingEngine:
        """The engine from the latest snapshot and the events after it, settled."""
        position = 0
        engine: RoutingEngine | None = None
        if self._snapshots is not None:
            found = self._snapshots.read()
            if found is not None:
                position, snapshot = found
                engine = RoutingEngine.restore(snapshot, self.policy)
        if engine is None:
            engine = RoutingEngine(self.policy)
        replayed = 0
        while True:
            page = self.recorder.select_notifications(
                start=position, limit=_REPLAY_PAGE, inclusive_of_start=False
            )
            if not page:
                break
            for notification in page:
                event = self.mapper.to_domain_event(notification)
                if isinstance(event, DomainEvent):
                    engine.apply(event)
            position = page[-1].id
            replayed += len(page)
        settled = engine.settle()
        engine.warm()
        if settled:
            # Events stored without their decisions (or decided by an older version).
            logger.warning("routing: %d decisions were due after replay", len(settled))
            CRMApplication.record(self, *settled)
        self._since_snapshot = replayed
        logger.info("routing: engine rebuilt after replaying %d events", replayed)
        return engine

    def _load(self, kind: str, aggregate_id: UUID, cls: type[TState]) -> TState:
        # Agents and queues are all in the engine's memory: no replay from the store.
        with self._lock:
            self._ensure_fresh()
            found: Aggregate | None = None
            if cls is Agent:
                found = self.engine.agent(aggregate_id)
            elif cls is Queue:
                found = self.engine.queue(aggregate_id)
            else:
                return super()._load(kind, aggregate_id, cls)
        if not isinstance(found, cls):
            raise NotFound(kind, aggregate_id)
        return found

    def _stored_task(self, task_id: UUID) -> Task | None:
        try:
            return self.load(task_id, Task)
        except NotFound:
            return None

    def _task_after(self, task_id: UUID, stored: Sequence[DomainEvent]) -> Task:
        task = self.engine.task(task_id)
        if task is not None:
            return task
        # It left routing in this very commit (fell back, released): fold its events.
        earlier = self._stored_task(task_id)
        if earlier is not None:
            return earlier
        mine = [event for event in stored if event.originator_id == task_id]
        state: Task = project(None, mine)
        return state


class _SnapshotStore:
    """The latest engine snapshot, in a table beside the events."""

    def __init__(self, persistence: PersistenceSettings) -> None:
        self._store: ReadModelStore = open_read_model_store(persistence, "routing_snapshots")
        blob = "BYTEA" if self._store.dialect == "postgres" else "BLOB"
        self._store.create(
            "CREATE TABLE IF NOT EXISTS routing_snapshots ("
            " name TEXT PRIMARY KEY, position BIGINT NOT NULL, format INTEGER NOT NULL,"
            f" taken_at TEXT NOT NULL, state {blob} NOT NULL)"
        )

    def write(self, position: int, snapshot: RoutingSnapshot, taken_at: datetime) -> None:
        state = msgspec.msgpack.encode(snapshot)
        with self._store.transaction() as cursor:
            cursor.execute(
                "INSERT INTO routing_snapshots (name, position, format, taken_at, state)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
                " position = excluded.position, format = excluded.format,"
                " taken_at = excluded.taken_at, state = excluded.state",
                ("engine", position, SNAPSHOT_FORMAT, taken_at.isoformat(), state),
            )

    def read(self) -> tuple[int, RoutingSnapshot] | None:
        rows = self._store.query(
            "SELECT position, format, state FROM routing_snapshots WHERE name = ?", ("engine",)
        )
        if not rows:
            return None
        position, version, state = rows[0]
        if version != SNAPSHOT_FORMAT:
            return None
        try:
            return int(position), msgspec.msgpack.decode(bytes(state), type=RoutingSnapshot)
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            logger.warning("routing: ignoring an unreadable snapshot (%s); replaying all", error)
            return None

    def close(self) -> None:
        self._store.close_store()
