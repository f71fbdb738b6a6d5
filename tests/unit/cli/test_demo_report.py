"""The demo report's own arithmetic: the export on the simulated day, the service level it
computes, and charts that are well-formed SVG."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from datetime import UTC, datetime

import pytest

from crmcore.cli.demo import charts
from crmcore.cli.demo.clock import SimClock
from crmcore.cli.demo.report import parse_export, service_level

HEADER = (
    "interaction_id,created_time,channel,direction,bot,customer_id,case_id,contact_reason,"
    "queue,status,queued_time,answered_time,wait_seconds,abandoned_time,abandon_wait_seconds,"
    "first_agent_id,team,agents,first_response_seconds,handle_seconds,talk_seconds,"
    "hold_seconds,after_contact_work_seconds,transfers,escalations,reopens,"
    "first_resolved_time,resolved_time,closed_time,contained_time,handed_off_time"
)


def line(
    iid: str,
    *,
    created: str = "2025-04-01T00:00:10Z",
    queued: str = "2025-04-01T00:00:10Z",
    wait: str = "",
    abandoned: str = "",
    channel: str = "phone",
) -> str:
    answered = "2025-04-01T00:00:11Z" if wait else ""
    return (
        f"{iid},{created},{channel},inbound,false,c1,,billing,billing,resolved,{queued},"
        f"{answered},{wait},{abandoned},,a1,Voice Tokyo,1,,100,90,0,10,0,0,0,,,,,"
    )


ORIGIN = datetime(2025, 4, 1, tzinfo=UTC)


def on_the_day(moment: datetime) -> float:
    """Speed 100, the day starting at ORIGIN."""
    return (moment - ORIGIN).total_seconds() * 100


class TestTheExport:
    def test_only_this_runs_interactions_are_kept_with_times_on_the_simulated_day(self) -> None:
        text = "\r\n".join([HEADER, line("mine", wait="0.150"), line("someone-elses")]) + "\r\n"

        rows = parse_export(text, ["mine"], on_the_day, 100.0)

        assert [row.interaction_id for row in rows] == ["mine"]
        assert rows[0].created_s == pytest.approx(1000.0)
        assert rows[0].wait_s == pytest.approx(15.0)
        assert rows[0].team == "Voice Tokyo"

    def test_service_level_counts_abandons_as_missed(self) -> None:
        text = "\r\n".join(
            [
                HEADER,
                line("quick", wait="0.100"),  # 10 simulated s
                line("slow", wait="0.500"),  # 50 simulated s
                line("gone", abandoned="2025-04-01T00:00:30Z"),
                line("bot", queued=""),  # never queued: not counted
            ]
        )

        rows = parse_export(text, ["quick", "slow", "gone", "bot"], on_the_day, 100.0)

        assert service_level(rows, 20) == (1, 3)
        assert service_level(rows, 60) == (2, 3)


class TestTheClock:
    def test_server_times_map_onto_the_simulated_day(self) -> None:
        clock = SimClock(540)
        later = clock.real_time(3600)

        assert clock.simulated(later) == pytest.approx(3600)
        assert clock.real_seconds(3600) == pytest.approx(3600 / 540)

    def test_a_speed_must_be_positive(self) -> None:
        with pytest.raises(ValueError, match="positive"):
            SimClock(0)


class TestCharts:
    def test_every_chart_is_well_formed_svg(self) -> None:
        labels = ["09:00", "09:30", "10:00"]
        drawn = [
            charts.stacked_bars("volume", labels, {"phone": [1, 2, 3], "chat": [0, 1, 0]}),
            charts.lines("sl", labels, {"sl": [90.0, None, 70.0]}, top=100, target=80),
            charts.bars("by team", {"Voice": 75.0, "Digital": None}, target=80),
        ]

        for svg in drawn:
            root = ElementTree.fromstring(svg)
            assert root.tag == "{http://www.w3.org/2000/svg}svg"

    def test_a_gap_breaks_the_line_instead_of_dropping_to_zero(self) -> None:
        svg = charts.lines("sl", ["a", "b", "c", "d"], {"sl": [50.0, 60.0, None, 70.0]})

        assert svg.count("<polyline") == 1  # a-b joined; d stands alone
        assert svg.count("<circle") == 3

    def test_a_long_legend_wraps_onto_more_rows(self) -> None:
        names = [f"channel number {i}" for i in range(10)]
        svg = charts.stacked_bars("volume", ["09:00"], {name: [1.0] for name in names})

        height = float(ElementTree.fromstring(svg).attrib["viewBox"].split()[3])
        assert height > charts.HEIGHT
