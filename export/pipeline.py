"""`routenlp export`: build the whole portfolio from the portfolio description, step by step.

tokenizer -> T1 heads -> decoder tiers (T2, T3, T4) -> all-pairs answers on the router pool and
dev pool -> router (+ its loss-term ablations) -> ONNX export (parity + latency) -> model
repository version -> results.
Each step is cached (export/stage_cache.py), so a second run with nothing changed is instant.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from export.pools import Pools, make_pools
from export.stage_cache import CODE_MODULES, StageCache, fingerprint
from routenlp.data.corpus import corpus_digest, load_corpus
from routenlp.portfolio import TIER_ORDER, Portfolio
from routenlp_core.answers import format_target, prompt_text
from routenlp_core.contract import ROUTER_ABLATION_MODELS
from routenlp_core.paths import ARTIFACTS_DIR, BENCHMARK_DIR
from routenlp_core.tasks import TASK_NAMES

DECODER_TIERS = ("t2", "t3", "t4")
ANSWER_POOLS = ("router", "dev", "calibration")
# The modules whose code each step runs (part of its cache key).
STEP_CODE = {
    "tokenizer": ("export.tokenizer", "export.pools", "routenlp_core.answers"),
    "t1": ("export.t1", "routenlp_core.t1_codec", "routenlp_core.encoder_inputs", "export.encoder", "export.training"),
    "decoder": ("export.decoder", "export.train_decoder", "export.training", "routenlp_core.answers"),
    "answers": ("export.labeling", "export.hf_generate", "export.t1", "routenlp_core.t1_codec", "routenlp_core.uncertainty", "routenlp_core.answers", "routenlp.metrics"),
    "router": ("export.router_model", "export.train_router", "export.router_loss", "export.quality", "routenlp_core.encoder_inputs", "export.encoder", "export.training"),
    "onnx": ("export.onnx_export", "export.router_model", "export.t1", "routenlp_core.t1_codec"),
    "router_ablations": ("export.router_model", "export.train_router", "export.router_loss", "export.quality", "export.encoder", "export.training", "export.onnx_export"),
}

# The router's loss-term ablations (paper 5): model name -> the loss weights it is trained with.
ROUTER_ABLATION_LOSS_WEIGHTS = dict(zip(ROUTER_ABLATION_MODELS, ({"cost_weight": 0.0}, {"quality_weight": 0.0}), strict=True))
SEED = 0
# Default learning rate for a decoder trained here; a tier's `train.lr` overrides it.
DECODER_LR = 3e-3
DECODER_BATCH = 16
# Small from-scratch encoders gain from more optimizer steps, so small batches.
T1_BATCH = 16


@contextmanager
def torch_threads(n: int):
    """Run small-model training on `n` threads: tiny encoders gain nothing from a second thread,
    and when another process holds a core, torch's spinning workers slow them several-fold."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _code_fingerprint(*modules: str) -> str:
    """Hash of the source of the modules a step runs: editing them rebuilds the step."""
    return fingerprint(_module_sources(modules))


def _module_sources(modules) -> dict[str, str]:
    import importlib

    return {m: Path(importlib.import_module(m).__file__).read_text() for m in modules}


def _module_hashes(modules) -> dict[str, str]:
    """Per-module source hashes: recorded beside the key (not part of it), so a stage from a pack
    built with other code can name the modules that differ."""
    return {m: fingerprint({m: source}) for m, source in _module_sources(modules).items()}


def _benchmark_fingerprint() -> str:
    # The manifest lists counts and source hashes: a rebuilt benchmark changes it.
    return fingerprint({"manifest": (BENCHMARK_DIR / "manifest.json").read_text()})


