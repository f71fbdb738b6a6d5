"""NATS JetStream for crmcore: connecting, the event stream, and durable event consumers.

- `connect()` opens a client with options fit for long-running services (reconnect forever,
  quick detection of a dead server, errors logged rather than printed).
- `ensure_stream()` creates or updates the event stream (`CRM`, capturing `crm.>`, file
  storage, retention and de-duplication window from `BusSettings`); safe to call at every start.
- `EventConsumer` is a durable pull consumer with explicit acks that hands each event, decoded
  into its class, to the handler registered for its type. Handling is idempotent (an event seen
  before is acknowledged without calling the handler again), a failing event is retried with
  back-off and parked after `max_deliver` deliveries (terminated, copied to
  `crm.parked.<durable>` with a log line), and the consumer survives NATS restarts. A handler
  failing because its store cannot be reached (`crmcore.adapters.store_outages`) is not the
  event's fault: the event is held and retried with back-off (its ack wait extended, no
  delivery counted) until the store is back, however long that takes; only poison (an
  undecodable event, a handler's other errors) is parked.

Per-aggregate order holds while handlers succeed; a retried event may arrive after later ones,
so handlers that care compare `envelope.version` with what they have already applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)

from crmcore.adapters.envelope import (
    MSG_ID_HEADER,
    Envelope,
    EnvelopeError,
    EventRegistry,
    decode,
    event_type,
)
from crmcore.adapters.store_outages import is_store_unavailable
from crmcore.config import BusSettings
from crmcore.domain.base import DomainEvent

logger = logging.getLogger(__name__)

#: Subject prefix under which consumers park events they could not handle.
PARKED_PREFIX = "crm.parked"
PARKED_REASON_HEADER = "Crm-Parked-Reason"
PARKED_SUBJECT_HEADER = "Crm-Parked-Subject"

#: Errors meaning "NATS is not reachable or not answering right now": retry later.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    nats.errors.Error,
    nats.js.errors.Error,
    asyncio.TimeoutError,
    OSError,
)

_CLOSE_ERRORS: tuple[type[BaseException], ...] = (*TRANSIENT_ERRORS, RuntimeError)

TEvent = TypeVar("TEvent", bound=DomainEvent)
Callback = Callable[[], Awaitable[None]]


# --- connecting ---------------------------------------------------------------------------------


async def connect(
    settings: BusSettings,
    *,
    name: str,
    reconnect: bool = True,
    connect_timeout_s: float = 2.0,
    disconnected_cb: Callback | None = None,
    reconnected_cb: Callback | None = None,
    closed_cb: Callback | None = None,
) -> NATS:
    """A connected client.

    With `reconnect` it waits for a server as long as it takes (the first connection too)
    and reconnects forever after losing it. Without, it tries each server twice, raising
    `nats.errors.NoServersError` if none answers, and closes (calling `closed_cb`) when the
    connection breaks, so the caller decides what to redo.
    """

    last_refusal: list[tuple[str, float]] = []

    async def log_error(error: Exception) -> None:
        # A server that is down is routine (debug); one refusing our credentials or TLS needs
        # an operator: a warning, repeated at most every REFUSAL_LOG_EVERY_S while it lasts.
        if not is_refusal(error):
            logger.debug("NATS client %s: %s", name, error)
            return
        text = f"{type(error).__name__}: {error}"
        now = time.monotonic()
        repeated = bool(last_refusal) and last_refusal[0][0] == text
        if repeated and now - last_refusal[0][1] < REFUSAL_LOG_EVERY_S:
            return
        last_refusal[:] = [(text, now)]
        logger.warning(
            "NATS at %s refused client %s (%s): check NATS_USER/NATS_PASSWORD, NATS_TOKEN, "
            "NATS_CREDS_FILE, NATS_NKEY_SEED_FILE and NATS_TLS_*; retrying",
            settings.url,
            name,
            text,
        )

    async def on_disconnected() -> None:
        logger.info("NATS client %s disconnected from %s", name, settings.url)
        if disconnected_cb is not None:
            await disconnected_cb()

    async def on_reconnected() -> None:
        logger.info("NATS client %s reconnected", name)
        if reconnected_cb is not None:
            await reconnected_cb()

    # Options as nats.connect passes them (its client annotates some seconds as int).
    options: dict[str, Any] = dict(
        servers=settings.servers,
        name=name,
        allow_reconnect=reconnect,
        # nats-py counts attempts per server and treats 0 (and -1) as "no limit".
        max_reconnect_attempts=-1 if reconnect else 1,
        reconnect_time_wait=0.5,
        connect_timeout=connect_timeout_s,
        # A server that vanished without closing the socket is noticed within ~10 s.
        ping_interval=5,
        max_outstanding_pings=2,
        error_cb=log_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
        closed_cb=closed_cb,
        **security_options(settings),
    )
    client = TlsRequiringClient() if settings.tls else NATS()
    await client.connect(**options)
    return client


class TlsRequiringClient(NATS):
    """A nats-py client that, wanting TLS, refuses a server not asking for it.

    nats-py upgrades to TLS only when the server's INFO says `tls_required`: given a `tls://`
    URL and a TLS context, it still talks in clear to a server that does not, and sends the
    credentials in its CONNECT. A misconfigured or spoofed server would read them. This client
    checks the INFO first (on every connect and reconnect, before CONNECT is sent) and gives
    up on such a server with `SecureConnWantedError`, which `connect` logs as a refusal."""

    async def _process_info(self, info: dict[str, Any], initial_connection: bool = False) -> None:
        if initial_connection and not info.get("tls_required", False):
            raise nats.errors.SecureConnWantedError()
        await super()._process_info(info, initial_connection)


#: How often a lasting refusal (credentials, TLS) is logged again while the client retries.
REFUSAL_LOG_EVERY_S = 30.0

_REFUSALS: tuple[type[BaseException], ...] = (
    nats.errors.AuthorizationError,
    nats.errors.InvalidUserCredentialsError,
    nats.errors.SecureConnRequiredError,
    nats.errors.SecureConnWantedError,
    nats.errors.SecureConnFailedError,
    ssl.SSLError,
)


def is_refusal(error: BaseException) -> bool:
    """Whether `error` means the server refused our credentials or TLS (not "unreachable")."""
    if isinstance(error, _REFUSALS):
        return True
    text = str(error).lower()
    return "authorization" in text or "authentication" in text


def security_options(settings: BusSettings) -> dict[str, Any]:
    """nats-py's connect options for the configured credentials and TLS (BusSettings).

    TLS: the server's certificate is checked against `tls_ca_file` (else the system's CAs),
    with a client certificate when one is configured; used whenever the server requires TLS.
    """
    options: dict[str, Any] = {}
    if settings.user is not None:
        options["user"] = settings.user
        options["password"] = settings.password
    if settings.token is not None:
        options["token"] = settings.token
    if settings.creds_file is not None:
        options["user_credentials"] = settings.creds_file
    if settings.nkey_seed_file is not None:
        options["nkeys_seed"] = settings.nkey_seed_file
    if settings.tls:
        context = ssl.create_default_context(cafile=settings.tls_ca_file)
        if settings.tls_cert_file is not None:
            context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
        options["tls"] = context
    return options


async def connect_with_retry(
    settings: BusSettings,
    *,
    name: str,
    stopping: asyncio.Event | None = None,
    initial_delay_s: float = 0.1,
    max_delay_s: float = 5.0,
    **options: Any,
) -> NATS | None:
    """A reconnecting client, waiting for NATS as long as it takes; None if `stopping` is set
    first. Errors other than "no server answers" (a refused login…) are retried with
    exponential back-off and logged."""
    delay = initial_delay_s
    while stopping is None or not stopping.is_set():
        attempt = asyncio.ensure_future(connect(settings, name=name, **options))
        stop = asyncio.ensure_future(stopping.wait()) if stopping is not None else None
        waiters: set[asyncio.Future[Any]] = {attempt} if stop is None else {attempt, stop}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if stop is not None:
                stop.cancel()
        if not attempt.done():
            attempt.cancel()
            with contextlib.suppress(BaseException):
                await attempt
            return None
        try:
            return attempt.result()
        except TRANSIENT_ERRORS as error:
            logger.warning(
                "NATS at %s refused %s (%s); retrying in %.1fs",
                settings.url,
                name,
                error or type(error).__name__,
                delay,
            )
        if await _sleep_unless(stopping, delay):
            return None
        delay = min(delay * 2, max_delay_s)
    return None


async def _sleep_unless(stopping: asyncio.Event | None, delay: float) -> bool:
    """Sleeps `delay` seconds; True if `stopping` was set meanwhile."""
    if stopping is None:
        await asyncio.sleep(delay)
        return False
    try:
        await asyncio.wait_for(stopping.wait(), timeout=delay)
    except TimeoutError:
        return False
    return True


# --- the stream ---------------------------------------------------------------------------------


def stream_config(settings: BusSettings) -> StreamConfig:
    """The event stream as configured: file storage, limits retention, de-dup window."""
    return StreamConfig(
        name=settings.stream,
        description="Every event of the CRM core, as CloudEvents (ARCHITECTURE.md)",
        subjects=list(settings.subjects),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=settings.max_age_s,
        max_bytes=settings.max_bytes,
        duplicate_window=settings.duplicate_window_s,
    )


def _differs(current: StreamConfig, wanted: StreamConfig) -> list[str]:
    changed = []
    if sorted(current.subjects or []) != sorted(wanted.subjects or []):
        changed.append("subjects")
    for name in ("max_age", "max_bytes", "duplicate_window"):
        if abs(float(getattr(current, name) or 0) - float(getattr(wanted, name) or 0)) > 1e-3:
            changed.append(name)
    return changed


async def ensure_stream(js: JetStreamContext, settings: BusSettings) -> StreamInfo:
    """Creates the event stream, or updates its subjects and limits to the settings."""
    wanted = stream_config(settings)
    for _ in range(3):
        try:
            info = await js.stream_info(settings.stream)
        except nats.js.errors.NotFoundError:
            try:
                created = await js.add_stream(wanted)
            except nats.js.errors.BadRequestError as error:
                # Another process created it between our two calls (err_code 10058).
                if error.err_code == 10058:
                    continue
                raise
            logger.info("created stream %s (%s)", settings.stream, ", ".join(settings.subjects))
            return created
        changed = _differs(info.config, wanted)
        if info.config.storage not in (None, StorageType.FILE):
            logger.warning(
                "stream %s uses %s storage; storage cannot change, keeping it",
                settings.stream,
                info.config.storage,
            )
            wanted.storage = info.config.storage
        if not changed:
            return info
        # Replicas and placement are the operator's choice (a 3-node cluster keeps 3 copies):
        # an update that left them out would be read as "1 replica, anywhere".
        wanted.num_replicas = info.config.num_replicas
        wanted.placement = info.config.placement
        updated = await js.update_stream(wanted)
        logger.info("updated stream %s: %s", settings.stream, ", ".join(changed))
        return updated
    raise RuntimeError(f"stream {settings.stream} could not be created or read")


# --- consumers ----------------------------------------------------------------------------------

Handler = Callable[[Any, Envelope], Awaitable[None]]


class Handlers:
    """Which coroutine handles which event class (one handler per CloudEvents type)."""

    def __init__(self) -> None:
        self._by_type: dict[str, tuple[type[DomainEvent], Handler]] = {}

    def on(
        self, cls: type[TEvent], handler: Callable[[TEvent, Envelope], Awaitable[None]]
    ) -> Handlers:
        name = event_type(cls)
        if name in self._by_type:
            raise ValueError(f"a handler for {name} is already registered")
        self._by_type[name] = (cls, handler)
        return self

    @classmethod
    def of(cls, handlers: Mapping[type[DomainEvent], Handler]) -> Handlers:
        built = cls()
        for event_class, handler in handlers.items():
            built.on(event_class, handler)
        return built

    def get(self, type_name: str) -> tuple[type[DomainEvent], Handler] | None:
        return self._by_type.get(type_name)

    def registry(self) -> EventRegistry:
        return EventRegistry(cls for cls, _ in self._by_type.values())

    def __len__(self) -> int:
        return len(self._by_type)


class ProcessedIds(Protocol):
    """Remembers which events were handled, so a redelivered one is not applied again.

    For crash safety the handler stores the event's `envelope.id` (or the aggregate version it
    reached) in the same transaction as its effect, and `contains` reads it back; `add` is then
    a no-op. `RecentIds` is the built-in, in-process variant.
    """

    async def contains(self, envelope: Envelope) -> bool: ...

    async def add(self, envelope: Envelope) -> None: ...


class RecentIds:
    """The ids of the last `capacity` handled events, in memory: guards against redeliveries
    within one process's life (a lost ack, a NATS reconnect), not across restarts."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    async def contains(self, envelope: Envelope) -> bool:
        return envelope.id in self._ids

    async def add(self, envelope: Envelope) -> None:
        self._ids[envelope.id] = None
        if len(self._ids) > self._capacity:
            self._ids.popitem(last=False)


