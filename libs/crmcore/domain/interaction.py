"""Interactions: one contact on one channel, from arrival to close (DOMAIN.md, "Interaction and
case").

`Interaction` is created, queued with its routing requirements, offered to an agent, answered,
held and resumed, transferred (back to a queue, keeping the customer's original wait),
escalated, wrapped up, resolved (and perhaps reopened), closed — or abandoned by a customer who
left the queue. A chatbot conversation is either contained (the bot resolved it) or handed off
to a human queue with the whole transcript. Which command is allowed in which status is written
once, in `TRANSITIONS`; every command checks it and returns events without changing anything.

Every event carries what the KPIs and the routing service need without looking at any state:
channel, direction, customer, queue, agent, contact reason, the status after the event, and
the times a duration starts from (`queued_at` on `Answered`, …).

Personal data and erasure: what a customer or an agent wrote or said about the customer
(transcript entries, internal notes, resolutions, the reasons of transfers, escalations,
reopenings and bot hand-offs) is personal. Each event names those fields (`personal_fields`)
and gives its `redacted()` form: the texts blanked, everything else kept (who wrote an entry,
whether it was public, when; tiers, queues, agents, times), so the history and the KPIs stay
whole. The store seals the personal fields with the data key of `personal_data_subject()`:
the customer once known, else the interaction itself (that key is handed to the customer when
the interaction is identified); erasing the customer destroys the keys, and the bus only
ever carries the redacted form (`crmcore.application.interactions`). Contact reasons and tags
are labels for routing and KPIs, not personal data: they stay in clear.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from types import MappingProxyType
from typing import ClassVar, NamedTuple, Self, TypedDict, TypeVar
from uuid import NAMESPACE_URL, UUID, uuid5

import msgspec

from crmcore.domain import values
from crmcore.domain.base import Aggregate, Event, advance
from crmcore.domain.errors import InvalidValue, RuleViolation

MIN_PRIORITY = 0
MAX_PRIORITY = 10
DEFAULT_PRIORITY = 0
MIN_SKILL_LEVEL = 1
MAX_SKILL_LEVEL = 5
MAX_SKILLS = 20
MAX_QUEUE_LENGTH = 100
MAX_REASON_LENGTH = 500
MAX_RESOLUTION_LENGTH = 2_000
MAX_ESCALATION_TIER = 9
MAX_TRANSCRIPT_ENTRIES = 5_000
MAX_REQUEST_ID_LENGTH = 128

REQUEST_KEY_NAMESPACE = uuid5(NAMESPACE_URL, "urn:crm:interaction:request-id")

_SKILL = re.compile(r"[a-z0-9][a-z0-9_.:-]{0,63}")


class InteractionStatus(enum.StrEnum):
    CREATED = "created"
    QUEUED = "queued"
    OFFERED = "offered"
    ACTIVE = "active"
    ON_HOLD = "on_hold"
    WRAP_UP = "wrap_up"
    RESOLVED = "resolved"
    CLOSED = "closed"
    ABANDONED = "abandoned"
    CONTAINED = "contained"


#: Statuses nothing moves out of.
FINAL_STATUSES: frozenset[InteractionStatus] = frozenset(
    {InteractionStatus.CLOSED, InteractionStatus.ABANDONED}
)
#: Statuses in which someone may still write to the transcript.
CONVERSING_STATUSES: frozenset[InteractionStatus] = frozenset(
    {
        InteractionStatus.CREATED,
        InteractionStatus.QUEUED,
        InteractionStatus.OFFERED,
        InteractionStatus.ACTIVE,
        InteractionStatus.ON_HOLD,
        InteractionStatus.WRAP_UP,
        InteractionStatus.RESOLVED,
    }
)
ALL_STATUSES: frozenset[InteractionStatus] = frozenset(InteractionStatus)


class InteractionCommand(enum.StrEnum):
    """The commands of an interaction after it was opened (keys of `TRANSITIONS`)."""

    IDENTIFY_CUSTOMER = "identify_customer"
    LINK_TO_CASE = "link_to_case"
    QUEUE = "queue"
    OFFER = "offer"
    DECLINE_OFFER = "decline_offer"
    ANSWER = "answer"
    HOLD = "hold"
    RESUME = "resume"
    ADD_MESSAGE = "add_message"
    TRANSFER = "transfer"
    ESCALATE = "escalate"
    START_WRAP_UP = "start_wrap_up"
    RESOLVE = "resolve"
    REOPEN = "reopen"
    CLOSE = "close"
    ABANDON = "abandon"
    BOT_CONTAIN = "bot_contain"
    HAND_OFF_TO_HUMAN = "hand_off_to_human"


class Transition(NamedTuple):
    """Where a command may run and where it leads.

    `target` None keeps the status. `bot` True: only while a bot handles the contact (it was
    opened as a bot conversation); False: only when it was not; None: either."""

    sources: frozenset[InteractionStatus]
    target: InteractionStatus | None
    bot: bool | None = None

    def allows(self, status: InteractionStatus, handled_by_bot: bool) -> bool:
        return status in self.sources and (self.bot is None or self.bot == handled_by_bot)

    def next_status(self, status: InteractionStatus) -> InteractionStatus:
        return status if self.target is None else self.target


def _statuses(*members: InteractionStatus) -> frozenset[InteractionStatus]:
    return frozenset(members)


_S = InteractionStatus
_C = InteractionCommand

#: The lifecycle of an interaction: the one place that says which command is legal when.
TRANSITIONS: Mapping[InteractionCommand, Transition] = MappingProxyType(
    {
        _C.IDENTIFY_CUSTOMER: Transition(ALL_STATUSES, None),
        _C.LINK_TO_CASE: Transition(ALL_STATUSES, None),
        _C.QUEUE: Transition(_statuses(_S.CREATED), _S.QUEUED, bot=False),
        _C.OFFER: Transition(_statuses(_S.QUEUED), _S.OFFERED),
        _C.DECLINE_OFFER: Transition(_statuses(_S.OFFERED), _S.QUEUED),
        # From queued: an agent picks the work from the queue (e-mail, call-back lists).
        _C.ANSWER: Transition(_statuses(_S.QUEUED, _S.OFFERED), _S.ACTIVE),
        _C.HOLD: Transition(_statuses(_S.ACTIVE), _S.ON_HOLD),
        _C.RESUME: Transition(_statuses(_S.ON_HOLD), _S.ACTIVE),
        _C.ADD_MESSAGE: Transition(CONVERSING_STATUSES, None),
        _C.TRANSFER: Transition(_statuses(_S.ACTIVE, _S.ON_HOLD), _S.QUEUED),
        _C.ESCALATE: Transition(_statuses(_S.ACTIVE, _S.ON_HOLD, _S.WRAP_UP), None),
        _C.START_WRAP_UP: Transition(_statuses(_S.ACTIVE, _S.ON_HOLD), _S.WRAP_UP),
        _C.RESOLVE: Transition(_statuses(_S.ACTIVE, _S.WRAP_UP), _S.RESOLVED),
        _C.REOPEN: Transition(_statuses(_S.RESOLVED), _S.QUEUED),
        _C.CLOSE: Transition(_statuses(_S.RESOLVED, _S.CONTAINED), _S.CLOSED),
        _C.ABANDON: Transition(_statuses(_S.QUEUED, _S.OFFERED), _S.ABANDONED),
        _C.BOT_CONTAIN: Transition(_statuses(_S.CREATED), _S.CONTAINED, bot=True),
        _C.HAND_OFF_TO_HUMAN: Transition(_statuses(_S.CREATED), _S.QUEUED, bot=True),
    }
)


class AuthorKind(enum.StrEnum):
    CUSTOMER = "customer"
    AGENT = "agent"
    BOT = "bot"
    SYSTEM = "system"


class DeclineReason(enum.StrEnum):
    REJECTED = "rejected"
    TIMEOUT = "timeout"
    #: Routing took the offer back through no fault of the agent (e.g. they went offline).
    REVOKED = "revoked"


# --- value objects ------------------------------------------------------------------------


class SkillRequirement(msgspec.Struct, frozen=True, kw_only=True):
    """A skill the agent must have, at `min_level` (1–5) or better."""

    skill: str
    min_level: int = MIN_SKILL_LEVEL


class RoutingRequirements(msgspec.Struct, frozen=True, kw_only=True):
    """What an agent needs to take the work, and who should preferably get it.

    `priority` 0–10, higher first; `preferred_agent_id` is an explicit target (a transfer to an
    agent), `last_agent_id` the agent who helped this customer last (sticky routing)."""

    skills: tuple[SkillRequirement, ...] = ()
    language: str | None = None
    priority: int = DEFAULT_PRIORITY
    preferred_agent_id: UUID | None = None
    last_agent_id: UUID | None = None


class TranscriptEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One message of the conversation, or an internal note (`public` False) agents only see."""

    author_kind: AuthorKind
    author_id: UUID | None
    text: str
    public: bool
    at: datetime


