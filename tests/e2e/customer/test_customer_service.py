"""Every RPC of CustomerService through a real server and client, including every error path.

Each refusal is checked for its status code, the field its BadRequest details name (for
INVALID_ARGUMENT), and that nothing was stored.
"""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from uuid import UUID

import grpc
import pytest
from eventsourcing.persistence import OperationalError
from google.protobuf.field_mask_pb2 import FieldMask
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from crm.v1 import common_pb2, customer_pb2, customer_pb2_grpc
from crmcore.adapters.grpc.channels import open_channel
from crmcore.application.interactions import InteractionApplication
from services.customer.bootstrap import SERVICE_NAME, CustomerService
from tests.e2e.customer.conftest import new_customer, refused, stored_position

pb = customer_pb2
if TYPE_CHECKING:
    Stub = customer_pb2_grpc.CustomerServiceAsyncStub
PHONE = pb.CONTACT_POINT_KIND_PHONE
EMAIL = pb.CONTACT_POINT_KIND_EMAIL
HANDLE = pb.CONTACT_POINT_KIND_HANDLE

TARO_PHONE = "090-1234-5678"
TARO_E164 = "+819012345678"
TARO_EMAIL = "Taro.Yamada@Example.JP"
HANAKO_EMAIL = "hanako.suzuki@example.jp"
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"
INVALID = grpc.StatusCode.INVALID_ARGUMENT


async def create_taro(stub: Stub, **fields: object) -> pb.Customer:
    return await stub.CreateCustomer(
        pb.CreateCustomerRequest(
            customer=new_customer("Taro Yamada", (PHONE, TARO_PHONE), (EMAIL, TARO_EMAIL), **fields)
        )
    )


async def create_hanako(stub: Stub, **fields: object) -> pb.Customer:
    return await stub.CreateCustomer(
        pb.CreateCustomerRequest(
            customer=new_customer("Hanako Suzuki", (EMAIL, HANAKO_EMAIL), **fields)
        )
    )


async def expect_invalid(service: CustomerService, call: Awaitable[object], field: str) -> None:
    before = stored_position(service)
    refusal = await refused(call)
    assert (refusal.code, refusal.fields) == (INVALID, (field,)), refusal
    assert stored_position(service) == before


class TestCreateCustomer:
    async def test_a_customer_is_created_with_normalised_contact_points(self, stub: Stub) -> None:
        taro = await create_taro(
            stub,
            company="Yamada Shoten",
            language="ja-jp",
            time_zone="Asia/Tokyo",
            segment="gold",
            tags=["VIP", "vip", "retail"],
            attributes={"plan_tier": "gold"},
            lifecycle=pb.LIFECYCLE_ACTIVE,
        )

        assert taro.id
        assert taro.etag == "1"
        assert [(p.kind, p.value) for p in taro.contact_points] == [
            (PHONE, TARO_E164),
            (EMAIL, "taro.yamada@example.jp"),
        ]
        assert (taro.language, list(taro.tags), dict(taro.attributes)) == (
            "ja-JP",
            ["vip", "retail"],
            {"plan_tier": "gold"},
        )
        assert taro.lifecycle == pb.LIFECYCLE_ACTIVE
        assert taro.subscription.status == pb.SUBSCRIPTION_STATUS_NONE
        assert taro.create_time.ToDatetime(UTC) > datetime.now(UTC) - timedelta(minutes=5)

    async def test_a_new_customer_is_a_prospect_by_default(self, stub: Stub) -> None:
        assert (await create_hanako(stub)).lifecycle == pb.LIFECYCLE_PROSPECT

    async def test_the_same_request_id_returns_the_first_customer(
        self, customer_service: CustomerService, stub: Stub
    ) -> None:
        request = pb.CreateCustomerRequest(
            request_id="crm-import-42", customer=new_customer("Taro", (PHONE, TARO_PHONE))
        )
        first = await stub.CreateCustomer(request)
        stored = stored_position(customer_service)

        again = await stub.CreateCustomer(request)

        assert again.id == first.id
        assert stored_position(customer_service) == stored

    async def test_a_national_number_is_read_in_the_given_region(self, stub: Stub) -> None:
        customer = await stub.CreateCustomer(
            pb.CreateCustomerRequest(
                customer=new_customer("Alice", (PHONE, "(201) 555-0123")), default_region="us"
            )
        )
        assert customer.contact_points[0].value == "+12015550123"

    async def test_output_only_fields_are_ignored(self, stub: Stub) -> None:
        customer = await stub.CreateCustomer(
            pb.CreateCustomerRequest(
                customer=new_customer("Taro", id=UNKNOWN_ID, etag="99", erased=True)
            )
        )
        assert (customer.id != UNKNOWN_ID, customer.etag, customer.erased) == (True, "1", False)

    @pytest.mark.parametrize(
        ("customer", "field"),
        [
            (new_customer(""), "customer.name"),
            (new_customer("   "), "customer.name"),
            (new_customer("T" * 201), "customer.name"),
            (new_customer("Taro", (EMAIL, "taro@")), "customer.contact_points[0].value"),
            (new_customer("Taro", (PHONE, "12")), "customer.contact_points[0].value"),
            (
                new_customer("Taro", (EMAIL, "a@b.jp"), (HANDLE, "line")),
                "customer.contact_points[1].value",
            ),
            (
                new_customer("Taro", (pb.ContactPointKind.ValueType(0), "taro@example.jp")),
                "customer.contact_points[0].kind",
            ),
            (
                new_customer("Taro", (pb.ContactPointKind.ValueType(7), "taro@example.jp")),
                "customer.contact_points[0].kind",
            ),
            (new_customer("Taro", lifecycle=42), "customer.lifecycle"),
            (new_customer("Taro", language="japanese"), "customer.language"),
            (new_customer("Taro", time_zone="Mars/Olympus"), "customer.time_zone"),
            (new_customer("Taro", tags=[""]), "customer.tags[0]"),
            (new_customer("Taro", attributes={"plan": "x" * 1001}), "customer.attributes[plan]"),
            (new_customer("Taro", company="\x00"), "customer.company"),
        ],
    )
    async def test_invalid_fields_are_named_and_nothing_is_stored(
        self,
        customer_service: CustomerService,
        stub: Stub,
        customer: pb.Customer,
        field: str,
    ) -> None:
        await expect_invalid(
            customer_service,
            stub.CreateCustomer(pb.CreateCustomerRequest(customer=customer)),
            field,
        )

    async def test_an_invalid_request_id_or_region_is_named(
        self, customer_service: CustomerService, stub: Stub
    ) -> None:
        await expect_invalid(
            customer_service,
            stub.CreateCustomer(
                pb.CreateCustomerRequest(request_id="r" * 129, customer=new_customer("Taro"))
            ),
            "request_id",
        )
        await expect_invalid(
            customer_service,
            stub.CreateCustomer(
                pb.CreateCustomerRequest(default_region="Japan", customer=new_customer("Taro"))
            ),
            "default_region",
        )

    async def test_a_contact_point_of_another_customer_is_refused(
        self, customer_service: CustomerService, stub: Stub
    ) -> None:
        await create_taro(stub)
        stored = stored_position(customer_service)

        refusal = await refused(
            stub.CreateCustomer(
                pb.CreateCustomerRequest(
                    customer=new_customer(
                        "Impostor", (EMAIL, "fresh@example.jp"), (PHONE, "+81 90-1234-5678")
                    )
                )
            )
        )

        assert refusal.code is grpc.StatusCode.ALREADY_EXISTS
        assert "contact_points[1]" in refusal.message
        assert stored_position(customer_service) == stored


