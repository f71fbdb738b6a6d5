"""The metrics projection: every event into KPI read models, and the queries that read them.

What is kept (tables in the metrics read-model store, `crmcore.adapters.readmodels`):

- Fact tables, one row per thing: `metrics_interactions` (the per-interaction fact table:
  times, waits, agent segments, outcome), `metrics_cases`, `metrics_agents`, `metrics_queues`,
  `metrics_surveys`, `metrics_feedback`, `metrics_customers` (+ their active spans).
- Interval buckets: `metrics_buckets`, additive counters (`kpis.COUNTERS`) and the mergeable
  duration histograms (one JSON object `{"<histogram>:<bin>": count}` per row, merged by adding
  counts) per 15-minute interval and per local day, and per dimension combination (channel,
  queue, team, agent, contact reason; `metrics_dims`). An hour, week or month is a sum of them.
- `metrics_sla`: one row per SLA clock of a case, met or breached (from the interaction
  service's SLA events) and when; and one per clock of an interaction outside a case that an
  SLA event spoke of or whose next response was met (the same rows however the events were
  batched).
- `metrics_topics`: feedback topics per local day (rising topics).
- `metrics_targets`: KPI targets with deadlines. They are configuration of this service, not
  facts of the event history, so they are a plain table that `reset()` (rebuild) keeps.

How a batch is applied (`MetricsProjection.apply`): events whose position the store has already
recorded are skipped, and so is an event whose aggregate version its fact row has already seen
(a republished event reaches the bus with a new stream sequence). The facts the batch touches
are changed in memory; each interaction's bucket contribution is recomputed from its fact and
only the difference to what it contributed before is written (so a contact reason set at the
end moves all its counts, a reopen takes back an FCR…). Agent time and survey answers are
append-only deltas. Everything, with the new position, is written in ONE transaction (additive
upserts: `executemany` on SQLite; on PostgreSQL binary `COPY` into a staging table and one
merge statement per table): a crash or redelivery never counts anything twice. Inside
`pipelined()` a writer thread commits each batch while the next is built: `rebuild` replays
that way (on an idle two-core machine 70k instead of 47k events/s into PostgreSQL; on busy
cores the writer competes for the interpreter lock and gains little). The live feed applies its
batches synchronously: they are small, and the next fetch waits for the bus anyway.
The cyclic garbage collector is paused while a batch is built (it would otherwise walk every
cached fact again and again).

Attribution (which interval a count belongs to):
- queue outcomes (offered, answered, abandoned, waits, service level): the interval of the
  first enqueue (arrival), dimensions of the first queue and the first answering agent;
- agent handling (handled, handle/talk/hold/after-contact time, transfers, escalations): one
  per agent segment (answer to transfer or resolution), in the interval the segment ended,
  with that segment's queue and agent;
- first response: the interval of the first public agent reply; surveys: when answered;
- agent time: split over the intervals it spans (team and agent only);
- issue KPIs (FCR, resolution, reopen), bot containment and repeat contacts depend on a time
  window that may still be open, so they are computed at query time from the fact tables
  (issues by their first resolution, bot conversations and contacts by creation).

`MetricsFeed` feeds the projection from NATS JetStream (all of `crm.>`, batch pulls, one
transaction per batch with the stream sequence); `catch_up()` feeds it in-process from the
applications' notification logs (embedded mode, tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import enum
import gc
import io
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import add
from typing import Any, TypeVar, cast

import msgspec
import nats.errors
import nats.js.errors
from eventsourcing.application import Application
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from crmcore.adapters.envelope import UNREADABLE
from crmcore.adapters.jetstream import (
    PARKED_PREFIX,
    TRANSIENT_ERRORS,
    close_quietly,
    connect_with_retry,
    ensure_stream,
)
from crmcore.adapters.readmodels import BulkCursor, Cursor, ReadModelStore
from crmcore.config import BusSettings, PersistenceSettings
from crmcore.domain import kpis
from crmcore.domain.agent import (
    EXCLUSIVE_CHANNELS,
    AgentCapacityChanged,
    AgentEvent,
    AgentPresenceChanged,
    AgentProfileUpdated,
    AgentRegistered,
    AgentWorkAssigned,
    AgentWorkReleased,
    Presence,
)
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
)
from crmcore.domain.customer import (
    CustomerEvent,
    CustomerMergedInto,
    CustomerRegistered,
    Lifecycle,
    LifecycleChanged,
)
from crmcore.domain.errors import InvalidValue, NotFound
from crmcore.domain.feedback import FeedbackEvent, SurveyAnswered, SurveyKind
from crmcore.domain.interaction import (
    Abandoned,
    Answered,
    AuthorKind,
    BotContained,
    Closed,
    Escalated,
    HandedOffToHuman,
    InteractionEvent,
    InteractionOpened,
    InteractionStatus,
    LinkedToCase,
    MessageAdded,
    Queued,
    Reopened,
    Resolved,
    Resumed,
    Transferred,
    WrapUpStarted,
)
from crmcore.domain.kpis import (
    COUNTERS,
    HISTOGRAMS,
    INTERVAL_MS,
    Calendar,
    Interval,
    KpiPolicy,
    KpiValues,
    Tally,
)
from crmcore.domain.queue import QueueArchived, QueueCreated, QueueEvent, QueueUpdated
from crmcore.domain.sla import (
    DEFAULT_POLICIES,
    SlaAtRisk,
    SlaBreached,
    SlaEvent,
    SlaMetric,
    SlaPolicies,
    interaction_priority,
)
from crmcore.domain.values import Channel

log = logging.getLogger(__name__)

#: Position key of the bus feed (its position is a stream sequence).
BUS_SOURCE = "metrics"
#: Durable consumer name of the bus feed.
DURABLE = "metrics"

GRAIN_15M = 1
GRAIN_DAY = 2

_N = len(COUNTERS)
_C = {name: index for index, name in enumerate(COUNTERS)}
_CREATED = _C["created"]
_OFFERED = _C["offered"]
_ANSWERED = _C["answered"]
_ABANDONED = _C["abandoned"]
_ANSWER_WAIT = _C["answer_wait_ms"]
_ABANDON_WAIT = _C["abandon_wait_ms"]
_HANDLED = _C["handled"]
_HANDLE = _C["handle_ms"]
_TALK = _C["talk_ms"]
_HOLD = _C["hold_ms"]
_ACW = _C["acw_ms"]
_TRANSFERRED = _C["transferred_out"]
_ESCALATED = _C["escalated"]
_FIRST_RESPONSES = _C["first_responses"]
_FIRST_RESPONSE = _C["first_response_ms"]
_CSAT_RESPONSES = _C["csat_responses"]
_CSAT_SATISFIED = _C["csat_satisfied"]
_NPS_RESPONSES = _C["nps_responses"]
_NPS_PROMOTERS = _C["nps_promoters"]
_NPS_DETRACTORS = _C["nps_detractors"]
_CES_RESPONSES = _C["ces_responses"]
_CES_TOTAL = _C["ces_total"]
_LOGGED_IN = _C["logged_in_ms"]
_IDLE = _C["idle_ms"]
_OCCUPIED = _C["occupied_ms"]
_WEIGHTED = _C["weighted_occupied_ms"]
_H_ANSWER = HISTOGRAMS["answer_wait"]
_H_ABANDON = HISTOGRAMS["abandon_wait"]
_H_HANDLE = HISTOGRAMS["handle"]
_H_FIRST_RESPONSE = HISTOGRAMS["first_response"]

_WAITING = (InteractionStatus.QUEUED.value, InteractionStatus.OFFERED.value)
_FINISHED = (
    InteractionStatus.RESOLVED.value,
    InteractionStatus.CLOSED.value,
    InteractionStatus.ABANDONED.value,
    InteractionStatus.CONTAINED.value,
)
_EXCLUSIVE = frozenset(channel.value for channel in EXCLUSIVE_CHANNELS)
_CACHE_LIMIT = 50_000
_IN_CHUNK = 500

Dims = tuple[str, str, str, str, str]
_T = TypeVar("_T")


class ReadModelMismatch(RuntimeError):
    """The store was built with another time zone or histogram layout: rebuild it."""


class Dimension(enum.StrEnum):
    """What KPIs can be grouped and filtered by."""

    CHANNEL = "channel"
    QUEUE = "queue"
    TEAM = "team"
    AGENT = "agent"
    REASON = "reason"


_DIMENSIONS: tuple[Dimension, ...] = tuple(Dimension)


def _ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pauses the cyclic garbage collector for one batch: a batch allocates many small objects
    and would otherwise trigger collections that walk every long-lived fact in memory (they
    cost more than the batch itself). The events and facts have no reference cycles."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# The same ids come back with every event of their aggregate; formatting a UUID is slow.
_ID_TEXT: dict[int, str] = {}


def _key(value: uuid.UUID) -> str:
    number = value.int
    text = _ID_TEXT.get(number)
    if text is None:
        if len(_ID_TEXT) > 500_000:
            _ID_TEXT.clear()
        text = _ID_TEXT[number] = str(value)
    return text


def _id(value: uuid.UUID | None) -> str:
    return "" if value is None else _key(value)


# --- facts ---------------------------------------------------------------------------------


class Segment(msgspec.Struct, array_like=True, kw_only=True):
    """One agent's handling of an interaction: from the answer to a transfer or resolution."""

    agent: str
    team: str
    queue: str
    start_ms: int
    hold_ms: int = 0
    talk_end_ms: int | None = None
    end_ms: int | None = None
    transferred: bool = False
    escalated: bool = False

    def durations(self) -> tuple[int, int, int, int]:
        """(handle, talk, hold, after-contact work) in ms of a finished segment."""
        end = self.end_ms if self.end_ms is not None else self.start_ms
        talk_end = self.talk_end_ms if self.talk_end_ms is not None else end
        handle = max(0, end - self.start_ms)
        hold = max(0, min(self.hold_ms, handle))
        talk = max(0, talk_end - self.start_ms - hold)
        acw = max(0, end - talk_end)
        return handle, talk, hold, acw


class InteractionFact(msgspec.Struct, array_like=True, kw_only=True):
    """One row of the per-interaction fact table (times in epoch ms)."""

    id: str
    version: int
    channel: str
    direction: str
    bot: bool
    created_ms: int
    status: str
    customer_id: str = ""
    case_id: str = ""
    reason: str = ""
    first_queue: str = ""
    queue: str = ""
    queued_ms: int | None = None
    waiting_since_ms: int | None = None
    answered_ms: int | None = None
    first_agent: str = ""
    first_team: str = ""
    abandoned_ms: int | None = None
    abandon_wait_ms: int = 0
    first_response_ms: int | None = None
    first_response_agent: str = ""
    first_response_team: str = ""
    first_resolved_ms: int | None = None
    resolved_ms: int | None = None
    resolved_agent: str = ""
    #: agents who had answered it when it was first resolved (FCR: one agent contact)
    resolution_agents: int = 0
    reopened_ms: int | None = None
    closed_ms: int | None = None
    contained_ms: int | None = None
    handed_off_ms: int | None = None
    #: the routing priority it waited with (the SLA policy of an interaction in no case)
    routing_priority: int = 0
    #: next-response waits started (outside a case; the cycle of the newest), when the one
    #: waiting began, and (cycle, when met) of each met one
    next_cycles: int = 0
    next_waiting_ms: int | None = None
    next_met: list[tuple[int, int]] = msgspec.field(default_factory=list)
    transfers: int = 0
    escalations: int = 0
    reopens: int = 0
    agents: list[str] = msgspec.field(default_factory=list)
    segments: list[Segment] = msgspec.field(default_factory=list)

    def open_segment(self) -> Segment | None:
        if self.segments and self.segments[-1].end_ms is None:
            return self.segments[-1]
        return None

    def handle_ms(self) -> int:
        return sum(s.durations()[0] for s in self.segments if s.end_ms is not None)


class SlaClockFact(msgspec.Struct, array_like=True, kw_only=True):
    """One SLA clock of a case as the metrics count it: started and met or stopped as the
    case's events say (the same clocks as `crmcore.application.sla_scheduler`), breached or at
    risk as the interaction service's SLA events say (it alone knows the deadlines, which run
    in business hours)."""

    metric: str
    cycle: int
    started_ms: int
    #: running, met or stopped
    state: str = "running"
    #: when it was met or stopped
    ended_ms: int | None = None
    #: the deadline of its `SlaBreached` event
    breached_due_ms: int | None = None
    at_risk: bool = False


_INBOUND = "inbound"
_SUBJECT_CASE = "case"
_SUBJECT_INTERACTION = "interaction"
_AT_RISK = "at_risk"
_RUNNING = "running"
_MET = "met"
_STOPPED = "stopped"
_BREACHED = "breached"


class CaseFact(msgspec.Struct, array_like=True, kw_only=True):
    id: str
    version: int
    created_ms: int
    status: str
    customer_id: str = ""
    reason: str = ""
    first_interaction: str = ""
    interactions: int = 0
    first_response_ms: int | None = None
    first_solved_ms: int | None = None
    solved_ms: int | None = None
    closed_ms: int | None = None
    reopens: int = 0
    reopened_ms: int | None = None
    priority: str = CasePriority.NORMAL.value
    #: the channel its SLA policy is chosen by: given when opened, else its first interaction's
    channel: str = ""
    #: next-response waits started so far (the cycle of the newest)
    next_cycles: int = 0
    clocks: list[SlaClockFact] = msgspec.field(default_factory=list)

    def clock(self, metric: str, cycle: int) -> SlaClockFact | None:
        for clock in self.clocks:
            if clock.metric == metric and clock.cycle == cycle:
                return clock
        return None


class AgentFact(msgspec.Struct, array_like=True, kw_only=True):
    id: str
    version: int
    name: str
    team: str
    capacity: dict[str, int]
    presence: str
    since_ms: int
    #: work id → channel, in the order assigned
    work: dict[str, str] = msgspec.field(default_factory=dict)


class QueueFact(msgspec.Struct, array_like=True, kw_only=True):
    id: str
    version: int
    name: str
    threshold_s: int
    fraction: float
    archived: bool = False


class FeedbackFact(msgspec.Struct, array_like=True, kw_only=True):
    id: str
    version: int
    day_ms: int
    topics: list[str]
    category: str
    sentiment: str


class CustomerFact(msgspec.Struct, array_like=True, kw_only=True):
    id: str
    version: int
    lifecycle: str
    merged: bool = False
    #: [active from, active until or None] spans, oldest first
    spans: list[tuple[int, int | None]] = msgspec.field(default_factory=list)

    def activate(self, at_ms: int) -> None:
        if self.spans and self.spans[-1][1] == at_ms:  # back at the same moment: one span
            self.spans[-1] = (self.spans[-1][0], None)
        elif not self.spans or self.spans[-1][1] is not None:
            self.spans.append((at_ms, None))

    def deactivate(self, at_ms: int) -> None:
        if self.spans and self.spans[-1][1] is None:
            self.spans[-1] = (self.spans[-1][0], at_ms)


# --- schema --------------------------------------------------------------------------------


