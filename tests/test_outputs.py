"""Outputs never land on a run's own files (outputs.py): predict/evaluate --output and export --output are
refused inside the run or model they read, inside any bertfit run (its checkpoints and plots too), and
export never overwrites a folder it did not write (a user's config.json)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bertfit.cli import main
from bertfit.cli.common import check_output_file
from bertfit.errors import BertfitError
from bertfit.predict.outputs import check_export_directory
from conftest import synthetic_rows, write_csv


def bertfit(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bertfit", *map(str, args)], capture_output=True, text=True, timeout=300)


def cli(capsys, *args) -> tuple[int, str]:
    """The command in this process (one torch import for the whole file): (exit status, stderr)."""
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_dir) -> Path:
    base = tmp_path_factory.mktemp("outputs")
    csv = write_csv(base / "train.csv", synthetic_rows(60, seed=2))
    out = bertfit("train", "--model", tiny_model_dir, "--train-file", csv, "--output-dir", base / "run", "--max-steps", "2",
                  "--max-length", "32", "--threads", "1", "--batch-size", "8")
    assert out.returncode == 0, out.stderr[-2000:]
    return base / "run"


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["config.json", "train_config.json", "preds.csv", "checkpoints/x.csv",
                                   "plots/x.csv", "new-folder/x.csv"])
def test_predict_output_inside_the_run_is_refused_and_the_run_unchanged(run, tmp_path, where, capsys):
    data = write_csv(tmp_path / "in.csv", synthetic_rows(5, seed=4))
    before = snapshot(run)
    code, err = cli(capsys, "predict", run, "--file", data, "--output", run / where)
    assert code == 2, err[-2000:]
    assert "bertfit never writes its outputs into a run or model directory" in err
    assert snapshot(run) == before


def test_predict_and_evaluate_outside_the_run_still_work(run, tmp_path, capsys):
    data = write_csv(tmp_path / "in.csv", synthetic_rows(5, seed=4))
    assert cli(capsys, "predict", run, "--file", data, "--output", tmp_path / "p.csv")[0] == 0
    assert cli(capsys, "evaluate", run, "--file", data, "--output", tmp_path / "m.json")[0] == 0
    code, err = cli(capsys, "evaluate", run, "--file", data, "--output", run / "metrics.json")
    assert code == 2 and "is inside" in err, err[-2000:]


def test_an_output_in_any_model_directory_or_the_model_read_is_refused(run, tiny_model_dir, tmp_path):
    source = tmp_path / "in.csv"
    with pytest.raises(BertfitError, match="a model directory"):
        check_output_file(tiny_model_dir / "preds.csv", source, "--output")  # config.json beside weights
    reads = tmp_path / "model"
    reads.mkdir()
    with pytest.raises(BertfitError, match="the model this command reads"):
        check_output_file(reads / "preds.csv", source, "--output", model=str(reads))
    other = tmp_path / "data"
    other.mkdir()
    (other / "config.json").write_text("{}")  # a project's config.json, no model beside it: not a model
    check_output_file(other / "preds.csv", source, "--output", model=str(reads))


def test_export_never_writes_into_a_run_or_over_a_users_folder(run, tmp_path, capsys):
    before = snapshot(run)
    for output in (run, run / "onnx", run / "checkpoints"):
        code, err = cli(capsys, "export", run, "--output", output)
        assert code == 2, err[-2000:]
    assert snapshot(run) == before  # train_config.json (and every other file) untouched: the run resumes
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"mine": true}')
    code, err = cli(capsys, "export", run, "--output", mine)
    assert code == 2 and "not a previous bertfit export" in err, err[-2000:]
    assert json.loads((mine / "config.json").read_text()) == {"mine": True}


def test_export_may_replace_its_own_previous_export(run, tmp_path):
    previous = tmp_path / "exported"
    previous.mkdir()
    for name in ("model.onnx", "config.json", "vocab.txt", "task.json", "export.json"):
        (previous / name).write_text("{}")
    check_export_directory(previous, run)  # a previous export: replaced
    check_export_directory(tmp_path / "new", run)
    (previous / "notes.txt").write_text("mine")
    with pytest.raises(BertfitError, match="notes.txt"):
        check_export_directory(previous, run)


def test_the_run_marker_is_spelled_alike():
    from bertfit.predict import outputs
    from bertfit.train import run_lock

    assert outputs.MARKER == run_lock.MARKER
