"""The customer bounded context: one record per customer, and the indexes that keep it unique.

`Customer` holds the profile, contact points, consents, lifecycle and subscription
(DOMAIN.md, "Customer"). A contact point belongs to at most one customer; the store enforces
that with one `ContactPointClaim` aggregate per contact point, whose id is derived from the
contact point (a keyed hash, so the id does not give the contact point away), written in the
same transaction as the customer's own event. `RequestKey` does the same for the `request_id`
of idempotent registrations.

Personal data and erasure: each customer event names the fields that hold personal data
(`personal_fields`) and can give its `redacted()` form. The store seals those fields with the
customer's own key (crmcore.adapters.mapper), and erasing a customer destroys that key; the
redacted forms are what is read afterwards, and what is published on the bus.

Every command checks its rules and returns events without changing anything; a broken rule
raises a `DomainError` and returns nothing.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import re
import zoneinfo
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import ClassVar, Self, TypeVar
from uuid import NAMESPACE_URL, UUID, uuid5

import msgspec

from crmcore.domain import values
from crmcore.domain.base import Aggregate, Event, advance
from crmcore.domain.errors import AlreadyExists, InvalidValue, NotFound, RuleViolation

T = TypeVar("T")

MAX_CONTACT_POINTS = 50
MAX_CONSENTS = 50
MAX_HANDLE_LENGTH = 128
MAX_ATTRIBUTE_KEY_LENGTH = 64
MAX_ATTRIBUTE_VALUE_LENGTH = 1_000
MAX_SEGMENT_LENGTH = 64
MAX_REQUEST_ID_LENGTH = 128

#: Key of the hash that turns a contact point into its claim id. This fixed value is for
#: development and tests only: a deployment sets its own secret (and never changes it, since
#: the claims of existing contact points are found by it).
DEVELOPMENT_INDEX_SECRET = b"crm-development-index-secret: not for production"
REQUEST_KEY_NAMESPACE = uuid5(NAMESPACE_URL, "urn:crm:customer:request-id")

_NETWORK = re.compile(r"[a-z][a-z0-9_.-]{0,31}")
_PURPOSE = re.compile(r"[a-z][a-z0-9_]{0,63}")


class Lifecycle(enum.StrEnum):
    PROSPECT = "prospect"
    ACTIVE = "active"
    CHURNED = "churned"


LIFECYCLE_TRANSITIONS: frozenset[tuple[Lifecycle, Lifecycle]] = frozenset(
    {
        (Lifecycle.PROSPECT, Lifecycle.ACTIVE),
        (Lifecycle.PROSPECT, Lifecycle.CHURNED),
        (Lifecycle.ACTIVE, Lifecycle.CHURNED),
        (Lifecycle.CHURNED, Lifecycle.ACTIVE),  # win-back
    }
)


class SubscriptionStatus(enum.StrEnum):
    NONE = "none"
    TRIAL = "trial"
    ACTIVE = "active"
    PAUSED = "paused"
    CANCELLED = "cancelled"


# Staying in the same status is a plan change (upgrade, downgrade), so it needs a new plan.
SUBSCRIPTION_TRANSITIONS: Mapping[SubscriptionStatus, frozenset[SubscriptionStatus]] = {
    SubscriptionStatus.NONE: frozenset({SubscriptionStatus.TRIAL, SubscriptionStatus.ACTIVE}),
    SubscriptionStatus.TRIAL: frozenset(
        {SubscriptionStatus.TRIAL, SubscriptionStatus.ACTIVE, SubscriptionStatus.CANCELLED}
    ),
    SubscriptionStatus.ACTIVE: frozenset(
        {SubscriptionStatus.ACTIVE, SubscriptionStatus.PAUSED, SubscriptionStatus.CANCELLED}
    ),
    SubscriptionStatus.PAUSED: frozenset(
        {SubscriptionStatus.PAUSED, SubscriptionStatus.ACTIVE, SubscriptionStatus.CANCELLED}
    ),
    SubscriptionStatus.CANCELLED: frozenset({SubscriptionStatus.TRIAL, SubscriptionStatus.ACTIVE}),
}


class ContactPointKind(enum.StrEnum):
    EMAIL = "email"
    PHONE = "phone"
    HANDLE = "handle"


# Contact points validated recently: checking one of them again (a command re-checks what the
# application normalised a moment before) is then a set lookup instead of a second e-mail or
# phone parse, the costliest step of a registration.
_NORMAL_FORMS: dict[ContactPoint, None] = {}
_MAX_NORMAL_FORMS = 10_000


def _normal_form(point: ContactPoint) -> ContactPoint:
    """Remembers that `point` is in normal form (it was just validated) and returns it."""
    if len(_NORMAL_FORMS) >= _MAX_NORMAL_FORMS:
        _NORMAL_FORMS.clear()
    _NORMAL_FORMS[point] = None
    return point


class ContactPoint(msgspec.Struct, frozen=True, kw_only=True):
    """A normalised way to reach a customer: an e-mail, an E.164 phone number, or a
    `<network>:<handle>` on a messaging or social network (`line:taro_y`)."""

    kind: ContactPointKind
    value: str

    @classmethod
    def email(cls, raw: str, field: str = "contact_point.value") -> ContactPoint:
        return _normal_form(cls(kind=ContactPointKind.EMAIL, value=values.email(raw, field)))

    @classmethod
    def phone(
        cls, raw: str, field: str = "contact_point.value", *, default_region: str | None = None
    ) -> ContactPoint:
        return _normal_form(
            cls(
                kind=ContactPointKind.PHONE,
                value=values.phone(raw, field, default_region=default_region),
            )
        )

    @classmethod
    def handle(cls, network: str, handle: str, field: str = "contact_point.value") -> ContactPoint:
        network = network.strip().lower()
        if not _NETWORK.fullmatch(network):
            raise InvalidValue(field, f"network {network!r} is not a short lower-case name")
        handle = values.required_text(handle, field, max_length=MAX_HANDLE_LENGTH)
        if any(ch.isspace() for ch in handle):
            raise InvalidValue(field, "a handle contains no spaces")
        return _normal_form(cls(kind=ContactPointKind.HANDLE, value=f"{network}:{handle}"))

    @classmethod
    def parse(
        cls,
        kind: str,
        raw: str,
        field: str = "contact_point",
        *,
        default_region: str | None = None,
    ) -> ContactPoint:
        """The normalised contact point of `kind` for raw input; a handle is `network:handle`.

        Normalising an already normalised value gives it back unchanged, so stored values and
        lookups agree."""
        checked_kind = values.enum_value(ContactPointKind, kind, f"{field}.kind")
        value_field = f"{field}.value"
        if checked_kind is ContactPointKind.EMAIL:
            return cls.email(raw, value_field)
        if checked_kind is ContactPointKind.PHONE:
            return cls.phone(raw, value_field, default_region=default_region)
        network, separator, handle = raw.partition(":")
        if not separator:
            raise InvalidValue(value_field, "a handle is written network:handle, e.g. line:taro_y")
        return cls.handle(network, handle, value_field)

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


class Attribute(msgspec.Struct, frozen=True, kw_only=True):
    """One custom attribute of a customer (`plan_tier` = `gold`)."""

    key: str
    value: str


class Consent(msgspec.Struct, frozen=True, kw_only=True):
    """Whether the customer agreed to one purpose (`marketing_email`), when and how we know."""

    purpose: str
    granted: bool
    changed_at: datetime
    source: str


class Subscription(msgspec.Struct, frozen=True, kw_only=True):
    status: SubscriptionStatus = SubscriptionStatus.NONE
    plan: str = ""
    since: datetime | None = None


# --- validation of raw profile values -------------------------------------------------------


def _language(value: str, field: str = "language") -> str:
    """A short BCP 47 tag in canonical case (`EN-us` → `en-US`), or "" when unknown."""
    return values.language_tag(value, field) if value.strip() else ""


def _time_zone(value: str, field: str = "time_zone") -> str:
    """An IANA time zone name (`Asia/Tokyo`), or "" when unknown."""
    value = value.strip()
    if not value:
        return ""
    if value not in _known_time_zones():
        raise InvalidValue(field, f"{value!r} is not an IANA time zone like 'Asia/Tokyo'")
    return value


@functools.cache
def _known_time_zones() -> frozenset[str]:
    # A membership test, not ZoneInfo(value): that opens files named by the input, and
    # "Asia" or an over-long name fails with OS errors instead of "not found". "localtime"
    # is the server's own zone, not a customer's.
    return frozenset(zoneinfo.available_timezones() - {"localtime"})


def _attributes(raw: Mapping[str, str], field: str = "attributes") -> tuple[Attribute, ...]:
    """Custom attributes, bounded in number and size, in key order (so equal maps compare equal)."""
    if len(raw) > values.MAX_ATTRIBUTES:
        raise InvalidValue(field, f"more than {values.MAX_ATTRIBUTES} attributes")
    checked: dict[str, str] = {}
    for key, value in raw.items():
        checked_key = values.required_text(key, f"{field}.key", max_length=MAX_ATTRIBUTE_KEY_LENGTH)
        if checked_key in checked:
            raise InvalidValue(f"{field}[{checked_key}]", "key given twice")
        checked[checked_key] = values.text(
            value, f"{field}[{checked_key}]", max_length=MAX_ATTRIBUTE_VALUE_LENGTH
        )
    return tuple(Attribute(key=key, value=checked[key]) for key in sorted(checked))


def _purpose(value: str, field: str = "purpose") -> str:
    value = value.strip()
    if not _PURPOSE.fullmatch(value):
        raise InvalidValue(field, f"{value!r} is not a purpose key like 'marketing_email'")
    return value


def _contact_points(
    raw: Iterable[ContactPoint], field: str = "contact_points"
) -> tuple[ContactPoint, ...]:
    """Contact points checked again (normal forms are fixed points), duplicates dropped."""
    seen: dict[ContactPoint, None] = {}
    for index, point in enumerate(raw):
        if point not in _NORMAL_FORMS:
            point = ContactPoint.parse(point.kind, point.value, f"{field}[{index}]")
        seen[point] = None
    if len(seen) > MAX_CONTACT_POINTS:
        raise InvalidValue(field, f"more than {MAX_CONTACT_POINTS} contact points")
    return tuple(seen)


def _company(value: str) -> str:
    return values.text(value, "company", max_length=values.MAX_NAME_LENGTH).strip()


def _segment(value: str) -> str:
    return values.text(value, "segment", max_length=MAX_SEGMENT_LENGTH).strip()


def _changed(new: T | None, current: T) -> T | None:
    """`new` if it was given and differs from `current`, else None (= unchanged)."""
    return new if new is not None and new != current else None


# --- the customer ---------------------------------------------------------------------------


class Customer(Aggregate, frozen=True, kw_only=True):
    name: str
    company: str = ""
    language: str = ""
    time_zone: str = ""
    segment: str = ""
    tags: tuple[str, ...] = ()
    attributes: tuple[Attribute, ...] = ()
    lifecycle: Lifecycle = Lifecycle.PROSPECT
    subscription: Subscription = msgspec.field(default_factory=Subscription)
    contact_points: tuple[ContactPoint, ...] = ()
    consents: tuple[Consent, ...] = ()
    merged_into: UUID | None = None
    #: Every customer merged into this one (directly or through a chain of merges).
    merged_ids: tuple[UUID, ...] = ()
    erased: bool = False

    # --- queries ---

    def attribute_map(self) -> dict[str, str]:
        return {attribute.key: attribute.value for attribute in self.attributes}

    def consent_for(self, purpose: str) -> Consent | None:
        return next((c for c in self.consents if c.purpose == purpose), None)

    def has_contact_point(self, contact_point: ContactPoint) -> bool:
        return contact_point in self.contact_points

    # --- commands ---

    @classmethod
    def register(
        cls,
        customer_id: UUID,
        *,
        name: str,
        company: str = "",
        language: str = "",
        time_zone: str = "",
        segment: str = "",
        tags: Sequence[str] = (),
        attributes: Mapping[str, str] | None = None,
        contact_points: Sequence[ContactPoint] = (),
        lifecycle: str = Lifecycle.PROSPECT,
        at: datetime,
    ) -> CustomerRegistered:
        return CustomerRegistered(
            originator_id=customer_id,
            originator_version=1,
            timestamp=values.aware(at, "at"),
            name=values.name(name),
            company=_company(company),
            language=_language(language),
            time_zone=_time_zone(time_zone),
            segment=_segment(segment),
            tags=values.tags(tuple(tags)),
            attributes=_attributes(attributes or {}),
            contact_points=_contact_points(contact_points),
            lifecycle=values.enum_value(Lifecycle, lifecycle, "lifecycle"),
        )

    def update_profile(
        self,
        *,
        name: str | None = None,
        company: str | None = None,
        language: str | None = None,
        time_zone: str | None = None,
        segment: str | None = None,
        tags: Sequence[str] | None = None,
        attributes: Mapping[str, str] | None = None,
        at: datetime,
    ) -> tuple[CustomerProfileUpdated, ...]:
        """The profile fields that were given and differ; no event when nothing changes."""
        self._ensure_changeable()
        proposed = CustomerProfileUpdated(
            originator_id=self.id,
            originator_version=self.version + 1,
            timestamp=values.aware(at, "at"),
            name=_changed(None if name is None else values.name(name), self.name),
            company=_changed(None if company is None else _company(company), self.company),
            language=_changed(None if language is None else _language(language), self.language),
            time_zone=_changed(
                None if time_zone is None else _time_zone(time_zone), self.time_zone
            ),
            segment=_changed(None if segment is None else _segment(segment), self.segment),
            tags=_changed(None if tags is None else values.tags(tuple(tags)), self.tags),
            attributes=_changed(
                None if attributes is None else _attributes(attributes), self.attributes
            ),
        )
        changed = tuple(
            field
            for field in CustomerProfileUpdated.PROFILE_FIELDS
            if getattr(proposed, field) is not None
        )
        if not changed:
            return ()
        return (msgspec.structs.replace(proposed, changed=changed),)

    def add_contact_point(self, contact_point: ContactPoint, *, at: datetime) -> ContactPointAdded:
        self._ensure_changeable()
        contact_point = ContactPoint.parse(contact_point.kind, contact_point.value)
        if self.has_contact_point(contact_point):
            raise AlreadyExists(f"customer {self.id} already has {contact_point}")
        if len(self.contact_points) >= MAX_CONTACT_POINTS:
            raise RuleViolation(f"customer {self.id} has {MAX_CONTACT_POINTS} contact points")
        return ContactPointAdded(
            originator_id=self.id,
            originator_version=self.version + 1,
            timestamp=values.aware(at, "at"),
            contact_point=contact_point,
        )

    def remove_contact_point(
        self, contact_point: ContactPoint, *, at: datetime
    ) -> ContactPointRemoved:
        self._ensure_changeable()
        if not self.has_contact_point(contact_point):
            raise NotFound("contact point", f"{contact_point} of customer {self.id}")
        return ContactPointRemoved(
            originator_id=self.id,
            originator_version=self.version + 1,
            timestamp=values.aware(at, "at"),
            contact_point=contact_point,
        )

    def record_consent(
        self, purpose: str, granted: bool, source: str, *, at: datetime
    ) -> ConsentRecorded:
        """Records a consent decision; repeating an unchanged one is kept too (as evidence)."""
        self._ensure_changeable()
        purpose = _purpose(purpose)
        if self.consent_for(purpose) is None and len(self.consents) >= MAX_CONSENTS:
            raise RuleViolation(f"customer {self.id} has {MAX_CONSENTS} consent purposes")
        return ConsentRecorded(
            originator_id=self.id,
            originator_version=self.version + 1,
            timestamp=values.aware(at, "at"),
            purpose=purpose,
            granted=granted,
            source=values.required_text(source, "source"),
        )

    def change_lifecycle(self, to: str, reason: str = "", *, at: datetime) -> LifecycleChanged:
        self._ensure_changeable()
        target = values.enum_value(Lifecycle, to, "lifecycle")
        if (self.lifecycle, target) not in LIFECYCLE_TRANSITIONS:
            raise RuleViolation(f"customer {self.id} cannot go from {self.lifecycle} to {target}")
        return LifecycleChanged(
            originator_id=self.id,
            originator_version=self.version + 1,
            timestamp=values.aware(at, "at"),
            previous=self.lifecycle,
            lifecycle=target,
            reason=values.text(reason, "reason", max_length=values.MAX_SHORT_TEXT_LENGTH).strip(),
        )

    def change_subscription(
        self, status: str, plan: str = "", *, at: datetime
    ) -> SubscriptionChanged:
        """Moves the subscription on; an empty `plan` keeps the current plan."""
        self._ensure_changeable()
        target = values.enum_value(SubscriptionStatus, status, "subscription.status")
        checked_plan = values.text(plan, "subscription.plan", max_length=MAX_SEGMENT_LENGTH).strip()
        current = self.subscription
        new_plan = checked_plan or current.plan
        if target not in SUBSCRIPTION_TRANSITIONS[current.status] or (
            target == current.status and new_plan == current.plan
        ):
            raise RuleViolation(
                f"customer {self.id}: subscription cannot go from {current.status} "
                f"({current.plan or 'no plan'}) to {target} ({new_plan or 'no plan'})"
            )
        return SubscriptionChanged(
            originator_id=self.id,
            originator_version=self.version + 1,
            timestamp=values.aware(at, "at"),
            previous=current.status,
            status=target,
            plan=new_plan,
        )

    def merge_into(self, survivor: Customer, *, at: datetime) -> CustomerMergedInto:
        """This customer is a duplicate of `survivor`; its contact points move there."""
        if survivor.id == self.id:
            raise RuleViolation(f"customer {self.id} cannot be merged into itself")
        self._ensure_changeable()
        return CustomerMergedInto(
            originator_id=self.id,
            originator_version=self.version + 1,
            timestamp=values.aware(at, "at"),
            survivor_id=survivor.id,
        )

    def absorb(self, duplicate: Customer, *, at: datetime) -> DuplicateAbsorbed:
        """The survivor's side of a merge: takes over the duplicate's contact points."""
        if duplicate.id == self.id:
            raise RuleViolation(f"customer {self.id} cannot absorb itself")
        self._ensure_changeable()
        taken_over = tuple(p for p in duplicate.contact_points if not self.has_contact_point(p))
        if len(self.contact_points) + len(taken_over) > MAX_CONTACT_POINTS:
            raise RuleViolation(
                f"customer {self.id} would have more than {MAX_CONTACT_POINTS} contact points"
            )
        return DuplicateAbsorbed(
            originator_id=self.id,
            originator_version=self.version + 1,
            timestamp=values.aware(at, "at"),
            duplicate_id=duplicate.id,
            contact_points=taken_over,
            merged_ids=duplicate.merged_ids,
        )

    def erase(self, *, at: datetime) -> CustomerErased:
        """Erasure on request: the state forgets the personal data; the event carries none."""
        self._ensure_changeable()
        return CustomerErased(
            originator_id=self.id,
            originator_version=self.version + 1,
            timestamp=values.aware(at, "at"),
        )

    def _ensure_changeable(self) -> None:
        if self.erased:
            raise RuleViolation(f"customer {self.id} was erased")
        if self.merged_into is not None:
            raise RuleViolation(f"customer {self.id} was merged into {self.merged_into}")


class CustomerEvent(Event[Customer], frozen=True, kw_only=True):
    context: ClassVar[str] = "customer"

    #: Top-level fields holding personal data: stored sealed with the customer's own key and
    #: never published (see the module docstring). Lifecycle, segment, subscription and
    #: consent purposes are not among them: they are needed for KPIs and say nothing about
    #: who the customer is once the rest is gone.
    personal_fields: ClassVar[frozenset[str]] = frozenset()

    def personal_data_subject(self) -> UUID:
        return self.originator_id

    def redacted(self) -> Self:
        """This event without personal data: each personal field blanked ("" for text, () for
        tuples, a contact point without its value). The form published on the bus, and the
        one read back once the customer's key was destroyed."""
        changes = {
            name: _blank(getattr(self, name))
            for name in self.personal_fields
            if getattr(self, name) is not None
        }
        return msgspec.structs.replace(self, **changes) if changes else self

    def bus_attributes(self) -> dict[str, str]:
        return {"customerid": str(self.originator_id)}


