"""Who did what: the actor of every stored event, and a customer's audit trail in-process.

Desk agent Alice (token `desk-alice`) registers Hanako and takes her call; back-office Bob
(token `backoffice-bob`) edits her profile, merges her duplicate and finally erases her. The
events say who did each thing; the audit lists it newest first, page by page, after the
erasure too, and never holds a personal value.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from uuid import UUID, uuid4

import msgspec
import pytest
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic

from crmcore.adapters.keyvault import KeyVault
from crmcore.adapters.mapper import MsgspecMapper
from crmcore.adapters.readmodels import SqliteReadModelStore
from crmcore.application.audit import AuditEntry, changed_fields
from crmcore.application.base import with_actor
from crmcore.application.customers import CustomerApplication
from crmcore.application.principal import (
    SLA_SCHEDULER_PRINCIPAL,
    Principal,
    acting_as,
    current_principal,
    running_as,
    system_principal,
)
from crmcore.crm import CRM
from crmcore.domain.base import DomainEvent
from crmcore.domain.customer import (
    ContactPoint,
    Customer,
    CustomerProfileUpdated,
    CustomerRegistered,
    Lifecycle,
    LifecycleChanged,
)
from crmcore.domain.errors import InvalidValue, NotFound
from crmcore.domain.interaction import Queued

MONDAY = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
ALICE = Principal(token_id="t-1", name="desk-alice", scopes=frozenset({"customers:write"}))
BOB = Principal(token_id="t-2", name="backoffice-bob", scopes=frozenset({"customers:erase"}))
NAME = "Hanako Suzuki"
EMAIL = "hanako.suzuki@example.jp"
NEW_NAME = "Hanako Sato"
DUPLICATE_EMAIL = "h.suzuki@example.jp"
PERSONAL = (NAME, EMAIL, NEW_NAME, DUPLICATE_EMAIL, "hanako", "Suzuki", "Sato")
TARO = uuid4()


def at(minutes: float) -> datetime:
    return MONDAY + timedelta(minutes=minutes)


def stored_events(app: CustomerApplication, aggregate_id: UUID) -> list[DomainEvent]:
    return [
        cast(DomainEvent, app.mapper.to_domain_event(stored))
        for stored in app.recorder.select_events(aggregate_id)
    ]


# --- the actor of stored events -------------------------------------------------------------


class TestActorStamping:
    def test_events_stored_while_acting_as_a_principal_name_its_token(self) -> None:
        app = CustomerApplication()
        with acting_as(ALICE):
            hanako = app.register(name=NAME, contact_points=[("email", EMAIL)], at=at(0))
        with acting_as(BOB):
            app.change_lifecycle(hanako.id, "active", at=at(1))

        assert [event.actor for event in stored_events(app, hanako.id)] == [
            "token:desk-alice",
            "token:backoffice-bob",
        ]

    def test_without_a_principal_the_actor_stays_empty(self) -> None:
        # In-process library use: nobody identified, so nobody is named (not a made-up name).
        app = CustomerApplication()
        hanako = app.register(name=NAME, at=at(0))

        assert [event.actor for event in stored_events(app, hanako.id)] == [""]

    def test_an_event_that_already_names_its_actor_keeps_it(self) -> None:
        app = CustomerApplication()
        hanako = app.register(name=NAME, at=at(0))
        importer = "system:crm-import"

        def change(customer: Customer) -> DomainEvent:
            (changed,) = [customer.change_lifecycle("active", at=at(1))]
            return msgspec.structs.replace(changed, actor=importer)

        with acting_as(ALICE):
            app.execute(hanako.id, Customer, change)

        assert stored_events(app, hanako.id)[-1].actor == importer

    def test_with_group_commit_each_caller_is_named_not_the_writer_thread(self) -> None:
        app = CustomerApplication(group_commit=True)
        registered: dict[str, UUID] = {}
        start = threading.Barrier(8)

        def register(principal: Principal, number: int) -> None:
            start.wait()
            with acting_as(principal):
                customer = app.register(name=f"Customer {number}", at=at(number))
            registered[f"{principal.name}-{number}"] = customer.id

        threads = [
            threading.Thread(target=register, args=(ALICE if number % 2 else BOB, number))
            for number in range(8)
        ]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=30)
            assert len(registered) == 8
            for key, customer_id in registered.items():
                expected = "token:" + key.rpartition("-")[0]
                assert [event.actor for event in stored_events(app, customer_id)] == [expected]
        finally:
            app.shut_down()

    def test_system_work_names_the_part_of_the_system_doing_it(self) -> None:
        app = CustomerApplication()

        hanako = running_as(SLA_SCHEDULER_PRINCIPAL, app.register)(name=NAME, at=at(0))

        assert stored_events(app, hanako.id)[0].actor == "system:sla-scheduler"
        assert current_principal.get() is None  # restored after the call

    def test_with_actor_changes_only_events_without_one(self) -> None:
        hanako = uuid4()
        plain = LifecycleChanged(
            originator_id=hanako,
            originator_version=2,
            timestamp=at(0),
            previous=Lifecycle.PROSPECT,
            lifecycle=Lifecycle.ACTIVE,
        )
        named = msgspec.structs.replace(plain, originator_version=3, actor="system:x")

        assert with_actor((plain, named)) == (plain, named)  # no principal: as they are
        with acting_as(BOB):
            stamped = with_actor((plain, named))
        assert [event.actor for event in stamped] == ["token:backoffice-bob", "system:x"]


class TestPrincipal:
    def test_a_principal_made_from_a_token_is_named_after_it(self) -> None:
        principal = Principal(token_id="t-9", name="cti-gateway", scopes=frozenset({"admin"}))
        assert (principal.kind, principal.actor) == ("token", "token:cti-gateway")

    def test_a_system_principal_names_the_system(self) -> None:
        assert system_principal("routing-consumer").actor == "system:routing-consumer"


class TestActorInStorage:
    def registered(self, **changes: Any) -> CustomerRegistered:
        event = CustomerRegistered(
            originator_id=TARO,
            originator_version=1,
            timestamp=at(0),
            name=NAME,
            company="",
            language="ja",
            time_zone="Asia/Tokyo",
            segment="gold",
            tags=(),
            attributes=(),
            contact_points=(ContactPoint.email(EMAIL),),
            lifecycle=Lifecycle.ACTIVE,
            actor="token:desk-alice",
        )
        return msgspec.structs.replace(event, **changes)

    def test_a_sealed_event_keeps_its_actor_before_and_after_its_key_is_destroyed(self) -> None:
        vault = KeyVault(SqliteReadModelStore(":memory:"))
        mapper = MsgspecMapper(key_vault=vault)
        stored = mapper.to_stored_event(self.registered())

        assert mapper.to_domain_event(stored) == self.registered()
        vault.destroy([TARO])
        read = cast(CustomerRegistered, mapper.to_domain_event(stored))
        assert (read.actor, read.name) == ("token:desk-alice", "")

    def test_an_update_carrying_only_its_changes_keeps_its_actor(self) -> None:
        mapper = MsgspecMapper(key_vault=KeyVault(SqliteReadModelStore(":memory:")))
        update = CustomerProfileUpdated(
            originator_id=TARO,
            originator_version=2,
            timestamp=at(1),
            changed=("segment",),
            segment="platinum",
            actor="token:backoffice-bob",
        )
        assert mapper.to_domain_event(mapper.to_stored_event(update)) == update

    def test_an_event_stored_before_actors_were_recorded_reads_with_none(self) -> None:
        mapper = MsgspecMapper()
        event = self.registered(actor="")
        fields = msgspec.structs.asdict(event)
        del fields["actor"]  # what an older version stored
        stored = StoredEvent(
            originator_id=TARO,
            originator_version=1,
            topic=get_topic(CustomerRegistered),
            state=msgspec.msgpack.encode(fields),
        )
        assert mapper.to_domain_event(stored) == event


# --- which fields an event set --------------------------------------------------------------


class TestChangedFields:
    def test_a_profile_update_names_what_it_changed(self) -> None:
        update = CustomerProfileUpdated(
            originator_id=TARO,
            originator_version=2,
            timestamp=at(1),
            changed=("name", "tags"),
            name=NEW_NAME,
            tags=("vip",),
        )
        assert changed_fields(update) == ("name", "tags")

    def test_what_a_field_was_before_is_not_a_change(self) -> None:
        changed = LifecycleChanged(
            originator_id=TARO,
            originator_version=2,
            timestamp=at(1),
            previous=Lifecycle.PROSPECT,
            lifecycle=Lifecycle.ACTIVE,
            reason="first order",
        )
        assert changed_fields(changed) == ("lifecycle", "reason")

    def test_the_facts_every_interaction_event_repeats_are_left_out(self) -> None:
        crm = CRM.in_memory()
        call = crm.interactions.open_interaction(channel="phone", at=at(0))
        crm.interactions.queue(call.id, queue="billing", at=at(1))
        notifications = crm.interactions.recorder.select_notifications(start=1, limit=10)
        (queued,) = [
            event
            for event in map(crm.interactions.mapper.to_domain_event, notifications)
            if isinstance(event, Queued)
        ]
        assert "status" not in changed_fields(queued)
        assert "channel" not in changed_fields(queued)
        assert "requirements" in changed_fields(queued)


# --- the audit trail of a customer ----------------------------------------------------------


def actions(entries: tuple[AuditEntry, ...] | list[AuditEntry]) -> list[tuple[str, str]]:
    return [(entry.actor, entry.action) for entry in entries]


class Story:
    """Hanako's history: Alice registers her and takes a call; Bob edits, merges, erases."""

    def __init__(self) -> None:
        self.crm = CRM.in_memory(default_region="JP")
        customers, interactions = self.crm.customers, self.crm.interactions
        with acting_as(ALICE):
            self.hanako = customers.register(
                name=NAME, contact_points=[("email", EMAIL)], at=at(0)
            ).id
            self.duplicate = customers.register(
                name=NAME, contact_points=[("email", DUPLICATE_EMAIL)], at=at(1)
            ).id
            self.call = interactions.open_interaction(
                channel="phone", customer_id=self.hanako, contact_reason="billing", at=at(2)
            ).id
            interactions.queue(self.call, queue="billing", at=at(3))
        with acting_as(BOB):
            customers.update_profile(self.hanako, name=NEW_NAME, expected_version=None, at=at(4))
            customers.merge(self.duplicate, self.hanako, at=at(5))

    def everything(self, customer_id: UUID | None = None, **query: Any) -> list[AuditEntry]:
        entries: list[AuditEntry] = []
        token = ""
        while True:
            page = self.crm.audit(
                customer_id or self.hanako, page_size=2, page_token=token, **query
            )
            entries += page.entries
            token = page.next_page_token
            if not token:
                return entries


