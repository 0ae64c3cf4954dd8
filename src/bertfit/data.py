r"""Read labelled text for classification: CSV, TSV and JSON lines, validated row by row.

What goes in
    ``read_examples`` reads a file; ``examples_from_lists`` takes Python lists. Both return a list
    of :class:`Example` and a :class:`LoadReport` that accounts for every row
    (``rows_read == rows_used + len(rejected)``).

Formats
    Chosen by suffix: ``.csv``; ``.tsv``/``.tab``; ``.jsonl``/``.ndjson`` (and ``.json`` when it
    holds JSON lines). Any other suffix is sniffed: a JSON object on the first line means JSON lines,
    a tab in the header means TSV, anything else is CSV. CSV and TSV go through the ``csv`` module in
    strict mode: quoted fields may contain delimiters, doubled quotes and newlines; a quote left open
    or text after a closing quote is a row problem, not silently swallowed data.

Encoding
    With ``encoding=`` given, that codec is used and a decode error is a :class:`DataError` naming the
    byte offset. Otherwise the file is read as UTF-8 (a BOM is removed; a UTF-16/32 BOM selects that
    codec). If it is not valid UTF-8 it is decoded as **latin-1**, which never fails: a warning names
    the first bad byte and ``LoadReport.encoding`` records the fallback, e.g.
    ``"latin-1 (fallback: not valid UTF-8 at byte 105)"``. Pass ``encoding="cp1252"`` (CLI:
    ``--encoding``) when you know better.

Rows and row numbers
    ``Example.row`` is the number a person finds in an editor: for CSV/TSV the line where the record
    starts (the header is line 1, so the first data row is 2, and a multi-line quoted field pushes
    later rows down); for JSON lines the 1-based line; for Python lists the 0-based index. Lines end
    at ``\n`` as ``wc -l``, ``grep -n`` and ``sed -n 12p`` count them: a lone ``\r`` inside a quoted
    field (3,344 of them in the tweets corpus) is text, not a line break; only a file with no
    ``\n`` at all (classic Mac) ends its lines at ``\r``. A bad row (wrong field count, invalid
    JSON, empty or over-long text, a NUL character, a missing or unmapped label) raises
    :class:`DataError` naming the file, row and fix, or, with ``skip_bad_rows=True``, becomes a
    :class:`Rejection` in the report.

Labels
    Labels are strings: ints in JSON lines become ``"4"``; a CSV's ``4.0`` stays ``"4.0"``; booleans
    become ``"true"``/``"false"``. Surrounding whitespace is removed (a stray ``" positive"`` would
    otherwise become a class of its own). A label map (``"1,2=negative;3=neutral;4,5=positive"``)
    is applied after that.

Then
    ``deduplicate`` drops repeated texts (and every copy of a text whose copies disagree on the
    label), ``stratified_split`` makes seeded per-label train/validation/test splits, and
    ``read_table``/``write_table`` keep prediction files intact, every row and column in order.

Files are read whole into memory (fine for the hundreds of MB a text classifier trains on).
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import logging
import math
import numbers
import os
import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bertfit.errors import DataError

logger = logging.getLogger(__name__)

__all__ = [
    "DedupeReport",
    "Example",
    "LABEL_COLUMNS",
    "LoadReport",
    "Rejection",
    "TEXT_COLUMNS",
    "Table",
    "check_known_labels",
    "deduplicate",
    "empty_split_warnings",
    "examples_from_lists",
    "guard_cell",
    "label_names",
    "parse_label_map",
    "predict_columns",
    "read_examples",
    "read_table",
    "stratified_split",
    "write_table",
]

#: Column names tried, in order, when no text column is named.
TEXT_COLUMNS: tuple[str, ...] = ("text", "sentence", "review", "content", "tweet")
#: Column names tried, in order, when no label column is named.
LABEL_COLUMNS: tuple[str, ...] = ("label", "sentiment", "labels", "class", "target", "rating", "score")

_SUFFIX_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
_DELIMITERS = {"csv": ",", "tsv": "\t"}

# Signatures of files people hand over by mistake (a workbook, a compressed export, a screenshot).
# Each entry: (prefix, extra check on the whole file or None, what it is and what to do).
_MAGIC: tuple[tuple[bytes, object, str], ...] = (
    (b"PK\x03\x04", None, "a ZIP archive, e.g. an .xlsx workbook; export or extract it as CSV first"),
    (b"\x1f\x8b", None, "gzip-compressed; decompress it first, e.g. with gunzip"),
    (b"BZh", lambda d: d[4:10] == b"1AY&SY", "bzip2-compressed; decompress it first, e.g. with bunzip2"),
    (b"\xfd7zXZ\x00", None, "xz-compressed; decompress it first, e.g. with unxz"),
    (b"7z\xbc\xaf\x27\x1c", None, "a 7-Zip archive; extract it first"),
    (b"\x89PNG\r\n\x1a\n", None, "a PNG image"),
    (b"\xff\xd8\xff", None, "a JPEG image"),
    (b"GIF87a", None, "a GIF image"),
    (b"GIF89a", None, "a GIF image"),
    (b"%PDF-", None, "a PDF document"),
    (b"PAR1", lambda d: d.endswith(b"PAR1"), "a Parquet file; convert it to CSV or JSON lines first"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", None, "an OLE document, e.g. an .xls workbook; export it as CSV"),
    (b"SQLite format 3\x00", None, "an SQLite database"),
)
_BINARY_SNIFF_BYTES = 8192

# Byte-order marks that decide the codec on their own (checked longest first: UTF-32-LE starts
# with the UTF-16-LE mark).
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)

# The csv module refuses fields over 131,072 characters by default; we enforce our own,
# clearer limit (max_chars), so lift its limit while we read. 2**31 - 1 fits a C long everywhere.
_CSV_FIELD_LIMIT = 2**31 - 1

_MISSING = object()  # a JSON key that is absent, as opposed to present and null
_INT_RE = re.compile(r"[+-]?\d+\Z")
_MAX_LISTED = 5


# --------------------------------------------------------------------------------------------
# Public data types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """One text (or text pair) to classify, with its label and the row it came from."""

    text: str
    label: str | None
    text_pair: str | None = None
    row: int = 0


@dataclass(frozen=True)
class Rejection:
    """A row that could not be used, and why."""

    row: int
    reason: str


@dataclass
class LoadReport:
    """What reading a file did: format, encoding, columns, and an account of every row."""

    path: str
    format: str
    encoding: str
    columns: list[str]
    text_column: str
    pair_column: str | None
    label_column: str | None
    rows_read: int
    rows_used: int
    rejected: list[Rejection] = field(default_factory=list)

    def summary(self) -> str:
        """One human line, e.g. ``tweets.csv: 38158 rows read, 38150 used, 8 rejected (row 17: empty text; ...)``."""
        name = Path(self.path).name or self.path
        line = f"{name}: {self.rows_read} rows read, {self.rows_used} used, {len(self.rejected)} rejected"
        if self.rejected:
            shown = "; ".join(f"row {r.row}: {r.reason}" for r in self.rejected[:3])
            more = "; ..." if len(self.rejected) > 3 else ""
            line += f" ({shown}{more})"
        if not self.encoding.startswith("utf-8") and self.format != "list":
            line += f"; encoding {self.encoding}"
        return line


@dataclass
class DedupeReport:
    """What :func:`deduplicate` removed."""

    rows_in: int
    rows_out: int
    duplicates_removed: int  # later copies of a text whose copies all agree on the label
    conflicting_texts: int  # distinct texts whose copies disagree on the label
    conflicting_rows_removed: int  # every copy of those texts

    def summary(self) -> str:
        """One human line."""
        return (
            f"{self.rows_in} rows, {self.rows_out} kept: {self.duplicates_removed} duplicates removed, "
            f"{self.conflicting_texts} texts with conflicting labels "
            f"({self.conflicting_rows_removed} rows) removed"
        )


@dataclass
class Table:
    """A data file as raw rows (every column, file order), for writing predictions alongside."""

    path: str
    format: str
    columns: list[str]
    rows: list[dict[str, object]]
    encoding: str = "utf-8"
    row_numbers: list[int] = field(default_factory=list)
    header: bool = True  # False: the file had no header row; columns are positions (column_1 ...) or --columns


# --------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------


def read_examples(
    path: str | os.PathLike,
    *,
    text_column: str | None = None,
    pair_column: str | None = None,
    label_column: str | None = None,
    label_map: Mapping[str, str] | str | None = None,
    require_labels: bool = True,
    skip_bad_rows: bool = False,
    encoding: str | None = None,
    max_chars: int = 100_000,
    header: bool = True,
    columns: Sequence[str] | None = None,
) -> tuple[list[Example], LoadReport]:
    """Read examples from a CSV, TSV or JSON-lines file.

    ``header=False`` (CLI ``--no-header``): the first row is data, and columns are named by 1-based
    position (``text_column="3"``) or by ``columns`` (``["id", "score", "text"]``, which implies
    no header; a first row equal to those names is read as the header). Rows of a headerless file
    may have extra trailing fields; they are ignored.

    Columns default to the first of :data:`TEXT_COLUMNS` / :data:`LABEL_COLUMNS` present (exact
    name first, then case-insensitive). With ``require_labels=False`` a missing label column or an
    empty label gives ``label=None``. Raises :class:`DataError` for an unusable file, for the first
    bad row unless ``skip_bad_rows``, and when no row at all is usable.
    """
    _check_max_chars(max_chars)
    mapping = label_map if label_map is RAW_LABELS else parse_label_map(label_map) if label_map is not None else None
    path_s = os.fspath(path)
    text, used_encoding, fmt = _load(path_s, encoding)
    names, header = _header_options(path_s, fmt, header, columns)

    if fmt == "jsonl":
        columns, records = _jsonl_columns_and_records(text)
        if not columns and records:
            # Not one object: listing "keys found: none" would hide that it is not JSON lines at all.
            row, _, err = records[0]
            raise DataError(f"{path_s}: no line is a JSON object (row {row}: {err}); JSON lines need "
                            "one object per line, e.g. {\"text\": \"...\", \"label\": \"...\"}")
    else:
        columns, header_line, records = _csv_header_and_records(path_s, text, _DELIMITERS[fmt], header, names)
        _check_unique_columns(path_s, columns, header_line)

    text_col, pair_col, label_col = _resolve_columns(
        path_s, fmt, columns, text_column, pair_column, label_column, require_labels, header
    )
    builder = _RowBuilder(text_col, pair_col, label_col, mapping, require_labels, max_chars)
    collector = _Collector(path_s, skip_bad_rows, skip_hint="--skip-bad-rows")

    if fmt == "jsonl":
        for row, obj, err in records:
            collector.add(row, err if err is not None else builder.from_mapping(row, obj))
    else:
        wanted = [(name, columns.index(name)) for name in (text_col, pair_col, label_col) if name is not None]
        for row, fields, err in records:
            if err is None:
                err = _field_count_problem(fields, columns, fmt, allow_extra=not header)
            if err is not None:
                collector.add(row, err)
                continue
            # Too few/many fields were rejected above, so every column has a value here.
            collector.add(row, builder.from_mapping(row, {name: fields[i] for name, i in wanted}))

    if collector.rows_read == 0:
        if fmt == "jsonl":
            raise DataError(f"{path_s} has no JSON lines with data (only blank lines)")
        if not header:
            raise DataError(f"{path_s} has no data rows")
        raise DataError(
            f"{path_s} has a header ({_preview_columns(columns)}) but no data rows; "
            "add rows below the header"
        )
    report = collector.report(
        fmt=fmt, encoding=used_encoding, columns=columns,
        text_column=text_col, pair_column=pair_col, label_column=label_col,
    )
    return collector.examples, report


def examples_from_lists(
    texts: Sequence[str],
    labels: Sequence[str | int] | None = None,
    pairs: Sequence[str] | None = None,
    *,
    label_map: Mapping[str, str] | str | None = None,
    skip_bad_rows: bool = False,
    max_chars: int = 100_000,
) -> tuple[list[Example], LoadReport]:
    """Build examples from Python sequences; ``Example.row`` is the 0-based index.

    The same checks as :func:`read_examples` apply (empty or over-long text, missing or unmapped
    label); numbers are turned into strings, ``None``/NaN count as missing.
    """
    _check_max_chars(max_chars)
    if isinstance(texts, (str, bytes)):
        raise DataError("texts must be a sequence of strings, not a single string; wrap it in a list")
    mapping = label_map if label_map is RAW_LABELS else parse_label_map(label_map) if label_map is not None else None
    texts = list(texts)
    for name, seq in (("labels", labels), ("pairs", pairs)):
        if seq is not None and len(seq) != len(texts):
            raise DataError(f"texts has {len(texts)} items but {name} has {len(seq)}; they must match one to one")
    if not texts:
        raise DataError("no texts given (an empty list)")

    builder = _RowBuilder(
        "text", "text_pair" if pairs is not None else None, "label" if labels is not None else None,
        mapping, require_labels=labels is not None, max_chars=max_chars,
    )
    collector = _Collector("<list>", skip_bad_rows, skip_hint="skip_bad_rows=True", row_word="item")
    for i, text in enumerate(texts):
        obj = {"text": text}
        if pairs is not None:
            obj["text_pair"] = pairs[i]
        if labels is not None:
            obj["label"] = labels[i]
        collector.add(i, builder.from_mapping(i, obj))

    columns = ["text"] + (["text_pair"] if pairs is not None else []) + (["label"] if labels is not None else [])
    report = collector.report(
        fmt="list", encoding="n/a", columns=columns, text_column="text",
        pair_column="text_pair" if pairs is not None else None,
        label_column="label" if labels is not None else None,
    )
    return collector.examples, report


def read_table(path: str | os.PathLike, *, encoding: str | None = None, header: bool = True,
               columns: Sequence[str] | None = None) -> Table:
    """Read a file as raw rows, keeping every column and the row order (for prediction output).

    Unlike :func:`read_examples` nothing is skipped: a malformed row is a :class:`DataError`,
    because the output must line up with the input row for row.
    """
    path_s = os.fspath(path)
    text, used_encoding, fmt = _load(path_s, encoding)
    names, header = _header_options(path_s, fmt, header, columns)
    rows: list[dict[str, object]] = []
    numbers_: list[int] = []
    fix = "every row is kept in the output, so fix or remove that row first"
    if fmt == "jsonl":
        columns, records = _jsonl_columns_and_records(text)
        for row, obj, err in records:
            if err is not None:
                raise DataError(f"{path_s}, row {row}: {err}; {fix}")
            rows.append(obj)
            numbers_.append(row)
    else:
        columns, header_line, records = _csv_header_and_records(path_s, text, _DELIMITERS[fmt], header, names)
        _check_unique_columns(path_s, columns, header_line)
        base = list(columns)  # a headerless file's extra trailing fields add columns; rows need these
        for row, fields, err in records:
            if err is None:
                err = _field_count_problem(fields, base, fmt, allow_extra=not header)
            if err is not None:
                raise DataError(f"{path_s}, row {row}: {err}; {fix}")
            while len(fields) > len(columns):  # a headerless row's extra trailing fields are kept
                columns.append(f"column_{len(columns) + 1}")
            rows.append(dict(zip(columns, fields)))
            numbers_.append(row)
    if not rows:
        raise DataError(f"{path_s} has no data rows")
    return Table(path=path_s, format=fmt, columns=columns, rows=rows, encoding=used_encoding, row_numbers=numbers_,
                 header=header)


def predict_columns(table: Table, text_column: str | None, pair_column: str | None = None) -> tuple[str, str | None]:
    """The text (and pair) column of a table to predict on, found as :func:`read_examples` finds them."""
    text_col, pair_col, _ = _resolve_columns(table.path, table.format, list(table.columns), text_column, pair_column,
                                             None, require_labels=False, header=table.header)
    return text_col, pair_col


#: The first characters that make a spreadsheet read a cell as a formula (OWASP, CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\Z")


def guard_cell(text: str) -> str:
    """``text`` with a leading ``'`` when it starts like a formula (``=``, ``+``, ``-``, ``@``, tab, CR).

    A plain number (``-0.5``, ``+3``, ``-1e-5``) is no formula and stays as it is. This is OWASP's
    advice for CSV injection: a spreadsheet shows the cell as text instead of running it.
    """
    if text.startswith(FORMULA_STARTS) and not _PLAIN_NUMBER.match(text):
        return "'" + text
    return text


def write_table(
    table: Table, path: str | os.PathLike, extra_columns: list[str], extra_rows: list[dict], *, csv_guard: bool = True,
) -> list[str]:
    """Write ``table``'s rows with ``extra_columns`` appended, one output row per input row.

    The format follows the output suffix (``.csv``, ``.tsv``/``.tab``, ``.jsonl``/``.ndjson``/
    ``.json``), else the table's own. Output is UTF-8, written to a temporary file and renamed,
    so a crash never leaves half a file. The input's columns are never replaced: an extra column
    whose name the input already has (a gold ``label``) is written as ``predicted_label``. Returns
    the names the extra columns were written under. In CSV/TSV output every cell, header included,
    that starts like a formula is neutralised (:func:`guard_cell`) unless ``csv_guard=False``.
    """
    if len(extra_rows) != len(table.rows):
        raise ValueError(f"extra_rows has {len(extra_rows)} rows but the table has {len(table.rows)}")
    path_s = os.fspath(path)
    suffix = Path(path_s).suffix.lower()
    fmt = "jsonl" if suffix == ".json" else _SUFFIX_FORMATS.get(suffix, table.format)
    if fmt not in ("csv", "tsv", "jsonl"):
        fmt = "csv"
    names: dict[str, str] = {}
    taken = set(table.columns)
    for c in dict.fromkeys(extra_columns):
        name, k = c, 1
        while name in taken:
            name, k = (f"predicted_{c}" if k == 1 else f"predicted_{c}_{k}"), k + 1
        names[c] = name
        taken.add(name)
    renamed = [f"{c!r} as {n!r}" for c, n in names.items() if c != n]
    if renamed:
        logger.info("%s: the input has its own column(s) of these names, kept; writing %s", path_s, ", ".join(renamed))
    columns = list(table.columns) + list(names.values())
    guard = guard_cell if csv_guard else (lambda text: text)

    out = Path(path_s)
    out.parent.mkdir(parents=True, exist_ok=True)
    # A plain open (not mkstemp) so the file gets the usual permissions, not mkstemp's 0600.
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            if fmt == "jsonl":
                for row, extra in zip(table.rows, extra_rows):
                    obj = dict(row)
                    obj.update({names[c]: extra.get(c) for c in names})
                    f.write(json.dumps(obj, ensure_ascii=False, default=_json_default) + "\n")
            else:
                # "\r\n" (RFC 4180, the csv default): with "\n" the writer leaves a field holding a
                # lone "\r" unquoted, and no CSV reader gets that row back intact.
                writer = csv.writer(f, delimiter=_DELIMITERS[fmt], lineterminator="\r\n")
                writer.writerow([guard(c) for c in columns])
                for row, extra in zip(table.rows, extra_rows):
                    merged = {**row, **{names[c]: extra.get(c) for c in names}}
                    writer.writerow([guard(_cell(merged.get(c))) for c in columns])
        os.replace(tmp, path_s)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    logger.info("wrote %d rows to %s", len(table.rows), path_s)
    return [names[c] for c in extra_columns]


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------

_LABEL_MAP_SYNTAX = (
    "expected KEY[,KEY...]=LABEL pairs separated by ';', "
    "e.g. '1,2=negative;3=neutral;4,5=positive'"
)


def parse_label_map(spec: str | Mapping) -> dict[str, str]:
    """Parse ``"1,2=negative;3=neutral;4,5=positive"`` into ``{"1": "negative", ...}``.

    A mapping passes through with keys and values turned into strings; a string holding a JSON
    object is accepted too. A malformed spec is a :class:`DataError` that shows the syntax.
    """
    if isinstance(spec, Mapping):
        result = {str(k).strip(): str(v).strip() for k, v in spec.items()}
        if not result:
            raise DataError("the label map is empty; " + _LABEL_MAP_SYNTAX)
        return result
    if not isinstance(spec, str):
        raise DataError(f"a label map must be a string or a dict, not {type(spec).__name__}; " + _LABEL_MAP_SYNTAX)
    stripped = spec.strip()
    if stripped.startswith("{"):
        try:
            obj = json.loads(stripped)
        except ValueError as e:
            raise DataError(
                f"label map {_preview(spec, 60)} starts like JSON but is not valid JSON ({e}); " + _LABEL_MAP_SYNTAX
            ) from None
        if not isinstance(obj, dict):
            raise DataError(f"label map {_preview(spec, 60)} is not a JSON object; " + _LABEL_MAP_SYNTAX)
        return parse_label_map(obj)

    result: dict[str, str] = {}
    for part in stripped.split(";"):
        part = part.strip()
        if not part:
            continue  # allow a trailing ';'
        keys, eq, value = part.partition("=")
        value = value.strip()
        if not eq or not value or "=" in value:
            raise DataError(f"label map {_preview(spec, 60)}: cannot read {_preview(part)}; " + _LABEL_MAP_SYNTAX)
        for key in keys.split(","):
            key = key.strip()
            if not key:
                raise DataError(f"label map {_preview(spec, 60)}: empty key in {_preview(part)}; " + _LABEL_MAP_SYNTAX)
            if key in result and result[key] != value:
                raise DataError(
                    f"label map {_preview(spec, 60)}: {key!r} is mapped twice ({result[key]!r} and {value!r}); "
                    "map each key once"
                )
            result[key] = value
    if not result:
        raise DataError(f"label map {_preview(spec, 60)} is empty; " + _LABEL_MAP_SYNTAX)
    return result


def label_names(examples: Iterable[Example] | Iterable[str]) -> list[str]:
    """The sorted set of labels (``None`` left out); numerically sorted when all are integers."""
    labels = {e.label if isinstance(e, Example) else e for e in examples}
    labels.discard(None)
    return _sort_labels(labels)


def check_known_labels(examples: Iterable[Example], known: Sequence[str], where: str) -> None:
    """Raise :class:`DataError` if any example has a label outside ``known``.

    ``where`` names the data in the message, e.g. ``"test file data/test.csv"``.
    """
    known_set = set(known)
    unseen: dict[str, list[int]] = defaultdict(list)
    for e in examples:
        if e.label is not None and e.label not in known_set:
            unseen[e.label].append(e.row)
    if not unseen:
        return
    parts = []
    for label in _sort_labels(unseen)[:_MAX_LISTED]:
        rows = unseen[label]
        shown = ", ".join(str(r) for r in rows[:_MAX_LISTED]) + (", ..." if len(rows) > _MAX_LISTED else "")
        parts.append(f"{_preview(label)} ({len(rows)} row{'s' if len(rows) != 1 else ''}: {shown})")
    known_list = _sort_labels(known_set)
    known_s = ", ".join(_preview(k) for k in known_list[:30]) + (", ..." if len(known_list) > 30 else "") or "(none)"
    raise DataError(
        f"{where}: label{'s' if len(unseen) > 1 else ''} never seen in training: {'; '.join(parts)}. "
        f"Known labels: {known_s}. Map them with --label-map, or remove those rows."
    )


def _sort_labels(labels: Iterable[str]) -> list[str]:
    labels = list(labels)
    if labels and all(_INT_RE.match(label) for label in labels):
        return sorted(labels, key=lambda s: (int(s), s))  # "2" before "10"
    return sorted(labels)


# --------------------------------------------------------------------------------------------
# Deduplication and splits
# --------------------------------------------------------------------------------------------


def deduplicate(examples: list[Example]) -> tuple[list[Example], DedupeReport]:
    """Keep the first of identical ``(text, text_pair)`` examples, in order.

    When copies of a text disagree on the label the right label is unknowable, so every copy is
    dropped (keeping one would put a coin-flip label in training, or leak it into the test set).
    Unlabelled copies (``label=None``) never conflict with anything.
    """
    labels_by_key: dict[tuple[str, str | None], set[str]] = defaultdict(set)
    for e in examples:
        if e.label is not None:
            labels_by_key[(e.text, e.text_pair)].add(e.label)
    conflicting = {k for k, labels in labels_by_key.items() if len(labels) > 1}

    kept: list[Example] = []
    seen: set[tuple[str, str | None]] = set()
    duplicates = conflicting_rows = 0
    for e in examples:
        key = (e.text, e.text_pair)
        if key in conflicting:
            conflicting_rows += 1
        elif key in seen:
            duplicates += 1
        else:
            seen.add(key)
            kept.append(e)
    report = DedupeReport(
        rows_in=len(examples), rows_out=len(kept), duplicates_removed=duplicates,
        conflicting_texts=len(conflicting), conflicting_rows_removed=conflicting_rows,
    )
    if duplicates or conflicting:
        logger.info("deduplicate: %s", report.summary())
    return kept, report


def stratified_split(
    examples: list[Example],
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    stratum: Callable[[Example], str | None] | None = None,
) -> tuple[list[Example], list[Example], list[Example]]:
    """Split into train/validation/test with each label's proportions kept (to within one example).

    Deterministic for a given input order and ``seed``. A label with at least 3 examples appears in
    every split whose fraction is above zero, even where rounding would give it none (so a very small
    label can be more than one example off its proportion); a zero fraction gives an empty list.
    Each split is returned in a seeded random order, so no split is sorted by label.
    stratum: the group an example is stratified by (default its label; a task gives one for labels
    that are not single strings, e.g. a multi-label row's rarest label or a regression target's bin).
    """
    fractions = tuple(float(f) for f in fractions)  # type: ignore[assignment]
    if len(fractions) != 3:
        raise DataError(f"split fractions must be three numbers (train, validation, test), got {fractions}")
    if any(not math.isfinite(f) or f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise DataError(
            f"split fractions {fractions} must be non-negative and sum to 1 (they sum to {sum(fractions):.6g}), "
            "e.g. (0.8, 0.1, 0.1)"
        )
    if fractions[0] <= 0:
        raise DataError(f"split fractions {fractions}: the training fraction must be above zero")

    rng = random.Random(seed)
    by_label: dict[str | None, list[Example]] = defaultdict(list)
    for e in examples:
        by_label[stratum(e) if stratum is not None else e.label].append(e)

    splits: tuple[list[Example], list[Example], list[Example]] = ([], [], [])
    # Fixed label order: the result must not depend on which label happens to come first.
    order = sorted(by_label, key=lambda label: (label is None, label or ""))
    for label in order:
        group = list(by_label[label])
        rng.shuffle(group)
        n_train, n_val, n_test = _split_sizes(len(group), fractions)
        splits[0].extend(group[:n_train])
        splits[1].extend(group[n_train:n_train + n_val])
        splits[2].extend(group[n_train + n_val:n_train + n_val + n_test])
    for split in splits:
        rng.shuffle(split)
    return splits


def empty_split_warnings(rows: Mapping[str, int]) -> list[str]:
    """Loud warnings for empty validation/test splits (``rows``: split name -> examples), else []."""
    empty = [name for name in ("validation", "test") if not rows.get(name)]
    if not empty:
        return []
    what = " and ".join(empty)
    consequence = ("this run has no held-out evaluation at all: metrics.json holds no metrics, and the saved model "
                   "is the last step's, chosen by nothing") if len(empty) == 2 else \
        f"there are no {empty[0]} metrics"
    return [f"WARNING: the {what} split{'s are' if len(empty) == 2 else ' is'} empty (too few rows after "
            f"deduplication and splitting: {rows.get('train', 0)} training examples); {consequence}. Give more "
            "rows, larger --split fractions, or --validation-file/--test-file."]


def _split_sizes(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Per-label sizes: rounded (so each is within one of n * fraction), at least one per non-empty split."""
    n_val = int(math.floor(n * fractions[1] + 0.5))
    n_test = int(math.floor(n * fractions[2] + 0.5))
    if n >= 3:
        # Small labels would round to zero and vanish from validation/test; keep one of each.
        n_val = max(n_val, 1) if fractions[1] > 0 else 0
        n_test = max(n_test, 1) if fractions[2] > 0 else 0
    while n > 0 and n - n_val - n_test < 1:
        # Training must keep at least one example of every label.
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return n - n_val - n_test, n_val, n_test


# --------------------------------------------------------------------------------------------
# Internals: bytes -> text -> format
# --------------------------------------------------------------------------------------------


def _load(path: str, encoding: str | None) -> tuple[str, str, str]:
    """Read, check and decode a file; return (text, encoding used, format)."""
    data = _read_bytes(path)
    if not data.strip():
        raise DataError(f"{path} is empty ({len(data)} bytes); expected a CSV/TSV/JSONL file with a header and rows")
    _check_not_binary(path, data, encoding)
    text, used = _decode(path, data, encoding)
    if not text.strip():
        raise DataError(f"{path} is empty (only whitespace); expected a CSV/TSV/JSONL file with a header and rows")
    return text, used, _detect_format(path, text)


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise DataError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a directory; expected a CSV, TSV or JSONL file") from None
    except PermissionError:
        raise DataError(f"cannot read {path}: permission denied") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None


def _check_not_binary(path: str, data: bytes, encoding: str | None) -> None:
    for magic, check, what in _MAGIC:
        if data.startswith(magic) and (check is None or check(data)):
            raise DataError(f"{path} looks like a binary file ({what}), not CSV/TSV/JSONL")
    if encoding is not None or any(data.startswith(bom) for bom, _ in _BOMS):
        return  # UTF-16/32 text is full of NUL bytes; the user (or the BOM) told us what it is
    block = data[:_BINARY_SNIFF_BYTES]
    nul = block.find(b"\x00")
    # A few NUL bytes are damage in a text file: the rows holding them are rejected, each with its
    # row number (skippable). Many (UTF-16 puts one beside every ASCII character) mean another codec.
    if nul >= 0 and block.count(b"\x00") * 8 > len(block):
        raise DataError(
            f"{path} looks like a binary file (NUL byte at offset {nul}), not CSV/TSV/JSONL. "
            "If it is UTF-16 text without a byte-order mark, pass --encoding utf-16-le (or utf-16-be)"
        )


