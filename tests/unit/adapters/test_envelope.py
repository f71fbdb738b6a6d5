"""The CloudEvents envelope: what every event on the bus looks like, and reading it back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import ClassVar
from uuid import UUID

import msgspec
import pytest
from cloudevents.core.formats.json import JSONFormat
from cloudevents.v1.http import from_json
from hypothesis import given
from hypothesis import strategies as st

from crmcore.adapters import envelope
from crmcore.adapters.schemas import event_classes, example_event
from crmcore.domain.base import Aggregate, DomainEvent, Event

KNOWN_DOG = UUID("5f0c6a43-1a6b-4c55-9c3e-0e4b2f1d9a01")


class Kennel(Aggregate, frozen=True, kw_only=True):
    name: str


class KennelEvent(Event[Kennel], frozen=True, kw_only=True):
    context: ClassVar[str] = "kennel"


class DogAdmitted(KennelEvent, frozen=True, kw_only=True):
    name: str
    owner_id: UUID | None = None
    tags: tuple[str, ...] = ()

    def bus_attributes(self) -> dict[str, str]:
        return {"ownerid": str(self.owner_id)} if self.owner_id else {}


class DogReported(KennelEvent, frozen=True, kw_only=True):
    severity: str

    def bus_subject(self) -> str:
        return f"crm.kennel.report.{self.severity}"


class BadlyNamed(KennelEvent, frozen=True, kw_only=True):
    def bus_attributes(self) -> dict[str, str]:
        return {"Owner-Id": "x"}


def admitted(**changes: object) -> DogAdmitted:
    event = DogAdmitted(
        originator_id=KNOWN_DOG,
        originator_version=3,
        timestamp=datetime(2025, 4, 1, 9, 30, tzinfo=UTC),
        name="Rex",
        owner_id=UUID(int=42),
        tags=("good", "boy"),
    )
    return msgspec.structs.replace(event, **changes)


class TestTheEnvelope:
    def test_carries_the_cloudevents_attributes_the_architecture_names(self) -> None:
        message = envelope.to_message(admitted(), id="kennel:17", source="/crm/kennel")
        document = msgspec.json.decode(message.payload)
        assert message.subject == "crm.kennel.dog_admitted"
        assert message.headers == {
            "Nats-Msg-Id": "kennel:17",
            "Content-Type": "application/cloudevents+json",
        }
        assert {key: value for key, value in document.items() if key != "data"} == {
            "specversion": "1.0",
            "id": "kennel:17",
            "source": "/crm/kennel",
            "type": "crm.kennel.dog_admitted.v1",
            "subject": str(KNOWN_DOG),
            "time": "2025-04-01T09:30:00Z",
            "datacontenttype": "application/json",
            "ownerid": str(UUID(int=42)),
            "crmversion": 3,
        }
        assert document["data"] == msgspec.json.decode(msgspec.json.encode(admitted()))

    def test_both_cloudevents_sdk_apis_read_it(self) -> None:
        payload = envelope.encode(admitted(), id="kennel:17", source="/crm/kennel")
        event = JSONFormat().read(None, payload)
        assert event.get_type() == "crm.kennel.dog_admitted.v1"
        assert event.get_time() == datetime(2025, 4, 1, 9, 30, tzinfo=UTC)
        assert event.get_extension("ownerid") == str(UUID(int=42))
        legacy = from_json(payload)
        assert legacy["crmversion"] == 3
        assert legacy.data["name"] == "Rex"

    def test_time_keeps_its_offset_and_a_naive_time_is_taken_as_utc(self) -> None:
        tokyo = timezone(timedelta(hours=9))
        aware = envelope.decode(
            envelope.encode(
                admitted(timestamp=datetime(2025, 4, 1, 18, 30, tzinfo=tokyo)),
                id="a:1",
                source="/x",
            )
        )
        naive = envelope.decode(
            envelope.encode(admitted(timestamp=datetime(2025, 4, 1, 9, 30)), id="a:1", source="/x")
        )
        assert aware.time == naive.time == datetime(2025, 4, 1, 9, 30, tzinfo=UTC)

    def test_an_event_may_choose_its_subject(self) -> None:
        report = DogReported(
            originator_id=KNOWN_DOG,
            originator_version=4,
            timestamp=datetime.now(UTC),
            severity="bite",
        )
        assert envelope.to_message(report, id="a:1", source="/x").subject == (
            "crm.kennel.report.bite"
        )

    def test_refuses_extension_names_cloudevents_does_not_allow(self) -> None:
        event = BadlyNamed(
            originator_id=KNOWN_DOG, originator_version=1, timestamp=datetime.now(UTC)
        )
        with pytest.raises(envelope.EnvelopeError, match="Owner-Id"):
            envelope.encode(event, id="a:1", source="/x")


class TestReadingItBack:
    def test_a_registry_gives_back_the_typed_event(self) -> None:
        registry = envelope.EventRegistry([DogAdmitted, DogReported])
        cloud_event = envelope.decode(envelope.encode(admitted(), id="kennel:1", source="/x"))
        assert cloud_event.version == 3
        assert registry.event_of(cloud_event) == admitted()

    def test_an_unregistered_type_is_refused_rather_than_imported(self) -> None:
        cloud_event = envelope.decode(envelope.encode(admitted(), id="kennel:1", source="/x"))
        with pytest.raises(envelope.EnvelopeError, match="no event class"):
            envelope.EventRegistry([DogReported]).event_of(cloud_event)

    @pytest.mark.parametrize(
        "payload",
        [
            b"not json",
            b'{"specversion": "0.3", "id": "a", "source": "/x", "type": "t", "data": {}}',
            b'{"specversion": "1.0", "source": "/x", "type": "t", "subject": "s", "data": {}}',
            b'{"specversion": "1.0", "id": "a", "source": "/x", "type": "t", "subject": "s",'
            b' "time": "2025-01-01T00:00:00Z"}',
        ],
    )
    def test_what_is_not_a_cloudevent_of_ours_is_an_envelope_error(self, payload: bytes) -> None:
        with pytest.raises(envelope.EnvelopeError):
            envelope.decode(payload)

    def test_two_classes_with_one_type_cannot_share_a_registry(self) -> None:
        class DogAdmittedAgain(KennelEvent, frozen=True, kw_only=True):
            @classmethod
            def event_name(cls) -> str:
                return "dog_admitted"

        with pytest.raises(envelope.EnvelopeError, match="both have type"):
            envelope.EventRegistry([DogAdmitted, DogAdmittedAgain])

    @given(
        name=st.text(max_size=50),
        tags=st.lists(st.text(max_size=10), max_size=5).map(tuple),
        version=st.integers(min_value=1, max_value=2**40),
        owner=st.none() | st.uuids(),
    )
    def test_any_event_survives_the_round_trip(
        self, name: str, tags: tuple[str, ...], version: int, owner: UUID | None
    ) -> None:
        event = admitted(name=name, tags=tags, originator_version=version, owner_id=owner)
        payload = envelope.encode(event, id="kennel:9", source="/crm/kennel")
        assert envelope.EventRegistry([DogAdmitted]).event_of(envelope.decode(payload)) == event
        data = JSONFormat().read(None, payload).get_data()
        assert isinstance(data, dict)
        assert data["name"] == name


class TestEveryDomainEvent:
    @pytest.mark.parametrize("cls", event_classes(), ids=lambda cls: cls.__name__)
    def test_wraps_and_unwraps_and_the_sdk_accepts_it(self, cls: type[DomainEvent]) -> None:
        event = example_event(cls)
        payload = envelope.encode(event, id="app:1", source="/crm/app")
        assert JSONFormat().read(None, payload).get_type() == envelope.event_type(cls)
        assert envelope.EventRegistry([cls]).event_of(envelope.decode(payload)) == event

    def test_every_type_is_distinct(self) -> None:
        classes = event_classes()
        assert len(envelope.EventRegistry(classes)) == len(classes)
