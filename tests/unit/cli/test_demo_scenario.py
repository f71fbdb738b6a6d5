"""The demo's scenario generator: one seed, one day — its shape, its mix, its people."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crm.v1 import common_pb2
from crmcore.cli.demo.scenario import (
    CHANNEL_MIX,
    SCALES,
    Outcome,
    SurveyPlan,
    all_contacts,
    generate,
    intensity,
    mean_intensity,
    parse_clock,
    survey_score,
)


class TestOneSeedOneDay:
    def test_the_same_seed_gives_the_same_day_value_for_value(self) -> None:
        assert generate(7, contacts=300) == generate(7, contacts=300)

    def test_another_seed_gives_another_day(self) -> None:
        first, second = generate(7, contacts=300), generate(8, contacts=300)

        assert [c.arrival_s for c in first.contacts] != [c.arrival_s for c in second.contacts]

    @settings(max_examples=25, deadline=None)
    @given(
        seed=st.integers(min_value=0, max_value=2**32),
        contacts=st.integers(min_value=1, max_value=400),
        start_hour=st.integers(min_value=0, max_value=20),
        hours=st.integers(min_value=1, max_value=4),
    )
    def test_every_contact_arrives_inside_the_window_in_order(
        self, seed: int, contacts: int, start_hour: int, hours: int
    ) -> None:
        scenario = generate(
            seed,
            contacts=contacts,
            start=f"{start_hour:02d}:00",
            end=f"{start_hour + hours:02d}:00",
        )

        arrivals = [contact.arrival_s for contact in scenario.contacts]
        assert arrivals == sorted(arrivals)
        for contact in all_contacts(scenario.contacts):
            assert 0 <= contact.arrival_s < scenario.length_s
            assert 0 <= contact.customer < len(scenario.customers)
            for follow_up in contact.follow_ups:
                assert follow_up.arrival_s > contact.arrival_s
                assert follow_up.customer == contact.customer
                assert follow_up.reason == contact.reason
                assert follow_up.follow_ups == ()

    def test_keys_are_unique_so_retries_stay_idempotent(self) -> None:
        scenario = generate(3)

        keys = [contact.key for contact in all_contacts(scenario.contacts)]
        assert len(keys) == len(set(keys))
        assert len({c.key for c in scenario.customers}) == len(scenario.customers)
        assert len({c.phone for c in scenario.customers}) == len(scenario.customers)
        assert len({c.email for c in scenario.customers}) == len(scenario.customers)

    @pytest.mark.parametrize("window", [("18:00", "09:00"), ("09:00", "09:10"), ("25:00", "26:00")])
    def test_an_impossible_window_is_refused(self, window: tuple[str, str]) -> None:
        with pytest.raises(ValueError, match=r"window|between"):
            generate(1, start=window[0], end=window[1])


class TestTheDailyCurve:
    def test_the_morning_peak_is_busier_than_opening_and_closing(self) -> None:
        assert intensity(10.5) > 1.5 * intensity(9.0)
        assert intensity(10.5) > 2 * intensity(17.75)

    def test_lunch_dips_between_two_peaks(self) -> None:
        assert intensity(12.5) < intensity(10.5)
        assert intensity(12.5) < intensity(14.0)

    def test_the_curve_is_continuous_and_positive_all_day(self) -> None:
        for minute in range(24 * 60):
            hour = minute / 60
            assert intensity(hour) > 0
            assert abs(intensity(hour + 1 / 60) - intensity(hour)) < 0.05

    def test_arrivals_per_hour_follow_the_curve(self) -> None:
        scenario = generate(11, contacts=30_000)
        per_hour = Counter(int(c.arrival_s // 3600) for c in scenario.contacts)

        total_weight = mean_intensity(9 * 3600, 18 * 3600) * 9
        for hour in range(9):
            weight = mean_intensity((9 + hour) * 3600, (10 + hour) * 3600)
            expected = 30_000 * weight / total_weight
            # Poisson: five standard deviations is far beyond chance.
            assert abs(per_hour[hour] - expected) < 5 * math.sqrt(expected), hour

    def test_the_expected_volume_is_what_was_asked(self) -> None:
        counts = [len(generate(seed, contacts=500).contacts) for seed in range(20)]

        assert abs(sum(counts) / len(counts) - 500) < 3 * math.sqrt(500 / len(counts))


class TestTheChannelMix:
    def test_the_mix_covers_every_channel_of_the_api(self) -> None:
        api_channels = {
            name.removeprefix("CHANNEL_").lower()
            for name in common_pb2.Channel.keys()  # noqa: SIM118 (an enum wrapper, not a dict)
            if name != "CHANNEL_UNSPECIFIED"
        }

        assert set(CHANNEL_MIX) == api_channels
        assert sum(CHANNEL_MIX.values()) == pytest.approx(1.0)

    def test_shares_follow_the_mix(self) -> None:
        scenario = generate(5, contacts=30_000)
        counts = Counter(contact.channel for contact in scenario.contacts)
        total = sum(counts.values())

        for channel, share in CHANNEL_MIX.items():
            deviation = math.sqrt(share * (1 - share) / total)
            assert abs(counts[channel] / total - share) < 5 * deviation, channel

    @pytest.mark.parametrize("seed", [1, 2, 3])
    def test_a_default_day_has_contacts_on_every_channel(self, seed: int) -> None:
        channels = {contact.channel for contact in generate(seed).contacts}

        assert channels == set(CHANNEL_MIX)

    def test_only_bot_channels_start_with_a_bot(self) -> None:
        for contact in all_contacts(generate(2).contacts):
            assert contact.bot == (contact.channel in ("chatbot", "self_service"))
            assert not contact.contained or contact.bot


class TestThePeople:
    @pytest.mark.parametrize("contacts", [40, 600, 2000])
    def test_every_team_always_has_someone_on_duty_who_speaks_english(self, contacts: int) -> None:
        scenario = generate(4, contacts=contacts)
        teams = {agent.team for agent in scenario.agents}

        for minute in range(0, int(scenario.length_s), 300):
            for team in teams:
                on_duty = [
                    agent
                    for agent in scenario.agents
                    if agent.team == team and agent.shift.on_duty(minute)
                ]
                assert any("en" in agent.languages for agent in on_duty), (team, minute)

    def test_every_queue_skill_has_an_expert(self) -> None:
        scenario = generate(9)
        for plan in scenario.queues:
            levels = [dict(agent.skills).get(plan.skill, 0) for agent in scenario.agents]
            assert max(levels) >= 4, plan.name

    def test_bigger_days_get_more_agents(self) -> None:
        assert len(generate(1, contacts=1200).agents) > len(generate(1, contacts=300).agents)


class TestSurveyAnswers:
    @given(
        kind=st.sampled_from(sorted(SCALES)),
        mood=st.floats(min_value=0, max_value=1),
        waited=st.floats(min_value=0, max_value=3600),
        trouble=st.booleans(),
    )
    def test_a_worse_experience_never_scores_higher(
        self, kind: str, mood: float, waited: float, trouble: bool
    ) -> None:
        plan = SurveyPlan(kind=kind, mood=mood, comment_positive=None, comment_negative=None)
        smooth = Outcome(
            waited_s=0, transferred=False, escalated=False, repeat=False, contained_by_bot=False
        )
        rough = Outcome(
            waited_s=waited,
            transferred=trouble,
            escalated=trouble,
            repeat=trouble,
            contained_by_bot=False,
        )
        low, high = SCALES[kind]

        assert low <= survey_score(plan, rough) <= survey_score(plan, smooth) <= high

    def test_a_long_wait_costs_satisfaction(self) -> None:
        plan = SurveyPlan(kind="csat", mood=0.6, comment_positive=None, comment_negative=None)
        quick = Outcome(
            waited_s=10, transferred=False, escalated=False, repeat=False, contained_by_bot=False
        )
        slow = Outcome(
            waited_s=400, transferred=False, escalated=False, repeat=False, contained_by_bot=False
        )

        assert survey_score(plan, quick) == 5
        assert survey_score(plan, slow) == 4


class TestClockTimes:
    def test_hours_and_minutes_become_seconds_after_midnight(self) -> None:
        assert parse_clock("09:30") == 9 * 3600 + 30 * 60
        assert parse_clock("24:00") == 24 * 3600

    @pytest.mark.parametrize("text", ["9h", "10:75", "25:00", ""])
    def test_anything_else_is_refused(self, text: str) -> None:
        with pytest.raises(ValueError, match=r"HH:MM|between"):
            parse_clock(text)
