"""The portfolio description: tiers (how each is built and served, what it costs), router settings,
per-task quality bars and SLAs, and build profiles. Loaded from one TOML file."""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from routenlp_core.tasks import TASK_NAMES, get_task

DEFAULT_PORTFOLIO = Path(__file__).with_name("portfolios") / "default.toml"
TIER_ORDER = ("t1", "t2", "t3", "t4")
SERVING_KINDS = ("onnx", "vllm", "openai")
TRAIN_SETTINGS = ("lr", "epochs", "max_per_task", "task_repeats", "train_more", "init_from", "pretrain")


class PortfolioError(ValueError):
    """A portfolio file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Tier:
    name: str
    kind: str
    price_per_1k_tokens: float
    arch: Mapping[str, Any]
    checkpoint: str = ""  # empty: train here from `arch`
    base_url: str = ""  # openai kind: empty means the local endpoint
    model: str = ""
    api_key_env: str = ""
    timeout_s: float = 10.0
    max_retries: int = 2
    # Training settings for a tier trained here (ignored with a checkpoint): `lr`, `epochs`
    # (default: the profile's decoder_epochs), `max_per_task` (training records per task; default
    # the profile's max_train_per_task), `task_repeats` ({task: k}: that task's pairs k times
    # per epoch), `train_more` (tasks whose benchmark train_more split, the rest of their training
    # portion, it also trains on) and `init_from` (a cheaper decoder tier whose trained weights it
    # starts from, e.g. a Mixtral-style MoE upcycled from the Mistral-style T2), `pretrain`
    # ({tokens, lr}: causal-LM pretraining on the benchmark's unlabelled in-domain corpus before the
    # task tuning). Larger models want a lower rate.
    train: Mapping[str, Any] = field(default_factory=dict)

    @property
    def index(self) -> int:
        return TIER_ORDER.index(self.name)

    def cost(self, tokens: int) -> float:
        """Dollars for `tokens` tokens (prompt + completion) at this tier's price."""
        return tokens / 1000.0 * self.price_per_1k_tokens


@dataclass(frozen=True)
class TaskPolicy:
    name: str
    paper_bar: float
    relative_bar: float
    latency_sla_ms: float
    # the cascade's risk level: per tier, expected quality lost by accepting instead of escalating
    alpha: float = 0.05

    def effective_bar(self, tier_quality: Mapping[str, float]) -> float:
        """The paper's bar where the best tier reaches it, else relative_bar x the best tier's (calibration)
        quality. The best tier, not T4: a from-scratch T4 can fall below the cheaper tiers (even to
        0 on a task), and a bar of 0 would call every answer good enough."""
        best = max(tier_quality.values(), default=None)
        if best is None or best >= self.paper_bar:
            return self.paper_bar
        return self.relative_bar * best

    def bar_source(self, bar: float) -> str:
        return "paper" if bar == self.paper_bar else f"{self.relative_bar} x best tier's calibration quality"


@dataclass(frozen=True)
class RouterSettings:
    encoder: Mapping[str, Any]
    task_embedding_dim: int = 64
    mlp_hidden: int = 256
    dropout: float = 0.1
    cost_weight: float = 0.3
    quality_weight: float = 0.5


@dataclass(frozen=True)
class Profile:
    name: str
    vocab_size: int
    max_train_per_task: int
    router_pool_per_task: int
    max_eval_per_task: int
    max_input_tokens: int
    max_answer_tokens: int
    # T1 epochs: one number, or per task (small from-scratch encoders need many steps; some
    # tasks overfit early).
    encoder_epochs: int | Mapping[str, int]
    decoder_epochs: int
    router_epochs: int


    def encoder_epochs_for(self, task: str) -> int:
        if isinstance(self.encoder_epochs, Mapping):
            return int(self.encoder_epochs[task])
        return int(self.encoder_epochs)


@dataclass(frozen=True)
class Portfolio:
    name: str
    tiers: Mapping[str, Tier]
    tasks: Mapping[str, TaskPolicy]
    router: RouterSettings
    profile: Profile
    source: Path = field(default=DEFAULT_PORTFOLIO)

    def ordered_tiers(self) -> list[Tier]:
        return [self.tiers[name] for name in TIER_ORDER]


def _deep_merge(base: dict, override: Mapping) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _require(mapping: Mapping, key: str, where: str) -> Any:
    if key not in mapping:
        raise PortfolioError(f"{where}: missing '{key}'")
    return mapping[key]


