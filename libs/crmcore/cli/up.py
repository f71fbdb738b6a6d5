"""`crm up`: the whole system on this machine until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from crmcore.adapters.nats_server import NatsServerError
from crmcore.cli.stack import StackError, start_stack


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "up",
        help="run NATS and the four services here until Ctrl-C",
        description=(
            "Starts NATS with JetStream (unless NATS_URL names a server) and the customer, "
            "interaction, routing and metrics services on SQLite in CRM_DATA_DIR (default "
            ".crm-data; PostgreSQL when CRM_PERSISTENCE=postgres), waits until every health "
            "check reports SERVING, prints the endpoints, and stops everything on Ctrl-C."
        ),
    )
    parser.set_defaults(handler=run_up)


def run_up(args: argparse.Namespace) -> int:
    print("starting NATS and the services …", flush=True)
    try:
        stack = start_stack()
    except (StackError, NatsServerError, OSError) as error:
        print(f"crm up: {error}", file=sys.stderr)
        return 1
    print(f"data directory  {stack.data_dir}")
    print(f"nats            {stack.nats_url}")
    for name, address in stack.endpoints.items():
        print(f"{name:<15} {address}")
    print("all services SERVING; Ctrl-C stops them", flush=True)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    exit_code = 0
    while not stop.wait(0.5):
        died = [name for name, process in stack.processes.items() if process.poll() is not None]
        if died:
            print(f"crm up: {', '.join(died)} stopped unexpectedly; stopping", file=sys.stderr)
            exit_code = 1
            break
    killed = stack.stop()
    if killed:
        print(f"had to kill: {', '.join(killed)}", file=sys.stderr)
    print("stopped", flush=True)
    return exit_code
