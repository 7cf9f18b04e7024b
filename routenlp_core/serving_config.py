"""The serving config of the routing BLS: `serving_config.json` in each version of the `routenlp` model.

Everything the BLS needs to decide, in one generated file (never hand-edited): the tasks and which
are structured, the router's task ids and tier order, each T1 head's labels (logit order) and
input length, the conformal thresholds delta[task][tier], prices, effective quality bars, latency
SLAs, token budgets, the TEXT size limit and the T4 endpoint settings (base URL, model, the *name*
of the environment variable holding the API key; never a key).

Written by the export (export/repository_builder.py, from the portfolio + build artefacts) and
rewritten by `routenlp calibrate` (new thresholds -> a new version of the `routenlp` model).
Plain Python and JSON: the BLS reads it at initialize and refuses to load on any problem, naming
the file and the field.

Thresholds: a number is delta (escalate when u > delta); null means "never trust this tier for this
task" (conformal gave -inf: no correct calibration example), i.e. always escalate; a missing
entry means "no threshold", i.e. accept (the cascade's rule).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bls_router.cascade import TIERS, CascadePolicy

SERVING_CONFIG_FILE = "serving_config.json"
TOKENIZER_DIR = "tokenizer"
FORMAT_VERSION = 1
# Overrides t4.base_url at initialize: `routenlp serve` and the tests start a local endpoint on a
# free port, a site points the same repository at its own gateway without re-exporting.
ENV_T4_BASE_URL = "ROUTENLP_T4_BASE_URL"
DEFAULT_MAX_TEXT_BYTES = 32 * 1024
DEFAULT_ALPHA = 0.05
DEFAULT_GAMMA = 0.5
# Bound on a BLS call to a local tier (router, T1, T2, T3), queued and answering: the vLLM tiers
# answer from a thread, so a tier whose stub died with the request inside never answers and the
# cascade must fall back well before a client gives up (a generation takes < 2 s here).
DEFAULT_TIER_TIMEOUT_S = 20.0
TARGETS = ("cpu", "ngc")
# config.pbtxt parameters of the routing BLS (export/repository_builder.py writes them): routing
# threads per instance, and requests accepted at once per instance (beyond: UNAVAILABLE).
BLS_WORKERS_PARAMETER, BLS_MAX_PENDING_PARAMETER = "workers", "max_pending"
BLS_WORKERS_DEFAULT, BLS_MAX_PENDING_DEFAULT = 8, 64


class ServingConfigError(ValueError):
    """A serving config that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class T1Head:
    labels: tuple[str, ...]  # in logit order
    max_len: int
    token_level: bool  # fin_ner: per-token logits


@dataclass(frozen=True)
class T4Settings:
    base_url: str  # "" -> ENV_T4_BASE_URL or no T4 (the cascade falls back to T3)
    model: str
    api_key_env: str  # the variable's name; the key is read from the environment per request
    timeout_s: float = 10.0
    max_retries: int = 2
    breaker_failures: int = 5  # consecutive failed calls that open the circuit breaker
    breaker_reset_s: float = 30.0  # how long it stays open before a trial call

    def with_env_overrides(self, environ: Mapping[str, str] = os.environ) -> "T4Settings":
        """Operators tune T4's timeout, retries and breaker per deployment without a new version:
        ROUTENLP_T4_TIMEOUT_S, ROUTENLP_T4_MAX_RETRIES, ROUTENLP_T4_BREAKER_FAILURES, ROUTENLP_T4_BREAKER_RESET_S."""
        overrides: dict[str, Any] = {}
        for field_name, cast in (("timeout_s", float), ("max_retries", int), ("breaker_failures", int), ("breaker_reset_s", float)):
            raw = environ.get(f"ROUTENLP_T4_{field_name.upper()}", "").strip()
            if raw:
                try:
                    overrides[field_name] = cast(raw)
                except ValueError:
                    raise ServingConfigError(f"ROUTENLP_T4_{field_name.upper()}={raw!r} is not a {cast.__name__}") from None
        return replace(self, **overrides)


