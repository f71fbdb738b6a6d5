"""Wrapping method handlers once per method (crmcore.adapters.grpc.handlers)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from crmcore.adapters.grpc.handlers import WrappingInterceptor, rebuilt_by_response


async def _echo(request: Any, context: Any) -> Any:
    return request


class _CountingInterceptor(WrappingInterceptor):
    def __init__(self) -> None:
        super().__init__()
        self.wraps = 0

    def wrap(self, handler: Any, method: str) -> Any:
        self.wraps += 1
        return rebuilt_by_response(handler, lambda behaviour: behaviour, lambda b: b)


def _details(method: str) -> grpc.HandlerCallDetails:
    class Details(grpc.HandlerCallDetails):
        def __init__(self) -> None:
            self.method = method
            self.invocation_metadata = ()

    return Details()


def _intercept(interceptor: WrappingInterceptor, handler: Any, method: str) -> Any:
    async def continuation(_: grpc.HandlerCallDetails) -> Any:
        return handler

    return asyncio.run(interceptor.intercept_service(continuation, _details(method)))


def test_a_method_is_wrapped_once_and_the_wrapper_reused() -> None:
    interceptor = _CountingInterceptor()
    handler = grpc.unary_unary_rpc_method_handler(_echo)
    first = _intercept(interceptor, handler, "/crm.v1.S/A")
    again = _intercept(interceptor, handler, "/crm.v1.S/A")
    assert first is again
    assert first is not handler
    assert interceptor.wraps == 1


def test_a_changed_handler_is_wrapped_again() -> None:
    interceptor = _CountingInterceptor()
    first = _intercept(interceptor, grpc.unary_unary_rpc_method_handler(_echo), "/crm.v1.S/A")
    other = _intercept(interceptor, grpc.unary_stream_rpc_method_handler(_echo), "/crm.v1.S/A")
    assert other is not first
    assert other.unary_stream is not None
    assert interceptor.wraps == 2


def test_an_unknown_method_passes_through() -> None:
    interceptor = _CountingInterceptor()
    assert _intercept(interceptor, None, "/crm.v1.S/Missing") is None
    assert interceptor.wraps == 0
