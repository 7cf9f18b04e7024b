"""Capacity sizing: a seeded discrete-event simulation of the tier queues (numpy only).

Arrivals are Poisson at `load_qpm` queries per minute, split across tiers by the routing mix
(Poisson thinning: each tier sees an independent Poisson stream). Each self-hosted tier is a
first-come-first-served queue with `replicas x workers` servers (an M/G/c queue); T4 is an external
API rate-limited to `t4_rate_per_s` request starts per second. Service times are drawn (bootstrap)
from measured per-tier samples in ms, so the latency of a request is its wait plus its tier's
measured latency. The input file (results/demo.json) carries {"service_ms": {tier: [ms, ...]},
"mix": {tier: share}}.

Each tier is simulated with its own seeded draws that do not depend on the load or the replica
count (common random numbers): a higher load only compresses the same arrival gaps, and waits in
a FCFS queue grow monotonically with that, so sizing results are monotone in load by construction.
Overall percentiles weight each tier's latencies by its share of the mix.
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from routenlp_core.contract import TIERS

DEFAULT_WORKERS = {"t1": 8, "t2": 4, "t3": 4}  # concurrent requests per replica (model instances)
DEFAULT_T4_RATE_PER_S = 60.0
DEFAULT_REQUESTS_PER_TIER = 20_000
WARMUP_SHARE = 0.1  # the queues start empty: the first arrivals of each run are not counted
SERVICE_BOUND_SLACK = 1.1  # a tier that cannot meet the SLA even unqueued: queueing may add 10% to p99
MAX_REPLICAS = 4096


class CapacityInputError(ValueError):
    """The sizing input is missing or malformed; the message says what to fix."""


def load_profile(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """(service_ms per tier, normalised mix) from a JSON file with keys "service_ms" and "mix"."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CapacityInputError(f"{path} not found: run `routenlp demo` first (it writes results/demo.json)") from None
    except ValueError as err:
        raise CapacityInputError(f"{path} is not JSON: {err}") from None
    if not isinstance(data, dict) or "service_ms" not in data or "mix" not in data:
        raise CapacityInputError(f'{path} needs the keys "service_ms" {{tier: [ms, ...]}} and "mix" {{tier: share}}')
    return check_inputs(data["mix"], data["service_ms"])


def check_inputs(mix: Mapping[str, float], service_ms: Mapping[str, Sequence[float]]) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    unknown = sorted(set(mix) - set(TIERS))
    if unknown:
        raise CapacityInputError(f"unknown tier(s) in mix: {', '.join(unknown)}; valid tiers: {', '.join(TIERS)}")
    if any(not isinstance(v, (int, float)) or v < 0 or math.isnan(v) for v in mix.values()):
        raise CapacityInputError("mix shares must be non-negative numbers")
    total = float(sum(mix.values()))
    if total <= 0:
        raise CapacityInputError("mix shares sum to zero")
    shares = {t: float(mix[t]) / total for t in TIERS if mix.get(t, 0) > 0}
    samples: dict[str, np.ndarray] = {}
    for tier in shares:
        values = np.asarray(service_ms.get(tier, ()), dtype=float)
        if values.size == 0:
            raise CapacityInputError(f"tier {tier} has a share of the mix but no service_ms samples")
        if not np.all(np.isfinite(values)) or np.any(values < 0):
            raise CapacityInputError(f"service_ms of {tier} must be finite, non-negative milliseconds")
        samples[tier] = values
    return samples, shares


