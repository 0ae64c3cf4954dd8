"""Classification metrics, computed from the confusion matrix with numpy alone.

scikit-learn is a test-only dependency, so the numbers here are written out and the tests hold them
to sklearn's (``labels=range(K)``, ``zero_division=0``) to 1e-12. Everything returned is plain
Python (floats, ints, lists, dicts) so it goes straight into ``metrics.json`` and the report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "classification_metrics",
    "confusion_matrix",
    "format_metrics_table",
    "predicted_class_share",
]


def _as_index_array(values: Sequence[int], num_labels: int, name: str) -> np.ndarray:
    """Validate class indices: an index outside ``range(num_labels)`` is a caller bug, not data."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        # Accept 1.0-style floats (e.g. from a JSON round trip) but never silently round 0.7.
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.mod(arr, 1) == 0):
            raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    bad = (arr < 0) | (arr >= num_labels)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name}[{first}] = {int(arr[first])} is not a class index in range(0, {num_labels})"
        )
    return arr


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_labels: int) -> np.ndarray:
    """Counts with rows = true class and columns = predicted class, shape (K, K), int64."""
    t = _as_index_array(y_true, num_labels, "y_true")
    p = _as_index_array(y_pred, num_labels, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} items but y_pred has {p.size}")
    # One bincount over flattened (true, pred) pairs: O(n), no Python loop over examples.
    flat = np.bincount(t * num_labels + p, minlength=num_labels * num_labels)
    return flat.reshape(num_labels, num_labels).astype(np.int64)


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise with 0.0 where den == 0 (sklearn's zero_division=0)."""
    num = num.astype(np.float64)
    den = den.astype(np.float64)
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den != 0)
    return out


def classification_metrics(
    y_true: Sequence[int],
    y_pred: Sequence[int],
    labels: Sequence[str],
    loss: float | None = None,
) -> dict[str, Any]:
    """Accuracy, macro/weighted F1, per-class scores and confusion matrices for class indices.

    ``y_true`` and ``y_pred`` are indices into ``labels``. Every label is scored, including classes
    absent from both ``y_true`` and ``y_pred`` (support 0, F1 0.0): they count in the macro averages
    exactly as in ``sklearn.metrics.f1_score(..., labels=range(K), average="macro",
    zero_division=0)``, so a model that never sees a class is not flattered by dropping it.
    """
    label_names = [str(label) for label in labels]
    num_labels = len(label_names)
    if num_labels == 0:
        raise ValueError("labels must name at least one class")
    if len(set(label_names)) != num_labels:
        # per_class is keyed by name; duplicates would silently overwrite each other.
        raise ValueError(f"labels must be unique, got {label_names}")

    cm = confusion_matrix(y_true, y_pred, num_labels)
    n = int(cm.sum())
    tp = np.diag(cm)
    support = cm.sum(axis=1)  # true count per class
    predicted = cm.sum(axis=0)  # predicted count per class

    precision = _safe_divide(tp, predicted)
    recall = _safe_divide(tp, support)
    # F1 from counts, 2tp / (2tp + fp + fn) = 2tp / (support + predicted): the same formula sklearn
    # uses, so results agree to the last bits instead of differing through 2pr/(p+r) rounding.
    f1 = _safe_divide(2 * tp, support + predicted)

    total_support = support.sum()

    def weighted(values: np.ndarray) -> float:
        # sklearn returns 0.0 for a weighted average with zero total weight (zero_division=0).
        return float(np.dot(values, support) / total_support) if total_support > 0 else 0.0

    result: dict[str, Any] = {
        "accuracy": float(tp.sum() / n) if n > 0 else 0.0,
        "macro_f1": float(f1.mean()),
        "weighted_f1": weighted(f1),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "weighted_precision": weighted(precision),
        "weighted_recall": weighted(recall),
    }
    if loss is not None:
        result["loss"] = float(loss)
    result["n"] = n
    result["per_class"] = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(label_names)
    }
    result["confusion_matrix"] = cm.tolist()
    result["confusion_matrix_normalized"] = _safe_divide(cm, support[:, None]).tolist()
    result["labels"] = label_names
    return result


def predicted_class_share(y_pred: Sequence[int], num_labels: int) -> list[float]:
    """Fraction of predictions that fall in each class (all 0.0 for no predictions).

    Used to spot a collapsed model: one share near 1.0 means it predicts a single class.
    """
    if num_labels <= 0:
        raise ValueError(f"num_labels must be positive, got {num_labels}")
    p = _as_index_array(y_pred, num_labels, "y_pred")
    if p.size == 0:
        return [0.0] * num_labels
    counts = np.bincount(p, minlength=num_labels)
    return (counts / p.size).astype(np.float64).tolist()


def format_metrics_table(metrics: Mapping[str, Any], digits: int = 4) -> str:
    """A plain-text table in the shape of sklearn's ``classification_report``, for the terminal."""
    per_class: Mapping[str, Mapping[str, Any]] = metrics["per_class"]
    labels = list(metrics.get("labels") or per_class.keys())
    n = int(metrics.get("n", sum(int(per_class[label]["support"]) for label in labels)))
    row_names = ["weighted avg", *labels]
    name_width = max(len(name) for name in row_names)
    col_width = max(9, digits + 2)
    headers = ["precision", "recall", "f1-score", "support"]

    def line(name: str, cells: list[str]) -> str:
        row = f"{name:>{name_width}} " + " ".join(f"{cell:>{col_width}}" for cell in cells)
        return row.rstrip()

    def num(value: float | None) -> str:
        # None prints blank: dicts saved before weighted precision/recall existed still format.
        return "" if value is None else f"{value:.{digits}f}"

    def scores(precision: float | None, recall: float | None, f1: float, support: int) -> list[str]:
        return [num(precision), num(recall), num(f1), str(int(support))]

    out = [line("", headers), ""]
    for label in labels:
        s = per_class[label]
        out.append(line(label, scores(s["precision"], s["recall"], s["f1"], s["support"])))
    out.append("")
    out.append(line("accuracy", ["", "", num(metrics["accuracy"]), str(n)]))
    m = metrics
    out.append(line("macro avg", scores(m["macro_precision"], m["macro_recall"], m["macro_f1"], n)))
    weighted = scores(m.get("weighted_precision"), m.get("weighted_recall"), m["weighted_f1"], n)
    out.append(line("weighted avg", weighted))
    if metrics.get("loss") is not None:
        out.append("")
        out.append(line("loss", ["", "", num(metrics["loss"]), ""]))
    return "\n".join(out)
