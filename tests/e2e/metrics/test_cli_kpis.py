"""`crm kpis`: the thin gRPC client of the metrics service, as a person runs it."""

from __future__ import annotations

import argparse
import asyncio
import json

import pytest

from crmcore.cli import metrics as metrics_cli
from services.metrics.bootstrap import MetricsService
from tests.support.auth import new_bearer, service_token

pytestmark = pytest.mark.nats


def crm(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="crm")
    metrics_cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


class TestCrmKpis:
    async def test_prints_todays_table_and_json(
        self,
        metrics_service: MetricsService,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setenv("CRM_TOKEN", service_token(metrics_service, "metrics:read"))
        args = crm("kpis", "--period", "today", "--address", metrics_service.address)
        assert await asyncio.to_thread(args.handler, args) == 0
        table = capsys.readouterr().out
        assert "offered" in table
        assert "whole period" in table
        assert "answered within 20 s" in table

        args = crm(
            "kpis",
            "--interval",
            "hour",
            "--group-by",
            "queue",
            "--json",
            "--address",
            metrics_service.address,
        )
        assert await asyncio.to_thread(args.handler, args) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["interval"] == "INTERVAL_HOUR"
        assert report["groupBy"] == ["DIMENSION_QUEUE"]

    async def test_an_unreachable_service_is_reported(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("CRM_TOKEN", new_bearer())
        args = crm("kpis", "--address", "127.0.0.1:1")
        assert await asyncio.to_thread(args.handler, args) == 1
        assert "UNAVAILABLE" in capsys.readouterr().err
