"""Settings of the interaction service, read from the environment by crmcore.config.

- `CRM_INTERACTION_ADDRESS` (default 127.0.0.1:50052), `CRM_PERSISTENCE` (default `sqlite`),
  `CRM_DATA_DIR`, `CRM_SHUTDOWN_GRACE_S`, `CRM_WORKER_THREADS` and the eventsourcing /
  PostgreSQL variables: see `crmcore.config.ServiceSettings`.
- `NATS_URL`, `CRM_STREAM`, …: the event bus, see `crmcore.config.BusSettings`. The service
  publishes its events there (`crm.interaction.>`, `crm.voc.>`) and records the routing
  service's decisions (`crm.routing.>`); while NATS is unreachable it keeps serving and
  catches up when NATS returns.
- `CRM_SLA_POLICIES` or `CRM_SLA_POLICIES_FILE` (policies and business calendar as JSON),
  `CRM_SLA_TICK_S`, `CRM_INTERACTION_STATE_CACHE`: see `crmcore.config.InteractionSettings`;
  without policies the built-in ones apply (`crmcore.domain.sla.DEFAULT_POLICIES`).
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from crmcore.config import (
    BusSettings,
    ConfigurationError,
    ServiceSettings,
    bus_from_env,
    interaction_from_env,
    service_from_env,
)
from crmcore.domain.errors import InvalidValue
from crmcore.domain.sla import DEFAULT_POLICIES, SlaPolicies, policies_from_json


class InteractionServiceSettings(msgspec.Struct, frozen=True, kw_only=True):
    service: ServiceSettings
    #: None runs without a bus (no events published, no routing decisions): tests only.
    bus: BusSettings | None
    sla_policies: SlaPolicies = DEFAULT_POLICIES
    #: Seconds between two looks of the SLA scheduler for deadlines that passed.
    sla_tick_s: float = 1.0
    #: Aggregates whose latest state is kept in memory (0: none).
    state_cache_size: int = 10_000


def settings_from_env(environ: Mapping[str, str] | None = None) -> InteractionServiceSettings:
    """The interaction service's settings from the environment (or the given mapping)."""
    own = interaction_from_env(environ)
    policies = DEFAULT_POLICIES
    if own.sla_policies_json is not None:
        try:
            policies = policies_from_json(own.sla_policies_json)
        except InvalidValue as error:
            raise ConfigurationError(f"SLA policies: {error}") from None
    return InteractionServiceSettings(
        service=service_from_env("interaction", environ),
        bus=bus_from_env(environ),
        sla_policies=policies,
        sla_tick_s=own.sla_tick_s,
        state_cache_size=own.state_cache_size,
    )
