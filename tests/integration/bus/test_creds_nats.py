"""NATS decentralised auth: the services log in with a JWT `.creds` file (NATS_CREDS_FILE).

A private nats-server runs in operator mode, as NGS/Synadia deployments do: an operator, an
account with JetStream and its users, their JWTs signed here (tests/support/nats_jwt.py), the
accounts preloaded into the server's memory resolver. The bus connection the services open
(`bus_from_env` → `crmcore.adapters.jetstream.connect`) logs in with a user's `.creds` file:
the relay publishes a kennel's events and a durable consumer reads them back, and the customer
service, configured from its environment, publishes its events over it. Without credentials,
or with those of a user the server cannot trust, the server refuses: the refusal is logged
naming NATS_CREDS_FILE and nothing is published. A file that is not a credentials file is
refused at startup, before nats-py could hang or crash on it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import nats.errors
import nkeys  # type: ignore[import-untyped]
import pytest

from crm.v1 import customer_pb2 as pb
from crm.v1 import customer_pb2_grpc
from crmcore.adapters import envelope
from crmcore.adapters.jetstream import connect, is_refusal
from crmcore.adapters.nats_server import NatsServer
from crmcore.adapters.relay import OutboxRelay
from crmcore.config import (
    BusSettings,
    ConfigurationError,
    PersistenceSettings,
    bus_from_env,
)
from services.customer.bootstrap import start
from services.customer.config import settings_from_env
from tests.integration.bus import (
    Kennel,
    last_notification_id,
    read_stream,
    relay_and_consume,
    running,
    store_dogs,
    until,
    warnings_about,
)
from tests.support.auth import channel_for
from tests.support.nats import start_private_server
from tests.support.nats_jwt import Account, Identity, Operator, User, operator_config


@dataclass(frozen=True)
class OperatorMode:
    """A running operator-mode server and the operator and JetStream account it trusts."""

    server: NatsServer
    operator: Operator
    account: Account

    def bus(self, stream: str, **env: str) -> BusSettings:
        """Bus settings as a service reads them from its environment (`env` added)."""
        settings = bus_from_env({"NATS_URL": self.server.url, **env})
        return msgspec.structs.replace(settings, stream=stream, max_age_s=3600)


@pytest.fixture
def operator_mode(tmp_path: Path) -> Iterator[OperatorMode]:
    operator = Operator.create("crm-test-operator")
    account = operator.account("CRM")
    config = tmp_path / "nats.conf"
    # JSON is valid nats-server configuration syntax.
    config.write_text(json.dumps(operator_config(operator, account), indent=2))
    server = start_private_server(tmp_path / "nats", config)
    try:
        yield OperatorMode(server=server, operator=operator, account=account)
    finally:
        server.kill()


@pytest.mark.nats
class TestLoggingInWithACredsFile:
    async def test_the_relay_and_a_consumer_publish_and_read_events(
        self, operator_mode: OperatorMode, tmp_path: Path
    ) -> None:
        creds = operator_mode.account.user("crm-relay").write_creds(tmp_path / "relay.creds")
        settings = operator_mode.bus("CRM_CREDS", NATS_CREDS_FILE=str(creds))
        assert settings.creds_file == str(creds)
        app = Kennel(PersistenceSettings.sqlite(tmp_path / "data"))
        store_dogs(app, dogs=3, renames=1)
        assert await relay_and_consume(app, settings, durable="creds-test") == ["Rex", "Rex", "Rex"]

    async def test_the_customer_service_configured_from_its_environment_publishes_over_it(
        self, operator_mode: OperatorMode, tmp_path: Path
    ) -> None:
        creds = operator_mode.account.user("crm-customer").write_creds(tmp_path / "crm.creds")
        environment = {
            "CRM_CUSTOMER_ADDRESS": "127.0.0.1:0",
            "CRM_PERSISTENCE": "sqlite",
            "CRM_DATA_DIR": str(tmp_path / "data"),
            "CRM_DEFAULT_REGION": "JP",
            "CRM_WORKER_THREADS": "4",
            "NATS_URL": operator_mode.server.url,
            "NATS_CREDS_FILE": str(creds),
            "CRM_STREAM": "CRM_CREDS_SERVICE",
        }
        service = await start(settings_from_env(environment))
        try:
            async with channel_for(service) as channel:
                created = await customer_pb2_grpc.CustomerServiceStub(channel).CreateCustomer(
                    pb.CreateCustomerRequest(customer=pb.Customer(name="Taro Yamada"))
                )
            assert service.relay is not None
            await service.relay.wait_for(last_notification_id(service.app), 30)
        finally:
            await service.stop(grace=0.5)
        published = await read_stream(bus_from_env(environment), "crm.customer.>")
        assert created.id in {envelope.decode(message.data).subject for message in published}


def foreign_user(mode: OperatorMode) -> User:
    """A user of an account of another operator, whom this server does not trust."""
    return Operator.create("someone-else").account("CRM").user("intruder")


def user_of_an_unknown_account(mode: OperatorMode) -> User:
    """A user of an account the operator signed but the server was never given."""
    return mode.operator.account("NOT-PRELOADED").user("orphan")


def user_with_another_seed(mode: OperatorMode) -> User:
    """A valid user JWT with the seed of someone else: it cannot sign the server's nonce."""
    user = mode.account.user("crm-relay")
    return User(name=user.name, identity=Identity.create(nkeys.PREFIX_BYTE_USER), jwt=user.jwt)


