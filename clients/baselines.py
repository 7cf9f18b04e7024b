"""The routing systems a user could pick instead of RouteNLP, run as real client-side policies.

Every policy answers a record by sending requests to the running server with a fixed-tier POLICY
(`always-tK`: that tier's served answer, u and billed cost, no router, no escalation) and deciding
from what comes back, so each baseline's cost and latency are measured on the same Triton models
as RouteNLP's. The learned parts (RouteLLM / HybridLLM classifiers, the FrugalGPT answer scorer,
the cascade scorers) are fitted on the build's router pool: the same all-tier answers, on text
no tier was trained on, that RouteNLP's router learns from.

  Always-tK      one tier (T1 has no generation heads: generation tasks use T2)
  rule-by-task   per task the cheapest tier whose calibration-pool quality meets the bar
  random         T4 with probability p, else the cheapest tier; p swept (matched cost)
  RouteLLM-MF    matrix factorisation (TF-IDF -> SVD query embedding, a vector per tier):
                 P(tier meets the bar); binary T2/T4 and 4-tier (cheapest with P >= threshold)
  HybridLLM      the same model on its relaxed label q(tier) >= q(T4) - 0.02 (both below the bar
                 is not "fine"); binary T2/T4 and 4-tier
  FrugalGPT      cascade over the servable tiers; logistic answer scorer on (u, length, tier,
                 task); acceptance threshold swept
  AutoMix        small -> T4; self-verification by the small tier's own token confidence
                 (1 - u; our from-scratch tiers cannot follow a verification prompt), threshold swept
Each is a decision rule with one knob (clients/curves.py): swept offline for its cost-quality
curve, served live (SystemPolicy) at the knob fitted on the calibration pool.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from clients.served_eval import ServedAnswer
from routenlp_core.cascade import TIERS
from routenlp_core.tasks import servable_tiers as servable

Call = Callable[[Mapping[str, Any], str], ServedAnswer]  # (record, tier) -> a served always-tier answer


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


def _u_and_tokens(served: ServedAnswer, tier: str) -> tuple[float, int]:
    meta = served.metadata or {}
    return float(meta.get("u", {}).get(tier, 1.0)), int(meta.get("tokens", {}).get(tier, 0))


# ---------------------------------------------------------------- learned parts (router pool)


def classifier_texts(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The text a learned peer reads: a task token, then the request."""
    return [f"task_{r['task']} {r['text']}" for r in records]


class AnswerScorer:
    """FrugalGPT's scorer: P(answer meets the bar) from (u, log length, tier, task)."""

    def __init__(self, seed: int = 0) -> None:
        from sklearn.linear_model import LogisticRegression

        from routenlp_core.tasks import TASK_NAMES

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


def rule_by_task(quality: Mapping[str, Mapping[str, float]], bars: Mapping[str, float]) -> dict[str, str]:
    """Per task the cheapest tier whose (calibration) quality meets the bar, else the best tier."""
    rules = {}
    for task, by_tier in quality.items():
        meeting = [t for t in TIERS if t in by_tier and by_tier[t] >= bars[task]]
        rules[task] = meeting[0] if meeting else max(by_tier, key=by_tier.get)
    return rules


def oracle_tier(task: str, example_quality: Mapping[str, float], bar: float) -> str:
    """The cheapest tier whose answer meets the bar, else the best answer (the lower bound)."""
    meeting = [t for t in servable(task) if t in example_quality and example_quality[t] >= bar]
    return meeting[0] if meeting else max(example_quality, key=example_quality.get)


# ---------------------------------------------------------------- swept peers (clients/curves.py)


