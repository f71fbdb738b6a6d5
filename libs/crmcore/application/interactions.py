"""The interaction application: interactions, cases, survey responses and VOC feedback.

One eventsourcing application (`name` "interactions") stores the aggregates of the interaction
and VOC contexts, so that a command touching two of them (linking an interaction to a case,
the first reply on a case) is one atomic `record()`. Every writing method takes `at` (default:
now, UTC), runs the aggregate's command, stores the events, and returns the new state; a
refused command stores nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import ClassVar, TypeVar
from uuid import UUID, uuid4

from crmcore.application.base import CRMApplication
from crmcore.domain.base import Aggregate, DomainEvent
from crmcore.domain.case import DEFAULT_REOPEN_WINDOW, Case, CaseEvent, CasePriority
from crmcore.domain.errors import AlreadyExists, ConcurrencyConflict, NotFound, RuleViolation
from crmcore.domain.feedback import (
    Feedback,
    FeedbackSource,
    Setter,
    SurveyResponse,
    survey_response_id,
)
from crmcore.domain.interaction import (
    AuthorKind,
    DeclineReason,
    Interaction,
    InteractionEvent,
    InteractionRequestKey,
    RoutingRequirements,
    request_key_id,
)
from crmcore.domain.values import Direction

TState = TypeVar("TState", bound=Aggregate)

OPEN_INTERACTION = "open_interaction"
OPEN_CASE = "open_case"


def _when(at: datetime | None) -> datetime:
    return at if at is not None else datetime.now(UTC)


class InteractionApplication(CRMApplication):
    """Commands and queries of the interaction service, usable in-process."""

    name = "interactions"
    aggregate_kind: ClassVar[str] = "interaction"

    # --- interactions -----------------------------------------------------------------------

    def open_interaction(
        self,
        *,
        channel: str,
        direction: str = Direction.INBOUND,
        customer_id: UUID | None = None,
        case_id: UUID | None = None,
        contact_reason: str | None = None,
        tags: Sequence[str] = (),
        handled_by_bot: bool = False,
        request_id: str | None = None,
        at: datetime | None = None,
    ) -> Interaction:
        """Opens an interaction (and links it to `case_id`, if given).

        With a `request_id`, a retried request returns the interaction the first one opened."""
        when = _when(at)
        earlier = self._created_by_request(OPEN_INTERACTION, request_id)
        if earlier is not None:
            return self.get_interaction(earlier)
        interaction_id = uuid4()
        opened = Interaction.open(
            interaction_id=interaction_id,
            channel=channel,
            direction=direction,
            customer_id=customer_id,
            case_id=case_id,
            contact_reason=contact_reason,
            tags=tags,
            handled_by_bot=handled_by_bot,
            at=when,
        )
        events: list[DomainEvent] = [opened]
        if case_id is not None:
            case = self.get_case(case_id)
            events.append(
                case.link_interaction(interaction_id, interaction_customer_id=customer_id, at=when)
            )
        if request_id is not None:
            events.append(
                InteractionRequestKey.record(OPEN_INTERACTION, request_id, interaction_id, at=when)
            )
        winner = self._record_creation(OPEN_INTERACTION, request_id, events)
        if winner is not None:
            return self.get_interaction(winner)
        return opened.mutate(None)

    def identify_customer(
        self, interaction_id: UUID, customer_id: UUID, *, at: datetime | None = None
    ) -> Interaction:
        return self._change(
            interaction_id, lambda state: state.identify_customer(customer_id, at=_when(at))
        )

    def queue(
        self,
        interaction_id: UUID,
        *,
        queue: str,
        requirements: RoutingRequirements | None = None,
        at: datetime | None = None,
    ) -> Interaction:
        return self._change(
            interaction_id,
            lambda state: state.enqueue(queue=queue, requirements=requirements, at=_when(at)),
        )

    def offer(
        self, interaction_id: UUID, agent_id: UUID, *, at: datetime | None = None
    ) -> Interaction:
        return self._change(interaction_id, lambda state: state.offer(agent_id, at=_when(at)))

    def decline_offer(
        self,
        interaction_id: UUID,
        agent_id: UUID,
        reason: str = DeclineReason.REJECTED,
        *,
        at: datetime | None = None,
    ) -> Interaction:
        return self._change(
            interaction_id, lambda state: state.decline_offer(agent_id, reason, at=_when(at))
        )

    def answer(
        self, interaction_id: UUID, agent_id: UUID, *, at: datetime | None = None
    ) -> Interaction:
        return self._change(interaction_id, lambda state: state.answer(agent_id, at=_when(at)))

    def hold(self, interaction_id: UUID, *, at: datetime | None = None) -> Interaction:
        return self._change(interaction_id, lambda state: state.hold(at=_when(at)))

    def resume(self, interaction_id: UUID, *, at: datetime | None = None) -> Interaction:
        return self._change(interaction_id, lambda state: state.resume(at=_when(at)))

    def add_message(
        self,
        interaction_id: UUID,
        *,
        author_kind: str,
        text: str,
        author_id: UUID | None = None,
        public: bool = True,
        at: datetime | None = None,
    ) -> Interaction:
        """Adds a transcript entry. An agent's first public reply on a case that had none is
        also recorded on the case (its first response time), in the same transaction."""
        when = _when(at)
        state = self.get_interaction(interaction_id)
        added = state.add_message(
            author_kind=author_kind, text=text, author_id=author_id, public=public, at=when
        )
        events: list[DomainEvent] = [added]
        entry = added.entry
        if (
            state.case_id is not None
            and entry.public
            and entry.author_kind is AuthorKind.AGENT
            and entry.author_id is not None
        ):
            case = self.get_case(state.case_id)
            if case.first_response_at is None:
                # A case that is closed, or changed later than this message, does not take it
                # as its first response; the message still counts for the interaction.
                with contextlib.suppress(RuleViolation):
                    events.append(
                        case.record_first_response(
                            agent_id=entry.author_id, interaction_id=interaction_id, at=when
                        )
                    )
        self.record(*events)
        return added.mutate(state)

    def transfer(
        self,
        interaction_id: UUID,
        *,
        reason: str,
        to_queue: str | None = None,
        to_agent_id: UUID | None = None,
        requirements: RoutingRequirements | None = None,
        at: datetime | None = None,
    ) -> Interaction:
        return self._change(
            interaction_id,
            lambda state: state.transfer(
                reason=reason,
                to_queue=to_queue,
                to_agent_id=to_agent_id,
                requirements=requirements,
                at=_when(at),
            ),
        )

    def escalate(
        self,
        interaction_id: UUID,
        *,
        reason: str,
        tier: int | None = None,
        department: str | None = None,
        at: datetime | None = None,
    ) -> Interaction:
        return self._change(
            interaction_id,
            lambda state: state.escalate(
                reason=reason, tier=tier, department=department, at=_when(at)
            ),
        )

    def start_wrap_up(self, interaction_id: UUID, *, at: datetime | None = None) -> Interaction:
        return self._change(interaction_id, lambda state: state.start_wrap_up(at=_when(at)))

    def resolve(
        self,
        interaction_id: UUID,
        *,
        resolution: str | None = None,
        contact_reason: str | None = None,
        at: datetime | None = None,
    ) -> Interaction:
        return self._change(
            interaction_id,
            lambda state: state.resolve(
                resolution=resolution, contact_reason=contact_reason, at=_when(at)
            ),
        )

    def reopen(
        self, interaction_id: UUID, *, reason: str | None = None, at: datetime | None = None
    ) -> Interaction:
        return self._change(interaction_id, lambda state: state.reopen(reason=reason, at=_when(at)))

    def close_interaction(self, interaction_id: UUID, *, at: datetime | None = None) -> Interaction:
        """Closes a resolved or bot-contained interaction (`close` would shadow the
        application's own `close()`, which releases the store)."""
        return self._change(interaction_id, lambda state: state.close(at=_when(at)))

    def abandon(self, interaction_id: UUID, *, at: datetime | None = None) -> Interaction:
        return self._change(interaction_id, lambda state: state.abandon(at=_when(at)))

    def bot_contain(
        self,
        interaction_id: UUID,
        *,
        resolution: str | None = None,
        at: datetime | None = None,
    ) -> Interaction:
        return self._change(
            interaction_id, lambda state: state.bot_contain(resolution=resolution, at=_when(at))
        )

    def hand_off_to_human(
        self,
        interaction_id: UUID,
        *,
        queue: str,
        reason: str,
        requirements: RoutingRequirements | None = None,
        at: datetime | None = None,
    ) -> Interaction:
        return self._change(
            interaction_id,
            lambda state: state.hand_off_to_human(
                queue=queue, reason=reason, requirements=requirements, at=_when(at)
            ),
        )

    def get_interaction(self, interaction_id: UUID) -> Interaction:
        return self._load(interaction_id, Interaction, "interaction")

    # --- cases ------------------------------------------------------------------------------

    def open_case(
        self,
        *,
        subject: str,
        customer_id: UUID | None = None,
        reason: str | None = None,
        priority: str = CasePriority.NORMAL,
        interaction_ids: Sequence[UUID] = (),
        reopen_window: timedelta = DEFAULT_REOPEN_WINDOW,
        request_id: str | None = None,
        at: datetime | None = None,
    ) -> Case:
        """Opens a case, linking the given interactions to it (both sides, one transaction).

        Without `customer_id` the case belongs to the customer of its first identified
        interaction. With a `request_id`, a retried request returns the first case."""
        when = _when(at)
        earlier = self._created_by_request(OPEN_CASE, request_id)
        if earlier is not None:
            return self.get_case(earlier)
        interactions = [self.get_interaction(each) for each in interaction_ids]
        if customer_id is None:
            customer_id = next(
                (each.customer_id for each in interactions if each.customer_id is not None), None
            )
        case_id = uuid4()
        opened = Case.open(
            case_id=case_id,
            subject=subject,
            customer_id=customer_id,
            reason=reason,
            priority=priority,
            reopen_window=reopen_window,
            at=when,
        )
        case = opened.mutate(None)
        events: list[DomainEvent] = [opened]
        for interaction in interactions:
            linked = case.link_interaction(
                interaction.id, interaction_customer_id=interaction.customer_id, at=when
            )
            case = linked.mutate(case)
            events += [linked, interaction.link_to_case(case_id, at=when)]
        if request_id is not None:
            events.append(InteractionRequestKey.record(OPEN_CASE, request_id, case_id, at=when))
        winner = self._record_creation(OPEN_CASE, request_id, events)
        if winner is not None:
            return self.get_case(winner)
        return case

    def link_interaction_to_case(
        self, case_id: UUID, interaction_id: UUID, *, at: datetime | None = None
    ) -> Case:
        """Groups an interaction (e.g. a repeat contact about the same issue) under a case."""
        when = _when(at)
        case = self.get_case(case_id)
        interaction = self.get_interaction(interaction_id)
        linked = case.link_interaction(
            interaction_id, interaction_customer_id=interaction.customer_id, at=when
        )
        self.record(linked, interaction.link_to_case(case_id, at=when))
        return linked.mutate(case)

    def change_case_status(self, case_id: UUID, status: str, *, at: datetime | None = None) -> Case:
        return self._change_case(case_id, lambda case: case.change_status(status, at=_when(at)))

    def solve_case(
        self, case_id: UUID, *, resolution: str | None = None, at: datetime | None = None
    ) -> Case:
        return self._change_case(
            case_id, lambda case: case.solve(resolution=resolution, at=_when(at))
        )

    def reopen_case(
        self, case_id: UUID, *, reason: str | None = None, at: datetime | None = None
    ) -> Case:
        return self._change_case(case_id, lambda case: case.reopen(reason=reason, at=_when(at)))

    def close_case(self, case_id: UUID, *, at: datetime | None = None) -> Case:
        return self._change_case(case_id, lambda case: case.close(at=_when(at)))

    def get_case(self, case_id: UUID) -> Case:
        return self._load(case_id, Case, "case")

    # --- voice of the customer --------------------------------------------------------------

    def record_survey_response(
        self,
        *,
        survey_id: str,
        kind: str,
        score: int,
        comment: str = "",
        customer_id: UUID | None = None,
        interaction_id: UUID | None = None,
        case_id: UUID | None = None,
        agent_id: UUID | None = None,
        at: datetime | None = None,
    ) -> SurveyResponse:
        """Records the one response to a survey (AlreadyExists for a second one).

        Customer, case, agent (the one who resolved it, else the last who handled it) and
        channel default to those of the rated interaction."""
        when = _when(at)
        channel: str | None = None
        if interaction_id is not None:
            interaction = self.get_interaction(interaction_id)
            customer_id = customer_id or interaction.customer_id
            case_id = case_id or interaction.case_id
            agent_id = agent_id or interaction.resolved_by or interaction.last_agent_id
            channel = interaction.channel
        answered = SurveyResponse.answer(
            survey_id=survey_id,
            kind=kind,
            score=score,
            comment=comment,
            customer_id=customer_id,
            interaction_id=interaction_id,
            case_id=case_id,
            agent_id=agent_id,
            channel=channel,
            at=when,
        )
        if self._exists(answered.originator_id, SurveyResponse):
            raise AlreadyExists(f"survey {answered.survey_id} was answered already")
        try:
            self.record(answered)
        except ConcurrencyConflict:
            raise AlreadyExists(f"survey {answered.survey_id} was answered already") from None
        return answered.mutate(None)

    def get_survey_response(self, response_id: UUID) -> SurveyResponse:
        return self._load(response_id, SurveyResponse, "survey response")

    def get_survey_response_of(self, survey_id: str) -> SurveyResponse:
        """The response to the survey `survey_id`, or NotFound."""
        return self.get_survey_response(survey_response_id(survey_id))

    def capture_feedback(
        self,
        *,
        text: str,
        source: str = FeedbackSource.OTHER,
        customer_id: UUID | None = None,
        interaction_id: UUID | None = None,
        case_id: UUID | None = None,
        survey_response_id: UUID | None = None,
        category: str | None = None,
        sentiment: str | None = None,
        sentiment_score: float | None = None,
        topics: Sequence[str] = (),
        set_by: str = Setter.RULE,
        at: datetime | None = None,
    ) -> Feedback:
        """Captures what a customer said. Customer, case and channel default to those of the
        interaction (or survey response) it came from."""
        when = _when(at)
        channel: str | None = None
        if survey_response_id is not None:
            response = self.get_survey_response(survey_response_id)
            customer_id = customer_id or response.customer_id
            interaction_id = interaction_id or response.interaction_id
            case_id = case_id or response.case_id
            channel = response.channel
        if interaction_id is not None:
            interaction = self.get_interaction(interaction_id)
            customer_id = customer_id or interaction.customer_id
            case_id = case_id or interaction.case_id
            channel = channel or interaction.channel
        captured = Feedback.capture(
            feedback_id=uuid4(),
            text=text,
            source=source,
            customer_id=customer_id,
            interaction_id=interaction_id,
            case_id=case_id,
            survey_response_id=survey_response_id,
            channel=channel,
            category=category,
            sentiment=sentiment,
            sentiment_score=sentiment_score,
            topics=topics,
            set_by=set_by,
            at=when,
        )
        self.record(captured)
        return captured.mutate(None)

    def classify_feedback(
        self,
        feedback_id: UUID,
        *,
        set_by: str,
        category: str | None = None,
        sentiment: str | None = None,
        sentiment_score: float | None = None,
        topics: Sequence[str] | None = None,
        at: datetime | None = None,
    ) -> Feedback:
        feedback = self.get_feedback(feedback_id)
        classified = feedback.classify(
            set_by=set_by,
            category=category,
            sentiment=sentiment,
            sentiment_score=sentiment_score,
            topics=topics,
            at=_when(at),
        )
        self.record(classified)
        return classified.mutate(feedback)

    def get_feedback(self, feedback_id: UUID) -> Feedback:
        return self._load(feedback_id, Feedback, "feedback")

    # --- helpers ----------------------------------------------------------------------------

    def _load(self, aggregate_id: UUID, kind: type[TState], label: str) -> TState:
        try:
            return self.load(aggregate_id, kind)
        except NotFound:
            raise NotFound(label, aggregate_id) from None

    def _exists(self, aggregate_id: UUID, kind: type[TState]) -> bool:
        try:
            self.load(aggregate_id, kind)
        except NotFound:
            return False
        return True

    def _change(
        self, interaction_id: UUID, command: Callable[[Interaction], InteractionEvent]
    ) -> Interaction:
        state = self.get_interaction(interaction_id)
        event = command(state)
        self.record(event)
        return event.mutate(state)

    def _change_case(self, case_id: UUID, command: Callable[[Case], CaseEvent]) -> Case:
        case = self.get_case(case_id)
        event = command(case)
        self.record(event)
        return event.mutate(case)

    def _created_by_request(self, operation: str, request_id: str | None) -> UUID | None:
        """What an earlier request with the same `request_id` created, if any."""
        if request_id is None:
            return None
        try:
            key = self.load(request_key_id(operation, request_id), InteractionRequestKey)
        except NotFound:
            return None
        return key.target_id

    def _record_creation(
        self, operation: str, request_id: str | None, events: Sequence[DomainEvent]
    ) -> UUID | None:
        """Stores the events of a creation; None when stored, or the id of what a concurrent
        request with the same `request_id` created first."""
        try:
            self.record(*events)
        except ConcurrencyConflict:
            winner = self._created_by_request(operation, request_id)
            if winner is None:
                raise
            return winner
        return None
