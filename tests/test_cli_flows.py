"""The installed `bertfit` command on a tiny model and tiny data: flags and flows that only the CLI
exercises (--resume with other flags, sentence pairs, interrupts, exit codes of evaluate and export,
--quick, --validation-file, --label-map, --encoding, export --int8 --check-file, the report of a
collapsed run, the thread count)."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import NEGATIVE, POSITIVE, WORDS, synthetic_rows, write_csv
from bertfit.train.run_dir import RunDir

BERTFIT = str(Path(sys.executable).with_name("bertfit"))


def bertfit(*args, env_extra: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    for key in ("BERTFIT_KILL_AT_STEP", "BERTFIT_CRASH_AT"):
        if key not in (env_extra or {}):
            env.pop(key, None)
    return subprocess.run([BERTFIT, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)


def tiny_train(model_dir: Path, train_file: Path, run: Path, *extra) -> list:
    return ["train", "--model", model_dir, "--train-file", train_file, "--output-dir", run, "--max-length", 32,
            "--batch-size", 16, "--lr", "5e-4", "--threads", 1, "--log-every", 1, *extra]


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def no_traceback(out: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in out.stderr, out.stderr[-3000:]


# --- --resume RUN with other settings ---------------------------------------------------------


def test_resume_with_other_flags_names_each_ignored_one(tmp_path, tiny_model_dir):
    """--resume continues a run with its saved settings (what makes it exact); a flag given with it
    that differs is not silently dropped: the warning names it with both values. Same-valued flags
    (the original command plus --resume) are not mentioned."""
    data = write_csv(tmp_path / "d.csv", synthetic_rows(200, seed=3))
    run = tmp_path / "run"
    args = tiny_train(tiny_model_dir, data, run, "--max-steps", 8, "--save-every", 2)
    killed = bertfit(*args, env_extra={"BERTFIT_KILL_AT_STEP": "5"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    out = bertfit("train", "--resume", run, "--lr", "1e-3", "--batch-size", 16, "--epochs", 9)
    assert out.returncode == 0, out.stderr[-3000:]
    warnings = [line for line in out.stderr.splitlines() if "ignoring" in line]
    assert len(warnings) == 1, f"--lr and --epochs were dropped without a word: {out.stderr[-2000:]}"
    warning = warnings[0]
    assert f"--resume {run} continues the run with the settings saved in {run / 'train_config.json'}" in warning
    assert "--lr 0.001 (the run's: 0.0005)" in warning and "--epochs 9.0 (the run's: 3.0)" in warning
    assert "--batch-size" not in warning  # given, but equal to the saved value
    assert "--overwrite" in warning
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["lr"] == 5e-4 and saved["epochs"] == 3.0  # the run went on with its own settings
    lrs = [r["lr"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]
    assert len(lrs) == 8 and max(lrs) <= 5e-4
    again = bertfit(*args[:-4], "--max-steps", 8, "--save-every", 2, "--resume", run)  # the original command
    assert again.returncode == 0 and "ignoring" not in again.stderr, again.stderr[-3000:]


# --- sentence pairs end to end --------------------------------------------------------------


def pair_rows(n: int, seed: int) -> list[tuple[str, str, str]]:
    """(premise, hypothesis, label): the label is the sentiment word in the *second* text; the first
    is filler. A model that ignored --pair-column could not beat chance."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["positive", "negative"])
        premise = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 6))]
        words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if label == "positive" else NEGATIVE))
        rows.append((premise, " ".join(words), label))
    return rows