class Escalation(msgspec.Struct, frozen=True, kw_only=True):
    """A hand-over to a higher tier and/or another department."""

    tier: int | None
    department: str | None
    reason: str
    agent_id: UUID | None
    at: datetime


# --- personal data ----------------------------------------------------------------------------

TStruct = TypeVar("TStruct", bound=msgspec.Struct)


def blank_personal(value: object) -> object:
    """The redacted form of a personal value: its text blanked, the structure around it kept
    (a transcript entry keeps its author, visibility and time; an escalation its tier)."""
    if value is None:
        return None
    if isinstance(value, str):
        return ""
    if isinstance(value, TranscriptEntry):
        return msgspec.structs.replace(value, text="")
    if isinstance(value, Escalation):
        return msgspec.structs.replace(value, reason="")
    if isinstance(value, tuple):
        return tuple(blank_personal(item) for item in value)
    raise TypeError(f"no blank value for a personal field of type {type(value).__name__}")


def redacted_copy(event: TStruct, personal_fields: frozenset[str]) -> TStruct:
    """`event` with each of its personal fields blanked (`blank_personal`)."""
    changes = {
        name: blank_personal(getattr(event, name))
        for name in personal_fields
        if getattr(event, name) is not None
    }
    return msgspec.structs.replace(event, **changes) if changes else event


