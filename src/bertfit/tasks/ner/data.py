"""NER data: sentences as words with character spans, read from CoNLL files and JSON lines.

Three inputs, one shape (:class:`Sentence`):

* CoNLL-style files: one token per line, its tag in a chosen column (default the last), tab- or
  space-separated; a blank or whitespace-only line ends a sentence; ``-DOCSTART-`` lines are skipped.
* JSON lines with ``tokens`` + ``tags`` arrays (pre-tokenised).
* JSON lines with raw ``text`` + character-offset ``entities`` (``[start, end, label]`` or objects
  with ``start``/``end``/``label``, as Doccano and Label Studio export; also under ``label`` or
  ``spans``). The text is split into words as BERT's pre-tokenizer splits it (whitespace,
  punctuation, each CJK character), and each word inside an entity takes its tag.

Tags are normalised to IOB2 (entities.to_iob2) and repairs counted. Every sentence or line that
cannot be used is a :class:`Rejection` with its line number (rows read = used + rejected), or a
DataError naming the file, line and fix when bad rows are not skipped.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from bertfit.errors import DataError
from bertfit.data.columnar import open_source, split_format
from bertfit.data.examples import Rejection
from bertfit.data.files import loads_json, split_lines
from bertfit.tasks.ner.annotations import label_studio_records
from bertfit.tasks.ner.entities import OUTSIDE, SCHEMES, detect_scheme, split_tag, to_iob2
from bertfit.tasks.settings import Setting

# The NER task's own settings (tasks/settings.py: flags, validation, saved with the run). Here, not in
# ner.py, because `bertfit train --help` reads them without importing torch.
NER_SETTINGS: tuple[Setting, ...] = (
    Setting("tag_column", int, -1, "the CoNLL column holding the tag (0-based; -1: the last)",
            low=-1000, high=1000, reading=True),
    Setting("tag_scheme", str, "auto", "the files' tag scheme: auto, iob1, iob2 or bioes (read into IOB2; invalid "
            "tags repaired)", choices=SCHEMES, reading=True),
    Setting("label_all_subwords", bool, False,
            "label every subword of a word (the I- form after the first) instead of the first only"),
)

TAG_KEYS = ("tags", "ner_tags", "labels")
ENTITY_KEYS = ("entities", "label", "labels", "spans")
_MAX_SHOWN = 3


@dataclass(frozen=True)
class Sentence:
    """One sentence: its words, where each word sits in ``text``, and its IOB2 tags (None: unlabelled).

    ``pretokenized``: the words were given (CoNLL, ``tokens``); ``text`` is then the words joined by
    single spaces and predictions are reported by word index. Otherwise ``text`` is the input as given.
    """

    words: tuple[str, ...]
    spans: tuple[tuple[int, int], ...]
    text: str
    label: tuple[str, ...] | None = None  # the IOB2 tags ("label": the Task contract's name for a target)
    row: int = 0
    pretokenized: bool = False

    @property
    def tags(self) -> tuple[str, ...] | None:
        return self.label

    @property
    def text_pair(self) -> None:
        return None


@dataclass
class NerReadReport:
    """What reading a NER file did (the same accounting as data.LoadReport)."""

    path: str
    format: str
    encoding: str = "utf-8"
    scheme: str = "iob2"
    rows_read: int = 0
    rows_used: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    repaired: int = 0  # invalid tags fixed by the standard rule (an I-X that opens an entity → B-X)
    misaligned: int = 0  # entities whose offsets cut a word (the whole word was tagged)
    columns: list[str] = field(default_factory=list)
    text_column: str = "tokens"
    pair_column: str | None = None
    label_column: str | None = "tags"

    @property
    def row_word(self) -> str:
        """What a row number counts: a line of a text file, a task of a Label Studio export, a table's row."""
        return {"conll": "line", "jsonl": "line", "label-studio": "task"}.get(self.format, "row")

    def summary(self) -> str:
        name = Path(self.path).name or self.path
        unit = {"conll": "sentences", "jsonl": "lines", "label-studio": "tasks"}.get(self.format, "rows")
        line = f"{name}: {self.rows_read} {unit} read, {self.rows_used} used, {len(self.rejected)} rejected"
        if self.rejected:
            shown = "; ".join(f"{self.row_word} {r.row}: {r.reason}" for r in self.rejected[:_MAX_SHOWN])
            line += f" ({shown}{'; ...' if len(self.rejected) > _MAX_SHOWN else ''})"
        line += f"; tags {self.scheme.upper()}"
        if self.repaired:
            line += f", {self.repaired} invalid tag(s) repaired (I-X opening an entity → B-X)"
        if self.misaligned:
            line += f"; {self.misaligned} entity offset(s) inside a word (the whole word tagged)"
        return line


