"""Property tests for bertfit.data.labelled: whatever bytes a user hands over, reading either works and
accounts for every row, or raises DataError (never another exception); valid files round-trip."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bertfit.data.labelled import examples_from_lists, read_examples, read_table, write_table
from bertfit.errors import DataError

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROUND_TRIP = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SUFFIXES = [".csv", ".tsv", ".jsonl", ".json", ".txt", ""]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    # Module-scoped: hypothesis re-runs the test body many times, which a function-scoped tmp_path
    # would not follow.
    return tmp_path_factory.mktemp("data_fuzz")


def line_count_upper_bound(data: bytes) -> int:
    """Lines end at \\n (or \\r in a file without \\n); in any supported codec each such character
    contains that byte, so the byte count bounds the line count."""
    return max(data.count(b"\n"), data.count(b"\r")) + 1


def check_read(path, data: bytes, **kwargs) -> tuple | None:
    """Read and check the invariants; None when the file was (legitimately) refused."""
    try:
        examples, report = read_examples(path, **kwargs)
    except DataError as e:
        assert str(e)  # a message, always
        return None
    assert report.rows_read == report.rows_used + len(report.rejected)
    assert report.rows_used == len(examples) > 0
    last = line_count_upper_bound(data)
    rows = [e.row for e in examples] + [r.row for r in report.rejected]
    assert len(set(rows)) == len(rows), "two records cannot start on the same line"
    first_row = 1 if report.format == "jsonl" else 2  # CSV/TSV: the header takes at least line 1
    assert all(first_row <= r <= last for r in rows), (rows, last)
    assert [e.row for e in examples] == sorted(e.row for e in examples)
    max_chars = kwargs.get("max_chars", 100_000)
    for e in examples:
        assert isinstance(e.text, str) and e.text.strip() and len(e.text) <= max_chars
        assert e.label is None or (isinstance(e.label, str) and e.label)
        if kwargs.get("require_labels", True):
            assert e.label is not None and e.label == e.label.strip()
    for r in report.rejected:
        assert isinstance(r.reason, str) and r.reason
    assert isinstance(report.summary(), str)
    return examples, report


read_options = st.fixed_dictionaries(
    {
        "skip_bad_rows": st.booleans(),
        "require_labels": st.booleans(),
        "max_chars": st.sampled_from([1, 5, 100, 100_000]),
        "text_column": st.sampled_from([None, None, "text", "TEXT", "b", "nope"]),
        "label_column": st.sampled_from([None, None, "label", "b"]),
        "pair_column": st.sampled_from([None, None, None, "b", "c"]),
        "encoding": st.sampled_from([None, None, None, "utf-8", "latin-1", "utf-16", "cp1252", "ascii"]),
    }
)


# ---------------------------------------------------------------- arbitrary bytes


@FUZZ
@given(data=st.binary(max_size=2000), suffix=st.sampled_from(SUFFIXES), options=read_options)
def test_random_bytes(workdir, data, suffix, options):
    path = workdir / f"bytes{suffix}"
    path.write_bytes(data)
    check_read(path, data, **options)


@FUZZ
@given(
    prefix=st.sampled_from([b"text,label\n", b"text\tlabel\n", b'{"text": "a", "label": "x"}\n', b""]),
    data=st.binary(max_size=1000),
    suffix=st.sampled_from(SUFFIXES),
    options=read_options,
)
def test_random_bytes_after_a_plausible_header(workdir, prefix, data, suffix, options):
    path = workdir / f"prefixed{suffix}"
    path.write_bytes(prefix + data)
    check_read(path, prefix + data, **options)


# ---------------------------------------------------------------- CSV/TSV-shaped text

CSV_PIECES = [
    "a", "b", "é", "✓", " ", ",", ",", "\t", '"', '"', '""', "\n", "\n", "\r", "\r\n", "\x00",
    "{", "}", ":", "[", "]", "null", "1", "4.0", "pos", "neg", "\ufeff", "x" * 120,
    "z" * 140_000,  # over the csv module's default field limit (131,072)
]
HEADERS = [
    "text,label", "text\tlabel", "text,label,b", "label,text", "TEXT,Label", "review,rating",
    "a,b", "text,text", "text", "", "text;label", '"text","label"', "text,label,",
]


@FUZZ
@given(
    header=st.sampled_from(HEADERS),
    body=st.lists(st.sampled_from(CSV_PIECES), max_size=60).map("".join),
    codec=st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16"]),
    newline=st.sampled_from(["\n", "\r\n"]),
    suffix=st.sampled_from([".csv", ".tsv", ".txt"]),
    options=read_options,
)
def test_csv_shaped_text(workdir, header, body, codec, newline, suffix, options):
    text = header + newline + body
    data = text.encode(codec, errors="replace")
    path = workdir / f"shaped{suffix}"
    path.write_bytes(data)
    check_read(path, data, **options)


# ---------------------------------------------------------------- JSONL-shaped text

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
json_objects = st.dictionaries(
    st.sampled_from(["text", "label", "b", "c", "TEXT", "sentence", "x"]), json_values, max_size=5
)
jsonl_lines = st.one_of(
    json_objects.map(json.dumps),
    json_objects.map(lambda o: json.dumps(o, ensure_ascii=False)),
    json_values.map(json.dumps),
    st.text(max_size=30),  # garbage, blank or whitespace lines
    st.just(""),
    st.just('{"text": "' + "q" * 150_000 + '", "label": "big"}'),
)


@FUZZ
@given(
    lines=st.lists(jsonl_lines, max_size=12),
    newline=st.sampled_from(["\n", "\r\n"]),
    suffix=st.sampled_from([".jsonl", ".json", ".ndjson", ""]),
    options=read_options,
)
def test_jsonl_shaped_text(workdir, lines, newline, suffix, options):
    data = newline.join(lines).encode("utf-8", errors="surrogatepass")
    path = workdir / f"lines{suffix}"
    path.write_bytes(data)
    check_read(path, data, **options)


# ---------------------------------------------------------------- Python lists

list_items = st.one_of(
    st.text(max_size=20), st.integers(), st.floats(), st.none(), st.booleans(), st.lists(st.integers(), max_size=2)
)


@FUZZ
@given(
    texts=st.lists(list_items, max_size=10),
    labels=st.none() | st.lists(list_items, max_size=10),
    skip=st.booleans(),
)
def test_examples_from_lists_never_crash(texts, labels, skip):
    try:
        examples, report = examples_from_lists(texts, labels, skip_bad_rows=skip)
    except DataError:
        return
    assert report.rows_read == len(texts) == report.rows_used + len(report.rejected)
    rows = sorted([e.row for e in examples] + [r.row for r in report.rejected])
    assert rows == list(range(len(texts)))
    for e in examples:
        assert isinstance(e.text, str) and e.text.strip()
        if labels is not None:
            assert isinstance(e.label, str) and e.label


# ---------------------------------------------------------------- valid files round-trip

# No NUL (a NUL in the first 8 KB marks a binary file) and no surrogates (not encodable).
safe_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=40
)
texts = safe_text.filter(lambda s: s.strip())
labels = safe_text.filter(lambda s: s.strip() == s)


@ROUND_TRIP
@given(
    rows=st.lists(st.tuples(texts, labels), min_size=1, max_size=15),
    delimiter=st.sampled_from([",", "\t"]),
    lineterminator=st.sampled_from(["\r\n", "\n"]),
    quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]),
    codec=st.sampled_from(["utf-8", "utf-8-sig"]),
)
def test_csv_writer_round_trip(workdir, rows, delimiter, lineterminator, quoting, codec):
    # csv.writer quotes only the characters of its own line terminator: with "\n" it writes a lone
    # "\r" unquoted, which is not valid CSV (RFC 4180) and is rejected by design (see test_data.py).
    assume(not (lineterminator == "\n" and quoting == csv.QUOTE_MINIMAL and any("\r" in t + l for t, l in rows)))
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delimiter, lineterminator=lineterminator, quoting=quoting)
    writer.writerow(["id", "text", "label"])
    expected_rows = []
    for i, (text, label) in enumerate(rows):
        # A record starts on the line after every "\n" written so far.
        expected_rows.append(buf.getvalue().count("\n") + 1)
        writer.writerow([i, text, label])
    path = workdir / ("rt.csv" if delimiter == "," else "rt.tsv")
    path.write_bytes(buf.getvalue().encode(codec))

    examples, report = read_examples(path)

    assert [(e.text, e.label) for e in examples] == rows
    assert [e.row for e in examples] == expected_rows
    assert report.rows_read == len(rows) and report.rejected == []
    assert report.columns == ["id", "text", "label"]


@ROUND_TRIP
@given(
    rows=st.lists(st.tuples(texts, st.one_of(labels, st.integers(-5, 5))), min_size=1, max_size=15),
    blank_before=st.lists(st.booleans(), min_size=15, max_size=15),
    ensure_ascii=st.booleans(),
)
def test_jsonl_round_trip(workdir, rows, blank_before, ensure_ascii):
    lines, expected_rows = [], []
    for (text, label), blank in zip(rows, blank_before):
        if blank:
            lines.append("")
        lines.append(json.dumps({"text": text, "label": label}, ensure_ascii=ensure_ascii))
        expected_rows.append(len(lines))
    path = workdir / "rt.jsonl"
    path.write_bytes(("\n".join(lines) + "\n").encode("utf-8"))

    examples, report = read_examples(path)

    assert [(e.text, e.label) for e in examples] == [(t, str(l)) for t, l in rows]
    assert [e.row for e in examples] == expected_rows
    assert report.rows_read == len(rows)


@ROUND_TRIP
@given(
    columns=st.lists(st.text(alphabet="abcxyz_", min_size=1, max_size=6), min_size=1, max_size=4, unique=True),
    n_rows=st.integers(1, 8),
    cells=st.lists(safe_text | st.just(""), min_size=32, max_size=32),
    out_suffix=st.sampled_from([".csv", ".tsv", ".jsonl"]),
    in_suffix=st.sampled_from([".csv", ".tsv", ".jsonl"]),
)
def test_table_round_trip(workdir, columns, n_rows, cells, out_suffix, in_suffix):
    rows = [{c: cells[(r * len(columns) + j) % len(cells)] for j, c in enumerate(columns)} for r in range(n_rows)]
    src = workdir / f"table_in{in_suffix}"
    if in_suffix == ".jsonl":
        src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        buf = io.StringIO()
        w = csv.DictWriter(buf, columns, delimiter="," if in_suffix == ".csv" else "\t")
        w.writeheader()
        w.writerows(rows)  # a lone empty cell is written as "" so no record is a blank line
        src.write_text(buf.getvalue(), encoding="utf-8", newline="")

    table = read_table(src)
    assert table.rows == rows and table.columns == columns
    assert table.row_numbers == sorted(set(table.row_numbers))

    extra = [{"pred": f"p{i}", "prob": i / 10} for i in range(len(table.rows))]
    out = workdir / f"table_out{out_suffix}"
    write_table(table, out, ["pred", "prob"], extra, csv_guard=False)  # the guard: tests/test_reader_fuzz.py
    back = read_table(out)
    assert back.columns == columns + [c for c in ("pred", "prob") if c not in columns]
    assert len(back.rows) == len(table.rows)
    for original, new, e in zip(table.rows, back.rows, extra):
        assert {c: new[c] for c in columns if c not in ("pred", "prob")} == {
            c: v for c, v in original.items() if c not in ("pred", "prob")
        }
        assert new["pred"] == e["pred"]
        assert math.isclose(float(new["prob"]), e["prob"])
