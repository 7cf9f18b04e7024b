"""The serving config of a build: export/pipeline.PortfolioBuild artefacts -> routenlp_core.serving_config.

A build step (reads the build's artefacts and calibrates); the schema and its checks live in the core,
which the serving BLS reads without any of this.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from routenlp_core.serving_config import (
    DEFAULT_MAX_TEXT_BYTES,
    ServingConfig,
    ServingConfigError,
    T1Head,
    T4Settings,
    validate,
)


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
    (export.calibrate; alpha None: each task's alpha from the portfolio); a build without them gets none (every answer accepted) and says so
    in `calibration`."""
    from export.repository_builder import ablation_routers
    from routenlp_core.tasks import get_task

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
        from export.calibrate import CalibrationUnavailable, calibrate_build

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
