"""Length bucketing and collation.

Training batches are drawn so that texts of similar length share a batch (little padding) while
the order stays random: each epoch is a seeded permutation, cut into windows of ``window`` batches;
each window is sorted by length and cut into batches; then the batch order is shuffled. The whole
order is a pure function of (seed, epoch), so a resumed run reproduces it exactly from its position.
"""

from __future__ import annotations

import itertools
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from bertfit.tokenizer import Encoded


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int, window: int = 50) -> list[np.ndarray]:
    """The batches (arrays of example indices) of one training epoch, bucketed by length.

    Arrays, not lists of Python ints: an epoch of millions of examples costs 4 bytes an example
    here (int32 below 2**31 examples, else int64), against about 36 as lists (an int object and its
    pointer). The indices are the same whatever their type (a resume and the batch hash compare values)."""
    rng = np.random.default_rng([seed, epoch])
    # Permuting an arange of the small type draws rng.permutation(n)'s values without its int64 array
    # (8 bytes an example, at the moment training allocates its model and optimizer).
    order = rng.permutation(np.arange(len(lengths), dtype=np.int32 if len(lengths) < 2**31 else np.int64))
    lengths_arr = np.asarray(lengths)
    span = batch_size * window
    batches: list[np.ndarray] = []
    for start in range(0, len(order), span):
        chunk = order[start : start + span]
        chunk = chunk[np.argsort(lengths_arr[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    batch_order = rng.permutation(len(batches))
    return [batches[i] for i in batch_order]


def same_order(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]]) -> bool:
    """Whether two epoch orders (arrays or lists of indices) are the same batches in the same order."""
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


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
class EncodedSplit:
    """A split as the model sees it: its *features* (encoded sequences) and the task's targets.

    For sequence-level tasks a feature is an example (truncated to the model's length). Tasks that
    cut an example into several features (windows over a long text or context) set
    ``example_index`` (feature → example) and gather the features' outputs back per example
    (``Task.gather``); token-level tasks keep per-token targets. See tasks/base.py.
    """

    encoded: list[Encoded]
    targets: Any  # per feature: np.ndarray (N,) / (N, L), or a list of per-token arrays; None if drawn per batch
    gold: Any = None  # per example, what Task.evaluate compares with (default: targets)
    example_index: np.ndarray | None = None  # (N_features,) example of each feature (default: identity)
    meta: Any = None  # whatever the task keeps to map outputs back to text (offsets, word ids, ...)

    def __post_init__(self) -> None:
        if self.gold is None:
            self.gold = self.targets

    @property
    def lengths(self) -> np.ndarray:
        """Every feature's length (int32: a feature is at most the model's length): one array, not a
        Python int per feature, 4 bytes each (millions of rows)."""
        cached = getattr(self.encoded, "lengths", None)  # features mapped from the tokenized cache: no lists made
        if cached is not None:
            return np.asarray(cached, dtype=np.int32)
        return np.fromiter((len(e.ids) for e in self.encoded), dtype=np.int32, count=len(self.encoded))

    @property
    def examples(self) -> int:
        """How many examples the features come from."""
        if self.example_index is None:
            return len(self.encoded)
        return int(self.example_index.max()) + 1 if len(self.example_index) else 0

    def __len__(self) -> int:
        return len(self.encoded)


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    token_type_ids: torch.Tensor  # (B, T)
    labels: torch.Tensor | None  # the task's targets: (B,) class ids, (B, L) floats, (B, T) token labels
    indices: list[int]  # positions of these examples in the data set
    # Rows trained together (a long text's windows): (B,) row -> example of the batch, 0..G-1; then
    # ``labels`` hold one row per example (G) and the task combines the rows' outputs before the loss.
    groups: torch.Tensor | None = None

    @property
    def real_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def named(self, names: Sequence[str]) -> list[torch.Tensor]:
        """The batch's tensors by name, in the order a head declares them (heads.head_inputs)."""
        missing = [n for n in names if getattr(self, n, None) is None]
        if missing:
            raise ValueError(f"the batch has no {', '.join(missing)}; the head takes {', '.join(names)}")
        return [getattr(self, n) for n in names]

    def to(self, device: torch.device | str) -> "Batch":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch(move(self.input_ids), move(self.attention_mask), move(self.token_type_ids),
                     move(self.labels), self.indices, move(self.groups))

    def split(self, parts: int) -> list["Batch"]:
        """Smaller micro-batches with the same examples (used to back off after out-of-memory); rows
        trained together (``groups``) stay in one micro-batch."""
        if self.groups is not None:
            return self._split_groups(parts)
        size = -(-len(self.indices) // parts)
        out = []
        for s in range(0, len(self.indices), size):
            sl = slice(s, s + size)
            mask = self.attention_mask[sl]
            T = int(mask.sum(dim=1).max())  # trim columns that are padding for every row
            labels = None if self.labels is None else self.labels[sl]
            if labels is not None and labels.dim() >= 2 and labels.shape[1] == self.input_ids.shape[1] \
                    and labels.dtype == torch.int64:
                labels = labels[:, :T]  # per-token labels (B, T) follow the trimmed columns
            out.append(Batch(self.input_ids[sl, :T], mask[:, :T], self.token_type_ids[sl, :T], labels, self.indices[sl]))
        return out


    def _split_groups(self, parts: int) -> list["Batch"]:
        count = int(self.groups.max()) + 1 if len(self.groups) else 0
        size = -(-count // parts)
        out = []
        for start in range(0, count, size):
            rows = ((self.groups >= start) & (self.groups < start + size)).nonzero().flatten()
            mask = self.attention_mask[rows]
            T = int(mask.sum(dim=1).max())
            labels = None if self.labels is None else self.labels[start : start + size]
            out.append(Batch(self.input_ids[rows, :T], mask[:, :T], self.token_type_ids[rows, :T], labels,
                             [self.indices[i] for i in rows.tolist()], self.groups[rows] - start))
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


class Abandoned(Exception):
    """The caller stopped waiting for these outputs (stop_when's check said so): the rest is not computed."""


_stop = threading.local()


@contextmanager
def stop_when(check: Callable[[], bool]) -> Iterator[None]:
    """Within the block, :func:`engine_logits` on this thread checks ``check()`` before each batch and
    raises Abandoned when it is true: the server drops the work of requests that all got their 504."""
    previous = getattr(_stop, "check", None)
    _stop.check = check
    try:
        yield
    finally:
        _stop.check = previous


def engine_logits(engine, encoded: Sequence[Encoded], width: int, pad_id: int, *, max_tokens: int,
                  max_batch: int) -> np.ndarray | list[np.ndarray]:
    """The outputs of a prediction engine for every feature, in input order: the engine cuts the
    sequences into its own batches (``engine.batches``) and runs each (``engine.run``). The one loop
    the predictor and the export check share, whatever runs the model (PyTorch, ONNX Runtime).

    A sequence-level head gives (len(encoded), width); a head with an output per token, (B, T, width)
    per batch, gives a list of (len(ids), width) arrays, each feature's real tokens only.
    """
    lengths = [len(e.ids) for e in encoded]
    rows: list[np.ndarray | None] = [None] * len(encoded)
    per_token = False
    stop = getattr(_stop, "check", None)
    for indices in engine.batches(lengths, max_tokens, max_batch):
        if stop is not None and stop():
            raise Abandoned(f"abandoned after {sum(r is not None for r in rows)} of {len(encoded)} features")
        result = np.asarray(engine.run(collate(encoded, indices, None, pad_id)))
        per_token = result.ndim == 3
        for row, i in enumerate(indices):
            rows[i] = result[row, : lengths[i]] if per_token else result[row]
    if per_token:
        return rows  # type: ignore[return-value]
    if not rows:
        return np.zeros((0, width), dtype=np.float32)
    return np.stack(rows).astype(np.float32, copy=False)