class TestGetCustomer:
    async def test_a_customer_is_read_back(self, stub: Stub) -> None:
        taro = await create_taro(stub)
        assert await stub.GetCustomer(pb.GetCustomerRequest(id=taro.id)) == taro

    async def test_an_id_in_upper_case_is_the_same_id(self, stub: Stub) -> None:
        taro = await create_taro(stub)
        assert (await stub.GetCustomer(pb.GetCustomerRequest(id=taro.id.upper()))).id == taro.id

    async def test_an_unknown_customer_is_not_found(self, stub: Stub) -> None:
        refusal = await refused(stub.GetCustomer(pb.GetCustomerRequest(id=UNKNOWN_ID)))
        assert refusal.code is grpc.StatusCode.NOT_FOUND

    @pytest.mark.parametrize("bad_id", ["", "taro", "0000-0000", "{" + UNKNOWN_ID + "}"])
    async def test_an_id_that_is_not_a_uuid_is_invalid(
        self, customer_service: CustomerService, stub: Stub, bad_id: str
    ) -> None:
        await expect_invalid(
            customer_service, stub.GetCustomer(pb.GetCustomerRequest(id=bad_id)), "id"
        )

    async def test_a_merged_id_resolves_to_the_survivor(self, stub: Stub) -> None:
        taro, duplicate = await create_taro(stub), await create_hanako(stub)
        await stub.MergeCustomers(
            pb.MergeCustomersRequest(duplicate_id=duplicate.id, survivor_id=taro.id)
        )
        assert (await stub.GetCustomer(pb.GetCustomerRequest(id=duplicate.id))).id == taro.id


