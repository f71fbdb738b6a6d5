"""`crm tokens create | list | revoke`: the API tokens callers of the services present.

Works on the token store of the persistence the environment configures (`CRM_PERSISTENCE`,
`CRM_DATA_DIR`, `POSTGRES_*`), the one the services share; no service needs to run. A new
token's bearer is printed once and never again: the store keeps only its digest.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

from crmcore.application.access import AccessApplication
from crmcore.config import ConfigurationError, persistence_from_env
from crmcore.domain.access import SCOPES, Bearer, Token
from crmcore.domain.errors import DomainError, InvalidValue


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "tokens",
        help="issue, list and revoke the API tokens of the services",
        description=(
            "API tokens on the token store the services share (CRM_PERSISTENCE, "
            "CRM_DATA_DIR, POSTGRES_*). Callers send 'authorization: Bearer <bearer>'."
        ),
    )
    commands = parser.add_subparsers(dest="tokens_command", required=True)

    create = commands.add_parser(
        "create",
        help="issue a token and print its bearer (shown this once)",
        description=f"Scopes: {', '.join(sorted(SCOPES))} ('admin' grants every one).",
    )
    create.add_argument("--name", required=True, help="who or what the token is for")
    create.add_argument(
        "--scope",
        dest="scopes",
        action="append",
        required=True,
        metavar="SCOPE",
        help="a scope the token holds (repeat for more)",
    )
    create.add_argument(
        "--rate", type=float, default=None, help="calls per second (default: the services')"
    )
    create.add_argument(
        "--expires-in-days", type=float, default=None, help="expiry (default: never)"
    )
    create.add_argument("--quiet", action="store_true", help="print the bearer only (for scripts)")
    create.set_defaults(handler=_create)

    listing = commands.add_parser("list", help="every token, revoked ones too (no secrets)")
    listing.set_defaults(handler=_list)

    generate = commands.add_parser(
        "generate",
        help="print a new bearer stored nowhere (for CRM_BOOTSTRAP_ADMIN_TOKEN)",
        description=(
            "Prints a fresh, well-formed bearer without touching any store: put it in "
            "CRM_BOOTSTRAP_ADMIN_TOKEN (e.g. the Kubernetes Secret crm-bootstrap-admin-token) "
            "and every service registers it as an admin token when it starts."
        ),
    )
    generate.set_defaults(handler=_generate)

    revoke = commands.add_parser("revoke", help="revoke a token: it stops working")
    revoke.add_argument("token_id", metavar="ID", help="the token's id (see `crm tokens list`)")
    revoke.set_defaults(handler=_revoke)


def _open() -> AccessApplication:
    return AccessApplication(persistence_from_env(default_kind="sqlite"))


def _create(args: argparse.Namespace) -> int:
    expires_at = None
    if args.expires_in_days is not None:
        if not args.expires_in_days > 0:
            print("crm tokens: --expires-in-days must be more than 0", file=sys.stderr)
            return 2
        expires_at = datetime.now(UTC) + timedelta(days=args.expires_in_days)
    try:
        app = _open()
    except ConfigurationError as error:
        print(f"crm tokens: {error}", file=sys.stderr)
        return 2
    try:
        issued = app.issue_token(
            args.name, args.scopes, rate_per_s=args.rate, expires_at=expires_at
        )
    except InvalidValue as error:
        print(f"crm tokens: {error}", file=sys.stderr)
        return 2
    finally:
        app.close()
    if not args.quiet:
        print(
            f"issued token {issued.token_id} ({issued.name}: {', '.join(issued.scopes)}); "
            "its bearer, shown this once:",
            file=sys.stderr,
        )
    print(issued.bearer)
    return 0


def _generate(args: argparse.Namespace) -> int:
    print(Bearer.new(uuid4()))
    return 0


def _list(args: argparse.Namespace) -> int:
    try:
        app = _open()
    except ConfigurationError as error:
        print(f"crm tokens: {error}", file=sys.stderr)
        return 2
    try:
        tokens = app.list_tokens()
    finally:
        app.close()
    now = datetime.now(UTC)
    rows = [
        ["id", "name", "scopes", "rate/s", "created", "expires", "status"],
        *(_row(token, now) for token in tokens),
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0


def _row(token: Token, now: datetime) -> list[str]:
    if token.revoked_at is not None:
        status = f"revoked {token.revoked_at:%Y-%m-%d %H:%M}"
    elif not token.live_at(now):
        status = "expired"
    else:
        status = "active"
    return [
        str(token.id),
        token.name,
        ",".join(token.scopes),
        "default" if token.rate_per_s is None else f"{token.rate_per_s:g}",
        f"{token.created_on:%Y-%m-%d %H:%M}",
        "never" if token.expires_at is None else f"{token.expires_at:%Y-%m-%d %H:%M}",
        status,
    ]


def _revoke(args: argparse.Namespace) -> int:
    try:
        app = _open()
    except ConfigurationError as error:
        print(f"crm tokens: {error}", file=sys.stderr)
        return 2
    try:
        token = app.revoke_token(args.token_id)
    except InvalidValue as error:
        print(f"crm tokens: {error}", file=sys.stderr)
        return 2
    except DomainError as error:  # not found, already revoked
        print(f"crm tokens: {error}", file=sys.stderr)
        return 1
    finally:
        app.close()
    print(f"revoked token {token.id} ({token.name}); services refuse it within CRM_AUTH_CACHE_S")
    return 0
