"""Agents: registration, the assignment rules, presence, missed offers and the engine's queries."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crmcore.domain.agent import (
    EXCLUSIVE_CHANNELS,
    Agent,
    AgentCooldownCleared,
    AgentEvent,
    AgentOfferMissed,
    AgentPresenceChanged,
    Capacity,
    OfferMissReason,
    Presence,
    PresenceReason,
    Requirements,
    Skill,
    SkillRequirement,
    exclusivity_conflict,
)
from crmcore.domain.base import DomainEvent
from crmcore.domain.errors import AlreadyExists, InvalidValue, NotFound, RuleViolation
from crmcore.domain.values import Channel

T0 = datetime(2025, 4, 1, 9, 0, tzinfo=UTC)
AIKO = UUID("0b1e4b7e-0000-4000-8000-000000000001")
CONTACT_CENTRE = {"phone": 1, "video": 1, "chat": 3, "email": 5}


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def then(state: Agent | None, produced: DomainEvent | Iterable[DomainEvent]) -> Agent:
    events = (produced,) if isinstance(produced, DomainEvent) else tuple(produced)
    for event in events:
        state = event.mutate(state)
    assert state is not None
    return state


def aiko(
    *,
    capacity: Mapping[str, int] = CONTACT_CENTRE,
    presence: Presence = Presence.AVAILABLE,
    work: Sequence[Channel] = (),
    skills: Sequence[Skill] = (),
    languages: Sequence[str] = (),
) -> Agent:
    """Aiko, registered at T0, available at T0, given `work` at T0+1…, then at `presence`."""
    agent = then(
        None,
        Agent.register(
            AIKO,
            display_name="Aiko Tanaka",
            teams=("billing",),
            skills=skills,
            languages=languages,
            capacity=capacity,
            at=T0,
        ),
    )
    agent = then(agent, agent.set_presence(Presence.AVAILABLE, at=T0))
    for index, channel in enumerate(work):
        agent = then(agent, agent.assign_work(uuid4(), channel, at=at(index + 1)))
    return then(agent, agent.set_presence(presence, at=at(100)))


class TestRegistering:
    def test_a_new_agent_is_offline_with_nothing_in_hand_and_normalised_values(self) -> None:
        registered = Agent.register(
            AIKO,
            display_name="  Aiko Tanaka ",
            teams=["Billing", "tier1", "billing"],
            skills=[Skill(name="Refunds", level=2), Skill(name="billing", level=5)],
            languages=["JA", "en-us", "zh-hant-tw"],
            capacity={"chat": 3, Channel.PHONE: 1},
            at=T0,
        )
        agent = registered.mutate(None)

        assert agent.display_name == "Aiko Tanaka"
        assert agent.teams == ("billing", "tier1")
        assert agent.skills == (Skill(name="billing", level=5), Skill(name="refunds", level=2))
        assert agent.languages == ("ja", "en-US", "zh-Hant-TW")
        assert agent.capacity == Capacity(phone=1, chat=3)
        assert agent.presence is Presence.OFFLINE
        assert agent.presence_since == T0
        assert agent.idle_since is None
        assert agent.work == ()
        assert agent.missed_offers == 0
        assert agent.cooldown_until is None
        assert agent.version == 1

    @pytest.mark.parametrize(
        ("changes", "field"),
        [
            ({"display_name": "   "}, "display_name"),
            ({"teams": ["billing", " "]}, "teams[1]"),
            (
                {"skills": [Skill(name="billing", level=3), Skill(name="refunds", level=6)]},
                "skills[1].level",
            ),
            ({"skills": [Skill(name="billing", level=0)]}, "skills[0].level"),
            (
                {"skills": [Skill(name="billing", level=3), Skill(name="Billing", level=2)]},
                "skills[1].name",
            ),
            ({"skills": [Skill(name=" ", level=3)]}, "skills[0].name"),
            ({"skills": [Skill(name="customer service", level=3)]}, "skills[0].name"),
            ({"languages": ["ja", "english"]}, "languages[1]"),
            ({"languages": ["en-us", "EN-US"]}, "languages[1]"),
            ({"capacity": {"chat": 21}}, "capacity.chat"),
            ({"capacity": {"email": -1}}, "capacity.email"),
            ({"capacity": {"phone": 2}}, "capacity.phone"),
            ({"capacity": {"video": 3}}, "capacity.video"),
            ({"capacity": {"fax": 1}}, "capacity.fax"),
            ({"at": datetime(2025, 4, 1, 9, 0)}, "at"),
        ],
    )
    def test_an_invalid_input_names_its_field(self, changes: dict[str, Any], field: str) -> None:
        arguments: dict[str, Any] = {"display_name": "Aiko Tanaka", "at": T0, **changes}
        with pytest.raises(InvalidValue) as raised:
            Agent.register(AIKO, **arguments)
        assert raised.value.field == field

    def test_capacity_has_one_field_for_every_channel(self) -> None:
        assert set(Capacity.__struct_fields__) == {channel.value for channel in Channel}

    def test_events_travel_on_routing_subjects_with_the_agent_id(self) -> None:
        registered = Agent.register(AIKO, display_name="Aiko Tanaka", at=T0)
        assigned = aiko().assign_work(uuid4(), Channel.CHAT, at=at(200))

        assert registered.bus_subject() == "crm.routing.agent_registered"
        assert assigned.bus_subject() == "crm.routing.agent_work_assigned"
        assert assigned.bus_attributes() == {"agentid": str(AIKO)}


class TestAssigningWork:
    @pytest.mark.parametrize(
        ("capacity", "in_hand", "channel", "refusal"),
        [
            # capacity per channel
            (CONTACT_CENTRE, [], Channel.CHAT, None),
            (CONTACT_CENTRE, [Channel.CHAT, Channel.CHAT], Channel.CHAT, None),
            (CONTACT_CENTRE, [Channel.CHAT] * 3, Channel.CHAT, "already has 3 of 3 chat"),
            (CONTACT_CENTRE, [Channel.EMAIL] * 4, Channel.EMAIL, None),
            (CONTACT_CENTRE, [Channel.EMAIL] * 5, Channel.EMAIL, "already has 5 of 5 email"),
            (CONTACT_CENTRE, [Channel.CHAT] * 3, Channel.EMAIL, None),
            (CONTACT_CENTRE, [], Channel.SMS, "does not take sms work"),
            ({"email": 5}, [], Channel.CHAT, "does not take chat work"),
            # exclusivity, both ways
            (CONTACT_CENTRE, [], Channel.PHONE, None),
            (CONTACT_CENTRE, [], Channel.VIDEO, None),
            (CONTACT_CENTRE, [Channel.PHONE], Channel.CHAT, "exclusive phone item"),
            (CONTACT_CENTRE, [Channel.PHONE], Channel.EMAIL, "exclusive phone item"),
            (CONTACT_CENTRE, [Channel.PHONE], Channel.VIDEO, "exclusive phone item"),
            (CONTACT_CENTRE, [Channel.VIDEO], Channel.PHONE, "exclusive video item"),
            (CONTACT_CENTRE, [Channel.CHAT], Channel.PHONE, "phone is exclusive"),
            (CONTACT_CENTRE, [Channel.EMAIL], Channel.VIDEO, "video is exclusive"),
        ],
    )
    def test_work_fits_capacity_per_channel_and_exclusivity(
        self,
        capacity: Mapping[str, int],
        in_hand: list[Channel],
        channel: Channel,
        refusal: str | None,
    ) -> None:
        agent = aiko(capacity=capacity, work=in_hand)
        work_id = uuid4()

        if refusal is None:
            assert agent.can_take(channel, at(200))
            assigned = then(agent, agent.assign_work(work_id, channel, at=at(200)))
            assert assigned.holds(work_id)
            assert assigned.items_on(channel) == agent.items_on(channel) + 1
        else:
            assert not agent.can_take(channel, at(200))
            assert agent.free_capacity(channel) == 0
            with pytest.raises(RuleViolation, match=refusal):
                agent.assign_work(work_id, channel, at=at(200))

    @pytest.mark.parametrize(
        "presence",
        [Presence.OFFLINE, Presence.BUSY, Presence.BREAK, Presence.AFTER_CALL_WORK],
    )
    def test_only_an_available_agent_gets_work(self, presence: Presence) -> None:
        agent = aiko(presence=presence)

        assert not agent.can_take(Channel.CHAT, at(200))
        with pytest.raises(RuleViolation, match=f"is {presence}, not available"):
            agent.assign_work(uuid4(), Channel.CHAT, at=at(200))

    def test_the_same_work_is_never_assigned_twice(self) -> None:
        agent = aiko()
        work_id = uuid4()
        agent = then(agent, agent.assign_work(work_id, Channel.EMAIL, at=at(200)))

        with pytest.raises(AlreadyExists, match=str(work_id)):
            agent.assign_work(work_id, Channel.EMAIL, at=at(201))

    def test_releasing_work_the_agent_does_not_have_is_not_found(self) -> None:
        with pytest.raises(NotFound):
            aiko(work=[Channel.CHAT]).release_work(uuid4(), at=at(200))

    def test_releasing_frees_capacity_and_the_last_release_starts_idle_time(self) -> None:
        agent = aiko(work=[Channel.CHAT, Channel.CHAT, Channel.CHAT])
        first, second, third = (item.work_id for item in agent.work)
        assert agent.idle_since is None

        agent = then(agent, agent.release_work(first, at=at(300)))
        assert agent.free_capacity(Channel.CHAT) == 1
        assert agent.idle_since is None
        agent = then(agent, agent.release_work(second, at=at(310)))
        agent = then(agent, agent.release_work(third, at=at(320)))

        assert agent.work == ()
        assert agent.idle_since == at(320)
        assert agent.free_capacity(Channel.PHONE) == 1

    def test_work_released_on_break_starts_idle_time_only_back_at_available(self) -> None:
        agent = aiko(work=[Channel.PHONE], presence=Presence.AFTER_CALL_WORK)
        agent = then(agent, agent.release_work(agent.work[0].work_id, at=at(300)))
        assert agent.idle_since is None

        agent = then(agent, agent.set_presence(Presence.AVAILABLE, at=at(330)))

        assert agent.idle_since == at(330)

    def test_assigning_ends_idle_time(self) -> None:
        agent = aiko()
        assert agent.idle_since == T0

        agent = then(agent, agent.assign_work(uuid4(), Channel.CHAT, at=at(200)))

        assert agent.idle_since is None

    def test_lowered_capacity_keeps_work_in_hand_but_takes_no_more(self) -> None:
        agent = aiko(work=[Channel.CHAT, Channel.CHAT])
        agent = then(agent, agent.change_capacity({"chat": 1}, at=at(200)))

        assert agent.items_on(Channel.CHAT) == 2
        assert agent.free_capacity(Channel.CHAT) == 0
        with pytest.raises(RuleViolation, match="already has 2 of 1 chat"):
            agent.assign_work(uuid4(), Channel.CHAT, at=at(201))


class TestPresence:
    def test_going_offline_with_work_in_hand_is_refused(self) -> None:
        agent = aiko(work=[Channel.EMAIL])

        with pytest.raises(RuleViolation, match="before going offline"):
            agent.set_presence(Presence.OFFLINE, at=at(200))

    def test_going_offline_after_the_work_is_released_is_fine(self) -> None:
        agent = aiko(work=[Channel.EMAIL])
        agent = then(agent, agent.release_work(agent.work[0].work_id, at=at(200)))

        agent = then(agent, agent.set_presence("offline", at=at(201)))

        assert agent.presence is Presence.OFFLINE
        assert agent.presence_since == at(201)
        assert agent.idle_since is None

    def test_a_break_with_work_in_hand_is_fine(self) -> None:
        agent = aiko(work=[Channel.CHAT], presence=Presence.BREAK)

        assert agent.presence is Presence.BREAK
        assert agent.items_on(Channel.CHAT) == 1

    def test_the_change_says_from_what_to_what(self) -> None:
        (changed,) = aiko().set_presence(Presence.AFTER_CALL_WORK, at=at(200))

        assert (changed.from_presence, changed.to_presence) == (
            Presence.AVAILABLE,
            Presence.AFTER_CALL_WORK,
        )
        assert changed.reason is PresenceReason.REQUESTED
        assert changed.bus_subject() == "crm.routing.agent_presence_changed"

    def test_setting_the_presence_the_agent_already_has_changes_nothing(self) -> None:
        assert aiko().set_presence(Presence.AVAILABLE, at=at(200)) == ()

    def test_an_unknown_presence_names_the_field(self) -> None:
        with pytest.raises(InvalidValue) as raised:
            aiko().set_presence("away", at=at(200))
        assert raised.value.field == "presence"


class TestMissedOffers:
    def test_a_miss_counts_and_holds_offers_back_until_the_cooldown_ends(self) -> None:
        agent = aiko()
        events = agent.miss_offer(
            uuid4(), reason="timeout", cooldown=timedelta(seconds=30), at=at(200)
        )
        agent = then(agent, events)

        assert len(events) == 1
        missed = events[0]
        assert missed.reason is OfferMissReason.TIMEOUT
        assert agent.missed_offers == 1
        assert agent.cooldown_until == at(230)

    @pytest.mark.parametrize(
        ("asked_at", "can_take"),
        [(200, False), (229, False), (229.999, False), (230, True), (231, True)],
    )
    def test_cooldown_boundary(self, asked_at: float, can_take: bool) -> None:
        agent = aiko()
        agent = then(
            agent,
            agent.miss_offer(
                uuid4(), reason="rejected", cooldown=timedelta(seconds=30), at=at(200)
            ),
        )

        assert agent.cooldown_until == at(230)
        assert agent.can_take(Channel.CHAT, at(asked_at)) is can_take

    def test_clearing_the_cooldown_lets_offers_through_at_once(self) -> None:
        agent = aiko()
        agent = then(
            agent,
            agent.miss_offer(uuid4(), reason="rejected", cooldown=timedelta(minutes=5), at=at(200)),
        )
        (cleared,) = agent.clear_cooldown(at=at(201))
        agent = then(agent, cleared)

        assert isinstance(cleared, AgentCooldownCleared)
        assert agent.cooldown_until is None
        assert agent.can_take(Channel.CHAT, at(201))
        assert agent.clear_cooldown(at=at(202)) == ()

    def test_reaching_max_misses_takes_an_available_agent_away(self) -> None:
        agent = aiko()
        for second in (200, 300):
            agent = then(
                agent,
                agent.miss_offer(
                    uuid4(), reason="timeout", cooldown=timedelta(0), max_misses=3, at=at(second)
                ),
            )
        assert agent.presence is Presence.AVAILABLE

        events = agent.miss_offer(
            uuid4(), reason="timeout", cooldown=timedelta(0), max_misses=3, at=at(400)
        )

        assert [type(event) for event in events] == [AgentOfferMissed, AgentPresenceChanged]
        assert [event.originator_version for event in events] == [
            agent.version + 1,
            agent.version + 2,
        ]
        away = then(agent, events)
        assert away.presence is Presence.BREAK
        assert away.missed_offers == 3
        assert isinstance(events[-1], AgentPresenceChanged)
        assert events[-1].reason is PresenceReason.MISSED_OFFERS

    def test_an_agent_not_available_is_not_moved_by_the_max_miss_rule(self) -> None:
        agent = aiko(presence=Presence.BUSY)

        events = agent.miss_offer(
            uuid4(), reason="timeout", cooldown=timedelta(0), max_misses=1, at=at(200)
        )

        assert [type(event) for event in events] == [AgentOfferMissed]

    @pytest.mark.parametrize("reset", ["taking work", "coming back to available"])
    def test_a_run_of_misses_ends_by(self, reset: str) -> None:
        agent = aiko()
        agent = then(
            agent, agent.miss_offer(uuid4(), reason="timeout", cooldown=timedelta(0), at=at(200))
        )
        assert agent.missed_offers == 1

        if reset == "taking work":
            agent = then(agent, agent.assign_work(uuid4(), Channel.CHAT, at=at(210)))
        else:
            agent = then(agent, agent.set_presence(Presence.BREAK, at=at(210)))
            agent = then(agent, agent.set_presence(Presence.AVAILABLE, at=at(220)))

        assert agent.missed_offers == 0

    def test_work_in_hand_cannot_have_its_offer_missed(self) -> None:
        agent = aiko(work=[Channel.CHAT])

        with pytest.raises(RuleViolation, match="in hand"):
            agent.miss_offer(
                agent.work[0].work_id, reason="timeout", cooldown=timedelta(0), at=at(200)
            )

    @pytest.mark.parametrize(
        ("changes", "field"),
        [
            ({"reason": "busy"}, "reason"),
            ({"cooldown": timedelta(seconds=-1)}, "cooldown"),
            ({"cooldown": timedelta(days=2)}, "cooldown"),
            ({"max_misses": 0}, "max_misses"),
        ],
    )
    def test_an_invalid_input_names_its_field(self, changes: dict[str, Any], field: str) -> None:
        arguments: dict[str, Any] = {
            "reason": "timeout",
            "cooldown": timedelta(seconds=10),
            "at": at(200),
            **changes,
        }
        with pytest.raises(InvalidValue) as raised:
            aiko().miss_offer(uuid4(), **arguments)
        assert raised.value.field == field


class TestChangingTheProfile:
    def test_only_what_is_given_changes(self) -> None:
        agent = aiko(languages=["ja"])

        (updated,) = agent.update_profile(teams=["Tier2"], at=at(200))
        agent = then(agent, updated)

        assert agent.display_name == "Aiko Tanaka"
        assert agent.teams == ("tier2",)
        assert agent.languages == ("ja",)
        assert agent.modified_on == at(200)

    def test_changes_to_the_same_values_produce_no_event(self) -> None:
        agent = aiko(skills=[Skill(name="billing", level=3)])

        assert agent.update_profile(display_name="Aiko Tanaka", at=at(200)) == ()
        assert agent.change_skills([Skill(name="Billing", level=3)], at=at(200)) == ()
        assert agent.change_capacity(CONTACT_CENTRE, at=at(200)) == ()

    def test_skills_are_replaced_as_a_whole(self) -> None:
        agent = aiko(skills=[Skill(name="billing", level=3)])

        agent = then(agent, agent.change_skills([Skill(name="refunds", level=4)], at=at(200)))

        assert agent.proficiency("billing") == 0
        assert agent.proficiency("refunds") == 4

    def test_invalid_skills_name_their_field(self) -> None:
        with pytest.raises(InvalidValue) as raised:
            aiko().change_skills(
                [Skill(name="billing", level=3), Skill(name="refunds", level=9)], at=at(200)
            )
        assert raised.value.field == "skills[1].level"


class TestQueriesForTheEngine:
    @pytest.mark.parametrize(
        ("in_hand", "load"),
        [
            ([], 0.0),
            ([Channel.CHAT], (1 / 3) / 4),
            ([Channel.CHAT] * 3, 1 / 4),
            ([Channel.CHAT] * 3 + [Channel.EMAIL] * 5, 2 / 4),
            ([Channel.PHONE], 1.0),
            ([Channel.VIDEO], 1.0),
        ],
    )
    def test_load_is_capacity_weighted(self, in_hand: list[Channel], load: float) -> None:
        assert aiko(work=in_hand).load() == pytest.approx(load)

    def test_load_counts_work_on_a_channel_whose_capacity_went_to_zero_as_full(self) -> None:
        agent = aiko(capacity={"chat": 2, "email": 2}, work=[Channel.CHAT])
        agent = then(agent, agent.change_capacity({"email": 2}, at=at(200)))

        assert agent.load() == pytest.approx((1.0 + 0.0) / 2)

    def test_proficiency_is_zero_for_a_missing_skill(self) -> None:
        agent = aiko(skills=[Skill(name="billing", level=4)])

        assert agent.proficiency("billing") == 4
        assert agent.proficiency("Billing") == 4
        assert agent.proficiency("refunds") == 0

    @pytest.mark.parametrize(
        ("requirements", "meets"),
        [
            (Requirements(), True),
            (Requirements(skills=(SkillRequirement(skill="billing", min_level=4),)), True),
            (Requirements(skills=(SkillRequirement(skill="billing", min_level=5),)), False),
            (
                Requirements(
                    skills=(
                        SkillRequirement(skill="billing", min_level=2),
                        SkillRequirement(skill="refunds", min_level=1),
                    )
                ),
                False,
            ),
            (Requirements(language="ja"), True),
            (Requirements(language="en"), True),
            (Requirements(language="en-US"), True),
            (Requirements(language="en-GB"), False),
            (Requirements(language="fr"), False),
            (
                Requirements(
                    skills=(SkillRequirement(skill="billing", min_level=3),), language="ja-JP"
                ),
                True,
            ),
        ],
    )
    def test_meets_checks_every_skill_level_and_the_language(
        self, requirements: Requirements, meets: bool
    ) -> None:
        agent = aiko(skills=[Skill(name="billing", level=4)], languages=["ja", "en-US"])

        assert agent.meets(requirements) is meets

    def test_membership_of_a_team(self) -> None:
        assert aiko().belongs_to("Billing")
        assert not aiko().belongs_to("tier2")

    @pytest.mark.parametrize(
        ("held", "channel", "conflict"),
        [
            ((), Channel.PHONE, False),
            ((Channel.CHAT, Channel.EMAIL), Channel.SMS, False),
            ((Channel.PHONE,), Channel.CHAT, True),
            ((Channel.CHAT,), Channel.VIDEO, True),
        ],
    )
    def test_exclusivity_is_one_rule(
        self, held: tuple[Channel, ...], channel: Channel, conflict: bool
    ) -> None:
        assert (exclusivity_conflict(held, channel) is not None) is conflict


class TestStoredForm:
    def test_every_event_decodes_back_to_itself(self) -> None:
        agent = aiko(skills=[Skill(name="billing", level=4)])
        work_id = uuid4()
        events: list[AgentEvent] = [
            Agent.register(AIKO, display_name="Aiko Tanaka", capacity=CONTACT_CENTRE, at=T0),
            *agent.update_profile(languages=["ja"], at=at(1)),
            *agent.change_skills([Skill(name="refunds", level=2)], at=at(1)),
            *agent.change_capacity({"email": 2}, at=at(1)),
            *agent.set_presence("break", at=at(1)),
            agent.assign_work(work_id, "chat", at=at(1)),
            *agent.miss_offer(
                uuid4(), reason="rejected", cooldown=timedelta(1), max_misses=1, at=at(1)
            ),
        ]
        assigned = then(agent, events[5])
        events.append(assigned.release_work(work_id, at=at(2)))

        for event in events:
            decoded = msgspec.msgpack.Decoder(type(event)).decode(msgspec.msgpack.encode(event))
            assert decoded == event
            assert decoded.bus_subject().startswith("crm.routing.agent_")


# --- property: the rules hold for any sequence of commands ---------------------------------------
# Shared with the application's property test (tests/unit/application/test_workforce.py).

CHANNELS = [Channel.PHONE, Channel.VIDEO, Channel.CHAT, Channel.EMAIL, Channel.SMS]


@dataclass(frozen=True)
class Assign:
    """New work on `channel`, or (with `again`) work the agent already has."""

    channel: Channel
    again: bool = False
    pick: int = 0


@dataclass(frozen=True)
class Release:
    """Work the agent has (picked by index), or unknown work when the agent has none."""

    pick: int = 0


@dataclass(frozen=True)
class SetPresence:
    presence: Presence


@dataclass(frozen=True)
class ChangeCapacity:
    capacity: dict[str, int]


Command = Assign | Release | SetPresence | ChangeCapacity

capacities = st.fixed_dictionaries(
    {
        "phone": st.integers(0, 1),
        "video": st.integers(0, 1),
        "chat": st.integers(1, 3),
        "email": st.integers(0, 3),
    }
)
# Weighted so that most assignments reach the capacity and exclusivity rules.
presences = st.sampled_from([Presence.AVAILABLE] * 4 + list(Presence))
assignments = st.builds(
    Assign, st.sampled_from(CHANNELS), st.sampled_from([False] * 5 + [True]), st.integers(0, 9)
)
command_kinds: list[st.SearchStrategy[Command]] = [
    *[assignments] * 6,
    *[st.builds(Release, st.integers(0, 9))] * 3,
    *[st.builds(SetPresence, presences)] * 2,
    st.builds(ChangeCapacity, capacities),
]
commands = st.lists(
    st.sampled_from(command_kinds).flatmap(lambda kind: kind), min_size=1, max_size=40
)


def work_for(agent: Agent, command: Assign | Release, step: int) -> UUID:
    """The work a command is about: fresh (numbered by step), or picked from the agent's."""
    again = not isinstance(command, Assign) or command.again
    if again and agent.work:
        return agent.work[command.pick % len(agent.work)].work_id
    return UUID(int=step)


