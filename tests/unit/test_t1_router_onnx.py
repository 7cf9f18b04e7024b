"""T1 heads, the router and their ONNX exports, trained for a few steps on real benchmark records."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export.encoder import EncoderArch
from export.onnx_export import (
    ParityError,
    export_onnx,
    latency_table,
    ort_session,
    parity_check,
    router_spec,
    session_metadata,
    spec_for_model,
    t1_spec,
)
from export.router_model import encode_router_inputs, load_router, router_logits, save_router
from export.t1 import (
    IGNORE_INDEX,
    encode_words,
    first_piece_labels,
    load_t1,
    predict_t1,
    save_t1,
    train_t1,
)
from export.tokenizer import train_tokenizer
from export.train_router import router_accuracy, train_router
from export.triton_config import render_config
from routenlp.data import load_split, task_labels
from routenlp.portfolio import RouterSettings
from routenlp_core.encoder_inputs import encode_texts, pad_batch

TINY = EncoderArch(dim=32, layers=1, heads=2, hidden_dim=64, max_positions=128)
STRUCTURED = ("cs_intent", "fin_ner", "legal_clause", "legal_risk")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy 2-core machine torch's spinning
    workers make them 10-100x slower; restored afterwards for the rest of the session."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    texts = [r["text"] for task in STRUCTURED for r in load_split(task, "train")[:150]]
    return train_tokenizer(texts, vocab_size=500)


def _inputs(tokenizer, task, records, max_len):
    if task == "fin_ner":
        ids = [encode_words(tokenizer, r["tokens"], max_len)[0] for r in records]
    else:
        ids = encode_texts(tokenizer, [r["text"] for r in records], max_len)
    input_ids, attention = pad_batch(ids, tokenizer.pad_token_id)
    return {"input_ids": input_ids, "attention_mask": attention}


# ---------------------------------------------------------------- NER alignment


def _pieces_of_each_word(tokenizer, words, max_len=512):
    ids, word_of = encode_words(tokenizer, words, max_len)
    return ids, word_of, [tokenizer.decode([t for t, w in zip(ids, word_of) if w == i]).strip() for i in range(len(words))]


def test_ner_pieces_map_back_to_their_words(tokenizer):
    words = ["U.S.", "3003Tasman", '("', "Bank", '"),', "AKAMAI", "Inc.", "$1,000,000", "e-mail"]
    ids, word_of, decoded = _pieces_of_each_word(tokenizer, words)
    # Same ids as the running text a client sends (no is_split_into_words re-encoding).
    assert ids == tokenizer(" ".join(words))["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and word_of[0] == -1
    assert decoded == words
    labels = first_piece_labels(word_of, list(range(len(words))))
    assert [lab for lab in labels if lab != IGNORE_INDEX] == list(range(len(words)))


def test_ner_alignment_on_real_records(tokenizer):
    for record in load_split("fin_ner", "train")[:60]:
        _, _, decoded = _pieces_of_each_word(tokenizer, record["tokens"])
        assert decoded == record["tokens"], record["id"]


def test_truncated_words_get_no_label(tokenizer):
    words = load_split("fin_ner", "train")[0]["tokens"] * 5
    ids, word_of = encode_words(tokenizer, words, max_len=16)
    assert len(ids) == 16
    labels = first_piece_labels(word_of, [1] * len(words))
    assert 0 < sum(lab == 1 for lab in labels) < len(words)


# ---------------------------------------------------------------- T1 heads


@pytest.fixture(scope="module")
def risk_model(tokenizer):
    train = load_split("legal_risk", "train")[:64]
    return train_t1("legal_risk", train, tokenizer, TINY, epochs=4, max_len=48, batch_size=16, lr=3e-3, seed=0, progress=False)


@pytest.fixture(scope="module")
def ner_model(tokenizer):
    train = load_split("fin_ner", "train")[:48]
    return train_t1("fin_ner", train, tokenizer, TINY, epochs=3, max_len=48, batch_size=16, lr=3e-3, seed=0, progress=False)


def test_t1_training_is_self_describing_and_learns(risk_model):
    model, stats = risk_model
    assert model.config.routenlp_task == "legal_risk"
    assert [model.config.id2label[i] for i in range(model.config.num_labels)] == list(task_labels("legal_risk"))
    assert stats["epoch_losses"][-1] < stats["epoch_losses"][0]
    assert stats["steps"] == 4 * 4 and stats["examples"] == 64


def test_t1_training_is_reproducible(tokenizer, risk_model):
    train = load_split("legal_risk", "train")[:64]
    again, stats = train_t1("legal_risk", train, tokenizer, TINY, epochs=4, max_len=48, batch_size=16, lr=3e-3, seed=0, progress=False)
    assert stats["epoch_losses"] == risk_model[1]["epoch_losses"]
    for a, b in zip(again.parameters(), risk_model[0].parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("task", ["legal_risk", "fin_ner"])
def test_t1_onnx_parity_and_identical_predictions(tmp_path, tokenizer, risk_model, ner_model, task):
    model = (risk_model if task == "legal_risk" else ner_model)[0]
    spec = spec_for_model(model)
    assert spec.model == f"t1_{task}"
    path = export_onnx(model, spec, tmp_path / "model.onnx")
    dev = load_split(task, "dev")[:24]
    report = parity_check(model, path, spec, _inputs(tokenizer, task, dev, 48))
    assert report["max_abs_diff"] < 1e-4 and report["argmax_agreement"] == 1.0 and report["n"] == 24

    from_torch = predict_t1(model, tokenizer, task, dev, max_len=48)
    session = ort_session(path)
    assert json.loads(session_metadata(session)["labels"]) == list(task_labels(task))  # the file says what it predicts
    from_ort = predict_t1(session, tokenizer, task, dev, max_len=48)
    with pytest.raises(ValueError, match=f"T1 head of '{task}'"):
        predict_t1(session, tokenizer, "cs_intent", dev[:1], max_len=48)
    assert [p for p, _ in from_torch] == [p for p, _ in from_ort]
    assert np.allclose([u for _, u in from_torch], [u for _, u in from_ort], atol=1e-5)
    labels = set(task_labels(task))
    for (prediction, uncertainty), record in zip(from_torch, dev):
        assert 0.0 <= uncertainty <= 1.0 - 1.0 / len(labels) + 1e-6
        if task == "fin_ner":
            assert len(prediction) == len(record["tokens"]) and set(prediction) <= labels
        else:
            assert prediction in labels


def test_ner_predictions_cover_every_word_even_when_truncated(tokenizer, ner_model):
    model = ner_model[0]
    records = load_split("fin_ner", "dev")[:40]
    outputs = predict_t1(model, tokenizer, "fin_ner", records, max_len=20)
    cut = 0
    for (tags, uncertainty), record in zip(outputs, records):
        assert len(tags) == len(record["tokens"])
        _, word_of = encode_words(tokenizer, record["tokens"], 20)
        unseen = sorted(set(range(len(tags))) - set(word_of))
        if unseen:  # words past max_len: "O", and the uniform-distribution doubt pulls the mean up
            cut += 1
            assert all(tags[i] == "O" for i in unseen)
            assert uncertainty >= len(unseen) / len(tags) * (1 - 1 / 5) - 1e-6
    assert cut >= 5, "need records longer than max_len to exercise truncation"


def test_t1_checkpoint_round_trip(tmp_path, tokenizer, risk_model):
    model, stats = risk_model
    save_t1(model, tokenizer, tmp_path / "t1", {"stats": stats, "max_len": 48})
    loaded, meta = load_t1(tmp_path / "t1")
    assert meta["task"] == "legal_risk" and meta["max_len"] == 48
    records = load_split("legal_risk", "dev")[:8]
    again, before = predict_t1(loaded, tokenizer, "legal_risk", records, 48), predict_t1(model, tokenizer, "legal_risk", records, 48)
    assert [p for p, _ in again] == [p for p, _ in before]
    assert [u for _, u in again] == pytest.approx([u for _, u in before], abs=1e-6)


# ---------------------------------------------------------------- router


def _router_data():
    """Records of four tasks; whether a tier passes depends on the task, so the router can learn it."""
    records, quality = [], []
    passing_from = {"legal_risk": 0, "fin_ner": 1, "cs_intent": 2, "legal_clause": 3}
    for task, first in passing_from.items():
        for record in load_split(task, "train")[:30]:
            records.append(record)
            quality.append([0.95 if k >= first else 0.2 for k in range(4)])
    return records, np.array(quality, dtype=np.float32), dict.fromkeys(passing_from, 0.9)


@pytest.fixture(scope="module")
def router(tokenizer):
    settings = RouterSettings(encoder=TINY.to_dict(), task_embedding_dim=16, mlp_hidden=32)
    records, quality, bars = _router_data()
    model, stats = train_router(
        records, quality, bars, tokenizer, settings, [0.01, 0.1, 0.8, 8.0],
        epochs=8, max_len=32, batch_size=16, lr=5e-3, seed=0, progress=False,
    )
    return model, stats, (records, quality, bars)


def test_router_learns_task_dependent_tiers(tokenizer, router):
    model, stats, (records, quality, bars) = router
    assert stats["oracle_label_counts"] == {"t1": 30, "t2": 30, "t3": 30, "t4": 30}
    assert stats["val_examples"] == 12 and stats["train_examples"] == 108
    assert 1 <= stats["best_epoch"] <= stats["epochs_run"] <= 8
    assert (stats["cost_weight"], stats["quality_weight"]) == (0.3, 0.5)
    assert router_accuracy(model, tokenizer, records, quality, bars, max_len=32) >= 0.9


def test_router_loss_weights_are_overridable(tokenizer):
    settings = RouterSettings(encoder=TINY.to_dict(), task_embedding_dim=8, mlp_hidden=16)
    records, quality, bars = _router_data()
    _, stats = train_router(
        records[:40], quality[:40], bars, tokenizer, settings, [1, 2, 3, 4],
        epochs=1, max_len=16, batch_size=16, seed=0, progress=False, cost_weight=0.0, quality_weight=0.0,
    )
    assert (stats["cost_weight"], stats["quality_weight"]) == (0.0, 0.0)
    history = stats["history"][0]
    assert history["train_total"] == pytest.approx(history["train_route"], abs=1e-5)


def test_router_onnx_parity_and_checkpoint(tmp_path, tokenizer, router):
    model, stats, (records, _, _) = router
    dev = [r for task in STRUCTURED for r in load_split(task, "dev")[:6]]
    inputs = encode_router_inputs(model, tokenizer, dev, max_len=32)
    spec = spec_for_model(model)
    assert spec == router_spec()
    path = export_onnx(model, spec, tmp_path / "router.onnx")
    report = parity_check(model, path, spec, inputs)
    assert report["max_abs_diff"] < 1e-4 and report["argmax_agreement"] == 1.0 and report["n"] == len(dev)
    assert json.loads(session_metadata(ort_session(path))["router_args"])["task_names"] == model.task_names

    save_router(model, tmp_path / "ckpt", {"stats": stats})
    loaded, meta = load_router(tmp_path / "ckpt")
    assert meta["stats"]["best_epoch"] == stats["best_epoch"]
    assert loaded.task_names == model.task_names and loaded.tier_names == ["t1", "t2", "t3", "t4"]
    np.testing.assert_array_equal(router_logits(loaded, tokenizer, dev, 32), router_logits(model, tokenizer, dev, 32))

    rows = latency_table(model, path, inputs, batch_sizes=(1, 8), repeats=3)
    assert [r["batch"] for r in rows] == [1, 8]
    assert all(r["torch_ms"] > 0 and r["ort_ms"] > 0 and r["model"] == "router" for r in rows)


def test_parity_check_refuses_a_model_that_drifted(tmp_path, tokenizer, risk_model):
    model, _ = risk_model
    spec = spec_for_model(model)
    path = export_onnx(model, spec, tmp_path / "m.onnx")
    inputs = _inputs(tokenizer, "legal_risk", load_split("legal_risk", "dev")[:4], 48)
    drifted = type(model)(model.config)
    drifted.load_state_dict(model.state_dict())
    with torch.no_grad():
        drifted.classifier.bias += 0.01
    with pytest.raises(ParityError, match="max \\|onnx - torch\\|"):
        parity_check(drifted, path, spec, inputs)


# ---------------------------------------------------------------- one spec -> Triton config


def test_io_spec_renders_triton_configs():
    batched = text_format.Parse(render_config(router_spec().model_spec(max_batch_size=8, backend=None, platform="onnxruntime_onnx")), mc.ModelConfig())
    assert [(t.name, list(t.dims)) for t in batched.input] == [("input_ids", [-1]), ("attention_mask", [-1]), ("task_id", [1])]
    assert [(t.name, t.data_type, list(t.dims)) for t in batched.output] == [("logits", mc.TYPE_FP32, [4])]
    assert batched.platform == "onnxruntime_onnx" and batched.max_batch_size == 8

    unbatched = router_spec().triton_inputs(max_batch_size=0)
    assert [(t.name, t.dtype, tuple(t.dims)) for t in unbatched] == [
        ("input_ids", "INT64", (-1, -1)), ("attention_mask", "INT64", (-1, -1)), ("task_id", "INT64", (-1, 1))
    ]
    ner = t1_spec("fin_ner", 5, token_level=True)
    assert ner.model == "t1_fin_ner" and tuple(ner.triton_outputs(8)[0].dims) == (-1, 5)
    assert ner.dynamic_axes["logits"] == {0: "batch", 1: "sequence"}


def test_router_early_stopping_restores_the_best_epoch(tokenizer):
    """Unlearnable (random) tier labels: held-out loss rises once the router memorises, training
    stops after `patience` bad epochs and the returned weights are the best epoch's."""
    from export.router_loss import router_loss
    from export.train_router import held_out_split

    settings = RouterSettings(encoder=TINY.to_dict(), task_embedding_dim=8, mlp_hidden=32)
    records = load_split("legal_risk", "train")[:80]
    rng = np.random.default_rng(0)
    quality = rng.random((80, 4)).astype(np.float32)
    bars = np.full(80, 0.5, dtype=np.float32)
    prices = [0.01, 0.1, 0.8, 8.0]
    model, stats = train_router(
        records, quality, {"legal_risk": 0.5}, tokenizer, settings, prices,
        epochs=30, max_len=24, batch_size=8, lr=1e-2, seed=0, progress=False, val_fraction=0.25,
    )
    assert stats["stopped_early"] and stats["epochs_run"] == stats["best_epoch"] + 3
    _, val = held_out_split(80, 0.25, 0)
    held_out = [records[i] for i in val]
    logits = torch.from_numpy(router_logits(model, tokenizer, held_out, 24))
    total, _ = router_loss(logits, torch.tensor(prices), torch.from_numpy(quality[val]), torch.from_numpy(bars[val]))
    assert total.item() == pytest.approx(stats["best_val_loss"], abs=1e-4)
    assert stats["best_val_loss"] < stats["history"][-1]["val_loss"]
