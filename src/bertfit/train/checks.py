"""Checks that a checkpoint fits the run before a resume uses it: weights, optimizer, scheduler, RNG
states and the bookkeeping in state.json. Checkpoints are checksummed, but a checksum only proves the
files are the ones written; these checks catch a checkpoint of another model, run or format."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from bertfit.errors import CheckpointError
from bertfit.train.run_dir import LoadedCheckpoint

STATE_FORMAT = 1  # state.json's format; a checkpoint of another format is refused


def validate_checkpoint(ckpt: LoadedCheckpoint, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        train_examples: int) -> None:
    """Every part of a checkpoint must fit this model, optimizer and data before it is used (CheckpointError):
    a damaged or foreign checkpoint is refused with the part that does not fit, never half-loaded."""
    where = ckpt.path
    # weights: same names, shapes and dtypes (finiteness is checked on loading)
    ours = model.state_dict()
    _require(set(ckpt.model_state) == set(ours), f"{where}: parameter names differ from this model's")
    for name, value in ckpt.model_state.items():
        _require(tuple(value.shape) == tuple(ours[name].shape),
                 f"{where}: {name} has shape {tuple(value.shape)}, expected {tuple(ours[name].shape)}")
        _require(value.dtype == ours[name].dtype, f"{where}: {name} has dtype {value.dtype}, expected {ours[name].dtype}")
    # optimizer: the same parameter groups, and moments shaped like their parameters
    opt, mine = ckpt.trainer_state["optimizer"], optimizer.state_dict()
    _require(isinstance(opt, dict) and isinstance(opt.get("state"), dict) and isinstance(opt.get("param_groups"), list),
             f"{where}: malformed optimizer state")
    _require(len(opt["param_groups"]) == len(mine["param_groups"]), f"{where}: optimizer parameter groups differ")
    shapes = {}
    for theirs, group, live in zip(opt["param_groups"], mine["param_groups"], optimizer.param_groups):
        _require(isinstance(theirs, dict) and set(theirs) == set(group) and theirs["params"] == group["params"],
                 f"{where}: optimizer parameter groups differ")
        for key, value in theirs.items():
            if key != "params" and _is_number(value):
                _require(math.isfinite(value) and value >= 0, f"{where}: optimizer setting {key}={value!r}")
        shapes.update({i: (tuple(p.shape), p.dtype) for i, p in zip(group["params"], live["params"])})
    for index, entry in opt["state"].items():
        _require(index in shapes and isinstance(entry, dict), f"{where}: optimizer state for an unknown parameter")
        for key, value in entry.items():
            _require(isinstance(value, torch.Tensor), f"{where}: optimizer state {key} is not a tensor")
            if key == "step":
                _require(value.numel() == 1 and 0 <= float(value) <= ckpt.step and float(value).is_integer(),
                         f"{where}: optimizer state step {value.tolist()} does not fit step {ckpt.step}")
            else:
                _require((tuple(value.shape), value.dtype) == shapes[index],
                         f"{where}: optimizer state {key} of parameter {index} has shape {tuple(value.shape)}")
    # scheduler and RNG
    sched = ckpt.trainer_state["scheduler"]
    _require(isinstance(sched, dict) and sched.get("last_epoch") == ckpt.step,
             f"{where}: the scheduler state is not at step {ckpt.step}")
    _require(isinstance(sched.get("base_lrs"), list) and len(sched["base_lrs"]) == len(mine["param_groups"])
             and all(_is_number(v) and math.isfinite(v) for v in sched["base_lrs"]), f"{where}: malformed scheduler state")
    rng = ckpt.trainer_state["torch_rng"]
    reference = torch.get_rng_state()
    _require(isinstance(rng, torch.Tensor) and rng.dtype == reference.dtype and rng.shape == reference.shape,
             f"{where}: malformed torch RNG state")
    # bookkeeping
    s = ckpt.state
    _require(s.get("format") == STATE_FORMAT, f"{where}: state.json has format {s.get('format')!r}, expected {STATE_FORMAT}")
    for key in ("epoch", "batch_in_epoch", "evals_without_improvement", "examples_seen", "tokens_seen",
                "metrics_log_bytes", "window_steps"):
        _require(_is_int(s.get(key)) and s[key] >= 0, f"{where}: state.json {key}={s.get(key)!r}")
    _require(_is_int(s.get("micro_splits")) and 1 <= s["micro_splits"] <= 1024, f"{where}: state.json micro_splits")
    _require(_is_int(s.get("total_steps")) and 0 < ckpt.step <= s["total_steps"], f"{where}: state.json step/total_steps")
    _require(isinstance(s.get("stopped_early"), bool), f"{where}: state.json stopped_early")
    _require(s.get("best_value") is None or _is_number(s["best_value"]), f"{where}: state.json best_value")
    _require(s.get("best_step") is None or (_is_int(s["best_step"]) and 0 < s["best_step"] <= ckpt.step),
             f"{where}: state.json best_step")
    for key in ("window_loss", "train_seconds"):
        _require(_is_number(s.get(key)) and math.isfinite(s[key]), f"{where}: state.json {key}")
    _require(isinstance(s.get("window_hash"), str) and isinstance(s.get("data_fingerprint"), str),
             f"{where}: state.json hashes")
    _require(isinstance(s.get("notes", []), list), f"{where}: state.json notes")
    py = s.get("python_rng")
    _require(isinstance(py, list) and len(py) == 3 and _is_int(py[0]) and isinstance(py[1], list)
             and len(py[1]) == 625 and all(_is_int(v) and 0 <= v < 2**32 for v in py[1])
             and (py[2] is None or _is_number(py[2])), f"{where}: malformed Python RNG state")
    npr = s.get("numpy_rng")
    _require(isinstance(npr, list) and len(npr) == 5 and npr[0] == "MT19937" and isinstance(npr[1], list)
             and len(npr[1]) == 624 and all(_is_int(v) and 0 <= v < 2**32 for v in npr[1])
             and _is_int(npr[2]) and 0 <= npr[2] <= 624 and _is_int(npr[3]) and _is_number(npr[4]),
             f"{where}: malformed NumPy RNG state")
    order = s.get("epoch_order")
    if order is not None:
        _require(isinstance(order, list) and all(isinstance(b, list) and b for b in order)
                 and _is_partition(order, train_examples),
                 f"{where}: the stored batch order is not a partition of the training data")
        _require(s["batch_in_epoch"] <= len(order), f"{where}: state.json batch_in_epoch is past the epoch's end")


def _is_partition(order: list[list[Any]], n: int) -> bool:
    """Whether the batches hold every index 0..n-1 exactly once, as integers: checked in numpy, since an
    order of millions of examples as Python ints would cost a few hundred MB at every resume."""
    try:
        flat = np.concatenate([np.asarray(b) for b in order]) if order else np.zeros(0, dtype=np.int64)
    except (ValueError, TypeError, OverflowError):  # ragged nesting, or values numpy cannot hold
        return False
    return flat.dtype.kind in "iu" and len(flat) == n and bool(np.array_equal(np.sort(flat), np.arange(n)))


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise CheckpointError(message)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
