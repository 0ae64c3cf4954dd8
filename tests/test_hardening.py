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
from bertfit.train.run_dir import MARKER, RunDir
from bertfit.train.config import TrainConfig

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
    from bertfit.train.finetune import fine_tune

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
    from bertfit.train.finetune import fine_tune

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
    from bertfit.train.finetune import fine_tune

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


def test_predict_output_must_not_be_the_input_and_keeps_the_gold_label(tmp_path, tiny_model_dir, synthetic_csv):
    from bertfit.train.finetune import fine_tune

    run = fine_tune(tiny(tmp_path, tiny_model_dir, synthetic_csv)).run_dir
    data = write_csv(tmp_path / "in.csv", [("good day", "positive"), ("=cmd|' /C calc'!A0", "-1+1")])
    before = data.read_bytes()
    (tmp_path / "link.csv").symlink_to(data)
    for output in (data, tmp_path / "link.csv", tmp_path / "sub" / ".." / "in.csv"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        out = bertfit("predict", run, "--file", data, "--output", output, "--engine", "pytorch")
        assert out.returncode == 2 and b"never overwrites its input" in out.stderr and b"Traceback" not in out.stderr
        assert data.read_bytes() == before
    out = bertfit("predict", run, "--file", data, "--output", tmp_path, "--engine", "pytorch")  # a directory
    assert out.returncode == 2 and b"is a directory" in out.stderr and b"Traceback" not in out.stderr
    out = bertfit("predict", run, "--file", data, "--output", tmp_path / "o.csv", "--engine", "pytorch")
    assert out.returncode == 0, out.stderr
    import csv

    with open(tmp_path / "o.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0][:4] == ["text", "label", "predicted_label", "confidence"]
    assert [r[1] for r in rows[1:]] == ["positive", "'-1+1"]  # the gold label kept, and neutralised
    assert rows[2][0] == "'=cmd|' /C calc'!A0"  # a pass-through cell neutralised too
    out = bertfit("predict", run, "--file", data, "--output", tmp_path / "raw.csv", "--no-csv-guard", "--engine", "pytorch")
    assert out.returncode == 0 and "=cmd|' /C calc'!A0" in (tmp_path / "raw.csv").read_text()


# --- 2. every row is accounted for ---------------------------------------------------------


def test_an_unclosed_quote_does_not_swallow_the_next_rows(tmp_path):
    from bertfit.data.labelled import read_examples

    f = tmp_path / "d.csv"
    f.write_text('text,label\ngood,positive\n"never closed,negative\nfine row,positive\n"quoted, ok",negative\n')
    examples, report = read_examples(f, skip_bad_rows=True)
    assert [e.text for e in examples] == ["good", "fine row", "quoted, ok"]
    assert [r.row for r in report.rejected] == [3] and "quote left open" in report.rejected[0].reason
    assert report.rows_read == report.rows_used + len(report.rejected) == 4


def test_a_nul_byte_near_the_top_is_a_row_error_and_messages_are_bounded(tmp_path):
    from bertfit.data.labelled import read_examples
    from bertfit.errors import DataError

    f = tmp_path / "d.csv"
    f.write_bytes(b"text,label\ngood,positive\nbro\x00ken,negative\nbad,negative\n")
    with pytest.raises(DataError, match="row 3: the row contains a NUL"):
        read_examples(f)
    examples, report = read_examples(f, skip_bad_rows=True)
    assert len(examples) == 2 and [r.row for r in report.rejected] == [3]
    huge = tmp_path / "huge.csv"
    huge.write_text("x" * 1_000_000 + ",y\nz,w\n")
    with pytest.raises(DataError) as err:
        read_examples(huge)
    assert len(str(err.value)) < 2000


# --- 4. no traceback: numbers, paths, bytes ------------------------------------------------


@pytest.mark.parametrize("flag, value", [
    ("--lr", "nan"), ("--lr", "inf"), ("--lr", "-0.0"), ("--epochs", "1e308"), ("--weight-decay", "-1"),
    ("--eval-batch-tokens", "0"), ("--seed", "-1"), ("--threads", "99999999999"), ("--warmup-ratio", "nan"),
    ("--max-grad-norm", "inf"), ("--adam-eps", "0"), ("--classifier-dropout", "1"), ("--batch-size", "-3"),
])
def test_non_finite_or_out_of_range_numbers_are_refused_in_one_line(flag, value, capsys, tmp_path):
    from bertfit.cli import main

    assert main(["train", "--train-file", str(tmp_path / "none.csv"), flag, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bertfit: error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_config_file_numbers_are_validated_too(tmp_path, capsys):
    from bertfit.cli import main

    cfg = tmp_path / "c.json"
    for body in ('{"lr": NaN}', '{"split": [0.8, 0.1, "x"]}', '{"split": 0.8}', '{"batch_size": 2.5}',
                 '{"max_length": "long"}', '{"device": 3}'):
        cfg.write_text(body)
        assert main(["train", "--config", str(cfg)]) == 2, body
        assert capsys.readouterr().err.count("\n") == 1


def test_predict_batch_tokens_must_be_positive(capsys):
    from bertfit.cli import main

    for value in ("0", "-5"):
        with pytest.raises(SystemExit) as exit_:
            main(["predict", "run", "--batch-tokens", value, "x"])
        assert exit_.value.code == 2


def test_undecodable_bytes_in_argv_and_on_stdin(tmp_path, tiny_model_dir, synthetic_csv):
    out = bertfit(b"predict", os.fsencode(tmp_path), b"caf\xe9 \xff")
    assert out.returncode == 2 and b"not valid UTF-8" in out.stderr and b"Traceback" not in out.stderr
    from bertfit.train.finetune import fine_tune

    run = fine_tune(tiny(tmp_path, tiny_model_dir, synthetic_csv)).run_dir
    out = bertfit("predict", run, "--engine", "pytorch", stdin=b"good\ncaf\xe9 bad\n")
    assert out.returncode == 2 and b"line 2" in out.stderr and b"--encoding" in out.stderr, out.stderr
    assert b"Traceback" not in out.stderr
    out = bertfit("predict", run, "--engine", "pytorch", "--encoding", "latin-1", stdin=b"good\ncaf\xe9 bad\n")
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 2, out.stderr


# --- 6. headerless files --------------------------------------------------------------------


STSB = ("main-captions\tMSRvid\t2012test\t0001\t5.000\tA plane is taking off.\tAn air plane is taking off.\n"
        "main-news\theadlines\t2016\t0012\t4\tDriver backs off\tDriver backs into mom\tEurope Media\tEurope Media\n"
        "main-captions\tMSRvid\t2012test\t0004\t3.800\tA man is playing a large flute.\tA man is playing a flute.\n")


def test_headerless_files_by_position_and_by_names(tmp_path):
    from bertfit.data.labelled import read_examples, read_table
    from bertfit.errors import DataError

    f = tmp_path / "stsb.tsv"
    f.write_text(STSB)
    with pytest.raises(DataError, match=r"looks like data, not a header.*--no-header"):
        read_examples(f, text_column="6", label_column="5")
    examples, report = read_examples(f, header=False, text_column="6", pair_column="7", label_column="5")
    assert [(e.text, e.text_pair, e.label, e.row) for e in examples][0] == (
        "A plane is taking off.", "An air plane is taking off.", "5.000", 1)
    assert report.rows_read == 3 == len(examples)  # the row with 2 extra trailing fields is used
    names = "genre,source,year,id,score,s1,s2"
    examples, _ = read_examples(f, columns=names, text_column="s1", pair_column="s2", label_column="score")
    assert [e.label for e in examples] == ["5.000", "4", "3.800"]
    with pytest.raises(DataError, match="positions 1 to 7"):
        read_examples(f, header=False, text_column="12", label_column="5")
    table = read_table(f, header=False)
    assert len(table.rows) == 3 and table.columns[-1] == "column_9"
    go = tmp_path / "goemotions.tsv"
    go.write_text("My favourite food is anything I didn't have to cook myself.\t27\teebbqej\n"
                  "WHY THE FUCK IS BAYLESS ISOING\t2\teezlygj\n")
    examples, _ = read_examples(go, header=False, text_column="1", label_column="2")
    assert [e.label for e in examples] == ["27", "2"]


def test_headerless_flags_on_the_command_line(tmp_path, capsys):
    from bertfit.cli import main

    f = tmp_path / "d.tsv"
    f.write_text("".join(f"{i}\t{t}\t{l}\n" for i, (t, l) in enumerate(synthetic_rows(40, seed=4))))
    assert main(["train", "--train-file", str(f), "--model", str(tmp_path / "none")]) == 2
    assert "--no-header" in capsys.readouterr().err
    assert main(["train", "--train-file", str(f), "--no-header", "--text-column", "2", "--label-column", "3",
                 "--model", str(tmp_path / "none"), "--output-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "none" in err and "column" not in err  # the data was read; only the missing model stopped it
    assert not (tmp_path / "r").exists()


# --- 7. empty validation and test splits ----------------------------------------------------


def test_empty_splits_are_reported_loudly(tmp_path, tiny_model_dir, caplog):
    from bertfit.train.finetune import fine_tune

    f = write_csv(tmp_path / "few.csv", [("good day", "positive"), ("bad day", "negative"),
                                          ("great film", "positive"), ("awful film", "negative")])
    result = fine_tune(tiny(tmp_path, tiny_model_dir, f))
    assert result.metrics == {}
    assert "splits are empty" in json.loads((result.run_dir / "metrics.json").read_text())["no_metrics"]
    assert "splits are empty" in (result.run_dir / "report.md").read_text()
    assert any("splits are empty" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
