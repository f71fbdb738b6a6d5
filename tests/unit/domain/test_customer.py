"""The customer aggregate and its uniqueness indexes, without any store."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import msgspec
import pytest

from crmcore.domain import values
from crmcore.domain.base import DomainEvent
from crmcore.domain.customer import (
    MAX_CONTACT_POINTS,
    ClaimReleased,
    ClaimTaken,
    ContactPoint,
    ContactPointClaim,
    ContactPointInUse,
    Customer,
    Lifecycle,
    RequestKey,
    RequestKeyRecorded,
    SubscriptionStatus,
    claim_id,
    request_key_id,
)
from crmcore.domain.errors import AlreadyExists, InvalidValue, NotFound, RuleViolation

MONDAY = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
TARO_EMAIL = ContactPoint.email("taro.yamada@example.jp")
TARO_PHONE = ContactPoint.phone("+81 90 1234 5678")
TARO_LINE = ContactPoint.handle("line", "taro_y")


def later(minutes: int) -> datetime:
    return MONDAY + timedelta(minutes=minutes)


def taro(**overrides: object) -> Customer:
    registered = Customer.register(
        uuid4(),
        name="Taro Yamada",
        company="Yamada Shoten",
        language="ja",
        time_zone="Asia/Tokyo",
        contact_points=(TARO_EMAIL, TARO_PHONE),
        at=MONDAY,
    )
    return msgspec.structs.replace(registered.mutate(None), **overrides)


class TestContactPoints:
    def test_emails_are_normalised_to_lower_case(self) -> None:
        assert ContactPoint.email("  Taro.Yamada@Example.JP ").value == "taro.yamada@example.jp"

    def test_phones_become_e164_whatever_their_format(self) -> None:
        national = ContactPoint.phone("090-1234-5678", default_region="JP")
        international = ContactPoint.phone("+81 90 1234 5678")
        assert national == international == TARO_PHONE
        assert national.value == "+819012345678"

    def test_handles_are_network_colon_handle_with_a_lower_case_network(self) -> None:
        assert ContactPoint.handle(" LINE ", "  taro_y ").value == "line:taro_y"
        assert ContactPoint.parse("handle", "LINE:taro_y") == TARO_LINE

    @pytest.mark.parametrize(
        ("kind", "raw"),
        [
            ("email", "taro.yamada@example.jp"),
            ("phone", "+819012345678"),
            ("handle", "line:taro_y"),
        ],
    )
    def test_a_normalised_value_normalises_to_itself(self, kind: str, raw: str) -> None:
        assert ContactPoint.parse(kind, raw).value == raw

    @pytest.mark.parametrize(
        ("kind", "raw", "field"),
        [
            ("fax", "+819012345678", "contact_point.kind"),
            ("email", "not-an-address", "contact_point.value"),
            ("phone", "12", "contact_point.value"),
            ("phone", "090-1234-5678", "contact_point.value"),  # national, no region given
            ("handle", "taro_y", "contact_point.value"),
            ("handle", "line:", "contact_point.value"),
            ("handle", "line:taro y", "contact_point.value"),
            ("handle", "Line Messenger:taro_y", "contact_point.value"),
            ("handle", "line:" + "t" * 129, "contact_point.value"),
        ],
    )
    def test_invalid_input_names_the_field(self, kind: str, raw: str, field: str) -> None:
        with pytest.raises(InvalidValue) as refused:
            ContactPoint.parse(kind, raw)
        assert refused.value.field == field


class TestRegistering:
    def test_registration_normalises_the_profile(self) -> None:
        registered = Customer.register(
            uuid4(),
            name="  Taro Yamada ",
            language="JA-jp",
            time_zone="Asia/Tokyo",
            segment=" enterprise ",
            tags=["VIP", "vip", "Kansai"],
            attributes={"plan_tier": "gold", "account_manager": "Sato"},
            contact_points=(TARO_EMAIL, TARO_PHONE, TARO_EMAIL),
            at=MONDAY,
        )
        customer = registered.mutate(None)

        assert customer.name == "Taro Yamada"
        assert customer.language == "ja-JP"
        assert customer.segment == "enterprise"
        assert customer.tags == ("vip", "kansai")
        assert customer.attribute_map() == {"plan_tier": "gold", "account_manager": "Sato"}
        assert [a.key for a in customer.attributes] == ["account_manager", "plan_tier"]
        assert customer.contact_points == (TARO_EMAIL, TARO_PHONE)
        assert customer.lifecycle is Lifecycle.PROSPECT
        assert customer.subscription.status is SubscriptionStatus.NONE
        assert (customer.version, customer.created_on) == (1, MONDAY)
        assert not customer.erased
        assert customer.merged_into is None

    @pytest.mark.parametrize(
        ("changes", "field"),
        [
            ({"name": "   "}, "name"),
            ({"name": "T" * (values.MAX_NAME_LENGTH + 1)}, "name"),
            ({"company": "C" * (values.MAX_NAME_LENGTH + 1)}, "company"),
            ({"language": "Japanese"}, "language"),
            ({"language": "en_US"}, "language"),
            ({"time_zone": "Mars/Olympus_Mons"}, "time_zone"),
            ({"time_zone": "../etc/passwd"}, "time_zone"),
            ({"time_zone": "Asia"}, "time_zone"),
            ({"time_zone": "localtime"}, "time_zone"),
            ({"time_zone": "A" * 300}, "time_zone"),
            ({"tags": ["ok", " "]}, "tags[1]"),
            ({"attributes": {"": "x"}}, "attributes.key"),
            ({"attributes": {"note": "a\x00b"}}, "attributes[note]"),
            ({"lifecycle": "lead"}, "lifecycle"),
        ],
    )
    def test_invalid_values_are_refused_naming_the_field(
        self, changes: dict[str, Any], field: str
    ) -> None:
        arguments: dict[str, Any] = {"name": "Taro Yamada", **changes}
        with pytest.raises(InvalidValue) as refused:
            Customer.register(uuid4(), at=MONDAY, **arguments)
        assert refused.value.field == field

    def test_too_many_attributes_are_refused(self) -> None:
        many = {f"key_{n}": "v" for n in range(values.MAX_ATTRIBUTES + 1)}
        with pytest.raises(InvalidValue, match="attributes"):
            Customer.register(uuid4(), name="Taro", attributes=many, at=MONDAY)

    def test_a_naive_time_is_refused(self) -> None:
        with pytest.raises(InvalidValue) as refused:
            Customer.register(uuid4(), name="Taro", at=datetime(2025, 3, 3, 9, 0))
        assert refused.value.field == "at"


class TestProfileUpdates:
    def test_only_changed_fields_are_in_the_event(self) -> None:
        customer = taro()
        (updated,) = customer.update_profile(
            name="Taro Yamada", company="Yamada Trading", segment="smb", at=later(1)
        )
        assert updated.changed == ("company", "segment")
        assert updated.name is None
        assert (updated.company, updated.segment) == ("Yamada Trading", "smb")
        assert updated.originator_version == 2
        after = updated.mutate(customer)
        assert (after.company, after.segment, after.name) == (
            "Yamada Trading",
            "smb",
            "Taro Yamada",
        )

    def test_the_event_on_the_bus_carries_only_the_changed_fields(self) -> None:
        (updated,) = taro().update_profile(company="Yamada Trading", at=later(1))
        payload = msgspec.json.decode(msgspec.json.encode(updated))
        assert "name" not in payload
        assert payload["changed"] == ["company"]

    def test_nothing_changes_when_the_values_are_the_same(self) -> None:
        assert taro().update_profile(name=" Taro Yamada ", language="JA", at=later(1)) == ()

    def test_fields_can_be_cleared(self) -> None:
        (updated,) = taro().update_profile(company="", at=later(1))
        assert updated.mutate(taro()).company == ""

    def test_attributes_are_replaced_as_a_whole(self) -> None:
        customer = taro(attributes=())
        (first,) = customer.update_profile(attributes={"a": "1", "b": "2"}, at=later(1))
        customer = first.mutate(customer)
        (second,) = customer.update_profile(attributes={"b": "3"}, at=later(2))
        assert second.mutate(customer).attribute_map() == {"b": "3"}


class TestContactPointsOfACustomer:
    def test_a_contact_point_is_added(self) -> None:
        customer = taro()
        added = customer.add_contact_point(TARO_LINE, at=later(1))
        assert added.mutate(customer).contact_points == (TARO_EMAIL, TARO_PHONE, TARO_LINE)

    def test_adding_one_the_customer_has_is_refused(self) -> None:
        with pytest.raises(AlreadyExists):
            taro().add_contact_point(ContactPoint.email("TARO.YAMADA@example.jp"), at=later(1))

    def test_adding_beyond_the_limit_is_refused(self) -> None:
        points = tuple(ContactPoint.handle("line", f"user{n}") for n in range(MAX_CONTACT_POINTS))
        with pytest.raises(RuleViolation):
            taro(contact_points=points).add_contact_point(TARO_EMAIL, at=later(1))

    def test_a_contact_point_is_removed(self) -> None:
        customer = taro()
        removed = customer.remove_contact_point(TARO_EMAIL, at=later(1))
        assert removed.mutate(customer).contact_points == (TARO_PHONE,)

    def test_removing_one_the_customer_does_not_have_is_refused(self) -> None:
        with pytest.raises(NotFound):
            taro().remove_contact_point(TARO_LINE, at=later(1))


class TestConsent:
    def test_consents_are_kept_per_purpose_latest_wins(self) -> None:
        customer = taro()
        for minute, (purpose, granted) in enumerate(
            [("marketing_email", True), ("profiling", False), ("marketing_email", False)]
        ):
            customer = customer.record_consent(
                purpose, granted, "web_form", at=later(minute)
            ).mutate(customer)
        marketing = customer.consent_for("marketing_email")
        assert marketing is not None
        assert (marketing.granted, marketing.changed_at, marketing.source) == (
            False,
            later(2),
            "web_form",
        )
        assert [c.purpose for c in customer.consents] == ["marketing_email", "profiling"]

    @pytest.mark.parametrize(
        ("purpose", "source", "field"),
        [("Marketing E-mail", "web_form", "purpose"), ("marketing_email", " ", "source")],
    )
    def test_invalid_consents_are_refused(self, purpose: str, source: str, field: str) -> None:
        with pytest.raises(InvalidValue) as refused:
            taro().record_consent(purpose, True, source, at=later(1))
        assert refused.value.field == field


ALLOWED_LIFECYCLE_CHANGES = {
    ("prospect", "active"),
    ("prospect", "churned"),
    ("active", "churned"),
    ("churned", "active"),
}


class TestLifecycle:
    @pytest.mark.parametrize("start", list(Lifecycle))
    @pytest.mark.parametrize("target", list(Lifecycle))
    def test_transitions(self, start: Lifecycle, target: Lifecycle) -> None:
        customer = taro(lifecycle=start)
        if (start, target) in ALLOWED_LIFECYCLE_CHANGES:
            changed = customer.change_lifecycle(target, "renewal call", at=later(1))
            assert (changed.previous, changed.lifecycle, changed.reason) == (
                start,
                target,
                "renewal call",
            )
            assert changed.mutate(customer).lifecycle is target
        else:
            with pytest.raises(RuleViolation):
                customer.change_lifecycle(target, at=later(1))

    def test_an_unknown_lifecycle_is_an_invalid_value(self) -> None:
        with pytest.raises(InvalidValue) as refused:
            taro().change_lifecycle("lead", at=later(1))
        assert refused.value.field == "lifecycle"


class TestSubscription:
    def test_a_trial_becomes_active_keeping_its_plan(self) -> None:
        customer = taro()
        customer = customer.change_subscription("trial", "pro", at=later(1)).mutate(customer)
        changed = customer.change_subscription("active", at=later(2))
        assert (changed.previous, changed.status, changed.plan) == (
            SubscriptionStatus.TRIAL,
            SubscriptionStatus.ACTIVE,
            "pro",
        )
        subscription = changed.mutate(customer).subscription
        assert (subscription.status, subscription.plan, subscription.since) == (
            SubscriptionStatus.ACTIVE,
            "pro",
            later(2),
        )

    def test_a_plan_change_within_the_same_status_is_allowed(self) -> None:
        customer = taro()
        customer = customer.change_subscription("active", "pro", at=later(1)).mutate(customer)
        assert customer.change_subscription("active", "enterprise", at=later(2)).plan == (
            "enterprise"
        )

    @pytest.mark.parametrize(
        ("steps", "refused"),
        [
            ((), ("paused", "")),
            ((("active", "pro"),), ("active", "pro")),
            ((("active", "pro"), ("cancelled", "")), ("paused", "")),
            ((), ("none", "")),
        ],
    )
    def test_impossible_changes_are_refused(
        self, steps: tuple[tuple[str, str], ...], refused: tuple[str, str]
    ) -> None:
        customer = taro()
        for minute, (status, plan) in enumerate(steps):
            customer = customer.change_subscription(status, plan, at=later(minute)).mutate(customer)
        with pytest.raises(RuleViolation):
            customer.change_subscription(*refused, at=later(10))


class TestMergingAndErasure:
    def test_merging_moves_the_contact_points_to_the_survivor(self) -> None:
        duplicate = taro()
        survivor = taro(contact_points=(TARO_LINE,))
        merged = duplicate.merge_into(survivor, at=later(1))
        absorbed = survivor.absorb(duplicate, at=later(1))

        assert merged.survivor_id == survivor.id
        assert absorbed.duplicate_id == duplicate.id
        assert absorbed.contact_points == (TARO_EMAIL, TARO_PHONE)
        assert merged.mutate(duplicate).merged_into == survivor.id
        assert merged.mutate(duplicate).contact_points == ()
        assert absorbed.mutate(survivor).contact_points == (TARO_LINE, TARO_EMAIL, TARO_PHONE)

    def test_a_customer_cannot_be_merged_into_itself(self) -> None:
        customer = taro()
        with pytest.raises(RuleViolation):
            customer.merge_into(customer, at=later(1))
        with pytest.raises(RuleViolation):
            customer.absorb(customer, at=later(1))

    def test_erasure_forgets_personal_data_and_its_event_carries_none(self) -> None:
        customer = taro(tags=("vip",), segment="enterprise", lifecycle=Lifecycle.ACTIVE)
        customer = customer.record_consent("marketing_email", True, "web", at=later(1)).mutate(
            customer
        )
        erased_event = customer.erase(at=later(2))
        erased = erased_event.mutate(customer)

        assert erased.erased
        assert (erased.name, erased.company, erased.contact_points, erased.consents) == (
            "",
            "",
            (),
            (),
        )
        assert (erased.segment, erased.lifecycle) == ("enterprise", Lifecycle.ACTIVE)
        payload = msgspec.json.encode(erased_event)
        assert b"Taro" not in payload
        assert b"example.jp" not in payload
        assert set(msgspec.json.decode(payload)) == {
            "originator_id",
            "originator_version",
            "timestamp",
            "actor",
        }


COMMANDS: dict[str, Callable[[Customer], object]] = {
    "update_profile": lambda c: c.update_profile(name="Jiro", at=later(5)),
    "add_contact_point": lambda c: c.add_contact_point(TARO_LINE, at=later(5)),
    "remove_contact_point": lambda c: c.remove_contact_point(TARO_EMAIL, at=later(5)),
    "record_consent": lambda c: c.record_consent("marketing_email", True, "ivr", at=later(5)),
    "change_lifecycle": lambda c: c.change_lifecycle("active", at=later(5)),
    "change_subscription": lambda c: c.change_subscription("trial", at=later(5)),
    "merge_into": lambda c: c.merge_into(taro(), at=later(5)),
    "absorb": lambda c: c.absorb(taro(), at=later(5)),
    "erase": lambda c: c.erase(at=later(5)),
}


class TestFinishedCustomersRefuseChanges:
    @pytest.mark.parametrize("command", list(COMMANDS))
    def test_an_erased_customer_refuses(self, command: str) -> None:
        with pytest.raises(RuleViolation, match="erased"):
            COMMANDS[command](taro(erased=True))

    @pytest.mark.parametrize("command", list(COMMANDS))
    def test_a_merged_customer_refuses(self, command: str) -> None:
        with pytest.raises(RuleViolation, match="merged"):
            COMMANDS[command](taro(merged_into=uuid4()))


class TestContactPointClaims:
    def test_a_free_contact_point_is_claimed(self) -> None:
        customer_id = uuid4()
        taken = ContactPointClaim.take(None, TARO_EMAIL, customer_id, at=MONDAY)
        claim = taken.mutate(None)
        assert (
            claim.id
            == claim_id(TARO_EMAIL)
            == claim_id(ContactPoint.email("Taro.Yamada@EXAMPLE.jp"))
        )
        assert (claim.holder, claim.version) == (customer_id, 1)

    def test_a_held_claim_cannot_be_taken(self) -> None:
        claim = ContactPointClaim.take(None, TARO_EMAIL, uuid4(), at=MONDAY).mutate(None)
        with pytest.raises(ContactPointInUse) as refused:
            ContactPointClaim.take(claim, TARO_EMAIL, uuid4(), at=later(1), field="emails[0]")
        assert refused.value.field == "emails[0]"
        assert isinstance(refused.value, AlreadyExists)

    def test_a_released_claim_is_taken_again_at_the_next_version(self) -> None:
        first, second = uuid4(), uuid4()
        claim = ContactPointClaim.take(None, TARO_EMAIL, first, at=MONDAY).mutate(None)
        claim = claim.release(first, at=later(1)).mutate(claim)
        assert claim.holder is None
        taken = ContactPointClaim.take(claim, TARO_EMAIL, second, at=later(2))
        assert taken.originator_version == 3
        assert taken.mutate(claim).holder == second

    def test_only_the_holder_releases(self) -> None:
        claim = ContactPointClaim.take(None, TARO_EMAIL, uuid4(), at=MONDAY).mutate(None)
        with pytest.raises(RuleViolation):
            claim.release(uuid4(), at=later(1))

    def test_request_keys_are_derived_from_the_request_id(self) -> None:
        customer_id = uuid4()
        recorded = RequestKey.record("req-42", customer_id, at=MONDAY)
        assert recorded.originator_id == request_key_id("req-42") != request_key_id("req-43")
        assert recorded.mutate(None).customer_id == customer_id
        with pytest.raises(InvalidValue):
            request_key_id("  ")


def one_of_each_event() -> list[DomainEvent]:
    customer = taro()
    survivor = taro()
    claim = ContactPointClaim.take(None, TARO_EMAIL, customer.id, at=MONDAY)
    return [
        Customer.register(customer.id, name="Taro", contact_points=(TARO_LINE,), at=MONDAY),
        customer.update_profile(company="Yamada Trading", at=later(1))[0],
        customer.add_contact_point(TARO_LINE, at=later(1)),
        customer.remove_contact_point(TARO_EMAIL, at=later(1)),
        customer.record_consent("marketing_email", True, "web_form", at=later(1)),
        customer.change_lifecycle("active", "first order", at=later(1)),
        customer.change_subscription("trial", "pro", at=later(1)),
        customer.merge_into(survivor, at=later(1)),
        survivor.absorb(customer, at=later(1)),
        customer.erase(at=later(1)),
        claim,
        claim.mutate(None).release(customer.id, at=later(1)),
        RequestKey.record("req-42", customer.id, at=MONDAY),
    ]


class TestEventsOnTheBus:
    def test_subjects(self) -> None:
        subjects = {type(e).__name__: e.bus_subject() for e in one_of_each_event()}
        assert subjects == {
            "CustomerRegistered": "crm.customer.registered",
            "CustomerProfileUpdated": "crm.customer.profile_updated",
            "ContactPointAdded": "crm.customer.contact_point_added",
            "ContactPointRemoved": "crm.customer.contact_point_removed",
            "ConsentRecorded": "crm.customer.consent_recorded",
            "LifecycleChanged": "crm.customer.lifecycle_changed",
            "SubscriptionChanged": "crm.customer.subscription_changed",
            "CustomerMergedInto": "crm.customer.merged_into",
            "DuplicateAbsorbed": "crm.customer.duplicate_absorbed",
            "CustomerErased": "crm.customer.erased",
            "ClaimTaken": "crm.customer.claim_taken",
            "ClaimReleased": "crm.customer.claim_released",
            "RequestKeyRecorded": "crm.customer.request_key_recorded",
        }

    def test_every_event_names_its_customer(self) -> None:
        for event in one_of_each_event():
            customer_id = UUID(event.bus_attributes()["customerid"])
            if isinstance(event, ClaimTaken | ClaimReleased | RequestKeyRecorded):
                assert customer_id == event.customer_id
            else:
                assert customer_id == event.originator_id

    @pytest.mark.parametrize("event", one_of_each_event(), ids=lambda e: type(e).__name__)
    def test_events_survive_a_round_trip_through_msgpack(self, event: DomainEvent) -> None:
        decoded = msgspec.msgpack.Decoder(type(event)).decode(msgspec.msgpack.encode(event))
        assert decoded == event
