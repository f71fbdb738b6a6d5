"""The four services, each on SQLite in a temporary directory and on an event loop of its own
thread (hypothesis drives synchronous clients), with a few records made through their APIs so
that hostile calls also reach existing customers, interactions, agents and targets.

No bus: every service runs without one, and without one nothing is stored behind the test's
back (the SLA scheduler's and the routing engine's clocks stand still), so "a refused call
stored nothing" is exact.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from crm.v1 import (
    common_pb2,
    customer_pb2,
    customer_pb2_grpc,
    interaction_pb2,
    interaction_pb2_grpc,
    metrics_pb2,
    metrics_pb2_grpc,
    routing_pb2,
    routing_pb2_grpc,
)
from crmcore.adapters.grpc.channels import open_blocking_channel
from crmcore.config import PersistenceSettings
from services.customer import bootstrap as customer_bootstrap
from services.interaction import bootstrap as interaction_bootstrap
from services.metrics import bootstrap as metrics_bootstrap
from services.routing import bootstrap as routing_bootstrap
from tests.e2e.customer.conftest import service_settings as customer_settings
from tests.e2e.interaction.conftest import service_settings as interaction_settings
from tests.e2e.metrics.conftest import service_settings as metrics_settings
from tests.e2e.routing.conftest import MovableClock
from tests.e2e.routing.conftest import service_settings as routing_settings
from tests.support.auth import service_token
from tests.support.threaded import serve_in_thread

#: The SLA scheduler's clock: long before anything the test stores, so nothing falls due.
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Refusal:
    code: grpc.StatusCode
    message: str
    fields: tuple[str, ...]


def refusal_of(error: grpc.RpcError) -> Refusal:
    """Status code, message and the fields named by google.rpc.BadRequest details."""
    call: Any = error
    fields: list[str] = []
    for key, value in call.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                bad_request = error_details_pb2.BadRequest()
                if detail.Unpack(bad_request):
                    fields += [violation.field for violation in bad_request.field_violations]
    return Refusal(code=call.code(), message=call.details() or "", fields=tuple(fields))


@dataclass
class Target:
    """One running service under attack, and what a test needs to judge its answers."""

    name: str
    descriptor: ServiceDescriptor
    service: Any
    #: sends an admin token with every call
    channel: grpc.Channel
    #: what the service has stored: equal before and after a refused call
    stored: Callable[[], object]
    #: ids of records that exist, so that calls on existing records are tried too
    known: tuple[str, ...] = ()

    def method(self, name: str) -> Callable[..., Any]:
        """The stub's callable for RPC `name` (unary or server-streaming)."""
        stub_class = {
            "CustomerService": customer_pb2_grpc.CustomerServiceStub,
            "InteractionService": interaction_pb2_grpc.InteractionServiceStub,
            "RoutingService": routing_pb2_grpc.RoutingServiceStub,
            "MetricsService": metrics_pb2_grpc.MetricsServiceStub,
        }[self.descriptor.name]
        method: Callable[..., Any] = getattr(stub_class(self.channel), name)
        return method

    def serving(self) -> bool:
        health = health_pb2_grpc.HealthStub(self.channel)
        answer = health.Check(
            health_pb2.HealthCheckRequest(service=self.descriptor.full_name), timeout=10
        )
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


@contextlib.contextmanager
def serving(
    name: str,
    descriptor: ServiceDescriptor,
    start: Callable[[], Coroutine[Any, Any, Any]],  # a service (`Running`, `HasAccess`)
    stored: Callable[[Any], object],
) -> Iterator[Target]:
    service, threaded = serve_in_thread(start)
    channel = open_blocking_channel(service.address, token=service_token(service))
    try:
        yield Target(
            name=name,
            descriptor=descriptor,
            service=service,
            channel=channel,
            stored=lambda: stored(service),
        )
    finally:
        channel.close()
        threaded.close()


def last_notification(service: Any) -> object:
    return service.app.recorder.max_notification_id() or 0


def kpi_targets(service: Any) -> object:
    return [(target.id, target) for target in service.projection.targets()]


@pytest.fixture(scope="module")
def customer_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    persistence = PersistenceSettings.sqlite(tmp_path_factory.mktemp("customer"))
    with serving(
        "customer",
        customer_pb2.DESCRIPTOR.services_by_name["CustomerService"],
        lambda: customer_bootstrap.start(customer_settings(persistence)),
        last_notification,
    ) as target:
        stub = customer_pb2_grpc.CustomerServiceStub(target.channel)
        made = [
            stub.CreateCustomer(
                customer_pb2.CreateCustomerRequest(
                    customer=customer_pb2.Customer(
                        name=name,
                        contact_points=[
                            customer_pb2.ContactPoint(
                                kind=customer_pb2.CONTACT_POINT_KIND_EMAIL, value=email
                            )
                        ],
                    )
                )
            )
            for name, email in (("Taro", "taro@example.jp"), ("Hanako", "hanako@example.jp"))
        ]
        target.known = tuple(customer.id for customer in made) + tuple(c.etag for c in made)
        yield target