def test_sentence_pair_model_trains_evaluates_and_predicts(tmp_path, tiny_model_dir):
    train = write_csv(tmp_path / "train.csv", pair_rows(600, seed=1), header=("premise", "hypothesis", "label"))
    held_out = write_csv(tmp_path / "held.csv", pair_rows(60, seed=2), header=("premise", "hypothesis", "label"))
    run = tmp_path / "run"
    out = bertfit(*tiny_train(tiny_model_dir, train, run, "--text-column", "premise", "--pair-column", "hypothesis",
                              "--epochs", 10))
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((run / "train_config.json").read_text())["pair_column"] == "hypothesis"

    out = bertfit("evaluate", run, "--file", held_out, "--text-column", "premise", "--pair-column", "hypothesis",
                  "--output", tmp_path / "m.json")
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["n"] == 60 and metrics["accuracy"] >= 0.9, metrics

    out = bertfit("predict", run, "--file", held_out, "--text-column", "premise", "--pair-column", "hypothesis",
                  "--output", tmp_path / "p.csv")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = read_rows(tmp_path / "p.csv")
    # evaluate's accuracy is the one recomputed from predict's labels (written beside the file's own
    # gold label column, as predicted_label) for the same pairs
    truth = [label for _, _, label in pair_rows(60, seed=2)]
    assert sum(r["predicted_label"] == t for r, t in zip(rows, truth)) / 60 == pytest.approx(metrics["accuracy"])

    # evaluate reads the run's own columns when none are given: the pair too, never silently dropped.
    out = bertfit("evaluate", run, "--file", held_out, "--output", tmp_path / "default.json")
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((tmp_path / "default.json").read_text())["accuracy"] == metrics["accuracy"]

    # predict, like evaluate, reads the run's own columns when none are given ...
    out = bertfit("predict", run, "--file", held_out, "--output", tmp_path / "p_default.csv")
    assert out.returncode == 0, out.stderr[-3000:]
    assert [r["predicted_label"] for r in read_rows(tmp_path / "p_default.csv")] == [r["predicted_label"] for r in rows]
    # ... and a file without the run's pair column is refused (exit 2, naming the column), never
    # predicted from the first text alone; the output file is not written.
    firsts = tmp_path / "firsts.csv"
    firsts.write_text("premise\n" + "".join(f"{p}\n" for p, _, _ in pair_rows(5, seed=2)), encoding="utf-8")
    out = bertfit("predict", run, "--file", firsts, "--output", tmp_path / "p_firsts.csv")
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "trained on text pairs" in out.stderr and "'hypothesis'" in out.stderr and "--pair-column" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "p_firsts.csv").exists()

    # Without the pair, the same model sees only filler: the pair column is what it learned from.
    from bertfit.predict.predictor import Predictor

    alone = Predictor.load(run, engine="pytorch").predict([p for p, _, _ in pair_rows(60, seed=2)])
    assert sum(a == t for a, t in zip(alone, truth)) / 60 < metrics["accuracy"] - 0.2


# --- interrupts and exit codes ----------------------------------------------------------------


