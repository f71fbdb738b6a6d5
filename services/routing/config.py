"""Settings of the routing service, read from the environment by crmcore.config.

- `CRM_ROUTING_ADDRESS` (default 127.0.0.1:50053), `CRM_PERSISTENCE` (default `sqlite`),
  `CRM_DATA_DIR`, `CRM_SHUTDOWN_GRACE_S`, `CRM_WORKER_THREADS` and the eventsourcing/PostgreSQL
  variables: see `crmcore.config.ServiceSettings`.
- `NATS_URL`, `CRM_STREAM`, …: the event bus, see `crmcore.config.BusSettings`. The service
  consumes `crm.interaction.>` (work arriving and leaving) and publishes its own events
  (`crm.routing.*`); while NATS is unreachable it keeps serving and catches up when it returns.

- `CRM_ROUTING_PRIORITY_WAIT_S`, `CRM_ROUTING_MISS_COOLDOWN_S`, `CRM_ROUTING_SNAPSHOT_EVERY`:
  the engine's policy and how often it is snapshotted, see `crmcore.config.RoutingSettings`.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from crmcore.config import (
    BusSettings,
    ConfigurationError,
    ServiceSettings,
    bus_from_env,
    routing_from_env,
    service_from_env,
)
from crmcore.domain.errors import InvalidValue
from crmcore.domain.routing import RoutingPolicy


class RoutingServiceSettings(msgspec.Struct, frozen=True, kw_only=True):
    service: ServiceSettings
    #: None runs without a bus (no interaction events in, no routing events out): tests only.
    bus: BusSettings | None
    policy: RoutingPolicy = msgspec.field(default_factory=RoutingPolicy)
    #: Events between two snapshots of the engine (a restart replays at most this many).
    snapshot_every: int = 10_000


def settings_from_env(environ: Mapping[str, str] | None = None) -> RoutingServiceSettings:
    """The routing service's settings from the environment (or the given mapping)."""
    routing = routing_from_env(environ)
    try:
        policy = RoutingPolicy(
            priority_wait_seconds=routing.priority_wait_s,
            miss_cooldown_seconds=routing.miss_cooldown_s,
        )
    except InvalidValue as error:
        variable = {
            "priority_wait_seconds": "CRM_ROUTING_PRIORITY_WAIT_S",
            "miss_cooldown_seconds": "CRM_ROUTING_MISS_COOLDOWN_S",
        }.get(error.field, error.field)
        raise ConfigurationError(f"{variable}: {error.reason}") from None
    return RoutingServiceSettings(
        service=service_from_env("routing", environ),
        bus=bus_from_env(environ),
        policy=policy,
        snapshot_every=routing.snapshot_every,
    )
