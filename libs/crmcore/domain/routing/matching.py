"""The matching rules both engines share: who may take which work, and who is better.

- A *profile* is what makes agents interchangeable for eligibility: skills with levels,
  languages, teams and the channels they take. Thousands of agents fall into a few hundred
  profiles, so eligibility is decided once per (profile, demand), not per agent.
- A *demand* is what a piece of work asks at its current routing step: skills with minimum
  levels, a language, and overflow pools whose agents are considered as well. A pool waives
  the skills, never the language: a customer who speaks only Japanese still needs Japanese.
- *Proficiency* of an agent for a demand is the sum of the agent's levels in the required
  skills (0 for a skill the agent lacks, which only a pool agent can). A sum rewards being
  strong in every skill asked, and orders pool agents below the skilled ones.
- *Load* counts the work in hand and the offers pending (an offer holds its place), per
  channel over the channel's capacity, averaged over the channels the agent takes; an
  exclusive item (a call) makes the agent full. It is `Agent.load` with offers counted.

`AgentSlot` is the engine's live view of one agent: the aggregate, the offers pending, and the
figures derived from both. Time is kept in integer microseconds since the epoch (`to_us`), so
that a timer and the rule it serves compare the same numbers exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from uuid import UUID

from crmcore.domain.agent import (
    EXCLUSIVE_CHANNELS,
    Agent,
    Capacity,
    Presence,
    Requirements,
    SkillRequirement,
    language_matches,
)
from crmcore.domain.queue import OverflowPool, PoolKind, Queue
from crmcore.domain.task import Task
from crmcore.domain.values import Channel

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_CHANNELS = tuple(Channel)
_EXCLUSIVE = frozenset(EXCLUSIVE_CHANNELS)
_EXCLUSIVE_ORDERED = tuple(sorted(EXCLUSIVE_CHANNELS))
NEVER = 2**62

SkillLevels = tuple[tuple[str, int], ...]
ProfileKey = tuple[SkillLevels, tuple[str, ...], tuple[str, ...], tuple[Channel, ...]]
DemandKey = tuple[SkillLevels, str | None, tuple[tuple[str, str], ...]]
#: A waiting-work heap entry: (rank, task id as int, task stamp when pushed, task).
BucketEntry = tuple[int, int, int, "TaskSlot"]
#: An available-agent heap entry: (load, idle since, agent id as int, stamp, agent).
AgentEntry = tuple[float, int, int, int, "AgentSlot"]


def to_us(moment: datetime) -> int:
    """A moment as integer microseconds since the epoch."""
    return (moment - EPOCH) // _ONE_US


def from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


class Profile:
    """Agents alike in everything eligibility looks at (module docstring)."""

    __slots__ = (
        "buckets",
        "channels",
        "heaps",
        "key",
        "languages",
        "levels",
        "members",
        "number",
        "teams",
    )

    def __init__(self, number: int, key: ProfileKey) -> None:
        skills, languages, teams, channels = key
        self.number = number
        self.key = key
        self.levels: dict[str, int] = dict(skills)
        self.languages = languages
        self.teams = frozenset(teams)
        self.channels = channels
        #: Indexed engine: per channel, the waiting-work heaps of every demand this profile
        #: satisfies (None: not built yet, or invalidated by a queue change).
        self.buckets: dict[Channel, list[list[BucketEntry]]] | None = None
        #: Indexed engine: per channel, the agents of this profile able to take it now.
        self.heaps: dict[Channel, list[AgentEntry]] = {channel: [] for channel in channels}
        #: How many agents have this profile (bounds the live entries of each heap).
        self.members = 0


def profile_key(agent: Agent) -> ProfileKey:
    return (
        tuple((skill.name, skill.level) for skill in agent.skills),
        agent.languages,
        agent.teams,
        agent.capacity.channels(),
    )


class Demand:
    """What work asks at one routing step (module docstring); interned, numbered."""

    __slots__ = (
        "agent_groups",
        "groups",
        "key",
        "language",
        "number",
        "pools",
        "requirements",
        "skills",
        "verdicts",
    )

    def __init__(self, number: int, key: DemandKey, pools: tuple[OverflowPool, ...]) -> None:
        skills, language, _ = key
        self.number = number
        self.key = key
        self.skills = skills
        self.language = language
        self.pools = pools
        self.requirements = Requirements(
            skills=tuple(SkillRequirement(skill=name, min_level=level) for name, level in skills),
            language=language,
        )
        #: Indexed engine: eligible profiles grouped by proficiency, best first, and the
        #: same as the agent heaps of each channel.
        self.groups: list[tuple[int, list[Profile]]] | None = None
        self.agent_groups: dict[Channel, list[tuple[int, list[list[AgentEntry]]]]] = {}
        #: Profile number → eligible, remembered (cleared when queues change).
        self.verdicts: dict[int, bool] = {}


def demand_key(requirements: Requirements, pools: tuple[OverflowPool, ...]) -> DemandKey:
    skills = tuple(sorted((req.skill, req.min_level) for req in requirements.skills))
    pool_key = tuple(sorted({(str(pool.kind), pool.name.lower()) for pool in pools}))
    return (skills, requirements.language, pool_key)


def speaks(languages: tuple[str, ...], wanted: str) -> bool:
    return any(language_matches(spoken, wanted) for spoken in languages)


def has_skills(levels: Mapping[str, int], skills: SkillLevels) -> bool:
    return all(levels.get(name, 0) >= level for name, level in skills)


def serves_queue(profile: Profile, queue: Queue) -> bool:
    """Whether agents of `profile` serve `queue`: they meet its base requirements and take
    one of its channels (what an overflow pool of kind `queue` means)."""
    wanted = queue.requirements
    if wanted.language is not None and not speaks(profile.languages, wanted.language):
        return False
    if not any(channel in profile.channels for channel in queue.channels):
        return False
    return all(profile.levels.get(req.skill, 0) >= req.min_level for req in wanted.skills)


def eligible(profile: Profile, demand: Demand, queues_by_name: Mapping[str, Queue]) -> bool:
    """Whether agents of `profile` may take work asking `demand` (channel aside)."""
    if demand.language is not None and not speaks(profile.languages, demand.language):
        return False
    if has_skills(profile.levels, demand.skills):
        return True
    for pool in demand.pools:
        if pool.kind is PoolKind.TEAM:
            if pool.name in profile.teams:
                return True
        else:
            queue = queues_by_name.get(pool.name.lower())
            if queue is not None and serves_queue(profile, queue):
                return True
    return False


def proficiency(profile: Profile, demand: Demand) -> int:
    """The agent's levels summed over the skills the demand asks (module docstring)."""
    return sum(profile.levels.get(name, 0) for name, _ in demand.skills)


