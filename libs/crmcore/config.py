"""The one place that reads the environment.

Everything configurable is read here into typed settings; the rest of the code (library,
services, benchmarks) receives settings objects and never looks at `os.environ` itself.

Persistence (ARCHITECTURE.md, "Storage"):
- `CRM_PERSISTENCE`: `memory` (default for the library), `sqlite` (embedded default of the
  services) or `postgres` (production).
- `CRM_DATA_DIR`: where SQLite files live, one per application (default `.crm-data`).
- The eventsourcing library's own variables pass through unchanged, optionally prefixed by the
  upper-cased application name: `POSTGRES_DBNAME`, `POSTGRES_HOST`, `POSTGRES_PORT`,
  `POSTGRES_USER`, `POSTGRES_PASSWORD`, `POSTGRES_SCHEMA`, `POSTGRES_POOL_SIZE`, `CIPHER_KEY`, …
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import msgspec

PersistenceKind = Literal["memory", "sqlite", "postgres"]
PERSISTENCE_KINDS: tuple[PersistenceKind, ...] = ("memory", "sqlite", "postgres")

_PERSISTENCE_MODULES: dict[PersistenceKind, str] = {
    "memory": "eventsourcing.popo",
    "sqlite": "eventsourcing.sqlite",
    "postgres": "eventsourcing.postgres",
}

# Library variables passed through to each application (with or without an application prefix).
_PASSED_THROUGH = ("POSTGRES_", "SQLITE_", "CIPHER_", "COMPRESSOR_", "SINGLE_ROW_TRACKING")


class ConfigurationError(ValueError):
    """A setting in the environment has a value that cannot be used."""


class PersistenceSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Where and how the event store of every application is kept."""

    kind: PersistenceKind = "memory"
    data_dir: Path = Path(".crm-data")
    library_env: dict[str, str] = msgspec.field(default_factory=dict)

    @classmethod
    def in_memory(cls) -> PersistenceSettings:
        return cls(kind="memory")

    @classmethod
    def sqlite(cls, data_dir: Path | str) -> PersistenceSettings:
        return cls(kind="sqlite", data_dir=Path(data_dir))

    @classmethod
    def postgres(
        cls,
        *,
        dbname: str,
        host: str = "127.0.0.1",
        port: int = 5432,
        user: str = "postgres",
        password: str = "",
        schema: str = "",
        pool_size: int = 5,
    ) -> PersistenceSettings:
        return cls(
            kind="postgres",
            library_env={
                "POSTGRES_DBNAME": dbname,
                "POSTGRES_HOST": host,
                "POSTGRES_PORT": str(port),
                "POSTGRES_USER": user,
                "POSTGRES_PASSWORD": password,
                "POSTGRES_SCHEMA": schema,
                "POSTGRES_POOL_SIZE": str(pool_size),
            },
        )

    def application_env(self, application_name: str) -> dict[str, str]:
        """The eventsourcing environment of the application called `application_name`."""
        env = dict(self.library_env)
        env["PERSISTENCE_MODULE"] = _PERSISTENCE_MODULES[self.kind]
        if self.kind == "sqlite":
            self.data_dir.mkdir(parents=True, exist_ok=True)
            env.setdefault(
                f"{application_name.upper()}_SQLITE_DBNAME",
                str(self.data_dir / f"{application_name}.sqlite"),
            )
            env.setdefault("SQLITE_LOCK_TIMEOUT", "10")
        if self.kind == "postgres":
            # The library defaults are made for one process; a service under load needs room.
            env.setdefault("POSTGRES_POOL_SIZE", "5")
            env.setdefault("POSTGRES_MAX_OVERFLOW", "10")
            env.setdefault("POSTGRES_CONNECT_TIMEOUT", "5")
        return env


