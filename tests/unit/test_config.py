"""Persistence settings read from the environment (given here as plain mappings)."""

from __future__ import annotations

from pathlib import Path

import pytest
from eventsourcing.utils import Environment
from hypothesis import given
from hypothesis import strategies as st

from crmcore.config import (
    PERSISTENCE_KINDS,
    ConfigurationError,
    PersistenceSettings,
    persistence_from_env,
)
from services.routing.config import settings_from_env as routing_settings_from_env


class TestDefaults:
    def test_an_empty_environment_means_in_memory_storage(self) -> None:
        settings = persistence_from_env({})

        assert settings == PersistenceSettings(
            kind="memory", data_dir=Path(".crm-data"), library_env={}
        )
        assert settings.application_env("customers") == {"PERSISTENCE_MODULE": "eventsourcing.popo"}

    def test_a_blank_kind_means_in_memory_storage(self) -> None:
        assert persistence_from_env({"CRM_PERSISTENCE": "  "}).kind == "memory"

    def test_the_process_environment_is_read_when_no_mapping_is_given(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.setenv("CRM_PERSISTENCE", "sqlite")
        monkeypatch.setenv("CRM_DATA_DIR", str(tmp_path))

        assert persistence_from_env() == PersistenceSettings.sqlite(tmp_path)


class TestKinds:
    @pytest.mark.parametrize(
        ("value", "module"),
        [
            ("memory", "eventsourcing.popo"),
            ("sqlite", "eventsourcing.sqlite"),
            (" SQLite ", "eventsourcing.sqlite"),
            ("postgres", "crmcore.adapters.postgres:TlsPostgresFactory"),
        ],
    )
    def test_each_kind_selects_its_eventsourcing_module(
        self, value: str, module: str, tmp_path: Path
    ) -> None:
        settings = persistence_from_env(
            {
                "CRM_PERSISTENCE": value,
                "CRM_DATA_DIR": str(tmp_path),
                "POSTGRES_DBNAME": "crm",
            }
        )

        assert settings.kind == value.strip().lower()
        assert settings.application_env("customers")["PERSISTENCE_MODULE"] == module

    @given(
        value=st.text(max_size=20).filter(
            lambda text: text.strip().lower() not in (*PERSISTENCE_KINDS, "")
        )
    )
    def test_any_other_kind_is_an_error_naming_the_variable(self, value: str) -> None:
        with pytest.raises(ConfigurationError, match="CRM_PERSISTENCE"):
            persistence_from_env({"CRM_PERSISTENCE": value})

    def test_mongo_is_refused_with_the_choices(self) -> None:
        with pytest.raises(ConfigurationError, match="memory, sqlite, postgres"):
            persistence_from_env({"CRM_PERSISTENCE": "mongo"})


class TestPostgres:
    def test_postgres_without_a_database_name_is_an_error(self) -> None:
        with pytest.raises(ConfigurationError, match="POSTGRES_DBNAME"):
            persistence_from_env({"CRM_PERSISTENCE": "postgres", "POSTGRES_HOST": "db"})

    def test_a_database_name_for_one_application_is_enough(self) -> None:
        settings = persistence_from_env(
            {"CRM_PERSISTENCE": "postgres", "CUSTOMERS_POSTGRES_DBNAME": "customers"}
        )

        assert settings.kind == "postgres"

    def test_library_variables_pass_through_and_nothing_else(self) -> None:
        settings = persistence_from_env(
            {
                "CRM_PERSISTENCE": "postgres",
                "POSTGRES_DBNAME": "crm",
                "POSTGRES_HOST": "db.internal",
                "POSTGRES_PORT": "6543",
                "POSTGRES_USER": "crm_app",
                "POSTGRES_PASSWORD": "s3cret",
                "CIPHER_KEY": "MDEyMzQ1Njc4OWFiY2RlZg==",
                "HOME": "/home/someone",
                "CRM_DATA_DIR": "elsewhere",
            }
        )

        assert settings.library_env == {
            "POSTGRES_DBNAME": "crm",
            "POSTGRES_HOST": "db.internal",
            "POSTGRES_PORT": "6543",
            "POSTGRES_USER": "crm_app",
            "POSTGRES_PASSWORD": "s3cret",
            "CIPHER_KEY": "MDEyMzQ1Njc4OWFiY2RlZg==",
        }

    def test_a_prefixed_variable_applies_to_its_application_only(self) -> None:
        settings = persistence_from_env(
            {
                "CRM_PERSISTENCE": "postgres",
                "POSTGRES_DBNAME": "crm",
                "POSTGRES_SCHEMA": "public",
                "CUSTOMERS_POSTGRES_SCHEMA": "customers",
            }
        )

        customers = Environment("customers", settings.application_env("customers"))
        routing = Environment("routing", settings.application_env("routing"))

        assert customers.get("POSTGRES_SCHEMA") == "customers"
        assert routing.get("POSTGRES_SCHEMA") == "public"

    def test_connection_defaults_leave_room_for_a_busy_service(self) -> None:
        env = PersistenceSettings.postgres(dbname="crm").application_env("customers")

        assert env["POSTGRES_DBNAME"] == "crm"
        assert env["POSTGRES_HOST"] == "127.0.0.1"
        assert env["POSTGRES_PORT"] == "5432"
        assert env["POSTGRES_POOL_SIZE"] == "5"
        assert env["POSTGRES_MAX_OVERFLOW"] == "10"


class TestSqliteFiles:
    def test_each_application_gets_its_own_file_under_the_data_directory(
        self, tmp_path: Path
    ) -> None:
        data_dir = tmp_path / "crm-data"
        settings = persistence_from_env(
            {"CRM_PERSISTENCE": "sqlite", "CRM_DATA_DIR": str(data_dir)}
        )

        customers = Environment("customers", settings.application_env("customers"))
        routing = Environment("routing", settings.application_env("routing"))

        assert customers.get("SQLITE_DBNAME") == str(data_dir / "customers.sqlite")
        assert routing.get("SQLITE_DBNAME") == str(data_dir / "routing.sqlite")
        assert data_dir.is_dir()

    def test_the_data_directory_defaults_to_crm_data(self) -> None:
        assert persistence_from_env({"CRM_PERSISTENCE": "sqlite"}).data_dir == Path(".crm-data")

    def test_a_file_named_for_one_application_wins(self, tmp_path: Path) -> None:
        settings = persistence_from_env(
            {
                "CRM_PERSISTENCE": "sqlite",
                "CRM_DATA_DIR": str(tmp_path),
                "CUSTOMERS_SQLITE_DBNAME": str(tmp_path / "legacy.db"),
            }
        )

        customers = Environment("customers", settings.application_env("customers"))

        assert customers.get("SQLITE_DBNAME") == str(tmp_path / "legacy.db")


class TestRoutingSettings:
    def test_defaults_are_the_engine_defaults(self) -> None:
        settings = routing_settings_from_env({})
        assert settings.policy.priority_wait_seconds == 60.0
        assert settings.policy.miss_cooldown_seconds == 10.0
        assert settings.snapshot_every == 10_000

    def test_environment_sets_the_policy_and_snapshots(self) -> None:
        settings = routing_settings_from_env(
            {
                "CRM_ROUTING_PRIORITY_WAIT_S": "30",
                "CRM_ROUTING_MISS_COOLDOWN_S": "2.5",
                "CRM_ROUTING_SNAPSHOT_EVERY": "500",
            }
        )
        assert settings.policy.priority_wait_seconds == 30.0
        assert settings.policy.miss_cooldown_seconds == 2.5
        assert settings.snapshot_every == 500

    @pytest.mark.parametrize(
        ("variable", "value"),
        [
            ("CRM_ROUTING_PRIORITY_WAIT_S", "-1"),
            ("CRM_ROUTING_PRIORITY_WAIT_S", "soon"),
            ("CRM_ROUTING_MISS_COOLDOWN_S", "1e9"),
            ("CRM_ROUTING_SNAPSHOT_EVERY", "0"),
        ],
    )
    def test_unusable_values_name_the_variable(self, variable: str, value: str) -> None:
        with pytest.raises(ConfigurationError, match=variable):
            routing_settings_from_env({variable: value})