# --- validation of raw values ---------------------------------------------------------------


def queue_name(value: str, field: str = "queue") -> str:
    return values.required_text(value, field, max_length=MAX_QUEUE_LENGTH)


def routing_requirements(
    requirements: RoutingRequirements, field: str = "requirements"
) -> RoutingRequirements:
    """The requirements checked and normalised (skills lower-case, unique; language tag)."""
    if len(requirements.skills) > MAX_SKILLS:
        raise InvalidValue(f"{field}.skills", f"more than {MAX_SKILLS} skills")
    skills: dict[str, SkillRequirement] = {}
    for index, requirement in enumerate(requirements.skills):
        skill_field = f"{field}.skills[{index}]"
        skill = requirement.skill.strip().lower()
        if not _SKILL.fullmatch(skill):
            raise InvalidValue(f"{skill_field}.skill", f"{requirement.skill!r} is not a skill name")
        if skill in skills:
            raise InvalidValue(f"{skill_field}.skill", f"{skill!r} is required twice")
        level = values.score(
            requirement.min_level,
            f"{skill_field}.min_level",
            low=MIN_SKILL_LEVEL,
            high=MAX_SKILL_LEVEL,
        )
        skills[skill] = SkillRequirement(skill=skill, min_level=level)
    language = requirements.language
    if language is not None:
        language = values.language_tag(language, f"{field}.language")
    priority = values.score(
        requirements.priority, f"{field}.priority", low=MIN_PRIORITY, high=MAX_PRIORITY
    )
    return RoutingRequirements(
        skills=tuple(skills.values()),
        language=language,
        priority=priority,
        preferred_agent_id=requirements.preferred_agent_id,
        last_agent_id=requirements.last_agent_id,
    )


def _optional_text(value: str | None, field: str, max_length: int) -> str | None:
    if value is None:
        return None
    return values.required_text(value, field, max_length=max_length)


def _message_text(value: str, field: str = "text") -> str:
    checked = values.text(value, field)
    if not checked.strip():
        raise InvalidValue(field, "must not be empty")
    return checked


# --- the aggregate ----------------------------------------------------------------------------


class _Facts(TypedDict):
    """What every event of one interaction says about it (see `Interaction._facts`)."""

    originator_id: UUID
    originator_version: int
    timestamp: datetime
    status: InteractionStatus
    channel: values.Channel
    direction: values.Direction
    customer_id: UUID | None
    queue: str | None
    contact_reason: str | None


