"""Settings of the routing service, read from the environment by crmcore.config.

- `CRM_ROUTING_ADDRESS` (default 127.0.0.1:50053), `CRM_PERSISTENCE` (default `sqlite`),
  `CRM_DATA_DIR`, `CRM_SHUTDOWN_GRACE_S`, `CRM_WORKER_THREADS` and the eventsourcing/PostgreSQL
  variables: see `crmcore.config.ServiceSettings`.
- `NATS_URL`, `CRM_STREAM`, …: the event bus, see `crmcore.config.BusSettings`. The service
  consumes `crm.interaction.>` (work arriving and leaving) and publishes its own events
  (`crm.routing.*`); while NATS is unreachable it keeps serving and catches up when it returns.

The engine's policy (what a priority point is worth in wait, the cooldown after a missed
offer) keeps its defaults (`RoutingPolicy`); embedded users pass their own.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from crmcore.config import BusSettings, ServiceSettings, bus_from_env, service_from_env
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
    return RoutingServiceSettings(
        service=service_from_env("routing", environ), bus=bus_from_env(environ)
    )
