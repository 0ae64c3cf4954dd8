"""Question-answering data in: SQuAD v1.1 / v2.0 JSON and the flattened JSON Lines form, gzipped or not.

SQuAD JSON is ``{"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question",
"answers": [{"text", "answer_start"}], "is_impossible"}]}]}]}``; JSON Lines have one question per
line: ``{"id", "question", "context", "answers": {"text": [...], "answer_start": [...]}}`` (the
Hugging Face datasets form; a list of {"text", "answer_start"} objects is read too). A question's
"row" is its 1-based position in the file (JSON Lines: its line number), which every error names.

Every reference answer is checked against its context (``context[start:start+len(text)] == text``):
a mismatch, an out-of-range start, a missing field or an empty context is a row-level error, or a
counted skip with --skip-bad-rows, so rows read = rows used + rows rejected always holds and no
label is silently wrong. A question without answers is "no answer" (v2.0) only when it says so
(``is_impossible: true``) or the file is v2.0-style; in training data of v1.1 it is an error.
"""

from __future__ import annotations

import gzip
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from bertfit.errors import DataError
from bertfit.data.columnar import open_source, split_format
from bertfit.data.examples import LoadReport, Rejection
from bertfit.data.files import loads_json, split_lines
from bertfit.tasks.settings import INT_MAX, Setting

DOC_STRIDE = 128  # tokens of overlap between the windows over a long context (run_qa.py's default)

# The question-answering task's own settings (tasks/settings.py: flags, validation, saved with the
# run), and the fields of the one input `bertfit predict --question ... --context ...` answers.
# Here, not in qa.py, because `bertfit train --help` reads them without importing torch.
QA_SETTINGS: tuple[Setting, ...] = (
    Setting("doc_stride", int, DOC_STRIDE, "tokens of overlap between the windows a long context is cut into",
            low=0, high=510),
    Setting("top_k", int, 1, "also list the k best answers", low=1, high=INT_MAX, commands=("predict",)),
    Setting("question", str, None, "the question to answer from --context or --context-file", optional=True,
            commands=("predict",), input=True),
    Setting("context", str, None, "the passage the answer is a span of (any length: long ones are read in windows)",
            optional=True, commands=("predict",), input=True, from_file=True),
)

logger = logging.getLogger("bertfit.data.labelled")


@dataclass(frozen=True)
class QAExample:
    """One question over one context, with its reference answers: the generic example fields
    (tasks/base.py) with the question as ``text``, the context as ``text_pair`` and the answers,
    ((text, character start), ...), as ``label`` (empty: no answer in the context; None: unlabelled)."""

    text: str
    text_pair: str
    label: tuple[tuple[str, int], ...] | None = None
    row: int = 0
    id: str = ""
    title: str = ""
    top_k: int | None = None  # prediction only: answers its record lists (None: the task's top_k)

    @property
    def question(self) -> str:
        return self.text

    @property
    def context(self) -> str:
        return self.text_pair

    @property
    def answers(self) -> tuple[tuple[str, int], ...]:
        return self.label or ()

    @property
    def impossible(self) -> bool:
        """Marked unanswerable (SQuAD v2.0): labelled, without answers."""
        return self.label is not None and not self.label

    @property
    def answer_texts(self) -> list[str]:
        return [text for text, _ in self.answers]


@dataclass
class QAReadReport(LoadReport):
    """LoadReport of a QA file, with what the report shows about it."""

    version: str = "1.1"  # "2.0" when any question is marked impossible
    unanswerable: int = 0
    notes: list[str] = field(default_factory=list)
    # Answers whose answer_start was moved to where their text is, a few characters away: (row, id, from, to).
    repaired: list[tuple[int, str, int, int]] = field(default_factory=list)

    def summary(self) -> str:
        line = super().summary()
        if self.repaired:
            shown = ", ".join(qid for _, qid, _, _ in self.repaired[:3])
            line += (f"; {len(self.repaired)} answer offset{'s' if len(self.repaired) != 1 else ''} repaired "
                     f"({shown}{', ...' if len(self.repaired) > 3 else ''})")
        return line


