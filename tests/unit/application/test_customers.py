"""The customer application on the in-memory store: commands, lookup, uniqueness, merges."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from uuid import uuid4

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crmcore.application.base import project
from crmcore.application.customers import CustomerApplication
from crmcore.domain.base import DomainEvent
from crmcore.domain.customer import (
    ContactPoint,
    ContactPointInUse,
    Customer,
    CustomerErased,
    CustomerProfileUpdated,
    Lifecycle,
    SubscriptionStatus,
)
from crmcore.domain.errors import (
    AlreadyExists,
    ConcurrencyConflict,
    DomainError,
    InvalidValue,
    NotFound,
    RuleViolation,
)

MONDAY = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
TARO_EMAIL = ("email", "taro.yamada@example.jp")
TARO_PHONE = ("phone", "090-1234-5678")
HANAKO_EMAIL = ("email", "hanako.suzuki@example.jp")


def later(minutes: int) -> datetime:
    return MONDAY + timedelta(minutes=minutes)


@pytest.fixture
def app() -> CustomerApplication:
    return CustomerApplication(default_region="JP")


@pytest.fixture
def writes(app: CustomerApplication, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """The event types of every `record()` call the application makes, one tuple per call."""
    calls: list[tuple[str, ...]] = []
    write = app.record

    def logged(*events: DomainEvent) -> None:
        calls.append(tuple(type(event).__name__ for event in events))
        write(*events)

    monkeypatch.setattr(app, "record", logged)
    return calls


def last_notification_id(app: CustomerApplication) -> int:
    return app.recorder.max_notification_id() or 0


@contextmanager
def stores_nothing(app: CustomerApplication) -> Iterator[None]:
    before = last_notification_id(app)
    yield
    assert last_notification_id(app) == before


def stored_events(app: CustomerApplication, since: int = 0) -> list[DomainEvent]:
    notifications = app.recorder.select_notifications(start=since + 1, limit=1000)
    return [cast(DomainEvent, app.mapper.to_domain_event(n)) for n in notifications]


def register_taro(app: CustomerApplication, **overrides: Any) -> Customer:
    arguments: dict[str, Any] = {
        "name": "Taro Yamada",
        "company": "Yamada Shoten",
        "language": "ja",
        "time_zone": "Asia/Tokyo",
        "contact_points": [TARO_EMAIL, TARO_PHONE],
        "at": MONDAY,
        **overrides,
    }
    return app.register(**arguments)


def register_hanako(app: CustomerApplication, **overrides: Any) -> Customer:
    arguments: dict[str, Any] = {
        "name": "Hanako Suzuki",
        "contact_points": [HANAKO_EMAIL],
        "at": MONDAY,
        **overrides,
    }
    return app.register(**arguments)


class TestRegistering:
    def test_a_customer_is_registered_and_can_be_read_back(self, app: CustomerApplication) -> None:
        taro = register_taro(app, tags=["VIP"], attributes={"plan_tier": "gold"})

        assert taro.name == "Taro Yamada"
        assert taro.contact_points == (
            ContactPoint.email("taro.yamada@example.jp"),
            ContactPoint.phone("+81 90 1234 5678"),
        )
        assert taro.tags == ("vip",)
        assert taro.lifecycle is Lifecycle.PROSPECT
        assert app.get(taro.id) == taro

    def test_registration_and_claims_are_stored_in_one_write(
        self, app: CustomerApplication, writes: list[tuple[str, ...]]
    ) -> None:
        taro = register_taro(app, request_id="crm-import-1")
        assert writes == [
            ("CustomerRegistered", "ClaimTaken", "ClaimTaken", "RequestKeyRecorded"),
        ]
        assert app.lookup(*TARO_EMAIL) == taro

    def test_a_customer_may_start_active(self, app: CustomerApplication) -> None:
        assert register_taro(app, lifecycle="active").lifecycle is Lifecycle.ACTIVE

    def test_the_same_contact_point_given_twice_counts_once(self, app: CustomerApplication) -> None:
        taro = register_taro(app, contact_points=[TARO_PHONE, ("phone", "+81 90 1234 5678")])
        assert len(taro.contact_points) == 1

    @pytest.mark.parametrize(
        ("overrides", "field"),
        [
            ({"name": ""}, "name"),
            ({"time_zone": "Tokyo"}, "time_zone"),
            ({"contact_points": [TARO_EMAIL, ("email", "taro@")]}, "contact_points[1].value"),
            ({"contact_points": [("fax", "03-1234-5678")]}, "contact_points[0].kind"),
            ({"lifecycle": "churning"}, "lifecycle"),
            ({"request_id": ""}, "request_id"),
        ],
    )
    def test_invalid_values_are_refused_and_nothing_is_stored(
        self, app: CustomerApplication, overrides: dict[str, object], field: str
    ) -> None:
        with stores_nothing(app), pytest.raises(InvalidValue) as refused:
            register_taro(app, **overrides)
        assert refused.value.field == field

    def test_an_unknown_customer_is_not_found(self, app: CustomerApplication) -> None:
        with pytest.raises(NotFound):
            app.get(uuid4())

    def test_a_contact_point_claim_is_not_a_customer(self, app: CustomerApplication) -> None:
        register_taro(app)
        claim_id = stored_events(app)[1].originator_id
        with pytest.raises(NotFound):
            app.get(claim_id)


class TestOneCustomerPerContactPoint:
    def test_two_customers_cannot_share_an_email(self, app: CustomerApplication) -> None:
        register_taro(app)
        with stores_nothing(app), pytest.raises(ContactPointInUse) as refused:
            register_hanako(app, contact_points=[HANAKO_EMAIL, ("email", "TARO.Yamada@example.jp")])
        assert refused.value.field == "contact_points[1]"
        assert "contact_points[1]" in str(refused.value)

    def test_phone_numbers_clash_whatever_their_format(self, app: CustomerApplication) -> None:
        register_taro(app, contact_points=[("phone", "090-1234-5678")])
        with stores_nothing(app), pytest.raises(AlreadyExists):
            register_hanako(app, contact_points=[("phone", "+81 90 1234 5678")])

    def test_a_refused_registration_claims_none_of_its_contact_points(
        self, app: CustomerApplication
    ) -> None:
        register_taro(app)
        with pytest.raises(AlreadyExists):
            register_hanako(app, contact_points=[HANAKO_EMAIL, TARO_EMAIL])
        assert app.lookup(*HANAKO_EMAIL) is None
        assert register_hanako(app).contact_points == (ContactPoint.email(HANAKO_EMAIL[1]),)

    def test_adding_another_customers_contact_point_is_refused(
        self, app: CustomerApplication
    ) -> None:
        taro = register_taro(app)
        hanako = register_hanako(app)
        with stores_nothing(app), pytest.raises(ContactPointInUse) as refused:
            app.add_contact_point(hanako.id, "phone", "+819012345678")
        assert refused.value.field == "contact_point"
        assert app.lookup(*TARO_PHONE) == taro

    def test_a_removed_contact_point_can_be_taken_by_someone_else(
        self, app: CustomerApplication
    ) -> None:
        taro = register_taro(app)
        hanako = register_hanako(app)
        app.remove_contact_point(taro.id, *TARO_PHONE, at=later(1))
        hanako = app.add_contact_point(hanako.id, *TARO_PHONE, at=later(2))
        assert app.lookup(*TARO_PHONE) == hanako

    def test_a_rival_registering_between_read_and_write_wins(
        self, app: CustomerApplication, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        write = app.record

        def rival_writes_first(*events: DomainEvent) -> None:
            monkeypatch.setattr(app, "record", write)
            register_hanako(app, contact_points=[TARO_EMAIL])
            write(*events)

        monkeypatch.setattr(app, "record", rival_writes_first)
        with pytest.raises(ContactPointInUse):
            register_taro(app)
        assert last_notification_id(app) == 2  # the rival's registration and claim only
        holder = app.lookup(*TARO_EMAIL)
        assert holder is not None
        assert holder.name == "Hanako Suzuki"


class TestIdempotentRegistration:
    def test_the_same_request_id_returns_the_first_customer(self, app: CustomerApplication) -> None:
        first = register_taro(app, request_id="crm-import-1")
        with stores_nothing(app):
            again = register_taro(app, request_id="crm-import-1", at=later(5))
        assert again == first

    def test_different_request_ids_create_different_customers(
        self, app: CustomerApplication
    ) -> None:
        first = register_hanako(app, contact_points=[], request_id="a")
        second = register_hanako(app, contact_points=[], request_id="b")
        assert first.id != second.id

    def test_a_concurrent_retry_gets_the_customer_the_first_request_created(
        self, app: CustomerApplication, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        write = app.record
        created: list[Customer] = []

        def first_request_lands_first(*events: DomainEvent) -> None:
            monkeypatch.setattr(app, "record", write)
            created.append(register_taro(app, request_id="crm-import-1"))
            write(*events)

        monkeypatch.setattr(app, "record", first_request_lands_first)
        assert register_taro(app, request_id="crm-import-1") == created[0]


class TestProfileUpdates:
    def test_only_the_given_fields_change(self, app: CustomerApplication) -> None:
        taro = register_taro(app)
        updated = app.update_profile(
            taro.id, expected_version=1, company="Yamada Trading", tags=["gold"], at=later(1)
        )
        assert (updated.name, updated.company, updated.tags) == (
            "Taro Yamada",
            "Yamada Trading",
            ("gold",),
        )
        assert updated.version == 2
        assert app.get(taro.id) == updated
        (event,) = stored_events(app, since=3)
        assert isinstance(event, CustomerProfileUpdated)
        assert event.changed == ("company", "tags")

    def test_an_update_that_changes_nothing_stores_nothing(self, app: CustomerApplication) -> None:
        taro = register_taro(app)
        with stores_nothing(app):
            assert app.update_profile(taro.id, expected_version=1, name="Taro Yamada") == taro

    def test_a_stale_etag_is_a_conflict(self, app: CustomerApplication) -> None:
        taro = register_taro(app)
        app.update_profile(taro.id, expected_version=1, segment="enterprise", at=later(1))
        with stores_nothing(app), pytest.raises(ConcurrencyConflict):
            app.update_profile(taro.id, expected_version=1, segment="smb", at=later(2))

    def test_without_an_etag_the_latest_state_is_updated(self, app: CustomerApplication) -> None:
        taro = register_taro(app)
        app.update_profile(taro.id, expected_version=1, segment="enterprise", at=later(1))
        assert app.update_profile(taro.id, expected_version=None, segment="smb").version == 3

    def test_invalid_values_are_refused(self, app: CustomerApplication) -> None:
        taro = register_taro(app)
        with stores_nothing(app), pytest.raises(InvalidValue) as refused:
            app.update_profile(taro.id, expected_version=1, language="Japanese")
        assert refused.value.field == "language"

    def test_an_unknown_customer_is_not_found(self, app: CustomerApplication) -> None:
        with pytest.raises(NotFound):
            app.update_profile(uuid4(), expected_version=None, name="Nobody")


class TestContactPointsAndLookup:
    def test_a_contact_point_is_added_and_found(self, app: CustomerApplication) -> None:
        taro = register_taro(app)
        taro = app.add_contact_point(taro.id, "handle", "LINE:taro_y", at=later(1))
        assert ContactPoint.handle("line", "taro_y") in taro.contact_points
        assert app.lookup("handle", "line:taro_y") == taro
        assert app.get(taro.id) == taro

    def test_lookup_normalises_like_storage(self, app: CustomerApplication) -> None:
        taro = register_taro(app)
        assert app.lookup("email", "  Taro.Yamada@EXAMPLE.jp ") == taro
        assert app.lookup("phone", "+81 90-1234-5678") == taro
        assert app.lookup("phone", "09012345678") == taro

    def test_lookup_of_an_unknown_contact_point_finds_nobody(
        self, app: CustomerApplication
    ) -> None:
        register_taro(app)
        assert app.lookup(*HANAKO_EMAIL) is None

    def test_lookup_of_garbage_is_an_invalid_value(self, app: CustomerApplication) -> None:
        with pytest.raises(InvalidValue) as refused:
            app.lookup("phone", "call me maybe")
        assert refused.value.field == "contact_point.value"

    def test_adding_a_contact_point_the_customer_has_is_refused(
        self, app: CustomerApplication
    ) -> None:
        taro = register_taro(app)
        with stores_nothing(app), pytest.raises(AlreadyExists):
            app.add_contact_point(taro.id, "phone", "+81 90 1234 5678")

    def test_a_contact_point_is_removed_and_no_longer_found(self, app: CustomerApplication) -> None:
        taro = register_taro(app)
        taro = app.remove_contact_point(taro.id, *TARO_EMAIL, at=later(1))
        assert taro.contact_points == (ContactPoint.phone("+819012345678"),)
        assert app.lookup(*TARO_EMAIL) is None

    def test_removing_a_contact_point_the_customer_lacks_is_refused(
        self, app: CustomerApplication
    ) -> None:
        taro = register_taro(app)
        register_hanako(app)
        with stores_nothing(app), pytest.raises(NotFound):
            app.remove_contact_point(taro.id, *HANAKO_EMAIL)
        assert app.lookup(*HANAKO_EMAIL) is not None


class TestMerging:
    def test_contact_points_move_to_the_survivor(self, app: CustomerApplication) -> None:
        taro = register_taro(app)
        duplicate = register_hanako(app, name="T. Yamada", contact_points=[HANAKO_EMAIL])

        survivor = app.merge(duplicate.id, taro.id, at=later(1))

        assert ContactPoint.email(HANAKO_EMAIL[1]) in survivor.contact_points
        assert app.get(taro.id) == survivor
        merged = app.get(duplicate.id)
        assert (merged.merged_into, merged.contact_points) == (taro.id, ())
        assert app.lookup(*HANAKO_EMAIL) == survivor

    def test_all_events_of_a_merge_are_stored_in_one_write(
        self, app: CustomerApplication, writes: list[tuple[str, ...]]
    ) -> None:
        taro = register_taro(app)
        duplicate = register_hanako(app)
        writes.clear()
        app.merge(duplicate.id, taro.id, at=later(1))
        assert writes == [
            ("CustomerMergedInto", "DuplicateAbsorbed", "ClaimReleased", "ClaimTaken")
        ]

    def test_the_merged_duplicate_refuses_changes(self, app: CustomerApplication) -> None:
        taro = register_taro(app)
        duplicate = register_hanako(app)
        app.merge(duplicate.id, taro.id, at=later(1))
        with stores_nothing(app), pytest.raises(RuleViolation):
            app.add_contact_point(duplicate.id, "email", "new@example.jp")
        with stores_nothing(app), pytest.raises(RuleViolation):
            app.merge(taro.id, duplicate.id)

    def test_contact_points_follow_a_chain_of_merges(self, app: CustomerApplication) -> None:
        first = register_hanako(app)
        second = register_taro(app, contact_points=[])
        third = register_taro(app, name="Taro Y.", contact_points=[])
        app.merge(first.id, second.id, at=later(1))
        app.merge(second.id, third.id, at=later(2))
        found = app.lookup(*HANAKO_EMAIL)
        assert found is not None
        assert found.id == third.id

    def test_merging_into_itself_is_refused(self, app: CustomerApplication) -> None:
        taro = register_taro(app)
        with stores_nothing(app), pytest.raises(RuleViolation):
            app.merge(taro.id, taro.id)

    def test_merging_an_unknown_customer_is_not_found(self, app: CustomerApplication) -> None:
        taro = register_taro(app)
        with stores_nothing(app), pytest.raises(NotFound):
            app.merge(uuid4(), taro.id)


class TestConsentLifecycleAndSubscription:
    def test_consent_is_recorded(self, app: CustomerApplication) -> None:
        taro = register_taro(app)
        taro = app.record_consent(taro.id, "marketing_email", True, "web_form", at=later(1))
        consent = taro.consent_for("marketing_email")
        assert consent is not None
        assert (consent.granted, consent.changed_at) == (True, later(1))
        assert app.get(taro.id) == taro

    def test_an_invalid_purpose_stores_nothing(self, app: CustomerApplication) -> None:
        taro = register_taro(app)
        with stores_nothing(app), pytest.raises(InvalidValue):
            app.record_consent(taro.id, "Marketing!", True, "web_form")

    @pytest.mark.parametrize(
        ("path", "allowed"),
        [
            (["active"], True),
            (["churned"], True),
            (["active", "churned"], True),
            (["active", "churned", "active"], True),
            (["prospect"], False),
            (["active", "active"], False),
            (["active", "prospect"], False),
            (["churned", "prospect"], False),
        ],
    )
    def test_lifecycle_paths(
        self, app: CustomerApplication, path: list[str], allowed: bool
    ) -> None:
        taro = register_taro(app)
        *steps, last = path
        for minute, step in enumerate(steps):
            app.change_lifecycle(taro.id, step, at=later(minute))
        if allowed:
            after = app.change_lifecycle(taro.id, last, "won back", at=later(10))
            assert after.lifecycle is Lifecycle(last)
            assert app.get(taro.id) == after
        else:
            with stores_nothing(app), pytest.raises(RuleViolation):
                app.change_lifecycle(taro.id, last, at=later(10))

    def test_subscription_changes(self, app: CustomerApplication) -> None:
        taro = register_taro(app)
        app.change_subscription(taro.id, "trial", "pro", at=later(1))
        taro = app.change_subscription(taro.id, "active", at=later(2))
        assert (taro.subscription.status, taro.subscription.plan) == (
            SubscriptionStatus.ACTIVE,
            "pro",
        )
        with stores_nothing(app), pytest.raises(RuleViolation):
            app.change_subscription(taro.id, "trial")
        with stores_nothing(app), pytest.raises(InvalidValue):
            app.change_subscription(taro.id, "frozen")


class TestErasure:
    def test_erasure_frees_the_contact_points(self, app: CustomerApplication) -> None:
        taro = register_taro(app)
        erased = app.erase(taro.id, at=later(1))
        assert erased.erased
        assert erased.contact_points == ()
        assert app.lookup(*TARO_EMAIL) is None
        assert app.lookup(*TARO_PHONE) is None
        newcomer = register_hanako(app, contact_points=[TARO_EMAIL, TARO_PHONE])
        assert app.lookup(*TARO_PHONE) == newcomer

    def test_the_erasure_event_stores_no_personal_data(self, app: CustomerApplication) -> None:
        taro = register_taro(app)
        before = last_notification_id(app)
        app.erase(taro.id, at=later(1))
        notifications = app.recorder.select_notifications(start=before + 1, limit=10)
        erasure = [n for n in notifications if n.originator_id == taro.id]
        assert len(erasure) == 1
        assert isinstance(app.mapper.to_domain_event(erasure[0]), CustomerErased)
        for notification in notifications:
            assert b"Taro" not in notification.state
            assert b"example.jp" not in notification.state
            assert b"+8190" not in notification.state

    def test_an_erased_customer_refuses_changes(self, app: CustomerApplication) -> None:
        taro = register_taro(app)
        app.erase(taro.id, at=later(1))
        with stores_nothing(app), pytest.raises(RuleViolation):
            app.update_profile(taro.id, expected_version=None, name="Taro")
        with stores_nothing(app), pytest.raises(RuleViolation):
            app.erase(taro.id)
        with stores_nothing(app), pytest.raises(RuleViolation):
            app.record_consent(taro.id, "marketing_email", True, "web_form")


POOL = [
    ("email", "taro.yamada@example.jp"),
    ("email", "TARO.YAMADA@example.jp"),
    ("email", "t.yamada@example.com"),
    ("phone", "090-1234-5678"),
    ("phone", "+81 90 1234 5678"),
    ("phone", "03-1234-5678"),
    ("handle", "line:taro_y"),
    ("handle", "X:taro_y"),
]

profile_updates = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["Taro Yamada", "Jiro Yamada", "  Taro  "]),
        "company": st.sampled_from(["", "Yamada Shoten", "ACME"]),
        "language": st.sampled_from(["", "ja", "EN-us"]),
        "time_zone": st.sampled_from(["", "Asia/Tokyo", "Europe/Paris"]),
        "segment": st.sampled_from(["", "smb", "enterprise"]),
        "tags": st.lists(st.sampled_from(["vip", "Kansai", "churn-risk"]), max_size=3),
        "attributes": st.dictionaries(
            st.sampled_from(["tier", "region"]), st.sampled_from(["gold", "west"]), max_size=2
        ),
    },
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("update"), profile_updates),
        st.tuples(st.just("add"), st.sampled_from(POOL)),
        st.tuples(st.just("remove"), st.sampled_from(POOL)),
    ),
    max_size=12,
)


class TestRebuildingFromEvents:
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(operations)
    def test_the_stored_events_rebuild_the_state_the_commands_returned(
        self, steps: list[tuple[str, object]]
    ) -> None:
        app = CustomerApplication(default_region="JP")
        customer = app.register(name="Taro Yamada", at=MONDAY)
        for minute, (operation, argument) in enumerate(steps, start=1):
            try:
                if operation == "update":
                    assert isinstance(argument, dict)
                    customer = app.update_profile(
                        customer.id, expected_version=customer.version, at=later(minute), **argument
                    )
                else:
                    assert isinstance(argument, tuple)
                    change = (
                        app.add_contact_point if operation == "add" else app.remove_contact_point
                    )
                    customer = change(customer.id, *argument, at=later(minute))
            except DomainError:
                pass
            rebuilt = app.repository.get(customer.id, projector_func=project)
            assert rebuilt == customer
        for point in customer.contact_points:
            assert app.lookup(point.kind, point.value) == customer
