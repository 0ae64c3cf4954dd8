"""Extractive question answering (SQuAD-style): the answer is a span of the context.

The question and the context go in as a pair (``[CLS] question [SEP] context [SEP]``); the span head
gives every token a start and an end logit. Long contexts are cut into overlapping windows
(qa_windows.py, --max-length 384 and --doc-stride 128 by default), each window trained on the
answer's tokens or on [CLS] when the answer is not inside it; decoding (qa_decode.py) stitches the
windows back into one answer per question, cut from the original text by character offsets.
Metrics: SQuAD exact match and F1 (squad_metric.py; the official v1.1 rules, or v2.0's with
HasAns / NoAns when some questions have no answer), F1 selecting the best checkpoint. For v2.0
data the no-answer threshold is tuned on validation after training and saved (task.json).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Hashable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from bertfit.errors import BertfitError, DataError, InputError
from bertfit.heads import span_loss
from bertfit.report.document import Paragraph, Strong, Table, fmt_int, fmt_score
from bertfit.tasks.base import Task
from bertfit.tasks.qa.data import DOC_STRIDE, QA_SETTINGS, QAExample, read_qa
from bertfit.tasks.qa.decode import MAX_ANSWER_LENGTH, N_BEST, QAPrediction, decode_all, record
from bertfit.data import token_cache
from bertfit.tasks.qa.windows import QAWindows, encode_windows, encode_windows_cached, fit_questions
from bertfit.tasks.qa.squad_metric import best_threshold, squad_scores


@dataclass
class QAOutputs:
    """What gather() makes of a split's window logits: one prediction per question, and the windows' loss."""

    predictions: list[QAPrediction]
    loss: float
    windows: QAWindows

    def __len__(self) -> int:
        return len(self.predictions)


def _setting(settings: Any, key: str, default: Any) -> Any:
    value = settings.get(key) if isinstance(settings, Mapping) else getattr(settings, key, None)
    return default if value is None else value


class QuestionAnswering(Task):
    name = "qa"
    hub_task = "question-answering"
    head = "span"
    problem_type = "question_answering"
    metric_names = ("f1", "exact_match", "loss")
    default_metric = "f1"
    headline_metrics: ClassVar[tuple[str, ...]] = ("loss", "exact_match", "f1")
    mistake_score = "score"
    mistake_columns: ClassVar[tuple[str, str, str, str]] = ("gold answers", "predicted answer", "question", "context")
    row_noun: ClassVar[str] = "questions"
    input_columns: ClassVar[tuple[str, ...]] = ("question", "context")  # predict --file reads these
    input_options: ClassVar[tuple[str, ...]] = ("top_k",)
    settings = QA_SETTINGS  # doc_stride (training), top_k (predict --top-k)

    def configure(self, *, null_threshold: float | None = None, version: str = "1.1", doc_stride: int = DOC_STRIDE,
                  n_best: int = N_BEST, max_answer_length: int = MAX_ANSWER_LENGTH, **state: Any) -> None:
        super().configure(**state)
        self.null_threshold = None if null_threshold is None else float(null_threshold)
        self.version = str(version)
        self.doc_stride = int(doc_stride)
        self.n_best = int(n_best)
        self.max_answer_length = int(max_answer_length)
        self.top_k = 1  # alternatives in each record (predict --top-k, the server's top_k)

    @classmethod
    def create(cls, labels: Sequence[str], settings: Mapping[str, Any]) -> "QuestionAnswering":
        return cls(labels, doc_stride=_setting(settings, "doc_stride", DOC_STRIDE))

    def state(self) -> dict[str, Any]:
        return {"null_threshold": self.null_threshold, "version": self.version, "doc_stride": self.doc_stride,
                "n_best": self.n_best, "max_answer_length": self.max_answer_length}

    # -- reading ------------------------------------------------------------------------------
    @classmethod
    def read(cls, path: Any, settings: Any, options: Mapping[str, Any], known: Task | None = None) -> tuple[list[Any], Any]:
        """A SQuAD v1.1/v2.0 JSON or JSON Lines file (gzipped or not), every answer checked (qa_data.py)."""
        return read_qa(path, skip_bad_rows=bool(_setting(settings, "skip_bad_rows", False)),
                       max_chars=_setting(settings, "max_chars", 100_000) * 10)

    def split_groups(self, examples: Sequence[Any]) -> list[Hashable] | None:
        # By passage: questions over one context go to one split, or the test set's passages (and often
        # their answers) would be read in training and EM/F1 would be optimistic.
        return [e.text_pair for e in examples]

    @classmethod
    def parse_label(cls, raw: object, options: Mapping[str, Any]) -> Hashable:
        return raw  # answers are checked against their context while reading (qa_data.check_example)

    @classmethod
    def label_space(cls, labels: Sequence[Hashable], options: Mapping[str, Any]) -> list[str]:
        return ["start", "end"]  # the head's two outputs per token

    def strata(self, labels: Sequence[Hashable]) -> list[str | None]:
        return [None if label is None else ("answer" if label else "no answer") for label in labels]

    def inputs(self, items: Sequence[Any]) -> list[QAExample]:
        """Prediction inputs: {"question", "context"} mappings (with an optional "top_k": how many
        answers to list, 1 to n_best) or (question, context) pairs; a bad one raises InputError."""
        out = []
        for i, item in enumerate(items):
            if isinstance(item, QAExample):
                out.append(item)
                continue
            top_k = None
            if isinstance(item, Mapping):
                question, context = item.get("question"), item.get("context")
                top_k = self.check_top_k(item.get("top_k"), i)
            elif isinstance(item, (tuple, list)) and len(item) == 2:
                question, context = item
            else:
                raise InputError(i, "a question-answering model takes a question and a context "
                                 '({"question": ..., "context": ...}), not ' + type(item).__name__)
            for what, value in (("question", question), ("context", context)):
                if not isinstance(value, str) or not value.strip():
                    raise InputError(i, f"the {what} is missing or empty" if value is None or isinstance(value, str)
                                     else f"the {what} must be a string, not {type(value).__name__}", what)
            out.append(QAExample(question, context, None, row=i + 1, id=str(i + 1), top_k=top_k))
        return out

    def check_top_k(self, value: Any, index: int = 0) -> int | None:
        """A requested number of answers: None (the task's top_k), or a whole number from 1 to n_best
        (decoding keeps n_best candidates per question, so more cannot be listed)."""
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= self.n_best:
            raise InputError(index, f"top_k must be a whole number from 1 to {self.n_best}, got {value!r:.40}", "top_k")
        return value

    # -- encoding -----------------------------------------------------------------------------
    def targets(self, labels: Sequence[Hashable]) -> np.ndarray:
        raise BertfitError("question-answering targets are token positions in windows; they come from encode()")

    def encode(self, tokenizer: Any, examples: Sequence[Any], max_length: int, settings: Any = None) -> Any:
        from bertfit.batching import EncodedSplit

        stride = _setting(settings, "doc_stride", self.doc_stride) if settings is not None else self.doc_stride
        if settings is not None and any(getattr(e, "impossible", False) for e in examples):
            # SQuAD v2.0 data: "no answer" is an answer; until validation tunes the threshold, use
            # run_qa.py's null_score_diff_threshold of 0.
            self.version = "2.0"
            if self.null_threshold is None:
                self.null_threshold = 0.0
        try:
            # A large split is mapped from the tokenized cache on disk (data/token_cache.py): the same windows.
            encode = encode_windows_cached if token_cache.cache_enabled(len(examples)) else encode_windows
            windows = encode(tokenizer, [e.text for e in examples], [e.text_pair for e in examples],
                             [e.answers[0] if getattr(e, "answers", None) else None for e in examples],
                             max_length, stride)
        except ValueError as exc:
            raise DataError(str(exc)) from None
        gold = [list(getattr(e, "answer_texts", [])) for e in examples]
        windows.top_k = [getattr(e, "top_k", None) for e in examples]
        return EncodedSplit(windows.encoded, windows.targets, gold=gold, example_index=windows.example_index,
                            meta=windows)

    def collate(self, split: Any, indices: Sequence[int], pad_id: int, epoch: int | None = None) -> Any:
        from bertfit.batching import collate

        return collate(split.encoded, indices, split.targets, pad_id)

    # -- training -----------------------------------------------------------------------------
    def loss_weight(self, targets: Tensor) -> Tensor:
        import torch

        return torch.tensor(float(len(targets)))

    def loss(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        return span_loss(outputs, targets)

    # -- evaluation ---------------------------------------------------------------------------
    def gather(self, split: Any, outputs: Sequence[np.ndarray]) -> QAOutputs:
        windows: QAWindows = split.meta
        predictions = decode_all(outputs, windows, n_best=self.n_best, max_answer_length=self.max_answer_length,
                                 null_threshold=self.null_threshold)
        return QAOutputs(predictions, _window_loss(outputs, windows.targets), windows)

    def evaluate(self, outputs: QAOutputs, targets: Sequence[Sequence[str]]) -> dict[str, Any]:
        texts = [p.text for p in outputs.predictions]
        m = squad_scores(texts, targets)
        per = m.pop("per_question")
        windows = outputs.windows
        counts = np.bincount(windows.example_index, minlength=len(windows.contexts))
        lengths = windows.context_tokens
        m.update({"loss": outputs.loss, "windows": int(len(windows)), "split_into_windows": int((counts > 1).sum()),
                  "context_tokens": _distribution(lengths), "questions_cut": windows.questions_cut,
                  "answered": int(sum(1 for p in outputs.predictions if not p.no_answer)),
                  "mean_exact_match_by_windows": _by_windows(per, counts)})
        if self.null_threshold is not None:
            m["null_threshold"] = self.null_threshold
        return m

    def fit_decisions(self, outputs: QAOutputs, targets: Sequence[Sequence[str]]) -> dict[str, Any]:
        """v2.0 data: the no-answer threshold that maximises validation F1 (official find_best_thresh)."""
        if self.version != "2.0" or not len(outputs):
            return {}
        spans = [p.candidates[0].text if p.candidates else "" for p in outputs.predictions]
        margins = [p.null_margin for p in outputs.predictions]
        threshold, f1 = best_threshold(spans, margins, targets)
        self.null_threshold = float(threshold)
        return {"null_threshold": self.null_threshold, "validation_f1_at_threshold": f1}

    def warnings(self, outputs: Any) -> list[str]:
        return []

    # -- decoding -----------------------------------------------------------------------------
    def decode(self, outputs: Any, split: Any = None) -> list[dict[str, Any]]:
        if not isinstance(outputs, QAOutputs):
            if split is None:
                raise BertfitError("question answering decodes window outputs with their windows (pass the split)")
            outputs = self.gather(split, outputs)
        asked = outputs.windows.top_k or [None] * len(outputs)
        return [record(p, self.top_k if k is None else k) for p, k in zip(outputs.predictions, asked)]

    def explain_plan(self, tokenizer: Any, example: Any, max_length: int) -> Any:
        """The question and context in their windows (run together); targets: the best span's start and
        end probabilities in the window that holds it (softmax over the window's positions). The span is
        the highest start + end logit pair in the context, at most MAX_ANSWER_LENGTH tokens (no null answer)."""
        from bertfit.tasks.explaining import Target, pick, text_plan

        example = self.inputs([example])[0] if not isinstance(example, QAExample) else example
        # The question as prediction reads it (a long one cut to fit the window), so both see the same input.
        question = fit_questions(tokenizer, [example.text], max_length, self.doc_stride)[0][0]
        windows = tokenizer.encode_windows([question], [example.text_pair], max_length, self.doc_stride)[0]
        fields = [(("question", question), ("context", example.text_pair))] * len(windows)

        def choose(outputs: Tensor, which: Sequence[str] | None) -> list[Target]:
            best = (-float("inf"), 0, 0, 0)
            for f, window in enumerate(windows):
                context = np.flatnonzero(np.asarray([s == 1 for s in window.sequence_ids]))
                if not len(context):
                    continue
                start = outputs[f, context, 0].float().numpy()
                end = outputs[f, context, 1].float().numpy()
                score = start[:, None] + end[None, :]
                gap = np.arange(len(context))[None, :] - np.arange(len(context))[:, None]
                score[(gap < 0) | (gap >= MAX_ANSWER_LENGTH)] = -np.inf
                s, e = np.unravel_index(int(score.argmax()), score.shape)
                if score[s, e] > best[0]:
                    best = (float(score[s, e]), f, int(context[s]), int(context[e]))
            _, f, s, e = best
            length = len(windows[f].ids)
            a, b = windows[f].offsets[s][0], windows[f].offsets[e][1]
            info = {"of": "probability", "answer": example.text_pair[a:b], "start": a, "end": b}
            # "type" names the row the report counts words under: "answer start", never a bare "start" label
            targets = [Target(side, lambda out, k=k, t=t: torch.softmax(out[:, f, :length, k].float(), -1)[:, t],
                              {**info, "type": f"answer {side}"})
                       for k, (side, t) in enumerate((("start", s), ("end", e)))]
            return [targets[i] for i in pick(["start", "end"], which, "output")] if which else targets

        return text_plan(windows, fields, choose)

    def answer(self, record: Mapping[str, Any]) -> Any:
        return record["answer"]

    def agreement(self, reference: Any, outputs: Any, split: Any = None) -> tuple[str, float]:
        same = [a["answer"] == b["answer"] for a, b in zip(self.decode(reference, split), self.decode(outputs, split))]
        return "answers agree", float(np.mean(same)) if same else 1.0

    def display(self, record: Mapping[str, Any]) -> str:
        """One record on the terminal: the answer, its score and where it is in the context."""
        if record.get("no_answer"):
            return f"(no answer)  score {record['score']:.3f}"
        # With --top-k every line has both figures: the pipeline's score and the share among the listed answers.
        ranked = record.get("top_k") or [record]

        def where(r: Mapping[str, Any]) -> str:
            p = f", p {r['probability']:.3f}" if "probability" in r else ""
            return f"(score {r['score']:.3f}{p}, characters {r['start']}-{r['end']})"

        return "\n".join([f"{record['answer']}  {where(ranked[0])}"] + [f"  or: {r['answer']}  {where(r)}" for r in ranked[1:]])

    def objective(self) -> str:
        """For the report's first sentence (not "for 2 labels (start, end)": the labels are span ends)."""
        if self.version.startswith("2"):
            return "for extractive question answering (SQuAD v2.0: an answer span of the passage, or no answer)"
        return "for extractive question answering (SQuAD v1.1: an answer span of the passage)"

    def sample_inputs(self) -> list[Any]:
        return [{"question": "warm-up?", "context": "a warm-up passage"}]

    def probe_inputs(self, texts: Sequence[str]) -> list[Any]:
        return [{"question": t.split()[0] + "?", "context": t} for t in texts if t.strip()]

    def label_summary(self, labels: Sequence[Hashable]) -> dict[str, int]:
        answered = sum(1 for label in labels if label)
        return {"with an answer": answered, "without an answer": sum(1 for label in labels if label is not None) - answered}

    def columns(self, record: Mapping[str, Any]) -> dict[str, Any]:
        return {"answer": record["answer"], "score": record["score"], "start": record["start"], "end": record["end"]}

    def output_names(self) -> list[str]:
        return ["answer", "score", "start", "end"]

    def mistakes(self, outputs: QAOutputs, targets: Sequence[Sequence[str]], limit: int = 20) -> list[dict[str, Any]]:
        from bertfit.tasks.qa.squad_metric import score_question

        v2 = any(not t for t in targets)
        wrong = []
        for i, (p, refs) in enumerate(zip(outputs.predictions, targets)):
            em, f1 = score_question(p.text, refs, v2)
            if em < 1.0:
                wrong.append({"index": i, "true": " | ".join(dict.fromkeys(refs)) or "(no answer)",
                              "predicted": p.text or "(no answer)", "score": p.score, "f1": f1})
        wrong.sort(key=lambda m: -m["score"])
        return wrong[:limit]

    # -- report -------------------------------------------------------------------------------
    def format_metrics(self, m: Mapping[str, Any]) -> str:
        lines = [f"exact match {m['exact_match']:.2f}   F1 {m['f1']:.2f}   ({m['n']} questions, {m['windows']} windows)"]
        if "HasAns_total" in m:
            lines.append(f"has answer ({m['HasAns_total']}): EM {m['HasAns_exact']:.2f} F1 {m['HasAns_f1']:.2f}   "
                         f"no answer ({m['NoAns_total']}): EM {m['NoAns_exact']:.2f}")
        if np.isfinite(m.get("loss", float("nan"))):
            lines.append(f"loss {m['loss']:.4f}")
        return "\n".join(lines)

    def headline(self, m: Mapping[str, Any]) -> list[Any]:
        return ["exact match ", Strong(f"{m.get('exact_match', 0.0):.1f}"), ", F1 ", Strong(f"{m.get('f1', 0.0):.1f}"),
                f" over {fmt_int(m.get('n', 0))} questions. "]

    def report_sections(self, m: Mapping[str, Any], split: str, plots: Any, outputs: Any = None,
                        targets: Any = None) -> list[Any]:
        rows = [["all questions", fmt_int(m["n"]), f"{m['exact_match']:.2f}", f"{m['f1']:.2f}"]]
        if "HasAns_total" in m:
            rows.append(["with an answer", fmt_int(m["HasAns_total"]), f"{m['HasAns_exact']:.2f}", f"{m['HasAns_f1']:.2f}"])
            rows.append(["without an answer", fmt_int(m["NoAns_total"]), f"{m['NoAns_exact']:.2f}", f"{m['NoAns_f1']:.2f}"])
        blocks: list[Any] = [Table(["questions", "n", "exact match", "F1"], rows, ["l", "r", "r", "r"])]
        dist = m.get("context_tokens") or {}
        if dist:
            blocks.append(Paragraph([Strong("Contexts"), f": {fmt_int(dist['n'])} questions; context length in tokens "
                                     f"min {dist['min']}, median {dist['median']}, 90th percentile {dist['p90']}, "
                                     f"max {dist['max']}. {fmt_int(m.get('split_into_windows', 0))} contexts were "
                                     f"split into windows ({fmt_int(m.get('windows', 0))} windows in all)."]))
            by = m.get("mean_exact_match_by_windows") or {}
            if len(by) > 1:
                blocks.append(Table(["windows per question", "questions", "exact match"],
                                    [[k, fmt_int(v["n"]), f"{v['exact_match']:.2f}"] for k, v in by.items()],
                                    ["l", "r", "r"]))
        if m.get("null_threshold") is not None:
            blocks.append(Paragraph([f"No-answer threshold (tuned on validation): {m['null_threshold']:.3f}"]))
        if np.isfinite(m.get("loss", float("nan"))):
            blocks.append(Paragraph([f"Loss (per window): {fmt_score(m['loss'])}"]))
        return blocks


def _window_loss(outputs: Sequence[np.ndarray], targets: np.ndarray) -> float:
    """Mean over windows of (CE(start) + CE(end)) / 2, as the training loss."""
    if not len(outputs):
        return float("nan")
    total = 0.0
    for logits, (s, e) in zip(outputs, targets.tolist()):
        x = logits.astype(np.float64)
        top = x.max(axis=0)
        log_z = top + np.log(np.exp(x - top).sum(axis=0))
        total += (log_z[0] - x[s, 0] + log_z[1] - x[e, 1]) / 2
    return float(total / len(outputs))


def _distribution(lengths: np.ndarray) -> dict[str, int]:
    if not len(lengths):
        return {}
    return {"n": int(len(lengths)), "min": int(lengths.min()), "median": int(np.median(lengths)),
            "p90": int(np.percentile(lengths, 90)), "max": int(lengths.max())}


def _by_windows(per: Sequence[tuple[float, float]], counts: np.ndarray) -> dict[str, dict[str, float]]:
    """Exact match of questions by how many windows their context needed (1, 2, 3+)."""
    groups: dict[str, list[float]] = {}
    for (em, _), c in zip(per, counts.tolist()):
        groups.setdefault("3+" if c >= 3 else str(c), []).append(em)
    return {k: {"n": len(v), "exact_match": 100.0 * sum(v) / len(v)} for k, v in sorted(groups.items())}
