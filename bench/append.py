"""Event appends per second on memory, SQLite and PostgreSQL, msgspec mapper vs the stock one.

The same customer-registered event (name, e-mail, phone, tags, timestamp, a nested postal
address) is written once as a msgspec struct, stored through `CRMApplication` with the msgspec
mapper, and once as the eventsourcing library's own dataclass event, stored through a plain
`Application` with the library's default mapper and JSON transcoder. Each stored event is one
`save()`, i.e. one transaction, as one command would make it. Mapper round trips
(`to_stored_event` then `to_domain_event`) are timed on their own, best of several runs, since
this is the cost the msgspec mapper exists to cut.

PostgreSQL comes from `tests.support.postgres` (the configured server, else a private one); when
none can be had its figures are `null` and a line says why.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from time import perf_counter
from typing import Any, ClassVar
from uuid import UUID, uuid4

import msgspec
from eventsourcing import domain as stock_domain
from eventsourcing.application import Application
from eventsourcing.persistence import JSONTranscoder, Mapper, Transcoding
from eventsourcing.utils import Environment, get_topic

from bench.service import positive
from crmcore.application.base import CRMApplication
from crmcore.config import PersistenceSettings
from crmcore.domain.base import Aggregate, Event
from tests.support.postgres import PostgresProvider, PostgresServer, PostgresUnavailable

MAPPERS = ("msgspec", "stock")
BACKENDS = ("memory", "sqlite", "postgres")


# --- The event as this project writes it: msgspec structs. ---------------------------------


class PostalAddress(msgspec.Struct, frozen=True, kw_only=True):
    street: str
    city: str
    region: str
    postal_code: str
    country: str


class BenchCustomer(Aggregate, frozen=True, kw_only=True):
    name: str
    email: str
    phone: str
    tags: tuple[str, ...]
    address: PostalAddress


class BenchCustomerEvent(Event[BenchCustomer], frozen=True, kw_only=True):
    context: ClassVar[str] = "bench"


class BenchCustomerRegistered(BenchCustomerEvent, frozen=True, kw_only=True):
    name: str
    email: str
    phone: str
    tags: tuple[str, ...]
    address: PostalAddress

    def mutate(self, state: BenchCustomer | None) -> BenchCustomer:
        return BenchCustomer(
            id=self.originator_id,
            version=self.originator_version,
            created_on=self.timestamp,
            modified_on=self.timestamp,
            name=self.name,
            email=self.email,
            phone=self.phone,
            tags=self.tags,
            address=self.address,
        )


class MsgspecBenchApplication(CRMApplication):
    name = "bench_append_msgspec"
    aggregate_kind = "bench customer"


# --- The same event as a stock eventsourcing user writes it: dataclass events. -------------


@dataclass(frozen=True)
class StockPostalAddress:
    street: str
    city: str
    region: str
    postal_code: str
    country: str


class PostalAddressAsDict(Transcoding):
    """What the stock JSON transcoder needs to store a nested value object."""

    type = StockPostalAddress
    name = "postal_address"

    def encode(self, obj: StockPostalAddress) -> dict[str, str]:
        return {
            "street": obj.street,
            "city": obj.city,
            "region": obj.region,
            "postal_code": obj.postal_code,
            "country": obj.country,
        }

    def decode(self, data: dict[str, str]) -> StockPostalAddress:
        return StockPostalAddress(**data)


class StockCustomer(stock_domain.Aggregate):
    @dataclass(frozen=True)
    class Registered(stock_domain.Aggregate.Created):
        name: str
        email: str
        phone: str
        # JSON has no tuples: a stock event written with a tuple reads back a list.
        tags: list[str]
        address: StockPostalAddress

    def __init__(
        self, name: str, email: str, phone: str, tags: list[str], address: StockPostalAddress
    ) -> None:
        self.name = name
        self.email = email
        self.phone = phone
        self.tags = tags
        self.address = address


class StockBenchApplication(Application[UUID]):
    name = "bench_append_stock"

    def __init__(self, persistence: PersistenceSettings) -> None:
        super().__init__(env=persistence.application_env(self.name))

    def construct_env(self, name: str, env: Any = None) -> Environment:
        # Like CRMApplication: configured only by the settings given, not by os.environ.
        return Environment(name, dict(env or {}))

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(PostalAddressAsDict())


# --- Events with identical field values for both mappers. ----------------------------------


@dataclass(frozen=True)
class CustomerFacts:
    customer_id: UUID
    at: datetime
    name: str
    email: str
    phone: str
    tags: tuple[str, ...]
    street: str
    city: str


def customer_facts(count: int) -> list[CustomerFacts]:
    start = datetime(2025, 4, 1, 9, 0, tzinfo=UTC)
    return [
        CustomerFacts(
            customer_id=uuid4(),
            at=start + timedelta(seconds=index),
            name=f"山田 花子 {index}",
            email=f"hanako.yamada{index}@example.co.jp",
            phone=f"+8190{index:08d}",
            tags=("vip", "line", f"segment-{index % 7}"),
            street=f"丸の内 1-{index % 9 + 1}-1",
            city="千代田区",
        )
        for index in range(count)
    ]


def msgspec_event(facts: CustomerFacts) -> BenchCustomerRegistered:
    return BenchCustomerRegistered(
        originator_id=facts.customer_id,
        originator_version=1,
        timestamp=facts.at,
        name=facts.name,
        email=facts.email,
        phone=facts.phone,
        tags=facts.tags,
        address=PostalAddress(
            street=facts.street,
            city=facts.city,
            region="東京都",
            postal_code="100-0005",
            country="JP",
        ),
    )


_STOCK_CUSTOMER_TOPIC = get_topic(StockCustomer)


def stock_event(facts: CustomerFacts) -> StockCustomer.Registered:
    return StockCustomer.Registered(
        originator_id=facts.customer_id,
        originator_version=1,
        timestamp=facts.at,
        originator_topic=_STOCK_CUSTOMER_TOPIC,
        name=facts.name,
        email=facts.email,
        phone=facts.phone,
        tags=list(facts.tags),
        address=StockPostalAddress(
            street=facts.street,
            city=facts.city,
            region="東京都",
            postal_code="100-0005",
            country="JP",
        ),
    )


# --- Measurements. --------------------------------------------------------------------------


def mapper_roundtrips_per_s(mapper: Mapper[UUID], event: Any, count: int, repeats: int) -> float:
    """Best rate of `to_stored_event` + `to_domain_event` over `repeats` runs of `count`."""
    decoded = mapper.to_domain_event(mapper.to_stored_event(event))
    if decoded != event:
        raise AssertionError(f"{type(mapper).__name__} does not round-trip: {decoded!r}")
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        started = perf_counter()
        for _ in range(count):
            mapper.to_domain_event(mapper.to_stored_event(event))
        best = min(best, perf_counter() - started)
    return count / best


WARM_UP_EVENTS = 20


def appends_per_s(save: Callable[[Any], object], events: Sequence[Any]) -> float:
    """Rate of storing `events` one `save()` (one transaction) each.

    The first `WARM_UP_EVENTS` are stored untimed: they pay for opening connections and
    filling caches, which a running service has done long before."""
    for event in events[:WARM_UP_EVENTS]:
        save(event)
    timed = events[WARM_UP_EVENTS:]
    gc.collect()
    started = perf_counter()
    for event in timed:
        save(event)
    return len(timed) / (perf_counter() - started)


def _append_through(
    mapper: str, persistence: PersistenceSettings, facts: Sequence[CustomerFacts]
) -> float:
    if mapper == "msgspec":
        crm_app = MsgspecBenchApplication(persistence)
        try:
            return appends_per_s(crm_app.record, [msgspec_event(each) for each in facts])
        finally:
            crm_app.close()
    stock_app = StockBenchApplication(persistence)
    try:
        return appends_per_s(stock_app.save, [stock_event(each) for each in facts])
    finally:
        stock_app.close()


def _measure_backend(
    backend: str, facts: Sequence[CustomerFacts], postgres: PostgresServer | None
) -> dict[str, float]:
    rates: dict[str, float] = {}
    for mapper in MAPPERS:
        if backend == "memory":
            rates[mapper] = _append_through(mapper, PersistenceSettings.in_memory(), facts)
        elif backend == "sqlite":
            with tempfile.TemporaryDirectory(prefix="crm-bench-") as directory:
                persistence = PersistenceSettings.sqlite(Path(directory))
                rates[mapper] = _append_through(mapper, persistence, facts)
        else:
            assert postgres is not None
            dbname = postgres.create_database(prefix="crm_bench")
            try:
                rates[mapper] = _append_through(mapper, postgres.persistence(dbname), facts)
            finally:
                postgres.drop_database(dbname)
    return rates


def _arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench append", description=__doc__)
    parser.add_argument(
        "--events", type=positive, default=1000, help="events stored per backend and mapper"
    )
    parser.add_argument(
        "--roundtrips", type=positive, default=20000, help="mapper round trips per timed run"
    )
    parser.add_argument(
        "--repeats", type=positive, default=5, help="timed runs; the best one counts"
    )
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help=f"comma-separated subset of {','.join(BACKENDS)}",
    )
    arguments = parser.parse_args(list(argv))
    arguments.backends = [name.strip() for name in arguments.backends.split(",") if name.strip()]
    unknown = set(arguments.backends) - set(BACKENDS)
    if unknown:
        parser.error(f"unknown backends: {', '.join(sorted(unknown))}")
    return arguments


def main(argv: Sequence[str]) -> dict[str, object]:
    arguments = _arguments(argv)
    facts = customer_facts(WARM_UP_EVENTS + arguments.events)

    msgspec_mapper = MsgspecBenchApplication().mapper
    stock_mapper = StockBenchApplication(PersistenceSettings.in_memory()).mapper
    sample = customer_facts(1)[0]
    msgspec_size = len(msgspec_mapper.to_stored_event(msgspec_event(sample)).state)
    stock_size = len(stock_mapper.to_stored_event(stock_event(sample)).state)
    print(f"stored state of one event: msgspec {msgspec_size} bytes, stock {stock_size} bytes")
    roundtrips = {
        "msgspec": mapper_roundtrips_per_s(
            msgspec_mapper, msgspec_event(sample), arguments.roundtrips, arguments.repeats
        ),
        "stock": mapper_roundtrips_per_s(
            stock_mapper, stock_event(sample), arguments.roundtrips, arguments.repeats
        ),
    }
    ratio = roundtrips["msgspec"] / roundtrips["stock"]
    print(
        f"mapper round trips/s: msgspec {roundtrips['msgspec']:,.0f}, "
        f"stock {roundtrips['stock']:,.0f} (msgspec {ratio:.2f}x)"
    )

    events_per_s: dict[str, dict[str, float] | None] = {}
    reasons: dict[str, str] = {}
    provider = PostgresProvider()
    postgres: PostgresServer | None = None
    if "postgres" in arguments.backends:
        try:
            postgres = provider.start()
            print(f"postgres: {postgres.description} at {postgres.host}:{postgres.port}")
        except PostgresUnavailable as error:
            reasons["postgres"] = str(error)
            print(f"postgres: skipped, {error}")
    try:
        for backend in arguments.backends:
            if backend == "postgres" and postgres is None:
                events_per_s[backend] = None
                continue
            rates = _measure_backend(backend, facts, postgres)
            events_per_s[backend] = rates
            print(
                f"{backend:>8}: {rates['msgspec']:,.0f} events/s msgspec, "
                f"{rates['stock']:,.0f} events/s stock "
                f"({arguments.events} events, one transaction each)"
            )
    finally:
        provider.stop()

    result: dict[str, object] = {
        "events": arguments.events,
        "events_per_s": {
            backend: None if rates is None else {name: round(rate) for name, rate in rates.items()}
            for backend, rates in events_per_s.items()
        },
        "mapper_roundtrips_per_s": {name: round(rate) for name, rate in roundtrips.items()},
        "mapper_ratio": round(ratio, 2),
    }
    if postgres is not None:
        result["postgres_server"] = postgres.description
    if reasons:
        result["unavailable"] = reasons
    return result
