"""Many clients changing the same record at once: one winner per version, no lost update.

- Etags (customers, agents, queues): clients that all read version n and write with its etag
  race; exactly one succeeds, every other gets ABORTED and nothing of theirs is stored. Clients
  that re-read and retry on ABORTED (read-modify-write) all get their change in: the final
  record holds every one of them.
- Interactions and cases carry no etag: a transition that the current state allows once
  (holding a call, solving a case, answering an offer) succeeds once, the other racers are
  refused with FAILED_PRECONDITION (or ABORTED when they lost inside the store), and exactly
  one event is stored; changes that do not exclude each other (messages on one interaction,
  interactions linked to one case) are all kept.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from crm.v1 import (
    common_pb2,
    customer_pb2,
    customer_pb2_grpc,
    interaction_pb2,
    interaction_pb2_grpc,
    routing_pb2,
    routing_pb2_grpc,
)
from crmcore.config import PersistenceSettings
from tests.e2e.customer import conftest as customer_e2e
from tests.e2e.interaction import conftest as interaction_e2e
from tests.e2e.routing import conftest as routing_e2e
from tests.support.auth import channel_for

CLIENTS = 16
T = TypeVar("T")


async def race(calls: Sequence[Awaitable[T]]) -> tuple[list[T], list[grpc.StatusCode]]:
    """Runs the calls at once: what succeeded, and the status codes of what failed."""
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    won: list[T] = [outcome for outcome in outcomes if not isinstance(outcome, BaseException)]
    lost: list[grpc.StatusCode] = []
    for outcome in outcomes:
        if isinstance(outcome, grpc.aio.AioRpcError):
            lost.append(outcome.code())
        elif isinstance(outcome, BaseException):
            raise outcome
    return won, lost


async def until_written(attempt: Callable[[], Awaitable[T]], *, tries: int = 200) -> T:
    """Read-modify-write: repeats `attempt` (which re-reads) while it is ABORTED."""
    for _ in range(tries):
        try:
            return await attempt()
        except grpc.aio.AioRpcError as error:
            if error.code() is not grpc.StatusCode.ABORTED:
                raise
    raise AssertionError(f"still ABORTED after {tries} tries")


def stored(service: Any) -> int:
    return int(service.app.recorder.max_notification_id() or 0)


# --- customers ----------------------------------------------------------------------------------


@pytest.fixture
async def customer_service(tmp_path: Path) -> AsyncIterator[Any]:
    settings = customer_e2e.service_settings(PersistenceSettings.sqlite(tmp_path / "data"))
    async with customer_e2e.running(settings) as service:
        yield service


@pytest.fixture
async def customers(customer_service: Any) -> AsyncIterator[Any]:
    async with channel_for(customer_service) as channel:
        yield customer_pb2_grpc.CustomerServiceStub(channel)


class TestCustomerEtags:
    async def test_one_update_per_version_wins_the_others_are_aborted(
        self, customer_service: Any, customers: Any
    ) -> None:
        taro = await customers.CreateCustomer(
            customer_pb2.CreateCustomerRequest(customer=customer_pb2.Customer(name="Taro"))
        )
        before = stored(customer_service)

        won, lost = await race(
            [
                customers.UpdateCustomer(
                    customer_pb2.UpdateCustomerRequest(
                        customer=customer_pb2.Customer(id=taro.id, name=f"Taro {n}"),
                        update_mask=FieldMask(paths=["name"]),
                        etag=taro.etag,
                    )
                )
                for n in range(CLIENTS)
            ]
        )

        assert len(won) == 1
        assert lost == [grpc.StatusCode.ABORTED] * (CLIENTS - 1)
        assert stored(customer_service) == before + 1
        now = await customers.GetCustomer(customer_pb2.GetCustomerRequest(id=taro.id))
        assert (now.name, now.etag) == (won[0].name, won[0].etag)
        assert int(now.etag) == int(taro.etag) + 1

    async def test_read_modify_write_loses_no_update(self, customers: Any) -> None:
        taro = await customers.CreateCustomer(
            customer_pb2.CreateCustomerRequest(customer=customer_pb2.Customer(name="Taro"))
        )

        async def add_tag(tag: str) -> Any:
            current = await customers.GetCustomer(customer_pb2.GetCustomerRequest(id=taro.id))
            return await customers.UpdateCustomer(
                customer_pb2.UpdateCustomerRequest(
                    customer=customer_pb2.Customer(id=taro.id, tags=[*current.tags, tag]),
                    update_mask=FieldMask(paths=["tags"]),
                    etag=current.etag,
                )
            )

        tags = [f"tag{n}" for n in range(CLIENTS)]
        await asyncio.gather(*(until_written(functools.partial(add_tag, tag)) for tag in tags))

        now = await customers.GetCustomer(customer_pb2.GetCustomerRequest(id=taro.id))
        assert sorted(now.tags) == sorted(tags)
        assert int(now.etag) == int(taro.etag) + CLIENTS


# --- agents and queues --------------------------------------------------------------------------


@pytest.fixture
async def routing_service(tmp_path: Path) -> AsyncIterator[Any]:
    settings = routing_e2e.service_settings(PersistenceSettings.sqlite(tmp_path / "data"))
    async with routing_e2e.running(settings, routing_e2e.MovableClock()) as service:
        yield service


@pytest.fixture
async def routing(routing_service: Any) -> AsyncIterator[Any]:
    async with channel_for(routing_service) as channel:
        yield routing_pb2_grpc.RoutingServiceStub(channel)


class TestRoutingEtags:
    async def test_one_agent_update_per_version_wins(
        self, routing_service: Any, routing: Any
    ) -> None:
        aiko = await routing.RegisterAgent(
            routing_pb2.RegisterAgentRequest(agent=routing_pb2.Agent(display_name="Aiko"))
        )
        before = stored(routing_service)

        won, lost = await race(
            [
                routing.UpdateAgent(
                    routing_pb2.UpdateAgentRequest(
                        agent=routing_pb2.Agent(id=aiko.id, teams=[f"team{n}"]),
                        update_mask=FieldMask(paths=["teams"]),
                        etag=aiko.etag,
                    )
                )
                for n in range(CLIENTS)
            ]
        )

        assert len(won) == 1
        assert lost == [grpc.StatusCode.ABORTED] * (CLIENTS - 1)
        assert stored(routing_service) == before + 1
        now = await routing.GetAgent(routing_pb2.GetAgentRequest(id=aiko.id))
        assert list(now.teams) == list(won[0].teams)

    async def test_read_modify_write_of_an_agent_loses_no_team(self, routing: Any) -> None:
        aiko = await routing.RegisterAgent(
            routing_pb2.RegisterAgentRequest(agent=routing_pb2.Agent(display_name="Aiko"))
        )

        async def join(team: str) -> Any:
            current = await routing.GetAgent(routing_pb2.GetAgentRequest(id=aiko.id))
            return await routing.UpdateAgent(
                routing_pb2.UpdateAgentRequest(
                    agent=routing_pb2.Agent(id=aiko.id, teams=[*current.teams, team]),
                    update_mask=FieldMask(paths=["teams"]),
                    etag=current.etag,
                )
            )

        teams = [f"team{n}" for n in range(CLIENTS)]
        await asyncio.gather(*(until_written(functools.partial(join, team)) for team in teams))

        now = await routing.GetAgent(routing_pb2.GetAgentRequest(id=aiko.id))
        assert sorted(now.teams) == sorted(teams)

    async def test_one_queue_update_per_version_wins(
        self, routing_service: Any, routing: Any
    ) -> None:
        queue = await routing.CreateQueue(
            routing_pb2.CreateQueueRequest(
                queue=routing_pb2.RoutingQueue(name="Billing", channels=[common_pb2.CHANNEL_CHAT])
            )
        )
        before = stored(routing_service)

        won, lost = await race(
            [
                routing.UpdateQueue(
                    routing_pb2.UpdateQueueRequest(
                        queue=routing_pb2.RoutingQueue(id=queue.id, priority=n + 1),
                        update_mask=FieldMask(paths=["priority"]),
                        etag=queue.etag,
                    )
                )
                for n in range(CLIENTS)
            ]
        )

        assert len(won) == 1
        assert lost == [grpc.StatusCode.ABORTED] * (CLIENTS - 1)
        assert stored(routing_service) == before + 1
        now = await routing.GetQueue(routing_pb2.GetQueueRequest(id=queue.id))
        assert now.priority == won[0].priority


# --- interactions and cases ---------------------------------------------------------------------


@pytest.fixture
async def interaction_service(tmp_path: Path) -> AsyncIterator[Any]:
    settings = interaction_e2e.service_settings(PersistenceSettings.sqlite(tmp_path / "data"))
    async with interaction_e2e.running(settings, interaction_e2e.MovableClock()) as service:
        yield service


@pytest.fixture
async def interactions(interaction_service: Any) -> AsyncIterator[Any]:
    async with channel_for(interaction_service) as channel:
        yield interaction_pb2_grpc.InteractionServiceStub(channel)


#: What a racer that lost a state transition may be told.
LOSING_CODES = {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED}


async def answered_call(interactions: Any, agent: str) -> Any:
    pb = interaction_pb2
    call = await interactions.OpenInteraction(
        pb.OpenInteractionRequest(channel=common_pb2.CHANNEL_PHONE)
    )
    await interactions.QueueInteraction(
        pb.QueueInteractionRequest(interaction_id=call.id, queue="billing")
    )
    await interactions.OfferInteraction(
        pb.OfferInteractionRequest(interaction_id=call.id, agent_id=agent)
    )
    return await interactions.AnswerInteraction(
        pb.AnswerInteractionRequest(interaction_id=call.id, agent_id=agent)
    )


class TestInteractionRaces:
    async def test_an_offer_is_answered_once(
        self, interaction_service: Any, interactions: Any
    ) -> None:
        pb = interaction_pb2
        agent = str(uuid.uuid4())
        call = await interactions.OpenInteraction(
            pb.OpenInteractionRequest(channel=common_pb2.CHANNEL_PHONE)
        )
        await interactions.QueueInteraction(
            pb.QueueInteractionRequest(interaction_id=call.id, queue="billing")
        )
        await interactions.OfferInteraction(
            pb.OfferInteractionRequest(interaction_id=call.id, agent_id=agent)
        )
        before = stored(interaction_service)

        won, lost = await race(
            [
                interactions.AnswerInteraction(
                    pb.AnswerInteractionRequest(interaction_id=call.id, agent_id=agent)
                )
                for _ in range(CLIENTS)
            ]
        )

        assert len(won) == 1
        assert set(lost) <= LOSING_CODES
        assert len(lost) == CLIENTS - 1
        assert stored(interaction_service) == before + 1
        now = await interactions.GetInteraction(pb.GetInteractionRequest(id=call.id))
        assert now.status == pb.INTERACTION_STATUS_ACTIVE

    async def test_a_call_is_put_on_hold_once(
        self, interaction_service: Any, interactions: Any
    ) -> None:
        pb = interaction_pb2
        call = await answered_call(interactions, str(uuid.uuid4()))
        before = stored(interaction_service)

        won, lost = await race(
            [
                interactions.HoldInteraction(pb.HoldInteractionRequest(interaction_id=call.id))
                for _ in range(CLIENTS)
            ]
        )

        assert len(won) == 1
        assert set(lost) <= LOSING_CODES
        assert len(lost) == CLIENTS - 1
        assert stored(interaction_service) == before + 1

    async def test_messages_written_at_once_are_all_kept(
        self, interaction_service: Any, interactions: Any
    ) -> None:
        pb = interaction_pb2
        agent = str(uuid.uuid4())
        call = await answered_call(interactions, agent)
        before = stored(interaction_service)
        texts = [f"message {n}" for n in range(CLIENTS)]

        won, lost = await race(
            [
                interactions.AddMessage(
                    pb.AddMessageRequest(
                        interaction_id=call.id,
                        author_kind=pb.AUTHOR_KIND_AGENT,
                        author_id=agent,
                        text=text,
                    )
                )
                for text in texts
            ]
        )

        # Each message either kept or refused as a whole: the transcript holds exactly the
        # successful ones, one event each.
        assert set(lost) <= {grpc.StatusCode.ABORTED}
        now = await interactions.GetInteraction(pb.GetInteractionRequest(id=call.id))
        kept = [entry.text for entry in now.transcript if entry.text in texts]
        assert len(kept) == len(won) == stored(interaction_service) - before
        assert len(set(kept)) == len(kept)


class TestCaseRaces:
    async def test_a_case_is_solved_once(self, interactions: Any) -> None:
        pb = interaction_pb2
        case = await interactions.OpenCase(pb.OpenCaseRequest(subject="Refund"))

        won, lost = await race(
            [
                interactions.SolveCase(pb.SolveCaseRequest(case_id=case.id, resolution=f"r{n}"))
                for n in range(CLIENTS)
            ]
        )

        assert len(won) == 1
        assert set(lost) <= LOSING_CODES
        assert len(lost) == CLIENTS - 1
        now = await interactions.GetCase(pb.GetCaseRequest(id=case.id))
        assert (now.status, now.resolution) == (pb.CASE_STATUS_SOLVED, won[0].resolution)
        # the case moved on by what one solve stores, not more
        assert int(now.etag) - int(case.etag) == await versions_of_one_solve(interactions)

    async def test_interactions_linked_at_once_are_all_kept(self, interactions: Any) -> None:
        pb = interaction_pb2
        case = await interactions.OpenCase(pb.OpenCaseRequest(subject="Refund"))
        opened = [
            await interactions.OpenInteraction(
                pb.OpenInteractionRequest(channel=common_pb2.CHANNEL_CHAT)
            )
            for _ in range(CLIENTS)
        ]

        won, lost = await race(
            [
                interactions.LinkInteractionToCase(
                    pb.LinkInteractionToCaseRequest(case_id=case.id, interaction_id=one.id)
                )
                for one in opened
            ]
        )

        assert set(lost) <= {grpc.StatusCode.ABORTED}
        now = await interactions.GetCase(pb.GetCaseRequest(id=case.id))
        linked = set(now.interaction_ids)
        assert len(linked) == len(won)
        assert linked <= {one.id for one in opened}


async def versions_of_one_solve(interactions: Any) -> int:
    """How many versions solving a fresh case adds, measured on a case of its own."""
    pb = interaction_pb2
    case = await interactions.OpenCase(pb.OpenCaseRequest(subject="Measure"))
    solved = await interactions.SolveCase(pb.SolveCaseRequest(case_id=case.id, resolution="r"))
    return int(solved.etag) - int(case.etag)
