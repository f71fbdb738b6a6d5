"""`python -m services.interaction` as operators run it: configured by the environment only,
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

from crm.v1 import common_pb2, interaction_pb2, interaction_pb2_grpc
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


def environment(**overrides: str) -> dict[str, str]:
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CRM_", "POSTGRES_", "NATS_"))
    }
    return inherited | overrides


class TestTheServiceProcess:
    def test_it_serves_then_stops_cleanly_on_sigterm(
        self, tmp_path: Path, bus_settings: BusSettings
    ) -> None:
        address = f"127.0.0.1:{free_loopback_port()}"
        process = subprocess.Popen(
            [sys.executable, "-m", "services.interaction"],
            env=environment(
                CRM_INTERACTION_ADDRESS=address,
                CRM_DATA_DIR=str(tmp_path / "data"),
                CRM_SHUTDOWN_GRACE_S=str(GRACE_S),
                CRM_SLA_POLICIES='{"policies": [{"name": "all", "first_response": "1h"}]}',
                NATS_URL=bus_settings.url,
                CRM_STREAM=bus_settings.stream,
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until_serving(address, process)
            # Nothing configured: the service generated an admin token and wrote it down.
            admin_token = (tmp_path / "data" / "admin.token").read_text().strip()
            with open_blocking_channel(address, token=admin_token) as channel:
                stub = interaction_pb2_grpc.InteractionServiceStub(channel)
                opened = stub.OpenInteraction(
                    interaction_pb2.OpenInteractionRequest(channel=common_pb2.CHANNEL_PHONE)
                )
                got = stub.GetInteraction(interaction_pb2.GetInteractionRequest(id=opened.id))
                assert got.status == interaction_pb2.INTERACTION_STATUS_CREATED

            process.send_signal(signal.SIGTERM)
            exit_status = process.wait(timeout=GRACE_S + 30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        output = process.stdout.read().decode(errors="replace") if process.stdout else ""
        assert exit_status == 0, output
        assert (tmp_path / "data" / "interactions.sqlite").exists()

    def test_unusable_sla_policies_stop_it_at_once_with_status_2(self, tmp_path: Path) -> None:
        completed = subprocess.run(
            [sys.executable, "-m", "services.interaction"],
            env=environment(
                CRM_DATA_DIR=str(tmp_path / "data"),
                CRM_SLA_POLICIES='{"policies": [{"name": "x", "channels": ["fax"]}]}',
            ),
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert completed.returncode == 2
        assert b"policies[0].channels[0]" in completed.stderr
