"""The embedded stack: NATS with JetStream and the four services on one machine.

`crm up` runs it until Ctrl-C or SIGTERM; `crm demo` starts one when none is running. NATS is
the server binary shipped with the package (or the one `NATS_URL` names), on a free loopback
port, its store in the data directory; each service is `python -m services.<name>` on its
configured address, its SQLite files in the data directory, so data survives restarts.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from crmcore.adapters.nats_server import NatsServer
from crmcore.config import (
    ServiceName,
    bus_from_env,
    child_environment,
    persistence_from_env,
    service_from_env,
)

SERVICES: tuple[ServiceName, ...] = ("customer", "interaction", "routing", "metrics")
ENDPOINTS_FILE = "endpoints.json"


class StackError(RuntimeError):
    """The stack could not start; the message says which part and why."""


@dataclass
class Stack:
    """The processes of a running embedded stack."""

    data_dir: Path
    nats_url: str
    endpoints: dict[str, str]
    nats: NatsServer | None = None
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def endpoints_file(self) -> Path:
        return self.data_dir / ENDPOINTS_FILE

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
        with contextlib.suppress(FileNotFoundError):
            self.endpoints_file.unlink()
        return killed


def _healthy(address: str, timeout_s: float) -> bool:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
        except grpc.RpcError:
            return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def running_stack_endpoints(data_dir: Path) -> dict[str, str] | None:
    """The endpoints of a stack already running on `data_dir`, if every service answers."""
    try:
        endpoints = json.loads((data_dir / ENDPOINTS_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    services = {name: endpoints.get(name) for name in SERVICES}
    if not all(isinstance(address, str) for address in services.values()):
        return None
    if all(_healthy(str(address), 1.0) for address in services.values()):
        return {name: str(address) for name, address in endpoints.items()}
    return None


def start_stack(*, log_dir: Path | None = None, startup_timeout_s: float = 60.0) -> Stack:
    """Starts NATS (unless NATS_URL names one) and the four services; waits until every health
    check reports SERVING. On failure everything started is stopped and StackError raised."""
    persistence = persistence_from_env(default_kind="sqlite")
    data_dir = persistence.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    logs = log_dir or data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    bus = bus_from_env()
    nats: NatsServer | None = None
    if bus.nats_url is None:
        nats = NatsServer(data_dir / "nats").start()
    nats_url = nats.url if nats is not None else bus.url
    endpoints: dict[str, str] = {name: service_from_env(name).address for name in SERVICES}
    stack = Stack(data_dir=data_dir, nats_url=nats_url, endpoints=endpoints, nats=nats)
    try:
        for name in SERVICES:
            environment = child_environment(
                {
                    "NATS_URL": nats_url,
                    "CRM_DATA_DIR": str(data_dir),
                    f"CRM_{name.upper()}_ADDRESS": endpoints[name],
                }
            )
            log = (logs / f"{name}.log").open("ab")
            stack.processes[name] = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"],
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        _wait_until_serving(stack, logs, startup_timeout_s)
    except BaseException:
        stack.stop(grace_s=5.0)
        raise
    stack.endpoints_file.write_text(
        json.dumps({**endpoints, "nats": nats_url}, indent=2), encoding="utf-8"
    )
    return stack


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
