"""Who may call the services: API tokens, their scopes, and the bearer strings callers send.

A `Token` is issued with a name, a set of scopes, an optional rate limit and an optional
expiry; it is revoked, never changed. Only a SHA-256 digest of its secret is stored (the
secret is shown once, when the token is issued), so the store leaking does not leak usable
credentials. The bearer a caller sends is `crm_<token id hex>_<secret>`: the token id in it
finds the token without scanning, the secret proves the caller holds it.

Scopes (`SCOPES`) name what a token may do per context; `admin` grants everything.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime
from uuid import UUID

import msgspec

from crmcore.domain import values
from crmcore.domain.base import Aggregate, DomainEvent, Event, advance
from crmcore.domain.errors import DomainError, InvalidValue, RuleViolation

ADMIN_SCOPE = "admin"

#: Every scope a token may hold. Reads, writes, erasure, routing's agent desktop and its
#: configuration, KPI targets and the audit trail are separate so a token can be narrow.
SCOPES: frozenset[str] = frozenset(
    {
        "customers:read",
        "customers:write",
        "customers:erase",
        "interactions:read",
        "interactions:write",
        "routing:read",
        "routing:agent",
        "routing:admin",
        "metrics:read",
        "metrics:write",
        "audit:read",
        ADMIN_SCOPE,
    }
)

BEARER_PREFIX = "crm"
MAX_TOKEN_NAME_LENGTH = 100
#: Above this a rate limit means nothing (and a float overflow would mean trouble).
MAX_RATE_PER_S = 1_000_000.0
_SECRET_BYTES = 32
_BEARER = re.compile(r"crm_([0-9a-f]{32})_([A-Za-z0-9_-]{16,256})")


class Unauthenticated(DomainError):
    """The caller did not prove who it is: no bearer, a malformed one, or one that does not
    match a live token (UNAUTHENTICATED). The message never says which, on purpose."""


class Bearer(msgspec.Struct, frozen=True, kw_only=True):
    """A bearer string taken apart: the token it names and the secret proving it."""

    token_id: UUID
    secret: str

    def __str__(self) -> str:
        return f"{BEARER_PREFIX}_{self.token_id.hex}_{self.secret}"

    @classmethod
    def new(cls, token_id: UUID) -> Bearer:
        """A bearer for `token_id` with a fresh random secret (256 bits)."""
        return cls(token_id=token_id, secret=secrets.token_urlsafe(_SECRET_BYTES))


def parse_bearer(text: str) -> Bearer:
    """`crm_<32 hex digits>_<secret>` taken apart, or Unauthenticated."""
    match = _BEARER.fullmatch(text.strip())
    if match is None:
        raise Unauthenticated("malformed bearer token: expected crm_<token id>_<secret>")
    return Bearer(token_id=UUID(hex=match.group(1)), secret=match.group(2))


def is_bearer(text: str) -> bool:
    """Whether `text` has the shape of a bearer (a configuration check)."""
    return _BEARER.fullmatch(text.strip()) is not None


def secret_digest(secret: str) -> str:
    """What the store keeps of a secret: its SHA-256, hex. The secret is 256 random bits, so a
    plain (unsalted, fast) digest cannot be reversed by guessing."""
    return hashlib.sha256(secret.encode()).hexdigest()


def scopes(requested: Iterable[str], field: str = "scopes") -> tuple[str, ...]:
    """Known scopes, trimmed, lower-case, without duplicates, sorted; at least one."""
    found: set[str] = set()
    for raw in requested:
        scope = raw.strip().lower()
        if scope not in SCOPES:
            raise InvalidValue(
                field, f"unknown scope {raw!r}: expected one of {', '.join(sorted(SCOPES))}"
            )
        found.add(scope)
    if not found:
        raise InvalidValue(field, "a token needs at least one scope")
    return tuple(sorted(found))


def rate(value: float | None, field: str = "rate_per_s") -> float | None:
    """A calls-per-second limit above 0 (None: the service's default)."""
    if value is None:
        return None
    if not value > 0 or value > MAX_RATE_PER_S:  # `not >` also refuses NaN
        raise InvalidValue(field, f"{value!r} is not a rate: more than 0, at most 1000000")
    return float(value)


class Token(Aggregate, frozen=True, kw_only=True):
    """An API token: who it is for, what it may do, how fast, until when, and whether it still
    may. Holds the digest of its secret, never the secret."""

    name: str
    scopes: tuple[str, ...]
    secret_sha256: str
    rate_per_s: float | None
    expires_at: datetime | None
    revoked_at: datetime | None

    @staticmethod
    def issue(
        bearer: Bearer,
        *,
        name: str,
        scopes: Iterable[str],
        rate_per_s: float | None = None,
        expires_at: datetime | None = None,
        at: datetime,
    ) -> TokenIssued:
        """A new token proven by `bearer`'s secret."""
        if expires_at is not None:
            expires_at = values.aware(expires_at, "expires_at").astimezone(UTC)
            if expires_at <= at:
                raise InvalidValue("expires_at", "must be in the future")
        return TokenIssued(
            originator_id=bearer.token_id,
            originator_version=1,
            timestamp=at,
            name=values.required_text(name, "name", max_length=MAX_TOKEN_NAME_LENGTH),
            scopes=_scopes(scopes),
            secret_sha256=secret_digest(bearer.secret),
            rate_per_s=rate(rate_per_s),
            expires_at=expires_at,
        )

    def revoke(self, *, at: datetime) -> TokenRevoked:
        if self.revoked_at is not None:
            raise RuleViolation(f"token {self.id} was already revoked")
        return TokenRevoked(
            originator_id=self.id, originator_version=self.version + 1, timestamp=at
        )

    def proves(self, secret: str) -> bool:
        """Whether `secret` is this token's (constant-time comparison of the digests)."""
        return hmac.compare_digest(self.secret_sha256, secret_digest(secret))

    def live_at(self, at: datetime) -> bool:
        """Neither revoked nor expired at `at`."""
        return self.revoked_at is None and (self.expires_at is None or at < self.expires_at)

    def grants(self, scope: str) -> bool:
        return scope in self.scopes or ADMIN_SCOPE in self.scopes


def _scopes(requested: Iterable[str]) -> tuple[str, ...]:
    return scopes(requested)


class TokenIssued(DomainEvent, frozen=True, kw_only=True):
    """A token was issued. `secret_sha256` is the digest of its secret (the secret is not
    stored). Not published on the bus: the access store is private to the services."""

    name: str
    scopes: tuple[str, ...]
    secret_sha256: str
    rate_per_s: float | None = None
    expires_at: datetime | None = None

    def mutate(self, state: Token | None) -> Token:
        return Token(
            id=self.originator_id,
            version=self.originator_version,
            created_on=self.timestamp,
            modified_on=self.timestamp,
            name=self.name,
            scopes=self.scopes,
            secret_sha256=self.secret_sha256,
            rate_per_s=self.rate_per_s,
            expires_at=self.expires_at,
            revoked_at=None,
        )


class TokenRevoked(Event[Token], frozen=True, kw_only=True):
    """A token was revoked: it proves nothing from now on."""

    def apply(self, state: Token) -> Token:
        return advance(state, self, revoked_at=self.timestamp)
