"""The four services started in-process on one SQLite data directory (so one token store),
on an event loop of their own in another thread, for synchronous clients; no bus."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from crmcore.config import (
    AccessSettings,
    MetricsSettings,
    PersistenceSettings,
    ServiceName,
    ServiceSettings,
)
from services.customer import bootstrap as customer
from services.customer.config import CustomerServiceSettings
from services.interaction import bootstrap as interaction
from services.interaction.config import InteractionServiceSettings
from services.metrics import bootstrap as metrics
from services.metrics.config import MetricsServiceSettings
from services.routing import bootstrap as routing
from services.routing.config import RoutingServiceSettings

#: Short, so a revocation made through another store instance shows within a test.
CACHE_S = 0.5


@dataclass
class Stack:
    data_dir: Path
    services: dict[ServiceName, Any]

    @property
    def persistence(self) -> PersistenceSettings:
        return PersistenceSettings.sqlite(self.data_dir)

    def address(self, service: ServiceName) -> str:
        return str(self.services[service].address)

    def stored(self, service: ServiceName) -> int:
        """How much the service has stored: equal before and after a refused call."""
        running = self.services[service]
        if service == "metrics":
            return len(running.projection.targets())
        return int(running.app.recorder.max_notification_id() or 0)


def _settings(name: ServiceName, data_dir: Path) -> ServiceSettings:
    return ServiceSettings(
        service=name,
        address="127.0.0.1:0",
        persistence=PersistenceSettings.sqlite(data_dir),
        worker_threads=8,
        shutdown_grace_s=0.5,
        access=AccessSettings(cache_s=CACHE_S),
    )


async def _start_all(data_dir: Path) -> dict[ServiceName, Any]:
    started: dict[ServiceName, Any] = {}
    started["customer"] = await customer.start(
        CustomerServiceSettings(service=_settings("customer", data_dir), bus=None)
    )
    started["interaction"] = await interaction.start(
        InteractionServiceSettings(service=_settings("interaction", data_dir), bus=None)
    )
    started["routing"] = await routing.start(
        RoutingServiceSettings(service=_settings("routing", data_dir), bus=None)
    )
    started["metrics"] = await metrics.start(
        MetricsServiceSettings(
            service=_settings("metrics", data_dir),
            bus=None,
            metrics=MetricsSettings(prometheus_address=None),
        )
    )
    return started


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("access") / "data"
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()
    outcome: list[Any] = []

    async def serve() -> None:
        try:
            services = await _start_all(data_dir)
        except BaseException as error:
            outcome.append(error)
            ready.set()
            raise
        outcome.append(services)
        ready.set()
        await stop.wait()
        for service in services.values():
            await service.stop(grace=0.2)

    thread = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    thread.start()
    ready.wait(timeout=120)
    (started,) = outcome
    if isinstance(started, BaseException):
        raise started
    try:
        yield Stack(data_dir=data_dir, services=started)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)
        loop.close()