class TestUpdateCustomer:
    async def test_only_the_fields_in_the_mask_change(self, stub: Stub) -> None:
        taro = await create_taro(stub, company="Yamada Shoten", segment="gold")

        updated = await stub.UpdateCustomer(
            pb.UpdateCustomerRequest(
                customer=pb.Customer(id=taro.id, name="Taro Y.", company="ignored", tags=["vip"]),
                update_mask=FieldMask(paths=["name", "tags"]),
                etag=taro.etag,
            )
        )

        assert (updated.name, updated.company, list(updated.tags)) == (
            "Taro Y.",
            "Yamada Shoten",
            ["vip"],
        )
        assert updated.etag == "2"

    async def test_a_field_in_the_mask_can_be_cleared(self, stub: Stub) -> None:
        taro = await create_taro(stub, company="Yamada Shoten")
        updated = await stub.UpdateCustomer(
            pb.UpdateCustomerRequest(
                customer=pb.Customer(id=taro.id), update_mask=FieldMask(paths=["company"])
            )
        )
        assert updated.company == ""

    async def test_without_a_mask_the_fields_given_change(self, stub: Stub) -> None:
        taro = await create_taro(stub, company="Yamada Shoten")
        updated = await stub.UpdateCustomer(
            pb.UpdateCustomerRequest(customer=pb.Customer(id=taro.id, segment="platinum"))
        )
        assert (updated.segment, updated.company, updated.name) == (
            "platinum",
            "Yamada Shoten",
            "Taro Yamada",
        )

    async def test_a_star_mask_replaces_every_profile_field(self, stub: Stub) -> None:
        taro = await create_taro(stub, company="Yamada Shoten", tags=["vip"])
        updated = await stub.UpdateCustomer(
            pb.UpdateCustomerRequest(
                customer=pb.Customer(id=taro.id, name="Taro"), update_mask=FieldMask(paths=["*"])
            )
        )
        assert (updated.name, updated.company, list(updated.tags)) == ("Taro", "", [])

    async def test_a_stale_etag_is_aborted_and_nothing_is_stored(
        self, customer_service: CustomerService, stub: Stub
    ) -> None:
        taro = await create_taro(stub)
        await stub.UpdateCustomer(
            pb.UpdateCustomerRequest(customer=pb.Customer(id=taro.id, segment="gold"))
        )
        stored = stored_position(customer_service)

        refusal = await refused(
            stub.UpdateCustomer(
                pb.UpdateCustomerRequest(
                    customer=pb.Customer(id=taro.id, name="Stale"), etag=taro.etag
                )
            )
        )

        assert refusal.code is grpc.StatusCode.ABORTED
        assert stored_position(customer_service) == stored

    @pytest.mark.parametrize(
        ("request_", "field"),
        [
            (pb.UpdateCustomerRequest(customer=pb.Customer(id="nope", name="x")), "customer.id"),
            (
                pb.UpdateCustomerRequest(
                    customer=pb.Customer(id=UNKNOWN_ID), update_mask=FieldMask(paths=["lifecycle"])
                ),
                "update_mask.paths[0]",
            ),
            (
                pb.UpdateCustomerRequest(
                    customer=pb.Customer(id=UNKNOWN_ID), update_mask=FieldMask(paths=["*", "name"])
                ),
                "update_mask",
            ),
            (pb.UpdateCustomerRequest(customer=pb.Customer(id=UNKNOWN_ID)), "update_mask"),
            (
                pb.UpdateCustomerRequest(customer=pb.Customer(id=UNKNOWN_ID, name="x"), etag="W/1"),
                "etag",
            ),
        ],
    )
    async def test_protobuf_mistakes_are_named(
        self,
        customer_service: CustomerService,
        stub: Stub,
        request_: pb.UpdateCustomerRequest,
        field: str,
    ) -> None:
        await expect_invalid(customer_service, stub.UpdateCustomer(request_), field)

    async def test_invalid_values_are_named_under_customer(
        self, customer_service: CustomerService, stub: Stub
    ) -> None:
        taro = await create_taro(stub)
        await expect_invalid(
            customer_service,
            stub.UpdateCustomer(
                pb.UpdateCustomerRequest(
                    customer=pb.Customer(id=taro.id, name=""), update_mask=FieldMask(paths=["name"])
                )
            ),
            "customer.name",
        )

    async def test_an_unknown_customer_is_not_found(self, stub: Stub) -> None:
        refusal = await refused(
            stub.UpdateCustomer(
                pb.UpdateCustomerRequest(customer=pb.Customer(id=UNKNOWN_ID, name="x"))
            )
        )
        assert refusal.code is grpc.StatusCode.NOT_FOUND

    async def test_a_merged_customer_refuses_changes(self, stub: Stub) -> None:
        taro, duplicate = await create_taro(stub), await create_hanako(stub)
        await stub.MergeCustomers(
            pb.MergeCustomersRequest(duplicate_id=duplicate.id, survivor_id=taro.id)
        )
        refusal = await refused(
            stub.UpdateCustomer(
                pb.UpdateCustomerRequest(customer=pb.Customer(id=duplicate.id, name="x"))
            )
        )
        assert refusal.code is grpc.StatusCode.FAILED_PRECONDITION


