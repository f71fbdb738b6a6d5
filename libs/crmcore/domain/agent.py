"""The workforce side of routing: agents, what they can do, and what work asks of them.

An `Agent` has teams, skills with a proficiency 1–5, languages, a capacity per channel, a
presence, and the work items in hand (DOMAIN.md, "Agents and routing"). Commands check the
assignment rules (presence, capacity per channel, cross-channel exclusivity) and return events;
the pure queries (`free_capacity`, `can_take`, `load`, `proficiency`, `meets`) are what the
routing engine asks when it matches waiting work to agents.

The vocabulary both sides of a match share lives here too: skill names, language tags and
`Requirements` (skills with minimum levels, a language) that a queue or a piece of work asks
for. `AgentRequestKey` makes registration idempotent by `request_id` (an index aggregate
written in the same transaction as the agent's first event).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import ClassVar, Protocol
from uuid import NAMESPACE_URL, UUID, uuid5

import msgspec

from crmcore.domain import values
from crmcore.domain.base import Aggregate, Event, advance
from crmcore.domain.errors import AlreadyExists, InvalidValue, NotFound, RuleViolation
from crmcore.domain.values import Channel

MIN_LEVEL = 1
MAX_LEVEL = 5
MAX_SKILLS = 100
MAX_SKILL_NAME_LENGTH = 64
MAX_LANGUAGES = 20
MAX_CHANNEL_CAPACITY = 20
MAX_COOLDOWN = timedelta(days=1)
MAX_REQUEST_ID_LENGTH = 128

AGENT_REQUEST_NAMESPACE = uuid5(NAMESPACE_URL, "urn:crm:routing:agent-request-id")

#: Channels that take the whole agent: while one of their items is in hand nothing else is
#: assigned, and they are not assigned beside anything else. `exclusivity_conflict` is the rule.
EXCLUSIVE_CHANNELS: frozenset[Channel] = frozenset({Channel.PHONE, Channel.VIDEO})

_SKILL_NAME = re.compile(r"[a-z0-9][a-z0-9_.:-]{0,63}")


class Presence(enum.StrEnum):
    """What the agent says they are doing; only an available agent is given new work."""

    OFFLINE = "offline"
    AVAILABLE = "available"
    BUSY = "busy"
    BREAK = "break"
    AFTER_CALL_WORK = "after_call_work"


class PresenceReason(enum.StrEnum):
    """Why presence changed: the agent (or a supervisor) asked, or too many offers were missed."""

    REQUESTED = "requested"
    MISSED_OFFERS = "missed_offers"


class OfferMissReason(enum.StrEnum):
    REJECTED = "rejected"
    TIMEOUT = "timeout"


class Skill(msgspec.Struct, frozen=True, kw_only=True):
    """A skill the agent has (`billing`), with a proficiency from 1 (novice) to 5 (expert)."""

    name: str
    level: int


class SkillRequirement(msgspec.Struct, frozen=True, kw_only=True):
    """A skill that work needs, at `min_level` or better."""

    skill: str
    min_level: int


class Requirements(msgspec.Struct, frozen=True, kw_only=True):
    """What an agent needs to take some work: every skill at its minimum level, and the
    language if one is given (None: any language)."""

    skills: tuple[SkillRequirement, ...] = ()
    language: str | None = None

    def min_level(self, skill: str) -> int:
        """The minimum level asked for `skill`, 0 if it is not asked for."""
        for requirement in self.skills:
            if requirement.skill == skill:
                return requirement.min_level
        return 0


class SkillAsked(Protocol):
    """Anything that asks for a skill at a minimum level (a queue's or an interaction's)."""

    @property
    def skill(self) -> str: ...

    @property
    def min_level(self) -> int: ...


class RequirementsAsked(Protocol):
    """Anything that asks for skills and a language: `Requirements` here, or the routing
    requirements an interaction is queued with, so `Agent.meets` takes either."""

    @property
    def skills(self) -> Sequence[SkillAsked]: ...

    @property
    def language(self) -> str | None: ...


class Capacity(msgspec.Struct, frozen=True, kw_only=True):
    """How many items of each channel the agent works at the same time; 0 = not that channel.

    One field per `values.Channel` (a test checks they stay in step), so the payload reads
    `{"phone": 1, "chat": 3, "email": 5, ...}`.
    """

    phone: int = 0
    email: int = 0
    chat: int = 0
    sms: int = 0
    messaging: int = 0
    social: int = 0
    video: int = 0
    web_form: int = 0
    self_service: int = 0
    chatbot: int = 0

    def limit(self, channel: Channel) -> int:
        limit: int = getattr(self, str(channel))
        return limit

    def channels(self) -> tuple[Channel, ...]:
        """The channels the agent takes (capacity above 0), in `Channel` order."""
        return tuple(channel for channel in Channel if self.limit(channel) > 0)


class WorkItem(msgspec.Struct, frozen=True, kw_only=True):
    """One piece of work (an interaction) the agent has in hand, and its channel."""

    work_id: UUID
    channel: Channel


# --- validation of raw values ------------------------------------------------------------------


def _at(at: datetime) -> datetime:
    return values.aware(at, "at").astimezone(UTC)


def skill_name(value: str, field: str) -> str:
    """A skill name as stored and matched: trimmed, lower-case, a short identifier
    (`billing`, `product.router-x`), the same rule interactions' requirements follow."""
    name = value.strip().lower()
    if not _SKILL_NAME.fullmatch(name):
        raise InvalidValue(
            field,
            f"{value!r} is not a skill name: up to {MAX_SKILL_NAME_LENGTH} lower-case letters, "
            "digits and _ . : - starting with a letter or digit",
        )
    return name


