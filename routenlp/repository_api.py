"""The repository API: the one module that loads, pins, smoke-checks and rolls back model versions
on a running tritonserver. Used by `routenlp deploy`, `routenlp serve` (and its server restarts),
the co-optimization loop and the stub supervisor; it imports none of them.

Put a repository version live without downtime, or roll back: Triton (explicit model-control mode)
loads a model through POST /v2/repository/models/<m>/load; a config override with version_policy
{specific: [N]} pins the version, and the override is version N's own config (its folder keeps
the one it was written with; Triton itself reads only the newest, the model's). Loading a new version
keeps the old one serving until the new one is ready, then drains it, so clients see no gap.

Order: the tier models (router, t1_*, t2, t3; each at the version the repository version names,
and only those not already live) first, then the `routenlp` BLS version that routes that
repository version; then a smoke check (one request per task must be answered by the new
BLS version). A version that fails its smoke check never stays live: the previous versions are
loaded back. The repository API needs the admin key (routenlp serve restricts it).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from routenlp_core.contract import BLS_MODEL
from routenlp_core.serving_config import SERVING_CONFIG_FILE, load_serving_config

ADMIN_HEADER = "admin-key"  # the header `routenlp serve` restricts the repository API to


class DeployError(RuntimeError):
    """A load was refused or the smoke check failed; the message says which model and why."""


@dataclass
class RepositoryAPI:
    """Triton's HTTP model-repository and config endpoints."""

    http_url: str  # host:port
    admin_key: str = ""
    timeout_s: float = 600.0

    def _request(self, method: str, route: str, body: Mapping[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **({ADMIN_HEADER: self.admin_key} if self.admin_key else {})}
        request = urllib.request.Request(f"http://{self.http_url}{route}", data=data if data is not None else (b"" if method == "POST" else None), method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                payload = response.read()
        except urllib.error.HTTPError as err:
            raise DeployError(f"{method} {route}: HTTP {err.code}: {err.read().decode(errors='replace')[:300]}") from None
        return json.loads(payload) if payload else None

    def config(self, model: str) -> dict[str, Any]:
        return self._request("GET", f"/v2/models/{model}/config")

    def load(self, model: str, config: Mapping[str, Any] | None = None) -> None:
        body = {"parameters": {"config": json.dumps(config)}} if config is not None else None
        self._request("POST", f"/v2/repository/models/{model}/load", body)

    def index(self) -> list[dict[str, Any]]:
        return self._request("POST", "/v2/repository/index", {})

    def live(self) -> bool:
        """Whether the server answers its liveness probe at all."""
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/live", timeout=10) as response:
                return response.status == 200
        except OSError:
            return False


def bls_version_for(repository: Path, repository_version: int) -> int:
    """The newest `routenlp` version whose serving config routes `repository_version`."""
    model_dir = Path(repository) / BLS_MODEL
    candidates = []
    for entry in model_dir.iterdir():
        if entry.name.isdigit() and (entry / SERVING_CONFIG_FILE).exists():
            if load_serving_config(entry).repository_version == repository_version:
                candidates.append(int(entry.name))
    if not candidates:
        raise DeployError(f"no {BLS_MODEL} version routes repository version {repository_version}")
    return max(candidates)


def tier_models(repository: Path, repository_version: int) -> dict[str, int]:
    """The tier models of repository version N and the version of each it serves (a model left
    unchanged by the writer keeps its older version)."""
    from export.repository_builder import MANIFEST, model_versions

    try:
        versions = model_versions(repository, repository_version)
    except KeyError:
        manifest = json.loads((Path(repository) / MANIFEST).read_text())
        raise DeployError(f"repository version {repository_version} is not in {MANIFEST} (versions: {[e['version'] for e in manifest['versions']]})") from None
    return {model: version for model, version in versions.items() if model != BLS_MODEL}


def live_versions(api: RepositoryAPI, models: Sequence[str]) -> dict[str, int]:
    """model -> the version Triton serves now (the highest READY one)."""
    ready: dict[str, int] = {}
    for row in api.index():
        if row.get("name") in models and row.get("state") == "READY" and str(row.get("version", "")).isdigit():
            ready[row["name"]] = max(ready.get(row["name"], 0), int(row["version"]))
    return ready


def version_config(repository: Path | None, model: str, version: int) -> dict[str, Any] | None:
    """The config version N of `model` was written with (its folder's own config.pbtxt) as the JSON
    Triton's load API takes; None for a version written before versions kept one."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    from export.repository import VERSION_CONFIG

    path = None if repository is None else Path(repository) / model / str(version) / VERSION_CONFIG
    if path is None or not path.is_file():
        return None
    config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    return json_format.MessageToDict(config, preserving_proto_field_name=True)


def pin_version(api: RepositoryAPI, model: str, *versions: int, repository: Path | None = None) -> None:
    """Serve exactly `versions` of `model` (loads the missing ones, unloads the others), under the
    config the first of them was written with (from `repository`; else the live config)."""
    config = version_config(repository, model, versions[0]) or api.config(model)
    config["version_policy"] = {"specific": {"versions": sorted({int(v) for v in versions})}}
    api.load(model, config)


def restore_order(versions: Mapping[str, int]) -> list[tuple[str, int]]:
    """Tier models before the BLS that routes them (it must never point at a missing version)."""
    return sorted(versions.items(), key=lambda item: (item[0] == BLS_MODEL, item[0]))


def versions_to_restore(recorded: Mapping[str, int], live: Mapping[str, int]) -> list[tuple[str, int]]:
    """(model, version) pairs the server serves differently from `recorded`, in restore order."""
    return [(model, version) for model, version in restore_order(recorded) if live.get(model) != version]


def restore_versions(api: RepositoryAPI, recorded: Mapping[str, int], repository: Path) -> list[tuple[str, int]]:
    """Pin back the versions `recorded` as live (a restarted server loads each model's newest);
    returns what it pinned."""
    restored = versions_to_restore(recorded, live_versions(api, list(recorded)))
    for model, version in restored:
        pin_version(api, model, version, repository=repository)
    return restored


def smoke_check(grpc_url: str, tasks: Sequence[str], text_for: Callable[[str], str]) -> Callable[[int], None]:
    """One request per task must be answered by the expected BLS version."""

    def check(bls_version: int) -> None:
        from clients.route_client import RouteClient

        client = RouteClient(grpc_url)
        try:
            for task in tasks:
                meta = client.route(text_for(task), task, max_tier="t2", timeout_s=120).metadata
                if meta["bls_version"] != str(bls_version):
                    raise RuntimeError(f"{task} answered by routenlp version {meta['bls_version']}, expected {bls_version}")
        finally:
            client.close()

    return check


def deploy(
    api: RepositoryAPI,
    repository: Path,
    repository_version: int,
    smoke: Callable[[int], None],
    log: Callable[[str], None] = print,
    drain_s: float = 2.0,
) -> dict[str, Any]:
    """Load `repository_version` (tiers, then its BLS version), smoke-check it, roll back on failure.
    `smoke(bls_version)` raises when the new deployment does not answer correctly.

    A tier's new version is loaded beside its old one, and the old one unloaded only after the
    new BLS answered and `drain_s` passed: in Triton 2.51 unloading a python-backend version
    that BLS requests were still reaching crashed the server (SIGSEGV) on the default portfolio."""
    tiers = tier_models(repository, repository_version)
    bls_version = bls_version_for(repository, repository_version)
    before = live_versions(api, [*tiers, BLS_MODEL])
    plan = [*tiers.items(), (BLS_MODEL, bls_version)]
    replaced = {model: before[model] for model, version in tiers.items() if model in before and before[model] != version}
    touched: list[str] = []  # models this attempt asked Triton to load: only these are rolled back
    try:
        for model, version in plan:
            if before.get(model) != version:
                beside = replaced.get(model) if model != BLS_MODEL else None
                log(f"  load {model} version {version} (was {before.get(model)}" + (", kept until the new BLS answers)" if beside else ")"))
                touched.append(model)
                pin_version(api, model, version, *([beside] if beside else []), repository=repository)
        smoke(bls_version)
        time.sleep(drain_s if replaced else 0.0)
        for model, old in replaced.items():
            log(f"  unload {model} version {old}")
            pin_version(api, model, tiers[model], repository=repository)
    except Exception as err:
        log(f"  version {repository_version} failed ({err}); rolling back {', '.join(touched) or 'nothing'} to {before}")
        # a model not reached yet still serves its old version alone: re-pinning it would only
        # reload it (a vLLM tier's engine: a minute) for nothing
        for model in reversed(touched):
            if model in before:
                pin_version(api, model, before[model], repository=repository)
        raise DeployError(f"repository version {repository_version} not deployed: {err}") from None
    return {"repository_version": repository_version, "bls_version": bls_version, "before": before, "models": dict(plan)}
