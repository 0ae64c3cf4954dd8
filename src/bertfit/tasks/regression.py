"""Regression: one or several real-valued targets per text (or pair), e.g. a 0–5 similarity score.

A target cell is a number, a string of numbers split on --label-separator, or a JSON list; every
row must have the training data's number of targets, and NaN or infinite values are row errors.
Training standardises the targets: the loss is the mean squared error of (prediction − mean) / std
against (target − mean) / std, with mean and std per target from the training split (saved in the
run). The head is initialised to predict the mean (bias = mean, weights scaled by std), so its
outputs are on the targets' own scale: predict, export and transformers all return real values.
Metrics: Pearson, Spearman, RMSE, MAE, R² (averaged over targets, and per target).
"""

from __future__ import annotations

import math
import re
from typing import Any, ClassVar, Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bertfit.errors import ConfigError
from bertfit.report.document import Image, Paragraph, Strong, Table, fmt_int, fmt_score
from bertfit.tasks.base import LabelProblem
from bertfit.tasks.sequence import SequenceTask, preview, split_cell

#: A target cell as text: ASCII digits, '.' decimal point, optional sign and exponent (what float() reads
#: beyond this, e.g. '1_000', 'inf', Arabic-Indic digits, is refused with the row, not guessed at).
PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", re.ASCII)
#: Larger targets overflow the fp32 loss and statistics (their squares pass 3.4e38): the row is named instead.
MAX_TARGET = 1e15


