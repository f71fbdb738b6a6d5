"""The reference router: the engine's decisions, found by scanning every agent and every task.

`ScanEngine` shares the engine's state, events and decision loop but keeps no index: the best
agent for some work is found by looking at every agent, the first work an agent may take by
looking at every task, and eligibility is worked out afresh each time. It is what the tests
and `python -m bench routing` hold the indexed engine to (same decisions), and what the speed
of the indexes is measured against.

With `exhaustive=True` it does not even trust the engine's bookkeeping of what changed: each
decision repeatedly takes the first waiting work in order that any agent may take and gives it
to its best agent, over everything. That is the rule itself, written out; it is only fit for
small states (tests).
"""

from __future__ import annotations

from crmcore.domain.routing.engine import Choice, RoutingEngine, RoutingPolicy
from crmcore.domain.routing.matching import (
    AgentSlot,
    BucketEntry,
    Demand,
    Profile,
    TaskSlot,
    eligible,
)
from crmcore.domain.task import TaskStatus


class ScanEngine(RoutingEngine):
    """Same rules, same decisions, no indexes (module docstring)."""

    _narrow_settled_work = False

    def __init__(self, policy: RoutingPolicy | None = None, *, exhaustive: bool = False) -> None:
        super().__init__(policy)
        self.exhaustive = exhaustive

    def _allowed(self, profile: Profile, demand: Demand) -> bool:
        return eligible(profile, demand, self._queues_by_name)

    def _best_agent_for(self, slot: TaskSlot) -> Choice | None:
        return self._best_among(slot, self._agents.values())

    def _best_task_for(self, agent: AgentSlot) -> BucketEntry | None:
        now_us = self._now_us
        takeable = [
            channel for channel in agent.profile.channels if agent.can_take(channel, now_us)
        ]
        if not takeable:
            return None
        profile = agent.profile
        queues = self._queues_by_name
        best: TaskSlot | None = None
        for slot in self._tasks.values():
            demand = slot.demand
            if (
                slot.channel in takeable
                and demand is not None
                and slot.task.status is TaskStatus.WAITING
                and (best is None or (slot.rank, slot.id_int) < (best.rank, best.id_int))
                and eligible(profile, demand, queues)
            ):
                best = slot
        return None if best is None else (best.rank, best.id_int, best.stamp, best)

    def _match(self) -> None:
        if not self.exhaustive:
            super()._match()
            return
        while True:
            waiting = sorted(
                (
                    slot
                    for slot in self._tasks.values()
                    if slot.demand is not None and slot.task.status is TaskStatus.WAITING
                ),
                key=lambda slot: (slot.rank, slot.id_int),
            )
            for slot in waiting:
                choice = self._best_agent_for(slot)
                if choice is not None:
                    agent, rule, score = choice
                    self._offer(slot, agent, rule, score, pulled=False)
                    break
            else:
                return

    # No indexes to keep.

    def warm(self) -> None:
        pass

    def _bucket(self, slot: TaskSlot) -> None:
        pass

    def _index_agent(self, agent: AgentSlot) -> None:
        pass

    def _profile_added(self, profile: Profile) -> None:
        pass

    def _eligibility_changed(self) -> None:
        pass
