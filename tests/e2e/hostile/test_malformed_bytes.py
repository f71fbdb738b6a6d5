"""Bytes that are not protobuf, sent to every method of every service: INVALID_ARGUMENT.

A generic client sends raw bytes (no serializer) to each method, with a valid token so that
the request reaches deserialisation. grpc-python would answer INTERNAL ("Exception
deserializing request!"); `crmcore.adapters.grpc.wire` turns that into INVALID_ARGUMENT naming
the expected message type, for unary and streaming methods alike. The service stores nothing
and stays SERVING; bytes that happen to decode get a clear answer like any request; and a
caller without a token is refused before anything looks at the bytes.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.hostile.conftest import SERVICES, Target, every_method, refusal_of, target_named
from tests.e2e.hostile.test_fuzz import CLEAR_CODES, STREAM_WAIT_S

#: Never valid protobuf: a field number 0, a length running past the end, a group never
#: closed, a tag longer than a varint may be.
CERTAINLY_MALFORMED = (
    b"\x00",
    b"\x0a\xff\xff\xff\xff\x0f",
    b"\x0b",
    b"\xff" * 64,
)
#: Field 1 as a string holding invalid UTF-8 (malformed where field 1 is a string).
BAD_UTF8 = b"\x0a\x02\xc3\x28"


def malformed_for(descriptor: Descriptor) -> tuple[bytes, ...]:
    first = descriptor.fields_by_number.get(1)
    if first is not None and first.type == FieldDescriptor.TYPE_STRING and not first.is_repeated:
        return (*CERTAINLY_MALFORMED, BAD_UTF8)
    return CERTAINLY_MALFORMED


def send_raw(
    target: Target, rpc: str, payload: bytes, *, channel: grpc.Channel | None = None
) -> None:
    """Sends `payload` as the request of `rpc`, reading a streaming answer once."""
    method = target.descriptor.methods_by_name[rpc]
    path = f"/{target.descriptor.full_name}/{rpc}"
    on = channel or target.channel
    # No serializers: the payload goes on the wire as it is.
    if method.server_streaming:
        stream: Any = on.unary_stream(path, None, None)(payload, timeout=STREAM_WAIT_S)
        try:
            next(stream, None)
        finally:
            stream.cancel()
    else:
        on.unary_unary(path, None, None)(payload, timeout=30)


@pytest.mark.parametrize(("service", "rpc"), every_method())
def test_undecodable_bytes_get_invalid_argument_naming_the_message(
    request: pytest.FixtureRequest, service: str, rpc: str
) -> None:
    target = target_named(request, service)
    input_type = SERVICES[service].methods_by_name[rpc].input_type
    expected = input_type.full_name
    before = target.stored()
    for payload in malformed_for(input_type):
        with pytest.raises(grpc.RpcError) as caught:
            send_raw(target, rpc, payload)
        refusal = refusal_of(caught.value)
        assert refusal.code is grpc.StatusCode.INVALID_ARGUMENT, (payload, refusal)
        assert refusal.message == f"request is not a valid {expected}", refusal
    assert target.stored() == before
    assert target.serving()


@pytest.mark.parametrize(("service", "rpc"), every_method())
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(payload=st.binary(max_size=300))
def test_random_bytes_never_get_internal(
    request: pytest.FixtureRequest, service: str, rpc: str, payload: bytes
) -> None:
    target = target_named(request, service)
    before = target.stored()
    try:
        send_raw(target, rpc, payload)
    except grpc.RpcError as error:
        refusal = refusal_of(error)
        assert refusal.code in CLEAR_CODES | {grpc.StatusCode.DEADLINE_EXCEEDED}, refusal
        if refusal.code is not grpc.StatusCode.DEADLINE_EXCEEDED:
            assert target.stored() == before
    assert target.serving()


@pytest.mark.parametrize("service", list(SERVICES))
def test_without_a_token_the_bytes_are_not_looked_at(
    request: pytest.FixtureRequest, service: str
) -> None:
    target = target_named(request, service)
    rpc = SERVICES[service].methods[0].name
    with (
        grpc.insecure_channel(target.service.address) as anonymous,
        pytest.raises(grpc.RpcError) as caught,
    ):
        send_raw(target, rpc, CERTAINLY_MALFORMED[0], channel=anonymous)
    assert refusal_of(caught.value).code is grpc.StatusCode.UNAUTHENTICATED