def _persistence_from(
    environ: Mapping[str, str], default_kind: PersistenceKind = "memory"
) -> PersistenceSettings:
    kind = environ.get("CRM_PERSISTENCE", default_kind).strip().lower() or default_kind
    if kind not in PERSISTENCE_KINDS:
        raise ConfigurationError(
            f"CRM_PERSISTENCE={kind!r}: expected one of {', '.join(PERSISTENCE_KINDS)}"
        )
    library_env = {
        key: value for key, value in environ.items() if any(part in key for part in _PASSED_THROUGH)
    }
    if kind == "postgres" and not any(key.endswith("POSTGRES_DBNAME") for key in library_env):
        raise ConfigurationError("CRM_PERSISTENCE=postgres needs POSTGRES_DBNAME (and _HOST, …)")
    return PersistenceSettings(
        kind=kind,
        data_dir=Path(environ.get("CRM_DATA_DIR", ".crm-data")),
        library_env=library_env,
    )


def persistence_from_env(
    environ: Mapping[str, str] | None = None, *, default_kind: PersistenceKind = "memory"
) -> PersistenceSettings:
    """Persistence settings from the environment (or the given mapping, for tests)."""
    return _persistence_from(os.environ if environ is None else environ, default_kind)


ServiceName = Literal["customer", "interaction", "routing", "metrics"]
DEFAULT_PORTS: dict[ServiceName, int] = {
    "customer": 50051,
    "interaction": 50052,
    "routing": 50053,
    "metrics": 50054,
}


class ServiceSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How one gRPC service runs: where it listens and where it keeps its data.

    - `CRM_<SERVICE>_ADDRESS`: `host:port` to listen on (default 127.0.0.1 and the service's port:
      customer 50051, interaction 50052, routing 50053, metrics 50054).
    - `CRM_PERSISTENCE` etc. (see above); services default to `sqlite` in `CRM_DATA_DIR`.
    - `CRM_SHUTDOWN_GRACE_S`: seconds in-flight RPCs get on SIGTERM (default 5).
    - `CRM_DEFAULT_REGION`: ISO 3166 region for national phone numbers (e.g. `JP`; default none).
    - `CRM_WORKER_THREADS`: threads running store calls of concurrent RPCs (default 64).
    - `CRM_INDEX_SECRET`: key of the hashes that index contact points (customer service). Set it
      once per installation and never change it: existing contact points are found by it.
      Unset, a development secret is used.
    """

    service: ServiceName
    address: str
    persistence: PersistenceSettings
    shutdown_grace_s: float = 5.0
    default_region: str | None = None
    worker_threads: int = 64
    index_secret: bytes | None = None


def service_from_env(
    service: ServiceName, environ: Mapping[str, str] | None = None
) -> ServiceSettings:
    """Settings of `service` from the environment (or the given mapping, for tests)."""
    env = os.environ if environ is None else environ
    region = env.get("CRM_DEFAULT_REGION", "").strip().upper() or None
    return ServiceSettings(
        service=service,
        address=env.get(f"CRM_{service.upper()}_ADDRESS", "").strip()
        or f"127.0.0.1:{DEFAULT_PORTS[service]}",
        persistence=_persistence_from(env, "sqlite"),
        shutdown_grace_s=_number(env, "CRM_SHUTDOWN_GRACE_S", 5.0, 0),
        default_region=region,
        worker_threads=int(_number(env, "CRM_WORKER_THREADS", 64, 1)),
        index_secret=env.get("CRM_INDEX_SECRET", "").encode() or None,
    )


# --- Event bus (ARCHITECTURE.md, "Events on the bus") ------------------------------------------

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


class BusSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Where the NATS JetStream bus is and how the event stream is kept.

    - `NATS_URL`: the server(s) to use, comma-separated. Unset means "not given": the embedded
      stack starts its own server, everything else falls back to `DEFAULT_NATS_URL`.
    - `CRM_STREAM`: name of the stream capturing `crm.>` (default `CRM`).
    - `CRM_STREAM_DUPLICATE_WINDOW_S`: how long JetStream remembers `Nats-Msg-Id`s to drop
      republished events (default 120 s). Consumers stay idempotent: the window is finite.
    - `CRM_STREAM_MAX_AGE_S`: how long events stay in the stream (default 30 days, 0 = forever).
    - `CRM_STREAM_MAX_BYTES`: size cap of the stream, oldest events dropped first (-1 = none).
    - `CRM_RELAY_BATCH`: how many stored events the relay publishes per round (default 1000).
    """

    nats_url: str | None = None
    stream: str = "CRM"
    subjects: tuple[str, ...] = ("crm.>",)
    duplicate_window_s: float = 120.0
    max_age_s: float = 30 * 24 * 3600.0
    max_bytes: int = -1
    relay_batch: int = 1000

    @property
    def url(self) -> str:
        """The configured server URL, or the local default when none was given."""
        return self.nats_url or DEFAULT_NATS_URL

    @property
    def servers(self) -> list[str]:
        return [part.strip() for part in self.url.split(",") if part.strip()]


