"""Every number field of every request, at each extreme, one at a time.

Hypothesis rarely combines an extreme with an otherwise plausible request; this sweep is
exhaustive instead: for each numeric or Timestamp field of each request (top level and one
message down), a request with just that field at NaN, ±infinity, the largest finite double,
the int32/int64 bounds, or a Timestamp far outside 0001–9999. Each gets OK or a clear status
(a NaN in an Erlang C forecast used to crash GetStaffing; 1e300 contacts kept a worker busy
for ever), stores nothing when refused, and leaves the service SERVING.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message_factory import GetMessageClass
from google.protobuf.timestamp_pb2 import Timestamp

from crm.v1 import metrics_pb2, metrics_pb2_grpc
from tests.e2e.hostile.conftest import SERVICES, target_named
from tests.e2e.hostile.test_fuzz import call_once, check_refusal

FLOATS = (math.nan, math.inf, -math.inf, 1.7976931348623157e308, -1e308, 5e-324)
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
TIMESTAMPS = ((-(2**62), 0), (2**62, 0), (0, -1), (0, 2**31 - 1))

_FLOAT_TYPES = {FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT}
_INT32_TYPES = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SFIXED32,
}
_INT64_TYPES = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_SFIXED64,
}


def _extremes(field: FieldDescriptor) -> tuple[Any, ...]:
    if field.message_type is not None:
        if field.message_type.full_name in (
            "google.protobuf.Timestamp",
            "google.protobuf.Duration",
        ):
            return TIMESTAMPS
        return ()
    if field.type in _FLOAT_TYPES:
        return FLOATS
    if field.type in _INT32_TYPES or field.type == FieldDescriptor.TYPE_ENUM:
        return INT32
    if field.type in _INT64_TYPES:
        return INT64
    return ()


def _paths(
    descriptor: Descriptor, prefix: tuple[FieldDescriptor, ...] = ()
) -> Iterator[tuple[FieldDescriptor, ...]]:
    for field in descriptor.fields:
        path = (*prefix, field)
        if _extremes(field):
            yield path
        elif field.message_type is not None and not prefix and not _is_map(field):
            yield from _paths(field.message_type, path)


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _request(descriptor: Descriptor, path: tuple[FieldDescriptor, ...], value: Any) -> Any:
    request = GetMessageClass(descriptor)()
    holder = request
    for field in path[:-1]:
        holder = (
            getattr(holder, field.name).add() if field.is_repeated else getattr(holder, field.name)
        )
    last = path[-1]
    if last.message_type is not None:
        seconds, nanos = value
        inner = getattr(holder, last.name).add() if last.is_repeated else getattr(holder, last.name)
        inner.seconds, inner.nanos = seconds, nanos
    elif last.is_repeated:
        getattr(holder, last.name).append(value)
    else:
        setattr(holder, last.name, value)
    return request


def every_extreme() -> list[Any]:
    cases = []
    for service, descriptor in SERVICES.items():
        for method in descriptor.methods:
            for path in _paths(method.input_type):
                name = ".".join(field.name for field in path)
                cases.append(pytest.param(service, method.name, path, id=f"{method.name}.{name}"))
    return cases


@pytest.mark.parametrize(("service", "rpc", "path"), every_extreme())
def test_each_number_at_each_extreme_gets_a_clear_status(
    request: pytest.FixtureRequest, service: str, rpc: str, path: tuple[FieldDescriptor, ...]
) -> None:
    target = target_named(request, service)
    input_type = SERVICES[service].methods_by_name[rpc].input_type
    for value in _extremes(path[-1]):
        extreme = _request(input_type, path, value)
        before = target.stored()
        try:
            call_once(target, rpc, extreme)
        except grpc.RpcError as error:
            check_refusal(target, rpc, extreme, error)
            assert target.stored() == before, f"{rpc} refused {value!r} but stored something"
    assert target.serving()


#: From 0001-01-01 to 9999-12-31: every time a Timestamp can hold.
WIDEST = metrics_pb2.Period(
    range=metrics_pb2.TimeRange(
        start_time=Timestamp(seconds=-62_135_596_800),
        end_time=Timestamp(seconds=253_402_300_799),
    )
)


@pytest.mark.parametrize(
    "interval",
    [
        metrics_pb2.Interval.ValueType(value.number)
        for value in metrics_pb2.Interval.DESCRIPTOR.values
    ],
)
def test_kpis_over_ten_thousand_years_are_refused_or_answered(
    request: pytest.FixtureRequest, interval: metrics_pb2.Interval.ValueType
) -> None:
    """One request must not ask for hundreds of millions of intervals: an answer or a clear
    refusal, within the call's deadline."""
    target = target_named(request, "metrics")
    for rpc, hostile in (
        ("GetKpis", metrics_pb2.GetKpisRequest(period=WIDEST, interval=interval)),
        ("GetStaffing", metrics_pb2.GetStaffingRequest(period=WIDEST, interval=interval)),
        ("GetContactReasons", metrics_pb2.GetContactReasonsRequest(period=WIDEST)),
        ("ExportInteractions", metrics_pb2.ExportInteractionsRequest(period=WIDEST)),
    ):
        try:
            call_once(target, rpc, hostile)
        except grpc.RpcError as error:
            check_refusal(target, rpc, hostile, error)
    assert target.serving()


@pytest.mark.parametrize(
    ("start", "deadline"),
    [
        (-62_135_596_800, 253_402_300_799),
        (253_402_300_798, 253_402_300_799),
        (-62_135_596_800, -62_135_596_799),
    ],
)
def test_kpi_targets_at_the_ends_of_time_are_refused_or_readable(
    request: pytest.FixtureRequest, start: int, deadline: int
) -> None:
    """A target stored must stay readable: a refusal now beats an INTERNAL on every read."""
    target = target_named(request, "metrics")
    stub = metrics_pb2_grpc.MetricsServiceStub(target.channel)
    create = metrics_pb2.CreateKpiTargetRequest(
        kpi_target=metrics_pb2.KpiTarget(
            kpi="service_level",
            baseline=0.5,
            target=0.9,
            start_time=Timestamp(seconds=start),
            deadline_time=Timestamp(seconds=deadline),
            window_days=2**31 - 1,
        )
    )
    try:
        made = stub.CreateKpiTarget(create, timeout=30)
    except grpc.RpcError as error:
        check_refusal(target, "CreateKpiTarget", create, error)
        return
    try:
        stub.GetKpiTarget(metrics_pb2.GetKpiTargetRequest(id=made.id), timeout=30)
        stub.ListKpiTargets(metrics_pb2.ListKpiTargetsRequest(page_size=1000), timeout=30)
    finally:
        stub.DeleteKpiTarget(metrics_pb2.DeleteKpiTargetRequest(id=made.id), timeout=30)
