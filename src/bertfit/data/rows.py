"""Records to examples: which columns hold the text, the pair and the label (by name, by position,
or the first of the usual names), each row turned into an Example or the reason it is rejected,
and the account of every row read."""

from __future__ import annotations

import json
import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bertfit.errors import DataError
from bertfit.data.examples import Example, LoadReport, Rejection
from bertfit.data.files import LABEL_COLUMNS, TEXT_COLUMNS, DELIMITERS, MISSING, json_type, preview, preview_columns, sort_labels

# One logger for all the readers (bertfit.data.labelled): users filter and tests capture it by that name.
logger = logging.getLogger("bertfit.data.labelled")

# --------------------------------------------------------------------------------------------
# Internals: columns and row validation
# --------------------------------------------------------------------------------------------


def header_options(path: str, fmt: str, header: bool, columns: Sequence[str] | None) -> tuple[list[str] | None, bool]:
    """(column names or None, whether the first row is a header); ``columns`` implies no header."""
    if columns is not None:
        if isinstance(columns, str):
            columns = [c.strip() for c in columns.split(",")]
        names = [str(c) for c in columns]
        if not names or not all(n.strip() for n in names) or len(set(names)) != len(names):
            raise DataError(f"columns {preview_columns(names)}: give each column a distinct, non-empty name")
        header = False
    else:
        names = None
    if not header and fmt == "jsonl":
        raise DataError(f"{path}: JSON lines name their fields in every line; --no-header and --columns apply "
                        "to CSV and TSV files only")
    if not header and fmt not in DELIMITERS:
        raise DataError(f"{path}: {fmt} data names its columns; --no-header and --columns apply to CSV and TSV "
                        "files only")
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


def resolve_columns(
    path: str, fmt: str, columns: list[str], text_column: str | None, pair_column: str | None,
    label_column: str | None, require_labels: bool, header: bool = True,
) -> tuple[str, str | None, str | None]:
    what = "keys" if fmt == "jsonl" else "columns"
    found = f"{what} found: {preview_columns(columns, limit=30)}"
    hint = _delimiter_hint(columns, fmt)
    if header and fmt in DELIMITERS and _looks_like_data(columns):
        hint += (f". The first row ({preview_columns(columns, limit=4)}) looks like data, not a header: if the file "
                 "has no header row, pass --no-header and name columns by 1-based position (--text-column 3 "
                 "--label-column 2) or list them with --columns id,score,text")
    elif not header:
        hint += (". This file has no header: name columns by 1-based position (--text-column 3 --label-column 2) "
                 "or list them with --columns")

    def missing(kind: str, flag: str, name: str | None, candidates: tuple[str, ...] = ()) -> DataError:
        if name is not None:
            head = f"{path}: no {kind} column {preview(name)}"
            if header and name.strip().isdigit() and fmt in DELIMITERS and "--no-header" not in hint:
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
                        f"({preview_columns(matches)}); pass the exact name")
    return matches[0] if matches else None


def _first_column(path: str, columns: list[str], candidates: tuple[str, ...], exclude: tuple = ()) -> str | None:
    for candidate in candidates:
        col = _find_column(path, columns, candidate)
        if col is not None and col not in exclude:
            return col
    return None


def _delimiter_hint(columns: list[str], fmt: str) -> str:
    """A hint when the whole header is one column: the file is likely split on another character."""
    if fmt not in DELIMITERS or len(columns) != 1:
        return ""
    candidates = ((";", "semicolons"), ("\t", "tabs"), ("|", "'|'"), (",", "commas"))
    for sep, name in candidates:
        if sep in columns[0] and sep != DELIMITERS[fmt]:
            return (f" (the header is one column {preview(columns[0])}: is the file separated by {name}? "
                    "Save it comma-separated as .csv, or tab-separated as .tsv)")
    return ""


class RowBuilder:
    """Turns one record's values into an Example, or into the reason it cannot be used."""

    def __init__(self, text_col: str, pair_col: str | None, label_col: str | None,
                 label_map: dict[str, str] | None, require_labels: bool, max_chars: int) -> None:
        self.text_col, self.pair_col, self.label_col = text_col, pair_col, label_col
        self.label_map = label_map
        self.require_labels = require_labels
        self.max_chars = max_chars

    def from_mapping(self, row: int, obj: Mapping[str, object]) -> Example | str:
        text = self._text(obj.get(self.text_col, MISSING), self.text_col, "text")
        if not isinstance(text, _Ok):
            return text
        pair = label = _Ok(None)
        if self.pair_col is not None:
            pair = self._text(obj.get(self.pair_col, MISSING), self.pair_col, "text pair")
            if not isinstance(pair, _Ok):
                return pair
        if self.label_col is not None:
            label = self._label(obj.get(self.label_col, MISSING))
            if not isinstance(label, _Ok):
                return label
        return Example(text=text.value, label=label.value, text_pair=pair.value, row=row)

    def _text(self, value: object, column: str, what: str) -> _Ok | str:
        if value is MISSING:
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
        s = None if value is MISSING else _scalar_to_str(value)
        if isinstance(s, tuple):
            return f"label is {s[0]}, expected a string or a number"
        s = s.strip() if s is not None else None
        if s and "\x00" in s:
            return "label contains a NUL character (file damage?)"
        if not s:
            if not self.require_labels:
                return _Ok(None)
            if value is MISSING:
                return f"missing key {self.label_col!r}"
            return f"missing label (column {self.label_col!r} is empty)"
        if self.label_map is not None:
            if s not in self.label_map:
                keys = sort_labels(self.label_map)
                shown = ", ".join(keys[:20]) + (", ..." if len(keys) > 20 else "")
                return f"label {preview(s)} is not in the label map (keys: {shown}); add it to --label-map"
            s = self.label_map[s]
        return _Ok(s)


    def _raw_label(self, value: object) -> _Ok | str:
        """The cell as it is (a stripped string, a number, a JSON list): a task parses it (tasks/)."""
        if value is MISSING:
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
    kind = json_type(value)
    return f"{kind} {preview(json.dumps(value, default=str) if isinstance(value, (list, dict)) else repr(value))}"




class Collector:
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
