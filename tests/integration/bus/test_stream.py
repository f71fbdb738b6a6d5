"""Setting up the event stream from configuration, idempotently."""

from __future__ import annotations

import msgspec
import pytest
from nats.js.api import RetentionPolicy, StorageType

from crmcore.adapters.jetstream import connect, ensure_stream
from crmcore.config import BusSettings, ConfigurationError, bus_from_env

pytestmark = pytest.mark.nats


class TestStreamSetUp:
    async def test_creates_the_stream_as_configured_and_leaves_it_alone_the_second_time(
        self, bus_settings: BusSettings
    ) -> None:
        settings = msgspec.structs.replace(
            bus_settings, duplicate_window_s=300, max_age_s=7 * 24 * 3600, max_bytes=1 << 30
        )
        nc = await connect(settings, name="test-stream")
        try:
            js = nc.jetstream()
            created = await ensure_stream(js, settings)
            again = await ensure_stream(js, settings)
        finally:
            await nc.close()
        config = created.config
        assert config.subjects == ["crm.>"]
        assert config.storage == StorageType.FILE
        assert config.retention == RetentionPolicy.LIMITS
        assert config.duplicate_window == pytest.approx(300)
        assert config.max_age == pytest.approx(7 * 24 * 3600)
        assert config.max_bytes == 1 << 30
        assert again.state.first_seq == created.state.first_seq
        assert again.created == created.created

    async def test_updates_limits_and_de_duplication_window_when_the_settings_change(
        self, bus_settings: BusSettings
    ) -> None:
        nc = await connect(bus_settings, name="test-stream")
        try:
            js = nc.jetstream()
            await ensure_stream(js, bus_settings)
            await js.publish("crm.customer.registered", b"{}", headers={"Nats-Msg-Id": "a:1"})
            changed = msgspec.structs.replace(bus_settings, duplicate_window_s=30, max_age_s=86400)
            updated = await ensure_stream(js, changed)
        finally:
            await nc.close()
        assert updated.config.duplicate_window == pytest.approx(30)
        assert updated.config.max_age == pytest.approx(86400)
        assert updated.state.messages == 1


class TestBusSettingsFromTheEnvironment:
    def test_defaults_when_nothing_is_set(self) -> None:
        settings = bus_from_env({})
        assert settings.nats_url is None
        assert settings.url == "nats://127.0.0.1:4222"
        assert (settings.stream, settings.subjects) == ("CRM", ("crm.>",))
        assert settings.duplicate_window_s == 120
        assert settings.relay_batch == 1000

    def test_reads_every_variable(self) -> None:
        settings = bus_from_env(
            {
                "NATS_URL": "nats://bus-1:4222, nats://bus-2:4222",
                "CRM_STREAM": "CRM_EU",
                "CRM_STREAM_DUPLICATE_WINDOW_S": "600",
                "CRM_STREAM_MAX_AGE_S": "0",
                "CRM_STREAM_MAX_BYTES": "1000000",
                "CRM_RELAY_BATCH": "250",
            }
        )
        assert settings.servers == ["nats://bus-1:4222", "nats://bus-2:4222"]
        assert settings.stream == "CRM_EU"
        assert settings.duplicate_window_s == 600
        assert settings.max_age_s == 0
        assert settings.max_bytes == 1_000_000
        assert settings.relay_batch == 250

    @pytest.mark.parametrize(
        ("key", "value"),
        [
            ("CRM_STREAM", "CRM.ALL"),
            ("CRM_RELAY_BATCH", "0"),
            ("CRM_STREAM_DUPLICATE_WINDOW_S", "two minutes"),
        ],
    )
    def test_refuses_values_it_cannot_use(self, key: str, value: str) -> None:
        with pytest.raises(ConfigurationError, match=key):
            bus_from_env({key: value})
