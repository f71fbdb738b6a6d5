"""Wrapping gRPC method handlers, for the server interceptors.

A grpc.aio interceptor changes a call by returning the method's handler with its behaviour
wrapped; the handler kind (unary or streaming request and response) decides which factory
rebuilds it. `rebuilt` does that once for every interceptor. `WrappingInterceptor` is the base
of interceptors whose wrapping depends on the method alone (error mapping, deadlines, request
decoding): it wraps each method's handler once and reuses it, so a call costs no rebuild.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:  # the stubs make it generic; at run time it is not subscriptable
    Handler = grpc.RpcMethodHandler[Any, Any]

Wrap = Callable[[Callable[..., Any]], Callable[..., Any]]


def rebuilt(
    handler: Handler,
    *,
    unary_unary: Wrap,
    unary_stream: Wrap,
    stream_unary: Wrap,
    stream_stream: Wrap,
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> Handler:
    """`handler` with its behaviour wrapped by the wrapper of its kind (and, when given, another
    request deserialiser)."""
    options = {
        "request_deserializer": request_deserializer or handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary_unary(handler.unary_unary), **options)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(unary_stream(handler.unary_stream), **options)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(stream_unary(handler.stream_unary), **options)
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            stream_stream(handler.stream_stream), **options
        )
    return handler


def rebuilt_by_response(handler: Handler, unary: Wrap, stream: Wrap) -> Handler:
    """`handler` wrapped by `unary` when it returns one response, by `stream` when it streams."""
    return rebuilt(
        handler, unary_unary=unary, unary_stream=stream, stream_unary=unary, stream_stream=stream
    )


class WrappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """An interceptor that wraps each method's handler the same way on every call (`wrap`):
    the wrapped handler is kept per method and rebuilt only when the handler it wraps changes."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    def wrap(self, handler: Handler, method: str) -> Handler:
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self.wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped
