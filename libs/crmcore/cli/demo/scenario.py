"""The simulated contact-centre day, decided up front from one seed: no I/O, no clock.

`generate(seed, ...)` returns a `Scenario`: the customers on file, the agents (teams, skills,
languages, per-channel capacity, shifts with a break), the queues, and every contact of the day
— when it arrives (a non-homogeneous Poisson process following `DAILY_CURVE`), on which channel
(`CHANNEL_MIX`), who it is, why they call, how patient they are, how long the conversation,
hold and after-contact work take, whether it is mis-routed (a transfer), escalated, contained
by the bot, reopened, surveyed, and whether the customer comes back (a repeat contact, or a
retry after abandoning). Every random draw comes from one `random.Random(seed)` in a fixed
order, so the same seed and options give the same scenario, value for value.

What cannot be decided up front — whether the contact is answered before the customer gives
up, by whom, and so how satisfied they are — happens when the driver plays the scenario
against the real services; `survey_score` turns that outcome into an answer.

Times are simulated seconds since the start of the day window (`Scenario.start_s` is the
window's start as seconds after midnight).
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

# --- the shape of a day ----------------------------------------------------------------------

#: Relative arrival intensity by hour of day (linear between the points): a slow start, the
#: mid-morning peak, a lunch dip, a second peak after lunch, a long afternoon tail.
DAILY_CURVE: tuple[tuple[float, float], ...] = (
    (0.0, 0.05),
    (7.0, 0.15),
    (8.0, 0.40),
    (9.0, 0.70),
    (9.5, 1.00),
    (10.0, 1.30),
    (10.5, 1.45),
    (11.0, 1.35),
    (11.5, 1.20),
    (12.0, 0.90),
    (12.5, 0.85),
    (13.0, 0.95),
    (13.5, 1.10),
    (14.0, 1.20),
    (14.5, 1.15),
    (15.0, 1.05),
    (16.0, 0.95),
    (17.0, 0.75),
    (18.0, 0.50),
    (20.0, 0.30),
    (22.0, 0.12),
    (24.0, 0.05),
)

#: Share of the day's contacts by channel (every channel of `crm.v1.Channel`).
CHANNEL_MIX: Mapping[str, float] = {
    "phone": 0.36,
    "email": 0.14,
    "chat": 0.13,
    "chatbot": 0.12,
    "messaging": 0.07,
    "web_form": 0.05,
    "self_service": 0.04,
    "sms": 0.03,
    "social": 0.04,
    "video": 0.02,
}

#: Channels where a bot answers first; the others go straight to a human queue.
BOT_CHANNELS: frozenset[str] = frozenset({"chatbot", "self_service"})
#: Channels written in turns (the customer's first message, the agent's public reply).
WRITTEN_CHANNELS: frozenset[str] = frozenset(
    {"email", "chat", "messaging", "sms", "social", "web_form", "chatbot", "self_service"}
)
#: Channels with a live hold button.
VOICE_CHANNELS: frozenset[str] = frozenset({"phone", "video"})


@dataclass(frozen=True)
class ChannelBehaviour:
    """How contacts on one channel behave: mean handle (talk) time, mean patience in queue
    (None: the customer never gives up, e.g. e-mail), mean after-contact work, and for bot
    channels how long the bot talks and how often it resolves the issue alone."""

    talk_mean_s: float
    patience_mean_s: float | None
    wrap_mean_s: float
    bot_mean_s: float = 0.0
    containment: float = 0.0


CHANNEL_BEHAVIOUR: Mapping[str, ChannelBehaviour] = {
    "phone": ChannelBehaviour(talk_mean_s=280, patience_mean_s=110, wrap_mean_s=45),
    "video": ChannelBehaviour(talk_mean_s=420, patience_mean_s=140, wrap_mean_s=60),
    "chat": ChannelBehaviour(talk_mean_s=540, patience_mean_s=200, wrap_mean_s=30),
    "messaging": ChannelBehaviour(talk_mean_s=600, patience_mean_s=1200, wrap_mean_s=30),
    "sms": ChannelBehaviour(talk_mean_s=420, patience_mean_s=1800, wrap_mean_s=20),
    "social": ChannelBehaviour(talk_mean_s=480, patience_mean_s=1800, wrap_mean_s=40),
    "email": ChannelBehaviour(talk_mean_s=420, patience_mean_s=None, wrap_mean_s=60),
    "web_form": ChannelBehaviour(talk_mean_s=360, patience_mean_s=None, wrap_mean_s=45),
    "chatbot": ChannelBehaviour(
        talk_mean_s=480, patience_mean_s=240, wrap_mean_s=30, bot_mean_s=100, containment=0.62
    ),
    "self_service": ChannelBehaviour(
        talk_mean_s=420, patience_mean_s=None, wrap_mean_s=45, bot_mean_s=150, containment=0.72
    ),
}


@dataclass(frozen=True)
class Reason:
    """A contact reason: how often it comes up, the queue (and skill) that handles it, the
    proficiency it needs, and what customers write about it."""

    name: str
    weight: float
    queue: str
    min_level: int
    subject: str
    customer_text: str


REASONS: tuple[Reason, ...] = (
    Reason("billing", 0.20, "billing", 1, "請求内容の確認", "先月の請求額が普段より高いのですが"),
    Reason("refund", 0.07, "billing", 2, "返金のご依頼", "返金の手続きはどうなっていますか"),
    Reason("delivery", 0.16, "orders", 1, "配送状況の確認", "注文した商品がまだ届きません"),
    Reason("returns", 0.07, "orders", 1, "返品のご相談", "サイズが合わないので返品したいです"),
    Reason("technical", 0.15, "technical", 2, "アプリの不具合", "アプリが起動直後に落ちます"),
    Reason("password_reset", 0.09, "account", 1, "ログインできない", "パスワードを忘れました"),
    Reason("account_change", 0.07, "account", 1, "登録情報の変更", "住所を変更したいです"),
    Reason("cancellation", 0.06, "account", 2, "解約の相談", "解約の方法を教えてください"),
    Reason("product_question", 0.13, "orders", 1, "商品についての質問", "この商品の仕様を知りたい"),
)
REASON_BY_NAME: Mapping[str, Reason] = {reason.name: reason for reason in REASONS}

#: Skills of the human queues; `tier2` takes escalations.
SKILLS: tuple[str, ...] = ("billing", "orders", "technical", "account")
ESCALATION_QUEUE = "tier2"
QUEUE_NAMES: tuple[str, ...] = (*SKILLS, ESCALATION_QUEUE)
HUMAN_CHANNELS: tuple[str, ...] = tuple(CHANNEL_MIX)  # handed-off bot work keeps its channel

# --- probabilities of what happens during a contact ------------------------------------------

NEW_CUSTOMER_SHARE = 0.12
#: Customers on file per expected contact of the day (most customers do not call today).
CUSTOMERS_PER_CONTACT = 2.0
ENGLISH_SHARE = 0.18
MISROUTE_SHARE = 0.06
ESCALATION_SHARE = 0.04
HOLD_SHARE = 0.20
REOPEN_SHARE = 0.03  # written channels only
REPEAT_SHARE = 0.08
REPEAT_SHARE_AFTER_TROUBLE = 0.20  # after a transfer or escalation
RETRY_SHARE = 0.55  # after abandoning
CHURN_SHARE = 0.35  # of cancellation contacts
COMPLAINT_SHARE = 0.03
AGENT_TAG_SHARE = 0.05
SURVEY_RESPONSE = {"csat": 0.30, "nps": 0.12, "ces": 0.08}
COMMENT_SHARE = 0.35
#: Service-level target the queues are created with (simulated seconds).
SERVICE_LEVEL_THRESHOLD_S = 20
SERVICE_LEVEL_TARGET = 0.8

# --- people -----------------------------------------------------------------------------------

_FAMILY = (
    ("佐藤", "sato"),
    ("鈴木", "suzuki"),
    ("高橋", "takahashi"),
    ("田中", "tanaka"),
    ("伊藤", "ito"),
    ("渡辺", "watanabe"),
    ("山本", "yamamoto"),
    ("中村", "nakamura"),
    ("小林", "kobayashi"),
    ("加藤", "kato"),
    ("吉田", "yoshida"),
    ("山田", "yamada"),
    ("佐々木", "sasaki"),
    ("松本", "matsumoto"),
    ("井上", "inoue"),
    ("木村", "kimura"),
)
_GIVEN = (
    ("太郎", "taro"),
    ("花子", "hanako"),
    ("翔", "sho"),
    ("陽菜", "hina"),
    ("蓮", "ren"),
    ("結衣", "yui"),
    ("大翔", "hiroto"),
    ("美咲", "misaki"),
    ("健", "ken"),
    ("愛", "ai"),
    ("直樹", "naoki"),
    ("さくら", "sakura"),
)
_ENGLISH_FAMILY = ("Smith", "Brown", "Wilson", "Taylor", "Martin", "Clarke", "Evans", "Walker")
_ENGLISH_GIVEN = ("Emma", "Liam", "Olivia", "Noah", "Ava", "James", "Mia", "Lucas", "Chloe")
_COMPANIES = ("株式会社ミライ", "青葉商事", "Sakura Labs", "北斗物流", "Kite Systems", "東和製作所")
_SEGMENTS = (("consumer", 0.70), ("smb", 0.22), ("enterprise", 0.08))


@dataclass(frozen=True)
class CustomerProfile:
    """A customer: `key` makes their registration idempotent; `on_file` ones exist before the
    day starts, the others are registered at their first contact."""

    key: str
    name: str
    language: str
    phone: str
    email: str
    handle: str | None
    segment: str
    company: str
    on_file: bool


@dataclass(frozen=True)
class Shift:
    """When an agent works (simulated seconds since the day window's start), with one break."""

    start_s: float
    end_s: float
    break_start_s: float
    break_end_s: float

    def on_duty(self, at_s: float) -> bool:
        """Logged in and not on break at `at_s`."""
        return self.start_s <= at_s < self.end_s and not (
            self.break_start_s <= at_s < self.break_end_s
        )


#: Shift patterns as fractions of the day window: (start, end, break start, break end).
SHIFT_PATTERNS: tuple[tuple[float, float, float, float], ...] = (
    (0.0, 1.0, 0.34, 0.45),  # the whole day, an hour's lunch
    (0.0, 0.67, 0.28, 0.31),  # the morning peak
    (0.11, 1.0, 0.50, 0.61),  # from mid-morning
    (0.34, 1.0, 0.70, 0.73),  # the afternoon
)


@dataclass(frozen=True)
class TeamPlan:
    """A team: what its agents take per channel (0 = not that channel) and the skills it
    needs besides the four queue skills."""

    name: str
    capacity: Mapping[str, int]
    extra_skills: tuple[str, ...] = ()


TEAMS: tuple[TeamPlan, ...] = (
    TeamPlan("Voice Tokyo", {"phone": 1, "video": 1}),
    TeamPlan(
        "Digital Osaka",
        {
            "chat": 3,
            "messaging": 3,
            "sms": 3,
            "social": 3,
            "chatbot": 3,
            "email": 4,
            "web_form": 4,
            "self_service": 4,
        },
    ),
    TeamPlan(
        "Tier 2",
        {
            "phone": 1,
            "video": 1,
            "chat": 2,
            "messaging": 2,
            "sms": 2,
            "social": 2,
            "chatbot": 2,
            "email": 3,
            "web_form": 3,
            "self_service": 3,
        },
        extra_skills=(ESCALATION_QUEUE,),
    ),
)


@dataclass(frozen=True)
class AgentProfile:
    key: str
    name: str
    team: str
    skills: tuple[tuple[str, int], ...]
    languages: tuple[str, ...]
    capacity: tuple[tuple[str, int], ...]
    shift: Shift


@dataclass(frozen=True)
class QueuePlan:
    name: str
    skill: str
    priority: int


# --- contacts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SurveyPlan:
    """A survey the customer answers after the contact: `mood` (0–1) places them in the
    score distribution before the outcome moves it; `comment` may become VOC feedback."""

    kind: str
    mood: float
    comment_positive: str | None
    comment_negative: str | None


@dataclass(frozen=True)
class FeedbackPlan:
    """Feedback captured besides surveys: a complaint, or an agent tagging the conversation."""

    source: str
    text: str
    category: str | None
    topics: tuple[str, ...]


@dataclass(frozen=True)
class Contact:
    """One contact as the customer and the agent will play it (times in simulated seconds).

    `queue` is where the IVR / chat menu puts it; when that is not the reason's queue the agent
    transfers it there (`transfer_to`). `escalate`: the agent escalates to tier 2 and transfers
    it to the tier-2 queue. `repeat` is played only if this contact is resolved (the issue comes
    back), `retry` only if the customer abandons."""

    key: str
    arrival_s: float
    channel: str
    customer: int
    reason: str
    queue: str
    min_level: int
    priority: int
    bot: bool
    contained: bool
    bot_s: float
    patience_s: float | None
    talk_s: float
    hold_s: float
    wrap_s: float
    transfer_to: str | None
    escalate: bool
    reopen_after_s: float | None
    surveys: tuple[SurveyPlan, ...]
    feedback: FeedbackPlan | None
    churns: bool
    repeat: Contact | None = None
    retry: Contact | None = None

    @property
    def follow_ups(self) -> tuple[Contact, ...]:
        return tuple(c for c in (self.repeat, self.retry) if c is not None)


@dataclass(frozen=True)
class Scenario:
    seed: int
    start_s: float
    end_s: float
    customers: tuple[CustomerProfile, ...]
    agents: tuple[AgentProfile, ...]
    queues: tuple[QueuePlan, ...]
    contacts: tuple[Contact, ...]
    expected_contacts: float
    notes: tuple[str, ...] = field(default=())

    @property
    def length_s(self) -> float:
        return self.end_s - self.start_s

    def clock_label(self, at_s: float) -> str:
        """`at_s` (seconds since the window's start) as a wall-clock label, e.g. "10:45"."""
        total = int(self.start_s + at_s) // 60
        return f"{total // 60 % 24:02d}:{total % 60:02d}"

    def agents_on_duty(self, at_s: float, channel: str | None = None) -> int:
        """Agents logged in and not on break at `at_s` (taking `channel`, if given)."""
        return sum(
            1
            for agent in self.agents
            if agent.shift.on_duty(at_s)
            and (channel is None or dict(agent.capacity).get(channel, 0) > 0)
        )


# --- the generator ----------------------------------------------------------------------------


def intensity(hour: float) -> float:
    """Relative arrival intensity at `hour` (0–24, fractional) of the day: `DAILY_CURVE`."""
    hour = min(max(hour, 0.0), 24.0)
    hours = [point[0] for point in DAILY_CURVE]
    index = bisect.bisect_right(hours, hour)
    if index >= len(DAILY_CURVE):
        return DAILY_CURVE[-1][1]
    (h0, w0), (h1, w1) = DAILY_CURVE[index - 1], DAILY_CURVE[index]
    return w0 + (w1 - w0) * (hour - h0) / (h1 - h0)


def mean_intensity(start_s: float, end_s: float, steps: int = 2000) -> float:
    """The mean of `intensity` over [start_s, end_s) (seconds after midnight)."""
    width = (end_s - start_s) / steps
    total = sum(intensity((start_s + (i + 0.5) * width) / 3600) for i in range(steps))
    return total / steps


def parse_clock(text: str) -> float:
    """ "09:30" → seconds after midnight (24:00 allowed as the end of the day)."""
    hours, _, minutes = text.strip().partition(":")
    try:
        value = int(hours) * 3600 + int(minutes or "0") * 60
    except ValueError:
        raise ValueError(f"{text!r}: expected HH:MM") from None
    if not 0 <= value <= 24 * 3600 or not 0 <= int(minutes or "0") < 60:
        raise ValueError(f"{text!r}: expected a time between 00:00 and 24:00")
    return float(value)


def generate(
    seed: int,
    *,
    contacts: int = 600,
    start: str = "09:00",
    end: str = "18:00",
) -> Scenario:
    """The scenario of one simulated day between `start` and `end` (HH:MM) with about
    `contacts` first contacts (follow-ups come on top), entirely decided by `seed`."""
    start_s, end_s = parse_clock(start), parse_clock(end)
    if end_s - start_s < 15 * 60:
        raise ValueError("the day window must be at least 15 minutes long")
    if contacts < 1:
        raise ValueError("contacts must be at least 1")
    rng = random.Random(seed)
    customers = _customers(rng, max(30, round(contacts * CUSTOMERS_PER_CONTACT)))
    agents = _agents(rng, contacts, start_s, end_s)
    queues = tuple(
        QueuePlan(name=name, skill=name, priority=1 if name == ESCALATION_QUEUE else 0)
        for name in QUEUE_NAMES
    )
    arrivals = _arrivals(rng, contacts, start_s, end_s)
    generator = _ContactGenerator(rng, customers, end_s - start_s)
    day_contacts = tuple(
        generator.contact(f"k{index:05d}", arrival) for index, arrival in enumerate(arrivals)
    )
    return Scenario(
        seed=seed,
        start_s=start_s,
        end_s=end_s,
        customers=tuple(customers) + tuple(generator.new_customers),
        agents=agents,
        queues=queues,
        contacts=day_contacts,
        expected_contacts=float(contacts),
    )


def _arrivals(rng: random.Random, contacts: int, start_s: float, end_s: float) -> list[float]:
    """Arrival times (seconds since the window's start) of a Poisson process whose rate follows
    `DAILY_CURVE`, scaled so the expected count is `contacts` (thinning)."""
    length = end_s - start_s
    mean = mean_intensity(start_s, end_s)
    peak = max(intensity((start_s + length * i / 500) / 3600) for i in range(501))
    peak_rate = contacts / length * peak / mean  # per second
    arrivals: list[float] = []
    at = 0.0
    while True:
        at += rng.expovariate(peak_rate)
        if at >= length:
            return arrivals
        if rng.random() * peak <= intensity((start_s + at) / 3600):
            arrivals.append(at)


def _weighted(rng: random.Random, choices: Sequence[tuple[str, float]]) -> str:
    names = [name for name, _ in choices]
    weights = [weight for _, weight in choices]
    return rng.choices(names, weights=weights, k=1)[0]


def _lognormal(rng: random.Random, mean: float, sigma: float = 0.55) -> float:
    """A positive duration with the given mean (long right tail, like real handle times)."""
    return rng.lognormvariate(math.log(mean) - sigma * sigma / 2, sigma)


def _customers(rng: random.Random, count: int) -> list[CustomerProfile]:
    phones = rng.sample(range(10_000_000, 100_000_000), count)
    return [_customer(rng, index, phones[index], on_file=True) for index in range(count)]


def _customer(rng: random.Random, index: int, number: int, *, on_file: bool) -> CustomerProfile:
    english = rng.random() < ENGLISH_SHARE
    if english:
        given, family = rng.choice(_ENGLISH_GIVEN), rng.choice(_ENGLISH_FAMILY)
        name, romaji = f"{given} {family}", f"{given}.{family}".lower()
    else:
        (family_kanji, family_romaji), (given_kanji, given_romaji) = (
            rng.choice(_FAMILY),
            rng.choice(_GIVEN),
        )
        name, romaji = f"{family_kanji} {given_kanji}", f"{given_romaji}.{family_romaji}"
    segment = _weighted(rng, _SEGMENTS)
    prefix = rng.choice(("90", "80", "70"))
    handle = None
    if rng.random() < 0.45:
        network = rng.choice(("line", "x", "instagram"))
        handle = f"{network}:{romaji.replace('.', '_')}{index}"
    return CustomerProfile(
        key=f"c{index:05d}" if on_file else f"n{index:05d}",
        name=name,
        language="en" if english else "ja",
        phone=f"+81{prefix}{number:08d}",
        email=f"{romaji}.{index}@example.jp" if on_file else f"{romaji}.n{index}@example.jp",
        handle=handle,
        segment=segment,
        company=rng.choice(_COMPANIES) if segment != "consumer" else "",
        on_file=on_file,
    )


def team_sizes(contacts: int) -> dict[str, int]:
    """Agents per team for a day of `contacts` first contacts (roughly what Erlang C asks at
    the peak, a little short of it at the busiest half-hour so queues form)."""
    return {
        "Voice Tokyo": max(3, round(contacts * 0.0115)),
        "Digital Osaka": max(3, round(contacts * 0.0065)),
        "Tier 2": max(2, round(contacts * 0.003)),
    }


def _agents(
    rng: random.Random, contacts: int, start_s: float, end_s: float
) -> tuple[AgentProfile, ...]:
    length = end_s - start_s
    agents: list[AgentProfile] = []
    sizes = team_sizes(contacts)
    for team in TEAMS:
        for member in range(sizes[team.name]):
            pattern = SHIFT_PATTERNS[member % len(SHIFT_PATTERNS)]
            # Small teams work the long shifts, so every hour is covered.
            if sizes[team.name] <= 2:
                pattern = SHIFT_PATTERNS[0] if member == 0 else SHIFT_PATTERNS[2]
            shift = Shift(*(round(fraction * length) for fraction in pattern))
            primary = SKILLS[len(agents) % len(SKILLS)]
            skills = [(primary, rng.randint(4, 5))]
            for skill in SKILLS:
                if skill != primary:
                    skills.append((skill, rng.choice((1, 2, 2, 3, 3))))
            skills.extend((extra, rng.randint(3, 5)) for extra in team.extra_skills)
            # English speakers work the whole day or from mid-morning: someone always speaks it.
            english = member % len(SHIFT_PATTERNS) in (0, 2) or sizes[team.name] <= 2
            family_kanji, _ = rng.choice(_FAMILY)
            given_kanji, _ = rng.choice(_GIVEN)
            agents.append(
                AgentProfile(
                    key=f"a{len(agents):03d}",
                    name=f"{family_kanji} {given_kanji}",
                    team=team.name,
                    skills=tuple(skills),
                    languages=("ja", "en") if english else ("ja",),
                    capacity=tuple(team.capacity.items()),
                    shift=shift,
                )
            )
    return tuple(agents)


_POSITIVE_COMMENTS = (
    "担当者の説明がとても分かりやすかったです",
    "すぐに解決して助かりました。ありがとうございます",
    "Quick and friendly, thank you!",
    "丁寧に対応していただき満足です",
)
_NEGATIVE_COMMENTS = (
    "待ち時間が長すぎます",
    "同じ説明を何度もさせられました",
    "I had to explain my problem twice.",
    "たらい回しにされて不満です",
    "アプリがまた落ちました。早く直してください",
)
_AGENT_TAGS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("request", "ダークモードに対応してほしいとの要望", ("mobile app", "dark mode")),
    ("bug", "決済画面でエラーが出るとの報告", ("checkout", "payment error")),
    ("suggestion", "配送日時を指定したいとのご提案", ("delivery slot",)),
    ("question", "ポイントの有効期限についての質問", ("loyalty points",)),
    ("praise", "新しいアプリが使いやすいとのお言葉", ("mobile app",)),
)
_COMPLAINTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("配送が3日遅れたうえに連絡もありませんでした", ("late delivery",)),
    ("請求額が間違っています。至急確認してください", ("invoice",)),
    ("電話がなかなかつながりません", ("waiting time",)),
)


