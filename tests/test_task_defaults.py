"""Training defaults per task (tasks/table.py TaskRow.defaults): a task's own values fill the settings
the user did not give (flag, config file or Python), whether the task is named or detected from the
labels; the settings given keep their values, and the run saves the resolved ones."""

from __future__ import annotations

import dataclasses
import json

import pytest

from bertfit.tasks import table
from conftest import interrupt_at_step
from bertfit.train.config import GENERAL_DEFAULTS, TrainConfig, resolve_config


@pytest.fixture
def multilabel_defaults(monkeypatch):
    """multi-label with defaults of its own (whatever the table holds today), for the detected path."""
    row = dataclasses.replace(table.ROWS["multi-label"], defaults=(("lr", 3e-4), ("epochs", 2.0)))
    monkeypatch.setitem(table.ROWS, "multi-label", row)
    return row


def test_a_named_task_takes_its_own_defaults_and_a_given_setting_keeps_its_value():
    assert TrainConfig().max_length == GENERAL_DEFAULTS["max_length"] == 128
    assert TrainConfig(problem_type="qa").max_length == 384
    assert TrainConfig(problem_type="qa", max_length=256).max_length == 256
    assert TrainConfig(problem_type="ner").lr == dict(table.ROWS["ner"].defaults).get("lr", GENERAL_DEFAULTS["lr"])
    assert resolve_config(None, {"problem_type": "qa"}).max_length == 384
    assert resolve_config({"max_length": 200}, {"problem_type": "qa"}).max_length == 200  # the file's value
    assert resolve_config(None, {"problem_type": "qa", "max_length": 320}).max_length == 320  # the flag's


def test_every_declared_default_is_a_valid_setting_inside_its_range():
    for row in table.TABLE:
        for name, value in row.defaults:
            assert name in GENERAL_DEFAULTS, (row.name, name)
            config = TrainConfig(problem_type=row.name) if row.command == "train" else None
            assert config is None or getattr(config, name) == value


def test_a_detected_task_fills_only_the_settings_not_given(multilabel_defaults):
    config = TrainConfig(lr=1e-5)
    assert config.lr == 1e-5 and config.epochs == GENERAL_DEFAULTS["epochs"]  # no task yet: the general ones
    detected = config.for_task("multi-label")
    assert detected.problem_type == "multi-label"
    assert detected.lr == 1e-5  # given: kept
    assert detected.epochs == 2.0  # not given: the task's
    assert detected.batch_size == GENERAL_DEFAULTS["batch_size"]  # the task has none of its own
    assert config.replace(epochs=5.0).for_task("multi-label").epochs == 5.0  # set by replace: given
    assert TrainConfig(problem_type="multi-label").lr == 3e-4


def test_the_saved_settings_are_the_resolved_ones_without_the_bookkeeping():
    config = TrainConfig(problem_type="qa")
    saved = config.to_dict()
    assert "defaulted" not in saved and saved["max_length"] == 384
    again = TrainConfig.from_dict(json.loads(json.dumps(saved)))
    assert again == config and again.defaulted == frozenset()  # every value was given by the file
    with pytest.raises(Exception, match="unknown setting"):
        TrainConfig.from_dict({**saved, "defaulted": []})


def test_help_shows_the_general_default_and_each_tasks_own(capsys):
    from bertfit.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 128; qa 384)" in text
    for row in table.TABLE:
        for name, value in row.defaults:
            assert f"{row.name} {value:g}" in text


def test_a_run_on_detected_labels_trains_and_saves_the_tasks_defaults_and_reruns_as_the_same_run(
        tmp_path, tiny_model_dir, multilabel_defaults, caplog):
    """No --task: the labels show multi-label, its defaults apply to the settings not given, the run
    directory records them (and the task), and the same command again is the same run, not a different one."""
    from bertfit.train.finetune import fine_tune

    kinds = [("good fun", "joy,love"), ("bad day", "anger"), ("so good", "joy"), ("awful", "anger,sad"),
             ("lovely", "love"), ("sad news", "sad")]
    rows = [(f"{text} {i}", labels) for i in range(20) for text, labels in kinds]  # 120 distinct texts
    data = tmp_path / "labels.csv"
    data.write_text("text,label\n" + "".join(f'{t},"{lab}"\n' for t, lab in rows), encoding="utf-8")
    config = TrainConfig(train_file=str(data), model=str(tiny_model_dir), output_dir=str(tmp_path / "run"),
                         max_length=16, batch_size=8, threads=1, epochs=1.0, calibrate=False, save_every=2,
                         explain_report_seconds=0.0)
    with caplog.at_level("INFO"):
        interrupt_at_step(4, lambda: fine_tune(config))  # killed after its checkpoint at step 2
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert saved["problem_type"] == "multi-label" and saved["lr"] == 3e-4  # the task's
    assert saved["epochs"] == 1.0 and saved["batch_size"] == 8  # given: kept
    assert "multi-label defaults: lr 0.0003, epochs" not in caplog.text  # epochs was given
    assert "multi-label defaults: lr 0.0003" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        result = fine_tune(config)  # the same command: recognised as this run and resumed, not refused
    assert "already holds checkpoints of this run: resuming it" in caplog.text
    assert result.metrics  # it finished
    with pytest.raises(Exception, match="different settings"):
        interrupt_at_step(4, lambda: fine_tune(config.replace(output_dir=str(tmp_path / "run2"))))
        fine_tune(config.replace(output_dir=str(tmp_path / "run2"), lr=1e-3))  # a different run is still told apart


def test_a_tune_trial_keeps_the_settings_left_to_the_task_defaults_for_a_task_detected_later(multilabel_defaults, tmp_path):
    """bertfit tune builds each trial from the search's base settings and the trial's: what the trial
    sets is given; what neither sets still takes the defaults of the task the labels show (also after
    --resume, which reads the base from tune.json)."""
    from bertfit.tune.space import Param
    from bertfit.tune.study import TuneSettings, load_settings, save_settings

    base = TrainConfig(train_file="train.csv", epochs=1)
    trial = base.with_settings({"lr": 1e-4, "threshold": 0.4, "seed": 3}, source="the trial's settings")
    assert trial.lr == 1e-4 and trial.threshold == 0.4 and trial.seed == 3 and trial.epochs == 1
    assert "lr" not in trial.defaulted and "epochs" not in trial.defaulted and "batch_size" in trial.defaulted
    detected = trial.for_task("multi-label")
    assert (detected.lr, detected.epochs) == (1e-4, 1)  # given: kept
    untouched = base.with_settings({"seed": 3}).for_task("multi-label")
    assert untouched.lr == 3e-4  # left to the defaults: the detected task's
    settings = TuneSettings(base, {"lr": Param("lr", low=1e-5, high=1e-3, log=True)}, {}, tmp_path / "search",
                            n_trials=1)
    save_settings(settings)
    resumed = load_settings(settings.tune_dir, None, None)
    assert resumed.base == base and resumed.base.defaulted == base.defaulted
