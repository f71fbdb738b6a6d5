"""Composition root of the metrics service: builds everything from the settings, and stops it.

- the metrics projection (`crmcore.application.metrics`) on the read-model store `metrics`
  (SQLite file in the data directory, or PostgreSQL);
- with a bus: the JetStream feed projecting every event on `crm.>` (one transaction per batch
  with its stream sequence);
- the gRPC server (health, reflection, domain-error interceptor) with the servicer, whose
  queries run on a pool of `worker_threads` threads;
- the Prometheus endpoint (`GET /metrics`, text exposition 0.0.4) on its own small listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from crm.v1 import metrics_pb2, metrics_pb2_grpc
from crmcore.adapters.grpc.access import ServiceAccess, open_service_access
from crmcore.adapters.grpc.calls import BlockingCalls
from crmcore.adapters.grpc.server import RunningServer, ServiceBinding, start_server
from crmcore.application.metrics import (
    FeedStats,
    KpiQuery,
    MetricsFeed,
    MetricsProjection,
    open_metrics,
    prometheus_text,
)
from crmcore.domain import kpis
from services.metrics.config import MetricsServiceSettings
from services.metrics.servicer import MetricsServicer

log = logging.getLogger(__name__)

SERVICE_NAME = metrics_pb2.DESCRIPTOR.services_by_name["MetricsService"].full_name
#: How long the feed gets to return once asked to stop.
BUS_STOP_S = 2.0
_MAX_REQUEST_BYTES = 16 * 1024


@dataclass
class MetricsService:
    """One running metrics service (`start`), stopped with `stop()`."""

    settings: MetricsServiceSettings
    projection: MetricsProjection
    calls: BlockingCalls
    servicer: MetricsServicer
    feed: MetricsFeed | None = None
    server: RunningServer | None = None
    access: ServiceAccess | None = None
    prometheus: asyncio.Server | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stopped: bool = False

    @property
    def port(self) -> int:
        assert self.server is not None, "the service is not started"
        return self.server.port

    @property
    def address(self) -> str:
        host = self.settings.service.address.rpartition(":")[0] or "127.0.0.1"
        return f"{host}:{self.port}"

    @property
    def prometheus_port(self) -> int | None:
        if self.prometheus is None or not self.prometheus.sockets:
            return None
        return int(self.prometheus.sockets[0].getsockname()[1])

    async def stop(self, grace: float | None = None) -> None:
        """Drains the RPCs in flight (health NOT_SERVING meanwhile), stops the feed after the
        batch in hand (committed with its position, so nothing is lost or repeated), and
        closes the store."""
        if self._stopped:
            return
        self._stopped = True
        if grace is None:
            grace = self.settings.service.shutdown_grace_s
        if self.prometheus is not None:
            self.prometheus.close()
        if self.server is not None and not self.server.stopped.is_set():
            await self.server.stop(grace)
        if self.feed is not None:
            self.feed.stop()
        await _finish(self.tasks, within_s=BUS_STOP_S)
        self.calls.shutdown(wait=True)
        if self.access is not None:
            await asyncio.to_thread(self.access.close)
        await asyncio.to_thread(self.projection.close_store)


def build(settings: MetricsServiceSettings) -> MetricsService:
    """The service's parts, wired but not running (no server, no bus connection yet)."""
    projection = open_metrics(
        settings.service.persistence,
        time_zone=settings.metrics.time_zone,
        policy=settings.policy(),
        sla_policies=settings.sla_policies,
    )
    calls = BlockingCalls(settings.service.worker_threads, name="metrics-rpc")
    feed = (
        MetricsFeed(projection, settings.bus, batch=settings.metrics.batch)
        if settings.bus is not None
        else None
    )
    servicer = MetricsServicer(projection, calls, feed_stats=feed.stats if feed else None)
    return MetricsService(
        settings=settings, projection=projection, calls=calls, servicer=servicer, feed=feed
    )


async def start(settings: MetricsServiceSettings) -> MetricsService:
    """Builds the service and starts serving on `settings.service.address` (port 0: any)."""
    service = await asyncio.to_thread(build, settings)
    try:
        service.access = await asyncio.to_thread(open_service_access, settings.service)
        service.server = await start_server(
            [
                ServiceBinding(
                    full_name=SERVICE_NAME,
                    add_to_server=lambda server: (
                        metrics_pb2_grpc.add_MetricsServiceServicer_to_server(
                            service.servicer, server
                        )
                    ),
                )
            ],
            settings.service.address,
            access=service.access.interceptor,
            tls=settings.service.tls,
            max_message_bytes=settings.service.max_message_bytes,
            health_address=settings.service.health_address,
        )
        address = settings.metrics.prometheus_address
        if address is not None:
            host, _, port = address.rpartition(":")
            service.prometheus = await asyncio.start_server(
                lambda reader, writer: _scrape(service, reader, writer),
                host or "127.0.0.1",
                int(port),
            )
    except BaseException:
        await service.stop(grace=0)
        raise
    if service.feed is not None:
        service.tasks.append(asyncio.create_task(_logged(service.feed.run(), "bus feed")))
    log.info(
        "metrics service on %s (%s storage, bus %s, Prometheus %s)",
        service.address,
        settings.service.persistence.kind,
        "off" if settings.bus is None else settings.bus.url,
        "off" if service.prometheus_port is None else f"port {service.prometheus_port}",
    )
    return service


def scrape_text(projection: MetricsProjection, feed: FeedStats | None) -> str:
    """The Prometheus exposition: live state, today's headline KPIs, the feed's health."""
    now = kpis.to_ms(datetime.now(UTC))
    live = projection.live(now)
    start, end = kpis.named_period(kpis.NamedPeriod.TODAY, now, projection.calendar)
    report = projection.kpis(
        KpiQuery(start_ms=start, end_ms=end, policy=projection.policy, as_of_ms=now)
    )
    return prometheus_text(projection, live, report.rows[0].values, feed, now_ms=now)


async def _scrape(
    service: MetricsService, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """A minimal HTTP/1.1 responder: `GET /metrics` (or `/`), everything else 404."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(head) > _MAX_REQUEST_BYTES or len(request_line) < 2:
            await _respond(writer, 400, b"bad request\n")
            return
        method, path = request_line[0], request_line[1].split("?", 1)[0]
        if method not in ("GET", "HEAD") or path not in ("/metrics", "/"):
            await _respond(writer, 404, b"not found: try /metrics\n")
            return
        text = await service.calls(
            scrape_text, service.projection, service.feed.stats if service.feed else None
        )
        body = text.encode()
        await _respond(writer, 200, b"" if method == "HEAD" else body, length=len(body))
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
        pass
    except Exception:
        log.exception("Prometheus scrape failed")
        with contextlib.suppress(Exception):
            await _respond(writer, 500, b"internal error\n")
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _respond(
    writer: asyncio.StreamWriter, status: int, body: bytes, *, length: int | None = None
) -> None:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error"}
    content_type = "text/plain; version=0.0.4; charset=utf-8" if status == 200 else "text/plain"
    writer.write(
        (
            f"HTTP/1.1 {status} {reason[status]}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        + body
    )
    await writer.drain()


async def _finish(tasks: list[asyncio.Task[None]], *, within_s: float) -> None:
    """Waits for the feed to return after `stop()`, cancelling it after `within_s`: one stuck
    connecting to an unreachable NATS server must not hold up the shutdown."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=within_s)
    for task in pending:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def _logged(work: Coroutine[Any, Any, None], name: str) -> None:
    try:
        await work
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("metrics service: the %s stopped with an error", name)
