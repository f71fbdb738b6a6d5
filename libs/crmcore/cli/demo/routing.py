"""The routing service's side of the demo driver: queues, agents, presence, offers — over
`crm.v1.RoutingService` only.

Queue settings measured in seconds (service-level threshold, routing steps) are real seconds
for the service, so they are derived from the simulated ones and the speed of the run, and
set again on every run (a queue created by an earlier run at another speed is updated).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from google.protobuf import field_mask_pb2

from crm.v1 import common_pb2, routing_pb2, routing_pb2_grpc
from crmcore.cli.demo.scenario import (
    HUMAN_CHANNELS,
    SERVICE_LEVEL_TARGET,
    SERVICE_LEVEL_THRESHOLD_S,
    AgentProfile,
    QueuePlan,
)

RPC_TIMEOUT_S = 30.0
#: Real seconds an agent desktop gets to answer an offer (the driver answers at once; this
#: only matters when the machine is overloaded).
OFFER_TIMEOUT_S = 15
#: Simulated waits after which a queue asks its skill at level 1, then drops it (any agent
#: speaking the customer's language may take the work).
RELAX_LEVEL_AFTER_S = 90.0
DROP_SKILL_AFTER_S = 300.0

PRESENCES: dict[str, routing_pb2.AgentPresence.ValueType] = {
    "offline": routing_pb2.AGENT_PRESENCE_OFFLINE,
    "available": routing_pb2.AGENT_PRESENCE_AVAILABLE,
    "busy": routing_pb2.AGENT_PRESENCE_BUSY,
    "break": routing_pb2.AGENT_PRESENCE_BREAK,
    "after_call_work": routing_pb2.AGENT_PRESENCE_AFTER_CALL_WORK,
}


def channel_number(name: str) -> common_pb2.Channel.ValueType:
    return common_pb2.Channel.Value(f"CHANNEL_{name.upper()}")


def real_whole_seconds(simulated_s: float, speed: float, minimum: int = 1) -> int:
    return max(minimum, round(simulated_s / speed))


def queue_message(plan: QueuePlan, speed: float) -> routing_pb2.RoutingQueue:
    """The queue as the service should have it for a run at `speed`."""
    relax = real_whole_seconds(RELAX_LEVEL_AFTER_S, speed)
    steps = [
        routing_pb2.RoutingStep(
            after_seconds=relax,
            set_min_level=routing_pb2.MinLevelChange(skill=plan.skill, level=1),
        ),
        routing_pb2.RoutingStep(
            after_seconds=max(relax + 1, real_whole_seconds(DROP_SKILL_AFTER_S, speed)),
            drop_skill=plan.skill,
        ),
    ]
    return routing_pb2.RoutingQueue(
        name=plan.name,
        channels=[channel_number(name) for name in HUMAN_CHANNELS],
        requirements=routing_pb2.WorkRequirements(
            skills=[routing_pb2.RoutingSkillRequirement(skill=plan.skill, min_level=1)]
        ),
        priority=plan.priority,
        service_level=routing_pb2.QueueServiceLevel(
            fraction=SERVICE_LEVEL_TARGET,
            threshold_seconds=real_whole_seconds(SERVICE_LEVEL_THRESHOLD_S, speed),
        ),
        offer_timeout_seconds=OFFER_TIMEOUT_S,
        max_misses=3,
        routing_steps=[] if plan.name == "tier2" else steps,
    )


def agent_message(agent: AgentProfile) -> routing_pb2.Agent:
    return routing_pb2.Agent(
        display_name=agent.name,
        teams=[agent.team],
        skills=[routing_pb2.AgentSkill(name=name, level=level) for name, level in agent.skills],
        languages=list(agent.languages),
        capacity=[
            routing_pb2.ChannelCapacity(channel=channel_number(name), limit=limit)
            for name, limit in agent.capacity
        ],
    )


class GrpcRouting:
    """`RoutingPort` of the driver on a `grpc.aio` channel to the routing service."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = routing_pb2_grpc.RoutingServiceStub(channel)

    async def ensure_queue(self, plan: QueuePlan, speed: float) -> None:
        wanted = queue_message(plan, speed)
        try:
            queue = await self.stub.CreateQueue(
                routing_pb2.CreateQueueRequest(request_id=f"demo-queue:{plan.name}", queue=wanted),
                timeout=RPC_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
            found = await self._find_queue(plan.name)
            if found is None:
                raise
            queue = found
        wanted.id = queue.id
        await self.stub.UpdateQueue(
            routing_pb2.UpdateQueueRequest(
                queue=wanted,
                update_mask=field_mask_pb2.FieldMask(
                    paths=[
                        "channels",
                        "requirements",
                        "priority",
                        "service_level",
                        "offer_timeout_seconds",
                        "max_misses",
                        "routing_steps",
                    ]
                ),
            ),
            timeout=RPC_TIMEOUT_S,
        )

    async def _find_queue(self, name: str) -> routing_pb2.RoutingQueue | None:
        token = ""
        while True:
            page = await self.stub.ListQueues(
                routing_pb2.ListQueuesRequest(page_size=500, page_token=token, show_archived=True),
                timeout=RPC_TIMEOUT_S,
            )
            for queue in page.queues:
                if queue.name.lower() == name.lower():
                    return queue
            token = page.next_page_token
            if not token:
                return None

    async def register_agent(self, agent: AgentProfile, request_id: str) -> str:
        registered = await self.stub.RegisterAgent(
            routing_pb2.RegisterAgentRequest(request_id=request_id, agent=agent_message(agent)),
            timeout=RPC_TIMEOUT_S,
        )
        return str(registered.id)

    async def set_presence(self, agent_id: str, presence: str) -> None:
        await self.stub.SetPresence(
            routing_pb2.SetPresenceRequest(agent_id=agent_id, presence=PRESENCES[presence]),
            timeout=RPC_TIMEOUT_S,
        )

    async def offers(self, agent_id: str) -> AsyncIterator[str]:
        call = self.stub.StreamOffers(routing_pb2.StreamOffersRequest(agent_id=agent_id))
        try:
            async for event in call:
                if event.kind == routing_pb2.OFFER_EVENT_KIND_OFFERED:
                    yield str(event.task.id)
        finally:
            call.cancel()
