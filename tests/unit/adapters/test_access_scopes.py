"""The scope table covers exactly the RPCs of the crm.v1 contract; the rate limiter's bucket."""

from __future__ import annotations

import importlib
import pkgutil
from uuid import uuid4

import pytest

import crm.v1
from crmcore.adapters.grpc.access import METHOD_SCOPES, OPEN_SERVICES, RateLimiter, bearer_of
from crmcore.domain.access import SCOPES, Unauthenticated


def contract_methods() -> set[str]:
    """`/crm.v1.<Service>/<Method>` of every method of every service in the crm.v1 files."""
    found: set[str] = set()
    for module in pkgutil.iter_modules(crm.v1.__path__, "crm.v1."):
        if not module.name.endswith("_pb2"):
            continue
        descriptor = importlib.import_module(module.name).DESCRIPTOR
        for service in descriptor.services_by_name.values():
            found |= {f"/{service.full_name}/{method.name}" for method in service.methods}
    return found


class TestTheScopeTable:
    def test_every_rpc_of_the_contract_has_a_scope(self) -> None:
        methods = contract_methods()
        assert len(methods) > 60
        missing = sorted(methods - set(METHOD_SCOPES))
        assert missing == [], "give these RPCs a scope in METHOD_SCOPES"

    def test_it_names_no_rpc_the_contract_lacks(self) -> None:
        assert sorted(set(METHOD_SCOPES) - contract_methods()) == []

    def test_it_uses_known_scopes_only_and_never_just_admin(self) -> None:
        assert set(METHOD_SCOPES.values()) <= SCOPES - {"admin"}

    @pytest.mark.parametrize(
        ("method", "scope"),
        [
            ("/crm.v1.CustomerService/GetCustomer", "customers:read"),
            ("/crm.v1.CustomerService/CreateCustomer", "customers:write"),
            ("/crm.v1.CustomerService/EraseCustomer", "customers:erase"),
            ("/crm.v1.InteractionService/StreamInteractionEvents", "interactions:read"),
            ("/crm.v1.InteractionService/ResolveInteraction", "interactions:write"),
            ("/crm.v1.RoutingService/SetPresence", "routing:agent"),
            ("/crm.v1.RoutingService/StreamOffers", "routing:agent"),
            ("/crm.v1.RoutingService/AcceptOffer", "routing:agent"),
            ("/crm.v1.RoutingService/CreateQueue", "routing:admin"),
            ("/crm.v1.RoutingService/ListQueues", "routing:read"),
            ("/crm.v1.MetricsService/CreateKpiTarget", "metrics:write"),
            ("/crm.v1.MetricsService/GetKpis", "metrics:read"),
        ],
    )
    def test_reads_writes_erasure_and_agent_actions_are_apart(
        self, method: str, scope: str
    ) -> None:
        assert METHOD_SCOPES[method] == scope

    def test_only_health_and_reflection_are_open(self) -> None:
        assert not any(method.startswith(OPEN_SERVICES) for method in contract_methods())
        assert {prefix.split("/")[1] for prefix in OPEN_SERVICES} == {
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
            "grpc.reflection.v1.ServerReflection",
        }


class TestAuthorizationMetadata:
    def test_the_bearer_follows_the_scheme_in_any_case(self) -> None:
        assert bearer_of((("x", "1"), ("authorization", "bearer crm_abc"))) == "crm_abc"
        assert bearer_of((("authorization", "Bearer  crm_abc "),)) == "crm_abc"

    @pytest.mark.parametrize(
        "metadata", [None, (), (("authorization", "Basic dXNlcjpwYXNz"),), (("x", "y"),)]
    )
    def test_no_bearer_is_unauthenticated(self, metadata: object) -> None:
        with pytest.raises(Unauthenticated):
            bearer_of(metadata)


class TestTheRateLimiter:
    def test_a_burst_of_twice_the_rate_then_the_rate(self) -> None:
        now = [0.0]
        limiter = RateLimiter(clock=lambda: now[0])
        token = uuid4()
        assert [limiter.allow(token, 5) for _ in range(11)] == [True] * 10 + [False]
        now[0] += 0.2  # one call's worth at 5/s
        assert [limiter.allow(token, 5) for _ in range(2)] == [True, False]
        now[0] += 100  # refills to the burst, not beyond
        assert sum(limiter.allow(token, 5) for _ in range(20)) == 10

    def test_tokens_have_buckets_of_their_own(self) -> None:
        limiter = RateLimiter(clock=lambda: 0.0)
        first, second = uuid4(), uuid4()
        assert [limiter.allow(first, 1) for _ in range(3)] == [True, True, False]
        assert limiter.allow(second, 1)

    def test_a_slow_rate_still_admits_one_call(self) -> None:
        now = [0.0]
        limiter = RateLimiter(clock=lambda: now[0])
        token = uuid4()
        assert [limiter.allow(token, 0.1) for _ in range(2)] == [True, False]
        now[0] += 10
        assert limiter.allow(token, 0.1)
