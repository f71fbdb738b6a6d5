"""Requests that are not valid protobuf get INVALID_ARGUMENT, not INTERNAL.

grpc-python deserialises a request before any handler or interceptor code runs, and answers a
decode failure with INTERNAL ("Exception deserializing request!"): a client's malformed bytes
would look like a server bug. `MalformedRequestInterceptor` wraps each method's deserialiser
so that a decode failure yields a marker instead of raising, and wraps the method so that the
marker is answered with INVALID_ARGUMENT ("request is not a valid crm.v1.GetCustomerRequest").
The check runs where the interceptor sits in the server's list: after authentication when it
comes later, so an unauthenticated caller learns nothing about the request format.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import descriptor_pool

from crmcore.adapters.grpc.handlers import WrappingInterceptor, rebuilt

if TYPE_CHECKING:  # the stubs make it generic; at run time it is not subscriptable
    Handler = grpc.RpcMethodHandler[Any, Any]
    Context = grpc.aio.ServicerContext[Any, Any]


class MalformedRequest:
    """Stands for request bytes that could not be decoded into `message_type`."""

    __slots__ = ("message_type",)

    def __init__(self, message_type: str) -> None:
        self.message_type = message_type

    @property
    def complaint(self) -> str:
        return f"request is not a valid {self.message_type}"


def request_type_name(method: str) -> str:
    """The full name of the request message of `/package.Service/Method` (or "request message"
    when the method is not in the default descriptor pool)."""
    service, _, name = method.lstrip("/").rpartition("/")
    try:
        found = descriptor_pool.Default().FindServiceByName(service).FindMethodByName(name)
    except (KeyError, AttributeError):
        return "request message"
    if found is None:
        return "request message"
    return str(found.input_type.full_name)


def _tolerant(
    deserializer: Callable[[bytes], Any] | None, message_type: str
) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # DecodeError, bad UTF-8, nesting too deep: all the client's input
            return MalformedRequest(message_type)

    return deserialize


async def _refuse(context: Context, request: MalformedRequest) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.complaint)


def _checked_unary(behaviour: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    async def call(request: Any, context: Context) -> Any:
        if isinstance(request, MalformedRequest):
            await _refuse(context, request)
        return await behaviour(request, context)

    return call


def _checked_server_stream(behaviour: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
    async def call(request: Any, context: Context) -> AsyncIterator[Any]:
        if isinstance(request, MalformedRequest):
            await _refuse(context, request)
        async for response in behaviour(request, context):
            yield response

    return call


def _checked_requests(requests: AsyncIterable[Any], context: Context) -> AsyncIterator[Any]:
    async def each() -> AsyncIterator[Any]:
        async for request in requests:
            if isinstance(request, MalformedRequest):
                await _refuse(context, request)
            yield request

    return each()


def _checked_client_stream(behaviour: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    async def call(requests: AsyncIterable[Any], context: Context) -> Any:
        return await behaviour(_checked_requests(requests, context), context)

    return call


def _checked_bidi_stream(behaviour: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
    async def call(requests: AsyncIterable[Any], context: Context) -> AsyncIterator[Any]:
        async for response in behaviour(_checked_requests(requests, context), context):
            yield response

    return call


class MalformedRequestInterceptor(WrappingInterceptor):
    """Answers undecodable request bytes with INVALID_ARGUMENT, for every RPC kind."""

    def wrap(self, handler: Handler, method: str) -> Handler:
        return rebuilt(
            handler,
            unary_unary=_checked_unary,
            unary_stream=_checked_server_stream,
            stream_unary=_checked_client_stream,
            stream_stream=_checked_bidi_stream,
            request_deserializer=_tolerant(handler.request_deserializer, request_type_name(method)),
        )
