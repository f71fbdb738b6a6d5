"""The metrics service over real gRPC: events published by the services' relays on a private
NATS stream, KPIs read back with a grpc.aio client."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from crm.v1 import metrics_pb2 as pb
from crm.v1 import metrics_pb2_grpc
from crmcore.adapters.grpc.channels import open_channel
from crmcore.config import BusSettings, PersistenceSettings
from services.metrics.bootstrap import SERVICE_NAME, MetricsService
from tests.e2e.metrics.conftest import refused, relay_everything
from tests.integration.metrics.history import MONDAY, Day

pytestmark = pytest.mark.nats

if TYPE_CHECKING:  # only the stubs know the async stub type
    Stub = metrics_pb2_grpc.MetricsServiceAsyncStub


def stamp(moment: datetime) -> Timestamp:
    value = Timestamp()
    value.FromDatetime(moment)
    return value


MONDAY_PERIOD = pb.Period(
    range=pb.TimeRange(start_time=stamp(MONDAY), end_time=stamp(MONDAY + timedelta(days=1)))
)


@pytest.fixture
async def morning(
    tmp_path: Path, bus_settings: BusSettings, metrics_service: MetricsService
) -> Day:
    """Day's ten calls (see tests.integration.metrics.history), published and projected."""
    day = Day(PersistenceSettings.sqlite(tmp_path / "apps"))
    day.morning()
    await relay_everything([day.workforce, day.interactions], bus_settings, metrics_service)
    return day


class TestGetKpis:
    async def test_the_morning_over_grpc(self, stub: Stub, morning: Day) -> None:
        report = await stub.GetKpis(pb.GetKpisRequest(period=MONDAY_PERIOD))
        (row,) = report.rows
        kpis = row.kpis
        assert (kpis.offered, kpis.answered, kpis.abandoned, kpis.handled) == (10, 8, 2, 6)
        assert kpis.service_level.value == pytest.approx(0.6)
        assert kpis.service_level.policy.startswith("answered within 20 s")
        assert kpis.answer_wait.mean_seconds == pytest.approx(15)
        assert report.policy.service_level.threshold_seconds == 20
        assert report.policy.service_level.abandons == pb.ABANDON_TREATMENT_MISSED
        assert report.time_zone == "UTC"
        assert report.stream_position > 0
        assert not row.HasField("interval_start_time")

    async def test_grouped_cut_and_with_another_policy(self, stub: Stub, morning: Day) -> None:
        report = await stub.GetKpis(
            pb.GetKpisRequest(
                period=MONDAY_PERIOD,
                interval=pb.INTERVAL_HOUR,
                group_by=[pb.DIMENSION_AGENT],
                filters=[pb.Filter(dimension=pb.DIMENSION_QUEUE, values=["billing"])],
                policy=pb.KpiPolicy(
                    service_level=pb.ServiceLevelPolicy(
                        threshold_seconds=30, abandons=pb.ABANDON_TREATMENT_EXCLUDED
                    )
                ),
            )
        )
        by_agent = {
            (row.group[0].value, row.interval_start_time.ToDatetime(UTC).hour): row.kpis
            for row in report.rows
        }
        assert by_agent[(str(morning.sato), 9)].answered == 6
        assert by_agent[(str(morning.kato), 10)].answered == 2
        everyone = await stub.GetKpis(
            pb.GetKpisRequest(
                period=MONDAY_PERIOD,
                policy=pb.KpiPolicy(
                    service_level=pb.ServiceLevelPolicy(
                        threshold_seconds=30, abandons=pb.ABANDON_TREATMENT_EXCLUDED
                    )
                ),
            )
        )
        assert everyone.rows[0].kpis.service_level.value == 1.0  # 8 / 8, abandons excluded
        assert everyone.policy.service_level.threshold_seconds == 30

    async def test_a_threshold_without_exact_counts_is_refused_naming_the_field(
        self, stub: Stub
    ) -> None:
        refusal = await refused(
            stub.GetKpis(
                pb.GetKpisRequest(
                    policy=pb.KpiPolicy(service_level=pb.ServiceLevelPolicy(threshold_seconds=601))
                )
            )
        )
        assert refusal.code is grpc.StatusCode.INVALID_ARGUMENT
        assert refusal.fields == ("policy.service_level.threshold_seconds",)

    async def test_an_unknown_dimension_and_a_backwards_range_are_refused(self, stub: Stub) -> None:
        refusal = await refused(
            stub.GetKpis(pb.GetKpisRequest(group_by=[pb.Dimension.ValueType(99)]))
        )
        assert refusal.fields == ("group_by[0]",)
        backwards = pb.Period(range=pb.TimeRange(start_time=stamp(MONDAY), end_time=stamp(MONDAY)))
        refusal = await refused(stub.GetKpis(pb.GetKpisRequest(period=backwards)))
        assert refusal.fields == ("period.range.end_time",)


class TestLiveUpdates:
    async def test_a_stream_sends_an_update_when_new_events_arrive(
        self,
        tmp_path: Path,
        bus_settings: BusSettings,
        metrics_service: MetricsService,
        stub: Stub,
    ) -> None:
        day = Day(PersistenceSettings.sqlite(tmp_path / "apps"))
        stream = stub.StreamKpis(pb.StreamKpisRequest(min_interval_seconds=0.1))
        first = await asyncio.wait_for(stream.read(), 30)
        assert isinstance(first, pb.KpiUpdate)
        assert list(first.live.queues) == []
        now = datetime.now(UTC)
        call = day.interactions.open_interaction(channel="phone", contact_reason="billing", at=now)
        day.interactions.queue(call.id, queue="billing", at=now)
        await relay_everything([day.interactions], bus_settings, metrics_service)
        while True:
            update = await asyncio.wait_for(stream.read(), 30)
            assert isinstance(update, pb.KpiUpdate)
            if update.live.queues:
                break
        (billing,) = update.live.queues
        assert billing.waiting == 1
        assert update.report.rows[0].kpis.offered == 1
        stream.cancel()

    async def test_live_state(self, stub: Stub, morning: Day) -> None:
        live = await stub.GetLiveState(pb.GetLiveStateRequest())
        assert live.agents_by_presence["offline"] == 2
        assert live.backlog.open_interactions == 2  # Kato's two calls are still active
        assert live.consumer_lag == 0


