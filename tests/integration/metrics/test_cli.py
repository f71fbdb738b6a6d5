"""`crm metrics rebuild`: the whole stream replayed into fresh read models, as configured by the
environment (here: SQLite in the test's directory, a private NATS stream)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import pytest

from crmcore.application.metrics import KpiQuery, open_metrics
from crmcore.cli import metrics as metrics_cli
from crmcore.config import BusSettings, PersistenceSettings
from crmcore.domain import kpis
from tests.integration.metrics.history import MONDAY, Day, publish

pytestmark = pytest.mark.nats


def crm(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="crm")
    metrics_cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


class TestRebuild:
    def test_replays_the_stream_into_fresh_read_models_in_a_new_time_zone(
        self,
        tmp_path: Path,
        bus_settings: BusSettings,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        day = Day()
        day.morning()
        last = asyncio.run(publish(bus_settings, day.events()))
        data = tmp_path / "data"
        stale = open_metrics(PersistenceSettings.sqlite(data), time_zone="Asia/Tokyo")
        stale.close_store()
        for key, value in {
            "CRM_PERSISTENCE": "sqlite",
            "CRM_DATA_DIR": str(data),
            "CRM_METRICS_TIME_ZONE": "UTC",
            "NATS_URL": bus_settings.url,
            "CRM_STREAM": bus_settings.stream,
        }.items():
            monkeypatch.setenv(key, value)

        args = crm("metrics", "rebuild", "--batch", "7")
        assert args.handler(args) == 0

        assert f"rebuilt: {last} stream positions" in capsys.readouterr().out
        projection = open_metrics(PersistenceSettings.sqlite(data), time_zone="UTC")
        start = kpis.to_ms(MONDAY)
        values = projection.kpis(KpiQuery(start_ms=start, end_ms=start + 86_400_000)).rows[0]
        assert (values.values.offered, values.values.answered) == (10, 8)
        assert projection.position() == last
        projection.close_store()
