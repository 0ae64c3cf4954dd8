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

import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from bertfit.errors import DataError
from bertfit.data.examples import DedupeReport, Example, LoadReport, Rejection, Table
from bertfit.data.files import (LABEL_COLUMNS, loads_json, TEXT_COLUMNS, DELIMITERS, MAX_LISTED, check_max_chars, check_unique_columns,
                           csv_header_and_records, field_count_problem, jsonl_columns_and_records,
                           load_table, preview, preview_columns, sort_labels)
from bertfit.data.columnar import ColumnarSource, open_source, split_format
from bertfit.data.rows import RAW_LABELS, Collector, header_options, resolve_columns, RowBuilder
from bertfit.data.splits import deduplicate, empty_split_warnings, grouped_split, stratified_split
from bertfit.data.tables import guard_cell, predict_columns, read_table, write_table

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
    "grouped_split",
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
    check_max_chars(max_chars)
    mapping = label_map if label_map is RAW_LABELS else parse_label_map(label_map) if label_map is not None else None
    source = open_source(path)  # Parquet, Arrow, `datasets`, a DataFrame: rows as JSON lines' mappings
    if source is not None:
        return _read_columnar(source, text_column, pair_column, label_column, mapping, require_labels,
                              skip_bad_rows, max_chars, header, columns)
    path, forced = split_format(path)
    path_s = os.fspath(path)
    text, used_encoding, fmt = load_table(path_s, encoding, forced)
    names, header = header_options(path_s, fmt, header, columns)

    if fmt == "jsonl":
        columns, records = jsonl_columns_and_records(text)
        if not columns and records:
            # Not one object: listing "keys found: none" would hide that it is not JSON lines at all.
            row, _, err = records[0]
            raise DataError(f"{path_s}: no line is a JSON object (row {row}: {err}); JSON lines need "
                            "one object per line, e.g. {\"text\": \"...\", \"label\": \"...\"}")
    else:
        columns, header_line, records = csv_header_and_records(path_s, text, DELIMITERS[fmt], header, names)
        check_unique_columns(path_s, columns, header_line)

    text_col, pair_col, label_col = resolve_columns(
        path_s, fmt, columns, text_column, pair_column, label_column, require_labels, header
    )
    builder = RowBuilder(text_col, pair_col, label_col, mapping, require_labels, max_chars)
    collector = Collector(path_s, skip_bad_rows, skip_hint="--skip-bad-rows")

    if fmt == "jsonl":
        for row, obj, err in records:
            collector.add(row, err if err is not None else builder.from_mapping(row, obj))
    else:
        wanted = [(name, columns.index(name)) for name in (text_col, pair_col, label_col) if name is not None]
        for row, fields, err in records:
            if err is None:
                err = field_count_problem(fields, columns, fmt, allow_extra=not header)
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
            f"{path_s} has a header ({preview_columns(columns)}) but no data rows; "
            "add rows below the header"
        )
    report = collector.report(
        fmt=fmt, encoding=used_encoding, columns=columns,
        text_column=text_col, pair_column=pair_col, label_column=label_col,
    )
    return collector.examples, report


