"""The task contract: everything that differs between uses of the one encoder lives behind it.

The trainer, predictor, exporter, report and server never ask which task they run; they call these
methods. A task instance carries what it learned from the training data (its label names, class or
positive weights, target scaling, decision thresholds); ``state()`` is saved in the run directory
(task.json, see artifact.py) and ``from_state`` rebuilds the same task for prediction.

Shapes: ``outputs`` are the head's raw outputs as a float array, one row per example; ``targets``
are what ``targets()`` built from parsed labels ((N,) int64 class ids, or (N, L) float32).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Hashable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor


class LabelProblem(ValueError):
    """A label cell this task cannot use; the message is the row-level reason shown to the user."""


class Task(ABC):
    name: ClassVar[str]  # registry key (--problem-type / --task value)
    head: ClassVar[str]  # key into heads.HEADS
    problem_type: ClassVar[str]  # the head's config.json problem_type (transformers' name)
    metric_names: ClassVar[tuple[str, ...]]  # what --metric may select the best checkpoint on
    default_metric: ClassVar[str]
    lower_is_better: ClassVar[frozenset[str]] = frozenset({"loss"})
    # Metrics shown in a progress line / eval record (a short subset of evaluate()'s keys).
    headline_metrics: ClassVar[tuple[str, ...]]

    def __init__(self, labels: Sequence[str], **state: Any) -> None:
        self.labels = [str(label) for label in labels]
        self.configure(**state)

    @classmethod
    def create(cls, labels: Sequence[str], settings: Mapping[str, Any]) -> "Task":
        """A fresh task for training, from its label space and the run's settings (TrainConfig.to_dict())."""
        return cls(labels)

    def configure(self, **state: Any) -> None:
        """Set what ``state()`` saved (thresholds, scaling); the default task has no state."""
        if state:
            raise ValueError(f"{self.name}: unknown task state {sorted(state)}")

    # -- reading ------------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def parse_label(cls, raw: object, options: Mapping[str, Any]) -> Hashable:
        """One label cell (a string, a number, a JSON list) → this task's label; LabelProblem if unusable.

        options: the reading settings (label_map, label_separator), from TrainConfig or the run.
        """

    @classmethod
    @abstractmethod
    def label_space(cls, labels: Sequence[Hashable], options: Mapping[str, Any]) -> list[str]:
        """The names of the head's outputs, from the training labels (sorted classes, target names)."""

    def check_label(self, label: Hashable) -> str | None:
        """Why ``label`` does not fit this (trained) task, e.g. a class it never saw; None if it fits."""
        return None

    def check_labels(self, examples: Sequence[Any], where: str) -> None:
        """Raise DataError if any example's label does not fit the trained task (all named at once)."""
        from bertfit.errors import DataError

        problems = [(e.row, p) for e in examples if e.label is not None and (p := self.check_label(e.label))]
        if problems:
            shown = "; ".join(f"row {row}: {p}" for row, p in problems[:5])
            raise DataError(f"{where}: {len(problems)} label(s) do not fit the training data ({shown}"
                            f"{'; ...' if len(problems) > 5 else ''})")

    def strata(self, labels: Sequence[Hashable]) -> list[str | None]:
        """The group each labelled example is stratified by when one file is split."""
        return [None if label is None else str(label) for label in labels]

    # -- encoding -----------------------------------------------------------------------------
    @abstractmethod
    def targets(self, labels: Sequence[Hashable]) -> np.ndarray:
        """Parsed labels → the training targets (a row per example)."""

    # -- training -----------------------------------------------------------------------------
    def prepare_training(self, settings: Mapping[str, Any], train_targets: np.ndarray) -> None:
        """Fit what the loss needs from the training targets (weights, scaling)."""

    def init_head(self, model: Any) -> None:
        """Adjust a freshly initialised head to the training targets (regression: their mean/scale)."""

    def loss_weight(self, targets: Tensor) -> Tensor:
        """The weight ``loss`` returns for these targets, known before the forward pass: the trainer
        sums it over a whole optimizer step to scale each micro-batch's loss."""
        return torch.tensor(float(targets.numel()))

    @abstractmethod
    def loss(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """(summed loss, weight) of a micro-batch; the trainer divides by the whole step's weight."""

    # -- evaluation ---------------------------------------------------------------------------
    @abstractmethod
    def evaluate(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        """Every metric of this task (with "loss"), JSON-able."""

    def fit_decisions(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        """After training, on validation outputs: tune decision rules (thresholds); returns what it chose."""
        return {}

    def calibrate(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        """After training, on validation outputs: fit how raw outputs become calibrated probabilities
        (a temperature, Platt scaling; kept in ``state()``); returns what it fitted. Default: nothing."""
        return {}

    def warnings(self, outputs: np.ndarray) -> list[str]:
        """Problems visible in a set of outputs (e.g. a model that collapsed to one class)."""
        return []

    def better(self, metric: str, value: float, best: float | None) -> bool:
        if best is None:
            return True
        return value < best if metric in self.lower_is_better else value > best

    # -- decoding -----------------------------------------------------------------------------
    @abstractmethod
    def decode(self, outputs: np.ndarray) -> list[dict[str, Any]]:
        """Outputs → one JSON-able prediction record per example (what predict and the server return)."""

    def answer(self, record: Mapping[str, Any]) -> Any:
        """The record's answer alone (what ``TextClassifier.predict`` returns per text)."""
        return next(iter(record.values()))

    def agreement(self, reference: np.ndarray, outputs: np.ndarray) -> tuple[str, float]:
        """How often two models' outputs give the same answer (int8 vs fp32): (what is compared, fraction)."""
        import json

        same = [json.dumps(self.answer(a), sort_keys=True) == json.dumps(self.answer(b), sort_keys=True)
                for a, b in zip(self.decode(reference), self.decode(outputs))]
        return "labels agree", float(np.mean(same)) if same else 1.0

    def probabilities(self, outputs: np.ndarray) -> np.ndarray:
        """Per-output probabilities, for tasks that have them."""
        from bertfit.errors import BertfitError

        raise BertfitError(f"a {self.name} model predicts values, not probabilities; use predict()")

    @abstractmethod
    def columns(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """A prediction record as flat file columns (predict --file writes these)."""

    def output_names(self) -> list[str]:
        """Column names ``columns`` writes, in order."""
        return list(self.columns(self.decode(np.zeros((1, len(self.labels)), dtype=np.float32))[0]))

    @abstractmethod
    def mistakes(self, outputs: np.ndarray, targets: np.ndarray, limit: int = 20) -> list[dict[str, Any]]:
        """The worst errors, most confident (or largest) first: [{"index", "true", "predicted", "score"}]."""

    def state(self) -> dict[str, Any]:
        """What ``configure`` needs to rebuild this task for prediction (saved as task.json)."""
        return {}

    # -- report -------------------------------------------------------------------------------
    @abstractmethod
    def format_metrics(self, metrics: Mapping[str, Any]) -> str:
        """The metrics as a plain-text table (the CLI prints it)."""

    @abstractmethod
    def report_sections(self, metrics: Mapping[str, Any], split: str, plots: Any, outputs: Any = None,
                        targets: Any = None) -> list[Any]:
        """Report blocks for one split's results (report.document blocks). plots: a report.Plotter or
        None; outputs/targets: that split's arrays, for plots of every prediction (may be None)."""

    @abstractmethod
    def headline(self, metrics: Mapping[str, Any]) -> list[Any]:
        """The summary sentence's figures for the headline split (report.document inline parts)."""
