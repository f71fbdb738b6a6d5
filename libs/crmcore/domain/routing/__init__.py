"""Routing (issue 6): which agent gets which work, deterministic and replayable.

- `engine`: `RoutingEngine`, the state folded from routing events, the indexes, and the
  decisions (`decide(now)`); `RoutingPolicy`, snapshots, queue status, explanations.
- `scan`: `ScanEngine`, the same decisions by scanning everything (the reference).
- `matching`: the rules both share (profiles, demands, eligibility, proficiency, load).
- `interactions`: what interaction events mean for routing.

The task aggregate and the routing events live in `crmcore.domain.task`; agents and queues in
`crmcore.domain.agent` and `crmcore.domain.queue`.
"""

from crmcore.domain.routing.engine import (
    QueueDayStats,
    QueueStatus,
    RoutingEngine,
    RoutingPolicy,
    RoutingSnapshot,
    TaskExplanation,
    merge_requirements,
)
from crmcore.domain.routing.interactions import (
    ROUTED_EVENTS,
    needs_stored_task,
    routing_events_for,
)
from crmcore.domain.routing.scan import ScanEngine

__all__ = [
    "ROUTED_EVENTS",
    "QueueDayStats",
    "QueueStatus",
    "RoutingEngine",
    "RoutingPolicy",
    "RoutingSnapshot",
    "ScanEngine",
    "TaskExplanation",
    "merge_requirements",
    "needs_stored_task",
    "routing_events_for",
]
