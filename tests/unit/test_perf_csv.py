import json
from pathlib import Path

import pytest

from clients.perf import PerfAnalyzerError, parse_csv, write_input_data

# The header perf_analyzer 2.51 writes with -f (latencies in microseconds).
HEADER = "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency"


def test_parse_csv_converts_microseconds(tmp_path: Path):
    path = tmp_path / "perf.csv"
    path.write_text(HEADER + "\n1,1500.5,10,200,30,5,250,5,0,480,600,700,900\n2,2600,12,300,40,5,260,6,1,700,800,900,3000\n")
    points = parse_csv(path)
    assert [p.concurrency for p in points] == [1, 2]
    assert points[0].throughput == 1500.5
    assert points[0].p50_ms == pytest.approx(0.48) and points[0].p99_ms == pytest.approx(0.9) and points[0].p95_ms == pytest.approx(0.7)
    # avg = sum of the component columns: 10+200+30+5+250+5+0 = 500 us
    assert points[0].avg_ms == pytest.approx(0.5)
    assert points[1].p99_ms == pytest.approx(3.0)


def test_parse_empty_csv_is_an_error(tmp_path: Path):
    path = tmp_path / "perf.csv"
    path.write_text(HEADER + "\n")
    with pytest.raises(PerfAnalyzerError, match="no measurements"):
        parse_csv(path)


def test_input_data_json_shape(tmp_path: Path):
    path = write_input_data(tmp_path / "in.json", [{"TEXT": ["hi"], "TASK": ["cs_intent"]}])
    assert json.loads(path.read_text()) == {"data": [{"TEXT": {"content": ["hi"], "shape": [1]}, "TASK": {"content": ["cs_intent"], "shape": [1]}}]}


def test_input_data_rows_for_the_entry_model_and_direct_t1(tmp_path):
    import json as _json

    from clients.perf import write_input_data
    from clients.perf_compare import entry_rows, t1_rows

    class Tok:
        def __call__(self, texts, add_special_tokens=True):
            return {"input_ids": [[1] + [len(w) for w in t.split()] for t in texts]}

    records = [{"task": "legal_risk", "text": "we may end it"}, {"task": "cs_intent", "text": "card"}]
    rows = entry_rows(records, POLICY="always-t4")
    assert rows[0] == {"TEXT": ["we may end it"], "TASK": ["legal_risk"], "POLICY": ["always-t4"]}
    path = write_input_data(tmp_path / "d.json", rows + t1_rows(records[:1], Tok(), max_len=3, batched=False) + t1_rows(records[:1], Tok(), max_len=3))
    data = _json.loads(path.read_text())["data"]
    assert data[0]["TEXT"] == {"content": ["we may end it"], "shape": [1]}
    assert data[2]["input_ids"] == {"content": [1, 2, 3], "shape": [1, 3]} and data[2]["attention_mask"]["content"] == [1, 1, 1]
    assert data[3]["input_ids"] == {"content": [1, 2, 3], "shape": [3]}  # a batching model: perf_analyzer adds the batch axis
