"""The routing service started in-process on 127.0.0.1:0, and clients talking to it.

`routing_service` runs on SQLite in the test's temporary directory without a bus, on a clock
the test moves (`MovableClock`); `bus_routing_service` also consumes `crm.interaction.>` from
and publishes `crm.routing.*` to a private NATS stream.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from crm.v1 import routing_pb2_grpc
from crmcore.config import BusSettings, PersistenceSettings, ServiceSettings
from services.routing.bootstrap import RoutingService, start
from services.routing.config import RoutingServiceSettings
from tests.support.auth import channel_for

T0 = datetime(2025, 4, 1, 9, 0, tzinfo=UTC)


class MovableClock:
    """The service's clock: still unless the test moves it."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def service_settings(
    persistence: PersistenceSettings, bus: BusSettings | None = None
) -> RoutingServiceSettings:
    return RoutingServiceSettings(
        service=ServiceSettings(
            service="routing",
            address="127.0.0.1:0",
            persistence=persistence,
            worker_threads=16,
            shutdown_grace_s=1.0,
        ),
        bus=bus,
    )


@contextlib.asynccontextmanager
async def running(
    settings: RoutingServiceSettings, clock: MovableClock
) -> AsyncIterator[RoutingService]:
    service = await start(settings, clock=clock)
    try:
        yield service
    finally:
        await service.stop(grace=0.5)


@pytest.fixture
def clock() -> MovableClock:
    return MovableClock()


@pytest.fixture
async def routing_service(tmp_path: Path, clock: MovableClock) -> AsyncIterator[RoutingService]:
    settings = service_settings(PersistenceSettings.sqlite(tmp_path / "data"))
    async with running(settings, clock) as service:
        yield service


@pytest.fixture
async def stub(
    routing_service: RoutingService,
) -> AsyncIterator[routing_pb2_grpc.RoutingServiceAsyncStub]:
    async with channel_for(routing_service) as channel:
        yield routing_pb2_grpc.RoutingServiceStub(channel)


@pytest.fixture
async def bus_routing_service(
    tmp_path: Path, bus_settings: BusSettings, clock: MovableClock
) -> AsyncIterator[RoutingService]:
    settings = service_settings(PersistenceSettings.sqlite(tmp_path / "data"), bus_settings)
    async with running(settings, clock) as service:
        yield service


# --- reading refusals -----------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    code: grpc.StatusCode
    message: str
    fields: tuple[str, ...]


def refusal_of(error: grpc.RpcError) -> Refusal:
    """Status code, message and the fields named by google.rpc.BadRequest details."""
    call: Any = error
    fields: list[str] = []
    for key, value in call.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                bad_request = error_details_pb2.BadRequest()
                if detail.Unpack(bad_request):
                    fields += [violation.field for violation in bad_request.field_violations]
    return Refusal(code=call.code(), message=call.details() or "", fields=tuple(fields))


async def refused(call: Awaitable[object]) -> Refusal:
    """The refusal an RPC ends with (fails the test when it succeeds)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return refusal_of(caught.value)


def stored_position(service: RoutingService) -> int:
    """Id of the last event stored: equal before and after a refused call."""
    return service.app.recorder.max_notification_id() or 0
