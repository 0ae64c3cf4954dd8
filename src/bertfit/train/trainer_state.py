"""``trainer_state.json``: the run's history in the format transformers' Trainer writes, so tools
that read Trainer runs (dashboards, scripts that plot ``log_history``) read bertfit's too.

``log_history`` holds one dict per logged training step (loss, learning_rate, grad_norm, epoch, step)
and one per evaluation (eval_<metric>, epoch, step), in order; the top level has global_step,
best_metric, best_global_step and the rest of Trainer's fields. Built from metrics.jsonl, which
stays the run's own log."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from bertfit.io import write_json_atomic
from bertfit.train.run_dir import RunDir

FILE = "trainer_state.json"
_TRAIN_NAMES = {"lr": "learning_rate"}
_SKIP = ("kind", "split", "step", "epoch", "batch_hash", "best", "early_stop", "collapsed")


def log_history(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    history: list[dict[str, Any]] = []
    for r in records:
        if r.get("kind") not in ("train", "eval"):
            continue
        prefix = "" if r["kind"] == "train" else "eval_"
        entry: dict[str, Any] = {"epoch": r.get("epoch"), "step": r["step"]}
        for key, value in r.items():
            if key in _SKIP or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            entry[prefix + _TRAIN_NAMES.get(key, key)] = value
        history.append(entry)
    return history


def write_trainer_state(run: RunDir, state: Any, config: Any, total_steps: int, metric: str,
                        wall_time_s: float, world_size: int = 1) -> None:
    """Write RUN/trainer_state.json from the run's log and the trainer's final state."""
    records = run.read_log()
    history = log_history(records)
    train = [r for r in records if r.get("kind") == "train"]
    if train:  # Trainer ends its history with a summary of the whole run
        losses = [float(r["loss"]) for r in train if isinstance(r.get("loss"), (int, float))]
        history.append({"epoch": train[-1].get("epoch"), "step": state.step, "train_runtime": round(wall_time_s, 3),
                        "train_loss": sum(losses) / len(losses) if losses else None,
                        "train_samples_per_second": round(state.examples_seen / max(state.train_seconds, 1e-9), 3),
                        "train_steps_per_second": round(state.step / max(state.train_seconds, 1e-9), 3)})
    write_json_atomic(run.file(FILE), {
        "best_global_step": state.best_step, "best_metric": state.best_value,
        "best_model_checkpoint": str(run.path) if state.best_step is not None else None,
        "metric_for_best_model": metric, "epoch": train[-1].get("epoch") if train else 0.0,
        "eval_steps": config.eval_every or None, "global_step": state.step, "is_hyper_param_search": False,
        "is_local_process_zero": True, "is_world_process_zero": True, "log_history": history,
        "logging_steps": config.log_every, "max_steps": total_steps, "num_input_tokens_seen": state.tokens_seen,
        "num_train_epochs": math.ceil(config.epochs) if not config.max_steps else None,
        "save_steps": config.save_every, "stateful_callbacks": {}, "total_flos": 0,
        "train_batch_size": config.batch_size, "world_size": world_size, "trial_name": None, "trial_params": None})
