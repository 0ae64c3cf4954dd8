"""A task's own settings, declared by the task (tasks/settings.py, tasks/declared.py): the registry and
the declarations agree; flags, validation, saving and the run's reading settings come from them, not
from code per key; old train_config.json files load and save unchanged; a new task's setting needs no
edit in shared code."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from bertfit.cli import build_parser, main
from bertfit.errors import ConfigError
from bertfit.tasks import TASKS
from bertfit.tasks.declared import DECLARED, TRAIN_SETTINGS, TRAIN_TASKS
from bertfit.tasks.settings import Setting, add_flags, by_name, flag_values
from bertfit.train.config import TrainConfig

DATA = Path(__file__).parent / "data"


def test_declarations_list_every_registered_task_with_its_class_settings():
    assert list(DECLARED) == list(TASKS)
    for name, cls in TASKS.items():
        assert cls.settings == DECLARED[name], name
    assert TRAIN_TASKS == tuple(name for name, cls in TASKS.items() if cls.command == "train")


def test_setting_names_are_unambiguous():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    seen: dict[str, Setting] = {}
    for settings in DECLARED.values():
        for setting in settings:
            assert setting.name not in fields, f"{setting.name} is also a TrainConfig field"
            assert seen.setdefault(setting.name, setting) == setting, f"{setting.name} declared twice, differently"
            assert setting.commands and set(setting.commands) <= {"train", "predict"}
            if setting.default is not None or not setting.optional:
                assert setting.check(setting.default) == setting.default, setting.name


def test_declarations_import_without_torch():
    code = "import sys\nimport bertfit.tasks.declared\nprint('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "NO-TORCH"


@pytest.mark.parametrize("command", ["train", "predict"])
def test_each_declared_flag_is_on_its_command_naming_its_task(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    declared = by_name(DECLARED, command)
    assert declared, command
    for setting, tasks in declared.values():
        assert setting.flag in shown
        assert f"{'/'.join(tasks)}: {' '.join(setting.help.split())}" in shown


def test_an_old_train_config_loads_and_saves_the_same_keys_and_values():
    """tests/data/train_config_pre_seam.json: written by TrainConfig.save at 875766a (before tasks
    declared their settings), with every NER/QA setting off its default."""
    raw = json.loads((DATA / "train_config_pre_seam.json").read_text(encoding="utf-8"))
    config = TrainConfig.from_dict(raw)
    assert (config.tag_column, config.tag_scheme, config.label_all_subwords, config.doc_stride) == (2, "iob1", True, 64)
    assert json.loads(json.dumps(config.to_dict())) == raw
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.replace(tag_column=1).tag_column == 1 and config.replace(lr=1e-4).tag_scheme == "iob1"
    defaults = TrainConfig().to_dict()
    assert {name: defaults[name] for name in TRAIN_SETTINGS} == {n: s.default for n, s in TRAIN_SETTINGS.items()}


@pytest.mark.parametrize("setting", [s for s in TRAIN_SETTINGS.values() if s.kind in (int, float)],
                         ids=lambda s: s.name)
def test_out_of_range_values_are_refused_naming_the_setting_and_range(setting, tmp_path, capsys):
    for value in (setting.low - 1, setting.high + 1):
        with pytest.raises(ConfigError, match=rf"{setting.name} must be a (whole number|number) (above|at least) .* and (below|at most) "
                                              rf".*got {value}"):
            TrainConfig.from_dict({setting.name: value})
        status = main(["train", setting.flag, str(value), "--output-dir", str(tmp_path / "run")])
        assert status == 2
        assert f"{setting.name} must be a" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_open_bounds_exclude_their_ends():
    """multi-label's --threshold is a probability strictly between 0 and 1, as before it was declared."""
    for value in (0, 1, 0.0, 1.0):
        with pytest.raises(ConfigError, match=f"threshold must be a number above 0 and below 1, got {value}"):
            TrainConfig(threshold=value)
    with pytest.raises(ConfigError, match="threshold must be a finite number, got nan"):
        TrainConfig(threshold=float("nan"))
    assert TrainConfig(threshold=1 - 1e-9).threshold == 1 - 1e-9 and TrainConfig().threshold is None


def test_wrong_types_and_choices_are_refused():
    for setting in TRAIN_SETTINGS.values():
        with pytest.raises(ConfigError, match=setting.name):
            TrainConfig.from_dict({setting.name: [1]})
        if setting.choices:
            with pytest.raises(ConfigError, match=rf"{setting.name} must be one of {', '.join(setting.choices)}"):
                TrainConfig(**{setting.name: "nonsense"})


