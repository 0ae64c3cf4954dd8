"""A corpus read as a stream of documents, for corpora too large to hold: plain-text files are read
line by line (never whole), tables through the shared reader as before.

The documents, their order and the report's counts are those of :func:`corpus.read_corpus` (the
same line rules through :func:`corpus.documents_from_lines`); only the text's encoding is decided by
a first pass over the bytes (UTF-8, else latin-1 with the same warning) and, with ``fmt="auto"``,
the format by a second pass counting blank lines, so no pass holds more than a line.
"""

from __future__ import annotations

import codecs
import gzip
import io
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from bertfit.data.columnar import is_columnar, split_format
from bertfit.data.files import check_not_binary
from bertfit.errors import DataError
from bertfit.tasks.pretrain.corpus import (FORMATS, TABLE_SUFFIXES, CorpusReport, Document, auto_format,
                                           blank_line_counts, documents_from_lines, read_table)

logger = logging.getLogger("bertfit.data.labelled")

BLOCK = 1 << 20  # bytes read at a time by the encoding pass


def iter_corpus(paths: Sequence[str | os.PathLike], report: CorpusReport, *, fmt: str = "auto",
                column: str | None = None, max_chars: int, encoding: str | None = None) -> Iterator[Document]:
    """Every document of every file, in order, counted in ``report`` as :func:`corpus.read_corpus` counts."""
    if fmt not in FORMATS:
        raise DataError(f"unknown corpus format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not paths:
        raise DataError("no corpus files given; pass --corpus FILE (one or more)")
    for raw in paths:
        columnar = is_columnar(raw)
        path = Path(split_format(raw)[0])
        if not path.is_file() and not (columnar and path.exists()):
            raise DataError(f"{path}: no such file" + (" (it is a directory; pass the files in it)" if path.is_dir() else ""))
        report.files.append(str(path))
        inner = path.name[:-3] if path.name.lower().endswith(".gz") else path.name
        if columnar:
            documents: Iterator[Document] = iter(read_table(raw, column, max_chars, encoding, report))
        elif column is not None or inner.lower().endswith(TABLE_SUFFIXES):
            documents = iter(read_table(path, column, max_chars, encoding, report))
        else:
            documents = _stream_text(path, fmt, max_chars, encoding, report)
        found = 0
        for document in documents:
            found += 1
            report.documents += 1
            report.sentences += len(document.sentences)
            yield document
        if not found:
            raise DataError(f"{path}: no usable text in this file ({report.summary()}); check the file and --corpus-format")


def _stream_text(path: Path, fmt: str, max_chars: int, encoding: str | None, report: CorpusReport) -> Iterator[Document]:
    codec, note = _sniff_encoding(path, encoding)
    report.encodings[str(path)] = note
    if fmt == "auto":
        with _lines(path, codec) as lines:
            fmt = auto_format(path, blank_line_counts(lines))
    with _lines(path, codec) as lines:
        yield from documents_from_lines(lines, path, fmt, max_chars, report)


def _sniff_encoding(path: Path, encoding: str | None) -> tuple[str, str]:
    """(codec, what the report says): the user's encoding; else "utf-8" when the whole file decodes as
    UTF-8 (read in blocks), else "latin-1" with a warning. A binary file is refused from its start."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    done = 0
    with _open_binary(path) as f:
        head = f.read(BLOCK)
        if b"\x00" in head[:8192]:
            raise DataError(f"{path}: looks binary (NUL bytes), not text; pass plain text, CSV/TSV or JSON lines")
        check_not_binary(str(path), head, encoding)
        if encoding:
            try:
                codecs.lookup(encoding)
            except LookupError as exc:
                raise DataError(f"{path}: cannot be decoded as {encoding} ({exc})") from None
            return encoding, encoding
        block = head
        while block:
            try:
                decoder.decode(block, final=False)
            except UnicodeDecodeError as exc:
                at = done + exc.start
                break
            done += len(block)
            block = f.read(BLOCK)
        else:
            try:
                decoder.decode(b"", final=True)
                return "utf-8", "utf-8"
            except UnicodeDecodeError:
                at = done  # cut inside a character at the end
    logger.warning("%s: not valid UTF-8 at byte %d; read as latin-1 (pass --encoding if you know better)", path, at)
    return "latin-1", f"latin-1 (fallback: not valid UTF-8 at byte {at})"


@contextmanager
def _open_binary(path: Path) -> Iterator[IO[bytes]]:
    try:
        f: IO[bytes] = gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from None
    try:
        if not path.name.lower().endswith(".gz") and f.peek(2)[:2] == b"\x1f\x8b":  # type: ignore[attr-defined]
            raise DataError(f"{path}: is gzip-compressed but not named .gz; rename it to {path.name}.gz")
        yield f
    except (OSError, EOFError) as exc:  # a damaged gzip stream
        raise DataError(f"{path}: cannot be read ({exc})") from None
    finally:
        f.close()


@contextmanager
def _lines(path: Path, codec: str) -> Iterator[Iterator[str]]:
    """The file's lines without their ends; \\n, \\r\\n and a lone \\r all end a line (universal newlines)."""
    name = "utf-8-sig" if codec == "utf-8" else codec
    with _open_binary(path) as raw:
        text = io.TextIOWrapper(raw, encoding=name, newline=None)  # type: ignore[arg-type]

        def read() -> Iterator[str]:
            try:
                for line in text:
                    yield line[:-1] if line.endswith("\n") else line
            except UnicodeDecodeError as exc:  # only with the user's --encoding: the sniffed ones cannot fail
                raise DataError(f"{path}: cannot be decoded as {codec} ({exc})") from None

        yield read()
