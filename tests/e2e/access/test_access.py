"""Every RPC of every service authenticates and authorises its caller (real services, real
gRPC, one SQLite token store): no token, a malformed, revoked or too narrow one is refused
before anything is stored; health and reflection stay open; rate limits; the caller is the
current principal while the handler runs; first start and bootstrap tokens of a service
process; `crm tokens` through the real CLI."""

from __future__ import annotations

import functools
import importlib
import os
import pkgutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import crm.v1
from crm.v1 import (
    common_pb2,
    customer_pb2,
    customer_pb2_grpc,
    interaction_pb2,
    metrics_pb2,
    routing_pb2,
)
from crmcore.adapters.grpc.access import METHOD_SCOPES, AccessInterceptor
from crmcore.adapters.grpc.channels import open_blocking_channel, open_channel
from crmcore.adapters.nats_server import free_loopback_port
from crmcore.application.access import AccessApplication
from crmcore.application.principal import current_principal
from crmcore.cli import main as crm_main
from crmcore.config import AccessSettings, PersistenceSettings, ServiceName
from crmcore.domain.access import SCOPES, parse_bearer
from tests.e2e.access.conftest import CACHE_S, Stack
from tests.support.auth import issue_token, new_bearer

SERVICE_OF: dict[str, ServiceName] = {
    "crm.v1.CustomerService": "customer",
    "crm.v1.InteractionService": "interaction",
    "crm.v1.RoutingService": "routing",
    "crm.v1.MetricsService": "metrics",
}


@dataclass(frozen=True)
class Rpc:
    service: ServiceName
    path: str
    request_type: type[Message]
    server_streaming: bool
    client_streaming: bool

    def __str__(self) -> str:
        return self.path.rsplit(".", 1)[-1]


def contract_rpcs() -> list[Rpc]:
    """Every method of every service in the crm.v1 descriptors."""
    found: list[Rpc] = []
    for module in pkgutil.iter_modules(crm.v1.__path__, "crm.v1."):
        if not module.name.endswith("_pb2"):
            continue
        for service in importlib.import_module(module.name).DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                found.append(
                    Rpc(
                        service=SERVICE_OF[service.full_name],
                        path=f"/{service.full_name}/{method.name}",
                        request_type=message_factory.GetMessageClass(method.input_type),
                        server_streaming=method.server_streaming,
                        client_streaming=method.client_streaming,
                    )
                )
    return sorted(found, key=lambda rpc: rpc.path)


RPCS = contract_rpcs()


def _raw(data: bytes) -> bytes:
    return data


def invoke(channel: grpc.Channel, rpc: Rpc, request: Message | None = None) -> Any:
    """Calls `rpc` with `request` (default: an empty one); the answer, or raises RpcError."""
    message = request if request is not None else rpc.request_type()
    serialize = type(message).SerializeToString
    if rpc.client_streaming:
        if rpc.server_streaming:
            return list(
                channel.stream_stream(rpc.path, serialize, _raw)(iter([message]), timeout=10)
            )
        return channel.stream_unary(rpc.path, serialize, _raw)(iter([message]), timeout=10)
    if rpc.server_streaming:
        return list(channel.unary_stream(rpc.path, serialize, _raw)(message, timeout=10))
    return channel.unary_unary(rpc.path, serialize, _raw)(message, timeout=10)