def test_a_new_tasks_setting_needs_no_edit_in_shared_code(monkeypatch):
    """A task declaring a setting gets its flag, its validation and its flat key in train_config.json."""
    import bertfit.train.config as train_config

    toy = Setting("toy_span", int, 4, "longest span the toy task reads", low=1, high=9, reading=True)
    declared = {**DECLARED, "toy": (toy,)}
    monkeypatch.setattr(train_config, "TRAIN_SETTINGS", {**TRAIN_SETTINGS, "toy_span": toy})
    parser = argparse.ArgumentParser()
    add_flags(parser, declared, "train")
    args = parser.parse_args(["--toy-span", "7"])
    assert flag_values(args, declared, "train")["toy_span"] == 7
    config = TrainConfig(**{k: v for k, v in flag_values(args, declared, "train").items() if v is not None})
    assert config.toy_span == 7 and config.to_dict()["toy_span"] == 7
    assert TrainConfig().toy_span == 4
    with pytest.raises(ConfigError, match="toy_span must be a whole number at least 1 and at most 9, got 10"):
        TrainConfig(toy_span=10)


def test_predict_flags_reach_only_the_task_that_declares_them(caplog):
    from bertfit.cli.predict import _apply_task_options

    class Fake:
        def __init__(self, name, settings):
            self.name, self.settings, self.applied = name, settings, None

        def apply_options(self, values):
            self.applied = dict(values)

    args = build_parser().parse_args(["predict", "run", "--top-k", "3"])
    qa = Fake("qa", DECLARED["qa"])
    _apply_task_options(qa, args)
    assert qa.applied == {"top_k": 3}
    ner = Fake("ner", DECLARED["ner"])
    with caplog.at_level(logging.WARNING, logger="bertfit"):
        _apply_task_options(ner, args)
    assert ner.applied is None and "--top-k: not a setting of this ner model" in caplog.text
    with pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "run", "--top-k", "0"])


def test_the_run_saves_its_tasks_reading_settings_and_evaluate_reads_files_alike(tmp_path, capsys):
    """job.py saves the settings a task declares as reading (NER: --tag-column) in task.json, so
    `bertfit evaluate` reads a file whose last column is not the tag as training did."""
    from conftest import build_tiny_model_dir

    from bertfit.train.finetune import fine_tune

    words = "john mary paris rome saw met the .".split()
    model_dir = build_tiny_model_dir(tmp_path / "model", words=words, max_position_embeddings=64)
    rows = [("john", "B-PER"), ("saw", "O"), ("paris", "B-LOC"), (".", "O")]
    conll = tmp_path / "train.conll"  # word, tag, then a part-of-speech column: the tag is column 1
    conll.write_text("".join("".join(f"{w}\t{t}\tX\n" for w, t in rows) + "\n" for _ in range(12)), encoding="utf-8")
    config = TrainConfig(train_file=str(conll), validation_file=str(conll), test_file=str(conll), problem_type="ner",
                         tag_column=1, model=str(model_dir), max_steps=2, batch_size=4, threads=1, max_length=16,
                         output_dir=str(tmp_path / "run"))
    result = fine_tune(config)
    reading = json.loads((result.run_dir / "task.json").read_text(encoding="utf-8"))["reading"]
    assert reading["tag_column"] == 1 and reading["tag_scheme"] == "auto"
    assert {n: s.reading for n, s in TRAIN_SETTINGS.items() if s.reading} == {"tag_column": True, "tag_scheme": True}
    capsys.readouterr()
    assert main(["evaluate", str(result.run_dir), "--file", str(conll)]) == 0
    assert "f1" in capsys.readouterr().out


def test_a_tasks_input_fields_are_flags_of_predict(tmp_path):
    """QA declares --question and --context (or --context-file): predict builds the one input from them,
    and names what a model takes when the flags do not fit it."""
    from bertfit.cli.predict import _apply_task_options, _flag_input
    from bertfit.errors import BertfitError

    class Fake:
        def __init__(self, name):
            self.name, self.settings, self.applied = name, DECLARED[name], None

        def apply_options(self, values):
            self.applied = dict(values)

    passage = tmp_path / "passage.txt"
    passage.write_text("The cat sat on the mat.", encoding="utf-8")
    parse = build_parser().parse_args
    args = parse(["predict", "run", "--question", "Who sat?", "--context-file", str(passage), "--top-k", "2"])
    qa = Fake("qa")
    assert _flag_input(qa, args) == {"question": "Who sat?", "context": "The cat sat on the mat."}
    _apply_task_options(qa, args)
    assert qa.applied == {"top_k": 2}  # the input fields are not settings
    assert _flag_input(qa, parse(["predict", "run", "some", "text"])) is None
    with pytest.raises(BertfitError, match=r"this qa model takes --question and --context \(or --context-file\); "
                                           r"given: --question"):
        _flag_input(qa, parse(["predict", "run", "--question", "Who sat?"]))
    with pytest.raises(BertfitError, match="--context and --context-file are alternatives"):
        _flag_input(qa, parse(["predict", "run", "--question", "q", "--context", "c", "--context-file", str(passage)]))
    with pytest.raises(BertfitError, match=f"--context-file {tmp_path / 'missing.txt'}: no such file"):
        _flag_input(qa, parse(["predict", "run", "--question", "q", "--context-file", str(tmp_path / "missing.txt")]))
    with pytest.raises(BertfitError, match="this ner model takes texts"):
        _flag_input(Fake("ner"), parse(["predict", "run", "--question", "q", "--context", "c"]))
