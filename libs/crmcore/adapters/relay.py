"""The outbox relay: publishes every event an application stores to NATS JetStream.

It follows the application's notification log (the order events were committed in) in
batches, wraps each event in its CloudEvents envelope and publishes it with
`Nats-Msg-Id = <application>:<notification id>`. Only when JetStream has acknowledged a whole
batch does it record how far it got, in the tracking table the eventsourcing library keeps in
the same database as the events (so the position survives restarts). Publishing is therefore
at least once; a batch republished after a crash is dropped by JetStream's de-duplication
(the acks say `duplicate`), and consumers are idempotent for what falls outside the window.

While NATS is unreachable the relay retries with exponential back-off (capped); commands keep
being stored meanwhile and the backlog is published, in order, when NATS returns. Each
connection is used for one uninterrupted publishing session and never silently reconnects:
after any failure the relay starts over from the recorded position on a fresh connection, so
messages buffered in a broken connection can never overtake the ones that were lost with it
(that keeps per-aggregate order on the bus).

New events are noticed through PostgreSQL LISTEN/NOTIFY (the library notifies the channel of
the events table on every insert) or, for SQLite and in-memory stores, by polling every
`poll_interval_s`; `nudge()` wakes the relay at once from any thread.

Personal data never leaves the service: events are read through the mapper's public view,
which gives the redacted form of every event declaring personal fields.

The eventsourcing library is synchronous: reading, decoding and wrapping events and recording
positions run in worker threads, publishing on the asyncio loop. While one batch waits for its
acks the next is already read and published (at most `max_in_flight` batches at a time).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.application import Application
from eventsourcing.persistence import (
    IntegrityError,
    Mapper,
    Notification,
    Tracking,
    TrackingRecorder,
)
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from crmcore.adapters.envelope import BusMessage, event_id, source_of, to_message
from crmcore.adapters.jetstream import TRANSIENT_ERRORS, close_quietly, connect, ensure_stream
from crmcore.adapters.mapper import MsgspecMapper
from crmcore.config import BusSettings
from crmcore.domain.base import DomainEvent

logger = logging.getLogger(__name__)


class RelayStopped(Exception):
    """The relay was stopped before it reached the position waited for."""


@dataclass
class RelayStats:
    """What the relay has done since it started (for logs, tests and benchmarks)."""

    position: int = 0
    published: int = 0
    duplicates: int = 0
    batches: int = 0
    failures: int = 0
    last_error: str = ""


class OutboxRelay:
    """Publishes the events of one application, in order, at least once (module docstring).

    `await relay.run()` works until `relay.stop()`; `await relay.wait_for(n)` returns once
    everything up to notification id `n` is acknowledged and recorded. `on_acked(n)` is called
    (on the loop) as soon as JetStream has acknowledged everything up to `n`.
    """

    def __init__(
        self,
        app: Application[UUID],
        settings: BusSettings,
        *,
        source: str | None = None,
        batch_size: int | None = None,
        max_in_flight: int = 2,
        poll_interval_s: float = 0.01,
        listen_poll_interval_s: float = 1.0,
        ack_timeout_s: float = 10.0,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 5.0,
        on_acked: Callable[[int], None] | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.name = app.name
        self.source = source_of(source or app.name)
        self.tracking_key = f"nats:{settings.stream}"
        self.batch_size = batch_size or settings.relay_batch
        self.max_in_flight = max(1, max_in_flight)
        self.poll_interval_s = poll_interval_s
        self.listen_poll_interval_s = listen_poll_interval_s
        self.ack_timeout_s = ack_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.stats = RelayStats()
        self._on_acked = on_acked
        self._tracking: TrackingRecorder | None = None
        self._mapper: Mapper[UUID] | None = None
        self._redacting = False
        self._stopping = asyncio.Event()
        self._news = asyncio.Event()
        self._progress = asyncio.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: _PostgresListener | None = None
        self._running = False

    @property
    def position(self) -> int:
        """Notification id up to which everything is published and recorded."""
        return self.stats.position

    # --- control ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Asks `run()` to finish the batches in hand and return. Callable from any thread."""
        self._call_on_loop(self._stopping.set)

    def nudge(self) -> None:
        """Tells the relay new events were stored, so it does not wait for the next poll.
        Callable from any thread (e.g. after a command was saved)."""
        self._call_on_loop(self._news.set)

    def _call_on_loop(self, function: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None:
            function()
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed: nothing left to wake
            loop.call_soon_threadsafe(function)

    async def wait_for(self, notification_id: int, within_s: float | None = None) -> None:
        """Returns once everything up to `notification_id` is published and recorded."""

        async def reached() -> None:
            async with self._progress:
                await self._progress.wait_for(
                    lambda: self.stats.position >= notification_id or not self._running
                )
            if self.stats.position < notification_id:
                raise RelayStopped(f"relay of {self.name} stopped at {self.stats.position}")

        await asyncio.wait_for(reached(), within_s)

    # --- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        if self._running:
            raise RuntimeError("this relay is already running")
        self._running = True
        self._loop = asyncio.get_running_loop()
        try:
            self._listener = _PostgresListener.start_for(self.app, self.nudge)
            await self._run_sessions()
        finally:
            if self._listener is not None:
                await asyncio.to_thread(self._listener.stop)
                self._listener = None
            self._running = False
            async with self._progress:
                self._progress.notify_all()

    async def _run_sessions(self) -> None:
        backoff = self.backoff_initial_s
        while not self._stopping.is_set():
            lost = asyncio.Event()

            async def on_closed(lost: asyncio.Event = lost) -> None:
                lost.set()

            nc: NATS | None = None
            try:
                # The position in the store is the truth: a session never trusts memory.
                await self._advance(await asyncio.to_thread(self._recorded_position))
                nc = await connect(
                    self.settings,
                    name=f"crm-relay-{self.name}",
                    reconnect=False,
                    closed_cb=on_closed,
                )
                await ensure_stream(nc.jetstream(), self.settings)
                await self._session(nc, lost)
                backoff = self.backoff_initial_s
            except _NATS_ERRORS as error:
                backoff = await self._failed(f"NATS at {self.settings.url}", error, backoff)
            except Exception as error:
                # The store failed, or an event cannot be read: never skip one, keep retrying.
                logger.exception("relay of %s: reading or recording events failed", self.name)
                backoff = await self._failed("event store", error, backoff)
            finally:
                if nc is not None:
                    await close_quietly(nc)

    async def _failed(self, what: str, error: BaseException, backoff: float) -> float:
        self.stats.failures += 1
        self.stats.last_error = f"{type(error).__name__}: {error}"
        logger.warning(
            "relay of %s: %s failed (%s); %d events waiting after #%d, retry in %.2fs",
            self.name,
            what,
            self.stats.last_error,
            await asyncio.to_thread(self._backlog),
            self.stats.position,
            backoff,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=backoff)
        return min(backoff * 2, self.backoff_max_s)

    async def _session(self, nc: NATS, lost: asyncio.Event) -> None:
        """Publishes batch after batch on one connection until stopped or something fails.

        Reading the next batch, waiting for the acks of earlier ones and recording positions
        overlap; positions are still recorded strictly in order, each after its acks.
        """
        self._news.clear()
        acks = await _Acks.subscribe(nc)
        in_flight: deque[tuple[_Batch, _Pending]] = deque()
        wire = _Wire.for_client(nc)

        def read_after(position: int) -> asyncio.Task[_Batch]:
            return asyncio.create_task(
                asyncio.to_thread(self._read, position, acks.reserve(), wire)
            )

        reading = read_after(self.stats.position)
        recording: asyncio.Task[None] | None = None

        async def settle_oldest() -> None:
            nonlocal recording
            batch, pending = in_flight.popleft()
            acked = await self._acknowledged(acks, pending, len(batch.messages), lost)
            if self._on_acked is not None:
                self._on_acked(batch.last_id)
            if recording is not None:
                await recording
            recording = asyncio.create_task(self._record(batch.last_id, acked))

        try:
            while not self._stopping.is_set():
                batch = await reading
                if not batch.messages:
                    while in_flight:
                        await settle_oldest()
                    if recording is not None:
                        await recording
                        recording = None
                    await self._wait_for_news()
                    self._news.clear()
                    reading = read_after(batch.last_id)
                    continue
                reading = read_after(batch.last_id)
                in_flight.append((batch, await self._publish(acks, batch, wire)))
                if len(in_flight) >= self.max_in_flight:
                    await settle_oldest()
            while in_flight:
                await settle_oldest()
            if recording is not None:
                await recording
                recording = None
        finally:
            acks.abandon_all()
            if not reading.done():
                reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reading
            # A position whose acks arrived is worth keeping even when the session fails.
            if recording is not None:
                with contextlib.suppress(Exception):
                    await recording

    async def _wait_for_news(self) -> None:
        timeout = self.poll_interval_s if self._listener is None else self.listen_poll_interval_s
        stop = asyncio.ensure_future(self._stopping.wait())
        news = asyncio.ensure_future(self._news.wait())
        try:
            await asyncio.wait({stop, news}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            news.cancel()

    async def _publish(self, acks: _Acks, batch: _Batch, wire: _Wire) -> _Pending:
        """Sends a batch; its acks are collected by `acks` while the loop goes on."""
        pending = acks.expect(batch.number, len(batch.messages))
        await wire.send(batch, pending.reply_prefix)
        return pending

    async def _acknowledged(
        self, acks: _Acks, pending: _Pending, size: int, lost: asyncio.Event
    ) -> _BatchAcks:
        """Waits until JetStream has acknowledged every message of a batch."""
        lost_wait = asyncio.ensure_future(lost.wait())
        waiters: set[asyncio.Future[Any]] = {pending.done, lost_wait}
        try:
            done, _ = await asyncio.wait(
                waiters,
                timeout=self.ack_timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            lost_wait.cancel()
        if pending.done in done:
            return pending.done.result()
        if lost.is_set():
            raise _ConnectionLost(f"connection to {self.settings.url} lost")
        raise TimeoutError(
            f"{pending.missing} of {size} events not acknowledged within {self.ack_timeout_s:g}s"
        )

    async def _record(self, last_id: int, acks: _BatchAcks) -> None:
        """Records the position once the acks of everything up to `last_id` are in."""
        await asyncio.to_thread(self._record_position, last_id)
        self.stats.duplicates += acks.duplicates
        self.stats.published += acks.count - acks.duplicates
        self.stats.batches += 1
        await self._advance(last_id)

    async def _advance(self, position: int) -> None:
        async with self._progress:
            self.stats.position = position
            self._progress.notify_all()

    # --- the store (worker threads) -----------------------------------------------------------

    def _tracking_recorder(self) -> TrackingRecorder:
        if self._tracking is None:
            self._tracking = self.app.factory.tracking_recorder()
        return self._tracking

    def _recorded_position(self) -> int:
        return self._tracking_recorder().max_tracking_id(self.tracking_key) or 0

    def _record_position(self, notification_id: int) -> None:
        recorder = self._tracking_recorder()
        try:
            recorder.insert_tracking(Tracking(self.tracking_key, notification_id))
        except IntegrityError:
            # Already recorded this far (by an earlier session whose last write we did not
            # wait for): nothing to do. Anything else is a real failure.
            if (recorder.max_tracking_id(self.tracking_key) or 0) < notification_id:
                raise

    def _backlog(self) -> int:
        try:
            return max(0, (self.app.recorder.max_notification_id() or 0) - self.stats.position)
        except Exception:
            return -1

    def _public_mapper(self) -> Mapper[UUID]:
        """The application's mapper in the form that never reveals personal data: only the
        redacted form of an event may leave the service (crmcore.adapters.mapper)."""
        if self._mapper is None:
            mapper = self.app.mapper
            self._redacting = isinstance(mapper, MsgspecMapper)
            self._mapper = mapper.public_view() if isinstance(mapper, MsgspecMapper) else mapper
        return self._mapper

    def _read(self, after: int, number: int, wire: _Wire) -> _Batch:
        """The next batch after `after`, wrapped, and ready to send as batch `number`."""
        notifications: Sequence[Notification] = self.app.recorder.select_notifications(
            start=after, limit=self.batch_size, inclusive_of_start=False
        )
        batch = _Batch(last_id=after, number=number)
        if not notifications:
            return batch
        to_domain_event = self._public_mapper().to_domain_event
        for notification in notifications:
            event: Any = to_domain_event(notification)
            if not self._redacting and hasattr(event, "redacted"):
                event = event.redacted()
            if not isinstance(event, DomainEvent):
                raise TypeError(
                    f"notification {notification.id} of {self.name} is a "
                    f"{type(event).__name__}, not a crmcore DomainEvent"
                )
            batch.messages.append(
                to_message(event, id=event_id(self.name, notification.id), source=self.source)
            )
        batch.last_id = notifications[-1].id
        wire.prepare(batch)
        return batch


@dataclass
class _Batch:
    last_id: int
    number: int = 0
    messages: list[BusMessage] = field(default_factory=list)
    #: Per message, the HPUB command split around its reply subject (see `_Wire`).
    commands: list[tuple[bytes, bytes]] = field(default_factory=list)


_UNSAFE_TOKEN = re.compile(rb"[\s]")
_UNSAFE_HEADER = re.compile(rb"[\r\n]")


class _Wire:
    """Sends batches to NATS.

    nats-py spends about ten microseconds per `publish()` (validating, building headers,
    queueing), a third of what the relay can afford per event; so where the client offers
    its internal command queue, each message's HPUB command is built in the worker thread
    that reads the batch and the whole batch is queued at once. Otherwise (another nats-py
    version) messages go through the public `publish()`.
    """

    def __init__(self, nc: NATS, raw: bool) -> None:
        self.nc = nc
        self.raw = raw
        self.max_payload = nc.max_payload

    @classmethod
    def for_client(cls, nc: NATS) -> _Wire:
        raw = callable(getattr(nc, "_send_command", None)) and callable(
            getattr(nc, "_flush_pending", None)
        )
        return cls(nc, raw)

    def prepare(self, batch: _Batch) -> None:
        """Builds the protocol commands of a batch (in the reading thread)."""
        if not self.raw:
            return
        for message in batch.messages:
            subject = message.subject.encode()
            if not subject or _UNSAFE_TOKEN.search(subject):
                raise ValueError(f"event subject {message.subject!r} is not a NATS subject")
            header = [b"NATS/1.0\r\n"]
            for key, value in message.headers.items():
                line = f"{key}: {value}\r\n".encode()
                if _UNSAFE_HEADER.search(line[:-2]):
                    raise ValueError(f"header {key!r} of {message.msg_id} holds a line break")
                header.append(line)
            header.append(b"\r\n")
            head = b"".join(header)
            size = len(head) + len(message.payload)
            if size > self.max_payload:
                # The server would drop the connection: say which event is in the way.
                raise ValueError(
                    f"event {message.msg_id} is {size} bytes, more than the "
                    f"{self.max_payload} NATS accepts"
                )
            batch.commands.append(
                (
                    b"HPUB " + subject + b" ",
                    b" %d %d\r\n" % (len(head), size) + head + message.payload + b"\r\n",
                )
            )

    async def send(self, batch: _Batch, reply_prefix: str) -> None:
        if not self.raw:
            for index, message in enumerate(batch.messages):
                await self.nc.publish(
                    message.subject, message.payload, reply_prefix + str(index), message.headers
                )
            return
        if self.nc.is_closed or not self.nc.is_connected:
            raise _ConnectionLost("connection to NATS lost")
        prefix = reply_prefix.encode()
        blob = b"".join(
            b"".join((start, prefix, b"%d" % index, rest))
            for index, (start, rest) in enumerate(batch.commands)
        )
        await self.nc._send_command(blob)
        await self.nc._flush_pending()


class _ConnectionLost(Exception):
    pass


class _PublishRefused(Exception):
    """JetStream answered a publish with an error."""


_NATS_ERRORS: tuple[type[BaseException], ...] = (
    *TRANSIENT_ERRORS,
    _ConnectionLost,
    _PublishRefused,
)


class _PostgresListener:
    """LISTENs on the channel the PostgreSQL recorder NOTIFYs on every insert, in a thread,
    and calls `wake` for each notification. Reconnects after database errors."""

    def __init__(self, recorder: Any, wake: Callable[[], None]) -> None:
        self._recorder = recorder
        self._wake = wake
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._listen, name=f"relay-listen-{recorder.channel_name}", daemon=True
        )

    @classmethod
    def start_for(
        cls, app: Application[UUID], wake: Callable[[], None]
    ) -> _PostgresListener | None:
        recorder = app.recorder
        if not (hasattr(recorder, "channel_name") and hasattr(recorder, "datastore")):
            return None
        listener = cls(recorder, wake)
        listener._thread.start()
        return listener

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)

    def _listen(self) -> None:
        from psycopg.sql import SQL, Identifier

        delay = 0.1
        while not self._stopping.is_set():
            try:
                with self._recorder.datastore.get_connection() as connection:
                    connection.execute(
                        SQL("LISTEN {0}").format(Identifier(self._recorder.channel_name))
                    )
                    # Events stored before LISTEN took effect are not missed: wake once.
                    self._wake()
                    delay = 0.1
                    try:
                        while not self._stopping.is_set():
                            for _ in connection.notifies(timeout=0.1, stop_after=1):
                                self._wake()
                    finally:
                        connection.execute(SQL("UNLISTEN *"))
            except Exception as error:
                logger.warning("relay LISTEN on PostgreSQL failed (%s); retrying", error)
                self._stopping.wait(delay)
                delay = min(delay * 2, 5.0)


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _PubAck(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: _ApiError | None = None


_pub_ack_decoder = msgspec.json.Decoder(_PubAck)


@dataclass
class _BatchAcks:
    count: int
    duplicates: int = 0


class _Pending:
    """The acks awaited for one batch, whose replies go to `<inbox>.<batch>.<index>`."""

    def __init__(self, number: int, reply_prefix: str, size: int) -> None:
        self.number = number
        self.reply_prefix = reply_prefix
        self.seen = bytearray(size)
        self.missing = size
        self.acks = _BatchAcks(count=size)
        self.done: asyncio.Future[_BatchAcks] = asyncio.get_running_loop().create_future()
        if size == 0:
            self.done.set_result(self.acks)

    def fail(self, error: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(error)
            # Retrieved by whoever awaits it; if nobody does (session already failing),
            # do not let asyncio complain about an unretrieved exception.
            self.done.add_done_callback(lambda future: future.exception())


class _Acks:
    """Collects JetStream publish acks on one wildcard inbox.

    nats-py's `publish_async` makes a future, a random token and a dataclass per message and
    caps a relay near ten thousand events per second; here each message's reply subject is
    `<inbox>.<batch>.<index>`, one callback ticks it off and a batch completes one future.
    """

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.inbox = nc.new_inbox()
        self._next = 0
        self._pending: dict[int, _Pending] = {}

    @classmethod
    async def subscribe(cls, nc: NATS) -> _Acks:
        acks = cls(nc)
        await nc.subscribe(f"{acks.inbox}.*.*", cb=acks._on_ack)
        return acks

    def reserve(self) -> int:
        """A batch number for a batch about to be read."""
        self._next += 1
        return self._next

    def expect(self, number: int, size: int) -> _Pending:
        pending = _Pending(number, f"{self.inbox}.{number}.", size)
        if size:
            self._pending[number] = pending
        return pending

    def abandon_all(self) -> None:
        for pending in self._pending.values():
            if not pending.done.done():
                pending.done.cancel()
        self._pending.clear()

    async def _on_ack(self, msg: Msg) -> None:
        _, _, tail = msg.subject.rpartition(self.inbox + ".")
        number_text, _, index_text = tail.partition(".")
        try:
            number, index = int(number_text), int(index_text)
        except ValueError:
            return
        pending = self._pending.get(number)
        if pending is None or not 0 <= index < len(pending.seen) or pending.seen[index]:
            return  # an ack for an abandoned batch, or a repeat
        if not msg.data:
            status = (msg.headers or {}).get("Status", "?")
            self._fail(pending, f"JetStream answered status {status} (no stream for subject?)")
            return
        try:
            ack = _pub_ack_decoder.decode(msg.data)
        except msgspec.DecodeError as error:
            self._fail(pending, f"unreadable publish ack: {error}")
            return
        if ack.error is not None:
            self._fail(
                pending,
                f"JetStream refused an event: {ack.error.description} "
                f"(code {ack.error.code}/{ack.error.err_code})",
            )
            return
        pending.seen[index] = 1
        pending.missing -= 1
        if ack.duplicate:
            pending.acks.duplicates += 1
        if pending.missing == 0:
            del self._pending[number]
            pending.done.set_result(pending.acks)

    def _fail(self, pending: _Pending, reason: str) -> None:
        self._pending.pop(pending.number, None)
        pending.fail(_PublishRefused(reason))
