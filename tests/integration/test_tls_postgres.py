"""PostgreSQL over TLS: the event store and the read models connect with `sslmode=verify-full`.

A private PostgreSQL server is started with `ssl=on` and a certificate of a throw-away CA
(tests/support/certificates.py). With `POSTGRES_SSLMODE=verify-full` and that CA every
connection — the event store's pool and the read models' own — is encrypted and the server's
certificate and name are checked; with another CA nothing connects and the error says why.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from eventsourcing.persistence import OperationalError

from crmcore.adapters.readmodels import open_read_model_store
from crmcore.application.customers import CustomerApplication
from crmcore.config import PersistenceSettings, persistence_from_env
from tests.support.certificates import CertificateAuthority
from tests.support.postgres import PostgresServer, private_tls_server

pytestmark = pytest.mark.postgres

ENCRYPTED = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_postgres(authority: CertificateAuthority) -> Iterator[PostgresServer]:
    issued = authority.issue("postgres", server=True)
    with private_tls_server(issued.cert_file, issued.key_file) as server:
        yield server


def tls_persistence(server: PostgresServer, root_cert: Path) -> PersistenceSettings:
    """Settings as an operator writes them, read by `persistence_from_env`."""
    return persistence_from_env(
        {
            "CRM_PERSISTENCE": "postgres",
            "POSTGRES_DBNAME": server.create_database(),
            "POSTGRES_HOST": server.host,
            "POSTGRES_PORT": str(server.port),
            "POSTGRES_USER": server.user,
            "POSTGRES_PASSWORD": server.password,
            "POSTGRES_SSLMODE": "verify-full",
            "POSTGRES_SSLROOTCERT": str(root_cert),
        }
    )


class TestVerifyFull:
    def test_the_event_store_and_the_read_models_connect_encrypted(
        self, tls_postgres: PostgresServer, authority: CertificateAuthority
    ) -> None:
        persistence = tls_persistence(tls_postgres, authority.cert_file)
        app = CustomerApplication(persistence)
        try:
            alice = app.register(
                name="Alice Tanaka", contact_points=[("email", "alice@example.com")]
            )
            assert app.get(alice.id).name == "Alice Tanaka"
            with app.recorder.datastore.get_connection() as connection:  # type: ignore[attr-defined]
                assert connection.execute(ENCRYPTED).fetchone()["ssl"] is True
        finally:
            app.shut_down()
        store = open_read_model_store(persistence, "tls_views")
        try:
            assert store.query(ENCRYPTED) == [(True,)]
        finally:
            store.close_store()

    def test_another_ca_fails_at_start_saying_why(
        self, tls_postgres: PostgresServer, tmp_path: Path
    ) -> None:
        other = CertificateAuthority.create(tmp_path / "other", "someone else's CA")
        persistence = tls_persistence(tls_postgres, other.cert_file)
        with pytest.raises(OperationalError, match="certificate verify failed"):
            CustomerApplication(persistence)
        with pytest.raises(OperationalError, match="certificate verify failed"):
            open_read_model_store(persistence, "tls_views")
