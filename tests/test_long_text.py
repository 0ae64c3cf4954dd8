"""Long texts end to end: the reading strategy is recorded in the run (task.json) and applied by
predict, evaluate, serve and export; calibration is fitted and saved the same way."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from bertfit.job import fine_tune
from bertfit.predict import TextClassifier
from bertfit.train_config import TrainConfig
from bertfit.windows import LongText, encode

from conftest import NEGATIVE, POSITIVE, WORDS


def long_rows(n: int, seed: int) -> list[dict]:
    """Texts whose sentiment word sits at the end of 20-40 filler words (beyond a 16-token head)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["positive", "negative"])
        words = [rng.choice(WORDS) for _ in range(rng.randint(20, 40))]
        words.append(rng.choice(POSITIVE if label == "positive" else NEGATIVE))
        rows.append({"text": " ".join(words), "label": label})
    return rows


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _train(tmp_path: Path, model_dir: Path, name: str, **settings) -> Path:
    train = _jsonl(tmp_path / "train.jsonl", long_rows(96, seed=1))
    config = TrainConfig(train_file=str(train), model=str(model_dir), output_dir=str(tmp_path / name), max_steps=4,
                         batch_size=16, lr=1e-3, threads=1, max_length=16, **settings)
    fine_tune(config)
    return tmp_path / name


def test_truncation_round_trips_into_predict_evaluate_and_export(tmp_path, tiny_model_dir, capsys):
    run = _train(tmp_path, tiny_model_dir, "tail", truncation="head+tail", head_tokens=4)
    saved = json.loads((run / "task.json").read_text())
    assert saved["long_text"]["truncation"] == "head+tail" and saved["long_text"]["head_tokens"] == 4
    data = json.loads((run / "data.json").read_text())
    assert data["long_text"]["strategy"] == "head+tail" and data["long_text"]["cut"] == data["long_text"]["texts"] > 0
    assert "Long texts:" in (run / "report.md").read_text()

    model = TextClassifier.load(run, engine="pytorch")
    assert model.task.long_text == LongText(truncation="head+tail", head_tokens=4)
    rows = long_rows(12, seed=5)
    texts = [r["text"] for r in rows]
    got = model.predict_logits(texts)
    # the same features the strategy builds, run through the model one by one
    from bertfit.inference import predict_logits
    import torch

    features = encode(model.tokenizer, texts, None, 16, model.task.long_text)
    assert all(e.ids[1:5] == model.tokenizer.encode([t], max_length=16)[0].ids[1:5] for e, t in zip(features.encoded, texts))
    want = predict_logits(model.model, features.encoded, model.tokenizer.pad_id, torch.device("cpu"), 4096)
    np.testing.assert_allclose(got, want, atol=1e-5)
    head_only = TextClassifier.load(run, engine="pytorch")
    head_only.task.long_text = LongText()
    assert not np.allclose(head_only.predict_logits(texts), got)  # the strategy changes what is read

    # evaluate reads the labelled file through the same strategy: its metrics are the task's on these logits
    from bertfit.cli import main

    labelled = _jsonl(tmp_path / "eval.jsonl", rows)
    out = tmp_path / "m.json"
    assert main(["evaluate", str(run), "--file", str(labelled), "--engine", "pytorch", "--output", str(out)]) == 0
    metrics = json.loads(out.read_text())
    expected = model.task.evaluate(got, model.task.targets([r["label"] for r in rows]))
    assert metrics["accuracy"] == expected["accuracy"] and metrics["loss"] == pytest.approx(expected["loss"], abs=1e-5)

    pytest.importorskip("onnxruntime")
    from bertfit.export import export_onnx

    export_onnx(run, tmp_path / "onnx")
    exported = TextClassifier.load(tmp_path / "onnx")
    assert exported.task.long_text == model.task.long_text
    np.testing.assert_allclose(exported.predict_logits(texts), got, atol=1e-4)


def test_calibration_is_fitted_saved_and_applied(tmp_path, tiny_model_dir):
    run = _train(tmp_path, tiny_model_dir, "cal")
    state = json.loads((run / "task.json").read_text())["state"]
    assert state["temperature"] > 0
    metrics = json.loads((run / "metrics.json").read_text())
    for split in ("validation", "test"):
        c = metrics[split]["calibration"]
        assert c["method"] == "temperature" and c["temperature"] == state["temperature"]
        assert {"ece", "ece_uncalibrated", "log_loss", "log_loss_uncalibrated"} <= set(c)
    # on the split it was fitted on, the temperature cannot make the log-loss worse
    v = metrics["validation"]["calibration"]
    assert v["log_loss"] <= v["log_loss_uncalibrated"] + 1e-9
    assert "Calibration" in (run / "report.md").read_text()
    model = TextClassifier.load(run, engine="pytorch")
    texts = [r["text"] for r in long_rows(5, seed=9)]
    logits = model.predict_logits(texts)
    from bertfit.tasks.sequence import softmax

    np.testing.assert_allclose(model.predict_proba(texts), softmax(logits / state["temperature"]), rtol=1e-6)
    uncalibrated = _train(tmp_path, tiny_model_dir, "raw", calibrate=False)
    assert "temperature" not in json.loads((uncalibrated / "task.json").read_text())["state"]


def test_served_predictions_use_the_runs_strategy_and_calibration(tmp_path, tiny_model_dir):
    pytest.importorskip("fastapi")
    from test_tasks import _check_served

    run = _train(tmp_path, tiny_model_dir, "served", truncation="tail")
    model = TextClassifier.load(run, engine="pytorch")
    texts = [r["text"] for r in long_rows(6, seed=11)]
    _check_served(run, tmp_path, texts, None, model.predictions(texts))