class TestListCustomers:
    async def test_filters_combine(self, stub: Stub) -> None:
        taro = await create_taro(stub, segment="gold", tags=["vip"], lifecycle=pb.LIFECYCLE_ACTIVE)
        await create_hanako(stub, segment="gold", tags=["vip"])
        await stub.CreateCustomer(
            pb.CreateCustomerRequest(customer=new_customer("Jiro", segment="silver", tags=["vip"]))
        )

        async def names(**filters: object) -> list[str]:
            response = await stub.ListCustomers(pb.ListCustomersRequest(**filters))  # type: ignore[arg-type]
            return [customer.name for customer in response.customers]

        assert await names() == ["Taro Yamada", "Hanako Suzuki", "Jiro"]
        assert await names(segment="gold") == ["Taro Yamada", "Hanako Suzuki"]
        assert await names(tag="VIP", segment="silver") == ["Jiro"]
        assert await names(lifecycle=pb.LIFECYCLE_ACTIVE) == ["Taro Yamada"]
        assert await names(lifecycle=pb.LIFECYCLE_CHURNED) == []
        await stub.ChangeLifecycle(
            pb.ChangeLifecycleRequest(customer_id=taro.id, lifecycle=pb.LIFECYCLE_CHURNED)
        )
        assert await names(lifecycle=pb.LIFECYCLE_CHURNED) == ["Taro Yamada"]
        await stub.UpdateCustomer(
            pb.UpdateCustomerRequest(
                customer=pb.Customer(id=taro.id), update_mask=FieldMask(paths=["tags"])
            )
        )
        assert await names(tag="vip") == ["Hanako Suzuki", "Jiro"]

    async def test_pages_follow_each_other_to_the_end(self, stub: Stub) -> None:
        for number in range(5):
            await stub.CreateCustomer(
                pb.CreateCustomerRequest(customer=new_customer(f"Customer {number}"))
            )

        seen: list[str] = []
        token = ""
        pages = 0
        while True:
            page = await stub.ListCustomers(pb.ListCustomersRequest(page_size=2, page_token=token))
            seen += [customer.name for customer in page.customers]
            pages += 1
            token = page.next_page_token
            if not token:
                break

        assert seen == [f"Customer {number}" for number in range(5)]
        assert pages == 3

    async def test_a_page_size_above_the_maximum_is_lowered(self, stub: Stub) -> None:
        await create_taro(stub)
        page = await stub.ListCustomers(pb.ListCustomersRequest(page_size=100_000))
        assert len(page.customers) == 1

    async def test_merged_duplicates_are_left_out(self, stub: Stub) -> None:
        taro, duplicate = await create_taro(stub), await create_hanako(stub)
        await stub.MergeCustomers(
            pb.MergeCustomersRequest(duplicate_id=duplicate.id, survivor_id=taro.id)
        )
        page = await stub.ListCustomers(pb.ListCustomersRequest())
        assert [customer.id for customer in page.customers] == [taro.id]

    async def test_a_token_of_other_filters_is_refused(
        self, customer_service: CustomerService, stub: Stub
    ) -> None:
        for number in range(3):
            await stub.CreateCustomer(pb.CreateCustomerRequest(customer=new_customer(f"C{number}")))
        page = await stub.ListCustomers(pb.ListCustomersRequest(page_size=1))

        await expect_invalid(
            customer_service,
            stub.ListCustomers(
                pb.ListCustomersRequest(page_token=page.next_page_token, segment="gold")
            ),
            "page_token",
        )

    @pytest.mark.parametrize(
        ("request_", "field"),
        [
            (pb.ListCustomersRequest(page_size=-1), "page_size"),
            (pb.ListCustomersRequest(page_token="not-a-token"), "page_token"),
            (pb.ListCustomersRequest(page_token="%%%"), "page_token"),
            (pb.ListCustomersRequest(lifecycle=pb.Lifecycle.ValueType(9)), "lifecycle"),
            (pb.ListCustomersRequest(segment="s" * 65), "segment"),
        ],
    )
    async def test_invalid_requests_are_named(
        self,
        customer_service: CustomerService,
        stub: Stub,
        request_: pb.ListCustomersRequest,
        field: str,
    ) -> None:
        await expect_invalid(customer_service, stub.ListCustomers(request_), field)


