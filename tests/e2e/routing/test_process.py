"""`python -m services.routing` as operators run it: configured by the environment only,
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

from crm.v1 import common_pb2, routing_pb2_grpc
from crm.v1 import routing_pb2 as pb
from crmcore.adapters.grpc.channels import open_blocking_channel
from crmcore.adapters.nats_server import free_loopback_port
from crmcore.config import BusSettings
from tests.support.auth import new_bearer

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


class TestTheServiceProcess:
    def test_it_serves_then_stops_cleanly_on_sigterm_and_keeps_its_state(
        self, tmp_path: Path, bus_settings: BusSettings
    ) -> None:
        address = f"127.0.0.1:{free_loopback_port()}"
        environment = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("CRM_", "POSTGRES_", "NATS_"))
        }
        admin_token = new_bearer()  # registered by the service at start
        environment |= {
            "CRM_BOOTSTRAP_ADMIN_TOKEN": admin_token,
            "CRM_ROUTING_ADDRESS": address,
            "CRM_DATA_DIR": str(tmp_path / "data"),
            "CRM_SHUTDOWN_GRACE_S": str(GRACE_S),
            "NATS_URL": bus_settings.url,
            "CRM_STREAM": bus_settings.stream,
        }

        def run_once() -> tuple[int, bytes, list[str]]:
            process = subprocess.Popen(
                [sys.executable, "-m", "services.routing"],
                env=environment,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            try:
                wait_until_serving(address, process)
                with open_blocking_channel(address, token=admin_token) as channel:
                    stub = routing_pb2_grpc.RoutingServiceStub(channel)
                    stub.CreateQueue(
                        pb.CreateQueueRequest(
                            request_id="chat-queue",
                            queue=pb.RoutingQueue(name="Chat", channels=[common_pb2.CHANNEL_CHAT]),
                        )
                    )
                    names = [queue.name for queue in stub.ListQueues(pb.ListQueuesRequest()).queues]
                process.send_signal(signal.SIGTERM)
                output, _ = process.communicate(timeout=GRACE_S + 30)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
            return process.returncode, output, names

        status, output, names = run_once()
        assert status == 0, output.decode(errors="replace")
        assert names == ["Chat"]
        assert b"routing service stopped" in output

        again, output, names = run_once()  # the same request id: the same queue, kept
        assert again == 0, output.decode(errors="replace")
        assert names == ["Chat"]
