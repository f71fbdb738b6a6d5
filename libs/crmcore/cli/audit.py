"""`crm audit customer ID`: who did what to a customer, from the customer service's audit trail.

A thin client of `CustomerService.ListCustomerAudit` (the token sent needs scope `audit:read`):
newest first, one line per event — time, actor (`token:<name>`, `system:<name>`, `-` when
nobody was identified), service, action, aggregate and version, and the names of the fields
the event set (never their values).

- `--since` / `--until` limit the range (RFC 3339, or an age such as `15m`, `2h`, `1d`);
- `--limit N` entries at most (default 50), fetched page by page; `--all` every entry;
- `--json` prints the responses as JSON.

Address and token as for the other client commands: `--address`, else the running stack's
endpoint, else `CRM_CUSTOMER_ADDRESS`; `CRM_TOKEN`, else the stack's admin token.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from crm.v1 import customer_pb2, customer_pb2_grpc
from crmcore.adapters.grpc.channels import open_blocking_channel
from crmcore.cli.directory import RPC_TIMEOUT_S, as_json, service_address, table
from crmcore.cli.events import parse_since, positive
from crmcore.cli.stack import MissingToken, client_token
from crmcore.config import ConfigurationError, client_tls_from_env

DEFAULT_LIMIT = 50
#: Entries asked for per call when following pages.
PAGE_SIZE = 200


def register(subparsers: Any) -> None:
    """Adds `audit customer` to the `crm` command."""
    audit = subparsers.add_parser("audit", help="the audit trail: who did what")
    commands = audit.add_subparsers(dest="audit_command", required=True)
    customer = commands.add_parser(
        "customer",
        help="who did what to a customer, newest first",
        description=(
            "The customer's audit trail: its own events (merged customers and the erasure "
            "included) and those of its interactions, cases, surveys and feedback."
        ),
    )
    customer.add_argument("customer_id", help="the customer's id (a merged id lists the survivor)")
    customer.add_argument(
        "--since", type=parse_since, metavar="TIME", help="from this time (RFC 3339 or 15m, 2h…)"
    )
    customer.add_argument(
        "--until", type=parse_since, metavar="TIME", help="before this time (RFC 3339 or an age)"
    )
    amount = customer.add_mutually_exclusive_group()
    amount.add_argument(
        "--limit", type=positive, default=DEFAULT_LIMIT, help=f"entries at most ({DEFAULT_LIMIT})"
    )
    amount.add_argument("--all", action="store_true", help="every entry")
    customer.add_argument("--address", help="the customer service's host:port")
    customer.add_argument("--json", action="store_true", help="print the responses as JSON")
    customer.set_defaults(handler=_customer)


def _timestamp(moment: datetime | None) -> Timestamp | None:
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def pages(
    stub: customer_pb2_grpc.CustomerServiceStub,
    customer_id: str,
    *,
    limit: int | None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Iterator[customer_pb2.ListCustomerAuditResponse]:
    """The responses of ListCustomerAudit, page after page, until `limit` entries (None: all)."""
    token = ""
    remaining = limit
    while True:
        size = PAGE_SIZE if remaining is None else min(PAGE_SIZE, remaining)
        response = stub.ListCustomerAudit(
            customer_pb2.ListCustomerAuditRequest(
                customer_id=customer_id,
                page_size=size,
                page_token=token,
                start_time=_timestamp(since),
                end_time=_timestamp(until),
            ),
            timeout=RPC_TIMEOUT_S,
        )
        yield response
        token = response.next_page_token
        if remaining is not None:
            remaining -= len(response.entries)
        if not token or (remaining is not None and remaining <= 0):
            return


def render_audit(customer_id: str, entries: list[customer_pb2.AuditEntry], more: bool) -> str:
    """The audit trail as a table (newest first)."""
    if not entries:
        return f"customer {customer_id}: no audited events"
    rows = [
        [
            entry.occur_time.ToDatetime().isoformat(timespec="seconds") + "Z",
            entry.actor or "-",
            entry.service,
            entry.action.removeprefix("crm.").removesuffix(".v1"),
            f"{entry.aggregate_id} v{entry.aggregate_version}",
            ", ".join(entry.fields),
        ]
        for entry in entries
    ]
    lines = [
        f"customer {customer_id}",
        table(["time (UTC)", "actor", "service", "action", "aggregate", "fields"], rows),
    ]
    if more:
        lines.append("… older entries: --limit N or --all")
    return "\n".join(lines)


def _customer(args: argparse.Namespace) -> int:
    address = service_address("customer", args.address)
    try:
        token = client_token()
        tls = client_tls_from_env()
    except (MissingToken, ConfigurationError) as error:
        print(f"crm: {error}", file=sys.stderr)
        return 1
    limit = None if args.all else args.limit
    with open_blocking_channel(address, token=token, tls=tls) as channel:
        stub = customer_pb2_grpc.CustomerServiceStub(channel)
        try:
            responses = list(
                pages(stub, args.customer_id, limit=limit, since=args.since, until=args.until)
            )
        except grpc.RpcError as error:
            return _refused(error, address)
    if args.json:
        for response in responses:
            print(as_json(response))
        return 0
    entries = [entry for response in responses for entry in response.entries]
    survivor = responses[-1].customer_id if responses else args.customer_id
    print(render_audit(survivor, entries, more=bool(responses[-1].next_page_token)))
    return 0


def _refused(error: grpc.RpcError, address: str) -> int:
    code = error.code() if isinstance(error, grpc.Call) else None
    details = error.details() if isinstance(error, grpc.Call) else str(error)
    if code == grpc.StatusCode.UNAVAILABLE:
        print(
            f"crm: the customer service at {address} does not answer (is `crm up` running?)",
            file=sys.stderr,
        )
        return 1
    print(f"crm: {code.name if code is not None else 'error'}: {details}", file=sys.stderr)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        print("crm: the audit needs a token with scope audit:read (or admin)", file=sys.stderr)
    return 2 if code == grpc.StatusCode.INVALID_ARGUMENT else 1
