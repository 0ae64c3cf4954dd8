"""Multiple choice (the BERT paper's SWAG shape): a question (optionally after a context) and N
candidate answers, one of them right; N may differ from question to question.

Each choice is one encoded row, ``[CLS] context question [SEP] choice [SEP]`` (segment ids 0/1); the
head (heads.BertForMultipleChoice, transformers' class of that name) gives every row one score, and
the softmax over a question's rows is the answer's probability. The rows of a question train together
as one unit of the batch order (``train_units``), a batch says whose each row is (``Batch.groups``) and
``batch_outputs`` lays the scores out as (questions, most choices), padded with -inf, for a
cross-entropy per question. Prediction gathers the rows' scores back per question (``ChoiceScores``).

Files: JSON lines or CSV/TSV with ``question``, optional ``context``, the choices as a ``choices`` list
(in CSV a JSON-list string) or ``choice0``, ``choice1``, ... (``ending0``... as SWAG) columns, and the
gold as ``label`` (the right choice's index from 0) or ``answer`` (its text). Every bad row is a
row-level error naming the file and row, or a counted skip with --skip-bad-rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar, Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bertfit.batching import Batch, EncodedSplit, collate
from bertfit.data.columnar import open_source, split_format
from bertfit.data.examples import Example, LoadReport
from bertfit.data.files import (DELIMITERS, loads_json, MISSING, check_unique_columns, csv_header_and_records, field_count_problem,
                                jsonl_columns_and_records, load_table)
from bertfit.data.rows import Collector
from bertfit.errors import DataError, InputError
from bertfit.report.document import Paragraph, Strong, Table, fmt_int, fmt_score
from bertfit.tasks.base import LabelProblem, Task
from bertfit.tokenizer import Encoded

CHOICE_COLUMN = re.compile(r"^(choice|ending)_?(\d+)$")  # choice0, choice_1, ending2 (SWAG)
SKIP_HINT = "--skip-bad-rows"


@dataclass(frozen=True)
class ChoiceExample(Example):
    """One question with its choices: the generic example fields (tasks/base.py) with the context and
    question as ``text``, the choices joined as ``text_pair`` (what deduplication and the mistakes table
    read) and the right choice's index as ``label`` (None: unlabelled)."""

    question: str = ""
    context: str = ""
    choices: tuple[str, ...] = ()


def make_example(question: str, choices: Sequence[str], label: int | None = None, context: str = "",
                 row: int = 0) -> ChoiceExample:
    first = f"{context.strip()} {question.strip()}".strip()
    return ChoiceExample(first, label, " | ".join(choices), row, question=question, context=context,
                         choices=tuple(choices))


class ChoiceScores(list):
    """What ``gather`` makes of the rows' scores: one (C_i,) float array per question, with the
    questions' choices (to decode answers and name mistakes by their text)."""

    def __init__(self, scores: Sequence[np.ndarray], choices: Sequence[Sequence[str]] | None = None) -> None:
        super().__init__(scores)
        self.choices = list(choices) if choices is not None else None


@dataclass
class ChoiceRows:
    """An encoded split's bookkeeping: each question's choices, and each row's choice position."""

    choices: list[tuple[str, ...]]
    position: np.ndarray  # (N_rows,) the row's choice index within its question


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _get(settings: Any, key: str, default: Any = None) -> Any:
    value = settings.get(key) if isinstance(settings, Mapping) else getattr(settings, key, None)
    return default if value is None else value