class TestContactPoints:
    async def test_an_added_contact_point_finds_the_customer(self, stub: Stub) -> None:
        taro = await create_taro(stub)

        updated = await stub.AddContactPoint(
            pb.AddContactPointRequest(
                customer_id=taro.id, contact_point=pb.ContactPoint(kind=HANDLE, value="LINE:taro_y")
            )
        )

        assert updated.contact_points[-1].value == "line:taro_y"
        found = await stub.LookupCustomer(pb.LookupCustomerRequest(handle="line:taro_y"))
        assert found.id == taro.id

    async def test_a_removed_contact_point_finds_nobody_and_is_free_again(self, stub: Stub) -> None:
        taro, hanako = await create_taro(stub), await create_hanako(stub)

        await stub.RemoveContactPoint(
            pb.RemoveContactPointRequest(
                customer_id=taro.id,
                contact_point=pb.ContactPoint(kind=PHONE, value="+81 90 1234 5678"),
            )
        )

        refusal = await refused(stub.LookupCustomer(pb.LookupCustomerRequest(phone=TARO_PHONE)))
        assert refusal.code is grpc.StatusCode.NOT_FOUND
        taken = await stub.AddContactPoint(
            pb.AddContactPointRequest(
                customer_id=hanako.id, contact_point=pb.ContactPoint(kind=PHONE, value=TARO_PHONE)
            )
        )
        assert taken.contact_points[-1].value == TARO_E164

    async def test_another_customers_contact_point_cannot_be_added(
        self, customer_service: CustomerService, stub: Stub
    ) -> None:
        await create_taro(stub)
        hanako = await create_hanako(stub)
        stored = stored_position(customer_service)
        refusal = await refused(
            stub.AddContactPoint(
                pb.AddContactPointRequest(
                    customer_id=hanako.id,
                    contact_point=pb.ContactPoint(kind=EMAIL, value="TARO.yamada@example.jp"),
                )
            )
        )
        assert refusal.code is grpc.StatusCode.ALREADY_EXISTS
        assert stored_position(customer_service) == stored

    async def test_adding_one_the_customer_has_already_exists(self, stub: Stub) -> None:
        taro = await create_taro(stub)
        refusal = await refused(
            stub.AddContactPoint(
                pb.AddContactPointRequest(
                    customer_id=taro.id, contact_point=pb.ContactPoint(kind=PHONE, value=TARO_PHONE)
                )
            )
        )
        assert refusal.code is grpc.StatusCode.ALREADY_EXISTS

    async def test_removing_one_the_customer_lacks_is_not_found(self, stub: Stub) -> None:
        taro = await create_taro(stub)
        refusal = await refused(
            stub.RemoveContactPoint(
                pb.RemoveContactPointRequest(
                    customer_id=taro.id,
                    contact_point=pb.ContactPoint(kind=EMAIL, value=HANAKO_EMAIL),
                )
            )
        )
        assert refusal.code is grpc.StatusCode.NOT_FOUND

    @pytest.mark.parametrize("rpc", ["AddContactPoint", "RemoveContactPoint"])
    async def test_invalid_requests_are_named(
        self, customer_service: CustomerService, stub: Stub, rpc: str
    ) -> None:
        taro = await create_taro(stub)
        call = getattr(stub, rpc)
        message = (
            pb.AddContactPointRequest if rpc == "AddContactPoint" else pb.RemoveContactPointRequest
        )
        email = pb.ContactPoint(kind=EMAIL, value=HANAKO_EMAIL)
        await expect_invalid(
            customer_service, call(message(customer_id="x", contact_point=email)), "customer_id"
        )
        await expect_invalid(
            customer_service,
            call(message(customer_id=taro.id, contact_point=pb.ContactPoint(value="a@b.jp"))),
            "contact_point.kind",
        )
        await expect_invalid(
            customer_service,
            call(
                message(
                    customer_id=taro.id, contact_point=pb.ContactPoint(kind=EMAIL, value="not mail")
                )
            ),
            "contact_point.value",
        )
        await expect_invalid(
            customer_service,
            call(message(customer_id=taro.id, contact_point=email, default_region="ZZ")),
            "default_region",
        )
        refusal = await refused(call(message(customer_id=UNKNOWN_ID, contact_point=email)))
        assert refusal.code is grpc.StatusCode.NOT_FOUND


class TestLookupCustomer:
    @pytest.mark.parametrize(
        "request_",
        [
            pb.LookupCustomerRequest(phone="090 1234 5678"),
            pb.LookupCustomerRequest(phone="+81-90-1234-5678"),
            pb.LookupCustomerRequest(phone="0081 90 1234 5678"),
            pb.LookupCustomerRequest(phone="+819012345678", default_region="US"),
            pb.LookupCustomerRequest(email="  TARO.YAMADA@example.jp "),
        ],
    )
    async def test_the_input_is_normalised_like_stored_values(
        self, stub: Stub, request_: pb.LookupCustomerRequest
    ) -> None:
        taro = await create_taro(stub)
        assert (await stub.LookupCustomer(request_)).id == taro.id

    async def test_an_unknown_contact_point_is_not_found_without_repeating_it(
        self, stub: Stub
    ) -> None:
        refusal = await refused(stub.LookupCustomer(pb.LookupCustomerRequest(email=HANAKO_EMAIL)))
        assert refusal.code is grpc.StatusCode.NOT_FOUND
        assert HANAKO_EMAIL not in refusal.message

    async def test_a_merged_customers_contact_point_finds_the_survivor(self, stub: Stub) -> None:
        taro, duplicate = await create_taro(stub), await create_hanako(stub)
        await stub.MergeCustomers(
            pb.MergeCustomersRequest(duplicate_id=duplicate.id, survivor_id=taro.id)
        )
        found = await stub.LookupCustomer(pb.LookupCustomerRequest(email=HANAKO_EMAIL))
        assert found.id == taro.id

    @pytest.mark.parametrize(
        ("request_", "field"),
        [
            (pb.LookupCustomerRequest(), "key"),
            (pb.LookupCustomerRequest(phone="call me"), "phone"),
            (pb.LookupCustomerRequest(email="nobody"), "email"),
            (pb.LookupCustomerRequest(handle="no-network"), "handle"),
            (pb.LookupCustomerRequest(phone=TARO_PHONE, default_region="JPN"), "default_region"),
        ],
    )
    async def test_invalid_keys_are_named(
        self,
        customer_service: CustomerService,
        stub: Stub,
        request_: pb.LookupCustomerRequest,
        field: str,
    ) -> None:
        await expect_invalid(customer_service, stub.LookupCustomer(request_), field)


