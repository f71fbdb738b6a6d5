"""Plays a `Scenario` against the running services through their public gRPC APIs only.

The driver stands in for everything outside the CRM that talks to it:

- the CTI, chat widget, e-mail gateway and bots (`_journey`): for each arriving contact, a
  screen pop (`LookupCustomer`; an unknown caller is registered), `OpenInteraction`, the
  customer's first message, the bot's turn (contained, or handed off to a human queue),
  `QueueInteraction` with skill, language, priority and the customer's last agent; then the
  customer waits — and abandons when their patience runs out first — and afterwards answers
  surveys, complains, churns, reopens the conversation or comes back about the same issue;
- the agent desktop (`_agent_day`, `_take`): each agent logs in for their shift
  (presence), takes a break, receives offers on the routing service's offer stream and works
  them on the interaction service — answer, reply, hold and resume, transfer to the right
  queue, escalate to tier 2, wrap up, resolve — opening and solving the case of the issue,
  and tagging feedback.

Time is a `SimClock`: every wait of the scenario is slept `speed` times shorter. What the
services answer decides the rest (who gets which contact, and when). Everything done is
counted in the `Ledger`.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf import message

from crm.v1 import (
    common_pb2,
    customer_pb2,
    customer_pb2_grpc,
    interaction_pb2,
    interaction_pb2_grpc,
)
from crmcore.cli.demo.clock import SimClock
from crmcore.cli.demo.ledger import InteractionRecord, Ledger, SurveyRecord
from crmcore.cli.demo.scenario import (
    ESCALATION_QUEUE,
    REASON_BY_NAME,
    WRITTEN_CHANNELS,
    AgentProfile,
    Contact,
    CustomerProfile,
    Outcome,
    QueuePlan,
    Scenario,
    survey_comment,
    survey_score,
)

RPC_TIMEOUT_S = 30.0
#: How long (simulated) agents stay after the window closes while customers still wait.
DRAIN_S = 1800.0
#: How long (real) the driver waits for work in hand once the day is closed.
FINISH_TIMEOUT_S = 60.0
RETRIED = (grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE)

Request = TypeVar("Request", bound=message.Message)
Response = TypeVar("Response")

CHANNELS: dict[str, common_pb2.Channel.ValueType] = {
    "phone": common_pb2.CHANNEL_PHONE,
    "email": common_pb2.CHANNEL_EMAIL,
    "chat": common_pb2.CHANNEL_CHAT,
    "sms": common_pb2.CHANNEL_SMS,
    "messaging": common_pb2.CHANNEL_MESSAGING,
    "social": common_pb2.CHANNEL_SOCIAL,
    "video": common_pb2.CHANNEL_VIDEO,
    "web_form": common_pb2.CHANNEL_WEB_FORM,
    "self_service": common_pb2.CHANNEL_SELF_SERVICE,
    "chatbot": common_pb2.CHANNEL_CHATBOT,
}
SURVEY_KINDS: dict[str, interaction_pb2.SurveyKind.ValueType] = {
    "csat": interaction_pb2.SURVEY_KIND_CSAT,
    "nps": interaction_pb2.SURVEY_KIND_NPS,
    "ces": interaction_pb2.SURVEY_KIND_CES,
}
FEEDBACK_CATEGORIES: dict[str, interaction_pb2.FeedbackCategory.ValueType] = {
    "complaint": interaction_pb2.FEEDBACK_CATEGORY_COMPLAINT,
    "request": interaction_pb2.FEEDBACK_CATEGORY_REQUEST,
    "praise": interaction_pb2.FEEDBACK_CATEGORY_PRAISE,
    "bug": interaction_pb2.FEEDBACK_CATEGORY_BUG,
    "question": interaction_pb2.FEEDBACK_CATEGORY_QUESTION,
    "suggestion": interaction_pb2.FEEDBACK_CATEGORY_SUGGESTION,
}
_AGENT_REPLIES = (
    "お問い合わせありがとうございます。担当の者が確認いたします。",
    "ご不便をおかけして申し訳ございません。状況を確認いたします。",
    "Thank you for reaching out — let me look into this for you.",
)
_BOT_GREETING = "こんにちは、AIアシスタントです。ご用件をお聞かせください。"


class RoutingPort(Protocol):
    """What the driver needs from the routing service (queues, agents, presence, offers)."""

    async def ensure_queue(self, plan: QueuePlan, speed: float) -> None: ...

    async def register_agent(self, agent: AgentProfile, request_id: str) -> str: ...

    async def set_presence(self, agent_id: str, presence: str) -> None: ...

    def offers(self, agent_id: str) -> AsyncIterator[str]:
        """Ids of the interactions offered to the agent, as routing offers them."""
        ...


@dataclass
class Seat:
    """An agent at their desk: who they are, their id in routing, what they hold now."""

    profile: AgentProfile
    agent_id: str = ""
    in_hand: int = 0
    logged_in: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Journey:
    """One contact from the customer's side and the agents' side at once."""

    contact: Contact
    customer: CustomerProfile
    customer_id: str
    interaction_id: str
    record: InteractionRecord
    queued_at_s: float = 0.0
    case_id: str = ""
    taken: bool = False
    abandoned: bool = False
    answered_once: bool = False
    first_wait_s: float | None = None
    transferred: bool = False
    escalated: bool = False
    reopened: bool = False
    resolver: Seat | None = None
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    resolved: asyncio.Event = field(default_factory=asyncio.Event)

    def requeue(self) -> None:
        self.taken = False
        self.answered.clear()


class DayDriver:
    """Sets up the directory (queues, agents, customers) and plays the day."""

    def __init__(
        self,
        scenario: Scenario,
        *,
        customers: customer_pb2_grpc.CustomerServiceAsyncStub,
        interactions: interaction_pb2_grpc.InteractionServiceAsyncStub,
        routing: RoutingPort,
        clock: SimClock,
        ledger: Ledger,
        run_tag: str,
        on_progress: Callable[[DayDriver], None] | None = None,
    ) -> None:
        self.scenario = scenario
        self.customers = customers
        self.interactions = interactions
        self.routing = routing
        self.clock = clock
        self.ledger = ledger
        self.run_tag = run_tag
        self.on_progress = on_progress
        self.seats = [Seat(profile) for profile in scenario.agents]
        self.last_agent: dict[int, str] = {}
        self.journeys: dict[str, Journey] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = asyncio.Event()
        self.arrived = 0

    # --- plumbing -------------------------------------------------------------------------------

    async def call(
        self,
        name: str,
        method: Callable[..., Awaitable[Response]],
        request: message.Message,
        *,
        tolerate: Sequence[grpc.StatusCode] = (),
    ) -> Response | None:
        """The RPC's answer; None when it was refused (counted, and logged unless the code is
        in `tolerate`). ABORTED and UNAVAILABLE are retried a few times."""
        for attempt in range(4):
            self.ledger.rpcs += 1
            try:
                return await method(request, timeout=RPC_TIMEOUT_S)
            except grpc.aio.AioRpcError as error:
                code = error.code()
                if code in RETRIED and attempt < 3:
                    await asyncio.sleep(0.05 * (attempt + 1))
                    continue
                if code in tolerate:
                    self.ledger.count(f"{name}: {code.name}")
                else:
                    self.ledger.error(name, f"{code.name}: {error.details()}")
                return None
        return None

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            self.ledger.error("driver", f"{type(error).__name__}: {error}")

    def customer_profile(self, index: int) -> CustomerProfile:
        return self.scenario.customers[index]

    # --- set-up ---------------------------------------------------------------------------------

    async def set_up(self, concurrency: int = 8) -> None:
        """Queues and agents on the routing service, the customers on file on the customer
        service (all idempotent: a second run with the same seed reuses them)."""
        for plan in self.scenario.queues:
            await self.routing.ensure_queue(plan, self.clock.speed)
        for seat in self.seats:
            # The same profile (any run) is the same agent; a changed one is another agent.
            digest = zlib.crc32(repr(seat.profile).encode())
            seat.agent_id = await self.routing.register_agent(
                seat.profile, f"demo-agent:{seat.profile.key}:{digest:08x}"
            )
            seat.idle.set()
        gate = asyncio.Semaphore(concurrency)

        async def register(index: int) -> None:
            async with gate:
                await self.register_customer(index)

        on_file = [i for i, c in enumerate(self.scenario.customers) if c.on_file]
        await asyncio.gather(*(register(index) for index in on_file))

    async def register_customer(self, index: int) -> str | None:
        profile = self.customer_profile(index)
        points = [
            customer_pb2.ContactPoint(
                kind=customer_pb2.CONTACT_POINT_KIND_EMAIL, value=profile.email
            ),
            customer_pb2.ContactPoint(
                kind=customer_pb2.CONTACT_POINT_KIND_PHONE, value=profile.phone
            ),
        ]
        if profile.handle:
            points.append(
                customer_pb2.ContactPoint(
                    kind=customer_pb2.CONTACT_POINT_KIND_HANDLE, value=profile.handle
                )
            )
        created = await self.call(
            "CreateCustomer",
            self.customers.CreateCustomer,
            customer_pb2.CreateCustomerRequest(
                # One phone number, one person: every run that knows them finds the same one.
                request_id=f"demo-customer:{profile.phone}",
                default_region="JP",
                customer=customer_pb2.Customer(
                    name=profile.name,
                    company=profile.company,
                    language=profile.language,
                    time_zone="Asia/Tokyo",
                    segment=profile.segment,
                    tags=[profile.segment],
                    lifecycle=customer_pb2.LIFECYCLE_ACTIVE,
                    contact_points=points,
                ),
            ),
            tolerate=(grpc.StatusCode.ALREADY_EXISTS,),
        )
        if created is None:
            # Another run's customer holds one of these contact points: that is who calls.
            found = await self.lookup(profile, "phone") or await self.lookup(profile, "email")
            return found
        self.ledger.count("customers registered")
        return str(created.id)

    async def lookup(self, profile: CustomerProfile, by: str) -> str | None:
        if by == "handle" and profile.handle:
            request = customer_pb2.LookupCustomerRequest(handle=profile.handle)
        elif by == "phone":
            request = customer_pb2.LookupCustomerRequest(phone=profile.phone, default_region="JP")
        else:
            request = customer_pb2.LookupCustomerRequest(email=profile.email)
        found = await self.call(
            "LookupCustomer",
            self.customers.LookupCustomer,
            request,
            tolerate=(grpc.StatusCode.NOT_FOUND,),
        )
        return None if found is None else str(found.id)

    # --- the day --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Plays the day: agents' shifts, every arrival and its follow-ups, then closes (agents
        on the last shift stay up to `DRAIN_S` while customers still wait)."""
        self.clock.started()
        for seat in self.seats:
            self.spawn(self._agent_day(seat))
        for contact in self.scenario.contacts:
            self.spawn(self._journey(contact))
        progress = asyncio.create_task(self._report_progress())
        try:
            await self.clock.sleep_until(self.scenario.length_s)
            deadline = self.scenario.length_s + DRAIN_S
            while self.clock.now_s() < deadline and self._waiting():
                await self.clock.sleep(30)
            self.closed.set()
            await self._finish()
        finally:
            progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await progress
            if self.on_progress is not None:
                self.on_progress(self)

    def _waiting(self) -> int:
        return sum(
            1
            for journey in self.journeys.values()
            if not journey.resolved.is_set() and not journey.abandoned
        )

    async def _finish(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FINISH_TIMEOUT_S
        while self.tasks and loop.time() < deadline:
            await asyncio.wait(set(self.tasks), timeout=max(0.0, deadline - loop.time()))
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=5)

    async def _report_progress(self) -> None:
        while self.on_progress is not None:
            self.on_progress(self)
            await asyncio.sleep(0.25)

    # --- agents ---------------------------------------------------------------------------------

    async def _agent_day(self, seat: Seat) -> None:
        shift = seat.profile.shift
        await self.clock.sleep_until(shift.start_s)
        listener = asyncio.create_task(self._listen(seat))
        try:
            await self._presence(seat, "available")
            seat.logged_in = True
            await self.clock.sleep_until(shift.break_start_s)
            await self._presence(seat, "break")
            await self.clock.sleep_until(shift.break_end_s)
            await self._presence(seat, "available")
            await self.clock.sleep_until(shift.end_s)
            if shift.end_s >= self.scenario.length_s:
                await self.closed.wait()
            await self._presence(seat, "busy")
            await seat.idle.wait()
            await self._log_off(seat)
            seat.logged_in = False
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def _presence(self, seat: Seat, presence: str) -> None:
        self.ledger.rpcs += 1
        try:
            await self.routing.set_presence(seat.agent_id, presence)
        except grpc.aio.AioRpcError as error:
            self.ledger.error("SetPresence", f"{error.code().name}: {error.details()}")

    async def _log_off(self, seat: Seat) -> None:
        """Offline once routing has heard (over the bus) that the last work was wrapped up:
        until then it refuses, as the agent still holds work in its eyes."""
        for _ in range(50):
            self.ledger.rpcs += 1
            try:
                await self.routing.set_presence(seat.agent_id, "offline")
                return
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    self.ledger.error("SetPresence", f"{error.code().name}: {error.details()}")
                    return
                await asyncio.sleep(0.1)
        self.ledger.error("SetPresence", f"agent {seat.agent_id} still holds work at log-off")

    async def _listen(self, seat: Seat) -> None:
        """Follows the agent's offer stream (again after a broken connection)."""
        while True:
            try:
                async for interaction_id in self.routing.offers(seat.agent_id):
                    self.ledger.count("offers received")
                    self.spawn(self._take(seat, interaction_id))
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.CANCELLED:
                    self.ledger.error("StreamOffers", f"{error.code().name}: {error.details()}")
            await asyncio.sleep(0.2)

    async def _take(self, seat: Seat, interaction_id: str) -> None:
        journey = self.journeys.get(interaction_id)
        if journey is None:
            await self._take_foreign(seat, interaction_id)
            return
        if journey.taken or journey.abandoned or journey.resolved.is_set():
            return
        journey.taken = True
        answered = await self.call(
            "AnswerInteraction",
            self.interactions.AnswerInteraction,
            interaction_pb2.AnswerInteractionRequest(
                interaction_id=interaction_id, agent_id=seat.agent_id
            ),
            tolerate=(grpc.StatusCode.FAILED_PRECONDITION,),
        )
        if answered is None:
            journey.taken = False  # the customer left, or it is someone else's now
            return
        seat.in_hand += 1
        seat.idle.clear()
        try:
            if not journey.answered_once:
                journey.answered_once = True
                journey.first_wait_s = self.clock.now_s() - journey.queued_at_s
                self.ledger.count("answered")
            journey.record.outcome = "in service"
            journey.record.agent_keys.append(seat.profile.key)
            journey.answered.set()
            await self._work(seat, journey)
        finally:
            seat.in_hand -= 1
            if seat.in_hand == 0:
                seat.idle.set()

    async def _work(self, seat: Seat, journey: Journey) -> None:
        contact, iid = journey.contact, journey.interaction_id
        if not journey.case_id:
            await self._open_case(journey)
        if contact.channel in WRITTEN_CHANNELS:
            await self.call(
                "AddMessage",
                self.interactions.AddMessage,
                interaction_pb2.AddMessageRequest(
                    interaction_id=iid,
                    author_kind=interaction_pb2.AUTHOR_KIND_AGENT,
                    author_id=seat.agent_id,
                    text=_AGENT_REPLIES[zlib.crc32(contact.key.encode()) % len(_AGENT_REPLIES)],
                ),
            )
        if contact.transfer_to and not journey.transferred:
            await self.clock.sleep(contact.talk_s * 0.2)
            journey.transferred = True
            await self._transfer(journey, contact.transfer_to, "IVRの選択違い: 担当窓口へ転送")
            return
        if contact.escalate and not journey.escalated:
            await self.clock.sleep(contact.talk_s * 0.4)
            journey.escalated = True
            escalated = await self.call(
                "EscalateInteraction",
                self.interactions.EscalateInteraction,
                interaction_pb2.EscalateInteractionRequest(
                    interaction_id=iid,
                    reason="一次対応では解決できないため二次対応へ",
                    tier=2,
                    department=ESCALATION_QUEUE,
                ),
            )
            if escalated is not None:
                self.ledger.count("escalated")
            await self._transfer(journey, ESCALATION_QUEUE, "二次対応チームへ転送")
            return
        talk = contact.talk_s * (0.4 if journey.reopened else 0.8 if journey.transferred else 1.0)
        if contact.hold_s and not journey.reopened:
            await self.clock.sleep(talk * 0.4)
            if await self._simple("HoldInteraction", self.interactions.HoldInteraction, iid):
                self.ledger.count("held")
                await self.clock.sleep(contact.hold_s)
                await self._simple("ResumeInteraction", self.interactions.ResumeInteraction, iid)
            await self.clock.sleep(talk * 0.6)
        else:
            await self.clock.sleep(talk)
        await self._simple("StartWrapUp", self.interactions.StartWrapUp, iid)
        await self.clock.sleep(contact.wrap_s)
        reason = REASON_BY_NAME[contact.reason]
        resolved = await self.call(
            "ResolveInteraction",
            self.interactions.ResolveInteraction,
            interaction_pb2.ResolveInteractionRequest(
                interaction_id=iid,
                resolution=f"{reason.subject}: ご案内済み",
                contact_reason=contact.reason,
            ),
        )
        if resolved is None:
            return
        self.ledger.count("resolved")
        journey.record.outcome = "resolved"
        journey.resolver = seat
        self.last_agent[contact.customer] = seat.agent_id
        if journey.case_id:
            solved = await self.call(
                "SolveCase",
                self.interactions.SolveCase,
                interaction_pb2.SolveCaseRequest(
                    case_id=journey.case_id, resolution=f"{reason.subject}: 解決"
                ),
                tolerate=(grpc.StatusCode.FAILED_PRECONDITION,),
            )
            if solved is not None:
                self.ledger.count("cases solved")
        if contact.feedback is not None and contact.feedback.source == "agent":
            await self._feedback(journey, contact.feedback.source)
        journey.resolved.set()

    async def _open_case(self, journey: Journey) -> None:
        contact = journey.contact
        reason = REASON_BY_NAME[contact.reason]
        case = await self.call(
            "OpenCase",
            self.interactions.OpenCase,
            interaction_pb2.OpenCaseRequest(
                request_id=f"{self.run_tag}:{contact.key}:case",
                subject=reason.subject,
                customer_id=journey.customer_id,
                reason=contact.reason,
                priority=interaction_pb2.CASE_PRIORITY_HIGH
                if contact.priority
                else interaction_pb2.CASE_PRIORITY_NORMAL,
                interaction_ids=[journey.interaction_id],
            ),
        )
        if case is not None:
            journey.case_id = case.id
            self.ledger.count("cases opened")

    async def _transfer(self, journey: Journey, queue: str, reason: str) -> None:
        journey.requeue()
        journey.record.outcome = "waiting"
        transferred = await self.call(
            "TransferInteraction",
            self.interactions.TransferInteraction,
            interaction_pb2.TransferInteractionRequest(
                interaction_id=journey.interaction_id,
                reason=reason,
                to_queue=queue,
                requirements=self._requirements(journey, queue),
            ),
        )
        if transferred is not None:
            self.ledger.count("transferred")

    async def _simple(
        self,
        name: str,
        method: Callable[..., Awaitable[interaction_pb2.Interaction]],
        interaction_id: str,
    ) -> bool:
        request_class = {
            "HoldInteraction": interaction_pb2.HoldInteractionRequest,
            "ResumeInteraction": interaction_pb2.ResumeInteractionRequest,
            "StartWrapUp": interaction_pb2.StartWrapUpRequest,
            "CloseInteraction": interaction_pb2.CloseInteractionRequest,
        }[name]
        answer = await self.call(name, method, request_class(interaction_id=interaction_id))
        return answer is not None

    async def _take_foreign(self, seat: Seat, interaction_id: str) -> None:
        """Work this run did not create (left waiting by an earlier run on the same data):
        answered and resolved like any other, so no customer is left behind."""
        answered = await self.call(
            "AnswerInteraction",
            self.interactions.AnswerInteraction,
            interaction_pb2.AnswerInteractionRequest(
                interaction_id=interaction_id, agent_id=seat.agent_id
            ),
            tolerate=(grpc.StatusCode.FAILED_PRECONDITION,),
        )
        if answered is None:
            return
        self.ledger.count("earlier work handled")
        seat.in_hand += 1
        seat.idle.clear()
        try:
            await self.clock.sleep(240)
            await self._simple("StartWrapUp", self.interactions.StartWrapUp, interaction_id)
            await self.clock.sleep(30)
            await self.call(
                "ResolveInteraction",
                self.interactions.ResolveInteraction,
                interaction_pb2.ResolveInteractionRequest(
                    interaction_id=interaction_id, resolution="ご案内済み"
                ),
            )
        finally:
            seat.in_hand -= 1
            if seat.in_hand == 0:
                seat.idle.set()

    # --- customers ------------------------------------------------------------------------------

    def _requirements(self, journey: Journey, queue: str) -> interaction_pb2.QueueRequirements:
        contact = journey.contact
        # The reason's queue asks the reason's proficiency; a wrong queue or tier 2 asks 1.
        level = contact.min_level if queue == REASON_BY_NAME[contact.reason].queue else 1
        return interaction_pb2.QueueRequirements(
            skills=[interaction_pb2.RequiredSkill(skill=queue, min_level=level)],
            language=journey.customer.language,
            priority=contact.priority,
            last_agent_id=self.last_agent.get(contact.customer, ""),
        )

    async def _identify(self, contact: Contact) -> str | None:
        """The screen pop: the customer found by the contact point of the channel; an unknown
        one is registered (a first-time caller)."""
        profile = self.customer_profile(contact.customer)
        by = {
            "phone": "phone",
            "video": "phone",
            "sms": "phone",
            "messaging": "handle",
            "social": "handle",
        }.get(contact.channel, "email")
        if by == "handle" and not profile.handle:
            by = "email"
        found = await self.lookup(profile, by)
        if found is not None:
            return found
        self.ledger.count("new customers")
        return await self.register_customer(contact.customer)

    async def _journey(self, contact: Contact) -> None:
        await self.clock.sleep_until(contact.arrival_s)
        if self.closed.is_set() or contact.arrival_s >= self.scenario.length_s:
            return
        self.arrived += 1
        customer_id = await self._identify(contact)
        if customer_id is None:
            return
        profile = self.customer_profile(contact.customer)
        reason = REASON_BY_NAME[contact.reason]
        repeat = contact.key.endswith("-r")
        opened = await self.call(
            "OpenInteraction",
            self.interactions.OpenInteraction,
            interaction_pb2.OpenInteractionRequest(
                request_id=f"{self.run_tag}:{contact.key}",
                channel=CHANNELS[contact.channel],
                direction=common_pb2.DIRECTION_INBOUND,
                customer_id=customer_id,
                contact_reason=contact.reason,
                tags=[profile.segment],
                handled_by_bot=contact.bot,
                link_repeat_contact=repeat,
            ),
        )
        if opened is None:
            return
        iid = str(opened.id)
        record = InteractionRecord(
            interaction_id=iid,
            contact_key=contact.key,
            channel=contact.channel,
            reason=contact.reason,
            arrival_s=contact.arrival_s,
            bot=contact.bot,
        )
        self.ledger.opened(record)
        if repeat:
            self.ledger.count("repeat contacts")
        if contact.key.endswith("-a"):
            self.ledger.count("retries after abandoning")
        journey = Journey(
            contact=contact,
            customer=profile,
            customer_id=customer_id,
            interaction_id=iid,
            record=record,
            case_id=str(opened.case_id),
        )
        if journey.case_id:
            await self._reopen_case(journey)
        if contact.channel in WRITTEN_CHANNELS:
            await self._customer_says(iid, reason.customer_text)
        if contact.bot:
            if not await self._bot_turn(journey):
                return
        else:
            self._expect_offers(journey)
            queued = await self.call(
                "QueueInteraction",
                self.interactions.QueueInteraction,
                interaction_pb2.QueueInteractionRequest(
                    interaction_id=iid,
                    queue=contact.queue,
                    requirements=self._requirements(journey, contact.queue),
                ),
            )
            if queued is None:
                del self.journeys[iid]
                return
        record.outcome = "waiting"
        self.ledger.count("queued")
        if not await self._wait_for_agent(journey, contact.patience_s):
            return
        await self._until_resolved(journey)
        if not journey.resolved.is_set():
            return
        await self._after_resolution(journey)

    def _expect_offers(self, journey: Journey) -> None:
        """From now on an offer may arrive (even before the queueing call returns): the wait
        starts, and agents must know whose contact it is."""
        journey.queued_at_s = self.clock.now_s()
        self.journeys[journey.interaction_id] = journey

    async def _customer_says(self, interaction_id: str, text: str) -> None:
        await self.call(
            "AddMessage",
            self.interactions.AddMessage,
            interaction_pb2.AddMessageRequest(
                interaction_id=interaction_id,
                author_kind=interaction_pb2.AUTHOR_KIND_CUSTOMER,
                text=text,
            ),
        )

    async def _bot_turn(self, journey: Journey) -> bool:
        """The bot's conversation; True when it hands the customer to a human queue."""
        contact, iid = journey.contact, journey.interaction_id
        await self.call(
            "AddMessage",
            self.interactions.AddMessage,
            interaction_pb2.AddMessageRequest(
                interaction_id=iid, author_kind=interaction_pb2.AUTHOR_KIND_BOT, text=_BOT_GREETING
            ),
        )
        await self.clock.sleep(contact.bot_s)
        if contact.contained:
            contained = await self.call(
                "ContainInBot",
                self.interactions.ContainInBot,
                interaction_pb2.ContainInBotRequest(
                    interaction_id=iid, resolution="FAQの案内で解決"
                ),
            )
            if contained is not None:
                self.ledger.count("contained by bot")
                journey.record.outcome = "contained"
                await self._surveys(journey, contained_by_bot=True)
                await self._simple("CloseInteraction", self.interactions.CloseInteraction, iid)
                self._follow_up(contact.repeat)
            return False
        self._expect_offers(journey)
        handed = await self.call(
            "HandOffToHuman",
            self.interactions.HandOffToHuman,
            interaction_pb2.HandOffToHumanRequest(
                interaction_id=iid,
                queue=contact.queue,
                reason="ボットでは解決できずオペレーターへ",
                requirements=self._requirements(journey, contact.queue),
            ),
        )
        if handed is None:
            del self.journeys[iid]
            return False
        self.ledger.count("handed off by bot")
        return True

    async def _wait_for_agent(self, journey: Journey, patience_s: float | None) -> bool:
        """True once an agent answered; False if the customer gave up first (abandoned, or left
        waiting in the backlog when the day closed)."""
        while not journey.answered.is_set():
            waited = self.clock.now_s() - journey.queued_at_s
            remaining = None if patience_s is None else patience_s - waited
            if (remaining is not None and remaining <= 0) or self.closed.is_set():
                if journey.taken:  # an agent is answering right now
                    await asyncio.sleep(0.01)
                    continue
                if patience_s is None:
                    journey.record.outcome = "left waiting"
                    self.ledger.count("left waiting at close")
                    return False
                await self._abandon(journey)
                return False
            await _first_of(
                journey.answered.wait(),
                self.closed.wait(),
                within_s=None if remaining is None else self.clock.real_seconds(remaining),
            )
        return True

    async def _abandon(self, journey: Journey) -> None:
        journey.abandoned = True
        journey.record.outcome = "abandoned"
        abandoned = await self.call(
            "AbandonInteraction",
            self.interactions.AbandonInteraction,
            interaction_pb2.AbandonInteractionRequest(interaction_id=journey.interaction_id),
            tolerate=(grpc.StatusCode.FAILED_PRECONDITION,),
        )
        if abandoned is None:
            return
        self.ledger.count("abandoned")
        feedback = journey.contact.feedback
        if feedback is not None and feedback.source == "complaint":
            await self._feedback(journey, "complaint")
        self._follow_up(journey.contact.retry)

    async def _until_resolved(self, journey: Journey) -> None:
        """Waits for the agents' side (transfers included) or the end of the day."""
        await _first_of(journey.resolved.wait(), self._closed_and_unanswered(journey))

    async def _closed_and_unanswered(self, journey: Journey) -> None:
        """Returns once the day is closed and nobody holds the contact (waiting after a
        transfer or a reopening, with no agent left)."""
        await self.closed.wait()
        while journey.taken or journey.answered.is_set():
            if journey.resolved.is_set():
                return
            await asyncio.sleep(0.05)
        journey.record.outcome = "left waiting"
        self.ledger.count("left waiting at close")

    async def _after_resolution(self, journey: Journey) -> None:
        contact, iid = journey.contact, journey.interaction_id
        await self._surveys(journey, contained_by_bot=False)
        if contact.feedback is not None and contact.feedback.source == "complaint":
            await self._feedback(journey, "complaint")
        if contact.churns:
            await self._churn(journey)
        if contact.reopen_after_s is not None and not journey.reopened:
            reopen_at = self.clock.now_s() + contact.reopen_after_s
            if reopen_at < self.scenario.length_s:
                await self.clock.sleep_until(reopen_at)
                if (
                    not self.closed.is_set()
                    and await self._reopen(journey)
                    and await self._wait_for_agent(journey, None)
                ):
                    await self._until_resolved(journey)
        await self._simple("CloseInteraction", self.interactions.CloseInteraction, iid)
        self._follow_up(contact.repeat)

    async def _reopen(self, journey: Journey) -> bool:
        journey.reopened = True
        journey.resolved.clear()
        journey.requeue()
        journey.queued_at_s = self.clock.now_s()
        reopened = await self.call(
            "ReopenInteraction",
            self.interactions.ReopenInteraction,
            interaction_pb2.ReopenInteractionRequest(
                interaction_id=journey.interaction_id, reason="お客様から追加のご質問"
            ),
        )
        if reopened is None:
            journey.resolved.set()
            return False
        self.ledger.count("reopened")
        journey.record.outcome = "waiting"
        if journey.case_id:
            await self._reopen_case(journey)
        return True

    async def _reopen_case(self, journey: Journey) -> None:
        """A repeat contact or a reopened conversation about a solved case reopens it."""
        case = await self.call(
            "ReopenCase",
            self.interactions.ReopenCase,
            interaction_pb2.ReopenCaseRequest(
                case_id=journey.case_id, reason="同じ件で再度のお問い合わせ"
            ),
            tolerate=(grpc.StatusCode.FAILED_PRECONDITION,),
        )
        if case is not None:
            self.ledger.count("cases reopened")

    def _follow_up(self, contact: Contact | None) -> None:
        if contact is not None and contact.arrival_s < self.scenario.length_s:
            self.spawn(self._journey(contact))

    async def _surveys(self, journey: Journey, *, contained_by_bot: bool) -> None:
        contact = journey.contact
        outcome = Outcome(
            waited_s=journey.first_wait_s or 0.0,
            transferred=journey.transferred,
            escalated=journey.escalated,
            repeat=contact.key.endswith("-r") or journey.reopened,
            contained_by_bot=contained_by_bot,
        )
        for plan in contact.surveys:
            score = survey_score(plan, outcome)
            answered = await self.call(
                "RecordSurveyResponse",
                self.interactions.RecordSurveyResponse,
                interaction_pb2.RecordSurveyResponseRequest(
                    survey_id=f"{self.run_tag}:{contact.key}:{plan.kind}",
                    kind=SURVEY_KINDS[plan.kind],
                    score=score,
                    comment=survey_comment(plan, score) or "",
                    interaction_id=journey.interaction_id,
                ),
                tolerate=(grpc.StatusCode.ALREADY_EXISTS,),
            )
            if answered is None:
                continue
            self.ledger.count(f"survey_{plan.kind}")
            self.ledger.surveys.append(
                SurveyRecord(
                    at_s=self.clock.now_s(),
                    kind=plan.kind,
                    score=score,
                    channel=contact.channel,
                    team=journey.resolver.profile.team if journey.resolver else "",
                )
            )

    async def _feedback(self, journey: Journey, source: str) -> None:
        plan = journey.contact.feedback
        if plan is None:
            return
        by_agent = source == "agent"
        captured = await self.call(
            "CaptureFeedback",
            self.interactions.CaptureFeedback,
            interaction_pb2.CaptureFeedbackRequest(
                text=plan.text,
                source=interaction_pb2.FEEDBACK_SOURCE_AGENT
                if by_agent
                else interaction_pb2.FEEDBACK_SOURCE_COMPLAINT,
                customer_id=journey.customer_id,
                interaction_id=journey.interaction_id,
                category=FEEDBACK_CATEGORIES.get(
                    plan.category or "", interaction_pb2.FEEDBACK_CATEGORY_UNSPECIFIED
                ),
                topics=list(plan.topics),
                set_by=interaction_pb2.SETTER_AGENT
                if by_agent
                else interaction_pb2.SETTER_CUSTOMER,
            ),
        )
        if captured is not None:
            self.ledger.count(f"feedback ({source})")

    async def _churn(self, journey: Journey) -> None:
        changed = await self.call(
            "ChangeLifecycle",
            self.customers.ChangeLifecycle,
            customer_pb2.ChangeLifecycleRequest(
                customer_id=journey.customer_id,
                lifecycle=customer_pb2.LIFECYCLE_CHURNED,
                reason="解約",
            ),
            tolerate=(grpc.StatusCode.FAILED_PRECONDITION,),
        )
        if changed is not None:
            self.ledger.count("customers churned")


async def _first_of(*waits: Awaitable[Any], within_s: float | None = None) -> None:
    """Returns when the first of `waits` completes (or after `within_s` seconds)."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, timeout=within_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
