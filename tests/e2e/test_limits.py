"""Limits of the gRPC services: message size, deadlines, page sizes — with real servers.

- `CRM_GRPC_MAX_MESSAGE_BYTES`: a larger request is refused with RESOURCE_EXHAUSTED and
  stores nothing.
- Deadlines: a store call that reaches a worker thread after the client's deadline is not
  started (DEADLINE_EXCEEDED, nothing stored) — shown by keeping the service's only worker
  thread busy until the deadline of a queued CreateCustomer has passed.
- Page sizes: every List RPC of the four services lowers a page size above 500 to 500 and
  refuses a negative one with INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from crm.v1 import (
    common_pb2,
    customer_pb2,
    customer_pb2_grpc,
    interaction_pb2,
    interaction_pb2_grpc,
    metrics_pb2,
    metrics_pb2_grpc,
    routing_pb2,
    routing_pb2_grpc,
)
from crmcore.adapters.grpc.channels import open_channel
from crmcore.config import PersistenceSettings, ServiceSettings, service_from_env
from services.customer.bootstrap import CustomerService
from services.customer.bootstrap import start as start_customer
from services.customer.config import CustomerServiceSettings
from services.interaction.bootstrap import start as start_interaction
from services.interaction.config import InteractionServiceSettings
from services.metrics.bootstrap import start as start_metrics
from services.metrics.config import MetricsServiceSettings
from services.routing.bootstrap import start as start_routing
from services.routing.config import RoutingServiceSettings
from tests.support.auth import service_token

MAX_PAGE = 500


@contextlib.asynccontextmanager
async def customer_service(settings: ServiceSettings) -> AsyncIterator[CustomerService]:
    service = await start_customer(CustomerServiceSettings(service=settings, bus=None))
    try:
        yield service
    finally:
        await service.stop(grace=0.5)


DEADLINE_S = 2.0


async def until_queued(service: CustomerService) -> None:
    """Waits until a blocking call waits for the (busy) worker thread of `service`."""
    # The pool's queue is private; reading its length is the only way to see a queued call.
    queue = service.calls._executor._work_queue
    for _ in range(1000):
        if queue.qsize() > 0:
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the call never reached the service's worker pool")


def stored(service: CustomerService) -> int:
    return service.app.recorder.max_notification_id() or 0


class TestMessageSize:
    async def test_an_oversized_request_is_resource_exhausted_and_stores_nothing(
        self, tmp_path: Path
    ) -> None:
        settings = service_from_env(
            "customer",
            {
                "CRM_CUSTOMER_ADDRESS": "127.0.0.1:0",
                "CRM_DATA_DIR": str(tmp_path / "data"),
                "CRM_GRPC_MAX_MESSAGE_BYTES": "65536",
            },
        )
        async with (
            customer_service(settings) as service,
            open_channel(service.address, token=service_token(service)) as channel,
        ):
            stub = customer_pb2_grpc.CustomerServiceStub(channel)
            small = customer_pb2.Customer(name="Aiko", attributes={"note": "x" * 1000})
            await stub.CreateCustomer(
                customer_pb2.CreateCustomerRequest(customer=small), timeout=10
            )
            before = stored(service)
            large = customer_pb2.Customer(name="Aiko", attributes={"note": "x" * 70_000})
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.CreateCustomer(
                    customer_pb2.CreateCustomerRequest(customer=large), timeout=10
                )
            assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert stored(service) == before


class TestDeadlines:
    async def test_a_call_whose_deadline_passed_while_queued_stores_nothing(
        self, tmp_path: Path
    ) -> None:
        settings = ServiceSettings(
            service="customer",
            address="127.0.0.1:0",
            persistence=PersistenceSettings.sqlite(tmp_path / "data"),
            worker_threads=1,
            shutdown_grace_s=1.0,
        )
        async with customer_service(settings) as service:
            token = service_token(service)
            release = threading.Event()
            # The only worker thread is busy: the next store call has to queue behind it.
            blocker = asyncio.ensure_future(service.calls(release.wait, 30))
            async with open_channel(service.address, token=token) as channel:
                stub = customer_pb2_grpc.CustomerServiceStub(channel)
                loop = asyncio.get_running_loop()
                sent_at = loop.time()
                call = asyncio.ensure_future(
                    stub.CreateCustomer(
                        customer_pb2.CreateCustomerRequest(
                            customer=customer_pb2.Customer(name="Too Late")
                        ),
                        timeout=DEADLINE_S,
                    )
                )
                await until_queued(service)
                # The worker thread frees up only after the deadline, while this event loop
                # (the server's too) is held: gRPC cannot cancel the queued call in time, so
                # only the deadline check in the worker thread keeps it from storing.
                past_deadline = DEADLINE_S - (loop.time() - sent_at)
                threading.Timer(past_deadline + 0.2, release.set).start()
                time.sleep(past_deadline + 0.6)  # noqa: ASYNC251 - holding the loop is the point
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call
                assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
                await blocker
                # FIFO pool of one: once this has run, the queued call has had its turn.
                await service.calls(lambda: None)
                listed = await stub.ListCustomers(customer_pb2.ListCustomersRequest(), timeout=10)
            assert list(listed.customers) == []
            assert stored(service) == 0

    async def test_a_call_within_its_deadline_is_served(self, tmp_path: Path) -> None:
        settings = ServiceSettings(
            service="customer",
            address="127.0.0.1:0",
            persistence=PersistenceSettings.sqlite(tmp_path / "data"),
            worker_threads=1,
        )
        async with (
            customer_service(settings) as service,
            open_channel(service.address, token=service_token(service)) as channel,
        ):
            stub = customer_pb2_grpc.CustomerServiceStub(channel)
            created = await stub.CreateCustomer(
                customer_pb2.CreateCustomerRequest(customer=customer_pb2.Customer(name="In Time")),
                timeout=30,
            )
            assert created.name == "In Time"


# --- page sizes: every List RPC of the four services --------------------------------------------

SEED = MAX_PAGE + 1
OVERSIZED = 1_000_000


def base_settings(name: str, tmp_path: Path) -> ServiceSettings:
    return ServiceSettings(
        service=name,  # type: ignore[arg-type]  # one of the four names
        address="127.0.0.1:0",
        persistence=PersistenceSettings.sqlite(tmp_path / "data"),
        worker_threads=16,
        shutdown_grace_s=1.0,
    )


@contextlib.asynccontextmanager
async def started(name: str, tmp_path: Path) -> AsyncIterator[Any]:
    """One of the four services, in this process, without a bus."""
    if name == "customer":
        service: Any = await start_customer(
            CustomerServiceSettings(service=base_settings(name, tmp_path), bus=None)
        )
    elif name == "interaction":
        service = await start_interaction(
            InteractionServiceSettings(service=base_settings(name, tmp_path), bus=None)
        )
    elif name == "routing":
        service = await start_routing(
            RoutingServiceSettings(service=base_settings(name, tmp_path), bus=None)
        )
    else:
        service = await start_metrics(
            MetricsServiceSettings(service=base_settings(name, tmp_path), bus=None)
        )
    try:
        yield service
    finally:
        await service.stop(grace=0.5)


async def seeded(create: Callable[[int], Awaitable[object]], count: int = SEED) -> None:
    """`count` creations, a few dozen at a time."""
    for start in range(0, count, 50):
        await asyncio.gather(*(create(number) for number in range(start, min(count, start + 50))))


Lister = Callable[[grpc.aio.Channel, int], Awaitable[tuple[int, str]]]


async def list_customers(channel: grpc.aio.Channel, size: int) -> tuple[int, str]:
    page = await customer_pb2_grpc.CustomerServiceStub(channel).ListCustomers(
        customer_pb2.ListCustomersRequest(page_size=size), timeout=30
    )
    return len(page.customers), page.next_page_token


async def seed_customers(channel: grpc.aio.Channel) -> None:
    stub = customer_pb2_grpc.CustomerServiceStub(channel)
    await seeded(
        lambda n: stub.CreateCustomer(
            customer_pb2.CreateCustomerRequest(customer=customer_pb2.Customer(name=f"C {n}")),
            timeout=30,
        )
    )


async def list_interactions(channel: grpc.aio.Channel, size: int) -> tuple[int, str]:
    page = await interaction_pb2_grpc.InteractionServiceStub(channel).ListInteractions(
        interaction_pb2.ListInteractionsRequest(page_size=size), timeout=30
    )
    return len(page.interactions), page.next_page_token


async def list_cases(channel: grpc.aio.Channel, size: int) -> tuple[int, str]:
    page = await interaction_pb2_grpc.InteractionServiceStub(channel).ListCases(
        interaction_pb2.ListCasesRequest(page_size=size), timeout=30
    )
    return len(page.cases), page.next_page_token


async def seed_interactions(channel: grpc.aio.Channel) -> None:
    stub = interaction_pb2_grpc.InteractionServiceStub(channel)
    await seeded(
        lambda n: stub.OpenInteraction(
            interaction_pb2.OpenInteractionRequest(channel=common_pb2.CHANNEL_CHAT), timeout=30
        )
    )


async def list_agents(channel: grpc.aio.Channel, size: int) -> tuple[int, str]:
    page = await routing_pb2_grpc.RoutingServiceStub(channel).ListAgents(
        routing_pb2.ListAgentsRequest(page_size=size), timeout=30
    )
    return len(page.agents), page.next_page_token


async def list_queues(channel: grpc.aio.Channel, size: int) -> tuple[int, str]:
    page = await routing_pb2_grpc.RoutingServiceStub(channel).ListQueues(
        routing_pb2.ListQueuesRequest(page_size=size), timeout=30
    )
    return len(page.queues), page.next_page_token


async def seed_agents(channel: grpc.aio.Channel) -> None:
    stub = routing_pb2_grpc.RoutingServiceStub(channel)
    await seeded(
        lambda n: stub.RegisterAgent(
            routing_pb2.RegisterAgentRequest(agent=routing_pb2.Agent(display_name=f"A {n}")),
            timeout=30,
        )
    )


async def list_targets(channel: grpc.aio.Channel, size: int) -> tuple[int, str]:
    page = await metrics_pb2_grpc.MetricsServiceStub(channel).ListKpiTargets(
        metrics_pb2.ListKpiTargetsRequest(page_size=size), timeout=30
    )
    return len(page.kpi_targets), page.next_page_token


async def seed_targets(channel: grpc.aio.Channel) -> None:
    stub = metrics_pb2_grpc.MetricsServiceStub(channel)
    await seeded(
        lambda n: stub.CreateKpiTarget(
            metrics_pb2.CreateKpiTargetRequest(
                kpi_target=metrics_pb2.KpiTarget(
                    kpi="service_level",
                    baseline=0.5,
                    target=0.8,
                    window_days=7,
                    description=f"target {n}",
                    start_time=Timestamp(seconds=1_800_000_000),
                    deadline_time=Timestamp(seconds=1_800_000_000 + 86_400 * (n + 1)),
                )
            ),
            timeout=30,
        )
    )


#: Every List RPC: (service, lister, how to store more than a page of its items, or None).
LISTS: dict[str, tuple[str, Lister, Callable[[grpc.aio.Channel], Awaitable[None]] | None]] = {
    "ListCustomers": ("customer", list_customers, seed_customers),
    "ListInteractions": ("interaction", list_interactions, seed_interactions),
    "ListCases": ("interaction", list_cases, None),
    "ListAgents": ("routing", list_agents, seed_agents),
    "ListQueues": ("routing", list_queues, None),
    "ListKpiTargets": ("metrics", list_targets, seed_targets),
}


@pytest.mark.parametrize("rpc", list(LISTS))
class TestPageSizes:
    async def test_a_negative_page_size_is_invalid_argument(self, rpc: str, tmp_path: Path) -> None:
        name, lister, _ = LISTS[rpc]
        async with (
            started(name, tmp_path) as service,
            open_channel(service.address, token=service_token(service)) as channel,
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await lister(channel, -1)
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT

    async def test_a_page_size_above_the_maximum_is_lowered_to_it(
        self, rpc: str, tmp_path: Path
    ) -> None:
        name, lister, seed = LISTS[rpc]
        # Without a seed: the same servicer helper as its sibling List RPC (checked with
        # seeded items there); here only that an oversized size is accepted.
        seed_items = 0 if seed is None else SEED
        async with (
            started(name, tmp_path) as service,
            open_channel(service.address, token=service_token(service)) as channel,
        ):
            if seed is not None:
                await seed(channel)
            count, token = await lister(channel, OVERSIZED)
        assert count == min(seed_items, MAX_PAGE)
        assert bool(token) == (seed_items > MAX_PAGE)
