"""`crm keys generate`: a fresh key the configuration and the library's cipher accept."""

from __future__ import annotations

import base64

import pytest
from eventsourcing.cipher import AESCipher
from eventsourcing.utils import Environment

from crmcore.cli import main
from crmcore.config import ConfigurationError, persistence_from_env


def generated(capsys: pytest.CaptureFixture[str], *arguments: str) -> str:
    assert main(["keys", "generate", *arguments]) == 0
    return capsys.readouterr().out.strip()


class TestGenerate:
    def test_it_prints_a_fresh_256_bit_key_by_default(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        first, second = generated(capsys), generated(capsys)
        assert first != second
        assert len(base64.b64decode(first, validate=True)) == 32

    @pytest.mark.parametrize("size", [16, 24, 32])
    def test_the_key_works_as_cipher_key(
        self, size: int, capsys: pytest.CaptureFixture[str]
    ) -> None:
        key = generated(capsys, "--bytes", str(size))
        settings = persistence_from_env({"CRM_PERSISTENCE": "memory", "CIPHER_KEY": key})
        cipher = AESCipher(Environment(env=settings.application_env("customers")))
        assert cipher.decrypt(cipher.encrypt(b"Aiko Mori")) == b"Aiko Mori"

    def test_other_sizes_are_refused(self, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit):
            main(["keys", "generate", "--bytes", "20"])


class TestInvalidKeys:
    @pytest.mark.parametrize("key", ["not base64!", base64.b64encode(b"short").decode()])
    def test_the_configuration_names_the_variable(self, key: str) -> None:
        with pytest.raises(ConfigurationError, match="CUSTOMERS_CIPHER_KEY"):
            persistence_from_env({"CUSTOMERS_CIPHER_KEY": key})