class AgentSlot:
    """The engine's live view of one agent: its aggregate, its pending offers, and what
    follows from both (counts per channel, load, whether it can take work)."""

    __slots__ = (
        "_active",
        "_capacity",
        "_cooldown_until",
        "_idle_since",
        "agent",
        "available",
        "cooldown_us",
        "counts",
        "exclusive",
        "id",
        "id_int",
        "idle_us",
        "limits",
        "load",
        "offers",
        "profile",
        "stamp",
        "total",
    )

    def __init__(self, agent: Agent, profile: Profile) -> None:
        self.agent = agent
        self.id: UUID = agent.id
        self.id_int: int = agent.id.int
        self.profile = profile
        #: Task id (as int) → channel of every offer pending with this agent.
        self.offers: dict[int, Channel] = {}
        #: Bumped on every change; index entries carrying an older stamp are stale.
        self.stamp = 0
        self.counts: dict[Channel, int] = {}
        self.limits: dict[Channel, int] = {}
        self.total = 0
        self.exclusive = 0
        self.load = 0.0
        self.idle_us = NEVER
        self.cooldown_us = 0
        self.available = False
        self._capacity: Capacity | None = None
        self._active: tuple[tuple[Channel, int], ...] = ()
        self._idle_since: datetime | None = None
        self._cooldown_until: datetime | None = None
        self.refresh()

    def refresh(self) -> None:
        """Recomputes the derived figures from the aggregate and the offers."""
        agent = self.agent
        capacity = agent.capacity
        if capacity is not self._capacity:
            self._capacity = capacity
            self.limits = {channel: capacity.limit(channel) for channel in _CHANNELS}
            self._active = tuple((c, limit) for c, limit in self.limits.items() if limit > 0)
        if agent.idle_since is not self._idle_since:
            self._idle_since = agent.idle_since
            self.idle_us = NEVER if agent.idle_since is None else to_us(agent.idle_since)
        if agent.cooldown_until is not self._cooldown_until:
            self._cooldown_until = agent.cooldown_until
            self.cooldown_us = 0 if agent.cooldown_until is None else to_us(agent.cooldown_until)
        self.available = agent.presence is Presence.AVAILABLE
        self.recount()

    def recount(self) -> None:
        """Recomputes counts and load after work or offers changed."""
        counts: dict[Channel, int] = {}
        work = self.agent.work
        for item in work:
            channel = item.channel
            counts[channel] = counts.get(channel, 0) + 1
        offers = self.offers
        for channel in offers.values():
            counts[channel] = counts.get(channel, 0) + 1
        exclusive = 0
        for channel in _EXCLUSIVE_ORDERED:
            exclusive += counts.get(channel, 0)
        self.counts = counts
        self.total = len(work) + len(offers)
        self.exclusive = exclusive
        self.load = _load(self._active, self.limits, counts, exclusive)

    def work_changed(self) -> None:
        """`refresh` after work was assigned or released (only work and idleness change)."""
        agent = self.agent
        if agent.idle_since is not self._idle_since:
            self._idle_since = agent.idle_since
            self.idle_us = NEVER if agent.idle_since is None else to_us(agent.idle_since)
        self.recount()

    def add_offer(self, task_key: int, channel: Channel) -> None:
        """Counts a new pending offer (what `recount` would find, computed incrementally)."""
        self.offers[task_key] = channel
        counts = self.counts
        counts[channel] = counts.get(channel, 0) + 1
        self.total += 1
        if channel in _EXCLUSIVE:
            self.exclusive += 1
        self.load = _load(self._active, self.limits, counts, self.exclusive)

    def can_take(self, channel: Channel, now_us: int) -> bool:
        """Available, not cooling down, room on `channel` counting offers, and within
        cross-channel exclusivity (`agent.exclusivity_conflict` with offers as items)."""
        if not self.available or self.cooldown_us > now_us or self.exclusive:
            return False
        if self.total and channel in _EXCLUSIVE:
            return False
        return self.counts.get(channel, 0) < self.limits[channel]


