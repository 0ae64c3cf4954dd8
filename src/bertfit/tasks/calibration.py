"""Calibrated probabilities: a temperature (single-label) or per-label Platt scaling (multi-label),
fitted on the validation split after training, and the expected calibration error that measures it.

A fine-tuned classifier's softmax is usually over-confident (Guo et al. 2017, "On Calibration of
Modern Neural Networks"): of the texts it gives 0.9, fewer than 90% are right. Dividing the logits by
one temperature T fitted to minimise the validation log-loss fixes most of that without changing a
single prediction (the arg-max is the same for every T > 0). For multi-label, each label's logit z
becomes a·z + b (Platt 1999), a > 0, fitted per label by logistic regression on validation; the label
decisions (thresholds tuned after it, on the calibrated probabilities) are unchanged in effect.

Both fits are small convex problems solved here by Newton's method in NumPy (no SciPy dependency).
The model's raw logits are what transformers returns for the same weights: the calibration lives in
the run's task.json, applied by bertfit's predict, evaluate, serve and export.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

MIN_T, MAX_T = 0.05, 20.0  # the temperatures fit_temperature returns lie in this range
BINS = 15  # the usual ECE binning (Guo et al.): 15 equal-width confidence bins


def _log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax_nll(logits: np.ndarray, targets: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood (log-loss) of the softmax of logits / temperature."""
    if not len(targets):
        return float("nan")
    logp = _log_softmax(np.asarray(logits, dtype=np.float64) / temperature)
    return float(-logp[np.arange(len(targets)), np.asarray(targets)].mean())


def fit_temperature(logits: np.ndarray, targets: np.ndarray, *, iterations: int = 100) -> float:
    """The T > 0 that minimises the log-loss of softmax(logits / T) on (logits, targets).

    Newton's method on beta = 1/T, where the log-loss is convex (a log-sum-exp of linear functions
    of beta minus a linear one), with a step halved until the loss goes down.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(targets, dtype=np.int64)
    if len(y) == 0 or z.shape[1] < 2:
        return 1.0
    true = z[np.arange(len(y)), y]

    def loss_grad_hess(beta: float) -> tuple[float, float, float]:
        logp = _log_softmax(beta * z)
        p = np.exp(logp)
        mean_z = (p * z).sum(axis=1)
        var_z = (p * z * z).sum(axis=1) - mean_z ** 2
        return float(-logp[np.arange(len(y)), y].mean()), float((mean_z - true).mean()), float(var_z.mean())

    beta = 1.0
    loss, grad, hess = loss_grad_hess(beta)
    for _ in range(iterations):
        step = grad / hess if hess > 1e-12 else np.sign(grad) * 0.5 * beta
        new_beta = beta - step
        while new_beta <= 0:  # stay in T > 0
            step /= 2
            new_beta = beta - step
        new = loss_grad_hess(new_beta)
        halvings = 0
        while new[0] > loss + 1e-15 and halvings < 40:
            step /= 2
            new_beta = beta - step
            new = loss_grad_hess(new_beta)
            halvings += 1
        if new[0] > loss + 1e-15:
            break
        converged = abs(new_beta - beta) < 1e-10 * max(1.0, beta)
        beta, (loss, grad, hess) = new_beta, new
        if converged:
            break
    # A validation split the model gets all right pushes T towards 0 without end: keep it sane.
    return float(np.clip(1.0 / beta, MIN_T, MAX_T))


def fit_platt(logits: np.ndarray, targets: np.ndarray, *, iterations: int = 100,
              ridge: float = 1e-6) -> tuple[float, float]:
    """(a, b) minimising the log-loss of sigmoid(a·z + b) for one label (logistic regression on its
    logit), by Newton's method; (1, 0), the identity, when it cannot help: no positives or no
    negatives, or a fit with a <= 0 (a label whose logit carries no signal)."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    if len(y) == 0 or y.min() == y.max():
        return 1.0, 0.0
    x = np.stack([z, np.ones_like(z)], axis=1)  # (N, 2)
    w = np.array([1.0, 0.0])

    def loss(w: np.ndarray) -> float:
        s = x @ w
        return float(np.mean(np.logaddexp(0, s) - y * s) + ridge * w[0] ** 2)

    current = loss(w)
    for _ in range(iterations):
        s = x @ w
        p = 1 / (1 + np.exp(-np.clip(s, -60, 60)))
        grad = x.T @ (p - y) / len(y) + np.array([2 * ridge * w[0], 0.0])
        hess = (x * (p * (1 - p))[:, None]).T @ x / len(y) + np.diag([2 * ridge, 1e-9])
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-8:
            candidate = w - scale * step
            value = loss(candidate)
            if value <= current:
                break
            scale /= 2
        else:
            break
        done = np.abs(candidate - w).max() < 1e-10
        w, current = candidate, value
        if done:
            break
    a, b = float(w[0]), float(w[1])
    if not (a > 0 and np.isfinite(a) and np.isfinite(b)):
        return 1.0, 0.0
    return a, b


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> list[dict[str, float]]:
    """Per equal-width confidence bin ((lo, hi], the first [0, hi]): count, mean confidence, accuracy."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    out = []
    for b in range(bins):
        mask = which == b
        n = int(mask.sum())
        out.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": n,
                    "confidence": float(confidence[mask].mean()) if n else 0.0,
                    "accuracy": float(correct[mask].mean()) if n else 0.0})
    return out


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> float:
    """ECE = sum over bins of (bin's share of the examples) x |accuracy - mean confidence|."""
    n = len(confidence)
    if n == 0:
        return float("nan")
    return float(sum(b["count"] / n * abs(b["accuracy"] - b["confidence"]) for b in reliability(confidence, correct, bins)))


def top_label(proba: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Single-label: (confidence of the predicted class, whether it is right), what ECE bins."""
    proba = np.asarray(proba)
    predicted = proba.argmax(axis=1)
    return proba.max(axis=1), predicted == np.asarray(targets)


def per_label(proba: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Multi-label: every (text, label) probability and whether that label applies."""
    return np.asarray(proba).ravel(), (np.asarray(targets) > 0.5).ravel()