def _blank(value: object) -> object:
    if isinstance(value, str):
        return ""
    if isinstance(value, tuple):
        return ()
    if isinstance(value, ContactPoint):
        return ContactPoint(kind=value.kind, value="")
    raise TypeError(f"no blank value for a personal field of type {type(value).__name__}")


class CustomerRegistered(CustomerEvent, frozen=True, kw_only=True):
    personal_fields: ClassVar[frozenset[str]] = frozenset(
        {"name", "company", "language", "time_zone", "tags", "attributes", "contact_points"}
    )

    name: str
    company: str
    language: str
    time_zone: str
    segment: str
    tags: tuple[str, ...]
    attributes: tuple[Attribute, ...]
    contact_points: tuple[ContactPoint, ...]
    lifecycle: Lifecycle

    def mutate(self, state: Customer | None) -> Customer:
        return Customer(
            id=self.originator_id,
            version=self.originator_version,
            created_on=self.timestamp,
            modified_on=self.timestamp,
            name=self.name,
            company=self.company,
            language=self.language,
            time_zone=self.time_zone,
            segment=self.segment,
            tags=self.tags,
            attributes=self.attributes,
            contact_points=self.contact_points,
            lifecycle=self.lifecycle,
        )


class CustomerProfileUpdated(CustomerEvent, frozen=True, kw_only=True, omit_defaults=True):
    """Carries only the fields that changed (the others are None); `changed` names them."""

    PROFILE_FIELDS: ClassVar[tuple[str, ...]] = (
        "name",
        "company",
        "language",
        "time_zone",
        "segment",
        "tags",
        "attributes",
    )
    personal_fields: ClassVar[frozenset[str]] = frozenset(PROFILE_FIELDS) - {"segment"}

    changed: tuple[str, ...] = ()
    name: str | None = None
    company: str | None = None
    language: str | None = None
    time_zone: str | None = None
    segment: str | None = None
    tags: tuple[str, ...] | None = None
    attributes: tuple[Attribute, ...] | None = None

    def apply(self, state: Customer) -> Customer:
        return advance(state, self, **{field: getattr(self, field) for field in self.changed})


