"""PostgreSQL for tests and benchmarks: the configured server, or a private one, or a reason.

How the server is chosen (`PostgresProvider.start`):

1. Configured: `CRM_TEST_POSTGRES_HOST`, `_PORT`, `_USER`, `_PASSWORD` (defaults `127.0.0.1`,
   `5432`, `postgres`, no password: a local server with trust auth). Used when a connection to
   its `postgres` database succeeds within one second.
2. Private: otherwise a throw-away server is started from the installed binaries (`initdb`,
   `pg_ctl`, `postgres` on PATH, else the newest `/usr/lib/postgresql/*/bin`), with its data in a
   temporary directory, trust auth, listening on a free loopback port only, durability off
   (nothing in it has to survive). PostgreSQL refuses to run as root, so under root it runs as
   the unprivileged user `nobody`. It is stopped and its directory removed by `stop()` (and at
   interpreter exit, should a caller forget).
3. Unavailable: `start()` raises `PostgresUnavailable` whose message says why 1 and 2 failed.
   The pytest fixtures then skip the test with that reason, except on CI (`CI=true`), where
   a missing PostgreSQL fails the test instead: CI must never pass by skipping.

These variables are dev tooling read here directly; the product reads its environment only in
`crmcore.config`.

Fixtures: `postgres_server` (session; connection parameters), `postgres_persistence` (a fresh
database per test, dropped afterwards), `persistence` (every test once per persistence
choice: memory, sqlite, postgres) and `restartable_postgres` (a private server of the test's
own that it may halt and resume: `RestartablePostgres`, for outage tests).
`private_tls_server(cert_file, key_file)` starts a private server of its own with `ssl=on`
(for the TLS tests).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import NoReturn

import psycopg
import pytest
from psycopg import sql

from crmcore.config import PersistenceSettings

_BINARIES = ("initdb", "pg_ctl", "postgres")
_UNPRIVILEGED_USER = "nobody"
_CONNECT_TIMEOUT_S = 1
_START_TIMEOUT_S = 60


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be reached or started; the message says why."""


@dataclass(frozen=True)
class PostgresServer:
    """Connection parameters of a running server, and the per-test databases on it."""

    host: str
    port: int
    user: str
    password: str
    description: str

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=dbname,
            connect_timeout=_CONNECT_TIMEOUT_S,
            autocommit=True,
        )

    def create_database(self, prefix: str = "crm_test") -> str:
        """Creates an empty database with a fresh random name and returns the name."""
        dbname = f"{prefix}_{secrets.token_hex(6)}"
        with self.connect() as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        return dbname

    def drop_database(self, dbname: str) -> None:
        """Drops the database even while applications still hold connections to it."""
        with self.connect() as connection:
            connection.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
            )

    def persistence(self, dbname: str) -> PersistenceSettings:
        return PersistenceSettings.postgres(
            dbname=dbname,
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
        )


