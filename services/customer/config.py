"""Settings of the customer service, read from the environment by crmcore.config.

- `CRM_CUSTOMER_ADDRESS` (default 127.0.0.1:50051), `CRM_PERSISTENCE` (default `sqlite`),
  `CRM_DATA_DIR`, `CRM_SHUTDOWN_GRACE_S`, `CRM_DEFAULT_REGION`, `CRM_WORKER_THREADS` and the
  eventsourcing/PostgreSQL variables: see `crmcore.config.ServiceSettings`.
- `NATS_URL`, `CRM_STREAM`, …: the event bus, see `crmcore.config.BusSettings`. The service
  publishes its events there and reads the interaction and VOC events for the timeline; while
  NATS is unreachable it keeps serving and catches up when NATS returns.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from crmcore.config import BusSettings, ServiceSettings, bus_from_env, service_from_env


class CustomerServiceSettings(msgspec.Struct, frozen=True, kw_only=True):
    service: ServiceSettings
    #: None runs without a bus (no events published, no timeline fed): embedded tests only.
    bus: BusSettings | None


def settings_from_env(environ: Mapping[str, str] | None = None) -> CustomerServiceSettings:
    """The customer service's settings from the environment (or the given mapping)."""
    return CustomerServiceSettings(
        service=service_from_env("customer", environ), bus=bus_from_env(environ)
    )
