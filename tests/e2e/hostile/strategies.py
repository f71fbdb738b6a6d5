"""Hypothesis strategies building any request message of the public API from its descriptor.

`messages(descriptor, known)` fills a message field by field, whatever its type: text from
any unicode (control characters, NULs, right-to-left marks, combining marks, emoji) and sizes
up to well past every limit; integers at their type's extremes; enum numbers that exist and
numbers that do not; doubles including NaN and infinities; repeated fields short or long;
nested messages (to a bounded depth); Timestamps and Durations inside and far outside their
valid range; FieldMasks naming real and unreal paths. A share of the strings are plausible
values (`PLAUSIBLE` and the ids in `known`), so that calls also get past the first check and
reach the domain rules.
"""

from __future__ import annotations

import operator
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

#: Values a real client would send, so that calls reach the rules behind the first check.
PLAUSIBLE = (
    "",
    " ",
    "Taro Yamada",
    "山田 太郎",
    "090-1234-5678",
    "+1 201-555-0123",
    "taro@example.jp",
    "TARO@EXAMPLE.JP",
    "line:taro_y",
    "JP",
    "ja",
    "en-US",
    "Asia/Tokyo",
    "marketing_email",
    "gold",
    "billing",
    "Billing",
    "support",
    "service_level",
    "fcr",
    "aht",
    "csat",
    "today",
    "queue",
    "channel",
    "*",
    "name",
    "1",
    "00000000-0000-4000-8000-000000000000",
)

#: Text a parser or a terminal chokes on: NUL, bidirectional overrides, combining marks,
#: zero-width characters, lone high code points, a line separator.
ODD_TEXT = (
    "\x00",
    "a\x00b",
    "\u202eevil\u202c",
    "\u200f\u05e9\u05dc\u05d5\u05dd",
    "e\u0301\u0301\u0301\u0301",
    "\u200b",
    "\ufeff",
    "\U0010ffff",
    "\u2028",
    "🧑‍💻" * 50,
    "%s%n%x",
    "' OR 1=1 --",
    "../../../../etc/passwd",
    "${jndi:ldap://x}",
    "\r\n\r\nX-Injected: 1",
)

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
UINT32 = (0, 2**32 - 1)
UINT64 = (0, 2**64 - 1)

#: Timestamp.seconds of 0001-01-01 and 9999-12-31, the range google.protobuf allows.
MIN_TIMESTAMP_S = -62_135_596_800
MAX_TIMESTAMP_S = 253_402_300_799


def texts(known: tuple[str, ...] = ()) -> st.SearchStrategy[str]:
    """Any text: short, long, far too long, odd, or plausible."""
    return st.one_of(
        st.text(max_size=40),
        st.text(min_size=150, max_size=2_000),
        # Hypothesis draws short texts only; repeating one gives the sizes that break limits.
        st.builds(operator.mul, st.text(min_size=1, max_size=20), st.integers(500, 3_000)),
        st.sampled_from(ODD_TEXT),
        st.sampled_from(PLAUSIBLE + known),
    )


def integers(bounds: tuple[int, int]) -> st.SearchStrategy[int]:
    low, high = bounds
    return st.one_of(
        st.integers(low, high),
        st.sampled_from((low, high, 0, -1 if low < 0 else 1)),
        st.integers(max(low, -2), 10),
    )


def _enum_numbers(field: FieldDescriptor) -> st.SearchStrategy[int]:
    assert field.enum_type is not None
    known_numbers = tuple(value.number for value in field.enum_type.values)
    # proto3 enums are open: any int32 travels, and the server must refuse the unknown ones.
    return st.one_of(st.sampled_from(known_numbers), integers(INT32))


def _timestamps() -> st.SearchStrategy[dict[str, int]]:
    return st.one_of(
        st.fixed_dictionaries(
            {
                "seconds": st.integers(MIN_TIMESTAMP_S, MAX_TIMESTAMP_S),
                "nanos": st.integers(0, 999_999_999),
            }
        ),
        st.fixed_dictionaries(
            {"seconds": st.integers(1_700_000_000, 1_900_000_000), "nanos": st.just(0)}
        ),
        st.fixed_dictionaries({"seconds": integers(INT64), "nanos": integers(INT32)}),
    )


def _durations() -> st.SearchStrategy[dict[str, int]]:
    return st.one_of(
        st.fixed_dictionaries({"seconds": st.integers(-100_000, 10_000_000), "nanos": st.just(0)}),
        st.fixed_dictionaries({"seconds": integers(INT64), "nanos": integers(INT32)}),
    )


def _scalars(field: FieldDescriptor, known: tuple[str, ...]) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return texts(known)
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=200)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_ENUM:
        return _enum_numbers(field)
    if kind == FieldDescriptor.TYPE_FLOAT:
        return st.one_of(st.floats(width=32), st.sampled_from((0.0, -0.0, 0.5, 3e38)))
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return st.one_of(
            st.floats(), st.floats(-10, 1000), st.sampled_from((0.0, -0.0, 0.5, 1.0, 1e308))
        )
    if kind in (
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_SFIXED64,
    ):
        return integers(INT64)
    if kind in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return integers(UINT64)
    if kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return integers(UINT32)
    return integers(INT32)