def _tier(name: str, raw: Mapping, where: str) -> Tier:
    kind = _require(raw, "kind", where)
    if kind not in SERVING_KINDS:
        raise PortfolioError(f"{where}: kind {kind!r} is not one of {', '.join(SERVING_KINDS)}")
    price = float(_require(raw, "price_per_1k_tokens", where))
    if price < 0:
        raise PortfolioError(f"{where}: price_per_1k_tokens must be >= 0")
    known = {f for f in Tier.__dataclass_fields__ if f != "name"}
    unknown = set(raw) - known
    if unknown:
        raise PortfolioError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    train = dict(raw.get("train", {}))
    unknown_train = set(train) - set(TRAIN_SETTINGS)
    if unknown_train:
        raise PortfolioError(f"{where}: unknown train setting(s) {', '.join(sorted(unknown_train))} (known: {', '.join(TRAIN_SETTINGS)})")
    for task in [*train.get("task_repeats", {}), *train.get("train_more", [])]:
        get_task(task)  # raises UnknownTaskError listing valid tasks
    pretrain = train.get("pretrain")
    if pretrain is not None and (not isinstance(pretrain, Mapping) or set(pretrain) - {"tokens", "lr"} or int(pretrain.get("tokens", 0)) <= 0):
        raise PortfolioError(f"{where}: pretrain must be a table with tokens > 0 and optionally lr, got {pretrain!r}")
    source = train.get("init_from")
    if source is not None and (source not in TIER_ORDER[1:] or TIER_ORDER.index(source) >= TIER_ORDER.index(name)):
        raise PortfolioError(f"{where}: init_from {source!r} must name a cheaper decoder tier ({', '.join(TIER_ORDER[1:TIER_ORDER.index(name)]) or 'none'})")
    return Tier(name=name, **{**raw, "price_per_1k_tokens": price, "arch": dict(raw.get("arch", {})), "train": train})


def parse_portfolio(raw: Mapping, profile: str, source: Path) -> Portfolio:
    where = str(source)
    profiles = _require(raw, "profiles", where)
    if profile not in profiles:
        raise PortfolioError(f"{where}: unknown profile {profile!r}; valid profiles: {', '.join(profiles)}")
    profile_raw = dict(profiles[profile])
    # Checked before the profile's overrides are merged: an override alone is no tier description.
    missing = [t for t in TIER_ORDER if t not in _require(raw, "tiers", where)]
    if missing:
        raise PortfolioError(f"{where}: tiers {', '.join(missing)} missing (need {', '.join(TIER_ORDER)})")
    # Per-profile overrides of tiers/router are merged into the base description.
    raw = _deep_merge(dict(raw), {k: profile_raw.pop(k) for k in ("tiers", "router") if k in profile_raw})
    tiers_raw = raw["tiers"]
    tiers = {name: _tier(name, tiers_raw[name], f"{where} [tiers.{name}]") for name in TIER_ORDER}
    tasks_raw = _require(raw, "tasks", where)
    for name in tasks_raw:
        get_task(name)  # raises UnknownTaskError listing valid tasks
    missing_tasks = [t for t in TASK_NAMES if t not in tasks_raw]
    if missing_tasks:
        raise PortfolioError(f"{where}: tasks {', '.join(missing_tasks)} have no [tasks.NAME] section")
    tasks = {name: TaskPolicy(name=name, **tasks_raw[name]) for name in TASK_NAMES}
    for name, policy in tasks.items():
        if not 0 < policy.alpha < 1:
            raise PortfolioError(f"{where}: tasks.{name}.alpha = {policy.alpha} must be in (0, 1)")
    try:
        return Portfolio(
            name=str(raw.get("name", source.stem)),
            tiers=tiers,
            tasks=tasks,
            router=RouterSettings(**_require(raw, "router", where)),
            profile=Profile(name=profile, **profile_raw),
            source=source,
        )
    except TypeError as err:  # unknown or missing keys in a section
        raise PortfolioError(f"{where}: {err}") from None


def load_portfolio(path: Path | None = None, profile: str = "default") -> Portfolio:
    source = Path(path or DEFAULT_PORTFOLIO)
    try:
        raw = tomllib.loads(source.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise PortfolioError(f"cannot read portfolio {source}: {err}") from None
    return parse_portfolio(raw, profile, source)
