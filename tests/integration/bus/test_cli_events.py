"""`crm events tail` and `crm events schemas`, as a person uses them."""

from __future__ import annotations

import argparse
from datetime import timedelta
from pathlib import Path
from uuid import uuid4

import pytest
from cloudevents.core.formats.json import JSONFormat

from crmcore.adapters.relay import OutboxRelay
from crmcore.adapters.schemas import event_classes
from crmcore.cli import events
from crmcore.config import BusSettings, PersistenceSettings
from tests.integration.bus import Kennel, dog_history, running
from tests.support.nats import run_in_thread

REPOSITORY = Path(__file__).resolve().parents[3]


def crm(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="crm")
    events.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


def publish_two_dogs(tmp_path: Path, bus: BusSettings) -> None:
    app = Kennel(PersistenceSettings.sqlite(tmp_path / "data"))
    app.record(*dog_history(uuid4(), renames=1))
    app.record(*dog_history(uuid4(), renames=0))

    async def publish() -> None:
        relay = OutboxRelay(app, bus)
        async with running(relay):
            await relay.wait_for(3, 30)

    run_in_thread(publish)


@pytest.mark.nats
class TestTail:
    def test_prints_the_events_on_a_subject_from_a_sequence(
        self, tmp_path: Path, bus_settings: BusSettings, capsys: pytest.CaptureFixture[str]
    ) -> None:
        publish_two_dogs(tmp_path, bus_settings)
        code = crm(
            "events", "tail", "crm.dog.registered", "--from-seq", "1", "--limit", "2",
            "--nats-url", bus_settings.url, "--stream", bus_settings.stream,
        )  # fmt: skip
        lines = capsys.readouterr().out.splitlines()
        assert code == 0
        assert len(lines) == 4
        assert lines[0].startswith("#1 2025-04-01T09:00:00+00:00 crm.dog.registered ")
        assert "crm.dog.registered.v1 id=kennel:1 " in lines[0]
        assert "crmversion=1" in lines[0]
        assert '"name":"Rex"' in lines[1]
        assert lines[2].startswith("#3 ")

    def test_json_lines_are_cloudevents(
        self, tmp_path: Path, bus_settings: BusSettings, capsys: pytest.CaptureFixture[str]
    ) -> None:
        publish_two_dogs(tmp_path, bus_settings)
        code = crm(
            "events", "tail", "--all", "--json", "--limit", "3",
            "--nats-url", bus_settings.url, "--stream", bus_settings.stream,
        )  # fmt: skip
        lines = capsys.readouterr().out.splitlines()
        assert code == 0
        types = [JSONFormat().read(None, line.encode()).get_type() for line in lines]
        assert types == ["crm.dog.registered.v1", "crm.dog.renamed.v1", "crm.dog.registered.v1"]

    def test_a_missing_stream_is_said_plainly(
        self, nats_server: object, bus_settings: BusSettings, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code = crm("events", "tail", "--nats-url", bus_settings.url, "--stream", "NO_SUCH")
        assert code == 2
        assert "no stream NO_SUCH" in capsys.readouterr().err

    def test_an_unreachable_server_is_said_plainly(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code = crm("events", "tail", "--nats-url", "nats://127.0.0.1:1")
        assert code == 2
        assert "cannot reach NATS at nats://127.0.0.1:1" in capsys.readouterr().err


class TestSince:
    def test_takes_an_age_or_an_rfc3339_time(self) -> None:
        now = events.parse_since("2025-04-01T09:00:00Z")
        assert events.parse_since("15m", now=lambda: now) == now - timedelta(minutes=15)
        assert events.parse_since("2025-04-01T09:00:00").tzinfo is not None

    def test_refuses_anything_else(self) -> None:
        with pytest.raises(argparse.ArgumentTypeError):
            events.parse_since("yesterday")


class TestSchemas:
    def test_the_schemas_folder_of_the_repository_is_up_to_date(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code = crm("events", "schemas", "--check", "--out", str(REPOSITORY / "schemas"))
        assert code == 0, capsys.readouterr().err

    def test_writes_one_schema_per_event_type_and_an_index(self, tmp_path: Path) -> None:
        assert crm("events", "schemas", "--out", str(tmp_path)) == 0
        written = sorted(path.name for path in tmp_path.iterdir())
        assert len(written) == len(event_classes()) + 2
        assert "cloudevent.json" in written
        assert "crm.voc.feedback_captured.v1.json" in written
        (tmp_path / "crm.obsolete.thing.v1.json").write_text("{}")
        assert crm("events", "schemas", "--check", "--out", str(tmp_path)) == 1
