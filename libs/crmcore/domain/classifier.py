"""A small keyword and rule classifier for VOC feedback, in Japanese and English.

`classify(text)` gives a category (complaint, request, praise, bug, question, suggestion,
other), a sentiment label and score (-1.0 … 1.0) and topics (billing, delivery, account…).
Its values are set by `rule`: an agent (or a model) overrides them through
`Feedback.classify`, and the setter ranks keep a person's correction from being overwritten.

How it reads a text:
- the text is NFKC-normalised (full-width letters and digits, half-width katakana) and
  lower-cased; English phrases match on word boundaries, Japanese phrases as substrings;
- where phrases overlap the longest wins ("満足していない" is negative, not "満足");
- an English sentiment word after a negation within three words flips ("not helpful");
- the category is the one whose phrases weigh most (ties: bug, complaint, request,
  suggestion, question, praise); with no phrase, a clearly negative text is a complaint and
  a clearly positive one praise; else `other`;
- a survey score, when the feedback comes from a survey, counts half of the sentiment (see
  `survey_sentiment`), or all of it when the text has no sentiment word.

Deliberately simple and predictable: a model can be plugged in later as another setter.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import NamedTuple

from crmcore.domain.feedback import (
    FeedbackCategory,
    RuleClassification,
    Sentiment,
    SurveyKind,
)

#: |score| above this makes a label positive or negative.
SENTIMENT_THRESHOLD = 0.15
MAX_RULE_TOPICS = 5

_C = FeedbackCategory


def _weighted(*phrases: str, weight: float = 1.0) -> dict[str, float]:
    return dict.fromkeys(phrases, weight)


#: Phrases per category with their weight (English and Japanese).
# fmt: off
CATEGORY_PHRASES: Mapping[FeedbackCategory, Mapping[str, float]] = MappingProxyType(
    {
        _C.BUG: _weighted(
            "bug", "crash", "crashes", "crashed", "crashing", "error", "broken", "doesn't work",
            "does not work", "not working", "stopped working", "freezes", "froze", "frozen",
            "glitch", "can't log in", "cannot log in", "fails to", "failed to", "blank screen",
            "バグ", "不具合", "エラー", "落ちる", "落ちます", "落ちた", "動かない", "動きません",
            "起動しない", "起動しません", "固まる", "固まります", "フリーズ", "ログインできない",
            "ログインできません", "表示されない", "表示されません", "反映されない",
        ),
        _C.COMPLAINT: _weighted(
            "complaint", "complain", "terrible", "awful", "unacceptable", "disappointed",
            "disappointing", "rude", "worst", "angry", "frustrated", "frustrating", "horrible",
            "ridiculous", "waste of time", "too slow", "never again", "not acceptable",
            "poor service",
            "苦情", "クレーム", "最悪", "ひどい", "酷い", "不満", "失礼", "遅すぎ", "がっかり",
            "腹が立", "ふざけ", "許せない", "二度と", "不愉快", "納得できない", "納得いかない",
        ),
        _C.REQUEST: _weighted(
            "please add", "would like", "i want", "i'd like", "could you add", "can you add",
            "i wish", "feature request", "please support", "please make", "please allow",
            "we need", "i need",
            "欲しい", "ほしい", "してほしい", "して欲しい", "希望", "要望", "追加して",
            "対応してください", "できるようにして", "お願いしたい",
        ),
        _C.SUGGESTION: _weighted(
            "suggest", "suggestion", "it would be better", "would be nice", "would be great if",
            "could be improved", "should be", "you should", "idea", "improvement",
            "recommend that",
            "提案", "したらどう", "した方が良い", "したほうがいい", "した方がいい", "改善",
            "と良いと思", "といいと思", "工夫",
        ),
        _C.QUESTION: {
            **_weighted(
                "how do i", "how can i", "how to", "what is", "where is", "when will",
                "is it possible", "can i", "do you", "question", "wondering",
                "教えて", "ですか", "ますか", "でしょうか", "どうすれば", "どうやって", "質問",
                "知りたい", "わかりません", "分かりません",
            ),
            # A question mark alone is weak evidence: any phrase of another category wins.
            # (The full-width "？" reads as "?" once normalised.)
            **_weighted("?", weight=0.5),
        },
        _C.PRAISE: _weighted(
            "thank", "thanks", "thank you", "great job", "excellent", "awesome", "very helpful",
            "amazing", "wonderful", "perfect", "appreciate", "quick response", "friendly",
            "well done",
            "ありがとう", "感謝", "助かりました", "助かります", "素晴らしい", "すばらしい", "丁寧",
            "親切", "最高", "満足", "分かりやすい", "わかりやすい", "迅速",
        ),
    }
)
# fmt: on

#: Order categories win ties in.
CATEGORY_ORDER: tuple[FeedbackCategory, ...] = (
    _C.BUG,
    _C.COMPLAINT,
    _C.REQUEST,
    _C.SUGGESTION,
    _C.QUESTION,
    _C.PRAISE,
)

# fmt: off
POSITIVE_WORDS: tuple[str, ...] = (
    "good", "great", "excellent", "awesome", "helpful", "amazing", "love", "loved", "wonderful",
    "perfect", "thank", "thanks", "happy", "satisfied", "fast", "quick", "easy", "friendly",
    "appreciate", "nice", "best", "resolved", "polite", "smooth",
    "良い", "良かった", "よかった", "いいです", "素晴らしい", "すばらしい", "ありがとう", "感謝",
    "助かり", "丁寧", "親切", "満足", "嬉しい", "うれしい", "最高", "早い", "迅速", "簡単",
    "分かりやすい", "わかりやすい", "解決しました", "スムーズ", "快適",
)
NEGATIVE_WORDS: tuple[str, ...] = (
    "bad", "terrible", "awful", "slow", "broken", "crash", "crashes", "error", "bug", "hate",
    "angry", "disappointed", "frustrated", "frustrating", "poor", "worst", "rude", "difficult",
    "confusing", "useless", "problem", "unacceptable", "fail", "fails", "failed", "horrible",
    "annoying", "complicated", "unhappy", "waste",
    "悪い", "最悪", "ひどい", "酷い", "遅い", "遅すぎ", "不満", "不具合", "エラー", "バグ", "困る",
    "困って", "困りました", "残念", "がっかり", "失礼", "分かりにくい", "わかりにくい",
    "使いにくい", "高すぎ", "待たされ", "つながらない", "繋がらない", "動かない", "落ちる", "不便",
    "面倒", "満足していない", "満足できない", "満足できません", "良くない", "よくない", "不親切",
    "不愉快", "解決しない", "解決しません", "二度と",
)

#: Topic → phrases that mention it (English and Japanese).
TOPIC_PHRASES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "billing": (
            "billing", "bill", "invoice", "charge", "charged", "payment", "paid", "pay",
            "credit card",
            "請求", "料金", "支払", "課金", "引き落とし", "明細",
        ),
        "refund": (
            "refund", "money back",
            "返金", "返品",
        ),
        "delivery": (
            "delivery", "deliver", "delivered", "shipping", "shipment", "parcel", "package",
            "courier",
            "配送", "配達", "届かない", "届いて", "届きません", "発送", "荷物", "宅配",
        ),
        "account": (
            "login", "log in", "password", "account", "sign in",
            "ログイン", "パスワード", "アカウント", "会員",
        ),
        "cancellation": (
            "cancel", "cancellation", "unsubscribe",
            "解約", "キャンセル", "退会",
        ),
        "app": (
            "app", "mobile app", "iphone", "android",
            "アプリ", "スマホ",
        ),
        "website": (
            "website", "web site", "browser",
            "サイト", "ホームページ", "ウェブ",
        ),
        "price": (
            "price", "expensive", "pricing", "cost",
            "価格", "値段", "高い", "高すぎ", "値上げ",
        ),
        "support": (
            "agent", "staff", "operator", "representative", "customer service", "support",
            "対応", "オペレーター", "担当者", "スタッフ", "サポート", "窓口",
        ),
        "wait-time": (
            "wait", "waiting", "waited", "on hold", "queue", "took too long",
            "待ち", "待たされ", "待った", "つながらない", "繋がらない", "保留",
        ),
        "product-quality": (
            "quality", "defective", "damaged",
            "品質", "不良", "壊れ", "傷",
        ),
    }
)
# fmt: on

_NEGATORS = frozenset(
    {
        "not",
        "no",
        "never",
        "hardly",
        "don't",
        "doesn't",
        "didn't",
        "isn't",
        "wasn't",
        "aren't",
        "weren't",
        "cannot",
        "can't",
        "won't",
        "wouldn't",
        "couldn't",
        "nothing",
    }
)
_POLAR_CATEGORIES = frozenset({FeedbackCategory.PRAISE, FeedbackCategory.COMPLAINT})
_WORD = re.compile(r"[a-z0-9']+")


class Match(NamedTuple):
    start: int
    end: int
    phrase: str


def normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower().replace("’", "'")


def _is_english(phrase: str) -> bool:
    return phrase.isascii() and any(ch.isalnum() for ch in phrase)


_patterns: dict[str, re.Pattern[str]] = {}


def _occurrences(text: str, phrase: str) -> Iterable[tuple[int, int]]:
    if _is_english(phrase):
        pattern = _patterns.get(phrase)
        if pattern is None:
            pattern = _patterns[phrase] = re.compile(
                r"(?<![a-z0-9'])" + re.escape(phrase) + r"(?![a-z0-9])"
            )
        for found in pattern.finditer(text):
            yield found.start(), found.end()
        return
    start = text.find(phrase)
    while start >= 0:
        yield start, start + len(phrase)
        start = text.find(phrase, start + 1)


def find(text: str, phrases: Iterable[str]) -> list[Match]:
    """Non-overlapping occurrences of the phrases in a normalised text, longest first."""
    candidates = [
        Match(start, end, phrase)
        for phrase in set(phrases)
        for start, end in _occurrences(text, phrase)
    ]
    candidates.sort(key=lambda match: (-(match.end - match.start), match.start))
    taken: list[Match] = []
    for candidate in candidates:
        if all(candidate.end <= kept.start or candidate.start >= kept.end for kept in taken):
            taken.append(candidate)
    taken.sort(key=lambda match: match.start)
    return taken


def _negated(text: str, match: Match) -> bool:
    if not _is_english(match.phrase):
        return False
    before = _WORD.findall(text[: match.start])[-3:]
    return any(word in _NEGATORS or word.endswith("n't") for word in before)


def text_sentiment(text: str) -> float | None:
    """-1.0 … 1.0 from the sentiment words of a normalised text; None when it has none."""
    positive = frozenset(POSITIVE_WORDS)
    score = 0.0
    found = 0
    for match in find(text, (*POSITIVE_WORDS, *NEGATIVE_WORDS)):
        polarity = 1.0 if match.phrase in positive else -1.0
        if _negated(text, match):
            polarity = -polarity
        score += polarity
        found += 1
    if not found:
        return None
    return score / (abs(score) + 1.0)


def survey_sentiment(kind: SurveyKind, score: int) -> float:
    """-1.0 … 1.0 for a survey score: CSAT 1–5 around 3; NPS promoters (9–10) positive,
    passives (7–8) neutral, detractors (0–6) negative; CES 1–7 around 4 (7: very easy)."""
    if kind is SurveyKind.CSAT:
        return (score - 3) / 2
    if kind is SurveyKind.CES:
        return (score - 4) / 3
    if score >= 9:
        return (score - 8) / 2
    if score >= 7:
        return 0.0
    return max(-1.0, (score - 7) / 4)


def label(score: float) -> Sentiment:
    if score > SENTIMENT_THRESHOLD:
        return Sentiment.POSITIVE
    if score < -SENTIMENT_THRESHOLD:
        return Sentiment.NEGATIVE
    return Sentiment.NEUTRAL


def category_of(text: str, sentiment: float) -> FeedbackCategory:
    weights: dict[FeedbackCategory, float] = {}
    for category, weight_of in CATEGORY_PHRASES.items():
        # Sentiment words take part so that a longer one hides a category phrase inside it
        # ("満足していない" is no praise); a negated praise or complaint does not count.
        matches = find(text, (*weight_of, *POSITIVE_WORDS, *NEGATIVE_WORDS))
        weights[category] = sum(
            weight_of[match.phrase]
            for match in matches
            if match.phrase in weight_of
            and not (category in _POLAR_CATEGORIES and _negated(text, match))
        )
    best = max(
        CATEGORY_ORDER,
        key=lambda category: (weights[category], -CATEGORY_ORDER.index(category)),
    )
    if weights[best] > 0:
        return best
    if sentiment < -SENTIMENT_THRESHOLD:
        return FeedbackCategory.COMPLAINT
    if sentiment > SENTIMENT_THRESHOLD:
        return FeedbackCategory.PRAISE
    return FeedbackCategory.OTHER


def topics_of(text: str) -> tuple[str, ...]:
    """Topics in order of first mention (at most `MAX_RULE_TOPICS`)."""
    first: dict[str, int] = {}
    for topic, phrases in TOPIC_PHRASES.items():
        matches = find(text, phrases)
        if matches:
            first[topic] = matches[0].start
    return tuple(sorted(first, key=lambda topic: first[topic]))[:MAX_RULE_TOPICS]


def classify(text: str, *, survey: tuple[SurveyKind, int] | None = None) -> RuleClassification:
    """Category, sentiment and topics of `text` by the rules above; `survey` is the kind and
    score of the survey the text was a comment on, if any."""
    normal = normalise(text)
    from_text = text_sentiment(normal)
    if survey is None:
        score = from_text if from_text is not None else 0.0
    else:
        hint = survey_sentiment(*survey)
        score = hint if from_text is None else (from_text + hint) / 2
    score = round(max(-1.0, min(1.0, score)), 3)
    return RuleClassification(
        category=category_of(normal, score),
        sentiment=label(score),
        sentiment_score=score,
        topics=topics_of(normal),
    )