class TestPlanningAndReports:
    async def test_staffing_for_a_forecast_says_erlang_c_ignores_abandonment(
        self, stub: Stub
    ) -> None:
        plan = await stub.GetStaffing(
            pb.GetStaffingRequest(
                forecast=pb.Forecast(contacts=100, interval_seconds=1800, handle_seconds=180),
                shrinkage=0.3,
            )
        )
        (interval,) = plan.intervals
        assert (interval.agents, interval.scheduled) == (14, 20)
        assert round(interval.service_level, 3) == 0.888
        assert "ignores abandonment" in plan.note

    async def test_staffing_from_the_observed_morning(self, stub: Stub, morning: Day) -> None:
        plan = await stub.GetStaffing(
            pb.GetStaffingRequest(period=MONDAY_PERIOD, interval=pb.INTERVAL_HOUR)
        )
        assert plan.handle_seconds == pytest.approx(290)  # answered after 10 s, done at 300 s
        assert plan.peak_agents >= 1
        assert {i.interval_start_time.ToDatetime(UTC).hour for i in plan.intervals} == {9, 10}

    async def test_contact_reasons(self, stub: Stub, morning: Day) -> None:
        report = await stub.GetContactReasons(
            pb.GetContactReasonsRequest(period=MONDAY_PERIOD, min_count=1)
        )
        (billing,) = report.top_contact_reasons
        assert (billing.name, billing.count, billing.kind) == (
            "billing",
            10,
            pb.TOPIC_KIND_CONTACT_REASON,
        )
        assert [topic.name for topic in report.rising] == ["billing"]

    async def test_export_of_the_fact_table(self, stub: Stub, morning: Day) -> None:
        data = b"".join(
            [
                chunk.data
                async for chunk in stub.ExportInteractions(
                    pb.ExportInteractionsRequest(period=MONDAY_PERIOD)
                )
            ]
        )
        rows = list(csv.DictReader(io.StringIO(data.decode())))
        assert [row["interaction_id"] for row in rows] == [str(call) for call in morning.calls]
        assert [row["status"] for row in rows].count("abandoned") == 2


class TestTargets:
    async def test_create_is_idempotent_get_list_and_delete(self, stub: Stub, morning: Day) -> None:
        target = pb.KpiTarget(
            kpi="service_level",
            baseline=0.6,
            target=0.8,
            start_time=stamp(MONDAY),
            deadline_time=stamp(MONDAY + timedelta(days=90)),
            window_days=7,
            filters=[pb.Filter(dimension=pb.DIMENSION_QUEUE, values=["billing"])],
            description="billing SL to 80 %",
        )
        created = await stub.CreateKpiTarget(
            pb.CreateKpiTargetRequest(request_id="q2-sl", kpi_target=target)
        )
        again = await stub.CreateKpiTarget(
            pb.CreateKpiTargetRequest(request_id="q2-sl", kpi_target=target)
        )
        assert again.id == created.id
        fetched = await stub.GetKpiTarget(pb.GetKpiTargetRequest(id=created.id))
        assert fetched.kpi == "service_level"
        assert fetched.progress.expected == pytest.approx(0.8)  # the deadline has passed
        listed = await stub.ListKpiTargets(pb.ListKpiTargetsRequest(page_size=1))
        assert [t.id for t in listed.kpi_targets] == [created.id]
        assert listed.next_page_token == ""
        await stub.DeleteKpiTarget(pb.DeleteKpiTargetRequest(id=created.id))
        refusal = await refused(stub.GetKpiTarget(pb.GetKpiTargetRequest(id=created.id)))
        assert refusal.code is grpc.StatusCode.NOT_FOUND

    async def test_an_unknown_kpi_is_refused(self, stub: Stub) -> None:
        refusal = await refused(
            stub.CreateKpiTarget(
                pb.CreateKpiTargetRequest(
                    kpi_target=pb.KpiTarget(
                        kpi="happiness",
                        start_time=stamp(MONDAY),
                        deadline_time=stamp(MONDAY + timedelta(days=1)),
                    )
                )
            )
        )
        assert refusal.code is grpc.StatusCode.INVALID_ARGUMENT
        assert refusal.fields == ("kpi_target.kpi",)


class TestOperations:
    async def test_health_and_prometheus(
        self, metrics_service: MetricsService, morning: Day
    ) -> None:
        async with open_channel(metrics_service.address) as channel:  # no token: open
            health = health_pb2_grpc.HealthStub(channel)
            answer = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        port = metrics_service.prometheus_port
        assert port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        response = (await reader.read()).decode()
        writer.close()
        head, _, body = response.partition("\r\n\r\n")
        assert head.startswith("HTTP/1.1 200 OK")
        assert "text/plain; version=0.0.4" in head
        assert "crm_metrics_consumer_lag_events 0" in body
        assert "crm_metrics_stream_position " in body
        assert "# TYPE crm_kpi_agents gauge" in body
        assert 'crm_kpi_agents{presence="offline"} 2' in body
