"""The customer service started in-process on 127.0.0.1:0, and clients talking to it.

`customer_service` runs on SQLite in the test's temporary directory without a bus (fast);
`bus_customer_service` also publishes to and consumes from a private NATS stream;
`threaded_customer_service` runs on its own event loop in another thread, for synchronous
clients (hypothesis drives those).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from crm.v1 import customer_pb2, customer_pb2_grpc
from crmcore.adapters.grpc.channels import open_blocking_channel
from crmcore.config import BusSettings, PersistenceSettings, ServiceSettings
from services.customer.bootstrap import CustomerService, start
from services.customer.config import CustomerServiceSettings
from tests.support.auth import channel_for, service_token
from tests.support.threaded import serve_in_thread


def service_settings(
    persistence: PersistenceSettings, bus: BusSettings | None = None
) -> CustomerServiceSettings:
    return CustomerServiceSettings(
        service=ServiceSettings(
            service="customer",
            address="127.0.0.1:0",
            persistence=persistence,
            default_region="JP",
            worker_threads=32,
            shutdown_grace_s=1.0,
        ),
        bus=bus,
    )


@contextlib.asynccontextmanager
async def running(settings: CustomerServiceSettings) -> AsyncIterator[CustomerService]:
    service = await start(settings)
    try:
        yield service
    finally:
        await service.stop(grace=0.5)


@contextlib.asynccontextmanager
async def client(
    service: CustomerService,
) -> AsyncIterator[customer_pb2_grpc.CustomerServiceAsyncStub]:
    async with channel_for(service) as channel:
        yield customer_pb2_grpc.CustomerServiceStub(channel)


@pytest.fixture
async def customer_service(tmp_path: Path) -> AsyncIterator[CustomerService]:
    async with running(service_settings(PersistenceSettings.sqlite(tmp_path / "data"))) as service:
        yield service


@pytest.fixture
async def stub(
    customer_service: CustomerService,
) -> AsyncIterator[customer_pb2_grpc.CustomerServiceAsyncStub]:
    async with client(customer_service) as connected:
        yield connected


@pytest.fixture
async def bus_customer_service(
    tmp_path: Path, bus_settings: BusSettings
) -> AsyncIterator[CustomerService]:
    settings = service_settings(PersistenceSettings.sqlite(tmp_path / "data"), bus_settings)
    async with running(settings) as service:
        yield service


# --- a service on a loop of its own, for synchronous clients --------------------------------


@dataclass
class ThreadedService:
    service: CustomerService
    channel: grpc.Channel

    @property
    def stub(self) -> customer_pb2_grpc.CustomerServiceStub:
        return customer_pb2_grpc.CustomerServiceStub(self.channel)


@pytest.fixture(scope="module")
def threaded_customer_service(
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


def stored_position(service: CustomerService) -> int:
    """Id of the last event stored: equal before and after a refused call."""
    return service.app.recorder.max_notification_id() or 0


def new_customer(
    name: str = "Taro Yamada",
    *contact_points: tuple[customer_pb2.ContactPointKind.ValueType, str],
    **fields: Any,
) -> customer_pb2.Customer:
    return customer_pb2.Customer(
        name=name,
        contact_points=[
            customer_pb2.ContactPoint(kind=kind, value=value) for kind, value in contact_points
        ],
        **fields,
    )
