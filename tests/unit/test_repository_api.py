"""routenlp.repository_api.deploy's order and rollback, against a stand-in of Triton's repository API (the
real server: tests/integration/test_reliability.py and test_coopt.py)."""

from __future__ import annotations

import pytest

import routenlp.repository_api as deploy_module
from routenlp.repository_api import DeployError, deploy


class API:
    """index / config / load as Triton answers them; `refuse` names a model whose load fails."""

    def __init__(self, live: dict[str, int], refuse: str | None = None):
        self.live, self.refuse, self.loads = dict(live), refuse, []

    def index(self):
        return [{"name": m, "version": str(v), "state": "READY"} for m, v in self.live.items()]

    def config(self, model):
        return {"name": model}

    def load(self, model, config=None):
        versions = config["version_policy"]["specific"]["versions"]
        self.loads.append((model, versions))
        if model == self.refuse and max(versions) != self.live.get(model):
            raise DeployError(f"load failed for model '{model}'")
        self.live[model] = max(versions)


@pytest.fixture
def repository_v3(monkeypatch):
    # repository version 3 gives router, t1_legal_risk and t2 new versions; t3 keeps version 1
    monkeypatch.setattr(deploy_module, "tier_models", lambda repository, version: {"router": 3, "t1_legal_risk": 3, "t2": 3, "t3": 1})
    monkeypatch.setattr(deploy_module, "bls_version_for", lambda repository, version: 3)
    return "repo"


LIVE = {"router": 1, "t1_legal_risk": 1, "t2": 1, "t3": 1, "routenlp": 1}


def test_a_version_goes_live_tiers_beside_the_old_then_the_bls_then_the_old_tiers_go(repository_v3):
    api = API(LIVE)
    checked = []
    deploy(api, repository_v3, 3, checked.append, log=lambda _: None, drain_s=0)
    assert checked == [3]
    assert api.loads == [
        ("router", [1, 3]), ("t1_legal_risk", [1, 3]), ("t2", [1, 3]), ("routenlp", [3]),  # t3 unchanged: not touched
        ("router", [3]), ("t1_legal_risk", [3]), ("t2", [3]),
    ]  # fmt: skip


def test_a_refused_load_rolls_back_only_what_this_attempt_loaded(repository_v3):
    api = API(LIVE, refuse="t1_legal_risk")
    with pytest.raises(DeployError, match="repository version 3 not deployed"):
        deploy(api, repository_v3, 3, lambda v: None, log=lambda _: None, drain_s=0)
    # router and t1_legal_risk were asked to load; t2 never was, so it is not reloaded (a vLLM
    # engine restart) on the way back
    assert api.loads == [("router", [1, 3]), ("t1_legal_risk", [1, 3]), ("t1_legal_risk", [1]), ("router", [1])]
    assert api.live == LIVE


def test_a_failed_smoke_check_rolls_back_the_tiers_and_the_bls(repository_v3):
    api = API(LIVE)

    def smoke(version):
        raise RuntimeError("cs_intent answered by routenlp version 1, expected 3")

    with pytest.raises(DeployError, match="expected 3"):
        deploy(api, repository_v3, 3, smoke, log=lambda _: None, drain_s=0)
    assert api.loads[-4:] == [("routenlp", [1]), ("t2", [1]), ("t1_legal_risk", [1]), ("router", [1])]
    assert api.live == LIVE
