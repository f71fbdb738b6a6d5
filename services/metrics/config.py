"""Settings of the metrics service, read from the environment by crmcore.config.

- `CRM_METRICS_ADDRESS` (default 127.0.0.1:50054), `CRM_PERSISTENCE` (default `sqlite`: the
  read models in `CRM_DATA_DIR/metrics.sqlite`; `postgres` with the `POSTGRES_*` variables,
  optionally prefixed `METRICS_`), `CRM_SHUTDOWN_GRACE_S`, `CRM_WORKER_THREADS`: see
  `crmcore.config.ServiceSettings`.
- `NATS_URL`, `CRM_STREAM`, …: the event bus the service projects (`crm.>`), see
  `crmcore.config.BusSettings`. While NATS is unreachable the service keeps answering from what
  it has and catches up when NATS returns.
- `CRM_METRICS_TIME_ZONE`, the default KPI policy, `CRM_METRICS_PROMETHEUS_ADDRESS`,
  `CRM_METRICS_BATCH`: see `crmcore.config.MetricsSettings`.
- `CRM_SLA_POLICIES` / `CRM_SLA_POLICIES_FILE`: the SLA policies, the same setting as the
  interaction service's (`crmcore.config.InteractionSettings`; default: the built-in
  policies). SLA attainment counts the interaction service's SLA events; the policies only say
  which clocks of a case have a target at all, so give both services the same ones.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from crmcore.config import (
    BusSettings,
    ConfigurationError,
    MetricsSettings,
    ServiceSettings,
    bus_from_env,
    interaction_from_env,
    metrics_from_env,
    service_from_env,
)
from crmcore.domain.errors import InvalidValue
from crmcore.domain.kpis import AbandonTreatment, KpiPolicy, ServiceLevelPolicy
from crmcore.domain.sla import DEFAULT_POLICIES, SlaPolicies, policies_from_json


class MetricsServiceSettings(msgspec.Struct, frozen=True, kw_only=True):
    service: ServiceSettings
    #: None runs without a bus (nothing projected but what is applied in-process): tests only.
    bus: BusSettings | None
    metrics: MetricsSettings = msgspec.field(default_factory=MetricsSettings)
    #: Which SLA clocks have a target (the interaction service's policies).
    sla_policies: SlaPolicies = DEFAULT_POLICIES

    def policy(self) -> KpiPolicy:
        """The default KPI policy (requests may override any part of it)."""
        metrics = self.metrics
        return KpiPolicy(
            service_level=ServiceLevelPolicy(
                threshold_s=metrics.sl_threshold_s,
                abandons=AbandonTreatment(metrics.sl_abandons),
                short_abandon_s=metrics.short_abandon_s,
            ),
            fcr_window_days=metrics.fcr_window_days,
            bot_repeat_window_hours=metrics.bot_repeat_hours,
            first_response_target_s=metrics.first_response_target_s,
            resolution_target_s=metrics.resolution_target_s,
        )


def settings_from_env(environ: Mapping[str, str] | None = None) -> MetricsServiceSettings:
    """The metrics service's settings from the environment (or the given mapping)."""
    return MetricsServiceSettings(
        service=service_from_env("metrics", environ),
        bus=bus_from_env(environ),
        metrics=metrics_from_env(environ),
        sla_policies=sla_policies_from_env(environ),
    )


def sla_policies_from_env(environ: Mapping[str, str] | None = None) -> SlaPolicies:
    """The SLA policies the interaction service is configured with (module docstring)."""
    configured = interaction_from_env(environ).sla_policies_json
    if configured is None:
        return DEFAULT_POLICIES
    try:
        return policies_from_json(configured)
    except InvalidValue as error:
        raise ConfigurationError(f"SLA policies: {error}") from None
