"""Protobuf ⇄ domain conversions every servicer needs.

Protobuf-only concerns are checked here and reported the same way as domain validation: an id
that is not a UUID, an UNSPECIFIED or unknown enum number → `InvalidValue` naming the field.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import TypeVar
from uuid import UUID

from google.protobuf.timestamp_pb2 import Timestamp

from crmcore.domain.errors import InvalidValue

E = TypeVar("E", bound=enum.Enum)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def enum_numbers(domain: type[E], proto_value: Callable[[str], int], prefix: str) -> dict[int, E]:
    """proto number → domain member, by name (`CASE_STATUS_OPEN` ↔ `CaseStatus.OPEN`)."""
    return {proto_value(f"{prefix}{member.name}"): member for member in domain}


def numbers_of(mapping: Mapping[int, E]) -> dict[E, int]:
    """The inverse of `enum_numbers`: domain member → proto number."""
    return {member: number for number, member in mapping.items()}


def parse_optional_uuid(text: str, field: str) -> UUID | None:
    """An id that may be left empty; otherwise a UUID in its canonical form (any case)."""
    if not text:
        return None
    try:
        parsed = UUID(text)
    except ValueError:
        parsed = None
    if parsed is None or str(parsed) != text.lower():
        raise InvalidValue(field, "not an id (a UUID like 123e4567-e89b-42d3-a456-426614174000)")
    return parsed


def parse_uuid(text: str, field: str) -> UUID:
    """A required id."""
    parsed = parse_optional_uuid(text, field)
    if parsed is None:
        raise InvalidValue(field, "must be set")
    return parsed


def enum_member(number: int, members: Mapping[int, E], field: str, *, required: bool) -> E | None:
    """The domain member of a proto enum number; 0 (unspecified) → None unless required."""
    if number == 0 and not required:
        return None
    member = members.get(number)
    if member is None:
        reason = "must be set" if number == 0 else f"unknown value {number}"
        raise InvalidValue(field, reason)
    return member


def required_member(number: int, members: Mapping[int, E], field: str) -> E:
    member = enum_member(number, members, field, required=True)
    assert member is not None  # required=True never gives None
    return member


def timestamp_message(moment: datetime | None) -> Timestamp | None:
    # By hand: Timestamp.FromDatetime is several times slower, and a response has many.
    if moment is None:
        return None
    seconds, micros = divmod((moment - _EPOCH) // _MICROSECOND, 1_000_000)
    return Timestamp(seconds=seconds, nanos=micros * 1_000)


@contextlib.contextmanager
def renamed_fields(rename: Callable[[str], str] | Mapping[str, str]) -> Iterator[None]:
    """Renames the field of an InvalidValue raised inside to the request's own field name."""
    try:
        yield
    except InvalidValue as error:
        new = rename(error.field) if callable(rename) else rename.get(error.field, error.field)
        raise InvalidValue(new, error.reason) from None
