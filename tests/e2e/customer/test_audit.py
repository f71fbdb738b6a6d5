"""The audit trail through the real customer service: who (which token) did what to a customer.

Two people with tokens of their own work on Hanako over gRPC — desk agent Alice registers her
(and, by mistake, a duplicate); privacy officer Bob corrects her name, merges the duplicate and
later erases her. A CTI gateway's interaction events reach the service over a private NATS
stream. An auditor (scope `audit:read`) lists who did what, newest first, page by page; after
the erasure the trail is still all there, with no personal value anywhere in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING
from uuid import UUID, uuid4

import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from crm.v1 import customer_pb2 as pb
from crm.v1 import customer_pb2_grpc
from crmcore.adapters.grpc.channels import open_channel
from crmcore.adapters.relay import OutboxRelay
from crmcore.application.interactions import InteractionApplication
from crmcore.application.principal import Principal, acting_as
from crmcore.cli import main as crm
from crmcore.config import BusSettings
from services.customer.bootstrap import CustomerService
from tests.e2e.customer.conftest import new_customer, refused
from tests.support.auth import service_token

NAME = "Hanako Suzuki"
NEW_NAME = "Hanako Sato"
EMAIL = "hanako.suzuki@example.jp"
DUPLICATE_EMAIL = "h.suzuki.private@example.jp"
CONSENT_SOURCE = "phone call with the Sendai branch"
SAID_ON_THE_PHONE = "my new address is 3-1 Aoba, Sendai"
PERSONAL = (NAME, NEW_NAME, EMAIL, DUPLICATE_EMAIL, CONSENT_SOURCE, SAID_ON_THE_PHONE)
CTI = Principal(token_id="t-cti", name="cti-gateway")

if TYPE_CHECKING:  # only the stubs know the async stub's type
    Stub = customer_pb2_grpc.CustomerServiceAsyncStub


async def eventually(check: Callable[[], Awaitable[bool]], within_s: float = 20.0) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"{check.__qualname__} did not hold within {within_s}s")
        await asyncio.sleep(0.05)


class People:
    """Stubs of the customer service, one per token."""

    def __init__(self, service: CustomerService) -> None:
        self.bearers = {
            "alice": service_token(service, "customers:write", name="desk-alice"),
            "bob": service_token(service, "customers:write", "customers:erase", name="privacy-bob"),
            "auditor": service_token(service, "audit:read", name="auditor"),
            "reader": service_token(service, "customers:read", name="reader"),
        }
        self.address = service.address

    @contextlib.asynccontextmanager
    async def stub(self, who: str) -> AsyncIterator[Stub]:
        async with open_channel(self.address, token=self.bearers[who]) as channel:
            yield customer_pb2_grpc.CustomerServiceStub(channel)


async def whole_trail(auditor: Stub, customer_id: str, page_size: int) -> list[pb.AuditEntry]:
    entries: list[pb.AuditEntry] = []
    token = ""
    while True:
        page = await auditor.ListCustomerAudit(
            pb.ListCustomerAuditRequest(
                customer_id=customer_id, page_size=page_size, page_token=token
            )
        )
        entries += page.entries
        token = page.next_page_token
        if not token:
            return entries


def who_did_what(entries: list[pb.AuditEntry]) -> list[tuple[str, str]]:
    return [(entry.actor, entry.action) for entry in entries]


def readable_in(data: bytes) -> list[str]:
    return [value for value in PERSONAL if value.encode() in data]


@pytest.mark.nats
class TestAuditTrail:
    async def test_lists_who_did_what_newest_first_paged_and_still_after_the_erasure(
        self, bus_customer_service: CustomerService, bus_settings: BusSettings
    ) -> None:
        service = bus_customer_service
        people = People(service)
        async with people.stub("alice") as alice:
            hanako = await alice.CreateCustomer(
                pb.CreateCustomerRequest(
                    customer=new_customer(NAME, (pb.CONTACT_POINT_KIND_EMAIL, EMAIL))
                )
            )
            duplicate = await alice.CreateCustomer(
                pb.CreateCustomerRequest(
                    customer=new_customer(NAME, (pb.CONTACT_POINT_KIND_EMAIL, DUPLICATE_EMAIL))
                )
            )
        async with people.stub("bob") as bob:
            await bob.UpdateCustomer(
                pb.UpdateCustomerRequest(
                    customer=pb.Customer(id=hanako.id, name=NEW_NAME),
                    update_mask=FieldMask(paths=["name"]),
                )
            )
            await bob.MergeCustomers(
                pb.MergeCustomersRequest(duplicate_id=duplicate.id, survivor_id=hanako.id)
            )
            await bob.SetConsent(
                pb.SetConsentRequest(
                    customer_id=hanako.id,
                    purpose="marketing_email",
                    granted=False,
                    source=CONSENT_SOURCE,
                )
            )

        # The CTI gateway's call with Hanako, told to the bus by the interaction application.
        interactions = InteractionApplication()
        interaction_relay = OutboxRelay(interactions, bus_settings, source="interaction")
        relaying = asyncio.create_task(interaction_relay.run())
        try:
            with acting_as(CTI):
                call = interactions.open_interaction(
                    channel="phone", customer_id=UUID(hanako.id), contact_reason="address"
                )
                interactions.add_message(call.id, author_kind="customer", text=SAID_ON_THE_PHONE)

            async with people.stub("auditor") as auditor:

                async def the_call_is_audited() -> bool:
                    page = await auditor.ListCustomerAudit(
                        pb.ListCustomerAuditRequest(customer_id=hanako.id)
                    )
                    return len(page.entries) == 8

                await eventually(the_call_is_audited)
        finally:
            interaction_relay.stop()
            await relaying

        # Both sides of the merge happen at one time: the larger aggregate id comes first.
        merge = [
            ("token:privacy-bob", "crm.customer.duplicate_absorbed.v1"),
            ("token:privacy-bob", "crm.customer.merged_into.v1"),
        ]
        if duplicate.id > hanako.id:
            merge.reverse()
        expected = [
            ("token:cti-gateway", "crm.interaction.message_added.v1"),
            ("token:cti-gateway", "crm.interaction.opened.v1"),
            ("token:privacy-bob", "crm.customer.consent_recorded.v1"),
            *merge,
            ("token:privacy-bob", "crm.customer.profile_updated.v1"),
            ("token:desk-alice", "crm.customer.registered.v1"),
            ("token:desk-alice", "crm.customer.registered.v1"),
        ]
        async with people.stub("auditor") as auditor:
            first = await auditor.ListCustomerAudit(
                pb.ListCustomerAuditRequest(customer_id=hanako.id, page_size=3)
            )
            assert len(first.entries) == 3
            assert first.next_page_token
            trail = await whole_trail(auditor, hanako.id, page_size=3)
            assert who_did_what(trail) == expected
            assert trail[:3] == list(first.entries)
            update = trail[5]
            assert (update.service, update.aggregate_id, list(update.fields)) == (
                "customer",
                hanako.id,
                ["name"],
            )
            call_opened = trail[1]
            assert (call_opened.service, call_opened.aggregate_id) == ("interaction", str(call.id))
            registered = {entry.customer_id for entry in trail[-2:]}
            assert registered == {hanako.id, duplicate.id}

            # Asked by the merged-away id: the survivor's trail.
            by_duplicate = await auditor.ListCustomerAudit(
                pb.ListCustomerAuditRequest(customer_id=duplicate.id, page_size=100)
            )
            assert by_duplicate.customer_id == hanako.id
            assert list(by_duplicate.entries) == trail

            # A range: from Bob's name change up to (not including) the CTI's call.
            ranged = await auditor.ListCustomerAudit(
                pb.ListCustomerAuditRequest(
                    customer_id=hanako.id,
                    start_time=trail[5].occur_time,
                    end_time=trail[1].occur_time,
                )
            )
            assert who_did_what(list(ranged.entries)) == expected[2:6]

        async with people.stub("bob") as bob:
            await bob.EraseCustomer(pb.EraseCustomerRequest(customer_id=hanako.id))

        async with people.stub("auditor") as auditor:
            after = await whole_trail(auditor, hanako.id, page_size=4)
            assert who_did_what(after) == [
                ("token:privacy-bob", "crm.customer.erased.v1"),
                *expected,
            ]
            assert after[1:] == trail
            for entry in after:
                assert readable_in(entry.SerializeToString()) == [], entry


class TestAuditRefusals:
    async def test_unknown_customers_bad_requests_and_tokens_without_the_scope_are_refused(
        self, customer_service: CustomerService
    ) -> None:
        people = People(customer_service)
        async with people.stub("alice") as alice:
            hanako = await alice.CreateCustomer(
                pb.CreateCustomerRequest(customer=new_customer(NAME))
            )
            jiro = await alice.CreateCustomer(pb.CreateCustomerRequest(customer=new_customer()))
        async with people.stub("auditor") as auditor:
            first = await auditor.ListCustomerAudit(
                pb.ListCustomerAuditRequest(customer_id=hanako.id, page_size=1)
            )
            unknown = await refused(
                auditor.ListCustomerAudit(pb.ListCustomerAuditRequest(customer_id=str(uuid4())))
            )
            assert unknown.code.name == "NOT_FOUND"

            bad_requests = {
                "customer_id": pb.ListCustomerAuditRequest(customer_id="hanako"),
                "page_size": pb.ListCustomerAuditRequest(customer_id=hanako.id, page_size=-1),
                "page_token": pb.ListCustomerAuditRequest(
                    customer_id=hanako.id, page_token="not-a-token"
                ),
                "end_time": pb.ListCustomerAuditRequest(
                    customer_id=hanako.id,
                    start_time=first.entries[0].occur_time,
                    end_time=first.entries[0].occur_time,
                ),
            }
            for field, request in bad_requests.items():
                refusal = await refused(auditor.ListCustomerAudit(request))
                assert (refusal.code.name, refusal.fields) == ("INVALID_ARGUMENT", (field,))

            # A token of Hanako's trail does not continue Jiro's.
            other = await refused(
                auditor.ListCustomerAudit(
                    pb.ListCustomerAuditRequest(
                        customer_id=jiro.id, page_token=first.next_page_token or "x"
                    )
                )
            )
            assert (other.code.name, other.fields) == ("INVALID_ARGUMENT", ("page_token",))

        async with people.stub("reader") as reader:
            denied = await refused(
                reader.ListCustomerAudit(pb.ListCustomerAuditRequest(customer_id=hanako.id))
            )
            assert denied.code.name == "PERMISSION_DENIED"


class TestAuditCommand:
    async def test_crm_audit_customer_prints_who_did_what(
        self,
        customer_service: CustomerService,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        people = People(customer_service)
        async with people.stub("alice") as alice:
            hanako = await alice.CreateCustomer(
                pb.CreateCustomerRequest(customer=new_customer(NAME))
            )
            await alice.ChangeLifecycle(
                pb.ChangeLifecycleRequest(customer_id=hanako.id, lifecycle=pb.LIFECYCLE_ACTIVE)
            )
        address = customer_service.address
        monkeypatch.setenv("CRM_TOKEN", people.bearers["auditor"])
        capsys.readouterr()

        # The command blocks: it runs in a thread while this loop serves the RPCs.
        status = await asyncio.to_thread(
            crm, ["audit", "customer", hanako.id, "--address", address]
        )
        out = capsys.readouterr().out
        lines = out.splitlines()
        assert status == 0, out
        assert hanako.id in lines[0]
        assert "token:desk-alice" in lines[2]
        assert "customer.lifecycle_changed" in lines[2]
        assert "lifecycle" in lines[2]
        assert "customer.registered" in lines[3]
        assert NAME not in out

        limited = await asyncio.to_thread(
            crm, ["audit", "customer", hanako.id, "--address", address, "--limit", "1"]
        )
        out = capsys.readouterr().out
        assert limited == 0
        assert "customer.lifecycle_changed" in out
        assert "customer.registered" not in out
        assert "older entries" in out

        unknown = await asyncio.to_thread(
            crm, ["audit", "customer", str(uuid4()), "--address", address]
        )
        assert unknown == 1
        assert "NOT_FOUND" in capsys.readouterr().err
        malformed = await asyncio.to_thread(
            crm, ["audit", "customer", "hanako", "--address", address]
        )
        assert malformed == 2
        assert "customer_id" in capsys.readouterr().err

        monkeypatch.setenv("CRM_TOKEN", people.bearers["reader"])
        denied = await asyncio.to_thread(
            crm, ["audit", "customer", hanako.id, "--address", address]
        )
        assert denied == 1
        assert "audit:read" in capsys.readouterr().err