def _decode(path: str, data: bytes, encoding: str | None) -> tuple[str, str]:
    if encoding is not None:
        try:
            text = data.decode(encoding)
        except LookupError:
            raise DataError(
                f"unknown encoding {encoding!r} for {path} (--encoding); "
                "use a codec name such as utf-8, latin-1, cp1252 or utf-16"
            ) from None
        except UnicodeError as e:
            raise DataError(f"{path} is not valid {encoding}: {_decode_position(data, e)}. "
                            "Pass the file's real encoding with --encoding, e.g. --encoding latin-1 or "
                            "--encoding cp1252") from None
        return text.removeprefix("\ufeff"), encoding  # a BOM would glue itself onto the first column name

    for bom, codec in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(codec), f"{codec} (byte-order mark)"
            except UnicodeError as e:
                raise DataError(f"{path} starts with a {codec} byte-order mark but is not valid {codec}: "
                                f"{_decode_position(data, e)}. Pass its real encoding with --encoding") from None

    body, base = (data[3:], 3) if data.startswith(codecs.BOM_UTF8) else (data, 0)
    try:
        return body.decode("utf-8"), "utf-8 (byte-order mark removed)" if base else "utf-8"
    except UnicodeDecodeError as e:
        offset = base + e.start
        line = data.count(b"\n", 0, offset) + 1
        # latin-1 maps every byte to a character, so this cannot fail; it is right for latin-1
        # files and keeps ASCII intact for cp1252 ones, which is what real exports mostly are.
        logger.warning(
            "%s is not valid UTF-8 (byte 0x%02x at offset %d, line %d); decoding it as latin-1. "
            "Pass --encoding if that is wrong (e.g. --encoding cp1252).",
            path, data[offset], offset, line,
        )
        return body.decode("latin-1"), f"latin-1 (fallback: not valid UTF-8 at byte {offset})"


