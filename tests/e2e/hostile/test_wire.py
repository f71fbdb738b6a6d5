"""`MalformedRequestInterceptor` on every kind of RPC, on a small server of its own.

The services have unary and server-streaming methods only; reflection is a bidirectional
stream. A server with one method of each kind (requests are `google.protobuf.Timestamp`,
answers count what arrived) shows that undecodable bytes get INVALID_ARGUMENT naming the
type on all four, mid-stream too, and that decodable requests pass untouched.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from crm.v1 import customer_pb2
from crmcore.adapters.grpc.wire import MalformedRequestInterceptor, request_type_name

SERVICE = "hostile.v1.Echo"
GOOD = Timestamp(seconds=42).SerializeToString()
BAD = b"\x00"


async def unary(request: Timestamp, context: Any) -> bytes:
    return str(request.seconds).encode()


async def server_stream(request: Timestamp, context: Any) -> AsyncIterator[bytes]:
    yield str(request.seconds).encode()


async def client_stream(requests: AsyncIterator[Timestamp], context: Any) -> bytes:
    return str(sum([request.seconds async for request in requests])).encode()


async def bidi_stream(requests: AsyncIterator[Timestamp], context: Any) -> AsyncIterator[bytes]:
    async for request in requests:
        yield str(request.seconds).encode()


@pytest.fixture
async def address() -> AsyncIterator[str]:
    server = grpc.aio.server(interceptors=[MalformedRequestInterceptor()])
    decode = Timestamp.FromString
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Unary": grpc.unary_unary_rpc_method_handler(unary, decode),
                    "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream, decode),
                    "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream, decode),
                    "BidiStream": grpc.stream_stream_rpc_method_handler(bidi_stream, decode),
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


def requests(*payloads: bytes) -> Iterator[bytes]:
    yield from payloads


COMPLAINT = "request is not a valid request message"  # not in the descriptor pool


async def test_good_requests_pass_on_every_kind_of_rpc(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as opened:
        channel: Any = opened  # no serializers: bytes go on the wire as they are
        assert await channel.unary_unary(f"/{SERVICE}/Unary")(GOOD) == b"42"
        assert [m async for m in channel.unary_stream(f"/{SERVICE}/ServerStream")(GOOD)] == [b"42"]
        sent = requests(GOOD, GOOD)
        assert await channel.stream_unary(f"/{SERVICE}/ClientStream")(sent) == b"84"
        answers = channel.stream_stream(f"/{SERVICE}/BidiStream")(requests(GOOD, GOOD))
        assert [m async for m in answers] == [b"42", b"42"]


async def test_bad_bytes_get_invalid_argument_on_every_kind_of_rpc(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as opened:
        channel: Any = opened
        calls: dict[str, Callable[[], Awaitable[Any]]] = {
            "Unary": lambda: channel.unary_unary(f"/{SERVICE}/Unary")(BAD),
            "ServerStream": lambda: _drain(channel.unary_stream(f"/{SERVICE}/ServerStream")(BAD)),
            "ClientStream": lambda: channel.stream_unary(f"/{SERVICE}/ClientStream")(
                requests(GOOD, BAD, GOOD)
            ),
            "BidiStream": lambda: _drain(
                channel.stream_stream(f"/{SERVICE}/BidiStream")(requests(GOOD, BAD))
            ),
        }
        for name, call in calls.items():
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call()
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, name
            assert caught.value.details() == COMPLAINT, name


async def _drain(stream: Any) -> list[Any]:
    return [message async for message in stream]


def test_the_complaint_names_the_request_type_of_a_known_method() -> None:
    service = customer_pb2.DESCRIPTOR.services_by_name["CustomerService"].full_name
    assert request_type_name(f"/{service}/GetCustomer") == "crm.v1.GetCustomerRequest"
    assert request_type_name("/crm.v1.CustomerService/NoSuchMethod") == "request message"
    assert request_type_name("/no.such.Service/Method") == "request message"
