"""routenlp.capacity against queueing theory (M/M/1, Erlang C), monotonicity, determinism, CLI."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest

from routenlp.capacity import CapacityInputError, fcfs_waits, load_profile, replicas_for, simulate, simulate_tier


def erlang_c_wait(rate: float, mean_service: float, servers: int) -> float:
    """Mean waiting time of M/M/c (Erlang C)."""
    load = rate * mean_service  # offered load in erlangs
    rho = load / servers
    below = sum(load**k / math.factorial(k) for k in range(servers))
    top = load**servers / math.factorial(servers) / (1 - rho)
    p_wait = top / (below + top)
    return p_wait * mean_service / (servers * (1 - rho))


def exponential_samples(mean_ms: float, n: int = 200_000) -> np.ndarray:
    return np.random.default_rng(123).exponential(mean_ms, n)


@pytest.mark.parametrize("servers,rho", [(1, 0.7), (4, 0.8), (8, 0.6)])
def test_mean_wait_matches_analytic_mmc(servers, rho):
    samples = exponential_samples(10.0)
    mean = float(samples.mean())  # the bootstrap's own mean, so only queueing error is measured
    rate = rho * servers / 10.0  # per ms
    # Queue waits are strongly autocorrelated: average a few independent seeded runs.
    waits = [simulate_tier("t1", rate, samples, servers=servers, n=150_000, seed=seed)[0].mean() for seed in range(4)]
    expected = erlang_c_wait(rate, mean, servers)
    if servers == 1:  # M/M/1: W_q = rho / (mu - lambda)
        assert expected == pytest.approx(rate * mean / (1 / mean - rate), rel=1e-9)
    assert float(np.mean(waits)) == pytest.approx(expected, rel=0.06)


def test_fcfs_waits_by_hand():
    # Two servers: the third arrival waits for the first server to free up at t=5.
    waits = fcfs_waits(np.array([0.0, 1.0, 2.0]), np.array([5.0, 10.0, 1.0]), servers=2)
    assert waits.tolist() == [0.0, 0.0, 3.0]


def synthetic(seed: int = 1) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    samples = {
        "t1": rng.lognormal(np.log(8), 0.3, 400),
        "t2": rng.lognormal(np.log(120), 0.4, 300),
        "t3": rng.lognormal(np.log(250), 0.3, 300),
        "t4": rng.lognormal(np.log(400), 0.3, 200),
    }
    return samples, {"t1": 0.6, "t2": 0.25, "t3": 0.1, "t4": 0.05}


def test_replicas_grow_with_load_and_meet_the_sla():
    samples, mix = synthetic()
    loads = [1_000, 5_000, 10_000, 20_000, 40_000]
    results = [replicas_for(load, mix, samples, sla_ms=600, target_p99=0.99, n_per_tier=8_000) for load in loads]
    for tier in ("t1", "t2", "t3"):
        counts = [r["replicas"][tier] for r in results]
        assert counts == sorted(counts), (tier, counts)
    assert results[-1]["replicas"]["t3"] > results[0]["replicas"]["t3"]
    for r in results:
        assert r["feasible"] and r["sla_violation"] <= 0.01
        # one replica fewer on a queued tier breaks that tier's SLA (the search returns the minimum)
        for tier in ("t2", "t3"):
            fewer = r["replicas"][tier] - 1
            if fewer >= 1 and r["tiers"][tier]["utilization"] * (fewer + 1) / fewer < 1:
                _, lat = simulate_tier(tier, r["load_qpm"] / 60_000 * mix[tier] / sum(mix.values()), samples[tier], servers=fewer * 4, n=8_000)
                assert np.mean(lat <= 600) < 0.99


def test_service_bound_tier_and_t4_rate_limit_are_reported():
    samples, mix = synthetic()
    tight = replicas_for(5_000, mix, samples, sla_ms=200, n_per_tier=4_000)
    assert "t3" in tight["service_bound"] and not tight["feasible"]
    heavy_t4 = replicas_for(100_000, {"t1": 0.5, "t4": 0.5}, samples, sla_ms=2_000, n_per_tier=4_000)
    assert not heavy_t4["feasible"] and any("rate limit" in note for note in heavy_t4["notes"])
    assert heavy_t4["replicas"]["t2"] == 0


def test_deterministic_by_seed():
    samples, mix = synthetic()
    a = simulate(8_000, mix, samples, sla_ms=500, n_per_tier=5_000, seed=3)
    b = simulate(8_000, mix, samples, sla_ms=500, n_per_tier=5_000, seed=3)
    c = simulate(8_000, mix, samples, sla_ms=500, n_per_tier=5_000, seed=4)
    assert a == b
    assert a["p99_ms"] != c["p99_ms"]
    assert replicas_for(8_000, mix, samples, 600, n_per_tier=5_000, seed=3) == replicas_for(8_000, mix, samples, 600, n_per_tier=5_000, seed=3)


def test_load_profile_rejects_bad_input(tmp_path):
    path = tmp_path / "demo.json"
    with pytest.raises(CapacityInputError, match="routenlp demo"):
        load_profile(path)
    path.write_text(json.dumps({"mix": {"t1": 1.0}}))
    with pytest.raises(CapacityInputError, match="service_ms"):
        load_profile(path)
    path.write_text(json.dumps({"service_ms": {"t1": [5.0]}, "mix": {"t1": 0.5, "t2": 0.5}}))
    with pytest.raises(CapacityInputError, match="t2"):
        load_profile(path)
    path.write_text(json.dumps({"service_ms": {"t1": [5.0, 7.0]}, "mix": {"t1": 2.0, "t5": 0}}))
    with pytest.raises(CapacityInputError, match="t5"):
        load_profile(path)


def test_capacity_command_prints_table_and_writes_json(tmp_path, capsys):
    from routenlp.commands import capacity_cmd

    samples, mix = synthetic()
    source = tmp_path / "demo.json"
    source.write_text(json.dumps({"service_ms": {t: v.tolist() for t, v in samples.items()}, "mix": mix}))
    parser = argparse.ArgumentParser()
    capacity_cmd.register(parser.add_subparsers())
    out = tmp_path / "capacity.json"
    args = parser.parse_args(["capacity", "--from", str(source), "--loads", "1000,20000", "--sla-ms", "600", "--json", str(out)])
    assert args.handler(args) == 0
    printed = capsys.readouterr().out
    assert "load_qpm" in printed and "20000" in printed
    report = json.loads(out.read_text())
    assert [r["load_qpm"] for r in report["loads"]] == [1000, 20000]
    assert set(report["loads"][0]["replicas"]) == {"t1", "t2", "t3"}
    args = parser.parse_args(["capacity", "--from", str(tmp_path / "missing.json")])
    assert args.handler(args) == 1
    assert "routenlp demo" in capsys.readouterr().err
