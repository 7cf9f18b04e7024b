"""A rollback across a code upgrade (issue 21): version 1 is written, the serving code changes,
version 2 is written from the changed code and served, then `routenlp deploy --version 1` under
traffic puts version 1 back, and version 1 answers with version 1's own code (the fingerprint of
its snapshot, computed by the running stub from the files it imported) with 0 failed requests.
T4 is left out (traffic and the smoke check stop at T2)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bls_router.version_code import CODE_DIR, PROJECT_ROOT, SERVING_CODE, fingerprint
from clients.route_client import RouteClient
from coopt.traffic import TrafficLoop
from export.repository import VERSION_CONFIG
from export.repository_builder import write_repository
from routenlp.deployment import Deployment
from routenlp.repository_api import live_versions
from routenlp_core.tasks import TASK_NAMES

pytestmark = pytest.mark.integration

START_TIMEOUT_S = 600
MARKER = "\n# upgraded serving code (test_version_rollback)\n"


def _upgraded_code(root: Path) -> Path:
    """A copy of the serving code with one module changed, as a later checkout would have it."""
    for entry in SERVING_CODE:
        source, target = PROJECT_ROOT / entry, root / entry
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    service = root / "bls_router" / "service.py"
    service.write_text(service.read_text() + MARKER)
    return root


def _route_meta(grpc_url: str) -> dict:
    client = RouteClient(grpc_url)
    try:
        return client.route("My card has not arrived yet", "cs_intent", max_tier="t2", timeout_s=120).metadata
    finally:
        client.close()


def test_rollback_across_a_code_upgrade_serves_the_old_versions_own_code(tiny_build, tmp_path):
    repository = tmp_path / "model_repository"
    v1 = write_repository(tiny_build, repository, target="cpu")
    v2 = write_repository(tiny_build, repository, target="cpu", code_root=_upgraded_code(tmp_path / "checkout"))
    assert (v1["version"], v2["version"]) == (1, 2) and v2["fresh"]
    # a code change is a new version of every model that runs project code
    assert {m: v for m, v in v2["model_versions"].items() if v == 2} == {"routenlp": 2, "t2": 2, "t3": 2}
    code = {v: fingerprint(repository / "routenlp" / str(v) / CODE_DIR) for v in (1, 2)}
    assert code[1] != code[2]
    assert MARKER in (repository / "routenlp" / "2" / CODE_DIR / "bls_router" / "service.py").read_text()
    assert fingerprint(repository / "t2" / "1" / CODE_DIR) == code[1]
    assert (repository / "routenlp" / "1" / VERSION_CONFIG).is_file()

    state = tmp_path / "state"
    deployment = Deployment(repository, state_dir=state, local_t4=False).start(timeout_s=START_TIMEOUT_S)
    try:
        grpc_url = deployment.server.grpc_url
        meta = _route_meta(grpc_url)  # the server starts on the newest versions: 2
        assert (meta["bls_version"], meta["code"]) == ("2", code[2]), meta
        records = [r for task in TASK_NAMES for r in tiny_build.pools.dev[task][:5]]
        traffic = TrafficLoop(grpc_url, records, concurrency=2).start()
        traffic.wait_for(10)
        command = [
            str(Path(sys.executable).parent / "routenlp"), "deploy", "--version", "1", "--repository", str(repository),
            "--http-url", deployment.server.http_url, "--grpc-url", grpc_url, "--state-dir", str(state),
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
        traffic.wait_for(traffic.sent + 10)
        summary = traffic.stop()
        print(f"\n[rollback across a code upgrade] {done.stdout.strip()}\n{summary}")
        assert done.returncode == 0, done.stdout + done.stderr
        assert summary["failed"] == 0, summary
        assert "1/1" in summary["answered_by_bls/repository_version"], summary
        meta = _route_meta(grpc_url)
        assert (meta["bls_version"], meta["code"]) == ("1", code[1]), meta
        api = deployment.repository_api()
        assert live_versions(api, ["routenlp", "t2", "t3"]) == {"routenlp": 1, "t2": 1, "t3": 1}
        assert [int(v) for v in api.config("routenlp")["version_policy"]["specific"]["versions"]] == [1]
    finally:
        deployment.stop()
