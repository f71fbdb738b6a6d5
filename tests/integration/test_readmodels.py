"""Read-model stores: rows and projection positions commit together on every engine."""

from __future__ import annotations

import pytest

from crmcore.adapters.readmodels import ReadModelStore, open_read_model_store
from crmcore.config import PersistenceSettings

COUNTERS = "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, total BIGINT NOT NULL)"


def bump(store: ReadModelStore, name: str, position: int) -> None:
    with store.transaction() as cursor:
        cursor.execute(
            "INSERT INTO counters (name, total) VALUES (?, 1) "
            "ON CONFLICT (name) DO UPDATE SET total = counters.total + 1",
            (name,),
        )
        store.save_position(cursor, "counting", position)


class TestReadModelStore:
    def test_rows_and_position_commit_together(self, persistence: PersistenceSettings) -> None:
        store = open_read_model_store(persistence, "readmodel_check")
        store.create(COUNTERS)

        bump(store, "calls", 1)
        bump(store, "calls", 2)

        assert store.query("SELECT total FROM counters WHERE name = ?", ("calls",)) == [(2,)]
        assert store.position("counting") == 2
        store.close_store()

    def test_a_failed_batch_leaves_neither_rows_nor_position(
        self, persistence: PersistenceSettings
    ) -> None:
        store = open_read_model_store(persistence, "readmodel_check")
        store.create(COUNTERS)
        bump(store, "calls", 1)

        def crash_mid_batch() -> None:
            with store.transaction() as cursor:
                cursor.execute("UPDATE counters SET total = total + 100 WHERE name = ?", ("calls",))
                store.save_position(cursor, "counting", 99)
                raise RuntimeError("crash mid-batch")

        with pytest.raises(RuntimeError, match="crash mid-batch"):
            crash_mid_batch()

        assert store.query("SELECT total FROM counters") == [(1,)]
        assert store.position("counting") == 1
        store.close_store()

    def test_position_of_an_unknown_projection_is_zero(
        self, persistence: PersistenceSettings
    ) -> None:
        store = open_read_model_store(persistence, "readmodel_check")
        store.create()
        assert store.position("never-ran") == 0
        store.close_store()

    def test_sqlite_read_models_survive_reopening(self, tmp_path: object) -> None:
        settings = PersistenceSettings.sqlite(str(tmp_path))
        first = open_read_model_store(settings, "durable")
        first.create(COUNTERS)
        bump(first, "calls", 7)
        first.close_store()

        second = open_read_model_store(settings, "durable")
        assert second.position("counting") == 7
        assert second.query("SELECT name, total FROM counters") == [("calls", 1)]
        second.close_store()