class _ContactGenerator:
    """Draws contacts one after the other from the shared generator (order matters)."""

    def __init__(
        self, rng: random.Random, customers: Sequence[CustomerProfile], length_s: float
    ) -> None:
        self.rng = rng
        self.customers = customers
        self.length_s = length_s
        self.new_customers: list[CustomerProfile] = []
        # Some customers contact support more often than others (a mild Zipf law).
        self.customer_ranks = range(len(customers))
        self.customer_cum_weights = list(
            itertools.accumulate(1.0 / (rank + 1) ** 0.3 for rank in self.customer_ranks)
        )
        self.channels = list(CHANNEL_MIX.items())
        self.reasons = [(reason.name, reason.weight) for reason in REASONS]

    def contact(self, key: str, arrival_s: float) -> Contact:
        rng = self.rng
        if rng.random() < NEW_CUSTOMER_SHARE:
            index = len(self.customers) + len(self.new_customers)
            number = 100_000_000 - 1 - len(self.new_customers)  # below the on-file numbers
            self.new_customers.append(_customer(rng, index, number, on_file=False))
            customer = index
        else:
            customer = rng.choices(self.customer_ranks, cum_weights=self.customer_cum_weights, k=1)[
                0
            ]
        channel = _weighted(rng, self.channels)
        reason = REASON_BY_NAME[_weighted(rng, self.reasons)]
        return self._play(key, arrival_s, channel, customer, reason, depth=0)

    def _play(
        self, key: str, arrival_s: float, channel: str, customer: int, reason: Reason, depth: int
    ) -> Contact:
        rng = self.rng
        behaviour = CHANNEL_BEHAVIOUR[channel]
        bot = channel in BOT_CHANNELS
        contained = bot and rng.random() < behaviour.containment
        misrouted = rng.random() < MISROUTE_SHARE
        queue = (
            rng.choice([name for name in SKILLS if name != reason.queue])
            if misrouted
            else reason.queue
        )
        escalate = not misrouted and rng.random() < ESCALATION_SHARE
        patience = (
            None
            if behaviour.patience_mean_s is None
            else _lognormal(rng, behaviour.patience_mean_s, 0.7)
        )
        hold = (
            _lognormal(rng, 60.0, 0.5)
            if channel in VOICE_CHANNELS and rng.random() < HOLD_SHARE
            else 0.0
        )
        reopen = (
            rng.uniform(1800, 7200)
            if channel in WRITTEN_CHANNELS and not bot and rng.random() < REOPEN_SHARE
            else None
        )
        surveys = tuple(
            SurveyPlan(
                kind=kind,
                mood=rng.random(),
                comment_positive=rng.choice(_POSITIVE_COMMENTS)
                if rng.random() < COMMENT_SHARE
                else None,
                comment_negative=rng.choice(_NEGATIVE_COMMENTS)
                if rng.random() < COMMENT_SHARE
                else None,
            )
            for kind, share in SURVEY_RESPONSE.items()
            if rng.random() < share
        )
        feedback: FeedbackPlan | None = None
        draw = rng.random()
        if draw < COMPLAINT_SHARE:
            text, topics = rng.choice(_COMPLAINTS)
            feedback = FeedbackPlan("complaint", text, "complaint", topics)
        elif draw < COMPLAINT_SHARE + AGENT_TAG_SHARE and not contained:
            category, text, topics = rng.choice(_AGENT_TAGS)
            feedback = FeedbackPlan("agent", text, category, topics)
        contact = Contact(
            key=key,
            arrival_s=arrival_s,
            channel=channel,
            customer=customer,
            reason=reason.name,
            queue=queue,
            min_level=reason.min_level,
            priority=2 if self._segment(customer) == "enterprise" else 0,
            bot=bot,
            contained=contained,
            bot_s=_lognormal(rng, behaviour.bot_mean_s, 0.4) if bot else 0.0,
            patience_s=patience,
            talk_s=_lognormal(rng, behaviour.talk_mean_s),
            hold_s=hold,
            wrap_s=_lognormal(rng, behaviour.wrap_mean_s, 0.4),
            transfer_to=reason.queue if misrouted else None,
            escalate=escalate,
            reopen_after_s=reopen,
            surveys=surveys,
            feedback=feedback,
            churns=reason.name == "cancellation" and rng.random() < CHURN_SHARE,
        )
        if depth > 0:
            return contact
        trouble = misrouted or escalate
        repeat = retry = None
        if rng.random() < (REPEAT_SHARE_AFTER_TROUBLE if trouble else REPEAT_SHARE):
            later = arrival_s + rng.uniform(1200, 10800)
            if later < self.length_s:
                again = "phone" if rng.random() < 0.5 else channel
                repeat = self._play(f"{key}-r", later, again, customer, reason, depth + 1)
        if patience is not None and rng.random() < RETRY_SHARE:
            later = arrival_s + patience + rng.uniform(300, 2400)
            if later < self.length_s:
                retry = self._play(f"{key}-a", later, channel, customer, reason, depth + 1)
        return _with_follow_ups(contact, repeat, retry)

    def _segment(self, customer: int) -> str:
        if customer < len(self.customers):
            return self.customers[customer].segment
        return self.new_customers[customer - len(self.customers)].segment