def _decode_position(data: bytes, e: UnicodeError) -> str:
    start = getattr(e, "start", None)
    if not isinstance(start, int) or not 0 <= start < len(data):
        return str(e)
    line = data.count(b"\n", 0, start) + 1
    return f"byte 0x{data[start]:02x} at offset {start} (line {line}) cannot be decoded ({getattr(e, 'reason', e)})"


def _detect_format(path: str, text: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in _SUFFIX_FORMATS:
        return _SUFFIX_FORMATS[suffix]
    first = _first_line(text)
    if suffix == ".json":
        if _is_json_object(first.strip()):
            return "jsonl"
        try:
            json.loads(text)
        except (ValueError, RecursionError):
            return "jsonl"  # neither: read as JSON lines so each bad line gets its own message
        name = Path(path).name
        raise DataError(
            f"{path} is a single JSON document, not JSON lines (one object per line). Convert it, "
            f"e.g. with `jq -c '.[]' {name} > {Path(name).stem}.jsonl`, or save it as CSV"
        )
    if first.lstrip().startswith("{"):
        return "jsonl"
    return "tsv" if "\t" in first else "csv"


def _first_line(text: str) -> str:
    """The first non-blank line, stripped of its line ending (lines as in :func:`_csv_records`)."""
    sep = "\n" if "\n" in text else "\r"
    start = 0
    while start < len(text):
        end = text.find(sep, start)
        end = len(text) if end < 0 else end
        line = text[start:end].strip("\r\n")
        if line.strip():
            return line
        start = end + 1
    return ""


def _is_json_object(line: str) -> bool:
    if not line.startswith("{"):
        return False
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, RecursionError):
        return False


