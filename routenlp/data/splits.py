"""Fixed-seed splitting by document (or by blocks within documents), capped sampling that keeps
"none" to at most half, and removal of evaluation records that repeat a training text."""

from __future__ import annotations

import random
import re
import unicodedata
from collections.abc import Callable, Iterable

from routenlp.data.records import SPLITS, record_group

# Share of each task's raw records (counted by whole documents) that goes to each split.
SPLIT_FRACTIONS: dict[str, float] = {"train": 0.70, "calibration": 0.15, "dev": 0.15}
# When two splits are equally short of their share, fill the evaluation splits first, so a task
# with few documents (FIN5 has 5) still gets a dev and a calibration document.
_TIE_ORDER = ("dev", "calibration", "train")
EVALUATION_SPLITS = ("calibration", "dev")


def seeded_rng(seed: int, *purpose: str) -> random.Random:
    """A generator per (seed, task, purpose): str seeds are hashed with SHA-512, so stable across runs."""
    return random.Random(":".join([str(seed), *purpose]))


def _assign(groups: dict[str, list[dict]], rng: random.Random, every_split: bool) -> dict[str, str]:
    """group -> split: groups in shuffled order each go to the split with the most records still
    missing from its share; with every_split the last groups go to still-empty splits."""
    order = sorted(groups)
    rng.shuffle(order)
    total = sum(len(members) for members in groups.values())
    filled = {split: 0 for split in SPLITS}
    chosen: dict[str, str] = {}
    for position, key in enumerate(order):
        empty = [s for s in _TIE_ORDER if not filled[s]]
        if every_split and empty and len(order) - position <= len(empty):
            split = empty[0]  # the last groups go to still-empty splits: every split gets one
        else:
            split = max(_TIE_ORDER, key=lambda s: (SPLIT_FRACTIONS[s] * total - filled[s], -_TIE_ORDER.index(s)))
        filled[split] += len(groups[key])
        chosen[key] = split
    return chosen


def _grouped(records: Iterable[dict], key: Callable[[dict], str]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for record in sorted(records, key=lambda r: r["id"]):
        groups.setdefault(key(record), []).append(record)
    return groups


def split_by_group(records: list[dict], rng: random.Random) -> dict[str, list[dict]]:
    """Assign whole groups (documents) to splits: groups in shuffled order each go to the split
    with the most records still missing from its share (each split gets a group when there are
    at least three). No group is ever cut, so no document leaks across splits."""
    groups = _grouped(records, record_group)
    chosen = _assign(groups, rng, every_split=True)
    out: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for key, split in chosen.items():  # in assignment order
        out[split].extend(groups[key])
    return out


def split_within_documents(records: list[dict], rng: random.Random, block_size: int, gap: int = 1) -> dict[str, list[dict]]:
    """Stratified split for tasks with few, long documents (FIN5 has 5): each document is cut
    into contiguous blocks of block_size records (id order) and its blocks are assigned like
    documents in split_by_group, so every split holds a share of every document with at least
    three blocks and calibration and dev are drawn alike. Where two neighbouring blocks go to
    different splits, `gap` records on the evaluation side of the boundary are dropped, so a
    sentence that continues its neighbour is not evaluated against it."""
    out: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for _, members in sorted(_grouped(records, record_group).items()):
        blocks = {f"{index // block_size:06d}": members[index:index + block_size] for index in range(0, len(members), block_size)}
        chosen = _assign(blocks, rng, every_split=len(blocks) >= len(SPLITS))
        keys = sorted(blocks)
        for position, key in enumerate(keys):
            block, split = blocks[key], chosen[key]
            if split in EVALUATION_SPLITS:
                cut_head = position > 0 and chosen[keys[position - 1]] != split
                cut_tail = position + 1 < len(keys) and chosen[keys[position + 1]] != split
                block = block[gap if cut_head else 0:len(block) - (gap if cut_tail else 0)]
            out[split].extend(block)
    return out


def normalised_text(text: str) -> str:
    """Case, Unicode form, punctuation and spacing folded away: "5 . 2 COLLATERAL ." and
    "5.2 Collateral." are one text for duplicate checks."""
    return " ".join(re.sub(r"\W+", " ", unicodedata.normalize("NFKC", text).casefold()).split())


def drop_training_duplicates(records: list[dict], train: Iterable[dict]) -> list[dict]:
    """records without those whose normalised text is also a training record's text."""
    seen = {normalised_text(r["text"]) for r in train}
    return [r for r in records if normalised_text(r["text"]) not in seen]


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
