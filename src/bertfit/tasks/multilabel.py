"""Multi-label classification: any number of labels per text, one sigmoid per label.

A label cell is a JSON list (JSON lines) or a string split on --label-separator (default ","), e.g.
"anger,joy"; an empty JSON list means that no label applies. Each item may be mapped by
--label-map. Loss: binary cross-entropy, with optional per-label positive weights (--class-weights
balanced = negatives / positives per label, or explicit values). Decisions: one threshold per
label, tuned on the validation split to maximise that label's F1 (saved in the run and used by
predict, evaluate, serve and export's users), or one fixed global --threshold.
"""

from __future__ import annotations

from typing import Any, ClassVar, Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bertfit.data.files import sort_labels
from bertfit.tasks.calibration import expected_calibration_error, fit_platt, per_label, reliability
from bertfit.errors import ConfigError
from bertfit.report.document import Paragraph, Strong, Table, finite, fmt_int, fmt_score
from bertfit.tasks.base import LabelProblem
from bertfit.tasks.multilabel_settings import MULTILABEL_SETTINGS
from bertfit.tasks.sequence import SequenceTask, preview, sigmoid, split_cell

DEFAULT_THRESHOLD = 0.5


class MultiLabel(SequenceTask):
    name = "multi-label"
    problem_type = "multi_label_classification"
    metric_names = ("macro_f1", "micro_f1", "samples_f1", "subset_accuracy", "hamming_loss", "loss")
    default_metric = "macro_f1"
    lower_is_better = frozenset({"loss", "hamming_loss"})
    headline_metrics: ClassVar[tuple[str, ...]] = ("loss", "micro_f1", "macro_f1", "samples_f1")
    mistake_score = "confidence"
    settings = MULTILABEL_SETTINGS  # --threshold

    @classmethod
    def create(cls, labels: Sequence[str], settings: Mapping[str, Any]) -> "MultiLabel":
        return cls(labels, threshold=settings.get("threshold"), separator=settings.get("label_separator") or ",")

    def configure(self, thresholds: Sequence[float] | None = None, threshold: float | None = None,
                  separator: str = ",", platt: Sequence[Sequence[float]] | None = None, **state: Any) -> None:
        super().configure(**state)
        if thresholds is not None and len(thresholds) != len(self.labels):
            raise ConfigError(f"task.json: {len(thresholds)} thresholds for {len(self.labels)} labels")
        if platt is not None and (len(platt) != len(self.labels) or any(len(p) != 2 or not p[0] > 0 for p in platt)):
            raise ConfigError(f"task.json: platt must be one [a > 0, b] per label ({len(self.labels)} labels)")
        # Per-label Platt scaling fitted on validation after training (calibration.py): z -> a z + b.
        self.platt = None if platt is None else np.asarray(platt, dtype=np.float64)
        # threshold: a fixed global threshold (--threshold); None = tuned per label on validation.
        self.fixed_threshold = threshold
        self.thresholds = np.asarray(thresholds, dtype=np.float64) if thresholds is not None else None
        self.separator = separator
        self.pos_weight: Tensor | None = None
        self.prevalence: np.ndarray | None = None  # each label's share of the training rows

    def state(self) -> dict[str, Any]:
        out = {"thresholds": None if self.thresholds is None else self.thresholds.tolist(),
               "threshold": self.fixed_threshold, "separator": self.separator}
        if self.platt is not None:
            out["platt"] = self.platt.tolist()
        return out

    def scaled(self, outputs: np.ndarray) -> np.ndarray:
        """The logits the probabilities come from: each label's Platt scaling applied, if fitted."""
        if self.platt is None:
            return outputs
        return (np.asarray(outputs, dtype=np.float64) * self.platt[:, 0] + self.platt[:, 1]).astype(np.float32)

    def calibrate(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        """Per-label Platt scaling on validation; the thresholds are tuned afterwards on the calibrated
        probabilities (fit_decisions), so decisions stay what the tuning makes them."""
        self.platt = np.array([fit_platt(outputs[:, j], targets[:, j]) for j in range(len(self.labels))])
        return {"platt": "per label"}

    def calibration_summary(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        conf, hit = per_label(sigmoid(outputs), targets)
        out: dict[str, Any] = {"method": "platt" if self.platt is not None else "none",
                               "ece_uncalibrated": expected_calibration_error(conf, hit),
                               "log_loss_uncalibrated": _bce(outputs, targets),
                               "bins_uncalibrated": reliability(conf, hit)}
        if self.platt is not None:
            conf, hit = per_label(sigmoid(self.scaled(outputs)), targets)
            out.update(ece=expected_calibration_error(conf, hit), log_loss=_bce(self.scaled(outputs), targets),
                       bins=reliability(conf, hit))
        return out

    # -- reading ------------------------------------------------------------------------------
    @classmethod
    def parse_label(cls, raw: object, options: Mapping[str, Any]) -> Hashable:
        if isinstance(raw, dict):
            raise LabelProblem(f"label is an object {preview(raw)}, expected a list of labels")
        mapping = options.get("label_map")
        items = []
        for item in split_cell(raw, options.get("label_separator", ",")):
            if isinstance(item, (list, dict)) or item is None or isinstance(item, bool):
                raise LabelProblem(f"label list holds {preview(item)}, expected label names or ids")
            if isinstance(item, float):
                if not np.isfinite(item):
                    raise LabelProblem(f"label list holds the number {item}")
                item = str(int(item)) if item.is_integer() else str(item)
            text = str(item).strip()
            if not text:
                raise LabelProblem(f"label list {preview(raw)} has an empty item (a doubled or trailing separator?)")
            if mapping is not None:
                if text not in mapping:
                    raise LabelProblem(f"label {preview(text)} is not in the label map; add it to --label-map")
                text = mapping[text]
            separator = options.get("label_separator", ",")
            if separator in text:  # a JSON-list item, or a mapped name: predictions join names with it
                raise LabelProblem(f"label name {preview(text)} holds the separator {separator!r}, so predictions "
                                   "written back would be ambiguous; rename it, or pass another --label-separator")
            items.append(text)
        return tuple(sort_labels(set(items)))

    @classmethod
    def label_space(cls, labels: Sequence[Hashable], options: Mapping[str, Any]) -> list[str]:
        return sort_labels({item for row in labels for item in row})  # type: ignore[union-attr]

    def check_label(self, label: Hashable) -> str | None:
        known = set(self.labels)
        unknown = [item for item in label if item not in known]  # type: ignore[union-attr]
        if unknown:
            return (f"label {preview(unknown[0])} in the list was not seen in training "
                    f"(labels: {', '.join(self.labels[:20])}{', ...' if len(self.labels) > 20 else ''})")
        return None

    def strata(self, labels: Sequence[Hashable]) -> list[str | None]:
        # A row's rarest label: strata of whole label sets would be mostly singletons, which the
        # splitter keeps in training, so rare labels would never be evaluated.
        counts: dict[str, int] = {}
        for row in labels:
            for item in row or ():  # type: ignore[union-attr]
                counts[item] = counts.get(item, 0) + 1
        return [None if row is None else min(row, key=lambda item: (counts[item], item)) if row else ""  # type: ignore[arg-type]
                for row in labels]

    # -- encoding and training ----------------------------------------------------------------
    def targets(self, labels: Sequence[Hashable]) -> np.ndarray:
        index = {label: i for i, label in enumerate(self.labels)}
        out = np.zeros((len(labels), len(self.labels)), dtype=np.float32)
        for row, items in enumerate(labels):
            out[row, [index[item] for item in items]] = 1.0  # type: ignore[union-attr]
        return out

    def prepare_training(self, settings: Mapping[str, Any], train_targets: np.ndarray) -> None:
        self.prevalence = train_targets.mean(axis=0).astype(np.float64) if len(train_targets) else None
        spec = settings.get("class_weights")
        if spec is None:
            self.pos_weight = None
            return
        positives = train_targets.sum(axis=0)
        if spec == "balanced":  # negatives / positives per label, 1 for a label never positive
            weights = np.where(positives > 0, (len(train_targets) - positives) / np.maximum(positives, 1), 1.0)
        elif isinstance(spec, dict):
            unknown = sorted(set(spec) - set(self.labels))
            if unknown:
                raise ConfigError(f"class_weights names unknown label(s) {unknown}; labels are {self.labels}")
            weights = np.array([float(spec.get(label, 1.0)) for label in self.labels])
        else:
            if len(spec) != len(self.labels):
                raise ConfigError(f"class_weights has {len(spec)} values but there are {len(self.labels)} labels")
            weights = np.array([float(w) for w in spec])
        if (weights < 0).any() or not np.isfinite(weights).all():
            raise ConfigError(f"class_weights must be finite and non-negative, got {weights.tolist()}")
        self.pos_weight = torch.tensor(weights, dtype=torch.float32)

    def init_head(self, model: Any) -> None:
        """Start each label's bias at the log-odds of its share of the training rows: a fresh head
        then predicts the prior (loss ~0.15 on 28 rare labels instead of 0.69), so the first hundreds
        of steps are not spent pushing every bias down before anything else is learned."""
        if self.prevalence is None:
            return
        p = np.clip(self.prevalence, 1e-4, 1 - 1e-4)
        with torch.no_grad():
            model.classifier.bias.copy_(torch.tensor(np.log(p / (1 - p)), dtype=torch.float32))

    def loss(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        weight = self.pos_weight
        if weight is not None and weight.device != outputs.device:
            weight = self.pos_weight = weight.to(outputs.device)
        # Σ BCE over the B·L elements (transformers' BCEWithLogitsLoss mean), in fp32 under autocast too
        total = F.binary_cross_entropy_with_logits(outputs.float(), targets.float(), pos_weight=weight, reduction="sum")
        return total, torch.tensor(float(targets.numel()))

    # -- decisions ----------------------------------------------------------------------------
    def current_thresholds(self, outputs: np.ndarray | None = None, targets: np.ndarray | None = None) -> np.ndarray:
        if self.fixed_threshold is not None:
            return np.full(len(self.labels), self.fixed_threshold)
        if self.thresholds is not None:
            return self.thresholds
        if outputs is not None and targets is not None:  # during training: tuned on the split itself
            return tune_thresholds(sigmoid(self.scaled(outputs)), targets)
        return np.full(len(self.labels), DEFAULT_THRESHOLD)

    def fit_decisions(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        if self.fixed_threshold is not None:
            return {"threshold": self.fixed_threshold}
        self.thresholds = tune_thresholds(sigmoid(self.scaled(outputs)), targets)
        return {"thresholds": dict(zip(self.labels, self.thresholds.round(4).tolist()))}

    # -- evaluation and decoding --------------------------------------------------------------
    def evaluate(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        proba = sigmoid(self.scaled(outputs))
        thresholds = self.current_thresholds(outputs, targets)
        result = multilabel_metrics(proba >= thresholds, targets, self.labels)
        result["loss"] = _bce(self.scaled(outputs), targets)
        if len(targets):
            result["calibration"] = self.calibration_summary(outputs, targets)
        fixed = multilabel_metrics(proba >= DEFAULT_THRESHOLD, targets, self.labels)
        result["at_0.5"] = {k: fixed[k] for k in ("micro_f1", "macro_f1", "samples_f1", "subset_accuracy")}
        result["thresholds"] = dict(zip(self.labels, np.round(thresholds, 4).tolist()))
        result["threshold_source"] = ("fixed" if self.fixed_threshold is not None else
                                      "tuned on validation" if self.thresholds is not None else "tuned on this split")
        return result

    def probabilities(self, outputs: np.ndarray) -> np.ndarray:
        return sigmoid(self.scaled(outputs))

    def decode(self, outputs: np.ndarray, split: Any = None) -> list[dict[str, Any]]:
        proba = sigmoid(self.scaled(outputs))
        chosen = proba >= self.current_thresholds()
        return [{"labels": [label for label, on in zip(self.labels, row_on) if on],
                 "probabilities": {label: float(p) for label, p in zip(self.labels, row)}}
                for row, row_on in zip(proba, chosen)]

    def explain_targets(self, output: Tensor, which: Sequence[str] | None) -> list[Any]:
        """Each label over its threshold (none over: the most probable one), as its calibrated probability."""
        from bertfit.tasks.explaining import Target, pick

        platt = torch.tensor(self.platt if self.platt is not None else [[1.0, 0.0]] * len(self.labels),
                             dtype=torch.float32)
        proba = torch.sigmoid(output.float() * platt[:, 0] + platt[:, 1]).numpy()
        chosen = pick(self.labels, which, "label") or \
            [int(j) for j in np.flatnonzero(proba >= self.current_thresholds())] or [int(proba.argmax())]
        return [Target(self.labels[j], lambda out, j=j: torch.sigmoid(out[:, 0, j].float() * platt[j, 0] + platt[j, 1]),
                       {"of": "probability"}) for j in chosen]

    def columns(self, record: Mapping[str, Any]) -> dict[str, Any]:
        return {"labels": self.separator.join(record["labels"]),
                **{f"prob_{label}": p for label, p in record["probabilities"].items()}}

    def mistakes(self, outputs: np.ndarray, targets: np.ndarray, limit: int = 20) -> list[dict[str, Any]]:
        """The most confident wrong label decisions: a label given with a high probability that is not
        true, or a true label given a very low one."""
        proba = sigmoid(self.scaled(outputs))
        predicted = proba >= self.current_thresholds()
        truth = targets > 0.5
        confidence = np.where(predicted, proba, 1 - proba)
        rows, cols = np.nonzero(predicted != truth)
        order = np.argsort(-confidence[rows, cols], kind="stable")[:limit]
        out = []
        for r, c in zip(rows[order], cols[order]):
            sign = "+" if predicted[r, c] else "−"
            out.append({"index": int(r), "true": ", ".join(np.asarray(self.labels)[truth[r]]) or "(none)",
                        "predicted": f"{sign}{self.labels[c]} (p={proba[r, c]:.3f})", "score": float(confidence[r, c])})
        return out

    # -- report -------------------------------------------------------------------------------
    def format_metrics(self, m: Mapping[str, Any]) -> str:
        width = max(12, *(len(label) for label in self.labels))
        lines = [f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9} {'threshold':>9}", ""]
        for label in self.labels:
            s = m["per_label"][label]
            lines.append(f"{label:>{width}} {s['precision']:9.4f} {s['recall']:9.4f} {s['f1']:9.4f} "
                         f"{s['support']:9d} {m['thresholds'][label]:9.4f}")
        lines.append("")
        for key in ("micro_f1", "macro_f1", "samples_f1", "subset_accuracy", "hamming_loss", "loss"):
            lines.append(f"{key:>{width}} {m[key]:9.4f}")
        fixed = m.get("at_0.5") or {}
        if fixed:
            lines.append(f"{'at 0.5':>{width}} micro-F1 {fixed['micro_f1']:.4f}, macro-F1 {fixed['macro_f1']:.4f}")
        return "\n".join(lines)

    def headline(self, m: Mapping[str, Any]) -> list[Any]:
        return ["micro-F1 ", Strong(fmt_score(m.get("micro_f1"))), ", macro-F1 ", Strong(fmt_score(m.get("macro_f1"))),
                f", samples-F1 {fmt_score(m.get('samples_f1'))}, subset accuracy {fmt_score(m.get('subset_accuracy'))} "
                f"(thresholds {m.get('threshold_source', '')}). "]

    def report_sections(self, m: Mapping[str, Any], split: str, plots: Any, outputs: Any = None,
                        targets: Any = None) -> list[Any]:
        rows = [[label, fmt_score(s["precision"]), fmt_score(s["recall"]), fmt_score(s["f1"]), fmt_int(s["support"]),
                 fmt_score(m["thresholds"][label])] for label, s in m["per_label"].items()]
        blocks: list[Any] = [Table(["label", "precision", "recall", "F1", "support", "threshold"], rows,
                                   ["l", "r", "r", "r", "r", "r"])]
        fixed = m.get("at_0.5") or {}
        summary = [[Strong(key.replace("_", " ")), fmt_score(m[key]), fmt_score(fixed.get(key)) if key in fixed else ""]
                   for key in ("micro_f1", "macro_f1", "samples_f1", "subset_accuracy", "hamming_loss")]
        blocks.append(Table(["metric", f"thresholds {m.get('threshold_source', '')}", "fixed 0.5"], summary,
                            ["l", "r", "r"]))
        if finite(m.get("loss")):
            blocks.append(Paragraph([f"Loss (binary cross-entropy per label): {float(m['loss']):.4f}"]))
        from bertfit.tasks.classify import calibration_blocks

        return blocks + calibration_blocks(m.get("calibration"), split, plots)


def _bce(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean binary cross-entropy per (text, label) of sigmoid(logits)."""
    if not len(targets):
        return float("nan")
    logp, log1mp = -np.logaddexp(0, -logits), -np.logaddexp(0, logits)
    return float(-(targets * logp + (1 - targets) * log1mp).mean())


def tune_thresholds(proba: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per label, the threshold that maximises F1 on (proba, targets): the midpoint between the lowest
    score kept positive and the next one down (so it does not sit on a training point). A label
    with no positives, or whose best F1 is 0, keeps 0.5."""
    n, num_labels = proba.shape
    out = np.full(num_labels, DEFAULT_THRESHOLD)
    for j in range(num_labels):
        truth = targets[:, j] > 0.5
        positives = int(truth.sum())
        if positives == 0 or n == 0:
            continue
        order = np.argsort(-proba[:, j], kind="stable")
        scores, hits = proba[order, j], truth[order]
        tp = np.cumsum(hits)
        k = np.arange(1, n + 1)
        f1 = 2 * tp / (k + positives)
        # A cut can only fall between distinct scores: ties go together.
        valid = np.append(scores[1:] < scores[:-1], True)
        f1 = np.where(valid, f1, -1.0)
        best = int(np.argmax(f1))
        if f1[best] <= 0:
            continue
        below = scores[best + 1] if best + 1 < n else 0.0
        out[j] = float((scores[best] + below) / 2)
    return out


def multilabel_metrics(predicted: np.ndarray, targets: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """micro/macro/samples F1, per-label precision/recall/F1/support, subset accuracy and Hamming loss,
    as scikit-learn computes them with zero_division=0."""
    pred = np.asarray(predicted, dtype=bool)
    true = np.asarray(targets) > 0.5
    n = len(true)
    tp = (pred & true).sum(axis=0)
    fp = (pred & ~true).sum(axis=0)
    fn = (~pred & true).sum(axis=0)

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
        return np.divide(num, den, out=np.zeros_like(num), where=den != 0)

    precision, recall, f1 = ratio(tp, tp + fp), ratio(tp, tp + fn), ratio(2 * tp, 2 * tp + fp + fn)
    row_tp, row_pred, row_true = (pred & true).sum(axis=1), pred.sum(axis=1), true.sum(axis=1)
    micro = float(ratio(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum()))
    return {
        "micro_f1": micro,
        "macro_f1": float(f1.mean()) if len(labels) else 0.0,
        "samples_f1": float(ratio(2 * row_tp, row_pred + row_true).mean()) if n else 0.0,
        "subset_accuracy": float((pred == true).all(axis=1).mean()) if n else 0.0,
        "hamming_loss": float((pred != true).mean()) if n else 0.0,
        "micro_precision": float(ratio(tp.sum(), tp.sum() + fp.sum())),
        "micro_recall": float(ratio(tp.sum(), tp.sum() + fn.sum())),
        "n": n,
        "per_label": {label: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                              "support": int(true[:, i].sum())} for i, label in enumerate(labels)},
        "labels": list(labels),
    }