class ContactPointAdded(CustomerEvent, frozen=True, kw_only=True):
    personal_fields: ClassVar[frozenset[str]] = frozenset({"contact_point"})

    contact_point: ContactPoint

    def apply(self, state: Customer) -> Customer:
        return advance(state, self, contact_points=(*state.contact_points, self.contact_point))


class ContactPointRemoved(CustomerEvent, frozen=True, kw_only=True):
    personal_fields: ClassVar[frozenset[str]] = frozenset({"contact_point"})

    contact_point: ContactPoint

    def apply(self, state: Customer) -> Customer:
        remaining = tuple(p for p in state.contact_points if p != self.contact_point)
        return advance(state, self, contact_points=remaining)


class ConsentRecorded(CustomerEvent, frozen=True, kw_only=True):
    # How we know (a call, a form) may say who the customer is; purpose and decision do not.
    personal_fields: ClassVar[frozenset[str]] = frozenset({"source"})

    purpose: str
    granted: bool
    source: str

    def apply(self, state: Customer) -> Customer:
        consent = Consent(
            purpose=self.purpose,
            granted=self.granted,
            changed_at=self.timestamp,
            source=self.source,
        )
        others = (c for c in state.consents if c.purpose != self.purpose)
        return advance(state, self, consents=tuple(sorted((*others, consent), key=_by_purpose)))