def _schema(dialect: str) -> tuple[str, ...]:
    blob = "BYTEA" if dialect == "postgres" else "BLOB"
    counters = ",\n".join(f"    {name} BIGINT NOT NULL DEFAULT 0" for name in COUNTERS)
    return (
        "CREATE TABLE IF NOT EXISTS metrics_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE IF NOT EXISTS metrics_dims (
    id INTEGER PRIMARY KEY,
    channel TEXT NOT NULL, queue TEXT NOT NULL, team TEXT NOT NULL, agent TEXT NOT NULL,
    reason TEXT NOT NULL
)""",
        f"""CREATE TABLE IF NOT EXISTS metrics_buckets (
    grain SMALLINT NOT NULL, start_ms BIGINT NOT NULL, dims INTEGER NOT NULL,
{counters},
    histograms TEXT NOT NULL,
    PRIMARY KEY (grain, start_ms, dims)
)""",
        f"""CREATE TABLE IF NOT EXISTS metrics_interactions (
    id TEXT PRIMARY KEY, version INTEGER NOT NULL, customer_id TEXT NOT NULL,
    case_id TEXT NOT NULL, channel TEXT NOT NULL, direction TEXT NOT NULL,
    bot SMALLINT NOT NULL, reason TEXT NOT NULL, first_queue TEXT NOT NULL, queue TEXT NOT NULL,
    status TEXT NOT NULL, created_ms BIGINT NOT NULL, queued_ms BIGINT,
    waiting_since_ms BIGINT, answered_ms BIGINT, first_agent TEXT NOT NULL,
    first_team TEXT NOT NULL, agents INTEGER NOT NULL, abandoned_ms BIGINT,
    first_response_ms BIGINT, first_resolved_ms BIGINT, resolved_ms BIGINT, closed_ms BIGINT,
    resolution_agents INTEGER NOT NULL, reopened_ms BIGINT,
    contained_ms BIGINT, handed_off_ms BIGINT, transfers INTEGER NOT NULL,
    escalations INTEGER NOT NULL, reopens INTEGER NOT NULL, handle_ms BIGINT NOT NULL,
    routing_priority INTEGER NOT NULL,
    fact {blob} NOT NULL
)""",
        "CREATE INDEX IF NOT EXISTS metrics_interactions_customer "
        "ON metrics_interactions (customer_id, created_ms)",
        "CREATE INDEX IF NOT EXISTS metrics_interactions_created "
        "ON metrics_interactions (created_ms)",
        "CREATE INDEX IF NOT EXISTS metrics_interactions_resolved "
        "ON metrics_interactions (first_resolved_ms)",
        "CREATE INDEX IF NOT EXISTS metrics_interactions_case ON metrics_interactions (case_id)",
        "CREATE INDEX IF NOT EXISTS metrics_interactions_status "
        "ON metrics_interactions (status, queue)",
        f"""CREATE TABLE IF NOT EXISTS metrics_cases (
    id TEXT PRIMARY KEY, version INTEGER NOT NULL, customer_id TEXT NOT NULL,
    reason TEXT NOT NULL, status TEXT NOT NULL, created_ms BIGINT NOT NULL,
    first_interaction TEXT NOT NULL, first_solved_ms BIGINT, solved_ms BIGINT,
    closed_ms BIGINT, reopens INTEGER NOT NULL, reopened_ms BIGINT, fact {blob} NOT NULL
)""",
        "CREATE INDEX IF NOT EXISTS metrics_cases_customer "
        "ON metrics_cases (customer_id, created_ms)",
        "CREATE INDEX IF NOT EXISTS metrics_cases_created ON metrics_cases (created_ms)",
        "CREATE INDEX IF NOT EXISTS metrics_cases_solved ON metrics_cases (first_solved_ms)",
        f"""CREATE TABLE IF NOT EXISTS metrics_agents (
    id TEXT PRIMARY KEY, version INTEGER NOT NULL, fact {blob} NOT NULL
)""",
        f"""CREATE TABLE IF NOT EXISTS metrics_queues (
    id TEXT PRIMARY KEY, version INTEGER NOT NULL, fact {blob} NOT NULL
)""",
        """CREATE TABLE IF NOT EXISTS metrics_surveys (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, score INTEGER NOT NULL, at_ms BIGINT NOT NULL,
    interaction_id TEXT NOT NULL, agent_id TEXT NOT NULL, channel TEXT NOT NULL
)""",
        f"""CREATE TABLE IF NOT EXISTS metrics_feedback (
    id TEXT PRIMARY KEY, version INTEGER NOT NULL, fact {blob} NOT NULL
)""",
        """CREATE TABLE IF NOT EXISTS metrics_topics (
    day_ms BIGINT NOT NULL, topic TEXT NOT NULL, mentions BIGINT NOT NULL,
    PRIMARY KEY (day_ms, topic)
)""",
        f"""CREATE TABLE IF NOT EXISTS metrics_customers (
    id TEXT PRIMARY KEY, version INTEGER NOT NULL, fact {blob} NOT NULL
)""",
        """CREATE TABLE IF NOT EXISTS metrics_customer_spans (
    customer_id TEXT NOT NULL, active_from_ms BIGINT NOT NULL, active_until_ms BIGINT,
    PRIMARY KEY (customer_id, active_from_ms)
)""",
        """CREATE TABLE IF NOT EXISTS metrics_sla (
    subject_id TEXT NOT NULL, metric TEXT NOT NULL, cycle INTEGER NOT NULL,
    subject TEXT NOT NULL, outcome TEXT NOT NULL, decided_ms BIGINT, at_risk SMALLINT NOT NULL,
    channel TEXT NOT NULL, priority TEXT NOT NULL,
    PRIMARY KEY (subject_id, metric, cycle)
)""",
        "CREATE INDEX IF NOT EXISTS metrics_sla_decided ON metrics_sla (decided_ms)",
        """CREATE TABLE IF NOT EXISTS metrics_targets (
    id TEXT PRIMARY KEY, kpi TEXT NOT NULL, baseline DOUBLE PRECISION NOT NULL,
    target DOUBLE PRECISION NOT NULL, start_ms BIGINT NOT NULL, deadline_ms BIGINT NOT NULL,
    window_days INTEGER NOT NULL, filters TEXT NOT NULL, description TEXT NOT NULL,
    created_ms BIGINT NOT NULL
)""",
    )


#: Names the layout of the tables below; a store built with another one must be rebuilt.
#: v1: histograms in a table of their own; v2: in the bucket rows, SLA clocks.
TABLES_LAYOUT = "v2"
#: Tables of earlier layouts, dropped by a rebuild.
_RETIRED_TABLES = ("metrics_histograms",)

#: Tables `reset()` empties (everything derived from events; targets stay).
PROJECTED_TABLES = (
    "metrics_dims",
    "metrics_buckets",
    "metrics_interactions",
    "metrics_cases",
    "metrics_agents",
    "metrics_queues",
    "metrics_surveys",
    "metrics_feedback",
    "metrics_topics",
    "metrics_customers",
    "metrics_customer_spans",
    "metrics_sla",
)


_COPY_TYPES = {
    "smallint": "int2",
    "integer": "int4",
    "bigint": "int8",
    "text": "text",
    "bytea": "bytea",
}


class _Upsert:
    """`INSERT … ON CONFLICT …` of many rows, the fast way on each engine.

    SQLite: `executemany` of a one-row statement (prepared once, no round trips). PostgreSQL:
    the rows are loaded with binary `COPY` into a session-private staging table (emptied at
    every commit), then merged by ONE `INSERT … SELECT … ON CONFLICT` statement, inside the
    caller's transaction. The rows of one call must have distinct keys (a batch's have)."""

    def __init__(
        self,
        table: str,
        columns: Sequence[tuple[str, str]],
        conflict: str,
        *,
        postgres_conflict: str | None = None,
        staging: str | None = None,
    ) -> None:
        names = ", ".join(name for name, _ in columns)
        self.sqlite = (
            f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(columns))}) {conflict}"
        )
        # Upserts of one table with different conflict rules need staging tables of their
        # own: the rows stay staged until the commit, and a second merge of the same staging
        # table would merge the first one's rows again by the second one's rule.
        self.staging = f"stage_{staging or table}"
        self.columns = tuple(name for name, _ in columns)
        self.types = tuple(_COPY_TYPES[kind] for _, kind in columns)
        self.create_staging = (
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {self.staging} "
            f"({', '.join(f'{name} {kind}' for name, kind in columns)}) ON COMMIT DELETE ROWS"
        )
        self.merge = (
            f"INSERT INTO {table} ({names}) SELECT {names} FROM {self.staging} "
            f"{postgres_conflict or conflict}"
        )

    def run(self, cursor: Cursor, rows: Sequence[Sequence[object]], dialect: str) -> None:
        if not rows:
            return
        if dialect == "postgres":
            bulk = cast(BulkCursor, cursor)
            bulk.execute(self.create_staging)
            bulk.copy_rows(self.staging, self.columns, self.types, rows)
            bulk.execute(self.merge)
        else:
            cursor.executemany(self.sqlite, rows)


def _columns(spec: str) -> list[tuple[str, str]]:
    """ "id text, version integer" → [("id", "text"), ("version", "integer")]."""
    return [
        (part.split()[0], part.split()[1]) for part in (item.strip() for item in spec.split(","))
    ]


def _replacing(table: str, spec: str) -> _Upsert:
    columns = _columns(spec)
    updates = ", ".join(f"{name} = excluded.{name}" for name, _ in columns[1:])
    return _Upsert(table, columns, f"ON CONFLICT (id) DO UPDATE SET {updates}")


#: The histograms of a bucket row merged with a delta: counts of the same bin added, bins
#: that reach 0 dropped (SQLite's JSON functions; PostgreSQL's jsonb ones).
_MERGED_HISTOGRAMS = {
    "sqlite": "(SELECT COALESCE(json_group_object(k, v), '{}') FROM (SELECT k, SUM(v) AS v "
    "FROM (SELECT key AS k, value AS v FROM json_each(metrics_buckets.histograms) "
    "UNION ALL SELECT key, value FROM json_each(excluded.histograms)) GROUP BY k "
    "HAVING SUM(v) <> 0))",
    "postgres": "(SELECT COALESCE(jsonb_object_agg(k, v), '{}'::jsonb)::text FROM "
    "(SELECT k, SUM(v) AS v FROM (SELECT key AS k, value::bigint AS v "
    "FROM jsonb_each_text(metrics_buckets.histograms::jsonb) UNION ALL SELECT key, "
    "value::bigint FROM jsonb_each_text(excluded.histograms::jsonb)) AS parts GROUP BY k "
    "HAVING SUM(v) <> 0) AS merged)",
}


def _bucket_conflict(dialect: str) -> str:
    counters = ", ".join(f"{name} = metrics_buckets.{name} + excluded.{name}" for name in COUNTERS)
    return (
        f"ON CONFLICT (grain, start_ms, dims) DO UPDATE SET {counters}, histograms = CASE "
        "WHEN excluded.histograms = '{}' THEN metrics_buckets.histograms "
        "WHEN metrics_buckets.histograms = '{}' THEN excluded.histograms "
        f"ELSE {_MERGED_HISTOGRAMS[dialect]} END"
    )


_BUCKET_COLUMNS = (
    _columns("grain smallint, start_ms bigint, dims integer")
    + [(name, "bigint") for name in COUNTERS]
    + [("histograms", "text")]
)
_BUCKET_UPSERT = _Upsert(
    "metrics_buckets",
    _BUCKET_COLUMNS,
    _bucket_conflict("sqlite"),
    postgres_conflict=_bucket_conflict("postgres"),
)
_INTERACTION_UPSERT = _replacing(
    "metrics_interactions",
    "id text, version integer, customer_id text, case_id text, channel text, direction text, "
    "bot smallint, reason text, first_queue text, queue text, status text, created_ms bigint, "
    "queued_ms bigint, waiting_since_ms bigint, answered_ms bigint, first_agent text, "
    "first_team text, agents integer, abandoned_ms bigint, first_response_ms bigint, "
    "first_resolved_ms bigint, resolved_ms bigint, closed_ms bigint, "
    "resolution_agents integer, reopened_ms bigint, contained_ms bigint, "
    "handed_off_ms bigint, transfers integer, escalations integer, reopens integer, "
    "handle_ms bigint, routing_priority integer, fact bytea",
)
_CASE_UPSERT = _replacing(
    "metrics_cases",
    "id text, version integer, customer_id text, reason text, status text, created_ms bigint, "
    "first_interaction text, first_solved_ms bigint, solved_ms bigint, closed_ms bigint, "
    "reopens integer, reopened_ms bigint, fact bytea",
)
_BLOB_UPSERT = {
    table: _replacing(table, "id text, version integer, fact bytea")
    for table in ("metrics_agents", "metrics_queues", "metrics_feedback", "metrics_customers")
}
_TOPIC_UPSERT = _Upsert(
    "metrics_topics",
    _columns("day_ms bigint, topic text, mentions bigint"),
    "ON CONFLICT (day_ms, topic) DO UPDATE SET "
    "mentions = metrics_topics.mentions + excluded.mentions",
)
_SLA_COLUMNS = _columns(
    "subject_id text, metric text, cycle integer, subject text, outcome text, "
    "decided_ms bigint, at_risk smallint, channel text, priority text"
)
#: The clocks of cases: the case fact says everything, so its rows replace what was there.
_SLA_UPSERT = _Upsert(
    "metrics_sla",
    _SLA_COLUMNS,
    "ON CONFLICT (subject_id, metric, cycle) DO UPDATE SET outcome = excluded.outcome, "
    "decided_ms = excluded.decided_ms, at_risk = excluded.at_risk, channel = excluded.channel, "
    "priority = excluded.priority",
)
#: The clocks of interactions outside a case (their SLA events, their met next responses):
#: merged, breached over met over at risk, each outcome with its own time.
_SLA_MERGE = (
    "ON CONFLICT (subject_id, metric, cycle) DO UPDATE SET "
    f"outcome = CASE WHEN '{_BREACHED}' IN (excluded.outcome, metrics_sla.outcome) "
    f"THEN '{_BREACHED}' WHEN '{_MET}' IN (excluded.outcome, metrics_sla.outcome) "
    f"THEN '{_MET}' ELSE excluded.outcome END, "
    f"decided_ms = CASE WHEN metrics_sla.outcome = '{_BREACHED}' THEN metrics_sla.decided_ms "
    f"WHEN excluded.outcome IN ('{_BREACHED}', '{_MET}') THEN excluded.decided_ms "
    "ELSE metrics_sla.decided_ms END, "
    "at_risk = CASE WHEN excluded.at_risk > metrics_sla.at_risk THEN excluded.at_risk "
    "ELSE metrics_sla.at_risk END"
)
#: Clocks only SLA events spoke of in the batch: channel and priority as the first SLA event
#: of the clock gave them (its interaction may be unknown to this batch).
_SLA_EVENT_UPSERT = _Upsert("metrics_sla", _SLA_COLUMNS, _SLA_MERGE, staging="metrics_sla_events")
#: Clocks with a met next response: channel and priority those of the interaction as the
#: batch leaves it, whatever an SLA event or an earlier batch wrote (a later change of its
#: routing priority rewrites them: the same as one pass over the whole history leaves).
_SLA_MET_UPSERT = _Upsert(
    "metrics_sla",
    _SLA_COLUMNS,
    f"{_SLA_MERGE}, channel = excluded.channel, priority = excluded.priority",
    staging="metrics_sla_met",
)
_SURVEY_INSERT = _Upsert(
    "metrics_surveys",
    _columns(
        "id text, kind text, score integer, at_ms bigint, interaction_id text, agent_id text, "
        "channel text"
    ),
    "ON CONFLICT (id) DO NOTHING",
)

_interaction_decoder = msgspec.msgpack.Decoder(InteractionFact)
_case_decoder = msgspec.msgpack.Decoder(CaseFact)
_encoder = msgspec.msgpack.Encoder()


# --- the projection ---------------------------------------------------------------------------


Listener = Callable[[str, int], None]


class MetricsProjection:
    """KPI read models in a `ReadModelStore`, fed with (position, event) batches.

    Thread-safe: batches are applied one at a time under a lock; queries run beside them.
    `time_zone` decides local days, weeks and months (the store remembers it: opening a store
    built with another one raises `ReadModelMismatch`; rebuild it then). `sla_policies`: the
    interaction service's SLA policies (the same configuration), only to know which SLA clocks
    of a case have a target at all; whether a target was met or breached is what the SLA
    events say."""

    def __init__(
        self,
        store: ReadModelStore,
        *,
        time_zone: str = "UTC",
        policy: KpiPolicy | None = None,
        sla_policies: SlaPolicies = DEFAULT_POLICIES,
    ) -> None:
        self.store = store
        self.calendar = Calendar(time_zone)
        self.policy = (policy or KpiPolicy()).checked()
        self.sla_policies = sla_policies
        self._sla_targets: dict[tuple[str, str, str], bool] = {}
        self._lock = threading.RLock()
        self._listeners: list[Listener] = []
        self._handlers = _handlers()
        self._pipeline: _Pipeline | None = None
        self.stats = ProjectionStats()
        store.create(*_schema(store.dialect))
        self._check_meta()
        self._load_state()

    @classmethod
    def for_rebuild(
        cls,
        store: ReadModelStore,
        *,
        time_zone: str = "UTC",
        policy: KpiPolicy | None = None,
        sla_policies: SlaPolicies = DEFAULT_POLICIES,
    ) -> MetricsProjection:
        """A projection over `store` that may have been built with another time zone,
        histogram or table layout: it forgets them and drops the projected tables (call
        `reset()` and replay everything next; targets stay)."""
        store.create(*_schema(store.dialect))
        with store.transaction() as cursor:
            for table in (*PROJECTED_TABLES, *_RETIRED_TABLES):
                cursor.execute(f"DROP TABLE IF EXISTS {table}")
            cursor.execute("DELETE FROM metrics_meta")
        return cls(store, time_zone=time_zone, policy=policy, sla_policies=sla_policies)

    # --- set-up ---------------------------------------------------------------------------

    def _check_meta(self) -> None:
        wanted = {
            "time_zone": self.calendar.name,
            "histograms": kpis.HISTOGRAM_LAYOUT,
            "tables": TABLES_LAYOUT,
        }
        with self.store.transaction() as cursor:
            cursor.execute("SELECT key, value FROM metrics_meta")
            found: dict[str, str] = {str(k): str(v) for k, v in cursor.fetchall()}
            if found and "tables" not in found:  # built before the tables had a layout name
                found["tables"] = "v1"
            for key, value in wanted.items():
                if key not in found:
                    cursor.execute(
                        "INSERT INTO metrics_meta (key, value) VALUES (?, ?)", (key, value)
                    )
                elif found[key] != value:
                    raise ReadModelMismatch(
                        f"the metrics read models were built with {key} {found[key]!r}, not "
                        f"{value!r}: rebuild them (`crm metrics rebuild`) or use {found[key]!r}"
                    )

    def _load_state(self) -> None:
        self._positions: dict[str, int] = {}
        self._dims: dict[Dims, int] = {}
        for row in self.store.query(
            "SELECT id, channel, queue, team, agent, reason FROM metrics_dims"
        ):
            self._dims[(row[1], row[2], row[3], row[4], row[5])] = int(row[0])
        self._next_dims = max(self._dims.values(), default=0) + 1
        self._agents: dict[str, AgentFact] = {
            str(row[0]): msgspec.msgpack.decode(bytes(row[1]), type=AgentFact)
            for row in self.store.query("SELECT id, fact FROM metrics_agents")
        }
        self._queues: dict[str, QueueFact] = {
            str(row[0]): msgspec.msgpack.decode(bytes(row[1]), type=QueueFact)
            for row in self.store.query("SELECT id, fact FROM metrics_queues")
        }
        self._interactions: dict[str, InteractionFact] = {}
        self._cases: dict[str, CaseFact] = {}
        self._stale = False

    def reset(self) -> None:
        """Empties every projected table and forgets every position (targets stay): the
        start of a rebuild, which then replays the whole history."""
        with self._lock:
            with self.store.transaction() as cursor:
                for table in PROJECTED_TABLES:
                    cursor.execute(f"DELETE FROM {table}")
                cursor.execute(
                    "DELETE FROM projection_positions WHERE projection = ? OR projection LIKE ?",
                    (BUS_SOURCE, "metrics:%"),
                )
            self._load_state()

    def close_store(self) -> None:
        """Closes the store once the batch being applied (if any) has committed."""
        with self._lock:
            self.store.close_store()

    def add_listener(self, listener: Listener) -> None:
        """`listener(source, position)` is called (in the applying thread) after each commit."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def position(self, source: str = BUS_SOURCE) -> int:
        """How far `source` got (0 before its first event)."""
        with self._lock:
            known = self._positions.get(source)
            if known is None:
                known = self._positions[source] = self.store.position(source)
            return known

    # --- applying events ------------------------------------------------------------------

    def apply(
        self, items: Sequence[tuple[int, DomainEvent | None]], *, source: str = BUS_SOURCE
    ) -> int:
        """Applies events at increasing positions of `source` in one transaction; returns how
        many were new. `None` stands for a position that holds nothing to project (an event
        type this projection does not read): it only advances the position.

        Inside `pipelined()` the transaction is committed by a writer thread while the caller
        goes on with the next batch; otherwise it has committed when this returns."""
        if not items:
            return 0
        started = time.perf_counter()
        pipeline = self._pipeline
        with self._lock, gc_paused():
            if pipeline is not None:
                pipeline.check()
            if self._stale:
                self._load_state()
            done = self.position(source)
            fresh = [(position, event) for position, event in items if position > done]
            if not fresh:
                self.stats.skipped_positions += len(items)
                return 0
            last = max(position for position, _ in fresh)
            events = [event for _, event in fresh if event is not None]
            batch = _Batch(self)
            try:
                batch.prefetch(events)
                for event in events:
                    handler = self._handlers.get(type(event))
                    if handler is not None:
                        handler(batch, event)
                batch.prepare()
            except BaseException:
                self._forget()
                raise
            batch.committed()
            self._positions[source] = last
            self.stats.skipped_positions += len(items) - len(fresh)
            newest = _ms(max(event.timestamp for event in events)) if events else 0
            job = _Commit(batch, source, last, len(events), newest, started)
            if pipeline is None:
                try:
                    self._commit(job)
                except BaseException:
                    self._forget()
                    raise
        if pipeline is not None:
            pipeline.submit(job)
        return len(fresh)

    def _commit(self, job: _Commit) -> None:
        """Writes one prepared batch and its position in one transaction, then tells the
        listeners (in the thread that commits)."""
        with self.store.transaction() as cursor:
            job.batch.write(cursor)
            self.store.save_position(cursor, job.source, job.position)
        self.stats.events += job.events
        self.stats.batches += 1
        self.stats.last_batch_s = time.perf_counter() - job.started
        self.stats.last_event_ms = max(self.stats.last_event_ms, job.newest_ms)
        for listener in list(self._listeners):
            try:
                listener(job.source, job.position)
            except Exception:
                log.exception("metrics listener failed")

    def _forget(self) -> None:
        """After a failed batch: what is in memory may be ahead of the store, so it is read
        again from the store (positions too, so the batch is applied again); when the store
        cannot be read either (it is down), before the next batch instead."""
        self._stale = True
        with contextlib.suppress(Exception):
            self._load_state()

    @contextlib.contextmanager
    def pipelined(self, depth: int = 2) -> Iterator[None]:
        """Within it, `apply` hands each prepared batch to a writer thread and returns, so the
        next batch is built while the database writes the previous one (rebuilds, replays).
        Batches still commit one at a time, in order, each with its position; a failed commit
        makes every later batch of the pipeline fail too (they build on it), raises from the
        next `apply` or on leaving, and the projection reloads its state from the store. On
        leaving, every batch has committed."""
        with self._lock:
            if self._pipeline is not None:
                raise RuntimeError("the metrics projection is pipelined already")
            pipeline = self._pipeline = _Pipeline(self, depth)
        try:
            yield
        finally:
            try:
                pipeline.close()
            finally:
                with self._lock:
                    self._pipeline = None
        pipeline.check()

    def apply_events(self, events: Iterable[DomainEvent], *, source: str = "metrics:direct") -> int:
        """Applies events in order, numbering them after the position of `source` (library
        users feeding domain events directly, tests)."""
        start = self.position(source)
        return self.apply(
            [(start + offset, event) for offset, event in enumerate(events, 1)], source=source
        )

    def catch_up(self, *apps: Application[uuid.UUID], batch_size: int = 1000) -> int:
        """Projects everything the applications stored since last time (in-process mode).

        Each application's notification log has its own position (`metrics:<name>`). Give the
        workforce application before the interaction application so that agents' teams are
        known when their contacts are counted."""
        total = 0
        for app in apps:
            source = f"metrics:{app.name}"
            while True:
                after = self.position(source)
                notifications = app.recorder.select_notifications(start=after + 1, limit=batch_size)
                if not notifications:
                    break
                items: list[tuple[int, DomainEvent | None]] = []
                for notification in notifications:
                    event = app.mapper.to_domain_event(notification)
                    items.append(
                        (notification.id, event if isinstance(event, DomainEvent) else None)
                    )
                total += self.apply(items, source=source)
        return total

    # --- reading --------------------------------------------------------------------------

    def interaction(self, interaction_id: uuid.UUID | str) -> InteractionFact:
        """The fact row of one interaction (NotFound when it was never seen)."""
        rows = self.store.query(
            "SELECT fact FROM metrics_interactions WHERE id = ?", (str(interaction_id),)
        )
        if not rows:
            raise NotFound("interaction", interaction_id)
        return _interaction_decoder.decode(bytes(rows[0][0]))

    def agents(self) -> list[AgentFact]:
        with self._lock:
            return [msgspec.structs.replace(agent) for agent in self._agents.values()]

    def queues(self) -> list[QueueFact]:
        with self._lock:
            return list(self._queues.values())

    def queue_policy(self, queue: str) -> kpis.ServiceLevelPolicy:
        """The service-level policy of a queue: its own threshold when it has a supported one,
        else the projection's default."""
        default = self.policy.service_level
        with self._lock:
            for fact in self._queues.values():
                if fact.name == queue and fact.threshold_s in kpis.THRESHOLDS_S:
                    return msgspec.structs.replace(default, threshold_s=fact.threshold_s)
        return default

    def kpis(self, query: KpiQuery) -> KpiReport:
        return _KpiReader(self, query).report()

    def live(self, now_ms: int | None = None) -> LiveState:
        return _live(self, now_ms if now_ms is not None else kpis.to_ms(datetime.now(UTC)))

    def staffing(self, request: StaffingRequest) -> StaffingReport:
        return _staffing(self, request)

    def contact_reasons(
        self, start_ms: int, end_ms: int, *, limit: int = 20, min_count: int = 1
    ) -> TopicReport:
        return _topics(self, start_ms, end_ms, limit=limit, min_count=min_count)

    def export_interactions(
        self,
        start_ms: int,
        end_ms: int,
        filters: Mapping[Dimension, Sequence[str]] | None = None,
        *,
        page: int = 1000,
    ) -> Iterator[str]:
        return _export(self, start_ms, end_ms, filters or {}, page)

    # --- targets --------------------------------------------------------------------------

    def create_target(self, target: KpiTarget) -> KpiTarget:
        """Stores a target. With an `id` already taken (a retried request), the stored one is
        returned and nothing changes."""
        checked = _check_target(target)
        with self.store.transaction() as cursor:
            cursor.execute(
                "INSERT INTO metrics_targets (id, kpi, baseline, target, start_ms, deadline_ms, "
                "window_days, filters, description, created_ms) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                (
                    checked.id,
                    checked.kpi,
                    checked.baseline,
                    checked.target,
                    checked.start_ms,
                    checked.deadline_ms,
                    checked.window_days,
                    msgspec.json.encode(checked.filters).decode(),
                    checked.description,
                    checked.created_ms,
                ),
            )
        return self.target(checked.id)

    def targets(self) -> list[KpiTarget]:
        rows = self.store.query(
            "SELECT id, kpi, baseline, target, start_ms, deadline_ms, window_days, filters, "
            "description, created_ms FROM metrics_targets ORDER BY created_ms, id"
        )
        return [_target_of(row) for row in rows]

    def target(self, target_id: str) -> KpiTarget:
        rows = self.store.query(
            "SELECT id, kpi, baseline, target, start_ms, deadline_ms, window_days, filters, "
            "description, created_ms FROM metrics_targets WHERE id = ?",
            (target_id,),
        )
        if not rows:
            raise NotFound("KPI target", target_id)
        return _target_of(rows[0])

    def delete_target(self, target_id: str) -> None:
        self.target(target_id)
        with self.store.transaction() as cursor:
            cursor.execute("DELETE FROM metrics_targets WHERE id = ?", (target_id,))

    def target_status(self, target: KpiTarget, now_ms: int | None = None) -> TargetStatus:
        """The target's measured value (its KPI over the `window_days` before now, or before
        the deadline once it has passed) and progress."""
        now = now_ms if now_ms is not None else kpis.to_ms(datetime.now(UTC))
        end = min(now, target.deadline_ms)
        start = max(target.start_ms, end - target.window_days * 86_400_000)
        if end <= start:
            start = end - target.window_days * 86_400_000
        report = self.kpis(
            KpiQuery(
                start_ms=start,
                end_ms=end,
                interval=Interval.PERIOD,
                filters={Dimension(k): tuple(v) for k, v in target.filters.items()},
                policy=self.policy,
                as_of_ms=now,
            )
        )
        values = report.rows[0].values if report.rows else None
        current = kpis.KPI_READERS[target.kpi](values) if values is not None else None
        progress = kpis.target_progress(
            baseline=target.baseline,
            target=target.target,
            start_ms=target.start_ms,
            deadline_ms=target.deadline_ms,
            now_ms=now,
            current=current,
        )
        return TargetStatus(
            target=target, progress=progress, measured_from_ms=start, measured_to_ms=end
        )

    # --- for the batch ---------------------------------------------------------------------

    def _has_interaction_sla_target(self, channel: str, routing_priority: int, metric: str) -> bool:
        """Whether the SLA policy of an interaction outside a case has a target for `metric`
        (chosen by its channel and `interaction_priority` of its routing priority)."""
        return self._sla_target(channel, interaction_priority(routing_priority).value, metric)

    def _sla_target(self, channel: str, priority: str, metric: str) -> bool:
        key = (channel, priority, metric)
        known = self._sla_targets.get(key)
        if known is None:
            policy = self.sla_policies.policy_for(
                Channel(channel) if channel else None, CasePriority(priority)
            )
            known = policy is not None and policy.target(SlaMetric(metric)) is not None
            if len(self._sla_targets) > 10_000:
                self._sla_targets.clear()
            self._sla_targets[key] = known
        return known

    def _dims_id(self, dims: Dims, new: list[tuple[int, Dims]]) -> int:
        known = self._dims.get(dims)
        if known is None:
            known = self._dims[dims] = self._next_dims
            self._next_dims += 1
            new.append((known, dims))
        return known


