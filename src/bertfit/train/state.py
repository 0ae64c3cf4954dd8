"""What a resumable checkpoint holds beyond the weights, and how a trainer continues from one.

The trainer's bookkeeping (TrainState), the optimizer and scheduler, every RNG state and the sampler's
position: restored, a run continues bit for bit (train.py's docstring says why that is enough).

Distributed runs (dist.py): rank 0 writes the checkpoint; the RNG states of every rank are gathered
into it (each rank draws its own dropout masks), and the world size is recorded. A resume with the
same world size gives each rank its own RNG back; another world size is refused, because the global
batch (per-rank batch × world × accumulation) and with it the data order would change.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bertfit.batching import epoch_batches, same_order
from bertfit.errors import BertfitError
from bertfit.precision import resumed_precision
from bertfit.train.run_dir import LoadedCheckpoint
from bertfit.train.checks import STATE_FORMAT

logger = logging.getLogger("bertfit.train.loop")


class TrainingError(BertfitError):
    """Training cannot go on (a non-finite loss, a setting that cannot work)."""

    exit_code = 3


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # in global batches (batch_size × world examples each)
    best_value: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    micro_splits: int = 1  # >1 after out-of-memory back-off
    stopped_early: bool = False
    examples_seen: int = 0
    tokens_seen: int = 0
    train_seconds: float = 0.0
    # The logging window in progress (steps since the last train record): checkpointed, so a run
    # resumed in the middle of a window logs the same mean loss and batch hash as an uninterrupted one.
    window_loss: float = 0.0
    window_steps: int = 0
    window_hash: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def checkpoint_payload(trainer: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(weights, tensors for trainer.pt, JSON bookkeeping): everything a resume needs to continue exactly.

    Every rank calls it (the RNG states are gathered); only rank 0's result is written."""
    d = trainer.dist
    trainer_state = {
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        trainer_state["cuda_rng"] = torch.cuda.get_rng_state_all()
    if d.distributed:
        rngs = d.all_gather_object(
            (torch.get_rng_state(), torch.cuda.get_rng_state() if trainer.device.type == "cuda" else None),
            f"gathering the RNG states for the checkpoint of step {trainer.state.step}")
        trainer_state["rank_torch_rng"] = [cpu for cpu, _ in rngs]
        if trainer.device.type == "cuda":
            trainer_state["rank_cuda_rng"] = [cuda for _, cuda in rngs]
    py_state = random.getstate()
    np_state = np.random.get_state()
    if d.is_writer:
        trainer.run.sync_log()  # the log up to here must be on disk before a checkpoint that counts it
    st = trainer.state
    state = {
        "format": STATE_FORMAT,
        **st.to_dict(),
        "python_rng": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy_rng": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "metrics_log_bytes": trainer.run.log_size() if d.is_writer else 0,
        "total_steps": trainer.total_steps,
        "data_fingerprint": trainer.data_fingerprint if d.is_writer else None,  # rank 0 writes; the others never hash the data
        # the sampler: its position (epoch, batch_in_epoch above) and this epoch's order
        "epoch_order": trainer._order if trainer._order_epoch == st.epoch and st.batch_in_epoch else None,
        "notes": list(trainer.notes),
        "precision": trainer.precision.checkpoint_fields(),  # a resume continues in it (exactness)
    }
    if d.distributed:  # absent: a world of one (every checkpoint written before distributed training)
        state["world_size"] = d.world
        state["global_batch"] = trainer.global_batch
    return trainer.model.state_dict(), trainer_state, state


def check_world(trainer: Any, ckpt: LoadedCheckpoint) -> None:
    """A checkpoint continues exactly only with the world size that wrote it (the global batch)."""
    s, d, cfg = ckpt.state, trainer.dist, trainer.config
    saved = s.get("world_size", 1)
    if saved == d.world:
        return
    batch = s.get("global_batch", cfg.batch_size * saved * cfg.grad_accum)
    raise TrainingError(
        f"{trainer.run.path}: the checkpoint of step {ckpt.step} was written by {saved} process(es) (global batch "
        f"{batch} = {cfg.batch_size} per process × {saved} × accumulation {cfg.grad_accum}); this job has "
        f"{d.world}, which would change the global batch to {trainer.global_batch} and with it the data order, so it "
        f"could not continue exactly. Resume with {saved} process(es) (`bertfit {trainer.task.command} --resume RUN --nproc {saved}`, "
        "or torchrun with that many in total), or start a new run")


def restore(trainer: Any, ckpt: LoadedCheckpoint) -> None:
    """Continue from ``ckpt`` (already checked by validate_checkpoint): weights, optimizer, scheduler,
    RNGs, sampler position and order, best-metric bookkeeping, notes, and the metrics log."""
    s, d = ckpt.state, trainer.dist
    run = trainer.run
    check_world(trainer, ckpt)
    # Rank 0 compares (the others never hash every feature) and every rank takes its answer.
    if d.on_writer(lambda: s.get("data_fingerprint") != trainer.data_fingerprint, "checking the training data"):
        raise TrainingError(
            f"{run.path}: the training data (or the tokenizer, or --max-length) differ from the ones this "
            f"run was checkpointed with at step {ckpt.step}, so it cannot continue exactly; restore the original "
            "data, or start again with --overwrite")
    if s.get("total_steps") != trainer.total_steps:
        raise TrainingError(f"{run.path}: the checkpoint at step {ckpt.step} is from a run of {s.get('total_steps')} "
                            f"steps, this one has {trainer.total_steps}; start again with --overwrite")
    rank_rng = ckpt.trainer_state.get("rank_torch_rng")
    if d.distributed and (not isinstance(rank_rng, list) or len(rank_rng) != d.world):
        raise TrainingError(f"{ckpt.path}: the checkpoint lacks the RNG states of its {d.world} ranks")
    if d.is_writer:
        run.set_aside_after(ckpt.step)
    trainer.model.load_state_dict(ckpt.model_state)
    trainer.optimizer.load_state_dict(ckpt.trainer_state["optimizer"])
    trainer.scheduler.load_state_dict(ckpt.trainer_state["scheduler"])
    torch.set_rng_state(rank_rng[d.rank] if d.distributed else ckpt.trainer_state["torch_rng"])
    cuda_rng = ckpt.trainer_state.get("rank_cuda_rng")
    if d.distributed and cuda_rng is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda_rng[d.rank])
    elif "cuda_rng" in ckpt.trainer_state and torch.cuda.is_available() and not d.distributed:
        try:
            torch.cuda.set_rng_state_all(ckpt.trainer_state["cuda_rng"])
        except (RuntimeError, IndexError, ValueError):
            logger.warning(
                "could not restore the CUDA RNG state (different GPUs?); dropout after the resume differs from "
                "an uninterrupted run")
    version, internal, gauss = s["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state((s["numpy_rng"][0], np.array(s["numpy_rng"][1], dtype=np.uint32), *s["numpy_rng"][2:]))
    known = TrainState().__dict__.keys()
    trainer.state = TrainState(**{k: s[k] for k in known if k in s})
    if s.get("epoch_order") is not None:
        order = [np.asarray(b, dtype=np.int64) for b in s["epoch_order"]]
        current = epoch_batches(trainer.lengths, trainer.order_batch, trainer.config.seed,
                                trainer.state.epoch, trainer.config.bucket_window)
        if not same_order(current, order):
            logger.warning(
                "the batch order computed now differs from the checkpoint's (a different NumPy?); finishing epoch %d "
                "in the checkpoint's order", trainer.state.epoch)
        trainer._order, trainer._order_epoch = order, trainer.state.epoch
    trainer.precision = resumed_precision(trainer.precision, s.get("precision"))
    trainer.use_bf16 = trainer.precision.bf16
    notes = [n for n in s.get("notes", []) if isinstance(n, str)]
    trainer.notes = notes + [n for n in trainer.notes if n not in notes]
    if d.is_writer:
        for name, problem in getattr(run, "skipped", []):
            trainer._note(f"checkpoint {name} was unusable ({problem}); resumed from the earlier checkpoint "
                          f"of step {ckpt.step}", warn=False)
        run.truncate_log(int(s["metrics_log_bytes"]))