class TierPassClassifier:
    """RouteLLM's matrix-factorisation router, per tier: the query is embedded (TF-IDF with a task
    token, truncated SVD) and each tier has its own learned vector and bias over that embedding
    (a logistic regression per tier), giving P(tier k's answer is good enough | text)."""

    def __init__(self, dim: int = 64, seed: int = 0) -> None:
        self.dim, self.seed = dim, seed
        self.models: dict[str, Any] = {}
        self.constant: dict[str, float] = {}

    def fit(self, records: Sequence[Mapping[str, Any]], labels: Mapping[str, Sequence[bool]]) -> "TierPassClassifier":
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        self.vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=20000, sublinear_tf=True)
        x = self.vectorizer.fit_transform(classifier_texts(records))
        self.svd = TruncatedSVD(n_components=max(1, min(self.dim, x.shape[1] - 1)), random_state=self.seed)
        z = self.svd.fit_transform(x)
        for tier, y in labels.items():
            y = np.asarray(y, dtype=int)
            if y.min() == y.max():
                self.constant[tier] = float(y[0])
            else:
                self.models[tier] = LogisticRegression(max_iter=2000, C=2.0, random_state=self.seed).fit(z, y)
        return self

    def probabilities(self, records: Sequence[Mapping[str, Any]]) -> list[dict[str, float]]:
        z = self.svd.transform(self.vectorizer.transform(classifier_texts(records)))
        columns = {tier: np.full(len(records), p) for tier, p in self.constant.items()}
        columns.update({tier: model.predict_proba(z)[:, 1] for tier, model in self.models.items()})
        return [{tier: float(values[i]) for tier, values in columns.items()} for i in range(len(records))]


class OracleTierClassifier:
    """The plain text-classifier router: TF-IDF (word 1-2 grams, a task token) + multinomial
    logistic regression predicting the oracle tier (the cheapest tier meeting the example's bar);
    P(oracle tier <= t) is the cumulative class probability."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def fit(self, records: Sequence[Mapping[str, Any]], oracle: Sequence[str]) -> "OracleTierClassifier":
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        self.vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=20000, sublinear_tf=True)
        x = self.vectorizer.fit_transform(classifier_texts(records))
        self.model = LogisticRegression(max_iter=2000, C=2.0, random_state=self.seed).fit(x, list(oracle))
        return self

    def probabilities(self, records: Sequence[Mapping[str, Any]]) -> list[dict[str, float]]:
        """P(the oracle tier is t or cheaper), per tier."""
        p = self.model.predict_proba(self.vectorizer.transform(classifier_texts(records)))
        classes = list(self.model.classes_)
        return [{tier: float(sum(row[classes.index(t)] for t in TIERS[: k + 1] if t in classes)) for k, tier in enumerate(TIERS)} for row in p]


def routellm_labels(records, answers, bars: Mapping[str, float]) -> dict[str, list[bool]]:
    """Per tier: its answer meets the example's bar (the labels RouteNLP's router learns)."""
    from export.router_loss import example_bars

    quality = np.array([[float(answers[r["id"]][t]["quality"]) if t in answers[r["id"]] else -1.0 for t in TIERS] for r in records])
    bar = example_bars(records, quality, bars)
    return {tier: list(quality[:, k] >= bar) for k, tier in enumerate(TIERS)}


def hybrid_labels(records, answers, bars: Mapping[str, float], tolerance: float = 0.02) -> dict[str, list[bool]]:
    """HybridLLM's relaxed label per tier: q(tier) >= q(T4) - tolerance, except when both miss the
    task's bar (both wrong is not "the cheap tier is fine": nothing was gained by it)."""
    labels: dict[str, list[bool]] = {tier: [] for tier in TIERS}
    for r in records:
        rows, bar = answers[r["id"]], bars[r["task"]]
        top = float(rows["t4"]["quality"])
        for tier in TIERS:
            q = float(rows[tier]["quality"]) if tier in rows else -1.0
            labels[tier].append(q >= top - tolerance and not (q < bar and top < bar))
    return labels


class LazyRows(Mapping):
    """A record's tier answers fetched from the server on first access, in the order asked: lets a
    System's decision rule (clients/curves.py) run live exactly as it was replayed offline."""

    def __init__(self, record: Mapping[str, Any], call: Call) -> None:
        self.record, self.call, self.calls = record, call, {}

    def __getitem__(self, tier: str) -> Mapping[str, Any]:
        if tier not in self.calls:
            served = self.call(self.record, tier)
            u, tokens = _u_and_tokens(served, tier)
            self.calls[tier] = (served, {"u": u, "tokens": tokens})
        return self.calls[tier][1]

    def __contains__(self, tier) -> bool:
        return tier in servable(self.record["task"])

    def __iter__(self):
        return iter(servable(self.record["task"]))

    def __len__(self) -> int:
        return len(servable(self.record["task"]))


@dataclass
class SystemPolicy(Policy):
    """A swept System served at one knob setting: the same decision rule, live."""

    system: Any  # clients.curves.System
    knob: float

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.system.name

    def answer(self, record, call):
        rows = LazyRows(record, call)
        for tier in self.system.decide(record, rows, self.knob):
            rows[tier]
        return Routed([served for served, _ in rows.calls.values()])