def read_choices(path: Any, settings: Any, *, require_labels: bool = True) -> tuple[list[ChoiceExample], LoadReport]:
    """A JSONL/CSV/TSV file of questions with choices: every row used or rejected with its reason."""
    source = open_source(path)  # Parquet, Arrow, `datasets`: a ``choices`` list column, or CommonsenseQA's struct
    if source is not None:
        path, encoding, fmt, columns = source.name, "utf-8", source.format, source.columns
        records = source.records()
        if "question" in columns:
            source.check_text("question", "question")
    else:
        path, forced = split_format(path)
        path = str(path)
        text, encoding, fmt = load_table(path, _get(settings, "encoding"), forced)
        if fmt == "jsonl":
            columns, records = jsonl_columns_and_records(text)
        else:
            columns, header_line, rows = csv_header_and_records(path, text, DELIMITERS[fmt])
            check_unique_columns(path, columns, header_line)
            records = [(line, None, err) if err else (line, None, problem) if (problem := field_count_problem(
                       fields, columns, fmt)) else (line, dict(zip(columns, fields)), None) for line, fields, err in rows]
    choice_columns = sorted((c for c in columns if CHOICE_COLUMN.match(c)), key=lambda c: int(CHOICE_COLUMN.match(c)[2]))
    if "question" not in columns:
        raise DataError(f"{path}: no 'question' column (columns: {', '.join(columns[:12])}); a multiple-choice file "
                        "needs question, choices (or choice0, choice1, ...) and label (or answer)")
    if "choices" not in columns and len(choice_columns) < 2:
        raise DataError(f"{path}: no choices: add a 'choices' column (a JSON list) or columns choice0, choice1, ...")
    gold = "label" if "label" in columns else "answer" if "answer" in columns else \
        "answerKey" if "answerKey" in columns else None
    if gold is None and require_labels:
        raise DataError(f"{path}: no gold answer: add a 'label' column (the right choice's index, from 0) or an "
                        "'answer' column (the right choice's text)")
    max_chars = int(_get(settings, "max_chars", 100_000))
    collector = Collector(path, bool(_get(settings, "skip_bad_rows", False)), SKIP_HINT)
    for line, obj, err in records:
        collector.add(line, err if obj is None else _row(obj, line, choice_columns, gold, max_chars))
    return collector.examples, collector.report(fmt=fmt, encoding=encoding, columns=columns, text_column="question",
                                                pair_column="choices", label_column=gold)


def _row(obj: Mapping[str, Any], row: int, choice_columns: list[str], gold: str | None,
         max_chars: int) -> ChoiceExample | str:
    """One record → an example, or the reason it cannot be used."""
    question, context = obj.get("question", MISSING), obj.get("context")
    if not isinstance(question, str) or not question.strip():
        return "the question is missing or empty" if question in (MISSING, None) or isinstance(question, str) \
            else f"the question must be a string, not {type(question).__name__}"
    if context is not None and not isinstance(context, str):
        return f"the context must be a string, not {type(context).__name__}"
    keys = None
    if "choices" in obj and obj["choices"] not in (None, ""):
        choices = obj["choices"]
        if isinstance(choices, Mapping):  # `datasets`' CommonsenseQA: {"label": ["A", ...], "text": [...]}
            keys, choices = choices.get("label"), choices.get("text")
    else:  # choice0, choice1, ...: the empty cells of a wide CSV are absent choices
        choices = [obj[c] for c in choice_columns if obj.get(c) not in (None, "")]
    try:
        choices = check_choices(choices)
        label = None if gold is None else gold_index(obj.get(gold), gold, choices, keys)
    except ValueError as exc:
        return str(exc)
    if len(question) + len(context or "") + sum(map(len, choices)) > max_chars:
        return f"the question, context and choices are over {max_chars:,} characters (--max-chars)"
    return make_example(question, choices, label, context or "", row)


