"""Seeded, label-stratified samples of benchmark records (the bench's records, the confirm split)."""

from __future__ import annotations


def stratified_sample(records: list[dict], n: int | None, seed: int) -> list[dict]:
    """n records drawn at random, stratified by label (each label's share kept, largest remainders
    first), in a seeded order; never the first n by id, which covers few labels and one document."""
    import random

    if n is None or n >= len(records):
        return list(records)
    rng = random.Random(seed)
    strata: dict[str, list[dict]] = {}
    for record in records:
        strata.setdefault(label_of(record), []).append(record)
    quotas = {label: n * len(rows) / len(records) for label, rows in strata.items()}
    counts = {label: int(q) for label, q in quotas.items()}
    for label in sorted(quotas, key=lambda l: (quotas[l] - counts[l], rng.random()), reverse=True)[: n - sum(counts.values())]:
        counts[label] += 1
    chosen = [r for label, rows in sorted(strata.items()) for r in rng.sample(rows, counts[label])]
    rng.shuffle(chosen)
    return chosen


def label_of(record: dict) -> str:
    """The stratum: the label of a classification, the first entity type of NER, else one stratum."""
    from routenlp_core.tasks import get_task

    target = record.get("target")
    if get_task(record["task"]).kind == "classification":
        return str(target)
    if isinstance(target, list):
        return next((str(t) for t in target if str(t) != "O"), "O")
    return "all"