@dataclass
class _Commit:
    """A prepared batch on its way to the store."""

    batch: _Batch
    source: str
    position: int
    events: int
    newest_ms: int
    started: float


class _Pipeline:
    """The writer thread of `MetricsProjection.pipelined()`: commits prepared batches in order.

    Until a batch has committed, a later batch must not read what it writes from the store:
    `pending` finds such rows among the batches waiting (newest last)."""

    def __init__(self, projection: MetricsProjection, depth: int) -> None:
        self._projection = projection
        self._jobs: queue.Queue[_Commit | None] = queue.Queue(maxsize=max(1, depth))
        self._pending: list[_Commit] = []
        self._lock = threading.Lock()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="metrics-writer", daemon=True)
        self._thread.start()

    def submit(self, job: _Commit) -> None:
        with self._lock:
            self._pending.append(job)
        self._jobs.put(job)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if self.error is None:
                try:
                    self._projection._commit(job)
                except BaseException as error:  # handed to the applying thread by check()
                    self.error = error
            with self._lock:
                self._pending.remove(job)

    def pending(
        self, rows_of: Callable[[_Batch], Mapping[str, _T]], keys: Iterable[str]
    ) -> dict[str, _T]:
        """The newest not yet committed version of each of `keys` that has one."""
        found: dict[str, _T] = {}
        with self._lock:
            if not self._pending:
                return found
            tables = [rows_of(job.batch) for job in self._pending]
        for key in keys:
            for table in reversed(tables):
                row = table.get(key)
                if row is not None:
                    found[key] = row
                    break
        return found

    def check(self) -> None:
        """Raises the error of a failed commit (the projection then reloads its state)."""
        error = self.error
        if error is not None:
            self._projection._forget()
            raise error

    def close(self) -> None:
        """Waits until every batch handed over has committed (or been dropped after an
        error)."""
        self._jobs.put(None)
        self._thread.join()


@dataclass
class ProjectionStats:
    """What the projection did since it was opened (for logs, health and benchmarks)."""

    events: int = 0
    batches: int = 0
    skipped_positions: int = 0
    stale_events: int = 0
    orphan_events: int = 0
    last_batch_s: float = 0.0
    #: newest event time applied (epoch ms)
    last_event_ms: int = 0


# --- one batch ---------------------------------------------------------------------------------


(
    _PREFETCH_NONE,
    _PREFETCH_INTERACTION,
    _PREFETCH_MESSAGE,
    _PREFETCH_LINK,
    _PREFETCH_SLA,
    _PREFETCH_CASE,
    _PREFETCH_SURVEY,
    _PREFETCH_FEEDBACK,
    _PREFETCH_CUSTOMER,
) = range(9)
#: event class → which rows `_Batch.prefetch` loads for it (a dict lookup per event instead of
#: a chain of isinstance checks)
_PREFETCH_KINDS: dict[type[DomainEvent], int] = {}


def _prefetch_kind(cls: type[DomainEvent]) -> int:
    if issubclass(cls, MessageAdded):
        return _PREFETCH_MESSAGE
    if issubclass(cls, InteractionOpened | LinkedToCase):
        return _PREFETCH_LINK
    if issubclass(cls, InteractionEvent):
        return _PREFETCH_INTERACTION
    if issubclass(cls, SlaEvent):
        return _PREFETCH_SLA
    if issubclass(cls, CaseEvent):
        return _PREFETCH_CASE
    if issubclass(cls, SurveyAnswered):
        return _PREFETCH_SURVEY
    if issubclass(cls, FeedbackEvent):
        return _PREFETCH_FEEDBACK
    if issubclass(cls, CustomerEvent):
        return _PREFETCH_CUSTOMER
    return _PREFETCH_NONE


