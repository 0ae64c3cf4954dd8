"""Fine-tuning end to end on tiny models: it learns, it is reproducible, its settings are honoured."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from bertfit.errors import BertfitError
from bertfit.job import fine_tune
from bertfit.predict import TextClassifier
from bertfit.tasks.classify import class_weight_vector
from bertfit.train import linear_schedule, param_groups
from bertfit.train_config import TrainConfig


def tiny_config(tmp_path, model_dir, train_file, **overrides) -> TrainConfig:
    values = dict(train_file=str(train_file), model=str(model_dir), output_dir=str(tmp_path / "run"), max_length=32,
                  batch_size=16, lr=5e-4, epochs=4, warmup_ratio=0.1, log_every=1, save_every=10, seed=0)
    values.update(overrides)
    return TrainConfig(**values)


def test_tiny_model_learns_synthetic_sentiment_to_95_percent(tmp_path, tiny_model_dir, synthetic_csv):
    result = fine_tune(tiny_config(tmp_path, tiny_model_dir, synthetic_csv))
    assert result.metrics["test"]["accuracy"] >= 0.95, result.metrics["test"]
    assert result.metrics["test"]["n"] == 80  # 10% of 800 rows
    # The saved best model predicts the same way through the public API.
    classifier = TextClassifier.load(result.run_dir)
    assert classifier.labels == ["negative", "positive"]
    assert classifier.predict(["the food was really great", "the service was terrible"]) == ["positive", "negative"]
    run = result.run_dir
    for name in ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "train_config.json",
                 "metrics.json", "metrics.jsonl", "report.md", "report.html", "data.json", "split.json"):
        assert (run / name).is_file(), name
    split = json.loads((run / "split.json").read_text())
    rows = split["train"] + split["validation"] + split["test"]
    assert len(rows) == len(set(rows)) == 800  # disjoint and complete, recorded by row number


def test_same_seed_gives_identical_metrics_and_weights(tmp_path, tiny_model_dir, synthetic_csv):
    runs = [fine_tune(tiny_config(tmp_path / str(i), tiny_model_dir, synthetic_csv, epochs=1)) for i in range(2)]
    assert runs[0].metrics == runs[1].metrics
    a, b = (load_file(str(r.run_dir / "model.safetensors")) for r in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [[r["loss"] for r in run.train.history if r["kind"] == "train"] for run in runs]
    assert losses[0] == losses[1]
    other = fine_tune(tiny_config(tmp_path / "other", tiny_model_dir, synthetic_csv, epochs=1, seed=1))
    c = load_file(str(other.run_dir / "model.safetensors"))
    assert not torch.equal(a["classifier.weight"], c["classifier.weight"])


def test_gradient_accumulation_matches_one_big_batch(tmp_path, tiny_model_dir, synthetic_csv):
    common = dict(max_steps=6, bucket_window=1, eval_each_epoch=False, lr=1e-4)
    # dropout off: the two runs draw random numbers in a different order
    from bertfit.checkpoints import load_classifier  # noqa: F401  (documented: model dir has dropout 0.1)
    big = fine_tune(tiny_config(tmp_path / "big", tiny_model_dir, synthetic_csv, batch_size=32, grad_accum=1,
                                classifier_dropout=0.0, **common))
    small = fine_tune(tiny_config(tmp_path / "small", tiny_model_dir, synthetic_csv, batch_size=16, grad_accum=2,
                                  classifier_dropout=0.0, **common))
    assert big.train.state.step == small.train.state.step == 6
    assert big.train.state.examples_seen == small.train.state.examples_seen == 6 * 32


def test_sparse_word_embedding_gradient_gives_the_dense_results(tmp_path, tiny_model_dir, synthetic_csv, monkeypatch):
    """On the CPU the Trainer adds a sparse word-embedding gradient into one kept dense buffer (no
    fresh vocab × H gradient per step); the trained weights must be the ordinary dense path's."""
    from bertfit import train as train_module

    original = train_module.Trainer.__init__
    used = []

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        used.append(self._token_grad is not None)

    monkeypatch.setattr(train_module.Trainer, "__init__", spy)
    sparse = fine_tune(tiny_config(tmp_path / "sparse", tiny_model_dir, synthetic_csv, epochs=1))
    assert used == [True]

    def dense(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self._token_grad = None  # the ordinary path: a fresh dense gradient every step

    monkeypatch.setattr(train_module.Trainer, "__init__", dense)
    plain = fine_tune(tiny_config(tmp_path / "dense", tiny_model_dir, synthetic_csv, epochs=1))
    a, b = (load_file(str(r.run_dir / "model.safetensors")) for r in (sparse, plain))
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    assert sparse.metrics == plain.metrics


def test_early_stopping_and_max_steps(tmp_path, tiny_model_dir, synthetic_csv):
    result = fine_tune(tiny_config(tmp_path, tiny_model_dir, synthetic_csv, lr=1e-6, epochs=50, eval_every=3,
                                   patience=2, metric="accuracy"))
    assert result.train.state.stopped_early
    evals = [r for r in result.train.history if r["kind"] == "eval"]
    assert evals[-1].get("early_stop") and result.train.state.step < 50 * 40
    capped = fine_tune(tiny_config(tmp_path / "capped", tiny_model_dir, synthetic_csv, max_steps=7))
    assert capped.train.state.step == 7


def test_lr_schedule_warmup_then_linear_decay():
    f = linear_schedule(warmup_steps=4, total_steps=20)
    assert [round(f(s), 4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0 and f(12) == 0.5 and f(20) == 0.0


def test_weight_decay_skips_biases_and_layer_norm(tiny_model_dir):
    from bertfit.checkpoints import load_classifier

    model = load_classifier(tiny_model_dir, ["a", "b"])
    decay, no_decay = param_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim == 2 and "norm" not in names[id(p)] for p in decay["params"])
    assert any("norm" in names[id(p)] for p in no_decay["params"])
    assert all(names[id(p)].endswith("bias") or "norm" in names[id(p)] for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0


def test_class_weights():
    w = class_weight_vector("balanced", ["a", "b", "c"], [0, 0, 0, 1, 2, 2])
    assert torch.allclose(w, torch.tensor([6 / 9, 6 / 3, 6 / 6]))
    assert class_weight_vector([1, 2, 3], ["a", "b", "c"], [0]).tolist() == [1, 2, 3]
    with pytest.raises(BertfitError, match="2 values but there are 3 labels"):
        class_weight_vector([1, 2], ["a", "b", "c"], [0])


def test_class_weights_change_training(tmp_path, tiny_model_dir, synthetic_csv):
    plain = fine_tune(tiny_config(tmp_path / "p", tiny_model_dir, synthetic_csv, max_steps=3))
    weighted = fine_tune(tiny_config(tmp_path / "w", tiny_model_dir, synthetic_csv, max_steps=3, class_weights=[1.0, 5.0]))
    a, b = (load_file(str(r.run_dir / "model.safetensors"))["classifier.weight"] for r in (plain, weighted))
    assert not torch.equal(a, b)


def test_high_learning_rate_warns(tmp_path, tiny_model_dir, synthetic_csv, caplog):
    result = fine_tune(tiny_config(tmp_path, tiny_model_dir, synthetic_csv, lr=2e-3, max_steps=2))
    assert any("very high for fine-tuning" in n for n in result.train.notes)
    assert "very high for fine-tuning" in (result.run_dir / "report.md").read_text()


def test_existing_run_is_not_overwritten_silently(tmp_path, tiny_model_dir, synthetic_csv):
    config = tiny_config(tmp_path, tiny_model_dir, synthetic_csv, max_steps=2, eval_each_epoch=False)
    fine_tune(config)
    changed = config.replace(lr=1e-4)
    with pytest.raises(BertfitError, match="different settings"):
        fine_tune(changed)
    fine_tune(changed, overwrite=True)
