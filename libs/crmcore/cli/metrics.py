"""`crm metrics …` and `crm kpis`: rebuild the KPI read models, and read KPIs from the service.

- `crm metrics rebuild [--batch N]` empties the metrics read models (KPI targets stay) and
  replays the whole event stream into them, then exits. Stop the metrics service first: it
  feeds the same store. Storage, time zone and bus come from the environment, as for the
  service (`CRM_PERSISTENCE`, `CRM_DATA_DIR`, `CRM_METRICS_TIME_ZONE`, `NATS_URL`, …); a
  rebuild is also how a new time zone takes effect.
- `crm kpis [--period today] [--interval hour] [--group-by queue …] [--json]` asks the metrics
  service (`--address`, default `CRM_METRICS_ADDRESS` or 127.0.0.1:50054) and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any
from zoneinfo import ZoneInfo

import msgspec

from crmcore.cli.events import positive
from crmcore.config import (
    ConfigurationError,
    bus_from_env,
    client_tls_from_env,
    metrics_from_env,
    service_from_env,
)

PERIODS = (
    "today",
    "yesterday",
    "last_7_days",
    "last_30_days",
    "this_week",
    "last_week",
    "this_month",
    "last_month",
)
INTERVALS = ("period", "15m", "hour", "day", "week", "month")
DIMENSIONS = ("channel", "queue", "team", "agent", "reason")
RPC_TIMEOUT_S = 30.0


def register(subparsers: Any) -> None:
    """Adds `metrics rebuild` and `kpis` to the `crm` command."""
    metrics = subparsers.add_parser("metrics", help="maintain the KPI read models")
    commands = metrics.add_subparsers(dest="metrics_command", required=True)
    rebuild = commands.add_parser(
        "rebuild",
        help="replay the whole event stream into fresh KPI read models",
        description="Empties the metrics read models (KPI targets stay) and replays every "
        "event of the stream into them. Stop the metrics service first.",
    )
    rebuild.add_argument("--nats-url", help="NATS server(s) (default: NATS_URL or local)")
    rebuild.add_argument("--stream", help="stream name (default: CRM_STREAM or CRM)")
    rebuild.add_argument(
        "--batch", type=positive, default=10_000, help="events per transaction (10000)"
    )
    rebuild.set_defaults(handler=_rebuild)

    kpis = subparsers.add_parser(
        "kpis",
        help="print KPIs from the metrics service",
        description="Asks the metrics service for the KPIs of a period and prints them.",
    )
    kpis.add_argument("--period", choices=PERIODS, default="today")
    kpis.add_argument("--interval", choices=INTERVALS, default="period")
    kpis.add_argument(
        "--group-by",
        choices=DIMENSIONS,
        action="append",
        default=[],
        metavar="DIMENSION",
        help=f"group rows by a dimension (repeatable): {', '.join(DIMENSIONS)}",
    )
    kpis.add_argument("--address", help="metrics service host:port (default: CRM_METRICS_ADDRESS)")
    kpis.add_argument("--json", action="store_true", help="print the report as JSON")
    kpis.set_defaults(handler=_kpis)


# --- rebuild -------------------------------------------------------------------------------------


def _rebuild(args: argparse.Namespace) -> int:
    from crmcore.adapters.readmodels import open_read_model_store
    from crmcore.application.metrics import MetricsProjection, rebuild
    from crmcore.domain.kpis import KpiPolicy

    try:
        service = service_from_env("metrics")
        metrics = metrics_from_env()
        bus = bus_from_env()
    except ConfigurationError as error:
        print(f"crm metrics rebuild: {error}", file=sys.stderr)
        return 2
    if args.nats_url:
        bus = msgspec.structs.replace(bus, nats_url=args.nats_url)
    if args.stream:
        bus = msgspec.structs.replace(bus, stream=args.stream)
    store = open_read_model_store(service.persistence, "metrics")
    projection = MetricsProjection.for_rebuild(
        store, time_zone=metrics.time_zone, policy=KpiPolicy()
    )
    started = time.monotonic()

    def progress(position: int, last: int) -> None:
        elapsed = time.monotonic() - started
        rate = position / elapsed if elapsed > 0 else 0.0
        print(f"  {position}/{last} events ({rate:,.0f}/s)", file=sys.stderr, flush=True)

    print(
        f"rebuilding the metrics read models from stream {bus.stream} at {bus.url} "
        f"({service.persistence.kind} storage, time zone {metrics.time_zone})",
        file=sys.stderr,
    )
    try:
        reached = asyncio.run(rebuild(projection, bus, batch=args.batch, progress=progress))
    except KeyboardInterrupt:
        print("interrupted: run the rebuild again before starting the service", file=sys.stderr)
        return 130
    finally:
        projection.close_store()
    elapsed = time.monotonic() - started
    print(f"rebuilt: {reached} stream positions in {elapsed:.1f}s")
    return 0


# --- kpis ----------------------------------------------------------------------------------------


def _kpis(args: argparse.Namespace) -> int:
    import grpc
    from google.protobuf import json_format

    from crm.v1 import metrics_pb2 as pb
    from crm.v1 import metrics_pb2_grpc
    from crmcore.adapters.grpc.channels import open_blocking_channel
    from crmcore.cli.stack import MissingToken, client_token

    try:
        address = args.address or service_from_env("metrics").address
    except ConfigurationError as error:
        print(f"crm kpis: {error}", file=sys.stderr)
        return 2
    request = pb.GetKpisRequest(
        period=pb.Period(named=pb.NamedPeriod.Value(f"NAMED_PERIOD_{args.period.upper()}")),
        interval=pb.Interval.Value(_INTERVAL_NAMES[args.interval]),
        group_by=[pb.Dimension.Value(_DIMENSION_NAMES[name]) for name in args.group_by],
    )
    try:
        token = client_token()
        tls = client_tls_from_env()
    except (MissingToken, ConfigurationError) as error:
        print(f"crm kpis: {error}", file=sys.stderr)
        return 1
    try:
        with open_blocking_channel(address, token=token, tls=tls) as channel:
            report = metrics_pb2_grpc.MetricsServiceStub(channel).GetKpis(
                request, timeout=RPC_TIMEOUT_S
            )
    except grpc.RpcError as error:
        call: Any = error
        print(f"crm kpis: {address}: {call.code().name}: {call.details()}", file=sys.stderr)
        return 1
    if args.json:
        print(json_format.MessageToJson(report))
    else:
        print(format_report(report))
    return 0


_INTERVAL_NAMES = {
    "period": "INTERVAL_UNSPECIFIED",
    "15m": "INTERVAL_15_MINUTES",
    "hour": "INTERVAL_HOUR",
    "day": "INTERVAL_DAY",
    "week": "INTERVAL_WEEK",
    "month": "INTERVAL_MONTH",
}
_DIMENSION_NAMES = {
    "channel": "DIMENSION_CHANNEL",
    "queue": "DIMENSION_QUEUE",
    "team": "DIMENSION_TEAM",
    "agent": "DIMENSION_AGENT",
    "reason": "DIMENSION_CONTACT_REASON",
}


def _percent(rate: Any) -> str:
    return f"{rate.value * 100:5.1f}%" if rate.HasField("value") else "    –"


def _seconds(stats: Any) -> str:
    return f"{stats.mean_seconds:6.1f}s" if stats.HasField("mean_seconds") else "     –"


def format_report(report: Any) -> str:
    """A report as a table: one line per interval and group, the headline KPIs."""
    header = (
        f"{'interval':<17} {'group':<24} {'offered':>7} {'answ.':>6} {'aband.':>6} "
        f"{'SL':>6} {'ASA':>7} {'AHT':>7} {'FCR*':>6} {'CSAT':>6}"
    )
    lines = [header, "-" * len(header)]
    zone = ZoneInfo(report.time_zone or "UTC")
    for row in report.rows:
        when = (
            row.interval_start_time.ToDatetime(tzinfo=zone).strftime("%Y-%m-%d %H:%M")
            if row.HasField("interval_start_time")
            else "whole period"
        )
        group = "/".join(value.value or "(none)" for value in row.group) or "all"
        kpis = row.kpis
        lines.append(
            f"{when:<17} {group[:24]:<24} {kpis.offered:>7} {kpis.answered:>6} "
            f"{kpis.abandoned:>6} {_percent(kpis.service_level):>6} "
            f"{_seconds(kpis.answer_wait):>7} {_seconds(kpis.handle_time):>7} "
            f"{_percent(kpis.fcr_provisional):>6} {_percent(kpis.csat):>6}"
        )
    policy = report.policy.service_level
    lines.append("")
    lines.append(
        f"SL: {report.rows[0].kpis.service_level.policy}" if report.rows else "no contacts"
    )
    lines.append(
        f"FCR*: provisional, window {report.policy.fcr_window_days} days; "
        f"threshold {policy.threshold_seconds} s; time zone {report.time_zone}; "
        f"stream position {report.stream_position}"
    )
    return "\n".join(lines)