class _Batch:
    """The changes of one batch, gathered in memory and written in one transaction."""

    def __init__(self, projection: MetricsProjection) -> None:
        self.projection = projection
        self.calendar = projection.calendar
        #: (15-minute interval start, dims) → counter deltas
        self.rows: dict[tuple[int, Dims], list[int]] = {}
        #: (15-minute interval start, dims) → {"<histogram>:<bin>": count delta}
        self.histograms: dict[tuple[int, Dims], dict[str, int]] = {}
        self.interactions: dict[str, InteractionFact] = {}
        self.loaded_interactions: dict[str, InteractionFact] = {}
        self.cases: dict[str, CaseFact] = {}
        self.loaded_cases: dict[str, CaseFact] = {}
        self.agents: set[str] = set()
        self.queues: set[str] = set()
        self.surveys: list[tuple[object, ...]] = []
        self.known_surveys: set[str] = set()
        self.feedback: dict[str, FeedbackFact | None] = {}
        self.touched_feedback: set[str] = set()
        self.topics: dict[tuple[int, str], int] = {}
        self.customers: dict[str, CustomerFact | None] = {}
        self.touched_customers: set[str] = set()
        #: SLA events of interactions outside a case: (id, metric, cycle) → row
        self.interaction_sla: dict[tuple[str, str, int], list[object]] = {}

    # --- loading ----------------------------------------------------------------------------

    def prefetch(self, events: Sequence[DomainEvent]) -> None:
        """Loads the fact rows the batch's events touch that are not in memory."""
        projection = self.projection
        interaction_ids: set[str] = set()
        case_ids: set[str] = set()
        survey_ids: set[str] = set()
        feedback_ids: set[str] = set()
        customer_ids: set[str] = set()
        messages: list[str] = []
        kinds = _PREFETCH_KINDS
        for event in events:
            kind = kinds.get(type(event))
            if kind is None:
                kind = kinds[type(event)] = _prefetch_kind(type(event))
            if kind == _PREFETCH_INTERACTION:
                interaction_ids.add(_key(event.originator_id))
            elif kind == _PREFETCH_MESSAGE:
                interaction_ids.add(_key(event.originator_id))
                if cast(MessageAdded, event).entry.public:
                    messages.append(_key(event.originator_id))
            elif kind == _PREFETCH_LINK:
                interaction_ids.add(_key(event.originator_id))
                case_id = cast(InteractionOpened | LinkedToCase, event).case_id
                if case_id is not None:
                    case_ids.add(_key(case_id))
            elif kind == _PREFETCH_SLA:
                sla_case_id = cast(SlaEvent, event).case_id
                if sla_case_id is not None:  # None: an interaction outside a case
                    case_ids.add(_key(sla_case_id))
            elif kind == _PREFETCH_CASE:
                case_ids.add(_key(event.originator_id))
            elif kind == _PREFETCH_SURVEY:
                survey_ids.add(_key(event.originator_id))
                interaction_id = cast(SurveyAnswered, event).interaction_id
                if interaction_id is not None:
                    interaction_ids.add(_key(interaction_id))
            elif kind == _PREFETCH_FEEDBACK:
                feedback_ids.add(_key(event.originator_id))
            elif kind == _PREFETCH_CUSTOMER:
                customer_ids.add(_key(event.originator_id))
        pipeline = projection._pipeline
        cached = projection._interactions
        missing = [key for key in interaction_ids if key not in cached]
        if pipeline is not None and missing:
            cached.update(pipeline.pending(lambda b: b.interactions, missing))
            missing = [key for key in missing if key not in cached]
        for row in self._select("metrics_interactions", "id, fact", missing):
            cached[str(row[0])] = _interaction_decoder.decode(bytes(row[1]))
        for key in messages:  # their case's next-response clocks
            interaction = cached.get(key)
            if interaction is not None and interaction.case_id:
                case_ids.add(interaction.case_id)
        cached_cases = projection._cases
        missing = [key for key in case_ids if key not in cached_cases]
        if pipeline is not None and missing:
            cached_cases.update(pipeline.pending(lambda b: b.cases, missing))
            missing = [key for key in missing if key not in cached_cases]
        for row in self._select("metrics_cases", "id, fact", missing):
            cached_cases[str(row[0])] = _case_decoder.decode(bytes(row[1]))
        self.feedback = dict.fromkeys(feedback_ids)
        self.customers = dict.fromkeys(customer_ids)
        if pipeline is not None:
            self.known_surveys = set(pipeline.pending(lambda b: b.written_surveys, survey_ids))
            self.feedback.update(pipeline.pending(lambda b: b.written_feedback, feedback_ids))
            self.customers.update(pipeline.pending(lambda b: b.written_customers, customer_ids))
        self.known_surveys.update(
            str(row[0])
            for row in self._select(
                "metrics_surveys",
                "id",
                [key for key in survey_ids if key not in self.known_surveys],
            )
        )
        for row in self._select(
            "metrics_feedback", "id, fact", [key for key, f in self.feedback.items() if f is None]
        ):
            self.feedback[str(row[0])] = msgspec.msgpack.decode(bytes(row[1]), type=FeedbackFact)
        for row in self._select(
            "metrics_customers",
            "id, fact",
            [key for key, c in self.customers.items() if c is None],
        ):
            self.customers[str(row[0])] = msgspec.msgpack.decode(bytes(row[1]), type=CustomerFact)

    def _select(self, table: str, columns: str, ids: list[str]) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = []
        store = self.projection.store
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            marks = ", ".join("?" * len(chunk))
            rows.extend(store.query(f"SELECT {columns} FROM {table} WHERE id IN ({marks})", chunk))
        return rows

    def interaction(self, interaction_id: str) -> InteractionFact | None:
        """The fact to change (its old contribution taken back on first touch)."""
        fact = self.interactions.get(interaction_id)
        if fact is not None:
            return fact
        fact = self.projection._interactions.get(interaction_id)
        if fact is None:
            return None
        self.loaded_interactions[interaction_id] = fact
        self.interactions[interaction_id] = fact
        self.contribute(fact, -1)
        return fact

    def peek_interaction(self, interaction_id: str) -> InteractionFact | None:
        return self.interactions.get(interaction_id) or self.projection._interactions.get(
            interaction_id
        )

    def case(self, case_id: str) -> CaseFact | None:
        fact = self.cases.get(case_id)
        if fact is None:
            fact = self.projection._cases.get(case_id)
            if fact is not None:
                self.cases[case_id] = fact
        return fact

    # --- counting -----------------------------------------------------------------------------

    def _row(self, at_ms: int, dims: Dims) -> list[int]:
        """The counters of the 15-minute interval holding `at_ms` (days are summed from them
        when the batch is written)."""
        key = (at_ms - at_ms % INTERVAL_MS, dims)
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = [0] * _N
        return row

    def _histogram(self, at_ms: int, dims: Dims, histogram: int, value_ms: int, sign: int) -> None:
        key = (at_ms - at_ms % INTERVAL_MS, dims)
        bins = self.histograms.get(key)
        if bins is None:
            bins = self.histograms[key] = {}
        name = f"{histogram}:{kpis.bin_of(value_ms)}"
        bins[name] = bins.get(name, 0) + sign

    def contribute(self, fact: InteractionFact, sign: int) -> None:
        """Adds (sign 1) or takes back (sign -1) everything an interaction fact counts."""
        reason = fact.reason
        base: Dims = (fact.channel, fact.first_queue, fact.first_team, fact.first_agent, reason)
        self._row(fact.created_ms, base)[_CREATED] += sign
        queued = fact.queued_ms
        if queued is not None:
            row = self._row(queued, base)
            row[_OFFERED] += sign
            if fact.answered_ms is not None:
                wait = max(0, fact.answered_ms - queued)
                row[_ANSWERED] += sign
                row[_ANSWER_WAIT] += sign * wait
                self._histogram(queued, base, _H_ANSWER, wait, sign)
            elif fact.abandoned_ms is not None:
                wait = fact.abandon_wait_ms
                row[_ABANDONED] += sign
                row[_ABANDON_WAIT] += sign * wait
                self._histogram(queued, base, _H_ABANDON, wait, sign)
        for segment in fact.segments:
            end = segment.end_ms
            if end is None:
                continue
            dims: Dims = (fact.channel, segment.queue, segment.team, segment.agent, reason)
            handle, talk, hold, acw = segment.durations()
            row = self._row(end, dims)
            row[_HANDLED] += sign
            row[_HANDLE] += sign * handle
            row[_TALK] += sign * talk
            row[_HOLD] += sign * hold
            row[_ACW] += sign * acw
            if segment.transferred:
                row[_TRANSFERRED] += sign
            if segment.escalated:
                row[_ESCALATED] += sign
            self._histogram(end, dims, _H_HANDLE, handle, sign)
        responded = fact.first_response_ms
        if responded is not None:
            dims = (
                fact.channel,
                fact.first_queue,
                fact.first_response_team,
                fact.first_response_agent,
                reason,
            )
            elapsed = max(0, responded - fact.created_ms)
            row = self._row(responded, dims)
            row[_FIRST_RESPONSES] += sign
            row[_FIRST_RESPONSE] += sign * elapsed
            self._histogram(responded, dims, _H_FIRST_RESPONSE, elapsed, sign)

    def agent_time(self, agent: AgentFact, until_ms: int) -> None:
        """Counts the agent's time from its last change to `until_ms` in its state then."""
        start = agent.since_ms
        if until_ms <= start:
            return
        agent.since_ms = until_ms
        presence = agent.presence
        if presence == Presence.OFFLINE:
            return
        items: dict[str, int] = {}
        for channel in agent.work.values():
            items[channel] = items.get(channel, 0) + 1
        has_work = bool(items)
        in_acw = presence == Presence.AFTER_CALL_WORK
        occupied = has_work or in_acw
        idle = presence == Presence.AVAILABLE and not has_work
        if has_work:
            load = kpis.agent_load(
                agent.capacity, items, exclusive=any(channel in _EXCLUSIVE for channel in items)
            )
        else:
            load = 1.0 if in_acw else 0.0
        dims: Dims = ("", "", agent.team, agent.id, "")
        moment = start
        while moment < until_ms:
            piece_end = min(until_ms, moment - moment % INTERVAL_MS + INTERVAL_MS)
            length = piece_end - moment
            row = self._row(moment, dims)
            row[_LOGGED_IN] += length
            if occupied:
                row[_OCCUPIED] += length
                row[_WEIGHTED] += round(load * length)
            if idle:
                row[_IDLE] += length
            moment = piece_end

    # --- writing ------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Turns the batch's changes into the rows to write (`write`), encoding every fact as it
        is now: after this the facts may change again (the next batch) without changing what
        this batch writes."""
        for fact in self.interactions.values():
            self.contribute(fact, 1)
        projection = self.projection
        new_dims: list[tuple[int, Dims]] = []
        day_of = self.calendar.day_start
        days: dict[tuple[int, Dims], Sequence[int]] = {}
        day_bins: dict[tuple[int, Dims], dict[str, int]] = {}
        bucket_rows: list[tuple[object, ...]] = []
        ids: dict[Dims, int] = {}
        known = projection._dims
        rows, histograms = self.rows, self.histograms
        for key in rows.keys() | histograms.keys():
            counters: Sequence[int] | None = rows.get(key)
            counted = counters is not None and any(counters)
            bins = histograms.get(key)
            if bins:
                bins = {name: count for name, count in bins.items() if count}
            if not counted and not bins:
                continue
            if counters is None:
                counters = _NO_COUNTS
            quarter, dims = key
            number = ids.get(dims)
            if number is None:
                number = ids[dims] = known.get(dims) or projection._dims_id(dims, new_dims)
            bucket_rows.append((GRAIN_15M, quarter, number, *counters, _bins_text(bins)))
            day = (day_of(quarter), dims)
            total = days.get(day)
            days[day] = counters if total is None else list(map(add, total, counters))
            if bins:
                merged = day_bins.get(day)
                if merged is None:
                    day_bins[day] = dict(bins)
                else:
                    for name, count in bins.items():
                        merged[name] = merged.get(name, 0) + count
        for day, counters in days.items():
            bins = day_bins.get(day)
            if bins:
                bins = {name: count for name, count in bins.items() if count}
            if any(counters) or bins:
                bucket_rows.append((GRAIN_DAY, day[0], ids[day[1]], *counters, _bins_text(bins)))
        feedback = [f for f in (self.feedback[key] for key in self.touched_feedback) if f]
        customers = [c for c in (self.customers[key] for key in self.touched_customers) if c]
        # What a later batch finds here until this one has committed (`_Pipeline.pending`).
        self.written_surveys: dict[str, bool] = {str(row[0]): True for row in self.surveys}
        self.written_feedback = {f.id: f for f in feedback}
        self.written_customers = {c.id: c for c in customers}
        self.new_dims = new_dims
        self.writes: list[tuple[_Upsert, list[tuple[object, ...]]]] = [
            (_BUCKET_UPSERT, bucket_rows),
            (_INTERACTION_UPSERT, [_interaction_row(f) for f in self.interactions.values()]),
            (_CASE_UPSERT, [_case_row(f) for f in self.cases.values()]),
            (_SLA_UPSERT, [row for f in self.cases.values() for row in self._sla_rows(f)]),
            *self._interaction_sla_rows(),
            (
                _BLOB_UPSERT["metrics_agents"],
                [_blob_row(projection._agents[key]) for key in self.agents],
            ),
            (
                _BLOB_UPSERT["metrics_queues"],
                [_blob_row(projection._queues[key]) for key in self.queues],
            ),
            (_SURVEY_INSERT, self.surveys),
            (_BLOB_UPSERT["metrics_feedback"], [_blob_row(f) for f in feedback]),
            (
                _TOPIC_UPSERT,
                [(day, topic, count) for (day, topic), count in self.topics.items() if count],
            ),
            (_BLOB_UPSERT["metrics_customers"], [_blob_row(c) for c in customers]),
        ]
        self.customer_ids = [(c.id,) for c in customers]
        self.spans = [(c.id, start, until) for c in customers for start, until in c.spans]

    def _interaction_sla_rows(self) -> list[tuple[_Upsert, list[tuple[object, ...]]]]:
        """The SLA events of interactions outside a case, and their met next responses (one
        row per clock: breached over met over at risk, as `_SLA_MERGE` merges): the rows of
        clocks only SLA events spoke of, and those of met clocks, which carry the channel and
        priority of their interaction (the rows must not depend on how the events were
        batched)."""
        rows = self.interaction_sla
        met: dict[tuple[str, str, int], list[object]] = {}
        for fact in self.interactions.values():
            # (also once it is linked to a case: the query leaves those out, and the rows
            # stay the same however the events were batched)
            if not fact.next_met:
                continue
            for cycle, met_ms in fact.next_met:
                key = (fact.id, SlaMetric.NEXT_RESPONSE.value, cycle)
                row = rows.get(key)
                if row is None:
                    row = [fact.id, key[1], cycle, _SUBJECT_INTERACTION, _AT_RISK, None, 0]
                    row += ["", ""]
                if row[4] != _BREACHED:
                    row[4], row[5] = _MET, met_ms
                row[7] = fact.channel
                row[8] = interaction_priority(fact.routing_priority).value
                met[key] = row
        return [
            (_SLA_EVENT_UPSERT, [tuple(row) for key, row in rows.items() if key not in met]),
            (_SLA_MET_UPSERT, [tuple(row) for row in met.values()]),
        ]

    def _sla_rows(self, case: CaseFact) -> Iterator[tuple[object, ...]]:
        """One row per SLA clock: its outcome and when it was decided (met: when the target was
        reached, breached: the deadline), or still running / stopped. Whether a met clock had
        a target at all is the policies' answer at query time (`_KpiReader._sla`)."""
        for clock in case.clocks:
            decided: int | None = None
            outcome = clock.state
            if clock.breached_due_ms is not None:
                outcome, decided = _BREACHED, clock.breached_due_ms
            elif clock.state == _MET:
                decided = clock.ended_ms
            yield (
                case.id,
                clock.metric,
                clock.cycle,
                _SUBJECT_CASE,
                outcome,
                decided,
                int(clock.at_risk),
                case.channel,
                case.priority,
            )

    def write(self, cursor: Cursor) -> None:
        """Writes what `prepare` gathered, inside the caller's transaction."""
        if self.new_dims:
            cursor.executemany(
                "INSERT INTO metrics_dims (id, channel, queue, team, agent, reason) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(number, *dims) for number, dims in self.new_dims],
            )
        dialect = self.projection.store.dialect
        for upsert, rows in self.writes:
            upsert.run(cursor, rows, dialect)
        if self.customer_ids:
            cursor.executemany(
                "DELETE FROM metrics_customer_spans WHERE customer_id = ?", self.customer_ids
            )
        if self.spans:
            cursor.executemany(
                "INSERT INTO metrics_customer_spans (customer_id, active_from_ms, "
                "active_until_ms) VALUES (?, ?, ?)",
                self.spans,
            )

    def committed(self) -> None:
        """After the commit: the in-memory caches take the batch's facts."""
        projection = self.projection
        cache = projection._interactions
        for key, fact in self.interactions.items():
            cache.pop(key, None)
            cache[key] = fact
        _trim(cache)
        cases = projection._cases
        for key, case in self.cases.items():
            cases.pop(key, None)
            cases[key] = case
        _trim(cases)


_NO_COUNTS = (0,) * _N
_json_encoder = msgspec.json.Encoder()
_bins_decoder = msgspec.json.Decoder(dict[str, int])


def _bins_text(bins: Mapping[str, int] | None) -> str:
    """A bucket row's histograms column: {"<histogram number>:<bin>": count}."""
    return _json_encoder.encode(bins).decode() if bins else "{}"


