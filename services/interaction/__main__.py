"""Runs the interaction service until SIGTERM or SIGINT.

Started as `crm-interaction` or `python -m services.interaction`.
Configured only by the environment (services.interaction.config). Exit status 0 after a
graceful stop, 2 when the configuration cannot be used.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from crmcore.adapters.grpc.server import serve_until_signalled
from crmcore.config import ConfigurationError
from services.interaction.bootstrap import start
from services.interaction.config import InteractionServiceSettings, settings_from_env

log = logging.getLogger("services.interaction")


async def serve(settings: InteractionServiceSettings) -> None:
    service = await start(settings)
    assert service.server is not None
    try:
        await serve_until_signalled(service.server, grace=settings.service.shutdown_grace_s)
    finally:
        await service.stop()
    log.info("interaction service stopped")


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = settings_from_env()
    except ConfigurationError as error:
        print(f"crm-interaction: {error}", file=sys.stderr)
        return 2
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
