"""Runs the customer service until SIGTERM or SIGINT.

Started as `crm-customer` or `python -m services.customer`.
Configured only by the environment (services.customer.config). Exit status 0 after a graceful
stop, 2 when the configuration cannot be used.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from crmcore.adapters.grpc.server import serve_until_signalled
from crmcore.config import ConfigurationError
from services.customer.bootstrap import start
from services.customer.config import CustomerServiceSettings, settings_from_env

log = logging.getLogger("services.customer")


async def serve(settings: CustomerServiceSettings) -> None:
    service = await start(settings)
    assert service.server is not None
    try:
        await serve_until_signalled(service.server, grace=settings.service.shutdown_grace_s)
    finally:
        await service.stop()
    log.info("customer service stopped")


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = settings_from_env()
    except ConfigurationError as error:
        print(f"crm-customer: {error}", file=sys.stderr)
        return 2
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