# -- words ----------------------------------------------------------------------------------------

def _is_cjk(ch: str) -> bool:
    # The CJK blocks BERT's normaliser puts spaces around (tokenizers' BertNormalizer, is_chinese_char).
    cp = ord(ch)
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
            or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def split_words(text: str) -> list[tuple[str, tuple[int, int]]]:
    """Words of a raw text with their character spans, as BERT splits them before WordPiece:
    whitespace and punctuation (tokenizers' BertPreTokenizer), and each CJK character on its own."""
    from tokenizers.pre_tokenizers import BertPreTokenizer

    words: list[tuple[str, tuple[int, int]]] = []
    for word, (start, end) in BertPreTokenizer().pre_tokenize_str(text):
        if not any(_is_cjk(ch) for ch in word):
            if not all(unicodedata.category(ch) in ("Cf", "Cc", "Mn") for ch in word):
                words.append((word, (start, end)))
            continue
        piece = start
        for i, ch in enumerate(word, start):
            if _is_cjk(ch):
                if piece < i:
                    words.append((text[piece:i], (piece, i)))
                words.append((ch, (i, i + 1)))
                piece = i + 1
        if piece < end:
            words.append((text[piece:end], (piece, end)))
    return words


def from_text(text: str, row: int = 0) -> Sentence:
    """An unlabelled sentence from raw text (prediction input)."""
    pairs = split_words(text)
    return Sentence(tuple(w for w, _ in pairs), tuple(s for _, s in pairs), text, None, row, False)


def from_tokens(tokens: Sequence[str], tags: Sequence[str] | None = None, row: int = 0) -> Sentence:
    """A sentence from given words (joined by single spaces for its text)."""
    spans, pos = [], 0
    for word in tokens:
        spans.append((pos, pos + len(word)))
        pos += len(word) + 1
    return Sentence(tuple(tokens), tuple(spans), " ".join(tokens), None if tags is None else tuple(tags), row, True)


def tags_from_entities(spans: Sequence[tuple[int, int]], entities: Sequence[tuple[int, int, str]]) -> tuple[list[str], int]:
    """IOB2 word tags from character-offset entities, and how many entities cut a word.

    Raises ValueError (the row's reason) for overlapping entities or one that covers no word.
    """
    tags = [OUTSIDE] * len(spans)
    cut = 0
    ordered = sorted(entities)
    for (a0, a1, la), (b0, b1, lb) in zip(ordered, ordered[1:]):
        if b0 < a1:
            raise ValueError(f"entities [{a0}, {a1}, {la!r}] and [{b0}, {b1}, {lb!r}] overlap; "
                             "a word has one tag, so keep one of them")
    for start, end, label in ordered:
        inside = [i for i, (s, e) in enumerate(spans) if s < end and e > start]
        if not inside:
            raise ValueError(f"entity [{start}, {end}, {label!r}] covers no word (only spaces?)")
        cut += spans[inside[0]][0] < start or spans[inside[-1]][1] > end
        for k, i in enumerate(inside):
            tags[i] = f"{'B' if k == 0 else 'I'}-{label}"
    return tags, cut


