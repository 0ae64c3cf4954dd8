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
        self._rows: Tensor | None = None

    def touch(self, input_ids: Iterable[Tensor]) -> None:
        """Record the rows a coming backward can write: the token ids of a batch about to run."""
        ids = torch.cat([t.reshape(-1) for t in input_ids])
        if self._rows is not None:
            ids = torch.cat([self._rows, ids])
        self._rows = ids.unique()

    @property
    def rows(self) -> Tensor | None:
        return self._rows

    def zero(self) -> None:
        """Zero the buffer (its touched rows only) and make it the weight's gradient again."""
        if self._rows is None:
            self.buffer.zero_()
        elif len(self._rows):
            self.buffer.index_fill_(0, self._rows, 0.0)
        self._rows = self.buffer.new_empty(0, dtype=torch.long)
        self.weight.grad = self.buffer

    def forget(self) -> None:
        """The buffer may have been written outside a tracked step: the next zero() clears it all."""
        self._rows = None


def clip_grad_norm(parameters: Iterable[nn.Parameter], max_norm: float, kept: WordEmbeddingGrad | None = None) -> Tensor:
    """torch.nn.utils.clip_grad_norm_ (L2, same formula and order), visiting only ``kept``'s touched rows."""
    grads = [p.grad for p in parameters if p.grad is not None]
    rows = kept.rows if kept is not None else None
    sparse = [rows is not None and g is kept.buffer for g in grads]
    dense = [g for g, s in zip(grads, sparse) if not s]
    dense_norms = iter(torch._foreach_norm(dense, 2.0)) if dense else iter(())
    norms = [torch.linalg.vector_norm(g.index_select(0, rows), 2.0) if s else next(dense_norms)
             for g, s in zip(grads, sparse)]
    if not norms:
        return torch.tensor(0.0)
    total = torch.linalg.vector_norm(torch.stack(norms), 2.0)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    if dense:
        torch._foreach_mul_(dense, coef)
    for g, s in zip(grads, sparse):
        if s and len(rows):
            g.index_copy_(0, rows, g.index_select(0, rows).mul_(coef))
    return total
