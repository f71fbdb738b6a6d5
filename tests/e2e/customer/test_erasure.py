"""Erasure: no personal field of the customer is readable anywhere once it is erased.

The service runs with a private NATS stream: it publishes its events, and its timeline is fed
by interaction events another application publishes there. Taro gives every kind of personal
data the service keeps; after the erasure none of it can be read from the API, from any file
of the service's data directory (events, read models, keys), from its stored events decoded
with its own mapper, or from anything it published on the bus.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast
from uuid import UUID

import nats
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from crm.v1 import customer_pb2 as pb
from crmcore.adapters.envelope import decode
from crmcore.adapters.relay import OutboxRelay
from crmcore.application.interactions import InteractionApplication
from crmcore.config import BusSettings
from crmcore.domain.base import DomainEvent
from services.customer.bootstrap import CustomerService
from tests.e2e.customer.conftest import client, new_customer

pytestmark = pytest.mark.nats

NAME = "Taro Yamada"
NEW_NAME = "Taro Yamada-Suzuki"
COMPANY = "Yamada Shoten Holdings"
EMAIL = "taro.yamada@example.jp"
PHONE = "+819012345678"
HANDLE = "line:taro_yamada_1984"
TAG = "prefers-evening-calls"
ATTRIBUTE = "loyalty-card-4417"
CONSENT_SOURCE = "signed form at the Shibuya store"
LIFECYCLE_REASON = "moved to Osaka branch"
SAID_ON_THE_PHONE = "please send the invoice to my home in Setagaya"
PERSONAL = (
    NAME,
    NEW_NAME,
    COMPANY,
    EMAIL,
    PHONE,
    "90-1234-5678",
    HANDLE,
    "taro_yamada_1984",
    TAG,
    ATTRIBUTE,
    CONSENT_SOURCE,
    LIFECYCLE_REASON,
    SAID_ON_THE_PHONE,
)


async def eventually(check: Callable[[], Awaitable[bool]], within_s: float = 20.0) -> None:
    """Waits until `check()` holds (the bus and the projections are asynchronous)."""
    deadline = time.monotonic() + within_s
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"{check.__qualname__} did not hold within {within_s}s")
        await asyncio.sleep(0.05)


async def published_by_the_customer_service(settings: BusSettings) -> list[bytes]:
    """Every message of the stream whose CloudEvents source is the customer service."""
    nc = await nats.connect(settings.url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(settings.stream)
        payloads = []
        for sequence in range(info.state.first_seq, info.state.last_seq + 1):
            message = await js.get_msg(settings.stream, sequence)
            if message.data and decode(message.data).source == "/crm/customer":
                payloads.append(message.data)
        return payloads
    finally:
        await nc.close()


def readable_in(data: bytes) -> list[str]:
    return [value for value in PERSONAL if value.encode() in data]


class TestErasure:
    async def test_no_personal_field_is_readable_from_the_api_the_store_or_the_bus(
        self, bus_customer_service: CustomerService, bus_settings: BusSettings, tmp_path: Path
    ) -> None:
        service = bus_customer_service
        assert service.relay is not None
        async with client(service) as stub:
            taro = await stub.CreateCustomer(
                pb.CreateCustomerRequest(
                    request_id="erasure-test-1",
                    customer=new_customer(
                        NAME,
                        (pb.CONTACT_POINT_KIND_EMAIL, EMAIL),
                        (pb.CONTACT_POINT_KIND_PHONE, "090-1234-5678"),
                        company=COMPANY,
                        tags=[TAG],
                        attributes={"card": ATTRIBUTE},
                    ),
                )
            )
            await stub.AddContactPoint(
                pb.AddContactPointRequest(
                    customer_id=taro.id,
                    contact_point=pb.ContactPoint(kind=pb.CONTACT_POINT_KIND_HANDLE, value=HANDLE),
                )
            )
            await stub.UpdateCustomer(
                pb.UpdateCustomerRequest(
                    customer=pb.Customer(id=taro.id, name=NEW_NAME),
                    update_mask=FieldMask(paths=["name"]),
                )
            )
            await stub.SetConsent(
                pb.SetConsentRequest(
                    customer_id=taro.id,
                    purpose="marketing_sms",
                    granted=True,
                    source=CONSENT_SOURCE,
                )
            )
            await stub.ChangeLifecycle(
                pb.ChangeLifecycleRequest(
                    customer_id=taro.id, lifecycle=pb.LIFECYCLE_ACTIVE, reason=LIFECYCLE_REASON
                )
            )

            # The interaction service (here: its application and relay) tells the bus about a
            # call in which Taro said something personal; the timeline shows the call and what
            # happened in it, and the words never reach this service (the interaction service
            # publishes them blank).
            interactions = InteractionApplication()
            interaction_relay = OutboxRelay(interactions, bus_settings, source="interaction")
            relaying = asyncio.create_task(interaction_relay.run())
            try:
                call = interactions.open_interaction(
                    channel="phone", customer_id=UUID(taro.id), contact_reason="billing"
                )
                interactions.add_message(call.id, author_kind="customer", text=SAID_ON_THE_PHONE)

                async def the_call_is_on_the_timeline() -> bool:
                    view = await stub.GetCustomerView(
                        pb.GetCustomerViewRequest(customer_id=taro.id)
                    )
                    return [(entry.title, entry.summary) for entry in view.timeline] == [
                        ("phone (inbound): billing", "opened · 1 message, last: customer")
                    ]

                await eventually(the_call_is_on_the_timeline)
            finally:
                interaction_relay.stop()
                await relaying

            await stub.EraseCustomer(pb.EraseCustomerRequest(customer_id=taro.id))
            last_stored = service.app.recorder.max_notification_id() or 0

            async def everything_is_published() -> bool:
                return service.relay is not None and service.relay.position >= last_stored

            await eventually(everything_is_published)

            # The API.
            customer = await stub.GetCustomer(pb.GetCustomerRequest(id=taro.id))
            view = await stub.GetCustomerView(pb.GetCustomerViewRequest(customer_id=taro.id))
            listed = await stub.ListCustomers(pb.ListCustomersRequest())
            for message in (customer, view, listed):
                assert readable_in(message.SerializeToString()) == []
            assert customer.erased
            assert [(entry.title, entry.summary) for entry in view.timeline] == [
                ("phone (inbound): billing", "")
            ]

        # The store: every file the service keeps, and its events read back.
        data_dir = service.settings.service.persistence.data_dir
        files = [path for path in data_dir.rglob("*") if path.is_file()]
        assert files
        for path in files:
            assert readable_in(path.read_bytes()) == [], path
        app = service.app
        notifications = app.recorder.select_notifications(start=1, limit=10_000)
        for notification in notifications:
            event = cast(DomainEvent, app.mapper.to_domain_event(notification))
            assert readable_in(repr(event).encode()) == [], event

        # The bus: everything the customer service published, before and after the erasure.
        published = await published_by_the_customer_service(bus_settings)
        assert len(published) == len(notifications)
        for payload in published:
            assert readable_in(payload) == [], payload