# --------------------------------------------------------------------------------------------
# Internals: records
# --------------------------------------------------------------------------------------------


@contextmanager
def _csv_field_limit(limit: int) -> Iterator[None]:
    old = csv.field_size_limit()
    csv.field_size_limit(max(old, limit))
    try:
        yield
    finally:
        csv.field_size_limit(old)


class _Lines:
    """The lines of a text, as an iterator whose position can be set back (to re-read after an error)."""

    def __init__(self, lines: list[str]) -> None:
        self.lines, self.pos = lines, 0

    def __iter__(self) -> "_Lines":
        return self

    def __next__(self) -> str:
        if self.pos >= len(self.lines):
            raise StopIteration
        self.pos += 1
        return self.lines[self.pos - 1]


def _csv_records(
    text: str, delimiter: str, allow_extra: bool = False, expected: int | None = None,
) -> Iterator[tuple[int, list[str] | None, str | None]]:
    """Yield (line the record starts on, fields, None) or (line, None, problem); blank lines skipped.

    Every line is accounted for: a record that breaks the quoting rules, or that runs over several
    lines and has a different number of fields from the first record (fewer, with ``allow_extra``:
    a quote left open that a later quote happened to close), is a problem of the line it starts on, and
    reading goes on at the next line, so a quote left open never swallows the rows after it.
    """
    # Lines end at "\n" (as wc -l, grep -n, sed and vim count them), so a lone "\r" inside a quoted
    # tweet does not shift every later row number; "\r\n" is handled by the csv module. Only a file
    # with no "\n" at all (classic Mac) has its lines end at "\r". No translation: quoted "\r\n" stays.
    newline = "\r" if "\n" not in text else "\n"
    source = _Lines(io.StringIO(text, newline=newline).readlines())
    reader = csv.reader(source, delimiter=delimiter, strict=True)
    # ``expected``: the field count (default: the first record's, the header's)
    with _csv_field_limit(_CSV_FIELD_LIMIT):
        while True:
            start = source.pos
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                problem = _csv_problem(e, delimiter)
                if source.pos - start > 1:
                    problem = (f"a quote left open? A quoted field opened on this row runs over lines {start + 1}-"
                               f"{source.pos} and breaks there ({str(e)[:80]}); the lines after line {start + 1} "
                               "are read again as rows of their own")
                source.pos = start + 1  # the record is this line's problem; the next line is read afresh
                reader = csv.reader(source, delimiter=delimiter, strict=True)
                yield start + 1, None, problem
                continue
            if not fields:  # [] is a blank line
                continue
            if any("\x00" in f for f in fields):
                problem = "the row contains a NUL character (file damage?)"
            elif (source.pos - start > 1 and expected is not None
                  and (len(fields) < expected if allow_extra else len(fields) != expected)):
                problem = (f"a quoted field runs from line {start + 1} to line {source.pos} and leaves the record "
                           f"with {len(fields)} fields: a quote left open? The lines after line {start + 1} "
                           "are read again as rows")
            else:
                if expected is None:
                    expected = len(fields)
                yield start + 1, fields, None
                continue
            source.pos = start + 1
            reader = csv.reader(source, delimiter=delimiter, strict=True)
            yield start + 1, None, problem


