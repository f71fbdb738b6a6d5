"""`crm up` and `crm demo` as a person runs them: the whole system in processes, a short
simulated day through the public APIs, its KPIs confirmed by the metrics service, a clean stop
on SIGTERM that leaves nothing running or listening, and the data still there after a restart.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
from google.protobuf import json_format

from crm.v1 import metrics_pb2, metrics_pb2_grpc
from crmcore.adapters.grpc.channels import open_blocking_channel
from crmcore.adapters.nats_server import free_loopback_port
from crmcore.cli.demo.report import parse_export, service_level
from crmcore.cli.demo.scenario import SERVICE_LEVEL_THRESHOLD_S, generate

#: The `crm` command of this interpreter's environment.
CRM = [sys.executable, "-c", "import sys; from crmcore.cli import main; sys.exit(main())"]
STARTUP_S = 120
SERVICES = ("customer", "interaction", "routing", "metrics")


class RunningUp:
    """A `crm up` process whose output is collected as it comes."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [*CRM, "up"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, within_s: float) -> None:
        deadline = time.monotonic() + within_s
        while not any(text in line for line in self.lines):
            if self.process.poll() is not None:
                self._reader.join(timeout=5)
                pytest.fail(f"crm up exited with {self.process.returncode}:\n{self.output}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {text!r} within {within_s:.0f} s:\n{self.output}")
            time.sleep(0.1)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        self._reader.join(timeout=5)
        return code

    def close(self) -> None:
        """Stops it if the test did not (SIGTERM, so it stops what it started; then SIGKILL)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def environment(tmp_path: Path) -> dict[str, str]:
    """Our environment without any CRM, NATS or PostgreSQL setting, plus a data directory and
    free ports: `crm up` starts its own NATS."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CRM_", "NATS_", "POSTGRES_"))
    }
    env |= {f"CRM_{name.upper()}_ADDRESS": f"127.0.0.1:{free_loopback_port()}" for name in SERVICES}
    return env | {
        "CRM_DATA_DIR": str(tmp_path / "data"),
        "CRM_METRICS_PROMETHEUS_ADDRESS": f"127.0.0.1:{free_loopback_port()}",
        "CRM_SHUTDOWN_GRACE_S": "3",
    }


@pytest.fixture
def stack(environment: dict[str, str]) -> Iterator[RunningUp]:
    up = RunningUp(environment)
    try:
        up.wait_for("all services SERVING", STARTUP_S)
        yield up
    finally:
        up.close()


