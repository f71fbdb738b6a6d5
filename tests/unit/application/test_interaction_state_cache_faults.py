"""The interaction service's state cache after a save whose outcome is unknown: the database
went away during the commit, so the events may be stored although the call failed. The next
read must show what the store holds, not the state from before the command, so that a client
reading back after its ambiguous call learns the truth (and a retry is not refused for a change
the client was never told about)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest
from eventsourcing.persistence import OperationalError

from crmcore.application.interactions import InteractionApplication
from crmcore.domain.errors import RuleViolation
from crmcore.domain.interaction import InteractionStatus

MONDAY = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)


class LostAcknowledgement(InteractionApplication):
    """Stores the next save's events, then fails as a connection lost during COMMIT does."""

    lose_next = False

    def save(self, *objs: Any, **kwargs: Any) -> list[Any]:
        stored = super().save(*objs, **kwargs)
        if self.lose_next:
            self.lose_next = False
            raise OperationalError("server closed the connection unexpectedly")
        return stored


@pytest.fixture
def app() -> LostAcknowledgement:
    return LostAcknowledgement(state_cache_size=100)


def answered(app: InteractionApplication) -> Any:
    chat = app.open_interaction(channel="chat", customer_id=uuid4(), at=MONDAY)
    app.queue(chat.id, queue="billing", at=MONDAY + timedelta(minutes=1))
    app.answer(chat.id, uuid4(), at=MONDAY + timedelta(minutes=2))
    # Cached now: the reads below would come from the cache.
    assert app.get_interaction(chat.id).status is InteractionStatus.ACTIVE
    return chat.id


def test_a_read_after_an_ambiguous_save_shows_the_stored_state(
    app: LostAcknowledgement,
) -> None:
    chat_id = answered(app)
    app.lose_next = True

    with pytest.raises(OperationalError):
        app.resolve(chat_id, resolution="done", at=MONDAY + timedelta(minutes=3))

    assert app.get_interaction(chat_id).status is InteractionStatus.RESOLVED
    # And a retry is refused because it happened, which the read above already told.
    with pytest.raises(RuleViolation):
        app.resolve(chat_id, resolution="done", at=MONDAY + timedelta(minutes=4))


def test_a_failed_save_leaves_the_cache_usable_for_the_next_command(
    app: LostAcknowledgement,
) -> None:
    chat_id = answered(app)
    app.lose_next = True
    with pytest.raises(OperationalError):
        app.start_wrap_up(chat_id, at=MONDAY + timedelta(minutes=3))

    resolved = app.resolve(chat_id, resolution="done", at=MONDAY + timedelta(minutes=4))

    assert resolved.status is InteractionStatus.RESOLVED
    assert app.get_interaction(chat_id).version == resolved.version
