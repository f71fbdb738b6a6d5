"""API tokens: the bearer format, scopes, digests at rest, revocation, expiry, bootstrap tokens,
and the store every service shares (in-memory, SQLite and PostgreSQL)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import pytest

from crmcore.application.access import (
    GENERATED_ADMIN_TOKEN_ID,
    AccessApplication,
    prepare_access,
    read_token_file,
)
from crmcore.application.principal import Principal
from crmcore.config import (
    AccessSettings,
    ConfigurationError,
    PersistenceSettings,
    access_from_env,
    service_from_env,
)
from crmcore.domain.access import (
    SCOPES,
    Bearer,
    Token,
    Unauthenticated,
    parse_bearer,
    secret_digest,
)
from crmcore.domain.errors import InvalidValue, NotFound, RuleViolation


@pytest.fixture
def access(persistence: PersistenceSettings) -> Iterator[AccessApplication]:
    app = AccessApplication(persistence)
    yield app
    app.close()


class TestBearers:
    def test_a_bearer_names_its_token_and_parses_back(self) -> None:
        token_id = uuid4()
        bearer = Bearer.new(token_id)
        text = str(bearer)
        assert text.startswith(f"crm_{token_id.hex}_")
        assert parse_bearer(text) == bearer

    @pytest.mark.parametrize(
        "text",
        [
            "",
            "Bearer x",
            "crm_nothex_abcdefghijklmnopqrstuvwxyz",
            f"crm_{uuid4().hex}_short",
            f"xyz_{uuid4().hex}_abcdefghijklmnopqrstuvwxyz",
            f"crm_{uuid4().hex}_has spaces in the secret!!",
        ],
    )
    def test_a_malformed_bearer_is_unauthenticated(self, text: str) -> None:
        with pytest.raises(Unauthenticated, match="malformed"):
            parse_bearer(text)


class TestIssuing:
    def test_the_store_keeps_a_digest_of_the_secret_never_the_secret(
        self, access: AccessApplication
    ) -> None:
        issued = access.issue_token("ops", ["customers:read", "metrics:read"], rate_per_s=5)
        secret = parse_bearer(issued.bearer).secret
        token = access.get_token(issued.token_id)
        assert token.secret_sha256 == secret_digest(secret)
        assert (token.name, token.scopes, token.rate_per_s) == (
            "ops",
            ("customers:read", "metrics:read"),
            5.0,
        )
        stored = b"".join(n.state for n in access.recorder.select_notifications(start=1, limit=100))
        assert secret.encode() not in stored
        assert issued.bearer.encode() not in stored

    def test_an_unknown_scope_is_refused_naming_the_field(self, access: AccessApplication) -> None:
        with pytest.raises(InvalidValue) as refused:
            access.issue_token("ops", ["customers:read", "customers:delete"])
        assert refused.value.field == "scopes"
        assert "customers:delete" in refused.value.reason
        assert not access.has_tokens()

    @pytest.mark.parametrize("rate", [0.0, -1.0, float("nan"), 1e12])
    def test_a_rate_must_be_positive_and_bounded(
        self, access: AccessApplication, rate: float
    ) -> None:
        with pytest.raises(InvalidValue) as refused:
            access.issue_token("ops", ["admin"], rate_per_s=rate)
        assert refused.value.field == "rate_per_s"

    def test_no_scope_or_an_empty_name_is_refused(self, access: AccessApplication) -> None:
        with pytest.raises(InvalidValue) as no_scope:
            access.issue_token("ops", [])
        assert no_scope.value.field == "scopes"
        with pytest.raises(InvalidValue) as no_name:
            access.issue_token("  ", ["admin"])
        assert no_name.value.field == "name"

    def test_every_known_scope_can_be_held(self, access: AccessApplication) -> None:
        issued = access.issue_token("everything", sorted(SCOPES))
        assert set(issued.scopes) == SCOPES


class TestAuthenticating:
    def test_the_bearer_authenticates_as_its_principal(self, access: AccessApplication) -> None:
        issued = access.issue_token("desk", ["routing:agent"])
        assert access.authenticate(issued.bearer) == Principal(
            token_id=str(issued.token_id), name="desk", scopes=frozenset({"routing:agent"})
        )

    def test_a_wrong_secret_an_unknown_id_a_revoked_or_expired_token_are_refused(
        self, access: AccessApplication
    ) -> None:
        issued = access.issue_token("desk", ["routing:agent"])
        wrong_secret = str(Bearer.new(issued.token_id))
        unknown = str(Bearer.new(uuid4()))
        for bearer in (wrong_secret, unknown):
            with pytest.raises(Unauthenticated):
                access.authenticate(bearer)

        soon = datetime.now(UTC) + timedelta(hours=1)
        expiring = access.issue_token("temp", ["admin"], expires_at=soon)
        assert access.verify(expiring.bearer).name == "temp"
        with pytest.raises(Unauthenticated):
            access.verify(expiring.bearer, at=soon)

        access.revoke_token(issued.token_id)
        with pytest.raises(Unauthenticated):
            access.authenticate(issued.bearer)

    def test_an_expiry_in_the_past_is_refused(self, access: AccessApplication) -> None:
        with pytest.raises(InvalidValue) as refused:
            access.issue_token("temp", ["admin"], expires_at=datetime.now(UTC) - timedelta(1))
        assert refused.value.field == "expires_at"


class TestRevokingAndListing:
    def test_list_shows_every_token_with_its_status_and_no_secret(
        self, access: AccessApplication
    ) -> None:
        first = access.issue_token("one", ["customers:read"])
        second = access.issue_token("two", ["admin"])
        access.revoke_token(str(first.token_id))
        listed = access.list_tokens()
        assert [(t.id, t.name, t.revoked_at is not None) for t in listed] == [
            (first.token_id, "one", True),
            (second.token_id, "two", False),
        ]
        assert all(isinstance(token, Token) for token in listed)

    def test_revoking_twice_an_unknown_or_a_malformed_id_is_refused(
        self, access: AccessApplication
    ) -> None:
        issued = access.issue_token("one", ["customers:read"])
        access.revoke_token(issued.token_id)
        with pytest.raises(RuleViolation):
            access.revoke_token(issued.token_id)
        with pytest.raises(NotFound):
            access.revoke_token(uuid4())
        with pytest.raises(InvalidValue) as malformed:
            access.revoke_token("not-an-id")
        assert malformed.value.field == "token_id"

    @pytest.mark.parametrize(
        "kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
    )
    def test_two_applications_on_the_same_store_share_the_tokens(
        self, kind: str, tmp_path: Path, request: pytest.FixtureRequest
    ) -> None:
        persistence: PersistenceSettings = (
            PersistenceSettings.sqlite(tmp_path / "data")
            if kind == "sqlite"
            else request.getfixturevalue("postgres_persistence")
        )
        issuer, checker = AccessApplication(persistence), AccessApplication(persistence)
        try:
            issued = issuer.issue_token("shared", ["admin"])
            assert checker.authenticate(issued.bearer).name == "shared"
            issuer.revoke_token(issued.token_id)
            with pytest.raises(Unauthenticated):
                checker.authenticate(issued.bearer)
        finally:
            issuer.close()
            checker.close()


class TestServiceStart:
    def test_the_bootstrap_token_is_registered_once_as_admin(
        self, access: AccessApplication, tmp_path: Path
    ) -> None:
        bearer = str(Bearer.new(uuid4()))
        settings = AccessSettings(bootstrap_admin_token=bearer, generate_admin_token=True)
        assert prepare_access(access, settings, tmp_path) is None
        assert prepare_access(access, settings, tmp_path) is None  # idempotent
        assert access.authenticate(bearer).scopes == frozenset({"admin"})
        assert len(access.list_tokens()) == 1
        assert read_token_file(tmp_path) is None  # nothing generated

    def test_a_bootstrap_bearer_whose_id_is_taken_by_another_secret_is_not_registered(
        self, access: AccessApplication, caplog: pytest.LogCaptureFixture
    ) -> None:
        issued = access.issue_token("first", ["customers:read"])
        impostor = str(Bearer.new(issued.token_id))
        with caplog.at_level(logging.WARNING):
            assert not access.register_bearer(impostor, "bootstrap-admin", ["admin"])
        assert "another secret" in caplog.text
        with pytest.raises(Unauthenticated):
            access.authenticate(impostor)

    def test_a_revoked_bootstrap_token_stays_revoked_across_restarts(
        self, access: AccessApplication, tmp_path: Path
    ) -> None:
        bearer = str(Bearer.new(uuid4()))
        settings = AccessSettings(bootstrap_admin_token=bearer)
        prepare_access(access, settings, tmp_path)
        access.revoke_token(parse_bearer(bearer).token_id)
        prepare_access(access, settings, tmp_path)
        with pytest.raises(Unauthenticated):
            access.authenticate(bearer)

    def test_an_empty_store_gets_one_generated_admin_token_written_for_its_owner(
        self, access: AccessApplication, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        settings = AccessSettings(generate_admin_token=True)
        with caplog.at_level(logging.WARNING):
            generated = prepare_access(access, settings, tmp_path / "data")
        assert generated is not None
        assert generated.token_id == GENERATED_ADMIN_TOKEN_ID
        assert generated.bearer in caplog.text  # printed once
        path = tmp_path / "data" / "admin.token"
        assert read_token_file(tmp_path / "data") == generated.bearer
        assert path.stat().st_mode & 0o777 == 0o600
        assert access.authenticate(generated.bearer).scopes == frozenset({"admin"})
        # A second start (or a second service) finds a token and generates none.
        assert prepare_access(access, settings, tmp_path / "data") is None
        assert len(access.list_tokens()) == 1

    def test_nothing_is_generated_unless_asked_or_when_tokens_exist(
        self, access: AccessApplication, tmp_path: Path
    ) -> None:
        assert prepare_access(access, AccessSettings(), tmp_path) is None
        assert not access.has_tokens()
        access.issue_token("ops", ["admin"])
        assert prepare_access(access, AccessSettings(generate_admin_token=True), tmp_path) is None
        assert read_token_file(tmp_path) is None


class TestSettings:
    def test_defaults_and_the_environment(self) -> None:
        bearer = str(Bearer.new(uuid4()))
        settings = access_from_env(
            {
                "CRM_AUTH_CACHE_S": "2.5",
                "CRM_AUTH_DEFAULT_RATE_PER_S": "50",
                "CRM_BOOTSTRAP_ADMIN_TOKEN": bearer,
                "CRM_TOKEN": "crm_client",
            }
        )
        assert settings == AccessSettings(
            cache_s=2.5,
            default_rate_per_s=50.0,
            bootstrap_admin_token=bearer,
            client_token="crm_client",
            generate_admin_token=True,
        )
        assert access_from_env({}) == AccessSettings(generate_admin_token=True)
        assert service_from_env("customer", {}).access == AccessSettings(generate_admin_token=True)

    @pytest.mark.parametrize(
        ("variable", "value"),
        [
            ("CRM_BOOTSTRAP_ADMIN_TOKEN", "letmein"),
            ("CRM_AUTH_CACHE_S", "-1"),
            ("CRM_AUTH_DEFAULT_RATE_PER_S", "0"),
            ("CRM_AUTH_DEFAULT_RATE_PER_S", "fast"),
        ],
    )
    def test_unusable_values_are_configuration_errors(self, variable: str, value: str) -> None:
        with pytest.raises(ConfigurationError, match=variable):
            access_from_env({variable: value})