class PostgresProvider:
    """Provides one PostgreSQL server (see the module docstring for the order of choice).

    Use as a context manager (`with PostgresProvider() as server: ...`) or call `start()` and
    `stop()`.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        self._private: _PrivateServer | None = None

    def start(self) -> PostgresServer:
        configured = PostgresServer(
            host=self._environ.get("CRM_TEST_POSTGRES_HOST", "127.0.0.1"),
            port=int(self._environ.get("CRM_TEST_POSTGRES_PORT", "5432")),
            user=self._environ.get("CRM_TEST_POSTGRES_USER", "postgres"),
            password=self._environ.get("CRM_TEST_POSTGRES_PASSWORD", ""),
            description="configured server",
        )
        configured_failure = _check_reachable(configured)
        if configured_failure is None:
            return configured
        configured_failure = (
            f"configured server {configured.host}:{configured.port} "
            f"(CRM_TEST_POSTGRES_*): {configured_failure}"
        )
        private = _PrivateServer()
        try:
            server = private.start()
        except PostgresUnavailable as private_failure:
            raise PostgresUnavailable(
                f"no PostgreSQL: {configured_failure}; private server: {private_failure}"
            ) from None
        self._private = private
        return server

    def stop(self) -> None:
        if self._private is not None:
            self._private.stop()
            self._private = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _check_reachable(server: PostgresServer) -> str | None:
    """None when the server accepts a connection, else why not."""
    # A plain TCP probe first: it fails fast on a closed port or an unroutable host.
    try:
        with socket.create_connection((server.host, server.port), timeout=_CONNECT_TIMEOUT_S):
            pass
    except OSError as error:
        return f"cannot connect: {error}"
    try:
        with server.connect() as connection:
            connection.execute("SELECT 1")
    except psycopg.Error as error:
        return f"connection refused by the server: {error}".strip()
    return None


def _find_binaries() -> dict[str, Path] | str:
    """Paths of initdb, pg_ctl and postgres from one installation, or why they are missing."""
    candidates: list[Path] = []
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    # Debian/Ubuntu keep the server binaries off PATH, one directory per major version.
    versioned = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda path: int(Path(path).parent.name) if Path(path).parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates.extend(Path(path) for path in versioned)
    for directory in candidates:
        found = {name: directory / name for name in _BINARIES}
        if all(os.access(path, os.X_OK) for path in found.values()):
            return found
    return "no initdb/pg_ctl/postgres found on PATH or under /usr/lib/postgresql/*/bin"


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _PrivateServer:
    """A throw-away server in a temporary directory, run by pg_ctl; with `tls` (certificate
    and key files) it also accepts TLS connections (`ssl=on`)."""

    def __init__(self, tls: tuple[Path, Path] | None = None, *, crash_safe: bool = False) -> None:
        """`crash_safe`: commits survive a crash of the server process (synchronous commit
        on; still no fsync, which only a crash of the machine needs)."""
        self._tls = tls
        self._crash_safe = crash_safe
        self._directory: Path | None = None
        self._pg_ctl: Path | None = None
        self._as_user: pwd.struct_passwd | None = None
        self._controller: subprocess.Popen[str] | None = None

    def start(self) -> PostgresServer:
        binaries = _find_binaries()
        if isinstance(binaries, str):
            raise PostgresUnavailable(binaries)
        if os.geteuid() == 0:
            try:
                self._as_user = pwd.getpwnam(_UNPRIVILEGED_USER)
            except KeyError:
                raise PostgresUnavailable(
                    f"running as root and there is no user {_UNPRIVILEGED_USER!r} to run "
                    "PostgreSQL as (it refuses to run as root)"
                ) from None
        directory = Path(tempfile.mkdtemp(prefix="crm-postgres-"))
        self._directory = directory
        self._pg_ctl = binaries["pg_ctl"]
        atexit.register(self.stop)
        try:
            if self._as_user is not None:
                os.chown(directory, self._as_user.pw_uid, self._as_user.pw_gid)
            self._run(
                directory,
                str(binaries["initdb"]),
                "--pgdata",
                str(directory / "data"),
                "--username",
                "postgres",
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",
            )
            if self._tls is not None:
                self._install_tls(directory / "data")
            port = self._start_on_free_port(directory)
        except PostgresUnavailable:
            self.stop()
            raise
        server = PostgresServer(
            host="127.0.0.1",
            port=port,
            user="postgres",
            password="",
            description=f"private server from {binaries['postgres'].parent} ("
            + ("commits survive a server crash" if self._crash_safe else "durability off")
            + ")",
        )
        failure = _check_reachable(server)
        if failure is not None:
            self.stop()
            raise PostgresUnavailable(f"started but unreachable: {failure}")
        return server

    def _install_tls(self, data: Path) -> None:
        # PostgreSQL wants its key private to the user it runs as.
        for source, name in zip(self._tls or (), ("server.crt", "server.key"), strict=True):
            target = data / name
            shutil.copyfile(source, target)
            target.chmod(0o600)
            if self._as_user is not None:
                os.chown(target, self._as_user.pw_uid, self._as_user.pw_gid)

    def _start_on_free_port(self, directory: Path) -> int:
        # Another process may take the free port before the server binds it: try another.
        failure = PostgresUnavailable("no attempt to start")
        for _ in range(3):
            port = _free_loopback_port()
            try:
                self._start_on(directory, port)
            except PostgresUnavailable as error:
                failure = error
                continue
            return port
        raise failure

    def _options(self, directory: Path, port: int) -> str:
        options = (
            f"-p {port} -c listen_addresses=127.0.0.1"
            f" -c unix_socket_directories={directory}"
            " -c fsync=off -c full_page_writes=off -c max_connections=200"
        )
        if not self._crash_safe:
            options += " -c synchronous_commit=off"
        if self._tls is not None:
            options += " -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key"
        return options

    def _start_on(self, directory: Path, port: int) -> None:
        options = self._options(directory, port)
        self._run(
            directory,
            str(self._pg_ctl),
            "start",
            "--pgdata",
            str(directory / "data"),
            "--log",
            str(directory / "server.log"),
            "--options",
            options,
            "--wait",
            "--timeout",
            str(_START_TIMEOUT_S),
        )

    def halt(self) -> None:
        """Stops the server like a crash (`pg_ctl stop --mode immediate`: every connection
        cut, no shutdown checkpoint) but keeps its data, for `resume`."""
        directory = self._directory
        if directory is None or self._pg_ctl is None:
            raise PostgresUnavailable("the private server is not started")
        # SIGQUIT is what `pg_ctl stop --mode immediate` sends; sent directly, because a fork
        # of a process busy with gRPC calls (a test under load) is not safe.
        pid_file = directory / "data" / "postmaster.pid"
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, signal.SIGQUIT)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while pid_file.exists():
            if time.monotonic() > deadline:
                raise PostgresUnavailable(f"the server (pid {pid}) did not stop")
            time.sleep(0.02)

    def open_controller(self) -> None:
        """Starts the shell `resume` runs pg_ctl in. Call it before the process gets busy
        with gRPC calls: forking such a process (which running pg_ctl from it needs) can
        crash the child, so the fork happens now and `resume` only writes to the shell."""
        directory = self._directory
        if directory is None:
            raise PostgresUnavailable("the private server is not started")
        user = self._as_user
        self._controller = subprocess.Popen(
            ["/bin/sh"],
            cwd=directory,
            env={**os.environ, "LC_ALL": "C", "HOME": str(directory)},
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def resume(self, port: int) -> None:
        """Starts a halted server again on its port, with its data (crash recovery first)."""
        directory = self._directory
        controller = self._controller
        if directory is None or controller is None or controller.stdin is None:
            raise PostgresUnavailable("the private server or its controller is not started")
        assert controller.stdout is not None
        options = self._options(directory, port)
        marker = f"pg-ctl-done-{secrets.token_hex(4)}"
        command = (
            f"{shlex.quote(str(self._pg_ctl))} start"
            f" --pgdata {shlex.quote(str(directory / 'data'))}"
            f" --log {shlex.quote(str(directory / 'server.log'))} --options {shlex.quote(options)}"
            f" --wait --timeout {_START_TIMEOUT_S} </dev/null; echo {marker} $?\n"
        )
        controller.stdin.write(command)
        controller.stdin.flush()
        output: list[str] = []
        for line in controller.stdout:
            if line.startswith(marker):
                if line.split()[-1] != "0":
                    raise PostgresUnavailable(f"pg_ctl start failed: {' | '.join(output)}")
                return
            output.append(line.strip())
        raise PostgresUnavailable(f"the controller shell ended: {' | '.join(output)}")

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            with contextlib.suppress(OSError):
                controller.communicate("exit\n", timeout=10)
        directory, self._directory = self._directory, None
        if directory is None:
            return
        atexit.unregister(self.stop)
        if (directory / "data" / "postmaster.pid").exists() and self._pg_ctl is not None:
            with contextlib.suppress(PostgresUnavailable):
                self._run(
                    directory,
                    str(self._pg_ctl),
                    "stop",
                    "--pgdata",
                    str(directory / "data"),
                    "--mode",
                    "fast",
                    "--wait",
                )
        shutil.rmtree(directory, ignore_errors=True)

    def _run(self, directory: Path, *command: str) -> None:
        user = self._as_user
        try:
            completed = subprocess.run(
                command,
                cwd=directory,
                env={**os.environ, "LC_ALL": "C", "HOME": str(directory)},
                user=user.pw_uid if user else None,
                group=user.pw_gid if user else None,
                extra_groups=[] if user else None,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=_START_TIMEOUT_S + 30,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as error:
            raise PostgresUnavailable(f"{Path(command[0]).name} could not run: {error}") from None
        if completed.returncode != 0:
            output = (completed.stderr or completed.stdout).strip().splitlines()[-3:]
            log = directory / "server.log"
            if log.exists():
                output += log.read_text(errors="replace").strip().splitlines()[-3:]
            raise PostgresUnavailable(
                f"{Path(command[0]).name} {command[1] if len(command) > 1 else ''} failed "
                f"(exit {completed.returncode}): {' | '.join(output)}"
            )


class RestartablePostgres:
    """A private server of one caller's own that it may stop and start again (same port,
    same data): for outage tests and benchmarks. Always private, even when a server is
    configured (`CRM_TEST_POSTGRES_*`), so stopping it disturbs nobody else.

    Its `halt()` is abrupt (every connection cut, as when the database server crashes);
    `resume()` starts it again on the same port, after crash recovery. Unlike the throw-away
    server, commits are synchronous: what it acknowledged survives the crash.
    """

    def __init__(self) -> None:
        self._private = _PrivateServer(crash_safe=True)
        self._server: PostgresServer | None = None

    @property
    def server(self) -> PostgresServer:
        if self._server is None:
            raise PostgresUnavailable("the private server is not started")
        return self._server

    def start(self) -> PostgresServer:
        self._server = self._private.start()
        self._private.open_controller()
        return self._server

    def halt(self) -> None:
        self._private.halt()

    def resume(self) -> None:
        self._private.resume(self.server.port)

    def stop(self) -> None:
        self._private.stop()
        self._server = None


@contextlib.contextmanager
def private_tls_server(cert_file: Path, key_file: Path) -> Iterator[PostgresServer]:
    """A private server of its own accepting TLS with this certificate (always private: the
    configured server's TLS setup is unknown). Skips (fails on CI) when none can be started."""
    private = _PrivateServer(tls=(cert_file, key_file))
    try:
        server = private.start()
    except PostgresUnavailable as error:
        _unavailable(f"private TLS server: {error}")
    try:
        yield server
    finally:
        private.stop()


def _unavailable(reason: str) -> NoReturn:
    """Skips the test, or fails it on CI, where skipping would hide a broken setup."""
    print(f"PostgreSQL unavailable: {reason}", file=sys.stderr)
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL is required on CI: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL unavailable: {reason}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    provider = PostgresProvider()
    try:
        server = provider.start()
    except PostgresUnavailable as error:
        _unavailable(str(error))
    try:
        yield server
    finally:
        provider.stop()


@pytest.fixture
def restartable_postgres() -> Iterator[RestartablePostgres]:
    """A private server of the test's own, which the test may halt and resume (outage tests)."""
    postgres = RestartablePostgres()
    try:
        postgres.start()
    except PostgresUnavailable as error:
        _unavailable(f"no private server for an outage test: {error}")
    try:
        yield postgres
    finally:
        postgres.stop()


@pytest.fixture
def postgres_persistence(postgres_server: PostgresServer) -> Iterator[PersistenceSettings]:
    """Settings of a fresh, empty database, dropped after the test."""
    dbname = postgres_server.create_database()
    try:
        yield postgres_server.persistence(dbname)
    finally:
        postgres_server.drop_database(dbname)


@pytest.fixture(
    params=[
        pytest.param("memory", id="memory"),
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def persistence(request: pytest.FixtureRequest, tmp_path: Path) -> PersistenceSettings:
    """Runs the test once per persistence choice, each time on empty storage."""
    kind: str = request.param
    if kind == "memory":
        return PersistenceSettings.in_memory()
    if kind == "sqlite":
        return PersistenceSettings.sqlite(tmp_path / "data")
    settings: PersistenceSettings = request.getfixturevalue("postgres_persistence")
    return settings


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def durable_persistence(request: pytest.FixtureRequest, tmp_path: Path) -> PersistenceSettings:
    """The persistence choices whose data outlives the objects using it (to reopen it), each
    time on empty storage."""
    if request.param == "sqlite":
        return PersistenceSettings.sqlite(tmp_path / "data")
    settings: PersistenceSettings = request.getfixturevalue("postgres_persistence")
    return settings
