"""The peer's training loop for the task benchmarks (bench_tasks, bench_ner, bench_qa): transformers'
``Trainer`` configured as its example scripts (run_glue.py, run_ner.py, run_qa.py) do, with the same
hyperparameters as the bertfit run beside it. Timed from train begin to train end, counting the real
(non-padding) tokens its training forward passes saw, so both sides report real tokens/s."""

from __future__ import annotations

import tempfile
import time
from typing import Any


def train_with_trainer(model: Any, tokenizer: Any, train: Any, collator: Any, *, batch: int, steps: int, lr: float,
                       warmup: float, weight_decay: float, seed: int, bf16: bool = False) -> dict[str, float]:
    """Train ``model`` in place; returns {"seconds", "tokens", "steps"} and leaves it in eval mode.
    bf16: TrainingArguments(bf16=True), autocast on the CPU (for CPUs with bf16 hardware)."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    counted = {"tokens": 0}

    def count(module, positional, kwargs):
        if module.training:
            counted["tokens"] += int(kwargs["attention_mask"].sum())

    hook = model.register_forward_pre_hook(count, with_kwargs=True)

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_train_end(self, *a, **k):
            self.seconds = time.perf_counter() - self.start

    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=batch, max_steps=steps, learning_rate=lr,
            warmup_steps=int(warmup * steps), lr_scheduler_type="linear", weight_decay=weight_decay, max_grad_norm=1.0,
            seed=seed, logging_steps=50, save_strategy="no", eval_strategy="no", report_to=[], disable_tqdm=True,
            use_cpu=True, dataloader_num_workers=0, bf16=bf16)
        trainer = Trainer(model=model, args=targs, train_dataset=train, data_collator=collator,
                          processing_class=tokenizer, callbacks=[clock])
        trainer.train()
    hook.remove()
    model.eval()
    return {"seconds": clock.seconds, "tokens": counted["tokens"], "steps": trainer.state.global_step}
