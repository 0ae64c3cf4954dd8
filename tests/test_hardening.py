"""Issue 18: never lose a user's data, never show a traceback.

Each test here failed before its fix. The fast ones call the library or ``bertfit.cli.main`` in
process; a few run the installed command, as a user does.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import synthetic_rows, write_csv
from bertfit.errors import BertfitError
from bertfit.runs import MARKER, RunDir
from bertfit.train_config import TrainConfig

BERTFIT = str(Path(sys.executable).with_name("bertfit"))


def bertfit(*args, stdin: bytes | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([BERTFIT, *map(os.fsdecode, args)] if not any(isinstance(a, bytes) for a in args)
                          else [os.fsencode(BERTFIT), *(a if isinstance(a, bytes) else os.fsencode(str(a)) for a in args)],
                          capture_output=True, input=stdin, timeout=timeout, env=env)


def checksums(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path -> SHA-256), to prove nothing was touched."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = Path(root, name)
            out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def tiny(tmp_path, model_dir, train_file, **overrides) -> TrainConfig:
    values = dict(train_file=str(train_file), model=str(model_dir), output_dir=str(tmp_path / "run"), max_length=16,
                  batch_size=16, max_steps=1, eval_each_epoch=False, log_every=1, save_every=10, seed=0)
    values.update(overrides)
    return TrainConfig(**values)


# --- 1. nothing outside a run is deleted or overwritten -------------------------------------


def test_overwrite_refuses_a_folder_bertfit_did_not_create(tmp_path, tiny_model_dir, synthetic_csv):
    from bertfit.job import fine_tune

    home = tmp_path / "home"
    (home / "photos").mkdir(parents=True)
    (home / "photos" / "cat.jpg").write_bytes(b"\xff\xd8\xff cat")
    (home / "notes.txt").write_text("precious")
    (home / "train_config.json").write_text("{}")  # even with a file that looks like bertfit's
    before = checksums(home)
    with pytest.raises(BertfitError, match=r"not a bertfit run directory.*'notes.txt'.*'photos/'") as err:
        fine_tune(tiny(tmp_path, tiny_model_dir, synthetic_csv, output_dir=str(home)), overwrite=True)
    assert "--overwrite" not in str(err.value)
    assert checksums(home) == before
    # --resume on such a folder must not suggest --overwrite either
    with pytest.raises(BertfitError) as err:
        fine_tune(tiny(tmp_path, tiny_model_dir, synthetic_csv, output_dir=str(home)), resume=True)
    assert "--overwrite" not in str(err.value) and checksums(home) == before


def test_overwrite_deletes_nothing_before_the_new_inputs_are_valid(tmp_path, tiny_model_dir, synthetic_csv):
    from bertfit.job import fine_tune

    config = tiny(tmp_path, tiny_model_dir, synthetic_csv)
    first = fine_tune(config)
    assert (first.run_dir / MARKER).is_file()
    before = checksums(first.run_dir)
    with pytest.raises(BertfitError, match="no such file"):
        fine_tune(config.replace(train_file=str(tmp_path / "missing.csv")), overwrite=True)
    with pytest.raises(BertfitError):
        fine_tune(config.replace(model=str(tmp_path / "no-model")), overwrite=True)
    assert checksums(first.run_dir) == before  # the old run is intact


def test_overwrite_replaces_a_run_and_keeps_what_the_user_added(tmp_path, tiny_model_dir, synthetic_csv):
    from bertfit.job import fine_tune

    config = tiny(tmp_path, tiny_model_dir, synthetic_csv)
    run = fine_tune(config).run_dir
    (run / "my-notes.md").write_text("mine")
    (run / "stale.json").write_text("{}")
    assert RunDir(run).foreign_entries() == ["my-notes.md", "stale.json"]
    fine_tune(config.replace(lr=1e-4), overwrite=True)
    assert (run / "my-notes.md").read_text() == "mine" and (run / "stale.json").exists()
    assert json.loads((run / "train_config.json").read_text())["lr"] == 1e-4


def test_a_run_made_before_the_marker_is_recognised_only_when_it_holds_bertfit_files_alone(tmp_path):
    run = tmp_path / "old"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("train_config.json", "config.json", "metrics.json", "report.md"):
        (run / name).write_text("{}")
    assert RunDir(run).is_run()
    RunDir(run).check_replaceable()
    (run / "thesis.tex").write_text("years of work")
    assert not RunDir(run).is_run()
    with pytest.raises(BertfitError, match="thesis.tex"):
        RunDir(run).replace()
    assert (run / "thesis.tex").exists() and (run / "config.json").exists()
    # an empty folder holds nothing to lose
    (tmp_path / "empty").mkdir()
    RunDir(tmp_path / "empty").check_replaceable()


def test_output_dir_that_is_a_file_is_a_one_line_error(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("x")
    with pytest.raises(BertfitError, match="is a file"):
        RunDir(f).check_is_run()
    with pytest.raises(BertfitError, match="inside .*a.txt"):
        RunDir(f / "run").create()
    assert f.read_text() == "x"


def test_replace_never_follows_a_symlink(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    run = RunDir(tmp_path / "run")
    run.create()
    (run.path / "plots").symlink_to(outside, target_is_directory=True)
    run.replace()
    assert (outside / "keep.txt").read_text() == "keep" and not (run.path / "plots").exists()
