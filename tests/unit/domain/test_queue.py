"""Queues: creation, settings, routing steps that widen with the wait, and their stored form."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import msgspec
import pytest

from crmcore.domain.errors import InvalidValue, RuleViolation
from crmcore.domain.queue import (
    AddOverflowPool,
    DropSkill,
    Fallback,
    FallbackKind,
    OverflowPool,
    PoolKind,
    Queue,
    QueueCreated,
    QueueEvent,
    QueueUpdated,
    Requirements,
    RoutingStep,
    ServiceLevelTarget,
    SetMinLevel,
    SkillRequirement,
)
from crmcore.domain.values import Channel

T0 = datetime(2025, 4, 1, 9, 0, tzinfo=UTC)
BILLING_JP = UUID("0b1e4b7e-0000-4000-8000-0000000000b1")

BILLING_4_JAPANESE_3 = Requirements(
    skills=(
        SkillRequirement(skill="billing", min_level=4),
        SkillRequirement(skill="japanese", min_level=3),
    ),
    language="ja",
)
# require ≥4 → ≥2 → drop a skill → add overflow pools → call-back (DOMAIN.md)
WIDENING = (
    RoutingStep(after_seconds=30, action=SetMinLevel(skill="billing", level=2)),
    RoutingStep(after_seconds=60, action=DropSkill(skill="japanese")),
    RoutingStep(
        after_seconds=90,
        action=AddOverflowPool(pool=OverflowPool(kind=PoolKind.TEAM, name="tier2")),
    ),
    RoutingStep(
        after_seconds=120,
        action=AddOverflowPool(pool=OverflowPool(kind=PoolKind.QUEUE, name="General")),
    ),
    RoutingStep(after_seconds=180, action=Fallback(to=FallbackKind.CALLBACK)),
)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def billing_jp(**changes: Any) -> Queue:
    arguments: dict[str, Any] = {
        "name": "Billing JP",
        "channels": ["phone", "chat"],
        "requirements": BILLING_4_JAPANESE_3,
        "priority": 50,
        "routing_steps": WIDENING,
        "at": T0,
        **changes,
    }
    return Queue.create(BILLING_JP, **arguments).mutate(None)


def skills_of(requirements: Requirements) -> dict[str, int]:
    return {requirement.skill: requirement.min_level for requirement in requirements.skills}


class TestCreating:
    def test_a_queue_keeps_its_settings_normalised(self) -> None:
        queue = billing_jp(
            name="  Billing   JP ",
            channels=["chat", Channel.PHONE],
            requirements=Requirements(
                skills=(SkillRequirement(skill=" Billing ", min_level=4),), language="JA-jp"
            ),
            routing_steps=(
                RoutingStep(
                    after_seconds=90,
                    action=AddOverflowPool(pool=OverflowPool(kind=PoolKind.TEAM, name="Tier2")),
                ),
            ),
            overflow_queues=["General"],
        )

        assert queue.name == "Billing JP"
        assert queue.channels == (Channel.CHAT, Channel.PHONE)
        assert queue.requirements == Requirements(
            skills=(SkillRequirement(skill="billing", min_level=4),), language="ja-JP"
        )
        assert queue.routing_steps[0].action == AddOverflowPool(
            pool=OverflowPool(kind=PoolKind.TEAM, name="tier2")
        )
        assert queue.overflow_queues == ("General",)
        assert queue.service_level == ServiceLevelTarget(fraction=0.8, threshold_seconds=20)
        assert (queue.offer_timeout_seconds, queue.max_misses) == (30, 3)
        assert not queue.archived
        assert queue.serves(Channel.CHAT)
        assert not queue.serves(Channel.EMAIL)

    @pytest.mark.parametrize(
        ("changes", "field"),
        [
            ({"name": " "}, "name"),
            ({"name": "x" * 101}, "name"),
            ({"channels": []}, "channels"),
            ({"channels": ["chat", "fax"]}, "channels[1]"),
            ({"channels": ["chat", "chat"]}, "channels[1]"),
            (
                {
                    "requirements": Requirements(
                        skills=(
                            SkillRequirement(skill="billing", min_level=4),
                            SkillRequirement(skill="Billing", min_level=2),
                        )
                    ),
                    "routing_steps": (),
                },
                "requirements.skills[1].skill",
            ),
            (
                {
                    "requirements": Requirements(
                        skills=(SkillRequirement(skill="billing", min_level=0),)
                    ),
                    "routing_steps": (),
                },
                "requirements.skills[0].min_level",
            ),
            ({"requirements": Requirements(language="japanese")}, "requirements.language"),
            ({"priority": 101}, "priority"),
            ({"priority": -1}, "priority"),
            ({"service_level": ServiceLevelTarget(fraction=1.5)}, "service_level.fraction"),
            ({"service_level": ServiceLevelTarget(fraction=math.nan)}, "service_level.fraction"),
            (
                {"service_level": ServiceLevelTarget(threshold_seconds=0)},
                "service_level.threshold_seconds",
            ),
            ({"offer_timeout_seconds": 0}, "offer_timeout_seconds"),
            ({"max_misses": 0}, "max_misses"),
            ({"overflow_queues": ["billing jp"]}, "overflow_queues[0]"),
            ({"overflow_queues": ["General", "general"]}, "overflow_queues[1]"),
            ({"at": datetime(2025, 4, 1, 9, 0)}, "at"),
        ],
    )
    def test_an_invalid_setting_names_its_field(self, changes: dict[str, Any], field: str) -> None:
        with pytest.raises(InvalidValue) as raised:
            billing_jp(**changes)
        assert raised.value.field == field

    @pytest.mark.parametrize(
        ("steps", "field"),
        [
            (
                [
                    RoutingStep(after_seconds=30, action=DropSkill(skill="japanese")),
                    RoutingStep(after_seconds=10, action=Fallback(to=FallbackKind.BOT)),
                ],
                "routing_steps[1].after_seconds",
            ),
            (
                [
                    RoutingStep(after_seconds=30, action=DropSkill(skill="japanese")),
                    RoutingStep(after_seconds=30, action=Fallback(to=FallbackKind.BOT)),
                ],
                "routing_steps[1].after_seconds",
            ),
            (
                [RoutingStep(after_seconds=-1, action=Fallback(to=FallbackKind.BOT))],
                "routing_steps[0].after_seconds",
            ),
            (
                [RoutingStep(after_seconds=30, action=SetMinLevel(skill="billing", level=6))],
                "routing_steps[0].action.level",
            ),
            (
                [RoutingStep(after_seconds=30, action=SetMinLevel(skill="refunds", level=2))],
                "routing_steps[0].action.skill",
            ),
            (
                [
                    RoutingStep(after_seconds=30, action=DropSkill(skill="japanese")),
                    RoutingStep(after_seconds=60, action=SetMinLevel(skill="japanese", level=1)),
                ],
                "routing_steps[1].action.skill",
            ),
            (
                [
                    RoutingStep(
                        after_seconds=30,
                        action=AddOverflowPool(pool=OverflowPool(kind="agent", name="x")),  # type: ignore[arg-type]
                    )
                ],
                "routing_steps[0].action.pool.kind",
            ),
            (
                [
                    RoutingStep(
                        after_seconds=30,
                        action=AddOverflowPool(
                            pool=OverflowPool(kind=PoolKind.QUEUE, name="BILLING JP")
                        ),
                    )
                ],
                "routing_steps[0].action.pool.name",
            ),
            (
                [RoutingStep(after_seconds=30, action=Fallback(to="email"))],  # type: ignore[arg-type]
                "routing_steps[0].action.to",
            ),
        ],
    )
    def test_an_invalid_routing_step_names_its_field(
        self, steps: list[RoutingStep], field: str
    ) -> None:
        with pytest.raises(InvalidValue) as raised:
            billing_jp(routing_steps=steps)
        assert raised.value.field == field

    def test_events_travel_on_routing_subjects_with_the_queue_id(self) -> None:
        created = Queue.create(BILLING_JP, name="Billing JP", channels=["chat"], at=T0)

        assert created.bus_subject() == "crm.routing.queue_created"
        assert created.bus_attributes() == {"queueid": str(BILLING_JP)}


class TestWideningWithTheWait:
    @pytest.mark.parametrize(
        ("waited", "skills", "pools", "fallback"),
        [
            (0, {"billing": 4, "japanese": 3}, [], None),
            (29.9, {"billing": 4, "japanese": 3}, [], None),
            (30, {"billing": 2, "japanese": 3}, [], None),
            (30.1, {"billing": 2, "japanese": 3}, [], None),
            (59, {"billing": 2, "japanese": 3}, [], None),
            (60, {"billing": 2}, [], None),
            (89, {"billing": 2}, [], None),
            (90, {"billing": 2}, ["team:tier2"], None),
            (119, {"billing": 2}, ["team:tier2"], None),
            (120, {"billing": 2}, ["team:tier2", "queue:General"], None),
            (179, {"billing": 2}, ["team:tier2", "queue:General"], None),
            (180, {"billing": 2}, ["team:tier2", "queue:General"], FallbackKind.CALLBACK),
            (86_400, {"billing": 2}, ["team:tier2", "queue:General"], FallbackKind.CALLBACK),
        ],
    )
    def test_every_step_whose_time_has_come_applies(
        self,
        waited: float,
        skills: dict[str, int],
        pools: list[str],
        fallback: FallbackKind | None,
    ) -> None:
        requirements, extra_pools, offered = billing_jp().effective_requirements(waited)

        assert skills_of(requirements) == skills
        assert requirements.language == "ja"
        assert [f"{pool.kind}:{pool.name}" for pool in extra_pools] == pools
        assert offered is fallback

    def test_a_later_step_can_raise_a_level_again(self) -> None:
        queue = billing_jp(
            routing_steps=(
                RoutingStep(after_seconds=10, action=SetMinLevel(skill="billing", level=1)),
                RoutingStep(after_seconds=20, action=SetMinLevel(skill="billing", level=3)),
            )
        )

        assert skills_of(queue.effective_requirements(15).requirements)["billing"] == 1
        assert skills_of(queue.effective_requirements(20).requirements)["billing"] == 3

    def test_the_last_fallback_reached_is_the_one_offered(self) -> None:
        queue = billing_jp(
            routing_steps=(
                RoutingStep(after_seconds=60, action=Fallback(to=FallbackKind.CALLBACK)),
                RoutingStep(after_seconds=600, action=Fallback(to=FallbackKind.BOT)),
            )
        )

        assert queue.effective_requirements(60).fallback is FallbackKind.CALLBACK
        assert queue.effective_requirements(600).fallback is FallbackKind.BOT

    def test_a_queue_without_steps_always_asks_its_base_requirements(self) -> None:
        queue = billing_jp(routing_steps=())

        assert queue.effective_requirements(3_600) == (BILLING_4_JAPANESE_3, (), None)

    def test_a_negative_wait_is_refused(self) -> None:
        with pytest.raises(InvalidValue) as raised:
            billing_jp().effective_requirements(-1)
        assert raised.value.field == "waited_seconds"


class TestUpdating:
    def test_the_event_carries_only_the_settings_that_change(self) -> None:
        queue = billing_jp()

        (updated,) = queue.update(priority=80, channels=["phone", "chat"], at=at(60))
        queue = updated.mutate(queue)

        assert updated.priority == 80
        assert updated.channels is None  # same as before
        assert msgspec.json.decode(msgspec.json.encode(updated)).keys() >= {"priority"}
        assert "channels" not in msgspec.json.decode(msgspec.json.encode(updated))
        assert queue.priority == 80
        assert queue.version == 2

    def test_nothing_changes_when_every_setting_is_the_same(self) -> None:
        queue = billing_jp()

        assert queue.update(priority=50, max_misses=3, at=at(60)) == ()
        assert queue.change_routing_steps(WIDENING, at=at(60)) == ()

    def test_new_requirements_must_still_fit_the_routing_steps(self) -> None:
        queue = billing_jp()

        with pytest.raises(InvalidValue) as raised:
            queue.update(
                requirements=Requirements(skills=(SkillRequirement(skill="billing", min_level=4),)),
                at=at(60),
            )
        assert raised.value.field == "requirements"
        assert "japanese" in str(raised.value)

    def test_routing_steps_are_replaced_as_a_whole(self) -> None:
        queue = billing_jp()
        steps = (RoutingStep(after_seconds=45, action=Fallback(to=FallbackKind.BOT)),)

        (changed,) = queue.change_routing_steps(steps, at=at(60))
        queue = changed.mutate(queue)

        assert queue.routing_steps == steps
        assert queue.effective_requirements(45).fallback is FallbackKind.BOT

    def test_an_archived_queue_takes_no_more_changes(self) -> None:
        queue = billing_jp()
        (archived,) = queue.archive(at=at(60))
        queue = archived.mutate(queue)

        assert queue.archived
        assert queue.archive(at=at(61)) == ()
        with pytest.raises(RuleViolation, match="archived"):
            queue.update(priority=10, at=at(61))
        with pytest.raises(RuleViolation, match="archived"):
            queue.change_routing_steps((), at=at(61))

    def test_an_invalid_update_names_its_field(self) -> None:
        with pytest.raises(InvalidValue) as raised:
            billing_jp().update(offer_timeout_seconds=86_401, at=at(60))
        assert raised.value.field == "offer_timeout_seconds"


class TestStoredForm:
    def test_routing_actions_are_tagged_by_name(self) -> None:
        encoded = msgspec.json.decode(msgspec.json.encode(WIDENING))

        assert [step["action"]["type"] for step in encoded] == [
            "set_min_level",
            "drop_skill",
            "add_overflow_pool",
            "add_overflow_pool",
            "fallback",
        ]
        assert encoded[0] == {
            "after_seconds": 30,
            "action": {"type": "set_min_level", "skill": "billing", "level": 2},
        }

    def test_every_event_decodes_back_to_itself(self) -> None:
        queue = billing_jp()
        events: list[QueueEvent] = [
            Queue.create(
                BILLING_JP,
                name="Billing JP",
                channels=["phone"],
                requirements=BILLING_4_JAPANESE_3,
                routing_steps=WIDENING,
                at=T0,
            ),
            *queue.update(
                service_level=ServiceLevelTarget(fraction=0.9, threshold_seconds=30), at=at(1)
            ),
            *queue.change_routing_steps(WIDENING[:2], at=at(1)),
            *queue.archive(at=at(1)),
        ]

        for event in events:
            for codec in (msgspec.msgpack, msgspec.json):
                decoded = codec.Decoder(type(event)).decode(codec.encode(event))
                assert decoded == event
        assert isinstance(events[0], QueueCreated)
        assert isinstance(events[1], QueueUpdated)
        assert [event.bus_subject() for event in events] == [
            "crm.routing.queue_created",
            "crm.routing.queue_updated",
            "crm.routing.queue_routing_steps_changed",
            "crm.routing.queue_archived",
        ]
