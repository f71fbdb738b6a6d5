"""Interaction service on PostgreSQL: a mixed command load vs one save per transaction.

One run, one fresh PostgreSQL database per part (`tests.support.postgres`: the configured
server, else a private one). Each contact is five commands, one after the other, as a contact
centre makes them: open (a known customer, a contact reason), queue (with skills and a
language), answer (by the client's agent), add a public agent message, resolve.

1. Baseline: the interaction application in-process without group commit (each command one
   save, one transaction), driven by `--clients` threads, `--baseline-contacts` contacts.
2. The service, started as a subprocess (`python -m services.interaction`, configured by its
   environment only: PostgreSQL; its NATS URL points at a closed port, so the relay and the
   routing consumer stay idle and the figures are those of the commands): `--contacts`
   contacts from `--clients` concurrent gRPC clients. Group commit lets concurrent commands
   share transactions.

Figures: `commands_per_s` (the service), `baseline_per_s`, `speedup` (target ≥ 5), `p99_ms`
(command latency at the client).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from uuid import UUID, uuid4

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from crm.v1 import common_pb2, interaction_pb2, interaction_pb2_grpc
from crmcore.adapters.grpc.channels import open_blocking_channel, open_channel
from crmcore.adapters.nats_server import free_loopback_port
from crmcore.application.access import AccessApplication
from crmcore.application.interactions import InteractionApplication
from crmcore.config import PersistenceSettings
from crmcore.domain.access import ADMIN_SCOPE, MAX_RATE_PER_S
from crmcore.domain.interaction import RoutingRequirements, SkillRequirement
from tests.support.postgres import PostgresProvider, PostgresServer, PostgresUnavailable

pb = interaction_pb2
STARTUP_S = 60
WARM_UP_CONTACTS = 100
COMMANDS_PER_CONTACT = 5
REASONS = ("billing", "delivery", "login", "refund")


class BaselineApplication(InteractionApplication):
    name = "bench_interaction_baseline"


def percentile(samples: Sequence[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) a process has used so far, where /proc tells it."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- 1. baseline --------------------------------------------------------------------------


def baseline_per_s(persistence: PersistenceSettings, contacts: int, clients: int) -> float:
    """Commands per second of the same contacts in-process, one save per command."""
    app = BaselineApplication(persistence)
    remaining = iter(range(contacts))
    lock = threading.Lock()
    failures: list[BaseException] = []
    requirements = RoutingRequirements(
        skills=(SkillRequirement(skill="billing", min_level=2),), language="ja"
    )

    def work(agent: UUID) -> None:
        while True:
            with lock:
                index = next(remaining, None)
            if index is None:
                return
            try:
                call = app.open_interaction(
                    channel="phone", customer_id=uuid4(), contact_reason=REASONS[index % 4]
                )
                app.queue(call.id, queue="support", requirements=requirements)
                app.answer(call.id, agent)
                app.add_message(
                    call.id,
                    author_kind="agent",
                    author_id=agent,
                    text="お問い合わせありがとうございます",
                )
                app.resolve(call.id, resolution="Answered")
            except BaseException as error:
                failures.append(error)
                return

    threads = [threading.Thread(target=work, args=(uuid4(),)) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    app.close()
    if failures:
        raise failures[0]
    return contacts * COMMANDS_PER_CONTACT / elapsed


# --- 2. the service -----------------------------------------------------------------------


def start_service(
    server: PostgresServer, dbname: str, data_dir: Path, log: Path, worker_threads: int
) -> tuple[subprocess.Popen[bytes], str]:
    address = f"127.0.0.1:{free_loopback_port()}"
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CRM_", "POSTGRES_", "NATS_", "INTERACTIONS_"))
    }
    environment |= {
        "CRM_INTERACTION_ADDRESS": address,
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
        # Nothing listens there: the relay and the routing consumer wait, idle, for a bus.
        "NATS_URL": f"nats://127.0.0.1:{free_loopback_port()}",
    }
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.interaction"],
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


def issue_bench_token(persistence: PersistenceSettings) -> str:
    """An admin token with no practical rate limit: the load is what is measured."""
    app = AccessApplication(persistence)
    try:
        return app.issue_token("bench", [ADMIN_SCOPE], rate_per_s=MAX_RATE_PER_S).bearer
    finally:
        app.close()


async def contacts_through_grpc(
    address: str, token: str, contacts: int, clients: int
) -> tuple[float, list[float]]:
    """Commands per second of `contacts` contacts from `clients` concurrent callers (each an
    agent working one contact after another), and each command's latency in seconds."""
    channels = [open_channel(address, token=token) for _ in range(4)]
    stubs = [interaction_pb2_grpc.InteractionServiceStub(channel) for channel in channels]
    latencies: list[float] = []
    remaining = iter(range(contacts))
    requirements = pb.QueueRequirements(
        skills=[pb.RequiredSkill(skill="billing", min_level=2)], language="ja"
    )

    async def timed(call: object) -> pb.Interaction:
        started = time.perf_counter()
        reply: pb.Interaction = await call  # type: ignore[misc]
        latencies.append(time.perf_counter() - started)
        return reply

    async def agent(number: int) -> None:
        stub = stubs[number % len(stubs)]
        agent_id = str(uuid4())
        for index in remaining:
            call = await timed(
                stub.OpenInteraction(
                    pb.OpenInteractionRequest(
                        channel=common_pb2.CHANNEL_PHONE,
                        customer_id=str(uuid4()),
                        contact_reason=REASONS[index % 4],
                    ),
                    timeout=60,
                )
            )
            await timed(
                stub.QueueInteraction(
                    pb.QueueInteractionRequest(
                        interaction_id=call.id, queue="support", requirements=requirements
                    ),
                    timeout=60,
                )
            )
            await timed(
                stub.AnswerInteraction(
                    pb.AnswerInteractionRequest(interaction_id=call.id, agent_id=agent_id),
                    timeout=60,
                )
            )
            await timed(
                stub.AddMessage(
                    pb.AddMessageRequest(
                        interaction_id=call.id,
                        author_kind=pb.AUTHOR_KIND_AGENT,
                        author_id=agent_id,
                        text="お問い合わせありがとうございます",
                    ),
                    timeout=60,
                )
            )
            await timed(
                stub.ResolveInteraction(
                    pb.ResolveInteractionRequest(interaction_id=call.id, resolution="Answered"),
                    timeout=60,
                )
            )

    started = time.perf_counter()
    await asyncio.gather(*(agent(number) for number in range(clients)))
    elapsed = time.perf_counter() - started
    for channel in channels:
        await channel.close(grace=None)
    return contacts * COMMANDS_PER_CONTACT / elapsed, latencies


