"""bf16 prediction (--bf16 for predict, evaluate and serve): PyTorch under bf16 autocast on any task's
engine path, refused with int8 or ONNX Runtime, and its cost against fp32 reported like int8's. Runs on
every CPU (bf16 is emulated where the instructions are missing: slower, the same numbers)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import BF16_EPS, fine_tune_tiny, synthetic_rows, write_csv

pytestmark = pytest.mark.precision


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir):
    d = tmp_path_factory.mktemp("bf16-run")
    return fine_tune_tiny(d, tiny_model_dir), write_csv(d / "held.csv", synthetic_rows(80, seed=6))


def test_bf16_predictor_runs_pytorch_under_autocast_and_agrees_with_fp32(tiny_run):
    from bertfit.predict.predictor import Predictor

    run, _ = tiny_run
    texts = [t for t, _ in synthetic_rows(40, seed=9)]
    fp32 = Predictor.load(run, engine="pytorch")
    bf16 = Predictor.load(run, bf16=True)  # engine auto: PyTorch, the only bf16 path
    assert bf16.bf16 and bf16.engine == "pytorch" and not fp32.bf16
    p32, p16 = fp32.predict_proba(texts), bf16.predict_proba(texts)
    assert np.abs(p16 - p32).max() > 0  # really computed in bf16 ...
    assert np.abs(p16 - p32).max() < 64 * BF16_EPS  # ... to bf16's precision
    assert (p16.argmax(1) == p32.argmax(1)).mean() >= 0.95
    # The engine's numbers are the head's under autocast, nothing else.
    batch = bf16.tokenizer(texts[:4], max_length=bf16.max_length)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = bf16.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).float()
    np.testing.assert_allclose(bf16.predict_logits(texts[:4]), logits.numpy(), atol=2 * BF16_EPS, rtol=0)


def test_bf16_with_int8_or_onnxruntime_is_refused(tiny_run):
    from bertfit.errors import BertfitError
    from bertfit.predict.predictor import Predictor

    run, _ = tiny_run
    with pytest.raises(BertfitError, match="int8 or --bf16, not both"):
        Predictor.load(run, bf16=True, int8=True)
    with pytest.raises(BertfitError, match="ONNX Runtime has no bf16 path"):
        Predictor.load(run, bf16=True, engine="onnxruntime")


def _bertfit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bertfit", *map(str, args)], capture_output=True, text=True, timeout=300)


def test_cli_evaluate_bf16_reports_its_cost_and_predict_bf16_writes_predictions(tiny_run, tmp_path):
    run, held = tiny_run
    out = _bertfit("evaluate", run, "--file", held, "--bf16", "--output", tmp_path / "m.json")
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = json.loads((tmp_path / "m.json").read_text())
    cost = metrics["bf16_cost"]
    assert 0.95 <= cost["label_agreement"] <= 1.0 and cost["accuracy_bf16"] == metrics["accuracy"]
    assert cost["accuracy_delta"] == pytest.approx(metrics["accuracy"] - cost["accuracy_fp32"])
    assert "bf16 vs fp32 on these 80 examples" in out.stdout
    out = _bertfit("predict", run, "--file", held, "--bf16", "--output", tmp_path / "p.csv")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "bf16 is approximate" in out.stderr
    out = _bertfit("predict", run, "--file", held, "--bf16", "--int8", "--output", tmp_path / "q.csv")
    assert out.returncode == 2 and "not both" in out.stderr and "Traceback" not in out.stderr


def test_bf16_runs_the_token_and_span_tasks_through_the_same_engine(tmp_path):
    """NER and QA predict through the same TorchEngine: bf16 reaches them (their outputs differ from
    fp32's by bf16 rounding, not more)."""
    from bertfit.predict.predictor import Predictor, TorchEngine, engine_logits
    from bertfit.tasks.registry import build_task
    from bertfit.tokenizer import WordPieceTokenizer
    from bertfit.weights import load_model
    from conftest import build_tiny_model_dir

    model_dir = build_tiny_model_dir(tmp_path / "bert", dropout=0.0)
    tokenizer = WordPieceTokenizer.from_dir(model_dir)
    for name, labels, items in (("ner", ["O", "B-X", "I-X"], [{"tokens": ["good", "movie", "bad"]}]),
                                ("qa", ["start", "end"], [{"question": "good", "context": "a good movie"}])):
        task = build_task(name, labels, {"doc_stride": 16} if name == "qa" else None)
        torch.manual_seed(0)
        model = load_model(model_dir, task.labels, problem_type=task.problem_type)
        outs = {}
        for bf16 in (False, True):
            predictor = Predictor(TorchEngine(model, bf16=bf16), tokenizer, task=task, config=model.config)
            assert predictor.bf16 is bf16
            split = task.encode(tokenizer, task.inputs(items), predictor.max_length)
            raw = engine_logits(predictor.backend, split.encoded, len(task.labels), tokenizer.pad_id,
                                max_tokens=8192, max_batch=128)  # what Predictor.outputs runs for every task
            outs[bf16] = raw
            assert predictor.records(items)  # and the task decodes them
        a, b = (np.concatenate([np.asarray(x, dtype=np.float64).ravel() for x in outs[k]]) for k in (False, True))
        assert 0 < np.abs(a - b).max() < 0.1 * max(1.0, np.abs(a).max()), name


def test_serve_takes_bf16_and_refuses_it_with_int8():
    from bertfit.errors import ConfigError
    from bertfit.serve.config import ServeConfig

    assert ServeConfig(run="r", bf16=True).bf16
    with pytest.raises(ConfigError, match="--int8 or --bf16, not both"):
        ServeConfig(run="r", bf16=True, int8=True)