class PortfolioBuild:
    """The build steps over one portfolio + profile; artefacts under artifacts/<portfolio>-<profile>/."""

    def __init__(self, portfolio: Portfolio, root: Path | None = None, progress: bool = True, log: Callable[[str], None] = print):
        self.portfolio = portfolio
        self.profile = portfolio.profile
        self.root = Path(root or ARTIFACTS_DIR / f"{portfolio.name}-{self.profile.name}")
        self.cache = StageCache(self.root)
        self.progress = progress
        self.log = log
        self._pools: Pools | None = None
        self._tokenizer = None

    # ------------------------------------------------------------------ shared inputs
    @property
    def pools(self) -> Pools:
        if self._pools is None:
            self._pools = make_pools(self.profile, SEED)
        return self._pools

    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import PreTrainedTokenizerFast

            self._tokenizer = PreTrainedTokenizerFast.from_pretrained(str(self.root / "tokenizer"))
        return self._tokenizer

    def _inputs(self, step: str, **extra: Any) -> dict[str, Any]:
        code = _code_fingerprint(*STEP_CODE[step])
        return {"step": step, "profile": asdict(self.profile), "benchmark": _benchmark_fingerprint(), "code": code, CODE_MODULES: _module_hashes(STEP_CODE[step]), **extra}

    # ------------------------------------------------------------------ steps
    def build_tokenizer(self) -> dict:
        from export.tokenizer import train_tokenizer

        def build(out: Path) -> dict:
            texts = []
            for record in self.pools.flat("tier_train", self.profile.max_train_per_task):
                texts += [prompt_text(record), format_target(record)]
            tokenizer = train_tokenizer(texts, self.profile.vocab_size, out)
            return {"vocab_size": len(tokenizer), "texts": len(texts)}

        return self.cache.run("tokenizer", self._inputs("tokenizer"), build, self.log)

    def build_t1(self) -> dict:
        from export.t1 import T1_TASKS, evaluate_t1, save_t1, train_t1

        tier = self.portfolio.tiers["t1"]

        def build(out: Path) -> dict:
            summary = {}
            for task in T1_TASKS:
                with torch_threads(1):
                    model, stats = train_t1(
                        task, self.pools.tier_train[task], self.tokenizer(), tier.arch,
                        epochs=self.profile.encoder_epochs_for(task), max_len=self.profile.max_input_tokens,
                        batch_size=T1_BATCH, seed=SEED, progress=self.progress,
                    )
                dev = evaluate_t1(model, self.tokenizer(), task, self.pools.dev[task], self.profile.max_input_tokens)
                save_t1(model, self.tokenizer(), out / task, {"train": stats, "dev": dev, "max_len": self.profile.max_input_tokens})
                summary[task] = {"train_seconds": stats.get("train_seconds"), "dev": dev["score"]}
            return summary

        inputs = self._inputs("t1", arch=dict(tier.arch), tokenizer=self.cache.key("tokenizer"))
        return self.cache.run("t1", inputs, build, self.log)

    def decoder_dir(self, tier: str) -> Path:
        checkpoint = self.portfolio.tiers[tier].checkpoint
        return Path(checkpoint) if checkpoint else self.root / "decoders" / tier

    def build_decoders(self) -> dict:
        return {tier_name: self.build_decoder(tier_name) for tier_name in DECODER_TIERS}

    def build_decoder(self, tier_name: str) -> dict:
        """One decoder tier trained from its arch (or a real checkpoint used as given). The tiers are
        independent steps, so they can also be built in parallel processes."""
        import torch
        from transformers import AutoModelForCausalLM

        from export.decoder import DecoderArch, build_decoder, count_parameters, save_decoder
        from export.grow import grow
        from export.train_decoder import train_decoder

        tier = self.portfolio.tiers[tier_name]
        if tier.checkpoint:  # a real checkpoint (e.g. Mistral-7B) is used as given
            return {"checkpoint": tier.checkpoint}
        lr = float(tier.train.get("lr", DECODER_LR))
        epochs = int(tier.train.get("epochs", self.profile.decoder_epochs))
        data = self.decoder_data(tier_name)
        source = tier.train.get("init_from")

        def build(out: Path) -> dict:
            pairs = self.decoder_pairs(**data)
            arch = DecoderArch(**tier.arch, max_positions=max(512, self.profile.max_input_tokens + self.profile.max_answer_tokens))
            torch.manual_seed(SEED)
            if source:  # grown from the cheaper tier's trained weights, then trained further
                if self.portfolio.tiers[source].checkpoint:
                    raise ValueError(f"{tier_name} grows from {source} (init_from), but {source} is a configured checkpoint with "
                                     f"its own tokenizer: give {tier_name} a checkpoint too, or drop its init_from")
                model = grow(AutoModelForCausalLM.from_pretrained(str(self.decoder_dir(source))), arch, self.tokenizer())
            else:
                model = build_decoder(arch, self.tokenizer())
            start = f", from {source}" if source else ""
            self.log(f"  {tier.name}: {arch.family}{start}, {count_parameters(model) / 1e6:.2f}M parameters, {len(pairs)} pairs")
            pretrained = self.pretrain(tier_name, model) if pretrain else {}
            stats = train_decoder(
                model, self.tokenizer(), pairs, epochs=epochs, batch_size=DECODER_BATCH,
                lr=lr, max_len=self.profile.max_input_tokens + self.profile.max_answer_tokens, seed=SEED, progress=self.progress,
            )
            save_decoder(model, self.tokenizer(), out, {"arch": asdict(arch), "train": stats, "tier": tier.name, **({"pretrain": pretrained} if pretrained else {})})
            return {"parameters": count_parameters(model), "train_seconds": stats["train_seconds"], "final_loss": stats["final_loss"],
                    **({"pretrain_seconds": pretrained["train_seconds"], "pretrain_tokens": pretrained["tokens_seen"]} if pretrained else {})}

        grown = {}
        if source:  # the code that grows it is part of its key (depth growth only where it adds layers)
            grown = {"init_from": self.decoder_key(source), "upcycle_code": _code_fingerprint("export.upcycle")}
            if tier.arch.get("layers", 0) > self.portfolio.tiers[source].arch.get("layers", 0):
                grown["grow_code"] = _code_fingerprint("export.grow")
        pretrain = dict(tier.train.get("pretrain", {}))
        if pretrain:  # only a pretraining tier's key names the corpus and the code that pretrains
            grown |= {"pretrain": pretrain, "corpus": corpus_digest(), "pretrain_code": _code_fingerprint("export.pretrain")}
        inputs = self._inputs("decoder", tier=tier.name, arch=dict(tier.arch), tokenizer=self.cache.key("tokenizer"), lr=lr, epochs=epochs, data=data, **grown)
        return self.cache.run(f"decoders/{tier_name}", inputs, build, self.log)

    def pretrain(self, tier_name: str, model) -> dict:
        """Pretrain a decoder in place on the in-domain corpus (the tier's `pretrain` setting:
        `tokens`, optional `lr`, default the tier's) before its task tuning; returns the stats."""
        from export.pretrain import pretrain_decoder

        train = self.portfolio.tiers[tier_name].train
        settings = train["pretrain"]
        texts = [d["text"] for d in load_corpus()]
        self.log(f"  {tier_name}: pretraining on {int(settings['tokens']):,} corpus tokens ({len(texts)} documents)")
        return pretrain_decoder(
            model, self.tokenizer(), texts, tokens=int(settings["tokens"]), block_len=self.profile.max_input_tokens + self.profile.max_answer_tokens,
            batch_size=DECODER_BATCH, lr=float(settings.get("lr", train.get("lr", DECODER_LR))), seed=SEED, progress=self.progress,
        )

    def tier_key(self, tier_name: str) -> str:
        """What identifies a tier's weights (T1: its heads' build step)."""
        return self.cache.key("t1") if tier_name == "t1" else self.decoder_key(tier_name)

    def decoder_key(self, tier_name: str) -> str:
        """What identifies a decoder's weights: its build step's key, or for a configured
        checkpoint the hash of its config and file sizes (a different checkpoint relabels)."""
        checkpoint = self.portfolio.tiers[tier_name].checkpoint
        if not checkpoint:
            return self.cache.key(f"decoders/{tier_name}")
        folder = Path(checkpoint)
        files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
        return fingerprint({"config": (folder / "config.json").read_text(), "files": files})

    def decoder_data(self, tier_name: str) -> dict[str, Any]:
        """How much of the training pool a decoder tier sees: records per task, per-task repeats
        (short structured pairs are cheap, so a tier can take them several times per epoch) and the
        tasks whose benchmark train_more split it also trains on (a bigger tier has seen more)."""
        train = self.portfolio.tiers[tier_name].train
        data = {
            "max_per_task": int(train.get("max_per_task", self.profile.max_train_per_task)),
            "task_repeats": {task: int(k) for task, k in sorted(dict(train.get("task_repeats", {})).items())},
        }
        more = sorted(train.get("train_more", []))
        missing = [task for task in more if task not in self.pools.train_more]
        if missing:
            raise ValueError(f"{tier_name} trains on train_more of {', '.join(missing)}, but the benchmark has no such split "
                             f"(tasks with one: {', '.join(sorted(self.pools.train_more)) or 'none'})")
        return {**data, "train_more": more} if more else data  # tiers without it keep their stage key's inputs

    def decoder_pairs(self, max_per_task: int, task_repeats: dict[str, int], train_more: Sequence[str] = ()) -> list[tuple[str, str]]:
        pairs = []
        for task in TASK_NAMES:
            records = self.pools.tier_train[task][:max_per_task] + (self.pools.train_more[task] if task in train_more else [])
            pairs += [(prompt_text(r), format_target(r)) for r in records] * task_repeats.get(task, 1)
        return pairs

    def build_tier_answers(self, tier: str) -> dict:
        """One tier answers the router, dev and calibration pools (its share of the all-pairs
        evaluation): a step per tier, so a changed tier relabels alone and the tiers can label in
        parallel processes."""

        def build(out: Path) -> dict:
            counts = {}
            for pool in ANSWER_POOLS:
                rows = self._label(tier, pool)
                with open(out / f"{pool}.jsonl", "w", encoding="utf-8") as handle:
                    for row in rows:
                        handle.write(json.dumps(row.to_json(), sort_keys=True) + "\n")
                counts[pool] = len(rows)
            return counts

        upstream = self.cache.key("t1") if tier == "t1" else self.decoder_key(tier)
        return self.cache.run(f"tier_answers/{tier}", self._inputs("answers", tier=tier, upstream=upstream), build, self.log)

    def _label(self, tier: str, pool: str) -> list:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from export.labeling import label_decoder, label_t1
        from export.t1 import T1_TASKS, load_t1

        if tier == "t1":
            rows = []
            for task in T1_TASKS:
                model, meta = load_t1(self.root / "t1" / task)
                rows += label_t1(task, model, self.tokenizer(), getattr(self.pools, pool)[task], max_len=meta["max_len"])
            return rows
        # Each decoder with its own tokenizer: a configured checkpoint brings its own.
        model = AutoModelForCausalLM.from_pretrained(str(self.decoder_dir(tier))).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(self.decoder_dir(tier)))
        return label_decoder(
            tier, model, tokenizer, self.pools.flat(pool),
            max_new_tokens=self.profile.max_answer_tokens, max_prompt_tokens=self.profile.max_input_tokens, progress=self.progress,
        )

    def build_answers(self) -> dict:
        """Every tier's answers on the router, dev and calibration pools in one table per pool (the
        all-pairs evaluation); calibration answers give the conformal thresholds."""
        for tier in TIER_ORDER:
            self.build_tier_answers(tier)

        def build(out: Path) -> dict:
            counts = {}
            for pool in ANSWER_POOLS:
                parts = [(self.root / "tier_answers" / tier / f"{pool}.jsonl").read_text(encoding="utf-8") for tier in TIER_ORDER]
                (out / f"{pool}.jsonl").write_text("".join(parts), encoding="utf-8")
                counts[pool] = sum(part.count("\n") for part in parts)
            return counts

        upstream = {tier: self.cache.key(f"tier_answers/{tier}") for tier in TIER_ORDER}
        return self.cache.run("answers", {"step": "answers", "upstream": upstream}, build, self.log)

    def load_answers(self, pool: str) -> dict[str, dict[str, dict]]:
        table: dict[str, dict[str, dict]] = {}
        with open(self.root / "answers" / f"{pool}.jsonl", encoding="utf-8") as handle:
            for line in handle:
                row = json.loads(line)
                table.setdefault(row["id"], {})[row["tier"]] = row
        return table

    def bars_for(self, dev_quality: dict[str, dict[str, float]]) -> dict[str, float]:
        """The quality bar per task the router learns against (coopt iterations keep the base's)."""
        from export.quality import effective_bars

        return effective_bars(self.portfolio, dev_quality)

    def build_router(self) -> dict:
        from export.quality import quality_table
        from export.router_model import save_router

        def build(out: Path) -> dict:
            dev_quality = quality_table(self.load_answers("dev"), self.pools.flat("dev"))
            # the bars are a fitted setting: from the calibration pool, so dev only reports
            bars = self.bars_for(quality_table(self.load_answers("calibration"), self.pools.flat("calibration")))
            model, summary = self._train_router(bars)
            save_router(model, out, {"train": summary["train"], "dev_accuracy": summary["dev_accuracy_vs_oracle"], "bars": bars, "max_len": self.profile.max_input_tokens})
            return {**summary, "bars": bars, "dev_quality": dev_quality}

        inputs = self._inputs("router", settings=asdict(self.portfolio.router), answers=self.cache.key("answers"))
        return self.cache.run("router", inputs, build, self.log)

    def _train_router(self, bars: dict[str, float], **loss_weights: float):
        """A router trained on the router pool's all-tier answers (loss weights overridable), and
        its accuracy vs the oracle tier on dev."""
        from export.quality import quality_matrix
        from export.train_router import router_accuracy, train_router

        records = self.pools.flat("router")
        quality, _ = quality_matrix(self.load_answers("router"), records, bars)
        prices = [t.price_per_1k_tokens for t in self.portfolio.ordered_tiers()]
        with torch_threads(1):
            model, stats = train_router(
                records, quality, bars, self.tokenizer(), self.portfolio.router, prices,
                epochs=self.profile.router_epochs, max_len=self.profile.max_input_tokens, seed=SEED, progress=self.progress, **loss_weights,
            )
        dev_records = self.pools.flat("dev")
        dev_q, _ = quality_matrix(self.load_answers("dev"), dev_records, bars)
        accuracy = router_accuracy(model, self.tokenizer(), dev_records, dev_q, bars, self.profile.max_input_tokens)
        return model, {"dev_accuracy_vs_oracle": round(accuracy, 4), "train": stats}

    def build_router_ablations(self) -> dict:
        """The loss-term ablations of the router, trained against the router's bars and exported to
        ONNX with the same parity check: <name>/ (torch) and <name>.onnx per ablation."""
        from export.onnx_export import export_onnx, parity_check, spec_for_model
        from export.router_model import encode_router_inputs, save_router

        def build(out: Path) -> dict:
            bars = self.cache.stamp("router")["summary"]["bars"]
            summary = {}
            for name, weights in ROUTER_ABLATION_LOSS_WEIGHTS.items():
                model, trained = self._train_router(bars, **weights)
                save_router(model, out / name, {"train": trained["train"], "ablation": weights, "bars": bars, "max_len": self.profile.max_input_tokens})
                spec = spec_for_model(model)
                path = export_onnx(model, spec, out / f"{name}.onnx")
                sample = encode_router_inputs(model, self.tokenizer(), self.pools.flat("dev"), self.profile.max_input_tokens)
                summary[name] = {"loss_weights": weights, "dev_accuracy_vs_oracle": trained["dev_accuracy_vs_oracle"], "parity": parity_check(model, path, spec, sample)}
            return summary

        inputs = self._inputs("router_ablations", settings=asdict(self.portfolio.router), answers=self.cache.key("answers"), router=self.cache.key("router"))
        return self.cache.run("router_ablations", inputs, build, self.log)

    def build_onnx(self) -> dict:
        from export.onnx_export import export_onnx, latency_table, parity_check, spec_for_model
        from export.router_model import encode_router_inputs, load_router
        from export.t1 import T1_TASKS, load_t1

        def build(out: Path) -> dict:
            from routenlp_core.encoder_inputs import encode_texts, pad_batch

            summary = {"parity": {}, "latency": []}
            router, meta = load_router(self.root / "router")
            models = {"router": (router, encode_router_inputs(router, self.tokenizer(), self.pools.flat("dev"), meta["max_len"]))}
            for task in T1_TASKS:
                model, t1_meta = load_t1(self.root / "t1" / task)
                ids, mask = pad_batch(encode_texts(self.tokenizer(), [r["text"] for r in self.pools.dev[task]], t1_meta["max_len"]), self.tokenizer().pad_token_id)
                models[f"t1_{task}"] = (model, {"input_ids": ids, "attention_mask": mask})
            for name, (model, sample) in models.items():
                spec = spec_for_model(model)
                path = export_onnx(model, spec, out / f"{name}.onnx")
                summary["parity"][name] = parity_check(model, path, spec, sample)
                summary["latency"] += latency_table(model, path, sample, spec=spec, name=name)
            return summary

        inputs = self._inputs("onnx", router=self.cache.key("router"), t1=self.cache.key("t1"))
        return self.cache.run("onnx", inputs, build, self.log)

    def stage_names(self) -> list[str]:
        """The stage-cache folders of a full build (a tier given as a checkpoint has none)."""
        decoders = [f"decoders/{t}" for t in DECODER_TIERS if not self.portfolio.tiers[t].checkpoint]
        return ["tokenizer", "t1", *decoders, *(f"tier_answers/{t}" for t in TIER_ORDER), "answers", "router", "router_ablations", "onnx"]

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        steps: dict[str, Any] = {}
        step_seconds = {}
        for name, step in (
            ("tokenizer", self.build_tokenizer),
            ("t1", self.build_t1),
            ("decoders", self.build_decoders),
            ("answers", self.build_answers),
            ("router", self.build_router),
            ("router_ablations", self.build_router_ablations),
            ("onnx", self.build_onnx),
        ):
            step_started = time.perf_counter()
            steps[name] = step()
            step_seconds[name] = round(time.perf_counter() - step_started, 1)
            self.log(f"[{name}] {step_seconds[name]:.1f}s")
        steps["seconds"] = round(time.perf_counter() - started, 1)
        steps["step_seconds"] = step_seconds  # this run's: a cached step takes ~0 s
        built = {stage: self.cache.build_seconds(stage) for stage in self.stage_names()}
        steps["stage_build_seconds"] = built  # what each cached artefact cost when it was built
        steps["full_build_seconds"] = round(sum(built.values()), 1) if all(v is not None for v in built.values()) else None
        return steps