def level(value: int, field: str) -> int:
    """A proficiency level, 1 (novice) to 5 (expert)."""
    return values.score(value, field, low=MIN_LEVEL, high=MAX_LEVEL)


def language_matches(spoken: str, wanted: str) -> bool:
    """Whether an agent speaking `spoken` serves work in `wanted`: the same tag, or one is a
    more general form of the other (`en` serves `en-US`; `en-US` serves `en`; `en-GB` does
    not serve `en-US`)."""
    return spoken == wanted or spoken.startswith(wanted + "-") or wanted.startswith(spoken + "-")


def check_skills(raw: Sequence[Skill], field: str = "skills") -> tuple[Skill, ...]:
    """Skills with checked names and levels, unique by name, sorted by name."""
    if len(raw) > MAX_SKILLS:
        raise InvalidValue(field, f"more than {MAX_SKILLS} skills")
    seen: dict[str, int] = {}
    checked: list[Skill] = []
    for index, skill in enumerate(raw):
        name = skill_name(skill.name, f"{field}[{index}].name")
        if name in seen:
            raise InvalidValue(
                f"{field}[{index}].name", f"duplicate skill {name!r} (also {field}[{seen[name]}])"
            )
        seen[name] = index
        checked.append(Skill(name=name, level=level(skill.level, f"{field}[{index}].level")))
    return tuple(sorted(checked, key=lambda skill: skill.name))


def check_languages(raw: Sequence[str], field: str = "languages") -> tuple[str, ...]:
    """Language tags in the agent's order of preference, unique."""
    if len(raw) > MAX_LANGUAGES:
        raise InvalidValue(field, f"more than {MAX_LANGUAGES} languages")
    seen: dict[str, int] = {}
    for index, value in enumerate(raw):
        tag = values.language_tag(value, f"{field}[{index}]")
        if tag in seen:
            raise InvalidValue(
                f"{field}[{index}]", f"duplicate language {tag!r} (also {field}[{seen[tag]}])"
            )
        seen[tag] = index
    return tuple(seen)


def check_teams(raw: Sequence[str], field: str = "teams") -> tuple[str, ...]:
    """Team names: trimmed, lower-case, unique (matched by overflow pools)."""
    return values.tags(tuple(raw), field)


def check_capacity(raw: Capacity | Mapping[str, int], field: str = "capacity") -> Capacity:
    """A capacity from a struct or a mapping (`{"phone": 1, "chat": 3}`; missing channels 0).

    Limits are 0 to MAX_CHANNEL_CAPACITY; an exclusive channel takes at most 1, because nothing
    else (not even a second item of its own channel) is assigned beside it."""
    given = msgspec.structs.asdict(raw) if isinstance(raw, Capacity) else dict(raw)
    limits: dict[str, int] = {}
    for key, limit in given.items():
        channel = values.enum_value(Channel, str(key), f"{field}.{key}")
        high = 1 if channel in EXCLUSIVE_CHANNELS else MAX_CHANNEL_CAPACITY
        if not 0 <= limit <= high:
            why = " because it is exclusive" if channel in EXCLUSIVE_CHANNELS else ""
            raise InvalidValue(
                f"{field}.{channel}", f"must be between 0 and {high}{why}, got {limit}"
            )
        limits[channel.value] = limit
    return Capacity(**limits)


