"""msgspec mapper: stores domain events as MessagePack and decodes them typed.

The stock eventsourcing mapper turns an event into a dict and runs it through a JSON transcoder
with registered transcodings; this one encodes the msgspec struct directly and decodes straight
into the event class named by the stored topic (`python -m bench append` measures the gain).

Personal data (crypto-shredding). An event class that declares `personal_fields` (the names of
its top-level fields holding personal data), `personal_data_subject()` (whose data it is) and
`redacted()` (the event with those fields blanked) is stored sealed when the mapper has a
`KeyVault`: the personal fields are encrypted together with the subject's own key, and their
redacted values are kept beside them in clear. Reading such an event gives the real values while
the key exists and the redacted ones once it was destroyed, so rebuilding an aggregate always
works. Events without personal fields take the plain path, unchanged.

Stored form of a sealed event: the byte 0xC1 (which never starts a MessagePack value, so plain
and sealed events are told apart by their first byte) followed by a MessagePack array
`[subject, sealed personal map, plain map, redacted personal map]`. The maps are MessagePack maps
of field name → value; decoding splices the plain map with one of the personal maps at the byte
level and decodes the result typed, in one pass, exactly like a plain event.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, Self, cast
from uuid import UUID

import msgspec
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import (
    Cipher,
    Compressor,
    Mapper,
    MapperDeserialisationError,
    StoredEvent,
    Transcoder,
)
from eventsourcing.utils import get_topic, resolve_topic

from crmcore.adapters.keyvault import KeyVault

_encoder = msgspec.msgpack.Encoder()

#: First byte of a sealed event's stored state ("never used" in MessagePack).
SEALED_MARKER = b"\xc1"


class PersonalData(Protocol):
    """What an event class declares when some of its fields hold personal data."""

    #: Names of the top-level fields holding personal data.
    personal_fields: ClassVar[frozenset[str]]

    def personal_data_subject(self) -> UUID:
        """Whose personal data it is: the key of that subject seals it."""
        ...

    def redacted(self) -> Self:
        """The same event with its personal fields replaced by neutral values ("", (), …)."""
        ...


class _SealedState(msgspec.Struct, array_like=True, frozen=True):
    subject: UUID
    sealed: bytes
    plain: msgspec.Raw
    public: msgspec.Raw


_sealed_decoder = msgspec.msgpack.Decoder(_SealedState)


class _UnusedTranscoder(Transcoder):
    """The library's factory insists on a transcoder; this mapper never calls it."""

    def encode(self, obj: Any) -> bytes:
        raise NotImplementedError

    def decode(self, data: bytes) -> Any:
        raise NotImplementedError


