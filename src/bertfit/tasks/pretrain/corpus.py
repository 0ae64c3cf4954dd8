"""Unlabelled text for further pretraining: files → documents → sentences, every line accounted for.

Formats (``fmt``; "auto" decides per file):

* ``sentences`` — the original BERT format (Google's create_pretraining_data.py): one sentence per
  line, a blank line between documents. "auto" picks it for a plain-text file with blank lines.
* ``documents`` — one document per line (tweets, reviews, comments: what most users have), split
  into sentences by :func:`split_sentences`. "auto" picks it for a plain-text file without blank
  lines.
* a column of a CSV, TSV, JSON-lines, Parquet or Arrow file or a `datasets` directory (``column``, default: the first of text, sentence,
  review, content, tweet): one document per row, split into sentences like ``documents``. Read by
  the shared reader (data.read_examples) with its encodings, quoting and row accounting; its
  rejected rows (empty, over-long, malformed) are counted here.

Files ending in ``.gz`` are decompressed on the fly. Text that is not valid UTF-8 is read as
latin-1 (which never fails) with a warning, like the labelled readers. Empty lines (other than
document breaks) and lines over ``max_chars`` characters are counted in the report and skipped;
they never stop the read. A file that cannot be read at all (missing, binary, no usable line) is a
DataError naming it.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from bertfit.data.columnar import is_columnar, split_format
from bertfit.errors import DataError
from bertfit.data.files import check_not_binary, split_lines

logger = logging.getLogger("bertfit.data.labelled")

FORMATS = ("auto", "sentences", "documents")
TABLE_SUFFIXES = (".csv", ".tsv", ".tab", ".jsonl", ".ndjson", ".json")
DEFAULT_MAX_CHARS = 20_000

# A sentence ends at . ! ? or … (possibly repeated, possibly followed by closing quotes or brackets),
# then whitespace, then something that can open a sentence: an uppercase letter, a digit, an opening
# quote or bracket, or a @mention / #hashtag (tweets). A lowercase word after the period does not
# start one ("e.g. this", "approx. ten"), nor does the period of a common abbreviation.
_BOUNDARY = re.compile(r"(?<=[.!?…])([\"'”’)\]]*)\s+(?=[\"'“‘(\[]?[A-Z0-9@#])")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc fig no vol inc ltd co corp dept univ mt ft e.g i.e u.s u.k a.m p.m".split())


def split_sentences(text: str) -> list[str]:
    """Split a document into sentences with a small rule-based splitter (no model, no download).

    Rules: a sentence ends after ``.``, ``!``, ``?`` or ``…`` (with any closing quotes or brackets)
    followed by whitespace and an uppercase letter, digit, opening quote or bracket, ``@`` or ``#``;
    not after a common abbreviation (Mr., Dr., e.g., U.S., etc.). Good enough for NSP's purpose
    (a boundary between two spans of text), not a linguistic tool: pass text already split, one
    sentence per line with blank lines between documents, when you have a better splitter.
    """
    text = " ".join(text.split())  # newlines inside a cell (CSV) are spaces
    if not text:
        return []
    out: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        end = match.end(1)  # after the closing quotes
        last_word = text[start:match.start()].rsplit(" ", 1)[-1].rstrip(".").lower()
        if last_word in _ABBREVIATIONS or (len(last_word) == 1 and last_word.isalpha()):
            continue  # "Dr. Smith", "J. Smith"
        out.append(text[start:end].strip())
        start = match.end()
    out.append(text[start:].strip())
    return [s for s in out if s]


@dataclass
class CorpusReport:
    """What reading a corpus found: every line is a sentence, a document break, or counted as skipped."""

    files: list[str] = field(default_factory=list)
    formats: dict[str, str] = field(default_factory=dict)  # file → format used
    encodings: dict[str, str] = field(default_factory=dict)
    lines: int = 0  # lines (rows of a table) read
    documents: int = 0
    sentences: int = 0
    empty_lines: int = 0  # blank lines that were not a document break, and rows with an empty text
    long_lines: int = 0  # lines (rows) over max_chars characters: skipped
    long_examples: list[str] = field(default_factory=list)  # "file:line" of the first few
    rejected_rows: int = 0  # table rows the shared reader could not use (malformed, NUL...)
    max_chars: int = DEFAULT_MAX_CHARS

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def summary(self) -> str:
        skipped = []
        if self.empty_lines:
            skipped.append(f"{self.empty_lines:,} empty")
        if self.long_lines:
            skipped.append(f"{self.long_lines:,} over {self.max_chars:,} characters (e.g. {self.long_examples[0]})")
        if self.rejected_rows:
            skipped.append(f"{self.rejected_rows:,} unusable rows")
        return (f"{len(self.files)} file(s), {self.lines:,} lines → {self.documents:,} documents, "
                f"{self.sentences:,} sentences" + (f"; skipped {', '.join(skipped)}" if skipped else ""))


@dataclass
class Document:
    sentences: list[str]
    source: str  # "file:line" where it starts


def read_corpus(paths: Sequence[str | os.PathLike], *, fmt: str = "auto", column: str | None = None,
                max_chars: int = DEFAULT_MAX_CHARS, encoding: str | None = None) -> tuple[list[Document], CorpusReport]:
    """Read every file into documents of sentences; see the module docstring for the formats."""
    if fmt not in FORMATS:
        raise DataError(f"unknown corpus format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not paths:
        raise DataError("no corpus files given; pass --corpus FILE (one or more)")
    report = CorpusReport(max_chars=max_chars)
    documents: list[Document] = []
    for raw in paths:
        columnar = is_columnar(raw)  # Parquet, Arrow, a `datasets` directory: a text column, as a table's
        path = Path(split_format(raw)[0])
        if not path.is_file() and not (columnar and path.exists()):
            raise DataError(f"{path}: no such file" + (" (it is a directory; pass the files in it)" if path.is_dir() else ""))
        report.files.append(str(path))
        before = len(documents)
        inner = path.name[:-3] if path.name.lower().endswith(".gz") else path.name
        if columnar:
            documents.extend(read_table(raw, column, max_chars, encoding, report))
        elif column is not None or inner.lower().endswith(TABLE_SUFFIXES):
            documents.extend(read_table(path, column, max_chars, encoding, report))
        else:
            documents.extend(_read_text(path, fmt, max_chars, encoding, report))
        if len(documents) == before:
            raise DataError(f"{path}: no usable text in this file ({report.summary()}); check the file and --corpus-format")
    report.documents = len(documents)
    report.sentences = sum(len(d.sentences) for d in documents)
    return documents, report


def _read_bytes(path: Path) -> bytes:
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        data = path.read_bytes()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot be read ({exc})") from None
    if data[:2] == b"\x1f\x8b":
        raise DataError(f"{path}: is gzip-compressed but not named .gz; rename it to {path.name}.gz")
    return data


def _decode(path: Path, data: bytes, encoding: str | None, report: CorpusReport) -> str:
    if b"\x00" in data[:8192]:
        raise DataError(f"{path}: looks binary (NUL bytes), not text; pass plain text, CSV/TSV or JSON lines")
    check_not_binary(str(path), data, encoding)  # the labelled readers' test: control bytes, known formats
    if encoding:
        try:
            text = data.decode(encoding)
        except (UnicodeDecodeError, LookupError) as exc:
            raise DataError(f"{path}: cannot be decoded as {encoding} ({exc})") from None
        report.encodings[str(path)] = encoding
        return text
    try:
        text = data.decode("utf-8-sig")
        report.encodings[str(path)] = "utf-8"
    except UnicodeDecodeError as exc:
        logger.warning("%s: not valid UTF-8 at byte %d; read as latin-1 (pass --encoding if you know better)",
                       path, exc.start)
        text = data.decode("latin-1")
        report.encodings[str(path)] = f"latin-1 (fallback: not valid UTF-8 at byte {exc.start})"
    return text


def _read_text(path: Path, fmt: str, max_chars: int, encoding: str | None, report: CorpusReport) -> list[Document]:
    lines = split_lines(_decode(path, _read_bytes(path), encoding, report))  # \n, \r\n and the old Mac's lone \r
    if fmt == "auto":
        fmt = auto_format(path, blank_line_counts(lines))
    return list(documents_from_lines(lines, path, fmt, max_chars, report))


def blank_line_counts(lines: Iterable[str]) -> tuple[int, int]:
    """(lines holding text, blank lines between the first and the last of them), in one pass."""
    filled = interior = pending = 0
    for line in lines:
        if line.strip():
            interior += pending if filled else 0
            filled, pending = filled + 1, 0
        else:
            pending += 1
    return filled, interior


def auto_format(path: Path, counts: tuple[int, int]) -> str:
    """"sentences" where blank lines separate text lines (documents), else "documents" (one a line).

    Only blank lines between text lines count: blank lines at the start or the end of a file (an
    editor's trailing newline) never change how the whole file is read."""
    filled, interior = counts
    if interior and interior * 100 < filled:
        logger.warning("%s: %d blank line(s) among %d lines: read as one sentence a line, documents between blank "
                       "lines; pass --corpus-format documents if each line is a document", path, interior, filled)
    return "sentences" if interior else "documents"


def documents_from_lines(lines: Iterable[str], path: Path, fmt: str, max_chars: int,
                         report: CorpusReport) -> Iterator[Document]:
    """The documents of a text file's lines in format ``fmt`` ("sentences" or "documents"), counting every
    line in ``report``; a generator, so a corpus read line by line is never held whole."""
    report.formats[str(path)] = fmt
    current: list[str] = []
    start = 1
    for number, line in enumerate(lines, start=1):
        report.lines += 1
        stripped = line.strip()
        if len(stripped) > max_chars:
            count_long(report, f"{path}:{number}")
            continue
        if fmt == "sentences":
            if not stripped:
                if not current:
                    report.empty_lines += 1  # a second blank line, or one before the first document
                else:
                    yield Document(current, f"{path}:{start}")
                    current = []
                continue
            if not current:
                start = number
            current.append(stripped)
        else:
            if not stripped:
                report.empty_lines += 1
                continue
            yield Document(split_sentences(stripped), f"{path}:{number}")
    if current:
        yield Document(current, f"{path}:{start}")


def count_long(report: CorpusReport, where: str) -> None:
    report.long_lines += 1
    if len(report.long_examples) < 5:
        report.long_examples.append(where)


def read_table(path: Path | str, column: str | None, max_chars: int, encoding: str | None,
                report: CorpusReport) -> list[Document]:
    from bertfit.data.labelled import read_examples

    name = str(split_format(path)[0])  # without a FORMAT: prefix
    report.formats[name] = f"table column {column or '(default text column)'}"
    tmp = None
    source = path
    if isinstance(path, Path) and path.name.lower().endswith(".gz"):
        # The shared reader reads a path: decompress next to nothing the user owns (a temp file).
        fd, tmp = tempfile.mkstemp(suffix="-" + path.name[:-3])
        with os.fdopen(fd, "wb") as f:
            f.write(_read_bytes(path))
        source = Path(tmp)
    try:
        examples, load = read_examples(source, text_column=column, require_labels=False, skip_bad_rows=True,
                                       encoding=encoding, max_chars=max_chars)
    except DataError as exc:
        message = str(exc).replace(str(source), str(path)) if tmp else str(exc)
        raise DataError(message.replace("--text-column", "--corpus-column")) from None  # pretrain's flag
    finally:
        if tmp:
            os.unlink(tmp)
    report.encodings[name] = load.encoding
    report.lines += load.rows_read
    for rejection in load.rejected:
        reason = rejection.reason.lower()
        if "empty" in reason or "is missing" in reason:  # a null cell of a Parquet/Arrow column is an empty text
            report.empty_lines += 1
        elif "long" in reason or "characters" in reason:
            count_long(report, f"{name}:{rejection.row}")
        else:
            report.rejected_rows += 1
    documents = []
    for example in examples:
        sentences = split_sentences(example.text)
        if sentences:
            documents.append(Document(sentences, f"{name}:{example.row}"))
        else:
            report.empty_lines += 1
    return documents