def check_requirements(raw: Requirements, field: str = "requirements") -> Requirements:
    """Requirements with checked skill names and levels (unique skills) and language."""
    if len(raw.skills) > MAX_SKILLS:
        raise InvalidValue(f"{field}.skills", f"more than {MAX_SKILLS} skills")
    seen: dict[str, int] = {}
    checked: list[SkillRequirement] = []
    for index, requirement in enumerate(raw.skills):
        where = f"{field}.skills[{index}]"
        name = skill_name(requirement.skill, f"{where}.skill")
        if name in seen:
            raise InvalidValue(
                f"{where}.skill", f"duplicate skill {name!r} (also {field}.skills[{seen[name]}])"
            )
        seen[name] = index
        checked.append(
            SkillRequirement(
                skill=name, min_level=level(requirement.min_level, f"{where}.min_level")
            )
        )
    language = (
        None if raw.language is None else values.language_tag(raw.language, f"{field}.language")
    )
    return Requirements(skills=tuple(checked), language=language)


def exclusivity_conflict(held: Iterable[Channel], channel: Channel) -> str | None:
    """Why an item on `channel` cannot join work on the `held` channels, or None if it can.

    The one place that says what cross-channel exclusivity means: while an exclusive item is
    in hand nothing else is assigned, and an exclusive item is not assigned beside any other.
    """
    in_hand = tuple(held)
    exclusive = [held_channel for held_channel in in_hand if held_channel in EXCLUSIVE_CHANNELS]
    if exclusive:
        return (
            f"the agent is on an exclusive {exclusive[0]} item; nothing else is assigned beside it"
        )
    if channel in EXCLUSIVE_CHANNELS and in_hand:
        others = ", ".join(sorted({str(held_channel) for held_channel in in_hand}))
        return f"{channel} is exclusive and the agent has other work in hand ({others})"
    return None


# --- the aggregate -----------------------------------------------------------------------------


