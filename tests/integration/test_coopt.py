"""The co-optimization loop end to end on the tiny portfolio, against a real tritonserver: failures
mined through the live server, T4 asked for distillation data through it, T2/T1 fine-tuned, the
router retrained, each new repository version swapped in under traffic (0 failed requests), the
random-distillation ablation from the same base (slow suite), and the best version left live."""

from __future__ import annotations

import json

import pytest

from clients.route_client import RouteClient
from export.repository_builder import MANIFEST, write_repository
from routenlp.cli import main
from routenlp.deployment import Deployment

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def live(tiny_build, tmp_path_factory):
    root = tmp_path_factory.mktemp("coopt")
    repository = root / "model_repository"
    write_repository(tiny_build, repository, target="cpu")
    with Deployment(repository, state_dir=root / "state") as deployment:
        yield root, deployment


# CI runs the targeted loop (3 swaps: base, iteration 1, promotion); the slow suite adds the
# random-distillation ablation from the same base (5 swaps), as `routenlp coopt` does by default.
@pytest.mark.parametrize(
    "modes", [pytest.param(("targeted",), id="targeted"), pytest.param(("targeted", "random"), id="targeted+random", marks=pytest.mark.slow)]
)
def test_coopt_runs_with_live_swaps_and_leaves_the_best_version_live(live, tiny_build, modes):
    root, deployment = live
    results = root / "results" / "+".join(modes)
    argv = [
        "coopt", "--profile", "tiny", "--iterations", "1", "--quiet", "--repository", str(deployment.repository), "--results", str(results),
        "--url", deployment.server.grpc_url, "--http-url", deployment.server.http_url, "--state-dir", str(deployment.state_dir),
        "--modes", ",".join(modes),
    ]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((results / "coopt.json").read_text())
    assert (results / "coopt.md").exists() and (results / "plots" / "coopt_convergence.png").stat().st_size > 0
    assert sorted(result["runs"]) == sorted(modes)
    for mode in modes:
        base, first = result["runs"][mode]
        assert base["iteration"] == 0 and first["iteration"] == 1
        assert 0 < first["cost_ratio"] and 0 < first["quality_ratio"] and first["errors"] == 0
        assert first["failures"] > 0 and first["distilled"]["asked_teacher"] > 0
        print(f"\n[coopt {mode}] cost ratio {base['cost_ratio']} -> {first['cost_ratio']}, quality ratio {base['quality_ratio']} -> {first['quality_ratio']}, distilled {first['distilled']}")
    assert result["runs"]["targeted"][1]["clusters_used"] > 0
    # every swap (base, targeted, [back to base, random,] promotion) happened under traffic, none failed
    print(f"[coopt swaps] {[(s['label'], s['sent'], s['failed']) for s in result['swaps']]}")
    assert len(result["swaps"]) == 1 + 2 * len(modes) and all(s["sent"] > 0 and s["failed"] == 0 and s["error"] is None for s in result["swaps"])
    # the loop leaves T3 alone: every version it wrote serves the base's T3 folder
    manifest = json.loads((deployment.repository / MANIFEST).read_text())
    base_t3 = manifest["versions"][0]["model_versions"]["t3"]
    assert {entry["model_versions"]["t3"] for entry in manifest["versions"]} == {base_t3}
    # the promoted version is the one answering now
    promoted = result["promoted"]["version"]
    meta = RouteClient(deployment.server.grpc_url).route("We may terminate this agreement at any time.", "legal_risk").metadata
    assert meta["repository_version"] == promoted
    _check_iteration_labels(tiny_build)


def _check_iteration_labels(tiny_build):
    """An iteration never labels a tier with its answers on text it was trained on, and keeps the
    base build's bars (every iteration is scored alike)."""
    from coopt.iteration import DISTILLED_ON

    iteration = tiny_build.root / "coopt" / "targeted" / "iter1"
    trained_on = json.loads((iteration / "answers" / DISTILLED_ON).read_text())
    assert trained_on, "the targeted iteration distilled nothing"

    def rows(root):
        table = {}
        for line in (root / "answers" / "router.jsonl").read_text().splitlines():
            row = json.loads(line)
            table[(row["id"], row["tier"])] = row
        return table

    before, after = rows(tiny_build.root), rows(iteration)
    assert before.keys() == after.keys()
    for tier, ids in trained_on.items():
        assert ids and all(after[(rid, tier)] == before[(rid, tier)] for rid in ids)
    assert json.loads((iteration / "router" / "router_args.json").read_text())["meta"]["bars"] == tiny_build.cache.stamp("router")["summary"]["bars"]