@pytest.fixture(scope="module")
def interaction_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    persistence = PersistenceSettings.sqlite(tmp_path_factory.mktemp("interaction"))
    with serving(
        "interaction",
        interaction_pb2.DESCRIPTOR.services_by_name["InteractionService"],
        lambda: interaction_bootstrap.start(
            interaction_settings(persistence), now=lambda: LONG_AGO
        ),
        last_notification,
    ) as target:
        pb = interaction_pb2
        stub = interaction_pb2_grpc.InteractionServiceStub(target.channel)
        agent = str(uuid.uuid4())
        chat = stub.OpenInteraction(
            pb.OpenInteractionRequest(channel=common_pb2.CHANNEL_CHAT, contact_reason="billing")
        )
        call = stub.OpenInteraction(pb.OpenInteractionRequest(channel=common_pb2.CHANNEL_PHONE))
        stub.QueueInteraction(pb.QueueInteractionRequest(interaction_id=call.id, queue="billing"))
        stub.OfferInteraction(pb.OfferInteractionRequest(interaction_id=call.id, agent_id=agent))
        stub.AnswerInteraction(pb.AnswerInteractionRequest(interaction_id=call.id, agent_id=agent))
        case = stub.OpenCase(pb.OpenCaseRequest(subject="Refund", interaction_ids=[chat.id]))
        survey = stub.RecordSurveyResponse(
            pb.RecordSurveyResponseRequest(
                survey_id="s-1", kind=pb.SURVEY_KIND_CSAT, score=4, interaction_id=call.id
            )
        )
        feedback = stub.CaptureFeedback(
            pb.CaptureFeedbackRequest(text="The app crashes", source=pb.FEEDBACK_SOURCE_AGENT)
        )
        target.known = (chat.id, call.id, case.id, survey.id, "s-1", feedback.id, agent)
        yield target


@pytest.fixture(scope="module")
def routing_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    persistence = PersistenceSettings.sqlite(tmp_path_factory.mktemp("routing"))
    with serving(
        "routing",
        routing_pb2.DESCRIPTOR.services_by_name["RoutingService"],
        lambda: routing_bootstrap.start(routing_settings(persistence), clock=MovableClock()),
        last_notification,
    ) as target:
        pb = routing_pb2
        stub = routing_pb2_grpc.RoutingServiceStub(target.channel)
        queue = stub.CreateQueue(
            pb.CreateQueueRequest(
                queue=pb.RoutingQueue(
                    name="Billing",
                    channels=[common_pb2.CHANNEL_CHAT],
                    requirements=pb.WorkRequirements(
                        skills=[pb.RoutingSkillRequirement(skill="billing", min_level=3)]
                    ),
                )
            )
        )
        agent = stub.RegisterAgent(
            pb.RegisterAgentRequest(
                agent=pb.Agent(
                    display_name="Aiko",
                    skills=[pb.AgentSkill(name="billing", level=4)],
                    capacity=[pb.ChannelCapacity(channel=common_pb2.CHANNEL_CHAT, limit=2)],
                )
            )
        )
        task = stub.SubmitTask(
            pb.SubmitTaskRequest(
                task=pb.RoutingTask(queue="Billing", channel=common_pb2.CHANNEL_CHAT)
            )
        )
        target.known = (queue.id, agent.id, task.id, queue.etag, agent.etag)
        yield target


@pytest.fixture(scope="module")
def metrics_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    data_dir = tmp_path_factory.mktemp("metrics")
    settings = metrics_settings(data_dir, None)
    with serving(
        "metrics",
        metrics_pb2.DESCRIPTOR.services_by_name["MetricsService"],
        lambda: metrics_bootstrap.start(settings),
        kpi_targets,
    ) as target:
        pb = metrics_pb2
        stub = metrics_pb2_grpc.MetricsServiceStub(target.channel)
        made = stub.CreateKpiTarget(
            pb.CreateKpiTargetRequest(
                kpi_target=pb.KpiTarget(
                    kpi="service_level",
                    baseline=0.6,
                    target=0.8,
                    start_time=Timestamp(seconds=1_740_000_000),
                    deadline_time=Timestamp(seconds=1_760_000_000),
                    window_days=7,
                )
            )
        )
        target.known = (made.id,)
        yield target


def target_named(request: pytest.FixtureRequest, name: str) -> Target:
    """The running `name` service (a module-scoped fixture, started on first use)."""
    found: Target = request.getfixturevalue(f"{name}_target")
    return found


#: Every service of the public API, by the name of its fixture.
SERVICES: dict[str, ServiceDescriptor] = {
    "customer": customer_pb2.DESCRIPTOR.services_by_name["CustomerService"],
    "interaction": interaction_pb2.DESCRIPTOR.services_by_name["InteractionService"],
    "routing": routing_pb2.DESCRIPTOR.services_by_name["RoutingService"],
    "metrics": metrics_pb2.DESCRIPTOR.services_by_name["MetricsService"],
}


def every_method() -> list[tuple[str, str]]:
    """(service, method) for every RPC of every service."""
    return [(name, method.name) for name, service in SERVICES.items() for method in service.methods]