def entities_from_tags(sentence: Sentence, tags: Sequence[str]) -> list[list[Any]]:
    """The inverse for writing annotation-tool files: [[start, end, type]] in character offsets."""
    from bertfit.tasks.ner.entities import spans as tag_spans

    return [[sentence.spans[a][0], sentence.spans[b][1], type_] for type_, a, b in tag_spans(list(tags))]


# -- files --------------------------------------------------------------------------------------

def _decode_file(path: str, encoding: str | None) -> tuple[str, str]:
    from bertfit.data.files import check_not_binary, decode_bytes, read_bytes

    data = read_bytes(path)
    if not data.strip():
        raise DataError(f"{path} is empty; expected a CoNLL file (token and tag per line) or JSON lines")
    check_not_binary(path, data, encoding)
    return decode_bytes(path, data, encoding)


def detect_format(path: str, text: str) -> str:
    suffix = Path(path).suffix.lower()
    stripped = text.lstrip()
    if stripped.startswith("[") and stripped[1:].lstrip()[:1] in ("{", "]"):
        return "label-studio"  # a JSON array of tasks (a CoNLL line "[ O" has no "{" after its bracket)
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    first = next((line for line in split_lines(text) if line.strip()), "")
    return "jsonl" if first.lstrip().startswith("{") else "conll"