@dataclass
class ConsumerStats:
    handled: int = 0
    duplicates: int = 0
    ignored: int = 0
    retried: int = 0
    parked: int = 0
    reconnects: int = 0
    #: Tries of events held while their store was unreachable (not counted as deliveries).
    held: int = 0
    parked_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class StartAt:
    """Where a new durable consumer starts: everything (default), new events only, a stream
    sequence or a time. An existing durable consumer keeps its own position."""

    policy: DeliverPolicy = DeliverPolicy.ALL
    sequence: int | None = None
    time: datetime | None = None

    @classmethod
    def sequence_from(cls, sequence: int) -> StartAt:
        return cls(DeliverPolicy.BY_START_SEQUENCE, sequence=sequence)

    @classmethod
    def time_from(cls, time: datetime) -> StartAt:
        return cls(DeliverPolicy.BY_START_TIME, time=time)

    @classmethod
    def new_only(cls) -> StartAt:
        return cls(DeliverPolicy.NEW)


class EventConsumer:
    """A durable pull consumer handing typed events to their handlers (see module docstring).

    `run()` works until `stop()`; it connects (and reconnects) forever, creating the stream and
    the consumer when they are missing (a NATS server that restarted with an empty store).
    """

    def __init__(
        self,
        settings: BusSettings,
        *,
        durable: str,
        subjects: Sequence[str],
        handlers: Handlers | Mapping[type[DomainEvent], Handler],
        processed: ProcessedIds | None = None,
        max_deliver: int = 5,
        batch: int = 100,
        ack_wait_s: float = 30.0,
        fetch_wait_s: float = 1.0,
        retry_delays_s: Sequence[float] = (0.5, 2.0, 5.0, 15.0),
        outage_delays_s: Sequence[float] = (0.5, 1.0, 2.0, 5.0),
        start: StartAt | None = None,
    ) -> None:
        if max_deliver < 1:
            raise ValueError("max_deliver must be at least 1")
        if not durable or not all(ch.isalnum() or ch in "-_" for ch in durable):
            raise ValueError(f"durable name {durable!r}: letters, digits, '-' and '_' only")
        self.settings = settings
        self.durable = durable
        self.subjects = list(subjects)
        self.handlers = handlers if isinstance(handlers, Handlers) else Handlers.of(handlers)
        self.processed: ProcessedIds = processed if processed is not None else RecentIds()
        self.max_deliver = max_deliver
        self.batch = batch
        self.ack_wait_s = ack_wait_s
        self.fetch_wait_s = fetch_wait_s
        self.retry_delays_s = tuple(retry_delays_s) or (1.0,)
        #: Pauses between tries of an event whose store is down (the last one repeats).
        self.outage_delays_s = tuple(outage_delays_s) or (1.0,)
        #: The fetched messages not handled yet (their ack wait is extended during an outage).
        self._in_hand: Sequence[Msg] = ()
        self.start = start or StartAt()
        self.parked_subject = f"{PARKED_PREFIX}.{durable}"
        self.stats = ConsumerStats()
        self._stopping = asyncio.Event()
        self._wants_parked = any(s.startswith(PARKED_PREFIX) for s in self.subjects)

    def stop(self) -> None:
        """Asks `run()` to return after the message in hand (at most `fetch_wait_s` later)."""
        self._stopping.set()

    def consumer_config(self) -> ConsumerConfig:
        config = ConsumerConfig(
            durable_name=self.durable,
            name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait_s,
            # The server stops redelivering past this even if the process handling the last
            # delivery died before it could park the message.
            max_deliver=self.max_deliver,
            max_ack_pending=max(1000, self.batch * 10),
            deliver_policy=self.start.policy,
            opt_start_seq=self.start.sequence,
            opt_start_time=self.start.time,
        )
        if len(self.subjects) == 1:
            config.filter_subject = self.subjects[0]
        else:
            config.filter_subjects = self.subjects
        return config

    async def run(self) -> None:
        delay = 0.1
        while not self._stopping.is_set():
            nc = await connect_with_retry(
                self.settings, name=f"crm-consumer-{self.durable}", stopping=self._stopping
            )
            if nc is None:
                return
            try:
                js = nc.jetstream()
                subscription = await self._subscribe(js)
                delay = 0.1
                await self._consume(js, subscription)
            except TRANSIENT_ERRORS as error:
                self.stats.reconnects += 1
                logger.warning(
                    "consumer %s: %s; starting over in %.1fs",
                    self.durable,
                    error or type(error).__name__,
                    delay,
                )
                if await _sleep_unless(self._stopping, delay):
                    break
                delay = min(delay * 2, 5.0)
            finally:
                await close_quietly(nc)

    async def _subscribe(self, js: JetStreamContext) -> JetStreamContext.PullSubscription:
        await ensure_stream(js, self.settings)
        try:
            await js.consumer_info(self.settings.stream, self.durable)
        except nats.js.errors.NotFoundError:
            await js.add_consumer(self.settings.stream, config=self.consumer_config())
            logger.info(
                "created consumer %s on %s (%s)",
                self.durable,
                self.settings.stream,
                ", ".join(self.subjects),
            )
        return await js.pull_subscribe_bind(durable=self.durable, stream=self.settings.stream)

    async def _consume(
        self, js: JetStreamContext, subscription: JetStreamContext.PullSubscription
    ) -> None:
        while not self._stopping.is_set():
            try:
                messages = await subscription.fetch(self.batch, timeout=self.fetch_wait_s)
            except nats.errors.TimeoutError:
                # Nothing pending (or the server is away and the client reconnecting).
                continue
            for index, message in enumerate(messages):
                self._in_hand = messages[index:]
                await self._handle(js, message)
            self._in_hand = ()

    async def _handle(self, js: JetStreamContext, message: Msg) -> None:
        if message.subject.startswith(PARKED_PREFIX + ".") and not self._wants_parked:
            await message.ack()
            return
        try:
            envelope = decode(message.data)
        except EnvelopeError as error:
            await self._park(js, message, f"unreadable CloudEvent: {error}")
            return
        entry = self.handlers.get(envelope.type)
        if entry is None:
            self.stats.ignored += 1
            await message.ack()
            return
        if await self.processed.contains(envelope):
            self.stats.duplicates += 1
            await message.ack()
            return
        cls, handler = entry
        try:
            event: DomainEvent = envelope.data_as(cls)
        except EnvelopeError as error:
            await self._park(js, message, str(error))
            return
        try:
            await handler(event, envelope)
        except Exception as error:
            if not is_store_unavailable(error):
                await self._failed(js, message, envelope, error)
                return
            if not await self._through_outage(js, message, envelope, event, handler, error):
                return
        await self.processed.add(envelope)
        self.stats.handled += 1
        await message.ack()

    async def _through_outage(
        self,
        js: JetStreamContext,
        message: Msg,
        envelope: Envelope,
        event: DomainEvent,
        handler: Handler,
        error: Exception,
    ) -> bool:
        """Retries the handler while its store is unreachable, with back-off, until it
        succeeds (True). Not a nak: a delivery would be counted, and after `max_deliver` of
        them the server would drop a valid event whose effect is then lost. The ack wait of
        the messages in hand is extended meanwhile. False when the handler failed otherwise
        (handled as any failure) or the consumer is stopping (the message stays unacked and
        is delivered again later)."""
        attempt = 0
        while True:
            delay = self.outage_delays_s[min(attempt, len(self.outage_delays_s) - 1)]
            attempt += 1
            self.stats.held += 1
            if attempt == 1 or attempt % 10 == 0:
                logger.warning(
                    "consumer %s: store unavailable handling %s %s (try %d), retrying in "
                    "%.1fs until it is back: %s: %s",
                    self.durable,
                    envelope.type,
                    envelope.id,
                    attempt,
                    delay,
                    type(error).__name__,
                    error,
                )
            for held in self._in_hand or (message,):
                with contextlib.suppress(*TRANSIENT_ERRORS):
                    # Keeps the server from redelivering them (and counting it) meanwhile.
                    await held.in_progress()
            if await _sleep_unless(self._stopping, delay):
                return False
            try:
                await handler(event, envelope)
            except Exception as again:
                if is_store_unavailable(again):
                    error = again
                    continue
                await self._failed(js, message, envelope, again)
                return False
            return True

    async def _failed(
        self, js: JetStreamContext, message: Msg, envelope: Envelope, error: Exception
    ) -> None:
        deliveries = message.metadata.num_delivered or 1
        if deliveries >= self.max_deliver:
            await self._park(js, message, f"{type(error).__name__}: {error}", deliveries)
            return
        delay = self.retry_delays_s[min(deliveries, len(self.retry_delays_s)) - 1]
        self.stats.retried += 1
        logger.warning(
            "consumer %s: %s %s failed (delivery %d of %d), retrying in %.1fs: %s: %s",
            self.durable,
            envelope.type,
            envelope.id,
            deliveries,
            self.max_deliver,
            delay,
            type(error).__name__,
            error,
        )
        await message.nak(delay=delay)

    async def _park(
        self, js: JetStreamContext, message: Msg, reason: str, deliveries: int | None = None
    ) -> None:
        """Stops redelivery of a message that cannot be handled and keeps a copy aside."""
        original_id = (message.headers or {}).get(MSG_ID_HEADER) or str(
            message.metadata.sequence.stream if message.metadata.sequence else "?"
        )
        headers = {
            key: value for key, value in (message.headers or {}).items() if key != MSG_ID_HEADER
        }
        headers[MSG_ID_HEADER] = f"parked:{self.durable}:{original_id}"
        headers[PARKED_REASON_HEADER] = reason.replace("\r", " ").replace("\n", " ")[:500]
        headers[PARKED_SUBJECT_HEADER] = message.subject
        await js.publish(self.parked_subject, message.data, headers=headers)
        await message.term()
        self.stats.parked += 1
        self.stats.parked_ids.append(original_id)
        logger.error(
            "consumer %s parked %s from %s on %s after %s deliveries: %s",
            self.durable,
            original_id,
            message.subject,
            self.parked_subject,
            deliveries or message.metadata.num_delivered,
            reason,
        )


async def close_quietly(nc: NATS) -> None:
    if nc.is_closed:
        return
    try:
        await asyncio.wait_for(nc.close(), timeout=5)
    except _CLOSE_ERRORS as error:
        logger.debug("closing NATS connection: %s", error)