def _by_purpose(consent: Consent) -> str:
    return consent.purpose


class LifecycleChanged(CustomerEvent, frozen=True, kw_only=True):
    personal_fields: ClassVar[frozenset[str]] = frozenset({"reason"})

    previous: Lifecycle
    lifecycle: Lifecycle
    reason: str = ""

    def apply(self, state: Customer) -> Customer:
        return advance(state, self, lifecycle=self.lifecycle)


class SubscriptionChanged(CustomerEvent, frozen=True, kw_only=True):
    previous: SubscriptionStatus
    status: SubscriptionStatus
    plan: str

    def apply(self, state: Customer) -> Customer:
        subscription = Subscription(status=self.status, plan=self.plan, since=self.timestamp)
        return advance(state, self, subscription=subscription)


class CustomerMergedInto(CustomerEvent, frozen=True, kw_only=True):
    """On the duplicate: it now lives on as `survivor_id` (its contact points moved there)."""

    survivor_id: UUID

    def apply(self, state: Customer) -> Customer:
        return advance(state, self, merged_into=self.survivor_id, contact_points=())


class DuplicateAbsorbed(CustomerEvent, frozen=True, kw_only=True):
    """On the survivor: `duplicate_id` was merged into it, bringing these contact points
    (and the customers merged into the duplicate before, `merged_ids`)."""

    personal_fields: ClassVar[frozenset[str]] = frozenset({"contact_points"})

    duplicate_id: UUID
    contact_points: tuple[ContactPoint, ...]
    merged_ids: tuple[UUID, ...] = ()

    def apply(self, state: Customer) -> Customer:
        return advance(
            state,
            self,
            contact_points=(*state.contact_points, *self.contact_points),
            merged_ids=(*state.merged_ids, self.duplicate_id, *self.merged_ids),
        )