class Agent(Aggregate, frozen=True, kw_only=True):
    """A person who handles work: who they are, what they can do, and what they are doing.

    `idle_since` is set while the agent is available with nothing in hand (from the moment
    that became true) and None otherwise. `missed_offers` counts offers missed since the agent
    last took work or came back to available; `cooldown_until` holds new offers back.
    """

    display_name: str
    teams: tuple[str, ...]
    skills: tuple[Skill, ...]
    languages: tuple[str, ...]
    capacity: Capacity
    presence: Presence
    presence_since: datetime
    idle_since: datetime | None
    work: tuple[WorkItem, ...]
    missed_offers: int
    cooldown_until: datetime | None

    # --- queries the routing engine asks ---

    def items_on(self, channel: Channel) -> int:
        """How many items of `channel` the agent has in hand."""
        return sum(1 for item in self.work if item.channel == channel)

    def holds(self, work_id: UUID) -> bool:
        return any(item.work_id == work_id for item in self.work)

    def free_capacity(self, channel: Channel) -> int:
        """How many more items of `channel` the agent could take now, by capacity and
        exclusivity alone (presence and cooldown are `can_take`'s business)."""
        if exclusivity_conflict((item.channel for item in self.work), channel) is not None:
            return 0
        return max(0, self.capacity.limit(channel) - self.items_on(channel))

    def cooling_down(self, at: datetime) -> bool:
        return self.cooldown_until is not None and at < self.cooldown_until

    def can_take(self, channel: Channel, at: datetime) -> bool:
        """Whether the agent may be offered an item of `channel` at `at`: available, not
        cooling down after a missed offer, with free capacity on that channel."""
        return (
            self.presence is Presence.AVAILABLE
            and not self.cooling_down(at)
            and self.free_capacity(channel) > 0
        )

    def load(self) -> float:
        """How busy the agent is, 0.0 (nothing in hand) to 1.0 (full), capacity-weighted.

        The mean over the channels the agent takes (or has work on) of items / capacity on
        that channel, each capped at 1; an exclusive item in hand makes the agent full.
        """
        if any(item.channel in EXCLUSIVE_CHANNELS for item in self.work):
            return 1.0
        fractions: list[float] = []
        for channel in Channel:
            limit = self.capacity.limit(channel)
            items = self.items_on(channel)
            if limit > 0:
                fractions.append(min(1.0, items / limit))
            elif items > 0:  # capacity was lowered to 0 while work was in hand
                fractions.append(1.0)
        return sum(fractions) / len(fractions) if fractions else 0.0

    def proficiency(self, skill: str) -> int:
        """The agent's level in `skill`, 0 if the agent does not have it."""
        wanted = skill.strip().lower()
        for own in self.skills:
            if own.name == wanted:
                return own.level
        return 0

    def speaks(self, language: str) -> bool:
        return any(language_matches(spoken, language) for spoken in self.languages)

    def belongs_to(self, team: str) -> bool:
        return team.strip().lower() in self.teams

    def meets(self, requirements: RequirementsAsked) -> bool:
        """Whether the agent has every required skill at its level and the language."""
        if requirements.language is not None and not self.speaks(requirements.language):
            return False
        return all(
            self.proficiency(requirement.skill) >= requirement.min_level
            for requirement in requirements.skills
        )

    # --- commands ---

    @classmethod
    def register(
        cls,
        agent_id: UUID,
        *,
        display_name: str,
        teams: Sequence[str] = (),
        skills: Sequence[Skill] = (),
        languages: Sequence[str] = (),
        capacity: Capacity | Mapping[str, int] | None = None,
        at: datetime,
    ) -> AgentRegistered:
        """A new agent, offline, with nothing in hand."""
        return AgentRegistered(
            originator_id=agent_id,
            originator_version=1,
            timestamp=_at(at),
            display_name=values.name(display_name, "display_name"),
            teams=check_teams(teams),
            skills=check_skills(skills),
            languages=check_languages(languages),
            capacity=check_capacity(Capacity() if capacity is None else capacity),
        )

    def update_profile(
        self,
        *,
        display_name: str | None = None,
        teams: Sequence[str] | None = None,
        languages: Sequence[str] | None = None,
        at: datetime,
    ) -> tuple[AgentProfileUpdated, ...]:
        """Changes name, teams and languages (None: unchanged); nothing if nothing changes."""
        new_name = (
            self.display_name if display_name is None else values.name(display_name, "display_name")
        )
        new_teams = self.teams if teams is None else check_teams(teams)
        new_languages = self.languages if languages is None else check_languages(languages)
        timestamp = _at(at)
        if (new_name, new_teams, new_languages) == (self.display_name, self.teams, self.languages):
            return ()
        return (
            AgentProfileUpdated(
                originator_id=self.id,
                originator_version=self.version + 1,
                timestamp=timestamp,
                display_name=new_name,
                teams=new_teams,
                languages=new_languages,
            ),
        )

    def change_skills(
        self, skills: Sequence[Skill], *, at: datetime
    ) -> tuple[AgentSkillsChanged, ...]:
        """Replaces the agent's skills; nothing if they are the same."""
        new_skills = check_skills(skills)
        timestamp = _at(at)
        if new_skills == self.skills:
            return ()
        return (
            AgentSkillsChanged(
                originator_id=self.id,
                originator_version=self.version + 1,
                timestamp=timestamp,
                skills=new_skills,
            ),
        )

    def change_capacity(
        self, capacity: Capacity | Mapping[str, int], *, at: datetime
    ) -> tuple[AgentCapacityChanged, ...]:
        """Replaces the capacity; work already in hand stays even above a lowered capacity
        (no new work arrives until the agent is below it again)."""
        new_capacity = check_capacity(capacity)
        timestamp = _at(at)
        if new_capacity == self.capacity:
            return ()
        return (
            AgentCapacityChanged(
                originator_id=self.id,
                originator_version=self.version + 1,
                timestamp=timestamp,
                capacity=new_capacity,
            ),
        )

    def set_presence(
        self, presence: Presence | str, *, at: datetime
    ) -> tuple[AgentPresenceChanged, ...]:
        """Moves the agent to `presence`; nothing if already there. Going offline with work in
        hand is refused: work never sits with an offline agent."""
        to = values.enum_value(Presence, presence, "presence")
        timestamp = _at(at)
        if to is self.presence:
            return ()
        if to is Presence.OFFLINE and self.work:
            raise RuleViolation(
                f"agent {self.id} has {len(self.work)} work item(s) in hand; finish or release "
                "them before going offline"
            )
        return (self._presence_changed(to, PresenceReason.REQUESTED, self.version + 1, timestamp),)

    def assign_work(
        self, work_id: UUID, channel: Channel | str, *, at: datetime
    ) -> AgentWorkAssigned:
        """Gives the agent an item of work (the offer was accepted).

        Only an available agent with free capacity on the channel, within cross-channel
        exclusivity, gets work; the same work is never assigned twice."""
        on = values.enum_value(Channel, channel, "channel")
        timestamp = _at(at)
        if self.holds(work_id):
            raise AlreadyExists(f"work {work_id} is already assigned to agent {self.id}")
        if self.presence is not Presence.AVAILABLE:
            raise RuleViolation(
                f"agent {self.id} is {self.presence}, not available; work is assigned only to "
                "available agents"
            )
        limit = self.capacity.limit(on)
        if limit == 0:
            raise RuleViolation(f"agent {self.id} does not take {on} work (capacity 0)")
        conflict = exclusivity_conflict((item.channel for item in self.work), on)
        if conflict is not None:
            raise RuleViolation(f"agent {self.id} cannot take {on} work: {conflict}")
        in_hand = self.items_on(on)
        if in_hand >= limit:
            raise RuleViolation(
                f"agent {self.id} already has {in_hand} of {limit} {on} items; no free capacity"
            )
        return AgentWorkAssigned(
            originator_id=self.id,
            originator_version=self.version + 1,
            timestamp=timestamp,
            work_id=work_id,
            channel=on,
        )

    def release_work(self, work_id: UUID, *, at: datetime) -> AgentWorkReleased:
        """Takes an item of work off the agent (finished, transferred, or taken back)."""
        timestamp = _at(at)
        if not self.holds(work_id):
            raise NotFound(f"work item of agent {self.id}", work_id)
        return AgentWorkReleased(
            originator_id=self.id,
            originator_version=self.version + 1,
            timestamp=timestamp,
            work_id=work_id,
        )

    def miss_offer(
        self,
        work_id: UUID,
        *,
        reason: OfferMissReason | str,
        cooldown: timedelta,
        max_misses: int | None = None,
        at: datetime,
    ) -> tuple[AgentOfferMissed] | tuple[AgentOfferMissed, AgentPresenceChanged]:
        """Records an offer the agent rejected or let time out, holding new offers back until
        `at + cooldown`. With `max_misses` (the queue's max-miss rule), reaching that many
        misses also takes an available agent off to break ("away")."""
        why = values.enum_value(OfferMissReason, reason, "reason")
        timestamp = _at(at)
        if not timedelta(0) <= cooldown <= MAX_COOLDOWN:
            raise InvalidValue("cooldown", f"must be between 0 and {MAX_COOLDOWN}, got {cooldown}")
        if max_misses is not None:
            values.score(max_misses, "max_misses", low=1, high=1_000)
        if self.holds(work_id):
            raise RuleViolation(
                f"agent {self.id} has work {work_id} in hand; an offer of it cannot be missed"
            )
        missed = AgentOfferMissed(
            originator_id=self.id,
            originator_version=self.version + 1,
            timestamp=timestamp,
            work_id=work_id,
            reason=why,
            missed_offers=self.missed_offers + 1,
            cooldown_until=timestamp + cooldown,
        )
        if (
            max_misses is not None
            and missed.missed_offers >= max_misses
            and self.presence is Presence.AVAILABLE
        ):
            away = self._presence_changed(
                Presence.BREAK, PresenceReason.MISSED_OFFERS, self.version + 2, timestamp
            )
            return (missed, away)
        return (missed,)

    def clear_cooldown(self, *, at: datetime) -> tuple[AgentCooldownCleared, ...]:
        """Lets offers reach the agent again now; nothing if there is no cooldown."""
        timestamp = _at(at)
        if self.cooldown_until is None:
            return ()
        return (
            AgentCooldownCleared(
                originator_id=self.id, originator_version=self.version + 1, timestamp=timestamp
            ),
        )

    def _presence_changed(
        self, to: Presence, reason: PresenceReason, version: int, timestamp: datetime
    ) -> AgentPresenceChanged:
        return AgentPresenceChanged(
            originator_id=self.id,
            originator_version=version,
            timestamp=timestamp,
            from_presence=self.presence,
            to_presence=to,
            reason=reason,
        )


