"""Arbitrary input into every field of every request: never a crash, never a partial write.

Hypothesis fills each request field with arbitrary strings (any unicode, control characters,
up to tens of thousands of characters), arbitrary 32-bit numbers for enums and page sizes, and
sometimes with plausible values (existing ids, real phone numbers) so that calls get past the
first check. Whatever it sends, the answer is OK or a clear status (never INTERNAL or UNKNOWN);
an INVALID_ARGUMENT names a field of the request; and a refused call stores nothing.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crm.v1 import customer_pb2 as pb
from tests.e2e.customer.conftest import ThreadedService, refusal_of, stored_position

CLEAR_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED,
}

PLAUSIBLE = (
    "",
    " ",
    "Taro Yamada",
    "山田 太郎",
    "090-1234-5678",
    "+1 201-555-0123",
    "taro@example.jp",
    "TARO@EXAMPLE.JP",
    "line:taro_y",
    "JP",
    "US",
    "en-US",
    "Asia/Tokyo",
    "marketing_email",
    "gold",
    "vip",
    "*",
    "name",
    "1",
    "00000000-0000-4000-8000-000000000000",
)


def texts(known: tuple[str, ...] = ()) -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=40),
        st.text(min_size=150, max_size=3_000),
        # Hypothesis draws short texts only; repeating one gives the sizes that break limits.
        st.builds(operator.mul, st.text(min_size=1, max_size=20), st.integers(500, 3_000)),
        st.sampled_from(PLAUSIBLE + known),
    )


numbers = st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(-2, 8))


def string_lists(known: tuple[str, ...] = ()) -> st.SearchStrategy[list[str]]:
    return st.lists(texts(known), max_size=4)


def contact_points(known: tuple[str, ...]) -> st.SearchStrategy[list[pb.ContactPoint]]:
    return st.lists(
        st.builds(pb.ContactPoint, kind=numbers, value=texts(known)),
        max_size=3,
    )


def customers(known: tuple[str, ...]) -> st.SearchStrategy[pb.Customer]:
    return st.builds(
        pb.Customer,
        id=texts(known),
        name=texts(),
        company=texts(),
        language=texts(),
        time_zone=texts(),
        segment=texts(),
        tags=string_lists(),
        attributes=st.dictionaries(texts(), texts(), max_size=3),
        lifecycle=numbers,
        contact_points=contact_points(known),
        etag=texts(),
    )


def requests(rpc: str, known: tuple[str, ...]) -> st.SearchStrategy[Message]:
    ids = texts(known)
    point = st.builds(pb.ContactPoint, kind=numbers, value=texts())
    build: dict[str, Callable[[], st.SearchStrategy[Any]]] = {
        "CreateCustomer": lambda: st.builds(
            pb.CreateCustomerRequest,
            request_id=texts(),
            customer=customers(known),
            default_region=texts(),
        ),
        "GetCustomer": lambda: st.builds(pb.GetCustomerRequest, id=ids),
        "UpdateCustomer": lambda: st.builds(
            pb.UpdateCustomerRequest,
            customer=customers(known),
            update_mask=st.builds(FieldMask, paths=string_lists(("name", "tags", "*"))),
            etag=texts(),
        ),
        "ListCustomers": lambda: st.builds(
            pb.ListCustomersRequest,
            page_size=numbers,
            page_token=texts(),
            lifecycle=numbers,
            segment=texts(),
            tag=texts(),
        ),
        "AddContactPoint": lambda: st.builds(
            pb.AddContactPointRequest, customer_id=ids, contact_point=point, default_region=texts()
        ),
        "RemoveContactPoint": lambda: st.builds(
            pb.RemoveContactPointRequest,
            customer_id=ids,
            contact_point=point,
            default_region=texts(),
        ),
        "LookupCustomer": lambda: st.one_of(
            st.builds(pb.LookupCustomerRequest, phone=texts(), default_region=texts()),
            st.builds(pb.LookupCustomerRequest, email=texts()),
            st.builds(pb.LookupCustomerRequest, handle=texts()),
            st.builds(pb.LookupCustomerRequest, default_region=texts()),
        ),
        "MergeCustomers": lambda: st.builds(
            pb.MergeCustomersRequest, duplicate_id=ids, survivor_id=ids
        ),
        "SetConsent": lambda: st.builds(
            pb.SetConsentRequest,
            customer_id=ids,
            purpose=texts(),
            granted=st.booleans(),
            source=texts(),
        ),
        "ChangeLifecycle": lambda: st.builds(
            pb.ChangeLifecycleRequest, customer_id=ids, lifecycle=numbers, reason=texts()
        ),
        "ChangeSubscription": lambda: st.builds(
            pb.ChangeSubscriptionRequest, customer_id=ids, status=numbers, plan=texts()
        ),
        "EraseCustomer": lambda: st.builds(pb.EraseCustomerRequest, customer_id=ids),
        "GetCustomerView": lambda: st.builds(
            pb.GetCustomerViewRequest, customer_id=ids, page_size=numbers, page_token=texts()
        ),
    }
    return build[rpc]()


RPCS = pb.DESCRIPTOR.services_by_name["CustomerService"].methods_by_name


@pytest.fixture(scope="module")
def known_ids(threaded_customer_service: ThreadedService) -> tuple[str, ...]:
    """Ids of a few customers, so that calls on existing customers are tried too."""
    stub = threaded_customer_service.stub
    created = [
        stub.CreateCustomer(pb.CreateCustomerRequest(customer=pb.Customer(name=name)))
        for name in ("Taro", "Hanako", "Jiro", "Saburo")
    ]
    return tuple(customer.id for customer in created)


def test_every_rpc_is_covered() -> None:
    assert set(RPCS) == set(RPC_NAMES)


RPC_NAMES = (
    "CreateCustomer",
    "GetCustomer",
    "UpdateCustomer",
    "ListCustomers",
    "AddContactPoint",
    "RemoveContactPoint",
    "LookupCustomer",
    "MergeCustomers",
    "SetConsent",
    "ChangeLifecycle",
    "ChangeSubscription",
    "EraseCustomer",
    "GetCustomerView",
)


@pytest.mark.parametrize("rpc", RPC_NAMES)
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_arbitrary_requests_get_a_clear_status_and_refusals_store_nothing(
    threaded_customer_service: ThreadedService,
    known_ids: tuple[str, ...],
    rpc: str,
    data: st.DataObject,
) -> None:
    request = data.draw(requests(rpc, known_ids), label="request")
    service = threaded_customer_service.service
    call = getattr(threaded_customer_service.stub, rpc)
    before = stored_position(service)
    try:
        call(request, timeout=30)
    except grpc.RpcError as error:
        refusal = refusal_of(error)
        assert refusal.code in CLEAR_CODES, refusal
        assert stored_position(service) == before, f"{rpc} refused but stored: {refusal}"
        if refusal.code is grpc.StatusCode.INVALID_ARGUMENT:
            (field,) = refusal.fields
            top = field.split(".")[0].split("[")[0]
            assert top in {f.name for f in request.DESCRIPTOR.fields} | {"key"}, refusal
