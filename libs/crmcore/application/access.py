"""The access application: the event-sourced store of API tokens every service checks callers
against.

Named `access` (SQLite file `access.sqlite` in the data directory, PostgreSQL tables
`access_*`), so every service using the same persistence settings shares one store: a token
issued by `crm tokens create` works on all four services, and a revocation reaches them all
(within `CRM_AUTH_CACHE_S`, the time they remember a successful check).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

import msgspec

from crmcore.application.base import CRMApplication
from crmcore.application.principal import Principal
from crmcore.config import AccessSettings
from crmcore.domain.access import (
    ADMIN_SCOPE,
    Bearer,
    Token,
    TokenIssued,
    Unauthenticated,
    parse_bearer,
)
from crmcore.domain.errors import ConcurrencyConflict, InvalidValue, NotFound

log = logging.getLogger(__name__)

#: Id of the admin token a service generates when it starts on an empty store: one fixed id,
#: so services starting together on the same store issue one such token, not one each.
GENERATED_ADMIN_TOKEN_ID = uuid5(NAMESPACE_URL, "urn:crm:access:generated-admin-token")
BOOTSTRAP_TOKEN_NAME = "bootstrap-admin"
GENERATED_TOKEN_NAME = "generated-admin"
ADMIN_TOKEN_FILE = "admin.token"


class IssuedToken(msgspec.Struct, frozen=True, kw_only=True):
    """A token just issued: `bearer` is the string callers send, shown this once."""

    token_id: UUID
    bearer: str
    name: str
    scopes: tuple[str, ...]
    rate_per_s: float | None


class AccessApplication(CRMApplication):
    """Issues, revokes, lists and checks API tokens."""

    name = "access"
    aggregate_kind = "token"

    def issue_token(
        self,
        name: str,
        scopes: Iterable[str],
        *,
        rate_per_s: float | None = None,
        expires_at: datetime | None = None,
        at: datetime | None = None,
    ) -> IssuedToken:
        """Issues a token with a fresh secret; the returned `bearer` is the only copy of it."""
        return self._issue(
            Bearer.new(uuid4()), name, scopes, rate_per_s=rate_per_s, expires_at=expires_at, at=at
        )

    def register_bearer(self, bearer: str, name: str, scopes: Iterable[str]) -> bool:
        """Makes an existing bearer (a bootstrap token from the deployment) a token with these
        scopes, if its token is not in the store yet; idempotent. True when it registered it.

        A token already stored under the bearer's id is left alone, revoked or not (a revoked
        bootstrap token stays revoked: change the secret to bring a new one in)."""
        try:
            parsed = parse_bearer(bearer)
        except Unauthenticated:
            raise InvalidValue("bearer", "expected crm_<32 hex digits>_<secret>") from None
        existing = self._find(parsed.token_id)
        if existing is not None:
            if not existing.proves(parsed.secret):
                log.warning(
                    "token %s is already stored with another secret: the bootstrap token "
                    "was not registered",
                    parsed.token_id,
                )
            return False
        try:
            self._issue(parsed, name, scopes)
        except ConcurrencyConflict:  # another service registered it at the same moment
            return False
        return True

    def ensure_admin_token(self) -> IssuedToken | None:
        """An admin token when the store holds no token at all (None otherwise): how a service
        started with nothing configured stays closed yet reachable by its operator."""
        if self.has_tokens():
            return None
        try:
            return self._issue(
                Bearer.new(GENERATED_ADMIN_TOKEN_ID), GENERATED_TOKEN_NAME, [ADMIN_SCOPE]
            )
        except ConcurrencyConflict:  # another service generated it first
            return None

    def revoke_token(self, token_id: UUID | str, *, at: datetime | None = None) -> Token:
        """Revokes a token: it proves nothing from now on. A second revocation is refused."""
        when = _now(at)
        return self.execute(_token_id(token_id), Token, lambda token: token.revoke(at=when))

    def get_token(self, token_id: UUID | str) -> Token:
        return self.load(_token_id(token_id), Token)

    def list_tokens(self) -> list[Token]:
        """Every token ever issued (revoked ones too), oldest first."""
        ids: dict[UUID, None] = {}
        start = 1
        while True:
            notifications = self.recorder.select_notifications(start=start, limit=500)
            if not notifications:
                break
            for notification in notifications:
                if notification.topic.endswith(TokenIssued.__qualname__):
                    ids[_token_id(notification.originator_id)] = None
            start = notifications[-1].id + 1
        return [self.load(token_id, Token) for token_id in ids]

    def has_tokens(self) -> bool:
        return bool(self.recorder.max_notification_id())

    def verify(self, bearer: str, *, at: datetime | None = None) -> Token:
        """The live token `bearer` proves, or Unauthenticated (malformed, unknown, wrong
        secret, revoked, expired: the caller is not told which)."""
        parsed = parse_bearer(bearer)
        token = self._find(parsed.token_id)
        if token is None or not token.proves(parsed.secret) or not token.live_at(_now(at)):
            raise Unauthenticated("unknown, revoked or expired token")
        return token

    def authenticate(self, bearer: str) -> Principal:
        """Who `bearer` is, or Unauthenticated."""
        return principal_of(self.verify(bearer))

    def _find(self, token_id: UUID) -> Token | None:
        try:
            return self.load(token_id, Token)
        except NotFound:
            return None

    def _issue(
        self,
        bearer: Bearer,
        name: str,
        scopes: Iterable[str],
        *,
        rate_per_s: float | None = None,
        expires_at: datetime | None = None,
        at: datetime | None = None,
    ) -> IssuedToken:
        issued = Token.issue(
            bearer,
            name=name,
            scopes=scopes,
            rate_per_s=rate_per_s,
            expires_at=expires_at,
            at=_now(at),
        )
        self.record(issued)
        return IssuedToken(
            token_id=bearer.token_id,
            bearer=str(bearer),
            name=issued.name,
            scopes=issued.scopes,
            rate_per_s=issued.rate_per_s,
        )


def principal_of(token: Token) -> Principal:
    return Principal(token_id=str(token.id), name=token.name, scopes=frozenset(token.scopes))


def prepare_access(
    app: AccessApplication, settings: AccessSettings, data_dir: Path | None
) -> IssuedToken | None:
    """What a service does with its token store at start: registers the bootstrap admin token
    (if configured), else — when allowed and the store is empty — issues an admin token, logs
    it once and writes it to `<data_dir>/admin.token` (mode 0600; no file when `data_dir` is
    None). Returns the generated token, if any."""
    if settings.bootstrap_admin_token is not None:
        if app.register_bearer(settings.bootstrap_admin_token, BOOTSTRAP_TOKEN_NAME, [ADMIN_SCOPE]):
            log.info("registered the bootstrap admin token (CRM_BOOTSTRAP_ADMIN_TOKEN)")
        return None
    if not settings.generate_admin_token:
        return None
    generated = app.ensure_admin_token()
    if generated is None:
        return None
    where = ""
    if data_dir is not None:
        try:
            path = write_token_file(data_dir, generated.bearer)
            where = f" (also written to {path})"
        except OSError as error:
            where = f" (could not write it to {data_dir}: {error})"
    # Printed once, on purpose: the store keeps only its digest.
    log.warning(
        "no access token existed: generated admin token %s%s — keep it secret; "
        "`crm tokens create` issues narrower ones",
        generated.bearer,
        where,
    )
    return generated


def write_token_file(data_dir: Path, bearer: str) -> Path:
    """Writes `bearer` to `<data_dir>/admin.token`, readable by its owner only."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / ADMIN_TOKEN_FILE
    temporary = path.with_suffix(".tmp")
    temporary.unlink(missing_ok=True)
    temporary.touch(mode=0o600)
    temporary.write_text(bearer + "\n", encoding="utf-8")
    temporary.replace(path)
    return path


def read_token_file(data_dir: Path) -> str | None:
    """The bearer in `<data_dir>/admin.token`, None when there is no such file."""
    try:
        text = (data_dir / ADMIN_TOKEN_FILE).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return text or None


def _token_id(value: UUID | str) -> UUID:
    if isinstance(value, UUID):
        return value
    try:
        return UUID(value.strip())
    except ValueError:
        raise InvalidValue("token_id", f"{value!r} is not a token id") from None


def _now(at: datetime | None) -> datetime:
    return datetime.now(UTC) if at is None else at