def _read_columnar(source: ColumnarSource, text_column: str | None, pair_column: str | None,
                   label_column: str | None, mapping: object, require_labels: bool, skip_bad_rows: bool,
                   max_chars: int, header: bool, columns: Sequence[str] | None) -> tuple[list[Example], LoadReport]:
    """read_examples on a columnar table: its rows are read as JSON lines are, only the columns used."""
    header_options(source.name, source.format, header, columns)
    text_col, pair_col, label_col = resolve_columns(source.name, source.format, source.columns, text_column,
                                                    pair_column, label_column, require_labels)
    source.check_text(text_col, "text", "--text-column")
    if pair_col is not None:
        source.check_text(pair_col, "text pair", "--pair-column")
    builder = RowBuilder(text_col, pair_col, label_col, mapping, require_labels, max_chars)
    collector = Collector(source.name, skip_bad_rows, skip_hint="--skip-bad-rows")
    for row, obj, _ in source.records([c for c in (text_col, pair_col, label_col) if c is not None]):
        collector.add(row, builder.from_mapping(row, obj))
    if collector.rows_read == 0:
        raise DataError(f"{source.name} has no rows (columns: {preview_columns(source.columns)})")
    report = collector.report(fmt=source.format, encoding="utf-8", columns=source.columns,
                              text_column=text_col, pair_column=pair_col, label_column=label_col)
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
    check_max_chars(max_chars)
    if isinstance(texts, (str, bytes)):
        raise DataError("texts must be a sequence of strings, not a single string; wrap it in a list")
    mapping = label_map if label_map is RAW_LABELS else parse_label_map(label_map) if label_map is not None else None
    texts = list(texts)
    for name, seq in (("labels", labels), ("pairs", pairs)):
        if seq is not None and len(seq) != len(texts):
            raise DataError(f"texts has {len(texts)} items but {name} has {len(seq)}; they must match one to one")
    if not texts:
        raise DataError("no texts given (an empty list)")

    builder = RowBuilder(
        "text", "text_pair" if pairs is not None else None, "label" if labels is not None else None,
        mapping, require_labels=labels is not None, max_chars=max_chars,
    )
    collector = Collector("<list>", skip_bad_rows, skip_hint="skip_bad_rows=True", row_word="item")
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
            obj = loads_json(stripped)
        except ValueError as e:
            raise DataError(
                f"label map {preview(spec, 60)} starts like JSON but is not valid JSON ({e}); " + _LABEL_MAP_SYNTAX
            ) from None
        if not isinstance(obj, dict):
            raise DataError(f"label map {preview(spec, 60)} is not a JSON object; " + _LABEL_MAP_SYNTAX)
        return parse_label_map(obj)

    result: dict[str, str] = {}
    for part in stripped.split(";"):
        part = part.strip()
        if not part:
            continue  # allow a trailing ';'
        keys, eq, value = part.partition("=")
        value = value.strip()
        if not eq or not value or "=" in value:
            raise DataError(f"label map {preview(spec, 60)}: cannot read {preview(part)}; " + _LABEL_MAP_SYNTAX)
        for key in keys.split(","):
            key = key.strip()
            if not key:
                raise DataError(f"label map {preview(spec, 60)}: empty key in {preview(part)}; " + _LABEL_MAP_SYNTAX)
            if key in result and result[key] != value:
                raise DataError(
                    f"label map {preview(spec, 60)}: {key!r} is mapped twice ({result[key]!r} and {value!r}); "
                    "map each key once"
                )
            result[key] = value
    if not result:
        raise DataError(f"label map {preview(spec, 60)} is empty; " + _LABEL_MAP_SYNTAX)
    return result


def label_names(examples: Iterable[Example] | Iterable[str]) -> list[str]:
    """The sorted set of labels (``None`` left out); numerically sorted when all are integers."""
    labels = {e.label if isinstance(e, Example) else e for e in examples}
    labels.discard(None)
    return sort_labels(labels)


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
    for label in sort_labels(unseen)[:MAX_LISTED]:
        rows = unseen[label]
        shown = ", ".join(str(r) for r in rows[:MAX_LISTED]) + (", ..." if len(rows) > MAX_LISTED else "")
        parts.append(f"{preview(label)} ({len(rows)} row{'s' if len(rows) != 1 else ''}: {shown})")
    known_list = sort_labels(known_set)
    known_s = ", ".join(preview(k) for k in known_list[:30]) + (", ..." if len(known_list) > 30 else "") or "(none)"
    raise DataError(
        f"{where}: label{'s' if len(unseen) > 1 else ''} never seen in training: {'; '.join(parts)}. "
        f"Known labels: {known_s}. Map them with --label-map, or remove those rows."
    )

