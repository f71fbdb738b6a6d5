"""Customer service on PostgreSQL: CreateCustomer vs one save per transaction; lookup latency.

One run, one fresh PostgreSQL database per part (`tests.support.postgres`: the configured
server, else a private one):

1. Baseline: a plain eventsourcing `Application` (stock aggregate, stock mapper) saving one new
   customer aggregate per transaction, driven by `--clients` threads, `--creates` times.
2. The service, started as a subprocess (`python -m services.customer`, configured by its
   environment only: PostgreSQL, region JP; its NATS URL points at a closed port, so the relay
   and the timeline consumer stay idle and the figures are those of the commands alone):
   `--creates` CreateCustomer calls (a name, a phone to normalise, an e-mail) from `--clients`
   concurrent gRPC clients. Group commit lets concurrent calls share transactions.
3. `--customers` more customers (default 100k) stored directly through the customer application
   in big batches, then `--lookups` LookupCustomer calls one after another, each for a random
   stored phone written in national form (normalised by the service), timed at the client.

Figures: `create_per_s`, `baseline_per_s`, `create_speedup` (targets ≥ 5), `create_p99_ms`,
`lookup_p99_ms` (target ≤ 5 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.append import StockBenchApplication, StockCustomer, StockPostalAddress
from crm.v1 import customer_pb2 as pb
from crm.v1 import customer_pb2_grpc
from crmcore.adapters.grpc.channels import open_blocking_channel, open_channel
from crmcore.adapters.nats_server import free_loopback_port
from crmcore.application.access import AccessApplication
from crmcore.application.customers import CustomerApplication
from crmcore.config import PersistenceSettings
from crmcore.domain.access import ADMIN_SCOPE, MAX_RATE_PER_S
from crmcore.domain.base import DomainEvent
from crmcore.domain.customer import (
    DEVELOPMENT_INDEX_SECRET,
    ContactPoint,
    ContactPointClaim,
    ContactPointKind,
    CustomerRegistered,
    Lifecycle,
)
from tests.support.postgres import PostgresProvider, PostgresServer, PostgresUnavailable

STARTUP_S = 60
WARM_UP_CREATES = 200


class BaselineApplication(StockBenchApplication):
    name = "bench_customer_baseline"


def create_phone(index: int) -> str:
    return f"080-{1000 + index // 10_000:04d}-{index % 10_000:04d}"


def stored_phone(index: int) -> str:
    """E.164 of the bulk-stored customer `index` (070 numbers: no clash with the creates)."""
    return f"+8170{10_000_000 + index:08d}"


def national(e164: str) -> str:
    digits = "0" + e164[3:]
    return f"{digits[:3]}-{digits[3:7]}-{digits[7:]}"


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) a process has used so far, where /proc tells it."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(samples: Sequence[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# --- 1. baseline --------------------------------------------------------------------------


def baseline_per_s(persistence: PersistenceSettings, creates: int, clients: int) -> float:
    app = BaselineApplication(persistence)
    address = StockPostalAddress(
        street="丸の内 1-1-1",
        city="千代田区",
        region="東京都",
        postal_code="100-0005",
        country="JP",
    )
    counter = iter(range(creates))
    lock = threading.Lock()
    failures: list[BaseException] = []

    def work() -> None:
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            try:
                app.save(
                    StockCustomer(
                        name=f"山田 花子 {index}",
                        email=f"hanako{index}@example.jp",
                        phone=f"+8180{10_000_000 + index:08d}",
                        tags=["vip"],
                        address=address,
                    )
                )
            except BaseException as error:
                failures.append(error)
                return

    threads = [threading.Thread(target=work) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    app.close()
    if failures:
        raise failures[0]
    return creates / elapsed


# --- 2. the service -----------------------------------------------------------------------


def start_service(
    server: PostgresServer, dbname: str, data_dir: Path, log: Path, worker_threads: int
) -> tuple[subprocess.Popen[bytes], str]:
    address = f"127.0.0.1:{free_loopback_port()}"
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CRM_", "POSTGRES_", "NATS_", "CUSTOMERS_"))
    }
    environment |= {
        "CRM_CUSTOMER_ADDRESS": address,
        "CRM_PERSISTENCE": "postgres",
        "CRM_DATA_DIR": str(data_dir),
        "CRM_DEFAULT_REGION": "JP",
        "CRM_WORKER_THREADS": str(worker_threads),
        "POSTGRES_DBNAME": dbname,
        "POSTGRES_HOST": server.host,
        "POSTGRES_PORT": str(server.port),
        "POSTGRES_USER": server.user,
        "POSTGRES_PASSWORD": server.password,
        "POSTGRES_POOL_SIZE": "16",
        "POSTGRES_MAX_OVERFLOW": "16",
        # Nothing listens there: the relay and the consumer wait, idle, for a bus.
        "NATS_URL": f"nats://127.0.0.1:{free_loopback_port()}",
    }
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.customer"],
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
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def create_request(index: int) -> pb.CreateCustomerRequest:
    return pb.CreateCustomerRequest(
        customer=pb.Customer(
            name=f"山田 太郎 {index}",
            tags=["vip"],
            contact_points=[
                pb.ContactPoint(kind=pb.CONTACT_POINT_KIND_PHONE, value=create_phone(index)),
                pb.ContactPoint(kind=pb.CONTACT_POINT_KIND_EMAIL, value=f"Taro{index}@Example.JP"),
            ],
        )
    )


def issue_bench_token(persistence: PersistenceSettings) -> str:
    """An admin token with no practical rate limit: the load is what is measured."""
    app = AccessApplication(persistence)
    try:
        return app.issue_token("bench", [ADMIN_SCOPE], rate_per_s=MAX_RATE_PER_S).bearer
    finally:
        app.close()


async def create_through_grpc(
    address: str, token: str, first: int, creates: int, clients: int
) -> tuple[float, list[float]]:
    """Rate of `creates` CreateCustomer calls from `clients` concurrent callers, and each
    call's latency in seconds."""
    channels = [open_channel(address, token=token) for _ in range(4)]
    stubs = [customer_pb2_grpc.CustomerServiceStub(channel) for channel in channels]
    latencies: list[float] = []
    indexes = iter(range(first, first + creates))

    async def caller(number: int) -> None:
        stub = stubs[number % len(stubs)]
        for index in indexes:
            request = create_request(index)
            started = time.perf_counter()
            await stub.CreateCustomer(request, timeout=60)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(caller(number) for number in range(clients)))
    elapsed = time.perf_counter() - started
    for channel in channels:
        await channel.close(None)
    return creates / elapsed, latencies


