"""Value objects and the validation every value passes at the edge of the domain.

Each validator takes the raw value and the name of the field it came from, and returns the
normalised value or raises `InvalidValue(field, reason)`; the gRPC layer turns that into
INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from datetime import datetime
from typing import TypeVar

import email_validator
import phonenumbers

from crmcore.domain.errors import InvalidValue

E = TypeVar("E", bound=enum.StrEnum)

MAX_NAME_LENGTH = 200
MAX_SHORT_TEXT_LENGTH = 200
MAX_TEXT_LENGTH = 10_000
MAX_TAGS = 50
MAX_ATTRIBUTES = 100
MAX_EMAIL_LENGTH = 254

# Short BCP 47 tags: language, optional script, optional region ("ja", "zh-Hant-TW", "es-419").
_LANGUAGE_TAG = re.compile(r"([a-zA-Z]{2,3})(?:-([a-zA-Z]{4}))?(?:-([a-zA-Z]{2}|[0-9]{3}))?")


class Channel(enum.StrEnum):
    """The channel a contact happened on (DOMAIN.md, "Interaction and case")."""

    PHONE = "phone"
    EMAIL = "email"
    CHAT = "chat"
    SMS = "sms"
    MESSAGING = "messaging"
    SOCIAL = "social"
    VIDEO = "video"
    WEB_FORM = "web_form"
    SELF_SERVICE = "self_service"
    CHATBOT = "chatbot"


class Direction(enum.StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


def enum_value(kind: type[E], value: str, field: str) -> E:
    """The member of `kind` whose value is `value`, or InvalidValue listing the allowed ones."""
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise InvalidValue(field, f"unknown value {value!r}; expected one of {allowed}") from None


def _has_control_characters(value: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Cs") and ch not in "\t\n\r" for ch in value)


def text(value: str, field: str, *, max_length: int = MAX_TEXT_LENGTH) -> str:
    """Free text (may be empty): bounded, no control characters or lone surrogates."""
    if len(value) > max_length:
        raise InvalidValue(field, f"longer than {max_length} characters")
    if _has_control_characters(value):
        raise InvalidValue(field, "contains control characters")
    return value


def required_text(value: str, field: str, *, max_length: int = MAX_SHORT_TEXT_LENGTH) -> str:
    """Text that must say something: trimmed, non-empty, bounded."""
    stripped = text(value, field, max_length=max_length).strip()
    if not stripped:
        raise InvalidValue(field, "must not be empty")
    return stripped


def name(value: str, field: str = "name") -> str:
    """A person's or organisation's name."""
    return required_text(value, field, max_length=MAX_NAME_LENGTH)


def tags(values: list[str] | tuple[str, ...], field: str = "tags") -> tuple[str, ...]:
    """Tags: trimmed, lower-cased, unique, in first-seen order, bounded in number and length."""
    if len(values) > MAX_TAGS:
        raise InvalidValue(field, f"more than {MAX_TAGS} tags")
    seen: dict[str, None] = {}
    for index, value in enumerate(values):
        seen[required_text(value, f"{field}[{index}]", max_length=64).lower()] = None
    return tuple(seen)


def language_tag(value: str, field: str = "language") -> str:
    """A short BCP 47 tag in canonical case (`EN-us` → `en-US`, `zh-hant-tw` → `zh-Hant-TW`)."""
    stripped = value.strip()
    match = _LANGUAGE_TAG.fullmatch(stripped)
    if match is None:
        raise InvalidValue(field, f"{stripped!r} is not a language tag like 'ja' or 'en-US'")
    language, script, region = match.groups()
    parts = [language.lower()]
    if script:
        parts.append(script.title())
    if region:
        parts.append(region.upper())
    return "-".join(parts)


def email(value: str, field: str = "email") -> str:
    """An e-mail address, normalised (IDNA/Unicode normal form, lower-cased) for lookup."""
    if len(value) > MAX_EMAIL_LENGTH:
        raise InvalidValue(field, f"longer than {MAX_EMAIL_LENGTH} characters")
    try:
        checked = email_validator.validate_email(value.strip(), check_deliverability=False)
    except email_validator.EmailNotValidError as error:
        raise InvalidValue(field, f"not a valid e-mail address: {error}") from None
    return checked.normalized.lower()


def phone(value: str, field: str = "phone", *, default_region: str | None = None) -> str:
    """A phone number in E.164 (`+819012345678`).

    National numbers need `default_region` (ISO 3166 alpha-2, e.g. "JP"); international ones
    (starting with + or 00) do not.
    """
    raw = value.strip()
    if not raw or len(raw) > 40:
        raise InvalidValue(field, "not a phone number")
    if raw.startswith("00"):
        raw = "+" + raw[2:]
    try:
        parsed = phonenumbers.parse(raw, default_region)
    except phonenumbers.NumberParseException as error:
        raise InvalidValue(field, f"not a phone number: {error}") from None
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidValue(field, "not a valid phone number for its region")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def score(value: int, field: str, *, low: int, high: int) -> int:
    """An integer score on a closed scale (CSAT 1–5, NPS 0–10, CES 1–7, proficiency 1–5)."""
    if not low <= value <= high:
        raise InvalidValue(field, f"must be between {low} and {high}, got {value}")
    return value


def aware(value: datetime, field: str) -> datetime:
    """A timestamp that says which time zone it is in."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidValue(field, "must carry a time zone")
    return value
