"""Tokens for tests: issue them where a service will find them, and open channels that send them.

- `issue_token(persistence, *scopes)` / `issue_admin_token(persistence)`: a token in the
  access store of those persistence settings (SQLite data dir, PostgreSQL database), before or
  while a service runs on them. In-memory settings are private to each application: use
  `service_token` for a service running in this process instead.
- `service_token(service, *scopes)`: a token in the store of a service started in-process
  (anything with `.access.app`, the services' bootstrap objects), whatever its persistence.
- `new_bearer()`: a well-formed bearer nobody issued yet, e.g. for `CRM_BOOTSTRAP_ADMIN_TOKEN`
  of a service started as a process, which then accepts it as an admin token.
- `channel_for(service, *scopes)` / `blocking_channel_for(...)`: an authenticated channel to
  an in-process service.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any, Protocol
from uuid import uuid4

import grpc

from crmcore.adapters.grpc.channels import open_blocking_channel, open_channel
from crmcore.application.access import AccessApplication, IssuedToken
from crmcore.config import PersistenceSettings
from crmcore.domain.access import ADMIN_SCOPE, Bearer

#: Tests load services hard; the default rate limit must not be what they measure.
UNLIMITED_RATE = 1_000_000.0


class HasAccess(Protocol):
    """A service started in this process (its bootstrap object)."""

    @property
    def access(self) -> Any: ...

    @property
    def address(self) -> str: ...


def issue_token(
    persistence: PersistenceSettings,
    *scopes: str,
    name: str = "test",
    rate_per_s: float | None = UNLIMITED_RATE,
) -> IssuedToken:
    """A token with `scopes` (default: admin) in the access store of `persistence`."""
    app = AccessApplication(persistence)
    try:
        return app.issue_token(name, scopes or (ADMIN_SCOPE,), rate_per_s=rate_per_s)
    finally:
        app.close()


def issue_admin_token(persistence: PersistenceSettings, *, name: str = "test-admin") -> str:
    """The bearer of a new admin token (no practical rate limit) in `persistence`."""
    return issue_token(persistence, ADMIN_SCOPE, name=name).bearer


def service_token(
    service: HasAccess,
    *scopes: str,
    name: str = "test",
    rate_per_s: float | None = UNLIMITED_RATE,
) -> str:
    """The bearer of a new token (default: admin) in the store of an in-process service."""
    app: AccessApplication = service.access.app
    return app.issue_token(name, scopes or (ADMIN_SCOPE,), rate_per_s=rate_per_s).bearer


def new_bearer() -> str:
    """A well-formed bearer no store knows yet."""
    return str(Bearer.new(uuid4()))


@contextlib.asynccontextmanager
async def channel_for(service: HasAccess, *scopes: str) -> AsyncIterator[grpc.aio.Channel]:
    """A grpc.aio channel to `service` sending a new token with `scopes` (default: admin)."""
    async with open_channel(service.address, token=service_token(service, *scopes)) as channel:
        yield channel


@contextlib.contextmanager
def blocking_channel_for(service: HasAccess, *scopes: str) -> Iterator[grpc.Channel]:
    """A synchronous channel to `service` sending a new token with `scopes` (default: admin)."""
    channel = open_blocking_channel(service.address, token=service_token(service, *scopes))
    try:
        yield channel
    finally:
        channel.close()
