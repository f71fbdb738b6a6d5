"""`crm customers lookup`, `crm agents`, `crm queues`: who is who, from the running services.

Thin clients of the public gRPC APIs, for people at a terminal:

- `crm customers lookup --phone 090-1234-5678 | --email … | --handle line:taro [--region JP]`
  finds the customer owning a contact point (the screen pop), with their latest history;
- `crm agents [--team NAME]` lists the agents, their presence, teams, skills and load;
- `crm queues` lists the queues with what waits in them now and today's service level.

Addresses: `--address`, else the stack running on the data directory (its endpoints.json),
else `CRM_<SERVICE>_ADDRESS` (defaults 127.0.0.1:50051 customer, :50053 routing).
`--json` prints the protobuf answers as JSON instead of tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from google.protobuf import json_format, message

from crm.v1 import common_pb2, customer_pb2, customer_pb2_grpc, routing_pb2, routing_pb2_grpc
from crmcore.adapters.grpc.channels import open_blocking_channel
from crmcore.cli.stack import MissingToken, client_token, recorded_endpoints
from crmcore.config import (
    ConfigurationError,
    ServiceName,
    client_tls_from_env,
    persistence_from_env,
    service_from_env,
)

RPC_TIMEOUT_S = 15.0


def register(subparsers: Any) -> None:
    """Adds `customers lookup`, `agents` and `queues` to the `crm` command."""
    customers = subparsers.add_parser("customers", help="look customers up")
    commands = customers.add_subparsers(dest="customers_command", required=True)
    lookup = commands.add_parser(
        "lookup",
        help="find the customer owning a phone number, e-mail address or handle",
        description="The screen pop: the customer owning a contact point, and their history.",
    )
    key = lookup.add_mutually_exclusive_group(required=True)
    key.add_argument("--phone", help="a phone number, any format (national ones need --region)")
    key.add_argument("--email", help="an e-mail address")
    key.add_argument("--handle", help="a messaging or social handle, <network>:<handle>")
    lookup.add_argument("--region", default="", help="ISO 3166 region of national numbers (JP)")
    lookup.add_argument("--history", type=int, default=10, help="timeline entries (10)")
    _common(lookup)
    lookup.set_defaults(handler=_lookup)

    agents = subparsers.add_parser(
        "agents",
        help="list the agents with presence, skills and load",
        description="The agents known to the routing service.",
    )
    agents.add_argument("--team", help="only the members of this team")
    _common(agents)
    agents.set_defaults(handler=_agents)

    queues = subparsers.add_parser(
        "queues",
        help="list the queues with what waits in them now",
        description="The queues of the routing service, with waiting work and service level.",
    )
    _common(queues)
    queues.set_defaults(handler=_queues)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="the service's host:port (default: see crm --help)")
    parser.add_argument("--json", action="store_true", help="print the answers as JSON")


def service_address(service: ServiceName, explicit: str | None) -> str:
    """`explicit`, else the running stack's endpoint, else the configured address."""
    if explicit:
        return explicit
    try:
        data_dir = persistence_from_env(default_kind="sqlite").data_dir
    except ConfigurationError:
        data_dir = None
    recorded = recorded_endpoints(data_dir) if data_dir is not None else None
    if recorded is not None and isinstance(recorded.get(service), str):
        return str(recorded[service])
    return service_from_env(service).address


def as_json(answer: message.Message) -> str:
    return json_format.MessageToJson(answer, ensure_ascii=False, indent=2)


