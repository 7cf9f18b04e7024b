"""What the build tells the cpu vLLM tier adapter (bls_router/triton_models/vllm_tier.py): the engine
arguments in the version's model.json and the config.pbtxt parameters it reads. Written by
export/vllm_tier_config.py, read by the adapter, so both import the names from here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MODEL_JSON = "model.json"
# Config parameter the cpu adapter exports before importing vLLM (GiB of KV cache per engine).
KVCACHE_PARAMETER = "VLLM_CPU_KVCACHE_SPACE"
KVCACHE_GIB_DEFAULT = "1"
# Config parameter of the cpu adapter: requests inside the engine at once (its engine thread adds
# queued requests between engine steps up to this many; vLLM's scheduler batches them).
ENGINE_BATCH_PARAMETER = "engine_batch"
ENGINE_BATCH_DEFAULT = "32"


class EngineArgsError(ValueError):
    """model.json is missing, malformed, or points at no checkpoint."""


def read_engine_args(version_dir: Path | str) -> dict[str, Any]:
    """Engine arguments from `version_dir/model.json`, with "model" resolved to an existing
    checkpoint folder (relative paths are relative to the version folder)."""
    version_dir = Path(version_dir)
    path = version_dir / MODEL_JSON
    try:
        args = json.loads(path.read_text())
    except FileNotFoundError:
        raise EngineArgsError(f"{path} not found: it holds the vLLM engine arguments") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise EngineArgsError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(args, dict):
        raise EngineArgsError(f"{path} must hold a JSON object of engine arguments, got {type(args).__name__}")
    model = args.get("model")
    if not isinstance(model, str) or not model:
        raise EngineArgsError(f"{path} needs \"model\": the checkpoint folder (relative to {version_dir} or absolute)")
    checkpoint = (version_dir / model).resolve()
    if not checkpoint.is_dir():
        raise EngineArgsError(f"checkpoint folder {checkpoint} (\"model\": {model!r} in {path}) does not exist")
    if not (checkpoint / "config.json").is_file():
        raise EngineArgsError(f"checkpoint folder {checkpoint} has no config.json; is it a Hugging Face checkpoint?")
    return {**args, "model": str(checkpoint)}
