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
   contacts from `--clients` concurrent gRPC clients (`bench.load`). Group commit lets
   concurrent commands share transactions.
   Then the gRPC ceiling: as many empty `grpc.health.v1.Health/Check` calls as there were
   commands, to the same process, the same way (`bench.load.rpc_ceiling`). They do no work, so
   their rate is what the round trip alone costs here, client and server on the same cores as
   PostgreSQL: no command rate can be higher, and where the ceiling is below 5x the baseline,
   so is `speedup`.

Figures: `commands_per_s` (the service), `baseline_per_s`, `speedup` (target ≥ 5), `p99_ms`
(command latency at the client), `rpc_ceiling_per_s` (empty calls per second) and
`ceiling_vs_baseline` (the highest speedup gRPC leaves room for on this machine).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from uuid import UUID, uuid4

from bench.load import Load, Timed, rpc_ceiling, run_load
from bench.service import (
    cpu_seconds,
    issue_bench_token,
    percentile,
    positive,
    start_service,
    stop_service,
)
from crm.v1 import common_pb2, interaction_pb2, interaction_pb2_grpc
from crmcore.application.interactions import InteractionApplication
from crmcore.config import PersistenceSettings
from crmcore.domain.interaction import RoutingRequirements, SkillRequirement
from tests.support.postgres import PostgresProvider, PostgresUnavailable

pb = interaction_pb2
STARTUP_S = 60
WARM_UP_CONTACTS = 100
COMMANDS_PER_CONTACT = 5
REASONS = ("billing", "delivery", "login", "refund")


class BaselineApplication(InteractionApplication):
    name = "bench_interaction_baseline"


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


REQUIREMENTS = pb.QueueRequirements(
    skills=[pb.RequiredSkill(skill="billing", min_level=2)], language="ja"
)


async def _agent(
    stub: interaction_pb2_grpc.InteractionServiceAsyncStub, contacts: Iterator[int], timed: Timed
) -> None:
    """One agent working one contact after another."""
    agent_id = str(uuid4())
    for index in contacts:
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
                    interaction_id=call.id, queue="support", requirements=REQUIREMENTS
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


async def contacts_through_grpc(address: str, token: str, contacts: int, clients: int) -> Load:
    """The commands of `contacts` contacts from `clients` concurrent callers, each an agent."""
    return await run_load(
        address,
        token,
        interaction_pb2_grpc.InteractionServiceStub,
        range(contacts),
        _agent,
        clients,
    )


# --- the run ------------------------------------------------------------------------------


def _arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench interaction", description=__doc__)
    parser.add_argument(
        "--contacts", type=positive, default=2_000, help="contacts through the service"
    )
    parser.add_argument(
        "--baseline-contacts", type=positive, default=600, help="contacts for the baseline"
    )
    parser.add_argument("--clients", type=positive, default=64, help="concurrent callers")
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
            "services.interaction",
            "CRM_INTERACTION_ADDRESS",
            server,
            service_db,
            workdir / "data",
            workdir / "service.log",
            worker_threads=arguments.worker_threads,
        )
        print(f"service: subprocess `python -m services.interaction` on {address} (bus idle)")
        asyncio.run(contacts_through_grpc(address, token, WARM_UP_CONTACTS, arguments.clients))
        cpu_before = cpu_seconds(process.pid)
        load = asyncio.run(
            contacts_through_grpc(address, token, arguments.contacts, arguments.clients)
        )
        cpu_after = cpu_seconds(process.pid)
        rate, latencies = load.per_s, load.latencies
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
        ceiling = asyncio.run(rpc_ceiling(address, token, commands, arguments.clients))
        print(
            f"gRPC ceiling, empty Health/Check calls to the same service, "
            f"{arguments.clients} concurrent clients the same way: {ceiling.per_s:,.0f}/s "
            f"({ceiling.per_s / baseline:.1f}x baseline; commands reach "
            f"{rate / ceiling.per_s:.0%} of it). No work behind them: the round trip "
            f"alone, client and server sharing these {os.cpu_count()} cores with PostgreSQL, "
            f"bounds any command rate measured this way"
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
            "rpc_ceiling_per_s": round(ceiling.per_s, 1),
            "ceiling_vs_baseline": round(ceiling.per_s / baseline, 2),
        }
    finally:
        if process is not None:
            stop_service(process)
        for dbname in databases:
            server.drop_database(dbname)
        provider.stop()
        shutil.rmtree(workdir, ignore_errors=True)
