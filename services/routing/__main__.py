"""Runs the routing service until SIGTERM or SIGINT.

Started as `crm-routing` or `python -m services.routing`.
Configured only by the environment (services.routing.config). Exit status 0 after a graceful
stop (offer streams ended, RPCs drained, last snapshot written), 2 when the configuration
cannot be used.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys

from crmcore.config import ConfigurationError
from services.routing.bootstrap import start
from services.routing.config import RoutingServiceSettings, settings_from_env

log = logging.getLogger("services.routing")


async def serve(settings: RoutingServiceSettings) -> None:
    service = await start(settings)
    # The engine's state lives as long as the process: keep the collector from walking it
    # again and again while offers are decided.
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):  # not on every platform
            loop.add_signal_handler(sig, stop.set)
    try:
        assert service.server is not None
        stopped = asyncio.ensure_future(service.server.stopped.wait())
        signalled = asyncio.ensure_future(stop.wait())
        await asyncio.wait({stopped, signalled}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        signalled.cancel()
    finally:
        await service.stop()
    log.info("routing service stopped")


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = settings_from_env()
    except ConfigurationError as error:
        print(f"crm-routing: {error}", file=sys.stderr)
        return 2
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
