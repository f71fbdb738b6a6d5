"""`crm up`: the whole system on this machine until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from crmcore.adapters.nats_server import NatsServerError
from crmcore.cli.stack import Stack, StackError, start_stack
from crmcore.config import ConfigurationError


class _Interrupted(Exception):
    """SIGINT or SIGTERM arrived while the stack was starting."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "up",
        help="run NATS and the four services here until Ctrl-C",
        description=(
            "Starts NATS with JetStream (unless NATS_URL names a server) and the customer, "
            "interaction, routing and metrics services on SQLite in CRM_DATA_DIR (default "
            ".crm-data; PostgreSQL when CRM_PERSISTENCE=postgres), waits until every health "
            "check reports SERVING, prints the endpoints, and stops everything on Ctrl-C or "
            "SIGTERM. Data stays in the data directory across restarts. Prints the admin token "
            "(kept in <data dir>/admin.token, mode 0600) that the crm commands send."
        ),
    )
    parser.set_defaults(handler=run_up)


def print_endpoints(stack: Stack) -> None:
    print(f"data directory  {stack.data_dir}")
    print(f"storage         {stack.storage}")
    print(f"nats            {stack.nats_url}{'' if stack.nats else ' (given by NATS_URL)'}")
    for name, address in stack.endpoints.items():
        print(f"{name:<15} {address}")
    if stack.prometheus is not None:
        print(f"{'prometheus':<15} http://{stack.prometheus}/metrics")
    print(f"{'logs':<15} {stack.data_dir / 'logs'}")
    print(f"{'admin token':<15} {stack.admin_token}")
    print(
        f"{'':<15} (in {stack.admin_token_file}; the crm commands use it unless CRM_TOKEN is set)"
    )


def run_up(args: argparse.Namespace) -> int:
    def interrupt_start(signum: int, frame: FrameType | None) -> None:
        raise _Interrupted(signal.Signals(signum).name)

    # Until the stack runs, a signal unwinds start_stack, which stops what it started.
    previous = {sig: signal.signal(sig, interrupt_start) for sig in (signal.SIGINT, signal.SIGTERM)}
    print("starting NATS and the services …", flush=True)
    try:
        stack = start_stack()
    except _Interrupted as signalled:
        print(f"crm up: {signalled} while starting; stopped what had started", file=sys.stderr)
        return 130 if str(signalled) == "SIGINT" else 143
    except (StackError, NatsServerError, ConfigurationError, OSError) as error:
        print(f"crm up: {error}", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print_endpoints(stack)
    print("all services SERVING; Ctrl-C stops them", flush=True)
    exit_code = 0
    while not stop.wait(0.5):
        died = [name for name, process in stack.processes.items() if process.poll() is not None]
        if stack.nats is not None and not stack.nats.running:
            died.append("nats")
        if died:
            print(f"crm up: {', '.join(died)} stopped unexpectedly; stopping", file=sys.stderr)
            exit_code = 1
            break
    print("stopping …", flush=True)
    killed = stack.stop()
    if killed:
        print(f"had to kill: {', '.join(killed)}", file=sys.stderr)
    print("stopped", flush=True)
    return exit_code
