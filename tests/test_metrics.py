"""bertfit.tasks.metrics against scikit-learn (labels=range(K), zero_division=0), to 1e-12."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bertfit.tasks.metrics import (
    classification_metrics,
    confusion_matrix,
    format_metrics_table,
    predicted_class_share,
)

skm = pytest.importorskip("sklearn.metrics")

TOL = 1e-12


def _labels(k: int) -> list[str]:
    return [f"class_{i}" for i in range(k)]


def _random_cases() -> list[tuple[str, np.ndarray, np.ndarray, int]]:
    """Seeded cases covering the edges: missing classes, one class, all wrong, all right, tiny n."""
    rng = np.random.default_rng(1234)
    cases: list[tuple[str, np.ndarray, np.ndarray, int]] = []
    for i in range(60):
        k = int(rng.integers(2, 9))
        n = int(rng.integers(1, 200))
        t = rng.integers(0, k, size=n)
        # Mix of near-correct and noisy predictions so scores span the whole range.
        p = np.where(rng.random(n) < rng.random(), t, rng.integers(0, k, size=n))
        cases.append((f"random{i}", t, p, k))
    for i in range(15):
        # Classes that appear in neither y_true nor y_pred, and classes only ever predicted.
        k = int(rng.integers(4, 10))
        n = int(rng.integers(1, 80))
        used = rng.choice(k, size=2, replace=False)
        t = rng.choice(used, size=n)
        p = rng.choice(np.append(used, rng.integers(0, k)), size=n)
        cases.append((f"missing{i}", t, p, k))
    cases.append(("single_class_all_right", np.zeros(10, int), np.zeros(10, int), 3))
    cases.append(("single_class_true", np.full(7, 2), np.array([2, 0, 1, 2, 2, 0, 1]), 3))
    cases.append(("single_class_pred", np.array([0, 1, 2, 0, 1]), np.ones(5, int), 3))
    t = np.arange(30) % 4
    cases.append(("all_wrong", t, (t + 1) % 4, 4))
    cases.append(("all_right", t, t.copy(), 4))
    cases.append(("one_example", np.array([1]), np.array([0]), 2))
    cases.append(("binary", np.array([0, 1, 1, 0, 1]), np.array([0, 1, 0, 0, 1]), 2))
    return cases


CASES = _random_cases()


@pytest.mark.parametrize("name,t,p,k", CASES, ids=[c[0] for c in CASES])
def test_matches_sklearn(name: str, t: np.ndarray, p: np.ndarray, k: int) -> None:
    labels = list(range(k))
    m = classification_metrics(t.tolist(), p.tolist(), _labels(k))

    assert m["n"] == len(t)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(t, p), abs=TOL)
    for average in ("macro", "weighted"):
        prec, rec, f1, _ = skm.precision_recall_fscore_support(
            t, p, labels=labels, average=average, zero_division=0
        )
        assert m[f"{average}_f1"] == pytest.approx(f1, abs=TOL)
        assert m[f"{average}_precision"] == pytest.approx(prec, abs=TOL)
        assert m[f"{average}_recall"] == pytest.approx(rec, abs=TOL)
    assert m["macro_f1"] == pytest.approx(
        skm.f1_score(t, p, labels=labels, average="macro", zero_division=0), abs=TOL
    )

    prec, rec, f1, sup = skm.precision_recall_fscore_support(
        t, p, labels=labels, average=None, zero_division=0
    )
    assert list(m["per_class"]) == _labels(k)
    for i, label in enumerate(_labels(k)):
        row = m["per_class"][label]
        assert row["precision"] == pytest.approx(prec[i], abs=TOL)
        assert row["recall"] == pytest.approx(rec[i], abs=TOL)
        assert row["f1"] == pytest.approx(f1[i], abs=TOL)
        assert row["support"] == sup[i]

    expected_cm = skm.confusion_matrix(t, p, labels=labels)
    assert m["confusion_matrix"] == expected_cm.tolist()
    norm = np.asarray(m["confusion_matrix_normalized"])
    row_sums = expected_cm.sum(axis=1, keepdims=True)
    expected_norm = np.divide(
        expected_cm, row_sums, out=np.zeros(expected_cm.shape), where=row_sums != 0
    )
    np.testing.assert_allclose(norm, expected_norm, atol=TOL, rtol=0)


def test_result_is_json_serialisable_plain_python() -> None:
    m = classification_metrics(np.array([0, 1, 2]), np.array([0, 2, 2]), ["a", "b", "c"], loss=np.float32(0.5))
    text = json.dumps(m)  # raises on numpy scalars
    assert json.loads(text) == m
    assert m["loss"] == 0.5
    assert m["labels"] == ["a", "b", "c"]
    assert all(type(x) is int for row in m["confusion_matrix"] for x in row)


def test_loss_only_when_given() -> None:
    assert "loss" not in classification_metrics([0], [0], ["a", "b"])


def test_absent_class_has_zero_support_row() -> None:
    m = classification_metrics([0, 0, 1], [0, 1, 1], ["a", "b", "c"])
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["confusion_matrix_normalized"][2] == [0.0, 0.0, 0.0]
    # Absent class drags the macro average down, as sklearn with labels=range(K) does.
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0.0) / 3, abs=1e-12)


def test_empty_input_gives_zeros() -> None:
    m = classification_metrics([], [], ["a", "b"])
    assert m["n"] == 0
    assert m["accuracy"] == 0.0 and m["macro_f1"] == 0.0 and m["weighted_f1"] == 0.0
    assert m["confusion_matrix"] == [[0, 0], [0, 0]]


@pytest.mark.parametrize(
    "t,p,labels,match",
    [
        ([0, 1], [0], ["a", "b"], "2 items"),
        ([0, 3], [0, 1], ["a", "b"], r"y_true\[1\] = 3"),
        ([0, 1], [0, -1], ["a", "b"], r"y_pred\[1\] = -1"),
        ([0, 1], [0, 1], ["a", "a"], "unique"),
        ([0, 1], [0, 1], [], "at least one"),
        ([0.5, 1], [0, 1], ["a", "b"], "integer"),
    ],
)
def test_bad_inputs_raise(t: list, p: list, labels: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        classification_metrics(t, p, labels)


def test_confusion_matrix_rows_true_cols_predicted() -> None:
    cm = confusion_matrix([0, 0, 1], [1, 1, 1], 2)
    assert cm.tolist() == [[0, 2], [0, 1]]


def test_predicted_class_share() -> None:
    assert predicted_class_share([0, 0, 0, 2], 3) == [0.75, 0.0, 0.25]
    assert predicted_class_share(np.array([1] * 97 + [0] * 3), 2) == pytest.approx([0.03, 0.97])
    assert predicted_class_share([], 2) == [0.0, 0.0]
    with pytest.raises(ValueError):
        predicted_class_share([0, 5], 3)


def test_format_metrics_table_like_classification_report() -> None:
    labels = ["negative", "neutral", "positive"]
    t = [0, 1, 2, 2, 1, 0, 0]
    p = [0, 2, 2, 2, 1, 1, 0]
    m = classification_metrics(t, p, labels, loss=0.4321)
    table = format_metrics_table(m)
    lines = table.splitlines()
    assert lines[0].split() == ["precision", "recall", "f1-score", "support"]
    for label in labels:
        assert any(line.split()[0] == label for line in lines if line.strip())
    neg = next(line for line in lines if line.split()[:1] == ["negative"])
    assert neg.split() == ["negative", "1.0000", "0.6667", "0.8000", "3"]
    assert f"{m['accuracy']:.4f}" in next(line for line in lines if "accuracy" in line)
    assert f"{m['macro_f1']:.4f}" in next(line for line in lines if "macro avg" in line)
    assert f"{m['weighted_f1']:.4f}" in next(line for line in lines if "weighted avg" in line)
    assert "0.4321" in table
    # Numbers agree with sklearn's own report at the same precision.
    report = skm.classification_report(t, p, labels=[0, 1, 2], target_names=labels, digits=4, zero_division=0)
    assert [line.split() for line in report.splitlines() if line.strip()] == [
        line.split() for line in table.splitlines() if line.strip() and "loss" not in line
    ]
    assert all(line == line.rstrip() for line in lines)