# --- 3. lookups over many customers -------------------------------------------------------


def store_customers(persistence: PersistenceSettings, count: int, batch: int) -> float:
    """Stores `count` customers (each with a phone and its claim) in batches of `batch` per
    transaction, through the customer application's store and key vault. Returns seconds."""
    app = CustomerApplication(persistence)
    at = datetime.now(UTC)
    started = time.perf_counter()
    try:
        for start in range(0, count, batch):
            events: list[DomainEvent] = []
            for index in range(start, min(count, start + batch)):
                customer_id = uuid4()
                # Known-good values: the event is written as `Customer.register` would make
                # it, without validating each generated value again.
                point = ContactPoint(kind=ContactPointKind.PHONE, value=stored_phone(index))
                events.append(
                    CustomerRegistered(
                        originator_id=customer_id,
                        originator_version=1,
                        timestamp=at,
                        name=f"鈴木 一郎 {index}",
                        company="",
                        language="ja",
                        time_zone="Asia/Tokyo",
                        segment="retail",
                        tags=(),
                        attributes=(),
                        contact_points=(point,),
                        lifecycle=Lifecycle.ACTIVE,
                    )
                )
                # The service uses the development index secret too (no secret configured).
                events.append(
                    ContactPointClaim.take(
                        None, point, customer_id, at=at, secret=DEVELOPMENT_INDEX_SECRET
                    )
                )
                app.key_vault.new_key(customer_id)  # stored by the save, before the events
            app.record(*events)
    finally:
        app.shut_down()
    return time.perf_counter() - started


def lookup_latencies(address: str, token: str, stored: int, lookups: int) -> list[float]:
    chooser = random.Random(20250303)
    samples: list[float] = []
    with open_blocking_channel(address, token=token) as channel:
        stub = customer_pb2_grpc.CustomerServiceStub(channel)
        for warm in range(50):
            stub.LookupCustomer(pb.LookupCustomerRequest(phone=national(stored_phone(warm))))
        for _ in range(lookups):
            index = chooser.randrange(stored)
            request = pb.LookupCustomerRequest(phone=national(stored_phone(index)))
            started = time.perf_counter()
            found = stub.LookupCustomer(request, timeout=10)
            samples.append(time.perf_counter() - started)
            if found.name != f"鈴木 一郎 {index}":
                raise AssertionError(f"lookup of customer {index} found {found.name!r}")
    return samples