def run(agent: Agent, command: Command, step: int) -> DomainEvent | tuple[DomainEvent, ...]:
    when = at(step)
    if isinstance(command, Assign):
        return agent.assign_work(work_for(agent, command, step), command.channel, at=when)
    if isinstance(command, Release):
        return agent.release_work(work_for(agent, command, step), at=when)
    if isinstance(command, SetPresence):
        return agent.set_presence(command.presence, at=when)
    return agent.change_capacity(command.capacity, at=when)


def assert_rules_hold(agent: Agent) -> None:
    exclusive = [item for item in agent.work if item.channel in EXCLUSIVE_CHANNELS]
    assert not exclusive or len(agent.work) == 1, agent.work
    assert len({item.work_id for item in agent.work}) == len(agent.work)
    assert agent.presence is not Presence.OFFLINE or not agent.work
    idle = agent.presence is Presence.AVAILABLE and not agent.work
    assert (agent.idle_since is not None) is idle
    assert 0.0 <= agent.load() <= 1.0


def assert_assignment_fits(before: Agent, after: Agent, command: Command) -> None:
    if isinstance(command, Assign):
        channel = command.channel
        assert after.items_on(channel) == before.items_on(channel) + 1
        assert after.items_on(channel) <= after.capacity.limit(channel)


@settings(deadline=None, max_examples=200)
@given(capacity=capacities, script=commands)
def test_capacity_and_exclusivity_hold_for_any_sequence_of_commands(
    capacity: dict[str, int], script: list[Command]
) -> None:
    agent = then(None, Agent.register(AIKO, display_name="Aiko", capacity=capacity, at=T0))
    agent = then(agent, agent.set_presence(Presence.AVAILABLE, at=T0))
    for step, command in enumerate(script, start=1):
        try:
            produced = run(agent, command, step)
        except (RuleViolation, AlreadyExists, NotFound):
            continue
        before, agent = agent, then(agent, produced)
        assert_rules_hold(agent)
        assert_assignment_fits(before, agent, command)