def display_width(text: str) -> int:
    """Terminal columns `text` takes: East Asian wide characters (漢字, かな) take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, as wide as their widest cell (in terminal columns)."""
    widths = [display_width(h) for h in headers]
    for row in rows:
        widths = [max(w, display_width(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = (
            cell + " " * (w - display_width(cell)) for cell, w in zip(cells, widths, strict=True)
        )
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])


def _rpc(what: str, address: str, call: Callable[[grpc.Channel], int]) -> int:
    try:
        token = client_token()
        tls = client_tls_from_env()
    except (MissingToken, ConfigurationError) as error:
        print(f"crm: {error}", file=sys.stderr)
        return 1
    with open_blocking_channel(address, token=token, tls=tls) as channel:
        try:
            return call(channel)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else None
            details = error.details() if isinstance(error, grpc.Call) else str(error)
            if code == grpc.StatusCode.UNAVAILABLE:
                print(
                    f"crm: the {what} service at {address} does not answer (is `crm up` running?)",
                    file=sys.stderr,
                )
                return 1
            name = code.name if code is not None else "error"
            print(f"crm: {name}: {details}", file=sys.stderr)
            if code == grpc.StatusCode.UNAUTHENTICATED:
                print(
                    "crm: the token sent (CRM_TOKEN, else the stack's admin.token) is not "
                    "accepted: set CRM_TOKEN to a live token's bearer",
                    file=sys.stderr,
                )
            return 2 if code == grpc.StatusCode.INVALID_ARGUMENT else 1


# --- customers ----------------------------------------------------------------------------------

_LIFECYCLES = {
    customer_pb2.LIFECYCLE_PROSPECT: "prospect",
    customer_pb2.LIFECYCLE_ACTIVE: "active",
    customer_pb2.LIFECYCLE_CHURNED: "churned",
}
_CONTACT_KINDS = {
    customer_pb2.CONTACT_POINT_KIND_EMAIL: "e-mail",
    customer_pb2.CONTACT_POINT_KIND_PHONE: "phone",
    customer_pb2.CONTACT_POINT_KIND_HANDLE: "handle",
}
_TIMELINE_KINDS = {
    customer_pb2.TIMELINE_ENTRY_KIND_INTERACTION: "interaction",
    customer_pb2.TIMELINE_ENTRY_KIND_CASE: "case",
    customer_pb2.TIMELINE_ENTRY_KIND_SURVEY: "survey",
    customer_pb2.TIMELINE_ENTRY_KIND_FEEDBACK: "feedback",
}


def _lookup(args: argparse.Namespace) -> int:
    if args.phone:
        request = customer_pb2.LookupCustomerRequest(phone=args.phone, default_region=args.region)
    elif args.email:
        request = customer_pb2.LookupCustomerRequest(email=args.email)
    else:
        request = customer_pb2.LookupCustomerRequest(handle=args.handle)
    address = service_address("customer", args.address)

    def call(channel: grpc.Channel) -> int:
        stub = customer_pb2_grpc.CustomerServiceStub(channel)
        try:
            found = stub.LookupCustomer(request, timeout=RPC_TIMEOUT_S)
        except grpc.RpcError as error:
            if isinstance(error, grpc.Call) and error.code() == grpc.StatusCode.NOT_FOUND:
                print("no customer has this contact point", file=sys.stderr)
                return 1
            raise
        view = stub.GetCustomerView(
            customer_pb2.GetCustomerViewRequest(
                customer_id=found.id, page_size=max(1, args.history)
            ),
            timeout=RPC_TIMEOUT_S,
        )
        print(as_json(view) if args.json else render_customer(view))
        return 0

    return _rpc("customer", address, call)


def render_customer(view: customer_pb2.CustomerView) -> str:
    customer = view.customer
    lines = [f"{customer.name or '(no name)'}  {customer.id}"]
    facts = [
        ("company", customer.company),
        ("lifecycle", _LIFECYCLES.get(customer.lifecycle, "")),
        ("segment", customer.segment),
        ("language", customer.language),
        ("time zone", customer.time_zone),
        ("tags", ", ".join(customer.tags)),
        ("erased", "yes" if customer.erased else ""),
    ]
    lines.extend(f"  {name:<12}{value}" for name, value in facts if value)
    for point in customer.contact_points:
        lines.append(f"  {_CONTACT_KINDS.get(point.kind, 'contact'):<12}{point.value}")
    if view.timeline:
        lines.append("")
        lines.append(
            table(
                ("when (UTC)", "what", "status", "title"),
                [
                    (
                        entry.occur_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"),
                        _TIMELINE_KINDS.get(entry.kind, ""),
                        entry.status,
                        entry.title,
                    )
                    for entry in view.timeline
                ],
            )
        )
    else:
        lines.append("  no history yet")
    return "\n".join(lines)


# --- agents and queues (routing service) -------------------------------------------------------

_PRESENCE_NAMES = {
    routing_pb2.AGENT_PRESENCE_OFFLINE: "offline",
    routing_pb2.AGENT_PRESENCE_AVAILABLE: "available",
    routing_pb2.AGENT_PRESENCE_BUSY: "busy",
    routing_pb2.AGENT_PRESENCE_BREAK: "break",
    routing_pb2.AGENT_PRESENCE_AFTER_CALL_WORK: "after-call work",
}


def _channel_name(number: common_pb2.Channel.ValueType) -> str:
    return common_pb2.Channel.Name(number).removeprefix("CHANNEL_").lower()


def all_agents(
    stub: routing_pb2_grpc.RoutingServiceStub, team: str = ""
) -> list[routing_pb2.Agent]:
    agents: list[routing_pb2.Agent] = []
    token = ""
    while True:
        page = stub.ListAgents(
            routing_pb2.ListAgentsRequest(page_size=500, page_token=token, team=team),
            timeout=RPC_TIMEOUT_S,
        )
        agents.extend(page.agents)
        token = page.next_page_token
        if not token:
            return agents


def all_queues(stub: routing_pb2_grpc.RoutingServiceStub) -> list[routing_pb2.RoutingQueue]:
    queues: list[routing_pb2.RoutingQueue] = []
    token = ""
    while True:
        page = stub.ListQueues(
            routing_pb2.ListQueuesRequest(page_size=500, page_token=token), timeout=RPC_TIMEOUT_S
        )
        queues.extend(page.queues)
        token = page.next_page_token
        if not token:
            return queues


def render_agents(agents: Sequence[routing_pb2.Agent]) -> str:
    if not agents:
        return "no agents"
    rows = [
        (
            agent.display_name,
            _PRESENCE_NAMES.get(agent.presence, ""),
            ", ".join(agent.teams),
            " ".join(f"{skill.name}:{skill.level}" for skill in agent.skills),
            " ".join(agent.languages),
            " ".join(f"{_channel_name(c.channel)}:{c.limit}" for c in agent.capacity),
            f"{len(agent.work)} ({agent.load:.0%})",
            agent.id,
        )
        for agent in agents
    ]
    by_presence = Counter(_PRESENCE_NAMES.get(agent.presence, "") for agent in agents)
    footer = ", ".join(f"{count} {name}" for name, count in sorted(by_presence.items()))
    body = table(
        ("agent", "presence", "teams", "skills", "languages", "capacity", "in hand", "id"), rows
    )
    count = f"{len(agents)} agent{'' if len(agents) == 1 else 's'}"
    return f"{body}\n{count}: {footer}"


def _agents(args: argparse.Namespace) -> int:
    address = service_address("routing", args.address)

    def call(channel: grpc.Channel) -> int:
        agents = all_agents(routing_pb2_grpc.RoutingServiceStub(channel), args.team or "")
        if args.json:
            print(as_json(routing_pb2.ListAgentsResponse(agents=agents)))
        else:
            print(render_agents(agents))
        return 0

    return _rpc("routing", address, call)


def render_queues(
    queues: Sequence[routing_pb2.RoutingQueue], statuses: Sequence[routing_pb2.RoutingQueueStatus]
) -> str:
    if not queues:
        return "no queues"
    rows = []
    for queue, status in zip(queues, statuses, strict=True):
        today = status.today
        level = (
            f"{today.fraction:.0%} in {today.threshold_seconds} s"
            if today.has_fraction
            else f"– in {today.threshold_seconds} s"
        )
        rows.append(
            (
                queue.name,
                str(status.waiting),
                f"{status.oldest_wait_seconds:.0f} s" if status.waiting else "",
                str(status.offered),
                str(status.assigned),
                f"{status.agents_available}/{status.agents_available + status.agents_busy}",
                level,
                f"{today.queued}/{today.answered}/{today.abandoned}",
            )
        )
    return table(
        (
            "queue",
            "waiting",
            "oldest",
            "offered",
            "in service",
            "agents free",
            "service level today",
            "queued/answered/abandoned today",
        ),
        rows,
    )


def _queues(args: argparse.Namespace) -> int:
    address = service_address("routing", args.address)

    def call(channel: grpc.Channel) -> int:
        stub = routing_pb2_grpc.RoutingServiceStub(channel)
        queues = all_queues(stub)
        statuses = [
            stub.GetQueueStatus(
                routing_pb2.GetQueueStatusRequest(queue_id=queue.id), timeout=RPC_TIMEOUT_S
            )
            for queue in queues
        ]
        if args.json:
            print(
                json.dumps(
                    [
                        {
                            "queue": json_format.MessageToDict(queue),
                            "status": json_format.MessageToDict(status),
                        }
                        for queue, status in zip(queues, statuses, strict=True)
                    ],
                    ensure_ascii=False,
                    indent=2,
                )
            )
        else:
            print(render_queues(queues, statuses))
        return 0

    return _rpc("routing", address, call)
