"""`bertfit tune` (issue 28): a tiny Optuna search end to end, pruning, the time budget, kill -9 and
--resume, disk cleanup that touches only bertfit's files, and space files checked where they enter.

Every trial is a real (tiny) training run; the budget is judged on a fake clock, never on timings."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("optuna")

from bertfit.train.config import TrainConfig  # noqa: E402
from bertfit.tune.budget import Budget, parse_duration  # noqa: E402
from bertfit.tune.space import Param, read_space_file  # noqa: E402
from bertfit.tune.study import TuneSettings, remove_weights, run_study, save_settings  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"


def base_config(model: Path, data: Path, **changes) -> TrainConfig:
    # 10 steps an epoch, 4 evaluations of 40 texts; selected on validation loss (lower is better): the
    # tiny model barely moves at lr 1e-5, while lr 0.5 throws its loss far up (3.3 at the first evaluation).
    values = dict(train_file=str(data), model=str(model), threads=1, batch_size=16, epochs=2, eval_every=5,
                  max_length=32, max_train_examples=160, max_eval_examples=40, warmup_ratio=0.0, log_every=5,
                  metric="loss")
    values.update(changes)
    return TrainConfig(**values)


def settings(tmp_path: Path, model: Path, data: Path, *, lrs=(1e-5, 0.5), n_trials=3, **kw) -> TuneSettings:
    space = {"lr": Param("lr", choices=tuple(lrs))}
    tune = TuneSettings(base_config(model, data), space, {}, tmp_path / "tune", n_trials, kw.pop("budget", None),
                        seed=kw.pop("seed", 0), prune_startup_trials=kw.pop("prune_startup_trials", 3), **kw)
    save_settings(tune)
    return tune


def test_a_tiny_study_end_to_end(tmp_path, tiny_model_dir, synthetic_csv):
    from bertfit.predict.predictor import Predictor

    result = run_study(settings(tmp_path, tiny_model_dir, synthetic_csv, lrs=(1e-5, 1e-4, 0.5), seed=1))
    tune = result.tune_dir
    assert [r["dir"] for r in result.trials] == ["trial-000", "trial-001", "trial-002"]
    complete = [r for r in result.trials if r["state"] == "complete"]
    assert complete and result.direction == "minimize" and result.metric == "loss"
    best = min(complete, key=lambda r: r["value"])
    assert result.best["dir"] == best["dir"]
    assert os.readlink(tune / "best") == best["dir"]
    assert json.loads((tune / "best.json").read_text())["value"] == pytest.approx(best["value"])
    for row in complete:  # the objective is the run's own validation metric; test was never read by a trial
        metrics = json.loads((tune / row["dir"] / "metrics.json").read_text())
        assert metrics["validation"]["loss"] == pytest.approx(row["value"])
        assert ("test" in metrics) == (row["dir"] == best["dir"])
    assert set(result.best["test"]) >= {"accuracy", "macro_f1"}
    # The best trial is a normal run: it predicts, with the validation figure its trial reported.
    predictor = Predictor.load(tune / "best", engine="pytorch")
    assert len(predictor.predict(["a great movie", "an awful day"])) == 2
    report = (tune / "tune_report.md").read_text()
    assert f"[{best['dir']}]({best['dir']}/report.md)" in report and report.count("| complete |") == len(complete)
    assert "(plots/optimization_history.png)" in report and (tune / "plots" / "optimization_history.png").stat().st_size
    assert "## Parameter importances" in report and "| lr | 1.000 |" in report  # the one searched setting
    assert "(plots/parallel_coordinates.png)" in report and (tune / "plots" / "parallel_coordinates.png").stat().st_size
    summary = json.loads((tune / "summary.json").read_text())
    assert summary["best_link"] == best["dir"] and summary["importances"]["importances"] == {"lr": 1.0}


def test_trials_far_below_the_median_are_pruned(tmp_path, tiny_model_dir, synthetic_csv):
    result = run_study(settings(tmp_path, tiny_model_dir, synthetic_csv, n_trials=5, prune_startup_trials=1, seed=3,
                                keep_weights="best"))
    states = {r["dir"]: r["state"] for r in result.trials}
    pruned = [d for d, s in states.items() if s == "pruned"]
    assert pruned, states
    for name in pruned:
        run = result.tune_dir / name
        evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert sum(r["kind"] == "eval" for r in evals) < 4  # stopped before its 2 epochs' evaluations ran out
        assert not (run / "model.safetensors").exists()
        assert not [p for p in (run / "checkpoints").iterdir()]
        assert (run / "train_config.json").exists()  # only the weights went
    assert all(r["params"]["lr"] == 0.5 for r in result.trials if r["state"] == "pruned")
    complete = [r["dir"] for r in result.trials if r["state"] == "complete"]
    assert len(complete) >= 2 and any(r["params"]["lr"] == 1e-5 for r in result.trials if r["dir"] in complete)
    # --keep-weights best: only the best trial keeps its weights; the others keep their records.
    weighted = [d for d in complete if (result.tune_dir / d / "model.safetensors").exists()]
    assert weighted == [result.best["dir"]], weighted
    assert all((result.tune_dir / d / "metrics.json").exists() for d in complete)


def test_pruned_weights_removal_touches_only_bertfits_files(tmp_path, tiny_model_dir, synthetic_csv):
    from bertfit.train.finetune import fine_tune

    run = tmp_path / "trial-000"
    fine_tune(base_config(tiny_model_dir, synthetic_csv, output_dir=str(run), max_steps=4, save_every=2,
                          keep_checkpoints=5, eval_every=0))
    (run / "notes.txt").write_text("mine")
    (run / "mine.safetensors").write_text("mine")
    (run / "checkpoints" / "my-folder").mkdir()
    assert [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step-")]
    remove_weights(run)
    assert not (run / "model.safetensors").exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["my-folder"]
    assert (run / "notes.txt").read_text() == "mine" and (run / "mine.safetensors").exists()
    # A folder bertfit did not make is never touched.
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "model.safetensors").write_text("theirs")
    remove_weights(stranger)
    assert (stranger / "model.safetensors").read_text() == "theirs"


def test_the_budget_uses_the_mean_duration_of_finished_trials():
    now = [0.0]
    budget = Budget(250.0, clock=lambda: now[0])
    assert budget.allows_next([])  # nothing measured yet: the first trial starts
    now[0] = 100.0
    assert budget.allows_next([100.0])  # ends at 200
    now[0] = 200.0
    assert not budget.allows_next([100.0, 100.0])  # would end at 300 > 250
    assert budget.allows_next([10.0, 30.0])  # ends at 220
    assert Budget(None).allows_next([1e9])
    assert [parse_duration(t) for t in ("90s", "30m", "2h", "1h30m", "45")] == [90, 1800, 7200, 5400, 45]


def test_the_search_starts_no_trial_that_could_not_finish_in_the_budget(tmp_path, tiny_model_dir, synthetic_csv,
                                                                       monkeypatch):
    import bertfit.train.finetune as finetune

    now = [0.0]
    real = finetune.fine_tune

    def fine_tune_taking_100s(*args, **kwargs):  # each trial costs 100 s on the fake clock
        result = real(*args, **kwargs)
        now[0] += 100.0
        return result

    monkeypatch.setattr(finetune, "fine_tune", fine_tune_taking_100s)
    tune = settings(tmp_path, tiny_model_dir, synthetic_csv, lrs=(1e-5,), n_trials=None, budget=250.0,
                    clock=lambda: now[0])
    result = run_study(tune)
    assert result.stopped_by == "time_budget"
    assert len(result.trials) == 2  # a third would start at 200 s and end at 300 s, past 250 s
    assert now[0] <= 250.0


def bertfit_tune(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "bertfit", "tune", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def cli_args(model: Path, data: Path, out: Path, space: Path) -> list[str]:
    return ["--train-file", str(data), "--model", str(model), "--threads", "1", "--batch-size", "16", "--epochs", "2",
            "--eval-every", "5", "--max-length", "32", "--max-train-examples", "160", "--max-eval-examples", "40",
            "--warmup-ratio", "0", "--metric", "loss", "--n-trials", "3",
            "--space", str(space), "--seed", "2", "--output-dir", str(out)]


def test_kill_9_mid_trial_then_resume_keeps_finished_trials_and_matches_an_uninterrupted_search(
        tmp_path, tiny_model_dir, synthetic_csv):
    space = tmp_path / "space.yaml"
    space.write_text("lr: [1e-5, 1e-4, 0.1]\nbatch_size: [8, 16]\n")
    killed = tmp_path / "killed"
    proc = bertfit_tune(cli_args(tiny_model_dir, synthetic_csv, killed, space))
    deadline = time.monotonic() + 240
    # Kill once trial-000 is finished (its metrics.json written) and trial-001 is under way.
    while not ((killed / "trial-000" / "metrics.json").exists() and (killed / "trial-001" / "train_config.json").exists()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    db = sqlite3.connect(killed / "study.db")
    states = [s for (s,) in db.execute("select state from trials order by number")]
    db.close()
    assert states[0] == "COMPLETE" and "RUNNING" in states, states
    kept = (killed / "trial-000" / "metrics.json").stat().st_mtime_ns
    (killed / "my-notes.txt").write_text("mine")

    resumed = bertfit_tune(["--resume", str(killed)])
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    assert (killed / "trial-000" / "metrics.json").stat().st_mtime_ns == kept  # the finished trial was not rerun
    assert (killed / "my-notes.txt").read_text() == "mine"

    straight = tmp_path / "straight"
    whole = bertfit_tune(cli_args(tiny_model_dir, synthetic_csv, straight, space))
    out2, err2 = whole.communicate(timeout=300)
    assert whole.returncode == 0, err2[-3000:]
    a, b = (json.loads((d / "best.json").read_text()) for d in (killed, straight))
    assert (a["dir"], a["params"], a["value"]) == (b["dir"], b["params"], b["value"])
    for name in ("trial-000", "trial-001", "trial-002"):  # every trial drew and scored the same
        assert json.loads((killed / name / "metrics.json").read_text())["validation"] == \
            json.loads((straight / name / "metrics.json").read_text())["validation"]


@pytest.mark.parametrize("text, expected", [
    ("learning_rate: {low: 1e-5, high: 1e-4}\n", "learning_rate: not a setting the search can vary"),
    ("lr: {low: 1e-3, high: 1e-5}\n", "lr: low (0.001) must be below high (1e-05)"),
    ("lr: {low: 0, high: 1e-3, log: true}\n", "lr: a log range needs low > 0"),
    ("batch_size: [16, -1]\n", "batch_size: batch_size must be"),
    ("lr: [1e-5\n", "cannot parse"),
    ("output_dir: [a, b]\n", "tune sets it"),
])
def test_a_bad_space_file_is_refused_in_one_line_with_exit_2(tmp_path, tiny_model_dir, synthetic_csv, capsys, text,
                                                              expected):
    from bertfit.cli import main

    space = tmp_path / "space.yaml"
    space.write_text(text)
    out = tmp_path / "tune"
    code = main(["tune", "--train-file", str(synthetic_csv), "--model", str(tiny_model_dir), "--n-trials", "1",
                 "--space", str(space), "--output-dir", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("bertfit: error: --space") and str(space) in err[0], err
    assert expected in err[0], err
    assert not out.exists()  # refused before anything was written


def test_space_file_ranges_and_fixed_values(tmp_path):
    space = tmp_path / "space.toml"
    space.write_text('lr = {low = 1e-5, high = 1e-4, log = true}\nepochs = [1, 2]\nweight_decay = 0.0\n'
                     'max_length = {low = 32, high = 128, step = 32}\n')
    searched, fixed = read_space_file(space)
    assert searched["lr"] == Param("lr", 1e-5, 1e-4, log=True)
    assert searched["epochs"].choices == (1, 2)
    assert searched["max_length"].integer and fixed == {"weight_decay": 0.0}


def test_a_search_without_a_limit_or_into_a_foreign_folder_is_refused(tmp_path, tiny_model_dir, synthetic_csv, capsys):
    from bertfit.cli import main

    common = ["tune", "--train-file", str(synthetic_csv), "--model", str(tiny_model_dir)]
    assert main([*common, "--output-dir", str(tmp_path / "a")]) == 2
    assert "give --n-trials and/or --time-budget" in capsys.readouterr().err
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("mine")
    assert main([*common, "--n-trials", "1", "--output-dir", str(foreign)]) == 2
    assert "is not empty and is not a bertfit search" in capsys.readouterr().err
    assert sorted(p.name for p in foreign.iterdir()) == ["thesis.tex"]
    assert main(["tune", "--resume", str(foreign)]) == 2
    assert "not a bertfit tune folder" in capsys.readouterr().err
    assert main([*common, "--n-trials", "1", "--time-budget", "soon", "--output-dir", str(tmp_path / "b")]) == 2
    assert "--time-budget 'soon' is not a duration" in capsys.readouterr().err


def test_the_best_trials_test_evaluation_equals_what_train_reports_on_test(tmp_path, tiny_model_dir, synthetic_csv):
    from bertfit.train.finetune import fine_tune
    from bertfit.tune.study import evaluate_test

    # A model that learned (test_train's recipe: 95% on this data), so test and validation differ.
    config = base_config(tiny_model_dir, synthetic_csv, output_dir=str(tmp_path / "run"), lr=5e-4, epochs=4,
                         eval_every=0, warmup_ratio=0.1, max_train_examples=None, max_eval_examples=None)
    result = fine_tune(config)
    trained = result.metrics["test"]
    assert trained["accuracy"] != result.metrics["validation"]["accuracy"] or \
        trained["loss"] != pytest.approx(result.metrics["validation"]["loss"], abs=1e-6)
    tune = TuneSettings(config, {}, {}, tmp_path, 1)
    measured = evaluate_test(tune, tmp_path / "run", {"lr": 5e-4})
    assert measured["confusion_matrix"] == trained["confusion_matrix"]
    for key in ("n", "accuracy", "macro_f1", "loss"):
        assert measured[key] == pytest.approx(trained[key], abs=1e-6), key


def test_final_seeds_retrain_the_best_settings_and_report_mean_and_std(tmp_path, tiny_model_dir, synthetic_csv):
    from statistics import mean, stdev

    result = run_study(settings(tmp_path, tiny_model_dir, synthetic_csv, lrs=(1e-5, 5e-4), n_trials=2, seed=4,
                                final_seeds=2))
    tune = result.tune_dir
    assert os.readlink(tune / "best") == result.best["dir"]  # the link stays the best trial
    runs = result.final["runs"]
    assert [r["dir"] for r in runs] == ["final-seed-5", "final-seed-6"] and result.final["seeds"] == [5, 6]
    saved = [json.loads((tune / r["dir"] / "metrics.json").read_text()) for r in runs]
    for run, metrics in zip(runs, saved):  # each a normal run of the best settings, evaluated once on test
        config = json.loads((tune / run["dir"] / "train_config.json").read_text())
        assert config["seed"] == run["seed"] and config["lr"] == result.best["params"]["lr"]
        assert set(metrics) >= {"validation", "test"}
    losses = [m["validation"]["loss"] for m in saved]
    assert losses[0] != losses[1]  # the seeds took effect
    accuracies = [m["test"]["accuracy"] for m in saved]
    final = json.loads((tune / "summary.json").read_text())["final_seeds"]
    assert final["validation"]["loss"] == pytest.approx({"mean": mean(losses), "std": stdev(losses)})
    assert final["test"]["accuracy"] == pytest.approx({"mean": mean(accuracies), "std": stdev(accuracies)})
    report = (tune / "tune_report.md").read_text()
    assert f"loss {mean(losses):.4f} ± {stdev(losses):.4f}" in report and "(final-seed-6/report.md)" in report


def test_max_length_is_the_99th_percentile_of_training_lengths_rounded_to_8_and_capped(tmp_path, tiny_model_dir):
    import numpy as np
    from conftest import synthetic_rows, write_csv

    from bertfit.train.finetune import prepare_data
    from bertfit.tune.lengths import choose_max_length

    short = write_csv(tmp_path / "short.csv", synthetic_rows(300, seed=5))
    config = TrainConfig(train_file=str(short), model=str(tiny_model_dir))
    # The tiny vocabulary holds every word: a text is its words plus [CLS] and [SEP].
    lengths = np.array([len(e.text.split()) + 2 for e in prepare_data(config).train])
    record = choose_max_length(config)
    assert record["p95"] == pytest.approx(np.percentile(lengths, 95))
    assert record["p99"] == pytest.approx(np.percentile(lengths, 99)) and record["max"] == lengths.max()
    assert record["chosen"] == -(-np.percentile(lengths, 99) // 8) * 8 < lengths.max() + 8
    assert record["truncated"] == pytest.approx((lengths > record["chosen"]).mean()) and record["cap"] == 64
    # Long texts: capped by the model's 64 positions.
    pieces = [text for text, _ in synthetic_rows(300, seed=6)]
    texts = [" ".join(pieces[i * 10:(i + 1) * 10]) for i in range(10)]  # about 90 words each, all different
    long = write_csv(tmp_path / "long.csv", synthetic_rows(300, seed=5) + [(t, "positive") for t in texts])
    record = choose_max_length(TrainConfig(train_file=str(long), model=str(tiny_model_dir)))
    assert record["p95"] < 24 and record["chosen"] == 64  # 3% of the texts are long: the 99th percentile decides


def test_tune_sets_max_length_from_the_data_unless_the_user_gives_it(tmp_path, tiny_model_dir, synthetic_csv):
    from bertfit.cli import main

    common = ["--quiet", "tune", "--train-file", str(synthetic_csv), "--model", str(tiny_model_dir), "--threads", "1",
              "--max-train-examples", "80", "--max-eval-examples", "20", "--epochs", "1", "--n-trials", "1"]
    assert main([*common, "--output-dir", str(tmp_path / "data")]) == 0
    saved = json.loads((tmp_path / "data" / "tune.json").read_text())
    chosen = saved["lengths"]["chosen"]
    assert saved["base"]["max_length"] == chosen != 128 and chosen % 8 == 0
    trial_config = json.loads((tmp_path / "data" / "trial-000" / "train_config.json").read_text())
    assert trial_config["max_length"] == chosen
    assert trial_config["explain_report_seconds"] == 0  # a trial spends no budget on its report's explanations
    report = (tmp_path / "data" / "tune_report.md").read_text()
    assert f"max_length: {chosen} (fixed)" in report and f"99th percentile {saved['lengths']['p99']:.0f}" in report
    assert main([*common, "--max-length", "40", "--explain-report-seconds", "3", "--output-dir", str(tmp_path / "given")]) == 0
    saved = json.loads((tmp_path / "given" / "tune.json").read_text())
    assert saved["base"]["max_length"] == 40 and saved["lengths"] is None
    given = json.loads((tmp_path / "given" / "trial-000" / "train_config.json").read_text())
    assert given["explain_report_seconds"] == 3  # the user's budget is kept


def test_parameter_importances_are_seeded_and_find_the_setting_that_matters(tmp_path):
    import optuna

    from bertfit.tune.analysis import param_importances, plot_parallel_coordinates

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    # The objective moves with lr over a wide range and barely with weight_decay.
    study.optimize(lambda t: 10 * t.suggest_float("lr", 0, 1) + 0.01 * t.suggest_float("weight_decay", 0, 1), n_trials=12)
    first, again = param_importances(study, seed=3), param_importances(study, seed=3)
    assert first == again and first["evaluator"] == "fANOVA"  # the same study and seed: the same figures
    shares = first["importances"]
    assert list(shares) == ["lr", "weight_decay"] and shares["lr"] > 0.9 and sum(shares.values()) == pytest.approx(1)
    assert plot_parallel_coordinates(study, tmp_path) == "plots/parallel_coordinates.png"
    assert (tmp_path / "plots" / "parallel_coordinates.png").stat().st_size > 1000
    one = optuna.create_study()
    one.optimize(lambda t: t.suggest_float("lr", 0, 1), n_trials=1)
    assert param_importances(one, seed=3) is None and plot_parallel_coordinates(one, tmp_path / "one") is None


def test_nproc_2_runs_trials_at_once_in_separate_processes_and_still_prunes(tmp_path, tiny_model_dir, synthetic_csv):
    import optuna

    from bertfit.tune.study import STUDY_NAME

    tune = settings(tmp_path, tiny_model_dir, synthetic_csv, lrs=(1e-5, 0.5), n_trials=1, prune_startup_trials=1)
    db = f"sqlite:///{tune.tune_dir / 'study.db'}"
    study = optuna.create_study(storage=db, study_name=STUDY_NAME, direction="minimize")
    study.enqueue_trial({"lr": 1e-5})
    run_study(tune)  # trial-000 finishes in this process: the median the parallel trials are pruned against
    # Then two workers, 2 threads split between them: lr 1e-5 runs to its end while lr 0.5, far worse at its
    # first evaluation, is pruned.
    study.enqueue_trial({"lr": 1e-5})
    study.enqueue_trial({"lr": 0.5})
    tune.n_trials, tune.nproc, tune.base = 3, 2, tune.base.replace(threads=2)
    save_settings(tune)
    result = run_study(tune)
    rows = {r["dir"]: r for r in result.trials}
    assert sorted(rows) == ["trial-000", "trial-001", "trial-002"]
    parallel = [rows["trial-001"], rows["trial-002"]]
    assert {r["process"] for r in parallel} == {r["process"] for r in parallel} - {os.getpid()} and \
        len({r["process"] for r in parallel}) == 2  # two worker processes, neither the caller
    first, second = sorted(parallel, key=lambda r: r["started"])
    assert second["started"] < first["ended"]  # the second started before the first ended: at once
    for r in parallel:  # each worker trained with its share of the threads
        assert json.loads((tune.tune_dir / r["dir"] / "train_config.json").read_text())["threads"] == 1
    assert {r["params"]["lr"]: r["state"] for r in parallel} == {1e-5: "complete", 0.5: "pruned"}
    assert result.best["dir"] in {"trial-000", "trial-001"} and os.readlink(tune.tune_dir / "best") == result.best["dir"]


def test_resume_keeps_the_pruner_processes_final_seeds_and_chosen_lengths(tmp_path, tiny_model_dir, synthetic_csv):
    import optuna

    from bertfit.tune.study import load_settings, make_pruner

    lengths = {"chosen": 24, "cap": 64, "p50": 9.0, "p95": 16.0, "p99": 17.0, "max": 18, "texts": 600, "truncated": 0.0}
    saved = settings(tmp_path, tiny_model_dir, synthetic_csv, pruner="halving", nproc=2, final_seeds=3, lengths=lengths)
    again = load_settings(saved.tune_dir, None, None)
    assert (again.pruner, again.nproc, again.final_seeds, again.lengths) == ("halving", 2, 3, lengths)
    assert load_settings(saved.tune_dir, None, None, final_seeds=0, nproc=1).final_seeds == 0  # a new flag wins
    assert isinstance(make_pruner(again.pruner, 3), optuna.pruners.SuccessiveHalvingPruner)
    assert isinstance(make_pruner("median", 3), optuna.pruners.MedianPruner)
    assert isinstance(make_pruner("none", 3), optuna.pruners.NopPruner)


def test_a_trial_running_when_the_budget_ends_stops_with_its_best_model(tmp_path, tiny_model_dir, synthetic_csv):
    """The budget is hard: the first trial has no measured duration to refuse it, so a long one is
    stopped in flight (after its first evaluation) and finishes as a run with its best model so far."""
    from bertfit.predict.predictor import Predictor

    now = [0.0]

    def clock():  # every reading advances the fake time 10 s: a trial's evaluations pass the 60 s budget
        now[0] += 10.0
        return now[0]

    tune = settings(tmp_path, tiny_model_dir, synthetic_csv, lrs=(1e-4,), n_trials=None, budget=60.0, clock=clock)
    result = run_study(tune)
    (row,) = result.trials
    cut = row["stopped_at_budget"]
    assert row["state"] == "complete" and cut is not None and 5 <= cut["step"] < cut["of"] == 20
    metrics = json.loads((result.tune_dir / row["dir"] / "metrics.json").read_text())
    assert metrics["validation"]["loss"] == pytest.approx(row["value"])
    assert Predictor.load(result.tune_dir / "best").predict(["a text"])  # a usable model
    assert f"budget: step {cut['step']} of 20" in (result.tune_dir / "tune_report.md").read_text()
    assert result.stopped_by == "time_budget"


def test_under_a_budget_the_first_trial_trains_fewest_epochs_and_later_ones_what_fits(tmp_path, tiny_model_dir,
                                                                                       synthetic_csv, monkeypatch):
    """A first draw of many epochs must not take the whole budget: the first trial trains the fewest
    epochs (it measures the machine), and each later one at most what leaves room for the trials the
    search still wants (the pruner's 3 startup trials and one more)."""
    import bertfit.train.finetune as finetune

    now = [0.0]
    real = finetune.fine_tune

    def fine_tune_taking_100s_an_epoch(config, *args, **kwargs):
        result = real(config, *args, **kwargs)
        now[0] += 100.0 * config.epochs
        return result

    monkeypatch.setattr(finetune, "fine_tune", fine_tune_taking_100s_an_epoch)
    space = {"lr": Param("lr", choices=(1e-5,)), "epochs": Param("epochs", 1, 3, integer=True)}
    tune = TuneSettings(base_config(tiny_model_dir, synthetic_csv), space, {}, tmp_path / "tune", None, 700.0,
                        seed=0, prune_startup_trials=3, clock=lambda: now[0])
    save_settings(tune)
    result = run_study(tune)
    epochs = [r["params"]["epochs"] for r in result.trials]
    assert epochs[0] == 1 and len(epochs) >= 4 and now[0] <= 700.0
    study_trials = __import__("optuna").load_study(study_name="bertfit-tune",
                                                   storage=f"sqlite:///{result.tune_dir / 'study.db'}").trials
    for t in study_trials[1:]:
        cap = t.user_attrs.get("epochs_cap")
        assert cap is None or t.params["epochs"] <= max(1, cap["most"])
    assert any(t.user_attrs.get("epochs_cap") for t in study_trials)  # the cap took effect


def test_the_first_trial_trains_the_defaults_and_the_report_says_what_the_search_bought(tmp_path, tiny_model_dir,
                                                                                         synthetic_csv):
    """train's own values open the search (those the space holds), so the report can say what the
    budget bought over them."""
    space = {"lr": Param("lr", choices=(1e-5, 5e-5, 0.5)), "batch_size": Param("batch_size", choices=(16, 32)),
             "warmup_ratio": Param("warmup_ratio", 0.2, 0.3)}  # the default 0.0 of base_config is outside
    tune = TuneSettings(base_config(tiny_model_dir, synthetic_csv, lr=5e-5), space, {}, tmp_path / "tune", 3,
                        seed=0)
    save_settings(tune)
    result = run_study(tune)
    first = result.trials[0]
    assert first["defaults"] and first["params"]["lr"] == 5e-5 and first["params"]["batch_size"] == 16
    assert 0.2 <= first["params"]["warmup_ratio"] <= 0.3  # drawn: the default is not in the space
    assert not any(r["defaults"] for r in result.trials[1:])
    report = (result.tune_dir / "tune_report.md").read_text()
    assert "## What the search bought over the defaults" in report
    assert f"validation loss {first['value']:.4f}" in report


def test_the_defaults_trial_keeps_per_label_thresholds_where_the_space_offers_them(tmp_path, tiny_model_dir,
                                                                                    synthetic_csv):
    """multi-label's default decision rule is None (a threshold tuned per label): a value the space
    offers, so the first trial trains it rather than leaving the sampler to draw 0.5."""
    from bertfit.tune.study import defaults_within

    space = {"threshold": Param("threshold", choices=(None, 0.5)), "lr": Param("lr", 1e-5, 1e-4, log=True)}
    tune = TuneSettings(base_config(tiny_model_dir, synthetic_csv, lr=5e-5, problem_type="multi-label"), space, {},
                        tmp_path / "tune", 3, seed=0)
    assert defaults_within(tune, space) == {"threshold": None, "lr": 5e-5}
    fixed = TuneSettings(base_config(tiny_model_dir, synthetic_csv, problem_type="multi-label", threshold=0.5),
                         space, {}, tmp_path / "tune2", 3, seed=0)
    assert defaults_within(fixed, space)["threshold"] == 0.5
