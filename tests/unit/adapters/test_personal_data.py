"""Crypto-shredding in the mapper: personal fields sealed with their subject's own key.

While the key exists an event reads back exactly as it was written; once the key is destroyed
it reads back as its `redacted()` form; its stored bytes never hold the personal values in
clear; events without personal fields are stored exactly as before. The property tests cover
every event of the domain that declares personal fields, found by themselves.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import msgspec
import pytest
from eventsourcing.compressor import ZlibCompressor
from eventsourcing.persistence import MapperDeserialisationError, StoredEvent
from hypothesis import given, settings
from hypothesis import strategies as st

from crmcore.adapters.keyvault import KeyDestroyed, KeyVault
from crmcore.adapters.mapper import (
    SEALED_MARKER,
    MsgspecMapper,
    _merge_maps,
    personal_fields_of,
)
from crmcore.adapters.readmodels import SqliteReadModelStore
from crmcore.application.customers import CustomerApplication
from crmcore.domain.base import DomainEvent
from crmcore.domain.customer import (
    DEVELOPMENT_INDEX_SECRET,
    ClaimTaken,
    ContactPoint,
    ContactPointAdded,
    ContactPointKind,
    CustomerErased,
    CustomerProfileUpdated,
    CustomerRegistered,
    Lifecycle,
    SubscriptionChanged,
    SubscriptionStatus,
    claim_id,
)
from tests.unit.adapters.test_mapper import DOMAIN_EVENTS, events_of

MONDAY = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
TARO = uuid4()
PERSONAL_EVENTS = [cls for cls in DOMAIN_EVENTS if personal_fields_of(cls)]
PLAIN_EVENTS = [cls for cls in DOMAIN_EVENTS if not personal_fields_of(cls)]


def holds_no_text(value: object) -> bool:
    """Whether a redacted value says nothing: empty, or a structure whose personal text is
    blank (a contact point's value, a transcript entry's text, an escalation's reason); the
    labels, enums, ids and times around it are kept."""
    if value is None or value == "" or value == ():
        return True
    if isinstance(value, tuple):
        return all(holds_no_text(item) for item in value)
    if isinstance(value, msgspec.Struct):
        texts = [getattr(value, name, "") for name in ("value", "text", "reason")]
        return all(text == "" for text in texts)
    return False


def new_vault() -> KeyVault:
    return KeyVault(SqliteReadModelStore(":memory:"))


def taro_registered(**changes: Any) -> CustomerRegistered:
    event = CustomerRegistered(
        originator_id=TARO,
        originator_version=1,
        timestamp=MONDAY,
        name="Taro Yamada",
        company="Yamada Shoten",
        language="ja",
        time_zone="Asia/Tokyo",
        segment="gold",
        tags=("prefers-mornings",),
        attributes=(),
        contact_points=(ContactPoint.email("taro.yamada@example.jp"),),
        lifecycle=Lifecycle.ACTIVE,
    )
    return msgspec.structs.replace(event, **changes)


def round_trip(mapper: MsgspecMapper, event: DomainEvent) -> Any:
    return mapper.to_domain_event(mapper.to_stored_event(event))


class TestSealedEvents:
    def test_an_event_reads_back_as_written_while_its_key_exists(self) -> None:
        mapper = MsgspecMapper(key_vault=new_vault())
        assert round_trip(mapper, taro_registered()) == taro_registered()

    def test_the_stored_bytes_hold_no_personal_value_in_clear(self) -> None:
        stored = MsgspecMapper(key_vault=new_vault()).to_stored_event(taro_registered())

        assert stored.state.startswith(SEALED_MARKER)
        for personal in (b"Taro Yamada", b"Yamada Shoten", b"taro.yamada@example.jp", b"prefers"):
            assert personal not in stored.state
        assert b"gold" in stored.state  # the segment is not personal

    def test_once_the_key_is_destroyed_the_event_reads_back_redacted(self) -> None:
        vault = new_vault()
        mapper = MsgspecMapper(key_vault=vault)
        stored = mapper.to_stored_event(taro_registered())

        vault.destroy([TARO])

        read = mapper.to_domain_event(stored)
        assert read == taro_registered().redacted()
        assert (read.name, read.tags, read.segment) == ("", (), "gold")
        assert read.contact_points == ()

    def test_a_redacted_contact_point_keeps_its_kind(self) -> None:
        vault = new_vault()
        mapper = MsgspecMapper(key_vault=vault)
        added = ContactPointAdded(
            originator_id=TARO,
            originator_version=2,
            timestamp=MONDAY,
            contact_point=ContactPoint.phone("+81 90 1234 5678"),
        )
        stored = mapper.to_stored_event(added)
        vault.destroy([TARO])
        read: Any = mapper.to_domain_event(stored)
        assert read.contact_point == ContactPoint(kind=ContactPointKind.PHONE, value="")

    def test_fields_left_unchanged_stay_unset_after_redaction(self) -> None:
        vault = new_vault()
        mapper = MsgspecMapper(key_vault=vault)
        updated = CustomerProfileUpdated(
            originator_id=TARO,
            originator_version=2,
            timestamp=MONDAY,
            changed=("name", "segment"),
            name="Taro Y.",
            segment="platinum",
        )
        stored = mapper.to_stored_event(updated)
        vault.destroy([TARO])

        read = mapper.to_domain_event(stored)
        assert (read.name, read.segment, read.company, read.tags) == ("", "platinum", None, None)  # type: ignore[attr-defined]

    def test_an_update_without_personal_values_is_stored_plain(self) -> None:
        updated = CustomerProfileUpdated(
            originator_id=TARO,
            originator_version=2,
            timestamp=MONDAY,
            changed=("segment",),
            segment="platinum",
        )
        sealed = MsgspecMapper(key_vault=new_vault()).to_stored_event(updated)
        assert sealed.state == MsgspecMapper().to_stored_event(updated).state

    @pytest.mark.parametrize(
        "event",
        [
            ClaimTaken(
                originator_id=uuid4(), originator_version=1, timestamp=MONDAY, customer_id=TARO
            ),
            CustomerErased(originator_id=TARO, originator_version=9, timestamp=MONDAY),
            SubscriptionChanged(
                originator_id=TARO,
                originator_version=3,
                timestamp=MONDAY,
                previous=SubscriptionStatus.NONE,
                status=SubscriptionStatus.TRIAL,
                plan="pro",
            ),
        ],
    )
    def test_events_without_personal_fields_take_the_plain_path(self, event: DomainEvent) -> None:
        with_vault = MsgspecMapper(key_vault=new_vault()).to_stored_event(event)
        assert with_vault.state == MsgspecMapper().to_stored_event(event).state

    def test_sealed_fields_moved_to_another_event_do_not_open(self) -> None:
        mapper = MsgspecMapper(key_vault=new_vault())
        stored = mapper.to_stored_event(taro_registered())
        moved = StoredEvent(
            originator_id=stored.originator_id,
            originator_version=2,
            topic=stored.topic,
            state=stored.state,
        )
        with pytest.raises(MapperDeserialisationError):
            mapper.to_domain_event(moved)

    def test_a_mapper_without_the_vault_reads_the_redacted_form(self) -> None:
        stored = MsgspecMapper(key_vault=new_vault()).to_stored_event(taro_registered())
        assert MsgspecMapper().to_domain_event(stored) == taro_registered().redacted()

    def test_the_public_view_never_reveals_personal_data(self) -> None:
        mapper = MsgspecMapper(key_vault=new_vault())
        sealed = mapper.to_stored_event(taro_registered())
        plain = MsgspecMapper().to_stored_event(taro_registered())
        public = mapper.public_view()
        assert public.to_domain_event(sealed) == taro_registered().redacted()
        assert public.to_domain_event(plain) == taro_registered().redacted()

    def test_sealing_for_a_destroyed_key_is_refused(self) -> None:
        vault = new_vault()
        mapper = MsgspecMapper(key_vault=vault)
        vault.create_key(TARO)
        vault.destroy([TARO])
        with pytest.raises(KeyDestroyed):
            mapper.to_stored_event(taro_registered())

    def test_sealing_composes_with_compression(self) -> None:
        mapper = MsgspecMapper(compressor=ZlibCompressor(), key_vault=new_vault())
        assert round_trip(mapper, taro_registered()) == taro_registered()


class TestEveryPersonalEvent:
    def test_the_domain_declares_personal_fields(self) -> None:
        names = {cls.__name__ for cls in PERSONAL_EVENTS}
        assert {"CustomerRegistered", "CustomerProfileUpdated", "ContactPointAdded"} <= names

    @pytest.mark.parametrize("cls", PERSONAL_EVENTS, ids=lambda cls: cls.__name__)
    @settings(max_examples=25, deadline=None)
    @given(data=st.data())
    def test_reads_back_whole_then_redacted(
        self, cls: type[DomainEvent], data: st.DataObject
    ) -> None:
        event: Any = data.draw(events_of(cls))
        vault = new_vault()
        mapper = MsgspecMapper(key_vault=vault)
        stored = mapper.to_stored_event(event)

        assert mapper.to_domain_event(stored) == event
        vault.destroy([event.personal_data_subject()])
        redacted = mapper.to_domain_event(stored)
        assert redacted == event.redacted()
        for name in personal_fields_of(cls):
            assert holds_no_text(getattr(redacted, name)), name

    @pytest.mark.parametrize("cls", PLAIN_EVENTS[:20], ids=lambda cls: cls.__name__)
    @settings(max_examples=10, deadline=None)
    @given(data=st.data())
    def test_events_without_personal_fields_are_stored_unchanged(
        self, cls: type[DomainEvent], data: st.DataObject
    ) -> None:
        event = data.draw(events_of(cls))
        assert (
            MsgspecMapper(key_vault=new_vault()).to_stored_event(event).state
            == MsgspecMapper().to_stored_event(event).state
        )


class TestMapSplicing:
    @given(
        st.dictionaries(
            st.text(max_size=8).map(lambda key: "a" + key),
            st.integers(-(2**63), 2**63 - 1),
            max_size=40,
        ),
        st.dictionaries(st.text(max_size=8).map(lambda key: "b" + key), st.text(), max_size=40),
    )
    def test_two_maps_become_one(self, first: dict[str, int], second: dict[str, str]) -> None:
        merged = _merge_maps(msgspec.msgpack.encode(first), msgspec.msgpack.encode(second))
        assert msgspec.msgpack.decode(merged) == {**first, **second}

    def test_maps_of_any_size(self) -> None:
        big = {f"k{index}": index for index in range(70_000)}
        merged = _merge_maps(msgspec.msgpack.encode(big), msgspec.msgpack.encode({"z": 1}))
        assert len(msgspec.msgpack.decode(merged)) == 70_001


class TestTheApplication:
    def test_an_erased_customer_rebuilds_consistently_from_its_redacted_events(self) -> None:
        app = CustomerApplication(default_region="JP")
        taro = app.register(
            name="Taro", contact_points=[("phone", "090-1234-5678")], tags=["vip"], segment="gold"
        )
        app.add_contact_point(taro.id, "email", "taro@example.jp")
        app.change_lifecycle(taro.id, "active", reason="signed a contract in person")

        erased = app.erase(taro.id)

        assert app.key_vault.is_destroyed(taro.id)
        assert app.get(taro.id) == erased
        assert (erased.name, erased.contact_points, erased.segment) == ("", (), "gold")
        assert erased.lifecycle is Lifecycle.ACTIVE
        assert app.lookup("phone", "090-1234-5678") is None

    def test_erasing_a_survivor_destroys_the_keys_of_the_merged_customers(self) -> None:
        app = CustomerApplication()
        survivor = app.register(name="Taro")
        first = app.register(name="T. Yamada")
        second = app.register(name="Yamada T")
        app.merge(second.id, first.id)
        app.merge(first.id, survivor.id)

        app.erase(survivor.id)

        assert all(app.key_vault.is_destroyed(each) for each in (survivor.id, first.id, second.id))
        assert app.get(second.id).name == ""

    def test_the_key_is_made_before_the_first_event(self) -> None:
        app = CustomerApplication()
        taro = app.register(name="Taro")
        assert app.key_vault.existing_key(taro.id) is not None


class TestKeyVault:
    def test_concurrent_creations_give_each_subject_one_durable_key(self) -> None:
        vault = new_vault()
        subjects = [uuid4() for _ in range(64)]
        keys: dict[UUID, bytes] = {}

        def create(subject: UUID) -> None:
            keys[subject] = vault.create_key(subject)

        threads = [threading.Thread(target=create, args=(subject,)) for subject in subjects]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        fresh = KeyVault(vault.store)  # nothing cached: reads the table
        assert {subject: fresh.existing_key(subject) for subject in subjects} == keys
        assert len(set(keys.values())) == len(subjects)

    def test_a_destroyed_key_leaves_a_tombstone_and_is_never_remade(self) -> None:
        vault = new_vault()
        vault.create_key(TARO)
        vault.destroy([TARO])
        assert vault.existing_key(TARO) is None
        with pytest.raises(KeyDestroyed):
            vault.data_key(TARO)
        with pytest.raises(KeyDestroyed):
            vault.create_key(TARO)

    def test_a_subject_without_a_key_is_given_one(self) -> None:
        vault = new_vault()
        assert vault.existing_key(TARO) is None
        assert vault.data_key(TARO) == vault.existing_key(TARO)


class _HeldReads(SqliteReadModelStore):
    """A store whose key reads wait until the test lets them go on."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.hold = False
        self.reading = threading.Event()
        self.go_on = threading.Event()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        rows = super().query(sql, params)
        if self.hold and "FROM data_keys" in sql:
            self.reading.set()
            self.go_on.wait(timeout=10)
        return rows


class TestKeyReads:
    def test_a_prefetched_key_is_the_key(self) -> None:
        vault = KeyVault(SqliteReadModelStore(":memory:"), cache_ttl_s=0)
        key = vault.create_key(TARO)
        vault.prefetch(TARO)
        assert vault.existing_key(TARO) == key
        vault.close_vault()

    def test_a_read_racing_a_destruction_does_not_bring_the_key_back(self) -> None:
        store = _HeldReads()
        vault = KeyVault(store)
        vault.create_key(TARO)
        vault = KeyVault(store)  # nothing cached
        store.hold = True
        vault.prefetch(TARO)
        assert store.reading.wait(timeout=10)

        vault.destroy([TARO])  # while the read that found the key is still on its way
        store.go_on.set()
        store.hold = False

        assert vault.existing_key(TARO) is None
        vault.close_vault()


class TestClaimIds:
    def test_claim_ids_depend_on_the_index_secret(self) -> None:
        point = ContactPoint.phone("+81 90 1234 5678")
        assert claim_id(point) == claim_id(point, DEVELOPMENT_INDEX_SECRET)
        assert claim_id(point, b"production secret") != claim_id(point)

    def test_applications_with_other_secrets_do_not_share_claims(self) -> None:
        first = CustomerApplication(index_secret=b"first secret")
        second = CustomerApplication(index_secret=b"second secret")
        point = ContactPoint.email("taro@example.jp")
        assert first.claim_id(point) != second.claim_id(point)