# --- the run ------------------------------------------------------------------------------


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def _arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench interaction", description=__doc__)
    parser.add_argument(
        "--contacts", type=_positive, default=2_000, help="contacts through the service"
    )
    parser.add_argument(
        "--baseline-contacts", type=_positive, default=600, help="contacts for the baseline"
    )
    parser.add_argument("--clients", type=_positive, default=64, help="concurrent callers")
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
        raise SystemExit(f"the interaction benchmark needs PostgreSQL: {error}") from None
    workdir = Path(tempfile.mkdtemp(prefix="crm-bench-interaction-"))
    databases: list[str] = []
    process: subprocess.Popen[bytes] | None = None
    try:
        print(f"PostgreSQL: {server.description} at {server.host}:{server.port}")
        baseline_db = server.create_database("crm_bench_baseline")
        databases.append(baseline_db)
        baseline = baseline_per_s(
            server.persistence(baseline_db), arguments.baseline_contacts, arguments.clients
        )
        print(
            f"baseline (in-process, one save per command, {arguments.clients} threads, "
            f"{arguments.baseline_contacts} contacts): {baseline:,.0f} commands/s"
        )

        service_db = server.create_database("crm_bench_interaction")
        databases.append(service_db)
        token = issue_bench_token(server.persistence(service_db))
        process, address = start_service(
            server, service_db, workdir / "data", workdir / "service.log", arguments.worker_threads
        )
        print(f"service: subprocess `python -m services.interaction` on {address} (bus idle)")
        asyncio.run(contacts_through_grpc(address, token, WARM_UP_CONTACTS, arguments.clients))
        cpu_before = cpu_seconds(process.pid)
        rate, latencies = asyncio.run(
            contacts_through_grpc(address, token, arguments.contacts, arguments.clients)
        )
        cpu_after = cpu_seconds(process.pid)
        commands = arguments.contacts * COMMANDS_PER_CONTACT
        cpu_ms = (
            None
            if cpu_before is None or cpu_after is None
            else (cpu_after - cpu_before) / commands * 1000
        )
        p99_ms = percentile(latencies, 0.99) * 1000
        speedup = rate / baseline
        print(
            f"open/queue/answer/message/resolve via gRPC, {arguments.clients} concurrent "
            f"clients, {arguments.contacts} contacts: {rate:,.0f} commands/s "
            f"({speedup:.1f}x baseline), p50 {statistics.median(latencies) * 1000:.1f} ms, "
            f"p99 {p99_ms:.1f} ms"
            + ("" if cpu_ms is None else f"; service CPU {cpu_ms:.2f} ms per command")
        )
        return {
            "commands_per_s": round(rate, 1),
            "baseline_per_s": round(baseline, 1),
            "speedup": round(speedup, 2),
            "p99_ms": round(p99_ms, 1),
            "p50_ms": round(statistics.median(latencies) * 1000, 1),
            "service_cpu_ms_per_command": None if cpu_ms is None else round(cpu_ms, 2),
            "contacts": arguments.contacts,
            "commands": commands,
            "clients": arguments.clients,
            "service": "subprocess",
        }
    finally:
        if process is not None:
            stop_service(process)
        for dbname in databases:
            server.drop_database(dbname)
        provider.stop()
        shutil.rmtree(workdir, ignore_errors=True)
