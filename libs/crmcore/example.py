"""A guided tour of the library: `python -m crmcore.example` (what `make demo` runs for now).

It registers a customer, handles a phone call and a follow-up chat about the same problem,
records a survey answer and the customer's feedback, reopens the store from its SQLite files as
a restarted process would, and prints the customer's history.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta

from crmcore.crm import CRM
from crmcore.domain.agent import Skill


def main() -> None:
    morning = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)

    def at(minutes: float) -> datetime:
        return morning + timedelta(minutes=minutes)

    with tempfile.TemporaryDirectory(prefix="crm-example-") as data_dir:
        crm = CRM.sqlite(data_dir, default_region="JP")
        agent = crm.workforce.register_agent(
            display_name="Sato",
            skills=[Skill(name="billing", level=4)],
            languages=["ja"],
            capacity={"phone": 1, "chat": 3},
            at=at(0),
        )
        taro = crm.customers.register(
            name="Taro Yamada",
            contact_points=[("phone", "090-1234-5678"), ("email", "Taro@Example.jp")],
            at=at(0),
        )
        print(f"registered {taro.name}: {[str(point) for point in taro.contact_points]}")

        # The call comes in: the CTI looks the caller up by the number it sees (screen pop).
        caller = crm.customers.lookup("phone", "+81 90-1234-5678")
        if caller is None or caller.id != taro.id:
            raise SystemExit("screen pop failed: the caller was not recognised")
        call = crm.interactions.open_interaction(
            channel="phone", customer_id=caller.id, contact_reason="billing", at=at(1)
        )
        crm.interactions.queue(call.id, queue="billing", at=at(1))
        crm.interactions.offer(call.id, agent.id, at=at(1.5))
        crm.interactions.answer(call.id, agent.id, at=at(2))
        crm.interactions.add_message(
            call.id,
            author_kind="agent",
            author_id=agent.id,
            text="I have corrected the double charge on your invoice.",
            at=at(3),
        )
        crm.interactions.start_wrap_up(call.id, at=at(6))
        crm.interactions.resolve(call.id, resolution="refund issued", at=at(7))
        crm.interactions.record_survey_response(
            survey_id=f"survey-{call.id}",
            kind="csat",
            score=5,
            interaction_id=call.id,
            customer_id=taro.id,
            comment="Quick and friendly, thank you!",
            at=at(30),
        )
        crm.shut_down()

        # A restarted process finds everything in the SQLite files.
        crm = CRM.sqlite(data_dir)
        print(f"\nhistory of {crm.customers.get(taro.id).name}, newest first:")
        for entry in crm.history(taro.id):
            print(f"  {entry.occurred_at:%H:%M}  {entry.kind:<16} {entry.status:<10} {entry.title}")
        crm.shut_down()


if __name__ == "__main__":
    main()
