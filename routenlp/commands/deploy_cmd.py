"""`routenlp deploy --version N`: put repository version N live on the running server (or roll
back to it), smoke-check it, keep the previous versions if it fails."""

from __future__ import annotations

import sys
from pathlib import Path

from routenlp.repository_api import smoke_check  # noqa: F401  (re-exported for callers of the command module)
from routenlp_core.paths import MODEL_REPOSITORY_DIR


def register(sub) -> None:
    parser = sub.add_parser("deploy", help="load repository version N into the running tritonserver (rollback included)")
    parser.add_argument("--version", type=int, required=True, help="repository version (routenlp_repository.json)")
    parser.add_argument("--repository", type=Path, default=MODEL_REPOSITORY_DIR)
    parser.add_argument("--http-url", default="127.0.0.1:8000", help="Triton HTTP address (repository API)")
    parser.add_argument("--grpc-url", default="127.0.0.1:8001", help="Triton gRPC address (smoke check)")
    parser.add_argument("--state-dir", type=Path, default=None, help="where `routenlp serve` keeps admin_key (default var/)")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from routenlp.data import load_split
    from routenlp.deployment import STATE_DIR, admin_key
    from routenlp.repository_api import DeployError, RepositoryAPI, deploy
    from routenlp_core.tasks import TASK_NAMES

    api = RepositoryAPI(args.http_url, admin_key(args.state_dir or STATE_DIR))
    check = smoke_check(args.grpc_url, TASK_NAMES, lambda task: load_split(task, "dev")[0]["text"])
    try:
        result = deploy(api, args.repository, args.version, check)
    except (DeployError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"repository version {result['repository_version']} live (routenlp version {result['bls_version']}); before: {result['before']}")
    return 0
