"""Calibration (calibration.py and the tasks' use of it): a known temperature is recovered, ECE on a
hand-computed case, Platt scaling, and the fitted state round-trips through task.json."""

from __future__ import annotations

import numpy as np
import pytest

from bertfit.tasks.calibration import (expected_calibration_error, fit_platt, fit_temperature, reliability, softmax_nll,
                                 top_label)
from bertfit.tasks.classify import SingleLabel
from bertfit.tasks.multilabel import MultiLabel
from bertfit.tasks.sequence import softmax


def _sample(logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    p = softmax(logits)
    return np.array([rng.choice(len(row), p=row) for row in p])


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_temperature_recovered_from_synthetic_logits(true_t):
    rng = np.random.default_rng(0)
    base = rng.normal(0, 3, size=(20000, 3))  # calibrated logits
    targets = _sample(base, rng)  # labels drawn from softmax(base): base is calibrated by construction
    observed = base * true_t  # a model over-confident by true_t (> 1) or under-confident (< 1)
    fitted = fit_temperature(observed, targets)
    assert fitted == pytest.approx(true_t, rel=0.05)
    assert softmax_nll(observed, targets, fitted) <= softmax_nll(observed, targets, 1.0) + 1e-12
    # the arg-max, hence accuracy, is the same at every temperature
    assert (SingleLabel(["a", "b", "c"], temperature=fitted).probabilities(observed).argmax(1) == observed.argmax(1)).all()


def test_ece_on_a_hand_computed_case():
    # 4 predictions: confidences 0.95, 0.95 (one right, one wrong), 0.65 and 0.55 (both right).
    confidence = np.array([0.95, 0.95, 0.65, 0.55])
    correct = np.array([True, False, True, True])
    # 15 bins of width 1/15: 0.95 -> bin 14, 0.65 -> bin 9 (0.6-0.667), 0.55 -> bin 8 (0.533-0.6)
    # ECE = 2/4 * |0.5 - 0.95| + 1/4 * |1 - 0.65| + 1/4 * |1 - 0.55| = 0.225 + 0.0875 + 0.1125 = 0.425
    assert expected_calibration_error(confidence, correct) == pytest.approx(0.425)
    bins = reliability(confidence, correct)
    assert [b["count"] for b in bins if b["count"]] == [1, 1, 2]
    # with 2 bins: [0, 0.5] empty, (0.5, 1] holds all: |0.75 - 0.775| = 0.025
    assert expected_calibration_error(confidence, correct, bins=2) == pytest.approx(0.025)
    conf, hit = top_label(np.array([[0.2, 0.8], [0.6, 0.4]]), np.array([1, 1]))
    assert conf.tolist() == [0.8, 0.6] and hit.tolist() == [True, False]


def test_platt_recovers_a_known_scaling():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, size=30000)
    a, b = 0.6, -1.0
    y = (rng.random(z.shape) < 1 / (1 + np.exp(-(a * z + b)))).astype(float)
    fa, fb = fit_platt(z, y)
    assert fa == pytest.approx(a, abs=0.05) and fb == pytest.approx(b, abs=0.05)
    assert fit_platt(z, np.zeros_like(z)) == (1.0, 0.0)  # no positives: identity


def test_tasks_keep_their_calibration_in_state_and_report_before_after():
    rng = np.random.default_rng(2)
    base = rng.normal(0, 2, size=(3000, 2))
    targets = _sample(base, rng)
    task = SingleLabel(["neg", "pos"])
    raw = task.evaluate(base * 3, targets)
    assert raw["calibration"]["method"] == "none"
    task.calibrate(base * 3, targets)
    assert task.state()["temperature"] == pytest.approx(3, rel=0.1)
    rebuilt = SingleLabel(["neg", "pos"], **task.state())
    np.testing.assert_allclose(rebuilt.probabilities(base * 3), softmax(base * 3 / task.temperature))
    after = rebuilt.evaluate(base * 3, targets)
    c = after["calibration"]
    assert c["ece"] < c["ece_uncalibrated"] and c["log_loss"] < c["log_loss_uncalibrated"]
    assert after["accuracy"] == raw["accuracy"] and after["loss"] == pytest.approx(c["log_loss"])
    assert rebuilt.decode(base[:1] * 3)[0]["confidence"] == pytest.approx(rebuilt.probabilities(base[:1] * 3).max())

    ml = MultiLabel(["x", "y"])
    z = rng.normal(0, 2, size=(4000, 2))
    y = (rng.random(z.shape) < 1 / (1 + np.exp(-(0.5 * z - 0.5)))).astype(np.float32)
    ml.calibrate(z, y)
    ml.fit_decisions(z, y)
    again = MultiLabel(["x", "y"], **ml.state())
    np.testing.assert_allclose(again.probabilities(z), ml.probabilities(z))
    m = again.evaluate(z, y)
    assert m["calibration"]["method"] == "platt" and m["calibration"]["ece"] < m["calibration"]["ece_uncalibrated"]
