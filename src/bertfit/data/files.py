"""Files to records: bytes → text (encoding, BOMs, binary check) → format (CSV, TSV, JSON lines) →
rows with their line numbers, each row either fields or the reason it cannot be read."""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from bertfit.errors import DataError

# One logger for all the readers (bertfit.data.labelled): users filter and tests capture it by that name.
logger = logging.getLogger("bertfit.data.labelled")

TEXT_COLUMNS: tuple[str, ...] = ("text", "sentence", "review", "content", "tweet")
#: Column names tried, in order, when no label column is named.
LABEL_COLUMNS: tuple[str, ...] = ("label", "sentiment", "labels", "class", "target", "rating", "score")

SUFFIX_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
DELIMITERS = {"csv": ",", "tsv": "\t"}

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
    (b"PAR1", lambda d: d.endswith(b"PAR1"), "a Parquet file; name it .parquet or pass it as parquet:PATH"),
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

MISSING = object()  # a JSON key that is absent, as opposed to present and null
_INT_RE = re.compile(r"[+-]?\d+\Z")
MAX_LISTED = 5



# --------------------------------------------------------------------------------------------
# Internals: bytes -> text -> format
# --------------------------------------------------------------------------------------------


def load_table(path: str, encoding: str | None, forced: str | None = None) -> tuple[str, str, str]:
    """Read, check and decode a file; return (text, encoding used, format). ``forced``: the format the
    user named (``csv:PATH``, data.columnar.split_format) instead of the one its suffix or content shows."""
    if forced is not None and forced not in DELIMITERS and forced != "jsonl":
        raise DataError(f"{path}: this reader reads CSV, TSV, JSON lines, Parquet, Arrow and `datasets` data, "
                        f"not {forced}")
    data = read_bytes(path)
    if not data.strip():
        raise DataError(f"{path} is empty ({len(data)} bytes); expected a CSV/TSV/JSONL file with a header and rows")
    check_not_binary(path, data, encoding)
    text, used = decode_bytes(path, data, encoding)
    if not text.strip():
        raise DataError(f"{path} is empty (only whitespace); expected a CSV/TSV/JSONL file with a header and rows")
    return text, used, forced or _detect_format(path, text)


def loads_json(text: str) -> object:
    """json.loads for every reader of every task: input nested deeper than the parser's stack (a
    RecursionError) is a JSONDecodeError like any other invalid JSON, so each reader's row-level
    handling names it instead of a traceback."""
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text[:100], 0) from None


def split_lines(text: str) -> list[str]:
    """The lines of a text file, whatever ends them: \n, \r\n, or the old Mac's lone \r (read as one
    line otherwise). A final line ending does not start an empty last line."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def read_bytes(path: str) -> bytes:
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


def check_not_binary(path: str, data: bytes, encoding: str | None) -> None:
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
    # Text has few control characters besides tab and line ends; compressed or executable data has ~10%,
    # and is almost never valid UTF-8. Valid UTF-8 with control characters is text that holds some (a
    # spreadsheet's unit separators): its rows are read, not the file refused.
    controls = sum(block.count(bytes([c])) for c in (*range(1, 9), *range(14, 32), 127))
    if len(block) >= 64 and controls * 20 > len(block) and not _valid_utf8_prefix(block):
        raise DataError(f"{path} looks like a binary file ({controls} control bytes in its first {len(block)}), "
                        "not CSV/TSV/JSONL text")


def _valid_utf8_prefix(block: bytes) -> bool:
    """Whether ``block`` (the start of a file, maybe cut inside a character) is valid UTF-8."""
    import codecs

    try:
        codecs.getincrementaldecoder("utf-8")().decode(block, final=False)
    except UnicodeDecodeError:
        return False
    return True


def decode_bytes(path: str, data: bytes, encoding: str | None) -> tuple[str, str]:
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
    if suffix in SUFFIX_FORMATS:
        return SUFFIX_FORMATS[suffix]
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


def csv_header_and_records(
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
                        path, preview_columns(columns))
    elif first is not None:
        columns = [f"column_{i}" for i in range(1, len(first[1]) + 1)]
    else:
        columns = []
    return columns, 0, itertools.chain(held, records)


def check_unique_columns(path: str, columns: list[str], header_line: int) -> None:
    counts = Counter(columns)
    dups = [name for name, n in counts.items() if n > 1]
    if dups:
        described = ", ".join(f"{preview(name)} ({counts[name]} times)" for name in dups[:MAX_LISTED])
        raise DataError(
            f"{path}, line {header_line}: the header names a column more than once: {described}; "
            "give every column a unique name"
        )


def field_count_problem(fields: list[str], columns: list[str], fmt: str, allow_extra: bool = False) -> str | None:
    n, expected = len(fields), len(columns)
    if n == expected or (allow_extra and n > expected):
        return None
    what = "tab" if fmt == "tsv" else "comma"
    if n > expected:
        return (f"too many fields: {n}, expected {expected} ({preview_columns(columns)}); "
                f"quote a text that contains a {what}")
    return f"too few fields: {n}, expected {expected} ({preview_columns(columns)})"


def jsonl_columns_and_records(text: str) -> tuple[list[str], list[tuple[int, dict | None, str | None]]]:
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
            records.append((i, None, f"not a JSON object but {json_type(obj)} ({preview(line.strip())})"))
            continue
        keys.update(dict.fromkeys(obj))
        records.append((i, obj, None))
    return list(keys), records



# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def check_max_chars(max_chars: int) -> None:
    if not isinstance(max_chars, int) or isinstance(max_chars, bool) or max_chars < 1:
        raise DataError(f"--max-chars must be a whole number of at least 1, got {max_chars!r}")


def preview(s: str, limit: int = 40) -> str:
    return repr(s) if len(s) <= limit else repr(s[:limit]) + f"... ({len(s):,} characters)"


def preview_columns(columns: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(preview(str(c)) for c in columns[:limit])
    return shown + (f", ... ({len(columns)} in all)" if len(columns) > limit else "")


def cell_text(value: object) -> str:
    """A value as CSV text: None -> empty, JSON for lists and objects."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, default=json_default)
    return str(value)


def json_default(value: object) -> object:
    # numpy scalars and arrays (predicted probabilities) are not JSON-serializable as such.
    for attr in ("tolist", "item"):
        method = getattr(value, attr, None)
        if callable(method):
            return method()
    return str(value)


def json_type(value: object) -> str:
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


def sort_labels(labels: Iterable[str]) -> list[str]:
    labels = list(labels)
    if labels and all(_INT_RE.match(label) for label in labels):
        return sorted(labels, key=lambda s: (int(s), s))  # "2" before "10"
    return sorted(labels)

