"""Failure collection, clustering and distillation-set selection for coopt, offline."""

import numpy as np
import pytest

from coopt.failures import Cluster, Failure, cluster_failures, distillation_records, find_failures, random_records, top_clusters


def _record(i, task="legal_risk"):
    return {"id": f"{task}-{i}", "task": task, "text": f"text {i}"}


def test_failures_are_missed_bars_or_escalations():
    records = [_record(i) for i in range(4)]
    metas = [{"tier": "t1", "escalations": 0}, {"tier": "t1", "escalations": 0}, {"tier": "t2", "escalations": 1}, {"tier": "t1", "escalations": 0}]
    failures = find_failures(records, metas, [1.0, 0.0, 1.0, 0.4], {"legal_risk": 0.5})
    assert [f.record["id"] for f in failures] == ["legal_risk-1", "legal_risk-2", "legal_risk-3"]
    assert [f.gap for f in failures] == [0.5, 0.0, pytest.approx(0.1)]


def test_clusters_follow_the_embedding_structure_and_rank_by_size_times_gap():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0] * 8, [10.0] * 8, [-10.0] * 8])
    sizes = [12, 6, 3]
    points = np.concatenate([c + rng.normal(0, 0.3, (n, 8)) for c, n in zip(centres, sizes)])
    gaps = [0.5] * 12 + [0.9] * 6 + [0.2] * 3
    failures = [Failure(_record(i), "t1", 0.5 - g, 0.5, False) for i, g in enumerate(gaps)]
    clusters = cluster_failures(failures, points, max_k=6)
    assert sorted(c.size for c in clusters) == [3, 6, 12]
    assert [round(c.priority, 2) for c in clusters] == [6.0, 5.4, 0.6]  # 12 x 0.5, 6 x 0.9, 3 x 0.2
    assert len(top_clusters(clusters, per_task=2)) == 2
    summary = clusters[0].summary()
    assert summary["size"] == 12 and summary["tiers"] == {"t1": 12} and len(summary["examples"]) == 3


def test_distillation_set_takes_the_hardest_cluster_queries_and_a_random_share_of_the_rest():
    failures = [Failure(_record(i), "t2", 0.5 - i / 100, 0.5, False) for i in range(10)]
    pool = [_record(i) for i in range(100)]
    chosen = [Cluster("legal_risk", failures)]
    picked = distillation_records(chosen, pool, seed=1)
    hardest = [r["id"] for r in picked[:3]]
    assert hardest == ["legal_risk-9", "legal_risk-8", "legal_risk-7"]  # 30% of 10, largest gap first
    assert len(picked) == 3 + round(97 * 0.2) and len({r["id"] for r in picked}) == len(picked)
    assert len(random_records(pool, len(picked), seed=2)) == len(picked)


def test_the_random_run_asks_the_teacher_as_often_as_the_targeted_run_did_at_that_iteration():
    from coopt.loop import CooptLoop, CooptSettings

    loop = object.__new__(CooptLoop)  # select() needs only the settings and the budgets (no build, no server)
    loop.settings, loop.budgets = CooptSettings(), {}
    pool = [{"id": f"p{i}", "task": "legal_risk", "text": str(i)} for i in range(50)]
    assert loop.select(None, [], pool, "targeted", 2)[0] == [] and loop.budgets == {2: 0}
    loop.budgets[2] = 7
    queries, _, filtered = loop.select(None, [], pool, "random", 2)
    assert len(queries) == 7 and filtered == set()
