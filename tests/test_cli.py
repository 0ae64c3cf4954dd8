"""The installed `bertfit` command, end to end, as a user runs it."""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import synthetic_rows, write_csv

BERTFIT = str(Path(sys.executable).with_name("bertfit"))
LABELS = ["negative", "neutral", "positive"]


def bertfit(*args: str, stdin: str | None = None, timeout: int = 600,
            env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.run([BERTFIT, *map(str, args)], capture_output=True, text=True, input=stdin, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def tweets_run(tmp_path_factory, tweets_csv, minilm_dir) -> Path:
    """The real CLI on a slice of the real tweets corpus with the real MiniLM."""
    run = tmp_path_factory.mktemp("cli") / "run"
    out = bertfit("train", "--train-file", tweets_csv, "--model", "minilm-l6", "--output-dir", run,
                  "--max-train-examples", 320, "--max-eval-examples", 120, "--max-steps", 12, "--max-length", 64,
                  "--lr", "5e-5", "--log-every", 4)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "test (120 examples)" in out.stdout and f"report: {run}/report.md" in out.stdout
    return run


@pytest.mark.slow
def test_train_cli_writes_a_complete_run_directory(tweets_run):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "tokenizer_config.json",
                 "train_config.json", "metrics.json", "metrics.jsonl", "report.md", "report.html",
                 "plots/confusion_test.png", "plots/training_curves.png", "data.json", "split.json"):
        assert (tweets_run / name).is_file(), name
    report = (tweets_run / "report.md").read_text()
    for label in LABELS:
        assert label in report
    config = json.loads((tweets_run / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    metrics = json.loads((tweets_run / "metrics.json").read_text())
    assert set(metrics) == {"validation", "test"} and metrics["test"]["n"] == 120
    data = json.loads((tweets_run / "data.json").read_text())
    assert data["encoding"].startswith("latin-1")  # the corpus is not valid UTF-8


@pytest.mark.slow
def test_transformers_loads_the_run_and_predicts_the_same(tweets_run, tweets_csv):
    transformers = pytest.importorskip("transformers")
    import torch

    with open(tweets_csv, encoding="latin-1", newline="") as f:
        texts = [row["text"] for row in csv.DictReader(f)][-40:]
    texts.append("-_- a text that looks like an option")
    out = bertfit("predict", tweets_run, "--json", "--", *texts)
    assert out.returncode == 0, out.stderr
    ours = [json.loads(line) for line in out.stdout.splitlines()]
    assert [o["text"] for o in ours] == texts
    model, info = transformers.AutoModelForSequenceClassification.from_pretrained(tweets_run, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(tweets_run)
    # transformers gives the uncalibrated logits; bertfit's probabilities divide them by the run's
    # fitted temperature (task.json), as the README says: the same numbers once that is applied.
    state = json.loads((Path(tweets_run) / "task.json").read_text(encoding="utf-8")).get("state") or {}
    temperature = state.get("temperature") or 1.0
    with torch.no_grad():
        batch = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        proba = (model.eval()(**batch).logits / temperature).softmax(-1)
    theirs = [model.config.id2label[i] for i in proba.argmax(-1).tolist()]
    assert [o["label"] for o in ours] == theirs
    for o, p in zip(ours, proba):
        assert abs(o["probabilities"]["positive"] - float(p[2])) < 1e-4


@pytest.mark.slow
def test_predict_file_keeps_every_row_and_column(tweets_run, tmp_path):
    rows = [("1", "I love this", "x"), ("2", "worst day ever", "y"), ("3", "", "z"), ("4", "ok, \"quoted\"\nline", "w")]
    src = write_csv(tmp_path / "in.csv", rows, header=("id", "Text", "other"))
    out = bertfit("predict", tweets_run, "--file", src)
    assert out.returncode == 0, out.stderr
    with open(tmp_path / "in.predictions.csv", newline="", encoding="utf-8") as f:
        result = list(csv.DictReader(f))
    assert [r["id"] for r in result] == ["1", "2", "3", "4"]
    assert result[3]["Text"] == "ok, \"quoted\"\nline"
    assert all(r["label"] in LABELS for r in result)
    assert all(abs(sum(float(r[f"prob_{l}"]) for l in LABELS) - 1) < 1e-4 for r in result)
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t, "n": i}) for i, t in enumerate(["good", "bad", "meh"])) + "\n")
    out = bertfit("predict", tweets_run, "--file", jsonl, "--output", tmp_path / "out.jsonl")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(l) for l in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [l["n"] for l in lines] == [0, 1, 2] and all("label" in l for l in lines)