def _csv_problem(e: csv.Error, delimiter: str) -> str:
    msg = str(e)
    if "unexpected end of data" in msg:
        return 'a quoted field starting on this row is never closed (unmatched \'"\')'
    if "expected after" in msg:
        return (f"malformed quoting ({msg}): a quote inside a quoted field must be doubled (\"\"), "
                "and a field that starts with a quote must end with one")
    if "NUL" in msg:
        return "the row contains a NUL character (file damage?)"
    if "new-line character" in msg:
        return 'a carriage return ("\\r") inside an unquoted field; quote the field'
    return f"malformed {'TSV' if delimiter == chr(9) else 'CSV'} ({msg})"


def _csv_header_and_records(
    path: str, text: str, delimiter: str, header: bool = True, names: Sequence[str] | None = None,
) -> tuple[list[str], int, Iterator[tuple[int, list[str] | None, str | None]]]:
    """The column names and the data records. ``header=False``: the first row is data; columns are
    ``names`` or ``column_1 ... column_N`` (N: the first row's field count), and a row may have
    extra trailing fields (research files often do), which are ignored."""
    if header and names is None:
        records = _csv_records(text, delimiter)
        for line, fields, err in records:
            if err is not None:
                raise DataError(f"{path}, line {line}: cannot read the header: {err}")
            return fields, line, records
        raise DataError(f"{path} is empty; expected a header line and rows")
    records = _csv_records(text, delimiter, allow_extra=True, expected=len(names) if names else None)
    held: list[tuple[int, list[str] | None, str | None]] = []
    first = None
    for record in records:
        held.append(record)
        if record[1] is not None:
            first = record
            break
    if names is not None:
        columns = list(names)
        if first is not None and [f.strip().casefold() for f in first[1]] == [c.casefold() for c in columns]:
            held.remove(first)  # the file has the header the user described: not a data row
            logger.info("%s: the first row is the header %s, as --columns says; reading it as one",
                        path, _preview_columns(columns))
    elif first is not None:
        columns = [f"column_{i}" for i in range(1, len(first[1]) + 1)]
    else:
        columns = []
    return columns, 0, itertools.chain(held, records)


def _check_unique_columns(path: str, columns: list[str], header_line: int) -> None:
    counts = Counter(columns)
    dups = [name for name, n in counts.items() if n > 1]
    if dups:
        described = ", ".join(f"{_preview(name)} ({counts[name]} times)" for name in dups[:_MAX_LISTED])
        raise DataError(
            f"{path}, line {header_line}: the header names a column more than once: {described}; "
            "give every column a unique name"
        )


def _field_count_problem(fields: list[str], columns: list[str], fmt: str, allow_extra: bool = False) -> str | None:
    n, expected = len(fields), len(columns)
    if n == expected or (allow_extra and n > expected):
        return None
    what = "tab" if fmt == "tsv" else "comma"
    if n > expected:
        return (f"too many fields: {n}, expected {expected} ({_preview_columns(columns)}); "
                f"quote a text that contains a {what}")
    return f"too few fields: {n}, expected {expected} ({_preview_columns(columns)})"


