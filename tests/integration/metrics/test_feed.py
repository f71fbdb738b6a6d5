"""The metrics projection fed from NATS JetStream: every event once, across restarts,
redeliveries and republished events, and a rebuild that replays the whole stream."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from crmcore.adapters.readmodels import SqliteReadModelStore
from crmcore.application.metrics import (
    BUS_SOURCE,
    KpiQuery,
    MetricsFeed,
    MetricsProjection,
    rebuild,
)
from crmcore.config import BusSettings
from crmcore.domain import kpis
from crmcore.domain.kpis import KpiValues
from tests.integration.metrics.history import MONDAY, Day, publish, stopped, wait_for_position

pytestmark = pytest.mark.nats

DAY_MS = 86_400_000


def monday(projection: MetricsProjection) -> KpiValues:
    start = kpis.to_ms(MONDAY)
    report = projection.kpis(KpiQuery(start_ms=start, end_ms=start + DAY_MS))
    return report.rows[0].values


def expect_the_morning(values: KpiValues) -> None:
    assert (values.offered, values.answered, values.abandoned, values.handled) == (10, 8, 2, 6)
    assert values.service_level.value == pytest.approx(6 / 10)
    assert values.asa.mean_s == pytest.approx((6 * 10 + 2 * 30) / 8)


class Feeding:
    """A feed running in the background (small batches: several transactions per test)."""

    def __init__(self, projection: MetricsProjection, settings: BusSettings) -> None:
        self.feed = MetricsFeed(projection, settings, batch=7)
        self.task = asyncio.create_task(self.feed.run())

    async def stop(self) -> None:
        self.feed.stop()
        await stopped(self.task)


async def feeding(projection: MetricsProjection, settings: BusSettings) -> Feeding:
    return Feeding(projection, settings)


async def stop(running: Feeding) -> None:
    await running.stop()


class TestTheFeed:
    async def test_projects_the_stream_and_records_its_sequence(
        self, tmp_path: Path, bus_settings: BusSettings
    ) -> None:
        day = Day()
        day.morning()
        last = await publish(bus_settings, day.events())
        projection = MetricsProjection(SqliteReadModelStore(str(tmp_path / "m.sqlite")))
        task = await feeding(projection, bus_settings)
        await wait_for_position(projection, last)
        await stop(task)
        expect_the_morning(monday(projection))
        assert projection.store.position(BUS_SOURCE) == last
        projection.close_store()

    async def test_a_restarted_feed_continues_where_the_store_says(
        self, tmp_path: Path, bus_settings: BusSettings
    ) -> None:
        day = Day()
        day.morning(0, 5)
        events = day.events()
        await publish(bus_settings, events)
        path = str(tmp_path / "m.sqlite")
        first = MetricsProjection(SqliteReadModelStore(path))
        task = await feeding(first, bus_settings)
        await wait_for_position(first, len(events))
        await stop(task)
        first.close_store()

        day.morning(5, 10)
        everything = day.events()
        seen = {(app, number) for app, number, _ in events}
        last = await publish(bus_settings, [e for e in everything if (e[0], e[1]) not in seen])
        second = MetricsProjection(SqliteReadModelStore(path))
        task = await feeding(second, bus_settings)
        await wait_for_position(second, last)
        await stop(task)
        expect_the_morning(monday(second))
        second.close_store()

    async def test_events_republished_under_new_ids_count_once(
        self, tmp_path: Path, bus_settings: BusSettings
    ) -> None:
        day = Day()
        day.morning()
        await publish(bus_settings, day.events())
        last = await publish(bus_settings, day.events(), id_prefix="again:")
        projection = MetricsProjection(SqliteReadModelStore(str(tmp_path / "m.sqlite")))
        task = await feeding(projection, bus_settings)
        await wait_for_position(projection, last)
        await stop(task)
        expect_the_morning(monday(projection))
        assert projection.stats.stale_events == len(day.events())
        projection.close_store()

    async def test_rebuild_replays_the_whole_stream_into_fresh_read_models(
        self, tmp_path: Path, bus_settings: BusSettings
    ) -> None:
        day = Day()
        day.morning()
        last = await publish(bus_settings, day.events())
        projection = MetricsProjection(SqliteReadModelStore(str(tmp_path / "m.sqlite")))
        task = await feeding(projection, bus_settings)
        await wait_for_position(projection, last)
        await stop(task)
        before = monday(projection)
        progress: list[tuple[int, int]] = []
        reached = await rebuild(
            projection, bus_settings, batch=4, progress=lambda *p: progress.append(p)
        )
        assert reached == last
        assert monday(projection) == before
        assert progress[-1] == (last, last)
        projection.close_store()