@pytest.fixture
def story() -> Any:
    told = Story()
    yield told
    told.crm.shut_down()


class TestCustomerAudit:
    def test_lists_who_did_what_newest_first(self, story: Story) -> None:
        page = story.crm.audit(story.hanako)

        # Both sides of the merge happen at one time: the larger aggregate id comes first.
        merge = [
            ("token:backoffice-bob", "crm.customer.duplicate_absorbed.v1"),
            ("token:backoffice-bob", "crm.customer.merged_into.v1"),
        ]
        if str(story.duplicate) > str(story.hanako):
            merge.reverse()
        assert page.customer_id == story.hanako
        assert actions(page.entries) == [
            *merge,
            ("token:backoffice-bob", "crm.customer.profile_updated.v1"),
            ("token:desk-alice", "crm.interaction.queued.v1"),
            ("token:desk-alice", "crm.interaction.opened.v1"),
            ("token:desk-alice", "crm.customer.registered.v1"),
            ("token:desk-alice", "crm.customer.registered.v1"),
        ]
        assert page.next_page_token == ""
        update = page.entries[2]
        assert (update.service, update.aggregate_id, update.fields) == (
            "customer",
            story.hanako,
            ("name",),
        )
        queued = page.entries[3]
        assert (queued.service, queued.aggregate_id, queued.customer_id) == (
            "interaction",
            story.call,
            story.hanako,
        )
        times = [entry.occurred_at for entry in page.entries]
        assert times == sorted(times, reverse=True)

    def test_pages_follow_each_other_without_gaps_or_repeats(self, story: Story) -> None:
        whole = story.crm.audit(story.hanako, page_size=100).entries
        first = story.crm.audit(story.hanako, page_size=3)

        assert len(first.entries) == 3
        assert first.next_page_token
        assert tuple(story.everything()) == whole

    def test_a_merged_away_id_gives_the_survivors_trail(self, story: Story) -> None:
        page = story.crm.audit(story.duplicate, page_size=100)

        assert page.customer_id == story.hanako
        assert page.entries == story.crm.audit(story.hanako, page_size=100).entries
        merged = [entry for entry in page.entries if entry.customer_id == story.duplicate]
        assert actions(merged) == [
            ("token:backoffice-bob", "crm.customer.merged_into.v1"),
            ("token:desk-alice", "crm.customer.registered.v1"),
        ]

    def test_a_time_range_keeps_the_events_from_its_start_until_before_its_end(
        self, story: Story
    ) -> None:
        within = story.everything(since=at(2), until=at(4))

        assert actions(within) == [
            ("token:desk-alice", "crm.interaction.queued.v1"),
            ("token:desk-alice", "crm.interaction.opened.v1"),
        ]

    def test_after_the_erasure_the_history_is_listed_without_anything_personal(
        self, story: Story
    ) -> None:
        before = story.everything()
        with acting_as(BOB):
            story.crm.customers.erase(story.hanako, at=at(6))

        after = story.everything()

        assert actions(after[:1]) == [("token:backoffice-bob", "crm.customer.erased.v1")]
        assert after[1:] == before  # field names only: the erasure changes none of them
        for entry in after:
            for personal in PERSONAL:
                assert personal not in repr(entry)

    def test_an_anonymous_contact_joins_the_trail_once_the_caller_is_identified(
        self, story: Story
    ) -> None:
        interactions = story.crm.interactions
        with acting_as(ALICE):
            chat = interactions.open_interaction(channel="chat", at=at(10)).id
            interactions.identify_customer(chat, story.hanako, at=at(11))

        newest = story.crm.audit(story.hanako, page_size=2).entries

        assert [(entry.aggregate_id, entry.aggregate_version) for entry in newest] == [
            (chat, 2),
            (chat, 1),
        ]

    def test_an_unknown_customer_is_not_found(self, story: Story) -> None:
        with pytest.raises(NotFound):
            story.crm.audit(uuid4())

    @pytest.mark.parametrize(
        ("query", "field"),
        [
            ({"page_size": -1}, "page_size"),
            ({"page_token": "not a token"}, "page_token"),
            ({"page_token": "AAAA"}, "page_token"),
            ({"since": at(5), "until": at(5)}, "end_time"),
        ],
    )
    def test_a_bad_request_names_its_field(
        self, story: Story, query: dict[str, Any], field: str
    ) -> None:
        with pytest.raises(InvalidValue) as refused:
            story.crm.audit(story.hanako, **query)
        assert refused.value.field == field

    def test_a_page_token_continues_only_its_own_query(self, story: Story) -> None:
        token = story.crm.audit(story.hanako, page_size=1).next_page_token
        other = story.crm.customers.register(name="Jiro", at=at(20)).id

        for query in (
            {"customer_id": other},
            {"customer_id": story.hanako, "since": at(0)},
        ):
            with pytest.raises(InvalidValue) as refused:
                story.crm.audit(page_token=token, **query)
            assert refused.value.field == "page_token"
