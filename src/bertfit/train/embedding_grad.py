"""The word embeddings' gradient on the CPU, kept in one dense buffer that only touched rows visit.

A step's batches use a few hundred of the vocabulary's ~30k rows, but a dense vocab × H gradient
(47 MB for MiniLM) would be allocated (page faults), zeroed, normed and scaled in full every step.
Here the backward adds a sparse gradient (see ``Embeddings.sparse_token_grad``) into one kept
buffer, and zeroing and gradient-norm clipping visit only the rows the step's token ids can have
touched; every other row is exactly zero, so the results are those of the dense path (the norm up
to summation order, ~1e-7 relative). AdamW still updates every row, as it must (weight decay and
the moments' decay move rows without a gradient).
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn


class WordEmbeddingGrad:
    def __init__(self, weight: nn.Parameter) -> None:
        self.weight = weight
        self.buffer = torch.zeros_like(weight)
        # Rows of the buffer that may be nonzero; None = any (zero the whole buffer next time).
        self.rows: Tensor | None = None

    def touch(self, input_ids: Tensor) -> None:
        """Record the rows a coming backward can write: the token ids of a batch about to run."""
        ids = input_ids.reshape(-1)
        self.rows = (ids if self.rows is None else torch.cat([self.rows, ids])).unique()

    def zero(self) -> None:
        """Zero the buffer (its touched rows only) and make it the weight's gradient again."""
        if self.rows is None:
            self.buffer.zero_()
        else:
            self.buffer.index_fill_(0, self.rows, 0.0)
        self.rows = self.buffer.new_empty(0, dtype=torch.long)
        self.weight.grad = self.buffer

    def forget(self) -> None:
        """The buffer may have been written outside a tracked step: the next zero() clears it all."""
        self.rows = None


def clip_grad_norm(parameters: Iterable[nn.Parameter], max_norm: float, kept: WordEmbeddingGrad | None = None) -> Tensor:
    """torch.nn.utils.clip_grad_norm_ (L2, same formula and order), visiting only ``kept``'s touched rows."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    rows = kept.rows if kept is not None else None
    is_kept = [rows is not None and g is kept.buffer for g in grads]
    norms = torch._foreach_norm([g.index_select(0, rows) if k else g for g, k in zip(grads, is_kept)], 2.0)
    total = torch.linalg.vector_norm(torch.stack(norms), 2.0)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    others = [g for g, k in zip(grads, is_kept) if not k]
    if others:
        torch._foreach_mul_(others, coef)
    if any(is_kept):
        kept.buffer.index_copy_(0, rows, kept.buffer.index_select(0, rows).mul_(coef))
    return total