class Regression(SequenceTask):
    name = "regression"
    problem_type = "regression"
    metric_names = ("pearson", "spearman", "r2", "rmse", "mae", "loss")
    default_metric = "pearson"
    lower_is_better = frozenset({"loss", "rmse", "mae"})
    headline_metrics: ClassVar[tuple[str, ...]] = ("loss", "pearson", "spearman", "rmse")
    mistake_score = "error"

    @classmethod
    def create(cls, labels: Sequence[str], settings: Mapping[str, Any]) -> "Regression":
        return cls(labels, separator=settings.get("label_separator") or ",")

    def configure(self, target_mean: Sequence[float] | None = None, target_std: Sequence[float] | None = None,
                  separator: str = ",", **state: Any) -> None:
        super().configure(**state)
        n = len(self.labels)
        self.mean = np.asarray(target_mean if target_mean is not None else [0.0] * n, dtype=np.float64)
        self.std = np.asarray(target_std if target_std is not None else [1.0] * n, dtype=np.float64)
        if self.mean.shape != (n,) or self.std.shape != (n,) or not (self.std > 0).all():
            raise ConfigError(f"task.json: target_mean/target_std must hold {n} values, std > 0")
        self.separator = separator

    def state(self) -> dict[str, Any]:
        return {"target_mean": self.mean.tolist(), "target_std": self.std.tolist(), "separator": self.separator}

    # -- reading ------------------------------------------------------------------------------
    @classmethod
    def parse_label(cls, raw: object, options: Mapping[str, Any]) -> Hashable:
        if isinstance(raw, dict):
            raise LabelProblem(f"target is an object {preview(raw)}, expected a number or a list of numbers")
        values = []
        for item in split_cell(raw, options.get("label_separator", ",")):
            if isinstance(item, bool) or item is None or isinstance(item, (list, dict)):
                raise LabelProblem(f"target {preview(item)} is not a number")
            if isinstance(item, str) and item.strip().lower().lstrip("+-") in ("nan", "inf", "infinity"):
                raise LabelProblem(f"target {preview(item)} is not a finite number (NaN or infinite)")
            if isinstance(item, str) and not PLAIN_NUMBER.fullmatch(item.strip()):
                # float() also takes '1_000', 'inf', 'nan' and other scripts' digits: refused, not guessed
                raise LabelProblem(f"target {preview(item)} is not a number (a plain one: digits 0-9, an optional sign, "
                                   "'.' as the decimal point, an optional exponent, e.g. 3.5, -2, 1e-3)")
            try:
                value = float(item.strip() if isinstance(item, str) else item)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise LabelProblem(f"target {preview(item)} is not a number") from None
            if not math.isfinite(value) or abs(value) > MAX_TARGET:
                raise LabelProblem(f"target {preview(item)} is {'not a finite number' if not math.isfinite(value) else 'too large'}"
                                   f" (at most {MAX_TARGET:g} in size: larger targets overflow the loss)")
            values.append(value)
        if not values:
            raise LabelProblem("target list is empty")
        return tuple(values)

    @classmethod
    def label_space(cls, labels: Sequence[Hashable], options: Mapping[str, Any]) -> list[str]:
        arities = {len(row) for row in labels}  # type: ignore[arg-type]
        arity = max(arities, key=lambda a: sum(len(row) == a for row in labels))  # type: ignore[arg-type]
        column = str(options.get("label_column") or "target")
        if arity > 1:
            import logging

            logging.getLogger(__name__).warning(
                "regression: %d targets per row (cells split on %r); if that separator is a decimal comma, write 3.5 "
                "for 3,5", arity, options.get("label_separator", ","))
        return [column] if arity == 1 else [f"{column}_{i + 1}" for i in range(arity)]

    def check_label(self, label: Hashable) -> str | None:
        if len(label) != len(self.labels):  # type: ignore[arg-type]
            return f"{len(label)} target value(s), but this task has {len(self.labels)} ({', '.join(self.labels)})"  # type: ignore[arg-type]
        return None

    def strata(self, labels: Sequence[Hashable]) -> list[str | None]:
        """Quantile bins of the first target: a split keeps the targets' distribution in every part."""
        first = np.asarray([row[0] for row in labels], dtype=np.float64)  # type: ignore[index]
        edges = np.unique(np.quantile(first, np.linspace(0, 1, 11)[1:-1])) if len(first) else np.zeros(0)
        return [f"q{int(b)}" for b in np.searchsorted(edges, first, side="right")]

    # -- encoding and training ----------------------------------------------------------------
    def targets(self, labels: Sequence[Hashable]) -> np.ndarray:
        return np.asarray(labels, dtype=np.float32).reshape(len(labels), len(self.labels))

    def prepare_training(self, settings: Mapping[str, Any], train_targets: np.ndarray) -> None:
        if settings.get("class_weights") is not None:
            raise ConfigError("class_weights applies to classification; regression has no classes")
        self.mean = train_targets.mean(axis=0).astype(np.float64)
        std = train_targets.std(axis=0).astype(np.float64)
        self.std = np.where(std > 0, std, 1.0)

    def init_head(self, model: Any) -> None:
        with torch.no_grad():
            model.classifier.weight.mul_(torch.tensor(self.std, dtype=torch.float32)[:, None])
            model.classifier.bias.copy_(torch.tensor(self.mean, dtype=torch.float32))

    def loss(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        mean = torch.tensor(self.mean, dtype=torch.float32, device=outputs.device)
        std = torch.tensor(self.std, dtype=torch.float32, device=outputs.device)
        # Σ squared error of the standardised targets over the B·L elements (transformers' MSELoss
        # mean, which squeezes one target), in fp32 under autocast too
        predicted = (outputs.float() - mean) / std
        total = F.mse_loss(predicted, ((targets.float() - mean) / std).view_as(predicted), reduction="sum")
        return total, torch.tensor(float(targets.numel()))

    # -- evaluation and decoding --------------------------------------------------------------
    def evaluate(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        pred, true = outputs.astype(np.float64), targets.astype(np.float64)
        per = {name: regression_metrics(pred[:, j], true[:, j]) for j, name in enumerate(self.labels)}
        result: dict[str, Any] = {key: float(np.mean([m[key] for m in per.values()]))
                                  for key in ("pearson", "spearman", "rmse", "mae", "r2")}
        z = (pred - self.mean) / self.std - (true - self.mean) / self.std
        result["loss"] = float((z**2).mean()) if len(true) else float("nan")
        result["n"] = len(true)
        result["per_target"] = per
        result["labels"] = list(self.labels)
        return result

    def agreement(self, reference: np.ndarray, outputs: np.ndarray, split: Any = None) -> tuple[str, float]:
        # Values never agree to the bit: count those within a tenth of the target's spread.
        close = (np.abs(outputs - reference) <= 0.1 * self.std).all(axis=1)
        return "values within 0.1 std", float(close.mean()) if len(close) else 1.0

    def decode(self, outputs: np.ndarray, split: Any = None) -> list[dict[str, Any]]:
        if len(self.labels) == 1:
            return [{"value": float(row[0])} for row in outputs]
        return [{"values": {name: float(v) for name, v in zip(self.labels, row)}} for row in outputs]

    def explain_targets(self, output: Tensor, which: Sequence[str] | None) -> list[Any]:
        """Each predicted value (the head's outputs are on the targets' own scale)."""
        from bertfit.tasks.explaining import Target, pick

        chosen = pick(self.labels, which, "target") or list(range(len(self.labels)))
        return [Target(self.labels[j], lambda out, j=j: out[:, 0, j].float(), {"of": "value"}) for j in chosen]

    def columns(self, record: Mapping[str, Any]) -> dict[str, Any]:
        if "value" in record:
            return {"prediction": record["value"]}
        return {f"pred_{name}": v for name, v in record["values"].items()}

    def mistakes(self, outputs: np.ndarray, targets: np.ndarray, limit: int = 20) -> list[dict[str, Any]]:
        error = np.abs((outputs - targets) / self.std).max(axis=1)  # the worst target, in std units
        order = np.argsort(-error, kind="stable")[:limit]
        fmt = lambda row: ", ".join(f"{v:.3g}" for v in row)  # noqa: E731
        return [{"index": int(i), "true": fmt(targets[i]), "predicted": fmt(outputs[i]),
                 "score": float(np.abs(outputs[i] - targets[i]).max())} for i in order]

    # -- report -------------------------------------------------------------------------------
    def format_metrics(self, m: Mapping[str, Any]) -> str:
        keys = ("pearson", "spearman", "rmse", "mae", "r2")
        width = max(8, *(len(name) for name in self.labels))
        lines = [f"{'':>{width}} " + " ".join(f"{k:>9}" for k in keys)]
        for name, s in m["per_target"].items():
            lines.append(f"{name:>{width}} " + " ".join(f"{s[k]:9.4f}" for k in keys))
        if len(self.labels) > 1:
            lines.append(f"{'mean':>{width}} " + " ".join(f"{m[k]:9.4f}" for k in keys))
        lines.append(f"{'n':>{width}} {m['n']:9d}   loss (standardised MSE) {m['loss']:.4f}")
        return "\n".join(lines)

    def headline(self, m: Mapping[str, Any]) -> list[Any]:
        return ["Pearson ", Strong(fmt_score(m.get("pearson"))), ", Spearman ", Strong(fmt_score(m.get("spearman"))),
                f", RMSE {fmt_score(m.get('rmse'))}, MAE {fmt_score(m.get('mae'))}, R² {fmt_score(m.get('r2'))}. "]

    def report_sections(self, m: Mapping[str, Any], split: str, plots: Any, outputs: Any = None,
                        targets: Any = None) -> list[Any]:
        keys = ("pearson", "spearman", "rmse", "mae", "r2")
        rows = [[name, *(fmt_score(s[k]) for k in keys), fmt_int(m["n"])] for name, s in m["per_target"].items()]
        blocks: list[Any] = [Table(["target", "Pearson", "Spearman", "RMSE", "MAE", "R²", "n"], rows,
                                   ["l", "r", "r", "r", "r", "r", "r"])]
        if plots is not None and outputs is not None and targets is not None:
            from bertfit.report.plots import plot_predicted_vs_true

            for j, name in enumerate(self.labels):
                image = plots.draw(f"regression_{split}_{j}", f"{split} predicted vs true ({name})",
                                   lambda path, title, j=j: plot_predicted_vs_true(targets[:, j], outputs[:, j], path, title))
                if image is not None:
                    blocks.append(Image(image, f"Predicted vs true and residuals ({split}, {name})"))
                elif plots.note:
                    blocks.append(Paragraph([plots.note], muted=True))
        return blocks


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties given their average rank (as scipy.stats.rankdata)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e - 1) / 2 + 1
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def regression_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman correlation (0 where a side is constant), RMSE, MAE and R²."""
    if len(true) == 0:
        return {k: float("nan") for k in ("pearson", "spearman", "rmse", "mae", "r2")}
    err = pred - true
    ss_tot = float(((true - true.mean()) ** 2).sum())
    return {
        "pearson": _pearson(pred, true),
        "spearman": _pearson(_ranks(pred), _ranks(true)),
        "rmse": float(np.sqrt((err**2).mean())),
        "mae": float(np.abs(err).mean()),
        "r2": float(1 - (err**2).sum() / ss_tot) if ss_tot > 0 else 0.0,
    }
