"""The routing systems a user could pick instead of RouteNLP, run as real client-side policies.

Every policy answers a record by sending requests to the running server with a fixed-tier POLICY
(`always-tK`: that tier's served answer, u and billed cost, no router, no escalation) and deciding
from what comes back, so each baseline's cost and latency are measured on the same Triton models
as RouteNLP's. The learned parts (RouteLLM / HybridLLM classifiers, the FrugalGPT answer scorer,
the cascade thresholds) are fitted on the build's router pool: the same all-tier answers, on text
no tier was trained on, that RouteNLP's router learns from.

  Always-tK      one tier (T1 has no generation heads: generation tasks use T2)
  rule-by-task   per task the cheapest tier whose dev quality meets the bar (the build's table)
  random         T4 with probability p, else the cheapest tier; p matches a target cost
  RouteLLM       strong T4 / weak T2; TF-IDF + logistic regression P(weak meets the bar)
  HybridLLM      T2 / T4 by a quality-gap classifier P(q(T2) >= q(T4))
  FrugalGPT      cascade over the servable tiers; logistic answer scorer on (u, length, tier,
                 task); one acceptance threshold searched under a cost budget
  AutoMix        small -> T4; self-verification by the small tier's own token confidence
                 (1 - u; our from-scratch tiers cannot follow a verification prompt), threshold
                 searched under the same budget
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bls_router.cascade import TIERS
from clients.served_eval import ServedAnswer

Call = Callable[[Mapping[str, Any], str], ServedAnswer]  # (record, tier) -> a served always-tier answer


def servable(task: str) -> tuple[str, ...]:
    from routenlp.tasks import get_task

    return TIERS if get_task(task).structured else TIERS[1:]


def cheapest(task: str) -> str:
    return servable(task)[0]


@dataclass
class Routed:
    """A policy's answer to one record: every served call it made, the last one is the answer."""

    calls: list[ServedAnswer]

    @property
    def final(self) -> ServedAnswer:
        return self.calls[-1]


class Policy:
    name: str  # the system's name in tables

    def answer(self, record: Mapping[str, Any], call: Call) -> Routed:
        raise NotImplementedError


@dataclass
class FixedTier(Policy):
    tier: str

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"always-{self.tier}"

    def answer(self, record, call):
        tier = self.tier if self.tier in servable(record["task"]) else cheapest(record["task"])
        return Routed([call(record, tier)])


@dataclass
class RuleByTask(Policy):
    tier_by_task: Mapping[str, str]
    name: str = "rule-by-task"

    def answer(self, record, call):
        return Routed([call(record, self.tier_by_task[record["task"]])])


@dataclass
class RandomMatchedCost(Policy):
    p_top: float  # probability of T4
    seed: int = 0
    name: str = "random (matched cost)"
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def answer(self, record, call):
        tier = "t4" if self._rng.random() < self.p_top else cheapest(record["task"])
        return Routed([call(record, tier)])


@dataclass
class BinaryRouter(Policy):
    """Weak tier when P(weak is good enough | text) >= threshold, else strong (RouteLLM, HybridLLM)."""

    name: str
    classifier: "TextClassifier"
    weak: str = "t2"
    strong: str = "t4"
    threshold: float = 0.5

    def answer(self, record, call):
        p_weak = self.classifier.probability([record])[0]
        return Routed([call(record, self.weak if p_weak >= self.threshold else self.strong)])


@dataclass
class ScoredCascade(Policy):
    """Call tiers in order; accept the first answer whose score >= threshold (FrugalGPT, AutoMix)."""

    name: str
    chain: Callable[[str], Sequence[str]]  # task -> tiers to try, cheapest first
    score: Callable[[Mapping[str, Any], str, float, int], float]  # (record, tier, u, tokens) -> P(good)
    threshold: float

    def answer(self, record, call):
        calls = []
        chain = list(self.chain(record["task"]))
        for i, tier in enumerate(chain):
            served = call(record, tier)
            calls.append(served)
            if served.error is not None or i == len(chain) - 1:
                continue
            u, tokens = _u_and_tokens(served, tier)
            if self.score(record, tier, u, tokens) >= self.threshold:
                break
        return Routed(calls)


def _u_and_tokens(served: ServedAnswer, tier: str) -> tuple[float, int]:
    meta = served.metadata or {}
    return float(meta.get("u", {}).get(tier, 1.0)), int(meta.get("tokens", {}).get(tier, 0))


# ---------------------------------------------------------------- learned parts (router pool)


