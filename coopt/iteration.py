"""One co-optimization iteration's artefacts: a build folder shaped like export's, derived from the
previous iteration's (or the base build's), so the repository writer, calibration and serving
config treat it exactly like a fresh build.

Shared as symlinks: the tokenizer, T3, T4 and the router ablations (unchanged by the loop). Built here, each a cached
stage (a rerun after a crash resumes where it stopped):
  t1            the parent's heads; the heads of tasks with distillation data fine-tuned on it,
                mixed with a replay of the head's original training data (replay_ratio x as many)
  decoders/t2   the parent's T2 fine-tuned on the distillation pairs (SeqKD) plus the same replay
A fine-tuned student is kept only if it passes a regression gate on the calibration pool: on no
task it serves is it worse than its parent by more than `gate_tolerance` (a T1 head: its task; T2:
every task, since it is one model). Otherwise the parent's weights stay (fitted on calibration
only; measured on pack v2: T2 distilled on generation tasks lost 0.06 on fin_ner, a task it was
never distilled on, and the re-certified routing moved fin_ner off T1, -0.045 quality at iteration 1).
  answers       the parent's all-pairs answers with the changed tiers answering again, except on
                router-pool records a tier was trained on (those keep that tier's last clean answer)
  router        retrained from scratch on the refreshed labels (export's router step)
  onnx          router and T1 exported and parity-checked again (export's onnx step)
Quality bars stay the base build's, so every iteration is scored against the same bars.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coopt.distill import Distillation
from export.pipeline import DECODER_TIERS, SEED, PortfolioBuild, _code_fingerprint, torch_threads

SHARED_STAGES = ("tokenizer", *(f"decoders/{t}" for t in DECODER_TIERS if t != "t2"), "router_ablations")
POOLS = ("router", "dev", "calibration")
DISTILLED_ON = "distilled_on.json"  # which router-pool ids each tier has been trained on


@dataclass(frozen=True)
class FinetuneSettings:
    """How students learn from distillation data (the portfolio's [coopt] section)."""

    t2_lr: float = 3e-4  # 1e-3 made T2 forget the tasks it was not distilled on (-0.025 to -0.047 dev, replayed run)
    t2_epochs: int = 3
    t1_lr: float = 3e-4
    t1_epochs: int = 4
    # original training examples replayed per distilled one: a head fine-tuned on 5-20 teacher
    # labels alone forgets its task (issue 20: -0.079 quality on the three distilled T1 tasks)
    replay_ratio: float = 3.0
    # a student worse than its parent on a calibration task by more than this is not kept
    gate_tolerance: float = 0.01


def with_replay(new: list, original, ratio: float, seed: int) -> list:
    """`new` plus round(ratio x len(new)) examples drawn without replacement from `original`
    (all of it if fewer), shuffled together with a fixed seed."""
    import random

    rng = random.Random(seed)
    replay = rng.sample(list(original), min(len(original), round(ratio * len(new)))) if new else []
    mixed = list(new) + replay
    rng.shuffle(mixed)
    return mixed


class IterationBuild(PortfolioBuild):
    def __init__(
        self,
        parent: PortfolioBuild,
        root: Path,
        distillation: Distillation,
        bars: Mapping[str, float],
        settings: FinetuneSettings = FinetuneSettings(),
        *,
        progress: bool = False,
        log: Callable[[str], None] = print,
    ) -> None:
        super().__init__(parent.portfolio, root=root, progress=progress, log=log)
        self.parent, self.distillation, self.settings = parent, distillation, settings
        self.fixed_bars = {task: float(bar) for task, bar in bars.items()}
        self.root.mkdir(parents=True, exist_ok=True)
        for stage in SHARED_STAGES:
            source = parent.root / stage
            link = self.root / stage
            if source.exists() and not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(source.resolve(), target_is_directory=True)

    def decoder_dir(self, tier: str) -> Path:
        # the distilled T2 lives here even when the base T2 is an external checkpoint
        return self.root / "decoders" / "t2" if tier == "t2" else super().decoder_dir(tier)

    def bars_for(self, dev_quality) -> dict[str, float]:
        return dict(self.fixed_bars)

    def trained_on(self) -> dict[str, set[str]]:
        return {tier: set(ids) for tier, ids in self.distillation.trained_on.items()}

    def _coopt_inputs(self, step: str, parent_stage: str, **extra: Any) -> dict[str, Any]:
        parent = self.parent.cache.stamp(parent_stage)  # None: an external checkpoint (a GPU site's T2)
        return self._inputs(
            step, parent=parent["key"] if parent else str(self.parent.decoder_dir("t2")), data=self.distillation.key(), settings=vars(self.settings),
            coopt_code=_code_fingerprint("coopt.iteration", "coopt.distill"), **extra,
        )

    # ---- the distilled tiers ------------------------------------------------------------------

    def build_t1(self) -> dict:
        import torch

        from export.t1 import T1_TASKS, evaluate_t1, fit_t1, load_t1, save_t1

        data = self.distillation.t1_records()

        def build(out: Path) -> dict:
            summary = {}
            parent_quality = self._parent_calibration_quality("t1")
            for task in T1_TASKS:
                source = self.parent.root / "t1" / task
                if task not in data:
                    shutil.copytree(source, out / task)
                    continue
                model, meta = load_t1(source)
                with torch_threads(1):
                    # fit_t1 seeds its batch order only; its dropout draws from the global RNG,
                    # whose state depends on what the process ran before (targeted iteration 1 gave
                    # cost ratio 0.146 / 0.122 / 0.343 in three runs from the same inputs)
                    torch.manual_seed(SEED)
                    mixed = with_replay(data[task], self.pools.tier_train[task], self.settings.replay_ratio, SEED)
                    stats = fit_t1(model, task, mixed, self.tokenizer(), epochs=self.settings.t1_epochs, max_len=meta["max_len"], lr=self.settings.t1_lr, seed=SEED, progress=self.progress)
                gate = self.gate({task: parent_quality[task]}, {task: evaluate_t1(model, self.tokenizer(), task, self.pools.calibration[task], meta["max_len"])["score"]})
                row = {"examples": len(data[task]), "replayed": len(mixed) - len(data[task]), "gate": gate}
                if not gate["kept"]:  # the parent's head stays
                    shutil.copytree(source, out / task)
                    summary[task] = row
                    continue
                dev = evaluate_t1(model, self.tokenizer(), task, self.pools.dev[task], meta["max_len"])
                save_t1(model, self.tokenizer(), out / task, {**meta, "distilled": stats, "dev": dev})
                summary[task] = {**row, "dev": dev["score"], "dev_before": meta.get("dev", {}).get("score")}
            return summary

        return self.cache.run("t1", self._coopt_inputs("t1", "t1"), build, self.log)

    def build_decoders(self) -> dict:
        from transformers import AutoModelForCausalLM

        from export.decoder import META_FILE, read_meta, save_decoder
        from export.train_decoder import train_decoder
        from routenlp_core.answers import format_target, prompt_text

        distilled = [e.prompt_pair() for e in self.distillation.for_student("t2")]
        original = [(prompt_text(r), format_target(r)) for r in self.pools.flat("tier_train", self.profile.max_train_per_task)]
        pairs = with_replay(distilled, original, self.settings.replay_ratio, SEED)
        source = self.parent.decoder_dir("t2")

        def build(out: Path) -> dict:
            if not pairs:
                shutil.rmtree(out)
                shutil.copytree(source, out)
                return {"examples": 0}
            model = AutoModelForCausalLM.from_pretrained(str(source))
            stats = train_decoder(
                model, self.tokenizer(), pairs, epochs=self.settings.t2_epochs, batch_size=16, lr=self.settings.t2_lr,
                max_len=self.profile.max_input_tokens + self.profile.max_answer_tokens, seed=SEED, progress=self.progress, bucket_pool_batches=1,
            )
            row = {"examples": len(distilled), "replayed": len(pairs) - len(distilled), "final_loss": stats["final_loss"], "train_seconds": stats["train_seconds"]}
            row["gate"] = self.gate(self._parent_calibration_quality("t2"), self._t2_calibration_quality(model.eval()))
            if not row["gate"]["kept"]:  # the parent's T2 stays
                shutil.rmtree(out)
                shutil.copytree(source, out)
                return row
            meta = read_meta(source) if (source / META_FILE).exists() else {}
            save_decoder(model, self.tokenizer(), out, {**meta, "distilled": stats})
            return row

        return {"t2": self.cache.run("decoders/t2", self._coopt_inputs("decoder", "decoders/t2"), build, self.log)}

    def gate(self, before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, Any]:
        """The regression gate: kept unless a task's calibration quality fell by more than the tolerance."""
        drops = {task: round(before[task] - after[task], 4) for task in before if before[task] - after[task] > self.settings.gate_tolerance}
        return {"kept": not drops, "before": dict(before), "after": dict(after), "worse_on": drops}

    def _parent_calibration_quality(self, tier: str) -> dict[str, float]:
        """The parent's calibration quality per task of `tier`, from its recorded answers."""
        from export.quality import quality_table

        table = quality_table(self.parent.load_answers("calibration"), self.pools.flat("calibration"))
        return {task: tiers[tier] for task, tiers in table.items() if tier in tiers}

    def _t2_calibration_quality(self, model) -> dict[str, float]:
        """A T2 model's calibration quality per task, by labelling the pool with it."""
        from export.labeling import label_decoder
        from export.quality import quality_table

        records = self.pools.flat("calibration")
        rows = label_decoder("t2", model, self.tokenizer(), records, max_new_tokens=self.profile.max_answer_tokens,
                             max_prompt_tokens=self.profile.max_input_tokens, progress=self.progress)
        table = quality_table({row.id: {"t2": row.to_json()} for row in rows}, records)
        return {task: tiers["t2"] for task, tiers in table.items() if "t2" in tiers}

    # ---- refreshed all-pairs answers ----------------------------------------------------------

    def build_answers(self) -> dict:
        from transformers import AutoModelForCausalLM

        from export.labeling import label_decoder, label_t1
        from export.t1 import load_t1

        # only the students that passed the gate changed (the others are their parents' weights)
        t1_summary = self.cache.stamp("t1")["summary"]
        t1_tasks = sorted(task for task in self.distillation.t1_records() if t1_summary.get(task, {}).get("gate", {}).get("kept", True))
        t2_changed = bool(self.distillation.for_student("t2")) and self.cache.stamp("decoders/t2")["summary"].get("gate", {}).get("kept", True)
        trained_on = self.trained_on()

        def clean(pool: str, tier: str, records):
            # router-pool text a tier was trained on keeps that tier's previous answer
            return [r for r in records if not (pool == "router" and r["id"] in trained_on.get(tier, set()))]

        def build(out: Path) -> dict:
            counts = {}
            t2 = AutoModelForCausalLM.from_pretrained(str(self.decoder_dir("t2"))).eval() if t2_changed else None
            for pool in POOLS:
                table = {rid: dict(by_tier) for rid, by_tier in self.parent.load_answers(pool).items()}
                fresh = []
                for task in t1_tasks:
                    model, meta = load_t1(self.root / "t1" / task)
                    fresh += label_t1(task, model, self.tokenizer(), clean(pool, "t1", getattr(self.pools, pool)[task]), max_len=meta["max_len"])
                if t2 is not None:
                    fresh += label_decoder(
                        "t2", t2, self.tokenizer(), clean(pool, "t2", self.pools.flat(pool)),
                        max_new_tokens=self.profile.max_answer_tokens, max_prompt_tokens=self.profile.max_input_tokens, progress=self.progress,
                    )
                for row in fresh:
                    table[row.id][row.tier] = row.to_json()
                with open(out / f"{pool}.jsonl", "w", encoding="utf-8") as handle:
                    for rid in table:
                        for row in table[rid].values():
                            handle.write(json.dumps(row, sort_keys=True) + "\n")
                counts[pool] = {"rows": sum(len(v) for v in table.values()), "answered_again": len(fresh)}
            (out / DISTILLED_ON).write_text(json.dumps({t: sorted(ids) for t, ids in sorted(trained_on.items())}, indent=2))
            return counts

        upstream = {"t1": self.cache.key("t1"), "t2": self.cache.key("decoders/t2")}
        return self.cache.run("answers", self._coopt_inputs("answers", "answers", upstream=upstream), build, self.log)

    export_onnx = True  # False when nothing is served from the build (coopt/replayed.py)

    def run(self) -> dict[str, Any]:
        steps = {}
        stages = [("t1", self.build_t1), ("decoders", self.build_decoders), ("answers", self.build_answers)]
        stages.append(("router", self.build_router))
        for name, step in stages + ([("onnx", self.build_onnx)] if self.export_onnx else []):
            steps[name] = step()
        self.steps = steps
        return steps
