"""Which benchmark records each build step sees, with fixed seeds.

Tier training and router labelling use disjoint parts of the train split: the router must learn
which tier succeeds on text the tiers have not memorised, or it would send everything to T1.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from routenlp.data import load_split
from routenlp.data.records import TRAIN_MORE_SPLIT, split_path
from routenlp.portfolio import Profile
from routenlp_core.tasks import TASK_NAMES

Record = Mapping[str, Any]


@dataclass(frozen=True)
class Pools:
    tier_train: dict[str, list[Record]]  # task -> records the tiers may train on (all but the router pool)
    router: dict[str, list[Record]]  # task -> held-out records every tier answers (router labels)
    dev: dict[str, list[Record]]  # task -> dev records for the quality table
    calibration: dict[str, list[Record]]  # task -> calibration records (conformal thresholds)
    # task -> the rest of the task's training portion (benchmark train_more), for the tiers whose
    # `train_more` setting names the task; tasks without that split are absent
    train_more: dict[str, list[Record]] = field(default_factory=dict)

    def flat(self, pool: str, limit_per_task: int | None = None) -> list[Record]:
        return [r for task in TASK_NAMES for r in getattr(self, pool)[task][:limit_per_task]]


def make_pools(profile: Profile, seed: int = 0) -> Pools:
    tier_train, router, dev, calibration, train_more = {}, {}, {}, {}, {}
    for task in TASK_NAMES:
        train = list(load_split(task, "train"))
        random.Random(f"{seed}:{task}").shuffle(train)
        # At most a quarter of the split goes to the router pool, so small tasks keep training data.
        n_router = min(profile.router_pool_per_task, len(train) // 4)
        router[task] = train[:n_router]
        # The small T1 encoders train on everything left; the decoders, whose training dominates
        # build time, take the first profile.max_train_per_task of it.
        tier_train[task] = train[n_router:]
        dev_split = list(load_split(task, "dev"))
        random.Random(f"{seed}:{task}:dev").shuffle(dev_split)
        dev[task] = dev_split[: profile.max_eval_per_task]
        calibration[task] = list(load_split(task, "calibration"))[: profile.max_eval_per_task]
        if split_path(task, TRAIN_MORE_SPLIT).is_file():
            train_more[task] = list(load_split(task, TRAIN_MORE_SPLIT))
            random.Random(f"{seed}:{task}:{TRAIN_MORE_SPLIT}").shuffle(train_more[task])
    return Pools(tier_train, router, dev, calibration, train_more)
