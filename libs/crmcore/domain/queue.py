"""Queues: where work waits for an agent, and how far its requirements widen while it waits.

A `Queue` has a unique name, the channels it serves, base `Requirements`, a priority, a
service-level target, an offer timeout, a max-miss rule, overflow queues, and routing steps
that widen the requirements as the wait grows (require level ≥4 → ≥2 → drop a skill → add an
overflow pool → call-back or bot; DOMAIN.md, "Agents and routing"). `effective_requirements`
is the pure answer the routing engine needs for one piece of work: what it asks now.

Routing step actions are a tagged union of small frozen structs, so they encode as
`{"type": "set_min_level", "skill": "billing", "level": 2}` in JSON and MessagePack alike.
`QueueNameClaim` keeps names unique in the store (an index aggregate whose id derives from the
lower-cased name, written in the same transaction as the queue's first event).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import ClassVar, NamedTuple, TypeAlias, TypeVar
from uuid import NAMESPACE_URL, UUID, uuid5

import msgspec

from crmcore.domain import values
from crmcore.domain.agent import Requirements as Requirements
from crmcore.domain.agent import SkillRequirement as SkillRequirement
from crmcore.domain.agent import check_requirements, level, skill_name
from crmcore.domain.base import Aggregate, Event, advance
from crmcore.domain.errors import InvalidValue, RuleViolation
from crmcore.domain.values import Channel

MAX_QUEUE_NAME_LENGTH = 100
MAX_CHANNELS = len(Channel)
MAX_PRIORITY = 100
MAX_ROUTING_STEPS = 20
MAX_OVERFLOW_QUEUES = 20
MAX_WAIT_SECONDS = 30 * 24 * 3600  # e-mail queues measure in days, not seconds
MAX_OFFER_TIMEOUT_SECONDS = 24 * 3600
MAX_MISSES = 100

QUEUE_NAME_NAMESPACE = uuid5(NAMESPACE_URL, "urn:crm:routing:queue-name")

_T = TypeVar("_T")


class ServiceLevelTarget(msgspec.Struct, frozen=True, kw_only=True):
    """`fraction` of the work answered within `threshold_seconds` (0.8 in 20 s)."""

    fraction: float = 0.8
    threshold_seconds: int = 20


class PoolKind(enum.StrEnum):
    TEAM = "team"
    QUEUE = "queue"


class FallbackKind(enum.StrEnum):
    CALLBACK = "callback"
    BOT = "bot"


class OverflowPool(msgspec.Struct, frozen=True, kw_only=True):
    """More agents to consider: the members of a team (`Agent.belongs_to`), or the agents who
    serve another queue (those meeting that queue's requirements on its channels)."""

    kind: PoolKind
    name: str


class SetMinLevel(msgspec.Struct, frozen=True, kw_only=True, tag="set_min_level"):
    """Asks `skill` (already required) at `level` from now on; lower widens, higher narrows."""

    skill: str
    level: int


class DropSkill(msgspec.Struct, frozen=True, kw_only=True, tag="drop_skill"):
    """Stops requiring `skill`."""

    skill: str


class AddOverflowPool(msgspec.Struct, frozen=True, kw_only=True, tag="add_overflow_pool"):
    """Considers the agents of `pool` as well."""

    pool: OverflowPool


class Fallback(msgspec.Struct, frozen=True, kw_only=True, tag="fallback"):
    """Offers the customer a call-back, or hands the work to a bot."""

    to: FallbackKind


RoutingAction: TypeAlias = SetMinLevel | DropSkill | AddOverflowPool | Fallback


class RoutingStep(msgspec.Struct, frozen=True, kw_only=True):
    """Once work has waited `after_seconds`, `action` applies (and stays applied)."""

    after_seconds: int
    action: RoutingAction


class EffectiveRouting(NamedTuple):
    """What work asks after some wait: requirements, extra pools of agents, and the
    fallback to offer (None: keep waiting for an agent)."""

    requirements: Requirements
    extra_pools: tuple[OverflowPool, ...]
    fallback: FallbackKind | None


# --- validation of raw values ------------------------------------------------------------------


def _at(at: datetime) -> datetime:
    return values.aware(at, "at").astimezone(UTC)


def queue_name(value: str, field: str = "name") -> str:
    """A queue name: trimmed, single-spaced, bounded; compared without regard to case."""
    checked = values.required_text(value, field, max_length=MAX_QUEUE_NAME_LENGTH)
    return " ".join(checked.split())


def name_claim_id(name: str) -> UUID:
    """The id of the `QueueNameClaim` of a queue name (case does not matter)."""
    return uuid5(QUEUE_NAME_NAMESPACE, queue_name(name).lower())


def check_channels(raw: Sequence[Channel | str], field: str = "channels") -> tuple[Channel, ...]:
    if not raw:
        raise InvalidValue(field, "a queue serves at least one channel")
    if len(raw) > MAX_CHANNELS:
        raise InvalidValue(field, f"more than {MAX_CHANNELS} channels")
    seen: dict[Channel, int] = {}
    for index, value in enumerate(raw):
        channel = values.enum_value(Channel, value, f"{field}[{index}]")
        if channel in seen:
            raise InvalidValue(
                f"{field}[{index}]", f"duplicate channel {channel} (also {field}[{seen[channel]}])"
            )
        seen[channel] = index
    return tuple(seen)


def check_service_level(
    raw: ServiceLevelTarget, field: str = "service_level"
) -> ServiceLevelTarget:
    fraction = float(raw.fraction)
    if not 0.0 <= fraction <= 1.0:  # also refuses NaN
        raise InvalidValue(f"{field}.fraction", f"must be between 0 and 1, got {raw.fraction}")
    threshold = values.score(
        raw.threshold_seconds, f"{field}.threshold_seconds", low=1, high=MAX_WAIT_SECONDS
    )
    return ServiceLevelTarget(fraction=fraction, threshold_seconds=threshold)


def check_overflow_queues(
    raw: Sequence[str], own_name: str, field: str = "overflow_queues"
) -> tuple[str, ...]:
    if len(raw) > MAX_OVERFLOW_QUEUES:
        raise InvalidValue(field, f"more than {MAX_OVERFLOW_QUEUES} overflow queues")
    seen: dict[str, int] = {}
    checked: list[str] = []
    for index, value in enumerate(raw):
        where = f"{field}[{index}]"
        name = queue_name(value, where)
        key = name.lower()
        if key == own_name.lower():
            raise InvalidValue(where, "a queue does not overflow into itself")
        if key in seen:
            raise InvalidValue(where, f"duplicate queue {name!r} (also {field}[{seen[key]}])")
        seen[key] = index
        checked.append(name)
    return tuple(checked)


def check_routing_steps(
    raw: Sequence[RoutingStep],
    requirements: Requirements,
    own_name: str,
    field: str = "routing_steps",
) -> tuple[RoutingStep, ...]:
    """Steps in strictly increasing `after_seconds`, each action valid where it stands:
    `set_min_level` and `drop_skill` name a skill still required at that step."""
    if len(raw) > MAX_ROUTING_STEPS:
        raise InvalidValue(field, f"more than {MAX_ROUTING_STEPS} routing steps")
    required = {requirement.skill: requirement.min_level for requirement in requirements.skills}
    checked: list[RoutingStep] = []
    for index, step in enumerate(raw):
        where = f"{field}[{index}]"
        after = values.score(
            step.after_seconds, f"{where}.after_seconds", low=0, high=MAX_WAIT_SECONDS
        )
        if checked and after <= checked[-1].after_seconds:
            raise InvalidValue(
                f"{where}.after_seconds",
                f"steps must be in increasing after_seconds; {after} does not come after "
                f"{field}[{index - 1}].after_seconds ({checked[-1].after_seconds})",
            )
        action = _check_action(step.action, required, own_name, f"{where}.action")
        checked.append(RoutingStep(after_seconds=after, action=action))
    return tuple(checked)


def _check_action(
    action: RoutingAction, required: dict[str, int], own_name: str, field: str
) -> RoutingAction:
    """The checked action; `required` (skill → level at this step) is moved on past it."""
    if isinstance(action, SetMinLevel):
        skill = _required_skill(action.skill, required, f"{field}.skill")
        required[skill] = level(action.level, f"{field}.level")
        return SetMinLevel(skill=skill, level=required[skill])
    if isinstance(action, DropSkill):
        skill = _required_skill(action.skill, required, f"{field}.skill")
        del required[skill]
        return DropSkill(skill=skill)
    if isinstance(action, AddOverflowPool):
        kind = values.enum_value(PoolKind, action.pool.kind, f"{field}.pool.kind")
        if kind is PoolKind.TEAM:
            pool_name = values.tags((action.pool.name,), f"{field}.pool.name")[0]
        else:
            pool_name = queue_name(action.pool.name, f"{field}.pool.name")
            if pool_name.lower() == own_name.lower():
                raise InvalidValue(f"{field}.pool.name", "a queue does not overflow into itself")
        return AddOverflowPool(pool=OverflowPool(kind=kind, name=pool_name))
    if isinstance(action, Fallback):
        return Fallback(to=values.enum_value(FallbackKind, action.to, f"{field}.to"))
    raise InvalidValue(field, f"unknown routing action {type(action).__name__}")


def _required_skill(raw: str, required: dict[str, int], field: str) -> str:
    skill = skill_name(raw, field)
    if skill not in required:
        raise InvalidValue(field, f"skill {skill!r} is not required at this step")
    return skill


# --- the aggregate -----------------------------------------------------------------------------


class Queue(Aggregate, frozen=True, kw_only=True):
    """A named place where work of some channels waits for agents who meet its requirements.

    `overflow_queues` name queues whose agents may take this queue's work (the engine decides
    when, e.g. on a service-level risk); `max_misses` is how many missed offers in a row take
    an agent away. The name is the queue's key and does not change; an archived queue keeps it.
    """

    name: str
    channels: tuple[Channel, ...]
    requirements: Requirements
    priority: int
    service_level: ServiceLevelTarget
    offer_timeout_seconds: int
    max_misses: int
    overflow_queues: tuple[str, ...]
    routing_steps: tuple[RoutingStep, ...]
    archived: bool = False

    # --- queries ---

    def serves(self, channel: Channel) -> bool:
        return channel in self.channels

    def effective_requirements(self, waited_seconds: float) -> EffectiveRouting:
        """Requirements, extra pools and fallback after `waited_seconds` of waiting: the base
        requirements with every step whose `after_seconds` has been reached applied in order."""
        if not waited_seconds >= 0:
            raise InvalidValue("waited_seconds", f"must not be negative, got {waited_seconds}")
        levels = {
            requirement.skill: requirement.min_level for requirement in self.requirements.skills
        }
        pools: list[OverflowPool] = []
        fallback: FallbackKind | None = None
        for step in self.routing_steps:
            if step.after_seconds > waited_seconds:
                break
            action = step.action
            if isinstance(action, SetMinLevel):
                if action.skill in levels:
                    levels[action.skill] = action.level
            elif isinstance(action, DropSkill):
                levels.pop(action.skill, None)
            elif isinstance(action, AddOverflowPool):
                if action.pool not in pools:
                    pools.append(action.pool)
            else:
                fallback = action.to
        requirements = Requirements(
            skills=tuple(
                SkillRequirement(skill=skill, min_level=min_level)
                for skill, min_level in levels.items()
            ),
            language=self.requirements.language,
        )
        return EffectiveRouting(requirements, tuple(pools), fallback)

    # --- commands ---

    @classmethod
    def create(
        cls,
        queue_id: UUID,
        *,
        name: str,
        channels: Sequence[Channel | str],
        requirements: Requirements | None = None,
        priority: int = 0,
        service_level: ServiceLevelTarget | None = None,
        offer_timeout_seconds: int = 30,
        max_misses: int = 3,
        overflow_queues: Sequence[str] = (),
        routing_steps: Sequence[RoutingStep] = (),
        at: datetime,
    ) -> QueueCreated:
        checked_name = queue_name(name)
        checked_requirements = check_requirements(requirements or Requirements())
        return QueueCreated(
            originator_id=queue_id,
            originator_version=1,
            timestamp=_at(at),
            name=checked_name,
            channels=check_channels(channels),
            requirements=checked_requirements,
            priority=_priority(priority),
            service_level=check_service_level(service_level or ServiceLevelTarget()),
            offer_timeout_seconds=_offer_timeout(offer_timeout_seconds),
            max_misses=_max_misses(max_misses),
            overflow_queues=check_overflow_queues(overflow_queues, checked_name),
            routing_steps=check_routing_steps(routing_steps, checked_requirements, checked_name),
        )

    def update(
        self,
        *,
        channels: Sequence[Channel | str] | None = None,
        requirements: Requirements | None = None,
        priority: int | None = None,
        service_level: ServiceLevelTarget | None = None,
        offer_timeout_seconds: int | None = None,
        max_misses: int | None = None,
        overflow_queues: Sequence[str] | None = None,
        at: datetime,
    ) -> tuple[QueueUpdated, ...]:
        """Changes the given settings (None: unchanged); the event carries only the ones that
        really change, and nothing is returned when none does."""
        new_channels = None if channels is None else check_channels(channels)
        new_requirements = None if requirements is None else check_requirements(requirements)
        new_priority = None if priority is None else _priority(priority)
        new_service_level = None if service_level is None else check_service_level(service_level)
        new_timeout = (
            None if offer_timeout_seconds is None else _offer_timeout(offer_timeout_seconds)
        )
        new_max_misses = None if max_misses is None else _max_misses(max_misses)
        new_overflow = (
            None if overflow_queues is None else check_overflow_queues(overflow_queues, self.name)
        )
        timestamp = _at(at)
        self._ensure_active()
        if new_requirements is not None and new_requirements != self.requirements:
            try:
                check_routing_steps(self.routing_steps, new_requirements, self.name)
            except InvalidValue as error:
                raise InvalidValue(
                    "requirements", f"conflicts with the queue's routing steps: {error}"
                ) from None
        event = QueueUpdated(
            originator_id=self.id,
            originator_version=self.version + 1,
            timestamp=timestamp,
            channels=_changed(new_channels, self.channels),
            requirements=_changed(new_requirements, self.requirements),
            priority=_changed(new_priority, self.priority),
            service_level=_changed(new_service_level, self.service_level),
            offer_timeout_seconds=_changed(new_timeout, self.offer_timeout_seconds),
            max_misses=_changed(new_max_misses, self.max_misses),
            overflow_queues=_changed(new_overflow, self.overflow_queues),
        )
        return (event,) if event.changes_anything() else ()

    def change_routing_steps(
        self, routing_steps: Sequence[RoutingStep], *, at: datetime
    ) -> tuple[QueueRoutingStepsChanged, ...]:
        """Replaces the routing steps; nothing if they are the same."""
        steps = check_routing_steps(routing_steps, self.requirements, self.name)
        timestamp = _at(at)
        self._ensure_active()
        if steps == self.routing_steps:
            return ()
        return (
            QueueRoutingStepsChanged(
                originator_id=self.id,
                originator_version=self.version + 1,
                timestamp=timestamp,
                routing_steps=steps,
            ),
        )

    def archive(self, *, at: datetime) -> tuple[QueueArchived, ...]:
        """Takes the queue out of service for good; nothing if it already is."""
        timestamp = _at(at)
        if self.archived:
            return ()
        return (
            QueueArchived(
                originator_id=self.id, originator_version=self.version + 1, timestamp=timestamp
            ),
        )

    def _ensure_active(self) -> None:
        if self.archived:
            raise RuleViolation(f"queue {self.name!r} is archived and cannot be changed")


def _priority(value: int) -> int:
    return values.score(value, "priority", low=0, high=MAX_PRIORITY)


def _offer_timeout(value: int) -> int:
    return values.score(value, "offer_timeout_seconds", low=1, high=MAX_OFFER_TIMEOUT_SECONDS)


def _max_misses(value: int) -> int:
    return values.score(value, "max_misses", low=1, high=MAX_MISSES)


def _changed(new: _T | None, current: _T) -> _T | None:
    return None if new is None or new == current else new


# --- events ------------------------------------------------------------------------------------


class QueueEvent(Event[Queue], frozen=True, kw_only=True):
    context: ClassVar[str] = "routing"

    def bus_attributes(self) -> dict[str, str]:
        return {"queueid": str(self.originator_id)}


class QueueCreated(QueueEvent, frozen=True, kw_only=True):
    name: str
    channels: tuple[Channel, ...]
    requirements: Requirements
    priority: int
    service_level: ServiceLevelTarget
    offer_timeout_seconds: int
    max_misses: int
    overflow_queues: tuple[str, ...]
    routing_steps: tuple[RoutingStep, ...]

    def mutate(self, state: Queue | None) -> Queue:
        return Queue(
            id=self.originator_id,
            version=self.originator_version,
            created_on=self.timestamp,
            modified_on=self.timestamp,
            name=self.name,
            channels=self.channels,
            requirements=self.requirements,
            priority=self.priority,
            service_level=self.service_level,
            offer_timeout_seconds=self.offer_timeout_seconds,
            max_misses=self.max_misses,
            overflow_queues=self.overflow_queues,
            routing_steps=self.routing_steps,
        )


class QueueUpdated(QueueEvent, frozen=True, kw_only=True, omit_defaults=True):
    """The settings that changed; a field left None did not change."""

    channels: tuple[Channel, ...] | None = None
    requirements: Requirements | None = None
    priority: int | None = None
    service_level: ServiceLevelTarget | None = None
    offer_timeout_seconds: int | None = None
    max_misses: int | None = None
    overflow_queues: tuple[str, ...] | None = None

    def changes_anything(self) -> bool:
        return any(
            value is not None
            for value in (
                self.channels,
                self.requirements,
                self.priority,
                self.service_level,
                self.offer_timeout_seconds,
                self.max_misses,
                self.overflow_queues,
            )
        )

    def apply(self, state: Queue) -> Queue:
        return advance(
            state,
            self,
            channels=state.channels if self.channels is None else self.channels,
            requirements=state.requirements if self.requirements is None else self.requirements,
            priority=state.priority if self.priority is None else self.priority,
            service_level=state.service_level if self.service_level is None else self.service_level,
            offer_timeout_seconds=(
                state.offer_timeout_seconds
                if self.offer_timeout_seconds is None
                else self.offer_timeout_seconds
            ),
            max_misses=state.max_misses if self.max_misses is None else self.max_misses,
            overflow_queues=(
                state.overflow_queues if self.overflow_queues is None else self.overflow_queues
            ),
        )


class QueueRoutingStepsChanged(QueueEvent, frozen=True, kw_only=True):
    routing_steps: tuple[RoutingStep, ...]

    def apply(self, state: Queue) -> Queue:
        return advance(state, self, routing_steps=self.routing_steps)


class QueueArchived(QueueEvent, frozen=True, kw_only=True):
    def apply(self, state: Queue) -> Queue:
        return advance(state, self, archived=True)


# --- unique names ------------------------------------------------------------------------------


class QueueNameClaim(Aggregate, frozen=True, kw_only=True):
    """The queue that holds one name (any case). Created once: a second creation in the store
    fails, so two queues never share a name even when created at the same moment."""

    queue_id: UUID
    name: str

    @classmethod
    def claim(cls, name: str, queue_id: UUID, *, at: datetime) -> QueueNameClaimed:
        return QueueNameClaimed(
            originator_id=name_claim_id(name),
            originator_version=1,
            timestamp=_at(at),
            queue_id=queue_id,
            name=queue_name(name),
        )


class QueueNameClaimed(Event[QueueNameClaim], frozen=True, kw_only=True):
    context: ClassVar[str] = "routing"

    queue_id: UUID
    name: str

    def bus_attributes(self) -> dict[str, str]:
        return {"queueid": str(self.queue_id)}

    def mutate(self, state: QueueNameClaim | None) -> QueueNameClaim:
        return QueueNameClaim(
            id=self.originator_id,
            version=self.originator_version,
            created_on=self.timestamp,
            modified_on=self.timestamp,
            queue_id=self.queue_id,
            name=self.name,
        )
