"""The metrics read models on every engine: in-memory SQLite, SQLite files and PostgreSQL
hold the same facts and answer every query the same, batches commit with their position."""

from __future__ import annotations

from uuid import uuid4

import pytest

from crmcore.adapters.readmodels import Cursor
from crmcore.application.metrics import (
    Dimension,
    KpiQuery,
    KpiTarget,
    MetricsProjection,
    StaffingRequest,
    open_metrics,
)
from crmcore.config import PersistenceSettings
from crmcore.domain import kpis
from crmcore.domain.base import DomainEvent
from crmcore.domain.kpis import Interval
from tests.integration.metrics.history import MONDAY, Day, at

DAY_MS = 86_400_000


def history() -> list[DomainEvent]:
    day = Day()
    day.morning()
    customer = uuid4()
    case = day.interactions.open_case(
        subject="refund", customer_id=customer, reason="billing", at=at(200)
    )
    call = day.interactions.open_interaction(
        channel="chat", customer_id=customer, case_id=case.id, contact_reason="billing", at=at(200)
    ).id
    day.interactions.queue(call, queue="chat", at=at(200))
    day.interactions.answer(call, day.sato, at=at(201))
    day.interactions.resolve(call, at=at(210))
    day.interactions.solve_case(case.id, at=at(211))
    day.interactions.record_survey_response(
        survey_id="s1", kind="csat", score=5, interaction_id=call, at=at(220)
    )
    day.interactions.capture_feedback(text="great", topics=["speed"], at=at(221))
    return [event for _, _, event in day.events()]


def everything(projection: MetricsProjection) -> object:
    start = kpis.to_ms(MONDAY)
    report = projection.kpis(
        KpiQuery(
            start_ms=start,
            end_ms=start + DAY_MS,
            interval=Interval.HOUR,
            group_by=(Dimension.QUEUE, Dimension.AGENT),
            as_of_ms=start + 30 * DAY_MS,
        )
    )
    staffing = projection.staffing(
        StaffingRequest(start_ms=start, end_ms=start + DAY_MS, interval=Interval.HOUR)
    )
    topics = projection.contact_reasons(start, start + DAY_MS, min_count=1)
    csv = "".join(projection.export_interactions(start, start + DAY_MS))
    live = projection.live(start + 12 * 3_600_000)
    return report.rows, report.retention, staffing, topics, csv, live.queues, live.backlog


class TestEveryEngine:
    def test_the_same_history_gives_the_same_answers(
        self, persistence: PersistenceSettings
    ) -> None:
        events = list(enumerate(history(), 1))
        reference = open_metrics(PersistenceSettings.in_memory())
        reference.apply(events)
        projection = open_metrics(persistence)
        projection.reset()
        projection.apply(events[:20])
        projection.apply(events[20:])
        assert everything(projection) == everything(reference)
        assert projection.position() > 0
        projection.close_store()
        reference.close_store()

    def test_a_failed_batch_leaves_neither_rows_nor_position(
        self, persistence: PersistenceSettings
    ) -> None:
        projection = open_metrics(persistence)
        projection.reset()
        day = Day()
        day.morning(0, 2)
        events = [event for _, _, event in day.events()]
        projection.apply(list(enumerate(events[:5], 1)))
        before = (
            projection.position(),
            projection.store.query("SELECT COUNT(*) FROM metrics_interactions"),
        )

        def refuse(cursor: Cursor, projection: str, position: int) -> None:
            raise RuntimeError("disk full")

        original = projection.store.save_position
        projection.store.save_position = refuse  # type: ignore[method-assign]
        with pytest.raises(RuntimeError, match="disk full"):
            projection.apply(list(enumerate(events, 1)))
        projection.store.save_position = original  # type: ignore[method-assign]
        assert (
            projection.position(),
            projection.store.query("SELECT COUNT(*) FROM metrics_interactions"),
        ) == before
        projection.apply(list(enumerate(events, 1)))
        start = kpis.to_ms(MONDAY)
        values = projection.kpis(KpiQuery(start_ms=start, end_ms=start + DAY_MS)).rows[0].values
        assert (values.offered, values.handled) == (2, 2)
        projection.close_store()

    def test_targets_survive_a_reset(self, persistence: PersistenceSettings) -> None:
        projection = open_metrics(persistence)
        projection.reset()
        for target in projection.targets():
            projection.delete_target(target.id)
        created = projection.create_target(
            KpiTarget(kpi="fcr", baseline=0.75, target=0.85, start_ms=0, deadline_ms=DAY_MS)
        )
        projection.reset()
        assert projection.targets() == [created]
        projection.close_store()
