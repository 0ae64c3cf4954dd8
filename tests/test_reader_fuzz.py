"""Property tests (issue 18): every row a reader sees is used or rejected, never lost; formula cells
are neutralised; no float on any numeric flag gives a traceback."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bertfit.data.labelled import guard_cell, read_examples
from bertfit.tasks.declared import TRAIN_SETTINGS

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Good texts: words, spaces, commas, tabs and newlines (so many are quoted, some over several lines),
# no quote character and not starting with a delimiter. (A quote left open that a later quote closes
# cleanly with the right field count is valid CSV, whatever was meant: no reader can tell.)
word = st.text(alphabet="abcdefgh", min_size=1, max_size=6)
good_text = st.lists(st.tuples(word, st.sampled_from([" ", ", ", "\n", "\t", " "])), min_size=1, max_size=4).map(
    lambda parts: "".join(w + sep for w, sep in parts).rstrip(" ,\n\t") or "x")
good = st.tuples(st.just("good"), good_text, st.sampled_from(["pos", "neg", "neu"]))
bad = st.sampled_from([
    ("bad", '"never closed, pos'),  # a quote left open
    ("bad", "nul\x00byte,neg"),  # file damage
    ("bad", "one,two,three"),  # too many fields
    ("bad", "lonely"),  # too few
    ("bad", ",pos"),  # empty text
])


@FAST
@given(rows=st.lists(st.one_of(good, bad), min_size=1, max_size=12), tsv=st.booleans())
def test_csv_and_tsv_rows_are_used_or_rejected_never_lost(tmp_path, rows, tsv):
    delimiter = "\t" if tsv else ","
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delimiter, lineterminator="\n")
    writer.writerow(["text", "label"])
    expected_used = []
    for row in rows:
        if row[0] == "good":
            writer.writerow([row[1], row[2]])
            expected_used.append((row[1], row[2]))
        else:
            buf.write(row[1].replace(",", delimiter) + "\n")
    if not expected_used:  # a file with no usable row is an error of its own
        writer.writerow(["fine", "pos"])
        expected_used.append(("fine", "pos"))
    path = tmp_path / ("d.tsv" if tsv else "d.csv")
    path.write_text(buf.getvalue(), encoding="utf-8")
    examples, report = read_examples(path, skip_bad_rows=True)
    assert report.rows_read == report.rows_used + len(report.rejected)
    assert [(e.text, e.label) for e in examples] == expected_used
    assert len(report.rejected) >= sum(r[0] == "bad" for r in rows)
    assert all(len(r.reason) < 600 for r in report.rejected)


json_line = st.one_of(
    st.tuples(st.just("good"), st.text(min_size=1, max_size=20).filter(lambda t: t.strip() and "\x00" not in t)),
    st.sampled_from([("bad", "not json"), ("bad", "[1, 2]"), ("bad", '{"text": ""}'), ("bad", '{"text": 3.5e999}'),
                     ("bad", '{"text": "a\\u0000b"}'), ("bad", "{" * 5000), ("bad", '{"label": "x"}')]),
)


@FAST
@given(lines=st.lists(json_line, min_size=1, max_size=10))
def test_jsonl_rows_are_used_or_rejected_never_lost(tmp_path, lines):
    out, expected = [], []
    for kind, value in lines:
        if kind == "good":
            out.append(json.dumps({"text": value}))
            expected.append(value)
        else:
            out.append(value)
    out.append(json.dumps({"text": "fine"}))
    expected.append("fine")
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    try:
        examples, report = read_examples(path, skip_bad_rows=True, require_labels=False)
    except Exception as exc:  # noqa: BLE001 - only a DataError may come out
        from bertfit.errors import DataError

        assert isinstance(exc, DataError)
        return
    assert report.rows_read == report.rows_used + len(report.rejected) == len(lines) + 1
    assert [e.text for e in examples] == expected


@given(st.text(max_size=30))
def test_guard_cell_neutralises_every_formula_start(text):
    guarded = guard_cell(text)
    assert guarded in (text, "'" + text)
    if guarded == text and text:
        assert not text.startswith(("=", "+", "-", "@", "\t", "\r")) or float(text) == float(text)


# --- the CLI's numeric settings: any float, no traceback --------------------------------------

FLOAT_FLAGS = ["--lr", "--epochs", "--weight-decay", "--warmup-ratio", "--max-grad-norm", "--adam-eps",
               "--classifier-dropout"]
INT_FLAGS = ["--batch-size", "--grad-accum", "--max-steps", "--max-length", "--eval-every", "--patience",
             "--eval-batch-tokens", "--seed", "--log-every", "--save-every", "--keep-checkpoints", "--threads",
             "--bucket-window", "--max-chars", "--max-train-examples", "--max-eval-examples"]
# ...and every task's own numeric settings (tasks/declared.py): --tag-column, --doc-stride, ...
FLOAT_FLAGS += [s.flag for s in TRAIN_SETTINGS.values() if s.kind is float]
INT_FLAGS += [s.flag for s in TRAIN_SETTINGS.values() if s.kind is int]
any_float = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([-0.0, 1e308, -1e308, 5e-324]))
any_number_text = st.one_of(any_float.map(repr), st.integers(-10**30, 10**30).map(str),
                            st.sampled_from(["nan", "inf", "-inf", "-0", "1e999", "0x10", ""]))


class Accepted(Exception):
    pass


@pytest.fixture
def no_training(monkeypatch):
    import bertfit.train.finetune

    def fake_fine_tune(config, **kw):
        raise Accepted(config)

    monkeypatch.setattr(bertfit.train.finetune, "fine_tune", fake_fine_tune)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flag=st.sampled_from(FLOAT_FLAGS + INT_FLAGS + ["--split", "--adam-betas", "--class-weights"]),
       values=st.lists(any_number_text, min_size=3, max_size=3))
def test_no_number_on_a_numeric_flag_gives_a_traceback(no_training, capsys, flag, values):
    from bertfit.cli import main

    count = {"--split": 3, "--adam-betas": 2, "--class-weights": 2}.get(flag, 1)
    argv = ["train", "--train-file", "x.csv", f"{flag}={values[0]}"] if count == 1 else \
        ["train", "--train-file", "x.csv", flag, *values[:count]]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse: not a number at all
        code = exc.code
    except Accepted as accepted:
        config = accepted.args[0]
        for name, value in config.to_dict().items():
            for v in (value if isinstance(value, (tuple, list)) else [value]):
                if isinstance(v, float):
                    assert math.isfinite(v) and not (v == 0 and math.copysign(1, v) < 0), (name, v)
        return
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip(), err