def _field_paths(descriptor: Descriptor) -> tuple[str, ...]:
    names = tuple(field.name for field in descriptor.fields)
    nested = tuple(
        f"{field.name}.{inner.name}"
        for field in descriptor.fields
        if field.message_type is not None
        for inner in field.message_type.fields
    )
    return names + nested


def _field_masks(parent: Descriptor | None) -> st.SearchStrategy[dict[str, list[str]]]:
    real: tuple[str, ...] = ("*",)
    if parent is not None:
        for field in parent.fields:
            if field.message_type is not None and field.message_type.full_name.startswith("crm."):
                real += _field_paths(field.message_type)
    return st.fixed_dictionaries(
        {"paths": st.lists(st.one_of(st.sampled_from(real), texts()), max_size=5)}
    )


def _values(
    field: FieldDescriptor, parent: Descriptor, known: tuple[str, ...], depth: int
) -> st.SearchStrategy[Any]:
    """One value of `field` (a singular value even for a repeated field)."""
    message_type = field.message_type
    if message_type is None:
        return _scalars(field, known)
    name = message_type.full_name
    if name == "google.protobuf.Timestamp":
        return _timestamps()
    if name == "google.protobuf.Duration":
        return _durations()
    if name == "google.protobuf.FieldMask":
        return _field_masks(parent)
    return messages(message_type, known, depth=depth + 1)


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


@st.composite
def _message(draw: st.DrawFn, descriptor: Descriptor, known: tuple[str, ...], depth: int) -> Any:
    message = GetMessageClass(descriptor)()
    chosen_oneofs = {
        oneof.name: draw(st.sampled_from((None, *oneof.fields)), label=oneof.name)
        for oneof in descriptor.oneofs
        if not oneof.name.startswith("_")  # proto3 `optional` is a synthetic oneof
    }
    too_deep = depth >= 3
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if oneof is not None and oneof.name in chosen_oneofs:
            if chosen_oneofs[oneof.name] is not field:
                continue
        elif not draw(st.booleans(), label=f"set {field.name}"):
            continue
        if too_deep and field.message_type is not None:
            continue
        _set(draw, message, field, descriptor, known, depth)
    return message


def _set(
    draw: st.DrawFn,
    message: Any,
    field: FieldDescriptor,
    parent: Descriptor,
    known: tuple[str, ...],
    depth: int,
) -> None:
    name = field.name
    if field.message_type is not None and _is_map(field):
        key_field = field.message_type.fields_by_name["key"]
        value_field = field.message_type.fields_by_name["value"]
        entries = draw(
            st.dictionaries(
                _scalars(key_field, known),
                _values(value_field, parent, known, depth),
                max_size=4,
            ),
            label=name,
        )
        target = getattr(message, name)
        for key, value in entries.items():
            _assign_into(target, key, value)
        return
    if field.is_repeated:
        values = draw(_lists(field, parent, known, depth), label=name)
        container = getattr(message, name)
        for value in values:
            if field.message_type is None:
                container.append(value)
            elif isinstance(value, dict):
                container.add(**value)
            else:
                container.add().CopyFrom(value)
        return
    value = draw(_values(field, parent, known, depth), label=name)
    if field.message_type is None:
        setattr(message, name, value)
    elif isinstance(value, dict):
        getattr(message, name).CopyFrom(GetMessageClass(field.message_type)(**value))
    else:
        getattr(message, name).CopyFrom(value)


def _lists(
    field: FieldDescriptor, parent: Descriptor, known: tuple[str, ...], depth: int
) -> st.SearchStrategy[list[Any]]:
    """Short lists of anything, and long ones of small items (messages stay under 4 MiB)."""
    one = _values(field, parent, known, depth)
    if field.message_type is not None:
        return st.one_of(st.lists(one, max_size=3), st.lists(one, min_size=10, max_size=40))
    if field.type == FieldDescriptor.TYPE_STRING:
        long = st.lists(st.sampled_from(PLAUSIBLE + known + ODD_TEXT), min_size=50, max_size=400)
        return st.one_of(st.lists(one, max_size=4), long)
    return st.one_of(st.lists(one, max_size=4), st.lists(one, min_size=50, max_size=400))


def _assign_into(target: Any, key: Any, value: Any) -> None:
    if isinstance(value, Message):
        target[key].CopyFrom(value)
    elif isinstance(value, dict):
        target[key].CopyFrom(type(target[key])(**value))
    else:
        target[key] = value


def messages(
    descriptor: Descriptor, known: tuple[str, ...] = (), *, depth: int = 0
) -> st.SearchStrategy[Any]:
    """Messages of type `descriptor`, any field set to anything its type allows."""
    return _message(descriptor, known, depth)
