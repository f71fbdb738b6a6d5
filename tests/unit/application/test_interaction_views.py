"""Lists of interactions and cases by customer, case, agent and status, in pages; repeat
contacts; routing decisions recorded once."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TypeVar
from uuid import UUID

import msgspec
import pytest

from crmcore.adapters.schemas import example_event
from crmcore.application.interaction_views import InteractionViews
from crmcore.application.interactions import InteractionApplication
from crmcore.domain.errors import InvalidValue
from crmcore.domain.interaction import DeclineReason, InteractionStatus
from crmcore.domain.task import (
    RoutingAccepted,
    RoutingAssigned,
    RoutingOffered,
    RoutingOfferRevoked,
    RoutingRejected,
    RoutingTimedOut,
    TaskEvent,
)

MONDAY_9 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
ALICE = UUID("00000000-0000-4000-8000-00000000a11c")
BOB = UUID("00000000-0000-4000-8000-000000000b0b")
TARO = UUID("00000000-0000-4000-8000-0000000074a0")
HANAKO = UUID("00000000-0000-4000-8000-0000000da4a0")

TEvent = TypeVar("TEvent", bound=TaskEvent)


def at(minutes: float) -> datetime:
    return MONDAY_9 + timedelta(minutes=minutes)


def routing(
    cls: type[TEvent], task_id: UUID, version: int, agent_id: UUID, minutes: float
) -> TEvent:
    """A routing event as the routing service publishes it (other fields: examples)."""
    event = example_event(cls, originator_id=task_id, version=version)
    return msgspec.structs.replace(event, agent_id=agent_id, timestamp=at(minutes))


@pytest.fixture
def app() -> Iterator[InteractionApplication]:
    application = InteractionApplication()
    yield application
    application.close()


@pytest.fixture
def views(app: InteractionApplication) -> Iterator[InteractionViews]:
    built = InteractionViews(app)
    yield built
    built.close_views()


def call(
    app: InteractionApplication, customer: UUID | None, minutes: float, reason: str = "billing"
) -> UUID:
    return app.open_interaction(
        channel="phone", customer_id=customer, contact_reason=reason, at=at(minutes)
    ).id


def answered(app: InteractionApplication, interaction: UUID, agent: UUID, minutes: float) -> None:
    app.queue(interaction, queue="billing", at=at(minutes))
    app.answer(interaction, agent, at=at(minutes))


class TestListingInteractions:
    def test_a_customers_interactions_newest_first(
        self, app: InteractionApplication, views: InteractionViews
    ) -> None:
        first, second = call(app, TARO, 0), call(app, TARO, 1)
        call(app, HANAKO, 2)
        page = views.list_interactions(customer_id=TARO)
        assert [each.id for each in page.interactions] == [second, first]
        assert page.next_page_token == ""

    def test_by_agent_and_status_together(
        self, app: InteractionApplication, views: InteractionViews
    ) -> None:
        alices, bobs, resolved = call(app, TARO, 0), call(app, TARO, 1), call(app, HANAKO, 2)
        answered(app, alices, ALICE, 3)
        answered(app, bobs, BOB, 3)
        answered(app, resolved, ALICE, 4)
        app.resolve(resolved, at=at(5))
        assert [each.id for each in views.list_interactions(agent_id=ALICE).interactions] == [
            resolved,
            alices,
        ]
        active = views.list_interactions(agent_id=ALICE, status="active").interactions
        assert [each.id for each in active] == [alices]

    def test_an_agent_keeps_the_interactions_they_transferred_away(
        self, app: InteractionApplication, views: InteractionViews
    ) -> None:
        transferred = call(app, TARO, 0)
        answered(app, transferred, ALICE, 1)
        app.transfer(transferred, reason="Needs tier 2", to_queue="tier2", at=at(2))
        app.answer(transferred, BOB, at=at(3))
        for agent in (ALICE, BOB):
            assert [each.id for each in views.list_interactions(agent_id=agent).interactions] == [
                transferred
            ]

    def test_by_case_once_linked(
        self, app: InteractionApplication, views: InteractionViews
    ) -> None:
        first, second = call(app, TARO, 0), call(app, TARO, 1)
        case = app.open_case(subject="Double charge", interaction_ids=[first], at=at(2))
        assert [each.id for each in views.list_interactions(case_id=case.id).interactions] == [
            first
        ]
        app.link_interaction_to_case(case.id, second, at=at(3))
        linked = views.list_interactions(case_id=case.id).interactions
        assert [each.id for each in linked] == [second, first]

    def test_an_interaction_identified_later_moves_to_its_customer(
        self, app: InteractionApplication, views: InteractionViews
    ) -> None:
        anonymous = call(app, None, 0)
        assert views.list_interactions(customer_id=TARO).interactions == ()
        app.identify_customer(anonymous, TARO, at=at(1))
        assert [each.id for each in views.list_interactions(customer_id=TARO).interactions] == [
            anonymous
        ]

    def test_pages_cover_everything_once(
        self, app: InteractionApplication, views: InteractionViews
    ) -> None:
        opened = [call(app, TARO, minute) for minute in range(7)]
        seen: list[UUID] = []
        token = ""
        while True:
            page = views.list_interactions(customer_id=TARO, page_size=3, page_token=token)
            seen += [each.id for each in page.interactions]
            token = page.next_page_token
            if not token:
                break
        assert seen == list(reversed(opened))

    def test_a_page_token_works_only_for_its_own_query(
        self, app: InteractionApplication, views: InteractionViews
    ) -> None:
        for minute in range(3):
            call(app, TARO, minute)
        token = views.list_interactions(customer_id=TARO, page_size=1).next_page_token
        with pytest.raises(InvalidValue) as refused:
            views.list_interactions(customer_id=HANAKO, page_token=token)
        assert refused.value.field == "page_token"
        with pytest.raises(InvalidValue):
            views.list_interactions(page_token="not-a-token")

    @pytest.mark.parametrize(
        ("arguments", "field"), [({"page_size": -1}, "page_size"), ({"status": "asleep"}, "status")]
    )
    def test_bad_filters_are_refused(
        self, views: InteractionViews, arguments: dict[str, object], field: str
    ) -> None:
        with pytest.raises(InvalidValue) as refused:
            views.list_interactions(**arguments)  # type: ignore[arg-type]
        assert refused.value.field == field

    def test_catching_up_twice_changes_nothing(
        self, app: InteractionApplication, views: InteractionViews
    ) -> None:
        call(app, TARO, 0)
        views.catch_up()
        assert views.catch_up() == 0
        again = InteractionViews(app, views.store)  # another instance over the same tables
        assert again.catch_up() == 0
        assert len(again.list_interactions(customer_id=TARO).interactions) == 1


class TestListingCases:
    def test_by_customer_and_status(
        self, app: InteractionApplication, views: InteractionViews
    ) -> None:
        open_case = app.open_case(subject="Refund", customer_id=TARO, at=at(0))
        solved = app.open_case(subject="Login", customer_id=TARO, at=at(1))
        app.solve_case(solved.id, at=at(2))
        app.open_case(subject="Other", customer_id=HANAKO, at=at(3))
        assert [case.id for case in views.list_cases(customer_id=TARO).cases] == [
            solved.id,
            open_case.id,
        ]
        assert [case.id for case in views.list_cases(status="solved").cases] == [solved.id]


class TestRepeatContacts:
    def test_a_repeat_contact_about_the_same_reason_finds_the_working_case(
        self, app: InteractionApplication, views: InteractionViews
    ) -> None:
        case = app.open_case(subject="Parcel", customer_id=TARO, reason="Delivery", at=at(0))
        app.open_case(subject="Invoice", customer_id=TARO, reason="billing", at=at(1))
        assert views.repeat_case_for(TARO, "  delivery ", at=at(5)) == case.id
        assert views.repeat_case_for(HANAKO, "delivery", at=at(5)) is None
        assert views.repeat_case_for(TARO, None, at=at(5)) is None

    def test_a_solved_case_counts_only_inside_its_reopen_window(
        self, app: InteractionApplication, views: InteractionViews
    ) -> None:
        case = app.open_case(
            subject="Parcel",
            customer_id=TARO,
            reason="delivery",
            reopen_window=timedelta(days=2),
            at=at(0),
        )
        app.solve_case(case.id, at=at(10))
        assert views.repeat_case_for(TARO, "delivery", at=at(10 + 47 * 60)) == case.id
        assert views.repeat_case_for(TARO, "delivery", at=at(10 + 49 * 60)) is None
        app.close_case(case.id, at=at(20))
        assert views.repeat_case_for(TARO, "delivery", at=at(30)) is None


class TestRoutingDecisions:
    def queued(self, app: InteractionApplication) -> UUID:
        interaction = call(app, TARO, 0)
        app.queue(interaction, queue="billing", at=at(1))
        return interaction

    def test_an_accepted_offer_answers_the_interaction(
        self, app: InteractionApplication, views: InteractionViews
    ) -> None:
        interaction = self.queued(app)
        progress = views.routing_progress
        offered = progress.apply(app, routing(RoutingOffered, interaction, 2, ALICE, 2))
        assert offered is not None
        assert (offered.status, offered.offered_agent_id) == (InteractionStatus.OFFERED, ALICE)
        accepted = progress.apply(app, routing(RoutingAccepted, interaction, 3, ALICE, 3))
        assert accepted is not None
        assert (accepted.status, accepted.agent_id) == (InteractionStatus.ACTIVE, ALICE)
        assert progress.apply(app, routing(RoutingAssigned, interaction, 4, ALICE, 3)) is None

    def test_an_event_applied_twice_changes_nothing(
        self, app: InteractionApplication, views: InteractionViews
    ) -> None:
        interaction = self.queued(app)
        offer = routing(RoutingOffered, interaction, 2, ALICE, 2)
        progress = views.routing_progress
        assert progress.apply(app, offer) is not None
        stored = app.recorder.max_notification_id()
        assert progress.apply(app, offer) is None
        assert app.recorder.max_notification_id() == stored

    def test_an_old_offer_redelivered_after_a_timeout_is_not_applied_again(
        self, app: InteractionApplication, views: InteractionViews
    ) -> None:
        interaction = self.queued(app)
        progress = views.routing_progress
        offer = routing(RoutingOffered, interaction, 2, ALICE, 2)
        progress.apply(app, offer)
        timed_out = progress.apply(app, routing(RoutingTimedOut, interaction, 3, ALICE, 3))
        assert timed_out is not None
        assert timed_out.status is InteractionStatus.QUEUED
        # The interaction is queued again, yet the stale offer must not offer it to Alice.
        assert progress.apply(app, offer) is None
        assert app.get_interaction(interaction).status is InteractionStatus.QUEUED

    @pytest.mark.parametrize(
        ("cls", "reason"),
        [
            (RoutingRejected, DeclineReason.REJECTED),
            (RoutingTimedOut, DeclineReason.TIMEOUT),
            (RoutingOfferRevoked, DeclineReason.REVOKED),
        ],
    )
    def test_a_missed_offer_puts_it_back_in_the_queue(
        self,
        app: InteractionApplication,
        views: InteractionViews,
        cls: type[TaskEvent],
        reason: DeclineReason,
    ) -> None:
        interaction = self.queued(app)
        views.routing_progress.apply(app, routing(RoutingOffered, interaction, 2, ALICE, 2))
        back = views.routing_progress.apply(app, routing(cls, interaction, 3, ALICE, 3))
        assert back is not None
        assert (back.status, back.offered_agent_id) == (InteractionStatus.QUEUED, None)
        assert back.queued_at == at(1)  # the customer's wait is kept

    def test_work_that_is_no_interaction_is_ignored(
        self, app: InteractionApplication, views: InteractionViews
    ) -> None:
        task = UUID("00000000-0000-4000-8000-00000000d1ec")
        assert views.routing_progress.apply(app, routing(RoutingOffered, task, 2, ALICE, 2)) is None

    def test_an_answer_by_someone_else_first_wins(
        self, app: InteractionApplication, views: InteractionViews
    ) -> None:
        interaction = self.queued(app)
        app.answer(interaction, BOB, at=at(2))  # Bob picked it from the queue
        progress = views.routing_progress
        assert progress.apply(app, routing(RoutingOffered, interaction, 2, ALICE, 2)) is None
        assert progress.apply(app, routing(RoutingAccepted, interaction, 3, ALICE, 3)) is None
        assert app.get_interaction(interaction).agent_id == BOB

    def test_a_routing_clock_behind_the_interactions_does_not_go_back_in_time(
        self, app: InteractionApplication, views: InteractionViews
    ) -> None:
        interaction = self.queued(app)
        app.add_message(interaction, author_kind="customer", text="Hello?", at=at(5))
        offered = views.routing_progress.apply(
            app, routing(RoutingOffered, interaction, 2, ALICE, 4)
        )
        assert offered is not None
        assert offered.offered_at == at(5)