class TestMergeCustomers:
    async def test_contact_points_and_history_follow_the_survivor(
        self, customer_service: CustomerService, stub: Stub
    ) -> None:
        taro, duplicate = await create_taro(stub), await create_hanako(stub)
        interactions = InteractionApplication()
        interactions.open_interaction(
            channel="email", customer_id=UUID(duplicate.id), contact_reason="billing"
        )
        customer_service.views.timeline.catch_up(interactions)

        survivor = await stub.MergeCustomers(
            pb.MergeCustomersRequest(duplicate_id=duplicate.id, survivor_id=taro.id)
        )

        assert HANAKO_EMAIL in [point.value for point in survivor.contact_points]
        merged = await stub.GetCustomerView(pb.GetCustomerViewRequest(customer_id=duplicate.id))
        assert merged.customer.id == taro.id
        assert [entry.title for entry in merged.timeline] == ["email (inbound): billing"]

    async def test_merging_into_itself_is_refused(self, stub: Stub) -> None:
        taro = await create_taro(stub)
        refusal = await refused(
            stub.MergeCustomers(pb.MergeCustomersRequest(duplicate_id=taro.id, survivor_id=taro.id))
        )
        assert refusal.code is grpc.StatusCode.FAILED_PRECONDITION

    async def test_merging_an_unknown_customer_is_not_found(self, stub: Stub) -> None:
        taro = await create_taro(stub)
        refusal = await refused(
            stub.MergeCustomers(
                pb.MergeCustomersRequest(duplicate_id=UNKNOWN_ID, survivor_id=taro.id)
            )
        )
        assert refusal.code is grpc.StatusCode.NOT_FOUND

    async def test_ids_are_checked(self, customer_service: CustomerService, stub: Stub) -> None:
        await expect_invalid(
            customer_service,
            stub.MergeCustomers(pb.MergeCustomersRequest(duplicate_id="a", survivor_id=UNKNOWN_ID)),
            "duplicate_id",
        )
        await expect_invalid(
            customer_service,
            stub.MergeCustomers(pb.MergeCustomersRequest(duplicate_id=UNKNOWN_ID, survivor_id="")),
            "survivor_id",
        )


class TestConsent:
    async def test_consent_is_recorded_per_purpose(self, stub: Stub) -> None:
        taro = await create_taro(stub)
        await stub.SetConsent(
            pb.SetConsentRequest(
                customer_id=taro.id, purpose="marketing_email", granted=True, source="web form"
            )
        )
        updated = await stub.SetConsent(
            pb.SetConsentRequest(
                customer_id=taro.id, purpose="marketing_email", granted=False, source="call"
            )
        )
        ((purpose, granted, source),) = [(c.purpose, c.granted, c.source) for c in updated.consents]
        assert (purpose, granted, source) == ("marketing_email", False, "call")

    @pytest.mark.parametrize(
        ("purpose", "source", "field"),
        [
            ("Marketing Email", "web", "purpose"),
            ("", "web", "purpose"),
            ("sms", "", "source"),
            ("sms", "s" * 201, "source"),
        ],
    )
    async def test_invalid_values_are_named(
        self,
        customer_service: CustomerService,
        stub: Stub,
        purpose: str,
        source: str,
        field: str,
    ) -> None:
        taro = await create_taro(stub)
        await expect_invalid(
            customer_service,
            stub.SetConsent(
                pb.SetConsentRequest(
                    customer_id=taro.id, purpose=purpose, granted=True, source=source
                )
            ),
            field,
        )

    async def test_unknown_and_invalid_ids(
        self, customer_service: CustomerService, stub: Stub
    ) -> None:
        request = pb.SetConsentRequest(
            customer_id=UNKNOWN_ID, purpose="sms", granted=True, source="web"
        )
        assert (await refused(stub.SetConsent(request))).code is grpc.StatusCode.NOT_FOUND
        request.customer_id = "x"
        await expect_invalid(customer_service, stub.SetConsent(request), "customer_id")


