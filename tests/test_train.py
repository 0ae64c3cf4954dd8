"""Fine-tuning end to end on tiny models: it learns, it is reproducible, its settings are honoured."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from bertfit.errors import BertfitError
from bertfit.train.finetune import fine_tune
from bertfit.predict.predictor import Predictor
from bertfit.tasks.classify import class_weight_vector
from bertfit.train.loop import linear_schedule, param_groups
from bertfit.train.config import TrainConfig
from conftest import BF16_EPS, expected_stop, synthetic_rows, write_csv


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
    classifier = Predictor.load(result.run_dir)
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


def unique_rows(n: int, seed: int) -> list[tuple[str, str]]:
    """n synthetic rows with distinct texts (deduplication keeps them all)."""
    rows, seen = [], set()
    for text, label in synthetic_rows(4 * n, seed):
        if text not in seen:
            seen.add(text)
            rows.append((text, label))
    return rows[:n]


def max_weight_difference(a_run, b_run) -> float:
    a, b = (load_file(str(r.run_dir / "model.safetensors")) for r in (a_run, b_run))
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_gradient_accumulation_matches_one_big_batch(tmp_path, no_dropout_model_dir):
    """k micro-batches of b examples accumulated give the weights of one batch of k·b.

    The 30 training rows make one epoch = one optimizer step in every run (one batch of 30; 2
    micro-batches of 16 + 14; 4 of 8 + 8 + 8 + 6), so every step sums the gradient of the same 30
    examples; dropout is 0 in the model's config, so nothing random differs. The uneven last
    micro-batch matters: a loss averaged per micro-batch would weight its 6 examples like 8."""
    train = write_csv(tmp_path / "train.csv", unique_rows(30, seed=11))
    common = dict(validation_file=str(train), max_steps=6, eval_each_epoch=False, lr=1e-3, warmup_ratio=0.0,
                  save_every=100, bf16=False)  # fp32: 1e-6 is fp32's summation-order noise, not bf16's
    runs = {(b, k): fine_tune(tiny_config(tmp_path / f"b{b}k{k}", no_dropout_model_dir, train, batch_size=b,
                                          grad_accum=k, **common))
            for b, k in ((32, 1), (16, 2), (8, 4))}
    for run in runs.values():
        assert run.train.state.step == 6 and run.train.state.examples_seen == 6 * 30
    one_batch = runs[(32, 1)]
    for key in ((16, 2), (8, 4)):
        assert max_weight_difference(one_batch, runs[key]) <= 1e-6, key
    # The comparison has teeth: training moved the weights far more than the tolerance.
    untrained = fine_tune(tiny_config(tmp_path / "one-step", no_dropout_model_dir, train, batch_size=32,
                                      **{**common, "max_steps": 1}))
    assert max_weight_difference(one_batch, untrained) > 1e-3


def test_gradient_accumulation_matches_one_big_batch_in_bf16(tmp_path, no_dropout_model_dir):
    """The same property under bf16 autocast (emulated where the CPU lacks the instructions): 4
    micro-batches of 8 and one batch of 30 round other matmul shapes, so each step's loss may differ
    by a few bf16 roundings (held to 4 · 2^-8 of itself), and AdamW turns a rounding of a near-zero
    gradient into a different update of up to lr, so the weights are compared on average: their mean
    difference must be under 1/100 of how far training moved them."""
    train = write_csv(tmp_path / "train.csv", unique_rows(30, seed=11))
    common = dict(validation_file=str(train), max_steps=6, eval_each_epoch=False, lr=1e-3, warmup_ratio=0.0,
                  save_every=100, bf16=True)
    runs = {(b, k): fine_tune(tiny_config(tmp_path / f"b{b}k{k}", no_dropout_model_dir, train, batch_size=b,
                                          grad_accum=k, **common))
            for b, k in ((32, 1), (8, 4))}
    one, split = runs[(32, 1)], runs[(8, 4)]
    assert json.loads((one.run_dir / "precision.json").read_text())["bf16"] is True
    losses = [[r["loss"] for r in run.train.history if r["kind"] == "train"] for run in (one, split)]
    assert len(losses[0]) == len(losses[1]) == 6
    for x, y in zip(*losses):
        assert abs(x - y) <= 4 * BF16_EPS * abs(x), (x, y)
    a, b = (load_file(str(r.run_dir / "model.safetensors")) for r in (one, split))
    start = load_file(str(no_dropout_model_dir / "model.safetensors"))
    shared = [k for k in start if k in a]
    apart = sum(float((a[k] - b[k]).abs().mean()) for k in shared) / len(shared)
    moved = sum(float((a[k] - start[k]).abs().mean()) for k in shared) / len(shared)
    assert apart * 100 <= moved, (apart, moved)


def test_sparse_word_embedding_gradient_gives_the_dense_results(tmp_path, tiny_model_dir, synthetic_csv, monkeypatch):
    """On the CPU the Trainer adds a sparse word-embedding gradient into one kept dense buffer (no
    fresh vocab × H gradient per step); the trained weights must be the ordinary dense path's."""
    from bertfit.train import loop as train_module

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


