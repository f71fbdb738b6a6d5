"""Load with faults: kill -9 of the customer and interaction services, a NATS restart and a
PostgreSQL restart under a steady command load; nothing acknowledged may be lost or doubled.

One run on a private PostgreSQL server and a private NATS server (both restartable), the four
services as processes (`python -m services.<name>`, configured by the environment only):
`--clients` concurrent clients play contacts (create a customer, open an interaction for
them, queue, answer, resolve; some commands refused on purpose; some creates sent with a
deadline too short to learn their outcome and retried with the same request_id). Faults are
injected one after the other with `--settle` seconds of load in between, then every
acknowledged command is looked for in the store (through the APIs), on the bus (the JetStream
stream read directly) and in the KPIs of the metrics service (`tests.support.processes`).

Figures: `sent`, `acknowledged`, `in_store`, `on_bus`, `in_kpis` (commands the KPIs count:
interaction commands), `lost` and `duplicated` (both must be 0), `recovery_s` (per fault,
seconds from its start until a command to a service it hit, sent after it started,
succeeded; for the database, its outage included).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from crmcore.adapters.nats_server import NatsServer
from tests.support.postgres import PostgresUnavailable, RestartablePostgres
from tests.support.processes import (
    Fault,
    LoadRunner,
    LoadSettings,
    ProcessStack,
    kill_and_restart,
    measure_recovery,
    nats_outage,
    postgres_outage,
    reconcile,
)


def _arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench faults", description=__doc__)
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument(
        "--settle", type=float, default=5.0, help="seconds of load before and between faults"
    )
    parser.add_argument(
        "--outage", type=float, default=4.0, help="seconds NATS/PostgreSQL stay down"
    )
    return parser.parse_args(list(argv))


def main(argv: Sequence[str]) -> dict[str, object]:
    arguments = _arguments(argv)
    postgres = RestartablePostgres()
    try:
        server = postgres.start()
    except PostgresUnavailable as error:
        raise SystemExit(f"the faults benchmark needs PostgreSQL binaries: {error}") from None
    workdir = Path(tempfile.mkdtemp(prefix="crm-bench-faults-"))
    nats = NatsServer(workdir / "nats")
    stack: ProcessStack | None = None
    try:
        nats.start()
        persistence = server.persistence(server.create_database("crm_bench_faults"))
        stack = ProcessStack(persistence=persistence, nats_url=nats.url, work_dir=workdir / "stack")
        started = time.monotonic()
        stack.start()
        print(
            f"services up in {time.monotonic() - started:.1f}s on {server.description} "
            f"and NATS {nats.url}; {arguments.clients} clients"
        )
        load = LoadRunner(stack, LoadSettings(clients=arguments.clients)).start()
        faults: list[Fault] = []
        try:
            time.sleep(arguments.settle)
            for name in ("customer", "interaction"):
                faults.append(kill_and_restart(stack, name))
                print(f"{faults[-1].name}: SERVING again after {faults[-1].outage_s:.1f}s")
                time.sleep(arguments.settle)
            faults.append(nats_outage(nats, arguments.outage))
            print(f"NATS stopped for {arguments.outage:g}s and started again")
            time.sleep(arguments.settle)
            faults.append(postgres_outage(postgres, arguments.outage))
            print(f"PostgreSQL cut off for {arguments.outage:g}s and started again")
            time.sleep(arguments.settle)
        finally:
            ledger = load.stop()
        recovery = measure_recovery(ledger, faults)
        result = asyncio.run(reconcile(stack, ledger, settle_s=60))
        print(result.describe())
        for name, seconds in recovery.items():
            shown = "never" if seconds is None else f"{seconds:.2f}s"
            print(f"recovery after {name}: {shown}")
        codes = ", ".join(
            f"{code} {count}" for code, count in ledger.codes_between(0, 1e18).most_common()
        )
        print(
            f"call statuses: {codes}; ambiguous commands retried: "
            f"{sum(1 for command in ledger.commands if command.ambiguous)}"
        )
        return {
            **result.figures(),
            "refused": result.refused,
            "gave_up": result.gave_up,
            "unexpected_statuses": len(ledger.unexpected()),
            "recovery_s": {
                name: None if seconds is None else round(seconds, 3)
                for name, seconds in recovery.items()
            },
        }
    except BaseException:
        # The services' logs say why: keep them.
        print(f"failed; the services' logs are kept in {workdir / 'stack'}")
        if stack is not None:
            for traceback in stack.unexpected_errors():
                print(traceback)
        raise
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    finally:
        if stack is not None:
            stack.stop()
        nats.stop()
        postgres.stop()