def read_ner_file(path: Any, options: Mapping[str, Any] | None = None) -> tuple[list[Sentence], NerReadReport]:
    """Read a labelled NER file. options: tag_column (CoNLL, default -1), token_column (default 0),
    tag_scheme (auto/iob1/iob2/bioes), encoding, skip_bad_rows (else the first bad row is a DataError).

    ``path`` may also be Parquet, Arrow or `datasets` data (or a DataFrame / Dataset): rows of
    ``tokens`` + ``ner_tags`` (ClassLabel ids read as their names) or ``text`` + ``entities``; a
    Label Studio JSON export (annotations.py); and ``FORMAT:PATH`` forces a format (conll, jsonl,
    doccano, label-studio, parquet, arrow, datasets)."""
    options = dict(options or {})
    source = open_source(path)
    if source is not None:
        report = NerReadReport(source.name, source.format)
        raw = _columnar(source, report)
        path = source.name
    else:
        path, forced = split_format(path)
        path = str(path)
        if forced not in (None, "conll", "jsonl", "doccano", "label-studio"):
            raise DataError(f"{path}: NER reads CoNLL, JSON lines (doccano), Label Studio JSON, Parquet, Arrow and "
                            f"`datasets` data, not {forced}")
        text, encoding = _decode_file(path, options.get("encoding"))
        fmt = "jsonl" if forced == "doccano" else forced or detect_format(path, text)
        report = NerReadReport(path, fmt, encoding)
        if fmt == "conll":
            raw = _conll(text, options, report)
        elif fmt == "label-studio":
            raw = _mappings(label_studio_records(path, text), report)
        else:
            raw = _jsonl(text, report)
    scheme = str(options.get("tag_scheme") or "auto").lower()
    if scheme not in SCHEMES:
        raise DataError(f"unknown tag scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    if scheme == "auto":
        scheme = detect_scheme(tags for _, _, tags, _ in raw if tags is not None)
    report.scheme = scheme
    sentences = []
    for kind, payload, tags, row in raw:
        if kind == "tokens":
            fixed, repaired = to_iob2(tags, scheme)
            report.repaired += repaired
            sentences.append(from_tokens(payload, fixed, row))
        else:  # ("text", (text, entities), None, row): entity offsets give IOB2 directly
            sentence, entities = payload
            cut = 0
            try:
                word_tags, cut = tags_from_entities(sentence.spans, entities)
            except ValueError as e:
                report.rejected.append(Rejection(row, str(e)))
                continue
            report.misaligned += cut
            sentences.append(Sentence(sentence.words, sentence.spans, sentence.text, tuple(word_tags), row, False))
    report.rejected.sort(key=lambda r: r.row)
    report.rows_used = len(sentences)
    report.rows_read = report.rows_used + len(report.rejected)
    if report.rejected and not options.get("skip_bad_rows", False):
        first = report.rejected[0]
        more = f" ({len(report.rejected) - 1} more)" if len(report.rejected) > 1 else ""
        raise DataError(f"{path}, {report.row_word} {first.row}: {first.reason}{more}. Fix the file, or pass --skip-bad-rows "
                        "to leave such sentences out (each is listed in the data summary)")
    if not sentences:
        raise DataError(f"{path}: no usable sentences ({report.summary()})")
    return sentences, report


def _tag_ok(tag: str) -> str | None:
    if tag == OUTSIDE:
        return None
    kind, type_ = split_tag(tag)
    if kind not in ("B", "I", "E", "S") or len(tag) < 3 or tag[1] != "-" or not tag[2:].strip():
        return f"tag {tag!r} is neither O nor PREFIX-TYPE with a prefix B, I, E or S (e.g. B-PER)"
    return None


def _conll(text: str, options: Mapping[str, Any], report: NerReadReport) -> list[tuple]:
    tag_column = int(options.get("tag_column", -1))
    token_column = int(options.get("token_column", 0))
    out: list[tuple] = []
    words: list[str] = []
    tags: list[str] = []
    start, problem = 0, None

    def close() -> None:
        nonlocal words, tags, problem
        if words or problem:
            if problem:
                report.rejected.append(Rejection(start, problem))
            else:
                out.append(("tokens", words, tags, start))
        words, tags, problem = [], [], None

    for number, line in enumerate(split_lines(text), 1):
        if not line.strip():
            close()
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        fields = [f.strip() for f in fields]
        if fields[0] == "-DOCSTART-":
            close()
            continue
        if not words and problem is None:
            start = number
        if problem:
            continue
        try:
            word, tag = fields[token_column], fields[tag_column]
        except IndexError:
            problem = (f"line {number} has {len(fields)} field(s) {fields!r}; expected a token and a tag "
                       f"(token column {token_column}, tag column {tag_column})")
            continue
        if len(fields) < 2:
            problem = f"line {number} has a token {word!r} but no tag; every token line needs its tag"
            continue
        if not word:
            problem = f"line {number} has an empty token"
            continue
        if (why := _tag_ok(tag)) is not None:
            problem = f"line {number}: {why}"
            continue
        words.append(word)
        tags.append(tag)
    close()
    return out


def _entity(item: Any) -> tuple[int, int, str]:
    if isinstance(item, (list, tuple)) and len(item) >= 3:
        start, end, label = item[0], item[1], item[2]
    elif isinstance(item, Mapping):
        value = item.get("value", item)  # Label Studio nests the span under "value"
        # doccano 1.x names the offsets start_offset / end_offset
        start, end = value.get("start", value.get("start_offset")), value.get("end", value.get("end_offset"))
        label = value.get("label", value.get("labels"))
        if isinstance(label, list) and len(label) == 1:
            label = label[0]
    else:
        raise ValueError(f"entity {item!r} is neither [start, end, label] nor an object with start, end and label")
    if not (isinstance(start, int) and isinstance(end, int)) or isinstance(start, bool) or isinstance(end, bool):
        raise ValueError(f"entity {item!r}: start and end must be whole numbers (character offsets)")
    if not isinstance(label, str) or not label.strip() or "-" == label[:1]:
        raise ValueError(f"entity {item!r}: label must be a type name such as 'PER'")
    return start, end, label.strip()


def _jsonl(text: str, report: NerReadReport) -> list[tuple]:
    out: list[tuple] = []
    for number, line in enumerate(split_lines(text), 1):
        if not line.strip():
            continue
        try:
            obj = loads_json(line)
        except json.JSONDecodeError as e:
            report.rejected.append(Rejection(number, f"not valid JSON ({e.msg} at column {e.colno})"))
            continue
        if not isinstance(obj, dict):
            report.rejected.append(Rejection(number, "not a JSON object"))
            continue
        try:
            out.append(_json_sentence(obj, number))
        except ValueError as e:
            report.rejected.append(Rejection(number, str(e)))
    return out


def _mappings(records: Any, report: NerReadReport) -> list[tuple]:
    """Sentences of (row, mapping or None, problem) records (Label Studio tasks, a table's rows)."""
    out: list[tuple] = []
    for number, obj, problem in records:
        if problem is None:
            try:
                out.append(_json_sentence(obj, number))
                continue
            except ValueError as e:
                task = obj.get("id") if report.format == "label-studio" else None
                problem = f"{e} (task id {task})" if task is not None else str(e)
        report.rejected.append(Rejection(number, problem))
    return out


def _columnar(source: Any, report: NerReadReport) -> list[tuple]:
    """A table of ``tokens`` + tags (ClassLabel ids already named) or ``text`` + entities, its columns checked."""
    columns = source.columns
    if "tokens" in columns:
        source.check_list_of_text("tokens", "tokens")
        if not any(k in columns for k in TAG_KEYS):
            raise DataError(f"{source.name}: a 'tokens' column but no tags column (looked for {', '.join(TAG_KEYS)})")
    elif "text" in columns:
        source.check_text("text", "text")
    else:
        raise DataError(f"{source.name}: no 'tokens' column (with 'ner_tags') nor 'text' (with 'entities'); columns: "
                        f"{', '.join(columns[:12])}")
    report.columns = columns
    keep = [c for c in ("tokens", *TAG_KEYS, "text", *ENTITY_KEYS) if c in columns]
    return _mappings(source.records(keep), report)


def _json_sentence(obj: Mapping[str, Any], number: int) -> tuple:
    if "tokens" in obj:
        tokens = obj["tokens"]
        key = next((k for k in TAG_KEYS if k in obj), None)
        if key is None:
            raise ValueError(f"has tokens but no tags (looked for {', '.join(TAG_KEYS)})")
        tags = obj[key]
        if not isinstance(tokens, list) or not all(isinstance(t, str) and t.strip() for t in tokens):
            raise ValueError("tokens must be a list of non-empty strings")
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ValueError(f"{key} must be a list of tag strings such as 'B-PER' (not label ids)")
        if not tokens:
            raise ValueError("empty sentence (no tokens)")
        if len(tokens) != len(tags):
            raise ValueError(f"{len(tokens)} tokens but {len(tags)} tags; every token needs exactly one tag")
        for tag in tags:
            if (why := _tag_ok(tag)) is not None:
                raise ValueError(why)
        return ("tokens", [t.strip() for t in tokens], list(tags), number)
    if "text" in obj:
        text = obj["text"]
        if not isinstance(text, str) or not text.strip():
            raise ValueError("empty text")
        key = next((k for k in ENTITY_KEYS if k in obj), None)
        if key is None:
            raise ValueError(f"has text but no entities (looked for {', '.join(ENTITY_KEYS)}; use [] for none)")
        items = obj[key] or []
        if not isinstance(items, list):
            raise ValueError(f"{key} must be a list of [start, end, label]")
        entities = [_entity(item) for item in items]
        for start, end, label in entities:
            if not 0 <= start < end <= len(text):
                raise ValueError(f"entity [{start}, {end}, {label!r}] is outside the text (length {len(text)}) "
                                 "or empty; offsets are character positions, end exclusive")
        sentence = from_text(text, number)
        tags_from_entities(sentence.spans, entities)  # overlapping spans: this row's error, here where it is named
        return ("text", (sentence, entities), None, number)
    raise ValueError("neither tokens + tags nor text + entities")

