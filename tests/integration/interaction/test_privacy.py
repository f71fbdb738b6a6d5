"""Crypto-shredding of interaction data in the real stores (SQLite files, PostgreSQL tables):
the personal texts never reach the stored bytes in clear, the data keys live in the store
beside the events, and after an erasure (also by an application opened afterwards, as a
restarted service) every text reads back blank while the history reads back whole.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest

from crmcore.application.interactions import InteractionApplication
from crmcore.config import PersistenceSettings
from crmcore.domain.interaction import InteractionStatus
from tests.support.postgres import PostgresServer

MONDAY = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
SAID = "my card number is 4417 and I live in Setagaya"
NOTE = "the caller is Mr Yamada of the Shibuya branch"
SUBJECT = "Yamada invoice dispute"
COMPLAINT = "the agent was rude to Yamada-san"
PERSONAL = (SAID, NOTE, SUBJECT, COMPLAINT)


def at(minutes: float) -> datetime:
    return MONDAY + timedelta(minutes=minutes)


def stored_bytes(persistence: PersistenceSettings, request: pytest.FixtureRequest) -> bytes:
    """Everything the store holds: every SQLite file, or every row of every PostgreSQL table
    (as text: byte columns in hex, so the texts are looked for in hex too)."""
    if persistence.kind == "sqlite":
        return b"".join(
            path.read_bytes() for path in persistence.data_dir.rglob("*") if path.is_file()
        )
    server: PostgresServer = request.getfixturevalue("postgres_server")
    dbname = persistence.library_env["POSTGRES_DBNAME"]
    rows: list[str] = []
    with server.connect(dbname) as connection:
        tables = [
            str(row[0])
            for row in connection.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        ]
        for table in tables:
            rows += [str(row[0]) for row in connection.execute(f'SELECT t::text FROM "{table}" t')]
    return "\n".join(rows).encode()


def readable_in(data: bytes) -> list[str]:
    return [
        text for text in PERSONAL if text.encode() in data or text.encode().hex().encode() in data
    ]


def record_everything(app: InteractionApplication, customer: UUID) -> tuple[UUID, UUID]:
    """A call with the customer (a message and a note) and an anonymous chat identified as
    them later, a case and a complaint; returns the call's and the chat's ids."""
    agent = uuid4()
    call = app.open_interaction(channel="phone", customer_id=customer, at=at(0))
    app.add_message(call.id, author_kind="customer", text=SAID, at=at(1))
    app.queue(call.id, queue="billing", at=at(2))
    app.answer(call.id, agent, at=at(3))
    app.add_message(
        call.id, author_kind="agent", author_id=agent, text=NOTE, public=False, at=at(4)
    )
    chat = app.open_interaction(channel="chat", at=at(5))
    app.add_message(chat.id, author_kind="customer", text=SAID, at=at(6))
    app.identify_customer(chat.id, customer, at=at(7))
    app.open_case(subject=SUBJECT, interaction_ids=[call.id, chat.id], at=at(8))
    app.capture_feedback(text=COMPLAINT, source="complaint", customer_id=customer, at=at(9))
    return call.id, chat.id


class TestStoredBytes:
    def test_no_text_is_stored_in_clear_and_erasure_outlives_a_restart(
        self, durable_persistence: PersistenceSettings, request: pytest.FixtureRequest
    ) -> None:
        customer = uuid4()
        app = InteractionApplication(durable_persistence)
        try:
            call_id, chat_id = record_everything(app, customer)
            assert app.get_interaction(call_id).transcript[1].text == NOTE
            assert readable_in(stored_bytes(durable_persistence, request)) == []
            app.erase_customer(customer)
        finally:
            app.close()

        reopened = InteractionApplication(durable_persistence)
        try:
            call = reopened.get_interaction(call_id)
            chat = reopened.get_interaction(chat_id)
            assert [entry.text for entry in (*call.transcript, *chat.transcript)] == ["", "", ""]
            assert (call.status, call.channel, len(call.agents)) == (
                InteractionStatus.ACTIVE,
                "phone",
                1,
            )
            assert reopened.key_vault.is_destroyed(customer)
            assert reopened.key_vault.is_destroyed(chat_id)
        finally:
            reopened.close()
        assert readable_in(stored_bytes(durable_persistence, request)) == []

    def test_the_keys_live_beside_the_events(
        self, durable_persistence: PersistenceSettings, request: pytest.FixtureRequest
    ) -> None:
        customer = uuid4()
        app = InteractionApplication(durable_persistence)
        try:
            record_everything(app, customer)
            assert app.key_vault.existing_key(customer) is not None
        finally:
            app.close()
        if durable_persistence.kind == "sqlite":
            assert (durable_persistence.data_dir / "interactions_keys.sqlite").is_file()
        reopened = InteractionApplication(durable_persistence)
        try:
            assert reopened.key_vault.existing_key(customer) is not None
        finally:
            reopened.close()
