"""SLA attainment over real gRPC: the interaction service's SLA scheduler records breaches in
business hours, its relay publishes everything (redacted) on a private NATS stream, the metrics
service projects it and `GetKpis` reports met / breached per SLA metric.

Office hours Monday–Friday 09:00–18:00 UTC; policy "standard": first response 2 h, next
response 1 h, resolution 8 h.

- Case A (Sato): opened Monday 09:00, first reply 10:00 (met); the customer writes 10:30, the
  scheduler records the next-response breach at 11:35 (due 11:30), Sato replies 12:00; solved
  13:00 (resolution met, 4 business hours).
- Case B (Sato): opened Monday 17:30, first reply Tuesday 10:00: 16.5 hours of calendar time
  but 1.5 business hours, so met (the calendar-time figure against 7200 s misses it).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import UUID

import msgspec
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from crm.v1 import metrics_pb2 as pb
from crm.v1 import metrics_pb2_grpc
from crmcore.application.interactions import InteractionApplication
from crmcore.application.sla_scheduler import SlaClocks, SlaScheduler
from crmcore.application.workforce import WorkforceApplication
from crmcore.config import BusSettings, PersistenceSettings
from crmcore.domain.sla import SlaPolicies, business_calendar, sla_policy
from tests.e2e.metrics.conftest import relay_everything, running, service_settings
from tests.support.auth import channel_for

pytestmark = pytest.mark.nats

if TYPE_CHECKING:  # only the stubs know the async stub type
    Stub = metrics_pb2_grpc.MetricsServiceAsyncStub

MONDAY = datetime(2025, 3, 3, tzinfo=UTC)
TARO = UUID("00000000-0000-4000-8000-0000000074a0")
POLICIES = SlaPolicies(
    calendar=business_calendar(hours="mon-fri 09:00-18:00"),
    policies=(
        sla_policy(name="standard", first_response="2h", next_response="1h", resolution="8h"),
    ),
)


def hour(day: int, hours: float) -> datetime:
    return MONDAY + timedelta(days=day, hours=hours)


def stamp(moment: datetime) -> Timestamp:
    value = Timestamp()
    value.FromDatetime(moment)
    return value


def office_week(
    storage: PersistenceSettings,
) -> tuple[WorkforceApplication, InteractionApplication]:
    workforce = WorkforceApplication(storage)
    interactions = InteractionApplication(storage)
    clocks = SlaClocks(interactions, POLICIES)
    scheduler = SlaScheduler(interactions, clocks)
    sato = workforce.register_agent(
        display_name="Sato", teams=["tier1"], capacity={"email": 5}, at=hour(0, 8)
    ).id

    def email_case(opened: datetime) -> UUID:
        mail = interactions.open_interaction(channel="email", customer_id=TARO, at=opened).id
        interactions.open_case(subject="Invoice", interaction_ids=[mail], at=opened)
        interactions.queue(mail, queue="billing", at=opened)
        interactions.answer(mail, sato, at=opened)
        return mail

    def write(mail: UUID, author: str, when: datetime) -> None:
        interactions.add_message(
            mail,
            author_kind=author,
            author_id=sato if author == "agent" else None,
            text="…",
            at=when,
        )

    a = email_case(hour(0, 9))
    write(a, "agent", hour(0, 10))
    write(a, "customer", hour(0, 10.5))
    (breach,) = scheduler.run_once(hour(0, 11 + 35 / 60))
    assert (breach.metric, breach.due_at) == ("next_response", hour(0, 11.5))
    write(a, "agent", hour(0, 12))
    case_a = interactions.get_interaction(a).case_id
    assert case_a is not None
    interactions.solve_case(case_a, at=hour(0, 13))
    b = email_case(hour(0, 17.5))
    write(b, "agent", hour(1, 10))
    assert scheduler.run_once(hour(1, 11)) == []
    clocks.close_clocks()
    return workforce, interactions


async def test_sla_attainment_per_metric_in_business_hours(
    tmp_path: Path, bus_settings: BusSettings
) -> None:
    settings = msgspec.structs.replace(
        service_settings(tmp_path / "metrics", bus_settings), sla_policies=POLICIES
    )
    workforce, interactions = office_week(PersistenceSettings.sqlite(tmp_path / "apps"))
    async with running(settings) as service:
        await relay_everything([workforce, interactions], bus_settings, service)
        async with channel_for(service) as channel:
            stub: Stub = metrics_pb2_grpc.MetricsServiceStub(channel)
            report = await stub.GetKpis(
                pb.GetKpisRequest(
                    period=pb.Period(
                        range=pb.TimeRange(start_time=stamp(MONDAY), end_time=stamp(hour(3, 0)))
                    ),
                    policy=pb.KpiPolicy(first_response_target_seconds=7200),
                )
            )
            (row,) = report.rows
            kpis = row.kpis
            first, following = kpis.sla_first_response, kpis.sla_next_response
            assert (first.met, first.breached, first.attainment.value) == (2, 0, 1.0)
            assert "business hours" in first.attainment.policy
            assert (following.met, following.breached, following.attainment.value) == (0, 1, 0.0)
            assert (kpis.sla_resolution.met, kpis.sla_resolution.breached) == (1, 0)
            calendar = kpis.first_response_within_calendar_target
            assert (calendar.numerator, calendar.denominator) == (1, 2)
            # Per day: each clock where it was decided (B's first reply on Tuesday).
            by_day = await stub.GetKpis(
                pb.GetKpisRequest(
                    period=pb.Period(
                        range=pb.TimeRange(start_time=stamp(MONDAY), end_time=stamp(hour(2, 0)))
                    ),
                    interval=pb.INTERVAL_DAY,
                )
            )
            met_per_day = [
                (r.kpis.sla_first_response.met, r.kpis.sla_next_response.breached)
                for r in by_day.rows
            ]
            assert met_per_day == [(1, 1), (1, 0)]
    workforce.close()
    interactions.close()
