"""Commands and queries of the customer context: profiles, contact points and identity lookup.

Uniqueness and idempotency are kept by the store, not by a read-then-check alone: every
command that gives a contact point to a customer also writes the contact point's claim in the
same `record()` call, and a registration with a `request_id` writes its request key there too.
Two writers racing for the same claim or key cannot both succeed; the loser reads again and
gets the right answer (AlreadyExists, or the customer the first request created).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TypeVar
from uuid import UUID, uuid4

from crmcore.application.base import CRMApplication
from crmcore.config import PersistenceSettings
from crmcore.domain.base import Aggregate, DomainEvent
from crmcore.domain.customer import (
    ClaimReleased,
    ClaimTaken,
    ContactPoint,
    ContactPointClaim,
    Customer,
    Lifecycle,
    RequestKey,
    claim_id,
    request_key_id,
)
from crmcore.domain.errors import ConcurrencyConflict, NotFound, RuleViolation

T = TypeVar("T")
TState = TypeVar("TState", bound=Aggregate)

#: A contact point as callers give it: already a `ContactPoint`, or raw `(kind, value)`.
ContactPointInput = ContactPoint | tuple[str, str]

# Merges never form cycles (a merged customer refuses further merges); the bound is a guard.
MAX_MERGE_HOPS = 16


class CustomerApplication(CRMApplication):
    name = "customers"
    aggregate_kind = "customer"

    def __init__(
        self,
        persistence: PersistenceSettings | None = None,
        *,
        default_region: str | None = None,
        group_commit: bool = False,
    ) -> None:
        #: Region (ISO 3166 alpha-2, e.g. "JP") of phone numbers written without a country code.
        self.default_region = default_region.strip().upper() if default_region else None
        super().__init__(persistence, group_commit=group_commit)

    # --- queries ---

    def get(self, customer_id: UUID) -> Customer:
        """The customer as stored (a merged duplicate is returned as is; see `lookup`)."""
        return self.load(customer_id, Customer)

    def lookup(self, kind: str, raw_value: str) -> Customer | None:
        """The customer holding a contact point (screen pop), following merges to the survivor.

        The raw value is normalised like stored values, so "090-1234-5678" (with default
        region JP) finds "+81 90 1234 5678". One claim read, one customer read."""
        point = self._contact_point((kind, raw_value), "contact_point")
        claim = self._claim(point)
        if claim is None or claim.holder is None:
            return None
        return self._survivor(self.get(claim.holder))

    # --- commands ---

    def register(
        self,
        *,
        name: str,
        company: str = "",
        language: str = "",
        time_zone: str = "",
        segment: str = "",
        tags: Sequence[str] = (),
        attributes: Mapping[str, str] | None = None,
        contact_points: Iterable[ContactPointInput] = (),
        lifecycle: str = Lifecycle.PROSPECT,
        request_id: str | None = None,
        at: datetime | None = None,
    ) -> Customer:
        """Registers a new customer with its contact points.

        The same `request_id` again returns the customer created the first time and stores
        nothing. A contact point held by another customer → ContactPointInUse (AlreadyExists)
        naming `contact_points[i]`, and nothing is stored."""
        when = _now(at)
        points = self._distinct_contact_points(contact_points, "contact_points")
        key_id = None if request_id is None else request_key_id(request_id)

        def attempt() -> Customer:
            if key_id is not None:
                earlier = self._find(key_id, RequestKey)
                if earlier is not None:
                    return self.get(earlier.customer_id)
            registered = Customer.register(
                uuid4(),
                name=name,
                company=company,
                language=language,
                time_zone=time_zone,
                segment=segment,
                tags=tags,
                attributes=attributes,
                contact_points=[point for _, point in points],
                lifecycle=lifecycle,
                at=when,
            )
            claims = [
                self._take_claim(point, registered.originator_id, when, f"contact_points[{index}]")
                for index, point in points
            ]
            keys = (
                []
                if request_id is None
                else [RequestKey.record(request_id, registered.originator_id, at=when)]
            )
            self.record(registered, *claims, *keys)
            return registered.mutate(None)

        return _once_more_on_conflict(attempt)

    def update_profile(
        self,
        customer_id: UUID,
        *,
        expected_version: int | None,
        name: str | None = None,
        company: str | None = None,
        language: str | None = None,
        time_zone: str | None = None,
        segment: str | None = None,
        tags: Sequence[str] | None = None,
        attributes: Mapping[str, str] | None = None,
        at: datetime | None = None,
    ) -> Customer:
        """Changes the given profile fields (None = leave as is; `attributes` replaces the
        whole map). `expected_version` is the etag: a different current version →
        ConcurrencyConflict. Nothing is stored when no value changes."""
        when = _now(at)

        def attempt() -> Customer:
            customer = self.get(customer_id)
            if expected_version is not None and expected_version != customer.version:
                raise ConcurrencyConflict(
                    f"customer {customer_id} is at version {customer.version}, "
                    f"not {expected_version}; read it again"
                )
            events = customer.update_profile(
                name=name,
                company=company,
                language=language,
                time_zone=time_zone,
                segment=segment,
                tags=tags,
                attributes=attributes,
                at=when,
            )
            return self._record_on(customer, *events)

        return _once_more_on_conflict(attempt)

    def add_contact_point(
        self, customer_id: UUID, kind: str, value: str, *, at: datetime | None = None
    ) -> Customer:
        """Gives the customer one more contact point (its claim is taken in the same write)."""
        when = _now(at)
        point = self._contact_point((kind, value), "contact_point")

        def attempt() -> Customer:
            customer = self.get(customer_id)
            added = customer.add_contact_point(point, at=when)
            taken = self._take_claim(point, customer.id, when, "contact_point")
            self.record(added, taken)
            return added.mutate(customer)

        return _once_more_on_conflict(attempt)

    def remove_contact_point(
        self, customer_id: UUID, kind: str, value: str, *, at: datetime | None = None
    ) -> Customer:
        """Removes a contact point of the customer and frees it for others."""
        when = _now(at)
        point = self._contact_point((kind, value), "contact_point")

        def attempt() -> Customer:
            customer = self.get(customer_id)
            removed = customer.remove_contact_point(point, at=when)
            released = self._held_claim(point, customer.id).release(customer.id, at=when)
            self.record(removed, released)
            return removed.mutate(customer)

        return _once_more_on_conflict(attempt)

    def merge(
        self, duplicate_id: UUID, survivor_id: UUID, *, at: datetime | None = None
    ) -> Customer:
        """Merges a duplicate into the survivor: the duplicate's contact points (and their
        claims) move to the survivor, the duplicate points at it. One write for all of it."""
        when = _now(at)

        def attempt() -> Customer:
            duplicate = self.get(duplicate_id)
            survivor = self.get(survivor_id)
            merged = duplicate.merge_into(survivor, at=when)
            absorbed = survivor.absorb(duplicate, at=when)
            moves: list[ClaimReleased | ClaimTaken] = []
            for point in absorbed.contact_points:
                claim = self._held_claim(point, duplicate.id)
                released = claim.release(duplicate.id, at=when)
                taken = ContactPointClaim.take(released.mutate(claim), point, survivor.id, at=when)
                moves += [released, taken]
            self.record(merged, absorbed, *moves)
            return absorbed.mutate(survivor)

        return _once_more_on_conflict(attempt)

    def record_consent(
        self,
        customer_id: UUID,
        purpose: str,
        granted: bool,
        source: str,
        *,
        at: datetime | None = None,
    ) -> Customer:
        when = _now(at)
        return _once_more_on_conflict(
            lambda: self.execute(
                customer_id,
                Customer,
                lambda customer: customer.record_consent(purpose, granted, source, at=when),
            )
        )

    def change_lifecycle(
        self, customer_id: UUID, to: str, reason: str = "", *, at: datetime | None = None
    ) -> Customer:
        when = _now(at)
        return _once_more_on_conflict(
            lambda: self.execute(
                customer_id,
                Customer,
                lambda customer: customer.change_lifecycle(to, reason, at=when),
            )
        )

    def change_subscription(
        self, customer_id: UUID, status: str, plan: str = "", *, at: datetime | None = None
    ) -> Customer:
        """Moves the subscription to `status`; an empty `plan` keeps the current plan."""
        when = _now(at)
        return _once_more_on_conflict(
            lambda: self.execute(
                customer_id,
                Customer,
                lambda customer: customer.change_subscription(status, plan, at=when),
            )
        )

    def erase(self, customer_id: UUID, *, at: datetime | None = None) -> Customer:
        """Erasure on request: the customer forgets its personal data and frees its contact
        points. (Making the older events unreadable, crypto-shredding, is a separate step.)"""
        when = _now(at)

        def attempt() -> Customer:
            customer = self.get(customer_id)
            erased = customer.erase(at=when)
            releases = [
                self._held_claim(point, customer.id).release(customer.id, at=when)
                for point in customer.contact_points
            ]
            self.record(erased, *releases)
            return erased.mutate(customer)

        return _once_more_on_conflict(attempt)

    # --- helpers ---

    def _contact_point(self, raw: ContactPointInput, field: str) -> ContactPoint:
        kind, value = (raw.kind, raw.value) if isinstance(raw, ContactPoint) else raw
        return ContactPoint.parse(kind, value, field, default_region=self.default_region)

    def _distinct_contact_points(
        self, raw: Iterable[ContactPointInput], field: str
    ) -> list[tuple[int, ContactPoint]]:
        """Normalised contact points with the index each was first given at (for errors)."""
        first_seen: dict[ContactPoint, int] = {}
        for index, item in enumerate(raw):
            first_seen.setdefault(self._contact_point(item, f"{field}[{index}]"), index)
        return [(index, point) for point, index in first_seen.items()]

    def _find(self, aggregate_id: UUID, kind: type[TState]) -> TState | None:
        try:
            return self.load(aggregate_id, kind)
        except NotFound:
            return None

    def _claim(self, point: ContactPoint) -> ContactPointClaim | None:
        return self._find(claim_id(point), ContactPointClaim)

    def _held_claim(self, point: ContactPoint, customer_id: UUID) -> ContactPointClaim:
        claim = self._claim(point)
        if claim is None or claim.holder != customer_id:
            raise RuleViolation(f"{point} is not claimed by customer {customer_id}")
        return claim

    def _take_claim(
        self, point: ContactPoint, customer_id: UUID, at: datetime, field: str
    ) -> ClaimTaken:
        return ContactPointClaim.take(self._claim(point), point, customer_id, at=at, field=field)

    def _record_on(self, customer: Customer, *events: DomainEvent) -> Customer:
        if not events:
            return customer
        self.record(*events)
        state = customer
        for event in events:
            state = event.mutate(state)
        return state

    def _survivor(self, customer: Customer) -> Customer:
        for _ in range(MAX_MERGE_HOPS):
            if customer.merged_into is None:
                return customer
            customer = self.get(customer.merged_into)
        raise NotFound("customer", f"survivor of {customer.id} (merge chain too long)")


def _now(at: datetime | None) -> datetime:
    return datetime.now(UTC) if at is None else at


def _once_more_on_conflict(attempt: Callable[[], T]) -> T:
    """Runs a read-decide-write attempt, and once more if another writer got in between:
    reading again turns the clash into the right answer (or a real conflict)."""
    try:
        return attempt()
    except ConcurrencyConflict:
        return attempt()
