"""Authentication and authorisation of every RPC: the access interceptor and the scope table.

Each call of a `crm.v1` service must carry `authorization: Bearer crm_<token id>_<secret>`
metadata naming a live token of the access store (`crmcore.application.access`), and that
token must hold the scope the method needs (`METHOD_SCOPES`; `admin` grants all of them). The
standard health service and reflection stay open, so probes and grpcurl work without a token.

- no bearer, a malformed one, an unknown, revoked or expired token: UNAUTHENTICATED;
- a token without the needed scope, or a method missing from `METHOD_SCOPES`: PERMISSION_DENIED
  (deny by default: a new RPC is refused until it is given a scope, and a test checks every
  RPC has one);
- more calls than the token's rate (its own `rate_per_s`, else the configured default; bursts
  of twice the rate): RESOURCE_EXHAUSTED.

A successful check is remembered for `AccessSettings.cache_s` seconds, so a call costs a
digest and a dictionary lookup rather than a store read; a revocation in another process takes
effect within that time, one in this process at once. A refused bearer is remembered as long
(by a digest of the whole bearer, so a wrong secret sent with a real token's id never locks out
that token's holder): a client retrying a revoked or mistyped token, or a flood repeating a
bogus one, costs no store reads; a bearer registered meanwhile in another process works once
that time is over. While the handler runs,
`crmcore.application.principal.current_principal` is the caller (the audit trail reads it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

import grpc

from crmcore.adapters.grpc.errors import status_for
from crmcore.adapters.grpc.handlers import rebuilt_by_response
from crmcore.application.access import AccessApplication, prepare_access, principal_of
from crmcore.application.principal import Principal, acting_as, current_principal
from crmcore.config import AccessSettings, ServiceSettings
from crmcore.domain.access import ADMIN_SCOPE, Token, Unauthenticated, parse_bearer

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # the stubs make it generic; at run time it is not subscriptable
    Handler = grpc.RpcMethodHandler[Any, Any]

AUTHORIZATION = "authorization"
BEARER_SCHEME = "bearer "

#: Services every caller reaches without a token: health checks and reflection.
OPEN_SERVICES: tuple[str, ...] = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


def _methods(service: str, scopes: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    return {
        f"/crm.v1.{service}/{method}": scope
        for scope, methods in scopes.items()
        for method in methods
    }


#: The scope each RPC needs. Every method of every crm.v1 service is here, and nothing else (a
#: test checks both): a method missing is refused to every token, `admin` included.
METHOD_SCOPES: dict[str, str] = {
    **_methods(
        "CustomerService",
        {
            "customers:read": (
                "GetCustomer",
                "ListCustomers",
                "LookupCustomer",
                "GetCustomerView",
            ),
            "customers:write": (
                "CreateCustomer",
                "UpdateCustomer",
                "AddContactPoint",
                "RemoveContactPoint",
                "MergeCustomers",
                "SetConsent",
                "ChangeLifecycle",
                "ChangeSubscription",
            ),
            "customers:erase": ("EraseCustomer",),
            "audit:read": ("ListCustomerAudit",),
        },
    ),
    **_methods(
        "InteractionService",
        {
            "interactions:read": (
                "GetInteraction",
                "ListInteractions",
                "StreamInteractionEvents",
                "GetCase",
                "ListCases",
                "GetCaseSla",
                "GetInteractionSla",
                "GetSurveyResponse",
                "GetFeedback",
            ),
            "interactions:write": (
                "OpenInteraction",
                "IdentifyCustomer",
                "QueueInteraction",
                "OfferInteraction",
                "DeclineOffer",
                "AnswerInteraction",
                "HoldInteraction",
                "ResumeInteraction",
                "AddMessage",
                "TransferInteraction",
                "EscalateInteraction",
                "StartWrapUp",
                "ResolveInteraction",
                "ReopenInteraction",
                "CloseInteraction",
                "AbandonInteraction",
                "ContainInBot",
                "HandOffToHuman",
                "OpenCase",
                "LinkInteractionToCase",
                "ChangeCaseStatus",
                "SolveCase",
                "ReopenCase",
                "CloseCase",
                "RecordSurveyResponse",
                "CaptureFeedback",
                "ClassifyFeedback",
            ),
        },
    ),
    **_methods(
        "RoutingService",
        {
            "routing:read": (
                "GetAgent",
                "ListAgents",
                "GetQueue",
                "ListQueues",
                "GetQueueStatus",
                "GetTask",
                "ExplainRouting",
            ),
            # What an agent's desktop does: presence, offers, finishing work.
            "routing:agent": (
                "SetPresence",
                "AcceptOffer",
                "RejectOffer",
                "StreamOffers",
                "CompleteTask",
            ),
            # Configuring routing: who the agents are, which queues exist, work fed in.
            "routing:admin": (
                "RegisterAgent",
                "UpdateAgent",
                "CreateQueue",
                "UpdateQueue",
                "SubmitTask",
            ),
        },
    ),
    **_methods(
        "MetricsService",
        {
            "metrics:read": (
                "GetKpis",
                "StreamKpis",
                "GetLiveState",
                "GetStaffing",
                "GetContactReasons",
                "ExportInteractions",
                "GetKpiTarget",
                "ListKpiTargets",
            ),
            "metrics:write": ("CreateKpiTarget", "DeleteKpiTarget"),
        },
    ),
}


#: Refused bearers remembered at most (memory stays bounded under a flood of bogus ones).
MAX_REMEMBERED_REFUSALS = 10_000


def bearer_of(metadata: Any) -> str:
    """The bearer in `authorization: Bearer <bearer>` metadata, or Unauthenticated."""
    for key, value in metadata or ():
        if key == AUTHORIZATION:
            text = value if isinstance(value, str) else bytes(value).decode("latin-1")
            if text[: len(BEARER_SCHEME)].lower() != BEARER_SCHEME:
                raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
            return text[len(BEARER_SCHEME) :].strip()
    raise Unauthenticated(
        "no access token: send 'authorization: Bearer <token>' metadata (crm tokens create)"
    )


class _Checked:
    """A token whose bearer was verified against the store, remembered until `until`."""

    __slots__ = ("principal", "rate_per_s", "token", "until")

    def __init__(self, token: Token, rate_per_s: float, until: float) -> None:
        self.token = token
        self.principal = principal_of(token)
        self.rate_per_s = rate_per_s
        self.until = until


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class RateLimiter:
    """A token bucket per API token: `rate` calls per second on average, bursts of 2×rate.

    Per process: each service replica counts its own calls. Runs on the event loop only."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[UUID, _Bucket] = {}

    def allow(self, key: UUID, rate: float) -> bool:
        now = self._clock()
        burst = max(1.0, 2 * rate)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(burst, now)
        else:
            bucket.tokens = min(burst, bucket.tokens + (now - bucket.stamp) * rate)
            bucket.stamp = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True


