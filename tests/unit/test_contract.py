"""The served contract (routenlp_core/contract.py) is the one spelling everything else uses."""

import importlib
from pathlib import Path

from export.repository_builder import routenlp_model_spec
from routenlp_core import contract

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_entry_model_config_declares_exactly_the_contract_tensors():
    for target in contract.TARGETS:
        spec = routenlp_model_spec(target)
        assert spec.name == contract.BLS_MODEL
        assert [t.name for t in spec.inputs] == list(contract.INPUTS)
        assert {t.name for t in spec.inputs if t.optional} == set(contract.OPTIONAL_INPUTS)
        assert [t.name for t in spec.outputs] == list(contract.OUTPUTS)


def test_the_standalone_k8s_reload_script_names_the_same_entry_model():
    # It runs in any image with the standard library only, so it keeps its own copy of the name.
    path = REPO_ROOT / "docker" / "k8s" / "reload_repository.py"
    namespace = {"__name__": "reload_repository"}  # run from text: no __pycache__ left in docker/
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    assert namespace["BLS_MODEL"] == contract.BLS_MODEL


def test_every_policy_is_routed_or_fixed_and_ablations_name_their_router_model():
    assert set(contract.POLICIES) == set(contract.ROUTED_POLICIES) | set(contract.FIXED_TIER_POLICIES)
    assert set(contract.FIXED_TIER_POLICIES.values()) == set(contract.TIERS)
    assert set(contract.ROUTER_ABLATION_POLICIES.values()) == set(contract.ROUTER_ABLATION_MODELS)


def test_adapters_of_versions_written_before_the_core_split_still_import():
    # A version's model.py is a copy of the adapter of its day; these are the paths it imported.
    old_paths = {
        "bls_router.cascade": "routenlp_core.cascade",
        "bls_router.serving_config": "routenlp_core.serving_config",
        "bls_router.t1_codec": "routenlp_core.t1_codec",
        "bls_router.uncertainty": "routenlp_core.uncertainty",
        "routenlp.answers": "routenlp_core.answers",
        "routenlp.tasks": "routenlp_core.tasks",
    }
    for old, new in old_paths.items():
        assert importlib.import_module(old) is importlib.import_module(new), old
    from bls_router.service import Generation, RequestError  # noqa: F401
    from export.vllm_tier_config import EngineArgsError, read_engine_args  # noqa: F401
