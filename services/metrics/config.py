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
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from crmcore.config import (
    BusSettings,
    MetricsSettings,
    ServiceSettings,
    bus_from_env,
    metrics_from_env,
    service_from_env,
)
from crmcore.domain.kpis import AbandonTreatment, KpiPolicy, ServiceLevelPolicy


class MetricsServiceSettings(msgspec.Struct, frozen=True, kw_only=True):
    service: ServiceSettings
    #: None runs without a bus (nothing projected but what is applied in-process): tests only.
    bus: BusSettings | None
    metrics: MetricsSettings = msgspec.field(default_factory=MetricsSettings)

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
    )
