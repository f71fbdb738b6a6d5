"""Data keys on SQLite and PostgreSQL: durable, shared by instances, gone once destroyed."""

from __future__ import annotations

from collections.abc import Iterator
from uuid import uuid4

import pytest

from crmcore.adapters.keyvault import KeyDestroyed, KeyVault
from crmcore.adapters.readmodels import ReadModelStore, open_read_model_store
from crmcore.application.customers import CustomerApplication
from crmcore.config import PersistenceSettings


@pytest.fixture
def two_stores(durable_persistence: PersistenceSettings) -> Iterator[list[ReadModelStore]]:
    """Two service instances' connections to the same key table."""
    stores = [
        open_read_model_store(durable_persistence, CustomerApplication.KEY_STORE_NAME)
        for _ in range(2)
    ]
    yield stores
    for store in stores:
        store.close_store()


class TestSharedKeys:
    def test_a_key_made_by_one_instance_is_the_key_of_the_other(
        self, two_stores: list[ReadModelStore]
    ) -> None:
        first, second = (KeyVault(store) for store in two_stores)
        subject = uuid4()
        assert second.existing_key(subject) is None
        key = first.create_key(subject)
        assert second.data_key(subject) == key
        assert second.create_key(subject) == key

    def test_a_key_destroyed_by_one_instance_is_gone_for_the_other(
        self, two_stores: list[ReadModelStore]
    ) -> None:
        first = KeyVault(two_stores[0])
        second = KeyVault(two_stores[1], cache_ttl_s=0)
        subject = uuid4()
        sealed = first.seal(subject, b"Taro Yamada", b"record-1")
        assert second.open(subject, sealed, b"record-1") == b"Taro Yamada"

        first.destroy([subject])

        assert second.open(subject, sealed, b"record-1") is None
        with pytest.raises(KeyDestroyed):
            second.seal(subject, b"Taro again", b"record-2")

    def test_an_application_reopened_reads_its_customers(
        self, durable_persistence: PersistenceSettings
    ) -> None:
        app = CustomerApplication(durable_persistence)
        taro = app.register(name="Taro Yamada", contact_points=[("email", "taro@example.jp")])
        app.shut_down()

        reopened = CustomerApplication(durable_persistence)
        try:
            assert reopened.get(taro.id).name == "Taro Yamada"
            assert reopened.lookup("email", "TARO@example.jp") == reopened.get(taro.id)
        finally:
            reopened.shut_down()
