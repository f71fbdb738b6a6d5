"""The one place that maps domain errors to gRPC status codes (ARCHITECTURE.md, "gRPC conventions").

Servicers raise domain errors (or let the application raise them); `DomainErrorInterceptor`
turns each into its status code, with `google.rpc` details a client can read field by field
(`BadRequest` naming the offending field for INVALID_ARGUMENT).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from eventsourcing.persistence import (
    InterfaceError,
    MapperDeserialisationError,
    OperationalError,
)
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from crmcore.adapters.grpc.calls import DeadlineExpired
from crmcore.adapters.grpc.handlers import WrappingInterceptor, rebuilt_by_response
from crmcore.domain.errors import (
    AlreadyExists,
    ConcurrencyConflict,
    DomainError,
    InvalidValue,
    NotFound,
    RuleViolation,
    Unavailable,
)

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # the stubs make it generic; at run time it is not subscriptable
    Handler = grpc.RpcMethodHandler[Any, Any]


def _psycopg_connection_errors() -> tuple[type[Exception], ...]:
    """psycopg's errors of a lost or unreachable server (pool timeouts included), when the
    PostgreSQL extra is installed."""
    try:
        import psycopg
    except ImportError:  # without the PostgreSQL extra there is no server to lose
        return ()
    return (psycopg.OperationalError, psycopg.InterfaceError)


_CODES: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (InvalidValue, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (RuleViolation, grpc.StatusCode.FAILED_PRECONDITION),
    (ConcurrencyConflict, grpc.StatusCode.ABORTED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    # The event store's connection failures: the database is down or unreachable.
    (OperationalError, grpc.StatusCode.UNAVAILABLE),
    (InterfaceError, grpc.StatusCode.UNAVAILABLE),
    # The same failures met by the read models and the key vault, which use psycopg directly.
    *((kind, grpc.StatusCode.UNAVAILABLE) for kind in _psycopg_connection_errors()),
    # The client's deadline passed before the store call started: nothing was done.
    (DeadlineExpired, grpc.StatusCode.DEADLINE_EXCEEDED),
    # A stored event that cannot be decoded (corrupt bytes, a seal its key does not open):
    # the data is damaged, which retrying cannot mend. Logged with its traceback.
    (MapperDeserialisationError, grpc.StatusCode.DATA_LOSS),
)


#: Messages echo offending input; clipped so a status always fits the 8 KiB metadata limit
#: (grpc-message is percent-encoded: an emoji costs 12 bytes there).
MAX_MESSAGE_LENGTH = 200


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE_LENGTH else text[: MAX_MESSAGE_LENGTH - 1] + "…"


def status_for(error: Exception) -> grpc.Status:
    """The rich gRPC status a client receives for `error`."""
    code = next(
        (code for kind, code in _CODES if isinstance(error, kind)), grpc.StatusCode.INTERNAL
    )
    message = _clip(str(error)) if code is not grpc.StatusCode.INTERNAL else "internal error"
    if code is grpc.StatusCode.UNAVAILABLE and not isinstance(error, DomainError):
        message = "storage unavailable, retry later"
    details: list[any_pb2.Any] = []
    if isinstance(error, InvalidValue):
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=_clip(error.field), description=_clip(error.reason)
                )
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad_request)
        details.append(packed)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=details)
    return rpc_status.to_status(status)


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: Exception) -> None:
    status = status_for(error)
    if status.code is grpc.StatusCode.INTERNAL:
        log.exception("unexpected error in RPC", exc_info=error)
    elif status.code is grpc.StatusCode.DATA_LOSS:
        log.error("stored data cannot be read: %s", error, exc_info=error)
    # grpc-stubs lacks the aio abort_with_status, which grpc.aio has had since 1.40.
    await context.abort_with_status(status)  # type: ignore[attr-defined]


class DomainErrorInterceptor(WrappingInterceptor):
    """Turns exceptions raised by servicers into gRPC statuses, for every RPC kind."""

    def wrap(self, handler: Handler, method: str) -> Handler:
        return rebuilt_by_response(handler, _wrap_unary, _wrap_stream)


def _wrap_unary(behaviour: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await behaviour(request, context)
        except Exception as error:
            if _is_abort(error):
                raise
            await _abort(context, error)

    return call


def _wrap_stream(behaviour: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        try:
            async for response in behaviour(request, context):
                yield response
        except Exception as error:
            if _is_abort(error):
                raise
            await _abort(context, error)

    return call


def _is_abort(error: Exception) -> bool:
    # context.abort() raises this to unwind the handler: it is already a status, not an error.
    return isinstance(error, grpc.aio.AbortError)