class CustomerErased(CustomerEvent, frozen=True, kw_only=True):
    """Erasure on request. Deliberately carries no personal data."""

    def apply(self, state: Customer) -> Customer:
        # Lifecycle, segment and subscription stay: they are not personal and keep KPIs
        # (retention, churn) consistent.
        return advance(
            state,
            self,
            erased=True,
            name="",
            company="",
            language="",
            time_zone="",
            tags=(),
            attributes=(),
            contact_points=(),
            consents=(),
        )


# --- uniqueness of contact points -----------------------------------------------------------


class ContactPointInUse(AlreadyExists):
    """The contact point given in `field` already belongs to another customer."""

    def __init__(self, field: str, contact_point: ContactPoint) -> None:
        super().__init__(f"{field}: {contact_point} already belongs to another customer")
        self.field = field
        self.contact_point = contact_point


def claim_id(contact_point: ContactPoint, secret: bytes = DEVELOPMENT_INDEX_SECRET) -> UUID:
    """The id of the claim on a (normalised) contact point: the same for equal values.

    A keyed hash (HMAC-SHA256 with the service's index secret), not a plain one: phone numbers
    are few enough to try them all, so a plain hash would give every contact point away to
    whoever sees a claim id (in the store, or on the bus), erased customers' included."""
    message = f"{contact_point.kind}:{contact_point.value}".encode()
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return UUID(bytes=digest[:16], version=4)