def _number(environ: Mapping[str, str], key: str, default: float, minimum: float) -> float:
    raw = environ.get(key, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{key}={raw!r}: expected a number") from None
    if value < minimum:
        raise ConfigurationError(f"{key}={raw!r}: must be at least {minimum:g}")
    return value


def bus_from_env(environ: Mapping[str, str] | None = None) -> BusSettings:
    """Event bus settings from the environment (or the given mapping, for tests)."""
    env = os.environ if environ is None else environ
    defaults = BusSettings()
    stream = env.get("CRM_STREAM", "").strip() or defaults.stream
    if not all(ch.isalnum() or ch in "-_" for ch in stream):
        raise ConfigurationError(f"CRM_STREAM={stream!r}: use letters, digits, '-' and '_' only")
    return BusSettings(
        nats_url=env.get("NATS_URL", "").strip() or None,
        stream=stream,
        duplicate_window_s=_number(
            env, "CRM_STREAM_DUPLICATE_WINDOW_S", defaults.duplicate_window_s, 1
        ),
        max_age_s=_number(env, "CRM_STREAM_MAX_AGE_S", defaults.max_age_s, 0),
        max_bytes=int(_number(env, "CRM_STREAM_MAX_BYTES", defaults.max_bytes, -1)),
        relay_batch=int(_number(env, "CRM_RELAY_BATCH", defaults.relay_batch, 1)),
    )


def child_environment(overrides: Mapping[str, str]) -> dict[str, str]:
    """The environment for a process this one starts (`crm up`): ours, with `overrides`."""
    return {**os.environ, **overrides}


# --- Metrics service (issue 7) -----------------------------------------------------------------

ABANDON_TREATMENTS = ("missed", "excluded", "met_within_threshold", "excluded_within_threshold")
DEFAULT_PROMETHEUS_ADDRESS = "127.0.0.1:9464"


class MetricsSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How the metrics service counts and where it exposes Prometheus metrics.

    - `CRM_METRICS_TIME_ZONE`: IANA zone of local days, weeks and months (default `UTC`).
      The read models remember it: changing it needs `crm metrics rebuild`.
    - Default KPI policy (every request may override it): `CRM_METRICS_SL_THRESHOLD_S` (20),
      `CRM_METRICS_SL_ABANDONS` (`missed`, `excluded`, `met_within_threshold`,
      `excluded_within_threshold`; default `missed`), `CRM_METRICS_SHORT_ABANDON_S` (0),
      `CRM_METRICS_FCR_WINDOW_DAYS` (7), `CRM_METRICS_BOT_REPEAT_HOURS` (24),
      `CRM_METRICS_FIRST_RESPONSE_TARGET_S` (3600), `CRM_METRICS_RESOLUTION_TARGET_S` (86400).
    - `CRM_METRICS_PROMETHEUS_ADDRESS`: `host:port` of the `/metrics` endpoint (default
      127.0.0.1:9464; `off` disables it).
    - `CRM_METRICS_BATCH`: events fetched and committed per transaction (default 1000).
    """

    time_zone: str = "UTC"
    sl_threshold_s: int = 20
    sl_abandons: str = "missed"
    short_abandon_s: int = 0
    fcr_window_days: int = 7
    bot_repeat_hours: int = 24
    first_response_target_s: int = 3600
    resolution_target_s: int = 86400
    prometheus_address: str | None = DEFAULT_PROMETHEUS_ADDRESS
    batch: int = 1000


def metrics_from_env(environ: Mapping[str, str] | None = None) -> MetricsSettings:
    """Metrics settings from the environment (or the given mapping, for tests)."""
    env = os.environ if environ is None else environ
    defaults = MetricsSettings()
    abandons = env.get("CRM_METRICS_SL_ABANDONS", "").strip().lower() or defaults.sl_abandons
    if abandons not in ABANDON_TREATMENTS:
        raise ConfigurationError(
            f"CRM_METRICS_SL_ABANDONS={abandons!r}: expected one of {', '.join(ABANDON_TREATMENTS)}"
        )
    prometheus = env.get("CRM_METRICS_PROMETHEUS_ADDRESS", DEFAULT_PROMETHEUS_ADDRESS).strip()
    return MetricsSettings(
        time_zone=env.get("CRM_METRICS_TIME_ZONE", "").strip() or defaults.time_zone,
        sl_threshold_s=int(_number(env, "CRM_METRICS_SL_THRESHOLD_S", defaults.sl_threshold_s, 0)),
        sl_abandons=abandons,
        short_abandon_s=int(
            _number(env, "CRM_METRICS_SHORT_ABANDON_S", defaults.short_abandon_s, 0)
        ),
        fcr_window_days=int(
            _number(env, "CRM_METRICS_FCR_WINDOW_DAYS", defaults.fcr_window_days, 1)
        ),
        bot_repeat_hours=int(
            _number(env, "CRM_METRICS_BOT_REPEAT_HOURS", defaults.bot_repeat_hours, 1)
        ),
        first_response_target_s=int(
            _number(env, "CRM_METRICS_FIRST_RESPONSE_TARGET_S", defaults.first_response_target_s, 0)
        ),
        resolution_target_s=int(
            _number(env, "CRM_METRICS_RESOLUTION_TARGET_S", defaults.resolution_target_s, 1)
        ),
        prometheus_address=None if prometheus.lower() in ("", "off", "none") else prometheus,
        batch=int(_number(env, "CRM_METRICS_BATCH", defaults.batch, 1)),
    )


# --- The interaction service ------------------------------------------------------------------


class InteractionSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What only the interaction service needs.

    - `CRM_SLA_POLICIES`: the SLA policies and their business calendar as JSON (the format of
      `crmcore.domain.sla.policies_from_json`), or `CRM_SLA_POLICIES_FILE`: a file holding it.
      Neither: the built-in policies by priority, Monday–Friday 09:00–18:00 UTC.
    - `CRM_SLA_TICK_S`: how often the SLA scheduler looks for deadlines that passed (default 1 s).
    - `CRM_INTERACTION_STATE_CACHE`: how many aggregates' latest states the service keeps in
      memory so that commands skip reading them back (default 10000; 0: none). Meant for one
      service instance per database: with several, set 0 (queries could otherwise see a
      state another instance changed late; commands stay correct either way).
    """

    sla_policies_json: str | None = None
    sla_tick_s: float = 1.0
    state_cache_size: int = 10_000


def interaction_from_env(environ: Mapping[str, str] | None = None) -> InteractionSettings:
    """Interaction service settings from the environment (or the given mapping, for tests)."""
    env = os.environ if environ is None else environ
    inline = env.get("CRM_SLA_POLICIES", "").strip()
    path = env.get("CRM_SLA_POLICIES_FILE", "").strip()
    if inline and path:
        raise ConfigurationError("set CRM_SLA_POLICIES or CRM_SLA_POLICIES_FILE, not both")
    policies_json: str | None = inline or None
    if path:
        try:
            policies_json = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigurationError(f"CRM_SLA_POLICIES_FILE={path!r}: {error}") from None
    return InteractionSettings(
        sla_policies_json=policies_json,
        sla_tick_s=_number(env, "CRM_SLA_TICK_S", 1.0, 0.01),
        state_cache_size=int(_number(env, "CRM_INTERACTION_STATE_CACHE", 10_000, 0)),
    )
