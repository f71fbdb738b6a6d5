"""The embedded stack: NATS with JetStream and the four services on one machine.

`crm up` runs it until Ctrl-C or SIGTERM; `crm demo` starts one when none is running. NATS is
the server binary shipped with the package (or the one `NATS_URL` names), on a free loopback
port, its store in the data directory; each service is `python -m services.<name>` on its
configured address, its SQLite files in the data directory (or PostgreSQL when
`CRM_PERSISTENCE=postgres`), so data survives restarts.

Before the services start, the stack makes sure an admin token exists: the one in
`<data dir>/admin.token` if it still works, else a new one written there (mode 0600). The CLI
clients send `CRM_TOKEN` or, failing that, this file's token (`client_token`).

While the stack runs, `<data dir>/endpoints.json` says where everything listens and which
processes it runs (`pids`); `running_stack_endpoints(data_dir)` reads it back for the CLI.
The services and NATS run in their own sessions, so a Ctrl-C meant for `crm up` reaches only
`crm up`, which then stops them in order (services first, then NATS); on Linux each service
also gets SIGTERM if the process that started it dies without stopping it.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from crmcore.adapters.grpc.channels import open_blocking_channel
from crmcore.adapters.nats_server import NatsServer, die_with_parent
from crmcore.application.access import (
    ADMIN_TOKEN_FILE,
    AccessApplication,
    read_token_file,
    write_token_file,
)
from crmcore.config import (
    PersistenceSettings,
    ServiceName,
    access_from_env,
    bus_from_env,
    child_environment,
    client_tls_from_env,
    metrics_from_env,
    persistence_from_env,
    service_from_env,
)
from crmcore.domain.access import ADMIN_SCOPE, Unauthenticated

SERVICES: tuple[ServiceName, ...] = ("customer", "interaction", "routing", "metrics")
ENDPOINTS_FILE = "endpoints.json"


#: Name of the admin token `crm up` issues; with no practical rate limit (the demo's load).
STACK_TOKEN_NAME = "crm-up-admin"
STACK_TOKEN_RATE_PER_S = 100_000.0


class StackError(RuntimeError):
    """The stack could not start; the message says which part and why."""


class MissingToken(StackError):
    """A client command has no access token to send; the message says how to get one."""


@dataclass
class Stack:
    """The processes of a running embedded stack."""

    data_dir: Path
    nats_url: str
    endpoints: dict[str, str]
    nats: NatsServer | None = None
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    prometheus: str | None = None
    storage: str = ""
    #: The admin token the stack made sure of (also in `<data dir>/admin.token`).
    admin_token: str = ""
    _logs: list[IO[bytes]] = field(default_factory=list)

    @property
    def endpoints_file(self) -> Path:
        return self.data_dir / ENDPOINTS_FILE

    @property
    def admin_token_file(self) -> Path:
        return self.data_dir / ADMIN_TOKEN_FILE

    @property
    def pids(self) -> dict[str, int]:
        """Process ids of what this stack started (NATS only when it started one)."""
        pids = {name: process.pid for name, process in self.processes.items()}
        if self.nats is not None and self.nats.pid is not None:
            pids["nats"] = self.nats.pid
        return pids

    def describe(self) -> dict[str, Any]:
        """What endpoints.json holds: the addresses, NATS, Prometheus and the pids."""
        return {
            **self.endpoints,
            "nats": self.nats_url,
            "prometheus": self.prometheus,
            "storage": self.storage,
            "data_dir": str(self.data_dir),
            "pids": self.pids,
        }

    def stop(self, grace_s: float = 10.0) -> list[str]:
        """Stops every service (SIGTERM, then SIGKILL after `grace_s`) and NATS; returns the
        names of processes that had to be killed."""
        killed: list[str] = []
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for name, process in self.processes.items():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                killed.append(name)
        if self.nats is not None:
            self.nats.stop()
        for log in self._logs:
            log.close()
        self._logs.clear()
        with contextlib.suppress(FileNotFoundError):
            self.endpoints_file.unlink()
        return killed


def _healthy(address: str, timeout_s: float) -> bool:
    # Health needs no token; TLS as the clients are configured (CRM_TLS_CA_FILE, …).
    with open_blocking_channel(address, tls=client_tls_from_env()) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
        except grpc.RpcError:
            return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def recorded_endpoints(data_dir: Path) -> dict[str, Any] | None:
    """What endpoints.json of `data_dir` says, without asking anybody (None: no such file)."""
    try:
        endpoints = json.loads((data_dir / ENDPOINTS_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return endpoints if isinstance(endpoints, dict) else None


def running_stack_endpoints(data_dir: Path) -> dict[str, str] | None:
    """The endpoints of a stack already running on `data_dir`, if every service answers
    (service name → host:port, and `nats` → its URL)."""
    endpoints = recorded_endpoints(data_dir)
    if endpoints is None:
        return None
    services = {name: endpoints.get(name) for name in SERVICES}
    if not all(isinstance(address, str) for address in services.values()):
        return None
    if all(_healthy(str(address), 1.0) for address in services.values()):
        return {name: value for name, value in endpoints.items() if isinstance(value, str)}
    return None


def client_token(data_dir: Path | None = None) -> str:
    """The bearer a client command sends: `CRM_TOKEN`, else the running stack's
    `<data dir>/admin.token`; MissingToken (saying what to do) when there is neither."""
    configured = access_from_env().client_token
    if configured is not None:
        return configured
    if data_dir is None:
        data_dir = persistence_from_env(default_kind="sqlite").data_dir
    token = read_token_file(data_dir.resolve())
    if token is not None:
        return token
    raise MissingToken(
        f"no access token: set CRM_TOKEN to a token's bearer (an admin runs `crm tokens create "
        f"--name NAME --scope SCOPE` to issue one), or run `crm up`, which writes "
        f"{data_dir.resolve() / ADMIN_TOKEN_FILE}"
    )


def ensure_admin_token(persistence: PersistenceSettings, data_dir: Path) -> str:
    """The admin token of the stack: `<data dir>/admin.token` when it still authenticates
    against the store, else a new admin token written there (mode 0600)."""
    app = AccessApplication(persistence)
    try:
        existing = read_token_file(data_dir)
        if existing is not None:
            try:
                app.verify(existing)
            except Unauthenticated:  # malformed, unknown, revoked: replaced below
                pass
            else:
                return existing
        issued = app.issue_token(STACK_TOKEN_NAME, [ADMIN_SCOPE], rate_per_s=STACK_TOKEN_RATE_PER_S)
    finally:
        app.close()
    write_token_file(data_dir, issued.bearer)
    return issued.bearer


def configured_endpoints() -> dict[str, str]:
    """Where the services listen by the environment (`CRM_<SERVICE>_ADDRESS` or defaults)."""
    return {name: service_from_env(name).address for name in SERVICES}


def serving_endpoints(endpoints: dict[str, str], timeout_s: float = 1.0) -> bool:
    """Whether every service of `endpoints` reports SERVING."""
    return all(_healthy(endpoints[name], timeout_s) for name in SERVICES)


def start_stack(*, log_dir: Path | None = None, startup_timeout_s: float = 90.0) -> Stack:
    """Starts NATS (unless NATS_URL names one) and the four services; waits until every health
    check reports SERVING. On failure (or an interrupt) everything started is stopped and the
    error re-raised (StackError when a part did not start).

    Call it from the main thread: on Linux the services are tied to the starting thread's life.
    """
    persistence = persistence_from_env(default_kind="sqlite")
    data_dir = persistence.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    running = running_stack_endpoints(data_dir)
    if running is not None:
        raise StackError(
            f"a stack is already running on {data_dir} (customer service at "
            f"{running['customer']}): use it, or stop it first"
        )
    logs = log_dir or data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    endpoints = configured_endpoints()
    _check_free(endpoints)
    metrics = metrics_from_env()
    if metrics.prometheus_address is not None:
        _check_free({"metrics (Prometheus)": metrics.prometheus_address})
    bus = bus_from_env()
    nats = NatsServer(data_dir / "nats", die_with_parent=True) if bus.nats_url is None else None
    stack = Stack(
        data_dir=data_dir,
        nats_url=nats.url if nats is not None else bus.url,
        endpoints=endpoints,
        nats=nats,
        prometheus=metrics.prometheus_address,
        storage=_storage(persistence),
    )
    nats_url = stack.nats_url
    try:
        stack.admin_token = ensure_admin_token(persistence, data_dir)
        if nats is not None:
            nats.start()
        for name in SERVICES:
            environment = child_environment(
                {
                    "NATS_URL": nats_url,
                    "CRM_DATA_DIR": str(data_dir),
                    f"CRM_{name.upper()}_ADDRESS": endpoints[name],
                }
            )
            log = (logs / f"{name}.log").open("ab")
            stack._logs.append(log)
            stack.processes[name] = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"],
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C meant for `crm up` does not stop it unordered.
                start_new_session=True,
                preexec_fn=die_with_parent if sys.platform == "linux" else None,
            )
        _wait_until_serving(stack, logs, startup_timeout_s)
        stack.endpoints_file.write_text(json.dumps(stack.describe(), indent=2), encoding="utf-8")
    except BaseException:
        stack.stop(grace_s=5.0)
        raise
    return stack


def _storage(persistence: PersistenceSettings) -> str:
    if persistence.kind != "postgres":
        return f"{persistence.kind} in {persistence.data_dir.resolve()}"
    env = persistence.library_env
    where = f"{env.get('POSTGRES_HOST', '')}:{env.get('POSTGRES_PORT', '5432')}".strip(":")
    return f"postgres database {env.get('POSTGRES_DBNAME', '(per application)')} at {where}"


def _check_free(addresses: dict[str, str]) -> None:
    for name, address in addresses.items():
        host, _, port = address.rpartition(":")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # As servers do: a socket left in TIME_WAIT by the last run is no obstacle.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host or "127.0.0.1", int(port)))
            except (OSError, ValueError) as error:
                variable = (
                    "CRM_METRICS_PROMETHEUS_ADDRESS"
                    if "Prometheus" in name
                    else f"CRM_{name.upper()}_ADDRESS"
                )
                raise StackError(
                    f"cannot listen on {address} for {name} ({error}): another stack or "
                    f"program uses it; stop it or set {variable}"
                ) from None


def _wait_until_serving(stack: Stack, logs: Path, timeout_s: float) -> None:
    waiting = dict(stack.endpoints)
    deadline = time.monotonic() + timeout_s
    while waiting:
        for name in list(waiting):
            process = stack.processes[name]
            if process.poll() is not None:
                tail = _tail(logs / f"{name}.log")
                raise StackError(
                    f"the {name} service exited with code {process.returncode} while starting "
                    f"(log: {logs / f'{name}.log'}):\n{tail}"
                )
            if _healthy(waiting[name], 0.5):
                del waiting[name]
        if waiting and time.monotonic() > deadline:
            names = ", ".join(sorted(waiting))
            raise StackError(f"not serving after {timeout_s:.0f} s: {names} (logs in {logs})")
        if waiting:
            time.sleep(0.2)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
