"""The routing service through its public gRPC API: agents, queues, work, live offer streams,
explanations, refusals, health and a graceful stop."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from crm.v1 import common_pb2, routing_pb2, routing_pb2_grpc
from crmcore.adapters.grpc.channels import open_channel
from services.routing.bootstrap import SERVICE_NAME, RoutingService
from tests.e2e.routing.conftest import MovableClock, refused, stored_position

pb = routing_pb2
if TYPE_CHECKING:
    Stub = routing_pb2_grpc.RoutingServiceAsyncStub
    OfferStream = grpc.aio.UnaryStreamCall[
        routing_pb2.StreamOffersRequest, routing_pb2.RoutingOfferEvent
    ]

WITHIN_S = 10


async def next_event(stream: OfferStream) -> routing_pb2.RoutingOfferEvent:
    event = await asyncio.wait_for(stream.read(), timeout=WITHIN_S)
    assert isinstance(event, pb.RoutingOfferEvent), f"the stream ended: {event}"
    return event


async def billing_desk(stub: Stub) -> tuple[routing_pb2.RoutingQueue, routing_pb2.Agent]:
    """A billing chat queue and Aiko (billing 4, Japanese, 2 chats), available."""
    queue = await stub.CreateQueue(
        pb.CreateQueueRequest(
            queue=pb.RoutingQueue(
                name="Billing",
                channels=[common_pb2.CHANNEL_CHAT],
                requirements=pb.WorkRequirements(
                    skills=[pb.RoutingSkillRequirement(skill="billing", min_level=3)],
                    language="ja",
                ),
                offer_timeout_seconds=20,
                routing_steps=[
                    pb.RoutingStep(
                        after_seconds=60,
                        set_min_level=pb.MinLevelChange(skill="billing", level=1),
                    )
                ],
            )
        )
    )
    aiko = await stub.RegisterAgent(
        pb.RegisterAgentRequest(
            request_id="hire-aiko",
            agent=pb.Agent(
                display_name="Aiko Tanaka",
                teams=["billing"],
                skills=[pb.AgentSkill(name="billing", level=4)],
                languages=["ja"],
                capacity=[pb.ChannelCapacity(channel=common_pb2.CHANNEL_CHAT, limit=2)],
            ),
        )
    )
    aiko = await stub.SetPresence(
        pb.SetPresenceRequest(agent_id=aiko.id, presence=pb.AGENT_PRESENCE_AVAILABLE)
    )
    return queue, aiko


def chat_task(**fields: object) -> routing_pb2.SubmitTaskRequest:
    return pb.SubmitTaskRequest(
        task=pb.RoutingTask(queue="Billing", channel=common_pb2.CHANNEL_CHAT, **fields)  # type: ignore[arg-type]
    )


class TestAnAgentDesktop:
    async def test_offers_arrive_live_and_are_accepted_and_completed(self, stub: Stub) -> None:
        _, aiko = await billing_desk(stub)
        stream = stub.StreamOffers(pb.StreamOffersRequest(agent_id=aiko.id))

        task = await stub.SubmitTask(
            chat_task(attributes=[pb.TaskAttribute(key="order", value="A-1001")])
        )
        offered = await next_event(stream)
        assert offered.kind == pb.OFFER_EVENT_KIND_OFFERED
        assert offered.task.id == task.id
        assert offered.task.agent_id == aiko.id
        assert offered.task.decision.agent_rule == pb.AGENT_CHOICE_RULE_BEST_MATCH
        assert offered.task.decision.proficiency == 4
        assert offered.task.attributes[0].value == "A-1001"

        accepted = await stub.AcceptOffer(pb.AcceptOfferRequest(task_id=task.id, agent_id=aiko.id))
        assert accepted.state == pb.ROUTING_TASK_STATE_ASSIGNED
        assert (await next_event(stream)).kind == pb.OFFER_EVENT_KIND_ACCEPTED
        agent = await stub.GetAgent(pb.GetAgentRequest(id=aiko.id))
        assert [item.task_id for item in agent.work] == [task.id]
        assert agent.load == pytest.approx(0.5)

        done = await stub.CompleteTask(pb.CompleteTaskRequest(task_id=task.id))
        assert done.state == pb.ROUTING_TASK_STATE_RELEASED
        assert done.release_reason == "completed"
        assert (await stub.GetAgent(pb.GetAgentRequest(id=aiko.id))).work == []
        stream.cancel()

    async def test_a_stream_opened_later_starts_with_the_offers_pending(self, stub: Stub) -> None:
        _, aiko = await billing_desk(stub)
        task = await stub.SubmitTask(chat_task())

        stream = stub.StreamOffers(pb.StreamOffersRequest(agent_id=aiko.id))
        first = await next_event(stream)

        assert (first.kind, first.task.id) == (pb.OFFER_EVENT_KIND_OFFERED, task.id)
        stream.cancel()

    async def test_a_rejected_offer_goes_back_and_the_agent_cools_down(self, stub: Stub) -> None:
        _, aiko = await billing_desk(stub)
        task = await stub.SubmitTask(chat_task())

        back = await stub.RejectOffer(pb.RejectOfferRequest(task_id=task.id, agent_id=aiko.id))

        assert back.state == pb.ROUTING_TASK_STATE_WAITING
        agent = await stub.GetAgent(pb.GetAgentRequest(id=aiko.id))
        assert agent.missed_offers == 1
        assert agent.HasField("cooldown_expire_time")

    async def test_going_on_break_withdraws_the_offers(self, stub: Stub) -> None:
        _, aiko = await billing_desk(stub)
        stream = stub.StreamOffers(pb.StreamOffersRequest(agent_id=aiko.id))
        task = await stub.SubmitTask(chat_task())
        assert (await next_event(stream)).kind == pb.OFFER_EVENT_KIND_OFFERED

        await stub.SetPresence(
            pb.SetPresenceRequest(agent_id=aiko.id, presence=pb.AGENT_PRESENCE_BREAK)
        )

        withdrawn = await next_event(stream)
        assert (withdrawn.kind, withdrawn.reason) == (
            pb.OFFER_EVENT_KIND_WITHDRAWN,
            "agent_unavailable",
        )
        assert withdrawn.task.id == task.id
        assert withdrawn.task.state == pb.ROUTING_TASK_STATE_WAITING
        stream.cancel()


class TestTimeActs:
    async def test_an_unanswered_offer_times_out_on_the_services_clock(
        self, stub: Stub, routing_service: RoutingService, clock: MovableClock
    ) -> None:
        _, aiko = await billing_desk(stub)
        stream = stub.StreamOffers(pb.StreamOffersRequest(agent_id=aiko.id))
        task = await stub.SubmitTask(chat_task())
        assert (await next_event(stream)).kind == pb.OFFER_EVENT_KIND_OFFERED

        clock.advance(20)
        routing_service.poke()

        withdrawn = await next_event(stream)
        assert (withdrawn.kind, withdrawn.reason) == (pb.OFFER_EVENT_KIND_WITHDRAWN, "timed_out")
        assert (await stub.GetTask(pb.GetTaskRequest(id=task.id))).state == (
            pb.ROUTING_TASK_STATE_WAITING
        )
        stream.cancel()

    async def test_a_routing_step_widens_on_time_and_a_junior_gets_the_work(
        self, stub: Stub, routing_service: RoutingService, clock: MovableClock
    ) -> None:
        _, aiko = await billing_desk(stub)
        await stub.SetPresence(
            pb.SetPresenceRequest(agent_id=aiko.id, presence=pb.AGENT_PRESENCE_BREAK)
        )
        junior = await stub.RegisterAgent(
            pb.RegisterAgentRequest(
                agent=pb.Agent(
                    display_name="Junior",
                    skills=[pb.AgentSkill(name="billing", level=1)],
                    languages=["ja"],
                    capacity=[pb.ChannelCapacity(channel=common_pb2.CHANNEL_CHAT, limit=1)],
                )
            )
        )
        await stub.SetPresence(
            pb.SetPresenceRequest(agent_id=junior.id, presence=pb.AGENT_PRESENCE_AVAILABLE)
        )
        stream = stub.StreamOffers(pb.StreamOffersRequest(agent_id=junior.id))
        task = await stub.SubmitTask(chat_task())
        explained = await stub.ExplainRouting(pb.ExplainRoutingRequest(task_id=task.id))
        # Aiko (on break) meets billing ≥ 3 but cannot take it; the junior does not meet it.
        assert (explained.step, explained.agents_meeting, explained.agents_able_now) == (0, 1, 0)

        clock.advance(60)
        routing_service.poke()

        offered = await next_event(stream)
        assert offered.task.id == task.id
        assert offered.task.decision.step == 1
        explained = await stub.ExplainRouting(pb.ExplainRoutingRequest(task_id=task.id))
        assert explained.decision.requirements.skills[0].min_level == 1
        assert explained.summary.startswith("offered to agent")
        stream.cancel()


class TestQueues:
    async def test_a_queue_is_updated_by_mask_and_etag(self, stub: Stub) -> None:
        queue, _ = await billing_desk(stub)

        updated = await stub.UpdateQueue(
            pb.UpdateQueueRequest(
                queue=pb.RoutingQueue(id=queue.id, priority=5, max_misses=1),
                update_mask=FieldMask(paths=["priority", "max_misses"]),
                etag=queue.etag,
            )
        )
        assert (updated.priority, updated.max_misses, updated.offer_timeout_seconds) == (5, 1, 20)

        stale = await refused(
            stub.UpdateQueue(
                pb.UpdateQueueRequest(
                    queue=pb.RoutingQueue(id=queue.id, priority=7),
                    update_mask=FieldMask(paths=["priority"]),
                    etag=queue.etag,
                )
            )
        )
        assert stale.code is grpc.StatusCode.ABORTED

    async def test_queue_names_are_unique_and_creation_is_idempotent(self, stub: Stub) -> None:
        request = pb.CreateQueueRequest(
            request_id="sales-queue",
            queue=pb.RoutingQueue(name="Sales", channels=[common_pb2.CHANNEL_PHONE]),
        )
        first = await stub.CreateQueue(request)
        again = await stub.CreateQueue(request)
        assert again.id == first.id

        taken = await refused(
            stub.CreateQueue(
                pb.CreateQueueRequest(
                    queue=pb.RoutingQueue(name="sales", channels=[common_pb2.CHANNEL_CHAT])
                )
            )
        )
        assert taken.code is grpc.StatusCode.ALREADY_EXISTS

    async def test_status_counts_work_and_agents(self, stub: Stub) -> None:
        queue, aiko = await billing_desk(stub)
        first = await stub.SubmitTask(chat_task())
        await stub.AcceptOffer(pb.AcceptOfferRequest(task_id=first.id, agent_id=aiko.id))
        await stub.SubmitTask(chat_task())
        await stub.SubmitTask(chat_task())

        status = await stub.GetQueueStatus(pb.GetQueueStatusRequest(queue_id=queue.id))

        assert (status.waiting, status.offered, status.assigned) == (1, 1, 1)
        assert (status.agents_available, status.agents_busy) == (0, 1)
        assert (status.today.queued, status.today.answered) == (3, 1)
        assert status.today.has_fraction
        assert status.today.fraction == pytest.approx(1.0)

    async def test_lists_page_by_token(self, stub: Stub) -> None:
        for number in range(5):
            await stub.RegisterAgent(
                pb.RegisterAgentRequest(agent=pb.Agent(display_name=f"Agent {number}"))
            )
        seen: list[str] = []
        token = ""
        while True:
            page = await stub.ListAgents(pb.ListAgentsRequest(page_size=2, page_token=token))
            seen += [agent.id for agent in page.agents]
            token = page.next_page_token
            if not token:
                break
        assert len(seen) == len(set(seen)) == 5
        assert seen == sorted(seen, key=lambda text: int(text.replace("-", ""), 16))

    async def test_an_agent_update_changes_only_the_masked_fields(self, stub: Stub) -> None:
        _, aiko = await billing_desk(stub)

        updated = await stub.UpdateAgent(
            pb.UpdateAgentRequest(
                agent=pb.Agent(
                    id=aiko.id,
                    display_name="ignored",
                    skills=[pb.AgentSkill(name="billing", level=5)],
                    capacity=[pb.ChannelCapacity(channel=common_pb2.CHANNEL_EMAIL, limit=4)],
                ),
                update_mask=FieldMask(paths=["skills", "capacity"]),
                etag=aiko.etag,
            )
        )

        assert updated.display_name == "Aiko Tanaka"
        assert [(s.name, s.level) for s in updated.skills] == [("billing", 5)]
        assert [(c.channel, c.limit) for c in updated.capacity] == [(common_pb2.CHANNEL_EMAIL, 4)]
        assert int(updated.etag) == int(aiko.etag) + 2


class TestRefusals:
    async def test_a_malformed_id_names_the_field_and_stores_nothing(
        self, stub: Stub, routing_service: RoutingService
    ) -> None:
        await billing_desk(stub)
        before = stored_position(routing_service)

        refusal = await refused(
            stub.AcceptOffer(pb.AcceptOfferRequest(task_id="not-a-uuid", agent_id=""))
        )

        assert refusal.code is grpc.StatusCode.INVALID_ARGUMENT
        assert refusal.fields == ("task_id",)
        assert stored_position(routing_service) == before

    async def test_an_invalid_skill_level_names_the_field(self, stub: Stub) -> None:
        refusal = await refused(
            stub.RegisterAgent(
                pb.RegisterAgentRequest(
                    agent=pb.Agent(display_name="X", skills=[pb.AgentSkill(name="a", level=9)])
                )
            )
        )
        assert refusal.code is grpc.StatusCode.INVALID_ARGUMENT
        assert refusal.fields == ("agent.skills[0].level",)

    async def test_work_for_an_unknown_queue_is_not_found(self, stub: Stub) -> None:
        refusal = await refused(
            stub.SubmitTask(
                pb.SubmitTaskRequest(
                    task=pb.RoutingTask(queue="Nowhere", channel=common_pb2.CHANNEL_CHAT)
                )
            )
        )
        assert refusal.code is grpc.StatusCode.NOT_FOUND

    async def test_accepting_someone_elses_offer_is_refused(self, stub: Stub) -> None:
        await billing_desk(stub)
        other = await stub.RegisterAgent(pb.RegisterAgentRequest(agent=pb.Agent(display_name="O")))
        task = await stub.SubmitTask(chat_task())

        refusal = await refused(
            stub.AcceptOffer(pb.AcceptOfferRequest(task_id=task.id, agent_id=other.id))
        )
        assert refusal.code is grpc.StatusCode.FAILED_PRECONDITION

    async def test_an_unspecified_presence_is_refused(self, stub: Stub) -> None:
        _, aiko = await billing_desk(stub)
        refusal = await refused(stub.SetPresence(pb.SetPresenceRequest(agent_id=aiko.id)))
        assert (refusal.code, refusal.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ("presence",))


class TestOperations:
    async def test_health_and_reflection(self, routing_service: RoutingService) -> None:
        async with open_channel(routing_service.address) as channel:  # no token: open
            health = health_pb2_grpc.HealthStub(channel)
            checked = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
            assert checked.status == health_pb2.HealthCheckResponse.SERVING

            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            answers = reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
            async for answer in answers:
                names = {service.name for service in answer.list_services_response.service}
                assert SERVICE_NAME in names
                break

    async def test_stopping_ends_the_offer_streams(
        self, stub: Stub, routing_service: RoutingService
    ) -> None:
        _, aiko = await billing_desk(stub)
        stream = stub.StreamOffers(pb.StreamOffersRequest(agent_id=aiko.id))
        await stub.SubmitTask(chat_task())
        assert (await next_event(stream)).kind == pb.OFFER_EVENT_KIND_OFFERED

        await routing_service.stop(grace=2)

        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await asyncio.wait_for(stream.read(), timeout=WITHIN_S)
        assert ended.value.code() is grpc.StatusCode.UNAVAILABLE
