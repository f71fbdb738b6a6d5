"""Runs the metrics service until SIGTERM or SIGINT.

Started as `crm-metrics` or `python -m services.metrics`. Configured only by the environment
(services.metrics.config). Exit status 0 after a graceful stop, 2 when the configuration cannot
be used (including read models built with another time zone: rebuild them).
"""

from __future__ import annotations

import asyncio
import logging
import sys

from crmcore.adapters.grpc.server import serve_until_signalled
from crmcore.application.metrics import ReadModelMismatch
from crmcore.config import ConfigurationError
from crmcore.domain.errors import InvalidValue
from services.metrics.bootstrap import start
from services.metrics.config import MetricsServiceSettings, settings_from_env

log = logging.getLogger("services.metrics")


async def serve(settings: MetricsServiceSettings) -> None:
    service = await start(settings)
    assert service.server is not None
    try:
        await serve_until_signalled(service.server, grace=settings.service.shutdown_grace_s)
    finally:
        await service.stop()
    log.info("metrics service stopped")


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = settings_from_env()
        settings.policy().checked()
        asyncio.run(serve(settings))
    except (ConfigurationError, ReadModelMismatch, InvalidValue) as error:
        print(f"crm-metrics: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