def _load(
    active: tuple[tuple[Channel, int], ...],
    limits: Mapping[Channel, int],
    counts: Mapping[Channel, int],
    exclusive: int,
) -> float:
    """`Agent.load` over work and offers: the mean of items / capacity (each capped at 1)
    over the channels taken, plus any channel holding items with no capacity left."""
    if exclusive:
        return 1.0
    total = 0.0
    channels = len(active)
    for channel, limit in active:
        items = counts.get(channel, 0)
        if items:
            total += 1.0 if items >= limit else items / limit
    for channel, items in counts.items():
        if items and not limits[channel]:
            total += 1.0
            channels += 1
    return total / channels if channels else 0.0


class TaskSlot:
    """The engine's live view of one open task and where it stands in the indexes."""

    __slots__ = (
        "channel",
        "demand",
        "id",
        "id_int",
        "live",
        "queue_key",
        "rank",
        "req_id",
        "stamp",
        "step",
        "task",
        "ws_us",
    )

    def __init__(self, task: Task) -> None:
        self.task = task
        self.id: UUID = task.id
        self.id_int: int = task.id.int
        self.channel: Channel = task.channel
        self.queue_key = task.queue.lower()
        self.ws_us = to_us(task.waiting_since)
        #: Order of waiting work: smaller first (waiting_since minus the priority's worth).
        self.rank = 0
        #: Bumped whenever the task is (re)placed or leaves its bucket.
        self.stamp = 0
        #: The demand at the routing step reached (None: not placed, e.g. unknown queue).
        self.demand: Demand | None = None
        self.step = 0
        #: False once the task left routing (its stale references then do nothing).
        self.live = True
        #: The engine's number for the work's own requirements (0: none of its own).
        self.req_id = 0