# --- the run ------------------------------------------------------------------------------


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def _arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench customer", description=__doc__)
    parser.add_argument("--creates", type=_positive, default=6_000, help="creates per part")
    parser.add_argument("--clients", type=_positive, default=64, help="concurrent callers")
    parser.add_argument(
        "--customers", type=_positive, default=100_000, help="customers stored for lookups"
    )
    parser.add_argument("--batch", type=_positive, default=2_000, help="customers per bulk save")
    parser.add_argument("--lookups", type=_positive, default=2_000, help="timed lookups")
    parser.add_argument(
        "--worker-threads",
        type=_positive,
        default=64,
        help="the service's CRM_WORKER_THREADS (threads running store calls)",
    )
    return parser.parse_args(list(argv))


def main(argv: Sequence[str]) -> dict[str, object]:
    arguments = _arguments(argv)
    provider = PostgresProvider()
    try:
        server = provider.start()
    except PostgresUnavailable as error:
        raise SystemExit(f"the customer benchmark needs PostgreSQL: {error}") from None
    workdir = Path(tempfile.mkdtemp(prefix="crm-bench-customer-"))
    databases: list[str] = []
    process: subprocess.Popen[bytes] | None = None
    try:
        print(f"PostgreSQL: {server.description} at {server.host}:{server.port}")
        baseline_db = server.create_database("crm_bench_baseline")
        databases.append(baseline_db)
        baseline = baseline_per_s(
            server.persistence(baseline_db), arguments.creates, arguments.clients
        )
        print(
            f"baseline (stock Application, one save per transaction, {arguments.clients} "
            f"threads): {baseline:,.0f} creates/s"
        )

        service_db = server.create_database("crm_bench_customer")
        databases.append(service_db)
        token = issue_bench_token(server.persistence(service_db))
        process, address = start_service(
            server,
            service_db,
            workdir / "data",
            workdir / "service.log",
            arguments.worker_threads,
        )
        print(f"service: subprocess `python -m services.customer` on {address} (bus idle)")
        asyncio.run(create_through_grpc(address, token, 0, WARM_UP_CREATES, arguments.clients))
        cpu_before = cpu_seconds(process.pid)
        create_rate, create_latencies = asyncio.run(
            create_through_grpc(
                address, token, WARM_UP_CREATES, arguments.creates, arguments.clients
            )
        )
        cpu_after = cpu_seconds(process.pid)
        cpu_ms = (
            None
            if cpu_before is None or cpu_after is None
            else (cpu_after - cpu_before) / arguments.creates * 1000
        )
        create_p99_ms = percentile(create_latencies, 0.99) * 1000
        speedup = create_rate / baseline
        print(
            f"CreateCustomer via gRPC, {arguments.clients} concurrent clients: "
            f"{create_rate:,.0f}/s ({speedup:.1f}x baseline), "
            f"p50 {statistics.median(create_latencies) * 1000:.1f} ms, p99 {create_p99_ms:.1f} ms"
            + ("" if cpu_ms is None else f"; service CPU {cpu_ms:.2f} ms per create")
        )

        seconds = store_customers(
            server.persistence(service_db), arguments.customers, arguments.batch
        )
        print(
            f"stored {arguments.customers:,} more customers in {seconds:.1f}s "
            f"({arguments.customers / seconds:,.0f}/s, {arguments.batch} per transaction)"
        )
        samples = lookup_latencies(address, token, arguments.customers, arguments.lookups)
        lookup_p99_ms = percentile(samples, 0.99) * 1000
        print(
            f"LookupCustomer over {arguments.customers + arguments.creates + WARM_UP_CREATES:,} "
            f"customers, one at a time: p50 {statistics.median(samples) * 1000:.2f} ms, "
            f"p99 {lookup_p99_ms:.2f} ms"
        )
        status = stop_service(process)
        process = None
        print(f"service stopped on SIGTERM with exit status {status}")
        figures: dict[str, Any] = {
            "create_per_s": round(create_rate),
            "baseline_per_s": round(baseline),
            "create_speedup": round(speedup, 2),
            "create_p99_ms": round(create_p99_ms, 1),
            "lookup_p99_ms": round(lookup_p99_ms, 2),
            "lookup_p50_ms": round(statistics.median(samples) * 1000, 2),
            "service_cpu_ms_per_create": None if cpu_ms is None else round(cpu_ms, 2),
            "creates": arguments.creates,
            "clients": arguments.clients,
            "customers_stored": arguments.customers + arguments.creates + WARM_UP_CREATES,
            "service": "subprocess",
        }
        return figures
    finally:
        if process is not None:
            stop_service(process)
        for dbname in databases:
            server.drop_database(dbname)
        provider.stop()
        shutil.rmtree(workdir, ignore_errors=True)
