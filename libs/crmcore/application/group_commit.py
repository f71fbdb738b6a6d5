"""Group commit: many concurrent `record()` calls stored in one transaction.

The PostgreSQL recorder serialises the writers of one application with a table lock, so one
transaction per command caps a service at a few hundred commands per second. Here one writer
thread takes every batch of events waiting to be stored and saves them with a single
`save(*events)`. A batch is all or nothing, so if it meets a conflict (another writer got there
first, a uniqueness claim is taken) the writer saves each caller's events on their own: each
caller gets exactly the outcome it would have had alone, and nothing of a refused call is stored.

When a batch fails because the store cannot be reached (`is_store_unavailable`), the calls
queued behind it fail at once with the same error instead of being tried batch after batch,
each waiting its own connect timeout: their clients get UNAVAILABLE within their deadlines.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from eventsourcing.persistence import IntegrityError

from crmcore.adapters.store_outages import is_store_unavailable
from crmcore.domain.base import DomainEvent

SaveFunction = Callable[..., object]


@dataclass
class _Pending:
    events: Sequence[DomainEvent]
    done: Future[None] = field(default_factory=Future)


class GroupCommitWriter:
    """A single writer thread that coalesces concurrent saves of one application."""

    def __init__(
        self, save: SaveFunction, *, max_batch_events: int = 2_000, name: str = ""
    ) -> None:
        self._save = save
        self._max_batch_events = max_batch_events
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=f"group-commit-{name}", daemon=True)
        self._thread.start()

    def record(self, events: Sequence[DomainEvent]) -> None:
        """Stores `events` atomically with whatever else is waiting; blocks until stored."""
        if self._stopped:
            raise RuntimeError("group commit writer is stopped")
        pending = _Pending(events)
        self._queue.put(pending)
        pending.done.result()

    def stop(self) -> None:
        """Stores what is waiting, then ends the writer thread."""
        if not self._stopped:
            self._stopped = True
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            size = len(first.events)
            stop_after = False
            while size < self._max_batch_events:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop_after = True
                    break
                batch.append(more)
                size += len(more.events)
            outage = self._store(batch)
            if outage is not None:
                stop_after = self._fail_waiting(outage) or stop_after
            if stop_after:
                return

    def _store(self, batch: list[_Pending]) -> BaseException | None:
        """Stores the batch; returns the error when the store turned out to be unreachable."""
        if len(batch) > 1:
            try:
                self._save(*(event for pending in batch for event in pending.events))
            except IntegrityError:
                pass  # someone in the batch conflicts: find out who, one by one
            except Exception as error:
                for pending in batch:
                    pending.done.set_exception(error)
                return error if is_store_unavailable(error) else None
            else:
                for pending in batch:
                    pending.done.set_result(None)
                return None
        for index, pending in enumerate(batch):
            try:
                self._save(*pending.events)
            except Exception as error:
                pending.done.set_exception(error)
                if is_store_unavailable(error):
                    for rest in batch[index + 1 :]:
                        rest.done.set_exception(error)
                    return error
            else:
                pending.done.set_result(None)
        return None

    def _fail_waiting(self, error: BaseException) -> bool:
        """Fails every call queued while the store was found unreachable with that error, at
        once: each would otherwise wait for the batches ahead of it to fail one after another
        (a connect timeout each), past its client's deadline, to learn the same. They were
        not stored; their callers answer UNAVAILABLE and their clients retry. Returns True
        when `stop()` was asked for meanwhile."""
        while True:
            try:
                waiting = self._queue.get_nowait()
            except queue.Empty:
                return False
            if waiting is None:
                return True
            waiting.done.set_exception(error)