def check_choices(raw: Any) -> list[str]:
    """A list of at least two distinct, non-empty strings (a JSON-list string is read as its list)."""
    if isinstance(raw, str):
        try:
            raw = loads_json(raw)
        except ValueError:
            raise ValueError(f"choices must be a list (in CSV a JSON list such as [\"a\", \"b\"]), got {raw[:40]!r}") from None
    if not isinstance(raw, (list, tuple)):
        raise ValueError(f"choices must be a list of strings, not {type(raw).__name__}")
    if len(raw) < 2:
        raise ValueError(f"a question needs at least 2 choices, this one has {len(raw)}")
    for i, choice in enumerate(raw):
        if not isinstance(choice, str):
            raise ValueError(f"choice {i} must be a string, not {type(choice).__name__}")
        if not choice.strip():
            raise ValueError(f"choice {i} is empty")
    seen = [c.strip() for c in raw]
    dup = next((c for i, c in enumerate(seen) if c in seen[:i]), None)
    if dup is not None:
        raise ValueError(f"the choice {dup[:40]!r} is listed twice; each choice must be different")
    return list(raw)


def gold_index(raw: Any, column: str, choices: Sequence[str], keys: Sequence[Any] | None = None) -> int:
    """The right choice's index from a ``label`` (an index), an ``answer`` (a choice's exact text) or an
    ``answerKey`` (the key of a choice, with ``keys`` the choices' keys: CommonsenseQA's "A" to "E")."""
    if column == "answerKey":
        if not isinstance(keys, (list, tuple)) or len(keys) != len(choices):
            raise ValueError("answerKey needs the choices' keys ({\"label\": [\"A\", ...], \"text\": [...]})")
        if raw not in keys:
            raise ValueError(f"the answerKey {str(raw)[:40]!r} is not one of the choices' keys ({', '.join(map(str, keys))})")
        return list(keys).index(raw)
    if column == "answer":
        if not isinstance(raw, str) or raw not in choices:
            shown = ", ".join(repr(c[:30]) for c in choices)
            raise ValueError(f"the answer {str(raw)[:40]!r} is not one of the choices ({shown}); it must equal one exactly")
        return list(choices).index(raw)
    if isinstance(raw, str) and re.fullmatch(r"\s*\d+\s*", raw):
        raw = int(raw)
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ValueError(f"the label must be the right choice's index (0 to {len(choices) - 1}), got {raw!r:.40}")
    if not 0 <= raw < len(choices):
        raise ValueError(f"the label {raw} is out of range: this question has {len(choices)} choices (0 to {len(choices) - 1})")
    return raw


# --------------------------------------------------------------------------------------------
# Scores per question
# --------------------------------------------------------------------------------------------


def padded(outputs: Sequence[np.ndarray]) -> np.ndarray:
    """Per-question scores → (Q, most choices) float64, -inf where a question has fewer choices."""
    width = max((len(s) for s in outputs), default=1)
    out = np.full((len(outputs), width), -np.inf)
    for i, s in enumerate(outputs):
        out[i, :len(s)] = np.asarray(s, dtype=np.float64).reshape(-1)
    return out


def softmax_rows(scores: np.ndarray) -> np.ndarray:
    exp = np.exp(scores - scores.max(axis=1, keepdims=True))  # exp(-inf) = 0: an absent choice
    return exp / exp.sum(axis=1, keepdims=True)


def positions(groups: Tensor, count: int) -> Tensor:
    """Each row's position within its group, in the order the rows come (a question's rows are in
    choice order: ``train_units`` lists them so and batches and micro-batches keep their order)."""
    order = torch.argsort(groups, stable=True)
    sizes = torch.bincount(groups, minlength=count)
    starts = torch.cumsum(sizes, 0) - sizes
    pos = torch.empty_like(groups)
    pos[order] = torch.arange(len(groups), device=groups.device) - starts[groups[order]]
    return pos


# --------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------