@pytest.mark.slow
def test_both_engines_and_the_measured_default_give_pytorch_s_answers(tweets_run, tmp_path):
    """--engine onnxruntime (exported once into the cache), --engine pytorch, and the default ("auto",
    nothing forced: it measures which is faster here, says so, and caches the choice) answer alike.
    Without onnxruntime there is nothing to compare: skipped, not adapted."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    texts = ["so happy today", "this is awful", "the bus is at 5", "meh " * 40]
    cache = {"BERTFIT_CACHE": str(tmp_path / "cache")}
    pytorch = bertfit("predict", tweets_run, "--json", "--engine", "pytorch", *texts, env_extra=cache)
    assert not (tmp_path / "cache" / "onnx-fp32").exists()  # --engine pytorch never exports
    onnx = bertfit("predict", tweets_run, "--json", "--engine", "onnxruntime", *texts, env_extra=cache)
    assert onnx.returncode == 0 and pytorch.returncode == 0, onnx.stderr[-3000:] + pytorch.stderr[-3000:]
    assert (tmp_path / "cache" / "onnx-fp32").is_dir()  # exported once
    default = bertfit("predict", tweets_run, "--json", *texts, env_extra={**cache, "BERTFIT_CPU_ENGINE": ""})
    assert default.returncode == 0, default.stderr[-3000:]
    assert "prediction engine for batches:" in default.stderr and "for single texts:" in default.stderr
    assert len(list((tmp_path / "cache" / "engine-choice").glob("*.json"))) <= 1  # kept unless the machine was busy
    b = [json.loads(line) for line in pytorch.stdout.splitlines()]
    for other in (onnx, default):
        a = [json.loads(line) for line in other.stdout.splitlines()]
        assert [x["label"] for x in a] == [x["label"] for x in b] and len(a) == len(texts)
        for x, y in zip(a, b):
            assert all(abs(x["probabilities"][k] - y["probabilities"][k]) <= 1e-5 for k in x["probabilities"])


def test_bad_engine_exits_2(tweets_run):
    bad = bertfit("predict", tweets_run, "--engine", "tensorrt", "x")
    assert bad.returncode == 2 and "invalid choice: 'tensorrt'" in bad.stderr and "Traceback" not in bad.stderr


def test_predict_from_stdin_and_evaluate(tweets_run, tmp_path):
    out = bertfit("predict", tweets_run, stdin="first text\nsecond text\n")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(l) for l in out.stdout.splitlines()]
    assert [l["text"] for l in lines] == ["first text", "second text"]
    labelled = write_csv(tmp_path / "eval.csv", [("so happy today", "positive"), ("this is awful", "negative"),
                                                   ("the bus is at 5", "neutral")], header=("text", "sentiment"))
    out = bertfit("evaluate", tweets_run, "--file", labelled, "--output", tmp_path / "m.json")
    assert out.returncode == 0, out.stderr
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["n"] == 3 and f"{metrics['accuracy']:.4f}" in out.stdout
    # the metrics are those of predict's labels for the same file, recomputed here
    out = bertfit("predict", tweets_run, "--file", labelled, "--output", tmp_path / "p.csv")
    assert out.returncode == 0, out.stderr
    with open(tmp_path / "p.csv", newline="", encoding="utf-8") as f:
        predicted = [row["label"] for row in csv.DictReader(f)]
    truth = ["positive", "negative", "neutral"]
    assert metrics["accuracy"] == pytest.approx(sum(p == t for p, t in zip(predicted, truth)) / 3)
    f1 = []
    for label in LABELS:
        tp = sum(p == t == label for p, t in zip(predicted, truth))
        fp = sum(p == label != t for p, t in zip(predicted, truth))
        fn = sum(t == label != p for p, t in zip(predicted, truth))
        f1.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    assert metrics["macro_f1"] == pytest.approx(sum(f1) / len(f1))


@pytest.mark.slow
def test_int8_reports_its_cost_against_fp32(tweets_run, tmp_path):
    """evaluate --int8 measures agreement and accuracy deltas on the user's file; predict --int8 says
    that it is approximate (on stderr: stdout stays machine-readable)."""
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (the export extra)")
    pytest.importorskip("onnx", reason="onnx not installed (the export extra)")
    labelled = write_csv(tmp_path / "eval.csv", [("so happy today", "positive"), ("this is awful", "negative"),
                                                   ("the bus is at 5", "neutral"), ("love it", "positive")],
                         header=("text", "sentiment"))
    out = bertfit("evaluate", tweets_run, "--file", labelled, "--int8", "--output", tmp_path / "m.json",
                  env_extra={"BERTFIT_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "int8 vs fp32 on these 4 examples: labels agree" in out.stdout
    int8_metrics = json.loads((tmp_path / "m.json").read_text())
    cost = int8_metrics["int8_cost"]
    out = bertfit("evaluate", tweets_run, "--file", labelled, "--output", tmp_path / "fp32.json")
    assert out.returncode == 0, out.stderr[-3000:]
    fp32_metrics = json.loads((tmp_path / "fp32.json").read_text())
    assert "int8_cost" not in fp32_metrics
    # The cost compares the two models' own evaluations of this file, not some stored figure.
    assert cost["accuracy_fp32"] == fp32_metrics["accuracy"] and cost["macro_f1_fp32"] == fp32_metrics["macro_f1"]
    assert cost["accuracy_int8"] == int8_metrics["accuracy"]
    assert cost["accuracy_delta"] == pytest.approx(int8_metrics["accuracy"] - fp32_metrics["accuracy"])
    assert cost["macro_f1_delta"] == pytest.approx(int8_metrics["macro_f1"] - fp32_metrics["macro_f1"])
    # the agreement, recomputed from the two label lists: predict --int8 and predict (fp32) on the file
    labels = {}
    for name, flags in (("int8", ["--int8"]), ("fp32", [])):
        out = bertfit("predict", tweets_run, "--file", labelled, "--output", tmp_path / f"{name}.csv", *flags,
                      env_extra={"BERTFIT_CACHE": str(tmp_path / "cache")})
        assert out.returncode == 0, out.stderr[-3000:]
        with open(tmp_path / f"{name}.csv", newline="", encoding="utf-8") as f:
            labels[name] = [row["label"] for row in csv.DictReader(f)]
    assert cost["label_agreement"] == pytest.approx(sum(a == b for a, b in zip(labels["int8"], labels["fp32"])) / 4)
    truth = ["positive", "negative", "neutral", "positive"]
    assert cost["accuracy_int8"] == pytest.approx(sum(a == t for a, t in zip(labels["int8"], truth)) / 4)
    assert cost["accuracy_fp32"] == pytest.approx(sum(a == t for a, t in zip(labels["fp32"], truth)) / 4)
    out = bertfit("predict", tweets_run, "--int8", "so happy today", env_extra={"BERTFIT_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "int8 is approximate" in out.stderr and "bertfit evaluate" in out.stderr
    assert "approximate" not in out.stdout


# --- bad input: a clear message with the file and row, exit code 2, never a traceback ----------


def run_bad(tmp_path: Path, tiny_model_dir: Path, train_file: Path, *extra: str) -> subprocess.CompletedProcess:
    out = bertfit("train", "--train-file", train_file, "--model", tiny_model_dir, "--output-dir", tmp_path / "run",
                  "--max-steps", 2, *extra, timeout=120)
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == 2, (out.returncode, out.stderr)
    return out


def test_missing_column_lists_the_columns_found(tmp_path, tiny_model_dir):
    f = write_csv(tmp_path / "d.csv", [("good", "positive")], header=("body", "label"))
    err = run_bad(tmp_path, tiny_model_dir, f).stderr
    assert "body" in err and "label" in err and "--text-column" in err


def test_empty_file(tmp_path, tiny_model_dir):
    f = tmp_path / "empty.csv"
    f.write_text("")
    assert "empty.csv" in run_bad(tmp_path, tiny_model_dir, f).stderr


def test_label_unseen_in_training(tmp_path, tiny_model_dir):
    train = write_csv(tmp_path / "train.csv", synthetic_rows(60, seed=2))
    test = write_csv(tmp_path / "test.csv", [("good day", "positive"), ("odd", "surprised"), ("bad", "negative")])
    err = run_bad(tmp_path, tiny_model_dir, train, "--test-file", test).stderr
    assert "test.csv" in err and "'surprised' (1 row: 3)" in err and "Known labels: 'negative', 'positive'" in err


def test_empty_text_and_too_many_fields_name_the_row(tmp_path, tiny_model_dir):
    f = tmp_path / "bad.csv"
    f.write_text("text,label\ngood one,positive\n,negative\nbad,negative\n", encoding="utf-8")
    assert "row 3" in run_bad(tmp_path, tiny_model_dir, f).stderr
    f.write_text("text,label\ngood one,positive\nbad,negative,extra\n", encoding="utf-8")
    err = run_bad(tmp_path, tiny_model_dir, f).stderr
    assert "row 3" in err and "--skip-bad-rows" in err
    rows = synthetic_rows(80, seed=3)
    lines = ["text,label"] + [f"{t},{l}" for t, l in rows] + ["broken,row,here"]
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = bertfit("train", "--train-file", f, "--model", tiny_model_dir, "--output-dir", tmp_path / "skip",
                  "--max-steps", 2, "--skip-bad-rows", timeout=300)
    assert out.returncode == 0, out.stderr
    data = json.loads((tmp_path / "skip" / "data.json").read_text())
    assert data["rejected"] == 1 and "row 82" in data["rejected_examples"][0]


def test_binary_file(tmp_path, tiny_model_dir):
    f = tmp_path / "data.csv"
    f.write_bytes(gzip.compress(b"text,label\nhello,positive\n"))
    assert "binary" in run_bad(tmp_path, tiny_model_dir, f).stderr


def test_million_character_text(tmp_path, tiny_model_dir):
    f = write_csv(tmp_path / "long.csv", [("good", "positive"), ("x" * 1_000_000, "negative")])
    err = run_bad(tmp_path, tiny_model_dir, f).stderr
    assert "row 3" in err and "1,000,000" in err and "--max-chars" in err


def test_bad_settings_and_missing_model(tmp_path, tiny_model_dir, synthetic_csv):
    err = run_bad(tmp_path, tiny_model_dir, synthetic_csv, "--max-length", "600").stderr
    assert "max_length must be between 2 and 512" in err
    out = bertfit("train", "--train-file", synthetic_csv, "--model", tmp_path / "nope", "--output-dir", tmp_path / "r2")
    assert out.returncode == 2 and "no such directory" in out.stderr and "Traceback" not in out.stderr
    out = bertfit("predict", tmp_path / "nothing-here", "text")
    assert out.returncode == 2 and "Traceback" not in out.stderr


def test_help_explains_every_option():
    out = bertfit("train", "--help")
    assert out.returncode == 0
    for flag in ("--train-file", "--label-map", "--class-weights", "--patience", "--resume", "--grad-accum",
                 "--eval-every", "--metric", "--skip-bad-rows", "--config", "--quick"):
        assert flag in out.stdout
    for command in ("predict", "evaluate"):
        assert bertfit(command, "--help").returncode == 0


def test_config_file_values_are_overridden_by_flags(tmp_path, tiny_model_dir, synthetic_csv):
    config = tmp_path / "exp.yaml"
    config.write_text(f"train_file: {synthetic_csv}\nmodel: {tiny_model_dir}\nmax_steps: 3\nlr: 1.0e-4\n"
                      f"max_length: 32\noutput_dir: {tmp_path / 'run'}\n")
    out = bertfit("train", "--config", config, "--lr", "2e-4", timeout=300)
    assert out.returncode == 0, out.stderr
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert saved["lr"] == 2e-4 and saved["max_steps"] == 3 and saved["max_length"] == 32
    toml = tmp_path / "exp.toml"
    toml.write_text(f'train_file = "{synthetic_csv}"\nmodel = "{tiny_model_dir}"\nmax_steps = 2\nbogus = 1\n')
    out = bertfit("train", "--config", toml)
    assert out.returncode == 2 and "unknown setting(s) bogus" in out.stderr


def test_engine_choices_are_the_library_s():
    """--engine's choices are written out in the CLI (it parses without importing torch): keep them equal."""
    from bertfit import serve
    from bertfit.cli import build_parser
    from bertfit.errors import ConfigError
    from bertfit.predict.predictor import ENGINES

    parser = build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name in ("predict", "evaluate", "serve"):
        engine = next(a for a in subcommands[name]._actions if a.dest == "engine")
        assert tuple(engine.choices) == ENGINES and engine.default == "auto", name
    with pytest.raises(ConfigError, match="--engine must be one of auto, pytorch, onnxruntime, got 'tensorrt'"):
        serve.ServeConfig(run="unused", engine="tensorrt")