class TextClassifier:
    """TF-IDF (word 1-2 grams, with a task token) + logistic regression."""

    def __init__(self, seed: int = 0) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        self.vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=20000, sublinear_tf=True)
        self.model = LogisticRegression(max_iter=2000, C=2.0, random_state=seed)
        self.constant: float | None = None

    @staticmethod
    def _texts(records: Sequence[Mapping[str, Any]]) -> list[str]:
        return [f"task_{r['task']} {r['text']}" for r in records]

    def fit(self, records: Sequence[Mapping[str, Any]], labels: Sequence[bool]) -> "TextClassifier":
        labels = np.asarray(labels, dtype=int)
        if labels.min() == labels.max():  # one class only: predict its rate
            self.constant = float(labels[0])
            return self
        self.model.fit(self.vectorizer.fit_transform(self._texts(records)), labels)
        return self

    def probability(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        if self.constant is not None:
            return np.full(len(records), self.constant)
        return self.model.predict_proba(self.vectorizer.transform(self._texts(records)))[:, 1]


class AnswerScorer:
    """FrugalGPT's scorer: P(answer meets the bar) from (u, log length, tier, task)."""

    def __init__(self, seed: int = 0) -> None:
        from sklearn.linear_model import LogisticRegression

        from routenlp.tasks import TASK_NAMES

        self.tasks = list(TASK_NAMES)
        self.model = LogisticRegression(max_iter=2000, random_state=seed)

    def features(self, task: str, tier: str, u: float, tokens: int) -> list[float]:
        task_hot = [1.0 if t == task else 0.0 for t in self.tasks]
        tier_hot = [1.0 if t == tier else 0.0 for t in TIERS]
        return [u, u * u, math.log1p(tokens), *tier_hot, *task_hot, *(u * h for h in task_hot)]

    def fit(self, rows: Sequence[Mapping[str, Any]], bars: Mapping[str, float]) -> "AnswerScorer":
        x = [self.features(r["task"], r["tier"], float(r["u"]), int(r["tokens"])) for r in rows]
        y = [float(r["quality"]) >= bars[r["task"]] for r in rows]
        self.model.fit(np.asarray(x), np.asarray(y, dtype=int))
        return self

    def __call__(self, record: Mapping[str, Any], tier: str, u: float, tokens: int) -> float:
        return float(self.model.predict_proba(np.asarray([self.features(record["task"], tier, u, tokens)]))[0, 1])


def frugal_chain(task: str) -> Sequence[str]:
    return servable(task)


def automix_chain(task: str) -> Sequence[str]:
    return (cheapest(task), "t4")


def self_confidence(record: Mapping[str, Any], tier: str, u: float, tokens: int) -> float:
    return 1.0 - u


# ---------------------------------------------------------------- offline simulation for fitting


def simulate_cascade(
    answers: Mapping[str, Mapping[str, Mapping[str, Any]]],
    records: Sequence[Mapping[str, Any]],
    chain: Callable[[str], Sequence[str]],
    score: Callable[[Mapping[str, Any], str, float, int], float],
    threshold: float,
    prices: Mapping[str, float],
    bars: Mapping[str, float],
) -> tuple[float, float]:
    """(mean dollars, share meeting the bar) of a scored cascade over cached all-tier answers."""
    dollars, good = 0.0, 0
    for record in records:
        by_tier = answers[record["id"]]
        tiers = [t for t in chain(record["task"]) if t in by_tier]
        for i, tier in enumerate(tiers):
            row = by_tier[tier]
            dollars += row["tokens"] / 1000.0 * prices[tier]
            if i == len(tiers) - 1 or score(record, tier, float(row["u"]), int(row["tokens"])) >= threshold:
                good += float(row["quality"]) >= bars[record["task"]]
                break
    return dollars / len(records), good / len(records)


def search_threshold(
    answers, records, chain, score, prices, bars, budget: float, grid: Sequence[float] = tuple(np.linspace(0.0, 1.0, 41))
) -> tuple[float, dict[str, float]]:
    """The threshold with the most answers meeting the bar at mean cost <= budget (FrugalGPT's
    budgeted search); if none fits, the cheapest one."""
    results = [(t, *simulate_cascade(answers, records, chain, score, t, prices, bars)) for t in grid]
    fitting = [r for r in results if r[1] <= budget]
    best = max(fitting, key=lambda r: (r[2], -r[1])) if fitting else min(results, key=lambda r: r[1])
    return float(best[0]), {"threshold": float(best[0]), "pool_dollars": round(best[1], 6), "pool_meets_bar": round(best[2], 4)}


def p_top_for_cost(target: float, cheap_cost: float, top_cost: float) -> float:
    """P(T4) for the random router so that its expected cost per request equals `target`."""
    if top_cost <= cheap_cost:
        return 0.0
    return float(min(1.0, max(0.0, (target - cheap_cost) / (top_cost - cheap_cost))))


def rule_by_task(dev_quality: Mapping[str, Mapping[str, float]], bars: Mapping[str, float]) -> dict[str, str]:
    """Per task the cheapest tier whose dev quality meets the bar, else the best tier."""
    rules = {}
    for task, by_tier in dev_quality.items():
        meeting = [t for t in TIERS if t in by_tier and by_tier[t] >= bars[task]]
        rules[task] = meeting[0] if meeting else max(by_tier, key=by_tier.get)
    return rules


def oracle_tier(task: str, example_quality: Mapping[str, float], bar: float) -> str:
    """The cheapest tier whose answer meets the bar, else the best answer (the lower bound)."""
    meeting = [t for t in servable(task) if t in example_quality and example_quality[t] >= bar]
    return meeting[0] if meeting else max(example_quality, key=example_quality.get)
