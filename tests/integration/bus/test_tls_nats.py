"""NATS with credentials and TLS: the relay and a consumer against a real, locked-down server.

The private nats-server gets a configuration requiring a user and password (or a token) and
TLS with a throw-away CA (tests/support/certificates.py); the relay publishes a kennel's events
and a durable consumer reads them back, both connecting from `BusSettings` as `bus_from_env`
reads them. A wrong password or an untrusted server is logged and retried: one warning line per
attempt, no traceback, nothing published, and the relay carries on once the settings are right.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import msgspec
import nats.errors
import nkeys  # type: ignore[import-untyped]
import pytest

from crmcore.adapters.jetstream import EventConsumer, Handlers, connect
from crmcore.adapters.nats_server import NatsServer
from crmcore.adapters.relay import OutboxRelay
from crmcore.config import BusSettings, PersistenceSettings, bus_from_env
from tests.integration.bus import (
    Kennel,
    relay_and_consume,
    running,
    store_dogs,
    until,
    warnings_about,
)
from tests.support.certificates import CertificateAuthority
from tests.support.nats import start_private_server

pytestmark = pytest.mark.nats

USER, PASSWORD = "crm-relay", "correct horse battery staple"


def write_config(path: Path, **blocks: object) -> Path:
    """A nats-server configuration file; JSON is valid nats-server syntax."""
    path.write_text(json.dumps(blocks, indent=2))
    return path


@pytest.fixture
def authority(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path / "pki")


@contextlib.contextmanager
def locked_server(tmp_path: Path, **blocks: object) -> Iterator[NatsServer]:
    server = start_private_server(tmp_path / "nats", write_config(tmp_path / "nats.conf", **blocks))
    try:
        yield server
    finally:
        server.kill()


def tls_block(
    authority: CertificateAuthority, *, verify_clients: bool = False
) -> dict[str, object]:
    issued = authority.issue("nats-server", server=True)
    block: dict[str, object] = {
        "cert_file": str(issued.cert_file),
        "key_file": str(issued.key_file),
        "timeout": 5,
    }
    if verify_clients:
        block.update(ca_file=str(authority.cert_file), verify=True)
    return block


def bus(server: NatsServer, stream: str, **env: str) -> BusSettings:
    settings = bus_from_env({"NATS_URL": server.url, **env})
    return msgspec.structs.replace(settings, stream=stream, max_age_s=3600)


def running_consumer(consumer: EventConsumer) -> asyncio.Task[None]:
    return asyncio.create_task(consumer.run())


class TestCredentialsAndTls:
    async def test_relay_and_consumer_work_with_password_and_tls(
        self, tmp_path: Path, authority: CertificateAuthority
    ) -> None:
        app = Kennel(PersistenceSettings.sqlite(tmp_path / "data"))
        store_dogs(app, dogs=3, renames=1)
        with locked_server(
            tmp_path,
            authorization={"user": USER, "password": PASSWORD},
            tls=tls_block(authority),
        ) as server:
            settings = bus(
                server,
                "CRM_TLS_PASSWORD",
                NATS_USER=USER,
                NATS_PASSWORD=PASSWORD,
                NATS_TLS_CA_FILE=str(authority.cert_file),
            )
            assert await relay_and_consume(app, settings, durable="tls-test") == [
                "Rex",
                "Rex",
                "Rex",
            ]

    async def test_a_token_and_a_client_certificate_work_against_a_verifying_server(
        self, tmp_path: Path, authority: CertificateAuthority
    ) -> None:
        app = Kennel(PersistenceSettings.sqlite(tmp_path / "data"))
        store_dogs(app, dogs=3, renames=1)
        client = authority.issue("crm-client")
        with locked_server(
            tmp_path,
            authorization={"token": "s3cr3t-t0ken"},
            tls=tls_block(authority, verify_clients=True),
        ) as server:
            settings = bus(
                server,
                "CRM_TLS_TOKEN",
                NATS_TOKEN="s3cr3t-t0ken",
                NATS_TLS_CA_FILE=str(authority.cert_file),
                NATS_TLS_CERT_FILE=str(client.cert_file),
                NATS_TLS_KEY_FILE=str(client.key_file),
            )
            assert await relay_and_consume(app, settings, durable="tls-test") == [
                "Rex",
                "Rex",
                "Rex",
            ]


class TestRefusals:
    async def test_a_wrong_password_is_logged_and_retried_without_tracebacks(
        self, tmp_path: Path, authority: CertificateAuthority, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO)
        app = Kennel(PersistenceSettings.sqlite(tmp_path / "data"))
        store_dogs(app, dogs=2, renames=0)
        with locked_server(
            tmp_path,
            authorization={"user": USER, "password": PASSWORD},
            tls=tls_block(authority),
        ) as server:
            wrong = bus(
                server,
                "CRM_TLS_WRONG",
                NATS_USER=USER,
                NATS_PASSWORD="wrong",
                NATS_TLS_CA_FILE=str(authority.cert_file),
            )
            relay = OutboxRelay(app, wrong)
            relay.backoff_initial_s = 0.05
            consumer = EventConsumer(
                wrong, durable="refused", subjects=["crm.dog.>"], handlers=Handlers()
            )
            consuming = running_consumer(consumer)
            async with running(relay):
                await until(lambda: relay.stats.failures >= 2)
                await until(lambda: len(warnings_about(caplog, "refused client")) >= 1)
            consumer.stop()
            await consuming
            assert relay.stats.position == 0
            assert "authorization" in (relay.stats.last_error or "").lower()
            assert not [record for record in caplog.records if record.exc_info]
            refused = {record.name for record in warnings_about(caplog, "authorization")}
            assert {"crmcore.adapters.relay", "crmcore.adapters.jetstream"} <= refused

    async def test_a_server_not_asking_for_tls_gets_no_credentials(
        self, tmp_path: Path, authority: CertificateAuthority, caplog: pytest.LogCaptureFixture
    ) -> None:
        """TLS configured, the server in clear (misconfigured, or not ours): the client gives
        up after the server's INFO, before its CONNECT would carry the password, although
        the password is right; a warning names the TLS settings."""
        caplog.set_level(logging.INFO)
        with locked_server(tmp_path, authorization={"user": USER, "password": PASSWORD}) as server:
            for url in (server.url, server.url.replace("nats://", "tls://")):
                settings = bus_from_env(
                    {
                        "NATS_URL": url,
                        "NATS_USER": USER,
                        "NATS_PASSWORD": PASSWORD,
                        "NATS_TLS_CA_FILE": str(authority.cert_file),
                    }
                )
                with pytest.raises(nats.errors.Error):
                    await connect(settings, name="tls-wanted", reconnect=False)
            assert warnings_about(caplog, "secure connection not available")
            plain = bus_from_env(
                {"NATS_URL": server.url, "NATS_USER": USER, "NATS_PASSWORD": PASSWORD}
            )
            client = await connect(plain, name="plain-wanted", reconnect=False)
            await client.close()  # the same server, TLS not asked for: connected

    async def test_a_server_certificate_of_another_ca_is_not_trusted(
        self, tmp_path: Path, authority: CertificateAuthority, caplog: pytest.LogCaptureFixture
    ) -> None:
        other = CertificateAuthority.create(tmp_path / "other", "someone else's CA")
        app = Kennel(PersistenceSettings.sqlite(tmp_path / "data"))
        store_dogs(app, dogs=1, renames=0)
        with locked_server(tmp_path, tls=tls_block(authority)) as server:
            untrusting = bus(server, "CRM_TLS_UNTRUSTED", NATS_TLS_CA_FILE=str(other.cert_file))
            relay = OutboxRelay(app, untrusting)
            relay.backoff_initial_s = 0.05
            async with running(relay):
                await until(lambda: relay.stats.failures >= 2)
            assert relay.stats.position == 0
            assert "certificate" in (relay.stats.last_error or "").lower()
            assert not [record for record in caplog.records if record.exc_info]


class TestNkeys:
    async def test_a_relay_logs_in_with_an_nkey_seed(self, tmp_path: Path) -> None:
        seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
        public_key = nkeys.from_seed(bytearray(seed)).public_key.decode()
        seed_file = tmp_path / "relay.nk"
        seed_file.write_bytes(seed + b"\n")
        app = Kennel(PersistenceSettings.sqlite(tmp_path / "data"))
        store_dogs(app, dogs=3, renames=1)
        with locked_server(tmp_path, authorization={"users": [{"nkey": public_key}]}) as server:
            settings = bus(server, "CRM_TLS_NKEY", NATS_NKEY_SEED_FILE=str(seed_file))
            assert await relay_and_consume(app, settings, durable="tls-test") == [
                "Rex",
                "Rex",
                "Rex",
            ]
