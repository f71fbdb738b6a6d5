"""The interaction service started in-process on 127.0.0.1:0, and clients talking to it.

`interaction_service` runs on SQLite in the test's temporary directory without a bus (fast),
with an SLA scheduler whose clock the test moves (`clock`); `bus_interaction_service` also
publishes to and consumes from a private NATS stream; `threaded_interaction_service` runs on
its own event loop in another thread, for synchronous clients (hypothesis drives those).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from crm.v1 import interaction_pb2_grpc
from crmcore.adapters.grpc.channels import open_blocking_channel
from crmcore.config import BusSettings, PersistenceSettings, ServiceSettings
from crmcore.domain.sla import SlaPolicies, business_calendar, sla_policy
from services.interaction.bootstrap import InteractionService, start
from services.interaction.config import InteractionServiceSettings
from tests.support.auth import channel_for, service_token
from tests.support.threaded import serve_in_thread

#: Simple round numbers for the tests: any channel, any priority, business hours always.
TEST_POLICIES = SlaPolicies(
    calendar=business_calendar(hours="always"),
    policies=(
        sla_policy(name="test standard", first_response="1h", next_response="30m", resolution="8h"),
    ),
)


class MovableClock:
    """The SLA scheduler's "now", moved by the test."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def service_settings(
    persistence: PersistenceSettings,
    bus: BusSettings | None = None,
    *,
    policies: SlaPolicies = TEST_POLICIES,
) -> InteractionServiceSettings:
    return InteractionServiceSettings(
        service=ServiceSettings(
            service="interaction",
            address="127.0.0.1:0",
            persistence=persistence,
            worker_threads=32,
            shutdown_grace_s=1.0,
        ),
        bus=bus,
        sla_policies=policies,
        sla_tick_s=0.05,
    )


@contextlib.asynccontextmanager
async def running(
    settings: InteractionServiceSettings, clock: MovableClock | None = None
) -> AsyncIterator[InteractionService]:
    service = await start(settings, now=clock)
    try:
        yield service
    finally:
        await service.stop(grace=0.5)


@pytest.fixture
def clock() -> MovableClock:
    return MovableClock()


@pytest.fixture
async def interaction_service(
    tmp_path: Path, clock: MovableClock
) -> AsyncIterator[InteractionService]:
    settings = service_settings(PersistenceSettings.sqlite(tmp_path / "data"))
    async with running(settings, clock) as service:
        yield service


@pytest.fixture
async def stub(
    interaction_service: InteractionService,
) -> AsyncIterator[interaction_pb2_grpc.InteractionServiceAsyncStub]:
    async with channel_for(interaction_service) as channel:
        yield interaction_pb2_grpc.InteractionServiceStub(channel)


@pytest.fixture
async def bus_interaction_service(
    tmp_path: Path, bus_settings: BusSettings, clock: MovableClock
) -> AsyncIterator[InteractionService]:
    settings = service_settings(PersistenceSettings.sqlite(tmp_path / "data"), bus_settings)
    async with running(settings, clock) as service:
        yield service


# --- a service on a loop of its own, for synchronous clients --------------------------------


@dataclass
class ThreadedService:
    service: InteractionService
    channel: grpc.Channel

    @property
    def stub(self) -> interaction_pb2_grpc.InteractionServiceStub:
        return interaction_pb2_grpc.InteractionServiceStub(self.channel)


@pytest.fixture(scope="module")
def threaded_interaction_service(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ThreadedService]:
    settings = service_settings(PersistenceSettings.sqlite(tmp_path_factory.mktemp("data")))
    service, threaded = serve_in_thread(lambda: start(settings))
    channel = open_blocking_channel(service.address, token=service_token(service))
    try:
        yield ThreadedService(service=service, channel=channel)
    finally:
        channel.close()
        threaded.close()


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


def stored_position(service: InteractionService) -> int:
    """Id of the last event stored: equal before and after a refused call."""
    return service.app.recorder.max_notification_id() or 0
