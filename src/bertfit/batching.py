"""Length bucketing and collation.

Training batches are drawn so that texts of similar length share a batch (little padding) while
the order stays random: each epoch is a seeded permutation, cut into windows of ``window`` batches;
each window is sorted by length and cut into batches; then the batch order is shuffled. The whole
order is a pure function of (seed, epoch), so a resumed run reproduces it exactly from its position.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from bertfit.tokenizer import Encoded


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int, window: int = 50) -> list[list[int]]:
    """The batches (lists of example indices) of one training epoch, bucketed by length."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    lengths_arr = np.asarray(lengths)
    span = batch_size * window
    batches: list[list[int]] = []
    for start in range(0, len(order), span):
        chunk = order[start : start + span]
        chunk = chunk[np.argsort(lengths_arr[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size].tolist() for i in range(0, len(chunk), batch_size))
    batch_order = rng.permutation(len(batches))
    return [batches[i] for i in batch_order]


def inference_batches(lengths: Sequence[int], max_tokens: int, max_batch: int) -> list[list[int]]:
    """Indices sorted by length, cut into batches of at most ``max_tokens`` padded tokens.

    Sorting removes nearly all padding; the token budget keeps long texts from making huge batches.
    """
    order = np.argsort(np.asarray(lengths), kind="stable")[::-1]  # longest first: memory peaks early
    batches: list[list[int]] = []
    current: list[int] = []
    for idx in order.tolist():
        longest = lengths[current[0]] if current else lengths[idx]
        if current and (len(current) + 1) * longest > max_tokens or len(current) >= max_batch:
            batches.append(current)
            current = []
        current.append(idx)
    if current:
        batches.append(current)
    return batches


def padded_batches(lengths: Sequence[int], max_tokens: int, max_batch: int, overhead_tokens: int) -> list[list[int]]:
    """Indices sorted by length, cut where it minimizes the padded work: the sum over batches of
    ``overhead_tokens + len(batch) * longest`` (a fixed cost per batch call, in token-equivalents,
    plus every padded token), each batch within ``max_batch`` texts and ``max_tokens`` padded tokens.

    For engines that compute on the padded batch (ONNX Runtime): cutting sorted texts into equal
    counts wastes a lot on mixed lengths — batches of 32 random tweets hold 1.83x their real tokens
    as one batch, 1.41x as sorted halves, 1.06x cut here (benchmarks/adhoc/serve_batches.py) — while
    a batch per text pays the per-call cost every time. Dynamic programming over the sorted lengths
    finds the best cuts exactly in O(n * max_batch).
    """
    order = np.argsort(np.asarray(lengths), kind="stable")[::-1].tolist()  # longest first
    ordered = [lengths[i] for i in order]
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[i]: cheapest cost of the first i texts
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        for start in range(max(0, end - max_batch), end):
            padded = (end - start) * ordered[start]  # ordered[start]: the batch's longest
            if padded > max_tokens and end - start > 1:
                continue
            cost = best[start] + overhead_tokens + padded
            if cost < best[end]:
                best[end], cut[end] = cost, start
    batches: list[list[int]] = []
    end = n
    while end > 0:
        batches.append(order[cut[end]:end])
        end = cut[end]
    return batches[::-1]


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    token_type_ids: torch.Tensor  # (B, T)
    labels: torch.Tensor | None  # the task's targets: (B,) class ids or (B, L) floats
    indices: list[int]  # positions of these examples in the data set

    @property
    def real_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def to(self, device: torch.device | str) -> "Batch":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch(move(self.input_ids), move(self.attention_mask), move(self.token_type_ids),
                     move(self.labels), self.indices)

    def split(self, parts: int) -> list["Batch"]:
        """Smaller micro-batches with the same examples (used to back off after out-of-memory)."""
        size = -(-len(self.indices) // parts)
        out = []
        for s in range(0, len(self.indices), size):
            sl = slice(s, s + size)
            mask = self.attention_mask[sl]
            T = int(mask.sum(dim=1).max())  # trim columns that are padding for every row
            out.append(Batch(self.input_ids[sl, :T], mask[:, :T], self.token_type_ids[sl, :T],
                             None if self.labels is None else self.labels[sl], self.indices[sl]))
        return out


def collate(encoded: Sequence[Encoded], indices: Sequence[int], labels: Sequence[int] | np.ndarray | None,
            pad_id: int) -> Batch:
    """Pad a batch to its longest member (dynamic padding).

    Vectorised: the ids of the whole batch are concatenated once and written through a (B, T)
    mask, instead of one small tensor copy per row and field (3·B copies).
    """
    chosen = [encoded[i] for i in indices]
    lengths = np.fromiter((len(e.ids) for e in chosen), dtype=np.int64, count=len(chosen))
    B, T = len(chosen), int(lengths.max())
    real = np.arange(T) < lengths[:, None]  # (B, T), row-major like the concatenation below
    total = int(lengths.sum())
    ids = np.full((B, T), pad_id, dtype=np.int64)
    ids[real] = np.fromiter(itertools.chain.from_iterable(e.ids for e in chosen), dtype=np.int64, count=total)
    types = np.zeros((B, T), dtype=np.int64)
    types[real] = np.fromiter(itertools.chain.from_iterable(e.type_ids for e in chosen), dtype=np.int64, count=total)
    # Targets keep the task's dtype: int64 class ids, or float32 rows (multi-label, regression).
    label_tensor = None if labels is None else torch.from_numpy(np.ascontiguousarray(np.asarray(labels)[list(indices)]))
    return Batch(torch.from_numpy(ids), torch.from_numpy(real.astype(np.int64)), torch.from_numpy(types),
                 label_tensor, list(indices))


def engine_logits(engine, encoded: Sequence[Encoded], width: int, pad_id: int, *, max_tokens: int,
                  max_batch: int) -> np.ndarray:
    """(len(encoded), width) outputs of a prediction engine, in input order: the engine cuts the
    texts into its own batches (``engine.batches``) and runs each (``engine.run``). The one loop
    the predictor and the export check share, whatever runs the model (PyTorch, ONNX Runtime)."""
    out = np.zeros((len(encoded), width), dtype=np.float32)
    lengths = [len(e.ids) for e in encoded]
    for indices in engine.batches(lengths, max_tokens, max_batch):
        out[indices] = engine.run(collate(encoded, indices, None, pad_id))
    return out
