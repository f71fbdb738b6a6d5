"""The CustomerService gRPC servicer: protobuf ⇄ domain, nothing else.

Every rule lives in crmcore (the customer application and its views). This module checks only
what the protobuf form adds (ids that are not UUIDs, unspecified or unknown enum numbers,
update_mask paths that do not exist, malformed etags and regions), names fields as the request
names them, and runs the blocking application calls on the service's thread pool. Domain errors
pass through: the interceptor of crmcore.adapters.grpc maps them to status codes.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar, cast

import grpc
import phonenumbers
from google.protobuf.timestamp_pb2 import Timestamp

from crm.v1 import common_pb2, customer_pb2, customer_pb2_grpc
from crmcore.adapters.grpc.calls import BlockingCalls
from crmcore.adapters.grpc.convert import (
    enum_member,
    enum_numbers,
    numbers_of,
    parse_uuid,
    renamed_fields,
    required_member,
    timestamp_message,
)
from crmcore.application.audit import AuditEntry
from crmcore.application.customer_views import CustomerViews
from crmcore.application.customers import CustomerApplication
from crmcore.application.timeline import TimelineEntry, TimelineKind
from crmcore.domain.customer import (
    Consent,
    ContactPoint,
    ContactPointKind,
    Customer,
    Lifecycle,
    SubscriptionStatus,
)
from crmcore.domain.errors import InvalidValue, NotFound
from crmcore.domain.values import Channel

E = TypeVar("E", bound=enum.Enum)

if TYPE_CHECKING:  # the stubs make it generic; at run time it is not subscriptable
    Context = grpc.aio.ServicerContext[object, object]

#: Profile fields UpdateCustomer may change (update_mask paths).
UPDATABLE_FIELDS = ("name", "company", "language", "time_zone", "segment", "tags", "attributes")


_LIFECYCLES = enum_numbers(Lifecycle, customer_pb2.Lifecycle.Value, "LIFECYCLE_")
_STATUSES = enum_numbers(
    SubscriptionStatus, customer_pb2.SubscriptionStatus.Value, "SUBSCRIPTION_STATUS_"
)
_KINDS = enum_numbers(ContactPointKind, customer_pb2.ContactPointKind.Value, "CONTACT_POINT_KIND_")
_CHANNELS = enum_numbers(Channel, common_pb2.Channel.Value, "CHANNEL_")
_TIMELINE_KINDS = {
    TimelineKind.INTERACTION: customer_pb2.TIMELINE_ENTRY_KIND_INTERACTION,
    TimelineKind.CASE: customer_pb2.TIMELINE_ENTRY_KIND_CASE,
    TimelineKind.SURVEY_RESPONSE: customer_pb2.TIMELINE_ENTRY_KIND_SURVEY,
    TimelineKind.FEEDBACK: customer_pb2.TIMELINE_ENTRY_KIND_FEEDBACK,
}


_LIFECYCLE_NUMBERS = cast(
    dict[Lifecycle, customer_pb2.Lifecycle.ValueType], numbers_of(_LIFECYCLES)
)
_STATUS_NUMBERS = cast(
    dict[SubscriptionStatus, customer_pb2.SubscriptionStatus.ValueType], numbers_of(_STATUSES)
)
_KIND_NUMBERS = cast(
    dict[ContactPointKind, customer_pb2.ContactPointKind.ValueType], numbers_of(_KINDS)
)
_CHANNEL_NUMBERS = cast(dict[Channel, common_pb2.Channel.ValueType], numbers_of(_CHANNELS))


# --- protobuf → domain ----------------------------------------------------------------------


def _region(text: str, field: str = "default_region") -> str | None:
    """An ISO 3166 region phone numbers can be read in ("JP"), None when not given."""
    region = text.strip().upper()
    if not region:
        return None
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise InvalidValue(field, f"{text[:10]!r} is not a region code like 'JP' or 'US'")
    return region


def _etag(text: str) -> int | None:
    if not text:
        return None
    if not (text.isascii() and text.isdigit() and len(text) < 19):
        raise InvalidValue("etag", "not an etag this service issued")
    return int(text)


def _under_customer(field: str) -> str:
    return field if field == "request_id" else f"customer.{field}"


# --- domain → protobuf ----------------------------------------------------------------------


def _contact_point_message(point: ContactPoint) -> customer_pb2.ContactPoint:
    return customer_pb2.ContactPoint(kind=_KIND_NUMBERS[point.kind], value=point.value)


def _consent_message(consent: Consent) -> customer_pb2.Consent:
    return customer_pb2.Consent(
        purpose=consent.purpose,
        granted=consent.granted,
        change_time=timestamp_message(consent.changed_at),
        source=consent.source,
    )


def customer_message(customer: Customer) -> customer_pb2.Customer:
    subscription = customer.subscription
    return customer_pb2.Customer(
        id=str(customer.id),
        name=customer.name,
        company=customer.company,
        language=customer.language,
        time_zone=customer.time_zone,
        segment=customer.segment,
        tags=list(customer.tags),
        attributes=customer.attribute_map(),
        lifecycle=_LIFECYCLE_NUMBERS[customer.lifecycle],
        subscription=customer_pb2.Subscription(
            status=_STATUS_NUMBERS[subscription.status],
            plan=subscription.plan,
            since_time=timestamp_message(subscription.since),
        ),
        contact_points=[_contact_point_message(point) for point in customer.contact_points],
        consents=[_consent_message(consent) for consent in customer.consents],
        merged_into_id="" if customer.merged_into is None else str(customer.merged_into),
        erased=customer.erased,
        create_time=timestamp_message(customer.created_on),
        update_time=timestamp_message(customer.modified_on),
        etag=str(customer.version),
    )


def timeline_entry_message(entry: TimelineEntry) -> customer_pb2.TimelineEntry:
    return customer_pb2.TimelineEntry(
        kind=_TIMELINE_KINDS[entry.kind],
        id=str(entry.id),
        title=entry.title,
        summary=entry.summary,
        status=entry.status,
        channel=(
            common_pb2.CHANNEL_UNSPECIFIED
            if entry.channel is None
            else _CHANNEL_NUMBERS[entry.channel]
        ),
        occur_time=timestamp_message(entry.occurred_at),
        update_time=timestamp_message(entry.updated_at),
    )


def audit_entry_message(entry: AuditEntry) -> customer_pb2.AuditEntry:
    return customer_pb2.AuditEntry(
        occur_time=timestamp_message(entry.occurred_at),
        actor=entry.actor,
        service=entry.service,
        action=entry.action,
        aggregate_id=str(entry.aggregate_id),
        aggregate_version=entry.aggregate_version,
        customer_id=str(entry.customer_id),
        fields=list(entry.fields),
    )


def _optional_time(stamp: Timestamp | None, field: str) -> datetime | None:
    """The time of a Timestamp field, None when unset; InvalidValue when out of range."""
    if stamp is None:
        return None
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidValue(field, "not a valid timestamp") from None


# --- the servicer ---------------------------------------------------------------------------


class CustomerServicer(customer_pb2_grpc.CustomerServiceServicer):
    def __init__(
        self, app: CustomerApplication, views: CustomerViews, calls: BlockingCalls
    ) -> None:
        self.app = app
        self.views = views
        self.calls = calls

    async def CreateCustomer(
        self, request: customer_pb2.CreateCustomerRequest, context: Context
    ) -> customer_pb2.Customer:
        given = request.customer
        lifecycle = enum_member(given.lifecycle, _LIFECYCLES, "customer.lifecycle", required=False)
        points = [
            (
                required_member(point.kind, _KINDS, f"customer.contact_points[{index}].kind").value,
                point.value,
            )
            for index, point in enumerate(given.contact_points)
        ]
        region = _region(request.default_region)
        with renamed_fields(_under_customer):
            customer = await self.calls(
                self.app.register,
                name=given.name,
                company=given.company,
                language=given.language,
                time_zone=given.time_zone,
                segment=given.segment,
                tags=list(given.tags),
                attributes=dict(given.attributes),
                contact_points=points,
                lifecycle=(lifecycle or Lifecycle.PROSPECT).value,
                request_id=request.request_id or None,
                default_region=region,
            )
        return customer_message(customer)

    async def GetCustomer(
        self, request: customer_pb2.GetCustomerRequest, context: Context
    ) -> customer_pb2.Customer:
        customer_id = parse_uuid(request.id, "id")
        return customer_message(await self.calls(self.app.resolve, customer_id))

    async def UpdateCustomer(
        self, request: customer_pb2.UpdateCustomerRequest, context: Context
    ) -> customer_pb2.Customer:
        given = request.customer
        customer_id = parse_uuid(given.id, "customer.id")
        paths = self._update_paths(request)
        expected_version = _etag(request.etag)
        with renamed_fields(lambda field: f"customer.{field}"):
            customer = await self.calls(
                self.app.update_profile,
                customer_id,
                expected_version=expected_version,
                name=given.name if "name" in paths else None,
                company=given.company if "company" in paths else None,
                language=given.language if "language" in paths else None,
                time_zone=given.time_zone if "time_zone" in paths else None,
                segment=given.segment if "segment" in paths else None,
                tags=list(given.tags) if "tags" in paths else None,
                attributes=dict(given.attributes) if "attributes" in paths else None,
            )
        return customer_message(customer)

    @staticmethod
    def _update_paths(request: customer_pb2.UpdateCustomerRequest) -> frozenset[str]:
        paths = list(request.update_mask.paths)
        if not paths:
            given = request.customer
            implied = {
                "name": bool(given.name),
                "company": bool(given.company),
                "language": bool(given.language),
                "time_zone": bool(given.time_zone),
                "segment": bool(given.segment),
                "tags": bool(given.tags),
                "attributes": bool(given.attributes),
            }
            paths = [field for field, given_value in implied.items() if given_value]
            if not paths:
                raise InvalidValue("update_mask", "names no field to change")
            return frozenset(paths)
        if "*" in paths:
            if len(paths) > 1:
                raise InvalidValue("update_mask", "'*' stands alone")
            return frozenset(UPDATABLE_FIELDS)
        for index, path in enumerate(paths):
            if path not in UPDATABLE_FIELDS:
                raise InvalidValue(
                    f"update_mask.paths[{index}]",
                    f"{path[:64]!r} is not a field UpdateCustomer changes; "
                    f"expected one of {', '.join(UPDATABLE_FIELDS)}",
                )
        return frozenset(paths)

    async def ListCustomers(
        self, request: customer_pb2.ListCustomersRequest, context: Context
    ) -> customer_pb2.ListCustomersResponse:
        lifecycle = enum_member(request.lifecycle, _LIFECYCLES, "lifecycle", required=False)
        page = await self.calls(
            self.views.list_customers,
            lifecycle=lifecycle.value if lifecycle is not None else "",
            segment=request.segment,
            tag=request.tag,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return customer_pb2.ListCustomersResponse(
            customers=[customer_message(customer) for customer in page.customers],
            next_page_token=page.next_page_token,
        )

    async def AddContactPoint(
        self, request: customer_pb2.AddContactPointRequest, context: Context
    ) -> customer_pb2.Customer:
        customer_id = parse_uuid(request.customer_id, "customer_id")
        kind = required_member(request.contact_point.kind, _KINDS, "contact_point.kind")
        region = _region(request.default_region)
        customer = await self.calls(
            self.app.add_contact_point,
            customer_id,
            kind.value,
            request.contact_point.value,
            default_region=region,
        )
        return customer_message(customer)

    async def RemoveContactPoint(
        self, request: customer_pb2.RemoveContactPointRequest, context: Context
    ) -> customer_pb2.Customer:
        customer_id = parse_uuid(request.customer_id, "customer_id")
        kind = required_member(request.contact_point.kind, _KINDS, "contact_point.kind")
        region = _region(request.default_region)
        customer = await self.calls(
            self.app.remove_contact_point,
            customer_id,
            kind.value,
            request.contact_point.value,
            default_region=region,
        )
        return customer_message(customer)

    async def LookupCustomer(
        self, request: customer_pb2.LookupCustomerRequest, context: Context
    ) -> customer_pb2.Customer:
        key = request.WhichOneof("key")
        if key is None:
            raise InvalidValue("key", "set one of phone, email, handle")
        raw = str(getattr(request, key))
        kind = {"phone": ContactPointKind.PHONE, "email": ContactPointKind.EMAIL}.get(
            key, ContactPointKind.HANDLE
        )
        region = _region(request.default_region)
        with renamed_fields(lambda field: key):
            customer = await self.calls(self.app.lookup, kind.value, raw, default_region=region)
        if customer is None:
            # The message does not repeat the value: it is personal data, and logs keep it.
            raise NotFound("customer", f"with this {key}")
        return customer_message(customer)

    async def MergeCustomers(
        self, request: customer_pb2.MergeCustomersRequest, context: Context
    ) -> customer_pb2.Customer:
        duplicate_id = parse_uuid(request.duplicate_id, "duplicate_id")
        survivor_id = parse_uuid(request.survivor_id, "survivor_id")
        return customer_message(await self.calls(self.app.merge, duplicate_id, survivor_id))

    async def SetConsent(
        self, request: customer_pb2.SetConsentRequest, context: Context
    ) -> customer_pb2.Customer:
        customer_id = parse_uuid(request.customer_id, "customer_id")
        customer = await self.calls(
            self.app.record_consent,
            customer_id,
            request.purpose,
            request.granted,
            request.source,
        )
        return customer_message(customer)

    async def ChangeLifecycle(
        self, request: customer_pb2.ChangeLifecycleRequest, context: Context
    ) -> customer_pb2.Customer:
        customer_id = parse_uuid(request.customer_id, "customer_id")
        lifecycle = required_member(request.lifecycle, _LIFECYCLES, "lifecycle")
        customer = await self.calls(
            self.app.change_lifecycle, customer_id, lifecycle.value, request.reason
        )
        return customer_message(customer)

    async def ChangeSubscription(
        self, request: customer_pb2.ChangeSubscriptionRequest, context: Context
    ) -> customer_pb2.Customer:
        customer_id = parse_uuid(request.customer_id, "customer_id")
        status = required_member(request.status, _STATUSES, "status")
        with renamed_fields(lambda field: field.removeprefix("subscription.")):
            customer = await self.calls(
                self.app.change_subscription, customer_id, status.value, request.plan
            )
        return customer_message(customer)

    async def EraseCustomer(
        self, request: customer_pb2.EraseCustomerRequest, context: Context
    ) -> customer_pb2.EraseCustomerResponse:
        customer_id = parse_uuid(request.customer_id, "customer_id")
        customer = await self.calls(self.app.erase, customer_id)
        return customer_pb2.EraseCustomerResponse(
            customer_id=str(customer.id), erase_time=timestamp_message(customer.modified_on)
        )

    async def GetCustomerView(
        self, request: customer_pb2.GetCustomerViewRequest, context: Context
    ) -> customer_pb2.CustomerView:
        customer_id = parse_uuid(request.customer_id, "customer_id")
        view = await self.calls(
            self.views.customer_view,
            customer_id,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return customer_pb2.CustomerView(
            customer=customer_message(view.customer),
            timeline=[timeline_entry_message(entry) for entry in view.timeline],
            next_page_token=view.next_page_token,
        )

    async def ListCustomerAudit(
        self, request: customer_pb2.ListCustomerAuditRequest, context: Context
    ) -> customer_pb2.ListCustomerAuditResponse:
        customer_id = parse_uuid(request.customer_id, "customer_id")
        since = _optional_time(
            request.start_time if request.HasField("start_time") else None, "start_time"
        )
        until = _optional_time(
            request.end_time if request.HasField("end_time") else None, "end_time"
        )
        page = await self.calls(
            self.views.customer_audit,
            customer_id,
            page_size=request.page_size,
            page_token=request.page_token,
            since=since,
            until=until,
        )
        return customer_pb2.ListCustomerAuditResponse(
            customer_id=str(page.customer_id),
            entries=[audit_entry_message(entry) for entry in page.entries],
            next_page_token=page.next_page_token,
        )
