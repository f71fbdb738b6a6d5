"""Voice of the customer (VOC, 顧客の声): survey responses and classified feedback.

`SurveyResponse` is one answer to one survey: CSAT (1–5), NPS (0–10) or CES (1–7), tied to the
interaction, case and agent it rates. Its id derives from the survey id, so a survey is answered
once. `Feedback` is what a customer said (in a survey comment, a transcript, a complaint, or
as told by an agent) with its category, sentiment and topics, and who set each of them: a
value set by a person is not overwritten by a model or a rule.

Departments subscribe to these events by subject: `crm.voc.survey.<kind>` and
`crm.voc.feedback.<category>` (ARCHITECTURE.md, "Events on the bus").

Personal data: the customer's own words (a feedback's `text`, a survey's `comment`) are
sealed in the store with the customer's data key (else the key of the interaction they came
from, else the item's own) and blanked in the `redacted()` form, which is what the bus
carries. Departments get what they act on in clear: category, sentiment (label and score),
topics, who set each, the survey kind and score, and the customer, interaction, case and
channel ids to look the words up through the interaction API while the customer is not
erased. The words are classified before they are sealed, so classification is unchanged.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from types import MappingProxyType
from typing import ClassVar, NamedTuple, Self
from uuid import NAMESPACE_URL, UUID, uuid5

import msgspec

from crmcore.domain import values
from crmcore.domain.base import Aggregate, Event, advance
from crmcore.domain.errors import InvalidValue, RuleViolation
from crmcore.domain.interaction import redacted_copy

SURVEY_RESPONSE_NAMESPACE = uuid5(NAMESPACE_URL, "urn:crm:voc:survey-response")
MAX_SURVEY_ID_LENGTH = 200
MAX_COMMENT_LENGTH = 5_000
MAX_TOPICS = 20


class SurveyKind(enum.StrEnum):
    CSAT = "csat"
    NPS = "nps"
    CES = "ces"


#: The closed scale of each kind of survey (DOMAIN.md, "KPIs").
SURVEY_SCALES: Mapping[SurveyKind, tuple[int, int]] = MappingProxyType(
    {SurveyKind.CSAT: (1, 5), SurveyKind.NPS: (0, 10), SurveyKind.CES: (1, 7)}
)


class FeedbackSource(enum.StrEnum):
    SURVEY = "survey"
    TRANSCRIPT = "transcript"
    COMPLAINT = "complaint"
    AGENT = "agent"
    OTHER = "other"


class FeedbackCategory(enum.StrEnum):
    COMPLAINT = "complaint"
    REQUEST = "request"
    PRAISE = "praise"
    BUG = "bug"
    QUESTION = "question"
    SUGGESTION = "suggestion"
    OTHER = "other"


class Sentiment(enum.StrEnum):
    POSITIVE = "positive"
    NEUTRAL = "neutral"
    NEGATIVE = "negative"


class Setter(enum.StrEnum):
    """Who set a classification value."""

    AGENT = "agent"
    MODEL = "model"
    CUSTOMER = "customer"
    RULE = "rule"


#: A value may be changed by a setter of the same or a higher rank: people over models over
#: keyword rules, so an agent's correction survives the next model run.
SETTER_RANK: Mapping[Setter, int] = MappingProxyType(
    {Setter.RULE: 0, Setter.MODEL: 1, Setter.AGENT: 2, Setter.CUSTOMER: 2}
)


class RuleClassification(msgspec.Struct, frozen=True, kw_only=True):
    """What a keyword/rule classifier (`crmcore.domain.classifier`) made of a text; `capture`
    takes it for the values the caller did not give, set by `rule`."""

    category: FeedbackCategory
    sentiment: Sentiment
    sentiment_score: float
    topics: tuple[str, ...]


def survey_response_id(survey_id: str) -> UUID:
    """The id of the one response a survey can have."""
    return uuid5(SURVEY_RESPONSE_NAMESPACE, f"{_survey_id(survey_id)}")


def _survey_id(value: str) -> str:
    return values.required_text(value, "survey_id", max_length=MAX_SURVEY_ID_LENGTH)


def sentiment_score(value: float, field: str = "sentiment_score") -> float:
    if not math.isfinite(value) or not -1.0 <= value <= 1.0:
        raise InvalidValue(field, f"must be between -1.0 and 1.0, got {value}")
    return float(value)


# --- survey responses -----------------------------------------------------------------------


class SurveyResponse(Aggregate, frozen=True, kw_only=True):
    """One answer to one survey."""

    survey_id: str
    kind: SurveyKind
    score: int
    comment: str = ""
    customer_id: UUID | None = None
    interaction_id: UUID | None = None
    case_id: UUID | None = None
    agent_id: UUID | None = None
    channel: values.Channel | None = None

    @classmethod
    def answer(
        cls,
        *,
        survey_id: str,
        kind: str,
        score: int,
        comment: str = "",
        customer_id: UUID | None = None,
        interaction_id: UUID | None = None,
        case_id: UUID | None = None,
        agent_id: UUID | None = None,
        channel: str | None = None,
        at: datetime,
    ) -> SurveyAnswered:
        checked_kind = values.enum_value(SurveyKind, kind, "kind")
        low, high = SURVEY_SCALES[checked_kind]
        checked_survey_id = _survey_id(survey_id)
        return SurveyAnswered(
            originator_id=survey_response_id(checked_survey_id),
            originator_version=1,
            timestamp=values.aware(at, "at"),
            survey_id=checked_survey_id,
            kind=checked_kind,
            score=values.score(score, "score", low=low, high=high),
            comment=values.text(comment, "comment", max_length=MAX_COMMENT_LENGTH).strip(),
            customer_id=customer_id,
            interaction_id=interaction_id,
            case_id=case_id,
            agent_id=agent_id,
            channel=(
                values.enum_value(values.Channel, channel, "channel")
                if channel is not None
                else None
            ),
        )


class SurveyAnswered(Event[SurveyResponse], frozen=True, kw_only=True):
    context: ClassVar[str] = "voc"

    survey_id: str
    kind: SurveyKind
    score: int
    comment: str
    customer_id: UUID | None
    interaction_id: UUID | None
    case_id: UUID | None
    agent_id: UUID | None
    channel: values.Channel | None

    personal_fields: ClassVar[frozenset[str]] = frozenset({"comment"})

    def personal_data_subject(self) -> UUID:
        """The customer's key; else the rated interaction's (handed to the customer when it
        is identified); else the response's own."""
        return self.customer_id or self.interaction_id or self.originator_id

    def redacted(self) -> Self:
        return redacted_copy(self, self.personal_fields)

    def bus_subject(self) -> str:
        return f"crm.voc.survey.{self.kind}"

    def bus_attributes(self) -> dict[str, str]:
        attributes = {"surveykind": str(self.kind)}
        if self.customer_id is not None:
            attributes["customerid"] = str(self.customer_id)
        return attributes

    def mutate(self, state: SurveyResponse | None) -> SurveyResponse:
        return SurveyResponse(
            id=self.originator_id,
            version=self.originator_version,
            created_on=self.timestamp,
            modified_on=self.timestamp,
            survey_id=self.survey_id,
            kind=self.kind,
            score=self.score,
            comment=self.comment,
            customer_id=self.customer_id,
            interaction_id=self.interaction_id,
            case_id=self.case_id,
            agent_id=self.agent_id,
            channel=self.channel,
        )