class Interaction(Aggregate, frozen=True, kw_only=True):
    """One contact on one channel and everything the KPIs measure about it."""

    channel: values.Channel
    direction: values.Direction
    status: InteractionStatus
    handled_by_bot: bool
    customer_id: UUID | None = None
    case_id: UUID | None = None
    contact_reason: str | None = None
    tags: tuple[str, ...] = ()
    queue: str | None = None
    requirements: RoutingRequirements = msgspec.field(default_factory=RoutingRequirements)
    #: First enqueue: a transfer or declined offer keeps the customer's original wait.
    queued_at: datetime | None = None
    #: Where routing counts the current wait from (the first enqueue, or the reopening).
    waiting_since: datetime | None = None
    offered_at: datetime | None = None
    offered_agent_id: UUID | None = None
    answered_at: datetime | None = None
    first_agent_response_at: datetime | None = None
    hold_seconds: float = 0.0
    hold_started_at: datetime | None = None
    wrap_up_started_at: datetime | None = None
    resolved_at: datetime | None = None
    first_resolved_at: datetime | None = None
    resolved_by: UUID | None = None
    resolution: str | None = None
    closed_at: datetime | None = None
    abandoned_at: datetime | None = None
    contained_at: datetime | None = None
    handed_off_at: datetime | None = None
    #: The agent handling it now (None while it waits, and once it is resolved).
    agent_id: UUID | None = None
    #: Every agent who answered it, in order of first answer.
    agents: tuple[UUID, ...] = ()
    transfer_count: int = 0
    escalations: tuple[Escalation, ...] = ()
    reopen_count: int = 0
    transcript: tuple[TranscriptEntry, ...] = ()

    @property
    def created_at(self) -> datetime:
        return self.created_on

    @property
    def last_agent_id(self) -> UUID | None:
        return self.agents[-1] if self.agents else None

    def can(self, command: InteractionCommand) -> bool:
        """Whether the status allows `command` (its arguments may still be refused)."""
        return TRANSITIONS[command].allows(self.status, self.handled_by_bot)

    # --- creation ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        *,
        interaction_id: UUID,
        channel: str,
        direction: str = values.Direction.INBOUND,
        customer_id: UUID | None = None,
        case_id: UUID | None = None,
        contact_reason: str | None = None,
        tags: Sequence[str] = (),
        handled_by_bot: bool = False,
        at: datetime,
    ) -> InteractionOpened:
        checked_channel = values.enum_value(values.Channel, channel, "channel")
        return InteractionOpened(
            originator_id=interaction_id,
            originator_version=1,
            timestamp=values.aware(at, "at"),
            status=InteractionStatus.CREATED,
            channel=checked_channel,
            direction=values.enum_value(values.Direction, direction, "direction"),
            customer_id=customer_id,
            queue=None,
            agent_id=None,
            contact_reason=_optional_text(
                contact_reason, "contact_reason", values.MAX_SHORT_TEXT_LENGTH
            ),
            case_id=case_id,
            tags=values.tags(tuple(tags)),
            handled_by_bot=handled_by_bot or checked_channel is values.Channel.CHATBOT,
        )

    # --- commands ---------------------------------------------------------------------------

    def identify_customer(self, customer_id: UUID, *, at: datetime) -> CustomerIdentified:
        """Says who the customer is (also corrects a wrong identification)."""
        facts = self._facts(InteractionCommand.IDENTIFY_CUSTOMER, at)
        if customer_id == self.customer_id:
            raise RuleViolation(f"interaction {self.id} is already identified as that customer")
        facts["customer_id"] = customer_id
        return CustomerIdentified(
            **facts, agent_id=self.agent_id, previous_customer_id=self.customer_id
        )

    def link_to_case(self, case_id: UUID, *, at: datetime) -> LinkedToCase:
        facts = self._facts(InteractionCommand.LINK_TO_CASE, at)
        if self.case_id is not None:
            raise RuleViolation(f"interaction {self.id} already belongs to case {self.case_id}")
        return LinkedToCase(**facts, agent_id=self.agent_id, case_id=case_id)

    def enqueue(
        self, *, queue: str, requirements: RoutingRequirements | None = None, at: datetime
    ) -> Queued:
        """Puts the contact in a queue for routing; its wait starts now."""
        facts = self._facts(InteractionCommand.QUEUE, at)
        checked = routing_requirements(requirements or RoutingRequirements())
        facts["queue"] = queue_name(queue)
        return Queued(
            **facts,
            agent_id=None,
            requirements=checked,
            queued_at=facts["timestamp"],
            waiting_since=facts["timestamp"],
        )

    def offer(self, agent_id: UUID, *, at: datetime) -> Offered:
        facts = self._facts(InteractionCommand.OFFER, at)
        return Offered(**facts, agent_id=agent_id, queued_at=self._queued_at())

    def decline_offer(
        self, agent_id: UUID, reason: str = DeclineReason.REJECTED, *, at: datetime
    ) -> OfferDeclined:
        """The offered agent rejected the offer or let it time out: back to the queue, with the
        original wait kept."""
        facts = self._facts(InteractionCommand.DECLINE_OFFER, at)
        checked_reason = values.enum_value(DeclineReason, reason, "reason")
        self._require_offered_to(agent_id)
        return OfferDeclined(
            **facts,
            agent_id=agent_id,
            reason=checked_reason,
            queued_at=self._queued_at(),
            waiting_since=self.waiting_since or self._queued_at(),
        )

    def answer(self, agent_id: UUID, *, at: datetime) -> Answered:
        """An agent takes the contact: the offered agent, or any agent picking it from the
        queue."""
        facts = self._facts(InteractionCommand.ANSWER, at)
        if self.status is InteractionStatus.OFFERED:
            self._require_offered_to(agent_id)
        return Answered(
            **facts,
            agent_id=agent_id,
            queued_at=self._queued_at(),
            first_answer=self.answered_at is None,
        )

    def hold(self, *, at: datetime) -> PutOnHold:
        facts = self._facts(InteractionCommand.HOLD, at)
        return PutOnHold(**facts, agent_id=self.agent_id)

    def resume(self, *, at: datetime) -> Resumed:
        facts = self._facts(InteractionCommand.RESUME, at)
        return Resumed(
            **facts, agent_id=self.agent_id, held_seconds=self._hold_seconds_until(facts)
        )

    def add_message(
        self,
        *,
        author_kind: str,
        text: str,
        author_id: UUID | None = None,
        public: bool = True,
        at: datetime,
    ) -> MessageAdded:
        """Adds a transcript entry: a message, or an internal note of an agent or the system."""
        facts = self._facts(InteractionCommand.ADD_MESSAGE, at)
        kind = values.enum_value(AuthorKind, author_kind, "author_kind")
        checked_text = _message_text(text)
        if kind is AuthorKind.AGENT and author_id is None:
            raise InvalidValue("author_id", "an agent's entry names the agent")
        if not public and kind in (AuthorKind.CUSTOMER, AuthorKind.BOT):
            raise InvalidValue("public", f"a {kind} cannot write an internal note")
        if len(self.transcript) >= MAX_TRANSCRIPT_ENTRIES:
            raise RuleViolation(
                f"interaction {self.id} has {MAX_TRANSCRIPT_ENTRIES} transcript entries already"
            )
        first_response = (
            kind is AuthorKind.AGENT and public and self.first_agent_response_at is None
        )
        return MessageAdded(
            **facts,
            agent_id=author_id if kind is AuthorKind.AGENT else self.agent_id,
            entry=TranscriptEntry(
                author_kind=kind,
                author_id=author_id,
                text=checked_text,
                public=public,
                at=facts["timestamp"],
            ),
            first_agent_response=first_response,
        )

    def transfer(
        self,
        *,
        reason: str,
        to_queue: str | None = None,
        to_agent_id: UUID | None = None,
        requirements: RoutingRequirements | None = None,
        at: datetime,
    ) -> Transferred:
        """Sends the contact to another queue or agent; it waits again, but the customer's wait
        keeps counting from the first enqueue."""
        facts = self._facts(InteractionCommand.TRANSFER, at)
        if (to_queue is None) == (to_agent_id is None):
            raise InvalidValue("to_queue", "name exactly one of to_queue or to_agent_id")
        if to_agent_id is not None and to_agent_id == self.agent_id:
            raise InvalidValue("to_agent_id", "cannot transfer to the agent handling it")
        checked_reason = values.required_text(reason, "reason", max_length=MAX_REASON_LENGTH)
        from_queue = self.queue
        new_queue = queue_name(to_queue, "to_queue") if to_queue is not None else from_queue
        base = routing_requirements(requirements) if requirements else self.requirements
        # The agent handing it on is the one agent who must not get it back: sticky routing
        # prefers the last agent, so a transfer drops it rather than naming it.
        sticky = base.last_agent_id if base.last_agent_id != self.agent_id else None
        new_requirements = msgspec.structs.replace(
            base, preferred_agent_id=to_agent_id, last_agent_id=sticky
        )
        facts["queue"] = new_queue
        return Transferred(
            **facts,
            agent_id=self.agent_id,
            from_queue=from_queue,
            to_queue=new_queue,
            to_agent_id=to_agent_id,
            reason=checked_reason,
            requirements=new_requirements,
            queued_at=self._queued_at(),
            waiting_since=self.waiting_since or self._queued_at(),
            held_seconds=self._hold_seconds_until(facts),
        )

    def escalate(
        self,
        *,
        reason: str,
        tier: int | None = None,
        department: str | None = None,
        at: datetime,
    ) -> Escalated:
        facts = self._facts(InteractionCommand.ESCALATE, at)
        if tier is None and department is None:
            raise InvalidValue("tier", "name a tier, a department or both")
        if tier is not None:
            values.score(tier, "tier", low=1, high=MAX_ESCALATION_TIER)
        checked_department = _optional_text(department, "department", values.MAX_SHORT_TEXT_LENGTH)
        return Escalated(
            **facts,
            agent_id=self.agent_id,
            escalation=Escalation(
                tier=tier,
                department=checked_department,
                reason=values.required_text(reason, "reason", max_length=MAX_REASON_LENGTH),
                agent_id=self.agent_id,
                at=facts["timestamp"],
            ),
        )

    def start_wrap_up(self, *, at: datetime) -> WrapUpStarted:
        """The conversation ended; after-contact work starts (ends a hold that was running)."""
        facts = self._facts(InteractionCommand.START_WRAP_UP, at)
        return WrapUpStarted(
            **facts,
            agent_id=self.agent_id,
            answered_at=self.answered_at,
            held_seconds=self._hold_seconds_until(facts),
        )

    def resolve(
        self,
        *,
        resolution: str | None = None,
        contact_reason: str | None = None,
        at: datetime,
    ) -> Resolved:
        facts = self._facts(InteractionCommand.RESOLVE, at)
        checked_resolution = (
            values.text(resolution, "resolution", max_length=MAX_RESOLUTION_LENGTH).strip()
            if resolution is not None
            else None
        )
        if contact_reason is not None:
            facts["contact_reason"] = values.required_text(contact_reason, "contact_reason")
        return Resolved(
            **facts,
            agent_id=self.agent_id,
            resolution=checked_resolution or None,
            created_at=self.created_on,
            answered_at=self.answered_at,
            wrap_up_started_at=self.wrap_up_started_at,
            hold_seconds=self.hold_seconds,
            agents=self.agents,
            transfer_count=self.transfer_count,
            escalation_count=len(self.escalations),
            reopen_count=self.reopen_count,
            first_resolution=self.first_resolved_at is None,
        )

    def reopen(self, *, reason: str | None = None, at: datetime) -> Reopened:
        """The issue came back before the interaction was closed: it waits for an agent again,
        preferably the one who helped last."""
        facts = self._facts(InteractionCommand.REOPEN, at)
        return Reopened(
            **facts,
            agent_id=None,
            reason=_optional_text(reason, "reason", MAX_REASON_LENGTH),
            requirements=msgspec.structs.replace(
                self.requirements,
                preferred_agent_id=None,
                last_agent_id=self.last_agent_id or self.requirements.last_agent_id,
            ),
            waiting_since=facts["timestamp"],
            resolved_at=self.resolved_at,
        )

    def close(self, *, at: datetime) -> Closed:
        facts = self._facts(InteractionCommand.CLOSE, at)
        return Closed(**facts, agent_id=self.resolved_by)

    def abandon(self, *, at: datetime) -> Abandoned:
        """The customer left while waiting (hung up, closed the chat)."""
        facts = self._facts(InteractionCommand.ABANDON, at)
        queued_at = self._queued_at()
        return Abandoned(
            **facts,
            agent_id=self.offered_agent_id,
            queued_at=queued_at,
            waited_seconds=(facts["timestamp"] - queued_at).total_seconds(),
        )

    def bot_contain(self, *, resolution: str | None = None, at: datetime) -> BotContained:
        """The bot resolved the conversation without a human."""
        facts = self._facts(InteractionCommand.BOT_CONTAIN, at)
        checked = (
            values.text(resolution, "resolution", max_length=MAX_RESOLUTION_LENGTH).strip()
            if resolution is not None
            else None
        )
        return BotContained(**facts, agent_id=None, resolution=checked or None)

    def hand_off_to_human(
        self,
        *,
        queue: str,
        reason: str,
        requirements: RoutingRequirements | None = None,
        at: datetime,
    ) -> HandedOffToHuman:
        """The bot gives up: the contact joins a human queue carrying the whole transcript, so
        the customer need not repeat anything."""
        facts = self._facts(InteractionCommand.HAND_OFF_TO_HUMAN, at)
        checked = routing_requirements(requirements or RoutingRequirements())
        facts["queue"] = queue_name(queue)
        return HandedOffToHuman(
            **facts,
            agent_id=None,
            reason=values.required_text(reason, "reason", max_length=MAX_REASON_LENGTH),
            requirements=checked,
            transcript=self.transcript,
            queued_at=facts["timestamp"],
            waiting_since=facts["timestamp"],
        )

    # --- helpers ----------------------------------------------------------------------------

    def _facts(self, command: InteractionCommand, at: datetime) -> _Facts:
        """Checks that `command` may run now at `at`, and gives the fields of its event."""
        at = values.aware(at, "at")
        if at < self.modified_on:
            raise RuleViolation(
                f"interaction {self.id} changed at {self.modified_on.isoformat()}; "
                f"a change at {at.isoformat()} would go back in time"
            )
        transition = TRANSITIONS[command]
        if not transition.allows(self.status, self.handled_by_bot):
            if transition.bot is not None and self.status in transition.sources:
                who = "a bot conversation" if transition.bot else "a conversation with a bot"
                raise RuleViolation(f"cannot {command} interaction {self.id}: it is not {who}")
            raise RuleViolation(f"cannot {command} interaction {self.id}: it is {self.status}")
        return _Facts(
            originator_id=self.id,
            originator_version=self.version + 1,
            timestamp=at,
            status=transition.next_status(self.status),
            channel=self.channel,
            direction=self.direction,
            customer_id=self.customer_id,
            queue=self.queue,
            contact_reason=self.contact_reason,
        )

    def _require_offered_to(self, agent_id: UUID) -> None:
        if agent_id != self.offered_agent_id:
            raise RuleViolation(
                f"interaction {self.id} is offered to agent {self.offered_agent_id}, "
                f"not to {agent_id}"
            )

    def _queued_at(self) -> datetime:
        # Every status that reaches here was entered through a queue, which set queued_at.
        assert self.queued_at is not None, "a queued interaction has a queued_at"
        return self.queued_at

    def _hold_seconds_until(self, facts: _Facts) -> float:
        """Length of the hold running now, ended by this event (0 when not on hold)."""
        if self.hold_started_at is None:
            return 0.0
        return (facts["timestamp"] - self.hold_started_at).total_seconds()


