"""Fixed-seed splitting by document, and capped sampling that keeps "none" to at most half."""

from __future__ import annotations

import random

from routenlp.data.records import SPLITS, record_group

# Share of each task's raw records (counted by whole documents) that goes to each split.
SPLIT_FRACTIONS: dict[str, float] = {"train": 0.70, "calibration": 0.15, "dev": 0.15}
# When two splits are equally short of their share, fill the evaluation splits first, so a task
# with few documents (FIN5 has 5) still gets a dev and a calibration document.
_TIE_ORDER = ("dev", "calibration", "train")


def seeded_rng(seed: int, *purpose: str) -> random.Random:
    """A generator per (seed, task, purpose): str seeds are hashed with SHA-512, so stable across runs."""
    return random.Random(":".join([str(seed), *purpose]))


def split_by_group(records: list[dict], rng: random.Random) -> dict[str, list[dict]]:
    """Assign whole groups (documents) to splits: groups in shuffled order each go to the split
    with the most records still missing from its share (each split gets a group when there are
    at least three). No group is ever cut, so no document leaks across splits."""
    groups: dict[str, list[dict]] = {}
    for record in sorted(records, key=lambda r: r["id"]):
        groups.setdefault(record_group(record), []).append(record)
    order = sorted(groups)
    rng.shuffle(order)
    total = len(records)
    filled = {split: 0 for split in SPLITS}
    out: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for position, key in enumerate(order):
        empty = [s for s in _TIE_ORDER if not filled[s]]
        if empty and len(order) - position <= len(empty):
            split = empty[0]  # the last groups go to still-empty splits: every split gets one
        else:
            split = max(_TIE_ORDER, key=lambda s: (SPLIT_FRACTIONS[s] * total - filled[s], -_TIE_ORDER.index(s)))
        filled[split] += len(groups[key])
        out[split].extend(groups[key])
    return out


def sample_capped(records: list[dict], cap: int, rng: random.Random, none_label: str | None = None) -> list[dict]:
    """At most cap records, sorted by id. With none_label, "none" records are first cut to at most
    as many as the labelled ones, and a cap then shrinks both parts in proportion."""
    records = sorted(records, key=lambda r: r["id"])
    if none_label is None:
        chosen = records if len(records) <= cap else rng.sample(records, cap)
        return sorted(chosen, key=lambda r: r["id"])
    labelled = [r for r in records if r["target"] != none_label]
    nones = [r for r in records if r["target"] == none_label]
    n_none = min(len(nones), len(labelled))
    pool = len(labelled) + n_none
    if pool > cap:
        n_none = cap * n_none // pool  # floor keeps none <= half for any cap
    n_labelled = min(len(labelled), cap - n_none)
    chosen = rng.sample(labelled, n_labelled) + rng.sample(nones, n_none)
    return sorted(chosen, key=lambda r: r["id"])