def test_sigint_during_training_exits_130_and_the_run_resumes(tmp_path, tiny_model_dir):
    data = write_csv(tmp_path / "d.csv", synthetic_rows(200, seed=3))
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("BERTFIT_KILL_AT_STEP", None)
    # SIGINT back to its default in the child: a process started in the background by a shell
    # inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler.
    steps = 300  # far more than the 6 it trains before the interrupt; the resume trains the rest
    process = subprocess.Popen([BERTFIT, *map(str, tiny_train(tiny_model_dir, data, run, "--max-steps", steps,
                                                              "--save-every", 5))],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        log = run / "metrics.jsonl"
        deadline = time.monotonic() + 240  # a generous bound on start-up, not a speed requirement
        while not (log.exists() and sum(1 for line in log.read_text().splitlines() if '"train"' in line) >= 6):
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr[-3000:]
    assert "bertfit: interrupted (resume with --resume RUN)" in stderr and "Traceback" not in stderr
    assert (run / "checkpoints").is_dir() and any((run / "checkpoints").iterdir())
    interrupted_at = RunDir(run).checkpoint_steps()[-1]
    assert 5 <= interrupted_at < steps and not (run / "metrics.json").exists()  # stopped mid-run, unfinished
    resumed = bertfit("train", "--resume", run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {run} from step {interrupted_at} of {steps}" in resumed.stderr, resumed.stderr[-3000:]
    logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
              if json.loads(line).get("kind") == "train"]
    assert logged == list(range(1, steps + 1))  # every step once: the interrupted tail replaced, not repeated
    assert json.loads((run / "metrics.json").read_text())  # finished: metrics written


def test_evaluate_and_export_input_errors_exit_2(tmp_path, tiny_model_dir):
    data = write_csv(tmp_path / "d.csv", synthetic_rows(120, seed=4))
    run = tmp_path / "run"
    assert bertfit(*tiny_train(tiny_model_dir, data, run, "--max-steps", 2)).returncode == 0
    cases = {
        "missing file": (["evaluate", run, "--file", tmp_path / "nope.csv"], "nope.csv"),
        "unknown label": (["evaluate", run, "--file", write_csv(tmp_path / "u.csv", [("good day", "surprised")])],
                          "surprised"),
        "no text column": (["evaluate", run, "--file", write_csv(tmp_path / "c.csv", [("x", "positive")],
                                                                  header=("body", "label"))], "--text-column"),
        "not a run": (["evaluate", tmp_path / "nothing", "--file", data], "nothing"),
        "export: not a run": (["export", tmp_path / "nothing", "--output", tmp_path / "o1"], "nothing"),
        "export: missing check file": (["export", run, "--output", tmp_path / "o2", "--check-file",
                                        tmp_path / "nope.csv"], "nope.csv"),
    }
    for name, (args, named) in cases.items():
        out = bertfit(*args)
        no_traceback(out)
        assert out.returncode == 2, (name, out.returncode, out.stderr[-2000:])
        assert named in out.stderr, (name, out.stderr[-2000:])


# --- data flags through the CLI ------------------------------------------------------------


def test_quick_preset_and_its_overrides(tmp_path, tiny_model_dir, synthetic_csv):
    out = bertfit(*tiny_train(tiny_model_dir, synthetic_csv, tmp_path / "q", "--quick", "--max-train-examples", 200))
    assert out.returncode == 0, out.stderr[-3000:]
    saved = json.loads((tmp_path / "q" / "train_config.json").read_text())
    # the preset (train_config.QUICK), with the flag given beside it winning
    assert saved["epochs"] == 1.0 and saved["eval_every"] == 0 and saved["max_train_examples"] == 200
    data = json.loads((tmp_path / "q" / "data.json").read_text())
    assert data["rows"]["train"] == 200
    steps = [r for r in map(json.loads, (tmp_path / "q" / "metrics.jsonl").read_text().splitlines())
             if r["kind"] == "train"]
    assert steps[-1]["step"] == 13 and steps[-1]["epoch"] == 1.0  # one epoch of ceil(200 / 16) steps


def test_validation_file_label_map_and_encoding(tmp_path, tiny_model_dir):
    stars = {"negative": ["1", "2"], "positive": ["4", "5"]}
    rng = random.Random(0)

    def starred(rows):
        return [(text, rng.choice(stars[label])) for text, label in rows]

    def utf16(name, rows):  # UTF-16-LE without a byte-order mark: unreadable unless --encoding says so
        path = tmp_path / name
        path.write_bytes(("text,stars\n" + "".join(f"{t},{l}\n" for t, l in rows)).encode("utf-16-le"))
        return path

    train = utf16("train.csv", starred(synthetic_rows(160, seed=5)))
    validation = utf16("dev.csv", starred(synthetic_rows(30, seed=6)))
    test = utf16("test.csv", [("café " + text, label) for text, label in starred(synthetic_rows(20, seed=7))])
    args = tiny_train(tiny_model_dir, train, tmp_path / "run", "--validation-file", validation, "--test-file", test,
                      "--label-column", "stars", "--label-map", "1,2=negative;4,5=positive", "--max-steps", 4)
    out = bertfit(*args)
    assert out.returncode == 2 and "utf-16" in out.stderr, out.stderr[-2000:]
    no_traceback(out)
    out = bertfit(*args, "--encoding", "utf-16-le")
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "run"
    config = json.loads((run / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}  # the mapped classes, not the stars
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["validation"]["n"] == 30 and metrics["test"]["n"] == 20  # the files, not a split
    data = json.loads((run / "data.json").read_text())
    assert data["rows"] == {"train": 160, "validation": 30, "test": 20}
    assert any("utf-16-le" in source for source in data["sources"]), data["sources"]
    split = json.loads((run / "split.json").read_text())
    assert len(split["train"]) == 160  # the whole training file: nothing was split off it


# --- export --int8 --check-file -------------------------------------------------------------


def test_export_int8_with_check_file_reports_figures_recomputable_from_predictions(tmp_path, tiny_model_dir):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    data = write_csv(tmp_path / "d.csv", synthetic_rows(400, seed=8))
    run = tmp_path / "run"
    assert bertfit(*tiny_train(tiny_model_dir, data, run, "--epochs", 2)).returncode == 0
    check = write_csv(tmp_path / "check.csv", synthetic_rows(50, seed=9))
    out = bertfit("export", run, "--output", tmp_path / "onnx", "--int8", "--check-file", check,
                  env_extra={"BERTFIT_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "onnx" / "model.onnx").is_file()
    lines = out.stdout.splitlines()
    agree_line = next(l for l in lines if l.startswith("check on 50 texts vs PyTorch fp32"))
    acc_line = next(l for l in lines if l.startswith("accuracy: PyTorch fp32"))
    # recompute both from label lists: the export's own predictions and PyTorch's
    for engine_args, name in (([tmp_path / "onnx"], "int8"), ([run, "--engine", "pytorch"], "fp32")):
        out = bertfit("predict", *engine_args[:1], "--file", check, "--output", tmp_path / f"{name}.csv",
                      *engine_args[1:], env_extra={"BERTFIT_CACHE": str(tmp_path / "cache")})
        assert out.returncode == 0, out.stderr[-3000:]
    truth = [label for _, label in synthetic_rows(50, seed=9)]
    # check.csv has its own gold "label" column, so predict writes its labels into "predicted_label"
    int8 = [r["predicted_label"] for r in read_rows(tmp_path / "int8.csv")]
    fp32 = [r["predicted_label"] for r in read_rows(tmp_path / "fp32.csv")]
    agreement = sum(a == b for a, b in zip(int8, fp32)) / 50
    assert f"labels agree {100 * agreement:.2f}%" in agree_line
    acc_fp32 = sum(a == t for a, t in zip(fp32, truth)) / 50
    acc_int8 = sum(a == t for a, t in zip(int8, truth)) / 50
    assert f"PyTorch fp32 {acc_fp32:.4f}, export {acc_int8:.4f}" in acc_line


# --- the report of a real (tiny) run that collapsed to one class -------------------------------


def test_collapsed_run_reports_the_one_class_warning_and_its_confident_mistakes(tmp_path, tiny_model_dir):
    """97% of the rows are positive: a few steps teach the model to answer 'positive' always. The
    report must say so (the one-class warning) and list the negatives it got wrong, most confident first."""
    rows = synthetic_rows(600, seed=10)
    rows = [r for r in rows if r[1] == "positive"][:290] + [r for r in rows if r[1] == "negative"][:10]
    data = write_csv(tmp_path / "d.csv", rows)
    run = tmp_path / "run"
    out = bertfit(*tiny_train(tiny_model_dir, data, run, "--max-steps", 8, "--eval-every", 4))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "collapsed to one class" in out.stderr  # warned while training, not only in the report
    report = (run / "report.md").read_text()
    assert "predicts 'positive' for 100% of the validation set (collapsed to one class)" in report
    section = report[report.index("## Most confident mistakes"):]
    section = section[: section.index("\n## ")] if "\n## " in section else section
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines()
             if line.startswith("|") and not set(line) <= set("|-: ")]
    header, table = cells[0], cells[1:]
    assert header[:4] == ["confidence", "true", "predicted", "row"]
    split_rows = json.loads((run / "split.json").read_text())["test"]
    negatives = sorted(r for r in split_rows if rows[r - 2][1] == "negative")  # row 2 is the first data row
    assert negatives, "the test split holds at least one negative"
    # every test negative is a mistake (the model answers 'positive'), each listed once with its row
    assert sorted(int(c[3]) for c in table) == negatives
    assert all(c[1] == "negative" and c[2] == "positive" for c in table)
    confidences = [float(c[0]) for c in table]
    assert confidences == sorted(confidences, reverse=True) and min(confidences) > 0.5  # most confident first


# --- thread count -----------------------------------------------------------------------------


def test_thread_count_defaults_to_the_usable_cores_and_follows_threads(monkeypatch):
    import torch

    from bertfit.train.setup import configure_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
        assert configure_threads(None) == 3 and torch.get_num_threads() == 3  # cores it may run on, not cpu_count
        assert configure_threads(1) == 1 and torch.get_num_threads() == 1  # --threads wins
        monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # macOS, Windows
        monkeypatch.setattr(os, "cpu_count", lambda: 2)
        assert configure_threads(None) == 2
    finally:
        torch.set_num_threads(before)


def test_threads_flag_reaches_training(tmp_path, tiny_model_dir, synthetic_csv):
    out = bertfit(*tiny_train(tiny_model_dir, synthetic_csv, tmp_path / "run", "--max-steps", 1))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "training on cpu with 1 threads" in out.stderr