# --- events ---------------------------------------------------------------------------------


class InteractionEvent(Event[Interaction], frozen=True, kw_only=True):
    """Base of the events of one interaction: the facts every consumer needs.

    `status` is the status after the event; `queue` the queue after it; `agent_id` the agent
    the event is about (offered, answering, handling, writing)."""

    context: ClassVar[str] = "interaction"

    status: InteractionStatus
    channel: values.Channel
    direction: values.Direction
    customer_id: UUID | None
    queue: str | None
    agent_id: UUID | None
    contact_reason: str | None

    #: Top-level fields holding personal data (module docstring); none unless a subclass says.
    personal_fields: ClassVar[frozenset[str]] = frozenset()

    def personal_data_subject(self) -> UUID:
        """Whose key seals the personal fields: the customer's, else the interaction's own."""
        return self.customer_id or self.originator_id

    def redacted(self) -> Self:
        """This event without personal data: what the bus carries, and what is read back once
        the key was destroyed."""
        return redacted_copy(self, self.personal_fields)

    def bus_attributes(self) -> dict[str, str]:
        attributes = {"channel": str(self.channel)}
        if self.customer_id is not None:
            attributes["customerid"] = str(self.customer_id)
        return attributes

    def _advance(self, state: Interaction, **changes: object) -> Interaction:
        return advance(
            state,
            self,
            status=self.status,
            customer_id=self.customer_id,
            queue=self.queue,
            contact_reason=self.contact_reason,
            **changes,
        )


