"""Trace one bench_ner.py bertfit run step by step, to see why a run stays all-O (issue 31, item 3).

Per optimizer step: the learning rate, the loss, the share of the batch's labelled words the model
tags non-O (argmax, before the step) against the gold share, the head's O bias minus its mean
other-tag bias, and the gradient norms of the head and of the encoder (before clipping). Same
settings as bench_ner.py (150 steps, batch 16, lr 1e-4, warmup 0.1, weight decay 0.01, max_length 128).

    PYTHONPATH=src .venv/bin/python benchmarks/adhoc/ner_collapse_trace.py --set wnut17 --seed 0 \
        --out benchmarks/ner_collapse_trace_seed0.json
"""
import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench_ner  # noqa: E402

from bertfit.tasks.ner.task import NER  # noqa: E402
from bertfit.train import loop  # noqa: E402
from bertfit.train.config import TrainConfig  # noqa: E402
from bertfit.train.finetune import fine_tune  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--set", default="wnut17", choices=list(bench_ner.SETS))
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    trace: list[dict] = []
    holder: dict = {}
    original_loss, original_clip = NER.loss, loop.clip_grad_norm

    def loss(self, outputs, targets):
        labelled = targets != -100
        predicted = outputs.detach().argmax(-1)[labelled]
        gold = targets[labelled]
        holder["task"] = self
        trace.append({"pred_non_o": float((predicted != 0).float().mean()), "gold_non_o": float((gold != 0).float().mean())})
        return original_loss(self, outputs, targets)

    def clip(parameters, max_norm, kept=None):
        parameters = list(parameters)
        model = holder["model"]
        head = torch.sqrt(sum(p.grad.float().pow(2).sum() for p in model.classifier.parameters()))
        total = original_clip(parameters, max_norm, kept)  # the norm before clipping (the encoder's from it)
        bias = model.classifier.bias.detach()
        trace[-1].update(head_grad=float(head), encoder_grad=float(torch.sqrt(torch.clamp(total.float() ** 2 - head ** 2, min=0))),
                         o_bias_margin=float(bias[0] - bias[1:].mean()))
        return total

    original_init = loop.Trainer.__init__

    def init(self, model, *a, **k):
        holder["model"] = model
        original_init(self, model, *a, **k)
        holder["trainer"] = self

    original_step = loop.Trainer._optimizer_step

    def step(self, group):
        lr = self.scheduler.get_last_lr()[0]
        value = original_step(self, group)
        trace[-1].update(step=self.state.step + 1, lr=lr, loss=value[0])
        return value

    NER.loss, loop.clip_grad_norm, loop.Trainer.__init__, loop.Trainer._optimizer_step = loss, clip, init, step
    files = {"train": str(Path(args.data) / bench_ner.SETS[args.set][0]), "test": str(Path(args.data) / bench_ner.SETS[args.set][1])}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = TrainConfig(train_file=files["train"], test_file=bench_ner.limited_test(files["test"], work),
                             problem_type="ner", model="minilm-l6", max_steps=args.steps, batch_size=bench_ner.BATCH,
                             lr=bench_ner.LR, warmup_ratio=bench_ner.WARMUP, weight_decay=bench_ner.WEIGHT_DECAY,
                             max_length=bench_ner.MAX_LENGTH, seed=args.seed, eval_every=args.steps, save_every=10**6,
                             deduplicate=False, split=(1.0, 0.0, 0.0), output_dir=str(work / "run"))
        result = fine_tune(config)
    test = result.metrics["test"]
    out = {"set": args.set, "seed": args.seed, "steps": args.steps,
           "test": {k: test[k] for k in ("f1", "precision", "recall", "predicted_entities")}, "trace": trace}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    for r in trace:
        if r["step"] <= 20 or r["step"] % 10 == 0:
            print(f"step {r['step']:3d} lr {r['lr']:.2e} loss {r['loss']:.3f} non-O pred {r['pred_non_o']:.3f} "
                  f"gold {r['gold_non_o']:.3f} O-bias margin {r['o_bias_margin']:+.4f} grad head {r['head_grad']:.3f} "
                  f"encoder {r['encoder_grad']:.3f}")
    print("test", out["test"])


if __name__ == "__main__":
    main()