class MultipleChoice(Task):
    name = "multiple-choice"
    hub_task = "multiple-choice"
    head = "choice"
    problem_type = "multiple_choice"
    metric_names = ("accuracy", "loss")
    default_metric = "accuracy"
    headline_metrics: ClassVar[tuple[str, ...]] = ("loss", "accuracy")
    mistake_score = "probability"
    mistake_columns: ClassVar[tuple[str, str, str, str]] = ("right answer", "chosen answer", "question", "choices")
    row_noun: ClassVar[str] = "questions"
    # predict --file reads these columns; the server also takes an optional "context" with them.
    input_columns: ClassVar[tuple[str, ...]] = ("question", "choices")
    input_options: ClassVar[tuple[str, ...]] = ("context",)

    # -- reading ------------------------------------------------------------------------------
    @classmethod
    def read(cls, path: Any, settings: Any, options: Mapping[str, Any], known: Task | None = None) -> tuple[list[Any], Any]:
        return read_choices(path, settings)

    @classmethod
    def parse_label(cls, raw: object, options: Mapping[str, Any]) -> Hashable:
        if isinstance(raw, bool) or not isinstance(raw, (int, np.integer)) or raw < 0:
            raise LabelProblem(f"the label must be the right choice's index, got {raw!r:.40}")
        return int(raw)  # checked against the question's choices while reading (gold_index)

    @classmethod
    def label_space(cls, labels: Sequence[Hashable], options: Mapping[str, Any]) -> list[str]:
        # One output, a score per (question, choice) row: transformers' head has num_labels=1 whatever
        # the number of choices, which may differ between questions.
        return ["score"]

    def label_summary(self, labels: Sequence[Hashable]) -> dict[str, int]:
        known = [int(label) for label in labels if label is not None]
        counts = np.bincount(known) if known else np.zeros(1, dtype=np.int64)
        return {f"answer is choice {i}": int(c) for i, c in enumerate(counts)}

    def objective(self) -> str:
        return "for multiple choice (a score per choice; the answer is the best-scored choice of each question)"

    def inputs(self, items: Sequence[Any]) -> list[ChoiceExample]:
        """{"question", "choices", optional "context"} mappings, or (question, choices) pairs; choices
        a list of at least two distinct strings (or a JSON-list string, as a CSV cell holds it)."""
        out = []
        for i, item in enumerate(items):
            if isinstance(item, ChoiceExample):
                out.append(item)
                continue
            if isinstance(item, Mapping):
                question, choices, context = item.get("question"), item.get("choices"), item.get("context")
            elif isinstance(item, (tuple, list)) and len(item) == 2:
                (question, choices), context = item, None
            else:
                raise InputError(i, 'a multiple-choice model takes a question and its choices ({"question": ..., '
                                 '"choices": [...]}), not ' + type(item).__name__)
            if not isinstance(question, str) or not question.strip():
                raise InputError(i, "the question is missing or empty" if question is None or isinstance(question, str)
                                 else f"the question must be a string, not {type(question).__name__}", "question")
            if context is not None and not isinstance(context, str):
                raise InputError(i, f"the context must be a string, not {type(context).__name__}", "context")
            if choices is None:
                raise InputError(i, "the choices are missing", "choices")
            try:
                choices = check_choices(choices)
            except ValueError as exc:
                raise InputError(i, str(exc), "choices") from None
            out.append(make_example(question, choices, None, context or "", row=i + 1))
        return out

    def sample_inputs(self) -> list[Any]:
        return [{"question": "warm-up?", "choices": ["yes", "no"]}]

    def probe_inputs(self, texts: Sequence[str]) -> list[Any]:
        return [{"question": t, "choices": ["yes", "no"]} for t in texts if t.strip()]

    # -- encoding -----------------------------------------------------------------------------
    def targets(self, labels: Sequence[Hashable]) -> np.ndarray:
        return np.fromiter((int(label) for label in labels), dtype=np.int64, count=len(labels))

    def encode(self, tokenizer: Any, examples: Sequence[Any], max_length: int,
               settings: Mapping[str, Any] | None = None) -> EncodedSplit:
        """A row per choice: ``[CLS] context question [SEP] choice [SEP]``. Over max_length, the first
        segment is cut first, keeping its end (the question, next to the choice), then the choice."""
        firsts = tokenizer.encode_pieces([e.text for e in examples]) if examples else []
        flat = [c for e in examples for c in e.choices]
        seconds = tokenizer.encode_pieces(flat) if flat else []
        budget = max(2, max_length - 3)
        encoded, example_index, position, row = [], [], [], 0
        for q, e in enumerate(examples):
            for k in range(len(e.choices)):
                a, b = firsts[q], seconds[row]
                keep_a = min(len(a), max(budget - len(b), 0))
                keep_b = min(len(b), budget - keep_a)
                a, b = a[len(a) - keep_a:], b[:keep_b]
                ids = [tokenizer.cls_id, *a, tokenizer.sep_id, *b, tokenizer.sep_id]
                encoded.append(Encoded(ids, [0] * (len(a) + 2) + [1] * (len(b) + 1), keep_a < len(firsts[q]) or
                                       keep_b < len(seconds[row])))
                example_index.append(q)
                position.append(k)
                row += 1
        index = np.asarray(example_index, dtype=np.int64)
        labelled = bool(examples) and all(e.label is not None for e in examples)
        gold = self.targets([e.label for e in examples]) if labelled else None
        # Per row: 1 for the right choice (a row's own target, e.g. for the resume fingerprint); the loss
        # reads the per-question ``gold``.
        targets = None if gold is None else (np.asarray(position) == gold[index]).astype(np.int64)
        return EncodedSplit(encoded, targets, gold=gold, example_index=index,
                            meta=ChoiceRows([tuple(e.choices) for e in examples], np.asarray(position, dtype=np.int64)))

    def train_units(self, split: EncodedSplit) -> list[list[int]] | None:
        """A question's rows train together: one unit of the batch order."""
        units: list[list[int]] = [[] for _ in range(len(split.meta.choices))]
        for row, question in enumerate(split.example_index.tolist()):
            units[question].append(row)
        return units

    def collate(self, split: EncodedSplit, indices: Sequence[int], pad_id: int, epoch: int | None = None) -> Batch:
        """The rows of the batch's questions, ``groups`` saying whose each is, one gold index per question."""
        indices = list(indices)
        questions, groups = np.unique(split.example_index[indices], return_inverse=True)
        batch = collate(split.encoded, indices, None, pad_id)
        if split.gold is not None:
            batch.labels = torch.from_numpy(np.ascontiguousarray(np.asarray(split.gold)[questions]))
        batch.groups = torch.from_numpy(groups.reshape(-1).astype(np.int64))
        return batch

    def batch_outputs(self, outputs: Tensor, batch: Batch) -> Tensor:
        """(rows, 1) scores → (questions, most choices), -inf where a question has fewer choices (fp32,
        so the softmax over choices is exact under autocast too)."""
        groups = batch.groups
        count = len(batch.labels) if batch.labels is not None else int(groups.max()) + 1
        pos = positions(groups, count)
        width = int(pos.max()) + 1 if len(pos) else 1
        scores = outputs.float().reshape(-1)
        table = torch.full((count, width), float("-inf"), dtype=torch.float32, device=scores.device)
        return table.index_put((groups, pos), scores)

    def loss(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """(Σ cross-entropy over each question's choices, number of questions): the ratio is
        transformers' BertForMultipleChoice loss."""
        total = F.cross_entropy(outputs.float(), targets, reduction="sum")
        return total, torch.tensor(float(len(targets)))

    def gather(self, split: EncodedSplit, outputs: Any) -> ChoiceScores:
        """(rows, 1) scores → one (C_i,) array per question (a question's rows are consecutive)."""
        scores = np.asarray(outputs, dtype=np.float32).reshape(-1)
        sizes = np.bincount(split.example_index, minlength=len(split.meta.choices))
        return ChoiceScores(np.split(scores, np.cumsum(sizes)[:-1]) if len(sizes) else [], split.meta.choices)

    # -- evaluation ---------------------------------------------------------------------------
    def evaluate(self, outputs: Sequence[np.ndarray], targets: np.ndarray) -> dict[str, Any]:
        y = np.asarray(targets, dtype=np.int64).reshape(-1)
        n = len(y)
        if not n:
            return {"accuracy": 0.0, "loss": float("nan"), "n": 0}
        scores = padded(outputs)
        proba = softmax_rows(scores)
        chosen = scores.argmax(axis=1)
        sizes = np.array([len(s) for s in outputs])
        width = scores.shape[1]
        confusion = np.zeros((width, width), dtype=np.int64)
        np.add.at(confusion, (y, chosen), 1)
        per_position = {str(k): {"n": int((y == k).sum()),
                                 "accuracy": float((chosen[y == k] == k).mean()) if (y == k).any() else None}
                        for k in range(width)}
        return {"accuracy": float((chosen == y).mean()),
                "loss": float(-np.log(np.clip(proba[np.arange(n), y], 1e-12, None)).mean()), "n": int(n),
                "chance": float((1.0 / sizes).mean()),
                "choices": {str(c): int(k) for c, k in zip(*np.unique(sizes, return_counts=True))},
                "per_position": per_position, "confusion_matrix": confusion.tolist(),
                "chosen_share": (np.bincount(chosen, minlength=width) / n).tolist()}

    def warnings(self, outputs: Sequence[np.ndarray]) -> list[str]:
        if len(outputs) < 20:
            return []
        share = np.bincount(padded(outputs).argmax(axis=1)) / len(outputs)
        if share.max() > 0.95:
            return [f"the model picks choice {int(share.argmax())} for {share.max():.0%} of the validation questions "
                    "(collapsed to one position); try a lower --lr or more steps"]
        return []

    def mistakes(self, outputs: Sequence[np.ndarray], targets: np.ndarray, limit: int = 20) -> list[dict[str, Any]]:
        proba = softmax_rows(padded(outputs)) if len(outputs) else np.zeros((0, 1))
        y = np.asarray(targets, dtype=np.int64).reshape(-1)
        chosen = proba.argmax(axis=1)
        wrong = np.flatnonzero(chosen != y)
        wrong = wrong[np.argsort(-proba[wrong, chosen[wrong]], kind="stable")][:limit]
        choices = getattr(outputs, "choices", None)
        name = (lambda i, k: choices[i][k]) if choices else (lambda i, k: f"choice {k}")
        return [{"index": int(i), "true": name(i, y[i]), "predicted": name(i, chosen[i]),
                 "score": float(proba[i, chosen[i]])} for i in wrong]

    # -- decoding -----------------------------------------------------------------------------
    def probabilities(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        """(questions, most choices) softmax over each question's choices; 0 past a question's last."""
        return softmax_rows(padded(outputs))

    def decode(self, outputs: Any, split: EncodedSplit | None = None) -> list[dict[str, Any]]:
        if not isinstance(outputs, ChoiceScores) and split is not None:
            outputs = self.gather(split, outputs)
        choices = getattr(outputs, "choices", None) or (split.meta.choices if split is not None else None)
        records = []
        for i, scores in enumerate(outputs):
            p = softmax_rows(np.asarray(scores, dtype=np.float64).reshape(1, -1))[0]
            best = int(p.argmax())
            records.append({"answer": choices[i][best] if choices else str(best), "index": best,
                            "scores": [float(v) for v in p]})
        return records

    def explain_plan(self, tokenizer: Any, example: Any, max_length: int) -> Any:
        """A row per choice (``[CLS] context question [SEP] choice [SEP]``), run together; a target per
        choice asked for (default: the chosen one): its probability among the choices. The question's
        words collect their attribution from every row."""
        from bertfit.tasks.explaining import Target, pick, text_plan

        choices = list(example.choices)
        encodings = tokenizer.encode_offsets([example.text] * len(choices), choices, max_length)
        fields = [(("question", example.text), (f"choice {k}", c)) for k, c in enumerate(choices)]

        def choose(outputs: Tensor, which: Sequence[str] | None) -> list[Target]:
            chosen = pick(choices, which, "choice") or [int(outputs[:, 0].argmax())]
            return [Target(choices[k], lambda out, k=k: torch.softmax(out[:, :, 0].float(), -1)[:, k],
                           {"of": "probability", "choice": k}) for k in chosen]

        return text_plan(encodings, fields, choose)

    def answer(self, record: Mapping[str, Any]) -> Any:
        return record["answer"]

    def agreement(self, reference: Any, outputs: Any, split: EncodedSplit | None = None) -> tuple[str, float]:
        same = [a["index"] == b["index"] for a, b in zip(self.decode(reference, split), self.decode(outputs, split))]
        return "chosen answers agree", float(np.mean(same)) if same else 1.0

    def display(self, record: Mapping[str, Any]) -> str:
        i = record["index"]
        return f"{record['answer']}  (choice {i}, p {record['scores'][i]:.3f})"

    def columns(self, record: Mapping[str, Any]) -> dict[str, Any]:
        return {"answer": record["answer"], "index": record["index"], "probability": record["scores"][record["index"]]}

    def output_names(self) -> list[str]:
        return ["answer", "index", "probability"]

    # -- report -------------------------------------------------------------------------------
    def format_metrics(self, m: Mapping[str, Any]) -> str:
        lines = [f"accuracy {m.get('accuracy', 0.0):.4f}   ({m.get('n', 0)} questions, chance {m.get('chance', 0.0):.4f})"]
        if np.isfinite(m.get("loss", float("nan"))):
            lines.append(f"loss {m['loss']:.4f}")
        by = [f"{k}: {v['accuracy']:.3f} (n={v['n']})" for k, v in (m.get("per_position") or {}).items() if v["n"]]
        if by:
            lines.append("accuracy by position of the right answer: " + ", ".join(by))
        return "\n".join(lines)

    def headline(self, m: Mapping[str, Any]) -> list[Any]:
        return ["accuracy ", Strong(fmt_score(m.get("accuracy"))), f" ({100 * float(m.get('accuracy', 0.0)):.1f}%) over "
                f"{fmt_int(m.get('n', 0))} questions (chance {100 * float(m.get('chance', 0.0)):.1f}%). "]

    def report_sections(self, m: Mapping[str, Any], split: str, plots: Any, outputs: Any = None,
                        targets: Any = None) -> list[Any]:
        if not m.get("n"):
            return [Paragraph(["No questions to evaluate."], muted=True)]
        share = m.get("chosen_share") or []
        rows = [[f"choice {k}", fmt_int(v["n"]), fmt_score(v["accuracy"]) if v["accuracy"] is not None else "–",
                 f"{100 * share[int(k)]:.1f}%" if int(k) < len(share) else ""] for k, v in m["per_position"].items()]
        rows.append([Strong("all"), fmt_int(m["n"]), Strong(fmt_score(m["accuracy"])), ""])
        blocks: list[Any] = [Table(["right answer", "questions", "accuracy", "chosen"], rows, ["l", "r", "r", "r"])]
        sizes = ", ".join(f"{n} with {c} choices" for c, n in (m.get("choices") or {}).items())
        blocks.append(Paragraph([f"Questions: {sizes}; chance accuracy {fmt_score(m.get('chance'))}."
                                 + (f" Loss: {float(m['loss']):.4f}." if np.isfinite(m.get("loss", float("nan"))) else "")]))
        cm = m.get("confusion_matrix")
        if cm and len(cm) > 1:
            names = [f"choice {k}" for k in range(len(cm))]
            blocks.append(Paragraph([Strong("Chosen vs right position"), " (rows: right, columns: chosen)"]))
            blocks.append(Table(["right \\ chosen", *names], [[n, *(fmt_int(c) for c in row)] for n, row in zip(names, cm)],
                                ["l"] + ["r"] * len(names)))
        return blocks
