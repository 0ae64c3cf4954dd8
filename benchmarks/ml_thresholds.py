"""Multi-label decision thresholds: the per-label thresholds bertfit tunes on validation, against rules
that trust rare labels' few validation positives less, scored on a test set the thresholds never saw.

A label with few validation positives gets a threshold fitted to a handful of texts; on weakly trained
models many of them are tiny (0.002-0.05 on calibrated probabilities). Whether that hurts is a question
for held-out data, so every rule below is fitted on the validation texts and scored on the test texts:

- ``per-label``: bertfit's rule (tasks/multilabel.py tune_thresholds): each label's F1-maximising cut;
- ``fixed 0.5``: one threshold, no tuning;
- ``global``: one threshold for every label, the one maximising validation micro-F1;
- ``per-label, < K positives -> global``: per label where validation has at least K positives, else global;
- ``half best F1``: F1*/2 per label (for calibrated probabilities the F1-optimal threshold is half the
  optimal F1: Lipton, Elkan & Naryanaswamy 2014), which needs only the best F1, not where it was reached.

    PYTHONPATH=src .venv/bin/python benchmarks/ml_thresholds.py --run RUN --data ../shared/data/goemotions \
        --out benchmarks/ml_thresholds.json
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def read_goemotions(path: Path, labels: list[str], limit: int | None) -> tuple[list[str], np.ndarray]:
    texts, targets = [], []
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            texts.append(row[0])
            on = np.zeros(len(labels), dtype=np.float32)
            on[[int(i) for i in row[1].split(",")]] = 1
            targets.append(on)
            if limit and len(texts) >= limit:
                break
    return texts, np.stack(targets)


def global_threshold(proba: np.ndarray, targets: np.ndarray) -> float:
    from bertfit.tasks.multilabel import multilabel_metrics

    grid = np.unique(np.round(proba, 3))
    grid = grid[(grid > 0) & (grid < 1)]
    best = max(grid[:: max(1, len(grid) // 400)], key=lambda t: multilabel_metrics(proba >= t, targets, [""] * proba.shape[1])["micro_f1"])
    return float(best)


def half_best_f1(proba: np.ndarray, targets: np.ndarray, tuned: np.ndarray) -> np.ndarray:
    from bertfit.tasks.multilabel import multilabel_metrics

    per = multilabel_metrics(proba >= tuned, targets, [str(j) for j in range(proba.shape[1])])["per_label"]
    best = np.array([per[str(j)]["f1"] for j in range(proba.shape[1])])
    return np.where(best > 0, best / 2, 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a multi-label bertfit run trained on GoEmotions")
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "goemotions")
    parser.add_argument("--limit", type=int, help="texts per split (default: all)")
    parser.add_argument("--out", type=Path, default=HERE / "ml_thresholds.json")
    args = parser.parse_args()

    from bertfit.predict.predictor import Predictor
    from bertfit.tasks.multilabel import multilabel_metrics, tune_thresholds

    predictor = Predictor.load(args.run, engine="pytorch")
    names = (args.data / "labels.txt").read_text(encoding="utf-8").split()
    labels = predictor.labels
    if sorted(labels) == sorted(str(i) for i in range(len(names))):  # trained on the TSV's label ids
        columns = [int(label) for label in labels]
    else:
        assert sorted(names) == sorted(labels), "the run was not trained on GoEmotions' labels"
        columns = [names.index(label) for label in labels]  # the files' label ids -> the run's label order
    dev_texts, dev = read_goemotions(args.data / "dev.tsv", names, args.limit)
    test_texts, test = read_goemotions(args.data / "test.tsv", names, args.limit)
    dev, test = dev[:, columns], test[:, columns]
    p_dev, p_test = predictor.predict_proba(dev_texts), predictor.predict_proba(test_texts)

    tuned = tune_thresholds(p_dev, dev)
    g = global_threshold(p_dev, dev)
    positives = dev.sum(axis=0)
    rules = {"per-label (bertfit)": tuned, "fixed 0.5": np.full(len(labels), 0.5), "global": np.full(len(labels), g),
             "half best F1": half_best_f1(p_dev, dev, tuned)}
    for k in (10, 20, 50):
        rules[f"per-label, < {k} positives -> global"] = np.where(positives >= k, tuned, g)
    report = {"command": " ".join(sys.argv), "run": str(args.run),
              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                       cwd=HERE).stdout.strip(),
              "dev_texts": len(dev_texts), "test_texts": len(test_texts), "global_threshold": g,
              "dev_positives": dict(zip(labels, positives.astype(int).tolist())), "rules": {}}
    for name, thresholds in rules.items():
        on_dev = multilabel_metrics(p_dev >= thresholds, dev, labels)
        on_test = multilabel_metrics(p_test >= thresholds, test, labels)
        report["rules"][name] = {
            "test": {k: round(on_test[k], 4) for k in ("macro_f1", "micro_f1", "samples_f1")},
            "dev": {k: round(on_dev[k], 4) for k in ("macro_f1", "micro_f1")},
            "thresholds_below_0.05": int((thresholds < 0.05).sum()),
            "test_f1_per_label": {label: round(on_test["per_label"][label]["f1"], 4) for label in labels}}
        print(f"{name:40s} test macro {on_test['macro_f1']:.4f} micro {on_test['micro_f1']:.4f}  "
              f"(dev macro {on_dev['macro_f1']:.4f}; {int((thresholds < 0.05).sum())} thresholds < 0.05)")
    args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
