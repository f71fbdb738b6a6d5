"""Commands and queries of the customer context: profiles, contact points and identity lookup.

Uniqueness and idempotency are kept by the store, not by a read-then-check alone: every
command that gives a contact point to a customer also writes the contact point's claim in the
same `record()` call, and a registration with a `request_id` writes its request key there too.
Two writers racing for the same claim or key cannot both succeed; the loser reads again and
gets the right answer (AlreadyExists, or the customer the first request created).

Personal data is crypto-shredded: every customer gets its own data key (in a `KeyVault` beside
the events) before its first event is stored, the mapper seals the personal fields of its events
with it, and `erase` destroys it (with the keys of the customers merged into it) right after
storing the erasure, so the old events keep their place in the history but no longer say who
the customer was.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID, uuid4

from eventsourcing.persistence import Mapper

from crmcore.adapters.keyvault import KeyVault, open_key_store
from crmcore.adapters.mapper import MsgspecMapper
from crmcore.application.base import CRMApplication
from crmcore.config import PersistenceSettings
from crmcore.domain.base import Aggregate, DomainEvent
from crmcore.domain.customer import (
    DEVELOPMENT_INDEX_SECRET,
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
    #: Name of the read-model store holding the customers' data keys.
    KEY_STORE_NAME = "customers_keys"

    def __init__(
        self,
        persistence: PersistenceSettings | None = None,
        *,
        default_region: str | None = None,
        group_commit: bool = False,
        key_vault: KeyVault | None = None,
        index_secret: bytes | None = None,
    ) -> None:
        """`key_vault` holds the per-customer data keys (default: a table beside the events,
        opened from `persistence`); `index_secret` keys the hash deriving claim ids from
        contact points (default: the development secret; see `claim_id`)."""
        #: Region (ISO 3166 alpha-2, e.g. "JP") of phone numbers written without a country code.
        self.default_region = _region(default_region)
        persistence = persistence or PersistenceSettings.in_memory()
        self._owns_key_vault = key_vault is None
        self.key_vault = key_vault or KeyVault(open_key_store(persistence, self.KEY_STORE_NAME))
        self._index_secret = index_secret or DEVELOPMENT_INDEX_SECRET
        super().__init__(persistence, group_commit=group_commit)

    def construct_mapper(self) -> Mapper[UUID]:
        return MsgspecMapper(
            compressor=self.factory.compressor(),
            cipher=self.factory.cipher(),
            key_vault=self.key_vault,
        )

    def save(self, *objs: Any, **kwargs: Any) -> list[Any]:
        # Keys made for new customers are stored first: an event is never stored sealed with
        # a key that is not. (Under group commit this runs once per batch, in the writer.)
        self.key_vault.store_pending()
        return super().save(*objs, **kwargs)

    def shut_down(self) -> None:
        """Stores what is waiting, then releases the key vault and the event store."""
        self.stop_writer()
        if self._owns_key_vault:
            self.key_vault.close_vault()
            self.key_vault.store.close_store()
        self.factory.close()

    # --- queries ---

    def get(self, customer_id: UUID) -> Customer:
        """The customer as stored (a merged duplicate is returned as is; see `resolve`)."""
        return self.load(customer_id, Customer)

    def resolve(self, customer_id: UUID) -> Customer:
        """The customer, or the survivor it was merged into (a merged id keeps resolving)."""
        return self._survivor(self.get(customer_id))

    def lookup(
        self, kind: str, raw_value: str, *, default_region: str | None = None
    ) -> Customer | None:
        """The customer holding a contact point (screen pop), following merges to the survivor.

        The raw value is normalised like stored values, so "090-1234-5678" (with default
        region JP) finds "+81 90 1234 5678". One claim read, one customer read."""
        point = self._contact_point((kind, raw_value), "contact_point", default_region)
        claim = self._claim(point)
        if claim is None or claim.holder is None:
            return None
        # The holder's key is read while its events are (both are needed to read them).
        self.key_vault.prefetch(claim.holder)
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
        default_region: str | None = None,
        at: datetime | None = None,
    ) -> Customer:
        """Registers a new customer with its contact points.

        The same `request_id` again returns the customer created the first time and stores
        nothing. A contact point held by another customer → ContactPointInUse (AlreadyExists)
        naming `contact_points[i]`, and nothing is stored. `default_region` reads national
        phone numbers of this call (default: the application's).

        The first attempt reads nothing: it writes the claims and the request key as new
        (version 1), which is what they are for new contact points and requests. When one
        existed already the store refuses the whole write, and the next attempt reads them
        to give the right answer (AlreadyExists, the earlier customer, or a claim that was
        released and is taken again)."""
        when = _now(at)
        points = self._distinct_contact_points(contact_points, "contact_points", default_region)
        key_id = None if request_id is None else request_key_id(request_id)
        customer_id = uuid4()
        key_created = False

        def attempt(read_first: bool) -> Customer:
            nonlocal key_created
            if key_id is not None and read_first:
                earlier = self._find(key_id, RequestKey)
                if earlier is not None:
                    return self.get(earlier.customer_id)
            registered = Customer.register(
                customer_id,
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
                self._take_claim(
                    point,
                    registered.originator_id,
                    when,
                    f"contact_points[{index}]",
                    current=self._claim(point) if read_first else None,
                )
                for index, point in points
            ]
            keys = (
                []
                if request_id is None
                else [RequestKey.record(request_id, registered.originator_id, at=when)]
            )
            if not key_created:
                # Stored right before the events sealed with it (see `save`); a key left over
                # by a refused registration seals nothing and is harmless.
                self.key_vault.new_key(customer_id)
                key_created = True
            self.record(registered, *claims, *keys)
            return registered.mutate(None)

        try:
            return attempt(read_first=False)
        except ConcurrencyConflict:
            return _once_more_on_conflict(lambda: attempt(read_first=True))

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
        self,
        customer_id: UUID,
        kind: str,
        value: str,
        *,
        default_region: str | None = None,
        at: datetime | None = None,
    ) -> Customer:
        """Gives the customer one more contact point (its claim is taken in the same write)."""
        when = _now(at)
        point = self._contact_point((kind, value), "contact_point", default_region)

        def attempt() -> Customer:
            customer = self.get(customer_id)
            added = customer.add_contact_point(point, at=when)
            taken = self._take_claim(
                point, customer.id, when, "contact_point", current=self._claim(point)
            )
            self.record(added, taken)
            return added.mutate(customer)

        return _once_more_on_conflict(attempt)

    def remove_contact_point(
        self,
        customer_id: UUID,
        kind: str,
        value: str,
        *,
        default_region: str | None = None,
        at: datetime | None = None,
    ) -> Customer:
        """Removes a contact point of the customer and frees it for others."""
        when = _now(at)
        point = self._contact_point((kind, value), "contact_point", default_region)

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
                taken = ContactPointClaim.take(
                    released.mutate(claim), point, survivor.id, at=when, secret=self._index_secret
                )
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
        points, then its data key (and those of the customers merged into it) is destroyed,
        so its older events no longer reveal any personal data either.

        Erasing an erased customer again is refused (RuleViolation) and stores nothing, but
        first makes sure its keys are gone: a crash between the two steps is repaired by
        asking again."""
        when = _now(at)

        def attempt() -> Customer:
            customer = self.get(customer_id)
            if customer.erased:
                self.key_vault.destroy([customer.id, *customer.merged_ids])
            erased = customer.erase(at=when)
            releases = [
                self._held_claim(point, customer.id).release(customer.id, at=when)
                for point in customer.contact_points
            ]
            self.record(erased, *releases)
            return erased.mutate(customer)

        customer = _once_more_on_conflict(attempt)
        self.key_vault.destroy([customer.id, *customer.merged_ids])
        return customer

    # --- helpers ---

    def index_key(self, kind: str, value: str) -> str:
        """A keyed hash of `value` for indexes that must not hold it in clear (read-model tags)."""
        message = f"{kind}:{value}".encode()
        return hmac.new(self._index_secret, message, hashlib.sha256).hexdigest()[:32]

    def claim_id(self, point: ContactPoint) -> UUID:
        """The id of the claim on `point` in this application (keyed by its index secret)."""
        return claim_id(point, self._index_secret)

    def _contact_point(
        self, raw: ContactPointInput, field: str, default_region: str | None = None
    ) -> ContactPoint:
        kind, value = (raw.kind, raw.value) if isinstance(raw, ContactPoint) else raw
        region = _region(default_region) or self.default_region
        return ContactPoint.parse(kind, value, field, default_region=region)

    def _distinct_contact_points(
        self, raw: Iterable[ContactPointInput], field: str, default_region: str | None = None
    ) -> list[tuple[int, ContactPoint]]:
        """Normalised contact points with the index each was first given at (for errors)."""
        first_seen: dict[ContactPoint, int] = {}
        for index, item in enumerate(raw):
            point = self._contact_point(item, f"{field}[{index}]", default_region)
            first_seen.setdefault(point, index)
        return [(index, point) for point, index in first_seen.items()]

    def _find(self, aggregate_id: UUID, kind: type[TState]) -> TState | None:
        try:
            return self.load(aggregate_id, kind)
        except NotFound:
            return None

    def _claim(self, point: ContactPoint) -> ContactPointClaim | None:
        return self._find(self.claim_id(point), ContactPointClaim)

    def _held_claim(self, point: ContactPoint, customer_id: UUID) -> ContactPointClaim:
        claim = self._claim(point)
        if claim is None or claim.holder != customer_id:
            raise RuleViolation(f"{point} is not claimed by customer {customer_id}")
        return claim

    def _take_claim(
        self,
        point: ContactPoint,
        customer_id: UUID,
        at: datetime,
        field: str,
        *,
        current: ContactPointClaim | None,
    ) -> ClaimTaken:
        """Takes the claim on `point`; `current` is the claim as read (None: never taken)."""
        return ContactPointClaim.take(
            current, point, customer_id, at=at, field=field, secret=self._index_secret
        )

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


def _region(region: str | None) -> str | None:
    """A region code as phonenumbers wants it ("jp " → "JP"), None when not given."""
    return region.strip().upper() or None if region else None


def _now(at: datetime | None) -> datetime:
    return datetime.now(UTC) if at is None else at


def _once_more_on_conflict(attempt: Callable[[], T]) -> T:
    """Runs a read-decide-write attempt, and once more if another writer got in between:
    reading again turns the clash into the right answer (or a real conflict)."""
    try:
        return attempt()
    except ConcurrencyConflict:
        return attempt()
