"""The training loop, written out: AdamW, warmup + linear decay, clipping, accumulation, evaluation,
best-checkpoint selection, early stopping, exact resume.

Exactness: the batch order is a function of (seed, epoch) (see batching.epoch_batches), and a
checkpoint stores the position in it, the optimizer/scheduler state and every RNG state; so a
resumed run performs bit-for-bit the same steps as an uninterrupted one on the same machine.
Loss scaling: each micro-batch contributes sum(w_y · nll) / (total weight of the optimizer step),
so the gradient is the same however a step is split into micro-batches (accumulation, or the
smaller micro-batches used after an out-of-memory error).
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bertfit.batching import Batch, collate, epoch_batches, inference_batches
from bertfit.errors import BertfitError
from bertfit.heads import BertForSequenceClassification
from bertfit.metrics import classification_metrics, predicted_class_share
from bertfit.runs import LoadedCheckpoint, RunDir
from bertfit.tokenizer import Encoded
from bertfit.train_config import TrainConfig

logger = logging.getLogger(__name__)


class TrainingError(BertfitError):
    """Training cannot go on (a non-finite loss, a setting that cannot work)."""

    exit_code = 3


@dataclass
class EncodedSplit:
    encoded: list[Encoded]
    labels: list[int]

    @property
    def lengths(self) -> list[int]:
        return [len(e.ids) for e in self.encoded]

    def __len__(self) -> int:
        return len(self.encoded)


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_value: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    micro_splits: int = 1  # >1 after out-of-memory back-off
    stopped_early: bool = False
    examples_seen: int = 0
    tokens_seen: int = 0
    train_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class TrainResult:
    state: TrainState
    history: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def class_weight_vector(config: TrainConfig, labels: Sequence[str], train_labels: Sequence[int]) -> torch.Tensor | None:
    spec = config.class_weights
    if spec is None:
        return None
    counts = np.bincount(np.asarray(train_labels), minlength=len(labels)).astype(float)
    if spec == "balanced":
        # sklearn's "balanced": n / (K · count_k); a class absent from training gets weight 0.
        weights = np.where(counts > 0, counts.sum() / (len(labels) * np.maximum(counts, 1)), 0.0)
    elif isinstance(spec, dict):
        unknown = sorted(set(spec) - set(labels))
        if unknown:
            raise BertfitError(f"class_weights names unknown label(s) {unknown}; labels are {list(labels)}")
        weights = np.array([float(spec.get(label, 1.0)) for label in labels])
    else:
        if len(spec) != len(labels):
            raise BertfitError(f"class_weights has {len(spec)} values but there are {len(labels)} labels {list(labels)}")
        weights = np.array([float(w) for w in spec])
    if (weights < 0).any() or not np.isfinite(weights).all():
        raise BertfitError(f"class_weights must be finite and non-negative, got {weights.tolist()}")
    return torch.tensor(weights, dtype=torch.float32)


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


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


class Trainer:
    def __init__(self, model: BertForSequenceClassification, config: TrainConfig, train: EncodedSplit,
                 validation: EncodedSplit | None, run: RunDir, *, pad_id: int, device: torch.device,
                 on_save_best: Callable[[BertForSequenceClassification, int], None] | None = None,
                 callback: Callable[[dict[str, Any], TrainState, int], None] | None = None) -> None:
        self.model = model.to(device)
        self.config = config
        self.train_data = train
        self.validation = validation
        self.run = run
        self.pad_id = pad_id
        self.device = device
        self.on_save_best = on_save_best
        self.callback = callback
        self.labels = model.config.labels
        self.class_weights = class_weight_vector(config, self.labels, train.labels)
        if self.class_weights is not None:
            self.class_weights = self.class_weights.to(device)
        self.lengths = train.lengths
        batches_per_epoch = math.ceil(len(train) / config.batch_size)
        self.steps_per_epoch = math.ceil(batches_per_epoch / config.grad_accum)
        self.total_steps = config.max_steps or max(1, math.ceil(config.epochs * self.steps_per_epoch))
        self.warmup_steps = int(config.warmup_ratio * self.total_steps)
        self.optimizer = self._make_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, linear_schedule(self.warmup_steps, self.total_steps))
        self.state = TrainState()
        self.use_bf16 = device.type == "cuda" and (config.bf16 is not False) and torch.cuda.is_bf16_supported()
        self.forward = torch.compile(self.model) if config.compile else self.model
        self.notes: list[str] = []
        if config.lr >= 1e-3:
            msg = (f"lr {config.lr:g} is very high for fine-tuning BERT (typical: 2e-5 to 5e-5); "
                   "training is likely to diverge or collapse to one class")
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
        trainer_state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            trainer_state["cuda_rng"] = torch.cuda.get_rng_state_all()
        np_state = np.random.get_state()
        state = {
            **self.state.to_dict(),
            "python_rng": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
            "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "metrics_log_bytes": self.run.log_size(),
            "total_steps": self.total_steps,
        }
        return self.model.state_dict(), trainer_state, state

    def restore(self, ckpt: LoadedCheckpoint) -> None:
        self.model.load_state_dict(ckpt.model_state)
        self.optimizer.load_state_dict(ckpt.trainer_state["optimizer"])
        self.scheduler.load_state_dict(ckpt.trainer_state["scheduler"])
        torch.set_rng_state(ckpt.trainer_state["torch_rng"])
        if "cuda_rng" in ckpt.trainer_state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt.trainer_state["cuda_rng"])
        s = ckpt.state
        version, internal, gauss = s["python_rng"]
        random.setstate((version, tuple(internal), gauss))
        np.random.set_state((s["numpy_rng"][0], np.array(s["numpy_rng"][1], dtype=np.uint32), *s["numpy_rng"][2:]))
        known = TrainState().__dict__.keys()
        self.state = TrainState(**{k: s[k] for k in known if k in s})
        self.run.truncate_log(int(s["metrics_log_bytes"]))

    def validate_checkpoint(self, ckpt: LoadedCheckpoint) -> None:
        """Shapes and names must match this model before a checkpoint is used."""
        ours = self.model.state_dict()
        if set(ckpt.model_state) != set(ours):
            raise ValueError("parameter names differ from this model")
        for name, value in ckpt.model_state.items():
            if tuple(value.shape) != tuple(ours[name].shape):
                raise ValueError(f"{name} has shape {tuple(value.shape)}, expected {tuple(ours[name].shape)}")

    def save_checkpoint(self) -> None:
        model_state, trainer_state, state = self.checkpoint_payload()
        try:
            self.run.save_checkpoint(self.state.step, model_state, trainer_state, state, self.config.keep_checkpoints)
        except OSError as exc:
            previous = self.run.checkpoint_steps()
            msg = (f"could not save the checkpoint at step {self.state.step} ({exc.strerror or exc}); "
                   f"the previous checkpoint (step {previous[-1] if previous else 'none'}) is intact")
            logger.error(msg)
            self.notes.append(msg)

    # -- the loop ----------------------------------------------------------------------------
    def train(self) -> TrainResult:
        cfg, st = self.config, self.state
        if st.step == 0:
            self.run.append_log({"kind": "start", "total_steps": self.total_steps, "steps_per_epoch": self.steps_per_epoch,
                                 "warmup_steps": self.warmup_steps, "examples": len(self.train_data)})
        window_tokens, window_examples, window_loss, window_steps = 0, 0, 0.0, 0
        window_start = time.perf_counter()
        while st.step < self.total_steps and not st.stopped_early:
            batches = epoch_batches(self.lengths, cfg.batch_size, cfg.seed, st.epoch, cfg.bucket_window)
            while st.batch_in_epoch < len(batches) and st.step < self.total_steps and not st.stopped_early:
                group = batches[st.batch_in_epoch : st.batch_in_epoch + cfg.grad_accum]
                loss, tokens = self._optimizer_step(group)
                st.batch_in_epoch += len(group)
                st.step += 1
                n = sum(len(b) for b in group)
                st.examples_seen += n
                st.tokens_seen += tokens
                window_tokens += tokens
                window_examples += n
                window_loss += loss
                window_steps += 1
                end_of_epoch = st.batch_in_epoch >= len(batches)
                if st.step % cfg.log_every == 0 or st.step == self.total_steps or end_of_epoch:
                    elapsed = time.perf_counter() - window_start
                    st.train_seconds += elapsed
                    record = {"kind": "train", "step": st.step, "epoch": self._epoch_progress(len(batches)),
                              "loss": window_loss / window_steps, "lr": self.scheduler.get_last_lr()[0],
                              "tokens_per_s": window_tokens / max(elapsed, 1e-9),
                              "examples_per_s": window_examples / max(elapsed, 1e-9)}
                    self.run.append_log(record)
                    if self.callback:
                        self.callback(record, st, self.total_steps)
                    window_tokens, window_examples, window_loss, window_steps = 0, 0, 0.0, 0
                    window_start = time.perf_counter()
                if end_of_epoch:
                    st.epoch += 1
                    st.batch_in_epoch = 0
                eval_due = (cfg.eval_every and st.step % cfg.eval_every == 0) or (end_of_epoch and cfg.eval_each_epoch) \
                    or st.step == self.total_steps
                if eval_due and self.validation is not None and len(self.validation):
                    self._evaluate_and_select()
                    self.save_checkpoint()
                elif st.step % cfg.save_every == 0:
                    self.save_checkpoint()
                window_start = time.perf_counter()  # evaluation and saving are not training time
        if self.validation is None or not len(self.validation):
            if self.on_save_best:  # nothing to select on: the last weights are the result
                self.on_save_best(self.model, st.step)
        return TrainResult(st, self.run.read_log(), self.notes)

    def _epoch_progress(self, batches_in_epoch: int) -> float:
        return round(self.state.epoch + self.state.batch_in_epoch / max(1, batches_in_epoch), 4)

    def _optimizer_step(self, group: list[list[int]]) -> tuple[float, int]:
        self.model.train()
        data = self.train_data
        batches = [collate(data.encoded, idx, data.labels, self.pad_id) for idx in group]
        labels = torch.cat([b.labels for b in batches])
        total_weight = float(self.class_weights.cpu()[labels].sum()) if self.class_weights is not None else float(len(labels))
        tokens = sum(b.real_tokens for b in batches)
        while True:
            try:
                loss = self._accumulate(batches, total_weight)
                break
            except RuntimeError as exc:
                if not is_out_of_memory(exc) or self.state.micro_splits >= 64:
                    raise
                self.optimizer.zero_grad(set_to_none=True)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                self.state.micro_splits *= 2
                msg = (f"out of memory at batch size {self.config.batch_size}: continuing with micro-batches of "
                       f"~{max(1, self.config.batch_size // self.state.micro_splits)} and more accumulation "
                       "(the effective batch is unchanged)")
                logger.warning(msg)
                self.notes.append(msg)
        if not math.isfinite(loss) or total_weight <= 0:
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingError(
                f"the training loss became {loss} at step {self.state.step + 1}; stopped before the weights were "
                f"updated (last checkpoint kept). Lower --lr (now {self.config.lr:g}) or check the data"
            )
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm or float("inf"))
        if not torch.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingError(f"non-finite gradient at step {self.state.step + 1}; stopped before the weights were updated")
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, tokens

    def _accumulate(self, batches: list[Batch], total_weight: float) -> float:
        loss_value = 0.0
        for batch in batches:
            for micro in batch.split(self.state.micro_splits) if self.state.micro_splits > 1 else [batch]:
                micro = micro.to(self.device)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.use_bf16):
                    logits = self.forward(micro.input_ids, micro.attention_mask, micro.token_type_ids)
                loss = F.cross_entropy(logits.float(), micro.labels, weight=self.class_weights, reduction="sum")
                loss = loss / total_weight  # (weighted) sum over the micro-batch / the whole step's weight
                loss.backward()
                loss_value += float(loss.detach())
        return loss_value

    # -- evaluation --------------------------------------------------------------------------
    def _evaluate_and_select(self) -> None:
        st, cfg = self.state, self.config
        logits = predict_logits(self.model, self.validation.encoded, self.pad_id, self.device,
                                cfg.eval_batch_tokens, bf16=self.use_bf16)
        metrics = evaluation_metrics(logits, self.validation.labels, self.labels)
        record = {"kind": "eval", "split": "validation", "step": st.step, "epoch": round(st.epoch + 0.0, 4),
                  **{k: metrics[k] for k in ("loss", "accuracy", "macro_f1", "weighted_f1")}}
        share = predicted_class_share(np.argmax(logits, axis=1), len(self.labels))
        if max(share) > 0.95 and len(self.labels) > 1:
            top = int(np.argmax(share))
            msg = (f"step {st.step}: the model predicts {self.labels[top]!r} for {max(share):.0%} of the validation "
                   "set (collapsed to one class); try a lower --lr, class weights, or more steps")
            logger.warning(msg)
            if msg not in self.notes:
                self.notes.append(msg)
            record["collapsed"] = True
        value = metrics[cfg.metric]
        better = st.best_value is None or (value < st.best_value if cfg.metric == "loss" else value > st.best_value)
        if better:
            st.best_value, st.best_step, st.evals_without_improvement = value, st.step, 0
            record["best"] = True
            if self.on_save_best:
                self.on_save_best(self.model, st.step)
        else:
            st.evals_without_improvement += 1
            if cfg.patience and st.evals_without_improvement >= cfg.patience:
                st.stopped_early = True
                record["early_stop"] = True
                logger.info("early stopping at step %d: no %s improvement in %d evaluations", st.step, cfg.metric, cfg.patience)
        self.run.append_log(record)
        if self.callback:
            self.callback(record, st, self.total_steps)


def predict_logits(model: BertForSequenceClassification, encoded: Sequence[Encoded], pad_id: int,
                   device: torch.device, max_tokens: int, bf16: bool = False) -> np.ndarray:
    """Logits for every example, in order, through the length-sorted fast path."""
    was_training = model.training
    model.eval()
    out = np.zeros((len(encoded), model.config.num_labels), dtype=np.float32)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        for idx in inference_batches([len(e.ids) for e in encoded], max_tokens, 256):
            batch = collate(encoded, idx, None, pad_id).to(device)
            out[idx] = model(batch.input_ids, batch.attention_mask, batch.token_type_ids).float().cpu().numpy()
    model.train(was_training)
    return out


def evaluation_metrics(logits: np.ndarray, labels: Sequence[int], names: Sequence[str]) -> dict[str, Any]:
    y = np.asarray(labels)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = float(-log_probs[np.arange(len(y)), y].mean()) if len(y) else float("nan")
    return classification_metrics(y.tolist(), logits.argmax(axis=1).tolist(), list(names), loss=loss)
