"""The restart policy of `routenlp serve` (the restart itself: tests/integration/test_serve_command.py)."""

import json

from routenlp.repository_api import versions_to_restore
from routenlp.server_restarts import RESTARTS_FILE, RestartBudget, append_restart


def test_the_budget_allows_max_restarts_per_window_then_refuses_until_the_oldest_ages_out():
    budget = RestartBudget(max_restarts=2, window_s=100.0)
    assert budget.allow(0.0)
    budget.record(0.0)
    assert budget.allow(10.0)
    budget.record(10.0)
    assert not budget.allow(50.0)
    assert budget.allow(100.5)  # the restart at 0 left the window


def test_a_zero_budget_never_restarts():
    assert not RestartBudget(max_restarts=0).allow(0.0)


def test_only_versions_that_differ_are_pinned_back_tiers_before_the_bls():
    recorded = {"routenlp": 7, "t2": 3, "router": 2, "t1_fin_ner": 1}
    live = {"routenlp": 9, "t2": 4, "router": 2, "t1_fin_ner": 1}  # a restart loads the newest
    assert versions_to_restore(recorded, live) == [("t2", 3), ("routenlp", 7)]
    assert versions_to_restore(recorded, dict(recorded)) == []
    assert versions_to_restore({"t3": 1}, {}) == [("t3", 1)]  # not loaded at all after the restart


def test_restarts_are_appended_one_json_line_each(tmp_path):
    append_restart(tmp_path, {"ended": "killed by SIGSEGV", "restart_s": 41.0})
    append_restart(tmp_path, {"ended": "killed by SIGABRT", "restart_s": 39.5})
    lines = (tmp_path / RESTARTS_FILE).read_text().splitlines()
    assert [json.loads(line)["ended"] for line in lines] == ["killed by SIGSEGV", "killed by SIGABRT"]