def _jsonl_columns_and_records(text: str) -> tuple[list[str], list[tuple[int, dict | None, str | None]]]:
    """Parse every non-blank line; columns are the keys in order of first appearance."""
    records: list[tuple[int, dict | None, str | None]] = []
    keys: dict[str, None] = {}
    # JSON strings cannot hold a raw newline, so "\n" is the only record separator (not \u2028 etc.).
    for i, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except RecursionError:
            records.append((i, None, "invalid JSON (nested too deeply)"))
            continue
        except ValueError as e:
            reason = getattr(e, "msg", str(e))
            col = getattr(e, "colno", None)
            records.append((i, None, f"invalid JSON: {reason}" + (f" at column {col}" if col else "")))
            continue
        if not isinstance(obj, dict):
            records.append((i, None, f"not a JSON object but {_json_type(obj)} ({_preview(line.strip())})"))
            continue
        keys.update(dict.fromkeys(obj))
        records.append((i, obj, None))
    return list(keys), records


# --------------------------------------------------------------------------------------------
# Internals: columns and row validation
# --------------------------------------------------------------------------------------------


def _header_options(path: str, fmt: str, header: bool, columns: Sequence[str] | None) -> tuple[list[str] | None, bool]:
    """(column names or None, whether the first row is a header); ``columns`` implies no header."""
    if columns is not None:
        if isinstance(columns, str):
            columns = [c.strip() for c in columns.split(",")]
        names = [str(c) for c in columns]
        if not names or not all(n.strip() for n in names) or len(set(names)) != len(names):
            raise DataError(f"columns {_preview_columns(names)}: give each column a distinct, non-empty name")
        header = False
    else:
        names = None
    if not header and fmt == "jsonl":
        raise DataError(f"{path}: JSON lines name their fields in every line; --no-header and --columns apply "
                        "to CSV and TSV files only")
    return names, bool(header)


def _positional(path: str, columns: list[str], name: str, flag: str) -> str | None:
    """A headerless file's column named by 1-based position ("3") or by a --columns name."""
    if name in columns:
        return name
    if name.strip().isdigit():
        i = int(name)
        if 1 <= i <= len(columns):
            return columns[i - 1]
        raise DataError(f"{path}: {flag} {i}: the file has {len(columns)} columns (positions 1 to {len(columns)})")
    return None


def _looks_like_data(columns: Sequence[str]) -> bool:
    """A header row holds short names; a number, or a sentence, says the first row is data."""
    for name in columns:
        text = name.strip()
        try:
            float(text)
            return True
        except ValueError:
            pass
        if len(text) > 40 or len(text.split()) >= 5:
            return True
    return False


def _resolve_columns(
    path: str, fmt: str, columns: list[str], text_column: str | None, pair_column: str | None,
    label_column: str | None, require_labels: bool, header: bool = True,
) -> tuple[str, str | None, str | None]:
    what = "keys" if fmt == "jsonl" else "columns"
    found = f"{what} found: {_preview_columns(columns, limit=30)}"
    hint = _delimiter_hint(columns, fmt)
    if header and fmt != "jsonl" and _looks_like_data(columns):
        hint += (f". The first row ({_preview_columns(columns, limit=4)}) looks like data, not a header: if the file "
                 "has no header row, pass --no-header and name columns by 1-based position (--text-column 3 "
                 "--label-column 2) or list them with --columns id,score,text")
    elif not header:
        hint += (". This file has no header: name columns by 1-based position (--text-column 3 --label-column 2) "
                 "or list them with --columns")

    def missing(kind: str, flag: str, name: str | None, candidates: tuple[str, ...] = ()) -> DataError:
        if name is not None:
            head = f"{path}: no {kind} column {_preview(name)}"
            if header and name.strip().isdigit() and fmt != "jsonl" and "--no-header" not in hint:
                head += " (a position needs --no-header)"
        else:
            head = f"{path}: no {kind} column found (looked for {', '.join(candidates)})"
        return DataError(f"{head}; {found}. Name the right one with {flag}{hint}")

    if not header:
        def find(name: str, flag: str) -> str | None:
            return _positional(path, columns, name, flag)
    else:
        def find(name: str, flag: str) -> str | None:
            return _find_column(path, columns, name)

    if text_column is not None:
        text_col = find(text_column, "--text-column")
        if text_col is None:
            raise missing("text", "--text-column", text_column)
    else:
        text_col = _first_column(path, columns, TEXT_COLUMNS)
        if text_col is None:
            raise missing("text", "--text-column", None, TEXT_COLUMNS)

    pair_col = None
    if pair_column is not None:
        pair_col = find(pair_column, "--pair-column")
        if pair_col is None:
            raise missing("pair", "--pair-column", pair_column)

    if label_column is not None:
        label_col = find(label_column, "--label-column")
        if label_col is None:
            raise missing("label", "--label-column", label_column)
    else:
        label_col = _first_column(path, columns, LABEL_COLUMNS, exclude=(text_col, pair_col))
        if label_col is None and require_labels:
            err = missing("label", "--label-column", None, LABEL_COLUMNS)
            raise DataError(f"{err} (or read it as unlabelled data for prediction)")

    used = [c for c in (text_col, pair_col, label_col) if c is not None]
    if len(set(used)) != len(used):
        raise DataError(f"{path}: the same column is used twice (text {text_col!r}, pair {pair_col!r}, "
                        f"label {label_col!r}); name different columns")
    return text_col, pair_col, label_col


def _find_column(path: str, columns: list[str], name: str) -> str | None:
    if name in columns:
        return name
    key = name.strip().casefold()
    matches = [c for c in columns if c.strip().casefold() == key]
    if len(matches) > 1:
        raise DataError(f"{path}: column name {name!r} matches several columns ignoring case "
                        f"({_preview_columns(matches)}); pass the exact name")
    return matches[0] if matches else None


def _first_column(path: str, columns: list[str], candidates: tuple[str, ...], exclude: tuple = ()) -> str | None:
    for candidate in candidates:
        col = _find_column(path, columns, candidate)
        if col is not None and col not in exclude:
            return col
    return None


def _delimiter_hint(columns: list[str], fmt: str) -> str:
    """A hint when the whole header is one column: the file is likely split on another character."""
    if fmt == "jsonl" or len(columns) != 1:
        return ""
    candidates = ((";", "semicolons"), ("\t", "tabs"), ("|", "'|'"), (",", "commas"))
    for sep, name in candidates:
        if sep in columns[0] and sep != _DELIMITERS[fmt]:
            return (f" (the header is one column {_preview(columns[0])}: is the file separated by {name}? "
                    "Save it comma-separated as .csv, or tab-separated as .tsv)")
    return ""


