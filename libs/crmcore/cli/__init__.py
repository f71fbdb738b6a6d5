"""The `crm` command: one entry point, a sub-command per area (`crm events tail`, …).

Each area lives in its own module here and registers its sub-commands through `register`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

#: Modules under crmcore.cli that add sub-commands; each defines `register(subparsers)`.
AREAS: tuple[str, ...] = ("up", "demo", "directory", "events", "metrics", "audit", "tokens", "keys")

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crm", description="Event-sourced CRM core")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for area in AREAS:
        module = importlib.import_module(f"crmcore.cli.{area}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
