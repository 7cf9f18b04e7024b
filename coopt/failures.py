"""Router failures and their clusters (paper 3.4, steps 1-3).

A failure is a routed request whose answering tier missed the task's bar, or that escalated (the
router's pick was not trusted). Failures are embedded with the router's own encoder ([CLS]), reduced
with PCA (to 128 dimensions, or fewer when there are fewer failures), and clustered with k-means,
k chosen by silhouette. Clusters are ranked by size x mean quality gap, top 5 per task.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PCA_DIMS = 128
MAX_K = 10
TOP_PER_TASK = 5


@dataclass(frozen=True)
class Failure:
    record: Mapping[str, Any]
    tier: str  # the tier that answered
    quality: float
    bar: float
    escalated: bool

    @property
    def gap(self) -> float:
        """How far below the bar the answer fell (0 for an escalated answer that met it)."""
        return max(0.0, self.bar - self.quality)


@dataclass
class Cluster:
    task: str
    members: list[Failure] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def mean_gap(self) -> float:
        return float(np.mean([f.gap for f in self.members])) if self.members else 0.0

    @property
    def priority(self) -> float:
        return self.size * self.mean_gap

    def summary(self, examples: int = 3) -> dict[str, Any]:
        return {
            "task": self.task,
            "size": self.size,
            "mean_gap": round(self.mean_gap, 4),
            "priority": round(self.priority, 4),
            "tiers": {t: sum(1 for f in self.members if f.tier == t) for t in sorted({f.tier for f in self.members})},
            "examples": [str(f.record["text"])[:160] for f in sorted(self.members, key=lambda f: -f.gap)[:examples]],
        }


def find_failures(records: Sequence[Mapping[str, Any]], metadata: Sequence[Mapping[str, Any]], quality: Sequence[float], bars: Mapping[str, float]) -> list[Failure]:
    """Routed requests (their METADATA and per-example quality) that missed the bar or escalated."""
    failures = []
    for record, meta, q in zip(records, metadata, quality):
        bar = bars[record["task"]]
        escalated = bool(meta.get("escalations"))
        if q < bar or escalated:
            failures.append(Failure(record, meta["tier"], float(q), bar, escalated))
    return failures


def choose_k(points: np.ndarray, max_k: int = MAX_K, seed: int = 0) -> int:
    """k in 2..max_k with the best silhouette (1 when there are too few points to compare)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    n = len(points)
    if n < 4:
        return 1
    best_k, best_score = 1, -1.0
    for k in range(2, min(max_k, n - 1) + 1):
        labels = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(points)
        if len(set(labels)) < 2:
            continue
        score = silhouette_score(points, labels)
        if score > best_score:
            best_k, best_score = k, score
    return best_k


def cluster_failures(failures: Sequence[Failure], embeddings: np.ndarray, *, max_k: int = MAX_K, seed: int = 0) -> list[Cluster]:
    """Per task: PCA to <= 128 dims, k-means with k by silhouette; clusters ranked by priority."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    clusters: list[Cluster] = []
    by_task: dict[str, list[int]] = {}
    for i, failure in enumerate(failures):
        by_task.setdefault(failure.record["task"], []).append(i)
    for task, rows in sorted(by_task.items()):
        points = embeddings[rows]
        dims = min(PCA_DIMS, len(rows), points.shape[1])
        if dims >= 2 and len(rows) > 2:
            points = PCA(n_components=dims, random_state=seed).fit_transform(points)
        k = choose_k(points, max_k, seed)
        labels = np.zeros(len(rows), dtype=int) if k == 1 else KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(points)
        task_clusters = [Cluster(task, [failures[rows[j]] for j in np.flatnonzero(labels == c)]) for c in range(k)]
        clusters += sorted((c for c in task_clusters if c.size), key=lambda c: -c.priority)
    return clusters


def top_clusters(clusters: Sequence[Cluster], per_task: int = TOP_PER_TASK) -> list[Cluster]:
    chosen: list[Cluster] = []
    for task in sorted({c.task for c in clusters}):
        chosen += sorted((c for c in clusters if c.task == task), key=lambda c: -c.priority)[:per_task]
    return chosen


def distillation_records(
    chosen: Sequence[Cluster], pool: Sequence[Mapping[str, Any]], *, hardest_share: float = 0.3, random_share: float = 0.2, seed: int = 0
) -> list[Mapping[str, Any]]:
    """The 30% hardest (largest gap) of the chosen clusters' queries plus a random 20% of the rest
    of the pool (paper 3.4 step 4): the inputs whose T4 answers become training data."""
    rng = np.random.default_rng(seed)
    members = sorted((f for c in chosen for f in c.members), key=lambda f: -f.gap)
    hardest = [f.record for f in members[: max(1, int(round(len(members) * hardest_share)))]] if members else []
    taken = {r["id"] for r in hardest}
    rest = [r for r in pool if r["id"] not in taken]
    n_random = int(round(len(rest) * random_share)) if hardest else 0
    randoms = [rest[i] for i in rng.choice(len(rest), size=n_random, replace=False)] if n_random else []
    return hardest + randoms


def random_records(pool: Sequence[Mapping[str, Any]], n: int, seed: int = 0) -> list[Mapping[str, Any]]:
    """The ablation's data: `n` random pool queries (the targeted set's size, i.e. the same budget)."""
    rng = np.random.default_rng(seed)
    return [pool[i] for i in rng.choice(len(pool), size=min(n, len(pool)), replace=False)]
