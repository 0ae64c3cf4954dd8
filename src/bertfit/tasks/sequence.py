"""What the sequence-level tasks share: one label cell per text (or text pair), read from
CSV/TSV/JSONL through the generic reader, and one output row per example from the [CLS] head.

Labels are read unparsed (``data.RAW_LABELS``) and parsed here by the task, so every rejected
label is a row-level error with its file and row, or a counted skip with ``--skip-bad-rows``, and
rows read = rows used + rows rejected still holds.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from bertfit.tasks import windows
from bertfit.batching import Batch, EncodedSplit, collate
from bertfit.tasks.windows import LongText

from bertfit.data import labelled as data_mod
from bertfit.data.labelled import Example, LoadReport, Rejection
from bertfit.errors import DataError
from bertfit.tasks.base import LabelProblem, Task

logger = logging.getLogger(__name__)


class SequenceTask(Task):
    """A task whose head reads the sentence vector ([CLS]): the encoder's last layer runs on [CLS] only."""

    head = "sequence"
    default_corpus = True

    @classmethod
    def read(cls, path: Any, settings: Any, options: Mapping[str, Any], known: Task | None = None) -> tuple[list[Example], LoadReport]:
        """A CSV/TSV/JSONL file of texts (pairs) and label cells, each label parsed by this task."""
        examples, report = read_raw(path, settings)
        get = settings.get if isinstance(settings, Mapping) else lambda k, d=None: getattr(settings, k, d)
        return parse_labels(known or cls, examples, report, options, skip_bad_rows=bool(get("skip_bad_rows", False)),
                            known=known), report

    def label_summary(self, labels: Sequence[Hashable]) -> dict[str, int]:
        return label_counts(self, labels)

    # -- long texts (windows.py): truncation strategies, or windows aggregated per text --------------
    def encode(self, tokenizer: Any, examples: Sequence[Any], max_length: int,
               settings: Mapping[str, Any] | None = None) -> EncodedSplit:
        """Each text's features as ``self.long_text`` reads it (the training settings' when training):
        one per text, or with windows several, whose targets repeat the text's (``gold``: per text)."""
        if settings is not None:
            self.long_text = LongText.from_settings(settings)
        texts = [e.text for e in examples]
        pairs = [e.text_pair or "" for e in examples] if any(e.text_pair is not None for e in examples) else None
        features = windows.encode(tokenizer, texts, pairs, max_length, self.long_text)
        labelled = bool(examples) and all(e.label is not None for e in examples)
        targets = self.targets([e.label for e in examples]) if labelled else None
        if not self.long_text.windowed:
            return EncodedSplit(features.encoded, targets, meta=features)
        return EncodedSplit(features.encoded, None if targets is None else targets[features.example_index], gold=targets,
                            example_index=features.example_index, meta=features)

    def _windowed(self, split: EncodedSplit) -> bool:
        return split.example_index is not None and isinstance(split.meta, windows.Features) and split.meta.settings.windowed

    def train_units(self, split: EncodedSplit) -> list[list[int]] | None:
        """With windows, a text's windows train together (one unit of the batch order)."""
        if not self._windowed(split):
            return None
        units: list[list[int]] = [[] for _ in range(split.meta.n_examples)]
        for feature, example in enumerate(split.example_index.tolist()):
            units[example].append(feature)
        return units

    def collate(self, split: EncodedSplit, indices: Sequence[int], pad_id: int, epoch: int | None = None) -> Batch:
        """With windows: the windows of the batch's texts, ``groups`` saying whose each is, and one
        target per text (the loss is the text's, on its windows' aggregated outputs)."""
        if not self._windowed(split) or split.gold is None:
            return super().collate(split, indices, pad_id, epoch)
        example_of = split.example_index[list(indices)]
        texts, groups = np.unique(example_of, return_inverse=True)
        batch = collate(split.encoded, indices, None, pad_id)
        batch.labels = torch.from_numpy(np.ascontiguousarray(np.asarray(split.gold)[texts]))
        batch.groups = torch.from_numpy(groups.astype(np.int64))
        return batch

    def batch_outputs(self, outputs: Tensor, batch: Batch) -> Tensor:
        if batch.groups is None:
            return outputs
        count = len(batch.labels) if batch.labels is not None else int(batch.groups.max()) + 1
        return windows.aggregate_torch(outputs, batch.groups, count, self.long_text.window_aggregate)

    def gather(self, split: EncodedSplit, outputs: Any) -> Any:
        """Windows' outputs → one row per text (mean or max of its windows' logits)."""
        return split.meta.gather(outputs) if self._windowed(split) else outputs


