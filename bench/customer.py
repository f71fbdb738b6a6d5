"""Customer service on PostgreSQL: CreateCustomer vs one save per transaction; lookup latency.

One run, one fresh PostgreSQL database per part (`tests.support.postgres`: the configured
server, else a private one):

1. Baseline: a plain eventsourcing `Application` (stock aggregate, stock mapper) saving one new
   customer aggregate per transaction, driven by `--clients` threads, `--creates` times.
2. The service, started as a subprocess (`python -m services.customer`, configured by its
   environment only: PostgreSQL, region JP; its NATS URL points at a closed port, so the relay
   and the timeline consumer stay idle and the figures are those of the commands alone):
   `--creates` CreateCustomer calls (a name, a phone to normalise, an e-mail) from `--clients`
   concurrent gRPC clients (`bench.load`). Group commit lets concurrent calls share transactions.
   Then the gRPC ceiling: as many empty `grpc.health.v1.Health/Check` calls to the same process,
   the same way (`bench.load.rpc_ceiling`). They do no work, so their rate is what the round
   trip alone costs here, client and server on the same cores as PostgreSQL: no create rate
   can be higher, and where the ceiling is below 5x the baseline, so is `create_speedup`.
3. `--customers` more customers (default 100k) stored directly through the customer application
   in big batches, then `--lookups` LookupCustomer calls one after another, each for a random
   stored phone written in national form (normalised by the service), timed at the client.

Figures: `create_per_s`, `baseline_per_s`, `create_speedup` (targets ≥ 5), `create_p99_ms`,
`lookup_p99_ms` (target ≤ 5 ms), `rpc_ceiling_per_s` (empty calls per second) and
`ceiling_vs_baseline` (the highest speedup gRPC leaves room for on this machine).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

from bench.append import StockBenchApplication, StockCustomer, StockPostalAddress
from bench.load import Load, Timed, rpc_ceiling, run_load
from bench.service import (
    cpu_seconds,
    issue_bench_token,
    percentile,
    positive,
    start_service,
    stop_service,
)
from crm.v1 import customer_pb2 as pb
from crm.v1 import customer_pb2_grpc
from crmcore.adapters.grpc.channels import open_blocking_channel
from crmcore.application.customers import CustomerApplication
from crmcore.config import PersistenceSettings
from crmcore.domain.base import DomainEvent
from crmcore.domain.customer import (
    DEVELOPMENT_INDEX_SECRET,
    ContactPoint,
    ContactPointClaim,
    ContactPointKind,
    CustomerRegistered,
    Lifecycle,
)
from tests.support.postgres import PostgresProvider, PostgresUnavailable

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


async def _create(
    stub: customer_pb2_grpc.CustomerServiceAsyncStub, indexes: Iterator[int], timed: Timed
) -> None:
    for index in indexes:
        await timed(stub.CreateCustomer(create_request(index), timeout=60))


async def create_through_grpc(
    address: str, token: str, first: int, creates: int, clients: int
) -> Load:
    """`creates` CreateCustomer calls from `clients` concurrent callers."""
    return await run_load(
        address,
        token,
        customer_pb2_grpc.CustomerServiceStub,
        range(first, first + creates),
        _create,
        clients,
    )


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


def _arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench customer", description=__doc__)
    parser.add_argument("--creates", type=positive, default=6_000, help="creates per part")
    parser.add_argument("--clients", type=positive, default=64, help="concurrent callers")
    parser.add_argument(
        "--customers", type=positive, default=100_000, help="customers stored for lookups"
    )
    parser.add_argument("--batch", type=positive, default=2_000, help="customers per bulk save")
    parser.add_argument("--lookups", type=positive, default=2_000, help="timed lookups")
    parser.add_argument(
        "--worker-threads",
        type=positive,
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
            "services.customer",
            "CRM_CUSTOMER_ADDRESS",
            server,
            service_db,
            workdir / "data",
            workdir / "service.log",
            worker_threads=arguments.worker_threads,
            extra_environment={"CRM_DEFAULT_REGION": "JP"},
        )
        print(f"service: subprocess `python -m services.customer` on {address} (bus idle)")
        asyncio.run(create_through_grpc(address, token, 0, WARM_UP_CREATES, arguments.clients))
        cpu_before = cpu_seconds(process.pid)
        creates = asyncio.run(
            create_through_grpc(
                address, token, WARM_UP_CREATES, arguments.creates, arguments.clients
            )
        )
        cpu_after = cpu_seconds(process.pid)
        create_rate, create_latencies = creates.per_s, creates.latencies
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
        ceiling = asyncio.run(rpc_ceiling(address, token, arguments.creates, arguments.clients))
        print(
            f"gRPC ceiling, empty Health/Check calls to the same service, "
            f"{arguments.clients} concurrent clients the same way: {ceiling.per_s:,.0f}/s "
            f"({ceiling.per_s / baseline:.1f}x baseline; creates reach "
            f"{create_rate / ceiling.per_s:.0%} of it). No work behind them: the round trip "
            f"alone, client and server sharing these {os.cpu_count()} cores with PostgreSQL, "
            f"bounds any command rate measured this way"
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
            "rpc_ceiling_per_s": round(ceiling.per_s),
            "ceiling_vs_baseline": round(ceiling.per_s / baseline, 2),
        }
        return figures
    finally:
        if process is not None:
            stop_service(process)
        for dbname in databases:
            server.drop_database(dbname)
        provider.stop()
        shutil.rmtree(workdir, ignore_errors=True)
