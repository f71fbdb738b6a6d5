"""What the demo did to the services, as it did it: the driver writes, the report reads.

Counts per outcome let the report wait until the metrics service has projected everything the
demo caused, and show the demo's own account next to what the service measured. The
per-interaction and per-survey records carry simulated times, for the charts by interval.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class InteractionRecord:
    """One interaction the demo opened: its scenario contact, and what became of it."""

    interaction_id: str
    contact_key: str
    channel: str
    reason: str
    arrival_s: float
    bot: bool
    outcome: str = "open"
    agent_keys: list[str] = field(default_factory=list)


@dataclass
class SurveyRecord:
    at_s: float
    kind: str
    score: int
    channel: str
    team: str


@dataclass
class Ledger:
    """Running totals (names are the outcome or the command) and the records behind them."""

    counts: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    interactions: dict[str, InteractionRecord] = field(default_factory=dict)
    surveys: list[SurveyRecord] = field(default_factory=list)
    rpcs: int = 0
    last_error: str = ""

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] += n

    def error(self, what: str, detail: str) -> None:
        self.errors[what] += 1
        self.last_error = f"{what}: {detail}"

    def opened(self, record: InteractionRecord) -> None:
        self.interactions[record.interaction_id] = record
        self.count("created")

    def finished(self, interaction_id: str, outcome: str) -> None:
        record = self.interactions.get(interaction_id)
        if record is not None:
            record.outcome = outcome

    @property
    def waiting(self) -> int:
        return sum(1 for record in self.interactions.values() if record.outcome == "waiting")
