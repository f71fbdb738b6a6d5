"""The in-process entry point: the whole domain from Python, with no server."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from crmcore.crm import CRM
from crmcore.domain.errors import RuleViolation
from crmcore.example import main as run_example

MONDAY = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return MONDAY + timedelta(minutes=minutes)


class TestCustomerHistory:
    def test_history_lists_interactions_and_surveys_newest_first(self) -> None:
        crm = CRM.in_memory()
        hanako = crm.customers.register(
            name="Hanako Suzuki", contact_points=[("email", "hanako@example.jp")], at=at(0)
        )
        chat = crm.interactions.open_interaction(
            channel="chat", customer_id=hanako.id, contact_reason="delivery", at=at(1)
        )
        crm.interactions.queue(chat.id, queue="logistics", at=at(1))
        email = crm.interactions.open_interaction(
            channel="email", customer_id=hanako.id, contact_reason="invoice", at=at(5)
        )
        crm.interactions.record_survey_response(
            survey_id="s-1", kind="nps", score=9, interaction_id=chat.id, at=at(10)
        )

        history = crm.history(hanako.id)

        assert [entry.kind for entry in history] == [
            "survey_response",
            "interaction",
            "interaction",
        ]
        assert [entry.id for entry in history[1:]] == [email.id, chat.id]
        assert history[2].status == "queued"

    def test_history_pages(self) -> None:
        crm = CRM.in_memory()
        kenji = crm.customers.register(name="Kenji", at=at(0))
        opened = [
            crm.interactions.open_interaction(channel="sms", customer_id=kenji.id, at=at(n))
            for n in range(5)
        ]

        page = crm.history(kenji.id, limit=2, offset=1)

        assert [entry.id for entry in page] == [opened[3].id, opened[2].id]

    def test_other_customers_history_is_not_mixed_in(self) -> None:
        crm = CRM.in_memory()
        first = crm.customers.register(name="First", at=at(0))
        second = crm.customers.register(name="Second", at=at(0))
        crm.interactions.open_interaction(channel="phone", customer_id=first.id, at=at(1))

        assert crm.history(second.id) == ()

    def test_sqlite_data_survives_a_restart(self, tmp_path: Path) -> None:
        crm = CRM.sqlite(tmp_path)
        yuki = crm.customers.register(
            name="Yuki", contact_points=[("phone", "+81 3-1234-5678")], at=at(0)
        )
        crm.interactions.open_interaction(channel="phone", customer_id=yuki.id, at=at(1))
        crm.shut_down()

        reopened = CRM.sqlite(tmp_path)
        found = reopened.customers.lookup("phone", "+81312345678")
        assert found is not None
        assert found.id == yuki.id
        assert len(reopened.history(yuki.id)) == 1
        reopened.shut_down()


class TestExample:
    def test_the_guided_tour_runs_and_prints_the_history(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        run_example()

        printed = capsys.readouterr().out
        assert "registered Taro Yamada" in printed
        assert re.search(r"survey_response\s+answered\s+CSAT 5", printed)
        assert re.search(r"interaction\s+resolved\s+phone", printed)


class TestReadme:
    def test_the_readme_python_examples_run_as_written(self) -> None:
        readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
        first, second = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)[:2]
        namespace: dict[str, object] = {}
        refused_line = first.strip().splitlines()[-1]

        exec(first.replace(refused_line, ""), namespace)
        with pytest.raises(RuleViolation):
            exec(refused_line, namespace)
        exec(second, namespace)

        crm = namespace["crm"]
        assert isinstance(crm, CRM)
        alice = namespace["alice"]
        history = crm.history(alice.id)  # type: ignore[attr-defined]
        assert [entry.kind for entry in history] == ["survey_response", "interaction"]
        assert history[1].status == "resolved"


class TestMergedHistory:
    def test_history_follows_the_survivor_of_a_merge(self) -> None:
        crm = CRM.in_memory()
        survivor = crm.customers.register(name="Mika", at=at(0))
        duplicate = crm.customers.register(name="Mika S.", at=at(0))
        old = crm.interactions.open_interaction(channel="email", customer_id=duplicate.id, at=at(1))
        new = crm.interactions.open_interaction(channel="chat", customer_id=survivor.id, at=at(2))

        crm.customers.merge(duplicate.id, survivor.id, at=at(3))

        assert [entry.id for entry in crm.history(survivor.id)] == [new.id, old.id]
        assert [entry.id for entry in crm.history(duplicate.id)] == [new.id, old.id]