@pytest.mark.nats
class TestRefusals:
    async def test_without_credentials_the_server_refuses_and_the_warning_names_the_setting(
        self, operator_mode: OperatorMode, caplog: pytest.LogCaptureFixture
    ) -> None:
        settings = operator_mode.bus("CRM_CREDS_NONE")
        with pytest.raises(nats.errors.Error, match="Authorization Violation") as refused:
            await connect(settings, name="crm-anonymous", reconnect=False)
        assert is_refusal(refused.value)
        (warning,) = warnings_about(caplog, "refused client crm-anonymous")
        assert "NATS_CREDS_FILE" in warning.getMessage()

    @pytest.mark.parametrize(
        "make_user", [foreign_user, user_of_an_unknown_account, user_with_another_seed]
    )
    async def test_creds_the_server_cannot_trust_are_refused(
        self,
        operator_mode: OperatorMode,
        tmp_path: Path,
        make_user: Callable[[OperatorMode], User],
    ) -> None:
        creds = make_user(operator_mode).write_creds(tmp_path / "untrusted.creds")
        settings = operator_mode.bus("CRM_CREDS_UNTRUSTED", NATS_CREDS_FILE=str(creds))
        with pytest.raises(nats.errors.Error, match="Authorization Violation") as refused:
            await connect(settings, name="crm-untrusted", reconnect=False)
        assert is_refusal(refused.value)

    async def test_a_relay_with_untrusted_creds_is_logged_and_retried_without_publishing(
        self, operator_mode: OperatorMode, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO)
        creds = foreign_user(operator_mode).write_creds(tmp_path / "untrusted.creds")
        settings = operator_mode.bus("CRM_CREDS_REFUSED", NATS_CREDS_FILE=str(creds))
        app = Kennel(PersistenceSettings.sqlite(tmp_path / "data"))
        store_dogs(app, dogs=2, renames=0)
        relay = OutboxRelay(app, settings)
        relay.backoff_initial_s = 0.05
        async with running(relay):
            await until(lambda: relay.stats.failures >= 2)
        assert relay.stats.position == 0
        assert "authorization" in (relay.stats.last_error or "").lower()
        assert warnings_about(caplog, "NATS_CREDS_FILE")
        assert not [record for record in caplog.records if record.exc_info]


def plain_seed() -> bytes:
    return bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))


def good_creds(tmp_path: Path) -> bytes:
    operator = Operator.create("crm-test-operator")
    return operator.account("CRM").user("crm").write_creds(tmp_path / "good.creds").read_bytes()


class TestFilesThatAreNotCredentials:
    """nats-py reads these without checking: a file lacking the JWT makes it loop forever (the
    whole event loop with it), one lacking the seed raises a TypeError that kills the bus
    clients. The configuration refuses them at startup, naming the setting."""

    @pytest.mark.parametrize(
        "damage",
        [
            pytest.param(lambda creds: plain_seed() + b"\n", id="an-nkey-seed-file"),
            pytest.param(lambda creds: creds.split(b"\n\n")[0] + b"\n", id="the-jwt-only"),
            pytest.param(lambda creds: creds.split(b"\n\n", 1)[1], id="the-seed-only"),
            pytest.param(lambda creds: creds.replace(b"\n", b"\r\n"), id="windows-line-ends"),
            pytest.param(
                lambda creds: creds[: creds.index(b"------END USER") - 1], id="seed-without-newline"
            ),
        ],
    )
    def test_a_damaged_creds_file_is_refused_at_startup(
        self, tmp_path: Path, damage: Callable[[bytes], bytes]
    ) -> None:
        path = tmp_path / "damaged.creds"
        path.write_bytes(damage(good_creds(tmp_path)))
        with pytest.raises(ConfigurationError, match=r"NATS_CREDS_FILE.*not a NATS credentials"):
            bus_from_env({"NATS_CREDS_FILE": str(path)})

    def test_what_nsc_writes_is_accepted(self, tmp_path: Path) -> None:
        path = tmp_path / "crm.creds"
        path.write_bytes(good_creds(tmp_path))
        assert bus_from_env({"NATS_CREDS_FILE": str(path)}).creds_file == str(path)

    def test_a_seed_file_must_hold_a_user_seed(self, tmp_path: Path) -> None:
        creds = tmp_path / "crm.creds"
        creds.write_bytes(good_creds(tmp_path))
        seed = tmp_path / "crm.nk"
        seed.write_bytes(plain_seed() + b"\n")
        assert bus_from_env({"NATS_NKEY_SEED_FILE": str(seed)}).nkey_seed_file == str(seed)
        with pytest.raises(ConfigurationError, match=r"NATS_NKEY_SEED_FILE.*not an NKey user seed"):
            bus_from_env({"NATS_NKEY_SEED_FILE": str(creds)})