def _trim(cache: dict[str, Any]) -> None:
    if len(cache) > _CACHE_LIMIT:
        for key in list(cache)[: len(cache) - _CACHE_LIMIT // 2]:
            del cache[key]


def _interaction_row(fact: InteractionFact) -> tuple[object, ...]:
    return (
        fact.id,
        fact.version,
        fact.customer_id,
        fact.case_id,
        fact.channel,
        fact.direction,
        int(fact.bot),
        fact.reason,
        fact.first_queue,
        fact.queue,
        fact.status,
        fact.created_ms,
        fact.queued_ms,
        fact.waiting_since_ms,
        fact.answered_ms,
        fact.first_agent,
        fact.first_team,
        len(fact.agents),
        fact.abandoned_ms,
        fact.first_response_ms,
        fact.first_resolved_ms,
        fact.resolved_ms,
        fact.closed_ms,
        fact.resolution_agents,
        fact.reopened_ms,
        fact.contained_ms,
        fact.handed_off_ms,
        fact.transfers,
        fact.escalations,
        fact.reopens,
        fact.handle_ms(),
        fact.routing_priority,
        _encoder.encode(fact),
    )


def _case_row(fact: CaseFact) -> tuple[object, ...]:
    return (
        fact.id,
        fact.version,
        fact.customer_id,
        fact.reason,
        fact.status,
        fact.created_ms,
        fact.first_interaction,
        fact.first_solved_ms,
        fact.solved_ms,
        fact.closed_ms,
        fact.reopens,
        fact.reopened_ms,
        _encoder.encode(fact),
    )


def _blob_row(fact: AgentFact | QueueFact | FeedbackFact | CustomerFact) -> tuple[object, ...]:
    return (fact.id, fact.version, _encoder.encode(fact))


# --- what each event does ------------------------------------------------------------------

Handler = Callable[[_Batch, Any], None]


def _opened(batch: _Batch, event: InteractionOpened) -> None:
    key = _key(event.originator_id)
    if batch.peek_interaction(key) is not None:
        batch.projection.stats.stale_events += 1
        return
    customer = event.customer_id
    batch.interactions[key] = InteractionFact(
        id=key,
        version=event.originator_version,
        channel=event.channel._value_,
        direction=event.direction._value_,
        bot=event.handled_by_bot,
        created_ms=_ms(event.timestamp),
        status=event.status._value_,
        case_id=_id(event.case_id),
        customer_id="" if customer is None else _key(customer),
        reason=event.contact_reason or "",
    )


def _touch(batch: _Batch, event: InteractionEvent) -> InteractionFact | None:
    """The fact an event of an existing interaction changes, with the fields every such event
    carries applied; None when the event was seen already or its interaction never was."""
    key = _key(event.originator_id)
    fact = batch.interactions.get(key)
    if fact is None:
        fact = batch.interaction(key)
        if fact is None:
            batch.projection.stats.orphan_events += 1
            return None
    if event.originator_version <= fact.version:
        batch.projection.stats.stale_events += 1
        return None
    fact.version = event.originator_version
    fact.status = event.status._value_
    customer = event.customer_id
    fact.customer_id = "" if customer is None else _key(customer)
    fact.reason = event.contact_reason or ""
    fact.queue = event.queue or ""
    return fact


def _team_of(batch: _Batch, agent_id: str) -> str:
    agent = batch.projection._agents.get(agent_id)
    return agent.team if agent is not None else ""


def _common(batch: _Batch, event: InteractionEvent) -> None:
    """Opened elsewhere, identified, offered, declined, put on hold: the common fields."""
    _touch(batch, event)


def _linked(batch: _Batch, event: LinkedToCase) -> None:
    fact = _touch(batch, event)
    if fact is not None:
        fact.case_id = _key(event.case_id)


def _queued(batch: _Batch, event: Queued | HandedOffToHuman) -> None:
    fact = _touch(batch, event)
    if fact is None:
        return
    if fact.queued_ms is None:
        fact.queued_ms = _ms(event.queued_at)
        fact.first_queue = fact.queue
    fact.waiting_since_ms = _ms(event.waiting_since)
    fact.routing_priority = event.requirements.priority
    if isinstance(event, HandedOffToHuman):
        fact.handed_off_ms = _ms(event.timestamp)


def _answered(batch: _Batch, event: Answered) -> None:
    fact = _touch(batch, event)
    if fact is None:
        return
    at = _ms(event.timestamp)
    agent = _id(event.agent_id)
    team = _team_of(batch, agent)
    if fact.answered_ms is None:
        fact.answered_ms = at
        fact.first_agent = agent
        fact.first_team = team
    if agent not in fact.agents:
        fact.agents.append(agent)
    segment = fact.open_segment()
    if segment is not None:  # answered again without a recorded end: close it here
        segment.end_ms = at
    fact.segments.append(Segment(agent=agent, team=team, queue=fact.queue, start_ms=at))
    fact.waiting_since_ms = None


def _resumed(batch: _Batch, event: Resumed) -> None:
    fact = _touch(batch, event)
    segment = fact.open_segment() if fact is not None else None
    if segment is not None:
        segment.hold_ms += round(event.held_seconds * 1000)


def _message(batch: _Batch, event: MessageAdded) -> None:
    fact = _touch(batch, event)
    if fact is None:
        return
    if event.first_agent_response and fact.first_response_ms is None:
        agent = _id(event.agent_id)
        fact.first_response_ms = _ms(event.timestamp)
        fact.first_response_agent = agent
        fact.first_response_team = _team_of(batch, agent)
    if fact.case_id:
        _next_response(batch, fact, event)
    else:
        _own_next_response(fact, event)


def _own_next_response(fact: InteractionFact, event: MessageAdded) -> None:
    """Next-response waits of an interaction outside a case (as a case's, `_next_response`):
    a public customer message after the first agent reply starts one, the agent's next
    public reply meets it."""
    entry = event.entry
    if not entry.public or fact.first_response_ms is None:
        return
    at = _ms(event.timestamp)
    if entry.author_kind is AuthorKind.AGENT:
        if fact.next_waiting_ms is not None:
            fact.next_met.append((fact.next_cycles, at))
            fact.next_waiting_ms = None
    elif (
        entry.author_kind is AuthorKind.CUSTOMER
        and fact.next_waiting_ms is None
        and fact.status not in _FINISHED
    ):
        fact.next_cycles += 1
        fact.next_waiting_ms = at


def _transferred(batch: _Batch, event: Transferred) -> None:
    fact = _touch(batch, event)
    if fact is None:
        return
    fact.transfers += 1
    segment = fact.open_segment()
    if segment is not None:
        segment.hold_ms += round(event.held_seconds * 1000)
        segment.end_ms = _ms(event.timestamp)
        segment.transferred = True
    fact.waiting_since_ms = _ms(event.waiting_since)
    # A transfer may route it at another priority: the SLA scheduler then chooses the policy
    # again (`sla_scheduler`), so the policy its clocks count under changes here too.
    fact.routing_priority = event.requirements.priority


def _escalated(batch: _Batch, event: Escalated) -> None:
    fact = _touch(batch, event)
    if fact is None:
        return
    fact.escalations += 1
    segment = fact.open_segment()
    if segment is not None:
        segment.escalated = True


def _wrap_up(batch: _Batch, event: WrapUpStarted) -> None:
    fact = _touch(batch, event)
    segment = fact.open_segment() if fact is not None else None
    if segment is not None:
        segment.hold_ms += round(event.held_seconds * 1000)
        segment.talk_end_ms = _ms(event.timestamp)


def _resolved(batch: _Batch, event: Resolved) -> None:
    fact = _touch(batch, event)
    if fact is None:
        return
    at = _ms(event.timestamp)
    segment = fact.open_segment()
    if segment is not None:
        segment.end_ms = at
    fact.resolved_ms = at
    if fact.first_resolved_ms is None:
        fact.first_resolved_ms = at
        fact.resolution_agents = len(fact.agents)
    fact.resolved_agent = _id(event.agent_id)


def _reopened(batch: _Batch, event: Reopened) -> None:
    fact = _touch(batch, event)
    if fact is None:
        return
    fact.reopens += 1
    if fact.reopened_ms is None:
        fact.reopened_ms = _ms(event.timestamp)
    fact.resolved_ms = None
    fact.waiting_since_ms = _ms(event.waiting_since)
    fact.routing_priority = event.requirements.priority


def _closed(batch: _Batch, event: Closed) -> None:
    fact = _touch(batch, event)
    if fact is not None:
        fact.closed_ms = _ms(event.timestamp)


def _abandoned(batch: _Batch, event: Abandoned) -> None:
    fact = _touch(batch, event)
    if fact is None:
        return
    fact.abandoned_ms = _ms(event.timestamp)
    fact.abandon_wait_ms = max(0, round(event.waited_seconds * 1000))
    fact.waiting_since_ms = None


def _contained(batch: _Batch, event: BotContained) -> None:
    fact = _touch(batch, event)
    if fact is not None:
        fact.contained_ms = _ms(event.timestamp)


_INTERACTION_HANDLERS: dict[type[DomainEvent], Callable[[_Batch, Any], None]] = {
    InteractionOpened: _opened,
    LinkedToCase: _linked,
    Queued: _queued,
    HandedOffToHuman: _queued,
    Answered: _answered,
    Resumed: _resumed,
    MessageAdded: _message,
    Transferred: _transferred,
    Escalated: _escalated,
    WrapUpStarted: _wrap_up,
    Resolved: _resolved,
    Reopened: _reopened,
    Closed: _closed,
    Abandoned: _abandoned,
    BotContained: _contained,
}


def _on_case(batch: _Batch, event: CaseEvent) -> None:
    key = _key(event.originator_id)
    at = _ms(event.timestamp)
    if isinstance(event, CaseOpened):
        if batch.case(key) is not None:
            batch.projection.stats.stale_events += 1
            return
        fact = CaseFact(id=key, version=0, created_ms=at, status=event.status.value)
        fact.channel = event.channel.value if event.channel is not None else ""
        fact.clocks = [
            SlaClockFact(metric=SlaMetric.FIRST_RESPONSE.value, cycle=1, started_ms=at),
            SlaClockFact(metric=SlaMetric.RESOLUTION.value, cycle=1, started_ms=at),
        ]
        batch.cases[key] = fact
    else:
        found = batch.case(key)
        if found is None:
            batch.projection.stats.orphan_events += 1
            return
        if event.originator_version <= found.version:
            batch.projection.stats.stale_events += 1
            return
        fact = found
    fact.version = event.originator_version
    fact.status = event.status.value
    fact.customer_id = _id(event.customer_id)
    fact.reason = event.reason or ""
    fact.priority = event.priority.value
    match event:
        case CaseInteractionLinked():
            fact.interactions += 1
            if not fact.first_interaction:
                fact.first_interaction = _key(event.interaction_id)
            if not fact.channel and event.channel is not None:
                fact.channel = event.channel.value
        case CaseFirstResponded():
            fact.first_response_ms = at
            _end_clocks(fact, at, met=(SlaMetric.FIRST_RESPONSE.value,))
        case CaseSolved():
            fact.solved_ms = at
            if fact.first_solved_ms is None:
                fact.first_solved_ms = at
            # Solving meets the resolution target and stops the response clocks.
            _end_clocks(fact, at, met=(SlaMetric.RESOLUTION.value,), stop_others=True)
        case CaseReopened():
            fact.reopens += 1
            if fact.reopened_ms is None:
                fact.reopened_ms = at
            fact.solved_ms = None
            for clock in fact.clocks:  # the resolution clock runs on
                if clock.metric == SlaMetric.RESOLUTION.value and clock.state == _MET:
                    clock.state = _RUNNING
                    clock.ended_ms = None
        case CaseClosed():
            fact.closed_ms = at
            _end_clocks(fact, at, met=(), stop_others=True)
        case _:
            pass


def _end_clocks(
    fact: CaseFact, at_ms: int, *, met: tuple[str, ...], stop_others: bool = False
) -> None:
    """Meets the running clocks of the `met` metrics (and stops the other running ones)."""
    for clock in fact.clocks:
        if clock.state != _RUNNING:
            continue
        if clock.metric in met:
            clock.state = _MET
            clock.ended_ms = at_ms
        elif stop_others:
            clock.state = _STOPPED
            clock.ended_ms = at_ms


def _next_response(batch: _Batch, interaction: InteractionFact, event: MessageAdded) -> None:
    """A public customer message after the first reply starts a next-response wait (unless one
    is waiting or the case is solved or closed); the agent's next public reply meets it."""
    entry = event.entry
    if not entry.public or not interaction.case_id:
        return
    case = batch.case(interaction.case_id)
    if case is None or case.first_response_ms is None:
        return  # before the first reply, the first-response clock is what runs
    waiting = [
        clock
        for clock in case.clocks
        if clock.metric == SlaMetric.NEXT_RESPONSE.value and clock.state == _RUNNING
    ]
    at = _ms(event.timestamp)
    if entry.author_kind is AuthorKind.AGENT:
        for clock in waiting:
            clock.state = _MET
            clock.ended_ms = at
        return
    if (
        entry.author_kind is not AuthorKind.CUSTOMER
        or waiting
        or case.status in (CaseStatus.SOLVED.value, CaseStatus.CLOSED.value)
    ):
        return
    case.next_cycles += 1
    if case.clock(SlaMetric.NEXT_RESPONSE.value, case.next_cycles) is None:
        # (an SLA event of this cycle may have come first: one clock, one row, per cycle)
        case.clocks.append(
            SlaClockFact(
                metric=SlaMetric.NEXT_RESPONSE.value, cycle=case.next_cycles, started_ms=at
            )
        )


def _on_interaction_sla(batch: _Batch, event: SlaEvent) -> None:
    """An SLA event of an interaction outside a case: a row of its own (merged with what the
    store has: a breach stays a breach). Met clocks of such interactions are read from the
    interaction fact table when KPIs are asked for."""
    if event.interaction_id is None:
        batch.projection.stats.orphan_events += 1
        return
    metric = event.metric.value
    key = (_key(event.interaction_id), metric, event.cycle)
    row = batch.interaction_sla.get(key)
    if row is None:
        channel = event.channel.value if event.channel is not None else ""
        row = batch.interaction_sla[key] = [
            key[0],
            metric,
            event.cycle,
            _SUBJECT_INTERACTION,
            _AT_RISK,
            None,
            0,
            channel,
            event.priority.value,
        ]
    if isinstance(event, SlaBreached):
        row[4] = _BREACHED
        row[5] = _ms(event.due_at)
    else:
        row[6] = 1


def _on_sla(batch: _Batch, event: SlaEvent) -> None:
    """An at-risk or breached event of a case's SLA clock (computed in business hours by the
    interaction service): recorded on the clock, once however often it is delivered."""
    if event.case_id is None:
        _on_interaction_sla(batch, event)
        return
    case = batch.case(_key(event.case_id))
    if case is None:
        batch.projection.stats.orphan_events += 1
        return
    metric = event.metric.value
    clock = case.clock(metric, event.cycle)
    if clock is None:  # a clock these events know better than the case's events did
        clock = SlaClockFact(metric=metric, cycle=event.cycle, started_ms=_ms(event.started_at))
        case.clocks.append(clock)
    if isinstance(event, SlaBreached):
        clock.breached_due_ms = _ms(event.due_at)
    else:
        clock.at_risk = True


def _on_agent(batch: _Batch, event: AgentEvent) -> None:
    key = _key(event.originator_id)
    agents = batch.projection._agents
    at = _ms(event.timestamp)
    if isinstance(event, AgentRegistered):
        if key in agents:
            batch.projection.stats.stale_events += 1
            return
        agents[key] = AgentFact(
            id=key,
            version=event.originator_version,
            name=event.display_name,
            team=event.teams[0] if event.teams else "",
            capacity={
                channel.value: event.capacity.limit(channel)
                for channel in event.capacity.channels()
            },
            presence=Presence.OFFLINE.value,
            since_ms=at,
        )
        batch.agents.add(key)
        return
    agent = agents.get(key)
    if agent is None:
        batch.projection.stats.orphan_events += 1
        return
    if event.originator_version <= agent.version:
        batch.projection.stats.stale_events += 1
        return
    agent.version = event.originator_version
    batch.agents.add(key)
    match event:
        case AgentPresenceChanged():
            batch.agent_time(agent, at)
            agent.presence = event.to_presence._value_
        case AgentWorkAssigned():
            batch.agent_time(agent, at)
            agent.work[_key(event.work_id)] = event.channel._value_
        case AgentWorkReleased():
            batch.agent_time(agent, at)
            agent.work.pop(_key(event.work_id), None)
        case AgentCapacityChanged():
            batch.agent_time(agent, at)
            agent.capacity = {
                channel.value: event.capacity.limit(channel)
                for channel in event.capacity.channels()
            }
        case AgentProfileUpdated():
            batch.agent_time(agent, at)
            agent.name = event.display_name
            agent.team = event.teams[0] if event.teams else ""
        case _:
            pass


def _on_queue(batch: _Batch, event: QueueEvent) -> None:
    key = str(event.originator_id)
    queues = batch.projection._queues
    if isinstance(event, QueueCreated):
        if key in queues:
            return
        queues[key] = QueueFact(
            id=key,
            version=event.originator_version,
            name=event.name,
            threshold_s=event.service_level.threshold_seconds,
            fraction=event.service_level.fraction,
        )
        batch.queues.add(key)
        return
    queue = queues.get(key)
    if queue is None or event.originator_version <= queue.version:
        return
    queue.version = event.originator_version
    batch.queues.add(key)
    if isinstance(event, QueueUpdated) and event.service_level is not None:
        queue.threshold_s = event.service_level.threshold_seconds
        queue.fraction = event.service_level.fraction
    elif isinstance(event, QueueArchived):
        queue.archived = True


def _on_survey(batch: _Batch, event: SurveyAnswered) -> None:
    key = _key(event.originator_id)
    if key in batch.known_surveys:
        batch.projection.stats.stale_events += 1
        return
    batch.known_surveys.add(key)
    interaction = (
        batch.peek_interaction(_key(event.interaction_id))
        if event.interaction_id is not None
        else None
    )
    channel = event.channel.value if event.channel is not None else ""
    if not channel and interaction is not None:
        channel = interaction.channel
    agent = _id(event.agent_id)
    dims: Dims = (
        channel,
        interaction.first_queue if interaction is not None else "",
        _team_of(batch, agent),
        agent,
        interaction.reason if interaction is not None else "",
    )
    at = _ms(event.timestamp)
    score = event.score
    row = batch._row(at, dims)
    if event.kind is SurveyKind.CSAT:
        row[_CSAT_RESPONSES] += 1
        row[_CSAT_SATISFIED] += int(score >= 4)
    elif event.kind is SurveyKind.NPS:
        row[_NPS_RESPONSES] += 1
        row[_NPS_PROMOTERS] += int(score >= 9)
        row[_NPS_DETRACTORS] += int(score <= 6)
    else:
        row[_CES_RESPONSES] += 1
        row[_CES_TOTAL] += score
    batch.surveys.append(
        (key, event.kind.value, score, at, _id(event.interaction_id), agent, channel)
    )


def _on_feedback(batch: _Batch, event: FeedbackEvent) -> None:
    key = _key(event.originator_id)
    fact = batch.feedback.get(key)
    if fact is not None and event.originator_version <= fact.version:
        batch.projection.stats.stale_events += 1
        return
    if fact is None:
        fact = FeedbackFact(
            id=key,
            version=0,
            day_ms=batch.calendar.day_start(_ms(event.timestamp)),
            topics=[],
            category="",
            sentiment="",
        )
    for topic in fact.topics:
        batch.topics[(fact.day_ms, topic)] = batch.topics.get((fact.day_ms, topic), 0) - 1
    fact.version = event.originator_version
    fact.topics = list(event.topics)
    fact.category = event.category.value
    fact.sentiment = event.sentiment.value
    for topic in fact.topics:
        batch.topics[(fact.day_ms, topic)] = batch.topics.get((fact.day_ms, topic), 0) + 1
    batch.feedback[key] = fact
    batch.touched_feedback.add(key)


def _on_customer(batch: _Batch, event: CustomerEvent) -> None:
    key = _key(event.originator_id)
    fact = batch.customers.get(key)
    at = _ms(event.timestamp)
    if isinstance(event, CustomerRegistered):
        if fact is not None:
            batch.projection.stats.stale_events += 1
            return
        fact = CustomerFact(
            id=key, version=event.originator_version, lifecycle=event.lifecycle.value
        )
        if event.lifecycle is Lifecycle.ACTIVE:
            fact.activate(at)
        batch.customers[key] = fact
        batch.touched_customers.add(key)
        return
    if fact is None:
        batch.projection.stats.orphan_events += 1
        return
    if event.originator_version <= fact.version:
        batch.projection.stats.stale_events += 1
        return
    fact.version = event.originator_version
    batch.touched_customers.add(key)
    if isinstance(event, LifecycleChanged):
        fact.lifecycle = event.lifecycle.value
        if event.lifecycle is Lifecycle.ACTIVE and not fact.merged:
            fact.activate(at)
        else:
            fact.deactivate(at)
    elif isinstance(event, CustomerMergedInto):
        # The survivor carries on as this customer: the duplicate leaves the population.
        fact.merged = True
        fact.spans = []


def _handlers() -> dict[type[DomainEvent], Handler]:
    """Which function projects which event class (every class the projection reads)."""
    table: dict[type[DomainEvent], Handler] = {}
    for cls in projected_event_classes():
        if issubclass(cls, InteractionEvent):
            table[cls] = _INTERACTION_HANDLERS.get(cls, _common)
        elif issubclass(cls, CaseEvent):
            table[cls] = _on_case
        elif issubclass(cls, AgentEvent):
            table[cls] = _on_agent
        elif issubclass(cls, QueueEvent):
            table[cls] = _on_queue
        elif cls is SurveyAnswered:
            table[cls] = _on_survey
        elif issubclass(cls, FeedbackEvent):
            table[cls] = _on_feedback
        elif issubclass(cls, CustomerEvent):
            table[cls] = _on_customer
        elif issubclass(cls, SlaEvent):
            table[cls] = _on_sla
    return table


def _subclasses(base: type[DomainEvent]) -> list[type[DomainEvent]]:
    found: list[type[DomainEvent]] = []
    for cls in base.__subclasses__():
        if not cls.__name__.startswith("_"):
            found.append(cls)
        found.extend(_subclasses(cls))
    return found


def projected_event_classes() -> list[type[DomainEvent]]:
    """The event classes the metrics projection reads (decoded from the bus by type)."""
    classes: list[type[DomainEvent]] = [SurveyAnswered, SlaAtRisk, SlaBreached]
    for base in (
        InteractionEvent,
        CaseEvent,
        AgentEvent,
        QueueEvent,
        FeedbackEvent,
        CustomerEvent,
    ):
        classes.extend(cls for cls in _subclasses(base) if cls.context)
    unique: dict[type[DomainEvent], None] = dict.fromkeys(classes)
    return list(unique)


# --- queries: KPIs ------------------------------------------------------------------------------


class KpiQuery(msgspec.Struct, frozen=True, kw_only=True):
    """KPIs of [start_ms, end_ms), cut by `interval`, grouped by `group_by`, filtered by
    `filters` (dimension → accepted values; "" is "none"). `as_of_ms` decides which FCR and
    bot-containment windows have closed (default: now)."""

    start_ms: int
    end_ms: int
    interval: Interval = Interval.PERIOD
    group_by: tuple[Dimension, ...] = ()
    filters: Mapping[Dimension, tuple[str, ...]] = msgspec.field(default_factory=dict)
    policy: KpiPolicy = msgspec.field(default_factory=KpiPolicy)
    as_of_ms: int | None = None


class KpiRow(msgspec.Struct, frozen=True, kw_only=True):
    #: None when the query's interval is the whole period
    interval_start_ms: int | None
    interval_end_ms: int | None
    #: the grouped dimensions' values, in the query's `group_by` order
    group: tuple[str, ...]
    values: KpiValues


class KpiReport(msgspec.Struct, frozen=True, kw_only=True):
    start_ms: int
    end_ms: int
    interval: Interval
    group_by: tuple[Dimension, ...]
    policy: KpiPolicy
    as_of_ms: int
    rows: tuple[KpiRow, ...]
    retention: kpis.RetentionValues
    #: the stream position (bus) the figures include
    position: int


_INTERACTION_DIMS = {
    Dimension.CHANNEL: "i.channel",
    Dimension.QUEUE: "i.first_queue",
    Dimension.TEAM: "i.first_team",
    Dimension.AGENT: "i.first_agent",
    Dimension.REASON: "i.reason",
}


class _Acc:
    __slots__ = ("agent_days", "bots", "issues", "repeats", "sla", "tally")

    def __init__(self) -> None:
        self.tally = Tally()
        self.issues = kpis.IssueTally()
        self.bots = kpis.BotTally()
        self.repeats = kpis.RepeatTally()
        self.agent_days: set[tuple[int, str]] = set()
        self.sla: dict[str, kpis.SlaCounts] = {}

    def is_empty(self) -> bool:
        """Nothing counted (bucket rows whose contributions were all taken back)."""
        return (
            self.tally.is_empty()
            and not self.issues.created
            and not self.issues.fcr.resolved
            and not self.bots.conversations
            and not self.repeats.contacts
            and not self.sla
        )


class _KpiReader:
    """Answers one `KpiQuery` from the buckets and the fact tables."""

    def __init__(self, projection: MetricsProjection, query: KpiQuery) -> None:
        self.projection = projection
        self.calendar = projection.calendar
        self.query = query
        self.policy = query.policy.checked()
        if query.end_ms <= query.start_ms:
            raise InvalidValue("period", "the end must be after the start")
        if query.end_ms - query.start_ms > 400 * 86_400_000:
            raise InvalidValue("period", "at most 400 days")
        if len(set(query.group_by)) != len(query.group_by):
            raise InvalidValue("group_by", "names a dimension twice")
        start, end = query.start_ms, query.end_ms
        self.day_grain = (
            query.interval in (Interval.DAY, Interval.WEEK, Interval.MONTH, Interval.PERIOD)
            and self.calendar.is_day_aligned(start)
            and self.calendar.is_day_aligned(end)
        )
        if not self.day_grain:
            start -= start % INTERVAL_MS
            end += (-end) % INTERVAL_MS
        self.start, self.end = start, end
        self.as_of = query.as_of_ms if query.as_of_ms is not None else kpis.to_ms(datetime.now(UTC))
        self.accs: dict[tuple[int | None, tuple[str, ...]], _Acc] = {}
        self._interval_cache: dict[int, int] = {}

    def _interval(self, at_ms: int) -> int | None:
        interval = self.query.interval
        if interval is Interval.PERIOD:
            return None
        start = self._interval_cache.get(at_ms)
        if start is None:
            start = self._interval_cache[at_ms] = self.calendar.interval_start(at_ms, interval)
        return start

    def _acc(self, at_ms: int, group: tuple[str, ...]) -> _Acc:
        key = (self._interval(at_ms), group)
        acc = self.accs.get(key)
        if acc is None:
            acc = self.accs[key] = _Acc()
        return acc

    def _dims_filter(self, columns: Mapping[Dimension, str]) -> tuple[str, list[object]]:
        clauses: list[str] = []
        params: list[object] = []
        for dimension, accepted in self.query.filters.items():
            if not accepted:
                continue
            clauses.append(f"{columns[dimension]} IN ({', '.join('?' * len(accepted))})")
            params.extend(accepted)
        return "".join(f" AND {clause}" for clause in clauses), params

    def report(self) -> KpiReport:
        self._buckets()
        self._issues()
        self._bots()
        self._repeats()
        self._sla()
        rows: list[KpiRow] = []
        for (interval_start, group), acc in sorted(
            self.accs.items(), key=lambda item: (item[0][0] or 0, item[0][1])
        ):
            if acc.is_empty():
                continue
            rows.append(
                KpiRow(
                    interval_start_ms=interval_start,
                    interval_end_ms=self._interval_end(interval_start),
                    group=group,
                    values=kpis.kpi_values(
                        acc.tally,
                        issues=acc.issues,
                        bots=acc.bots,
                        repeats=acc.repeats,
                        agent_days=len(acc.agent_days),
                        policy=self.policy,
                        sla=acc.sla,
                    ),
                )
            )
        if not rows and not self.query.group_by and self.query.interval is Interval.PERIOD:
            empty = _Acc()
            rows.append(
                KpiRow(
                    interval_start_ms=None,
                    interval_end_ms=None,
                    group=(),
                    values=kpis.kpi_values(
                        empty.tally,
                        issues=empty.issues,
                        bots=empty.bots,
                        repeats=empty.repeats,
                        agent_days=0,
                        policy=self.policy,
                    ),
                )
            )
        return KpiReport(
            start_ms=self.start,
            end_ms=self.end,
            interval=self.query.interval,
            group_by=self.query.group_by,
            policy=self.policy,
            as_of_ms=self.as_of,
            rows=tuple(rows),
            retention=self._retention(),
            position=self.projection.position(),
        )

    def _interval_end(self, start: int | None) -> int | None:
        if start is None:
            return None
        interval = self.query.interval
        if interval is Interval.MINUTES_15:
            return start + INTERVAL_MS
        if interval is Interval.HOUR:
            return self.calendar.interval_start(start + 3_600_000 + INTERVAL_MS - 1, interval)
        local = self.calendar.local(start).date()
        if interval is Interval.DAY:
            return self.calendar.midnight(local.fromordinal(local.toordinal() + 1))
        if interval is Interval.WEEK:
            return self.calendar.midnight(local.fromordinal(local.toordinal() + 7))
        month = local.replace(day=1)
        following = month.replace(day=28).toordinal() + 4
        return self.calendar.midnight(local.fromordinal(following).replace(day=1))

    # --- buckets ---

    def _buckets(self) -> None:
        grain = GRAIN_DAY if self.day_grain else GRAIN_15M
        group_columns = [f"d.{dimension.value}" for dimension in self.query.group_by]
        where, params = self._dims_filter({d: f"d.{d.value}" for d in _DIMENSIONS})
        selected = ", ".join(["b.start_ms", *group_columns])
        sums = ", ".join(f"SUM(b.{name})" for name in COUNTERS)
        base = (
            " FROM metrics_buckets b JOIN metrics_dims d ON d.id = b.dims "
            f"WHERE b.grain = ? AND b.start_ms >= ? AND b.start_ms < ?{where}"
        )
        args = [grain, self.start, self.end, *params]
        store = self.projection.store
        width = len(group_columns)
        for row in store.query(f"SELECT {selected}, {sums}{base} GROUP BY {selected}", args):
            acc = self._acc(int(row[0]), tuple(str(v) for v in row[1 : 1 + width]))
            counts = acc.tally.counts
            for name, value in zip(COUNTERS, row[1 + width :], strict=True):
                counts[name] += int(value or 0)
        for row in store.query(
            f"SELECT {selected}, b.histograms{base} AND b.histograms <> '{{}}'", args
        ):
            histograms = self._acc(int(row[0]), tuple(str(v) for v in row[1 : 1 + width]))
            tally_histograms = histograms.tally.histograms
            for name, count in _bins_decoder.decode(row[-1]).items():
                number, _, index = name.partition(":")
                tally_histograms[kpis.HISTOGRAM_NAMES[int(number)]].add_bin(int(index), count)
        # agent-days: a (local day, agent) with time logged in or work handled
        for row in store.query(
            f"SELECT b.start_ms, d.agent{''.join(', ' + c for c in group_columns)} "
            f"{base} AND d.agent <> '' GROUP BY b.start_ms, d.agent"
            f"{''.join(', ' + c for c in group_columns)} "
            "HAVING SUM(b.logged_in_ms) > 0 OR SUM(b.handled) > 0",
            args,
        ):
            at = int(row[0])
            acc = self._acc(at, tuple(str(v) for v in row[2 : 2 + width]))
            acc.agent_days.add((self.calendar.day_start(at), str(row[1])))

    # --- issues ---

    def _group_of(self, row: Sequence[Any], offset: int) -> tuple[str, ...]:
        dims = {
            Dimension.CHANNEL: row[offset],
            Dimension.QUEUE: row[offset + 1],
            Dimension.TEAM: row[offset + 2],
            Dimension.AGENT: row[offset + 3],
            Dimension.REASON: row[offset + 4],
        }
        return tuple(str(dims[dimension] or "") for dimension in self.query.group_by)

    def _issue_filter(self, reason: str) -> tuple[str, list[object]]:
        columns = dict(_INTERACTION_DIMS)
        columns[Dimension.REASON] = reason
        return self._dims_filter(
            {
                k: f"COALESCE({v}, '')" if k is not Dimension.REASON else v
                for k, v in columns.items()
            }
        )

    def _issues(self) -> None:
        store = self.projection.store
        window = self.policy.fcr_window_ms
        target = self.policy.resolution_target_s * 1000
        dims = "i.channel, i.first_queue, i.first_team, i.first_agent"
        case_reason = "CASE WHEN c.reason <> '' THEN c.reason ELSE COALESCE(i.reason, '') END"
        where, params = self._issue_filter(case_reason)
        # Cases: dimensions from their first interaction; one agent contact = exactly one
        # interaction of the case reached an agent, and only one agent handled it.
        case_rows = store.query(
            f"SELECT c.created_ms, c.first_solved_ms, c.solved_ms, c.reopened_ms, {dims}, "
            f"{case_reason}, "
            "(SELECT COUNT(*) FROM metrics_interactions x WHERE x.case_id = c.id "
            " AND x.answered_ms IS NOT NULL AND x.created_ms <= c.first_solved_ms), "
            "(SELECT MAX(CASE WHEN x.resolution_agents > 0 THEN x.resolution_agents "
            " ELSE x.agents END) FROM metrics_interactions x WHERE x.case_id = c.id "
            " AND x.answered_ms IS NOT NULL AND x.created_ms <= c.first_solved_ms), "
            "(SELECT MIN(x.created_ms) FROM metrics_interactions x WHERE c.customer_id <> '' "
            " AND x.customer_id = c.customer_id AND x.reason = c.reason AND c.reason <> '' "
            " AND x.created_ms > c.first_solved_ms), "
            "(SELECT MIN(y.created_ms) FROM metrics_cases y WHERE c.customer_id <> '' "
            " AND y.customer_id = c.customer_id AND y.reason = c.reason AND c.reason <> '' "
            " AND y.id <> c.id AND y.created_ms > c.first_solved_ms), "
            "(SELECT MIN(x.created_ms) FROM metrics_interactions x WHERE x.case_id = c.id "
            " AND x.created_ms > c.first_solved_ms) "
            "FROM metrics_cases c LEFT JOIN metrics_interactions i ON i.id = c.first_interaction "
            f"WHERE c.first_solved_ms >= ? AND c.first_solved_ms < ?{where}",
            [self.start, self.end, *params],
        )
        for row in case_rows:
            repeats = [int(value) for value in row[11:14] if value is not None]
            issue = kpis.IssueFacts(
                created_ms=int(row[0]),
                first_resolved_ms=int(row[1]),
                resolved_ms=None if row[2] is None else int(row[2]),
                reopened_ms=None if row[3] is None else int(row[3]),
                agent_contacts=int(row[9] or 0),
                agents=int(row[10] or 0),
                repeat_at_ms=min(repeats) if repeats else None,
            )
            self._acc(issue.first_resolved_ms or 0, self._group_of(row, 4)).issues.count(
                issue, as_of_ms=self.as_of, window_ms=window, target_ms=target
            )
        for row in store.query(
            f"SELECT c.created_ms, {dims}, {case_reason} FROM metrics_cases c "
            "LEFT JOIN metrics_interactions i ON i.id = c.first_interaction "
            f"WHERE c.created_ms >= ? AND c.created_ms < ?{where}",
            [self.start, self.end, *params],
        ):
            self._acc(int(row[0]), self._group_of(row, 1)).issues.created += 1
        # Interactions outside any case that an agent answered are issues of their own.
        where, params = self._issue_filter("i.reason")
        standalone = "i.case_id = '' AND i.answered_ms IS NOT NULL"
        for row in store.query(
            f"SELECT i.created_ms, i.first_resolved_ms, i.resolved_ms, i.reopened_ms, {dims}, "
            "i.reason, i.resolution_agents, "
            "(SELECT MIN(x.created_ms) FROM metrics_interactions x WHERE i.customer_id <> '' "
            " AND x.customer_id = i.customer_id AND x.reason = i.reason AND i.reason <> '' "
            " AND x.created_ms > i.first_resolved_ms), "
            "(SELECT MIN(y.created_ms) FROM metrics_cases y WHERE i.customer_id <> '' "
            " AND y.customer_id = i.customer_id AND y.reason = i.reason AND i.reason <> '' "
            " AND y.created_ms > i.first_resolved_ms) "
            f"FROM metrics_interactions i WHERE {standalone} "
            f"AND i.first_resolved_ms >= ? AND i.first_resolved_ms < ?{where}",
            [self.start, self.end, *params],
        ):
            repeats = [int(value) for value in row[10:12] if value is not None]
            issue = kpis.IssueFacts(
                created_ms=int(row[0]),
                first_resolved_ms=int(row[1]),
                resolved_ms=None if row[2] is None else int(row[2]),
                reopened_ms=None if row[3] is None else int(row[3]),
                agent_contacts=1,
                agents=int(row[9]),
                repeat_at_ms=min(repeats) if repeats else None,
            )
            self._acc(issue.first_resolved_ms or 0, self._group_of(row, 4)).issues.count(
                issue, as_of_ms=self.as_of, window_ms=window, target_ms=target
            )
        for row in store.query(
            f"SELECT i.created_ms, {dims}, i.reason FROM metrics_interactions i "
            f"WHERE {standalone} AND i.created_ms >= ? AND i.created_ms < ?{where}",
            [self.start, self.end, *params],
        ):
            self._acc(int(row[0]), self._group_of(row, 1)).issues.created += 1

    def _sla(self) -> None:
        """SLA clocks decided in the period: met when reached, breached at the deadline.

        Cases: their clocks' rows, with the dimensions of the case (its first interaction's;
        the case's own channel); a met clock counts when the case's policy (by channel and
        priority) has that target, a breach always. Interactions outside a case: breaches
        from their SLA events' rows; met clocks from the interaction fact table (first
        response: the first public agent reply, on a voice channel the answer; resolution:
        resolved; next response: its rows), when the interaction is inbound and still in no
        case and the policy of the interaction (its channel and routing priority) has that
        target and no breach was recorded for it."""
        store = self.projection.store
        channel = "CASE WHEN s.channel <> '' THEN s.channel ELSE COALESCE(i.channel, '') END"
        dims = f"{channel}, i.first_queue, i.first_team, i.first_agent"
        case_reason = "CASE WHEN c.reason <> '' THEN c.reason ELSE COALESCE(i.reason, '') END"
        columns = dict(_INTERACTION_DIMS)
        columns[Dimension.CHANNEL] = channel
        where, params = self._dims_filter(
            {
                k: f"COALESCE({v}, '')" if k is not Dimension.REASON else case_reason
                for k, v in columns.items()
            }
        )
        decided = "s.decided_ms >= ? AND s.decided_ms < ?"
        has_target = self.projection._sla_target
        rows = [
            row
            for row in store.query(
                f"SELECT s.decided_ms, {dims}, {case_reason}, s.metric, s.outcome, s.at_risk, "
                "s.channel, s.priority FROM metrics_sla s "
                "JOIN metrics_cases c ON c.id = s.subject_id "
                "LEFT JOIN metrics_interactions i ON i.id = c.first_interaction "
                f"WHERE s.subject = ? AND s.outcome IN (?, ?) AND {decided}{where}",
                [_SUBJECT_CASE, _MET, _BREACHED, self.start, self.end, *params],
            )
            if row[7] == _BREACHED or has_target(str(row[9]), str(row[10]), str(row[6]))
        ]
        where, params = self._issue_filter("i.reason")
        rows += [
            row
            for row in store.query(
                "SELECT s.decided_ms, i.channel, i.first_queue, i.first_team, i.first_agent, "
                "i.reason, s.metric, s.outcome, s.at_risk, i.routing_priority, i.case_id, "
                "i.direction FROM metrics_sla s "
                "JOIN metrics_interactions i ON i.id = s.subject_id "
                f"WHERE s.subject = ? AND s.outcome IN (?, ?) AND {decided}{where}",
                [_SUBJECT_INTERACTION, _MET, _BREACHED, self.start, self.end, *params],
            )
            # a met next response counts while the interaction is its own issue
            if row[7] == _BREACHED
            or (
                not row[10]
                and row[11] == _INBOUND
                and self.projection._has_interaction_sla_target(
                    str(row[1]), int(row[9]), str(row[6])
                )
            )
        ]
        voice = ", ".join(f"'{channel}'" for channel in sorted(_EXCLUSIVE))
        for metric, met in (
            (
                SlaMetric.FIRST_RESPONSE.value,
                f"CASE WHEN i.channel IN ({voice}) THEN i.answered_ms ELSE i.first_response_ms END",
            ),
            (SlaMetric.RESOLUTION.value, "i.resolved_ms"),
        ):
            for row in store.query(
                f"SELECT {met}, i.channel, i.first_queue, i.first_team, i.first_agent, "
                "i.reason, i.routing_priority, COALESCE(s.at_risk, 0) "
                "FROM metrics_interactions i LEFT JOIN metrics_sla s ON s.subject_id = i.id "
                "AND s.metric = ? AND s.cycle = 1 "
                f"WHERE i.case_id = '' AND i.direction = '{_INBOUND}' "
                f"AND {met} >= ? AND {met} < ? "
                f"AND (s.outcome IS NULL OR s.outcome <> ?){where}",
                [metric, self.start, self.end, _BREACHED, *params],
            ):
                if self.projection._has_interaction_sla_target(str(row[1]), int(row[6]), metric):
                    rows.append((row[0], *row[1:6], metric, _MET, row[7]))
        for row in rows:
            sla = self._acc(int(row[0]), self._group_of(row, 1)).sla
            counts = sla.get(str(row[6]))
            if counts is None:
                counts = sla[str(row[6])] = kpis.SlaCounts()
            if row[7] == _MET:
                counts.met += 1
            else:
                counts.breached += 1
            counts.at_risk += int(bool(row[8]))

    def _bots(self) -> None:
        window = self.policy.bot_repeat_window_ms
        where, params = self._issue_filter("i.reason")
        for row in self.projection.store.query(
            "SELECT i.created_ms, i.channel, i.first_queue, i.first_team, i.first_agent, "
            "i.reason, i.contained_ms, i.handed_off_ms, "
            "(SELECT MIN(x.created_ms) FROM metrics_interactions x WHERE i.customer_id <> '' "
            " AND x.customer_id = i.customer_id AND x.id <> i.id "
            " AND x.created_ms > i.contained_ms) "
            "FROM metrics_interactions i WHERE i.bot = 1 "
            f"AND i.created_ms >= ? AND i.created_ms < ?{where}",
            [self.start, self.end, *params],
        ):
            contained = None if row[6] is None else int(row[6])
            status = kpis.containment_status(
                contained_ms=contained,
                handed_off=row[7] is not None,
                repeat_at_ms=None if row[8] is None else int(row[8]),
                as_of_ms=self.as_of,
                window_ms=window,
            )
            closed = status is not kpis.ContainmentStatus.PROVISIONAL
            self._acc(int(row[0]), self._group_of(row, 1)).bots.count(status, window_closed=closed)

    def _repeats(self) -> None:
        window = self.policy.fcr_window_ms
        where, params = self._issue_filter("i.reason")
        for row in self.projection.store.query(
            "SELECT i.created_ms, i.channel, i.first_queue, i.first_team, i.first_agent, "
            "i.reason, EXISTS (SELECT 1 FROM metrics_interactions x "
            " WHERE x.customer_id = i.customer_id AND x.reason = i.reason AND x.id <> i.id "
            " AND x.created_ms < i.created_ms AND x.created_ms >= i.created_ms - ?) "
            "FROM metrics_interactions i WHERE i.customer_id <> '' AND i.reason <> '' "
            f"AND i.created_ms >= ? AND i.created_ms < ?{where}",
            [window, self.start, self.end, *params],
        ):
            repeats = self._acc(int(row[0]), self._group_of(row, 1)).repeats
            repeats.contacts += 1
            repeats.repeats += int(bool(row[6]))

    def _retention(self) -> kpis.RetentionValues:
        start = self.start
        end = min(self.end, max(self.as_of, start))
        rows = self.projection.store.query(
            "SELECT COUNT(DISTINCT s.customer_id), COUNT(DISTINCT CASE WHEN EXISTS ("
            " SELECT 1 FROM metrics_customer_spans t WHERE t.customer_id = s.customer_id "
            " AND t.active_from_ms <= ? AND (t.active_until_ms IS NULL OR t.active_until_ms > ?)"
            ") THEN s.customer_id END) "
            "FROM metrics_customer_spans s WHERE s.active_from_ms <= ? "
            "AND (s.active_until_ms IS NULL OR s.active_until_ms > ?)",
            (end, end, start, start),
        )
        active, retained = rows[0] if rows else (0, 0)
        return kpis.retention_values(int(active or 0), int(retained or 0))


# --- queries: live state ---------------------------------------------------------------------


class QueueNow(msgspec.Struct, frozen=True, kw_only=True):
    queue: str
    waiting: int
    oldest_waiting_since_ms: int | None
    oldest_wait_s: float
    #: today so far (local day), with the queue's own threshold
    service_level_today: kpis.Rate
    offered_today: int
    answered_today: int
    abandoned_today: int


class AgentsNow(msgspec.Struct, frozen=True, kw_only=True):
    team: str
    by_presence: dict[str, int]
    with_work: int


class BacklogNow(msgspec.Struct, frozen=True, kw_only=True):
    """Open interactions (not resolved, closed, abandoned or contained) by age since they
    were created, and open cases."""

    open_interactions: int
    by_age: dict[str, int]
    oldest_open_since_ms: int | None
    open_cases: int
    oldest_open_case_since_ms: int | None


class LiveState(msgspec.Struct, frozen=True, kw_only=True):
    as_of_ms: int
    queues: tuple[QueueNow, ...]
    agents_by_presence: dict[str, int]
    teams: tuple[AgentsNow, ...]
    backlog: BacklogNow
    service_level_today: kpis.Rate
    position: int


AGE_BANDS: tuple[tuple[str, int], ...] = (
    ("under_1h", 3_600_000),
    ("1h_to_4h", 4 * 3_600_000),
    ("4h_to_24h", 24 * 3_600_000),
    ("1d_to_3d", 3 * 24 * 3_600_000),
)
OLDEST_BAND = "over_3d"


def _live(projection: MetricsProjection, now_ms: int) -> LiveState:
    store = projection.store
    waiting = {
        str(row[0]): (int(row[1]), None if row[2] is None else int(row[2]))
        for row in store.query(
            "SELECT queue, COUNT(*), MIN(waiting_since_ms) FROM metrics_interactions "
            "WHERE status IN (?, ?) GROUP BY queue",
            _WAITING,
        )
    }
    day = projection.calendar.day_start(now_ms)
    tallies: dict[str, Tally] = {}
    # Today's outcomes per queue; each queue's service level uses its own threshold.
    reader = _KpiReader(
        projection,
        KpiQuery(
            start_ms=day,
            end_ms=projection.calendar.day_start(day + 36 * 3_600_000),
            group_by=(Dimension.QUEUE,),
            policy=projection.policy,
            as_of_ms=now_ms,
        ),
    )
    reader._buckets()
    for (_, group), acc in reader.accs.items():
        tallies[group[0]] = acc.tally
    queue_names = (set(waiting) | set(tallies)) - {""}
    queues: list[QueueNow] = []
    overall = Tally()
    for name in sorted(queue_names):
        count, since = waiting.get(name, (0, None))
        tally = tallies.get(name, Tally())
        overall.merge(tally)
        policy = projection.queue_policy(name)
        outcomes = kpis.queue_outcomes(tally, policy)
        queues.append(
            QueueNow(
                queue=name,
                waiting=count,
                oldest_waiting_since_ms=since,
                oldest_wait_s=max(0.0, (now_ms - since) / 1000) if since is not None else 0.0,
                service_level_today=kpis.service_level(outcomes, policy),
                offered_today=outcomes.offered,
                answered_today=outcomes.answered,
                abandoned_today=outcomes.abandoned,
            )
        )
    default_policy = projection.policy.service_level
    presence_counts: dict[str, int] = dict.fromkeys((p.value for p in Presence), 0)
    teams: dict[str, AgentsNow] = {}
    team_presence: dict[str, dict[str, int]] = {}
    team_work: dict[str, int] = {}
    for agent in projection.agents():
        presence_counts[agent.presence] = presence_counts.get(agent.presence, 0) + 1
        counts = team_presence.setdefault(agent.team, dict.fromkeys((p.value for p in Presence), 0))
        counts[agent.presence] = counts.get(agent.presence, 0) + 1
        team_work[agent.team] = team_work.get(agent.team, 0) + int(bool(agent.work))
    for team, counts in sorted(team_presence.items()):
        teams[team] = AgentsNow(team=team, by_presence=counts, with_work=team_work[team])
    finished = ", ".join("?" * len(_FINISHED))
    ages = [now_ms - limit for _, limit in AGE_BANDS]
    cases = ", ".join("SUM(CASE WHEN created_ms > ? THEN 1 ELSE 0 END)" for _ in ages)
    row = store.query(
        f"SELECT COUNT(*), MIN(created_ms), {cases} FROM metrics_interactions "
        f"WHERE status NOT IN ({finished})",
        [*ages, *_FINISHED],
    )[0]
    total = int(row[0] or 0)
    cumulative = [int(value or 0) for value in row[2:]]
    by_age: dict[str, int] = {}
    previous = 0
    for (band, _), count in zip(AGE_BANDS, cumulative, strict=True):
        by_age[band] = count - previous
        previous = count
    by_age[OLDEST_BAND] = total - previous
    case_row = store.query(
        "SELECT COUNT(*), MIN(created_ms) FROM metrics_cases WHERE status NOT IN (?, ?)",
        ("solved", "closed"),
    )[0]
    return LiveState(
        as_of_ms=now_ms,
        queues=tuple(queues),
        agents_by_presence=presence_counts,
        teams=tuple(teams.values()),
        backlog=BacklogNow(
            open_interactions=total,
            by_age=by_age,
            oldest_open_since_ms=None if row[1] is None else int(row[1]),
            open_cases=int(case_row[0] or 0),
            oldest_open_case_since_ms=None if case_row[1] is None else int(case_row[1]),
        ),
        service_level_today=kpis.service_level(
            kpis.queue_outcomes(overall, default_policy), default_policy
        ),
        position=projection.position(),
    )


# --- queries: staffing ---------------------------------------------------------------------------


class StaffingRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Erlang C per interval of an observed period, or for one given forecast.

    Observed: λ per interval = contacts queued in it (filters apply), h = the period's AHT.
    Forecast (`contacts` and `handle_s` given): one row for `interval_s`."""

    start_ms: int = 0
    end_ms: int = 0
    interval: Interval = Interval.MINUTES_15
    filters: Mapping[Dimension, tuple[str, ...]] = msgspec.field(default_factory=dict)
    target_fraction: float = 0.8
    threshold_s: float = 20.0
    shrinkage: float = 0.0
    max_occupancy: float = 1.0
    contacts: float | None = None
    interval_s: float | None = None
    handle_s: float | None = None


class StaffingRow(msgspec.Struct, frozen=True, kw_only=True):
    interval_start_ms: int | None
    result: kpis.StaffingResult


class StaffingReport(msgspec.Struct, frozen=True, kw_only=True):
    rows: tuple[StaffingRow, ...]
    #: the handle time used (observed AHT of the period, or the forecast's)
    handle_s: float
    peak_agents: int
    peak_scheduled: int
    note: str = kpis.ERLANG_C_NOTE


def _staffing(projection: MetricsProjection, request: StaffingRequest) -> StaffingReport:
    def plan(contacts: float, interval_s: float, handle_s: float) -> kpis.StaffingResult:
        return kpis.staffing(
            contacts=contacts,
            interval_s=interval_s,
            handle_s=handle_s,
            target_fraction=request.target_fraction,
            threshold_s=request.threshold_s,
            shrinkage=request.shrinkage,
            max_occupancy=request.max_occupancy,
        )

    if request.contacts is not None:
        if request.handle_s is None or request.interval_s is None:
            raise InvalidValue("forecast", "give contacts, interval_seconds and handle_seconds")
        result = plan(request.contacts, request.interval_s, request.handle_s)
        return StaffingReport(
            rows=(StaffingRow(interval_start_ms=None, result=result),),
            handle_s=request.handle_s,
            peak_agents=result.agents,
            peak_scheduled=result.scheduled,
        )
    if request.interval not in (Interval.MINUTES_15, Interval.HOUR):
        raise InvalidValue("interval", "staffing is planned per 15 minutes or per hour")
    report = projection.kpis(
        KpiQuery(
            start_ms=request.start_ms,
            end_ms=request.end_ms,
            interval=request.interval,
            filters=request.filters,
            policy=projection.policy,
        )
    )
    handled = sum(row.values.handled for row in report.rows)
    mean = [
        row.values.aht.mean_s * row.values.handled
        for row in report.rows
        if row.values.aht.mean_s is not None
    ]
    handle_s = request.handle_s or (sum(mean) / handled if handled else 0.0)
    rows: list[StaffingRow] = []
    if handle_s > 0:
        for row in report.rows:
            assert row.interval_start_ms is not None
            assert row.interval_end_ms is not None
            length = (row.interval_end_ms - row.interval_start_ms) / 1000
            rows.append(
                StaffingRow(
                    interval_start_ms=row.interval_start_ms,
                    result=plan(row.values.offered, length, handle_s),
                )
            )
    return StaffingReport(
        rows=tuple(rows),
        handle_s=handle_s,
        peak_agents=max((row.result.agents for row in rows), default=0),
        peak_scheduled=max((row.result.scheduled for row in rows), default=0),
    )


# --- queries: contact reasons and rising topics ---------------------------------------------------


class TopicCount(msgspec.Struct, frozen=True, kw_only=True):
    """A contact reason or feedback topic: how often in the period and the one before."""

    kind: str
    name: str
    count: int
    previous_count: int
    #: share of the period's contacts (contact reasons) or feedback mentions (topics)
    share: float
    #: (count − previous) / √(previous + 1): how far above its past the topic is
    rise_score: float


class TopicReport(msgspec.Struct, frozen=True, kw_only=True):
    start_ms: int
    end_ms: int
    previous_start_ms: int
    top_contact_reasons: tuple[TopicCount, ...]
    rising: tuple[TopicCount, ...]


def _topics(
    projection: MetricsProjection, start_ms: int, end_ms: int, *, limit: int, min_count: int
) -> TopicReport:
    if end_ms <= start_ms:
        raise InvalidValue("period", "the end must be after the start")
    calendar = projection.calendar
    start, end = calendar.day_start(start_ms), calendar.day_start(end_ms - 1) + 1
    end = calendar.day_start(end + 36 * 3_600_000) if end - 1 >= start else end
    length = end - start
    previous = start - length
    store = projection.store

    def reasons(low: int, high: int) -> dict[str, int]:
        return {
            str(row[0]): int(row[1] or 0)
            for row in store.query(
                "SELECT d.reason, SUM(b.created) FROM metrics_buckets b "
                "JOIN metrics_dims d ON d.id = b.dims WHERE b.grain = ? AND b.start_ms >= ? "
                "AND b.start_ms < ? AND d.reason <> '' GROUP BY d.reason",
                (GRAIN_DAY, low, high),
            )
            if row[1]
        }

    def topics(low: int, high: int) -> dict[str, int]:
        return {
            str(row[0]): int(row[1] or 0)
            for row in store.query(
                "SELECT topic, SUM(mentions) FROM metrics_topics WHERE day_ms >= ? AND day_ms < ? "
                "GROUP BY topic",
                (low, high),
            )
            if row[1]
        }

    def counted(kind: str, now: dict[str, int], before: dict[str, int]) -> list[TopicCount]:
        total = sum(now.values()) or 1
        return [
            TopicCount(
                kind=kind,
                name=name,
                count=count,
                previous_count=before.get(name, 0),
                share=count / total,
                rise_score=(count - before.get(name, 0)) / (before.get(name, 0) + 1) ** 0.5,
            )
            for name, count in now.items()
        ]

    reason_counts = counted("contact_reason", reasons(start, end), reasons(previous, start))
    topic_counts = counted("feedback_topic", topics(start, end), topics(previous, start))
    top = sorted(reason_counts, key=lambda t: (-t.count, t.name))[:limit]
    rising = sorted(
        (t for t in reason_counts + topic_counts if t.count >= min_count and t.rise_score > 0),
        key=lambda t: (-t.rise_score, -t.count, t.kind, t.name),
    )[:limit]
    return TopicReport(
        start_ms=start,
        end_ms=end,
        previous_start_ms=previous,
        top_contact_reasons=tuple(top),
        rising=tuple(rising),
    )


# --- export: the per-interaction fact table as CSV ------------------------------------------------

EXPORT_COLUMNS: tuple[str, ...] = (
    "interaction_id",
    "created_time",
    "channel",
    "direction",
    "bot",
    "customer_id",
    "case_id",
    "contact_reason",
    "queue",
    "status",
    "queued_time",
    "answered_time",
    "wait_seconds",
    "abandoned_time",
    "abandon_wait_seconds",
    "first_agent_id",
    "team",
    "agents",
    "first_response_seconds",
    "handle_seconds",
    "talk_seconds",
    "hold_seconds",
    "after_contact_work_seconds",
    "transfers",
    "escalations",
    "reopens",
    "first_resolved_time",
    "resolved_time",
    "closed_time",
    "contained_time",
    "handed_off_time",
)


def _iso(milliseconds: int | None) -> str:
    if milliseconds is None:
        return ""
    return kpis.from_ms(milliseconds).isoformat().replace("+00:00", "Z")


def _seconds(milliseconds: int | None) -> str:
    return "" if milliseconds is None else f"{milliseconds / 1000:.3f}"


def export_row(fact: InteractionFact) -> list[str]:
    finished = [segment.durations() for segment in fact.segments if segment.end_ms is not None]
    wait = (
        fact.answered_ms - fact.queued_ms
        if fact.answered_ms is not None and fact.queued_ms is not None
        else None
    )
    return [
        fact.id,
        _iso(fact.created_ms),
        fact.channel,
        fact.direction,
        "true" if fact.bot else "false",
        fact.customer_id,
        fact.case_id,
        fact.reason,
        fact.first_queue,
        fact.status,
        _iso(fact.queued_ms),
        _iso(fact.answered_ms),
        _seconds(wait),
        _iso(fact.abandoned_ms),
        _seconds(fact.abandon_wait_ms if fact.abandoned_ms is not None else None),
        fact.first_agent,
        fact.first_team,
        str(len(fact.agents)),
        _seconds(
            fact.first_response_ms - fact.created_ms if fact.first_response_ms is not None else None
        ),
        _seconds(sum(d[0] for d in finished) if finished else None),
        _seconds(sum(d[1] for d in finished) if finished else None),
        _seconds(sum(d[2] for d in finished) if finished else None),
        _seconds(sum(d[3] for d in finished) if finished else None),
        str(fact.transfers),
        str(fact.escalations),
        str(fact.reopens),
        _iso(fact.first_resolved_ms),
        _iso(fact.resolved_ms),
        _iso(fact.closed_ms),
        _iso(fact.contained_ms),
        _iso(fact.handed_off_ms),
    ]


def _csv_line(values: Sequence[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(values)
    return buffer.getvalue()


def _export(
    projection: MetricsProjection,
    start_ms: int,
    end_ms: int,
    filters: Mapping[Dimension, Sequence[str]],
    page: int,
) -> Iterator[str]:
    """CSV (RFC 4180, header first) of the interactions created in [start, end), oldest first,
    in pages of `page` rows (each yielded string holds whole lines)."""
    if end_ms <= start_ms:
        raise InvalidValue("period", "the end must be after the start")
    clauses: list[str] = []
    params: list[object] = []
    for dimension, accepted in filters.items():
        if accepted:
            clauses.append(
                f"{_INTERACTION_DIMS[dimension][2:]} IN ({', '.join('?' * len(accepted))})"
            )
            params.extend(accepted)
    where = "".join(f" AND {clause}" for clause in clauses)
    yield _csv_line(EXPORT_COLUMNS)
    after_ms, after_id = start_ms - 1, ""
    while True:
        rows = projection.store.query(
            "SELECT created_ms, id, fact FROM metrics_interactions "
            "WHERE created_ms < ? AND (created_ms > ? OR (created_ms = ? AND id > ?)) "
            f"AND created_ms >= ?{where} ORDER BY created_ms, id LIMIT ?",
            [end_ms, after_ms, after_ms, after_id, start_ms, *params, page],
        )
        if not rows:
            return
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        for row in rows:
            writer.writerow(export_row(_interaction_decoder.decode(bytes(row[2]))))
        yield buffer.getvalue()
        after_ms, after_id = int(rows[-1][0]), str(rows[-1][1])
        if len(rows) < page:
            return


# --- KPI targets -------------------------------------------------------------------------------


class KpiTarget(msgspec.Struct, frozen=True, kw_only=True):
    """A KPI to move from `baseline` to `target` between `start_ms` and `deadline_ms`
    ("FCR from 75 % to 85 % in six months"), measured over the `window_days` before each look
    and over the dimensions in `filters`."""

    kpi: str
    baseline: float
    target: float
    start_ms: int
    deadline_ms: int
    window_days: int = 28
    filters: dict[str, tuple[str, ...]] = msgspec.field(default_factory=dict)
    description: str = ""
    id: str = ""
    created_ms: int = 0


class TargetStatus(msgspec.Struct, frozen=True, kw_only=True):
    target: KpiTarget
    progress: kpis.TargetProgress
    measured_from_ms: int
    measured_to_ms: int


def _check_target(target: KpiTarget) -> KpiTarget:
    if target.kpi not in kpis.KPI_READERS:
        raise InvalidValue(
            "target.kpi", f"unknown KPI {target.kpi!r}; one of {', '.join(kpis.KPI_READERS)}"
        )
    if target.deadline_ms <= target.start_ms:
        raise InvalidValue("target.deadline_time", "must be after the start")
    if not 1 <= target.window_days <= 365:
        raise InvalidValue("target.window_days", "must be between 1 and 365")
    for key, accepted in target.filters.items():
        if key not in Dimension.__members__.values():
            raise InvalidValue(f"target.filters.{key}", "not a dimension")
        if not accepted:
            raise InvalidValue(f"target.filters.{key}", "name at least one value")
    description = target.description.strip()
    if len(description) > 500:
        raise InvalidValue("target.description", "longer than 500 characters")
    return msgspec.structs.replace(
        target,
        id=target.id or str(uuid.uuid4()),
        created_ms=target.created_ms or kpis.to_ms(datetime.now(UTC)),
        description=description,
    )


def _target_of(row: Sequence[Any]) -> KpiTarget:
    return KpiTarget(
        id=str(row[0]),
        kpi=str(row[1]),
        baseline=float(row[2]),
        target=float(row[3]),
        start_ms=int(row[4]),
        deadline_ms=int(row[5]),
        window_days=int(row[6]),
        filters=msgspec.json.decode(str(row[7]), type=dict[str, tuple[str, ...]]),
        description=str(row[8]),
        created_ms=int(row[9]),
    )


# --- Prometheus exposition --------------------------------------------------------------------


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def prometheus_text(
    projection: MetricsProjection,
    live: LiveState,
    today: KpiValues,
    feed: FeedStats | None = None,
    *,
    now_ms: int | None = None,
) -> str:
    """The headline KPIs (today, local day) and the projection's own health in the Prometheus
    text exposition format (version 0.0.4)."""
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: Iterable[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lines.append(f"{name}{labels} {value:.10g}")

    now = now_ms if now_ms is not None else kpis.to_ms(datetime.now(UTC))
    stats = projection.stats
    metric(
        "crm_metrics_stream_position",
        "gauge",
        "Event-stream sequence the read models include.",
        [("", projection.position())],
    )
    metric(
        "crm_metrics_consumer_lag_events",
        "gauge",
        "Events in the stream not yet projected.",
        [("", feed.lag if feed else 0)],
    )
    metric(
        "crm_metrics_feed_connected",
        "gauge",
        "1 while the bus feed is connected to NATS.",
        [("", 1 if feed and feed.connected else 0)],
    )
    metric(
        "crm_metrics_events_projected_total",
        "counter",
        "Events applied to the read models since start.",
        [("", stats.events)],
    )
    metric(
        "crm_metrics_batches_total",
        "counter",
        "Batches committed since start.",
        [("", stats.batches)],
    )
    metric(
        "crm_metrics_last_batch_seconds",
        "gauge",
        "Time the last batch took to apply and commit.",
        [("", stats.last_batch_s)],
    )
    if stats.last_event_ms:
        metric(
            "crm_metrics_last_event_age_seconds",
            "gauge",
            "Age of the newest event projected.",
            [("", max(0.0, (now - stats.last_event_ms) / 1000))],
        )
    queue_labels = [(f'{{queue="{_label(q.queue)}"}}', q) for q in live.queues]
    metric(
        "crm_kpi_contacts_waiting",
        "gauge",
        "Contacts waiting in the queue now.",
        [(labels, q.waiting) for labels, q in queue_labels],
    )
    metric(
        "crm_kpi_oldest_wait_seconds",
        "gauge",
        "Wait of the oldest contact in the queue now.",
        [(labels, q.oldest_wait_s) for labels, q in queue_labels],
    )
    metric(
        "crm_kpi_service_level_today",
        "gauge",
        "Service level today per queue (its own threshold; see the policy label).",
        [
            (
                f'{{queue="{_label(q.queue)}",policy="{_label(q.service_level_today.policy)}"}}',
                q.service_level_today.value,
            )
            for q in live.queues
            if q.service_level_today.value is not None
        ],
    )
    for name, read in (
        ("offered", "offered_today"),
        ("answered", "answered_today"),
        ("abandoned", "abandoned_today"),
    ):
        metric(
            f"crm_kpi_{name}_today",
            "gauge",
            f"Contacts {name} today per queue.",
            [(labels, getattr(q, read)) for labels, q in queue_labels],
        )
    metric(
        "crm_kpi_agents",
        "gauge",
        "Agents by presence now.",
        [(f'{{presence="{_label(p)}"}}', n) for p, n in sorted(live.agents_by_presence.items())],
    )
    metric(
        "crm_kpi_open_interactions",
        "gauge",
        "Interactions not resolved, closed, abandoned or contained.",
        [("", live.backlog.open_interactions)],
    )
    metric(
        "crm_kpi_open_cases",
        "gauge",
        "Cases not solved or closed.",
        [("", live.backlog.open_cases)],
    )
    headline: list[tuple[str, kpis.Rate]] = [
        ("service_level", today.service_level),
        ("answer_rate", today.answer_rate),
        ("abandonment_rate", today.abandonment_rate),
        ("fcr_provisional", today.fcr_provisional),
        ("bot_containment_provisional", today.bot_containment_provisional),
        ("csat", today.csat),
        ("occupancy", today.occupancy),
        ("weighted_occupancy", today.weighted_occupancy),
    ]
    metric(
        "crm_kpi_today_ratio",
        "gauge",
        "Headline rates of today (whole centre, default policy in the policy label).",
        [
            (f'{{kpi="{name}",policy="{_label(value.policy)}"}}', value.value)
            for name, value in headline
            if value.value is not None
        ],
    )
    durations = [
        ("asa", today.asa.mean_s),
        ("aht", today.aht.mean_s),
        ("first_response_median", today.first_response.median_s),
    ]
    metric(
        "crm_kpi_today_seconds",
        "gauge",
        "Headline durations of today (whole centre).",
        [(f'{{kpi="{name}"}}', value) for name, value in durations if value is not None],
    )
    return "\n".join(lines) + "\n"


def open_metrics(
    persistence: PersistenceSettings,
    *,
    time_zone: str = "UTC",
    policy: KpiPolicy | None = None,
    sla_policies: SlaPolicies = DEFAULT_POLICIES,
) -> MetricsProjection:
    """The metrics projection on the storage the persistence settings choose (the read-model
    store called `metrics`): in memory, a SQLite file in the data directory, or PostgreSQL."""
    from crmcore.adapters.readmodels import open_read_model_store

    return MetricsProjection(
        open_read_model_store(persistence, "metrics"),
        time_zone=time_zone,
        policy=policy,
        sla_policies=sla_policies,
    )


# --- feeding from the bus ------------------------------------------------------------------------


class _Wire(msgspec.Struct):
    """The two CloudEvents attributes the projection needs (the rest is skipped unparsed)."""

    type: str
    data: msgspec.Raw


_wire_decoder = msgspec.json.Decoder(_Wire)


class EventDecoder:
    """CloudEvents JSON → the projected event classes (None for other types)."""

    def __init__(self) -> None:
        from crmcore.adapters.envelope import event_type

        self._decoders: dict[str, msgspec.json.Decoder[Any]] = {
            event_type(cls): msgspec.json.Decoder(cls) for cls in projected_event_classes()
        }
        self.unreadable = 0

    def decode(self, payload: bytes) -> DomainEvent | None:
        try:
            wire = _wire_decoder.decode(payload)
            decoder = self._decoders.get(wire.type)
            if decoder is None:
                return None
            event: DomainEvent = decoder.decode(wire.data)
            return event
        except UNREADABLE as error:  # RecursionError too: JSON nested too deep
            self.unreadable += 1
            log.warning("metrics: skipping an event it cannot read: %s", error)
            return None


@dataclass
class FeedStats:
    """What the bus feed did since it started."""

    messages: int = 0
    batches: int = 0
    #: messages in the stream after the last one applied (consumer lag)
    lag: int = 0
    connected: bool = False
    reconnects: int = 0
    last_error: str = ""
    started_at: float = field(default_factory=time.monotonic)


class MetricsFeed:
    """Feeds a `MetricsProjection` from NATS JetStream: every event on `crm.>`.

    On every (re)connection the durable pull consumer `metrics` is recreated to start right
    after the position recorded in the read-model store, which is the only source of truth
    (so a wiped or rebuilt store, a restarted NATS or a lost ack never loses or repeats an
    event). Each fetched batch is decoded and applied in one transaction with its last stream
    sequence, then acknowledged at once (ack policy "all"). One feed per store: two would
    recreate each other's consumer.

    `stop_at`: return once the position reaches this sequence (rebuild).
    """

    def __init__(
        self,
        projection: MetricsProjection,
        settings: BusSettings,
        *,
        durable: str = DURABLE,
        batch: int = 1000,
        fetch_wait_s: float = 0.05,
        stop_at: int | None = None,
        run_blocking: Callable[..., Any] | None = None,
    ) -> None:
        self.projection = projection
        self.settings = settings
        self.durable = durable
        self.batch = batch
        self.fetch_wait_s = fetch_wait_s
        self.stop_at = stop_at
        self.stats = FeedStats()
        self.decoder = EventDecoder()
        self._stopping = asyncio.Event()
        self._run_blocking = run_blocking

    def stop(self) -> None:
        self._stopping.set()

    @property
    def position(self) -> int:
        return self.projection.position(BUS_SOURCE)

    async def run(self) -> None:
        delay = 0.1
        while not self._stopping.is_set():
            nc = await connect_with_retry(
                self.settings, name=f"crm-{self.durable}", stopping=self._stopping
            )
            if nc is None:
                return
            try:
                js = nc.jetstream()
                subscription = await self._subscribe(js)
                self.stats.connected = True
                delay = 0.1
                if await self._consume(subscription):
                    return
            except Exception as error:
                # NATS away (TRANSIENT_ERRORS), or the store failed a batch (the database
                # restarting): nothing of the batch was kept, and starting over resumes after
                # the stored position, so the batch comes again; the feed never gives up.
                self.stats.reconnects += 1
                self.stats.last_error = f"{type(error).__name__}: {error}"
                log.log(
                    logging.WARNING if isinstance(error, TRANSIENT_ERRORS) else logging.ERROR,
                    "metrics feed: %s; starting over in %.1fs",
                    self.stats.last_error,
                    delay,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=delay)
                delay = min(delay * 2, 5.0)
            finally:
                self.stats.connected = False
                await close_quietly(nc)

    async def _subscribe(self, js: JetStreamContext) -> JetStreamContext.PullSubscription:
        await ensure_stream(js, self.settings)
        after = await self._call(self.projection.position, BUS_SOURCE)
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_consumer(self.settings.stream, self.durable)
        config = ConsumerConfig(
            durable_name=self.durable,
            name=self.durable,
            ack_policy=AckPolicy.ALL,
            ack_wait=60,
            max_ack_pending=max(10_000, self.batch * 4),
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=after + 1,
            filter_subject=self.settings.subjects[0] if len(self.settings.subjects) == 1 else None,
            filter_subjects=list(self.settings.subjects)
            if len(self.settings.subjects) > 1
            else None,
        )
        await js.add_consumer(self.settings.stream, config=config)
        log.info("metrics feed: consuming %s from sequence %d", self.settings.stream, after + 1)
        return await js.pull_subscribe_bind(durable=self.durable, stream=self.settings.stream)

    async def _consume(self, subscription: JetStreamContext.PullSubscription) -> bool:
        """Applies batches until stopped; True when `stop_at` was reached."""
        while not self._stopping.is_set():
            if self.stop_at is not None and self.position >= self.stop_at:
                return True
            try:
                messages = await subscription.fetch(self.batch, timeout=self.fetch_wait_s)
            except nats.errors.TimeoutError:
                self.stats.lag = 0
                continue
            if not messages:
                continue
            await self._call(self._apply, messages)
            await messages[-1].ack()
            self.stats.messages += len(messages)
            self.stats.batches += 1
            self.stats.lag = messages[-1].metadata.num_pending or 0
        return False

    def _apply(self, messages: Sequence[Msg]) -> None:
        items: list[tuple[int, DomainEvent | None]] = []
        decode = self.decoder.decode
        parked = PARKED_PREFIX + "."
        with gc_paused():
            for message in messages:
                sequence = message.metadata.sequence.stream
                if message.subject.startswith(parked):
                    items.append((sequence, None))
                else:
                    items.append((sequence, decode(message.data)))
            self.projection.apply(items, source=BUS_SOURCE)

    async def _call(self, function: Callable[..., Any], *args: Any) -> Any:
        if self._run_blocking is not None:
            return await self._run_blocking(function, *args)
        return await asyncio.to_thread(function, *args)


async def stream_last_sequence(settings: BusSettings) -> int:
    """The sequence of the newest message in the event stream (0 when empty or missing)."""
    nc = await connect_with_retry(settings, name="crm-metrics-probe")
    if nc is None:
        return 0
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(settings.stream)
        except nats.js.errors.NotFoundError:
            return 0
        return int(info.state.last_seq or 0)
    finally:
        await close_quietly(nc)


async def rebuild(
    projection: MetricsProjection,
    settings: BusSettings,
    *,
    batch: int = 5000,
    progress: Callable[[int, int], None] | None = None,
    progress_every_s: float = 2.0,
) -> int:
    """Empties the read models and replays the whole stream (up to its last message when the
    rebuild started) into them; returns the position reached. Stop the metrics service first:
    it feeds the same store."""
    last = await stream_last_sequence(settings)
    await asyncio.to_thread(projection.reset)
    if last == 0:
        return 0
    feed = MetricsFeed(projection, settings, batch=batch, stop_at=last)
    # The database writes one batch while the next is decoded and built; leaving the block
    # waits until every batch has committed (and raises if one failed).
    with projection.pipelined():
        runner = asyncio.create_task(feed.run())
        try:
            while not runner.done():
                await asyncio.wait({runner}, timeout=progress_every_s)
                if progress is not None:
                    progress(feed.position, last)
        finally:
            feed.stop()
            await runner
    return feed.position


class ChangeNotifier:
    """Lets coroutines wait for the projection to commit a new batch (live streams)."""

    def __init__(self, projection: MetricsProjection) -> None:
        self.projection = projection
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        projection.add_listener(self._on_commit)

    def _on_commit(self, source: str, position: int) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            self._loop.call_soon_threadsafe(self._changed.set)

    async def wait(self, timeout_s: float) -> bool:
        """True when something was committed since the last call (waiting up to timeout_s)."""
        try:
            await asyncio.wait_for(self._changed.wait(), timeout=timeout_s)
        except TimeoutError:
            return False
        self._changed.clear()
        return True

    def close(self) -> None:
        self.projection.remove_listener(self._on_commit)