@pytest.mark.parametrize("patience", [1, 3])
def test_early_stopping_counts_evaluations_exactly(tmp_path, tiny_model_dir, synthetic_csv, patience):
    """lr 1e-6 barely moves the model, so validation accuracy stalls: training must stop at exactly
    the patience-th evaluation in a row without a strict improvement, and not one step later."""
    result = fine_tune(tiny_config(tmp_path, tiny_model_dir, synthetic_csv, lr=1e-6, epochs=50, eval_every=3,
                                   eval_each_epoch=False, patience=patience, metric="accuracy"))
    evals = [r for r in result.train.history if r["kind"] == "eval"]
    stop = expected_stop([r["accuracy"] for r in evals], patience)
    assert stop is not None and stop == len(evals) - 1  # stopped at that evaluation, evaluated no further
    assert [bool(r.get("early_stop")) for r in evals] == [False] * stop + [True]
    assert result.train.state.stopped_early
    assert result.train.state.step == evals[-1]["step"] == 3 * len(evals)  # no training step after the stop
    # Each evaluation's epoch is counted as the train records count it (mid-epoch: a fraction, not the floor).
    per_epoch = result.train.history[0]["steps_per_epoch"]
    assert [r["epoch"] for r in evals] == [round(r["step"] / per_epoch, 4) for r in evals]
    assert max(r["step"] for r in result.train.history if r["kind"] == "train") == evals[-1]["step"]
    best = [r["step"] for r in evals if r.get("best")][-1]
    assert result.train.state.best_step == best and len(evals) - 1 - evals.index(
        next(r for r in evals if r["step"] == best)) == patience


def test_max_steps_caps_training(tmp_path, tiny_model_dir, synthetic_csv):
    capped = fine_tune(tiny_config(tmp_path / "capped", tiny_model_dir, synthetic_csv, max_steps=7))
    assert capped.train.state.step == 7


def test_lr_schedule_warmup_then_linear_decay():
    f = linear_schedule(warmup_steps=4, total_steps=20)
    assert [round(f(s), 4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0 and f(12) == 0.5 and f(20) == 0.0


def test_weight_decay_skips_biases_and_layer_norm(tiny_model_dir):
    from bertfit.weights import load_model

    model = load_model(tiny_model_dir, ["a", "b"])
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


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("batch_size, grad_accum", [(24, 1), (8, 3)])
def test_class_weights_give_the_hand_computed_weighted_loss_and_gradient(tmp_path, no_dropout_model_dir,
                                                                       batch_size, grad_accum, bf16):
    """One optimizer step over 24 examples with class weights [1, 5] (whole, or as 3 accumulated
    micro-batches): the logged loss is sum(w_y · nll) / sum(w_y), computed here by hand, and the
    gradient the optimizer receives is that loss's gradient, computed on a copy of the model.

    In fp32 to fp32 rounding (loss 1e-6, gradients rtol 1e-4). In bf16 (autocast, emulated where
    the CPU lacks the instructions) the hand computation runs under the same autocast; micro-batches
    of 8 round other matmul shapes than one batch of 24, so the loss is held to what a few bf16
    roundings of the logits can move it, and each gradient to 2 · 2^-8 relative error in its norm."""
    import copy


    from bertfit.weights import load_model
    from bertfit.train.run_dir import RunDir
    from bertfit.tokenizer import WordPieceTokenizer
    from bertfit.train.loop import EncodedSplit, Trainer

    labels = ["negative", "positive"]
    rows = unique_rows(24, seed=7)
    texts, y = [t for t, _ in rows], torch.tensor([labels.index(label) for _, label in rows])
    assert 0 < int(y.sum()) < len(y)  # both classes present, so the weights matter
    tokenizer = WordPieceTokenizer.from_dir(no_dropout_model_dir)
    torch.manual_seed(0)
    model = load_model(no_dropout_model_dir, labels)
    reference = copy.deepcopy(model)
    config = TrainConfig(batch_size=batch_size, grad_accum=grad_accum, max_steps=1, class_weights=[1.0, 5.0],
                         max_grad_norm=0.0, log_every=1, max_length=32, output_dir=str(tmp_path / "run"),
                         bf16=bf16)
    run = RunDir(config.output_dir)
    run.create()
    split = EncodedSplit(tokenizer.encode(texts, max_length=32), y.tolist())
    trainer = Trainer(model, config, split, None, run, pad_id=tokenizer.pad_id, device=torch.device("cpu"))
    seen: dict[str, torch.Tensor] = {}

    def capture(optimizer, args, kwargs):  # the gradients the update is made from
        seen.update({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})

    trainer.optimizer.register_step_pre_hook(capture)
    result = trainer.train()
    assert result.state.step == 1

    assert trainer.precision.bf16 is bf16
    batch = tokenizer(texts, max_length=32)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = reference.train()(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], fast=False)
    logits = logits.float()
    w = torch.tensor([1.0, 5.0])[y]
    nll = -torch.log_softmax(logits, dim=-1)[torch.arange(len(y)), y]
    weighted = (w * nll).sum() / w.sum()
    logged = next(r["loss"] for r in result.history if r["kind"] == "train")
    # an nll moves by at most twice the largest change of a logit (its gradient's entries sum to 2 in
    # magnitude), and a bf16 logit by a rounding of itself: two roundings' worth, twice over
    loss_tolerance = 4 * BF16_EPS * float(logits.detach().abs().max()) if bf16 else 1e-6
    assert logged == pytest.approx(weighted.item(), abs=loss_tolerance)
    assert abs(nll.mean().item() - weighted.item()) > 3 * loss_tolerance  # the unweighted loss would be told apart
    weighted.backward()
    names = ["classifier.weight", "classifier.bias", "bert.pooler.dense.weight"]
    names += [n for n, _ in reference.named_parameters() if n.startswith("bert.layers.0.")][:2]
    for name, p in reference.named_parameters():
        if name in names:
            assert name in seen, name
            if bf16:
                error = float((seen[name] - p.grad).norm() / p.grad.norm())
                assert error <= 2 * BF16_EPS, (name, error)
            else:
                assert torch.allclose(seen[name], p.grad, rtol=1e-4, atol=1e-7), (name, (seen[name] - p.grad).abs().max())


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