# --- feedback -------------------------------------------------------------------------------


class Feedback(Aggregate, frozen=True, kw_only=True):
    """Something a customer told us, classified, with who set each value."""

    source: FeedbackSource
    text: str
    customer_id: UUID | None = None
    interaction_id: UUID | None = None
    case_id: UUID | None = None
    survey_response_id: UUID | None = None
    channel: values.Channel | None = None
    category: FeedbackCategory = FeedbackCategory.OTHER
    category_set_by: Setter = Setter.RULE
    sentiment: Sentiment = Sentiment.NEUTRAL
    #: -1.0 (very negative) … 1.0 (very positive); None when nobody scored it.
    sentiment_score: float | None = None
    sentiment_set_by: Setter = Setter.RULE
    topics: tuple[str, ...] = ()
    topics_set_by: Setter = Setter.RULE

    @classmethod
    def capture(
        cls,
        *,
        feedback_id: UUID,
        text: str,
        source: str = FeedbackSource.OTHER,
        customer_id: UUID | None = None,
        interaction_id: UUID | None = None,
        case_id: UUID | None = None,
        survey_response_id: UUID | None = None,
        channel: str | None = None,
        category: str | None = None,
        sentiment: str | None = None,
        sentiment_score: float | None = None,
        topics: Sequence[str] = (),
        set_by: str = Setter.RULE,
        by_rule: RuleClassification | None = None,
        at: datetime,
    ) -> FeedbackCaptured:
        """Captures feedback; the classification given (if any) is set by `set_by`, the rest
        comes from `by_rule` (set by `rule`), else category `other` and sentiment `neutral`."""
        setter = values.enum_value(Setter, set_by, "set_by")
        checked = _classification(category, sentiment, sentiment_score, topics)
        rule_topics = values.tags(by_rule.topics, "topics") if by_rule is not None else ()
        return FeedbackCaptured(
            originator_id=feedback_id,
            originator_version=1,
            timestamp=values.aware(at, "at"),
            source=values.enum_value(FeedbackSource, source, "source"),
            text=values.required_text(text, "text", max_length=values.MAX_TEXT_LENGTH),
            customer_id=customer_id,
            interaction_id=interaction_id,
            case_id=case_id,
            survey_response_id=survey_response_id,
            channel=(
                values.enum_value(values.Channel, channel, "channel")
                if channel is not None
                else None
            ),
            category=checked.category
            or (by_rule.category if by_rule is not None else FeedbackCategory.OTHER),
            category_set_by=setter if checked.category is not None else Setter.RULE,
            sentiment=checked.sentiment
            or (by_rule.sentiment if by_rule is not None else Sentiment.NEUTRAL),
            sentiment_score=(
                checked.sentiment_score
                if checked.sentiment is not None or by_rule is None
                else by_rule.sentiment_score
            ),
            sentiment_set_by=setter if checked.sentiment is not None else Setter.RULE,
            topics=checked.topics or rule_topics,
            topics_set_by=setter if checked.topics else Setter.RULE,
        )

    def classify(
        self,
        *,
        set_by: str,
        category: str | None = None,
        sentiment: str | None = None,
        sentiment_score: float | None = None,
        topics: Sequence[str] | None = None,
        at: datetime,
    ) -> FeedbackClassified:
        """Sets some of category, sentiment and topics. Refused when it would overwrite a value
        set by a higher-ranked setter, or would change nothing."""
        at = values.aware(at, "at")
        if at < self.modified_on:
            raise RuleViolation(
                f"feedback {self.id} changed at {self.modified_on.isoformat()}; "
                f"a change at {at.isoformat()} would go back in time"
            )
        setter = values.enum_value(Setter, set_by, "set_by")
        checked = _classification(category, sentiment, sentiment_score, topics)
        if checked.category is None and checked.sentiment is None and checked.topics is None:
            raise InvalidValue("category", "name a category, a sentiment or topics to set")
        for field, given, current_setter in (
            ("category", checked.category is not None, self.category_set_by),
            ("sentiment", checked.sentiment is not None, self.sentiment_set_by),
            ("topics", checked.topics is not None, self.topics_set_by),
        ):
            if given and SETTER_RANK[setter] < SETTER_RANK[current_setter]:
                raise RuleViolation(
                    f"the {field} of feedback {self.id} was set by {current_setter}; "
                    f"{setter} cannot overwrite it"
                )
        event = FeedbackClassified(
            originator_id=self.id,
            originator_version=self.version + 1,
            timestamp=at,
            source=self.source,
            text=self.text,
            customer_id=self.customer_id,
            interaction_id=self.interaction_id,
            case_id=self.case_id,
            survey_response_id=self.survey_response_id,
            channel=self.channel,
            category=checked.category or self.category,
            category_set_by=setter if checked.category is not None else self.category_set_by,
            sentiment=checked.sentiment or self.sentiment,
            sentiment_score=(
                checked.sentiment_score if checked.sentiment is not None else self.sentiment_score
            ),
            sentiment_set_by=setter if checked.sentiment is not None else self.sentiment_set_by,
            topics=checked.topics if checked.topics is not None else self.topics,
            topics_set_by=setter if checked.topics is not None else self.topics_set_by,
            previous_category=self.category,
        )
        if _classification_of(event) == _classification_of(self):
            raise RuleViolation(f"feedback {self.id} is classified like that already")
        return event