class TestLifecycleAndSubscription:
    async def test_a_prospect_becomes_active_then_churns_and_is_won_back(self, stub: Stub) -> None:
        taro = await create_taro(stub)
        for step in (pb.LIFECYCLE_ACTIVE, pb.LIFECYCLE_CHURNED, pb.LIFECYCLE_ACTIVE):
            taro = await stub.ChangeLifecycle(
                pb.ChangeLifecycleRequest(customer_id=taro.id, lifecycle=step, reason="renewal")
            )
        assert taro.lifecycle == pb.LIFECYCLE_ACTIVE

    async def test_an_impossible_step_is_a_failed_precondition(self, stub: Stub) -> None:
        taro = await create_taro(stub, lifecycle=pb.LIFECYCLE_ACTIVE)
        refusal = await refused(
            stub.ChangeLifecycle(
                pb.ChangeLifecycleRequest(customer_id=taro.id, lifecycle=pb.LIFECYCLE_PROSPECT)
            )
        )
        assert refusal.code is grpc.StatusCode.FAILED_PRECONDITION

    async def test_lifecycle_requests_are_checked(
        self, customer_service: CustomerService, stub: Stub
    ) -> None:
        taro = await create_taro(stub)
        for number in (pb.Lifecycle.ValueType(0), pb.Lifecycle.ValueType(17)):
            await expect_invalid(
                customer_service,
                stub.ChangeLifecycle(
                    pb.ChangeLifecycleRequest(customer_id=taro.id, lifecycle=number)
                ),
                "lifecycle",
            )
        await expect_invalid(
            customer_service,
            stub.ChangeLifecycle(
                pb.ChangeLifecycleRequest(
                    customer_id=taro.id, lifecycle=pb.LIFECYCLE_ACTIVE, reason="r" * 201
                )
            ),
            "reason",
        )
        refusal = await refused(
            stub.ChangeLifecycle(
                pb.ChangeLifecycleRequest(customer_id=UNKNOWN_ID, lifecycle=pb.LIFECYCLE_ACTIVE)
            )
        )
        assert refusal.code is grpc.StatusCode.NOT_FOUND

    async def test_a_trial_becomes_a_subscription_keeping_its_plan(self, stub: Stub) -> None:
        taro = await create_taro(stub)
        await stub.ChangeSubscription(
            pb.ChangeSubscriptionRequest(
                customer_id=taro.id, status=pb.SUBSCRIPTION_STATUS_TRIAL, plan="pro"
            )
        )
        taro = await stub.ChangeSubscription(
            pb.ChangeSubscriptionRequest(customer_id=taro.id, status=pb.SUBSCRIPTION_STATUS_ACTIVE)
        )
        assert (taro.subscription.status, taro.subscription.plan) == (
            pb.SUBSCRIPTION_STATUS_ACTIVE,
            "pro",
        )
        assert taro.subscription.HasField("since_time")

    async def test_subscription_requests_are_checked(
        self, customer_service: CustomerService, stub: Stub
    ) -> None:
        taro = await create_taro(stub)
        refusal = await refused(
            stub.ChangeSubscription(
                pb.ChangeSubscriptionRequest(
                    customer_id=taro.id, status=pb.SUBSCRIPTION_STATUS_PAUSED
                )
            )
        )
        assert refusal.code is grpc.StatusCode.FAILED_PRECONDITION
        for number in (pb.SubscriptionStatus.ValueType(0), pb.SubscriptionStatus.ValueType(99)):
            await expect_invalid(
                customer_service,
                stub.ChangeSubscription(
                    pb.ChangeSubscriptionRequest(customer_id=taro.id, status=number)
                ),
                "status",
            )
        await expect_invalid(
            customer_service,
            stub.ChangeSubscription(
                pb.ChangeSubscriptionRequest(
                    customer_id=taro.id, status=pb.SUBSCRIPTION_STATUS_TRIAL, plan="p" * 65
                )
            ),
            "plan",
        )
        await expect_invalid(
            customer_service,
            stub.ChangeSubscription(
                pb.ChangeSubscriptionRequest(customer_id="?", status=pb.SUBSCRIPTION_STATUS_TRIAL)
            ),
            "customer_id",
        )


class TestEraseCustomer:
    async def test_an_erased_customer_shows_no_personal_data_and_frees_its_contact_points(
        self, stub: Stub
    ) -> None:
        taro = await create_taro(stub, company="Yamada Shoten", tags=["vip"], segment="gold")

        erased = await stub.EraseCustomer(pb.EraseCustomerRequest(customer_id=taro.id))

        assert erased.customer_id == taro.id
        assert erased.HasField("erase_time")
        after = await stub.GetCustomer(pb.GetCustomerRequest(id=taro.id))
        assert after.erased
        assert (after.name, after.company, list(after.tags), list(after.contact_points)) == (
            "",
            "",
            [],
            [],
        )
        assert after.segment == "gold"  # not personal: kept for KPIs
        refusal = await refused(stub.LookupCustomer(pb.LookupCustomerRequest(phone=TARO_PHONE)))
        assert refusal.code is grpc.StatusCode.NOT_FOUND
        await stub.CreateCustomer(
            pb.CreateCustomerRequest(customer=new_customer("New owner", (PHONE, TARO_PHONE)))
        )

    async def test_erasing_again_is_a_failed_precondition(self, stub: Stub) -> None:
        taro = await create_taro(stub)
        await stub.EraseCustomer(pb.EraseCustomerRequest(customer_id=taro.id))
        refusal = await refused(stub.EraseCustomer(pb.EraseCustomerRequest(customer_id=taro.id)))
        assert refusal.code is grpc.StatusCode.FAILED_PRECONDITION

    async def test_unknown_and_invalid_ids(
        self, customer_service: CustomerService, stub: Stub
    ) -> None:
        assert (
            await refused(stub.EraseCustomer(pb.EraseCustomerRequest(customer_id=UNKNOWN_ID)))
        ).code is grpc.StatusCode.NOT_FOUND
        await expect_invalid(
            customer_service,
            stub.EraseCustomer(pb.EraseCustomerRequest(customer_id="me")),
            "customer_id",
        )


