"""TLS, credentials and limits settings: what `crmcore.config` accepts and how it refuses.

Every refusal is a `ConfigurationError` naming the variable at fault, so that a service stops
at start (exit 2) saying which setting to fix.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from crmcore.config import (
    DEFAULT_MAX_MESSAGE_BYTES,
    ConfigurationError,
    bus_from_env,
    client_tls_from_env,
    persistence_from_env,
    server_tls_from_env,
    service_from_env,
)
from tests.support.certificates import CertificateAuthority, Issued


@pytest.fixture
def authority(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path / "pki")


@pytest.fixture
def server(authority: CertificateAuthority) -> Issued:
    return authority.issue("server", server=True)


def refusal(call: object, *args: object) -> str:
    assert callable(call)
    with pytest.raises(ConfigurationError) as caught:
        call(*args)
    return str(caught.value)


class TestServerTls:
    def test_no_certificate_means_plaintext(self) -> None:
        assert server_tls_from_env({}) is None
        assert service_from_env("customer", {}).tls is None

    def test_certificate_and_key_give_tls_and_a_client_ca_mutual_tls(
        self, authority: CertificateAuthority, server: Issued
    ) -> None:
        env = {"CRM_TLS_CERT_FILE": str(server.cert_file), "CRM_TLS_KEY_FILE": str(server.key_file)}
        tls = service_from_env("customer", env).tls
        assert tls is not None
        assert (tls.cert_chain, tls.private_key, tls.mutual) == (server.cert, server.key, False)
        mutual = server_tls_from_env({**env, "CRM_TLS_CLIENT_CA_FILE": str(authority.cert_file)})
        assert mutual is not None
        assert mutual.mutual

    def test_a_missing_file_is_named(self, tmp_path: Path, server: Issued) -> None:
        env = {
            "CRM_TLS_CERT_FILE": str(tmp_path / "nowhere.pem"),
            "CRM_TLS_KEY_FILE": str(server.key_file),
        }
        assert "CRM_TLS_CERT_FILE=" in refusal(server_tls_from_env, env)

    def test_a_file_that_is_no_certificate_is_named(self, tmp_path: Path, server: Issued) -> None:
        junk = tmp_path / "junk.pem"
        junk.write_text("not a certificate\n")
        env = {"CRM_TLS_CERT_FILE": str(junk), "CRM_TLS_KEY_FILE": str(server.key_file)}
        assert "CRM_TLS_CERT_FILE" in refusal(server_tls_from_env, env)
        empty = tmp_path / "empty.pem"
        empty.write_text("")
        env = {"CRM_TLS_CERT_FILE": str(server.cert_file), "CRM_TLS_KEY_FILE": str(empty)}
        assert "CRM_TLS_KEY_FILE" in refusal(server_tls_from_env, env)

    def test_a_key_of_another_certificate_is_refused(
        self, authority: CertificateAuthority, server: Issued
    ) -> None:
        other = authority.issue("other", server=True)
        env = {"CRM_TLS_CERT_FILE": str(server.cert_file), "CRM_TLS_KEY_FILE": str(other.key_file)}
        assert "does not match" in refusal(server_tls_from_env, env)
        assert "CRM_TLS_KEY_FILE" in refusal(server_tls_from_env, env)

    def test_half_a_pair_is_refused(self, server: Issued) -> None:
        message = refusal(server_tls_from_env, {"CRM_TLS_CERT_FILE": str(server.cert_file)})
        assert "CRM_TLS_KEY_FILE" in message

    def test_a_client_ca_without_a_server_certificate_is_refused(
        self, authority: CertificateAuthority
    ) -> None:
        env = {"CRM_TLS_CLIENT_CA_FILE": str(authority.cert_file)}
        assert "CRM_TLS_CLIENT_CA_FILE" in refusal(server_tls_from_env, env)


class TestClientTls:
    def test_nothing_set_means_plaintext_and_tls_on_trusts_the_system(self) -> None:
        assert client_tls_from_env({}) is None
        system = client_tls_from_env({"CRM_TLS": "on", "CRM_TLS_SERVER_NAME": "crm.example"})
        assert system is not None
        assert system.ca is None
        assert system.server_name == "crm.example"

    def test_ca_and_client_certificate(self, authority: CertificateAuthority) -> None:
        issued = authority.issue("desk")
        tls = client_tls_from_env(
            {
                "CRM_TLS_CA_FILE": str(authority.cert_file),
                "CRM_TLS_CLIENT_CERT_FILE": str(issued.cert_file),
                "CRM_TLS_CLIENT_KEY_FILE": str(issued.key_file),
            }
        )
        assert tls is not None
        assert (tls.ca, tls.cert_chain, tls.private_key) == (
            authority.cert_file.read_bytes(),
            issued.cert,
            issued.key,
        )

    def test_refusals_name_the_variable(
        self, tmp_path: Path, authority: CertificateAuthority
    ) -> None:
        issued = authority.issue("desk")
        missing = str(tmp_path / "missing.pem")
        assert "CRM_TLS_CA_FILE" in refusal(client_tls_from_env, {"CRM_TLS_CA_FILE": missing})
        assert "CRM_TLS_CLIENT_KEY_FILE" in refusal(
            client_tls_from_env, {"CRM_TLS_CLIENT_CERT_FILE": str(issued.cert_file)}
        )
        assert "CRM_TLS=" in refusal(client_tls_from_env, {"CRM_TLS": "maybe"})
        assert "CRM_TLS=off" in refusal(
            client_tls_from_env, {"CRM_TLS": "off", "CRM_TLS_CA_FILE": str(authority.cert_file)}
        )


class TestNatsSecurity:
    def test_credentials_and_tls_files_are_read(
        self, tmp_path: Path, authority: CertificateAuthority
    ) -> None:
        issued = authority.issue("relay")
        bus = bus_from_env(
            {
                "NATS_URL": "nats://nats:4222",
                "NATS_USER": "crm",
                "NATS_PASSWORD": "s3cret",
                "NATS_TLS_CA_FILE": str(authority.cert_file),
                "NATS_TLS_CERT_FILE": str(issued.cert_file),
                "NATS_TLS_KEY_FILE": str(issued.key_file),
            }
        )
        assert (bus.user, bus.password, bus.token) == ("crm", "s3cret", None)
        assert bus.tls
        assert bus.tls_ca_file == str(authority.cert_file)
        assert not bus_from_env({}).tls
        assert bus_from_env({"NATS_URL": "tls://nats:4222"}).tls

    def test_refusals_name_the_variables(self, tmp_path: Path) -> None:
        assert "NATS_PASSWORD" in refusal(bus_from_env, {"NATS_USER": "crm"})
        both = refusal(bus_from_env, {"NATS_TOKEN": "t", "NATS_USER": "u", "NATS_PASSWORD": "p"})
        assert "NATS_USER/NATS_PASSWORD and NATS_TOKEN" in both
        missing = str(tmp_path / "missing.creds")
        assert "NATS_CREDS_FILE" in refusal(bus_from_env, {"NATS_CREDS_FILE": missing})
        assert "NATS_TLS_CA_FILE" in refusal(bus_from_env, {"NATS_TLS_CA_FILE": missing})


class TestPostgresTls:
    def test_tls_settings_pass_through_to_the_library(
        self, authority: CertificateAuthority
    ) -> None:
        settings = persistence_from_env(
            {
                "CRM_PERSISTENCE": "postgres",
                "POSTGRES_DBNAME": "crm",
                "POSTGRES_SSLMODE": "verify-full",
                "CUSTOMERS_POSTGRES_SSLROOTCERT": str(authority.cert_file),
            }
        )
        env = settings.application_env("customers")
        assert env["POSTGRES_SSLMODE"] == "verify-full"
        assert env["CUSTOMERS_POSTGRES_SSLROOTCERT"] == str(authority.cert_file)
        assert env["PERSISTENCE_MODULE"] == "crmcore.adapters.postgres:TlsPostgresFactory"

    def test_refusals_name_the_variable(self, tmp_path: Path) -> None:
        base = {"CRM_PERSISTENCE": "postgres", "POSTGRES_DBNAME": "crm"}
        assert "POSTGRES_SSLMODE=" in refusal(
            persistence_from_env, {**base, "POSTGRES_SSLMODE": "very-full"}
        )
        missing = str(tmp_path / "missing.pem")
        assert "METRICS_POSTGRES_SSLROOTCERT" in refusal(
            persistence_from_env, {**base, "METRICS_POSTGRES_SSLROOTCERT": missing}
        )
        assert persistence_from_env({**base, "POSTGRES_SSLROOTCERT": "system"}).kind == "postgres"


class TestMessageSize:
    def test_default_and_configured(self) -> None:
        assert service_from_env("routing", {}).max_message_bytes == DEFAULT_MAX_MESSAGE_BYTES
        configured = service_from_env("routing", {"CRM_GRPC_MAX_MESSAGE_BYTES": "65536"})
        assert configured.max_message_bytes == 65536
        message = refusal(service_from_env, "routing", {"CRM_GRPC_MAX_MESSAGE_BYTES": "10"})
        assert "CRM_GRPC_MAX_MESSAGE_BYTES" in message