class Refusal(Exception):
    """Why a call is refused before its handler runs: a status code and a message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class AccessInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Checks every call's token, scope and rate before its handler runs (see module doc)."""

    def __init__(
        self,
        app: AccessApplication,
        settings: AccessSettings,
        *,
        method_scopes: Mapping[str, str] = METHOD_SCOPES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._app = app
        self._settings = settings
        self._method_scopes = dict(method_scopes)
        self._clock = clock
        self._checked: dict[UUID, _Checked] = {}
        #: Digests of refused bearers → when to ask the store again.
        self._refused: dict[bytes, float] = {}
        self._limiter = RateLimiter(clock)
        # Issued or revoked here: forget every remembered check at once.
        app.add_record_listener(self.forget)

    def forget(self) -> None:
        """Drops every remembered authentication: the next call of each token reads the store."""
        self._checked = {}
        self._refused = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        method: str = handler_call_details.method
        if method.startswith(OPEN_SERVICES):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:  # no such method: UNIMPLEMENTED, as without the interceptor
            return handler
        try:
            principal = await self._admit(method, handler_call_details.invocation_metadata)
        except Refusal as refusal:
            return _refusing(handler, refusal.code, refusal.message)
        except Unauthenticated as error:
            return _refusing(handler, grpc.StatusCode.UNAUTHENTICATED, str(error))
        except Exception as error:  # the store failed: UNAVAILABLE, as for any RPC
            status = status_for(error)
            if status.code is grpc.StatusCode.INTERNAL:
                log.exception("checking an access token failed", exc_info=error)
            return _refusing(handler, status.code, status.details)
        return _acting(handler, principal)

    async def _admit(self, method: str, metadata: Any) -> Principal:
        bearer = parse_bearer(bearer_of(metadata))
        now = self._clock()
        checked = self._checked.get(bearer.token_id)
        if checked is None or checked.until <= now:
            checked = await self._check_unless_refused(str(bearer), now)
        elif not (checked.token.proves(bearer.secret) and checked.token.live_at(datetime.now(UTC))):
            raise Unauthenticated("unknown, revoked or expired token")
        principal = checked.principal
        if not self._limiter.allow(bearer.token_id, checked.rate_per_s):
            raise Refusal(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"rate limit of token {principal.name!r} exceeded "
                f"({checked.rate_per_s:g} calls/s): slow down and retry",
            )
        scope = self._method_scopes.get(method)
        if scope is None:
            raise Refusal(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method} is not open to any scope (deny by default)",
            )
        if scope not in principal.scopes and ADMIN_SCOPE not in principal.scopes:
            raise Refusal(
                grpc.StatusCode.PERMISSION_DENIED,
                f"token {principal.name!r} lacks scope {scope!r}, which {method} needs",
            )
        return principal

    async def _check_unless_refused(self, bearer: str, now: float) -> _Checked:
        digest = hashlib.sha256(bearer.encode()).digest()
        again_at = self._refused.get(digest)
        if again_at is not None and now < again_at:
            raise Unauthenticated("unknown, revoked or expired token")
        try:
            return await self._check(bearer, now)
        except Unauthenticated:
            if self._settings.cache_s > 0:
                if len(self._refused) >= MAX_REMEMBERED_REFUSALS:
                    self._refused = {}  # a flood of distinct bearers: start again
                self._refused[digest] = now + self._settings.cache_s
            raise

    async def _check(self, bearer: str, now: float) -> _Checked:
        loop = asyncio.get_running_loop()
        # A store read blocks: off the event loop. Unauthenticated propagates uncached.
        token = await loop.run_in_executor(None, self._app.verify, bearer)
        rate = token.rate_per_s or self._settings.default_rate_per_s
        checked = _Checked(token, rate, now + self._settings.cache_s)
        if self._settings.cache_s > 0:
            self._checked[token.id] = checked
        return checked


