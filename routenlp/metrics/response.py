"""cs_response quality: BERTScore when a local encoder checkpoint is configured, chrF otherwise.

The paper scores responses with BERTScore. That needs encoder weights, and this project never
downloads any, so BERTScore is used only when ROUTENLP_BERTSCORE_MODEL (or an argument) points to a
local Hugging Face checkpoint directory and the bert_score package imports. Otherwise responses are
scored with sentence-level chrF from sacrebleu, divided by 100 into [0, 1]. The two scales differ
(BERTScore F1 without baseline rescaling sits far higher), so reports must print `name`, and a
quality bar set for one backend does not carry over to the other.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

from sacrebleu.metrics import CHRF

from .base import Metric, as_text, check_pairs, mean

MODEL_ENV = "ROUTENLP_BERTSCORE_MODEL"
LAYERS_ENV = "ROUTENLP_BERTSCORE_LAYERS"


class ChrfBackend:
    name = "chrF/100 (BERTScore fallback)"

    def __init__(self) -> None:
        self._chrf = CHRF()

    def score(self, predictions: list[str], references: list[str]) -> list[float]:
        return [self._score_one(p, r) for p, r in zip(predictions, references)]

    def _score_one(self, prediction: str, reference: str) -> float:
        if not prediction.strip():
            return 0.0
        return self._chrf.sentence_score(prediction, [reference]).score / 100.0


class BertScoreBackend:
    """BERTScore F1 from a local checkpoint.

    No baseline rescaling: bert_score ships baselines only for hub model names.
    """

    def __init__(self, model_dir: Path, num_layers: int) -> None:
        from bert_score import BERTScorer  # optional dependency, imported only when configured

        self.model_dir = model_dir
        self.num_layers = num_layers
        # A local directory as model_type: transformers loads it from disk, nothing is downloaded.
        self._scorer = BERTScorer(model_type=str(model_dir), num_layers=num_layers)
        cap_token_length(self._scorer, model_dir)

    @property
    def name(self) -> str:
        return f"BERTScore F1 ({self.model_dir.name}, layer {self.num_layers})"

    def score(self, predictions: list[str], references: list[str]) -> list[float]:
        scores = [0.0] * len(predictions)
        # Empty responses score 0 without asking the encoder (bert_score only warns on them).
        nonempty = [i for i, p in enumerate(predictions) if p.strip()]
        if nonempty:
            _, _, f1 = self._scorer.score(
                [predictions[i] for i in nonempty], [references[i] for i in nonempty], verbose=False
            )
            for i, value in zip(nonempty, f1.tolist()):
                scores[i] = min(1.0, max(0.0, float(value)))  # cosine-based, can dip below 0
        return scores


def cap_token_length(scorer, model_dir: Path) -> None:
    """bert_score truncates at the tokenizer's model_max_length; a checkpoint saved without one has
    a huge sentinel there, which crashes the fast tokenizer, and longer inputs would overrun the
    position embeddings. Cap it at the encoder's max_position_embeddings."""
    tokenizer = getattr(scorer, "_tokenizer", None)
    max_positions = read_config(model_dir).get("max_position_embeddings")
    if tokenizer is not None and isinstance(max_positions, int):
        tokenizer.model_max_length = min(tokenizer.model_max_length, max_positions)


def read_config(model_dir: Path) -> dict:
    config_path = model_dir / "config.json"
    return json.loads(config_path.read_text()) if config_path.is_file() else {}


def layers_from_config(model_dir: Path) -> int:
    """Default to the last layer: bert_score's tuned layer table only knows hub model names."""
    config = read_config(model_dir)
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(config.get(key), int):
            return config[key]
    raise ValueError(f"cannot tell the layer count of {model_dir}; set {LAYERS_ENV}")


def resolve_layers(model_dir: Path, num_layers: int | None) -> int:
    """Argument, else ROUTENLP_BERTSCORE_LAYERS, else the checkpoint's last layer."""
    layers_text = os.environ.get(LAYERS_ENV)
    if num_layers is None and layers_text:
        try:
            num_layers = int(layers_text)
        except ValueError:
            raise ValueError(f"{LAYERS_ENV} must be an integer, got {layers_text!r}") from None
    if num_layers is None:
        return layers_from_config(model_dir)
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    return num_layers


def bert_score_importable() -> bool:
    try:
        import bert_score  # noqa: F401
    except ImportError:
        return False
    return True


def select_response_backend(
    model_dir: str | os.PathLike | None = None, num_layers: int | None = None
):
    """BERTScore if a checkpoint is configured and bert_score imports, else chrF.

    A configured path that is not a directory is an error, not a fallback: a typo must not
    silently change which metric the quality bar is compared against.
    """
    model_dir = model_dir or os.environ.get(MODEL_ENV)
    if not model_dir:
        return ChrfBackend()
    checkpoint = Path(model_dir)
    if not checkpoint.is_dir():
        raise FileNotFoundError(
            f"BERTScore checkpoint {checkpoint} (from {MODEL_ENV} or argument) is not a directory"
        )
    if not bert_score_importable():
        warnings.warn(
            f"bert_score is not installed; scoring responses with {ChrfBackend.name}", stacklevel=2
        )
        return ChrfBackend()
    return BertScoreBackend(checkpoint, resolve_layers(checkpoint, num_layers))


class ResponseQuality(Metric):
    """Pluggable response metric, its backend chosen on first use (env read then, not at import)."""

    key = "response_quality"
    mean_of_examples = True  # corpus() only batches the example scores


    def __init__(self, backend=None) -> None:
        self._backend = backend

    @property
    def backend(self):
        if self._backend is None:
            self._backend = select_response_backend()
        return self._backend

    @property
    def name(self) -> str:
        return self.backend.name

    def configure(self, model_dir=None, num_layers: int | None = None) -> str:
        """Choose the backend again (e.g. after setting a checkpoint); returns its name."""
        self._backend = select_response_backend(model_dir, num_layers)
        return self._backend.name

    def example(self, prediction, reference) -> float:
        return self.backend.score([as_text(prediction)], [as_text(reference)])[0]

    def examples(self, predictions: Sequence, references: Sequence) -> list[float]:
        # One batched call: BERTScore is far cheaper per batch than per pair.
        return list(self.backend.score([as_text(p) for p in predictions], [as_text(r) for r in references]))

    def corpus(self, predictions: Sequence, references: Sequence) -> float:
        check_pairs(predictions, references)
        return mean(self.examples(predictions, references))
