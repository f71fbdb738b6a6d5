"""Group commit: concurrent record() calls share transactions but keep their own outcomes."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import ClassVar
from uuid import UUID, uuid4

import pytest

from crmcore.application.base import CRMApplication
from crmcore.application.group_commit import GroupCommitWriter
from crmcore.domain.base import Aggregate, Event, advance
from crmcore.domain.errors import ConcurrencyConflict

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


class Ticket(Aggregate, frozen=True, kw_only=True):
    title: str


class TicketEvent(Event["Ticket"], frozen=True, kw_only=True):
    context: ClassVar[str] = "test"


class TicketOpened(TicketEvent, frozen=True, kw_only=True):
    title: str

    def mutate(self, state: Ticket | None) -> Ticket:
        return Ticket(
            id=self.originator_id,
            version=self.originator_version,
            created_on=self.timestamp,
            modified_on=self.timestamp,
            title=self.title,
        )


class TicketRetitled(TicketEvent, frozen=True, kw_only=True):
    title: str

    def apply(self, state: Ticket) -> Ticket:
        return advance(state, self, title=self.title)


class Tickets(CRMApplication):
    name = "group_commit_tickets"
    aggregate_kind = "ticket"


def opened(ticket_id: UUID, title: str) -> TicketOpened:
    return TicketOpened(originator_id=ticket_id, originator_version=1, timestamp=NOW, title=title)


def in_threads(count: int, work: Callable[[int], None]) -> list[BaseException | None]:
    outcomes: list[BaseException | None] = [None] * count
    start = threading.Barrier(count)

    def run(index: int) -> None:
        start.wait()
        try:
            work(index)
        except BaseException as error:
            outcomes[index] = error

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


class TestGroupCommit:
    def test_concurrent_records_of_different_aggregates_are_all_stored(self) -> None:
        app = Tickets(group_commit=True)
        ids = [uuid4() for _ in range(32)]

        outcomes = in_threads(32, lambda index: app.record(opened(ids[index], f"t{index}")))

        assert outcomes == [None] * 32
        assert {app.load(ticket_id, Ticket).title for ticket_id in ids} == {
            f"t{index}" for index in range(32)
        }
        assert app.recorder.max_notification_id() == 32
        app.stop_writer()

    def test_only_the_conflicting_record_fails_and_it_stores_nothing(self) -> None:
        app = Tickets(group_commit=True)
        shared = uuid4()
        others = [uuid4() for _ in range(8)]

        def work(index: int) -> None:
            if index < 2:  # two writers race to create the same ticket
                app.record(opened(shared, f"racer {index}"))
            else:
                app.record(opened(others[index - 2], "bystander"))

        outcomes = in_threads(10, work)

        racers = outcomes[:2]
        assert sum(isinstance(outcome, ConcurrencyConflict) for outcome in racers) == 1
        assert outcomes[2:] == [None] * 8
        assert app.recorder.max_notification_id() == 9
        assert app.load(shared, Ticket).title in {"racer 0", "racer 1"}
        app.stop_writer()

    def test_a_failing_store_reaches_every_caller_of_the_batch(self) -> None:
        calls: list[int] = []

        def broken_save(*events: object) -> None:
            calls.append(len(events))
            raise OSError("disk on fire")

        writer = GroupCommitWriter(broken_save, name="broken")
        with pytest.raises(OSError, match="disk on fire"):
            writer.record([opened(uuid4(), "x")])
        writer.stop()
        assert calls == [1]

    def test_stopped_writer_refuses_new_work(self) -> None:
        writer = GroupCommitWriter(lambda *events: None, name="stopped")
        writer.stop()
        with pytest.raises(RuntimeError, match="stopped"):
            writer.record([opened(uuid4(), "late")])