def reading_options(settings: Any) -> dict[str, Any]:
    """The settings a task's label parser reads (a TrainConfig, or the dict saved in task.json)."""
    get = settings.get if isinstance(settings, Mapping) else lambda k, d=None: getattr(settings, k, d)
    label_map = get("label_map")
    if isinstance(label_map, str):
        label_map = data_mod.parse_label_map(label_map)
    return {"label_map": label_map, "label_separator": get("label_separator", ",") or ","}


def read_raw(path: str | os.PathLike, settings: Any, *, require_labels: bool = True) -> tuple[list[Example], LoadReport]:
    """Examples with their label cells as written (strings, numbers, JSON lists)."""
    get = settings.get if isinstance(settings, Mapping) else lambda k, d=None: getattr(settings, k, d)
    return data_mod.read_examples(
        path, text_column=get("text_column"), pair_column=get("pair_column"), label_column=get("label_column"),
        label_map=data_mod.RAW_LABELS, require_labels=require_labels, skip_bad_rows=bool(get("skip_bad_rows", False)),
        encoding=get("encoding"), max_chars=get("max_chars", 100_000), header=get("header", True),
        columns=get("columns"))


def parse_labels(task: type[Task] | Task, examples: list[Example], report: LoadReport, options: Mapping[str, Any], *,
                 skip_bad_rows: bool, known: Task | None = None, parse: bool = True) -> list[Example]:
    """Each example's raw label parsed by ``task``; a bad one names its file and row, or is skipped and
    counted in ``report`` (which then still accounts for every row). ``known``: a trained task whose
    label space the labels must fit (validation, test and evaluate files). parse=False only checks
    labels parsed before against ``known``."""
    kept: list[Example] = []
    for e in examples:
        if e.label is None:
            kept.append(e)
            continue
        try:
            label = task.parse_label(e.label, options) if parse else e.label
            problem = known.check_label(label) if known is not None else None
        except LabelProblem as exc:
            problem = str(exc)
        if problem is None:
            kept.append(dataclasses.replace(e, label=label))
            continue
        report.rejected.append(Rejection(e.row, problem))
        report.rows_used -= 1
        if not skip_bad_rows:
            raise DataError(f"{report.path}, row {e.row}: {problem}. Fix or remove that row, or pass "
                            "--skip-bad-rows to skip such rows")
    if report.rejected and skip_bad_rows:
        report.rejected.sort(key=lambda r: r.row)
        logger.warning("%s", report.summary())
    if examples and not kept:
        first = "; ".join(f"row {r.row}: {r.reason}" for r in report.rejected[:3])
        raise DataError(f"{report.path}: no usable rows ({report.rows_read} read, all rejected); first problems: {first}")
    return kept


def preview(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text):,} characters)"


def split_cell(raw: object, separator: str) -> list[object]:
    """A label cell holding several values: a JSON list as it is, a string split on ``separator``."""
    if isinstance(raw, (list, tuple)):
        return list(raw)
    if isinstance(raw, str):
        return [part.strip() for part in raw.split(separator)] if separator in raw else [raw.strip()]
    return [raw]


def softmax(outputs: np.ndarray) -> np.ndarray:
    shifted = outputs - outputs.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def sigmoid(outputs: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(outputs, -60, 60)))


def label_counts(task: Task, labels: Sequence[Hashable]) -> dict[str, int]:
    """How often each output name occurs among ``labels`` (for the data summary)."""
    targets = task.targets(labels)
    if targets.ndim == 1:
        counts = np.bincount(targets, minlength=len(task.labels))
    else:
        counts = (targets != 0).sum(axis=0) if task.problem_type != "regression" else np.full(len(task.labels), len(targets))
    return {name: int(c) for name, c in zip(task.labels, counts)}
