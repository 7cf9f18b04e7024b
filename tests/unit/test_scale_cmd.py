"""`routenlp scale` on a synthetic profile: Always-T4 saturates its 60 req/s limit, routing does not."""

import json

from routenlp.cli import main


def test_scale_compares_routing_with_always_t4(tmp_path, capsys):
    profile = {"mix": {"t1": 0.7, "t2": 0.2, "t4": 0.1}, "service_ms": {"t1": [2.0, 3.0], "t2": [40.0, 60.0], "t3": [], "t4": [80.0, 120.0]}}
    (tmp_path / "demo.json").write_text(json.dumps(profile))
    assert main(["scale", "--from", str(tmp_path / "demo.json"), "--loads", "1200,6000", "--results", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "scale.json").read_text())["loads"]
    low, high = rows
    assert low["routenlp"]["sla_violation"] == 0 and low["always-t4"]["sla_violation"] == 0  # 20 req/s: both fine
    assert high["always-t4"]["t4_utilization"] > 1 and high["always-t4"]["sla_violation"] > 0.5  # 100 req/s > 60
    assert high["routenlp"]["t4_utilization"] < 1 and high["routenlp"]["p99_ms"] < high["always-t4"]["p99_ms"]
    assert (tmp_path / "plots" / "scale.png").stat().st_size > 0
    assert "always-t4 p99_ms" in capsys.readouterr().out
