"""gRPC over TLS and mutual TLS, configured from the environment, with a real service.

A throw-away CA, server and client certificates are made for each test (tests/support/
certificates.py); the customer service is started in this process from the settings
`service_from_env` reads, and real clients connect with `open_channel(..., tls=...)` built
from `client_tls_from_env`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from crm.v1 import customer_pb2, customer_pb2_grpc
from crmcore.adapters.grpc.channels import open_blocking_channel, open_channel
from crmcore.config import ClientTlsSettings, client_tls_from_env, service_from_env
from services.customer.bootstrap import SERVICE_NAME, CustomerService, start
from services.customer.config import CustomerServiceSettings
from tests.support.auth import service_token
from tests.support.certificates import CertificateAuthority

CALL_TIMEOUT_S = 10


@pytest.fixture
def authority(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path / "pki")


def server_environment(
    tmp_path: Path, authority: CertificateAuthority, *, mutual: bool
) -> dict[str, str]:
    server = authority.issue("server", server=True)
    env = {
        "CRM_CUSTOMER_ADDRESS": "127.0.0.1:0",
        "CRM_DATA_DIR": str(tmp_path / "data"),
        "CRM_TLS_CERT_FILE": str(server.cert_file),
        "CRM_TLS_KEY_FILE": str(server.key_file),
    }
    if mutual:
        env["CRM_TLS_CLIENT_CA_FILE"] = str(authority.cert_file)
    return env


@contextlib.asynccontextmanager
async def tls_service(env: dict[str, str]) -> AsyncIterator[CustomerService]:
    service = await start(
        CustomerServiceSettings(service=service_from_env("customer", env), bus=None)
    )
    try:
        yield service
    finally:
        await service.stop(grace=0.5)


async def create_and_read(
    service: CustomerService, tls: ClientTlsSettings | None, name: str = "Aiko Mori"
) -> str:
    """Creates a customer and reads it back over a channel with `tls`; its name."""
    async with open_channel(service.address, token=service_token(service), tls=tls) as channel:
        stub = customer_pb2_grpc.CustomerServiceStub(channel)
        created = await stub.CreateCustomer(
            customer_pb2.CreateCustomerRequest(customer=customer_pb2.Customer(name=name)),
            timeout=CALL_TIMEOUT_S,
        )
        read = await stub.GetCustomer(
            customer_pb2.GetCustomerRequest(id=created.id), timeout=CALL_TIMEOUT_S
        )
    return read.name


async def refused_code(service: CustomerService, tls: ClientTlsSettings | None) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create_and_read(service, tls)
    return caught.value.code()


class TestTls:
    async def test_a_client_trusting_the_ca_talks_tls_to_the_service(
        self, tmp_path: Path, authority: CertificateAuthority
    ) -> None:
        client = client_tls_from_env({"CRM_TLS_CA_FILE": str(authority.cert_file)})
        async with tls_service(server_environment(tmp_path, authority, mutual=False)) as service:
            assert await create_and_read(service, client) == "Aiko Mori"

    async def test_a_plaintext_client_gets_unavailable_and_stores_nothing(
        self, tmp_path: Path, authority: CertificateAuthority
    ) -> None:
        async with tls_service(server_environment(tmp_path, authority, mutual=False)) as service:
            assert await refused_code(service, None) is grpc.StatusCode.UNAVAILABLE
            assert (service.app.recorder.max_notification_id() or 0) == 0

    async def test_a_client_trusting_another_ca_is_refused(
        self, tmp_path: Path, authority: CertificateAuthority
    ) -> None:
        other = CertificateAuthority.create(tmp_path / "other", "someone else's CA")
        client = client_tls_from_env({"CRM_TLS_CA_FILE": str(other.cert_file)})
        async with tls_service(server_environment(tmp_path, authority, mutual=False)) as service:
            assert await refused_code(service, client) is grpc.StatusCode.UNAVAILABLE

    async def test_the_blocking_channel_talks_tls_too(
        self, tmp_path: Path, authority: CertificateAuthority
    ) -> None:
        client = client_tls_from_env({"CRM_TLS_CA_FILE": str(authority.cert_file)})
        async with tls_service(server_environment(tmp_path, authority, mutual=False)) as service:
            token = service_token(service)
            channel = open_blocking_channel(service.address, token=token, tls=client)
            try:
                stub = customer_pb2_grpc.CustomerServiceStub(channel)
                # In a thread: this event loop must keep serving the in-process service.
                listed = await asyncio.to_thread(
                    stub.ListCustomers, customer_pb2.ListCustomersRequest(), timeout=CALL_TIMEOUT_S
                )
                assert list(listed.customers) == []
            finally:
                channel.close()


class TestMutualTls:
    async def test_a_client_with_a_certificate_of_the_ca_is_served(
        self, tmp_path: Path, authority: CertificateAuthority
    ) -> None:
        issued = authority.issue("agent-desktop")
        client = client_tls_from_env(
            {
                "CRM_TLS_CA_FILE": str(authority.cert_file),
                "CRM_TLS_CLIENT_CERT_FILE": str(issued.cert_file),
                "CRM_TLS_CLIENT_KEY_FILE": str(issued.key_file),
            }
        )
        async with tls_service(server_environment(tmp_path, authority, mutual=True)) as service:
            assert await create_and_read(service, client) == "Aiko Mori"

    async def test_a_client_without_a_certificate_is_refused(
        self, tmp_path: Path, authority: CertificateAuthority
    ) -> None:
        client = client_tls_from_env({"CRM_TLS_CA_FILE": str(authority.cert_file)})
        async with tls_service(server_environment(tmp_path, authority, mutual=True)) as service:
            assert await refused_code(service, client) is grpc.StatusCode.UNAVAILABLE
            assert (service.app.recorder.max_notification_id() or 0) == 0

    async def test_a_client_certificate_of_another_ca_is_refused(
        self, tmp_path: Path, authority: CertificateAuthority
    ) -> None:
        other = CertificateAuthority.create(tmp_path / "other", "someone else's CA")
        stranger = other.issue("stranger")
        client = client_tls_from_env(
            {
                "CRM_TLS_CA_FILE": str(authority.cert_file),
                "CRM_TLS_CLIENT_CERT_FILE": str(stranger.cert_file),
                "CRM_TLS_CLIENT_KEY_FILE": str(stranger.key_file),
            }
        )
        async with tls_service(server_environment(tmp_path, authority, mutual=True)) as service:
            assert await refused_code(service, client) is grpc.StatusCode.UNAVAILABLE


class TestPlaintextHealthPort:
    async def test_probes_get_health_in_clear_and_nothing_else(
        self, tmp_path: Path, authority: CertificateAuthority
    ) -> None:
        env = {
            **server_environment(tmp_path, authority, mutual=True),
            "CRM_HEALTH_ADDRESS": "127.0.0.1:0",
        }
        async with tls_service(env) as service:
            assert service.server is not None
            assert service.server.health_port is not None
            async with grpc.aio.insecure_channel(
                f"127.0.0.1:{service.server.health_port}"
            ) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                answer = await health.Check(
                    health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=CALL_TIMEOUT_S
                )
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
                customers = customer_pb2_grpc.CustomerServiceStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await customers.ListCustomers(
                        customer_pb2.ListCustomersRequest(), timeout=CALL_TIMEOUT_S
                    )
                assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED
