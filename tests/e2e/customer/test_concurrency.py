"""A contact point belongs to one customer, even when many clients race for it.

Thirty-two clients create a customer with the same phone number, each writing it its own way,
all at once: exactly one succeeds, every other gets ALREADY_EXISTS, and a lookup finds the
winner. The guarantee is the store's (a claim per contact point written in the customer's own
transaction), so it also holds across two service instances sharing one PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest

from crm.v1 import customer_pb2 as pb
from crmcore.config import PersistenceSettings
from services.customer.bootstrap import CustomerService
from tests.e2e.customer.conftest import client, new_customer, refusal_of, running, service_settings

CLIENTS = 32
# One number, written eight ways (national, international, with 00, spaced, dashed…).
SAME_PHONE = (
    "090-1234-5678",
    "09012345678",
    "+81 90 1234 5678",
    "+81-90-1234-5678",
    "0081 90 1234 5678",
    "(090) 1234-5678",
    "+819012345678",
    "090 1234 5678",
)


async def race_for_the_phone(services: Sequence[CustomerService]) -> None:
    async with contextlib.AsyncExitStack() as stack:
        stubs = [
            await stack.enter_async_context(client(services[index % len(services)]))
            for index in range(CLIENTS)
        ]
        outcomes = await asyncio.gather(
            *(
                stub.CreateCustomer(
                    pb.CreateCustomerRequest(
                        customer=new_customer(
                            f"Caller {index}",
                            (pb.CONTACT_POINT_KIND_PHONE, SAME_PHONE[index % len(SAME_PHONE)]),
                        )
                    )
                )
                for index, stub in enumerate(stubs)
            ),
            return_exceptions=True,
        )

        winners = [outcome for outcome in outcomes if isinstance(outcome, pb.Customer)]
        losers = [outcome for outcome in outcomes if isinstance(outcome, grpc.RpcError)]
        assert len(winners) == 1, outcomes
        assert len(losers) == CLIENTS - 1
        assert {refusal_of(loser).code for loser in losers} == {grpc.StatusCode.ALREADY_EXISTS}
        (winner,) = winners
        for stub in stubs[: len(services)]:
            found = await stub.LookupCustomer(pb.LookupCustomerRequest(phone="+819012345678"))
            assert found.id == winner.id
            listed = await stub.ListCustomers(pb.ListCustomersRequest())
            assert [customer.id for customer in listed.customers] == [winner.id]


class TestTheSamePhoneFromManyClients:
    async def test_exactly_one_customer_owns_it(self, tmp_path: Path) -> None:
        settings = service_settings(PersistenceSettings.sqlite(tmp_path / "data"))
        async with running(settings) as service:
            await race_for_the_phone([service])

    @pytest.mark.postgres
    async def test_exactly_one_owns_it_across_two_instances_on_one_database(
        self, postgres_persistence: PersistenceSettings
    ) -> None:
        settings = service_settings(postgres_persistence)
        async with running(settings) as first, running(settings) as second:
            await race_for_the_phone([first, second])