class ContactPointClaim(Aggregate, frozen=True, kw_only=True):
    """Which customer holds one contact point (`holder`), if any. Looking a customer up by
    contact point reads this one aggregate. Its events carry no contact data."""

    holder: UUID | None

    @classmethod
    def take(
        cls,
        current: ContactPointClaim | None,
        contact_point: ContactPoint,
        customer_id: UUID,
        *,
        at: datetime,
        field: str = "contact_point",
        secret: bytes = DEVELOPMENT_INDEX_SECRET,
    ) -> ClaimTaken:
        """Claims the contact point for `customer_id`; `current` is the claim so far (None if
        it was never taken). Held by anyone → ContactPointInUse naming `field`. `secret` is
        the index secret the claim id is derived with (see `claim_id`)."""
        if current is not None and current.holder is not None:
            raise ContactPointInUse(field, contact_point)
        return ClaimTaken(
            originator_id=claim_id(contact_point, secret) if current is None else current.id,
            originator_version=1 if current is None else current.version + 1,
            timestamp=values.aware(at, "at"),
            customer_id=customer_id,
        )

    def release(self, customer_id: UUID, *, at: datetime) -> ClaimReleased:
        if self.holder != customer_id:
            raise RuleViolation(f"claim {self.id} is not held by customer {customer_id}")
        return ClaimReleased(
            originator_id=self.id,
            originator_version=self.version + 1,
            timestamp=values.aware(at, "at"),
            customer_id=customer_id,
        )


