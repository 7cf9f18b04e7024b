"""The distillation-routing co-optimization loop against a live deployment (paper 3.4, Algorithm 1).

Per iteration:
  1. route the mining pool (the router pool: held out of tier training, minus what the loop has
     distilled on) through the live server and collect router failures (the answering tier missed
     the task's bar, or the request escalated);
  2. embed them with the deployed router (penultimate layer), PCA to 128 dims, k-means, k by
     silhouette;
  3. rank clusters by size x mean quality gap, take the top 5 per task;
  4. ask T4, through the live server, for the 30% hardest cluster queries plus 20% random others
     (the random ablation asks T4 for the same number of random pool queries instead);
  5. fine-tune T1 heads / T2 on the teacher's answers, answer the pools again, retrain the router,
     recalibrate the conformal thresholds (coopt/iteration.py);
  6. write repository version N+1, load it into the running tritonserver while a client loop keeps
     sending traffic (smoke-checked; a failing version is rolled back), re-measure on dev;
  7. stop when |delta cost ratio| < epsilon, or after max_iterations.
Both runs start from the same base version; at the end the targeted run's best version (lowest
cost ratio with quality within `quality_tolerance` of the base) is written again as the newest
version and left live.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coopt.distill import Distillation, build_distillation
from coopt.failures import (
    MAX_K,
    TOP_PER_TASK,
    Failure,
    cluster_failures,
    distillation_records,
    find_failures,
    random_records,
    top_clusters,
)
from coopt.iteration import FinetuneSettings, IterationBuild

MODES = ("targeted", "random")
REFERENCE_POLICY = "always-t4"
MAX_SERVER_RESTARTS = 12  # per run; more means the deployment is not fit to measure (2.51 crashes: README, Reliability)


@dataclass(frozen=True)
class CooptSettings:
    max_iterations: int = 3
    epsilon: float = 0.005  # stop when |delta cost ratio| falls below this
    top_per_task: int = TOP_PER_TASK
    max_k: int = MAX_K
    hardest_share: float = 0.3
    random_share: float = 0.2
    quality_tolerance: float = 0.01  # how far below the base quality ratio a promoted version may be (issue 20)
    concurrency: int = 4
    traffic_concurrency: int = 2
    finetune: FinetuneSettings = FinetuneSettings()
    seed: int = 0


@dataclass(frozen=True)
class Live:
    """The running deployment the loop measures and redeploys."""

    grpc_url: str
    http_url: str
    admin_key: str
    repository: Path
    exit_status: Callable[[], str | None] = lambda: None  # how the server process ended, if it did
    restart: Callable[[], float] | None = None  # starts a dead server again (same ports); seconds taken


@dataclass
class State:
    """Where one run (targeted or random) stands: the build behind the live version."""

    build: Any  # export.pipeline.PortfolioBuild or coopt.iteration.IterationBuild
    version: int
    trained_on: dict[str, set[str]] = field(default_factory=dict)


class CooptLoop:
    def __init__(self, base, live: Live, settings: CooptSettings, root: Path, *, progress: bool = True, log: Callable[[str], None] = print) -> None:
        self.base, self.live, self.settings, self.root = base, live, settings, Path(root)
        self.progress, self.log = progress, log
        self.bars = {task: float(bar) for task, bar in base.cache.stamp("router")["summary"]["bars"].items()}
        self.dev = base.pools.flat("dev")
        self.pool = base.pools.flat("router")
        self.reference: dict[str, Any] | None = None
        self.swaps: list[dict[str, Any]] = []
        self.crashes: list[dict[str, Any]] = []  # tritonserver deaths survived: when, how, restart time
        self.live_version: int | None = None  # the repository version the server answers with
        self.clusters: dict[str, list[dict[str, Any]]] = {}
        self.budgets: dict[int, int] = {}  # iteration -> teacher queries the targeted run asked

    # ---- live measurements --------------------------------------------------------------------

    def _route(self, records: Sequence[Mapping[str, Any]], policy: str, desc: str):
        """Every record through the live server; routed again from the start if the server died
        meanwhile (its answers are then partial), once it has been restarted."""
        from clients.served_eval import route_records

        while True:
            answers = route_records(self.live.grpc_url, records, policy, concurrency=self.settings.concurrency, progress=self.progress, desc=desc)
            if all(a.error is None for a in answers) or not self._restart_if_dead(desc):
                return answers

    def _api(self):
        from routenlp.repository_api import RepositoryAPI

        return RepositoryAPI(self.live.http_url, self.live.admin_key)

    def _restart_if_dead(self, during: str) -> bool:
        """False while the server is alive. Else restarts it, puts the live version back (a
        restarted server loads each model's newest version) and returns True."""
        if self._api().live():
            return False
        ended = self.live.exit_status() or "process still running"
        if self.live.restart is None or len(self.crashes) >= MAX_SERVER_RESTARTS:
            raise RuntimeError(f"tritonserver stopped answering ({during}): {ended}; see its log")
        self.log(f"  tritonserver died ({during}): {ended}; restarting it")
        crash = {"during": during, "ended": ended, "restart_s": round(self.live.restart(), 1)}
        if self.live_version is not None:
            self._pin(self.live_version)
        self.crashes.append(crash)
        self.log(f"  tritonserver ready again after {crash['restart_s']} s, on version {self.live_version}")
        return True

    def _pin(self, version: int) -> None:
        from routenlp.repository_api import deploy, smoke_check
        from routenlp_core.tasks import TASK_NAMES

        texts = {task: self.base.pools.dev[task][0]["text"] for task in TASK_NAMES}
        deploy(self._api(), self.live.repository, version, smoke_check(self.live.grpc_url, TASK_NAMES, texts.__getitem__), log=self.log)

    def measure_reference(self) -> dict[str, Any]:
        from clients.served_eval import summarize

        self.reference = summarize(self._route(self.dev, REFERENCE_POLICY, "dev (always-t4)"))
        return self.reference

    def measure(self, state: State) -> dict[str, Any]:
        """Cost and quality ratio vs Always-T4 on dev through the live server, plus the router's
        offline accuracy vs the oracle tier (refreshed dev answers)."""
        from clients.served_eval import summarize

        return self.row_from(summarize(self._route(self.dev, "routenlp", f"dev (version {state.version})")), state)

    def row_from(self, summary: Mapping[str, Any], state: State) -> dict[str, Any]:
        """An iteration's measured fields from RouteNLP's dev summary (served_eval.summarize's keys)."""
        from clients.served_eval import compare

        ratios = compare(summary, self.reference)
        router = state.build.cache.stamp("router")["summary"]
        return {
            **ratios,
            "router_accuracy": router["dev_accuracy_vs_oracle"],
            "t1_t2_share": round(summary["mix"].get("t1", 0.0) + summary["mix"].get("t2", 0.0), 4),
            "mix": summary["mix"],
            "escalation_rate": summary["escalation_rate"],
            "errors": summary["errors"],
            "quality_by_task": summary["quality"],
        }

    def mine(self, state: State) -> tuple[list[Failure], list[Mapping[str, Any]]]:
        """Router failures on the mining pool, served by the live version."""
        from clients.served_eval import served_prediction
        from routenlp.metrics import example_score

        pool = self.unused_pool(state)
        answers = self._route(pool, "routenlp", f"mine {len(pool)} pool queries")
        served = [a for a in answers if a.error is None]
        quality = [example_score(a.record["task"], served_prediction(a), a.record["target"]) for a in served]
        return find_failures([a.record for a in served], [a.metadata for a in served], quality, self.bars), pool

    def unused_pool(self, state: State) -> list[Mapping[str, Any]]:
        """The mining pool minus what any tier has been distilled on."""
        used = set().union(*state.trained_on.values()) if state.trained_on else set()
        return [r for r in self.pool if r["id"] not in used]

    def teacher(self, state: State, queries: Sequence[Mapping[str, Any]]) -> list:
        """T4's answers to `queries`: billed always-t4 calls through the live server."""
        from coopt.distill import served_teacher

        return served_teacher(self._route(queries, REFERENCE_POLICY, f"teacher (T4) on {len(queries)} queries"))

    # ---- one iteration ------------------------------------------------------------------------

    def select(self, state: State, failures: list[Failure], pool, mode: str, iteration: int) -> tuple[list[Mapping[str, Any]], list[dict[str, Any]], set[str]]:
        """The queries to ask the teacher (cluster-targeted, or random at the same budget), and the
        ids among them whose teacher answer must beat the student's: the cluster-hardest ones (the
        random share is kept unfiltered)."""
        from export.router_model import load_router, router_embeddings

        s = self.settings
        if failures:
            model, meta = load_router(state.build.root / "router")
            embeddings = router_embeddings(model, state.build.tokenizer(), [f.record for f in failures], meta["max_len"])
            chosen = top_clusters(cluster_failures(failures, embeddings, max_k=s.max_k, seed=s.seed), s.top_per_task)
        else:
            chosen = []
        targeted = distillation_records(chosen, pool, hardest_share=s.hardest_share, random_share=s.random_share, seed=s.seed + iteration)
        hardest = {r["id"] for r in distillation_records(chosen, pool, hardest_share=s.hardest_share, random_share=0.0)}
        summaries = [c.summary() for c in chosen]
        if mode == "targeted":
            self.budgets[iteration] = len(targeted)
            return targeted, summaries, hardest
        # the targeted run's budget at this iteration (its own failures give another size from iteration 2 on)
        budget = self.budgets.get(iteration, len(targeted))
        return random_records(pool, budget, seed=s.seed + 1000 + iteration), summaries, set()

    def distill(self, state: State, queries, filtered: set[str]) -> Distillation:
        from coopt.distill import teacher_better_tasks

        teacher = self.teacher(state, queries)
        rows = state.build.load_answers("router")
        better = teacher_better_tasks(rows, state.build.pools.flat("router"))
        return build_distillation(teacher, rows, state.trained_on, filtered=filtered, teacher_better=better)

    def deploy(self, build, label: str) -> tuple[int, dict[str, Any]]:
        """Write `build` as a new repository version and load it while traffic flows."""
        from export.repository_builder import write_repository

        written = write_repository(build, self.live.repository, target="cpu")
        return written["version"], self.swap_to(written["version"], label)

    def swap_to(self, version: int, label: str) -> dict[str, Any]:
        from coopt.traffic import TrafficLoop

        traffic = TrafficLoop(self.live.grpc_url, self.dev, concurrency=self.settings.traffic_concurrency, max_tier=None).start()
        started = time.perf_counter()
        error = None
        try:
            traffic.wait_for(1)
            self._pin(version)
            self.live_version = version
        except Exception as err:  # a version that fails its smoke check was rolled back by deploy()
            error = str(err)
        finally:
            counts = traffic.stop()
        swap = {"label": label, "version": version, "seconds": round(time.perf_counter() - started, 1), "error": error, **counts}
        self.swaps.append(swap)
        if error and self._restart_if_dead(f"swap to version {version} ({label}), {counts['failed']} of {counts['sent']} requests failed"):
            # The crash and the requests it failed stay in self.swaps (and the totals); redo the swap.
            swap["server_crash"] = self.crashes[-1]["ended"]
            return self.swap_to(version, label)
        self.log(f"  swap to version {version} ({label}): {counts['sent']} requests during the swap, {counts['failed']} failed" + (f"; NOT deployed: {error}" if error else ""))
        return swap

    def run_mode(self, mode: str, base_version: int, base_row: dict[str, Any]) -> tuple[list[dict[str, Any]], State]:
        state = State(self.base, base_version)
        rows = [{"iteration": 0, **base_row, "failures": None, "clusters_used": 0, "distilled": None, "repository_version": base_version}]
        best = (rows[0], state)
        for iteration in range(1, self.settings.max_iterations + 1):
            started = time.perf_counter()
            self.log(f"\n[{mode} {iteration}] collecting failures on the live version {state.version}")
            failures, pool = self.mine(state)
            queries, clusters, filtered = self.select(state, failures, pool, mode, iteration)
            self.clusters[f"{mode}/{iteration}"] = clusters
            distillation = self.distill(state, queries, filtered)
            self.log(f"[{mode} {iteration}] {len(failures)} failures, {len(clusters)} clusters, teacher asked {len(queries)}, kept {len(distillation.examples)}")
            build = self.iteration_build(state, mode, iteration, distillation)
            build.run()
            version, swap = self.deploy(build, f"{mode} iteration {iteration}")
            if swap["error"]:
                rows.append({"iteration": iteration, "failures": len(failures), "deploy_error": swap["error"], "repository_version": version})
                break
            state = State(build, version, build.trained_on())
            row = {
                "iteration": iteration, **self.measure(state), "failures": len(failures), "clusters_used": len(clusters),
                "distilled": distillation.summary(), "repository_version": version,
                "swap": {k: swap[k] for k in ("sent", "failed", "seconds") if k in swap} or None,
                "seconds": round(time.perf_counter() - started, 1),
            }  # fmt: skip
            rows.append(row)
            self.log(f"[{mode} {iteration}] cost ratio {row['cost_ratio']:.4f}, quality ratio {row['quality_ratio']:.4f}, router accuracy {row['router_accuracy']:.3f}")
            if self._better(row, best[0], rows[0]):
                best = (row, state)
            if abs(row["cost_ratio"] - rows[-2]["cost_ratio"]) < self.settings.epsilon:
                self.log(f"[{mode}] converged: |delta cost ratio| < {self.settings.epsilon}")
                break
        return rows, best[1]

    def iteration_build(self, state: State, mode: str, iteration: int, distillation: Distillation) -> IterationBuild:
        root = self.root / mode / f"iter{iteration}"
        tune = self.settings.finetune
        return IterationBuild(state.build, root, distillation, self.bars, tune, progress=self.progress, log=self.log)

    def _better(self, row, best, base) -> bool:
        acceptable = row["quality_ratio"] >= base["quality_ratio"] - self.settings.quality_tolerance
        return acceptable and row["cost_ratio"] < best["cost_ratio"]

    def deploy_base(self) -> int:
        """The base build as a new repository version, live; returns the version."""
        from export.repository_builder import write_repository

        version = write_repository(self.base, self.live.repository, target="cpu")["version"]
        self.swap_to(version, "base")
        return version

    def back_to(self, base_version: int, mode: str) -> None:
        self.swap_to(base_version, f"back to base for {mode}")

    def promote(self, chosen: State) -> dict[str, Any]:
        """`chosen` written again as the newest version and left live."""
        label = "promote " + ("base" if chosen.build is self.base else chosen.build.root.name)
        version, _ = self.deploy(chosen.build, label)
        return {"from_version": chosen.version, "version": version, "build": str(chosen.build.root)}

    # ---- the whole loop -----------------------------------------------------------------------

    def run(self, modes: Sequence[str] = MODES) -> dict[str, Any]:
        started = time.perf_counter()
        base_version = self.deploy_base()
        self.log("measuring the base deployment on dev (RouteNLP and Always-T4)")
        self.measure_reference()
        base_row = self.measure(State(self.base, base_version))
        self.log(f"[base] cost ratio {base_row['cost_ratio']:.4f}, quality ratio {base_row['quality_ratio']:.4f}")
        runs, best = {}, {}
        for mode in modes:
            if mode != modes[0]:
                self.back_to(base_version, mode)  # both runs start from the same version
            runs[mode], best[mode] = self.run_mode(mode, base_version, base_row)
        promoted = None
        chosen = best.get("targeted") or best.get(modes[0])
        if chosen is not None:
            promoted = self.promote(chosen)
        return {
            "settings": _settings_dict(self.settings),
            "bars": self.bars,
            "dev_records": len(self.dev),
            "pool_records": len(self.pool),
            "reference": {k: self.reference[k] for k in ("mean_quality", "dollars", "quality")},
            "runs": runs,
            "clusters": self.clusters,
            "swaps": self.swaps,
            "server_crashes": self.crashes,
            "swap_totals": {"sent": sum(s["sent"] for s in self.swaps), "failed": sum(s["failed"] for s in self.swaps), "swaps": len(self.swaps)},
            "promoted": promoted,
            "seconds": round(time.perf_counter() - started, 1),
        }


def _settings_dict(settings: CooptSettings) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(settings)


def cost_reduction(rows: Sequence[Mapping[str, Any]]) -> float | None:
    """Relative cost-ratio reduction from iteration 0 to the last measured iteration."""
    measured = [r for r in rows if r.get("cost_ratio") is not None]
    if len(measured) < 2 or not measured[0]["cost_ratio"]:
        return None
    return round(float(1 - measured[-1]["cost_ratio"] / measured[0]["cost_ratio"]), 4)