# --- handlers: refusing, or running as the caller ----------------------------------------------


def _refusing(handler: Handler, code: grpc.StatusCode, message: str) -> Handler:
    """A handler of the same kind that ends the call with `code` and never runs the servicer."""

    def unary(_: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
        async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await context.abort(code, message)

        return refuse

    def stream(_: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
        async def refuse(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            await context.abort(code, message)
            yield  # pragma: no cover - makes this an async generator; abort raises first

        return refuse

    return rebuilt_by_response(handler, unary, stream)


def _acting(handler: Handler, principal: Principal) -> Handler:
    """`handler` running with `principal` as the current caller."""

    def unary(behaviour: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            with acting_as(principal):
                return await behaviour(request, context)

        return call

    def stream(behaviour: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
        async def call(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            # Not `acting_as`: a generator may be closed from another context, where resetting
            # the variable fails; each RPC runs in a task (a context) of its own anyway.
            marker = current_principal.set(principal)
            try:
                async for response in behaviour(request, context):
                    yield response
            finally:
                with contextlib.suppress(ValueError):
                    current_principal.reset(marker)

        return call

    return rebuilt_by_response(handler, unary, stream)


# --- a service's access: its token store and its interceptor -----------------------------------


class ServiceAccess:
    """What a service needs to check its callers: the shared token store (prepared: bootstrap
    token registered, or an admin token generated for an empty store) and the interceptor."""

    def __init__(self, app: AccessApplication, settings: AccessSettings) -> None:
        self.app = app
        self.interceptor = AccessInterceptor(app, settings)

    def close(self) -> None:
        self.app.close()


def open_service_access(settings: ServiceSettings) -> ServiceAccess:
    """Opens the token store of `settings.persistence` and prepares it (blocking: run it off
    the event loop). The generated admin token, if any, goes to `<data dir>/admin.token`
    (not for in-memory storage, which has no directory)."""
    app = AccessApplication(settings.persistence)
    try:
        data_dir = None if settings.persistence.kind == "memory" else settings.persistence.data_dir
        prepare_access(app, settings.access, data_dir)
    except BaseException:
        app.close()
        raise
    return ServiceAccess(app, settings.access)
