"""Greedy generation with per-token logprobs from a local decoder checkpoint through vLLM on CPU.

Used to label the router: every tier answers the training pool, and the answers and their token
logprobs become the router's targets. One engine takes ~45-90 s to load on CPU, so build one
`LocalDecoder` and pass it all prompts in one call (vLLM batches them internally).

vLLM engines own worker processes and a large KV-cache allocation, so callers such as tests run
this module as a subprocess rather than inside their own interpreter:

    python -m export.vllm_local MODEL_DIR --prompts-file prompts.json --max-tokens 16 --out out.json

prompts.json holds a JSON list of strings (JSON, because prompts contain newlines).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from routenlp_core.answers import Generation
from routenlp_core.atomic import atomic_write_text
from routenlp_core.vllm_engine_args import KVCACHE_GIB_DEFAULT, KVCACHE_PARAMETER

MAX_MODEL_LEN_DEFAULT = 512


def _max_model_len(model_dir: Path, requested: int | None) -> int:
    # vLLM refuses a max_model_len above the model's own position limit.
    config = json.loads((model_dir / "config.json").read_text())
    limit = int(config.get("max_position_embeddings", MAX_MODEL_LEN_DEFAULT))
    return min(requested or MAX_MODEL_LEN_DEFAULT, limit)


class LocalDecoder:
    """A vLLM offline engine over one checkpoint folder, float32 on CPU, greedy decoding."""

    def __init__(
        self,
        model_dir: Path | str,
        *,
        max_model_len: int | None = None,
        seed: int = 0,
        **engine_kwargs: Any,
    ) -> None:
        os.environ.setdefault(KVCACHE_PARAMETER, KVCACHE_GIB_DEFAULT)
        # Imported here, after the environment is set, because vLLM reads it at import time.
        from vllm import LLM

        model_dir = Path(model_dir)
        started = time.perf_counter()
        self.llm = LLM(
            model=str(model_dir),
            dtype="float32",
            max_model_len=_max_model_len(model_dir, max_model_len),
            seed=seed,
            **engine_kwargs,
        )
        self.load_seconds = time.perf_counter() - started

    def generate(
        self, prompts: Sequence[str], max_tokens: int, logprobs: bool = True
    ) -> list[Generation]:
        from vllm import SamplingParams

        # logprobs=0 asks for the sampled token's logprob only, which is all labelling needs.
        params = SamplingParams(
            temperature=0.0, max_tokens=max_tokens, logprobs=0 if logprobs else None
        )
        outputs = self.llm.generate(list(prompts), params, use_tqdm=False)
        return [_to_generation(output.outputs[0], logprobs) for output in outputs]


def _to_generation(completion: Any, want_logprobs: bool) -> Generation:
    token_ids = list(completion.token_ids)
    token_logprobs: list[float] = []
    if want_logprobs:
        # One {token_id: Logprob} mapping per generated step; pick the chosen token's entry.
        token_logprobs = [
            float(step[token_id].logprob)
            for step, token_id in zip(completion.logprobs, token_ids, strict=True)
        ]
    return Generation(
        completion.text, token_logprobs, completion_tokens=len(token_ids), token_ids=token_ids,
        finish_reason=completion.finish_reason,
    )


def vllm_generate(
    model_dir: Path | str,
    prompts: Sequence[str],
    max_tokens: int,
    logprobs: bool = True,
    **engine_kwargs: Any,
) -> list[tuple[str, list[float]]]:
    """(text, chosen-token logprobs) per prompt, greedy, from a fresh engine over `model_dir`."""
    decoder = LocalDecoder(model_dir, **engine_kwargs)
    return [(g.text, g.token_logprobs) for g in decoder.generate(prompts, max_tokens, logprobs)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--prompts-file", type=Path, required=True, help="JSON list of strings")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--no-logprobs", action="store_true")
    parser.add_argument(
        "--enforce-eager",
        action="store_true",
        help="skip torch.compile warm-up: faster start, slower per token (tests, small batches)",
    )
    args = parser.parse_args(argv)

    prompts = json.loads(args.prompts_file.read_text())
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        parser.error("--prompts-file must hold a JSON list of strings")
    decoder = LocalDecoder(
        args.model_dir, max_model_len=args.max_model_len, enforce_eager=args.enforce_eager
    )
    started = time.perf_counter()
    generations = decoder.generate(prompts, args.max_tokens, logprobs=not args.no_logprobs)
    generate_seconds = time.perf_counter() - started
    payload = {
        "model_dir": str(args.model_dir),
        "max_tokens": args.max_tokens,
        "load_seconds": round(decoder.load_seconds, 2),
        "generate_seconds": round(generate_seconds, 3),
        "generations": [{"prompt": p, **asdict(g)} for p, g in zip(prompts, generations)],
    }
    atomic_write_text(args.out, json.dumps(payload, allow_nan=True))  # a polling reader never sees half
    print(
        f"vllm_local: {len(prompts)} prompts, load {decoder.load_seconds:.1f} s, "
        f"generate {generate_seconds:.2f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