# --- events ------------------------------------------------------------------------------------


class AgentEvent(Event[Agent], frozen=True, kw_only=True):
    context: ClassVar[str] = "routing"

    def bus_attributes(self) -> dict[str, str]:
        return {"agentid": str(self.originator_id)}


class AgentRegistered(AgentEvent, frozen=True, kw_only=True):
    display_name: str
    teams: tuple[str, ...]
    skills: tuple[Skill, ...]
    languages: tuple[str, ...]
    capacity: Capacity

    def mutate(self, state: Agent | None) -> Agent:
        return Agent(
            id=self.originator_id,
            version=self.originator_version,
            created_on=self.timestamp,
            modified_on=self.timestamp,
            display_name=self.display_name,
            teams=self.teams,
            skills=self.skills,
            languages=self.languages,
            capacity=self.capacity,
            presence=Presence.OFFLINE,
            presence_since=self.timestamp,
            idle_since=None,
            work=(),
            missed_offers=0,
            cooldown_until=None,
        )


class AgentProfileUpdated(AgentEvent, frozen=True, kw_only=True):
    display_name: str
    teams: tuple[str, ...]
    languages: tuple[str, ...]

    def apply(self, state: Agent) -> Agent:
        return advance(
            state, self, display_name=self.display_name, teams=self.teams, languages=self.languages
        )