#: How far (in characters) an answer's text may sit from its answer_start and still be moved there. Real
#: files shift offsets by the whitespace an export stripped or added around the context (1-3 characters
#: in a public set with long contexts); farther than this, the offset is more likely simply wrong.
OFFSET_REPAIR_CHARS = 8


def nearby_offset(context: str, text: str, start: int, reach: int = OFFSET_REPAIR_CHARS) -> int | None:
    """The occurrence of ``text`` in ``context`` nearest to ``start`` (at most ``reach`` characters away;
    the earlier on a tie), or None."""
    best: int | None = None
    lo = max(0, start - reach)
    at = context.find(text, lo, start + reach + len(text))
    while at != -1:
        if best is None or abs(at - start) < abs(best - start):
            best = at
        at = context.find(text, at + 1, start + reach + len(text))
    return best


def _read_text(path: str) -> str:
    """The file as text; .gz (or gzip magic) is decompressed on the way in."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DataError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a directory; expected a SQuAD JSON or JSON Lines file") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise DataError(f"{path} is a damaged gzip file ({e}); download or compress it again") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}); "
                        "SQuAD files are UTF-8: re-export it as UTF-8") from None
    if not text.strip():
        raise DataError(f"{path} is empty; expected SQuAD JSON or JSON Lines with question/context/answers")
    return text


def _answers(raw: Any) -> list[tuple[Any, Any]]:
    """(text, start) pairs from either answer layout; ValueError with the reason if neither."""
    if raw is None:
        return []
    if isinstance(raw, Mapping):  # {"text": [...], "answer_start": [...]}
        texts, starts = raw.get("text"), raw.get("answer_start")
        if texts is None or starts is None:
            raise ValueError('"answers" needs both "text" and "answer_start" lists')
        if isinstance(texts, str):
            texts = [texts]
        if isinstance(starts, int) and not isinstance(starts, bool):
            starts = [starts]
        if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
            raise ValueError(f'"answers" has {_count(texts)} texts but {_count(starts)} answer_start values')
        return list(zip(texts, starts))
    if isinstance(raw, list):
        pairs = []
        for item in raw:
            if not isinstance(item, Mapping) or "text" not in item or "answer_start" not in item:
                raise ValueError('each answer needs "text" and "answer_start"')
            pairs.append((item["text"], item["answer_start"]))
        return pairs
    raise ValueError(f'"answers" is {type(raw).__name__}, expected {{"text": [...], "answer_start": [...]}}')


def _count(value: Any) -> str:
    return str(len(value)) if isinstance(value, list) else "no list of"


def check_example(record: Mapping[str, Any], row: int, *, require_answers: bool, title: str = "",
                  context: Any = None, repairs: list[tuple[int, str, int, int]] | None = None) -> QAExample:
    """A record (one question) → QAExample, or ValueError naming what is wrong and how to fix it.

    An answer whose text is not at its answer_start but within OFFSET_REPAIR_CHARS of it is moved there
    (and, with ``repairs``, recorded as (row, id, old start, new start)); one farther away is an error."""
    qid = record.get("id")
    question = record.get("question")
    context = record.get("context") if context is None else context
    if not isinstance(question, str) or not question.strip():
        raise ValueError('missing or empty "question"' if not isinstance(question, str) or not question
                         else '"question" is only whitespace')
    if not isinstance(context, str) or not context.strip():
        raise ValueError('missing or empty "context"; every question needs the passage it is asked about')
    impossible = record.get("is_impossible", False)
    if not isinstance(impossible, bool):
        raise ValueError(f'"is_impossible" is {impossible!r}, expected true or false')
    pairs = _answers(record.get("answers"))
    answers: list[tuple[str, int]] = []
    for k, (text, start) in enumerate(pairs, start=1):
        where = f"answer {k}" if len(pairs) > 1 else "the answer"
        if not isinstance(text, str) or not text:
            raise ValueError(f"{where} has an empty or non-text \"text\" ({text!r})")
        if isinstance(start, bool) or not isinstance(start, int):
            raise ValueError(f"{where} has answer_start {start!r}, expected a whole number (character offset)")
        inside = 0 <= start <= len(context) - len(text)
        found = context[start:start + len(text)] if inside else None
        moved = nearby_offset(context, text, start) if found != text and 0 <= start <= len(context) else None
        if not inside and moved is None:
            raise ValueError(f"{where} {text!r} has answer_start {start}, outside the {len(context):,}-character "
                             "context; answer_start is the 0-based character offset of the answer in the context")
        if moved is not None:
            if repairs is not None:
                qid = record.get("id")
                repairs.append((row, str(qid) if qid is not None else f"row-{row}", start, moved))
            start, found = moved, text
        if found != text:
            hint = context.find(text)
            fix = (f"; the text occurs at offset {hint}" if hint >= 0 else "; the text does not occur in the context")
            raise ValueError(f"{where} {text!r} does not match the context at answer_start {start} "
                             f"(which reads {found!r}){fix}")
        answers.append((text, start))
    if impossible and answers:
        raise ValueError('is_impossible is true but the question has answers; v2.0 keeps them under '
                         '"plausible_answers"')
    if require_answers and not answers and not impossible:
        raise ValueError('no answers; a training question needs at least one answer, or "is_impossible": true '
                         "(SQuAD v2.0) for a question the context cannot answer")
    label = tuple(answers) if (answers or impossible) else None
    return QAExample(question, context, label, row=row, id=str(qid) if qid is not None else f"row-{row}",
                     title=str(title or ""))


def _squad_records(path: str, doc: Any) -> Iterator[tuple[int, Mapping[str, Any] | None, str, Any, str | None]]:
    """(row, question record, title, context, problem) for each question of a SQuAD JSON document."""
    data = doc.get("data") if isinstance(doc, Mapping) else None
    if not isinstance(data, list):
        raise DataError(f'{path}: a SQuAD JSON file holds {{"data": [{{"title", "paragraphs": [...]}}]}}; '
                        'this one has no "data" list. For one question per line, use JSON Lines')
    row = 0
    for a, article in enumerate(data, start=1):
        paragraphs = article.get("paragraphs") if isinstance(article, Mapping) else None
        if not isinstance(paragraphs, list):
            raise DataError(f'{path}: data[{a - 1}] has no "paragraphs" list; fix the file')
        title = article.get("title", "")
        for p, paragraph in enumerate(paragraphs):
            qas = paragraph.get("qas") if isinstance(paragraph, Mapping) else None
            if not isinstance(qas, list):
                raise DataError(f'{path}: data[{a - 1}].paragraphs[{p}] has no "qas" list; fix the file')
            for qa in qas:
                row += 1
                if not isinstance(qa, Mapping):
                    yield row, None, title, None, f"question {row} is {type(qa).__name__}, not an object"
                    continue
                yield row, qa, title, paragraph.get("context"), None


def _table_records(source: Any) -> Iterator[tuple[int, Mapping[str, Any] | None, str, Any, str | None]]:
    for row, obj, _ in source.records():
        yield row, obj, str(obj.get("title", "") or ""), obj.get("context"), None


def _jsonl_records(text: str) -> Iterator[tuple[int, Mapping[str, Any] | None, str, Any, str | None]]:
    for i, line in enumerate(split_lines(text), start=1):
        if not line.strip():
            continue
        try:
            obj = loads_json(line)
        except ValueError as e:
            yield i, None, "", None, f"invalid JSON: {getattr(e, 'msg', e)}"
            continue
        if not isinstance(obj, Mapping):
            yield i, None, "", None, f"not a JSON object but {type(obj).__name__}"
            continue
        yield i, obj, str(obj.get("title", "") or ""), obj.get("context"), None


def read_qa(path: str | os.PathLike, *, skip_bad_rows: bool = False, require_answers: bool = True,
            max_chars: int | None = 1_000_000) -> tuple[list[QAExample], QAReadReport]:
    """Every question of a SQuAD JSON or JSON Lines file (optionally gzipped), checked, with the account.

    require_answers: training and evaluation files need reference answers (or is_impossible);
    prediction files may omit them. max_chars: longest context accepted (a whole book in one row is
    more likely a broken file than a passage).
    """
    source = open_source(path)  # Parquet, Arrow, `datasets`: the flattened SQuAD columns, answers a struct
    if source is not None:
        for column in ("question", "context"):
            if column not in source.columns:
                raise DataError(f"{source.name}: no {column!r} column (columns: {', '.join(source.columns[:12])}); "
                                "question answering reads question, context and answers")
            source.check_text(column, column)
        path, text, is_json_doc = source.name, "", False
    else:
        path, forced = split_format(path)
        path = str(path)
        if forced not in (None, "squad", "jsonl"):
            raise DataError(f"{path}: question answering reads SQuAD JSON, JSON lines, Parquet, Arrow and `datasets` "
                            f"data, not {forced}")
        text = _read_text(path)
        stripped = text.lstrip()
        is_json_doc = forced == "squad" or (forced is None and stripped.startswith("{") and '"data"' in stripped[:4096]
                                            and not _single_line_object(stripped))
    if source is not None:
        records, fmt = _table_records(source), source.format
    elif is_json_doc:
        try:
            doc = loads_json(text)
        except ValueError as e:
            raise DataError(f"{path}: invalid JSON ({getattr(e, 'msg', e)} at line {getattr(e, 'lineno', '?')}); "
                            "fix the file, or write one question per line as JSON Lines") from None
        records, fmt = _squad_records(path, doc), "squad-json"
    else:
        records, fmt = _jsonl_records(text), "jsonl"
    examples: list[QAExample] = []
    rejected: list[Rejection] = []
    repairs: list[tuple[int, str, int, int]] = []
    read = 0
    for row, record, title, context, problem in records:
        read += 1
        if problem is None:
            try:
                if max_chars and isinstance(context, str) and len(context) > max_chars:
                    raise ValueError(f"the context has {len(context):,} characters (limit {max_chars:,})")
                examples.append(check_example(record, row, require_answers=require_answers, title=title,
                                              context=context, repairs=repairs))
                continue
            except ValueError as e:
                problem = str(e)
        rejected.append(Rejection(row, problem))
        if not skip_bad_rows:
            what = "question" if fmt == "squad-json" else "line" if fmt == "jsonl" else "row"
            qid = record.get("id") if isinstance(record, Mapping) else None
            named = f" (id {qid})" if qid is not None else ""
            raise DataError(f"{path}, {what} {row}{named}: {problem}. Fix or remove it, or pass --skip-bad-rows "
                            "to skip such questions")
    report = QAReadReport(path=path, format=fmt, encoding="utf-8", columns=["question", "context", "answers"],
                          text_column="question", pair_column="context", label_column="answers",
                          rows_read=read, rows_used=len(examples), rejected=rejected)
    report.unanswerable = sum(1 for e in examples if e.impossible)
    report.repaired = repairs
    if repairs:
        ids = ", ".join(f"{qid} ({old}→{new})" for _, qid, old, new in repairs[:10])
        note = (f"{len(repairs)} answer offset{'s' if len(repairs) != 1 else ''} repaired: the answer text was "
                f"within {OFFSET_REPAIR_CHARS} characters of its answer_start and was moved there ({ids}"
                f"{', ...' if len(repairs) > 10 else ''})")
        report.notes.append(note)
        logger.warning("%s: %s", path, note)
    report.version = "2.0" if report.unanswerable or (is_json_doc and str(doc.get("version", "")).startswith("v2")) \
        else "1.1"
    if rejected:
        logger.warning("%s", report.summary())
    if not examples:
        first = "; ".join(f"row {r.row}: {r.reason}" for r in rejected[:3]) or "the file holds no questions"
        raise DataError(f"{path}: no usable questions ({read} read); {first}")
    return examples, report


def _single_line_object(text: str) -> bool:
    """A JSON Lines file whose first record happens to have a "data" key is still JSON Lines."""
    first, _, rest = text.partition("\n")
    if not rest.strip():
        return False
    try:
        loads_json(first)
        loads_json(rest.strip().partition("\n")[0])
        return True
    except ValueError:
        return False

