"""The ladder table on a real (tiny) build: `routenlp export`'s report carries it, its qualities
are the build's dev quality table, and the printed report ends with its rules."""

from __future__ import annotations

import json

import pytest

from export.report import format_report, portfolio_report, write_report
from routenlp.portfolio import TIER_ORDER
from routenlp_core.tasks import TASK_NAMES

pytestmark = pytest.mark.integration


def test_export_report_holds_the_ladder_table(tiny_build, tmp_path):
    report = portfolio_report(tiny_build, tiny_build.steps, {"version": 1, "target": "cpu", "path": "-"}, tiny_build.load_answers("dev"))
    ladder = report["ladder"]
    assert list(ladder["tasks"]) == list(TASK_NAMES)
    for task, row in ladder["tasks"].items():
        # the point estimates are the build's own dev quality table; intervals hold them
        assert {t: c["quality"] for t, c in row["tiers"].items()} == pytest.approx(report["quality"][task]["tiers"], abs=1e-4)
        assert all(c["ci95"][0] <= c["quality"] <= c["ci95"][1] for c in row["tiers"].values())
        assert row["bar"] == report["quality"][task]["effective_bar"]
        assert row["nestedness"]["value"] is None or 0.0 <= row["nestedness"]["value"] <= 1.0
    assert set(ladder["oracle"]["mix"]) == set(TIER_ORDER) and ladder["oracle"]["cost_ratio"] > 0
    assert len(ladder["rules"]) == 7 and ladder["failures"] == [r["detail"] for r in ladder["rules"] if not r["passed"]]
    path = write_report(report, tmp_path / "portfolio.json")
    assert json.loads(path.read_text(encoding="utf-8"))["ladder"]["tasks"].keys() == ladder["tasks"].keys()
    printed = format_report(report)
    assert "ladder on dev" in printed and "ladder rules:" in printed
