"""The metrics service started in-process on 127.0.0.1:0 (SQLite in the test's directory, a
private NATS stream, Prometheus on a free port), and what the other services would publish."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from eventsourcing.application import Application
from google.rpc import error_details_pb2, status_pb2

from crm.v1 import metrics_pb2_grpc
from crmcore.adapters.relay import OutboxRelay
from crmcore.application.metrics import stream_last_sequence
from crmcore.config import BusSettings, MetricsSettings, PersistenceSettings, ServiceSettings
from services.metrics.bootstrap import MetricsService, start
from services.metrics.config import MetricsServiceSettings
from tests.integration.metrics.history import wait_for_position
from tests.support.auth import channel_for

pytestmark = pytest.mark.nats


def service_settings(data_dir: Path, bus: BusSettings | None) -> MetricsServiceSettings:
    return MetricsServiceSettings(
        service=ServiceSettings(
            service="metrics",
            address="127.0.0.1:0",
            persistence=PersistenceSettings.sqlite(data_dir),
            worker_threads=8,
            shutdown_grace_s=1.0,
        ),
        bus=bus,
        metrics=MetricsSettings(prometheus_address="127.0.0.1:0", batch=50),
    )


@contextlib.asynccontextmanager
async def running(settings: MetricsServiceSettings) -> AsyncIterator[MetricsService]:
    service = await start(settings)
    try:
        yield service
    finally:
        await service.stop(grace=0.5)


@pytest.fixture
async def metrics_service(
    tmp_path: Path, bus_settings: BusSettings
) -> AsyncIterator[MetricsService]:
    async with running(service_settings(tmp_path / "metrics", bus_settings)) as service:
        yield service


@pytest.fixture
async def stub(
    metrics_service: MetricsService,
) -> AsyncIterator[metrics_pb2_grpc.MetricsServiceAsyncStub]:
    async with channel_for(metrics_service) as channel:
        yield metrics_pb2_grpc.MetricsServiceStub(channel)


async def relay_everything(
    apps: Sequence[Application[Any]], settings: BusSettings, service: MetricsService
) -> None:
    """Publishes what the applications stored, as their services' relays do, and waits until
    the metrics service has projected all of it."""
    for app in apps:
        relay = OutboxRelay(app, settings)
        task = asyncio.create_task(relay.run())
        try:
            await relay.wait_for(app.recorder.max_notification_id() or 0, 30)
        finally:
            relay.stop()
            await asyncio.wait_for(task, 10)
    await wait_for_position(service.projection, await stream_last_sequence(settings))


@dataclass(frozen=True)
class Refusal:
    code: grpc.StatusCode
    fields: tuple[str, ...]


async def refused(call: Awaitable[object]) -> Refusal:
    """The status code and the fields named by google.rpc.BadRequest an RPC ends with."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error: Any = caught.value
    fields: list[str] = []
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                bad_request = error_details_pb2.BadRequest()
                if detail.Unpack(bad_request):
                    fields += [v.field for v in bad_request.field_violations]
    return Refusal(code=error.code(), fields=tuple(fields))