class MsgspecMapper(Mapper[UUID]):
    """Maps msgspec-struct domain events to and from stored events.

    With a `key_vault`, events declaring personal fields are stored sealed (module docstring).
    `reveal_personal_data=False` makes a mapper that reads every such event in its redacted form
    without touching any key: what may leave the service (the relay publishing to the bus).
    """

    def __init__(
        self,
        transcoder: Transcoder | None = None,
        compressor: Compressor | None = None,
        cipher: Cipher | None = None,
        *,
        key_vault: KeyVault | None = None,
        reveal_personal_data: bool = True,
    ) -> None:
        super().__init__(transcoder or _UnusedTranscoder(), compressor, cipher)
        self.key_vault = key_vault
        self.reveal_personal_data = reveal_personal_data
        self._topics: dict[type[Any], str] = {}
        self._decoders: dict[str, msgspec.msgpack.Decoder[Any]] = {}
        self._personal: dict[type[Any], tuple[str, ...]] = {}
        self._redacting: dict[str, bool] = {}

    def public_view(self) -> MsgspecMapper:
        """A mapper over the same storage that never reveals personal data."""
        view = MsgspecMapper(
            self.transcoder,
            self.compressor,
            self.cipher,
            key_vault=self.key_vault,
            reveal_personal_data=False,
        )
        view._decoders = self._decoders
        return view

    # --- writing ---

    def to_stored_event(self, domain_event: DomainEventProtocol[UUID]) -> StoredEvent:
        cls = type(domain_event)
        topic = self._topics.get(cls)
        if topic is None:
            topic = self._topics[cls] = get_topic(cls)
        personal = self._personal.get(cls)
        if personal is None:
            personal = self._personal[cls] = personal_fields_of(cls)
        if personal and self.key_vault is not None:
            state = self._sealed_state(cast(PersonalData, domain_event), personal)
        else:
            state = _encoder.encode(domain_event)
        if self.compressor:
            state = self.compressor.compress(state)
        if self.cipher:
            state = self.cipher.encrypt(state)
        return StoredEvent(
            originator_id=domain_event.originator_id,
            originator_version=domain_event.originator_version,
            topic=topic,
            state=state,
        )

    def _sealed_state(self, event: PersonalData, personal: tuple[str, ...]) -> bytes:
        assert self.key_vault is not None
        present = [name for name in personal if getattr(event, name) is not None]
        if not present:
            return _encoder.encode(event)
        public_event = event.redacted()
        subject = event.personal_data_subject()
        fields = cast(msgspec.Struct, event).__struct_fields__
        plain = {name: getattr(event, name) for name in fields if name not in present}
        secret = {name: getattr(event, name) for name in present}
        public = {name: getattr(public_event, name) for name in present}
        sealed = self.key_vault.seal(
            subject, _encoder.encode(secret), _associated(cast(DomainEventProtocol[UUID], event))
        )
        return SEALED_MARKER + _encoder.encode(
            _SealedState(
                subject=subject,
                sealed=sealed,
                plain=msgspec.Raw(_encoder.encode(plain)),
                public=msgspec.Raw(_encoder.encode(public)),
            )
        )

    # --- reading ---

    def decoder_for(self, topic: str) -> msgspec.msgpack.Decoder[Any]:
        decoder = self._decoders.get(topic)
        if decoder is None:
            decoder = self._decoders[topic] = msgspec.msgpack.Decoder(resolve_topic(topic))
        return decoder

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[UUID]:
        state = stored_event.state
        try:
            if self.cipher:
                state = self.cipher.decrypt(state)
            if self.compressor:
                state = self.compressor.decompress(state)
            if state[:1] == SEALED_MARKER:
                state = self._unsealed_state(stored_event, state)
            event = self.decoder_for(stored_event.topic).decode(state)
            if not self.reveal_personal_data and self._redacts(stored_event.topic):
                event = event.redacted()
            return cast(DomainEventProtocol[UUID], event)
        except Exception as error:  # corrupt bytes fail in the cipher, zlib or msgspec alike
            raise MapperDeserialisationError(
                f"cannot decode stored event {stored_event.topic} "
                f"{stored_event.originator_id} v{stored_event.originator_version}: {error}"
            ) from error

    def _unsealed_state(self, stored_event: StoredEvent, state: bytes) -> bytes:
        """The plain MessagePack map of the event: real personal values while the key exists,
        redacted ones otherwise (or when this mapper does not reveal personal data)."""
        sealed = _sealed_decoder.decode(memoryview(state)[1:])
        personal: bytes | None = None
        if self.reveal_personal_data and self.key_vault is not None:
            personal = self.key_vault.open(
                sealed.subject, sealed.sealed, _associated_stored(stored_event)
            )
        return _merge_maps(sealed.plain, sealed.public if personal is None else personal)

    def _redacts(self, topic: str) -> bool:
        """Whether events of `topic` have personal fields to redact when read in public."""
        redacts = self._redacting.get(topic)
        if redacts is None:
            redacts = self._redacting[topic] = bool(personal_fields_of(resolve_topic(topic)))
        return redacts


def personal_fields_of(cls: type[Any]) -> tuple[str, ...]:
    """The personal fields an event class declares, in field order (empty: none)."""
    declared = getattr(cls, "personal_fields", None)
    if not declared:
        return ()
    fields: tuple[str, ...] = getattr(cls, "__struct_fields__", ())
    unknown = set(declared) - set(fields)
    if unknown:
        raise TypeError(f"{cls.__name__}.personal_fields names no field: {sorted(unknown)}")
    return tuple(name for name in fields if name in declared)


def _associated(event: DomainEventProtocol[UUID]) -> bytes:
    # Binds the seal to its event: sealed fields copied onto another event do not open.
    return f"{event.originator_id}:{event.originator_version}".encode()


def _associated_stored(stored_event: StoredEvent) -> bytes:
    return f"{stored_event.originator_id}:{stored_event.originator_version}".encode()


def _map_body(data: bytes | msgspec.Raw) -> tuple[int, memoryview]:
    """Entry count and entries of an encoded MessagePack map."""
    view = memoryview(data)
    first = view[0]
    if 0x80 <= first <= 0x8F:
        return first & 0x0F, view[1:]
    if first == 0xDE:
        return int.from_bytes(view[1:3], "big"), view[3:]
    if first == 0xDF:
        return int.from_bytes(view[1:5], "big"), view[5:]
    raise ValueError("sealed event part is not a MessagePack map")


def _map_header(count: int) -> bytes:
    if count < 16:
        return bytes((0x80 | count,))
    if count < 0x10000:
        return b"\xde" + count.to_bytes(2, "big")
    return b"\xdf" + count.to_bytes(4, "big")


def _merge_maps(first: bytes | msgspec.Raw, second: bytes | msgspec.Raw) -> bytes:
    """One MessagePack map holding the entries of two (their keys are disjoint)."""
    first_count, first_body = _map_body(first)
    second_count, second_body = _map_body(second)
    return b"".join((_map_header(first_count + second_count), first_body, second_body))