class _RowBuilder:
    """Turns one record's values into an Example, or into the reason it cannot be used."""

    def __init__(self, text_col: str, pair_col: str | None, label_col: str | None,
                 label_map: dict[str, str] | None, require_labels: bool, max_chars: int) -> None:
        self.text_col, self.pair_col, self.label_col = text_col, pair_col, label_col
        self.label_map = label_map
        self.require_labels = require_labels
        self.max_chars = max_chars

    def from_mapping(self, row: int, obj: Mapping[str, object]) -> Example | str:
        text = self._text(obj.get(self.text_col, _MISSING), self.text_col, "text")
        if not isinstance(text, _Ok):
            return text
        pair = label = _Ok(None)
        if self.pair_col is not None:
            pair = self._text(obj.get(self.pair_col, _MISSING), self.pair_col, "text pair")
            if not isinstance(pair, _Ok):
                return pair
        if self.label_col is not None:
            label = self._label(obj.get(self.label_col, _MISSING))
            if not isinstance(label, _Ok):
                return label
        return Example(text=text.value, label=label.value, text_pair=pair.value, row=row)

    def _text(self, value: object, column: str, what: str) -> _Ok | str:
        if value is _MISSING:
            return f"missing key {column!r}"
        if isinstance(value, bool):
            # true/false is a JSON file gone wrong far more often than a text to classify
            return f"{what} is a boolean ({'true' if value else 'false'}), expected a string"
        s = _scalar_to_str(value)
        if s is None:
            return f"{what} is missing ({_describe(value)})"
        if not isinstance(s, str):
            return f"{what} is {s[0]}, expected a string"
        if not s.strip():
            return f"empty {what}"
        if "\x00" in s:
            # A NUL is file damage, not text; Python 3.10's csv module refuses it anyway, so
            # rejecting it everywhere keeps results the same on every version.
            return f"{what} contains a NUL character (file damage?)"
        if len(s) > self.max_chars:
            return f"{what} is {len(s):,} characters, over the limit of {self.max_chars:,} (--max-chars)"
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            # Only JSON escapes like "\ud800" get here; the tokenizer and every writer would choke.
            return f"{what} contains an unpaired surrogate (invalid Unicode)"
        return _Ok(s)

    def _label(self, value: object) -> _Ok | str:
        if self.label_map is RAW_LABELS:
            return self._raw_label(value)
        s = None if value is _MISSING else _scalar_to_str(value)
        if isinstance(s, tuple):
            return f"label is {s[0]}, expected a string or a number"
        s = s.strip() if s is not None else None
        if s and "\x00" in s:
            return "label contains a NUL character (file damage?)"
        if not s:
            if not self.require_labels:
                return _Ok(None)
            if value is _MISSING:
                return f"missing key {self.label_col!r}"
            return f"missing label (column {self.label_col!r} is empty)"
        if self.label_map is not None:
            if s not in self.label_map:
                keys = _sort_labels(self.label_map)
                shown = ", ".join(keys[:20]) + (", ..." if len(keys) > 20 else "")
                return f"label {_preview(s)} is not in the label map (keys: {shown}); add it to --label-map"
            s = self.label_map[s]
        return _Ok(s)


    def _raw_label(self, value: object) -> _Ok | str:
        """The cell as it is (a stripped string, a number, a JSON list): a task parses it (tasks/)."""
        if value is _MISSING:
            return _Ok(None) if not self.require_labels else f"missing key {self.label_col!r}"
        if value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip()):
            if not self.require_labels:
                return _Ok(None)
            return f"missing label (column {self.label_col!r} is empty)"
        return _Ok(value.strip() if isinstance(value, str) else value)


# Pass as label_map to read labels unparsed: the task (tasks/) turns each into its own label type.
RAW_LABELS: Any = object()


@dataclass(frozen=True)
class _Ok:
    """A validated value (a plain str return means "rejected, for this reason")."""

    value: str | None


def _scalar_to_str(value: object) -> str | tuple[str] | None:
    """A cell's value as a string; None when missing; (description,) when of an unusable type."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        if math.isnan(float(value)):
            return None  # pandas' marker for a missing value
        if math.isinf(float(value)):
            return (f"a number ({value})",)
        return str(value)
    return (_describe(value),)


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    kind = _json_type(value)
    return f"{kind} {_preview(json.dumps(value, default=str) if isinstance(value, (list, dict)) else repr(value))}"


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if value is None:
        return "null"
    return f"a {type(value).__name__}"


class _Collector:
    """Keeps examples and rejections; raises on the first rejection unless skipping."""

    def __init__(self, path: str, skip_bad_rows: bool, skip_hint: str, row_word: str = "row") -> None:
        self.path, self.skip, self.skip_hint, self.row_word = path, skip_bad_rows, skip_hint, row_word
        self.examples: list[Example] = []
        self.rejected: list[Rejection] = []
        self.rows_read = 0

    def add(self, row: int, result: Example | str) -> None:
        self.rows_read += 1
        if isinstance(result, Example):
            self.examples.append(result)
            return
        self.rejected.append(Rejection(row, result))
        if not self.skip:
            raise DataError(f"{self.path}, {self.row_word} {row}: {result}. "
                            f"Fix or remove that {self.row_word}, or pass {self.skip_hint} to skip such rows")

    def report(self, *, fmt: str, encoding: str, columns: list[str], text_column: str,
               pair_column: str | None, label_column: str | None) -> LoadReport:
        report = LoadReport(
            path=self.path, format=fmt, encoding=encoding, columns=list(columns),
            text_column=text_column, pair_column=pair_column, label_column=label_column,
            rows_read=self.rows_read, rows_used=len(self.examples), rejected=list(self.rejected),
        )
        if self.rows_read and not self.examples:
            first = "; ".join(f"{self.row_word} {r.row}: {r.reason}" for r in self.rejected[:3])
            raise DataError(f"{self.path}: no usable rows ({self.rows_read} read, all rejected); "
                            f"first problems: {first}")
        if self.rejected:
            logger.warning("%s", report.summary())
        else:
            logger.info("%s", report.summary())
        return report


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _check_max_chars(max_chars: int) -> None:
    if not isinstance(max_chars, int) or isinstance(max_chars, bool) or max_chars < 1:
        raise DataError(f"--max-chars must be a whole number of at least 1, got {max_chars!r}")


def _preview(s: str, limit: int = 40) -> str:
    return repr(s) if len(s) <= limit else repr(s[:limit]) + f"... ({len(s):,} characters)"


def _preview_columns(columns: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(_preview(str(c)) for c in columns[:limit])
    return shown + (f", ... ({len(columns)} in all)" if len(columns) > limit else "")


def _cell(value: object) -> str:
    """A value as CSV text: None -> empty, JSON for lists and objects."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, default=_json_default)
    return str(value)


def _json_default(value: object) -> object:
    # numpy scalars and arrays (predicted probabilities) are not JSON-serializable as such.
    for attr in ("tolist", "item"):
        method = getattr(value, attr, None)
        if callable(method):
            return method()
    return str(value)
