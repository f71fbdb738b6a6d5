"""What `crm customers lookup`, `crm agents` and `crm queues` print for people."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from crm.v1 import common_pb2, customer_pb2, routing_pb2
from crmcore.cli.directory import display_width, render_agents, render_customer, table


class TestColumns:
    def test_japanese_characters_take_two_terminal_columns(self) -> None:
        assert display_width("田中 翔") == 7
        assert display_width("Emma Smith") == 10

    def test_columns_line_up_whatever_the_script(self) -> None:
        printed = table(("agent", "presence"), [("田中 翔", "available"), ("Emma", "break")])

        lines = printed.splitlines()
        starts = [
            display_width(line[: line.index(word)])
            for line, word in zip(lines, ("presence", "available", "break"), strict=True)
        ]
        assert len(set(starts)) == 1


class TestACustomer:
    def test_the_profile_contact_points_and_history_are_shown(self) -> None:
        when = Timestamp(seconds=1_743_500_000)
        view = customer_pb2.CustomerView(
            customer=customer_pb2.Customer(
                id="c-1",
                name="田中 翔",
                lifecycle=customer_pb2.LIFECYCLE_ACTIVE,
                contact_points=[
                    customer_pb2.ContactPoint(
                        kind=customer_pb2.CONTACT_POINT_KIND_PHONE, value="+819012345678"
                    )
                ],
            ),
            timeline=[
                customer_pb2.TimelineEntry(
                    kind=customer_pb2.TIMELINE_ENTRY_KIND_INTERACTION,
                    status="resolved",
                    title="phone (inbound): billing",
                    occur_time=when,
                )
            ],
        )

        printed = render_customer(view)

        assert "田中 翔  c-1" in printed
        assert "lifecycle   active" in printed
        assert "phone       +819012345678" in printed
        assert "phone (inbound): billing" in printed

    def test_no_history_says_so(self) -> None:
        view = customer_pb2.CustomerView(customer=customer_pb2.Customer(id="c-2", name="Ava"))

        assert "no history yet" in render_customer(view)


class TestAgents:
    def test_presence_skills_capacity_and_a_count_by_presence(self) -> None:
        agent = routing_pb2.Agent(
            id="a-1",
            display_name="佐藤 直樹",
            teams=["voice tokyo"],
            skills=[routing_pb2.AgentSkill(name="billing", level=5)],
            languages=["ja", "en"],
            capacity=[routing_pb2.ChannelCapacity(channel=common_pb2.CHANNEL_PHONE, limit=1)],
            presence=routing_pb2.AGENT_PRESENCE_AVAILABLE,
        )

        printed = render_agents([agent])

        assert "billing:5" in printed
        assert "phone:1" in printed
        assert printed.endswith("1 agent: 1 available")
