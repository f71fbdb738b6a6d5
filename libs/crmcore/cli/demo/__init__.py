"""`crm demo`: a simulated contact-centre day against the real services, and its KPIs.

Uses the stack running on the data directory (`crm up`), or the services at the configured
addresses when they all answer, or else starts a stack itself (NATS and the four services on
SQLite in `CRM_DATA_DIR`, default `.crm-data`) and stops it afterwards. Then:

1. sets up the directory through the public APIs: queues and agents on the routing service,
   customers on the customer service (idempotent: a rerun with the same seed reuses them);
2. plays the scenario of `--seed` (`scenario.generate`) with the driver (`driver.DayDriver`),
   the day compressed `--speed` times (or into `--duration` real seconds), with a progress bar;
3. reads the KPIs back from the metrics service, prints the KPI table and writes the HTML
   report (inline SVG charts) and a JSON summary beside it, printing both paths.

Modules: `scenario` (the seeded day), `clock` (simulated time), `driver` (the gRPC clients),
`routing` (the routing service's side of the driver), `ledger` (what was done), `report`
(read-back, table, HTML, JSON), `charts` (SVG), `progress` (the bar).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from crmcore.cli.demo.scenario import Scenario, generate

DEFAULT_SPEED = 360.0
DEFAULT_CONTACTS = 600


def register(subparsers: Any) -> None:
    """Adds `demo` to the `crm` command."""
    parser = subparsers.add_parser(
        "demo",
        help="simulate a contact-centre day against the services and report its KPIs",
        description=(
            "Plays a simulated contact-centre day (customers, agents with skills and shifts, "
            "arrivals on every channel, bots, routing, holds, transfers, escalations, "
            "resolutions, repeat contacts, surveys and feedback) through the public gRPC APIs "
            "of a running stack (or one it starts and stops), then prints the KPIs and writes "
            "an HTML report."
        ),
    )
    parser.add_argument("--seed", type=int, default=1, help="scenario seed (default 1)")
    timing = parser.add_mutually_exclusive_group()
    timing.add_argument(
        "--speed",
        type=_positive_float,
        help=f"simulated seconds per real second (default {DEFAULT_SPEED:g})",
    )
    timing.add_argument(
        "--duration",
        type=_positive_float,
        metavar="SECONDS",
        help="real seconds the day window should take (sets the speed)",
    )
    parser.add_argument(
        "--hours", default="09:00-18:00", help="the simulated day window (default 09:00-18:00)"
    )
    parser.add_argument(
        "--contacts",
        type=int,
        default=DEFAULT_CONTACTS,
        help=f"expected first contacts in the window (default {DEFAULT_CONTACTS}); agents "
        "are sized to it",
    )
    parser.add_argument(
        "--report",
        type=Path,
        metavar="PATH",
        help="HTML report path (default: <data dir>/reports/demo-<time>-seed<N>.html); the "
        "JSON summary goes beside it",
    )
    parser.add_argument(
        "--no-start",
        action="store_true",
        help="fail instead of starting a stack when none is running",
    )
    parser.set_defaults(handler=run_demo)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be above 0")
    return value


class _Stopped(Exception):
    """SIGTERM arrived: unwind, stopping what was started."""


def run_demo(args: argparse.Namespace) -> int:
    from crmcore.adapters.nats_server import NatsServerError
    from crmcore.cli.stack import (
        Stack,
        StackError,
        client_token,
        configured_endpoints,
        running_stack_endpoints,
        serving_endpoints,
        start_stack,
    )
    from crmcore.cli.up import print_endpoints
    from crmcore.config import ConfigurationError, persistence_from_env

    start, _, end = args.hours.partition("-")
    try:
        scenario = generate(args.seed, contacts=args.contacts, start=start, end=end or "18:00")
    except ValueError as error:
        print(f"crm demo: {error}", file=sys.stderr)
        return 2
    speed = scenario.length_s / args.duration if args.duration else args.speed or DEFAULT_SPEED

    def stopped(signum: int, frame: FrameType | None) -> None:
        raise _Stopped(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, stopped)
    stack: Stack | None = None
    try:
        data_dir = persistence_from_env(default_kind="sqlite").data_dir.resolve()
        endpoints = running_stack_endpoints(data_dir)
        if endpoints is None and serving_endpoints(configured_endpoints(), 0.5):
            endpoints = configured_endpoints()
        if endpoints is None:
            if args.no_start:
                print(f"crm demo: no stack is running on {data_dir}", file=sys.stderr)
                return 1
            print(f"no stack running on {data_dir}: starting one …", flush=True)
            stack = start_stack()
            print_endpoints(stack)
            endpoints = dict(stack.endpoints)
            token = stack.admin_token
        else:
            print(f"using the running services: customer at {endpoints['customer']} …")
            token = client_token(data_dir)
        report_path = args.report or data_dir / "reports" / (
            f"demo-{datetime.now(UTC):%Y%m%d-%H%M%S}-seed{args.seed}.html"
        )
        return asyncio.run(
            _play(
                scenario,
                speed=speed,
                endpoints=endpoints,
                token=token,
                report_path=report_path,
                started_stack=stack is not None,
                data_dir=data_dir,
            )
        )
    except (StackError, NatsServerError, ConfigurationError, OSError) as error:
        print(f"crm demo: {error}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, _Stopped):
        print("\ncrm demo: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        if stack is not None:
            print("stopping the stack the demo started …", flush=True)
            stack.stop()


async def _play(
    scenario: Scenario,
    *,
    speed: float,
    endpoints: dict[str, str],
    token: str,
    report_path: Path,
    started_stack: bool,
    data_dir: Path,
) -> int:
    from crm.v1 import customer_pb2_grpc, interaction_pb2_grpc, metrics_pb2_grpc
    from crmcore.adapters.grpc.channels import open_channel
    from crmcore.cli.demo import report
    from crmcore.cli.demo.clock import SimClock
    from crmcore.cli.demo.driver import DayDriver
    from crmcore.cli.demo.ledger import Ledger
    from crmcore.cli.demo.progress import ProgressBar
    from crmcore.cli.demo.routing import GrpcRouting
    from crmcore.config import client_tls_from_env

    tls = client_tls_from_env()
    channels = {
        name: open_channel(endpoints[name], token=token, tls=tls)
        for name in ("customer", "interaction", "routing", "metrics")
    }
    try:
        ledger = Ledger()
        clock = SimClock(speed)
        driver = DayDriver(
            scenario,
            customers=customer_pb2_grpc.CustomerServiceStub(channels["customer"]),
            interactions=interaction_pb2_grpc.InteractionServiceStub(channels["interaction"]),
            routing=GrpcRouting(channels["routing"]),
            clock=clock,
            ledger=ledger,
            run_tag=f"demo-{uuid.uuid4().hex[:12]}",
        )
        window = f"{scenario.clock_label(0)}–{scenario.clock_label(scenario.length_s)}"
        print(
            f"setting up {len(scenario.queues)} queues, {len(scenario.agents)} agents and "
            f"{sum(c.on_file for c in scenario.customers)} customers …",
            flush=True,
        )
        await driver.set_up()
        print(
            f"playing {window} (seed {scenario.seed}, about {len(scenario.contacts)} contacts) "
            f"at speed {speed:g}: about {scenario.length_s / speed:.0f} s",
            flush=True,
        )
        bar = ProgressBar(scenario.length_s)

        def progress(d: DayDriver) -> None:
            now = min(clock.now_s(), scenario.length_s)
            on_duty = sum(seat.logged_in for seat in d.seats)
            bar.update(
                now,
                f"{scenario.clock_label(clock.now_s())}  {d.arrived} contacts  "
                f"{ledger.waiting} waiting  {on_duty}/{len(d.seats)} agents logged in",
            )

        driver.on_progress = progress
        await driver.run()
        real_end = datetime.now(UTC)
        bar.finish(
            f"{scenario.clock_label(clock.now_s())}  {driver.arrived} contacts played; "
            "reading the KPIs back …"
        )
        run = report.RunInfo(
            seed=scenario.seed,
            speed=speed,
            window=window,
            real_start=clock.real_origin,
            real_end=real_end,
            started_stack=started_stack,
            endpoints=endpoints,
            data_dir=str(data_dir),
        )
        data = await report.collect(
            metrics_pb2_grpc.MetricsServiceStub(channels["metrics"]),
            run,
            scenario,
            ledger,
            clock.simulated,
        )
        print()
        print(report.terminal_table(data))
        summary_path = report.write_outputs(data, report_path)
        failed = sum(ledger.errors.values())
        if failed:
            print(f"{failed} calls failed; the last: {ledger.last_error}", file=sys.stderr)
        if not data.caught_up:
            print("the metrics service had not caught up: some figures may be short")
        if data.others:
            print(report.overlap_note(data))
        print(f"report:  {report_path}")
        print(f"summary: {summary_path}", flush=True)
        return 0
    finally:
        for channel in channels.values():
            await channel.close(None)