class TestCustomerView:
    async def test_the_timeline_is_newest_first_and_paginated(
        self, customer_service: CustomerService, stub: Stub
    ) -> None:
        taro = await create_taro(stub)
        taro_id = UUID(taro.id)
        monday = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
        interactions = InteractionApplication()
        call = interactions.open_interaction(
            channel="phone", customer_id=taro_id, contact_reason="billing", at=monday
        )
        interactions.add_message(
            call.id,
            author_kind="customer",
            text="My invoice is wrong",
            at=monday + timedelta(minutes=1),
        )
        interactions.open_case(
            subject="Invoice correction",
            customer_id=taro_id,
            interaction_ids=[call.id],
            at=monday + timedelta(hours=1),
        )
        interactions.record_survey_response(
            survey_id="csat-1",
            kind="csat",
            score=5,
            comment="Quick fix, thanks",
            customer_id=taro_id,
            at=monday + timedelta(days=1),
        )
        customer_service.views.timeline.catch_up(interactions)

        first = await stub.GetCustomerView(
            pb.GetCustomerViewRequest(customer_id=taro.id, page_size=2)
        )
        second = await stub.GetCustomerView(
            pb.GetCustomerViewRequest(
                customer_id=taro.id, page_size=2, page_token=first.next_page_token
            )
        )

        assert first.customer.id == taro.id
        kinds = [entry.kind for entry in (*first.timeline, *second.timeline)]
        assert kinds == [
            pb.TIMELINE_ENTRY_KIND_SURVEY,
            pb.TIMELINE_ENTRY_KIND_CASE,
            pb.TIMELINE_ENTRY_KIND_INTERACTION,
        ]
        survey, case = first.timeline
        (phone_call,) = second.timeline
        assert (survey.summary, case.title) == ("Quick fix, thanks", "Invoice correction")
        assert (phone_call.channel, phone_call.summary) == (
            common_pb2.CHANNEL_PHONE,
            "My invoice is wrong",
        )
        assert phone_call.occur_time.ToDatetime(UTC) == monday
        assert second.next_page_token == ""

    async def test_a_customer_without_history_has_an_empty_timeline(self, stub: Stub) -> None:
        taro = await create_taro(stub)
        view = await stub.GetCustomerView(pb.GetCustomerViewRequest(customer_id=taro.id))
        assert (view.customer.name, list(view.timeline), view.next_page_token) == (
            "Taro Yamada",
            [],
            "",
        )

    async def test_invalid_requests_are_named(
        self, customer_service: CustomerService, stub: Stub
    ) -> None:
        taro = await create_taro(stub)
        await expect_invalid(
            customer_service,
            stub.GetCustomerView(pb.GetCustomerViewRequest(customer_id="")),
            "customer_id",
        )
        await expect_invalid(
            customer_service,
            stub.GetCustomerView(pb.GetCustomerViewRequest(customer_id=taro.id, page_size=-5)),
            "page_size",
        )
        await expect_invalid(
            customer_service,
            stub.GetCustomerView(
                pb.GetCustomerViewRequest(customer_id=taro.id, page_token="garbage")
            ),
            "page_token",
        )
        refusal = await refused(
            stub.GetCustomerView(pb.GetCustomerViewRequest(customer_id=UNKNOWN_ID))
        )
        assert refusal.code is grpc.StatusCode.NOT_FOUND


class TestServer:
    async def test_health_is_serving_for_the_server_and_the_service(
        self, customer_service: CustomerService
    ) -> None:
        async with open_channel(customer_service.address) as channel:  # no token: open
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", SERVICE_NAME):
                response = await health.Check(health_pb2.HealthCheckRequest(service=name))
                assert response.status == health_pb2.HealthCheckResponse.SERVING

    async def test_reflection_lists_the_customer_service(
        self, customer_service: CustomerService
    ) -> None:
        async with open_channel(customer_service.address) as channel:  # no token: open
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            responses = reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
            names = [
                service.name
                async for response in responses
                for service in response.list_services_response.service
            ]
        assert SERVICE_NAME in names


class TestStoreUnavailable:
    async def test_calls_fail_with_unavailable_while_the_store_is_down(
        self,
        customer_service: CustomerService,
        stub: Stub,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        taro = await create_taro(stub)

        def down(*args: object, **kwargs: object) -> None:
            raise OperationalError("connection refused")

        monkeypatch.setattr(customer_service.app.recorder, "select_events", down)
        monkeypatch.setattr(customer_service.app.recorder, "insert_events", down)

        for call in (
            stub.GetCustomer(pb.GetCustomerRequest(id=taro.id)),
            stub.LookupCustomer(pb.LookupCustomerRequest(phone=TARO_PHONE)),
            stub.CreateCustomer(pb.CreateCustomerRequest(customer=new_customer("Hanako"))),
        ):
            refusal = await refused(call)
            assert refusal.code is grpc.StatusCode.UNAVAILABLE
