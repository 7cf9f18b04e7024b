"""Per-task metrics against hand-computed values (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from routenlp import metrics
from routenlp.metrics import (
    METRICS,
    bootstrap_ci,
    corpus_score,
    example_score,
    metric_name,
    secondary_scores,
    wilson_interval,
)
from routenlp.metrics.response import ChrfBackend, ResponseQuality, select_response_backend
from routenlp_core.tasks import TASK_NAMES, TASKS, UnknownTaskError


@pytest.fixture(autouse=True)
def chrf_response_backend(monkeypatch):
    """Tests see the documented default (no checkpoint configured), whatever the shell exports."""
    monkeypatch.delenv(metrics.MODEL_ENV, raising=False)
    monkeypatch.delenv(metrics.LAYERS_ENV, raising=False)
    monkeypatch.setitem(METRICS, "response_quality", ResponseQuality())


# --- registry ---------------------------------------------------------------------------------


def test_every_task_metric_resolves():
    for task in TASKS.values():
        assert METRICS[task.metric].key == task.metric


def test_unknown_task_error_lists_valid_tasks():
    for call in (
        lambda: example_score("nope", "a", "a"),
        lambda: corpus_score("nope", ["a"], ["a"]),
        lambda: metric_name("nope"),
    ):
        with pytest.raises(UnknownTaskError) as err:
            call()
        assert "'nope'" in str(err.value)
        for name in TASK_NAMES:
            assert name in str(err.value)


def test_metric_names_are_human_readable():
    assert metric_name("cs_intent") == "macro-F1"
    assert metric_name("legal_risk") == "accuracy"
    assert metric_name("fin_ner") == "entity F1 (seqeval)"
    assert metric_name("fin_summary") == "ROUGE-L"
    assert metric_name("cs_response") == "chrF/100 (BERTScore fallback)"
    assert metric_name("legal_clause").startswith("clause F1")


@pytest.mark.parametrize("task", TASK_NAMES)
def test_corpus_refuses_misaligned_or_empty_sets(task):
    with pytest.raises(ValueError, match="align"):
        corpus_score(task, [], [_sample_reference(task)])
    with pytest.raises(ValueError, match="empty"):
        corpus_score(task, [], [])


def _sample_reference(task):
    return ["O", "I-ORG"] if task == "fin_ner" else "refund"


# --- classification: cs_intent (macro-F1) -------------------------------------------------------


def test_macro_f1_hand_computed():
    # refs a a b c / preds a b b b
    # a: TP1 FP0 FN1 -> P1 R1/2 F 2/3;  b: TP1 FP2 FN0 -> P1/3 R1 F 1/2;  c: TP0 -> F 0
    # macro = (2/3 + 1/2 + 0) / 3 = 7/18
    assert corpus_score("cs_intent", ["a", "b", "b", "b"], ["a", "a", "b", "c"]) == pytest.approx(7 / 18)


def test_macro_f1_single_class():
    # one class everywhere, all right: F1(a) = 1 -> 1.0 (not 0 or NaN)
    assert corpus_score("cs_intent", ["a"] * 3, ["a"] * 3) == 1.0
    # one gold class, one invented label: a: TP2 FP0 FN1 -> F 0.8; b (predicted only): F 0
    # label set = union of refs and preds -> (0.8 + 0) / 2 = 0.4 (refs-only would give 0.8)
    assert corpus_score("cs_intent", ["a", "a", "b"], ["a"] * 3) == pytest.approx(0.4)


def test_classification_example_is_exact_match_after_strip():
    assert example_score("cs_intent", " card_arrival\n", "card_arrival") == 1.0
    assert example_score("cs_intent", "Card_arrival", "card_arrival") == 0.0
    assert example_score("cs_intent", None, "card_arrival") == 0.0
    assert example_score("cs_intent", "", "card_arrival") == 0.0


# --- classification: legal_risk (accuracy + macro-F1) -------------------------------------------


def test_accuracy_and_secondary_macro_f1():
    refs = ["1", "1", "1", "3"]
    preds = ["1", "1", "1", "1"]
    # accuracy = 3/4
    assert corpus_score("legal_risk", preds, refs) == pytest.approx(0.75)
    # "1": TP3 FP1 FN0 -> P3/4 R1 F 6/7; "3": TP0 -> F 0; macro = (6/7) / 2 = 3/7
    assert secondary_scores("legal_risk", preds, refs) == {"macro-F1": pytest.approx(3 / 7)}
    assert secondary_scores("cs_intent", preds, refs) == {}


# --- classification: legal_clause (micro-F1 over categories) ------------------------------------


def test_clause_f1_hand_computed():
    refs = ["A", "none", "B", "A", "none"]
    preds = ["A", "A", "none", "B", "none"]
    # categories {A, B}. TP: #0 (A). FP: #1 (A for none), #3 (B for A). FN: #2 (B missed), #3 (A missed)
    # TP1 FP2 FN2 -> P 1/3, R 1/3, F 1/3 (the "none"/"none" agreement at #4 earns nothing)
    assert corpus_score("legal_clause", preds, refs) == pytest.approx(1 / 3)


def test_clause_f1_all_none_is_perfect_and_extracting_from_none_is_not():
    # nothing to extract, nothing extracted -> 1.0 by definition
    assert corpus_score("legal_clause", ["none"] * 3, ["none"] * 3) == 1.0
    # gold all none, one sentence extracted: TP0 FP1 FN0 -> F 0
    assert corpus_score("legal_clause", ["none", "A", "none"], ["none"] * 3) == 0.0
    # gold has clauses, model extracts nothing: TP0 FN2 -> F 0
    assert corpus_score("legal_clause", ["none"] * 3, ["A", "B", "none"]) == 0.0
    assert example_score("legal_clause", "none", "none") == 1.0
    assert example_score("legal_clause", "A", "none") == 0.0


# --- NER: fin_ner (seqeval entity F1) ------------------------------------------------------------

GOLD_SENTENCE = ["I-ORG", "I-ORG", "O", "I-PER"]  # entities: ORG(0-1), PER(3)


def test_entity_f1_sentence_hand_computed():
    # pred ORG(0-1) only: TP1 FP0 FN1 -> P1 R1/2 F 2/3
    assert example_score("fin_ner", ["I-ORG", "I-ORG", "O", "O"], GOLD_SENTENCE) == pytest.approx(2 / 3)
    # a shortened span is a different entity: ORG(0) != ORG(0-1); TP0 -> F 0
    assert example_score("fin_ner", ["I-ORG", "O", "O", "O"], GOLD_SENTENCE) == 0.0
    # wrong type: PER(3) predicted as LOC(3) -> pred {ORG(0-1), LOC(3)}: TP1 FP1 FN1 -> F 1/2
    assert example_score("fin_ner", ["I-ORG", "I-ORG", "O", "I-LOC"], GOLD_SENTENCE) == pytest.approx(0.5)


def test_entity_f1_corpus_is_micro_over_entities():
    refs = [GOLD_SENTENCE, ["I-LOC", "O", "O"]]
    preds = [["I-ORG", "I-ORG", "O", "O"], ["I-LOC", "I-MISC", "I-PER"]]
    # s1: TP1 FP0 FN1; s2: TP1 (LOC) FP2 (MISC, PER) FN0 -> total TP2 FP2 FN1
    # P 2/4, R 2/3 -> F = 2 * (1/2)(2/3) / (1/2 + 2/3) = (2/3) / (7/6) = 4/7
    # (the mean of per-sentence F1s would be (2/3 + 1/2) / 2 = 7/12 instead)
    assert corpus_score("fin_ner", preds, refs) == pytest.approx(4 / 7)


def test_entity_f1_no_entities_anywhere_is_perfect():
    assert example_score("fin_ner", ["O", "O"], ["O", "O"]) == 1.0
    assert corpus_score("fin_ner", [["O"], ["O", "O"]], [["O"], ["O", "O"]]) == 1.0


def test_entity_f1_empty_or_all_outside_prediction_scores_zero():
    assert example_score("fin_ner", [], GOLD_SENTENCE) == 0.0
    assert example_score("fin_ner", None, GOLD_SENTENCE) == 0.0
    assert example_score("fin_ner", ["O"] * 4, GOLD_SENTENCE) == 0.0
    # invented entity in an entity-free sentence: TP0 FP1 -> 0
    assert example_score("fin_ner", ["I-ORG", "O"], ["O", "O"]) == 0.0


def test_entity_f1_wrong_length_prediction_is_padded_or_truncated():
    # short: padded with O -> ["I-ORG", "I-ORG", "O", "O"] -> 2/3 as above
    assert example_score("fin_ner", ["I-ORG", "I-ORG"], GOLD_SENTENCE) == pytest.approx(2 / 3)
    # long: the extra I-LOC lies past the sentence and is dropped -> exact -> 1.0
    assert example_score("fin_ner", GOLD_SENTENCE + ["I-LOC"], GOLD_SENTENCE) == 1.0
    # a whitespace-separated string of tags is accepted too
    assert example_score("fin_ner", "I-ORG I-ORG O I-PER", GOLD_SENTENCE) == 1.0


# --- generation: fin_summary (ROUGE-L) ----------------------------------------------------------


def test_rouge_l_hand_computed():
    # LCS("the cat on the mat", "the cat sat on the mat") = 5 tokens; P 5/5, R 5/6
    # F = 2 * 1 * (5/6) / (1 + 5/6) = 10/11
    assert example_score("fin_summary", "the cat on the mat", "the cat sat on the mat") == pytest.approx(10 / 11)


def test_rouge_l_uses_stemming():
    # Porter: revenues/revenue -> revenu, increased/increases -> increas: identical after stemming
    assert example_score("fin_summary", "Revenue increases", "revenues increased") == 1.0


def test_rouge_l_empty_prediction_and_corpus_mean():
    assert example_score("fin_summary", "", "revenue grew") == 0.0
    assert example_score("fin_summary", "   ", "revenue grew") == 0.0
    assert example_score("fin_summary", None, "revenue grew") == 0.0
    # mean over examples: (10/11 + 0) / 2 = 5/11
    preds = ["the cat on the mat", ""]
    refs = ["the cat sat on the mat", "revenue grew"]
    assert corpus_score("fin_summary", preds, refs) == pytest.approx(5 / 11)


# --- generation: cs_response (BERTScore or chrF fallback) ---------------------------------------


def test_response_fallback_chrf_hand_computed():
    # chrF (sacrebleu defaults: char orders 1..6, beta 2, whitespace dropped), "ab" vs "abc":
    # order 1: hyp {a,b} ref {a,b,c} match 2 -> P 1, R 2/3; order 2: {ab} vs {ab,bc} -> P 1, R 1/2
    # orders 3..6: hyp has no n-grams -> not counted. avg P = 1, avg R = (2/3 + 1/2)/2 = 7/12
    # F2 = 5 * 1 * (7/12) / (4 * 1 + 7/12) = (35/12) / (55/12) = 7/11
    assert example_score("cs_response", "ab", "abc") == pytest.approx(7 / 11)
    assert example_score("cs_response", "abc", "abc") == pytest.approx(1.0)
    assert example_score("cs_response", "xyz", "abc") == 0.0
    # corpus = mean of sentence scores: (7/11 + 1) / 2 = 9/11
    assert corpus_score("cs_response", ["ab", "abc"], ["abc", "abc"]) == pytest.approx(9 / 11)


def test_response_empty_prediction_scores_zero():
    assert example_score("cs_response", "", "Your refund is on its way.") == 0.0
    assert example_score("cs_response", None, "Your refund is on its way.") == 0.0


def test_response_backend_selection(monkeypatch, tmp_path):
    assert isinstance(select_response_backend(), ChrfBackend)
    # a configured path that does not exist is an error, not a silent metric change
    monkeypatch.setenv(metrics.MODEL_ENV, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="missing"):
        select_response_backend()
    # configured, but bert_score unavailable -> documented fallback, with a warning
    monkeypatch.setenv(metrics.MODEL_ENV, str(tmp_path))
    monkeypatch.setattr("routenlp.metrics.response.bert_score_importable", lambda: False)
    with pytest.warns(UserWarning, match="bert_score is not installed"):
        assert isinstance(select_response_backend(), ChrfBackend)


def test_bertscore_backend_on_a_tiny_local_checkpoint(tmp_path, monkeypatch):
    """Wiring check with random weights (scores mean nothing beyond identity = 1)."""
    pytest.importorskip("bert_score")
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    checkpoint = tmp_path / "tiny-bert"
    checkpoint.mkdir()
    words = "the refund was sent to your account card blocked".split()
    (checkpoint / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = transformers.BertTokenizer(vocab_file=str(checkpoint / "vocab.txt"))
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=5 + len(words), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32,
    )
    transformers.BertModel(config).save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)

    assert metrics.configure_response_quality(checkpoint, num_layers=1) == "BERTScore F1 (tiny-bert, layer 1)"
    assert metric_name("cs_response") == "BERTScore F1 (tiny-bert, layer 1)"
    # identical texts: every token's best match is itself (cosine 1) -> P = R = F = 1
    assert example_score("cs_response", "the refund was sent", "the refund was sent") == pytest.approx(1.0, abs=1e-5)
    different = example_score("cs_response", "card blocked", "the refund was sent")
    assert 0.0 <= different < 1.0
    assert example_score("cs_response", "", "the refund was sent") == 0.0
    # corpus = mean of per-pair F1s: (1 + different + 0) / 3
    corpus = corpus_score("cs_response", ["the refund was sent", "card blocked", ""], ["the refund was sent"] * 3)
    assert corpus == pytest.approx((1.0 + different) / 3, abs=1e-5)
    # without num_layers the layer count comes from config.json (the last layer)
    assert metrics.configure_response_quality(checkpoint) == "BERTScore F1 (tiny-bert, layer 2)"
    # ... or from the environment, which is also where the checkpoint can be named
    monkeypatch.setenv(metrics.MODEL_ENV, str(checkpoint))
    monkeypatch.setenv(metrics.LAYERS_ENV, "1")
    assert metrics.configure_response_quality() == "BERTScore F1 (tiny-bert, layer 1)"
    monkeypatch.setenv(metrics.LAYERS_ENV, "last")
    with pytest.raises(ValueError, match="must be an integer"):
        metrics.configure_response_quality()


# --- every per-example score is in [0, 1] --------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "prediction", "reference"),
    [
        ("cs_intent", "x", "y"),
        ("legal_risk", "3", "3"),
        ("legal_clause", "A", "none"),
        ("fin_ner", ["I-ORG"], ["O", "I-PER"]),
        ("fin_summary", "revenue grew", "revenue grew ten percent"),
        ("cs_response", "Please wait", "Please wait two days"),
    ],
)
def test_example_scores_are_in_unit_interval(task, prediction, reference):
    assert 0.0 <= example_score(task, prediction, reference) <= 1.0


# --- Wilson interval -----------------------------------------------------------------------------


def test_wilson_known_values():
    # 8/10: p .8, z^2 3.8416, denom 1 + .38416 = 1.38416, centre (.8 + .19208) / 1.38416 = .71675
    # half = 1.96 * sqrt(.016 + .009604) / 1.38416 = .22658 -> (.490, .943)
    lo, hi = wilson_interval(8, 10)
    assert (round(lo, 3), round(hi, 3)) == (0.490, 0.943)
    # 50/100: centre .5, half = 1.96 * sqrt(.0025 + .000096) / 1.038416 = .09617 -> (.4038, .5962)
    lo, hi = wilson_interval(50, 100)
    assert (round(lo, 4), round(hi, 4)) == (0.4038, 0.5962)


def test_wilson_edges():
    # 0/10: centre = half = .19208 / 1.38416 = .13877 -> (0, .2775); the bound is exactly 0
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and round(hi, 4) == 0.2775
    # 10/10 mirrors it: (.7225, 1)
    lo, hi = wilson_interval(10, 10)
    assert round(lo, 4) == 0.7225 and hi == 1.0
    # n = 0: no evidence -> the whole range
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # a wider z widens the interval
    assert wilson_interval(8, 10, z=2.576)[0] < wilson_interval(8, 10)[0]


@pytest.mark.parametrize(("successes", "n"), [(-1, 10), (11, 10), (0, -1)])
def test_wilson_rejects_impossible_counts(successes, n):
    with pytest.raises(ValueError):
        wilson_interval(successes, n)


# --- bootstrap ------------------------------------------------------------------------------------


def test_bootstrap_two_point_sample():
    # resampling [0, 1] twice gives means 0, .5, 1 with probabilities 1/4, 1/2, 1/4:
    # the 2.5th and 97.5th percentiles of 1000 draws are 0 and 1 ...
    assert bootstrap_ci([0, 1]) == (0.0, 1.0)
    # ... and the 30th and 70th percentiles (confidence .4) both fall on .5
    assert bootstrap_ci([0, 1], confidence=0.4) == (0.5, 0.5)


def test_bootstrap_is_seeded_and_honours_stat():
    values = np.arange(20, dtype=float)
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    assert bootstrap_ci(values, seed=3) != bootstrap_ci(values, seed=4)
    assert bootstrap_ci([4.0, 4.0, 4.0]) == (4.0, 4.0)
    lo, hi = bootstrap_ci(values, stat=np.max)
    assert hi == 19.0 and lo >= 15.0  # max of 20 draws misses 19 only with prob (19/20)^20 ~ .36
    lo, hi = bootstrap_ci(values)
    assert lo < 9.5 < hi and not math.isclose(lo, hi)


def test_bootstrap_rejects_empty():
    with pytest.raises(ValueError):
        bootstrap_ci([])


# --- counts: the bootstrap's shortcut must be the corpus metric exactly ----------------------------


def _random_pairs(task: str, rng: np.random.Generator, n: int) -> tuple[list, list]:
    if task == "fin_ner":
        tags = ["O", "O", "O", "I-ORG", "I-PER", "I-LOC"]
        references = [[str(t) for t in rng.choice(tags, size=int(rng.integers(1, 9)))] for _ in range(n)]
        # noisy copies, some cut short or empty (a tier that dropped tags)
        predictions = [[t if rng.random() < 0.7 else str(rng.choice(tags)) for t in ref][: int(rng.integers(0, len(ref) + 1))] for ref in references]
        return predictions, references
    labels = {"cs_intent": ["a", "b", "c", "d"], "legal_risk": ["none", "fair", "clearly_unfair"], "legal_clause": ["none", "none", "audit_rights", "governing_law"]}[task]
    references = [str(rng.choice(labels)) for _ in range(n)]
    predictions = [r if rng.random() < 0.6 else (None if rng.random() < 0.1 else str(rng.choice(labels + ["invented"]))) for r in references]
    return predictions, references


@pytest.mark.parametrize("task", ["cs_intent", "legal_risk", "legal_clause", "fin_ner"])
def test_summed_counts_reproduce_the_corpus_metric_on_any_resample(task):
    from routenlp.metrics import metric_for

    metric = metric_for(task)
    assert metric.decomposable and not metric.mean_of_examples
    rng = np.random.default_rng(5)
    for trial in range(30):
        predictions, references = _random_pairs(task, rng, int(rng.integers(1, 25)))
        counts = metric.counts(predictions, references)
        assert metric.from_counts(counts.sum(axis=0, keepdims=True))[0] == pytest.approx(corpus_score(task, predictions, references), abs=1e-12)
        rows = rng.integers(0, len(references), len(references))  # a resample, repeats included
        weights = np.bincount(rows, minlength=len(references)).astype(float)
        expected = corpus_score(task, [predictions[i] for i in rows], [references[i] for i in rows])
        assert metric.from_counts((weights @ counts)[None, :])[0] == pytest.approx(expected, abs=1e-12)
    # the edge cases the metrics define: nothing to find and nothing found scores 1.0
    if task in ("legal_clause", "fin_ner"):
        empty = (["none"], ["none"]) if task == "legal_clause" else ([["O", "O"]], [["O", "O"]])
        assert metric.from_counts(metric.counts(*empty).sum(axis=0, keepdims=True))[0] == 1.0 == corpus_score(task, *empty)
