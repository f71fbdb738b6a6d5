"""`crm events …`: look at the event bus as a department would, and publish its schemas.

- `crm events tail [SUBJECT] [--since TIME | --from-seq N | --all]` prints the events on
  SUBJECT (default `crm.>`, any NATS wildcard such as `crm.voc.>`) as they arrive, optionally
  starting from a time (`2025-04-01T09:00:00Z`, or `15m`, `2h`, `1d` ago) or a stream sequence.
  It uses an ephemeral ordered consumer: nothing is acknowledged or left behind.
- `crm events schemas [--out DIR] [--check]` writes the JSON Schema of every event type.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from crmcore.adapters import envelope
from crmcore.adapters.jetstream import close_quietly, connect
from crmcore.adapters.schemas import outdated_schemas, write_schemas
from crmcore.config import BusSettings, bus_from_env

CONNECT_WAIT_S = 5.0
_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def register(subparsers: Any) -> None:
    """Adds `events tail` and `events schemas` to the `crm` command."""
    events = subparsers.add_parser("events", help="watch the event bus, publish event schemas")
    commands = events.add_subparsers(dest="events_command", required=True)

    tail = commands.add_parser(
        "tail",
        help="print events live as a subscriber receives them",
        description="Prints the events published on SUBJECT as they arrive.",
    )
    tail.add_argument(
        "subject", nargs="?", default="crm.>", help="NATS subject or wildcard (crm.>)"
    )
    start = tail.add_mutually_exclusive_group()
    start.add_argument(
        "--since",
        type=parse_since,
        metavar="TIME",
        help="start at a time: RFC 3339 (2025-04-01T09:00:00Z) or an age (90s, 15m, 2h, 1d)",
    )
    start.add_argument("--from-seq", type=positive, metavar="N", help="start at stream seq N")
    start.add_argument("--all", action="store_true", help="start at the oldest event kept")
    tail.add_argument("--nats-url", help="NATS server(s) (default: NATS_URL or local)")
    tail.add_argument("--stream", help="stream name (default: CRM_STREAM or CRM)")
    tail.add_argument("--json", action="store_true", help="print each CloudEvent as JSON")
    tail.add_argument("--limit", type=positive, metavar="N", help="exit after N events")
    tail.set_defaults(handler=_tail)

    schemas = commands.add_parser(
        "schemas",
        help="write the JSON Schema of every event type",
        description="Writes one JSON Schema per event type, the envelope's and an index.",
    )
    schemas.add_argument("--out", default="schemas", help="directory (default: ./schemas)")
    schemas.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if DIR is out of date"
    )
    schemas.set_defaults(handler=_schemas)


def parse_since(text: str, *, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> datetime:
    """A start time: RFC 3339 (naive means UTC) or an age such as `15m` before now."""
    relative = _RELATIVE.fullmatch(text.strip())
    if relative:
        amount, unit = relative.groups()
        return now() - timedelta(**{_UNITS[unit]: float(amount)})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a time like 2025-04-01T09:00:00Z or an age like 15m"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def positive(text: str) -> int:
    """An argparse type: a whole number of at least 1 (the `crm` commands' counts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 1 or more")
    return value


def _schemas(args: argparse.Namespace) -> int:
    if args.check:
        problems = outdated_schemas(args.out)
        for problem in problems:
            print(f"out of date: {args.out}/{problem}", file=sys.stderr)
        if problems:
            print("regenerate with: crm events schemas", file=sys.stderr)
        return 1 if problems else 0
    written = write_schemas(args.out)
    print(f"wrote {len(written)} schema files to {args.out}")
    return 0


def _tail(args: argparse.Namespace) -> int:
    settings = bus_from_env()
    if args.nats_url:
        settings = msgspec.structs.replace(settings, nats_url=args.nats_url)
    if args.stream:
        settings = msgspec.structs.replace(settings, stream=args.stream)
    config = ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
    if args.all:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    elif args.from_seq:
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=args.from_seq
        )
    elif args.since:
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=args.since
        )
    try:
        return asyncio.run(
            tail(settings, args.subject, config, json_lines=args.json, limit=args.limit)
        )
    except KeyboardInterrupt:
        return 0


async def tail(
    settings: BusSettings,
    subject: str,
    config: ConsumerConfig,
    *,
    json_lines: bool = False,
    limit: int | None = None,
    out: TextIO | None = None,
) -> int:
    """Prints the events on `subject` from the start `config` says; returns an exit code."""
    out = out or sys.stdout
    try:
        # Reconnects forever once connected, but a person should hear soon if NATS is not there.
        nc = await asyncio.wait_for(connect(settings, name="crm-events-tail"), CONNECT_WAIT_S)
    except (nats.errors.Error, OSError, TimeoutError) as error:
        print(
            f"cannot reach NATS at {settings.url}: {error or type(error).__name__}", file=sys.stderr
        )
        return 2
    try:
        js = nc.jetstream()
        try:
            subscription = await js.subscribe(
                subject, stream=settings.stream, ordered_consumer=True, config=config
            )
        except nats.js.errors.NotFoundError:
            print(f"no stream {settings.stream} at {settings.url}", file=sys.stderr)
            return 2
        except nats.js.errors.APIError as error:
            print(f"cannot follow {subject} on {settings.stream}: {error}", file=sys.stderr)
            return 2
        print(f"following {subject} on {settings.stream} at {settings.url}", file=sys.stderr)
        count = 0
        async for message in subscription.messages:
            print(format_message(message, json_lines=json_lines), file=out, flush=True)
            count += 1
            if limit is not None and count >= limit:
                break
        return 0
    finally:
        await close_quietly(nc)


def format_message(message: Msg, *, json_lines: bool = False) -> str:
    """One event for a person: sequence, time, subject, type, ids and attributes, then data."""
    if json_lines:
        return message.data.decode("utf-8", errors="replace")
    sequence = message.metadata.sequence.stream if message.metadata.sequence else "?"
    try:
        event = envelope.decode(message.data)
    except envelope.EnvelopeError:
        body = message.data.decode("utf-8", errors="replace")
        return f"#{sequence} {message.subject} (not a CloudEvent)\n    {body}"
    attributes = " ".join(f"{key}={value}" for key, value in sorted(event.extensions.items()))
    data = msgspec.json.encode(event.data_json()).decode()
    return (
        f"#{sequence} {event.time.isoformat()} {message.subject} {event.type} "
        f"id={event.id} aggregate={event.subject} {attributes}\n    {data}"
    )
