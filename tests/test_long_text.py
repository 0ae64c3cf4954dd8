"""Long texts end to end: the reading strategy is recorded in the run (task.json) and applied by
predict, evaluate, serve and export; calibration is fitted and saved the same way."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
import pytest

from bertfit.train.finetune import fine_tune
from bertfit.predict.predictor import Predictor
from bertfit.train.config import TrainConfig
from bertfit.tasks.windows import LongText, encode

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

    model = Predictor.load(run, engine="pytorch")
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
    head_only = Predictor.load(run, engine="pytorch")
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
    from bertfit.predict.export import export_onnx

    export_onnx(run, tmp_path / "onnx")
    exported = Predictor.load(tmp_path / "onnx")
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
    model = Predictor.load(run, engine="pytorch")
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
    model = Predictor.load(run, engine="pytorch")
    texts = [r["text"] for r in long_rows(6, seed=11)]
    _check_served(run, tmp_path, texts, None, model.predictions(texts))


# -- windows ----------------------------------------------------------------------------------------

WINDOWS = {"long_text": "windows", "window_stride": 6, "max_windows": 4}


def test_windowed_training_batches_whole_texts_and_loses_on_the_text(tmp_path, tiny_model_dir):
    from bertfit.tasks.classify import SingleLabel
    from bertfit.tokenizer import WordPieceTokenizer

    tok = WordPieceTokenizer.from_dir(tiny_model_dir)
    task = SingleLabel(["negative", "positive"])
    from bertfit.data.labelled import Example

    examples = [Example(r["text"], r["label"], None, row=i) for i, r in enumerate(long_rows(6, seed=3))]
    split = task.encode(tok, examples, 16, {**WINDOWS, "max_length": 16})
    units = task.train_units(split)
    assert len(units) == 6 and sorted(f for u in units for f in u) == list(range(len(split.encoded)))
    assert all(len(u) > 1 for u in units)  # every text here is longer than one window
    batch = task.collate(split, units[2] + units[4], pad_id=tok.pad_id, epoch=0)
    assert batch.labels.tolist() == task.targets([examples[2].label, examples[4].label]).tolist()
    assert batch.groups.tolist() == [0] * len(units[2]) + [1] * len(units[4])
    outputs = torch.randn(len(batch.groups), 2)
    combined = task.batch_outputs(outputs, batch)
    assert torch.allclose(combined[0], outputs[: len(units[2])].mean(0)) and combined.shape == (2, 2)
    halves = batch.split(2)  # out-of-memory back-off keeps a text's windows together
    assert [h.groups.tolist() for h in halves] == [[0] * len(units[2]), [0] * len(units[4])]
    assert [h.labels.tolist() for h in halves] == [batch.labels[:1].tolist(), batch.labels[1:].tolist()]


def test_windows_round_trip_short_texts_and_predict_equals_evaluate(tmp_path, tiny_model_dir):
    run = _train(tmp_path, tiny_model_dir, "windows", window_aggregate="max", **WINDOWS)
    saved = json.loads((run / "task.json").read_text())["long_text"]
    assert saved == LongText(window_aggregate="max", **WINDOWS).to_dict()
    data = json.loads((run / "data.json").read_text())["long_text"]
    assert data["strategy"] == "windows" and data["split_into_windows"] == data["texts"] and data["windows"] > data["texts"]
    model = Predictor.load(run, engine="pytorch")
    assert model.task.long_text.windowed and model.task.long_text.window_aggregate == "max"

    # a text shorter than one window: the same logits as without windows
    short = ["the good movie", "a terrible day"]
    windowed = model.predict_logits(short)
    model_head = Predictor.load(run, engine="pytorch")
    model_head.task.long_text = LongText()
    np.testing.assert_array_equal(windowed, model_head.predict_logits(short))

    # a long text: the aggregate of its windows' logits, as predict and evaluate both compute it
    rows = long_rows(10, seed=7)
    texts = [r["text"] for r in rows]
    got = model.predict_logits(texts)
    features = encode(model.tokenizer, texts, None, 16, model.task.long_text)
    assert len(features.encoded) > len(texts)
    import torch as _torch
    from bertfit.inference import predict_logits

    per_window = predict_logits(model.model, features.encoded, model.tokenizer.pad_id, _torch.device("cpu"), 4096)
    np.testing.assert_allclose(got, features.gather(per_window), atol=1e-5)
    from bertfit.cli import main

    out = tmp_path / "m.json"
    assert main(["evaluate", str(run), "--file", str(_jsonl(tmp_path / "e.jsonl", rows)), "--engine", "pytorch",
                 "--output", str(out)]) == 0
    expected = model.task.evaluate(got, model.task.targets([r["label"] for r in rows]))
    assert json.loads(out.read_text())["accuracy"] == expected["accuracy"]

    pytest.importorskip("fastapi")
    from test_tasks import _check_served

    _check_served(run, tmp_path, texts, None, model.predictions(texts))


def test_windowed_run_resumes_exactly(tmp_path, tiny_model_dir):
    from test_resume import bertfit, log_records

    train = _jsonl(tmp_path / "train.jsonl", long_rows(96, seed=1))
    args = ["--model", str(tiny_model_dir), "--train-file", str(train), "--max-length", "16", "--batch-size", "8",
            "--lr", "5e-4", "--log-every", "1", "--save-every", "3", "--max-steps", "8", "--threads", "1",
            "--long-text", "windows", "--window-stride", "6", "--max-windows", "4"]
    reference = tmp_path / "reference"
    assert bertfit(args + ["--output-dir", str(reference)]).returncode == 0
    run = tmp_path / "run"
    killed = bertfit(args + ["--output-dir", str(run)], env={"BERTFIT_KILL_AT_STEP": "5"})
    assert killed.returncode != 0
    resumed = bertfit(["--resume", str(run)])
    assert resumed.returncode == 0, resumed.stderr
    assert log_records(run) == log_records(reference)
    from safetensors.torch import load_file

    a, b = load_file(str(run / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert json.loads((run / "metrics.json").read_text()) == json.loads((reference / "metrics.json").read_text())
