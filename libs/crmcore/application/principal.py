"""Who is acting: the authenticated caller of the command being handled.

The gRPC access interceptor sets `current_principal` for the duration of each call; the
applications read it when they store events, so every stored event can say who caused it (the
audit trail). In-process library use runs with no principal unless the caller sets one with
`acting_as`; its events then name nobody (actor ""). What a service does on its own — its bus
consumers and schedulers — runs as a system principal (`system_principal`, actor
`system:<name>`), wrapped with `running_as` where the service wires it.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import ParamSpec, TypeVar

import msgspec

P = ParamSpec("P")
T = TypeVar("T")

#: `Principal.kind` of a caller that presented a token.
TOKEN = "token"
#: `Principal.kind` of the service's own background work (bus consumers, schedulers).
SYSTEM = "system"


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """An authenticated caller: the token it presented and what that token may do.

    `kind` is `token` for callers, `system` for work a service does on its own (see
    `system_principal`)."""

    token_id: str
    name: str
    scopes: frozenset[str] = frozenset()
    kind: str = TOKEN

    @property
    def actor(self) -> str:
        """How the audit trail names this caller: `token:<name>` (`system:<name>`)."""
        return f"{self.kind}:{self.name}"


def system_principal(name: str) -> Principal:
    """The principal of a service's own background work, e.g. `system:sla-scheduler`."""
    return Principal(token_id="", name=name, kind=SYSTEM)


#: The interaction service's SLA scheduler recording at-risk and breached events.
SLA_SCHEDULER_PRINCIPAL = system_principal("sla-scheduler")
#: The interaction service's consumer of `crm.routing.>` recording routing decisions.
ROUTING_CONSUMER_PRINCIPAL = system_principal("routing-consumer")
#: The routing service deciding on its own: interaction events from the bus, its clock.
ROUTING_ENGINE_PRINCIPAL = system_principal("routing-engine")


current_principal: ContextVar[Principal | None] = ContextVar("current_principal", default=None)


@contextlib.contextmanager
def acting_as(principal: Principal | None) -> Iterator[None]:
    """Runs the block with `principal` as the current caller (restored afterwards)."""
    token = current_principal.set(principal)
    try:
        yield
    finally:
        current_principal.reset(token)


def running_as(principal: Principal | None, function: Callable[P, T]) -> Callable[P, T]:
    """`function` wrapped to run with `principal` as the current caller, in whatever thread
    calls it (e.g. `await calls(running_as(SLA_SCHEDULER_PRINCIPAL, scheduler.run_once))`)."""

    @functools.wraps(function)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        with acting_as(principal):
            return function(*args, **kwargs)

    return run