class AgentSkillsChanged(AgentEvent, frozen=True, kw_only=True):
    skills: tuple[Skill, ...]

    def apply(self, state: Agent) -> Agent:
        return advance(state, self, skills=self.skills)


class AgentCapacityChanged(AgentEvent, frozen=True, kw_only=True):
    capacity: Capacity

    def apply(self, state: Agent) -> Agent:
        return advance(state, self, capacity=self.capacity)


class AgentPresenceChanged(AgentEvent, frozen=True, kw_only=True):
    from_presence: Presence
    to_presence: Presence
    reason: PresenceReason = PresenceReason.REQUESTED

    def apply(self, state: Agent) -> Agent:
        available = self.to_presence is Presence.AVAILABLE
        return advance(
            state,
            self,
            presence=self.to_presence,
            presence_since=self.timestamp,
            idle_since=self.timestamp if available and not state.work else None,
            # Coming back to available starts a fresh run of offers.
            missed_offers=0 if available else state.missed_offers,
        )


class AgentWorkAssigned(AgentEvent, frozen=True, kw_only=True):
    work_id: UUID
    channel: Channel

    def apply(self, state: Agent) -> Agent:
        return advance(
            state,
            self,
            work=(*state.work, WorkItem(work_id=self.work_id, channel=self.channel)),
            idle_since=None,
            missed_offers=0,  # taking work ends a run of missed offers
        )


class AgentWorkReleased(AgentEvent, frozen=True, kw_only=True):
    work_id: UUID

    def apply(self, state: Agent) -> Agent:
        remaining = tuple(item for item in state.work if item.work_id != self.work_id)
        now_idle = not remaining and state.presence is Presence.AVAILABLE
        return advance(
            state,
            self,
            work=remaining,
            idle_since=self.timestamp if now_idle else state.idle_since,
        )


class AgentOfferMissed(AgentEvent, frozen=True, kw_only=True):
    work_id: UUID
    reason: OfferMissReason
    missed_offers: int
    cooldown_until: datetime

    def apply(self, state: Agent) -> Agent:
        return advance(
            state, self, missed_offers=self.missed_offers, cooldown_until=self.cooldown_until
        )


class AgentCooldownCleared(AgentEvent, frozen=True, kw_only=True):
    def apply(self, state: Agent) -> Agent:
        return advance(state, self, cooldown_until=None)


# --- idempotent registration -------------------------------------------------------------------


def request_key_id(request_id: str) -> UUID:
    """The id of the `AgentRequestKey` of a registration's `request_id`."""
    checked = values.required_text(request_id, "request_id", max_length=MAX_REQUEST_ID_LENGTH)
    return uuid5(AGENT_REQUEST_NAMESPACE, checked)


class AgentRequestKey(Aggregate, frozen=True, kw_only=True):
    """The agent that the registration with one `request_id` created. Created once: a second
    creation in the store fails, so a retried request finds the first result."""

    agent_id: UUID

    @classmethod
    def record(cls, request_id: str, agent_id: UUID, *, at: datetime) -> AgentRequestKeyRecorded:
        return AgentRequestKeyRecorded(
            originator_id=request_key_id(request_id),
            originator_version=1,
            timestamp=_at(at),
            agent_id=agent_id,
        )


class AgentRequestKeyRecorded(Event[AgentRequestKey], frozen=True, kw_only=True):
    context: ClassVar[str] = "routing"

    agent_id: UUID

    def bus_attributes(self) -> dict[str, str]:
        return {"agentid": str(self.agent_id)}

    def mutate(self, state: AgentRequestKey | None) -> AgentRequestKey:
        return AgentRequestKey(
            id=self.originator_id,
            version=self.originator_version,
            created_on=self.timestamp,
            modified_on=self.timestamp,
            agent_id=self.agent_id,
        )
