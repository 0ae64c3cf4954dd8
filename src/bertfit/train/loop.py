"""The training loop, written out: AdamW, warmup + linear decay, clipping, accumulation, evaluation,
best-checkpoint selection, early stopping, exact resume.

Exactness: the batch order is a function of (seed, epoch) (see batching.epoch_batches), and a
checkpoint stores the position in it, the optimizer/scheduler state and every RNG state; so a
resumed run performs bit-for-bit the same steps as an uninterrupted one on the same machine.
Task-agnostic: the task (tasks/) owns the loss, the metrics and the selection direction; the loop
only moves batches. Loss scaling: the task returns each micro-batch's summed loss and the loop divides
by the whole optimizer step's weight (examples, class weights, label elements), so the gradient is
the same however a step is split into micro-batches (accumulation, or the smaller micro-batches used
after an out-of-memory error). A loss of several means (masked LM + NSP) returns one (sum, weight)
per term (Task.loss_components), each divided by its own step total.

Faults: a non-finite loss or gradient stops training before the weights are updated (TrainingError,
exit code 3); weights are checked finite before every evaluation, best-model save and checkpoint,
so no file ever holds NaN weights; an out-of-memory error halves the micro-batches (same effective
batch); a full disk while checkpointing keeps the previous checkpoint and is reported in the notes;
any other write failure stops training cleanly, with the last checkpoint intact to resume from.

Data parallelism (dist.py; a world of one runs none of it): ``batch_size`` is per process, so the
global batch is batch_size × world × grad_accum. The epoch order is cut into global batches of
batch_size × world examples by the same function of (seed, epoch) as in one process, and each rank
takes its strided share (dist.shard); the step's loss weight, loss and token count are summed over
the ranks, each rank divides its summed loss by the global weight, and the gradients are summed, so
a step's gradient is the single-process one of the same global batch. Evaluation is sharded and
gathered back in input order; every rank takes the same decisions (best, early stop) from the same
gathered outputs; only rank 0 writes.

Test hooks: BERTFIT_KILL_AT_STEP=k sends this process SIGKILL right after step k's optimizer update;
BERTFIT_HANG_AT_STEP=k makes it sleep there instead; BERTFIT_FAULT_RANK=r limits both to rank r.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import math
import os
import random
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from bertfit.train import dist
from bertfit.batching import Batch, EncodedSplit, epoch_batches  # noqa: F401 -- EncodedSplit re-exported (job, tests)
from bertfit.train.embedding_grad import WordEmbeddingGrad, clip_grad_norm
from bertfit.errors import BertfitError, CheckpointError
from bertfit.precision import apply_kernel, training_precision
from bertfit.train.checks import validate_checkpoint
from bertfit.inference import is_out_of_memory, predict_logits  # noqa: F401 -- predict_logits re-exported: job, benchmarks and tests import it from here
from bertfit.train.run_dir import LoadedCheckpoint, RunDir
from bertfit.artifact import task_of_config
from bertfit.tasks.base import Task
from bertfit.train.config import TrainConfig
from bertfit.train.state import TrainingError, TrainState, checkpoint_payload, restore

__all__ = ["Trainer", "TrainingError", "TrainState", "TrainResult", "EncodedSplit", "seed_everything", "predict_logits"]

logger = logging.getLogger(__name__)

KILL_AT_STEP_ENV = "BERTFIT_KILL_AT_STEP"
HANG_AT_STEP_ENV = "BERTFIT_HANG_AT_STEP"
FAULT_RANK_ENV = "BERTFIT_FAULT_RANK"


@dataclass


@dataclass
class TrainResult:
    state: TrainState
    history: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices only; never on biases, LayerNorm or embeddings' norm."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def linear_schedule(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)  # the first step already uses a small nonzero lr
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def batch_hash(previous: str, group: Sequence[Sequence[int]]) -> str:
    """Chain hash of the example indices of a step's batches (makes batch identity checkable in the log)."""
    h = hashlib.sha256(previous.encode("ascii"))
    for batch in group:
        h.update(np.asarray(batch, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]


def data_fingerprint(split: EncodedSplit) -> str:
    """SHA-256 of the encoded training data: a resume must see exactly the data the run started with."""
    h = hashlib.sha256()
    targets = split.targets if split.targets is not None else [None] * len(split.encoded)
    # Features mapped from the tokenized cache are read as views of the file, one pass, no lists made.
    arrays = getattr(split.encoded, "arrays", None)
    rows = arrays() if arrays is not None else ((e.ids, e.type_ids) for e in split.encoded)
    for (ids, type_ids), target in zip(rows, targets):
        h.update(np.asarray(ids, dtype=np.int64).tobytes())
        h.update(b"/")
        h.update(np.asarray(type_ids, dtype=np.int64).tobytes())
        # Class ids hash as before the task seam, so runs checkpointed then still resume.
        if target is None:  # targets drawn per batch (masked LM): the ids are the data
            text = "-"
        elif np.ndim(target) == 0:
            text = str(int(target))
        else:
            text = ",".join(repr(float(v)) for v in np.ravel(target))
        h.update(f"/{text};".encode("ascii"))
    return h.hexdigest()


def describe_os_error(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "the disk is full: No space left on device"
    if exc.errno == getattr(errno, "EDQUOT", None):
        return "the disk quota is exceeded"
    return exc.strerror or str(exc) or type(exc).__name__


class Trainer:
    def __init__(self, model: torch.nn.Module, config: TrainConfig, train: EncodedSplit,
                 validation: EncodedSplit | None, run: RunDir, *, pad_id: int, device: torch.device,
                 task: Task | None = None,
                 on_save_best: Callable[[torch.nn.Module, int], None] | None = None,
                 callback: Callable[[dict[str, Any], TrainState, int], None] | None = None) -> None:
        self.model = model.to(device)
        # Without a task: the one the model's config describes (its problem_type and labels).
        self.task = task if task is not None else task_of_config(model.config)
        task = self.task
        self.config = config
        self.metric = config.metric or task.default_metric
        if self.metric not in task.metric_names:
            raise TrainingError(f"--metric {self.metric} does not apply to {task.name}; "
                                f"choose one of {', '.join(task.metric_names)}")
        self.train_data = train
        self.validation = validation
        self.run = run
        self.pad_id = pad_id
        self.device = device
        self.on_save_best = on_save_best
        self.callback = callback
        task.prepare_training(config.to_dict(), train.targets)
        # The batch order is drawn over units: features, or groups of them that train together (a long
        # text's windows, whose loss is the text's: tasks/sequence.py); a unit's length is its tokens.
        self.units = task.train_units(train)
        lengths = train.lengths
        self.lengths = lengths if self.units is None else [sum(lengths[i] for i in u) for u in self.units]
        self.dist = dist.current()
        self.order_batch = config.batch_size * self.dist.world  # examples per batch of the epoch order
        self.global_batch = self.order_batch * config.grad_accum  # examples per optimizer step
        batches_per_epoch = math.ceil(len(self.lengths) / self.order_batch)
        self.steps_per_epoch = math.ceil(batches_per_epoch / config.grad_accum)
        self.total_steps = config.max_steps or max(1, math.ceil(config.epochs * self.steps_per_epoch))
        self.warmup_steps = int(config.warmup_ratio * self.total_steps)
        self.optimizer = self._make_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, linear_schedule(self.warmup_steps, self.total_steps))
        self.state = TrainState()
        self.precision = training_precision(config.bf16, device)  # bf16 / kernels chosen per machine; logs one line
        self.use_bf16 = self.precision.bf16
        self.forward = torch.compile(self.model) if config.compile else self.model
        # CPU: the word embeddings' gradient is kept in one dense buffer that the backward adds a
        # sparse gradient into, and only its touched rows are zeroed and clipped (see embedding_grad).
        self._token_grad: WordEmbeddingGrad | None = None
        # Not with a head that reads the embedding matrix as a whole (a tied masked-LM decoder): its
        # gradient is dense over the vocabulary, so every row must be zeroed and clipped.
        if device.type == "cpu" and not config.compile and not getattr(self.model, "ties_word_embeddings", False):
            self._token_grad = WordEmbeddingGrad(self.model.bert.embeddings.token.weight)
        self.notes: list[str] = []
        self._grad_norm = 0.0  # the last step's gradient norm (the train records show it)
        self._data_fingerprint: str | None = None  # made when first needed: by rank 0 alone (see data_fingerprint)
        self._order: list[np.ndarray] | None = None  # the batch order of epoch self._order_epoch
        self._order_epoch = -1
        fault_rank = os.environ.get(FAULT_RANK_ENV, "").strip()
        mine = not fault_rank.isdigit() or int(fault_rank) == self.dist.rank
        kill_at, hang_at = (os.environ.get(k, "").strip() for k in (KILL_AT_STEP_ENV, HANG_AT_STEP_ENV))
        self._kill_at = int(kill_at) if kill_at.isdigit() and mine else None
        self._hang_at = int(hang_at) if hang_at.isdigit() and mine else None
        self.model.bert.gradient_checkpointing = config.gradient_checkpointing
        if self.dist.distributed:
            # The same start on every rank whatever each loaded; then each rank its own dropout stream.
            self.dist.broadcast_module(self.model, "sending rank 0's initial weights")
            torch.manual_seed(self.dist.rank_seed(config.seed))
        msg = self.task.lr_warning(config.lr)
        if msg:
            logger.warning(msg)
            self.notes.append(msg)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        groups = param_groups(self.model, self.config.weight_decay)
        kwargs = dict(lr=self.config.lr, betas=self.config.adam_betas, eps=self.config.adam_eps)
        try:  # the fused kernel updates all parameters in one pass (CPU and CUDA in recent torch)
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            return torch.optim.AdamW(groups, foreach=True, **kwargs)

    # -- resume ------------------------------------------------------------------------------
    def checkpoint_payload(self) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
        """(weights, tensors for trainer.pt, JSON bookkeeping): see train_state.checkpoint_payload."""
        return checkpoint_payload(self)

    def restore(self, ckpt: LoadedCheckpoint) -> None:
        """Continue exactly from ``ckpt`` (already checked by validate_checkpoint): see train_state.restore."""
        restore(self, ckpt)

    @property
    def data_fingerprint(self) -> str:
        """The training data's fingerprint (data_fingerprint), made on first use. Only rank 0 uses it (it
        writes checkpoints and checks a resume's data), so the other ranks never read every feature:
        each reads its own share of the features (mapped from the tokenized cache for a large split)."""
        if self._data_fingerprint is None:
            self._data_fingerprint = data_fingerprint(self.train_data)
        return self._data_fingerprint

    def resume_latest(self) -> LoadedCheckpoint:
        """Continue from the run's latest intact checkpoint: rank 0 reads it, every rank gets rank 0's."""
        def latest() -> LoadedCheckpoint:
            ckpt = self.run.latest_good_checkpoint(validate=self.validate_checkpoint)
            if ckpt is None:
                raise BertfitError(f"{self.run.path}: no intact checkpoint to resume from (all failed their checks)")
            return ckpt

        ckpt = self.dist.on_writer(latest, "reading the checkpoint to resume from")
        self.restore(ckpt)
        logger.warning("resuming %s from step %d of %d", self.run.path, ckpt.step, self.total_steps)
        return ckpt

    def validate_checkpoint(self, ckpt: LoadedCheckpoint) -> None:
        """Every part of a checkpoint must fit this model and trainer before it is used (CheckpointError)."""
        validate_checkpoint(ckpt, self.model, self.optimizer, len(self.lengths))

    def save_checkpoint(self) -> None:
        """Write a resumable checkpoint; a failing disk is reported (notes) and training goes on."""
        st = self.state
        self._check_finite_weights("writing the checkpoint")
        try:
            model_state, trainer_state, state = self.checkpoint_payload()  # every rank: the RNGs are gathered
            if not self.dist.is_writer:
                return
            self.run.save_checkpoint(st.step, model_state, trainer_state, state, self.config.keep_checkpoints,
                                     protect=st.best_step)
        except CheckpointError as exc:  # NaN or infinite optimizer state: nothing sane to continue from
            raise TrainingError(f"{exc}; stopped at step {st.step} ({self._last_checkpoint_text()}). "
                                f"Lower --lr (now {self.config.lr:g}) or check the data") from None
        except OSError as exc:
            msg = (f"could not save the checkpoint at step {st.step} ({describe_os_error(exc)}); "
                   f"{self._last_checkpoint_text(verify=True)}; training goes on and the next save tries again")
            self._note(msg, level=logging.ERROR)

    def _last_checkpoint_text(self, verify: bool = False) -> str:
        steps = self.run.checkpoint_steps()
        if not steps:
            return "no checkpoint was written before"
        if verify:
            for step in reversed(steps):
                if self.run.verify_checkpoint(self.run.checkpoint_path(step)) is None:
                    return f"the previous checkpoint (step {step}) is intact"
            return "no intact previous checkpoint was found"
        return f"the last checkpoint, step {steps[-1]}, is intact"

    def _note(self, msg: str, level: int = logging.WARNING, warn: bool = True) -> None:
        if warn:
            logger.log(level, msg)
        if msg not in self.notes:
            self.notes.append(msg)

    def _check_finite_weights(self, before: str) -> None:
        for name, p in self.model.named_parameters():
            if not bool(torch.isfinite(p).all()):
                raise TrainingError(
                    f"the weights became NaN or infinite at step {self.state.step} ({name}); stopped before {before} "
                    f"({self._last_checkpoint_text()}). Lower --lr (now {self.config.lr:g}) or check the data")

    def _save_best(self) -> None:
        if not self.on_save_best or not self.dist.is_writer:
            return
        self._check_finite_weights("saving the best model")
        try:
            self.on_save_best(self.model, self.state.step)
        except OSError as exc:
            raise TrainingError(
                f"could not save the best model at step {self.state.step} into {self.run.path} "
                f"({describe_os_error(exc)}); {self._last_checkpoint_text()}: free some space and continue with "
                f"`bertfit train --resume {self.run.path}`") from None

    def _epoch_order(self, epoch: int) -> list[np.ndarray]:
        if self._order_epoch != epoch or self._order is None:
            self._order = epoch_batches(self.lengths, self.order_batch, self.config.seed, epoch,
                                        self.config.bucket_window)
            self._order_epoch = epoch
        return self._order

    # -- the loop ----------------------------------------------------------------------------
    def _zero_grad(self) -> None:
        """Drop every gradient (set_to_none), except the word embeddings' buffer on the CPU: its
        touched rows are zeroed in place (0.1 ms) instead of a fresh 47 MB tensor (16 ms of page faults)."""
        self.optimizer.zero_grad(set_to_none=True)
        if self._token_grad is not None:
            self._token_grad.zero()

    def train(self) -> TrainResult:
        embeddings = self.model.bert.embeddings
        embeddings.sparse_token_grad = self._token_grad is not None
        apply_kernel(self.model, self.precision)  # fp32 dense layers on oneDNN where measured faster
        if self._token_grad is not None:
            self._token_grad.forget()  # whatever happened to the buffer before, start from all zeros
        self._zero_grad()
        try:
            return self._train()
        except OSError as exc:  # the run directory cannot be written (disk full, gone, read-only)
            raise TrainingError(
                f"could not write to the run directory {self.run.path} at step {self.state.step} "
                f"({describe_os_error(exc)}{': ' + exc.filename if isinstance(exc.filename, str) else ''}); "
                f"{self._last_checkpoint_text()}: fix this and continue with `bertfit train --resume {self.run.path}`"
            ) from None
        finally:  # the model leaves with ordinary dense gradients, for whoever trains it next
            embeddings.sparse_token_grad = False
            self.model.bert.gradient_checkpointing = False
            apply_kernel(self.model, None)
            self.optimizer.zero_grad(set_to_none=True)

    def _train(self) -> TrainResult:
        cfg, st, d = self.config, self.state, self.dist
        logger.info("global batch %d = %d per process × %d process%s × %d accumulation", self.global_batch,
                    cfg.batch_size, d.world, "es" if d.world > 1 else "", cfg.grad_accum)
        if st.step == 0:
            start = {"kind": "start", "total_steps": self.total_steps, "steps_per_epoch": self.steps_per_epoch,
                     "warmup_steps": self.warmup_steps, "examples": len(self.lengths)}
            if d.distributed:
                start.update(world_size=d.world, global_batch=self.global_batch)
            self._log(start)
        window_tokens, window_examples = 0, 0  # throughput only; not part of the checkpoint
        window_start = time.perf_counter()
        while st.step < self.total_steps and not st.stopped_early:
            batches = self._epoch_order(st.epoch)
            while st.batch_in_epoch < len(batches) and st.step < self.total_steps and not st.stopped_early:
                group = batches[st.batch_in_epoch : st.batch_in_epoch + cfg.grad_accum]
                loss, tokens = self._optimizer_step(group)
                st.batch_in_epoch += len(group)
                st.step += 1
                if self._kill_at == st.step:  # test hook: a kill -9 right after this step's update
                    os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))
                while self._hang_at == st.step:  # test hook: a rank that stops answering
                    time.sleep(1)
                n = sum(len(b) for b in group)
                st.examples_seen += n
                st.tokens_seen += tokens
                window_tokens += tokens
                window_examples += n
                st.window_loss += loss
                st.window_steps += 1
                st.window_hash = batch_hash(st.window_hash, group)
                end_of_epoch = st.batch_in_epoch >= len(batches)
                if st.step % cfg.log_every == 0 or st.step == self.total_steps or end_of_epoch:
                    elapsed = time.perf_counter() - window_start
                    st.train_seconds += elapsed
                    record = {"kind": "train", "step": st.step, "epoch": self._epoch_progress(len(batches)),
                              "loss": st.window_loss / st.window_steps, "lr": self.scheduler.get_last_lr()[0],
                              "grad_norm": self._grad_norm,  # of this step, before clipping (as transformers logs it)
                              "batch_hash": st.window_hash,
                              "tokens_per_s": window_tokens / max(elapsed, 1e-9),
                              "examples_per_s": window_examples / max(elapsed, 1e-9)}
                    self._log(record)
                    window_tokens, window_examples = 0, 0
                    st.window_loss, st.window_steps, st.window_hash = 0.0, 0, ""
                    window_start = time.perf_counter()
                if end_of_epoch:
                    st.epoch += 1
                    st.batch_in_epoch = 0
                eval_due = (cfg.eval_every and st.step % cfg.eval_every == 0) or (end_of_epoch and cfg.eval_each_epoch) \
                    or st.step == self.total_steps
                paused_at = time.perf_counter()
                if eval_due and self.validation is not None and len(self.validation):
                    self._evaluate_and_select()
                    self.save_checkpoint()
                elif st.step % cfg.save_every == 0:
                    self.save_checkpoint()
                window_start += time.perf_counter() - paused_at  # evaluation and saving are not training time
                if end_of_epoch:
                    break  # the next epoch has its own order (batch_in_epoch is 0 again, so don't loop on)
        if self.validation is None or not len(self.validation):
            self._save_best()  # nothing to select on: the last weights are the result
        return TrainResult(st, self.run.read_log() if d.is_writer else [], self.notes)

    def _log(self, record: dict[str, Any]) -> None:
        """A record for the metrics log and the progress callback: rank 0's alone."""
        if self.dist.is_writer:
            self.run.append_log(record)
            if self.callback and record["kind"] != "start":
                self.callback(record, self.state, self.total_steps)

    def _epoch_progress(self, batches_in_epoch: int) -> float:
        return round(self.state.epoch + self.state.batch_in_epoch / max(1, batches_in_epoch), 4)

    def _optimizer_step(self, group: list[np.ndarray]) -> tuple[float, int]:
        self.model.train()
        data, d = self.train_data, self.dist
        step = d.step = self.state.step + 1
        shards = [shard for idx in group if (shard := d.shard(idx))]  # this rank's part of the global batches
        batches = [self.task.collate(data, self._features(idx), self.pad_id, epoch=self.state.epoch) for idx in shards]
        # One weight per loss component (most tasks: one), each summed over the whole step; a rank with
        # no share of this step adds zeros (every rank all-reduces the same number of values).
        components = self.task.loss_components
        weights = [np.asarray(self.task.loss_weight(b.labels), dtype=np.float64).reshape(components) for b in batches]
        total_weight = [sum(float(w[k]) for w in weights) for k in range(components)]
        tokens = sum(b.real_tokens for b in batches)
        if d.distributed:  # the normalisers are the whole step's, over every rank
            *total_weight, tokens = d.all_reduce_sum([*total_weight, tokens], f"the loss weight all-reduce of step {step}")
            tokens = int(tokens)
        if not any(w > 0 for w in total_weight):
            raise TrainingError(f"every example of step {step}'s batch has loss weight 0, so there is no loss to "
                                f"learn from; give every class a positive --class-weights ({self._last_checkpoint_text()})")
        # A retry after out-of-memory starts from the same random state (dropout), like the first try.
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None
        while True:
            try:
                loss = self._accumulate(batches, total_weight)
                break
            except (RuntimeError, MemoryError) as exc:
                if not is_out_of_memory(exc):
                    raise
                self._zero_grad()
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                micro = max(-(-len(b.indices) // self.state.micro_splits) for b in batches)
                if micro <= 1:
                    raise TrainingError(
                        f"out of memory at step {step} even with micro-batches of one example; lower --max-length "
                        f"(now {self.config.max_length}) or use a machine with more memory "
                        f"({self._last_checkpoint_text()})") from None
                self.state.micro_splits *= 2
                torch.set_rng_state(rng)
                if cuda_rng is not None:
                    torch.cuda.set_rng_state_all(cuda_rng)
                size = max(-(-len(b.indices) // self.state.micro_splits) for b in batches)
                self._note(f"out of memory at step {step} with micro-batches of {micro} (--batch-size "
                           f"{self.config.batch_size}): continuing with micro-batches of {size} and more accumulation "
                           "(the effective batch is unchanged)")
        if d.distributed:  # the step's loss over every rank; then the step's gradient, summed
            loss = d.all_reduce_sum([loss], f"the loss all-reduce of step {step}")[0]
            if math.isfinite(loss):
                d.all_reduce_gradients(self.model.parameters(), self._token_grad)
        if not math.isfinite(loss):
            self._zero_grad()
            raise TrainingError(
                f"the training loss became {loss} at step {step}; stopped before the weights were updated "
                f"({self._last_checkpoint_text()}). Lower --lr (now {self.config.lr:g}) or check the data")
        grad_norm = clip_grad_norm(self.model.parameters(), self.config.max_grad_norm or float("inf"), self._token_grad)
        if not torch.isfinite(grad_norm):
            self._zero_grad()
            raise TrainingError(f"the gradient became NaN or infinite at step {step}; stopped before the weights were "
                                f"updated ({self._last_checkpoint_text()}). Lower --lr (now {self.config.lr:g}) "
                                "or check the data")
        self._grad_norm = float(grad_norm)  # already on the host: the finiteness check above synchronised
        self.optimizer.step()
        self.scheduler.step()
        self._zero_grad()
        return loss, tokens

    def _features(self, units: list[int]) -> list[int]:
        """A batch of units → the features it holds, in order."""
        return units if self.units is None else [f for u in units for f in self.units[u]]

    def _accumulate(self, batches: list[Batch], total_weight: list[float]) -> float:
        loss_value = 0.0
        for batch in batches:
            for micro in batch.split(self.state.micro_splits) if self.state.micro_splits > 1 else [batch]:
                micro = micro.to(self.device)
                if self._token_grad is not None:  # after a zeroing (out-of-memory retry) too
                    self._token_grad.touch(micro.input_ids)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
                    outputs = self.task.forward(self.forward, micro)
                outputs = self.task.batch_outputs(outputs, micro)  # a text's windows combined (or unchanged)
                summed, _ = self.task.loss(outputs, micro.labels)
                if len(total_weight) == 1:  # the micro-batch's (weighted) sum / the whole step's weight
                    loss = summed / total_weight[0]
                else:  # each component's sum / its own step total (a component absent from the step adds 0)
                    loss = sum(summed[k] / (w if w > 0 else 1.0) for k, w in enumerate(total_weight))
                loss.backward()
                loss_value += float(loss.detach())
        return loss_value

    # -- evaluation --------------------------------------------------------------------------
    def _evaluate_and_select(self) -> None:
        st, cfg = self.state, self.config
        self._check_finite_weights("evaluating")
        raw = self.dist.map_sharded(  # each rank a share of the features, gathered back in order on every rank
            len(self.validation), lambda idx: self.task.evaluation_outputs(
                self.model, self.validation, self.pad_id, self.device, cfg.eval_batch_tokens, bf16=self.use_bf16,
                indices=idx),
            f"gathering the validation outputs of step {st.step}")
        logits = self.task.gather(self.validation, raw)  # per example (windows stitched, spans decoded)
        metrics = self.task.evaluate(logits, self.validation.gold)
        # The epoch as the train records count it (an evaluation every N steps falls mid-epoch: 0.125, not 0).
        epoch = self._epoch_progress(len(self._epoch_order(st.epoch))) if st.batch_in_epoch else round(st.epoch + 0.0, 4)
        record = {"kind": "eval", "split": "validation", "step": st.step, "epoch": epoch,
                  **{k: metrics[k] for k in self.task.headline_metrics}}
        for warning in self.task.warnings(logits):
            msg = f"step {st.step}: {warning}"
            logger.warning(msg)
            if msg not in self.notes:
                self.notes.append(msg)
            record["collapsed"] = True
        value = metrics[self.metric]
        if self.task.better(self.metric, value, st.best_value):
            st.best_value, st.best_step, st.evals_without_improvement = value, st.step, 0
            record["best"] = True
            self._save_best()
        else:
            st.evals_without_improvement += 1
            if cfg.patience and st.evals_without_improvement >= cfg.patience:
                st.stopped_early = True
                record["early_stop"] = True
                logger.info("early stopping at step %d: no %s improvement in %d evaluations", st.step, self.metric, cfg.patience)
        self._log(record)