class InteractionOpened(InteractionEvent, frozen=True, kw_only=True):
    case_id: UUID | None
    tags: tuple[str, ...]
    handled_by_bot: bool

    def mutate(self, state: Interaction | None) -> Interaction:
        return Interaction(
            id=self.originator_id,
            version=self.originator_version,
            created_on=self.timestamp,
            modified_on=self.timestamp,
            channel=self.channel,
            direction=self.direction,
            status=self.status,
            handled_by_bot=self.handled_by_bot,
            customer_id=self.customer_id,
            case_id=self.case_id,
            contact_reason=self.contact_reason,
            tags=self.tags,
        )


class CustomerIdentified(InteractionEvent, frozen=True, kw_only=True):
    previous_customer_id: UUID | None

    def apply(self, state: Interaction) -> Interaction:
        return self._advance(state)


class LinkedToCase(InteractionEvent, frozen=True, kw_only=True):
    case_id: UUID

    def apply(self, state: Interaction) -> Interaction:
        return self._advance(state, case_id=self.case_id)


class Queued(InteractionEvent, frozen=True, kw_only=True):
    requirements: RoutingRequirements
    queued_at: datetime
    waiting_since: datetime

    def apply(self, state: Interaction) -> Interaction:
        return self._advance(
            state,
            requirements=self.requirements,
            queued_at=self.queued_at,
            waiting_since=self.waiting_since,
        )