class ClaimEvent(Event[ContactPointClaim], frozen=True, kw_only=True):
    context: ClassVar[str] = "customer"

    customer_id: UUID

    def bus_attributes(self) -> dict[str, str]:
        return {"customerid": str(self.customer_id)}


class ClaimTaken(ClaimEvent, frozen=True, kw_only=True):
    def mutate(self, state: ContactPointClaim | None) -> ContactPointClaim:
        if state is None:
            return ContactPointClaim(
                id=self.originator_id,
                version=self.originator_version,
                created_on=self.timestamp,
                modified_on=self.timestamp,
                holder=self.customer_id,
            )
        return advance(state, self, holder=self.customer_id)


class ClaimReleased(ClaimEvent, frozen=True, kw_only=True):
    def apply(self, state: ContactPointClaim) -> ContactPointClaim:
        return advance(state, self, holder=None)


# --- idempotent registration ----------------------------------------------------------------


def request_key_id(request_id: str) -> UUID:
    checked = values.required_text(request_id, "request_id", max_length=MAX_REQUEST_ID_LENGTH)
    return uuid5(REQUEST_KEY_NAMESPACE, checked)


class RequestKey(Aggregate, frozen=True, kw_only=True):
    """The customer that the registration with one `request_id` created. Created once: a
    second creation in the store fails, so a retried request finds the first result."""

    customer_id: UUID

    @classmethod
    def record(cls, request_id: str, customer_id: UUID, *, at: datetime) -> RequestKeyRecorded:
        return RequestKeyRecorded(
            originator_id=request_key_id(request_id),
            originator_version=1,
            timestamp=values.aware(at, "at"),
            customer_id=customer_id,
        )


class RequestKeyRecorded(Event[RequestKey], frozen=True, kw_only=True):
    context: ClassVar[str] = "customer"

    customer_id: UUID

    def bus_attributes(self) -> dict[str, str]:
        return {"customerid": str(self.customer_id)}

    def mutate(self, state: RequestKey | None) -> RequestKey:
        return RequestKey(
            id=self.originator_id,
            version=self.originator_version,
            created_on=self.timestamp,
            modified_on=self.timestamp,
            customer_id=self.customer_id,
        )
