"""Single-label classification: one class per text (or pair), softmax over the classes.

Labels are strings (numbers are read as their text), optionally mapped by --label-map; the classes
are the training labels, sorted (numerically when they are all numbers). Loss: cross-entropy with
optional class weights ("balanced" = n / (K · count_k), as scikit-learn). Metrics: accuracy, macro-
and weighted-F1, per-class precision/recall/F1 and the confusion matrix.
"""

from __future__ import annotations

from typing import Any, ClassVar, Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bertfit.data import labelled as data_mod
from bertfit.data.files import sort_labels
from bertfit.tasks.calibration import expected_calibration_error, fit_temperature, reliability, softmax_nll, top_label
from bertfit.errors import ConfigError, DataError
from bertfit.tasks.metrics import classification_metrics, format_metrics_table, predicted_class_share
from bertfit.report.document import Image, Paragraph, Strong, Table, finite, fmt_int, fmt_score
from bertfit.tasks.base import LabelProblem
from bertfit.tasks.sequence import SequenceTask, preview, softmax


class SingleLabel(SequenceTask):
    name = "single-label"
    problem_type = "single_label_classification"
    metric_names = ("macro_f1", "accuracy", "weighted_f1", "loss")
    default_metric = "macro_f1"
    headline_metrics: ClassVar[tuple[str, ...]] = ("loss", "accuracy", "macro_f1", "weighted_f1")
    mistake_score = "confidence"

    def configure(self, temperature: float | None = None, **state: Any) -> None:
        super().configure(**state)
        self.class_weight: Tensor | None = None
        if temperature is not None and not (isinstance(temperature, (int, float)) and 0 < temperature < 1e6):
            raise ConfigError(f"task.json: temperature must be a positive number, got {temperature!r}")
        # Fitted on validation after training (calibration.py); None: the raw softmax.
        self.temperature = None if temperature is None else float(temperature)

    def state(self) -> dict[str, Any]:
        return {} if self.temperature is None else {"temperature": self.temperature}

    def scaled(self, outputs: np.ndarray) -> np.ndarray:
        """The logits the probabilities come from: divided by the fitted temperature, if any."""
        return outputs if self.temperature is None else np.asarray(outputs) / self.temperature

    # -- reading ------------------------------------------------------------------------------
    @classmethod
    def parse_label(cls, raw: object, options: Mapping[str, Any]) -> Hashable:
        if isinstance(raw, (list, tuple, dict)):
            if isinstance(raw, (list, tuple)) and len(raw) == 0:
                raise LabelProblem("label is an empty list, but single-label classification needs exactly one label")
            raise LabelProblem(f"label is {preview(raw)}, expected one label; for several labels per text use "
                               "--problem-type multi-label")
        if isinstance(raw, bool):
            text = "true" if raw else "false"
        elif isinstance(raw, float):
            if not np.isfinite(raw):
                raise LabelProblem(f"label is a number ({raw}), expected a string or a finite number")
            text = str(int(raw)) if raw.is_integer() else str(raw)
        else:
            text = str(raw).strip()
        mapping = options.get("label_map")
        if mapping is not None:
            if text not in mapping:
                keys = sort_labels(mapping)
                shown = ", ".join(keys[:20]) + (", ..." if len(keys) > 20 else "")
                raise LabelProblem(f"label {preview(text)} is not in the label map (keys: {shown}); add it to --label-map")
            text = mapping[text]
        return text

    @classmethod
    def label_space(cls, labels: Sequence[Hashable], options: Mapping[str, Any]) -> list[str]:
        names = data_mod.label_names(labels)  # type: ignore[arg-type]
        if len(names) < 2:
            raise DataError(f"the training data has only one label ({names}); a classifier needs at least two")
        return names

    def check_labels(self, examples: Sequence[Any], where: str) -> None:
        # Every unseen class at once, with its rows (a row-level check would stop at the first).
        data_mod.check_known_labels(examples, self.labels, where)

    @property
    def _index(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}

    # -- encoding and training ----------------------------------------------------------------
    def targets(self, labels: Sequence[Hashable]) -> np.ndarray:
        index = self._index
        return np.fromiter((index[label] for label in labels), dtype=np.int64, count=len(labels))

    def prepare_training(self, settings: Mapping[str, Any], train_targets: np.ndarray) -> None:
        self.class_weight = class_weight_vector(settings.get("class_weights"), self.labels, train_targets)

    def loss_weight(self, targets: Tensor) -> Tensor:
        if self.class_weight is None:
            return torch.tensor(float(len(targets)))
        return self.class_weight.to(targets.device)[targets].sum()

    def loss(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        weight = self.class_weight
        if weight is not None and weight.device != outputs.device:
            weight = self.class_weight = weight.to(outputs.device)
        # Σ w_y · nll over Σ w_y (transformers' mean for unit weights); a sum and its weight, so a
        # step split into micro-batches or processes divides by the whole step's weight
        logits = outputs.float()  # the loss in fp32 under autocast too
        total = F.cross_entropy(logits, targets, weight=weight, reduction="sum")
        return total, weight[targets].sum() if weight is not None else torch.tensor(float(len(targets)))

    # -- evaluation and decoding --------------------------------------------------------------
    def evaluate(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        y = np.asarray(targets)
        loss = softmax_nll(outputs, y, self.temperature or 1.0)
        result = classification_metrics(y.tolist(), outputs.argmax(axis=1).tolist(), self.labels, loss=loss)
        if len(y):
            result["calibration"] = self.calibration_summary(outputs, y)
        return result

    def calibration_summary(self, outputs: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        """ECE and log-loss of the raw softmax and (when fitted) of the calibrated one, with the
        reliability bins of both (the report draws them)."""
        raw_conf, raw_correct = top_label(softmax(outputs), y)
        out: dict[str, Any] = {"method": "temperature" if self.temperature is not None else "none",
                               "ece_uncalibrated": expected_calibration_error(raw_conf, raw_correct),
                               "log_loss_uncalibrated": softmax_nll(outputs, y),
                               "bins_uncalibrated": reliability(raw_conf, raw_correct)}
        if self.temperature is not None:
            conf, correct = top_label(softmax(self.scaled(outputs)), y)
            out.update(temperature=self.temperature, ece=expected_calibration_error(conf, correct),
                       log_loss=softmax_nll(outputs, y, self.temperature), bins=reliability(conf, correct))
        return out

    def calibrate(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        self.temperature = fit_temperature(outputs, targets)
        return {"temperature": round(self.temperature, 4)}

    def warnings(self, outputs: np.ndarray) -> list[str]:
        share = predicted_class_share(outputs.argmax(axis=1), len(self.labels)) if len(outputs) else [0.0]
        if max(share) > 0.95 and len(self.labels) > 1:
            top = self.labels[int(np.argmax(share))]
            return [f"the model predicts {top!r} for {max(share):.0%} of the validation set (collapsed to one class); "
                    "try a lower --lr, class weights, or more steps"]
        return []

    def probabilities(self, outputs: np.ndarray) -> np.ndarray:
        return softmax(self.scaled(outputs))

    def decode(self, outputs: np.ndarray, split: Any = None) -> list[dict[str, Any]]:
        proba = softmax(self.scaled(outputs))
        records = []
        for row in proba:
            best = int(row.argmax())
            records.append({"label": self.labels[best], "confidence": float(row[best]),
                            "probabilities": {label: float(p) for label, p in zip(self.labels, row)}})
        return records

    def explain_targets(self, output: Tensor, which: Sequence[str] | None) -> list[Any]:
        """The predicted class's probability (or the named classes'), as ``decode`` computes it."""
        from bertfit.tasks.explaining import Target, pick

        temperature = self.temperature or 1.0
        chosen = pick(self.labels, which, "class") or [int(output.argmax())]
        return [Target(self.labels[c], lambda out, c=c: torch.softmax(out[:, 0].float() / temperature, -1)[:, c],
                       {"of": "probability"}) for c in chosen]

    def columns(self, record: Mapping[str, Any]) -> dict[str, Any]:
        return {"label": record["label"], "confidence": record["confidence"],
                **{f"prob_{label}": p for label, p in record["probabilities"].items()}}

    def mistakes(self, outputs: np.ndarray, targets: np.ndarray, limit: int = 20) -> list[dict[str, Any]]:
        proba = softmax(self.scaled(outputs))
        predicted = proba.argmax(axis=1)
        wrong = np.flatnonzero(predicted != np.asarray(targets))
        wrong = wrong[np.argsort(-proba[wrong, predicted[wrong]], kind="stable")][:limit]
        return [{"index": int(i), "true": self.labels[targets[i]], "predicted": self.labels[predicted[i]],
                 "score": float(proba[i, predicted[i]])} for i in wrong]

    # -- report -------------------------------------------------------------------------------
    def format_metrics(self, metrics: Mapping[str, Any]) -> str:
        return format_metrics_table(metrics)

    def headline(self, m: Mapping[str, Any]) -> list[Any]:
        parts: list[Any] = ["accuracy ", Strong(fmt_score(m.get("accuracy"))),
                            f" ({100 * float(m.get('accuracy', 0.0)):.1f}%), macro-F1 ", Strong(fmt_score(m.get("macro_f1"))),
                            f", weighted-F1 {fmt_score(m.get('weighted_f1'))}. "]
        scored = [(name, s["f1"]) for name, s in (m.get("per_class") or {}).items() if s.get("support")]
        if len(scored) > 1:
            weakest = min(scored, key=lambda item: item[1])
            parts.append(f"Weakest class: {weakest[0]} (F1 {fmt_score(weakest[1])}). ")
        return parts

    def report_sections(self, m: Mapping[str, Any], split: str, plots: Any, outputs: Any = None,
                        targets: Any = None) -> list[Any]:
        labels = [str(label) for label in m.get("labels") or self.labels]
        n = m.get("n", 0)
        rows: list[list[Any]] = [[label, fmt_score(s["precision"]), fmt_score(s["recall"]), fmt_score(s["f1"]),
                                  fmt_int(s["support"])] for label, s in ((lb, m["per_class"][lb]) for lb in labels)]
        rows.append([Strong("accuracy"), "", "", Strong(fmt_score(m["accuracy"])), fmt_int(n)])
        rows.append([Strong("macro avg"), fmt_score(m.get("macro_precision")), fmt_score(m.get("macro_recall")),
                     Strong(fmt_score(m["macro_f1"])), fmt_int(n)])
        rows.append([Strong("weighted avg"), fmt_score(m.get("weighted_precision")),
                     fmt_score(m.get("weighted_recall")), fmt_score(m.get("weighted_f1")), fmt_int(n)])
        blocks: list[Any] = [Table(["class", "precision", "recall", "F1", "support"], rows, ["l", "r", "r", "r", "r"])]
        if finite(m.get("loss")):
            blocks.append(Paragraph([f"Loss: {float(m['loss']):.4f}"]))
        blocks += calibration_blocks(m.get("calibration"), split, plots)
        cm = m.get("confusion_matrix")
        if cm:
            norm = m.get("confusion_matrix_normalized")
            blocks.append(Paragraph([Strong("Confusion matrix"), " (rows: true, columns: predicted)"]))
            blocks.append(Table(["true \\ predicted", *labels],
                                [[label, *(fmt_int(c) for c in row)] for label, row in zip(labels, cm)],
                                ["l"] + ["r"] * len(labels), shade=[[None, *r] for r in norm] if norm else None))
        if plots is not None:
            from bertfit.report.plots import plot_confusion_matrix

            image = plots.draw(f"confusion_{split}", f"{split} confusion matrix",
                               lambda path, title: plot_confusion_matrix(m, path, title))
            if image is not None:
                blocks.append(Image(image, f"Confusion matrix ({split})"))
            elif plots.note:
                blocks.append(Paragraph([plots.note], muted=True))
        return blocks


def class_weight_vector(spec: Any, labels: Sequence[str], train_targets: np.ndarray) -> torch.Tensor | None:
    """Per-class loss weights: None, "balanced" (n / (K · count_k); 0 for a class absent from
    training), a list in label order, or a {label: weight} mapping (unnamed labels weigh 1)."""
    if spec is None:
        return None
    counts = np.bincount(np.asarray(train_targets), minlength=len(labels)).astype(float)
    if spec == "balanced":
        weights = np.where(counts > 0, counts.sum() / (len(labels) * np.maximum(counts, 1)), 0.0)
    elif isinstance(spec, dict):
        unknown = sorted(set(spec) - set(labels))
        if unknown:
            raise ConfigError(f"class_weights names unknown label(s) {unknown}; labels are {list(labels)}")
        weights = np.array([float(spec.get(label, 1.0)) for label in labels])
    else:
        if len(spec) != len(labels):
            raise ConfigError(f"class_weights has {len(spec)} values but there are {len(labels)} labels {list(labels)}")
        weights = np.array([float(w) for w in spec])
    if (weights < 0).any() or not np.isfinite(weights).all():
        raise ConfigError(f"class_weights must be finite and non-negative, got {weights.tolist()}")
    return torch.tensor(weights, dtype=torch.float32)


def calibration_blocks(c: Mapping[str, Any] | None, split: str, plots: Any) -> list[Any]:
    """The calibration paragraph (ECE and log-loss before and after) and the reliability diagram."""
    if not c:
        return []
    if c.get("method", "none") == "none":
        text = (f"none fitted (raw softmax); expected calibration error {fmt_score(c.get('ece_uncalibrated'))}, "
                f"log-loss {fmt_score(c.get('log_loss_uncalibrated'))}.")
    else:
        what = f"temperature {c['temperature']:.3f}" if "temperature" in c else "per-label Platt scaling"
        text = (f"{what}, fitted on validation: expected calibration error "
                f"{fmt_score(c.get('ece_uncalibrated'))} → {fmt_score(c.get('ece'))}, log-loss "
                f"{fmt_score(c.get('log_loss_uncalibrated'))} → {fmt_score(c.get('log_loss'))} (15 confidence bins).")
    blocks: list[Any] = [Paragraph([Strong("Calibration"), ": ", text])]
    if plots is not None:
        from bertfit.report.plots import plot_reliability

        image = plots.draw(f"reliability_{split}", f"{split} reliability",
                           lambda path, title: plot_reliability(c, path, title))
        if image is not None:
            blocks.append(Image(image, f"Reliability diagram ({split})"))
    return blocks