class Offered(InteractionEvent, frozen=True, kw_only=True):
    queued_at: datetime

    def apply(self, state: Interaction) -> Interaction:
        return self._advance(state, offered_at=self.timestamp, offered_agent_id=self.agent_id)


class OfferDeclined(InteractionEvent, frozen=True, kw_only=True):
    reason: DeclineReason
    queued_at: datetime
    waiting_since: datetime

    def apply(self, state: Interaction) -> Interaction:
        return self._advance(state, offered_agent_id=None)


class Answered(InteractionEvent, frozen=True, kw_only=True):
    queued_at: datetime
    first_answer: bool

    def apply(self, state: Interaction) -> Interaction:
        assert self.agent_id is not None
        agents = state.agents if self.agent_id in state.agents else (*state.agents, self.agent_id)
        return self._advance(
            state,
            agent_id=self.agent_id,
            agents=agents,
            offered_agent_id=None,
            answered_at=state.answered_at or self.timestamp,
        )


class PutOnHold(InteractionEvent, frozen=True, kw_only=True):
    def apply(self, state: Interaction) -> Interaction:
        return self._advance(state, hold_started_at=self.timestamp)


class Resumed(InteractionEvent, frozen=True, kw_only=True):
    held_seconds: float

    def apply(self, state: Interaction) -> Interaction:
        return self._advance(
            state, hold_started_at=None, hold_seconds=state.hold_seconds + self.held_seconds
        )


class MessageAdded(InteractionEvent, frozen=True, kw_only=True):
    personal_fields: ClassVar[frozenset[str]] = frozenset({"entry"})

    entry: TranscriptEntry
    #: The first public reply of an agent (first response time; bots do not count).
    first_agent_response: bool

    def apply(self, state: Interaction) -> Interaction:
        first_response = state.first_agent_response_at
        if self.first_agent_response:
            first_response = self.timestamp
        return self._advance(
            state,
            transcript=(*state.transcript, self.entry),
            first_agent_response_at=first_response,
        )


class Transferred(InteractionEvent, frozen=True, kw_only=True):
    personal_fields: ClassVar[frozenset[str]] = frozenset({"reason"})

    from_queue: str | None
    to_queue: str | None
    to_agent_id: UUID | None
    reason: str
    requirements: RoutingRequirements
    queued_at: datetime
    waiting_since: datetime
    #: Length of the hold the transfer ended (0 when it was not on hold).
    held_seconds: float

    def apply(self, state: Interaction) -> Interaction:
        return self._advance(
            state,
            requirements=self.requirements,
            agent_id=None,
            transfer_count=state.transfer_count + 1,
            hold_started_at=None,
            hold_seconds=state.hold_seconds + self.held_seconds,
        )


