"""The interaction application: interactions, cases, survey responses and VOC feedback.

One eventsourcing application (`name` "interactions") stores the aggregates of the interaction
and VOC contexts, so that a command touching two of them (linking an interaction to a case,
the first reply on a case) is one atomic `record()`. Every writing method takes `at` (default:
now, UTC), runs the aggregate's command, stores the events, and returns the new state; a
refused command stores nothing.

Beyond the commands of the aggregates:
- feedback is classified on capture by the built-in keyword rules
  (`crmcore.domain.classifier`) for every value the caller did not set; an agent overrides
  them with `classify_feedback`. A survey comment can be captured as feedback in the same
  transaction as the response (`capture_comment=True`), and an agent can tag a transcript:
  feedback from a transcript without text takes the customer's public messages;
- `record_sla_event` stores a case's SLA at-risk or breached event once, and
  `record_interaction_sla_event` one of an interaction outside a case (the SLA scheduler of
  `crmcore.application.sla_scheduler` calls them);
- `apply_routing_event` records what the routing service decided (offers, acceptances,
  rejections, timeouts, revocations) on the interaction; applying an event twice, or one the
  interaction has moved past, changes nothing.

`group_commit=True` (services under load) lets concurrent calls from many threads share
transactions (see `crmcore.application.group_commit`).

Personal data is crypto-shredded like the customer service's (`crmcore.adapters.keyvault`):
the application has its own key vault ("interactions_keys", beside the events), and the mapper
seals the personal fields of every event (transcripts, notes, resolutions, reasons, case
subjects, survey comments, feedback texts: see the domain modules) with the key of the
customer. An interaction opened before the customer is known seals with a key of its own (a
case without a customer too); identifying the customer, or linking the interaction to a case
of a customer, hands that key to the customer (`KeyVault.assign_owner`, stored before the
events). `erase_customer` (the service calls it on `crm.customer.erased`) destroys the
customer's key and every key handed to it; `merge_customers` (on
`crm.customer.duplicate_absorbed`) hands a merged customer's keys to the survivor, so erasing
the survivor reaches them. Afterwards the events read back redacted: texts blanked, times,
agents, channels, statuses kept, so history and KPIs stay whole. A command that would store
new personal text for an erased customer is refused (RuleViolation). What the relay publishes
is always the redacted form (`MsgspecMapper.public_view`): personal text never goes on the bus.
Limit: text written while an interaction was identified as the wrong customer stays sealed
with that customer's key after the correction.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, TypeVar, cast
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

from eventsourcing.persistence import Mapper

from crmcore.adapters.keyvault import KeyVault, open_key_store
from crmcore.adapters.mapper import MsgspecMapper, PersonalData, personal_fields_of
from crmcore.application.base import CRMApplication
from crmcore.config import PersistenceSettings
from crmcore.domain import classifier
from crmcore.domain.base import Aggregate, DomainEvent
from crmcore.domain.case import (
    DEFAULT_REOPEN_WINDOW,
    Case,
    CaseEvent,
    CaseInteractionLinked,
    CasePriority,
)
from crmcore.domain.errors import AlreadyExists, ConcurrencyConflict, NotFound, RuleViolation
from crmcore.domain.feedback import (
    Feedback,
    FeedbackSource,
    Setter,
    SurveyKind,
    SurveyResponse,
    survey_response_id,
)
from crmcore.domain.interaction import (
    AuthorKind,
    CustomerIdentified,
    DeclineReason,
    Interaction,
    InteractionEvent,
    InteractionRequestKey,
    InteractionStatus,
    RoutingRequirements,
    request_key_id,
)
from crmcore.domain.sla import (
    SlaEvent,
    SlaEventKind,
    SlaMetric,
    SlaRecord,
    interaction_priority,
    interaction_sla_record_id,
    mark,
    sla_record_id,
)
from crmcore.domain.task import (
    RoutingAccepted,
    RoutingAssigned,
    RoutingOffered,
    RoutingOfferRevoked,
    RoutingRejected,
    RoutingTimedOut,
    TaskEvent,
)
from crmcore.domain.values import MAX_TEXT_LENGTH, Direction

TState = TypeVar("TState", bound=Aggregate)

OPEN_INTERACTION = "open_interaction"
OPEN_CASE = "open_case"

SURVEY_FEEDBACK_NAMESPACE = uuid5(NAMESPACE_URL, "urn:crm:voc:survey-comment-feedback")


def survey_feedback_id(response_id: UUID) -> UUID:
    """The id of the feedback captured from the comment of survey response `response_id`."""
    return uuid5(SURVEY_FEEDBACK_NAMESPACE, str(response_id))


def _when(at: datetime | None) -> datetime:
    return at if at is not None else datetime.now(UTC)


class InteractionApplication(CRMApplication):
    """Commands and queries of the interaction service, usable in-process."""

    name = "interactions"
    aggregate_kind: ClassVar[str] = "interaction"
    #: Name of the read-model store holding the data keys (module docstring).
    KEY_STORE_NAME = "interactions_keys"

    def __init__(
        self,
        persistence: PersistenceSettings | None = None,
        *,
        group_commit: bool = False,
        state_cache_size: int = 0,
        key_vault: KeyVault | None = None,
    ) -> None:
        """`state_cache_size` > 0 keeps the latest state of that many aggregates in memory, so
        that a command does not read its aggregate's events back from the store. A state
        another process changed meanwhile is noticed when storing (the version is taken)
        and the command runs once more on the stored state; queries may see such a state
        late, so the cache suits one writing instance per store (the service's default).

        `key_vault` holds the data keys sealing personal data (default: a table beside the
        events, opened from `persistence`)."""
        settings = persistence or PersistenceSettings.in_memory()
        self._owns_key_vault = key_vault is None
        self.key_vault = key_vault or KeyVault(open_key_store(settings, self.KEY_STORE_NAME))
        super().__init__(settings, group_commit=group_commit)
        self._states = _States(state_cache_size) if state_cache_size > 0 else None

    def construct_mapper(self) -> Mapper[UUID]:
        return MsgspecMapper(
            compressor=self.factory.compressor(),
            cipher=self.factory.cipher(),
            key_vault=self.key_vault,
        )

    def save(self, *objs: Any, **kwargs: Any) -> list[Any]:
        # Keys made for new interactions and cases are stored before the events they seal,
        # and keys are handed to the customer before the events saying so (under group
        # commit this runs once per batch, in the writer).
        self.key_vault.store_pending()
        for obj in objs:
            handed: tuple[UUID, UUID] | None = None
            if isinstance(obj, CustomerIdentified) and obj.customer_id is not None:
                handed = (obj.originator_id, obj.customer_id)
            elif isinstance(obj, CaseInteractionLinked) and obj.customer_id is not None:
                handed = (obj.interaction_id, obj.customer_id)
            if handed is not None and self.key_vault.assign_owner(*handed):
                # Handed to an erased customer: its key is gone, and so must its texts be.
                self._forget_states()
        return super().save(*objs, **kwargs)

    def close(self) -> None:
        """Releases the event store and the key vault (when this application opened it)."""
        super().close()
        if self._owns_key_vault:
            self.key_vault.close_vault()
            self.key_vault.store.close_store()

    def load(self, aggregate_id: UUID, kind: type[TState]) -> TState:
        if self._states is not None:
            cached = self._states.get(aggregate_id)
            if isinstance(cached, kind):
                return cached
        state = super().load(aggregate_id, kind)
        if self._states is not None:
            self._states.put(state)
        return state

    def record(self, *events: DomainEvent) -> None:
        self._refuse_personal_data_of_the_erased(events)
        try:
            super().record(*events)
        except Exception:
            # A conflict, or a failure whose outcome is unknown (the database went away
            # during the commit: the events may be stored after all): the cached states may
            # be behind the store, so they are read from it next time.
            if self._states is not None:
                self._states.forget(event.originator_id for event in events)
            raise
        if self._states is not None:
            self._states.advance(events)

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
        if customer_id is None:
            # Seals what is said before the caller is known; handed to them when identified.
            self.key_vault.new_key(interaction_id)
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
                case.link_interaction(
                    interaction_id,
                    interaction_customer_id=customer_id,
                    interaction_channel=opened.channel,
                    at=when,
                )
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
        channel: str | None = None,
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
        if customer_id is None:
            self.key_vault.new_key(case_id)  # seals the subject of a case nobody owns
        opened = Case.open(
            case_id=case_id,
            subject=subject,
            customer_id=customer_id,
            reason=reason,
            priority=priority,
            reopen_window=reopen_window,
            channel=channel,
            at=when,
        )
        case = opened.mutate(None)
        events: list[DomainEvent] = [opened]
        for interaction in interactions:
            linked = case.link_interaction(
                interaction.id,
                interaction_customer_id=interaction.customer_id,
                interaction_channel=interaction.channel,
                at=when,
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
            interaction_id,
            interaction_customer_id=interaction.customer_id,
            interaction_channel=interaction.channel,
            at=when,
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
        capture_comment: bool = False,
        at: datetime | None = None,
    ) -> SurveyResponse:
        """Records the one response to a survey (AlreadyExists for a second one).

        Customer, case, agent (the one who resolved it, else the last who handled it) and
        channel default to those of the rated interaction. With `capture_comment`, a comment
        also becomes VOC feedback (id `survey_feedback_id(response.id)`, source `survey`,
        classified by the rules with the score as a hint), in the same transaction."""
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
        events: list[DomainEvent] = [answered]
        if capture_comment and answered.comment:
            events.append(
                Feedback.capture(
                    feedback_id=survey_feedback_id(answered.originator_id),
                    text=answered.comment,
                    source=FeedbackSource.SURVEY,
                    customer_id=answered.customer_id,
                    interaction_id=answered.interaction_id,
                    case_id=answered.case_id,
                    survey_response_id=answered.originator_id,
                    channel=answered.channel,
                    by_rule=classifier.classify(
                        answered.comment, survey=(answered.kind, answered.score)
                    ),
                    at=when,
                )
            )
        try:
            self.record(*events)
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
        interaction (or survey response) it came from. What the caller does not classify,
        the built-in rules do (set by `rule`); a survey response's score is their hint.

        Feedback from a transcript (`source` "transcript") without text takes the customer's
        public messages of the interaction: an agent tagging a conversation."""
        when = _when(at)
        channel: str | None = None
        survey: tuple[SurveyKind, int] | None = None
        if survey_response_id is not None:
            response = self.get_survey_response(survey_response_id)
            survey = (response.kind, response.score)
            customer_id = customer_id or response.customer_id
            interaction_id = interaction_id or response.interaction_id
            case_id = case_id or response.case_id
            channel = response.channel
        if interaction_id is not None:
            interaction = self.get_interaction(interaction_id)
            customer_id = customer_id or interaction.customer_id
            case_id = case_id or interaction.case_id
            channel = channel or interaction.channel
            if source == FeedbackSource.TRANSCRIPT and not text.strip():
                text = _customer_words(interaction)
        by_rule = None
        if category is None or sentiment is None or not topics:
            by_rule = classifier.classify(text, survey=survey)
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
            by_rule=by_rule,
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

    # --- SLA --------------------------------------------------------------------------------

    def record_sla_event(
        self,
        case_id: UUID,
        *,
        kind: str,
        metric: str,
        cycle: int,
        policy: str,
        target: timedelta,
        started_at: datetime,
        due_at: datetime,
        at_risk_at: datetime | None = None,
        at: datetime | None = None,
    ) -> SlaEvent | None:
        """Stores a case's SLA at-risk or breached event, at most once per metric, cycle and
        kind; None (and nothing stored) when the case already had it."""
        case = self.get_case(case_id)
        return self._record_sla_mark(
            sla_record_id(case_id),
            f"case {case_id}",
            dict(
                case_id=case_id,
                customer_id=case.customer_id,
                channel=case.channel,
                priority=case.priority,
                kind=SlaEventKind(kind),
                metric=SlaMetric(metric),
                cycle=cycle,
                policy=policy,
                target=target,
                started_at=started_at,
                due_at=due_at,
                at_risk_at=at_risk_at,
                at=_when(at),
            ),
        )

    def record_interaction_sla_event(
        self,
        interaction_id: UUID,
        *,
        kind: str,
        metric: str,
        cycle: int,
        policy: str,
        target: timedelta,
        started_at: datetime,
        due_at: datetime,
        at_risk_at: datetime | None = None,
        at: datetime | None = None,
    ) -> SlaEvent | None:
        """Stores the SLA at-risk or breached event of an interaction outside a case (the
        event's `case_id` is None), at most once per metric, cycle and kind; None (and nothing
        stored) when it had it already. Its priority is `interaction_priority` of its routing
        priority now."""
        interaction = self.get_interaction(interaction_id)
        return self._record_sla_mark(
            interaction_sla_record_id(interaction_id),
            f"interaction {interaction_id}",
            dict(
                interaction_id=interaction_id,
                customer_id=interaction.customer_id,
                channel=interaction.channel,
                priority=interaction_priority(interaction.requirements.priority),
                kind=SlaEventKind(kind),
                metric=SlaMetric(metric),
                cycle=cycle,
                policy=policy,
                target=target,
                started_at=started_at,
                due_at=due_at,
                at_risk_at=at_risk_at,
                at=_when(at),
            ),
        )

    def _record_sla_mark(
        self, record_id: UUID, whose: str, facts: dict[str, Any]
    ) -> SlaEvent | None:
        metric, cycle, kind = facts["metric"], facts["cycle"], facts["kind"]
        for _ in range(3):
            record = self._sla_record(record_id)
            if record is not None and record.has(metric, cycle, kind):
                return None
            event = mark(record, **facts)
            try:
                self.record(event)
            except ConcurrencyConflict:
                continue  # another scheduler marked it: look again
            return event
        raise ConcurrencyConflict(f"the SLA record of {whose} keeps changing")

    def get_sla_record(self, case_id: UUID) -> SlaRecord | None:
        """The SLA events a case has had (None: none yet)."""
        return self._sla_record(sla_record_id(case_id))

    def get_interaction_sla_record(self, interaction_id: UUID) -> SlaRecord | None:
        """The SLA events an interaction outside a case has had (None: none yet)."""
        return self._sla_record(interaction_sla_record_id(interaction_id))

    def _sla_record(self, record_id: UUID) -> SlaRecord | None:
        try:
            return self.load(record_id, SlaRecord)
        except NotFound:
            return None

    # --- erasure ----------------------------------------------------------------------------

    def erase_customer(self, customer_id: UUID) -> list[UUID]:
        """Crypto-shreds the customer's personal data here: destroys its key and every key
        handed to it (its anonymous interactions once identified, the customers merged into
        it); returns whose keys were destroyed. Safe to repeat (a redelivered erasure)."""
        destroyed = self.key_vault.destroy_owned(customer_id)
        self._forget_states()
        return destroyed

    def _forget_states(self) -> None:
        if self._states is not None:
            self._states.clear()  # cached states still hold the texts in clear

    def merge_customers(
        self, duplicate_id: UUID, survivor_id: UUID, merged_ids: Sequence[UUID] = ()
    ) -> None:
        """The duplicate (and the customers merged into it before) now live on as the
        survivor: their keys are handed to it, so erasing the survivor reaches them."""
        for subject in (duplicate_id, *merged_ids):
            self.key_vault.assign_owner(subject, survivor_id)

    def _refuse_personal_data_of_the_erased(self, events: Sequence[DomainEvent]) -> None:
        """RuleViolation before storing personal text under a destroyed key (the customer was
        erased): checked per caller, so one refused command does not fail a shared batch."""
        for event in events:
            personal = personal_fields_of(type(event))
            if not personal or all(getattr(event, name) is None for name in personal):
                continue
            subject = cast(PersonalData, event).personal_data_subject()
            if self.key_vault.is_destroyed(subject):
                raise RuleViolation(
                    f"the personal data of {subject} was erased: nothing personal can be "
                    "recorded for it any more"
                )

    # --- routing decisions ------------------------------------------------------------------

    def apply_routing_event(self, event: TaskEvent) -> Interaction | None:
        """Records a routing decision about the interaction whose id is the task's; returns
        the new state, or None when there is nothing to record (work that is not an
        interaction, an event applied before, or one the interaction has moved past)."""
        if isinstance(event, RoutingOffered):
            return self._routing_offer(event.originator_id, event.agent_id, event.timestamp)
        if isinstance(event, RoutingAccepted | RoutingAssigned):
            return self._routing_answer(event.originator_id, event.agent_id, event.timestamp)
        reason = {
            RoutingRejected: DeclineReason.REJECTED,
            RoutingTimedOut: DeclineReason.TIMEOUT,
            RoutingOfferRevoked: DeclineReason.REVOKED,
        }.get(type(event))
        agent_id = getattr(event, "agent_id", None)
        if reason is not None and isinstance(agent_id, UUID):
            return self._routing_miss(event.originator_id, agent_id, reason, event.timestamp)
        return None

    def _routing_offer(
        self, interaction_id: UUID, agent_id: UUID, at: datetime
    ) -> Interaction | None:
        state = self._find_interaction(interaction_id)
        if state is None or state.status is not InteractionStatus.QUEUED:
            return None
        return self._apply(state, state.offer(agent_id, at=max(at, state.modified_on)))

    def _routing_answer(
        self, interaction_id: UUID, agent_id: UUID, at: datetime
    ) -> Interaction | None:
        state = self._find_interaction(interaction_id)
        if state is None or state.status not in (
            InteractionStatus.QUEUED,
            InteractionStatus.OFFERED,
        ):
            return None  # not an interaction, or answered already (by this agent or another)
        if state.status is InteractionStatus.OFFERED and state.offered_agent_id != agent_id:
            return None  # an offer to someone else is pending: its own events will follow
        return self._apply(state, state.answer(agent_id, at=max(at, state.modified_on)))

    def _routing_miss(
        self, interaction_id: UUID, agent_id: UUID, reason: DeclineReason, at: datetime
    ) -> Interaction | None:
        state = self._find_interaction(interaction_id)
        if (
            state is None
            or state.status is not InteractionStatus.OFFERED
            or state.offered_agent_id != agent_id
        ):
            return None
        return self._apply(
            state, state.decline_offer(agent_id, reason, at=max(at, state.modified_on))
        )

    def _find_interaction(self, interaction_id: UUID) -> Interaction | None:
        try:
            return self.load(interaction_id, Interaction)
        except NotFound:
            return None

    def _apply(self, state: Interaction, event: InteractionEvent) -> Interaction:
        self.record(event)
        return event.mutate(state)

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
        return self._run(interaction_id, Interaction, "interaction", command)

    def _change_case(self, case_id: UUID, command: Callable[[Case], CaseEvent]) -> Case:
        return self._run(case_id, Case, "case", command)

    def _run(
        self,
        aggregate_id: UUID,
        kind: type[TState],
        label: str,
        command: Callable[[TState], DomainEvent],
    ) -> TState:
        """Runs a command on an aggregate and stores its event; with the state cache, once
        more on the stored state when the cached one turned out to be stale."""
        attempts = 2 if self._states is not None else 1
        for attempt in range(1, attempts + 1):
            state = self._load(aggregate_id, kind, label)
            event = command(state)
            try:
                self.record(event)
            except ConcurrencyConflict:
                if attempt == attempts:
                    raise
                continue
            return cast(TState, event.mutate(state))
        raise AssertionError("unreachable")

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


def _customer_words(interaction: Interaction) -> str:
    """What the customer said publicly in an interaction, one message a line (bounded)."""
    words = "\n".join(
        entry.text
        for entry in interaction.transcript
        if entry.author_kind is AuthorKind.CUSTOMER and entry.public
    )
    return words[:MAX_TEXT_LENGTH]


class _States:
    """The latest states of the most recently used aggregates (least recently used leave)."""

    def __init__(self, maxsize: int) -> None:
        self._maxsize = maxsize
        self._states: OrderedDict[UUID, Aggregate] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, aggregate_id: UUID) -> Aggregate | None:
        with self._lock:
            state = self._states.get(aggregate_id)
            if state is not None:
                self._states.move_to_end(aggregate_id)
            return state

    def put(self, state: Aggregate) -> None:
        with self._lock:
            current = self._states.get(state.id)
            if current is None or current.version <= state.version:
                self._keep(state)

    def advance(self, events: Sequence[DomainEvent]) -> None:
        """Moves the cached states on by stored events (forgetting any it cannot follow)."""
        with self._lock:
            for event in events:
                current = self._states.get(event.originator_id)
                if event.originator_version == 1:
                    self._keep(event.mutate(None))
                elif current is not None and current.version == event.originator_version - 1:
                    self._keep(event.mutate(current))
                else:
                    self._states.pop(event.originator_id, None)

    def clear(self) -> None:
        with self._lock:
            self._states.clear()

    def forget(self, aggregate_ids: Iterable[UUID]) -> None:
        with self._lock:
            for aggregate_id in aggregate_ids:
                self._states.pop(aggregate_id, None)

    def _keep(self, state: Aggregate) -> None:
        self._states[state.id] = state
        self._states.move_to_end(state.id)
        while len(self._states) > self._maxsize:
            self._states.popitem(last=False)
