"""`train --seeds N` (seeds.py): the aggregation, the best-validation choice, what is kept."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bertfit.train.seeds import aggregate, best_seed
from bertfit.tasks.classify import SingleLabel


def test_aggregate_mean_and_sample_std_of_every_numeric_metric():
    per_seed = {0: {"test": {"accuracy": 0.70, "macro_f1": 0.60, "n": 10, "labels": ["a"], "per_class": {}}},
                1: {"test": {"accuracy": 0.80, "macro_f1": 0.70, "n": 10}},
                2: {"test": {"accuracy": 0.75, "macro_f1": 0.65, "n": 10}}}
    spread = aggregate(per_seed)
    assert set(spread["test"]) == {"accuracy", "macro_f1"}  # n, lists and dicts are not averaged
    acc = spread["test"]["accuracy"]
    assert acc["mean"] == pytest.approx(0.75)
    assert acc["std"] == pytest.approx(0.05)  # sqrt(((-.05)^2 + .05^2 + 0) / (3 - 1))
    assert acc["values"] == {"0": 0.70, "1": 0.80, "2": 0.75}
    assert aggregate({3: {"test": {"accuracy": 0.5}}})["test"]["accuracy"]["std"] == 0.0


def test_best_seed_follows_the_metrics_direction():
    task = SingleLabel(["a", "b"])
    per_seed = {0: {"validation": {"macro_f1": 0.6, "loss": 0.5}}, 1: {"validation": {"macro_f1": 0.7, "loss": 0.6}},
                2: {"validation": {"macro_f1": 0.7, "loss": 0.4}}}
    assert best_seed(per_seed, "macro_f1", task.better) == 1  # the first on a tie
    assert best_seed(per_seed, "loss", task.better) == 2  # lower is better


def test_seeds_run_keeps_the_best_model_and_every_seeds_metrics(tmp_path, tiny_model_dir, synthetic_csv):
    from bertfit.train.finetune import fine_tune
    from bertfit.predict.predictor import Predictor
    from bertfit.train.config import TrainConfig

    run = tmp_path / "run"
    config = TrainConfig(train_file=str(synthetic_csv), model=str(tiny_model_dir), output_dir=str(run), max_steps=3,
                         batch_size=16, lr=1e-3, threads=1, max_length=24, seeds=3, seed=5)
    result = fine_tune(config)
    metrics = json.loads((run / "metrics.json").read_text())
    spread = metrics["seeds"]
    assert spread["seeds"] == [5, 6, 7]
    splits = {s: (run / "seeds" / f"seed-{s}" / "split.json").read_text() for s in (5, 6, 7)}
    assert splits[5] == splits[6] == splits[7]  # one split for every seed: only the training draws change
    per_seed = {s: json.loads((run / "seeds" / f"seed-{s}" / "metrics.json").read_text()) for s in (5, 6, 7)}
    for split in ("validation", "test"):
        values = [per_seed[s][split]["accuracy"] for s in (5, 6, 7)]
        assert spread["spread"][split]["accuracy"]["mean"] == pytest.approx(np.mean(values))
        assert spread["spread"][split]["accuracy"]["std"] == pytest.approx(np.std(values, ddof=1))
    best = spread["best_seed"]
    assert per_seed[best]["validation"]["macro_f1"] == max(per_seed[s]["validation"]["macro_f1"] for s in per_seed)
    assert metrics["test"] == per_seed[best]["test"] and result.metrics == metrics
    # one model kept, at the top; the seeds keep metrics, logs and reports, not weights or checkpoints
    assert (run / "model.safetensors").is_file()
    for s in (5, 6, 7):
        assert not (run / "seeds" / f"seed-{s}" / "model.safetensors").exists()
        assert not (run / "seeds" / f"seed-{s}" / "checkpoints").exists()
        assert (run / "seeds" / f"seed-{s}" / "metrics.jsonl").is_file()
    assert "Seed spread (3 seeds)" in (run / "report.md").read_text()
    model = Predictor.load(run, engine="pytorch")
    assert model.predict(["good film"])[0] in ("negative", "positive")
    # the kept model is the best seed's: it reproduces that seed's test metrics
    assert json.loads((run / "task.json").read_text()) == json.loads(
        (run / "seeds" / f"seed-{best}" / "task.json").read_text())