def _draws(tier: str, samples: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit-mean exponential gaps and bootstrapped service times, fixed by (seed, tier)."""
    rng = np.random.default_rng([seed, TIERS.index(tier)])
    return rng.standard_exponential(n), rng.choice(samples, size=n, replace=True)


def fcfs_waits(arrivals_ms: np.ndarray, service_ms: np.ndarray, servers: int) -> np.ndarray:
    """Waiting times of a FCFS queue with `servers` identical servers (arrivals sorted)."""
    free = [0.0] * servers  # heap of the times each server becomes free
    waits = np.empty(len(arrivals_ms))
    for i, (arrival, service) in enumerate(zip(arrivals_ms.tolist(), service_ms.tolist())):
        start = max(arrival, free[0])
        heapq.heapreplace(free, start + service)
        waits[i] = start - arrival
    return waits


def rate_limited_waits(arrivals_ms: np.ndarray, rate_per_s: float) -> np.ndarray:
    """Waits for an admission limit of `rate_per_s` starts per second (the API's own latency is the service)."""
    spacing = 1000.0 / rate_per_s
    waits = np.empty(len(arrivals_ms))
    next_start = -math.inf
    for i, arrival in enumerate(arrivals_ms.tolist()):
        start = max(arrival, next_start)
        next_start = start + spacing
        waits[i] = start - arrival
    return waits


def simulate_tier(tier: str, rate_per_ms: float, samples: np.ndarray, *, servers: int | None = None,
                  rate_limit_per_s: float | None = None, n: int = DEFAULT_REQUESTS_PER_TIER, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(waits, latencies) in ms of `n` arrivals at one tier, warm-up removed."""
    gaps, service = _draws(tier, samples, n, seed)
    arrivals = np.cumsum(gaps / rate_per_ms)
    if rate_limit_per_s is not None:
        waits = rate_limited_waits(arrivals, rate_limit_per_s)
    else:
        waits = fcfs_waits(arrivals, service, int(servers or 1))
    keep = slice(int(n * WARMUP_SHARE), None)
    return waits[keep], waits[keep] + service[keep]


def weighted_quantile(values: Sequence[np.ndarray], weights: Sequence[float], q: float) -> float:
    """Quantile of a mixture: values[k] drawn from component k, which has probability weights[k]."""
    flat = np.concatenate(values)
    w = np.concatenate([np.full(len(v), wk / len(v)) for v, wk in zip(values, weights)])
    order = np.argsort(flat, kind="stable")
    cumulative = np.cumsum(w[order])
    index = int(np.searchsorted(cumulative, q * cumulative[-1], side="left"))
    return float(flat[order][min(index, len(flat) - 1)])


def simulate(load_qpm: float, mix: Mapping[str, float], service_samples: Mapping[str, Sequence[float]], *,
             replicas: Mapping[str, int] | None = None, workers: Mapping[str, int] | None = None,
             t4_rate_per_s: float = DEFAULT_T4_RATE_PER_S, sla_ms: float | None = None,
             n_per_tier: int = DEFAULT_REQUESTS_PER_TIER, seed: int = 0) -> dict:
    """p50 / p99 end-to-end latency and SLA-violation share at one load, overall and per tier."""
    samples, shares = check_inputs(mix, service_samples)
    workers = {**DEFAULT_WORKERS, **(workers or {})}
    replicas = {t: 1 for t in DEFAULT_WORKERS} | dict(replicas or {})
    rate = load_qpm / 60_000.0
    tiers, latencies = {}, []
    for tier, share in shares.items():
        if tier == "t4":
            capacity_per_ms = t4_rate_per_s / 1000.0
            _, lat = simulate_tier(tier, rate * share, samples[tier], rate_limit_per_s=t4_rate_per_s, n=n_per_tier, seed=seed)
        else:
            servers = int(replicas[tier]) * int(workers[tier])
            capacity_per_ms = servers / float(np.mean(samples[tier]))
            _, lat = simulate_tier(tier, rate * share, samples[tier], servers=servers, n=n_per_tier, seed=seed)
        latencies.append(lat)
        tiers[tier] = {
            "share": share,
            "utilization": rate * share / capacity_per_ms if capacity_per_ms > 0 else math.inf,
            "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)),
            **({"sla_violation": float(np.mean(lat > sla_ms))} if sla_ms is not None else {}),
        }
    weights = list(shares.values())
    result = {
        "load_qpm": load_qpm,
        "p50_ms": weighted_quantile(latencies, weights, 0.50),
        "p99_ms": weighted_quantile(latencies, weights, 0.99),
        "tiers": tiers,
    }
    if sla_ms is not None:
        result["sla_violation"] = float(sum(w * np.mean(lat > sla_ms) for w, lat in zip(weights, latencies)))
    return result


def _tier_meets(lat: np.ndarray, sla_ms: float, target: float, bound_p99: float | None) -> bool:
    if bound_p99 is not None:  # service-bound: only queueing is sized
        return float(np.percentile(lat, 99)) <= bound_p99
    return float(np.mean(lat <= sla_ms)) >= target


def replicas_for(load_qpm: float, mix: Mapping[str, float], service_samples: Mapping[str, Sequence[float]],
                 sla_ms: float, target_p99: float = 0.99, *, workers: Mapping[str, int] | None = None,
                 t4_rate_per_s: float = DEFAULT_T4_RATE_PER_S, n_per_tier: int = DEFAULT_REQUESTS_PER_TIER,
                 seed: int = 0) -> dict:
    """Smallest replicas per self-hosted tier such that at least `target_p99` of its requests finish
    within `sla_ms` (0.99: the tier's p99 <= sla_ms). Meeting it per tier bounds the overall
    violation share by 1 - target_p99 too. A tier whose measured latency alone misses that is
    "service-bound" (more replicas cannot help: it needs faster hardware or a lighter model); it is
    sized so queueing adds at most 10% to its unqueued p99. T4 is not replicated: it is feasible
    while its arrival rate stays under the rate limit."""
    if not 0 < target_p99 < 1:
        raise ValueError("target_p99 is the share of requests that must meet the SLA, in (0, 1)")
    samples, shares = check_inputs(mix, service_samples)
    workers = {**DEFAULT_WORKERS, **(workers or {})}
    rate = load_qpm / 60_000.0
    replicas: dict[str, int] = {}
    service_bound: list[str] = []
    notes: list[str] = []
    feasible = True
    for tier in DEFAULT_WORKERS:
        if tier not in shares:
            replicas[tier] = 0
            continue
        tier_rate = rate * shares[tier]
        _, unqueued = _draws(tier, samples[tier], n_per_tier, seed)
        bound = None
        if float(np.mean(unqueued <= sla_ms)) < target_p99:
            bound = SERVICE_BOUND_SLACK * float(np.percentile(unqueued, 99))
            service_bound.append(tier)
        # Stability needs utilisation < 1; search upwards from there (doubling, then bisection).
        low = max(1, math.floor(tier_rate * float(np.mean(samples[tier])) / workers[tier]) + 1)

        def meets(r: int) -> bool:
            _, lat = simulate_tier(tier, tier_rate, samples[tier], servers=r * workers[tier], n=n_per_tier, seed=seed)
            return _tier_meets(lat, sla_ms, target_p99, bound)

        high = low
        while not meets(high):
            low = high + 1
            high *= 2
            if high > MAX_REPLICAS:
                raise RuntimeError(f"{tier}: no replica count up to {MAX_REPLICAS} meets the SLA")
        while low < high:
            mid = (low + high) // 2
            if meets(mid):
                high = mid
            else:
                low = mid + 1
        replicas[tier] = high
    if "t4" in shares:
        t4_rps = rate * shares["t4"] * 1000.0
        if t4_rps >= t4_rate_per_s:
            feasible = False
            notes.append(f"t4 receives {t4_rps:.1f} req/s, at or over its rate limit of {t4_rate_per_s:g} req/s")
    if service_bound:
        feasible = False
        notes.append(f"service-bound (latency alone misses the SLA): {', '.join(service_bound)}")
    outcome = simulate(load_qpm, shares, samples, replicas=replicas, workers=workers, t4_rate_per_s=t4_rate_per_s,
                       sla_ms=sla_ms, n_per_tier=n_per_tier, seed=seed)
    return {"load_qpm": load_qpm, "replicas": replicas, "feasible": feasible, "service_bound": service_bound,
            "notes": notes, **{k: outcome[k] for k in ("p50_ms", "p99_ms", "sla_violation", "tiers")}}