class _Classification(NamedTuple):
    """Checked classification input; None where the caller gave nothing."""

    category: FeedbackCategory | None
    sentiment: Sentiment | None
    sentiment_score: float | None
    topics: tuple[str, ...] | None


def _classification(
    category: str | None,
    sentiment: str | None,
    score: float | None,
    topics: Sequence[str] | None,
) -> _Classification:
    if score is not None and sentiment is None:
        raise InvalidValue("sentiment", "a sentiment_score needs its sentiment label")
    checked_topics = None
    if topics is not None:
        if len(topics) > MAX_TOPICS:
            raise InvalidValue("topics", f"more than {MAX_TOPICS} topics")
        checked_topics = values.tags(tuple(topics), "topics")
    return _Classification(
        category=(
            values.enum_value(FeedbackCategory, category, "category")
            if category is not None
            else None
        ),
        sentiment=(
            values.enum_value(Sentiment, sentiment, "sentiment") if sentiment is not None else None
        ),
        sentiment_score=sentiment_score(score) if score is not None else None,
        topics=checked_topics,
    )


def _classification_of(item: Feedback | FeedbackEvent) -> tuple[object, ...]:
    return (
        item.category,
        item.category_set_by,
        item.sentiment,
        item.sentiment_score,
        item.sentiment_set_by,
        item.topics,
        item.topics_set_by,
    )


