"""Generate the self-test model repository (the echo model) with the project's config generator."""

from __future__ import annotations

from pathlib import Path

from export.repository import write_model_version
from export.triton_config import ModelSpec, TensorSpec

ECHO_SPEC = ModelSpec(
    name="echo",
    inputs=[TensorSpec("TEXT", "BYTES")],
    outputs=[TensorSpec("OUTPUT", "BYTES"), TensorSpec("LENGTH", "INT64")],
    max_batch_size=8,
    dynamic_batching_delay_us=100,
)


def build_selftest_repository(repository: Path) -> Path:
    write_model_version(repository, ECHO_SPEC, {"model.py": Path(__file__).with_name("echo_model.py")}, version=1)
    return repository
