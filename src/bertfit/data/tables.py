"""Whole tables for prediction: read every column of a file, write it back with the predictions
beside it (never over the user's columns), with the CSV-injection guard. Parquet, Arrow and `datasets`
tables are read, and Parquet/Arrow predictions written, through data.columnar."""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

from bertfit.errors import DataError
from bertfit.data.examples import Table
from bertfit.data.files import (DELIMITERS, SUFFIX_FORMATS, cell_text, check_unique_columns, csv_header_and_records,
                           field_count_problem, json_default, jsonl_columns_and_records, load_table)
from bertfit.data.columnar import is_columnar_format, open_source, split_format, write_columnar
from bertfit.data.columnar import SUFFIXES as COLUMNAR_SUFFIXES
from bertfit.data.rows import header_options, resolve_columns

# One logger for all the readers (bertfit.data.labelled): users filter and tests capture it by that name.
logger = logging.getLogger("bertfit.data.labelled")

def read_table(path: str | os.PathLike, *, encoding: str | None = None, header: bool = True,
               columns: Sequence[str] | None = None) -> Table:
    """Read a file as raw rows, keeping every column and the row order (for prediction output).

    Unlike :func:`read_examples` nothing is skipped: a malformed row is a :class:`DataError`,
    because the output must line up with the input row for row.
    """
    source = open_source(path)
    if source is not None:  # Parquet, Arrow, `datasets`, a DataFrame: every column, ClassLabels as names
        header_options(source.name, source.format, header, columns)
        rows = [obj for _, obj, _ in source.records()]
        if not rows:
            raise DataError(f"{source.name} has no data rows")
        return Table(path=source.name, format=source.format, columns=source.columns, rows=rows,
                     row_numbers=list(range(len(rows))))
    path, forced = split_format(path)
    path_s = os.fspath(path)
    text, used_encoding, fmt = load_table(path_s, encoding, forced)
    names, header = header_options(path_s, fmt, header, columns)
    rows: list[dict[str, object]] = []
    numbers_: list[int] = []
    fix = "every row is kept in the output, so fix or remove that row first"
    if fmt == "jsonl":
        columns, records = jsonl_columns_and_records(text)
        for row, obj, err in records:
            if err is not None:
                raise DataError(f"{path_s}, row {row}: {err}; {fix}")
            rows.append(obj)
            numbers_.append(row)
    else:
        columns, header_line, records = csv_header_and_records(path_s, text, DELIMITERS[fmt], header, names)
        check_unique_columns(path_s, columns, header_line)
        base = list(columns)  # a headerless file's extra trailing fields add columns; rows need these
        for row, fields, err in records:
            if err is None:
                err = field_count_problem(fields, base, fmt, allow_extra=not header)
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
    text_col, pair_col, _ = resolve_columns(table.path, table.format, list(table.columns), text_column, pair_column,
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
    fmt = "jsonl" if suffix == ".json" else SUFFIX_FORMATS.get(suffix) or COLUMNAR_SUFFIXES.get(suffix, table.format)
    if fmt not in ("csv", "tsv", "jsonl", "arrow"):
        fmt = "parquet" if is_columnar_format(fmt) else "csv"  # a columnar table's predictions stay columnar
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

    if fmt in ("parquet", "arrow"):
        write_columnar([{**row, **{names[c]: extra.get(c) for c in names}} for row, extra in zip(table.rows, extra_rows)],
                       columns, path_s, fmt)
        logger.info("wrote %d rows to %s", len(table.rows), path_s)
        return [names[c] for c in extra_columns]
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
                    f.write(json.dumps(obj, ensure_ascii=False, default=json_default) + "\n")
            else:
                # "\r\n" (RFC 4180, the csv default): with "\n" the writer leaves a field holding a
                # lone "\r" unquoted, and no CSV reader gets that row back intact.
                writer = csv.writer(f, delimiter=DELIMITERS[fmt], lineterminator="\r\n")
                writer.writerow([guard(c) for c in columns])
                for row, extra in zip(table.rows, extra_rows):
                    merged = {**row, **{names[c]: extra.get(c) for c in names}}
                    writer.writerow([guard(cell_text(merged.get(c))) for c in columns])
        os.replace(tmp, path_s)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    logger.info("wrote %d rows to %s", len(table.rows), path_s)
    return [names[c] for c in extra_columns]
