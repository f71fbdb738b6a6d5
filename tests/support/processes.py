"""The machinery of fault runs: the services as real processes, a command load that keeps a
ledger of every outcome, and the reconciliation of store, bus and KPIs against that ledger.

Used by the fault suite (`tests/faults/`) and its benchmark (`python -m bench faults`):

- `ServiceProcess` / `ProcessStack`: `python -m services.<name>` for customer, interaction,
  routing and metrics on one PostgreSQL database and one NATS server, configured by the
  environment only (as `crm up` starts them); each can be killed with SIGKILL and restarted.
- `LoadRunner`: concurrent clients playing contacts (create a customer, open an interaction
  for them, queue, answer, resolve) plus commands refused by a definite error, in a thread of
  its own, while the caller injects faults. A call that ends with a status which does not say
  whether the command happened (UNAVAILABLE, DEADLINE_EXCEEDED, …) is ambiguous and retried:
  creates with the same `request_id`; state changes after reading whether they took place.
- `reconcile`: every acknowledged command must be in the store (read back through the APIs),
  on the bus (the JetStream stream read directly: each event once, and every stored event of
  every application published under its `Nats-Msg-Id`) and in the KPIs of the metrics
  service, exactly once; refused commands must have left nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

import grpc
import nats
import psycopg
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg import sql

from crm.v1 import (
    common_pb2,
    customer_pb2,
    customer_pb2_grpc,
    interaction_pb2,
    interaction_pb2_grpc,
    metrics_pb2,
    metrics_pb2_grpc,
)
from crmcore.adapters.grpc.channels import open_channel
from crmcore.adapters.nats_server import NatsServer, free_loopback_port
from crmcore.config import PersistenceSettings
from crmcore.domain.access import Bearer
from tests.support.postgres import RestartablePostgres

ServiceName = Literal["customer", "interaction", "routing", "metrics"]
SERVICES: tuple[ServiceName, ...] = ("customer", "interaction", "routing", "metrics")
#: The services clients send commands to (routing and metrics only follow the bus here).
COMMANDED: dict[str, ServiceName] = {
    "create_customer": "customer",
    "refused_customer": "customer",
    "open_interaction": "interaction",
    "queue_interaction": "interaction",
    "answer_interaction": "interaction",
    "resolve_interaction": "interaction",
    "refused_resolve": "interaction",
}
STARTUP_S = 60.0
#: A status that does not tell whether the command took place: retried.
AMBIGUOUS = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
    }
)
#: A status a correct service never answers: a bug, whatever the fault (DATA_LOSS: stored
#: data became unreadable, e.g. events sealed with a key the vault lost).
UNEXPECTED = frozenset(
    {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
)
RUN_TAG = "faultrun"
QUEUE = "faults"
T = TypeVar("T")


# --- processes ----------------------------------------------------------------------------


class ProcessError(RuntimeError):
    """A service process did not start or serve; the message holds the end of its log."""


def service_environment(
    *,
    persistence: PersistenceSettings,
    nats_url: str,
    stream: str,
    data_dir: Path,
    addresses: Mapping[ServiceName, str],
    token: str,
) -> dict[str, str]:
    """The environment of every service: ours without CRM/PostgreSQL/NATS settings, plus the
    run's. (Dev tooling: the product reads its environment in `crmcore.config` only.)"""
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CRM_", "POSTGRES_", "NATS_"))
        and not any(f"_{part}" in key for part in ("POSTGRES_", "SQLITE_"))
    }
    environment = inherited | dict(persistence.library_env)
    environment |= {
        "CRM_PERSISTENCE": persistence.kind,
        "CRM_DATA_DIR": str(data_dir),
        "NATS_URL": nats_url,
        "CRM_STREAM": stream,
        "CRM_SHUTDOWN_GRACE_S": "2",
        "CRM_WORKER_THREADS": "16",
        "CRM_METRICS_PROMETHEUS_ADDRESS": "off",
        # The store must answer UNAVAILABLE within the clients' deadlines while it is down.
        "POSTGRES_CONNECT_TIMEOUT": "2",
    }
    environment |= {f"CRM_{name.upper()}_ADDRESS": address for name, address in addresses.items()}
    # Every service registers it as an admin token at start: the load's and checks' bearer.
    environment["CRM_BOOTSTRAP_ADMIN_TOKEN"] = token
    return environment


def healthy(address: str, timeout_s: float = 1.0) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
            )
        except grpc.RpcError:
            return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


