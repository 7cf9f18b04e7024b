"""The co-optimization loop without a server: every route replayed over a build's all-pairs answers.

The portfolio pack holds every tier's answer on every router-pool, calibration and dev record, so
the served system can be replayed with the serving code itself (export.calibrate.replay:
decide_route + run_cascade over recorded answers) instead of sending requests. Per iteration,
instead of the live steps of coopt/loop.py:
  - rules: calibrated afresh on the iteration build's calibration answers (what
    `routenlp calibrate` would write into the repository version);
  - mining: the router pool replayed under those rules (tier that answered, escalations);
  - teacher: T4's recorded answer on each selected query (greedy decoding: what the billed call
    returns), billed at T4's price for its tokens;
  - measuring: dev replayed, against Always-T4 replayed over the same answers.
No repository version is written, no model is swapped: the distilled tiers, the refreshed answers
and the retrained router are real (coopt/iteration.py, without the ONNX export).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from coopt.distill import TEACHER, TeacherAnswer
from coopt.loop import CooptLoop, State

SERVED_TIERS = ("t1", "t2", "t3", "t4")


class ReplayedLoop(CooptLoop):
    """CooptLoop whose routes, teacher calls and measurements replay recorded answers."""

    def __init__(self, base, settings, root, *, progress: bool = False, log=print) -> None:
        super().__init__(base, None, settings, root, progress=progress, log=log)
        self._rules: dict[str, tuple[Any, dict[str, Any]]] = {}  # build root -> (rules, calibration record)
        self._versions = 0

    # ---- the replayed deployment ----------------------------------------------------------------

    def rules(self, build):
        """The serving rules `routenlp calibrate` fits on `build`'s calibration answers (cached)."""
        from export.calibrate import calibrate_build, rules_from_calibration
        from export.pipeline import torch_threads

        key = str(build.root)
        if key not in self._rules:
            with torch_threads(1):
                thresholds, calibration = calibrate_build(build, bars=self.bars)
            self._rules[key] = (rules_from_calibration(thresholds, calibration), calibration)
        return self._rules[key][0]

    def replay_pool(
        self, build, pool: str, records: Sequence[Mapping[str, Any]], policy: str = "routenlp"
    ) -> list[dict[str, Any]]:
        """Per record: the served metadata (tier, escalations, cost_usd) and the answer's quality,
        of RouteNLP under `build`'s rules, or of a fixed tier (`always-tK`)."""
        from export.calibrate import build_prices, replay, router_pass_probabilities, structured_tasks
        from export.pipeline import torch_threads

        answers = build.load_answers(pool)
        prices = build_prices(build)
        if policy.startswith("always-"):
            tier = policy.removeprefix("always-")
            return [_fixed(answers[r["id"]][tier], tier, prices[tier]) for r in records]
        rules = self.rules(build)
        with torch_threads(1):
            probs = router_pass_probabilities(build, records) if rules.utility else None
        out = []
        for record in records:
            outcome = replay(record, answers, probs, rules, prices, structured_tasks()).outcome
            row = answers[record["id"]][outcome.tier]
            out.append(
                {"metadata": outcome.metadata(), "prediction": row["prediction"], "quality": float(row["quality"])}
            )
        return out

    def _summary(self, build, policy: str) -> dict[str, Any]:
        """summarize()'s fields for `policy` replayed on dev (served_eval.compare takes them)."""
        from routenlp.metrics import corpus_score

        routed = self.replay_pool(build, "dev", self.dev, policy)
        by_task: dict[str, list[int]] = {}
        for i, record in enumerate(self.dev):
            by_task.setdefault(record["task"], []).append(i)
        quality = {
            task: round(
                corpus_score(task, [routed[i]["prediction"] for i in rows], [self.dev[i]["target"] for i in rows]), 4
            )
            for task, rows in sorted(by_task.items())
        }
        mix = Counter(r["metadata"]["tier"] for r in routed)
        return {
            "requests": len(routed), "errors": 0, "quality": quality,
            "mean_quality": round(sum(quality.values()) / len(quality), 4),
            "mix": {tier: round(mix[tier] / len(routed), 4) for tier in SERVED_TIERS},
            "dollars": round(sum(r["metadata"]["cost_usd"] for r in routed), 6),
            "escalation_rate": round(sum(1 for r in routed if r["metadata"]["escalations"]) / len(routed), 4),
        }  # fmt: skip

    # ---- CooptLoop's live steps, replayed -------------------------------------------------------

    def measure_reference(self) -> dict[str, Any]:
        self.reference = self._summary(self.base, "always-t4")
        return self.reference

    def measure(self, state: State) -> dict[str, Any]:
        return self.row_from(self._summary(state.build, "routenlp"), state)

    def mine(self, state: State):
        from coopt.failures import find_failures

        pool = self.unused_pool(state)
        routed = self.replay_pool(state.build, "router", pool)
        return find_failures(pool, [r["metadata"] for r in routed], [r["quality"] for r in routed], self.bars), pool

    def teacher(self, state: State, queries: Sequence[Mapping[str, Any]]) -> list[TeacherAnswer]:
        """T4's recorded answers (T4 is never retrained, so the base build's are current)."""
        from export.calibrate import build_prices

        answers, price = self.base.load_answers("router"), build_prices(self.base)[TEACHER]
        out = []
        for record in queries:
            row = answers.get(record["id"], {}).get(TEACHER)
            if row is None:
                out.append(TeacherAnswer(record, None, 0.0, "no recorded T4 answer"))
            else:
                out.append(TeacherAnswer(record, row["prediction"], int(row.get("tokens", 0)) / 1000.0 * price))
        return out

    def deploy(self, build, label: str) -> tuple[int, dict[str, Any]]:
        """Nothing to load: the build is measured by replay. Versions count builds measured."""
        self._versions += 1
        return self._versions, {"label": label, "version": self._versions, "error": None}

    def deploy_base(self) -> int:
        return self.deploy(self.base, "base")[0]

    def back_to(self, base_version: int, mode: str) -> None:
        """Every run starts from the base build's state: nothing live to swap back."""

    def iteration_build(self, state: State, mode: str, iteration: int, distillation):
        build = super().iteration_build(state, mode, iteration, distillation)
        build.export_onnx = False  # nothing is served: the torch router and T1 heads are what replay uses
        return build

    def promote(self, chosen: State) -> dict[str, Any]:
        return {"from_version": chosen.version, "build": _in_clone(chosen.build.root), "written": False}


def _fixed(row: Mapping[str, Any], tier: str, price: float) -> dict[str, Any]:
    """A fixed-tier answer as replay_pool's row (no router, no escalation)."""
    tokens = int(row.get("tokens", 0))
    return {
        "metadata": {"tier": tier, "escalations": 0, "cost_usd": tokens / 1000.0 * price},
        "prediction": row["prediction"],
        "quality": float(row["quality"]),
    }


def _in_clone(path) -> str:
    """`path` relative to the clone when it lies inside it (the results name no machine paths)."""
    from pathlib import Path

    from routenlp_core.paths import REPO_ROOT

    path = Path(path).resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)
