"""Domain errors: plain exceptions raised by aggregates and applications.

Only the gRPC entrypoints turn them into status codes (one interceptor); the library's users
catch them directly. Each kind maps to exactly one code (ARCHITECTURE.md, "gRPC conventions").
"""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error the domain raises on purpose."""


class InvalidValue(DomainError):
    """A value breaks its rule (INVALID_ARGUMENT). `field` names the offending field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class NotFound(DomainError):
    """The thing asked for does not exist (NOT_FOUND)."""

    def __init__(self, kind: str, key: object) -> None:
        super().__init__(f"{kind} {key} not found")
        self.kind = kind
        self.key = key


class AlreadyExists(DomainError):
    """Creating the thing would duplicate an existing one (ALREADY_EXISTS)."""


class RuleViolation(DomainError):
    """The command is not allowed in the current state (FAILED_PRECONDITION)."""


class ConcurrencyConflict(DomainError):
    """Someone else changed the thing first: a stale etag or version (ABORTED)."""


class Unavailable(DomainError):
    """The store or the broker cannot be reached right now (UNAVAILABLE)."""
