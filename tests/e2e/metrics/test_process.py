"""`python -m services.metrics` as operators run it: configured by the environment only,
SERVING on the standard health service, and a clean exit (status 0) on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from crm.v1 import metrics_pb2 as pb
from crm.v1 import metrics_pb2_grpc
from crmcore.adapters.grpc.channels import open_blocking_channel
from crmcore.adapters.nats_server import free_loopback_port
from crmcore.config import BusSettings

pytestmark = pytest.mark.nats

GRACE_S = 3
STARTUP_S = 60


def wait_until_serving(address: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_S
    with open_blocking_channel(address) as channel:  # health needs no token
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            assert process.poll() is None, "the service exited during start-up"
            try:
                status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1).status
            except grpc.RpcError:
                status = health_pb2.HealthCheckResponse.UNKNOWN
            if status == health_pb2.HealthCheckResponse.SERVING:
                return
            if time.monotonic() > deadline:
                pytest.fail(f"not SERVING within {STARTUP_S}s")
            time.sleep(0.1)


def environment(tmp_path: Path, bus_settings: BusSettings, address: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CRM_", "POSTGRES_", "NATS_"))
    }
    return env | {
        "CRM_METRICS_ADDRESS": address,
        "CRM_DATA_DIR": str(tmp_path / "data"),
        "CRM_SHUTDOWN_GRACE_S": str(GRACE_S),
        "CRM_METRICS_PROMETHEUS_ADDRESS": f"127.0.0.1:{free_loopback_port()}",
        "CRM_METRICS_TIME_ZONE": "Asia/Tokyo",
        "NATS_URL": bus_settings.url,
        "CRM_STREAM": bus_settings.stream,
    }


class TestTheServiceProcess:
    def test_it_serves_then_stops_cleanly_on_sigterm(
        self, tmp_path: Path, bus_settings: BusSettings
    ) -> None:
        address = f"127.0.0.1:{free_loopback_port()}"
        process = subprocess.Popen(
            [sys.executable, "-m", "services.metrics"],
            env=environment(tmp_path, bus_settings, address),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until_serving(address, process)
            # Nothing configured: the service generated an admin token and wrote it down.
            admin_token = (tmp_path / "data" / "admin.token").read_text().strip()
            with open_blocking_channel(address, token=admin_token) as channel:
                stub = metrics_pb2_grpc.MetricsServiceStub(channel)
                report = stub.GetKpis(pb.GetKpisRequest())
                assert report.time_zone == "Asia/Tokyo"
            process.send_signal(signal.SIGTERM)
            exit_status = process.wait(timeout=GRACE_S + 30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        output = process.stdout.read().decode(errors="replace") if process.stdout else ""
        assert exit_status == 0, output
        assert (tmp_path / "data" / "metrics.sqlite").exists()

    def test_read_models_of_another_time_zone_exit_with_status_2(
        self, tmp_path: Path, bus_settings: BusSettings
    ) -> None:
        address = f"127.0.0.1:{free_loopback_port()}"
        env = environment(tmp_path, bus_settings, address)
        first = subprocess.Popen([sys.executable, "-m", "services.metrics"], env=env)
        try:
            wait_until_serving(address, first)
            first.send_signal(signal.SIGTERM)
            assert first.wait(timeout=GRACE_S + 30) == 0
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
        env["CRM_METRICS_TIME_ZONE"] = "UTC"
        second = subprocess.run(
            [sys.executable, "-m", "services.metrics"],
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert second.returncode == 2
        assert b"rebuild" in second.stderr