def _with_follow_ups(contact: Contact, repeat: Contact | None, retry: Contact | None) -> Contact:
    return replace(contact, repeat=repeat, retry=retry)


# --- outcomes -----------------------------------------------------------------------------------

SCALES: Mapping[str, tuple[int, int]] = {"csat": (1, 5), "nps": (0, 10), "ces": (1, 7)}
#: Where a customer with nothing to complain about lands, by mood quantile (ascending scores).
_BASELINE: Mapping[str, tuple[tuple[float, int], ...]] = {
    "csat": ((0.05, 1), (0.10, 2), (0.22, 3), (0.55, 4), (1.0, 5)),
    "nps": (
        (0.03, 0),
        (0.05, 2),
        (0.08, 4),
        (0.12, 5),
        (0.18, 6),
        (0.30, 7),
        (0.45, 8),
        (0.70, 9),
        (1.0, 10),
    ),
    # Effort: low is good; CES 1–7 where 7 = very easy ("the company made it easy").
    "ces": ((0.05, 2), (0.12, 3), (0.25, 4), (0.45, 5), (0.75, 6), (1.0, 7)),
}


@dataclass(frozen=True)
class Outcome:
    """What the customer lived through (simulated seconds)."""

    waited_s: float
    transferred: bool
    escalated: bool
    repeat: bool
    contained_by_bot: bool


def survey_score(plan: SurveyPlan, outcome: Outcome) -> int:
    """The customer's answer: their mood's place in the baseline distribution, pulled down by
    a long wait, a transfer, an escalation or having to come back."""
    penalty = 0.0
    if outcome.waited_s > 60:
        penalty += 0.15
    if outcome.waited_s > 180:
        penalty += 0.2
    if outcome.transferred:
        penalty += 0.15
    if outcome.escalated:
        penalty += 0.1
    if outcome.repeat:
        penalty += 0.25
    quantile = max(0.0, plan.mood - penalty)
    for limit, score in _BASELINE[plan.kind]:
        if quantile <= limit:
            return score
    return SCALES[plan.kind][1]


def survey_comment(plan: SurveyPlan, score: int) -> str | None:
    """A comment in the tone of the score (or none)."""
    low, high = SCALES[plan.kind]
    happy = score >= low + (high - low) * 0.6
    return plan.comment_positive if happy else plan.comment_negative


def all_contacts(contacts: Sequence[Contact]) -> list[Contact]:
    """The contacts and every follow-up that may be played."""
    found: list[Contact] = []
    for contact in contacts:
        found.append(contact)
        found.extend(all_contacts(contact.follow_ups))
    return found