class Escalated(InteractionEvent, frozen=True, kw_only=True):
    personal_fields: ClassVar[frozenset[str]] = frozenset({"escalation"})

    escalation: Escalation

    def apply(self, state: Interaction) -> Interaction:
        return self._advance(state, escalations=(*state.escalations, self.escalation))


class WrapUpStarted(InteractionEvent, frozen=True, kw_only=True):
    answered_at: datetime | None
    held_seconds: float

    def apply(self, state: Interaction) -> Interaction:
        return self._advance(
            state,
            wrap_up_started_at=self.timestamp,
            hold_started_at=None,
            hold_seconds=state.hold_seconds + self.held_seconds,
        )


class Resolved(InteractionEvent, frozen=True, kw_only=True):
    personal_fields: ClassVar[frozenset[str]] = frozenset({"resolution"})

    resolution: str | None
    created_at: datetime
    answered_at: datetime | None
    wrap_up_started_at: datetime | None
    hold_seconds: float
    agents: tuple[UUID, ...]
    transfer_count: int
    escalation_count: int
    reopen_count: int
    first_resolution: bool

    def apply(self, state: Interaction) -> Interaction:
        return self._advance(
            state,
            resolution=self.resolution,
            resolved_at=self.timestamp,
            first_resolved_at=state.first_resolved_at or self.timestamp,
            resolved_by=self.agent_id,
            agent_id=None,
        )


class Reopened(InteractionEvent, frozen=True, kw_only=True):
    personal_fields: ClassVar[frozenset[str]] = frozenset({"reason"})

    reason: str | None
    requirements: RoutingRequirements
    waiting_since: datetime
    resolved_at: datetime | None

    def apply(self, state: Interaction) -> Interaction:
        return self._advance(
            state,
            requirements=self.requirements,
            waiting_since=self.waiting_since,
            reopen_count=state.reopen_count + 1,
            offered_agent_id=None,
        )


class Closed(InteractionEvent, frozen=True, kw_only=True):
    def apply(self, state: Interaction) -> Interaction:
        return self._advance(state, closed_at=self.timestamp)


class Abandoned(InteractionEvent, frozen=True, kw_only=True):
    queued_at: datetime
    waited_seconds: float

    def apply(self, state: Interaction) -> Interaction:
        return self._advance(state, abandoned_at=self.timestamp, offered_agent_id=None)


class BotContained(InteractionEvent, frozen=True, kw_only=True):
    personal_fields: ClassVar[frozenset[str]] = frozenset({"resolution"})

    resolution: str | None

    def apply(self, state: Interaction) -> Interaction:
        return self._advance(state, contained_at=self.timestamp, resolution=self.resolution)


class HandedOffToHuman(InteractionEvent, frozen=True, kw_only=True):
    personal_fields: ClassVar[frozenset[str]] = frozenset({"reason", "transcript"})

    reason: str
    requirements: RoutingRequirements
    #: The whole conversation with the bot, for the agent who takes over.
    transcript: tuple[TranscriptEntry, ...]
    queued_at: datetime
    waiting_since: datetime

    def apply(self, state: Interaction) -> Interaction:
        return self._advance(
            state,
            requirements=self.requirements,
            queued_at=self.queued_at,
            waiting_since=self.waiting_since,
            handed_off_at=self.timestamp,
        )


# --- idempotent creation --------------------------------------------------------------------


def request_key_id(operation: str, request_id: str) -> UUID:
    """The id of the key that records which aggregate `operation` with `request_id` made."""
    checked = values.required_text(request_id, "request_id", max_length=MAX_REQUEST_ID_LENGTH)
    return uuid5(REQUEST_KEY_NAMESPACE, f"{operation}:{checked}")


class InteractionRequestKey(Aggregate, frozen=True, kw_only=True):
    """What one idempotent creation request (`request_id`) created. Created once: a second
    creation in the store fails, so a retried request finds the first result."""

    operation: str
    target_id: UUID

    @classmethod
    def record(
        cls, operation: str, request_id: str, target_id: UUID, *, at: datetime
    ) -> InteractionRequestKeyRecorded:
        return InteractionRequestKeyRecorded(
            originator_id=request_key_id(operation, request_id),
            originator_version=1,
            timestamp=values.aware(at, "at"),
            operation=operation,
            target_id=target_id,
        )


class InteractionRequestKeyRecorded(Event[InteractionRequestKey], frozen=True, kw_only=True):
    context: ClassVar[str] = "interaction"

    operation: str
    target_id: UUID

    def mutate(self, state: InteractionRequestKey | None) -> InteractionRequestKey:
        return InteractionRequestKey(
            id=self.originator_id,
            version=self.originator_version,
            created_on=self.timestamp,
            modified_on=self.timestamp,
            operation=self.operation,
            target_id=self.target_id,
        )