class FeedbackEvent(Event[Feedback], frozen=True, kw_only=True):
    """Base of the feedback events: the whole feedback after the event, so that a department
    subscribed to one category needs nothing else."""

    context: ClassVar[str] = "voc"

    source: FeedbackSource
    text: str
    customer_id: UUID | None
    interaction_id: UUID | None
    case_id: UUID | None
    survey_response_id: UUID | None
    channel: values.Channel | None
    category: FeedbackCategory
    category_set_by: Setter
    sentiment: Sentiment
    sentiment_score: float | None
    sentiment_set_by: Setter
    topics: tuple[str, ...]
    topics_set_by: Setter

    personal_fields: ClassVar[frozenset[str]] = frozenset({"text"})

    def personal_data_subject(self) -> UUID:
        """The customer's key; else the interaction's it came from; else the feedback's own."""
        return self.customer_id or self.interaction_id or self.originator_id

    def redacted(self) -> Self:
        return redacted_copy(self, self.personal_fields)

    def bus_subject(self) -> str:
        return f"crm.voc.feedback.{self.category}"

    def bus_attributes(self) -> dict[str, str]:
        attributes = {"voccategory": str(self.category), "vocsentiment": str(self.sentiment)}
        if self.customer_id is not None:
            attributes["customerid"] = str(self.customer_id)
        return attributes


class FeedbackCaptured(FeedbackEvent, frozen=True, kw_only=True):
    def mutate(self, state: Feedback | None) -> Feedback:
        return Feedback(
            id=self.originator_id,
            version=self.originator_version,
            created_on=self.timestamp,
            modified_on=self.timestamp,
            source=self.source,
            text=self.text,
            customer_id=self.customer_id,
            interaction_id=self.interaction_id,
            case_id=self.case_id,
            survey_response_id=self.survey_response_id,
            channel=self.channel,
            category=self.category,
            category_set_by=self.category_set_by,
            sentiment=self.sentiment,
            sentiment_score=self.sentiment_score,
            sentiment_set_by=self.sentiment_set_by,
            topics=self.topics,
            topics_set_by=self.topics_set_by,
        )


class FeedbackClassified(FeedbackEvent, frozen=True, kw_only=True):
    previous_category: FeedbackCategory

    def apply(self, state: Feedback) -> Feedback:
        return advance(
            state,
            self,
            category=self.category,
            category_set_by=self.category_set_by,
            sentiment=self.sentiment,
            sentiment_score=self.sentiment_score,
            sentiment_set_by=self.sentiment_set_by,
            topics=self.topics,
            topics_set_by=self.topics_set_by,
        )
