"""What the service benchmarks share: a service under test as a subprocess, its CPU time, the
bench token, percentiles and positive-number arguments."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from crmcore.adapters.grpc.channels import open_blocking_channel
from crmcore.adapters.nats_server import free_loopback_port
from crmcore.application.access import AccessApplication
from crmcore.config import PersistenceSettings
from crmcore.domain.access import ADMIN_SCOPE, MAX_RATE_PER_S
from tests.support.postgres import PostgresServer

STARTUP_S = 60


def start_service(
    module: str,
    address_variable: str,
    server: PostgresServer,
    dbname: str,
    data_dir: Path,
    log: Path,
    *,
    worker_threads: int,
    extra_environment: Mapping[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """Starts `python -m <module>` on PostgreSQL database `dbname`, configured by its
    environment only (`address_variable` names its listening address), and waits until its
    health service says SERVING. Its NATS URL points at a closed port: the relay and the
    consumers wait, idle, for a bus, so the figures are those of the commands alone."""
    address = f"127.0.0.1:{free_loopback_port()}"
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CRM_", "POSTGRES_", "NATS_", "CUSTOMERS_", "INTERACTIONS_"))
    }
    environment |= {
        address_variable: address,
        "CRM_PERSISTENCE": "postgres",
        "CRM_DATA_DIR": str(data_dir),
        "CRM_WORKER_THREADS": str(worker_threads),
        "POSTGRES_DBNAME": dbname,
        "POSTGRES_HOST": server.host,
        "POSTGRES_PORT": str(server.port),
        "POSTGRES_USER": server.user,
        "POSTGRES_PASSWORD": server.password,
        "POSTGRES_POOL_SIZE": "16",
        "POSTGRES_MAX_OVERFLOW": "16",
        "NATS_URL": f"nats://127.0.0.1:{free_loopback_port()}",
    }
    environment |= dict(extra_environment or {})
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", module],
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + STARTUP_S
    with open_blocking_channel(address) as channel:  # health needs no token
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the service exited: {log.read_text()[-2000:]}")
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return process, address
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"the service did not start within {STARTUP_S}s")
            time.sleep(0.1)


def stop_service(process: subprocess.Popen[bytes]) -> int:
    """Stops the service with SIGTERM (killing it after 30 s); its exit status."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def issue_bench_token(persistence: PersistenceSettings) -> str:
    """An admin token with no practical rate limit: the load is what is measured."""
    app = AccessApplication(persistence)
    try:
        return app.issue_token("bench", [ADMIN_SCOPE], rate_per_s=MAX_RATE_PER_S).bearer
    finally:
        app.close()


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) a process has used so far, where /proc tells it."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(samples: Sequence[float], fraction: float) -> float:
    """The sample at `fraction` (0–1) of the sorted samples, nearest rank; 0 for none."""
    ordered = sorted(samples)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def positive(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value