class ServiceProcess:
    """One `python -m services.<name>` process with its log file; killed and restarted at will
    on the same address and data."""

    def __init__(
        self, name: ServiceName, address: str, environment: dict[str, str], log_path: Path
    ) -> None:
        self.name = name
        self.address = address
        self.environment = environment
        self.log_path = log_path
        self.starts = 0
        self._terminated = False
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if self.running:
            return
        self.starts += 1
        self._terminated = False
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts} ---\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                [sys.executable, "-m", f"services.{self.name}"],
                env=self.environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_until_serving(self, within_s: float = STARTUP_S) -> None:
        deadline = time.monotonic() + within_s
        while True:
            process = self._process
            if process is None or process.poll() is not None:
                code = None if process is None else process.returncode
                raise ProcessError(f"the {self.name} service exited ({code}):\n{self.log_tail()}")
            if healthy(self.address, 0.5):
                return
            if time.monotonic() > deadline:
                raise ProcessError(
                    f"the {self.name} service is not SERVING after {within_s:.0f} s:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL, as a crashed machine or an OOM kill: no grace, nothing flushed."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGKILL)
        process.wait()

    def terminate(self) -> None:
        """SIGTERM once (a second one would cut the graceful stop short)."""
        process = self._process
        if process is not None and process.poll() is None and not self._terminated:
            self._terminated = True
            process.send_signal(signal.SIGTERM)

    def stop(self, grace_s: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace_s`; the exit status (None: never started)."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            self.terminate()
            try:
                process.wait(grace_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""


class ProcessStack:
    """The four services as processes on one database and one NATS server, all knowing one
    admin bearer (`token`, made up here unless given) that clients of the run send."""

    def __init__(
        self,
        *,
        persistence: PersistenceSettings,
        nats_url: str,
        work_dir: Path,
        stream: str = "CRM",
        token: str | None = None,
    ) -> None:
        self.persistence = persistence
        self.nats_url = nats_url
        self.stream = stream
        self.token = token or str(Bearer.new(uuid.uuid4()))
        self.work_dir = work_dir
        work_dir.mkdir(parents=True, exist_ok=True)
        addresses = {name: f"127.0.0.1:{free_loopback_port()}" for name in SERVICES}
        environment = service_environment(
            persistence=persistence,
            nats_url=nats_url,
            stream=stream,
            data_dir=work_dir / "data",
            addresses=addresses,
            token=self.token,
        )
        self.services: dict[ServiceName, ServiceProcess] = {
            name: ServiceProcess(name, addresses[name], environment, work_dir / f"{name}.log")
            for name in SERVICES
        }

    def address(self, name: ServiceName) -> str:
        return self.services[name].address

    def start(self, within_s: float = STARTUP_S) -> None:
        # All at once, as Kubernetes starts them: tables (the event store's and the read
        # models') are created one process at a time under advisory locks, so services
        # starting together on a fresh database do not race.
        for service in self.services.values():
            service.start()
        for service in self.services.values():
            service.wait_until_serving(within_s)

    def kill_and_restart(self, name: ServiceName, within_s: float = STARTUP_S) -> None:
        service = self.services[name]
        service.kill()
        service.start()
        service.wait_until_serving(within_s)

    def stop(self) -> dict[str, int | None]:
        for service in self.services.values():
            service.terminate()
        return {name: service.stop() for name, service in self.services.items()}

    def unexpected_errors(self) -> list[str]:
        """The tracebacks the services logged for RPCs they answered INTERNAL or DATA_LOSS."""
        found: list[str] = []
        for name, service in self.services.items():
            lines = service.log_text().splitlines()
            for index, line in enumerate(lines):
                if "unexpected error in RPC" in line or "stored data cannot be read" in line:
                    block = [line]
                    for following in lines[index + 1 : index + 80]:
                        if following[:4].isdigit():  # the next log record
                            break
                        block.append(following)
                    found.append(f"{name}: " + "\n".join(block))
        return found

    def logs(self) -> str:
        return "\n".join(
            f"=== {name} ===\n{service.log_tail(40)}" for name, service in self.services.items()
        )

    def __enter__(self) -> ProcessStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# --- the load -----------------------------------------------------------------------------

Outcome = Literal["ok", "refused", "gave_up"]


@dataclass
class Attempt:
    """One call: to which service, when, and the status it ended with."""

    service: ServiceName
    command: str
    started: float
    ended: float
    code: str


@dataclass
class Command:
    """One command of the load and how it ended after all retries."""

    kind: str
    key: str
    flow: int
    outcome: Outcome = "gave_up"
    result_id: str = ""
    code: str = ""
    ambiguous: int = 0
    attempts: int = 0


@dataclass
class Flow:
    """One contact of the load: its customer and interaction, as far as they got."""

    number: int
    customer_id: str = ""
    interaction_id: str = ""
    agent_id: str = ""
    #: Acknowledged state changes, in order: "opened", "queued", "answered", "resolved".
    steps: list[str] = field(default_factory=list)


@dataclass
class Ledger:
    """Everything the load sent and what came back."""

    run: str
    commands: list[Command] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    flows: list[Flow] = field(default_factory=list)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def acknowledged(self, kind: str | None = None) -> list[Command]:
        return [c for c in self.commands if c.outcome == "ok" and kind in (None, c.kind)]

    def unexpected(self) -> list[Attempt]:
        return [a for a in self.attempts if a.code in {code.name for code in UNEXPECTED}]

    def gave_up(self) -> list[Command]:
        return [c for c in self.commands if c.outcome == "gave_up"]

    def codes_between(
        self, start: float, end: float, *, meant_to_succeed: bool = False
    ) -> Counter[str]:
        """Statuses of the calls that ended in [start, end] (monotonic clock); with
        `meant_to_succeed`, of those not sent to be refused."""
        return Counter(
            a.code
            for a in self.attempts
            if start <= a.ended <= end
            and not (meant_to_succeed and a.command.startswith("refused"))
        )

    def recovery_s(self, since: float, services: Iterable[ServiceName]) -> float | None:
        """Seconds from `since` until a call to one of `services` started after it succeeded."""
        wanted = set(services)
        ends = [
            a.ended
            for a in self.attempts
            if a.service in wanted and a.code == "OK" and a.started >= since
        ]
        return min(ends) - since if ends else None


class _Definite(Exception):
    """A call ended with a status that says the command did not happen."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code


class _GaveUp(Exception):
    """Retries of an ambiguous call ran out of time."""


@dataclass
class LoadSettings:
    """How hard the load pushes: `clients` concurrent contacts, each pausing `pause_s`
    between two contacts; every `refused_every`-th contact also sends commands refused by a
    definite error. Each call has `deadline_s`; an ambiguous command is retried for up to
    `retry_within_s`."""

    def first_deadline_s(self, number: int, command: Command) -> float:
        hurried = number % self.hurried_every == 0 and command.attempts == 1
        return 0.002 if hurried else self.deadline_s

    clients: int = 6
    pause_s: float = 0.05
    refused_every: int = 5
    #: Every n-th contact's creates first go out with a deadline too short to learn the
    #: outcome: an ambiguous result on purpose, then retried with the same request_id.
    hurried_every: int = 4
    deadline_s: float = 5.0
    retry_within_s: float = 45.0


class LoadRunner:
    """Runs the load in a thread of its own (its own event loop) until `stop()`."""

    def __init__(
        self,
        stack: ProcessStack,
        settings: LoadSettings | None = None,
        *,
        run: str | None = None,
    ) -> None:
        self.stack = stack
        self.settings = settings or LoadSettings()
        self.ledger = Ledger(run=run or uuid.uuid4().hex[:8])
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._numbers = iter(range(1, 10**9))
        self._lock = threading.Lock()

    def start(self) -> LoadRunner:
        self._thread = threading.Thread(target=self._main, name="fault-load", daemon=True)
        self._thread.start()
        return self

    def wait_for_acknowledged(self, count: int, within_s: float = 60.0) -> None:
        """Blocks until `count` commands were acknowledged (the load is under way)."""
        deadline = time.monotonic() + within_s
        while len(self.ledger.acknowledged()) < count:
            if self._failure is not None:
                raise self._failure
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"only {len(self.ledger.acknowledged())} of {count} commands acknowledged "
                    f"after {within_s:.0f} s"
                )
            time.sleep(0.05)

    def stop(self, within_s: float = 90.0) -> Ledger:
        """Lets every client finish its contact (retrying as needed) and returns the ledger."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(within_s)
            if self._thread.is_alive():
                raise TimeoutError(f"the load did not finish within {within_s:.0f} s")
        if self._failure is not None:
            raise self._failure
        return self.ledger

    def _main(self) -> None:
        try:
            asyncio.run(self._clients())
        except BaseException as error:
            self._failure = error

    async def _clients(self) -> None:
        token = self.stack.token
        customer_channel = open_channel(self.stack.address("customer"), token=token)
        interaction_channel = open_channel(self.stack.address("interaction"), token=token)
        clients = _Clients(
            customers=customer_pb2_grpc.CustomerServiceStub(customer_channel),
            interactions=interaction_pb2_grpc.InteractionServiceStub(interaction_channel),
        )
        try:
            await asyncio.gather(*(self._client(clients) for _ in range(self.settings.clients)))
        finally:
            await customer_channel.close(None)
            await interaction_channel.close(None)

    async def _client(self, clients: _Clients) -> None:
        while not self._stopping.is_set():
            with self._lock:
                number = next(self._numbers)
            flow = Flow(number=number)
            self.ledger.flows.append(flow)
            await self._contact(clients, flow)
            await asyncio.sleep(self.settings.pause_s)

    async def _contact(self, clients: _Clients, flow: Flow) -> None:
        run, number = self.ledger.run, flow.number
        create = self._command("create_customer", f"{run}-c-{number}", number)
        customer = await self._create(
            create,
            lambda: clients.customers.CreateCustomer(
                customer_pb2.CreateCustomerRequest(
                    request_id=create.key,
                    customer=customer_pb2.Customer(
                        name=f"Fault {run} {number}",
                        tags=[RUN_TAG],
                        contact_points=[
                            customer_pb2.ContactPoint(
                                kind=customer_pb2.CONTACT_POINT_KIND_EMAIL,
                                value=f"fault-{run}-{number}@example.com",
                            )
                        ],
                    ),
                ),
                timeout=self.settings.first_deadline_s(number, create),
            ),
        )
        if customer is None:
            return
        flow.customer_id = customer.id
        if number % self.settings.refused_every == 0:
            # The same e-mail again, under a request of its own: ALREADY_EXISTS, nothing kept.
            refused = self._command("refused_customer", f"{run}-r-{number}", number)
            await self._create(
                refused,
                lambda: clients.customers.CreateCustomer(
                    customer_pb2.CreateCustomerRequest(
                        request_id=refused.key,
                        customer=customer_pb2.Customer(
                            name=f"Refused {run} {number}",
                            tags=[RUN_TAG],
                            contact_points=[
                                customer_pb2.ContactPoint(
                                    kind=customer_pb2.CONTACT_POINT_KIND_EMAIL,
                                    value=f"fault-{run}-{number}@example.com",
                                )
                            ],
                        ),
                    ),
                    timeout=self.settings.deadline_s,
                ),
            )
        opening = self._command("open_interaction", f"{run}-i-{number}", number)
        opened = await self._create(
            opening,
            lambda: clients.interactions.OpenInteraction(
                interaction_pb2.OpenInteractionRequest(
                    request_id=opening.key,
                    channel=common_pb2.CHANNEL_PHONE,
                    customer_id=customer.id,
                    contact_reason="billing",
                ),
                timeout=self.settings.first_deadline_s(number, opening),
            ),
        )
        if opened is None:
            return
        flow.interaction_id = opened.id
        flow.steps.append("opened")
        interaction_id = opened.id
        agent_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"agent-{run}-{number % 7}"))
        flow.agent_id = agent_id
        if number % self.settings.refused_every == 0:
            # Resolving what nobody answered: FAILED_PRECONDITION, nothing kept.
            refused_resolve = self._command(
                "refused_resolve", f"{interaction_id}:resolve-early", number
            )
            await self._change(
                clients,
                refused_resolve,
                interaction_id,
                lambda: clients.interactions.ResolveInteraction(
                    interaction_pb2.ResolveInteractionRequest(
                        interaction_id=interaction_id, resolution="too early"
                    ),
                    timeout=self.settings.deadline_s,
                ),
                done_when=lambda got: got.status == interaction_pb2.INTERACTION_STATUS_RESOLVED,
            )
        steps: list[tuple[str, Callable[[], Awaitable[Any]], Callable[[Any], bool]]] = [
            (
                "queue_interaction",
                lambda: clients.interactions.QueueInteraction(
                    interaction_pb2.QueueInteractionRequest(
                        interaction_id=interaction_id, queue=QUEUE
                    ),
                    timeout=self.settings.deadline_s,
                ),
                lambda got: got.status != interaction_pb2.INTERACTION_STATUS_CREATED,
            ),
            (
                "answer_interaction",
                lambda: clients.interactions.AnswerInteraction(
                    interaction_pb2.AnswerInteractionRequest(
                        interaction_id=interaction_id, agent_id=agent_id
                    ),
                    timeout=self.settings.deadline_s,
                ),
                lambda got: (
                    got.status
                    in (
                        interaction_pb2.INTERACTION_STATUS_ACTIVE,
                        interaction_pb2.INTERACTION_STATUS_RESOLVED,
                    )
                ),
            ),
            (
                "resolve_interaction",
                lambda: clients.interactions.ResolveInteraction(
                    interaction_pb2.ResolveInteractionRequest(
                        interaction_id=interaction_id, resolution="done"
                    ),
                    timeout=self.settings.deadline_s,
                ),
                lambda got: got.status == interaction_pb2.INTERACTION_STATUS_RESOLVED,
            ),
        ]
        for kind, call, done_when in steps:
            command = self._command(kind, f"{interaction_id}:{kind}", number)
            await self._change(clients, command, interaction_id, call, done_when=done_when)
            if command.outcome != "ok":
                return
            flow.steps.append(kind.removesuffix("_interaction").replace("queue", "queued"))

    def _command(self, kind: str, key: str, flow: int) -> Command:
        command = Command(kind=kind, key=key, flow=flow)
        self.ledger.commands.append(command)
        return command

    async def _call(self, command: Command, call: Callable[[], Awaitable[T]]) -> T:
        """One attempt, recorded; raises _Definite for a status that says "not done"."""
        service = COMMANDED[command.kind]
        command.attempts += 1
        started = time.monotonic()
        try:
            result = await call()
        except grpc.aio.AioRpcError as error:
            code = error.code()
            self.ledger.attempts.append(
                Attempt(service, command.kind, started, time.monotonic(), code.name)
            )
            command.code = code.name
            if code in AMBIGUOUS or code in UNEXPECTED:
                command.ambiguous += 1
                raise
            raise _Definite(code, error.details() or "") from None
        self.ledger.attempts.append(Attempt(service, command.kind, started, time.monotonic(), "OK"))
        command.code = "OK"
        return result

    async def _retrying(self, command: Command, attempt: Callable[[], Awaitable[T]]) -> T:
        deadline = time.monotonic() + self.settings.retry_within_s
        pause = 0.05
        while True:
            try:
                return await attempt()
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise _GaveUp(command.key) from None
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.5)

    async def _create(self, command: Command, call: Callable[[], Awaitable[Any]]) -> Any:
        """A create, retried with the same request_id until its outcome is definite."""
        try:
            result = await self._retrying(command, lambda: self._call(command, call))
        except _Definite:
            command.outcome = "refused"
            return None
        except _GaveUp:
            command.outcome = "gave_up"
            return None
        command.outcome = "ok"
        command.result_id = result.id
        return result

    async def _change(
        self,
        clients: _Clients,
        command: Command,
        interaction_id: str,
        call: Callable[[], Awaitable[Any]],
        *,
        done_when: Callable[[Any], bool],
    ) -> None:
        """A state change. Not idempotent by key: after an ambiguous attempt the state is read
        back, and a retry refused because the change already happened counts as done.

        The read-back before a retry is not enough on its own: the server may still be
        storing the ambiguous attempt (retrying its lost connection to the database) when it
        is read, and store it before the retry arrives, which the retry then finds done and
        refuses. So a refusal after an ambiguous attempt is an unknown outcome too: the state
        is read again, and only a change that did not happen counts as refused."""
        was_ambiguous = False

        async def attempt() -> Any:
            nonlocal was_ambiguous
            if was_ambiguous:
                current = await self._read_interaction(clients, command, interaction_id)
                if done_when(current):
                    return current
            try:
                return await self._call(command, call)
            except grpc.aio.AioRpcError:
                was_ambiguous = True
                raise
            except _Definite:
                if was_ambiguous:
                    current = await self._read_interaction(clients, command, interaction_id)
                    if done_when(current):
                        return current
                raise

        try:
            result = await self._retrying(command, attempt)
        except _Definite:
            command.outcome = "refused"
            return
        except _GaveUp:
            command.outcome = "gave_up"
            return
        command.outcome = "ok"
        command.result_id = result.id

    async def _read_interaction(
        self, clients: _Clients, command: Command, interaction_id: str
    ) -> Any:
        started = time.monotonic()
        try:
            return await clients.interactions.GetInteraction(
                interaction_pb2.GetInteractionRequest(id=interaction_id),
                timeout=self.settings.deadline_s,
            )
        except grpc.aio.AioRpcError as error:
            self.ledger.attempts.append(
                Attempt(
                    "interaction", "get_interaction", started, time.monotonic(), error.code().name
                )
            )
            raise


@dataclass
class _Clients:
    customers: customer_pb2_grpc.CustomerServiceAsyncStub
    interactions: interaction_pb2_grpc.InteractionServiceAsyncStub


# --- reading back -------------------------------------------------------------------------


@dataclass(frozen=True)
class BusEvent:
    """One message of the stream: its de-duplication id, CloudEvents type and subject."""

    sequence: int
    msg_id: str
    type: str
    subject: str


async def read_stream(nats_url: str, stream: str, within_s: float = 30.0) -> list[BusEvent]:
    """Every message the stream holds now, read directly with an ordered consumer."""
    nc = await nats.connect(nats_url, allow_reconnect=False, connect_timeout=5)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        last = info.state.last_seq
        events: list[BusEvent] = []
        if info.state.messages == 0:
            return events
        subscription = await js.subscribe(
            ">", stream=stream, ordered_consumer=True, deliver_policy=nats.js.api.DeliverPolicy.ALL
        )
        deadline = time.monotonic() + within_s
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"read {len(events)} messages of stream {stream}")
                msg = await subscription.next_msg(timeout=remaining)
                body = json.loads(msg.data)
                sequence = msg.metadata.sequence.stream
                events.append(
                    BusEvent(
                        sequence=sequence,
                        msg_id=(msg.headers or {}).get("Nats-Msg-Id", ""),
                        type=str(body.get("type", "")),
                        subject=str(body.get("subject", "")),
                    )
                )
                if sequence >= last:
                    return events
        finally:
            await subscription.unsubscribe()
    finally:
        await nc.close()


def stored_notification_ids(persistence: PersistenceSettings) -> dict[str, set[int]]:
    """Per application (events table `<name>_events`), the notification ids in the store."""
    env = persistence.library_env
    with psycopg.connect(
        host=env["POSTGRES_HOST"],
        port=int(env["POSTGRES_PORT"]),
        user=env["POSTGRES_USER"],
        password=env.get("POSTGRES_PASSWORD", ""),
        dbname=env["POSTGRES_DBNAME"],
        connect_timeout=5,
        autocommit=True,
    ) as connection:
        tables = [
            str(row[0])
            for row in connection.execute(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = current_schema() AND table_name LIKE %s",
                ("%\\_events",),
            )
        ]
        found: dict[str, set[int]] = {}
        for table in tables:
            rows = connection.execute(
                sql.SQL("SELECT notification_id FROM {}").format(sql.Identifier(table))
            )
            found[table.removesuffix("_events")] = {int(row[0]) for row in rows}
        return found


def _timestamp(at: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(at)
    return stamp


async def read_kpis(address: str, token: str, since: datetime) -> Any:
    """The metrics service's KPIs of everything from `since` (an hour either side)."""
    async with open_channel(address, token=token) as channel:
        report = await metrics_pb2_grpc.MetricsServiceStub(channel).GetKpis(
            metrics_pb2.GetKpisRequest(
                period=metrics_pb2.Period(
                    range=metrics_pb2.TimeRange(
                        start_time=_timestamp(since - timedelta(hours=1)),
                        end_time=_timestamp(datetime.now(UTC) + timedelta(hours=1)),
                    )
                )
            ),
            timeout=10,
        )
    return report.rows[0].kpis if report.rows else metrics_pb2.Kpis()


# --- reconciliation -----------------------------------------------------------------------

#: What each acknowledged command leaves on the bus: an event of this type about its aggregate.
BUS_TYPES = {
    "create_customer": "crm.customer.registered.v1",
    "open_interaction": "crm.interaction.opened.v1",
    "queue_interaction": "crm.interaction.queued.v1",
    "answer_interaction": "crm.interaction.answered.v1",
    "resolve_interaction": "crm.interaction.resolved.v1",
}
#: Which KPI of the metrics service counts each kind of command once.
KPI_FIELDS = {
    "open_interaction": "created",
    "queue_interaction": "offered",
    "answer_interaction": "answered",
    "resolve_interaction": "issues_resolved",
}
#: Applications whose stored events the services publish (the token store stays private).
RELAYED = ("customers", "interactions", "routing")
_STATUS_RANK: dict[int, int] = {
    interaction_pb2.INTERACTION_STATUS_CREATED: 0,
    interaction_pb2.INTERACTION_STATUS_QUEUED: 1,
    interaction_pb2.INTERACTION_STATUS_OFFERED: 1,
    interaction_pb2.INTERACTION_STATUS_ACTIVE: 2,
    interaction_pb2.INTERACTION_STATUS_RESOLVED: 3,
}
_STEP_RANK = {
    "open_interaction": 0,
    "queue_interaction": 1,
    "answer_interaction": 2,
    "resolve_interaction": 3,
}


@dataclass
class Reconciliation:
    """The ledger held against the store, the bus and the KPIs.

    `lost`/`duplicated` name acknowledged commands missing from (or found more than once in)
    any of the three; `leftovers` name refused commands that left something behind;
    `unpublished` names stored events missing from the bus (`<application>:<notification>`).
    """

    sent: int = 0
    acknowledged: int = 0
    refused: int = 0
    gave_up: int = 0
    in_store: int = 0
    on_bus: int = 0
    in_kpis: int = 0
    kpi_counted: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    unpublished: list[str] = field(default_factory=list)
    bus_messages: int = 0

    @property
    def consistent(self) -> bool:
        return not (self.lost or self.duplicated or self.leftovers or self.unpublished)

    def figures(self) -> dict[str, object]:
        return {
            "sent": self.sent,
            "acknowledged": self.acknowledged,
            "in_store": self.in_store,
            "on_bus": self.on_bus,
            "in_kpis": self.in_kpis,
            "lost": len(self.lost),
            "duplicated": len(self.duplicated),
        }

    def describe(self) -> str:
        lines = [
            f"sent {self.sent}, acknowledged {self.acknowledged}, refused {self.refused}, "
            f"gave up {self.gave_up}; in store {self.in_store}, on bus {self.on_bus} "
            f"({self.bus_messages} messages), in KPIs {self.in_kpis} of {self.kpi_counted}",
        ]
        for name in ("lost", "duplicated", "leftovers", "unpublished"):
            items: list[str] = getattr(self, name)
            if items:
                lines.append(f"{name} ({len(items)}): {', '.join(items[:10])}")
        return "\n".join(lines)


@dataclass
class _Observed:
    customers: Counter[str]
    customer_ids: dict[str, str]
    interactions: dict[str, list[tuple[str, int]]]
    bus: list[BusEvent]
    stored: dict[str, set[int]]
    kpis: Any


async def _list_customers(stub: customer_pb2_grpc.CustomerServiceAsyncStub) -> list[Any]:
    found: list[Any] = []
    token = ""
    while True:
        page = await stub.ListCustomers(
            customer_pb2.ListCustomersRequest(page_size=500, page_token=token, tag=RUN_TAG),
            timeout=30,
        )
        found.extend(page.customers)
        token = page.next_page_token
        if not token:
            return found


async def _interactions_of(
    stub: interaction_pb2_grpc.InteractionServiceAsyncStub, customer_ids: Sequence[str]
) -> dict[str, list[tuple[str, int]]]:
    limit = asyncio.Semaphore(16)

    async def of(customer_id: str) -> tuple[str, list[tuple[str, int]]]:
        async with limit:
            page = await stub.ListInteractions(
                interaction_pb2.ListInteractionsRequest(customer_id=customer_id, page_size=50),
                timeout=30,
            )
        return customer_id, [(item.id, int(item.status)) for item in page.interactions]

    return dict(await asyncio.gather(*(of(customer_id) for customer_id in customer_ids)))


async def _observe(stack: ProcessStack, ledger: Ledger) -> _Observed:
    async with (
        open_channel(stack.address("customer"), token=stack.token) as customers_channel,
        open_channel(stack.address("interaction"), token=stack.token) as interactions_channel,
    ):
        customers = await _list_customers(customer_pb2_grpc.CustomerServiceStub(customers_channel))
        customer_ids = sorted({flow.customer_id for flow in ledger.flows if flow.customer_id})
        interactions = await _interactions_of(
            interaction_pb2_grpc.InteractionServiceStub(interactions_channel), customer_ids
        )
    return _Observed(
        customers=Counter(customer.name for customer in customers),
        customer_ids={customer.name: customer.id for customer in customers},
        interactions=interactions,
        bus=await read_stream(stack.nats_url, stack.stream),
        stored=await asyncio.to_thread(stored_notification_ids, stack.persistence),
        kpis=await read_kpis(stack.address("metrics"), stack.token, ledger.started_at),
    )


def _settled(ledger: Ledger, observed: _Observed) -> bool:
    """Whether the bus and the KPIs have caught up with everything stored."""
    published = {event.msg_id for event in observed.bus}
    for application in RELAYED:
        if any(f"{application}:{n}" not in published for n in observed.stored.get(application, ())):
            return False
    for kind, kpi in KPI_FIELDS.items():
        if int(getattr(observed.kpis, kpi)) < len(ledger.acknowledged(kind)):
            return False
    return True


def compare(ledger: Ledger, observed: _Observed) -> Reconciliation:
    """Holds the ledger against what the store, the bus and the KPIs show."""
    result = Reconciliation(
        sent=len(ledger.commands),
        acknowledged=len(ledger.acknowledged()),
        refused=sum(1 for c in ledger.commands if c.outcome == "refused"),
        gave_up=len(ledger.gave_up()),
        bus_messages=len(observed.bus),
    )
    on_bus = Counter((event.type, event.subject) for event in observed.bus)
    for msg_id, count in Counter(event.msg_id for event in observed.bus).items():
        if count > 1:
            result.duplicated.append(f"bus message {msg_id} x{count}")
    published = {event.msg_id for event in observed.bus}
    for application in RELAYED:
        for number in sorted(observed.stored.get(application, ())):
            if f"{application}:{number}" not in published:
                result.unpublished.append(f"{application}:{number}")
    flows = {flow.number: flow for flow in ledger.flows}
    resolved_acknowledged = {c.result_id for c in ledger.acknowledged("resolve_interaction")}
    for command in ledger.commands:
        run, number = ledger.run, command.flow
        if command.kind == "refused_customer":
            if observed.customers[f"Refused {run} {number}"]:
                result.leftovers.append(command.key)
            continue
        if command.kind == "refused_resolve":
            interaction_id = flows[number].interaction_id
            resolved = on_bus[(BUS_TYPES["resolve_interaction"], interaction_id)]
            if resolved > (1 if interaction_id in resolved_acknowledged else 0):
                result.leftovers.append(command.key)
            continue
        if command.outcome != "ok":
            continue
        label = f"{command.kind} {command.key}"
        # The store, read back through the APIs.
        if command.kind == "create_customer":
            copies = observed.customers[f"Fault {run} {number}"]
            found = observed.customer_ids.get(f"Fault {run} {number}") == command.result_id
            store_copies = copies if found else 0
        else:
            flow = flows[number]
            held = observed.interactions.get(flow.customer_id, [])
            if command.kind == "open_interaction":
                store_copies = len(held) if command.result_id in dict(held) else 0
            else:
                status = dict(held).get(command.result_id)
                rank = -1 if status is None else _STATUS_RANK.get(int(status), -1)
                store_copies = 1 if rank >= _STEP_RANK[command.kind] else 0
        if store_copies == 1:
            result.in_store += 1
        elif store_copies == 0:
            result.lost.append(f"{label}: not in the store")
        else:
            result.duplicated.append(f"{label}: {store_copies} in the store")
        # The bus: its event, exactly once.
        bus_copies = on_bus[(BUS_TYPES[command.kind], command.result_id)]
        if bus_copies == 1:
            result.on_bus += 1
        elif bus_copies == 0:
            result.lost.append(f"{label}: not on the bus")
        else:
            result.duplicated.append(f"{label}: {bus_copies} times on the bus")
    # Nothing on the bus that nobody acknowledged (refused or repeated creates, for one).
    for kind, event_type in BUS_TYPES.items():
        expected = len(ledger.acknowledged(kind)) + sum(
            1 for c in ledger.commands if c.kind == kind and c.outcome == "gave_up"
        )
        total = sum(count for (type_, _), count in on_bus.items() if type_ == event_type)
        if total > expected:
            result.duplicated.append(f"{total - expected} unexplained {event_type} on the bus")
    # The KPIs: each counted command once.
    for kind, kpi in KPI_FIELDS.items():
        expected = len(ledger.acknowledged(kind))
        counted = int(getattr(observed.kpis, kpi))
        result.kpi_counted += expected
        result.in_kpis += min(expected, counted)
        if counted < expected:
            result.lost.append(f"KPI {kpi}: {counted} of {expected} {kind}")
        elif counted > expected:
            result.duplicated.append(f"KPI {kpi}: {counted} for {expected} {kind}")
    return result


async def reconcile(stack: ProcessStack, ledger: Ledger, settle_s: float = 30.0) -> Reconciliation:
    """Waits (up to `settle_s`) for the bus and the KPIs to catch up, then compares."""
    deadline = time.monotonic() + settle_s
    while True:
        try:
            observed = await _observe(stack, ledger)
        except grpc.aio.AioRpcError as error:
            # A service may still be reconnecting to its store: ask again, as clients do.
            if error.code() not in AMBIGUOUS or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
            continue
        if _settled(ledger, observed) or time.monotonic() > deadline:
            return compare(ledger, observed)
        await asyncio.sleep(0.5)


# --- faults -------------------------------------------------------------------------------


@dataclass
class Fault:
    """One injected fault: when it began and ended (monotonic clock) and whose commands it
    hits; `recovery_s` is filled from the ledger once the load is over."""

    name: str
    services: tuple[ServiceName, ...]
    began: float
    ended: float = 0.0
    recovery_s: float | None = None

    @property
    def outage_s(self) -> float:
        return self.ended - self.began


def kill_and_restart(stack: ProcessStack, name: ServiceName) -> Fault:
    """kill -9 of one service and its restart (it counts as ended once SERVING again)."""
    # Routing and metrics take no commands here: they are back when SERVING again.
    commanded: tuple[ServiceName, ...] = (name,) if name in ("customer", "interaction") else ()
    fault = Fault(f"kill -9 {name}", commanded, time.monotonic())
    stack.kill_and_restart(name)
    fault.ended = time.monotonic()
    return fault


def nats_outage(server: NatsServer, outage_s: float) -> Fault:
    """NATS stopped for `outage_s` and started again (same port, same store)."""
    fault = Fault("NATS restart", ("customer", "interaction"), time.monotonic())
    server.stop()
    time.sleep(outage_s)
    server.start()
    fault.ended = time.monotonic()
    return fault


def postgres_outage(postgres: RestartablePostgres, outage_s: float) -> Fault:
    """PostgreSQL cut off abruptly for `outage_s`, then started again (crash recovery)."""
    fault = Fault("PostgreSQL restart", ("customer", "interaction"), time.monotonic())
    postgres.halt()
    time.sleep(outage_s)
    postgres.resume()
    fault.ended = time.monotonic()
    return fault


def measure_recovery(ledger: Ledger, faults: Sequence[Fault]) -> dict[str, float | None]:
    """Per fault, seconds from its beginning until a command to a service it hit, sent
    after it began, succeeded (None: none did); for a service taking no commands, until it
    was SERVING again."""
    for fault in faults:
        fault.recovery_s = (
            ledger.recovery_s(fault.began, fault.services) if fault.services else fault.outage_s
        )
    return {fault.name: fault.recovery_s for fault in faults}
