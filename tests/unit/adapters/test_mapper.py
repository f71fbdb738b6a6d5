"""The msgspec mapper: every domain event survives storage unchanged, however it is wrapped.

The property test finds every concrete event of the `crmcore.domain` package by itself, so a new
event is covered the day it is written. Values are generated from each event's msgspec type
information (`msgspec.inspect`), which knows the exact field types and their constraints; this
keeps hypothesis' global type registry untouched for the rest of the test session.
"""

from __future__ import annotations

import base64
import importlib
import os
import pkgutil
import zlib
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, ClassVar
from uuid import UUID, uuid4

import msgspec
import pytest
from eventsourcing.compressor import ZlibCompressor
from eventsourcing.persistence import Cipher, MapperDeserialisationError, StoredEvent
from eventsourcing.utils import Environment, get_topic
from hypothesis import given, settings
from hypothesis import strategies as st

import crmcore.domain
from crmcore.adapters.mapper import MsgspecMapper
from crmcore.application.base import CRMApplication
from crmcore.config import PersistenceSettings
from crmcore.domain.base import Aggregate, DomainEvent, Event, advance

# --- Every concrete event of the domain package. -------------------------------------------


def domain_modules() -> list[str]:
    package = crmcore.domain
    names = [info.name for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")]
    for name in names:
        importlib.import_module(name)
    return names


def concrete_domain_events() -> list[type[DomainEvent]]:
    """Every DomainEvent subclass defined in crmcore.domain, except the bases.

    A base is a class whose name ends with "Event" (`DomainEvent`, `Event`, `CustomerEvent`…):
    the project names context bases that way and concrete events by what happened."""
    modules = set(domain_modules())
    found: set[type[DomainEvent]] = set()
    pending: list[type[DomainEvent]] = [DomainEvent]
    while pending:
        cls = pending.pop()
        for subclass in cls.__subclasses__():
            pending.append(subclass)
            if subclass.__module__ in modules and not subclass.__name__.endswith("Event"):
                found.add(subclass)
    return sorted(found, key=lambda cls: (cls.__module__, cls.__qualname__))


DOMAIN_EVENTS = concrete_domain_events()


# --- Values for any msgspec type, within its declared constraints. -------------------------

_OFFSETS = st.sampled_from(
    [UTC, timezone(timedelta(hours=9)), timezone(timedelta(hours=-5, minutes=-30))]
)
_INT64 = (-(2**63), 2**63 - 1)


def _strings(info: msgspec.inspect.StrType) -> st.SearchStrategy[str]:
    min_size = info.min_length or 0
    max_size = info.max_length if info.max_length is not None else max(min_size, 40)
    if info.pattern is not None:
        return st.from_regex(info.pattern).filter(lambda text: min_size <= len(text) <= max_size)
    return st.text(min_size=min_size, max_size=max_size)


def _ints(info: msgspec.inspect.IntType) -> st.SearchStrategy[int]:
    lows = [_INT64[0], info.ge, None if info.gt is None else info.gt + 1]
    highs = [_INT64[1], info.le, None if info.lt is None else info.lt - 1]
    low = max(bound for bound in lows if bound is not None)
    high = min(bound for bound in highs if bound is not None)
    if info.multiple_of:
        step = info.multiple_of
        return st.integers(min_value=-(-low // step), max_value=high // step).map(
            lambda factor: factor * step
        )
    return st.integers(min_value=low, max_value=high)


def _floats(info: msgspec.inspect.FloatType) -> st.SearchStrategy[float]:
    return st.floats(
        min_value=info.ge if info.ge is not None else info.gt,
        max_value=info.le if info.le is not None else info.lt,
        exclude_min=info.gt is not None and info.ge is None,
        exclude_max=info.lt is not None and info.le is None,
        allow_nan=False,
    )


def _sized(
    items: st.SearchStrategy[Any], info: msgspec.inspect.VarTupleType | msgspec.inspect.ListType
) -> st.SearchStrategy[list[Any]]:
    min_size = info.min_length or 0
    max_size = info.max_length if info.max_length is not None else max(min_size, 4)
    return st.lists(items, min_size=min_size, max_size=max_size)


def values_of(info: msgspec.inspect.Type) -> st.SearchStrategy[Any]:
    """A strategy for values that msgspec encodes and decodes back as equal values."""
    inspect = msgspec.inspect
    if isinstance(info, inspect.StructType):
        return st.builds(info.cls, **{field.name: values_of(field.type) for field in info.fields})
    if isinstance(info, inspect.StrType):
        return _strings(info)
    if isinstance(info, inspect.IntType):
        return _ints(info)
    if isinstance(info, inspect.FloatType):
        return _floats(info)
    if isinstance(info, inspect.BoolType):
        return st.booleans()
    if isinstance(info, inspect.NoneType):
        return st.none()
    if isinstance(info, inspect.UUIDType):
        return st.uuids()
    if isinstance(info, inspect.DateTimeType):
        moments = st.datetimes(min_value=datetime(1900, 1, 2), max_value=datetime(2200, 1, 1))
        if info.tz is False:
            return moments
        # Domain times are aware; msgspec gives them back in UTC, which compares equal.
        return st.datetimes(
            min_value=datetime(1900, 1, 2), max_value=datetime(2200, 1, 1), timezones=_OFFSETS
        )
    if isinstance(info, inspect.DateType):
        return st.dates()
    if isinstance(info, inspect.TimeDeltaType):
        return st.timedeltas()
    if isinstance(info, inspect.EnumType):
        return st.sampled_from(list(info.cls))
    if isinstance(info, inspect.LiteralType):
        return st.sampled_from(info.values)
    if isinstance(info, inspect.UnionType):
        return st.one_of(*(values_of(member) for member in info.types))
    if isinstance(info, inspect.VarTupleType):
        return _sized(values_of(info.item_type), info).map(tuple)
    if isinstance(info, inspect.TupleType):
        return st.tuples(*(values_of(item) for item in info.item_types))
    if isinstance(info, inspect.ListType):
        return _sized(values_of(info.item_type), info)
    if isinstance(info, inspect.FrozenSetType):
        return st.frozensets(values_of(info.item_type), max_size=4)
    if isinstance(info, inspect.DictType):
        return st.dictionaries(values_of(info.key_type), values_of(info.value_type), max_size=4)
    raise NotImplementedError(
        f"no value strategy for msgspec type {info!r}: add one to values_of()"
    )


def events_of(cls: type[DomainEvent]) -> st.SearchStrategy[DomainEvent]:
    strategy: st.SearchStrategy[DomainEvent] = values_of(msgspec.inspect.type_info(cls))
    return strategy


# --- A small event family of our own, for the wiring tests. --------------------------------


class Parcel(Aggregate, frozen=True, kw_only=True):
    recipient: str


class ParcelEvent(Event[Parcel], frozen=True, kw_only=True):
    context: ClassVar[str] = "mapper_check"


class Courier(msgspec.Struct, frozen=True, kw_only=True):
    company: str
    tracking: str


class ParcelSent(ParcelEvent, frozen=True, kw_only=True):
    recipient: str
    labels: tuple[str, ...]
    courier: Courier

    def mutate(self, state: Parcel | None) -> Parcel:
        return Parcel(
            id=self.originator_id,
            version=self.originator_version,
            created_on=self.timestamp,
            modified_on=self.timestamp,
            recipient=self.recipient,
        )


class ParcelRedirected(ParcelEvent, frozen=True, kw_only=True):
    recipient: str

    def apply(self, state: Parcel) -> Parcel:
        return advance(state, self, recipient=self.recipient)


class MapperCheck(CRMApplication):
    name = "mapper_check"
    aggregate_kind = "parcel"


def parcel_sent(parcel_id: UUID | None = None) -> ParcelSent:
    return ParcelSent(
        originator_id=parcel_id or uuid4(),
        originator_version=1,
        timestamp=datetime(2025, 4, 1, 9, 30, tzinfo=UTC),
        recipient="佐藤 一郎 / Ichiro Sato, Osaka Umeda 2-2-2",
        labels=("fragile", "fragile-again", "express"),
        courier=Courier(company="Yamato", tracking="4470-1234-5678"),
    )


def encryption_key() -> str:
    """A fresh AES-256 key as the library's AESCipher reads it from CIPHER_KEY."""
    return base64.b64encode(os.urandom(32)).decode()


def aes_cipher(key: str) -> Cipher:
    from eventsourcing.cipher import AESCipher  # needs the eventsourcing[crypto] extra

    return AESCipher(Environment(env={"CIPHER_KEY": key}))


# --- Tests. ---------------------------------------------------------------------------------


class TestEveryDomainEvent:
    def test_the_domain_package_has_events_to_check(self) -> None:
        assert len(DOMAIN_EVENTS) >= 10, [cls.__name__ for cls in DOMAIN_EVENTS]

    def test_no_event_base_is_checked_as_an_event(self) -> None:
        assert not {DomainEvent, Event} & set(DOMAIN_EVENTS)
        assert all(not cls.__name__.endswith("Event") for cls in DOMAIN_EVENTS)

    @pytest.mark.parametrize("event_class", DOMAIN_EVENTS, ids=lambda cls: cls.__name__)
    @settings(max_examples=40, deadline=None)
    @given(data=st.data())
    def test_round_trips_through_the_mapper_unchanged(
        self, event_class: type[DomainEvent], data: st.DataObject
    ) -> None:
        mapper = MsgspecMapper()
        event = data.draw(events_of(event_class))

        stored = mapper.to_stored_event(event)

        assert stored.topic == get_topic(event_class)
        assert (stored.originator_id, stored.originator_version) == (
            event.originator_id,
            event.originator_version,
        )
        assert mapper.to_domain_event(stored) == event


class TestStoredForm:
    def test_state_is_the_event_as_messagepack(self) -> None:
        event = parcel_sent()

        stored = MsgspecMapper().to_stored_event(event)

        assert stored.topic == f"{__name__}:ParcelSent"
        assert msgspec.msgpack.decode(stored.state, type=ParcelSent) == event
        assert msgspec.msgpack.decode(stored.state)["courier"] == {
            "company": "Yamato",
            "tracking": "4470-1234-5678",
        }

    def test_decoding_gives_back_the_concrete_types(self) -> None:
        mapper = MsgspecMapper()

        decoded = mapper.to_domain_event(mapper.to_stored_event(parcel_sent()))

        assert isinstance(decoded, ParcelSent)
        assert isinstance(decoded.originator_id, UUID)
        assert isinstance(decoded.courier, Courier)
        assert isinstance(decoded.labels, tuple)
        assert decoded.timestamp.tzinfo is not None


class TestCompressionAndEncryption:
    def test_a_compressed_event_round_trips(self) -> None:
        mapper = MsgspecMapper(compressor=ZlibCompressor())
        event = parcel_sent()

        stored = mapper.to_stored_event(event)

        assert zlib.decompress(stored.state) == msgspec.msgpack.encode(event)
        assert mapper.to_domain_event(stored) == event

    def test_an_encrypted_event_is_unreadable_without_the_key(self) -> None:
        event = parcel_sent()
        key = encryption_key()
        mapper = MsgspecMapper(cipher=aes_cipher(key))

        stored = mapper.to_stored_event(event)

        assert b"Yamato" not in stored.state
        assert aes_cipher(key).decrypt(stored.state) == msgspec.msgpack.encode(event)
        assert mapper.to_domain_event(stored) == event

    def test_events_are_compressed_before_they_are_encrypted(self) -> None:
        key = encryption_key()
        mapper = MsgspecMapper(compressor=ZlibCompressor(), cipher=aes_cipher(key))
        event = parcel_sent()

        stored = mapper.to_stored_event(event)

        plaintext = aes_cipher(key).decrypt(stored.state)
        assert zlib.decompress(plaintext) == msgspec.msgpack.encode(event)
        assert mapper.to_domain_event(stored) == event

    def test_another_key_cannot_read_the_event(self) -> None:
        stored = MsgspecMapper(cipher=aes_cipher(encryption_key())).to_stored_event(parcel_sent())

        with pytest.raises(MapperDeserialisationError, match="ParcelSent"):
            MsgspecMapper(cipher=aes_cipher(encryption_key())).to_domain_event(stored)

    def test_an_application_configured_with_a_key_and_compressor_stores_ciphertext(
        self,
    ) -> None:
        settings = PersistenceSettings(
            kind="memory",
            library_env={
                "CIPHER_KEY": encryption_key(),
                "COMPRESSOR_TOPIC": "eventsourcing.compressor:ZlibCompressor",
            },
        )
        app = MapperCheck(settings)
        parcel_id = uuid4()

        app.record(parcel_sent(parcel_id))

        assert isinstance(app.mapper, MsgspecMapper)
        assert app.mapper.cipher is not None
        assert isinstance(app.mapper.compressor, ZlibCompressor)
        (stored,) = app.recorder.select_events(parcel_id)
        assert b"Yamato" not in stored.state
        assert app.load(parcel_id, Parcel).recipient.startswith("佐藤")


class TestUndecodableState:
    @staticmethod
    def stored(state: bytes, topic: str = f"{__name__}:ParcelSent") -> StoredEvent:
        return StoredEvent(
            originator_id=UUID(int=7), originator_version=3, topic=topic, state=state
        )

    def test_bytes_that_are_not_messagepack_are_a_deserialisation_error(self) -> None:
        with pytest.raises(MapperDeserialisationError, match=r"ParcelSent .* v3"):
            MsgspecMapper().to_domain_event(self.stored(b"\xc1\xc1"))

    def test_messagepack_of_the_wrong_shape_is_a_deserialisation_error(self) -> None:
        state = msgspec.msgpack.encode({"recipient": 42})

        with pytest.raises(MapperDeserialisationError, match="ParcelSent"):
            MsgspecMapper().to_domain_event(self.stored(state))

    def test_state_of_another_event_class_is_a_deserialisation_error(self) -> None:
        redirected = ParcelRedirected(
            originator_id=UUID(int=7),
            originator_version=3,
            timestamp=datetime(2025, 4, 1, tzinfo=UTC),
            recipient="Kobe",
        )
        state = MsgspecMapper().to_stored_event(redirected).state

        with pytest.raises(MapperDeserialisationError):
            MsgspecMapper().to_domain_event(self.stored(state))

    def test_a_tampered_ciphertext_is_a_deserialisation_error(self) -> None:
        mapper = MsgspecMapper(cipher=aes_cipher(encryption_key()))
        stored = mapper.to_stored_event(parcel_sent())
        tampered = bytes([stored.state[0] ^ 1]) + stored.state[1:]

        with pytest.raises(MapperDeserialisationError):
            mapper.to_domain_event(self.stored(tampered))
