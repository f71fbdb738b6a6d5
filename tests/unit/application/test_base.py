"""CRMApplication.save: our events skip the library's per-object Protocol check, with the same
outcome as the library's own save."""

from __future__ import annotations

from uuid import uuid4

import pytest
from eventsourcing.application import Application
from eventsourcing.persistence import IntegrityError

from tests.unit.application.test_group_commit import Ticket, Tickets, opened


def stored(app: Tickets) -> list[tuple[object, int, str]]:
    return [
        (item.originator_id, item.originator_version, item.topic)
        for item in app.recorder.select_notifications(start=1, limit=100)
    ]


class TestSave:
    def test_events_are_stored_as_the_library_stores_them(self) -> None:
        fast, library = Tickets(), Tickets()
        ticket_id = uuid4()
        events = (opened(ticket_id, "printer"),)

        fast_recordings = fast.save(*events)
        library_recordings = Application.save(library, *events)

        assert stored(fast) == stored(library)
        assert [r.notification.id for r in fast_recordings] == [
            r.notification.id for r in library_recordings
        ]
        assert fast.load(ticket_id, Ticket).title == "printer"

    def test_a_version_clash_still_raises_and_stores_nothing_more(self) -> None:
        app = Tickets()
        ticket_id = uuid4()
        app.save(opened(ticket_id, "first"))

        with pytest.raises(IntegrityError):
            app.save(opened(ticket_id, "again"), opened(uuid4(), "other"))

        assert len(stored(app)) == 1

    def test_objects_other_than_our_events_go_through_the_library(self) -> None:
        app = Tickets()
        ticket_id = uuid4()

        app.save(None, opened(ticket_id, "mixed"))  # the library skips None

        assert app.load(ticket_id, Ticket).title == "mixed"
