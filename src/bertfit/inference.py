"""Outputs for every example of an encoded split, through the length-sorted fast path: what
evaluation during and after training runs (prediction for users goes through predict.py)."""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch

from bertfit import heads
from bertfit.batching import collate, inference_batches
from bertfit.tokenizer import Encoded

logger = logging.getLogger("bertfit.train.loop")


def is_out_of_memory(exc: BaseException) -> bool:
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if isinstance(exc, MemoryError) or (oom_type is not None and isinstance(exc, oom_type)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def predict_logits(model: torch.nn.Module, encoded: Sequence[Encoded], pad_id: int,
                   device: torch.device, max_tokens: int, bf16: bool = False) -> np.ndarray | list[np.ndarray]:
    """Outputs for every feature, in order, through the length-sorted fast path: (N, L) for a
    sequence-level head; for a head with an output per token (a "sequence" output axis), a list of
    (len(ids), L) arrays, each feature's real tokens only.

    A batch that runs out of memory is split in halves (and those again) until it fits.
    """
    was_training = model.training
    model.eval()
    per_token = heads.per_token(model)
    rows: list[np.ndarray | None] = [None] * len(encoded)
    lengths = [len(e.ids) for e in encoded]
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        pending = list(reversed(inference_batches(lengths, max_tokens, 256)))
        while pending:
            idx = pending.pop()
            try:
                batch = collate(encoded, idx, None, pad_id).to(device)
                out = heads.run_head(model, batch).float().cpu().numpy()
                for row, i in enumerate(idx):
                    rows[i] = out[row, : lengths[i]] if per_token else out[row]
            except (RuntimeError, MemoryError) as exc:
                if not is_out_of_memory(exc) or len(idx) == 1:
                    raise
                batch = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                half = len(idx) // 2
                logger.warning("out of memory evaluating a batch of %d texts; splitting it in two", len(idx))
                pending += [idx[half:], idx[:half]]
    model.train(was_training)
    if per_token:
        return rows  # type: ignore[return-value]
    if not rows:
        return np.zeros((0, model.config.num_labels), dtype=np.float32)
    return np.stack(rows).astype(np.float32, copy=False)
