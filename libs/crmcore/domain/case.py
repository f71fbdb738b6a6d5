"""Cases (tickets): one customer issue and the interactions about it (DOMAIN.md, "Interaction
and case").

A case is new, open, pending (waiting on the customer), on hold, solved or closed. A solved
case can be reopened inside its reopen window (7 days unless the case says otherwise); after
that the customer's issue needs a new case. Which command is allowed in which status is written
once, in `CASE_TRANSITIONS` and `CASE_STATUS_CHANGES`.

Case events belong to the `interaction` context; their names start with `Case`
(`crm.interaction.case_opened`).

Personal data: a case's subject, its resolution and the reason given for a reopening are free
text about the customer. The events name them (`personal_fields`) like the interaction events
do (`crmcore.domain.interaction`): sealed with the customer's key (the case's own when it has
no customer), blanked in the `redacted()` form the bus carries. The contact reason and the
priority are labels the SLAs and KPIs need: they stay in clear.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import ClassVar, NamedTuple, Self, TypedDict
from uuid import UUID

from crmcore.domain import values
from crmcore.domain.base import Aggregate, Event, advance
from crmcore.domain.errors import InvalidValue, RuleViolation
from crmcore.domain.interaction import redacted_copy

DEFAULT_REOPEN_WINDOW = timedelta(days=7)
MAX_REOPEN_WINDOW = timedelta(days=365)
MAX_CASE_INTERACTIONS = 1_000
MAX_SUBJECT_LENGTH = 200
MAX_RESOLUTION_LENGTH = 2_000
MAX_REASON_LENGTH = 500


class CaseStatus(enum.StrEnum):
    NEW = "new"
    OPEN = "open"
    PENDING = "pending"
    ON_HOLD = "on_hold"
    SOLVED = "solved"
    CLOSED = "closed"


class CasePriority(enum.StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


class CaseCommand(enum.StrEnum):
    LINK_INTERACTION = "link_interaction"
    CHANGE_STATUS = "change_status"
    RECORD_FIRST_RESPONSE = "record_first_response"
    SOLVE = "solve"
    REOPEN = "reopen"
    CLOSE = "close"


class CaseTransition(NamedTuple):
    """Where a case command may run and where it leads (`target` None: the status is kept, or
    for `change_status` chosen among `CASE_STATUS_CHANGES`)."""

    sources: frozenset[CaseStatus]
    target: CaseStatus | None


_WORKING = frozenset({CaseStatus.NEW, CaseStatus.OPEN, CaseStatus.PENDING, CaseStatus.ON_HOLD})
_NOT_CLOSED = frozenset(CaseStatus) - {CaseStatus.CLOSED}

CASE_TRANSITIONS: Mapping[CaseCommand, CaseTransition] = MappingProxyType(
    {
        CaseCommand.LINK_INTERACTION: CaseTransition(_NOT_CLOSED, None),
        CaseCommand.CHANGE_STATUS: CaseTransition(_WORKING, None),
        CaseCommand.RECORD_FIRST_RESPONSE: CaseTransition(_NOT_CLOSED, None),
        CaseCommand.SOLVE: CaseTransition(_WORKING, CaseStatus.SOLVED),
        # Only inside the reopen window (Case.reopen checks it).
        CaseCommand.REOPEN: CaseTransition(frozenset({CaseStatus.SOLVED}), CaseStatus.OPEN),
        CaseCommand.CLOSE: CaseTransition(frozenset({CaseStatus.SOLVED}), CaseStatus.CLOSED),
    }
)

#: The statuses `change_status` may move a working case to; solving and closing have their own
#: commands, and nothing goes back to `new`.
CASE_STATUS_CHANGES: Mapping[CaseStatus, frozenset[CaseStatus]] = MappingProxyType(
    {
        CaseStatus.NEW: frozenset({CaseStatus.OPEN, CaseStatus.PENDING, CaseStatus.ON_HOLD}),
        CaseStatus.OPEN: frozenset({CaseStatus.PENDING, CaseStatus.ON_HOLD}),
        CaseStatus.PENDING: frozenset({CaseStatus.OPEN, CaseStatus.ON_HOLD}),
        CaseStatus.ON_HOLD: frozenset({CaseStatus.OPEN, CaseStatus.PENDING}),
    }
)


def valid_reopen_window(value: timedelta, field: str = "reopen_window") -> timedelta:
    if not timedelta(0) < value <= MAX_REOPEN_WINDOW:
        raise InvalidValue(
            field, f"must be longer than 0 and at most {MAX_REOPEN_WINDOW.days} days"
        )
    return value


class _CaseFacts(TypedDict):
    originator_id: UUID
    originator_version: int
    timestamp: datetime
    status: CaseStatus
    customer_id: UUID | None
    reason: str | None
    priority: CasePriority


class Case(Aggregate, frozen=True, kw_only=True):
    """One customer issue, the interactions about it, and the times SLAs and KPIs need."""

    subject: str
    status: CaseStatus
    priority: CasePriority
    customer_id: UUID | None = None
    #: Contact reason / category of the issue.
    reason: str | None = None
    #: The channel the issue came in on (given when opened, else its first interaction's):
    #: SLA policies are chosen by it.
    channel: values.Channel | None = None
    interaction_ids: tuple[UUID, ...] = ()
    #: Interactions linked after the first one: the customer came back about the same issue.
    repeat_contact_count: int = 0
    reopen_window: timedelta = DEFAULT_REOPEN_WINDOW
    first_response_at: datetime | None = None
    first_response_agent_id: UUID | None = None
    resolution: str | None = None
    solved_at: datetime | None = None
    first_solved_at: datetime | None = None
    closed_at: datetime | None = None
    reopen_count: int = 0

    @property
    def created_at(self) -> datetime:
        return self.created_on

    def can(self, command: CaseCommand) -> bool:
        return self.status in CASE_TRANSITIONS[command].sources

    def reopenable_until(self) -> datetime | None:
        """The end of the reopen window, while the case is solved."""
        if self.status is not CaseStatus.SOLVED or self.solved_at is None:
            return None
        return self.solved_at + self.reopen_window

    # --- creation ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        *,
        case_id: UUID,
        subject: str,
        customer_id: UUID | None = None,
        reason: str | None = None,
        priority: str = CasePriority.NORMAL,
        reopen_window: timedelta = DEFAULT_REOPEN_WINDOW,
        channel: str | None = None,
        at: datetime,
    ) -> CaseOpened:
        checked_window = valid_reopen_window(reopen_window)
        return CaseOpened(
            originator_id=case_id,
            originator_version=1,
            timestamp=values.aware(at, "at"),
            status=CaseStatus.NEW,
            customer_id=customer_id,
            reason=(
                values.required_text(reason, "reason", max_length=values.MAX_SHORT_TEXT_LENGTH)
                if reason is not None
                else None
            ),
            priority=values.enum_value(CasePriority, priority, "priority"),
            subject=values.required_text(subject, "subject", max_length=MAX_SUBJECT_LENGTH),
            reopen_window=checked_window,
            channel=(
                values.enum_value(values.Channel, channel, "channel")
                if channel is not None
                else None
            ),
        )

    # --- commands ---------------------------------------------------------------------------

    def link_interaction(
        self,
        interaction_id: UUID,
        *,
        interaction_customer_id: UUID | None,
        interaction_channel: str | None = None,
        at: datetime,
    ) -> CaseInteractionLinked:
        """Groups an interaction under this case; a later one is a repeat contact."""
        facts = self._facts(CaseCommand.LINK_INTERACTION, at)
        if interaction_id in self.interaction_ids:
            raise RuleViolation(f"interaction {interaction_id} is already linked to case {self.id}")
        if (
            interaction_customer_id is not None
            and self.customer_id is not None
            and interaction_customer_id != self.customer_id
        ):
            raise RuleViolation(
                f"interaction {interaction_id} is with another customer than case {self.id}"
            )
        if len(self.interaction_ids) >= MAX_CASE_INTERACTIONS:
            raise RuleViolation(f"case {self.id} has {MAX_CASE_INTERACTIONS} interactions already")
        return CaseInteractionLinked(
            **facts,
            interaction_id=interaction_id,
            repeat_contact=bool(self.interaction_ids),
            interaction_count=len(self.interaction_ids) + 1,
            channel=(
                values.enum_value(values.Channel, interaction_channel, "channel")
                if interaction_channel is not None
                else None
            ),
        )

    def change_status(self, status: str, *, at: datetime) -> CaseStatusChanged:
        """Moves a working case between new, open, pending and on hold."""
        facts = self._facts(CaseCommand.CHANGE_STATUS, at)
        target = values.enum_value(CaseStatus, status, "status")
        if target not in CASE_STATUS_CHANGES[self.status]:
            raise RuleViolation(f"case {self.id} cannot go from {self.status} to {target}")
        facts["status"] = target
        return CaseStatusChanged(**facts, previous_status=self.status)

    def record_first_response(
        self, *, agent_id: UUID, interaction_id: UUID, at: datetime
    ) -> CaseFirstResponded:
        """An agent answered the customer publicly for the first time (first response SLA)."""
        facts = self._facts(CaseCommand.RECORD_FIRST_RESPONSE, at)
        if self.first_response_at is not None:
            raise RuleViolation(f"case {self.id} was first answered already")
        return CaseFirstResponded(
            **facts, agent_id=agent_id, interaction_id=interaction_id, created_at=self.created_on
        )

    def solve(self, *, resolution: str | None = None, at: datetime) -> CaseSolved:
        facts = self._facts(CaseCommand.SOLVE, at)
        checked = (
            values.text(resolution, "resolution", max_length=MAX_RESOLUTION_LENGTH).strip()
            if resolution is not None
            else ""
        )
        return CaseSolved(
            **facts,
            resolution=checked or None,
            created_at=self.created_on,
            first_response_at=self.first_response_at,
            interaction_count=len(self.interaction_ids),
            repeat_contact_count=self.repeat_contact_count,
            reopen_count=self.reopen_count,
            first_solution=self.first_solved_at is None,
        )

    def reopen(self, *, reason: str | None = None, at: datetime) -> CaseReopened:
        """Reopens a solved case inside its reopen window; after it, open a new case."""
        facts = self._facts(CaseCommand.REOPEN, at)
        # A solved case always has solved_at (CaseSolved sets it, CaseReopened clears both).
        assert self.solved_at is not None
        deadline = self.solved_at + self.reopen_window
        if facts["timestamp"] > deadline:
            raise RuleViolation(
                f"case {self.id} was solved at {self.solved_at.isoformat()}; its reopen window "
                f"of {self.reopen_window} has passed, so the issue needs a new case"
            )
        return CaseReopened(
            **facts,
            reopen_reason=(
                values.required_text(reason, "reason", max_length=MAX_REASON_LENGTH)
                if reason is not None
                else None
            ),
            solved_at=self.solved_at,
        )

    def close(self, *, at: datetime) -> CaseClosed:
        facts = self._facts(CaseCommand.CLOSE, at)
        assert self.solved_at is not None
        return CaseClosed(**facts, solved_at=self.solved_at)

    def _facts(self, command: CaseCommand, at: datetime) -> _CaseFacts:
        at = values.aware(at, "at")
        if at < self.modified_on:
            raise RuleViolation(
                f"case {self.id} changed at {self.modified_on.isoformat()}; "
                f"a change at {at.isoformat()} would go back in time"
            )
        transition = CASE_TRANSITIONS[command]
        if self.status not in transition.sources:
            raise RuleViolation(f"cannot {command} case {self.id}: it is {self.status}")
        return _CaseFacts(
            originator_id=self.id,
            originator_version=self.version + 1,
            timestamp=at,
            status=transition.target or self.status,
            customer_id=self.customer_id,
            reason=self.reason,
            priority=self.priority,
        )


# --- events ---------------------------------------------------------------------------------


class CaseEvent(Event[Case], frozen=True, kw_only=True):
    """Base of the events of one case; `status` is the status after the event."""

    context: ClassVar[str] = "interaction"

    status: CaseStatus
    customer_id: UUID | None
    reason: str | None
    priority: CasePriority

    #: Top-level fields holding personal data (module docstring).
    personal_fields: ClassVar[frozenset[str]] = frozenset()

    def personal_data_subject(self) -> UUID:
        """Whose key seals the personal fields: the customer's, else the case's own."""
        return self.customer_id or self.originator_id

    def redacted(self) -> Self:
        return redacted_copy(self, self.personal_fields)

    def bus_attributes(self) -> dict[str, str]:
        if self.customer_id is None:
            return {}
        return {"customerid": str(self.customer_id)}

    def _advance(self, state: Case, **changes: object) -> Case:
        return advance(state, self, status=self.status, **changes)


class CaseOpened(CaseEvent, frozen=True, kw_only=True):
    personal_fields: ClassVar[frozenset[str]] = frozenset({"subject"})

    subject: str
    reopen_window: timedelta
    channel: values.Channel | None = None

    def mutate(self, state: Case | None) -> Case:
        return Case(
            id=self.originator_id,
            version=self.originator_version,
            created_on=self.timestamp,
            modified_on=self.timestamp,
            subject=self.subject,
            status=self.status,
            priority=self.priority,
            customer_id=self.customer_id,
            reason=self.reason,
            reopen_window=self.reopen_window,
            channel=self.channel,
        )


class CaseInteractionLinked(CaseEvent, frozen=True, kw_only=True):
    interaction_id: UUID
    #: The customer came back about this issue (not the first interaction of the case).
    repeat_contact: bool
    interaction_count: int
    #: The interaction's channel (the case takes it when it has none yet).
    channel: values.Channel | None = None

    def apply(self, state: Case) -> Case:
        return self._advance(
            state,
            interaction_ids=(*state.interaction_ids, self.interaction_id),
            repeat_contact_count=state.repeat_contact_count + int(self.repeat_contact),
            channel=state.channel or self.channel,
        )


class CaseStatusChanged(CaseEvent, frozen=True, kw_only=True):
    previous_status: CaseStatus

    def apply(self, state: Case) -> Case:
        return self._advance(state)


class CaseFirstResponded(CaseEvent, frozen=True, kw_only=True):
    agent_id: UUID
    interaction_id: UUID
    created_at: datetime

    def apply(self, state: Case) -> Case:
        return self._advance(
            state, first_response_at=self.timestamp, first_response_agent_id=self.agent_id
        )


class CaseSolved(CaseEvent, frozen=True, kw_only=True):
    personal_fields: ClassVar[frozenset[str]] = frozenset({"resolution"})

    resolution: str | None
    created_at: datetime
    first_response_at: datetime | None
    interaction_count: int
    repeat_contact_count: int
    reopen_count: int
    first_solution: bool

    def apply(self, state: Case) -> Case:
        return self._advance(
            state,
            resolution=self.resolution,
            solved_at=self.timestamp,
            first_solved_at=state.first_solved_at or self.timestamp,
        )


class CaseReopened(CaseEvent, frozen=True, kw_only=True):
    personal_fields: ClassVar[frozenset[str]] = frozenset({"reopen_reason"})

    reopen_reason: str | None
    solved_at: datetime

    def apply(self, state: Case) -> Case:
        return self._advance(state, solved_at=None, reopen_count=state.reopen_count + 1)


class CaseClosed(CaseEvent, frozen=True, kw_only=True):
    solved_at: datetime

    def apply(self, state: Case) -> Case:
        return self._advance(state, closed_at=self.timestamp)
