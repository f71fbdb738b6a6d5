"""SLA deadlines of cases and of interactions outside cases, and the scheduler that raises
at-risk and breached events.

`SlaClocks` is a read model ("interactions_sla", beside the events) that follows the
interaction application's notification log, committing each batch with its position in one
transaction (the batch's rows read at once, its events applied to them in memory, each changed
row written once). For every case it keeps the clocks of the matching policy
(`crmcore.domain.sla`):

- first response: from the case's opening to the first public reply of an agent;
- next response: from each public customer message after that reply (while no earlier one
  waits) to the agent's next public reply, one cycle per wait;
- resolution: from the opening to solving; a reopening runs it on (the time in between does
  not count).

Every clock pauses while the case is pending (waiting on the customer). Solving stops the
response clocks; closing stops everything. The policy is chosen by the case's priority and
channel (its first interaction's, when the case was not opened with one), and chosen again
when the channel becomes known. Each clock's row holds its deadline and at-risk time in UTC,
recomputed on every event of its case, and whether its events were recorded.

An inbound interaction opened outside any case (a chat, an e-mail nobody made a case of) has
clocks of its own, under the same policies, chosen by its channel and by its routing priority
(`crmcore.domain.sla.interaction_priority`: 0–4 normal, 5–7 high, 8–10 urgent; chosen again
when a queueing, transfer, reopening or bot hand-off changes it):

- first response: from the opening (DOMAIN.md: "first public agent reply − created", bots
  excluded) to the first public reply of an agent — on a voice channel (phone, video) to the
  answer, which is when the customer first hears an agent;
- next response: as for a case, one cycle per public customer message after the first
  response that waits for an agent's public reply;
- resolution: from the opening to `Resolved`; a reopening runs it on (the time in between does
  not count, like a solved case's).

A bot conversation's clocks start when the bot hands it to a human (a contained one has none);
an outbound contact has none (the organisation spoke first). An interaction has no "pending"
status — waiting on the customer is a case status — so its clocks pause only between resolving
and reopening; its response clocks run only while the customer waits for an agent anyway.
Resolving stops the response clocks; closing or abandoning stops everything. Linking the
interaction to a case (or opening it in one) stops all its clocks for good: from then on the
case's clocks count, so nothing is counted twice. A deadline that passed before the link is
still a breach. The clocks' rows live in the same table as the cases' (`sla_clocks.case_id`
is the subject's id); `sla_interactions` says which subjects are interactions.

`SlaScheduler.run_once(now)` projects what is new, then records, through the application,
a breached event for each clock whose deadline passed unmet (also for one met late while no
scheduler ran), and an at-risk event for each clock past its at-risk time but not its
deadline. The application stores each event at most once per case (or interaction), metric,
cycle and kind (`SlaRecord`), so restarts, a crash between recording and projecting, or two
schedulers on one database never duplicate an event. The service calls `run_once` every tick.

Interactions opened before this read model learnt about interaction clocks (whose events it
had projected already) have none.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast
from uuid import UUID

import msgspec
from eventsourcing.utils import get_topic

from crmcore.adapters.readmodels import (
    Cursor,
    Dialect,
    ReadModelStore,
    Row,
    open_read_model_store,
)
from crmcore.application.interactions import InteractionApplication
from crmcore.domain.base import DomainEvent
from crmcore.domain.case import (
    CaseClosed,
    CaseEvent,
    CaseFirstResponded,
    CaseInteractionLinked,
    CaseOpened,
    CasePriority,
    CaseReopened,
    CaseSolved,
    CaseStatus,
    CaseStatusChanged,
)
from crmcore.domain.errors import NotFound
from crmcore.domain.interaction import (
    Abandoned,
    Answered,
    AuthorKind,
    Closed,
    CustomerIdentified,
    HandedOffToHuman,
    InteractionEvent,
    InteractionOpened,
    InteractionStatus,
    LinkedToCase,
    MessageAdded,
    Queued,
    Reopened,
    Resolved,
    Transferred,
)
from crmcore.domain.sla import (
    ClockState,
    SlaAtRisk,
    SlaBreached,
    SlaClock,
    SlaEvent,
    SlaEventKind,
    SlaMetric,
    SlaPolicies,
    SlaPolicy,
    SlaSubject,
    interaction_priority,
)
from crmcore.domain.values import Channel, Direction

log = logging.getLogger(__name__)

SLA_STORE_NAME = "interactions_sla"
DEFAULT_BATCH_SIZE = 500
#: Clocks handled per scheduler round at most (the rest wait for the next tick).
MAX_DUE_PER_ROUND = 500
#: A catch-up batch runs Python for tens of milliseconds. Run without a pause, it makes each
#: command thread of the service wait up to the interpreter's switch interval (5 ms) for the
#: GIL after every I/O the thread completes (the convoy effect, which showed in the command
#: p99 of `python -m bench interaction`). So its long loops sleep `BREATH_S` after each
#: `BREATH_EVERY_S` of running, which hands the GIL over.
BREATH_EVERY_S = 0.002
BREATH_S = 0.0005
#: Rows of one table written by one `executemany` (so that writing a batch breathes too).
ROWS_PER_WRITE = 100
#: Ids bound in one `IN (…)` list on SQLite (older builds take at most 999 parameters).
SQLITE_IDS_PER_SELECT = 500
#: Subjects whose rows one recomputation of deadlines holds in memory at a time.
RECOMPUTE_CHUNK = 1_000

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_clock_encoder = msgspec.msgpack.Encoder()
_clock_decoder = msgspec.msgpack.Decoder(SlaClock)

_TABLES = (
    """CREATE TABLE IF NOT EXISTS sla_cases (
        case_id TEXT PRIMARY KEY,
        version INTEGER NOT NULL,
        customer_id TEXT,
        channel TEXT,
        priority TEXT NOT NULL,
        status TEXT NOT NULL,
        first_responded INTEGER NOT NULL,
        cycles INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS sla_links (
        interaction_id TEXT PRIMARY KEY,
        case_id TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS sla_clocks (
        case_id TEXT NOT NULL,
        metric TEXT NOT NULL,
        cycle INTEGER NOT NULL,
        state TEXT NOT NULL,
        clock {bytes_type} NOT NULL,
        policy TEXT,
        target_s DOUBLE PRECISION,
        due_at BIGINT,
        at_risk_at BIGINT,
        breach_due BIGINT,
        at_risk_due BIGINT,
        breach_sent INTEGER NOT NULL DEFAULT 0,
        at_risk_sent INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (case_id, metric, cycle)
    )""",
    """CREATE TABLE IF NOT EXISTS sla_interactions (
        interaction_id TEXT PRIMARY KEY,
        version INTEGER NOT NULL,
        customer_id TEXT,
        channel TEXT NOT NULL,
        priority TEXT NOT NULL,
        status TEXT NOT NULL,
        timed INTEGER NOT NULL,
        first_responded INTEGER NOT NULL,
        cycles INTEGER NOT NULL,
        linked_case_id TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS sla_clocks_breach ON sla_clocks (breach_due)",
    "CREATE INDEX IF NOT EXISTS sla_clocks_at_risk ON sla_clocks (at_risk_due)",
)

_OPEN_STATES = (ClockState.RUNNING, ClockState.PAUSED)
#: Channels on which answering is the first response (the customer hears the agent).
VOICE_CHANNELS = frozenset({Channel.PHONE, Channel.VIDEO})
#: Statuses in which a customer's message starts no next-response wait.
_DONE_STATUSES = frozenset(
    {
        InteractionStatus.RESOLVED,
        InteractionStatus.CLOSED,
        InteractionStatus.ABANDONED,
        InteractionStatus.CONTAINED,
    }
)


_T = TypeVar("_T")


def _breathing(items: Iterable[_T]) -> Iterator[_T]:
    """`items`, with a short sleep every `BREATH_EVERY_S` (see there)."""
    last = time.perf_counter()
    for item in items:
        yield item
        if time.perf_counter() - last >= BREATH_EVERY_S:
            time.sleep(BREATH_S)
            last = time.perf_counter()


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _moment(micros: int | None) -> datetime | None:
    return None if micros is None else _EPOCH + timedelta(microseconds=int(micros))


class ClockView(msgspec.Struct, frozen=True, kw_only=True):
    """One SLA clock of a case (or of an interaction outside a case) as the API shows it."""

    #: The case's id, or the interaction's (`subject`).
    case_id: UUID
    metric: SlaMetric
    cycle: int
    state: ClockState
    policy: str | None
    target: timedelta | None
    started_at: datetime
    due_at: datetime | None
    at_risk_at: datetime | None
    ended_at: datetime | None
    #: The deadline passed before the clock was met or stopped (or has passed by now).
    breached: bool
    at_risk_recorded: bool
    breach_recorded: bool
    subject: SlaSubject = SlaSubject.CASE


class DueClock(msgspec.Struct, frozen=True, kw_only=True):
    """A clock whose at-risk or breached event is owed."""

    #: The case's id, or the interaction's (`subject`).
    case_id: UUID
    subject: SlaSubject
    metric: SlaMetric
    cycle: int
    kind: SlaEventKind
    policy: str
    target: timedelta
    started_at: datetime
    due_at: datetime
    at_risk_at: datetime | None


class _CaseRow(msgspec.Struct, kw_only=True):
    case_id: str
    version: int
    customer_id: str | None
    channel: Channel | None
    priority: CasePriority
    status: CaseStatus
    first_responded: bool
    cycles: int


class _InteractionRow(msgspec.Struct, kw_only=True):
    interaction_id: str
    version: int
    customer_id: str | None
    channel: Channel
    priority: CasePriority
    status: InteractionStatus
    #: Its clocks started (False while a bot handles it).
    timed: bool
    first_responded: bool
    cycles: int
    #: The case it was linked to: its clocks stopped there.
    linked_case_id: str | None = None


#: (due, at risk, breach owed from, at-risk owed from, target) of a clock, times in µs.
_Deadlines = tuple[int | None, int | None, int | None, int | None, timedelta | None]

_CASE_COLUMNS = "case_id, version, customer_id, channel, priority, status, first_responded, cycles"
_INTERACTION_COLUMNS = (
    "interaction_id, version, customer_id, channel, priority, status, timed, first_responded, "
    "cycles, linked_case_id"
)
_UPSERT_CASE = (
    f"INSERT INTO sla_cases ({_CASE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (case_id) DO UPDATE SET version = excluded.version, "
    "customer_id = excluded.customer_id, channel = excluded.channel, "
    "priority = excluded.priority, status = excluded.status, "
    "first_responded = excluded.first_responded, cycles = excluded.cycles"
)
_UPSERT_INTERACTION = (
    f"INSERT INTO sla_interactions ({_INTERACTION_COLUMNS}) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (interaction_id) DO UPDATE SET version = excluded.version, "
    "customer_id = excluded.customer_id, channel = excluded.channel, "
    "priority = excluded.priority, status = excluded.status, timed = excluded.timed, "
    "first_responded = excluded.first_responded, cycles = excluded.cycles, "
    "linked_case_id = excluded.linked_case_id"
)
_UPSERT_LINK = (
    "INSERT INTO sla_links (interaction_id, case_id) VALUES (?, ?) "
    "ON CONFLICT (interaction_id) DO UPDATE SET case_id = excluded.case_id"
)
# The recorded-event flags are not among the columns: they change only with those events.
_UPSERT_CLOCK = (
    "INSERT INTO sla_clocks (case_id, metric, cycle, state, clock, policy, target_s, "
    "due_at, at_risk_at, breach_due, at_risk_due) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (case_id, metric, cycle) DO UPDATE SET state = excluded.state, "
    "clock = excluded.clock, policy = excluded.policy, target_s = excluded.target_s, "
    "due_at = excluded.due_at, at_risk_at = excluded.at_risk_at, "
    "breach_due = excluded.breach_due, at_risk_due = excluded.at_risk_due"
)

#: A clock row's key: (subject id, metric, cycle).
_ClockKey = tuple[str, str, int]


class _BatchRows:
    """The rows that one catch-up batch (or one recomputation) works on: read together
    (`prefetch`, else each on first use), changed in memory event after event, and each
    changed row written once (`write`). The projection's position stays locked throughout
    the transaction, so nobody else changes these rows meanwhile: after each event, memory
    holds what the tables would if that event had been written at once."""

    def __init__(self, cursor: Cursor, dialect: Dialect) -> None:
        self._cursor = cursor
        self._dialect = dialect
        # None: no such row.
        self._cases: dict[str, _CaseRow | None] = {}
        self._interactions: dict[str, _InteractionRow | None] = {}
        self._links: dict[str, str | None] = {}
        #: Each subject's clocks by (metric, cycle): the stored ones and those written since.
        self._clocks: dict[str, dict[tuple[str, int], SlaClock]] = {}
        self._changed_cases: dict[str, _CaseRow] = {}
        self._changed_interactions: dict[str, _InteractionRow] = {}
        self._changed_links: dict[str, str] = {}
        #: The policy and clock last written to each clock row (deadlines follow at `write`).
        self._rewritten: dict[_ClockKey, tuple[SlaPolicy | None, SlaClock]] = {}
        self._breach_sent: set[_ClockKey] = set()
        self._at_risk_sent: set[_ClockKey] = set()

    # --- reading ----------------------------------------------------------------------------

    def prefetch(self, events: Iterable[DomainEvent]) -> None:
        """Reads every row that `events` can touch, a few statements in all."""
        cases: set[str] = set()
        interactions: set[str] = set()
        subjects: set[str] = set()
        messaged: set[str] = set()
        for event in events:
            if isinstance(event, CaseEvent):
                cases.add(str(event.originator_id))
            elif isinstance(event, SlaEvent):
                subjects.add(str(event.subject_id))
            elif isinstance(event, InteractionEvent):
                interactions.add(str(event.originator_id))
                if isinstance(event, InteractionOpened | LinkedToCase):
                    if event.case_id is not None:
                        cases.add(str(event.case_id))
                elif isinstance(event, MessageAdded):
                    messaged.add(str(event.originator_id))
        # A public message moves the clocks of the case its interaction is linked to.
        self._load_links(messaged)
        cases.update(case_id for case_id in map(self._links.__getitem__, messaged) if case_id)
        self._load_cases(cases)
        self._load_interactions(interactions)
        self._load_clocks(cases | interactions | subjects)

    def load_subjects(self, subject_ids: Collection[str]) -> None:
        """Reads the case or interaction rows of `subject_ids` and their clocks."""
        self._load_cases(subject_ids)
        self._load_interactions(subject_ids)
        self._load_clocks(subject_ids)

    def case(self, case_id: str) -> _CaseRow | None:
        """A copy of the case's row (`save_case` stores a change)."""
        if case_id not in self._cases:
            self._load_cases([case_id])
        row = self._cases[case_id]
        return None if row is None else copy.copy(row)

    def interaction(self, interaction_id: str) -> _InteractionRow | None:
        """A copy of the interaction's row (`save_interaction` stores a change)."""
        if interaction_id not in self._interactions:
            self._load_interactions([interaction_id])
        row = self._interactions[interaction_id]
        return None if row is None else copy.copy(row)

    def link(self, interaction_id: str) -> str | None:
        """The case an interaction is linked to."""
        if interaction_id not in self._links:
            self._load_links([interaction_id])
        return self._links[interaction_id]

    def clocks(self, subject_id: str) -> list[SlaClock]:
        """A case's or an interaction's clocks, by metric and cycle."""
        return [clock for _, clock in sorted(self._clocks_of(subject_id).items())]

    def _clocks_of(self, subject_id: str) -> dict[tuple[str, int], SlaClock]:
        if subject_id not in self._clocks:
            self._load_clocks([subject_id])
        return self._clocks[subject_id]

    def _load_cases(self, case_ids: Iterable[str]) -> None:
        wanted = [case_id for case_id in case_ids if case_id not in self._cases]
        self._cases.update(dict.fromkeys(wanted))
        for row in self._select(f"SELECT {_CASE_COLUMNS} FROM sla_cases WHERE case_id", wanted):
            self._cases[str(row[0])] = _CaseRow(
                case_id=str(row[0]),
                version=int(row[1]),
                customer_id=None if row[2] is None else str(row[2]),
                channel=None if row[3] is None else Channel(row[3]),
                priority=CasePriority(row[4]),
                status=CaseStatus(row[5]),
                first_responded=bool(row[6]),
                cycles=int(row[7]),
            )

    def _load_interactions(self, interaction_ids: Iterable[str]) -> None:
        wanted = [key for key in interaction_ids if key not in self._interactions]
        self._interactions.update(dict.fromkeys(wanted))
        rows = self._select(
            f"SELECT {_INTERACTION_COLUMNS} FROM sla_interactions WHERE interaction_id", wanted
        )
        for row in rows:
            self._interactions[str(row[0])] = _InteractionRow(
                interaction_id=str(row[0]),
                version=int(row[1]),
                customer_id=None if row[2] is None else str(row[2]),
                channel=Channel(row[3]),
                priority=CasePriority(row[4]),
                status=InteractionStatus(row[5]),
                timed=bool(row[6]),
                first_responded=bool(row[7]),
                cycles=int(row[8]),
                linked_case_id=None if row[9] is None else str(row[9]),
            )

    def _load_links(self, interaction_ids: Iterable[str]) -> None:
        wanted = [key for key in interaction_ids if key not in self._links]
        self._links.update(dict.fromkeys(wanted))
        rows = self._select(
            "SELECT interaction_id, case_id FROM sla_links WHERE interaction_id", wanted
        )
        for interaction_id, case_id in rows:
            self._links[str(interaction_id)] = str(case_id)

    def _load_clocks(self, subject_ids: Iterable[str]) -> None:
        wanted = [key for key in subject_ids if key not in self._clocks]
        for subject_id in wanted:
            self._clocks[subject_id] = {}
        for subject_id, raw in self._select(
            "SELECT case_id, clock FROM sla_clocks WHERE case_id", wanted
        ):
            clock = _clock_decoder.decode(bytes(raw))
            self._clocks[str(subject_id)][(str(clock.metric), clock.cycle)] = clock

    def _select(self, sql: str, ids: list[str]) -> list[Row]:
        """The rows of `sql`, which ends in "WHERE <id column>", for any of `ids`."""
        if not ids:
            return []
        if self._dialect == "postgres":
            self._cursor.execute(f"{sql} = ANY(?)", (ids,))
            return self._cursor.fetchall()
        found: list[Row] = []
        for start in range(0, len(ids), SQLITE_IDS_PER_SELECT):
            chunk = ids[start : start + SQLITE_IDS_PER_SELECT]
            self._cursor.execute(f"{sql} IN ({', '.join('?' * len(chunk))})", chunk)
            found += self._cursor.fetchall()
        return found

    # --- changing ---------------------------------------------------------------------------

    def save_case(self, row: _CaseRow) -> None:
        self._cases[row.case_id] = self._changed_cases[row.case_id] = copy.copy(row)

    def save_interaction(self, row: _InteractionRow) -> None:
        saved = copy.copy(row)
        self._interactions[row.interaction_id] = saved
        self._changed_interactions[row.interaction_id] = saved

    def save_link(self, interaction_id: str, case_id: str) -> None:
        self._links[interaction_id] = self._changed_links[interaction_id] = case_id

    def rewrite(self, subject_id: str, policy: SlaPolicy | None, clocks: Iterable[SlaClock]) -> int:
        """Stores `clocks` of a subject, their deadlines to be those of `policy`; returns how
        many."""
        stored = self._clocks_of(subject_id)
        count = 0
        for clock in clocks:
            metric = str(clock.metric)
            stored[(metric, clock.cycle)] = clock
            self._rewritten[(subject_id, metric, clock.cycle)] = (policy, clock)
            count += 1
        return count

    def mark_sent(self, subject_id: str, metric: SlaMetric, cycle: int, *, breached: bool) -> None:
        """Records that a clock's breached (or at-risk) event was recorded; nothing for a
        clock that has no row (its subject's clocks were never kept)."""
        if (str(metric), cycle) not in self._clocks_of(subject_id):
            return
        sent = self._breach_sent if breached else self._at_risk_sent
        sent.add((subject_id, str(metric), cycle))

    # --- writing ----------------------------------------------------------------------------

    def write(self, deadlines: Callable[[SlaPolicy | None, SlaClock], _Deadlines]) -> None:
        """Writes every changed row once (in key order), each clock with the deadlines of
        the policy it was last stored under."""
        cases = self._changed_cases
        self._write_many(_UPSERT_CASE, [_case_columns(cases[key]) for key in sorted(cases)])
        interactions = self._changed_interactions
        self._write_many(
            _UPSERT_INTERACTION,
            [_interaction_columns(interactions[key]) for key in sorted(interactions)],
        )
        self._write_many(_UPSERT_LINK, sorted(self._changed_links.items()))
        clock_rows = []
        for key in _breathing(sorted(self._rewritten)):
            policy, clock = self._rewritten[key]
            due_at, at_risk_at, breach_due, at_risk_due, target = deadlines(policy, clock)
            clock_rows.append(
                (
                    *key,
                    str(clock.state),
                    _clock_encoder.encode(clock),
                    None if policy is None or target is None else policy.name,
                    None if target is None else target.total_seconds(),
                    due_at,
                    at_risk_at,
                    breach_due,
                    at_risk_due,
                )
            )
        self._write_many(_UPSERT_CLOCK, clock_rows)
        # After the clocks: a row first written in this batch may carry its flag already.
        for column, keys in (
            ("breach_sent", self._breach_sent),
            ("at_risk_sent", self._at_risk_sent),
        ):
            self._write_many(
                f"UPDATE sla_clocks SET {column} = 1 "
                "WHERE case_id = ? AND metric = ? AND cycle = ?",
                sorted(keys),
            )

    def _write_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """`executemany` in parts of `ROWS_PER_WRITE`, breathing in between (`BREATH_S`)."""
        parts = (rows[at : at + ROWS_PER_WRITE] for at in range(0, len(rows), ROWS_PER_WRITE))
        for part in _breathing(parts):
            self._cursor.executemany(sql, part)


def _case_columns(row: _CaseRow) -> tuple[Any, ...]:
    return (
        row.case_id,
        row.version,
        row.customer_id,
        None if row.channel is None else str(row.channel),
        str(row.priority),
        str(row.status),
        int(row.first_responded),
        row.cycles,
    )


def _interaction_columns(row: _InteractionRow) -> tuple[Any, ...]:
    return (
        row.interaction_id,
        row.version,
        row.customer_id,
        str(row.channel),
        str(row.priority),
        str(row.status),
        int(row.timed),
        int(row.first_responded),
        row.cycles,
        row.linked_case_id,
    )


class SlaClocks:
    """The due-date read model (module docstring)."""

    PROJECTION = "sla_clocks"

    def __init__(
        self,
        app: InteractionApplication,
        policies: SlaPolicies,
        store: ReadModelStore | None = None,
    ) -> None:
        self.app = app
        self.policies = policies
        self._owns_store = store is None
        self.store = store or open_read_model_store(app.persistence, SLA_STORE_NAME)
        bytes_type = "BYTEA" if self.store.dialect == "postgres" else "BLOB"
        self.store.create(*(sql.format(bytes_type=bytes_type) for sql in _TABLES))
        self._lock = threading.Lock()
        classes: list[type[DomainEvent]] = [
            CaseOpened,
            CaseInteractionLinked,
            CaseStatusChanged,
            CaseFirstResponded,
            CaseSolved,
            CaseReopened,
            CaseClosed,
            InteractionOpened,
            LinkedToCase,
            MessageAdded,
            CustomerIdentified,
            Queued,
            Answered,
            Transferred,
            HandedOffToHuman,
            Resolved,
            Reopened,
            Closed,
            Abandoned,
            SlaAtRisk,
            SlaBreached,
        ]
        self._topics = frozenset(get_topic(cls) for cls in classes)

    @property
    def position(self) -> int:
        return self.store.position(self.PROJECTION)

    def close_clocks(self) -> None:
        if self._owns_store:
            self.store.close_store()

    # --- following the log ------------------------------------------------------------------

    def catch_up(self, *, batch_size: int = DEFAULT_BATCH_SIZE) -> int:
        """Projects every event stored after the saved position; returns how many were read.

        A batch is one transaction: the rows its events touch are read together, the events
        applied to them in memory one after the other, and each changed row written once,
        with the new position."""
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
                    events = [
                        cast(DomainEvent, self.app.mapper.to_domain_event(notification))
                        for notification in _breathing(notifications)
                        if notification.topic in self._topics
                    ]
                    rows = _BatchRows(cursor, self.store.dialect)
                    rows.prefetch(events)
                    for event in _breathing(events):
                        self._apply(rows, event)
                    rows.write(self._deadlines)
                    ReadModelStore.save_position(cursor, self.PROJECTION, notifications[-1].id)
                read += len(notifications)

    def recompute_open_clocks(self) -> int:
        """Recomputes the deadlines of every running or paused clock with the current
        policies (after a configuration change); returns how many clocks it looked at."""
        with self._lock, self.store.transaction() as cursor:
            # The projection's lock: no catch-up elsewhere changes these clocks meanwhile.
            _locked_position(cursor, self.store.dialect, self.PROJECTION)
            cursor.execute(
                "SELECT DISTINCT case_id FROM sla_clocks WHERE state IN (?, ?)",
                tuple(str(state) for state in _OPEN_STATES),
            )
            subject_ids = sorted(str(row[0]) for row in cursor.fetchall())
            count = 0
            for start in range(0, len(subject_ids), RECOMPUTE_CHUNK):
                chunk = subject_ids[start : start + RECOMPUTE_CHUNK]
                rows = _BatchRows(cursor, self.store.dialect)
                rows.load_subjects(chunk)
                for subject_id in chunk:
                    case = rows.case(subject_id)
                    if case is not None:
                        count += self._rewrite(rows, case, rows.clocks(subject_id))
                        continue
                    interaction = rows.interaction(subject_id)
                    if interaction is not None:
                        count += self._rewrite_interaction(
                            rows, interaction, rows.clocks(subject_id)
                        )
                rows.write(self._deadlines)
            return count

    def _apply(self, rows: _BatchRows, event: DomainEvent) -> None:
        if isinstance(event, CaseEvent):
            self._case_event(rows, event)
        elif isinstance(event, SlaEvent):
            rows.mark_sent(
                str(event.subject_id),
                event.metric,
                event.cycle,
                breached=isinstance(event, SlaBreached),
            )
        elif isinstance(event, InteractionEvent):
            if isinstance(event, InteractionOpened | LinkedToCase):
                case_id = event.case_id
                if case_id is not None:
                    rows.save_link(str(event.originator_id), str(case_id))
            elif isinstance(event, MessageAdded):
                self._message(rows, event)
            self._interaction_event(rows, event)

    def _case_event(self, rows: _BatchRows, event: CaseEvent) -> None:
        case_id = str(event.originator_id)
        at = event.timestamp
        if isinstance(event, CaseOpened):
            if rows.case(case_id) is not None:
                return  # seen already
            opened = _CaseRow(
                case_id=case_id,
                version=event.originator_version,
                customer_id=None if event.customer_id is None else str(event.customer_id),
                channel=event.channel,
                priority=event.priority,
                status=event.status,
                first_responded=False,
                cycles=0,
            )
            clocks = [
                SlaClock(metric=SlaMetric.FIRST_RESPONSE, cycle=1, started_at=at),
                SlaClock(metric=SlaMetric.RESOLUTION, cycle=1, started_at=at),
            ]
            rows.save_case(opened)
            self._rewrite(rows, opened, clocks)
            return
        case = rows.case(case_id)
        if case is None or case.version >= event.originator_version:
            return
        clocks = rows.clocks(case_id)
        was_pending = case.status is CaseStatus.PENDING
        case.version = event.originator_version
        case.status = event.status
        if isinstance(event, CaseInteractionLinked):
            rows.save_link(str(event.interaction_id), case_id)
            if case.channel is None and event.channel is not None:
                case.channel = event.channel
        elif isinstance(event, CaseStatusChanged):
            now_pending = event.status is CaseStatus.PENDING
            if now_pending and not was_pending:
                clocks = [clock.pause(at) for clock in clocks]
            elif was_pending and not now_pending:
                clocks = [clock.resume(at) for clock in clocks]
        elif isinstance(event, CaseFirstResponded):
            case.first_responded = True
            clocks = [
                clock.meet(at) if clock.metric is SlaMetric.FIRST_RESPONSE else clock
                for clock in clocks
            ]
        elif isinstance(event, CaseSolved):
            clocks = [
                clock.meet(at) if clock.metric is SlaMetric.RESOLUTION else clock.stop(at)
                for clock in clocks
            ]
        elif isinstance(event, CaseReopened):
            clocks = [
                clock.restart(at) if clock.metric is SlaMetric.RESOLUTION else clock
                for clock in clocks
            ]
        elif isinstance(event, CaseClosed):
            clocks = [clock.stop(at) for clock in clocks]
        rows.save_case(case)
        self._rewrite(rows, case, clocks)

    def _message(self, rows: _BatchRows, event: MessageAdded) -> None:
        entry = event.entry
        if not entry.public or entry.author_kind not in (AuthorKind.CUSTOMER, AuthorKind.AGENT):
            return
        case_id = rows.link(str(event.originator_id))
        if case_id is None:
            return
        case = rows.case(case_id)
        if case is None or not case.first_responded:
            return  # before the first reply, the first-response clock is what runs
        clocks = rows.clocks(case.case_id)
        waiting = [
            clock
            for clock in clocks
            if clock.metric is SlaMetric.NEXT_RESPONSE and clock.state in _OPEN_STATES
        ]
        at = event.timestamp
        if entry.author_kind is AuthorKind.AGENT:
            if waiting:
                met = [clock.meet(at) if clock in waiting else clock for clock in clocks]
                self._rewrite(rows, case, met)
            return
        if waiting or case.status in (CaseStatus.SOLVED, CaseStatus.CLOSED):
            return
        case.cycles += 1
        started = SlaClock(metric=SlaMetric.NEXT_RESPONSE, cycle=case.cycles, started_at=at)
        if case.status is CaseStatus.PENDING:
            started = started.pause(at)
        rows.save_case(case)
        self._rewrite(rows, case, [started])

    def _interaction_event(self, rows: _BatchRows, event: InteractionEvent) -> None:
        """The clocks of an interaction outside any case (module docstring)."""
        interaction_id = str(event.originator_id)
        at = event.timestamp
        if isinstance(event, InteractionOpened):
            if event.case_id is not None or event.direction is not Direction.INBOUND:
                return  # in a case from the start (its clocks count), or outbound
            if rows.interaction(interaction_id) is not None:
                return  # seen already
            opened = _InteractionRow(
                interaction_id=interaction_id,
                version=event.originator_version,
                customer_id=None if event.customer_id is None else str(event.customer_id),
                channel=event.channel,
                priority=interaction_priority(0),
                status=event.status,
                timed=not event.handled_by_bot,
                first_responded=False,
                cycles=0,
            )
            rows.save_interaction(opened)
            if opened.timed:
                self._rewrite_interaction(rows, opened, _first_clocks(at, responded=False))
            return
        row = rows.interaction(interaction_id)
        if row is None or row.linked_case_id is not None or row.version >= event.originator_version:
            return
        clocks = rows.clocks(interaction_id)
        row.version = event.originator_version
        row.status = event.status
        row.customer_id = None if event.customer_id is None else str(event.customer_id)
        if isinstance(event, Queued | Transferred | Reopened | HandedOffToHuman):
            row.priority = interaction_priority(event.requirements.priority)
        if isinstance(event, LinkedToCase):
            row.linked_case_id = str(event.case_id)
            clocks = [clock.stop(at) for clock in clocks]
        elif isinstance(event, HandedOffToHuman):
            if not row.timed:
                row.timed = True
                clocks = _first_clocks(at, responded=row.first_responded)
        elif isinstance(event, Answered):
            if row.channel in VOICE_CHANNELS and not row.first_responded:
                row.first_responded = True
                clocks = _met(clocks, SlaMetric.FIRST_RESPONSE, at)
        elif isinstance(event, MessageAdded):
            clocks = self._interaction_message(row, clocks, event)
        elif isinstance(event, Resolved):
            clocks = [
                clock.meet(at) if clock.metric is SlaMetric.RESOLUTION else clock.stop(at)
                for clock in clocks
            ]
        elif isinstance(event, Reopened):
            clocks = [
                clock.restart(at) if clock.metric is SlaMetric.RESOLUTION else clock
                for clock in clocks
            ]
        elif isinstance(event, Closed | Abandoned):
            clocks = [clock.stop(at) for clock in clocks]
        rows.save_interaction(row)
        self._rewrite_interaction(rows, row, clocks)

    @staticmethod
    def _interaction_message(
        row: _InteractionRow, clocks: list[SlaClock], event: MessageAdded
    ) -> list[SlaClock]:
        entry = event.entry
        at = event.timestamp
        if not entry.public or entry.author_kind not in (AuthorKind.CUSTOMER, AuthorKind.AGENT):
            return clocks
        if entry.author_kind is AuthorKind.AGENT:
            if not row.first_responded:
                row.first_responded = True
                return _met(clocks, SlaMetric.FIRST_RESPONSE, at)
            return _met(clocks, SlaMetric.NEXT_RESPONSE, at)
        waiting = any(
            clock.metric is SlaMetric.NEXT_RESPONSE and clock.state in _OPEN_STATES
            for clock in clocks
        )
        if not row.timed or not row.first_responded or waiting or row.status in _DONE_STATUSES:
            return clocks  # before the first reply, the first-response clock is what runs
        row.cycles += 1
        return [
            *clocks,
            SlaClock(metric=SlaMetric.NEXT_RESPONSE, cycle=row.cycles, started_at=at),
        ]

    # --- clocks -----------------------------------------------------------------------------

    def _rewrite_interaction(
        self, rows: _BatchRows, row: _InteractionRow, clocks: Iterable[SlaClock]
    ) -> int:
        policy = self.policies.policy_for(row.channel, row.priority)
        return rows.rewrite(row.interaction_id, policy, clocks)

    def _rewrite(self, rows: _BatchRows, case: _CaseRow, clocks: Iterable[SlaClock]) -> int:
        """Stores the clocks with their deadlines under the case's policy (chosen now)."""
        policy = self.policies.policy_for(case.channel, case.priority)
        return rows.rewrite(case.case_id, policy, clocks)

    def _deadlines(self, policy: SlaPolicy | None, clock: SlaClock) -> _Deadlines:
        """(due, at risk, breach owed from, at-risk owed from, target), times in µs."""
        target = None if policy is None else policy.target(clock.metric)
        if policy is None or target is None:
            return None, None, None, None, None
        calendar = self.policies.calendar_of(policy)
        due = clock.deadline(target, calendar)
        at_risk = clock.at_risk_time(target, policy.at_risk_fraction, calendar)
        due_us = None if due is None else _micros(due)
        at_risk_us = None if at_risk is None else _micros(at_risk)
        ended = clock.ended_at
        # A breach is owed when the deadline came before the clock ended (or it runs on).
        breach_due = due_us if due is not None and (ended is None or ended > due) else None
        at_risk_due = at_risk_us if clock.state in _OPEN_STATES else None
        return due_us, at_risk_us, breach_due, at_risk_due, target

    # --- queries ----------------------------------------------------------------------------

    def due(self, now: datetime, *, limit: int = MAX_DUE_PER_ROUND) -> list[DueClock]:
        """Clocks owing their breached event by `now`, then those owing an at-risk event (only
        while the deadline is known and still ahead: after it, the breach says more)."""
        at = _micros(now)
        rows = self.store.query(
            f"SELECT {_DUE_COLUMNS} FROM {_DUE_FROM} "
            "WHERE c.breach_due IS NOT NULL AND c.breach_due <= ? "
            "AND c.breach_sent = 0 ORDER BY c.breach_due LIMIT ?",
            (at, limit),
        )
        found = [self._due(row, SlaEventKind.BREACHED) for row in rows]
        rows = self.store.query(
            f"SELECT {_DUE_COLUMNS} FROM {_DUE_FROM} "
            "WHERE c.at_risk_due IS NOT NULL AND c.at_risk_due <= ? "
            "AND c.at_risk_sent = 0 AND c.breach_sent = 0 AND c.due_at IS NOT NULL "
            "AND c.due_at > ? ORDER BY c.at_risk_due LIMIT ?",
            (at, at, limit),
        )
        found += [self._due(row, SlaEventKind.AT_RISK) for row in rows]
        return found

    @staticmethod
    def _due(row: tuple[Any, ...], kind: SlaEventKind) -> DueClock:
        case_id, metric, cycle, policy, target_s, raw, due_at, at_risk_at, interaction = row
        clock = _clock_decoder.decode(bytes(raw))
        due = _moment(due_at)
        assert due is not None  # both queries ask for a deadline
        return DueClock(
            case_id=UUID(str(case_id)),
            subject=SlaSubject.CASE if interaction is None else SlaSubject.INTERACTION,
            metric=SlaMetric(metric),
            cycle=int(cycle),
            kind=kind,
            policy=str(policy),
            target=timedelta(seconds=float(target_s)),
            started_at=clock.started_at,
            due_at=due,
            at_risk_at=_moment(at_risk_at),
        )

    def clocks_of(self, case_id: UUID, *, now: datetime | None = None) -> tuple[ClockView, ...]:
        """The SLA clocks of a case (after catching up), first response, next responses,
        resolution; NotFound for a case this read model never saw."""
        self.catch_up()
        if not self.store.query("SELECT 1 FROM sla_cases WHERE case_id = ?", (str(case_id),)):
            raise NotFound("case", case_id)
        return self._views(case_id, SlaSubject.CASE, now or datetime.now(UTC))

    def clocks_of_interaction(
        self, interaction_id: UUID, *, now: datetime | None = None
    ) -> tuple[ClockView, ...]:
        """The SLA clocks of an interaction of its own, outside any case (after catching up):
        none for one opened in a case, outbound or never seen; stopped ones for one linked to
        a case later (`linked_case_of` says which: that case's clocks count now)."""
        self.catch_up()
        return self._views(interaction_id, SlaSubject.INTERACTION, now or datetime.now(UTC))

    def linked_case_of(self, interaction_id: UUID) -> UUID | None:
        """The case whose clocks took over from an interaction's own (None: not linked)."""
        rows = self.store.query(
            "SELECT linked_case_id FROM sla_interactions WHERE interaction_id = ?",
            (str(interaction_id),),
        )
        return UUID(str(rows[0][0])) if rows and rows[0][0] is not None else None

    def _views(
        self, subject_id: UUID, subject: SlaSubject, moment: datetime
    ) -> tuple[ClockView, ...]:
        rows = self.store.query(
            "SELECT metric, cycle, clock, policy, target_s, due_at, at_risk_at, breach_sent, "
            "at_risk_sent FROM sla_clocks WHERE case_id = ?",
            (str(subject_id),),
        )
        order = list(SlaMetric)
        views: list[ClockView] = []
        for (
            metric,
            cycle,
            raw,
            policy,
            target_s,
            due_at,
            at_risk_at,
            breach_sent,
            risk_sent,
        ) in rows:
            clock = _clock_decoder.decode(bytes(raw))
            due = _moment(due_at)
            end = clock.ended_at or moment
            views.append(
                ClockView(
                    case_id=subject_id,
                    subject=subject,
                    metric=SlaMetric(metric),
                    cycle=int(cycle),
                    state=clock.state,
                    policy=None if policy is None else str(policy),
                    target=None if target_s is None else timedelta(seconds=float(target_s)),
                    started_at=clock.started_at,
                    due_at=due,
                    at_risk_at=_moment(at_risk_at),
                    ended_at=clock.ended_at,
                    breached=bool(breach_sent) or (due is not None and end > due),
                    at_risk_recorded=bool(risk_sent),
                    breach_recorded=bool(breach_sent),
                )
            )
        views.sort(key=lambda view: (order.index(view.metric), view.cycle))
        return tuple(views)


_DUE_COLUMNS = (
    "c.case_id, c.metric, c.cycle, c.policy, c.target_s, c.clock, c.due_at, c.at_risk_at, "
    "i.interaction_id"
)
_DUE_FROM = "sla_clocks c LEFT JOIN sla_interactions i ON i.interaction_id = c.case_id"


def _first_clocks(at: datetime, *, responded: bool) -> list[SlaClock]:
    """The clocks an interaction's SLA starts with at `at` (no first-response clock when an
    agent replied already)."""
    clocks = [SlaClock(metric=SlaMetric.RESOLUTION, cycle=1, started_at=at)]
    if not responded:
        clocks.insert(0, SlaClock(metric=SlaMetric.FIRST_RESPONSE, cycle=1, started_at=at))
    return clocks


def _met(clocks: list[SlaClock], metric: SlaMetric, at: datetime) -> list[SlaClock]:
    """The open clocks of `metric` met at `at`, the others as they were."""
    return [clock.meet(at) if clock.metric is metric else clock for clock in clocks]


def _locked_position(cursor: Cursor, dialect: str, projection: str) -> int:
    cursor.execute(
        "INSERT INTO projection_positions (projection, position) VALUES (?, 0) "
        "ON CONFLICT (projection) DO NOTHING",
        (projection,),
    )
    lock = " FOR UPDATE" if dialect == "postgres" else ""
    cursor.execute(
        f"SELECT position FROM projection_positions WHERE projection = ?{lock}", (projection,)
    )
    row = cursor.fetchone()
    return int(row[0]) if row else 0


class SlaScheduler:
    """Raises the SLA events that are due (module docstring)."""

    def __init__(
        self,
        app: InteractionApplication,
        clocks: SlaClocks,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.app = app
        self.clocks = clocks
        self.now = now

    def run_once(self, now: datetime | None = None) -> list[SlaEvent]:
        """Catches up, records every event due at `now` (default: the scheduler's clock) and
        projects them; returns the events it stored (none twice, whoever else runs)."""
        moment = now or self.now()
        self.clocks.catch_up()
        recorded: list[SlaEvent] = []
        for due in self.clocks.due(moment):
            record = (
                self.app.record_sla_event
                if due.subject is SlaSubject.CASE
                else self.app.record_interaction_sla_event
            )
            try:
                event = record(
                    due.case_id,
                    kind=due.kind,
                    metric=due.metric,
                    cycle=due.cycle,
                    policy=due.policy,
                    target=due.target,
                    started_at=due.started_at,
                    due_at=due.due_at,
                    at_risk_at=due.at_risk_at,
                    at=moment,
                )
            except NotFound:
                log.warning("SLA clock of unknown %s %s skipped", due.subject, due.case_id)
                continue
            if event is not None:
                recorded.append(event)
        if recorded:
            self.clocks.catch_up()
        return recorded
