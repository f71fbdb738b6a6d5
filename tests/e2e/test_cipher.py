"""Encryption at rest of stored events: `CIPHER_KEY` with the msgspec mapper, end to end.

With a key configured every stored event is AES-GCM encrypted before it reaches the store:
the raw bytes of the SQLite file and of the PostgreSQL table hold neither a customer's name or
e-mail nor a non-personal field. The service works as usual through gRPC, the relay publishes
readable CloudEvents, and a wrong or missing key fails loudly when the events are read. The
same scenario without a key shows the raw bytes do hold the plaintext (the check can fail).
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from eventsourcing.cipher import AESCipher
from eventsourcing.persistence import MapperDeserialisationError

from crm.v1 import customer_pb2, customer_pb2_grpc
from crmcore.adapters import envelope
from crmcore.adapters.grpc.channels import open_channel
from crmcore.application.customers import CustomerApplication
from crmcore.config import BusSettings, PersistenceSettings, ServiceSettings
from crmcore.domain.customer import Customer
from services.customer.bootstrap import start
from services.customer.config import CustomerServiceSettings
from tests.integration.bus import read_stream
from tests.support.auth import service_token
from tests.support.postgres import PostgresServer

NAME = "Zebulon Quartermaine"
EMAIL = "zebulon.quartermaine@example.org"
SEGMENT = "platinum-segment-x7q"  # not personal data: only the cipher hides it
SECRETS = (NAME.encode(), EMAIL.encode(), SEGMENT.encode())


def with_key(persistence: PersistenceSettings, key: str | None) -> PersistenceSettings:
    env = dict(persistence.library_env)
    if key is not None:
        env["CIPHER_KEY"] = key
    return msgspec.structs.replace(persistence, library_env=env)


def register(app: CustomerApplication) -> None:
    app.register(name=NAME, segment=SEGMENT, contact_points=[("email", EMAIL)])


def found(app: CustomerApplication) -> Customer:
    customer = app.lookup("email", EMAIL)
    assert customer is not None
    return customer


def sqlite_bytes(data_dir: Path, application: str) -> bytes:
    """Every byte of an application's SQLite store (the file and its journal)."""
    return b"".join(path.read_bytes() for path in sorted(data_dir.glob(f"{application}.sqlite*")))


def plaintext_in(raw: bytes) -> list[bytes]:
    return [secret for secret in SECRETS if secret in raw]


class TestSqlite:
    def test_stored_bytes_hold_no_plaintext_with_a_key(self, tmp_path: Path) -> None:
        persistence = with_key(PersistenceSettings.sqlite(tmp_path / "data"), new_key())
        app = CustomerApplication(persistence)
        try:
            register(app)
            assert found(app).segment == SEGMENT
        finally:
            app.shut_down()
        assert plaintext_in(sqlite_bytes(tmp_path / "data", "customers")) == []

    def test_without_a_key_the_non_personal_field_is_in_the_clear(self, tmp_path: Path) -> None:
        app = CustomerApplication(PersistenceSettings.sqlite(tmp_path / "data"))
        try:
            register(app)
        finally:
            app.shut_down()
        assert SEGMENT.encode() in plaintext_in(sqlite_bytes(tmp_path / "data", "customers"))

    def test_a_wrong_or_missing_key_fails_reading_and_says_so(self, tmp_path: Path) -> None:
        plain = PersistenceSettings.sqlite(tmp_path / "data")
        app = CustomerApplication(with_key(plain, new_key()))
        try:
            register(app)
            customer_id = found(app).id
        finally:
            app.shut_down()
        for persistence in (with_key(plain, new_key()), plain):
            reopened = CustomerApplication(persistence)
            try:
                with pytest.raises(MapperDeserialisationError, match="cannot decode stored event"):
                    reopened.get(customer_id)
            finally:
                reopened.shut_down()


@pytest.mark.postgres
class TestPostgres:
    def test_stored_rows_hold_no_plaintext_with_a_key(
        self, postgres_server: PostgresServer, postgres_persistence: PersistenceSettings
    ) -> None:
        app = CustomerApplication(with_key(postgres_persistence, new_key()))
        try:
            register(app)
            assert found(app).name == NAME
        finally:
            app.shut_down()
        raw = table_bytes(postgres_server, postgres_persistence, "customers")
        assert raw  # the events are there…
        assert plaintext_in(raw) == []  # …but unreadable

    def test_without_a_key_the_non_personal_field_is_in_the_clear(
        self, postgres_server: PostgresServer, postgres_persistence: PersistenceSettings
    ) -> None:
        app = CustomerApplication(postgres_persistence)
        try:
            register(app)
        finally:
            app.shut_down()
        raw = table_bytes(postgres_server, postgres_persistence, "customers")
        assert SEGMENT.encode() in plaintext_in(raw)


@pytest.mark.nats
class TestService:
    async def test_the_service_and_the_relay_work_with_encrypted_storage(
        self, tmp_path: Path, bus_settings: BusSettings
    ) -> None:
        persistence = with_key(PersistenceSettings.sqlite(tmp_path / "data"), new_key())
        service = await start(
            CustomerServiceSettings(
                service=ServiceSettings(
                    service="customer",
                    address="127.0.0.1:0",
                    persistence=persistence,
                    shutdown_grace_s=1.0,
                ),
                bus=bus_settings,
            )
        )
        try:
            async with open_channel(service.address, token=service_token(service)) as channel:
                stub = customer_pb2_grpc.CustomerServiceStub(channel)
                created = await stub.CreateCustomer(
                    customer_pb2.CreateCustomerRequest(
                        customer=customer_pb2.Customer(
                            name=NAME,
                            segment=SEGMENT,
                            contact_points=[
                                customer_pb2.ContactPoint(
                                    kind=customer_pb2.CONTACT_POINT_KIND_EMAIL, value=EMAIL
                                )
                            ],
                        )
                    ),
                    timeout=10,
                )
                read = await stub.GetCustomer(
                    customer_pb2.GetCustomerRequest(id=created.id), timeout=10
                )
                assert (read.name, read.segment) == (NAME, SEGMENT)
            assert service.relay is not None
            await service.relay.wait_for(service.app.recorder.max_notification_id() or 0, 30)
            published = [
                envelope.decode(message.data)
                for message in await read_stream(bus_settings, "crm.customer.>")
            ]
        finally:
            await service.stop(grace=0.5)
        registered = [event for event in published if event.subject == created.id]
        assert registered, "the relay published the customer's events"
        data = msgspec.json.encode([event.data_json() for event in registered])
        assert SEGMENT.encode() in data  # readable on the bus…
        assert NAME.encode() not in data  # …without personal data, as always
        assert plaintext_in(sqlite_bytes(tmp_path / "data", "customers")) == []


def new_key() -> str:
    return AESCipher.create_key(32)


def table_bytes(
    server: PostgresServer, persistence: PersistenceSettings, application: str
) -> bytes:
    """Every value of every table of `application` in the database, as raw bytes."""
    dbname = persistence.library_env["POSTGRES_DBNAME"]
    chunks: list[bytes] = []
    with server.connect(dbname) as connection:
        tables = [
            row[0]
            for row in connection.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = 'public' AND table_name LIKE %s",
                (f"{application}%",),
            ).fetchall()
        ]
        for table in tables:
            for row in connection.execute(f'SELECT * FROM "{table}"').fetchall():
                chunks.extend(_as_bytes(value) for value in row)
    return b"".join(chunks)


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return str(value).encode()