def refusal(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error: Any = caught.value
    return error.code(), error.details() or ""


@pytest.fixture(scope="module")
def tokens(stack: Stack) -> dict[str, str]:
    """Bearers by purpose: `admin`, `revoked`, and `without:<scope>` (every other scope but
    admin)."""
    persistence = stack.persistence
    bearers = {"admin": issue_token(persistence, "admin", name="admin").bearer}
    revoked = issue_token(persistence, "admin", name="revoked")
    app = AccessApplication(persistence)
    try:
        app.revoke_token(revoked.token_id)
    finally:
        app.close()
    bearers["revoked"] = revoked.bearer
    for scope in sorted(SCOPES - {"admin"}):
        others = sorted(SCOPES - {"admin", scope})
        bearers[f"without:{scope}"] = issue_token(persistence, *others, name=f"no-{scope}").bearer
    return bearers


@pytest.fixture
def channel_to(stack: Stack) -> Iterator[Callable[[ServiceName, str | None], grpc.Channel]]:
    """Opens channels to a service of the stack with a given bearer (None: none); closes them."""
    opened: list[grpc.Channel] = []

    def open_to(service: ServiceName, token: str | None) -> grpc.Channel:
        channel = open_blocking_channel(stack.address(service), token=token)
        opened.append(channel)
        return channel

    yield open_to
    for channel in opened:
        channel.close()


Opener = Callable[[ServiceName, str | None], grpc.Channel]


class TestEveryRpc:
    @pytest.mark.parametrize("rpc", RPCS, ids=str)
    def test_refuses_no_malformed_revoked_or_too_narrow_tokens_storing_nothing(
        self, rpc: Rpc, stack: Stack, tokens: dict[str, str], channel_to: Opener
    ) -> None:
        before = stack.stored(rpc.service)
        scope = METHOD_SCOPES[rpc.path]
        cases = {
            None: grpc.StatusCode.UNAUTHENTICATED,
            "crm_not-a-token": grpc.StatusCode.UNAUTHENTICATED,
            new_bearer(): grpc.StatusCode.UNAUTHENTICATED,  # well-formed, never issued
            tokens["revoked"]: grpc.StatusCode.UNAUTHENTICATED,
            tokens[f"without:{scope}"]: grpc.StatusCode.PERMISSION_DENIED,
        }
        for token, expected in cases.items():
            channel = channel_to(rpc.service, token)
            code, message = refusal(functools.partial(invoke, channel, rpc))
            assert code == expected, (token, message)
            if expected == grpc.StatusCode.PERMISSION_DENIED:
                assert scope in message
        assert stack.stored(rpc.service) == before

    @pytest.mark.parametrize("rpc", RPCS, ids=str)
    def test_passes_the_token_holding_its_scope_to_the_service(
        self, rpc: Rpc, tokens: dict[str, str], channel_to: Opener
    ) -> None:
        # An empty request: the service itself answers (often INVALID_ARGUMENT), not access.
        channel = channel_to(rpc.service, tokens["admin"])
        assert answered_by_the_service(lambda: invoke(channel, rpc))


def answered_by_the_service(call: Callable[[], object]) -> bool:
    """Whether the call got past access: it succeeded or the service itself refused it."""
    try:
        call()
    except grpc.RpcError as error:
        code: Any = error.code()
        return code not in (
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
    return True


def _rpc(path: str) -> Rpc:
    return next(rpc for rpc in RPCS if rpc.path == path)


WRITES: list[tuple[str, Message]] = [
    (
        "/crm.v1.CustomerService/CreateCustomer",
        customer_pb2.CreateCustomerRequest(customer=customer_pb2.Customer(name="Taro Yamada")),
    ),
    (
        "/crm.v1.InteractionService/OpenInteraction",
        interaction_pb2.OpenInteractionRequest(channel=common_pb2.CHANNEL_EMAIL),
    ),
    (
        "/crm.v1.RoutingService/RegisterAgent",
        routing_pb2.RegisterAgentRequest(agent=routing_pb2.Agent(display_name="Aiko")),
    ),
]


class TestRefusedWrites:
    @pytest.mark.parametrize(("path", "request_message"), WRITES, ids=lambda v: str(v)[-30:])
    def test_store_nothing_while_the_same_call_with_the_scope_stores(
        self,
        path: str,
        request_message: Message,
        stack: Stack,
        tokens: dict[str, str],
        channel_to: Opener,
    ) -> None:
        rpc = _rpc(path)
        scope = METHOD_SCOPES[path]
        before = stack.stored(rpc.service)
        narrow = channel_to(rpc.service, tokens[f"without:{scope}"])
        code, _ = refusal(lambda: invoke(narrow, rpc, request_message))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert stack.stored(rpc.service) == before

        invoke(channel_to(rpc.service, tokens["admin"]), rpc, request_message)
        assert stack.stored(rpc.service) > before

    def test_a_kpi_target_is_not_created_without_metrics_write(
        self, stack: Stack, tokens: dict[str, str], channel_to: Opener
    ) -> None:
        start = datetime(2025, 4, 1, tzinfo=UTC)
        target = metrics_pb2.KpiTarget(kpi="service_level", baseline=0.6, target=0.8)
        target.start_time.FromDatetime(start)
        target.deadline_time.FromDatetime(start + timedelta(days=90))
        request = metrics_pb2.CreateKpiTargetRequest(kpi_target=target)
        rpc = _rpc("/crm.v1.MetricsService/CreateKpiTarget")
        before = stack.stored("metrics")
        reader = channel_to("metrics", tokens["without:metrics:write"])
        assert refusal(lambda: invoke(reader, rpc, request))[0] == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        assert stack.stored("metrics") == before
        invoke(channel_to("metrics", tokens["admin"]), rpc, request)
        assert stack.stored("metrics") == before + 1


class TestOpenServices:
    @pytest.mark.parametrize("service", list(SERVICE_OF.values()))
    def test_health_and_reflection_need_no_token(
        self, service: ServiceName, channel_to: Opener
    ) -> None:
        channel = channel_to(service, None)
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for reply in replies for s in reply.list_services_response.service}
        assert any(name.startswith("crm.v1.") for name in names)


LIST_CUSTOMERS = "/crm.v1.CustomerService/ListCustomers"


class TestRateLimits:
    def test_calls_beyond_the_tokens_rate_are_resource_exhausted(
        self, stack: Stack, channel_to: Opener
    ) -> None:
        # 0.01 calls/s: a burst of one call, the next one a hundred seconds later.
        slow = issue_token(stack.persistence, "customers:read", name="slow", rate_per_s=0.01)
        channel = channel_to("customer", slow.bearer)
        invoke(channel, _rpc(LIST_CUSTOMERS))
        code, message = refusal(lambda: invoke(channel, _rpc(LIST_CUSTOMERS)))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "rate limit" in message
        assert "slow" in message
        # Other tokens have buckets of their own.
        other = issue_token(stack.persistence, "customers:read", name="other").bearer
        invoke(channel_to("customer", other), _rpc(LIST_CUSTOMERS))

    def test_without_a_rate_of_its_own_a_token_gets_the_configured_default(self) -> None:
        assert AccessSettings().default_rate_per_s == 1000.0


class TestRevocation:
    def test_a_revocation_in_the_same_process_takes_effect_at_once(
        self, stack: Stack, channel_to: Opener
    ) -> None:
        issued = issue_token(stack.persistence, "customers:read", name="desk")
        channel = channel_to("customer", issued.bearer)
        invoke(channel, _rpc(LIST_CUSTOMERS))  # checked, and remembered
        stack.services["customer"].access.app.revoke_token(issued.token_id)
        code, _ = refusal(lambda: invoke(channel, _rpc(LIST_CUSTOMERS)))
        assert code == grpc.StatusCode.UNAUTHENTICATED

    def test_a_revocation_elsewhere_takes_effect_within_the_cache_time(
        self, stack: Stack, channel_to: Opener
    ) -> None:
        issued = issue_token(stack.persistence, "routing:read", name="wallboard")
        channel = channel_to("routing", issued.bearer)
        list_queues = _rpc("/crm.v1.RoutingService/ListQueues")
        invoke(channel, list_queues)
        other_process = AccessApplication(stack.persistence)
        try:
            other_process.revoke_token(issued.token_id)
        finally:
            other_process.close()
        deadline = time.monotonic() + CACHE_S + 20  # generous for a loaded machine
        while answered_by_the_service(lambda: invoke(channel, list_queues)):
            assert time.monotonic() < deadline, "the revoked token still works"
            time.sleep(0.1)
        assert refusal(lambda: invoke(channel, list_queues))[0] == (grpc.StatusCode.UNAUTHENTICATED)


class TestRefusedBearers:
    """A refused bearer is remembered like an accepted one: repeating it reads no store."""

    @staticmethod
    def counting_store_reads(stack: Stack) -> list[str]:
        """The bearers the customer service's access check looks up in the store (the real
        lookup still runs)."""
        app = stack.services["customer"].access.app
        looked_up: list[str] = []
        verify = app.verify

        def counted(bearer: str, **kwargs: Any) -> Any:
            looked_up.append(bearer)
            return verify(bearer, **kwargs)

        app.verify = counted
        return looked_up

    def test_repeating_an_unknown_bearer_reads_the_store_once_per_cache_time(
        self, stack: Stack, channel_to: Opener
    ) -> None:
        looked_up = self.counting_store_reads(stack)
        bogus = new_bearer()
        channel = channel_to("customer", bogus)
        for _ in range(5):
            code, _ = refusal(lambda: invoke(channel, _rpc(LIST_CUSTOMERS)))
            assert code == grpc.StatusCode.UNAUTHENTICATED
        assert looked_up == [bogus]

    def test_a_wrong_secret_does_not_lock_out_the_tokens_holder(
        self, stack: Stack, channel_to: Opener
    ) -> None:
        issued = issue_token(stack.persistence, "customers:read", name="desk")
        forged = f"crm_{parse_bearer(issued.bearer).token_id.hex}_{'x' * 43}"
        code, _ = refusal(lambda: invoke(channel_to("customer", forged), _rpc(LIST_CUSTOMERS)))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        invoke(channel_to("customer", issued.bearer), _rpc(LIST_CUSTOMERS))

    def test_a_bearer_registered_elsewhere_after_a_refusal_works_within_the_cache_time(
        self, stack: Stack, channel_to: Opener
    ) -> None:
        bearer = new_bearer()
        channel = channel_to("customer", bearer)
        code, _ = refusal(lambda: invoke(channel, _rpc(LIST_CUSTOMERS)))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        other_process = AccessApplication(stack.persistence)
        try:
            assert other_process.register_bearer(bearer, "late", ["customers:read"])
        finally:
            other_process.close()
        deadline = time.monotonic() + CACHE_S + 20  # generous for a loaded machine
        while not answered_by_the_service(lambda: invoke(channel, _rpc(LIST_CUSTOMERS))):
            assert time.monotonic() < deadline, "the registered bearer is still refused"
            time.sleep(0.1)


class TestThePrincipal:
    """A bare server with the access interceptor and handlers reporting who is calling."""

    @pytest.fixture
    async def server(self, tmp_path: Path) -> AsyncIterator[tuple[str, AccessApplication]]:
        app = AccessApplication(PersistenceSettings.sqlite(tmp_path / "data"))

        def who() -> bytes:
            principal = current_principal.get()
            return b"nobody" if principal is None else principal.actor.encode()

        async def unary(request: bytes, context: Any) -> bytes:
            return who()

        async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
            for _ in range(3):
                yield who()

        handlers = grpc.method_handlers_generic_handler(
            "crm.v1.CustomerService",
            {
                "GetCustomer": grpc.unary_unary_rpc_method_handler(unary),
                "StreamEverything": grpc.unary_stream_rpc_method_handler(stream),
            },
        )
        server = grpc.aio.server(
            interceptors=[
                AccessInterceptor(
                    app,
                    AccessSettings(),
                    method_scopes={
                        "/crm.v1.CustomerService/GetCustomer": "customers:read",
                        "/crm.v1.CustomerService/StreamEverything": "customers:read",
                    },
                )
            ]
        )
        server.add_generic_rpc_handlers((handlers,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            yield f"127.0.0.1:{port}", app
        finally:
            await server.stop(0)
            app.close()

    async def test_is_the_caller_in_unary_and_streaming_handlers(
        self, server: tuple[str, AccessApplication]
    ) -> None:
        address, app = server
        bearer = app.issue_token("agent-desk", ["customers:read"]).bearer
        async with open_channel(address, token=bearer) as channel:
            unary = channel.unary_unary("/crm.v1.CustomerService/GetCustomer", _raw, _raw)
            assert await unary(b"") == b"token:agent-desk"
            stream = channel.unary_stream("/crm.v1.CustomerService/StreamEverything", _raw, _raw)
            assert [answer async for answer in stream(b"")] == [b"token:agent-desk"] * 3
        assert current_principal.get() is None


# --- a service process: first start, bootstrap token ---------------------------------------

GRACE_S = 3


def _service_process(data_dir: Path, **variables: str) -> tuple[subprocess.Popen[bytes], str]:
    address = f"127.0.0.1:{free_loopback_port()}"
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CRM_", "POSTGRES_", "NATS_"))
    }
    environment |= {
        "CRM_CUSTOMER_ADDRESS": address,
        "CRM_DATA_DIR": str(data_dir),
        "CRM_SHUTDOWN_GRACE_S": str(GRACE_S),
        # Nothing listens there: the service serves and waits for its bus meanwhile.
        "NATS_URL": f"nats://127.0.0.1:{free_loopback_port()}",
        **variables,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "services.customer"],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    with open_blocking_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            assert process.poll() is None, "the service exited during start-up"
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return process, address
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, "not SERVING within 60 s"
            time.sleep(0.1)


def _stop(process: subprocess.Popen[bytes]) -> str:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=GRACE_S + 30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.stdout.read().decode(errors="replace") if process.stdout else ""


def _lists_customers(address: str, token: str | None) -> grpc.StatusCode:
    with open_blocking_channel(address, token=token) as channel:
        try:
            customer_pb2_grpc.CustomerServiceStub(channel).ListCustomers(
                customer_pb2.ListCustomersRequest(), timeout=10
            )
        except grpc.RpcError as error:
            code: grpc.StatusCode = error.code()
            return code
    return grpc.StatusCode.OK


@pytest.mark.nats
class TestAServiceProcess:
    def test_on_an_empty_store_it_prints_a_generated_admin_token_once_and_stays_closed(
        self, tmp_path: Path
    ) -> None:
        data_dir = tmp_path / "data"
        process, address = _service_process(data_dir)
        try:
            token_file = data_dir / "admin.token"
            token = token_file.read_text().strip()
            assert token_file.stat().st_mode & 0o777 == 0o600
            assert _lists_customers(address, None) == grpc.StatusCode.UNAUTHENTICATED
            assert _lists_customers(address, token) == grpc.StatusCode.OK
        finally:
            output = _stop(process)
        assert output.count(token) == 1, output

        # Started again: the token is still there, nothing new is generated or printed.
        process, address = _service_process(data_dir)
        try:
            assert _lists_customers(address, token) == grpc.StatusCode.OK
        finally:
            output = _stop(process)
        assert token not in output
        assert "generated admin token" not in output

    def test_a_bootstrap_token_from_the_environment_is_its_admin_token(
        self, tmp_path: Path
    ) -> None:
        data_dir = tmp_path / "data"
        bootstrap = new_bearer()
        process, address = _service_process(data_dir, CRM_BOOTSTRAP_ADMIN_TOKEN=bootstrap)
        try:
            assert _lists_customers(address, bootstrap) == grpc.StatusCode.OK
            assert _lists_customers(address, new_bearer()) == grpc.StatusCode.UNAUTHENTICATED
        finally:
            output = _stop(process)
        assert not (data_dir / "admin.token").exists()
        assert "generated admin token" not in output

    def test_a_malformed_bootstrap_token_stops_the_start_with_status_2(
        self, tmp_path: Path
    ) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "services.customer"],
            env={**os.environ, "CRM_DATA_DIR": str(tmp_path), "CRM_BOOTSTRAP_ADMIN_TOKEN": "pw"},
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2
        assert b"CRM_BOOTSTRAP_ADMIN_TOKEN" in done.stderr


# --- crm tokens --------------------------------------------------------------------------------


class TestTheTokensCommand:
    def test_create_list_and_revoke_on_the_store_the_services_share(
        self,
        stack: Stack,
        channel_to: Opener,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        monkeypatch.setenv("CRM_PERSISTENCE", "sqlite")
        monkeypatch.setenv("CRM_DATA_DIR", str(stack.data_dir))
        assert (
            crm_main(
                [
                    *("tokens", "create", "--name", "qa-team"),
                    *("--scope", "interactions:read", "--scope", "metrics:read", "--rate", "50"),
                ]
            )
            == 0
        )
        printed = capsys.readouterr()
        bearer = printed.out.strip()
        assert bearer.startswith("crm_")
        assert "shown this once" in printed.err

        kpis = _rpc("/crm.v1.MetricsService/GetKpis")
        reader = channel_to("metrics", bearer)
        assert answered_by_the_service(lambda: invoke(reader, kpis))
        code, _ = refusal(lambda: invoke(channel_to("customer", bearer), _rpc(LIST_CUSTOMERS)))
        assert code == grpc.StatusCode.PERMISSION_DENIED

        assert crm_main(["tokens", "list"]) == 0
        listed = capsys.readouterr().out
        line = next(line for line in listed.splitlines() if "qa-team" in line)
        token_id = line.split()[0]
        assert "interactions:read,metrics:read" in line
        assert "50" in line
        assert "active" in line
        assert bearer.rsplit("_", 1)[-1] not in listed  # never the secret

        assert crm_main(["tokens", "revoke", token_id]) == 0
        assert "revoked" in capsys.readouterr().out
        assert crm_main(["tokens", "revoke", token_id]) == 1
        assert "already revoked" in capsys.readouterr().err
        assert crm_main(["tokens", "list"]) == 0
        assert "revoked" in next(
            line for line in capsys.readouterr().out.splitlines() if "qa-team" in line
        )
        deadline = time.monotonic() + CACHE_S + 20
        while _lists_customers(stack.address("customer"), bearer) != (
            grpc.StatusCode.UNAUTHENTICATED
        ):
            assert time.monotonic() < deadline
            time.sleep(0.1)

    def test_refuses_unknown_scopes_and_ids(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        monkeypatch.setenv("CRM_PERSISTENCE", "sqlite")
        monkeypatch.setenv("CRM_DATA_DIR", str(tmp_path / "data"))
        assert crm_main(["tokens", "create", "--name", "x", "--scope", "everything"]) == 2
        assert "unknown scope 'everything'" in capsys.readouterr().err
        assert crm_main(["tokens", "revoke", "nope"]) == 2
        assert "token_id" in capsys.readouterr().err
        assert crm_main(["tokens", "revoke", "00000000-0000-4000-8000-000000000000"]) == 1
        assert "not found" in capsys.readouterr().err

    def test_generate_prints_a_bearer_it_stores_nowhere(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        monkeypatch.setenv("CRM_DATA_DIR", str(tmp_path / "data"))
        assert crm_main(["tokens", "generate"]) == 0
        bearer = capsys.readouterr().out.strip()
        assert parse_bearer(bearer)  # the format CRM_BOOTSTRAP_ADMIN_TOKEN expects
        assert not (tmp_path / "data").exists()

    def test_client_commands_without_a_token_say_how_to_get_one(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        monkeypatch.setenv("CRM_DATA_DIR", str(tmp_path / "data"))
        monkeypatch.delenv("CRM_TOKEN", raising=False)
        assert crm_main(["customers", "lookup", "--phone", "+819012345678"]) == 1
        said = capsys.readouterr().err
        assert "no access token" in said
        assert "CRM_TOKEN" in said
        assert "crm up" in said
