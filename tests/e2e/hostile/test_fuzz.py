"""Arbitrary requests into every RPC of every service: never a crash, never a partial write.

Hypothesis builds each request from its protobuf descriptor (`strategies.messages`): any text
(NULs, right-to-left overrides, far past every length limit), integers at their extremes,
enum numbers that do not exist, NaN and infinite doubles, long repeated fields, Timestamps
out of range, plus plausible values and the ids of existing records. Each goes through a
real gRPC client on loopback to the real service on SQLite. Whatever it sends:

- the answer is OK or a clear status, never INTERNAL or UNKNOWN (a server streaming call may
  also run into the client's short deadline: it was working);
- an INVALID_ARGUMENT names, in its `google.rpc.BadRequest`, a field (or oneof) of the
  request;
- a refused call stored nothing (notification log, or the metrics service's targets);
- the service answers its health check SERVING afterwards.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.hostile.conftest import SERVICES, Target, every_method, refusal_of, target_named
from tests.e2e.hostile.strategies import messages

#: What a refused request may be answered with: each says what is wrong with it.
CLEAR_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.OUT_OF_RANGE,
}
#: How long a server-streaming call is given to answer or refuse before the client cancels.
STREAM_WAIT_S = 0.3


def call_once(target: Target, rpc: str, request: Any) -> None:
    """Makes the call; a streaming one is read once (or refused), then cancelled."""
    method = target.descriptor.methods_by_name[rpc]
    call = target.method(rpc)
    if not method.server_streaming:
        call(request, timeout=30)
        return
    stream = call(request, timeout=STREAM_WAIT_S)
    try:
        next(stream, None)
    except grpc.RpcError as error:
        if error.code() is not grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
    finally:
        stream.cancel()


def check_refusal(target: Target, rpc: str, request: Any, error: grpc.RpcError) -> None:
    refusal = refusal_of(error)
    assert refusal.code in CLEAR_CODES, f"{target.name}.{rpc}: {refusal}"
    if refusal.code is grpc.StatusCode.INVALID_ARGUMENT:
        assert refusal.fields, f"{target.name}.{rpc}: no field named: {refusal}"
        # a field of the request, or a oneof of them ("key: set one of phone, email…")
        request_fields = {field.name for field in request.DESCRIPTOR.fields}
        request_fields |= set(request.DESCRIPTOR.oneofs_by_name)
        for field in refusal.fields:
            top = field.split(".")[0].split("[")[0]
            assert top in request_fields, f"{target.name}.{rpc}: {field!r} is no field: {refusal}"


@pytest.mark.parametrize(("service", "rpc"), every_method())
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(data=st.data())
def test_arbitrary_requests_get_a_clear_status_and_refusals_store_nothing(
    request: pytest.FixtureRequest, service: str, rpc: str, data: st.DataObject
) -> None:
    target = target_named(request, service)
    input_type = SERVICES[service].methods_by_name[rpc].input_type
    hostile = data.draw(messages(input_type, target.known), label="request")
    before = target.stored()
    try:
        call_once(target, rpc, hostile)
    except grpc.RpcError as error:
        check_refusal(target, rpc, hostile, error)
        assert target.stored() == before, f"{service}.{rpc} refused but stored something"
    assert target.serving()