@dataclass(frozen=True)
class ServingConfig:
    repository_version: int  # the version of router / t1_* / t2 / t3 this config routes to
    portfolio: str
    profile: str
    target: str  # cpu: our python-backend tiers; ngc: stock vllm backend (decoupled T2/T3)
    tasks: tuple[str, ...]
    structured_tasks: tuple[str, ...]
    task_ids: Mapping[str, int]  # router task-embedding index per task
    router_tiers: tuple[str, ...]  # router logit order
    router_max_len: int
    t1: Mapping[str, T1Head]
    thresholds: Mapping[str, Mapping[str, float]]  # -inf: never trust (always escalate); 1.0: accept all
    prices: Mapping[str, float]  # dollars per 1K tokens
    bars: Mapping[str, float]  # effective quality bar per task
    latency_sla_ms: Mapping[str, float]
    max_input_tokens: int
    max_answer_tokens: int
    max_text_bytes: int
    t4: T4Settings
    tier_timeout_s: float = DEFAULT_TIER_TIMEOUT_S
    # alpha per task, gamma per task, cascade_first tasks, escalate_to, and what each cell rests on
    calibration: Mapping[str, Any] = field(default_factory=dict)
    router_models: tuple[str, ...] = ()  # router ablations in this repository version (their POLICY)

    def policy(self) -> CascadePolicy:
        escalate_to = self.calibration.get("escalate_to") or {}
        return CascadePolicy(thresholds=self.thresholds, prices=self.prices, structured_tasks=frozenset(self.structured_tasks), escalate_to=escalate_to)

    def gamma(self, task: str) -> float:
        """The router's confidence level for `task`: the cheapest tier predicted to meet the bar
        with probability >= gamma answers (calibration fits it; 0.5 before any calibration)."""
        return float((self.calibration.get("gamma") or {}).get(task, DEFAULT_GAMMA))

    @property
    def cascade_first(self) -> frozenset[str]:
        """Tasks where T1 always answers first and its own confidence replaces the router's."""
        return frozenset(self.calibration.get("cascade_first") or ())

    def with_thresholds(self, thresholds: Mapping[str, Mapping[str, float]], calibration: Mapping[str, Any]) -> "ServingConfig":
        updated = replace(self, thresholds={t: dict(d) for t, d in thresholds.items()}, calibration=dict(calibration))
        validate(updated)
        return updated

    def t4_base_url(self, environ: Mapping[str, str] = os.environ) -> str:
        """The endpoint to call: ENV_T4_BASE_URL if set, else the config's (may be empty)."""
        return environ.get(ENV_T4_BASE_URL, "").strip() or self.t4.base_url

    # ---- JSON ---------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["format"] = FORMAT_VERSION
        data["thresholds"] = {
            task: {tier: (None if math.isinf(delta) and delta < 0 else delta) for tier, delta in by_tier.items()}
            for task, by_tier in self.thresholds.items()
        }
        return data

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = SERVING_CONFIG_FILE) -> "ServingConfig":
        if not isinstance(data, Mapping):
            raise ServingConfigError(f"{where}: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT_VERSION:
            raise ServingConfigError(f"{where}: format {data.get('format')!r} is not {FORMAT_VERSION}; re-run `routenlp export`")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known - {"format"})
        if unknown:
            raise ServingConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
        missing = sorted(name for name, f in cls.__dataclass_fields__.items() if name not in data and _required(f))
        if missing:
            raise ServingConfigError(f"{where}: missing field(s) {', '.join(missing)}")
        try:
            config = cls(
                repository_version=int(data["repository_version"]),
                portfolio=str(data["portfolio"]),
                profile=str(data["profile"]),
                target=str(data["target"]),
                tasks=tuple(data["tasks"]),
                structured_tasks=tuple(data["structured_tasks"]),
                task_ids={str(k): int(v) for k, v in data["task_ids"].items()},
                router_tiers=tuple(data["router_tiers"]),
                router_max_len=int(data["router_max_len"]),
                t1={
                    task: T1Head(tuple(head["labels"]), int(head["max_len"]), bool(head["token_level"]))
                    for task, head in data["t1"].items()
                },
                thresholds={
                    task: {tier: (-math.inf if delta is None else float(delta)) for tier, delta in by_tier.items()}
                    for task, by_tier in data["thresholds"].items()
                },
                prices={str(k): float(v) for k, v in data["prices"].items()},
                bars={str(k): float(v) for k, v in data["bars"].items()},
                latency_sla_ms={str(k): float(v) for k, v in data["latency_sla_ms"].items()},
                max_input_tokens=int(data["max_input_tokens"]),
                max_answer_tokens=int(data["max_answer_tokens"]),
                max_text_bytes=int(data["max_text_bytes"]),
                t4=T4Settings(**data["t4"]),
                tier_timeout_s=float(data.get("tier_timeout_s", DEFAULT_TIER_TIMEOUT_S)),
                calibration=dict(data.get("calibration") or {}),
                router_models=tuple(data.get("router_models") or ()),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ServingConfigError(f"{where}: malformed field ({type(err).__name__}: {err})") from None
        validate(config, where)
        return config


def _required(f) -> bool:
    from dataclasses import MISSING

    return f.default is MISSING and f.default_factory is MISSING


def validate(config: ServingConfig, where: str = SERVING_CONFIG_FILE) -> None:
    """Cross-field checks; raises ServingConfigError naming the field."""
    from routenlp.tasks import TASKS

    def fail(message: str) -> None:
        raise ServingConfigError(f"{where}: {message}")

    if config.target not in TARGETS:
        fail(f"target {config.target!r} is not one of {', '.join(TARGETS)}")
    unknown = [t for t in config.tasks if t not in TASKS]
    if unknown or not config.tasks:
        fail(f"tasks {unknown or '[]'} are not registered tasks ({', '.join(TASKS)})")
    for task in config.structured_tasks:
        if task not in config.tasks:
            fail(f"structured task {task!r} is not in tasks")
        if task not in config.t1:
            fail(f"structured task {task!r} has no t1 head (labels, max_len)")
    for task, head in config.t1.items():
        if not head.labels or head.max_len < 2:
            fail(f"t1.{task} needs labels and max_len >= 2")
    if sorted(config.router_tiers) != sorted(TIERS):
        fail(f"router_tiers {list(config.router_tiers)} must name each of {', '.join(TIERS)} once")
    for task in config.tasks:
        if task not in config.task_ids:
            fail(f"task_ids has no router task id for {task!r}")
        for name, table in (("bars", config.bars), ("latency_sla_ms", config.latency_sla_ms)):
            if task not in table:
                fail(f"{name} has no entry for {task!r}")
    for tier in TIERS:
        if tier not in config.prices or config.prices[tier] < 0:
            fail(f"prices needs a non-negative price for {tier}")
    for task, by_tier in config.thresholds.items():
        if task not in config.tasks:
            fail(f"thresholds for unknown task {task!r}")
        for tier, delta in by_tier.items():
            if tier not in TIERS:
                fail(f"thresholds.{task} has unknown tier {tier!r}")
            if math.isnan(delta):
                fail(f"thresholds.{task}.{tier} is NaN")
    for task, by_tier in (config.calibration.get("escalate_to") or {}).items():
        if task not in config.tasks:
            fail(f"calibration.escalate_to names unknown task {task!r}")
        for tier, target in by_tier.items():
            if tier not in TIERS or (target is not None and (target not in TIERS or TIERS.index(target) <= TIERS.index(tier))):
                fail(f"calibration.escalate_to.{task}.{tier} = {target!r}: escalation goes from a tier to a pricier one")
    for task, gamma in (config.calibration.get("gamma") or {}).items():
        if task not in config.tasks or not 0.0 <= float(gamma) <= 1.0:
            fail(f"calibration.gamma.{task} = {gamma!r}: a registered task and a probability in [0, 1]")
    for task in config.calibration.get("cascade_first") or ():
        if task not in config.structured_tasks:
            fail(f"calibration.cascade_first names {task!r}, which has no T1 head")
    for name in ("router_max_len", "max_input_tokens", "max_answer_tokens", "max_text_bytes"):
        if getattr(config, name) < 1:
            fail(f"{name} must be >= 1")
    if config.tier_timeout_s <= 0 or config.t4.timeout_s <= 0 or config.t4.max_retries < 0:
        fail("timeouts must be > 0 and t4.max_retries >= 0")


def load_serving_config(version_dir: Path | str) -> ServingConfig:
    path = Path(version_dir) / SERVING_CONFIG_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ServingConfigError(f"{path} not found: it is written by `routenlp export`") from None
    except (OSError, ValueError) as err:
        raise ServingConfigError(f"{path} is not readable JSON: {err}") from None
    return ServingConfig.from_json(data, str(path))


def write_serving_config(config: ServingConfig, path: Path) -> Path:
    """Atomic write (temp file + rename) of an already validated config."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(config.dumps())
    os.replace(tmp, path)
    return path


# ---- from a build (export side: reads artefacts, never imports torch at module level) ----------


def effective_bars(build) -> dict[str, float]:
    """The router step's effective bar per task (what the router was trained against)."""
    steps = getattr(build, "steps", None) or {}
    bars = (steps.get("router") or {}).get("bars")
    if bars is None:
        stamp = build.cache.stamp("router")
        if stamp is None:
            raise ServingConfigError(f"the router step of {build.root} has not been built; run `routenlp export`")
        bars = stamp["summary"]["bars"]
    return {task: float(bar) for task, bar in bars.items()}


def build_serving_config(
    build,
    repository_version: int,
    *,
    target: str = "cpu",
    thresholds: Mapping[str, Mapping[str, float]] | None = None,
    calibration: Mapping[str, Any] | None = None,
    alpha: float | None = None,
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES,
) -> ServingConfig:
    """The serving config of `build` (export.pipeline.PortfolioBuild) for repository version N.

    Without `thresholds`, they are calibrated here from the build's calibration answers
    (bls_router.calibrate; alpha None: each task's alpha from the portfolio); a build without them gets none (every answer accepted) and says so
    in `calibration`."""
    from export.repository_builder import ablation_routers
    from routenlp.tasks import get_task

    portfolio, profile = build.portfolio, build.profile
    router_args = json.loads((build.root / "router" / "router_args.json").read_text())
    tasks = tuple(portfolio.tasks)
    structured = tuple(t for t in tasks if get_task(t).structured)
    heads = {}
    for task in structured:
        folder = build.root / "t1" / task
        model_config = json.loads((folder / "config.json").read_text())
        meta = json.loads((folder / "routenlp_t1.json").read_text())
        id2label = model_config["id2label"]
        labels = tuple(id2label[str(i)] for i in range(len(id2label)))
        heads[task] = T1Head(labels, int(meta["max_len"]), get_task(task).kind == "ner")
    bars = effective_bars(build)
    if thresholds is None:
        from bls_router.calibrate import CalibrationUnavailable, calibrate_build

        try:
            thresholds, calibration = calibrate_build(build, alpha=alpha, bars=bars)
        except CalibrationUnavailable as err:
            thresholds, calibration = {}, {"status": "uncalibrated", "reason": str(err)}
    t4 = portfolio.tiers["t4"]
    config = ServingConfig(
        repository_version=int(repository_version),
        portfolio=portfolio.name,
        profile=profile.name,
        target=target,
        tasks=tasks,
        structured_tasks=structured,
        task_ids={name: i for i, name in enumerate(router_args["args"]["task_names"])},
        router_tiers=tuple(router_args["args"]["tier_names"]),
        router_max_len=int(router_args["meta"]["max_len"]),
        t1=heads,
        thresholds={t: dict(d) for t, d in thresholds.items()},
        prices={tier.name: tier.price_per_1k_tokens for tier in portfolio.ordered_tiers()},
        bars=bars,
        latency_sla_ms={task: policy.latency_sla_ms for task, policy in portfolio.tasks.items()},
        max_input_tokens=profile.max_input_tokens,
        max_answer_tokens=profile.max_answer_tokens,
        max_text_bytes=int(max_text_bytes),
        t4=T4Settings(t4.base_url, t4.model, t4.api_key_env, float(t4.timeout_s), int(t4.max_retries)),
        calibration=dict(calibration or {}),
        router_models=tuple(ablation_routers(build)),
    )
    validate(config)
    return config