def crm(env: dict[str, str], *args: str) -> str:
    """What `crm ARGS` prints (it must succeed)."""
    done = subprocess.run(
        [*CRM, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def accepts_connections(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def kpis(address: str, token: str, request: metrics_pb2.GetKpisRequest) -> metrics_pb2.Kpis:
    with open_blocking_channel(address, token=token) as channel:
        report = metrics_pb2_grpc.MetricsServiceStub(channel).GetKpis(request, timeout=30)
    return report.rows[0].kpis


def exported(address: str, token: str, period: metrics_pb2.Period) -> str:
    with open_blocking_channel(address, token=token) as channel:
        stub = metrics_pb2_grpc.MetricsServiceStub(channel)
        chunks = stub.ExportInteractions(
            metrics_pb2.ExportInteractionsRequest(period=period), timeout=60
        )
        return b"".join(chunk.data for chunk in chunks).decode()


class TestTheEmbeddedStack:
    def test_a_demo_day_reports_what_the_metrics_service_measured_then_up_stops_cleanly(
        self, stack: RunningUp, environment: dict[str, str], tmp_path: Path
    ) -> None:
        data_dir = tmp_path / "data"
        endpoints = json.loads((data_dir / "endpoints.json").read_text())
        pids: dict[str, int] = endpoints["pids"]
        assert set(pids) == {*SERVICES, "nats"}
        # `crm up` issued an admin token, printed it and wrote it down for its owner only.
        token_file = data_dir / "admin.token"
        token = token_file.read_text().strip()
        assert token in stack.output
        assert token_file.stat().st_mode & 0o777 == 0o600

        demo = subprocess.run(
            [
                *CRM,
                "demo",
                "--seed",
                "1",
                "--hours",
                "09:00-10:30",
                "--contacts",
                "45",
                "--duration",
                "15",
                "--report",
                str(tmp_path / "day.html"),
                "--no-start",
            ],
            env=environment,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        printed = demo.stdout + demo.stderr
        assert demo.returncode == 0, printed
        assert "report:" in printed
        assert (tmp_path / "day.html").read_text().startswith("<!doctype html>")
        summary = json.loads((tmp_path / "day.json").read_text())
        assert summary["started_stack"] is False
        assert summary["caught_up"] is True
        assert summary["other_interactions_in_period"] == 0
        assert summary["demo"]["errors"] == {}, printed

        # The day really happened, on several channels and with agents answering.
        reported = summary["kpis"]
        assert reported["created"] >= 30
        assert reported["answered"] > 0
        assert reported["handled"] > 0
        assert reported["bot_conversations"] > 0
        assert f"{int(reported['created']):,}" in printed

        # What the demo reported is what the metrics service answers to the same request.
        request = json_format.ParseDict(summary["kpi_request"], metrics_pb2.GetKpisRequest())
        measured = kpis(endpoints["metrics"], token, request)
        for name in ("created", "offered", "answered", "abandoned", "handled"):
            assert reported[name] == getattr(measured, name), name
        assert reported["bot_conversations"] == measured.bot_conversations
        for name in ("answer_rate", "abandonment_rate", "fcr_provisional", "csat", "nps"):
            rate = getattr(measured, name)
            expected = rate.value if rate.HasField("value") else None
            assert reported[name] == pytest.approx(expected), name
        assert reported["asa_seconds"] == pytest.approx(measured.answer_wait.mean_seconds)
        assert reported["aht_seconds"] == pytest.approx(measured.handle_time.mean_seconds)

        # Its service level is the export's waits (× speed) against 20 simulated seconds.
        rows = parse_export(
            exported(endpoints["metrics"], token, request.period),
            summary["demo"]["interaction_ids"],
            lambda moment: 0.0,
            summary["speed"],
        )
        within, counted = service_level(rows, SERVICE_LEVEL_THRESHOLD_S)
        assert summary["service_level"] == {"within": within, "counted": counted}
        assert counted > 0

        # The directory commands find what the demo set up, through the running stack.
        day = generate(1, contacts=45, start="09:00", end="10:30")
        someone = day.customers[0]
        found = crm(environment, "customers", "lookup", "--phone", someone.phone)
        assert someone.name in found
        assert someone.email in found
        agents = crm(environment, "agents")
        assert f"{len(day.agents)} agents" in agents
        assert all(agent.name in agents for agent in day.agents)
        queues = crm(environment, "queues")
        assert all(plan.name in queues for plan in day.queues)

        # SIGTERM: exit 0, every process it started gone, nothing left listening.
        assert stack.stop() == 0, stack.output
        assert "stopped" in stack.output
        still_running = {name: pid for name, pid in pids.items() if alive(pid)}
        assert still_running == {}
        addresses = [endpoints[name] for name in SERVICES]
        addresses.append(environment["CRM_METRICS_PROMETHEUS_ADDRESS"])
        nats = urlparse(endpoints["nats"])
        addresses.append(f"{nats.hostname}:{nats.port}")
        assert [a for a in addresses if accepts_connections(a)] == []
        assert not (data_dir / "endpoints.json").exists()

        # Started again on the same data directory, the day is still there.
        again = RunningUp(environment)
        try:
            again.wait_for("all services SERVING", STARTUP_S)
            deadline = time.monotonic() + 60
            # The admin token still works: the restarted stack keeps it.
            assert (data_dir / "admin.token").read_text().strip() == token
            while kpis(endpoints["metrics"], token, request).created != measured.created:
                assert time.monotonic() < deadline, "the restarted stack lost the day"
                time.sleep(0.5)
            assert again.stop() == 0, again.output
        finally:
            again.close()

    def test_a_second_up_on_the_same_data_directory_is_refused(
        self, stack: RunningUp, environment: dict[str, str]
    ) -> None:
        second = subprocess.run(
            [*CRM, "up"], env=environment, capture_output=True, text=True, timeout=60, check=False
        )

        assert second.returncode == 1
        assert "already running" in second.stderr
        assert stack.process.poll() is None
