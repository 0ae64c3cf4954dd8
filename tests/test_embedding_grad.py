"""The kept word-embedding gradient: zeroing and clipping its touched rows only equals the dense path."""

import torch
from torch import nn

from bertfit.train.embedding_grad import WordEmbeddingGrad, clip_grad_norm


def model_with_sparse_grad(seed: int, ids: torch.Tensor) -> tuple[nn.ModuleDict, WordEmbeddingGrad]:
    torch.manual_seed(seed)
    model = nn.ModuleDict({"emb": nn.Embedding(50, 8), "lin": nn.Linear(8, 3)})
    kept = WordEmbeddingGrad(model["emb"].weight)
    kept.forget()
    kept.zero()
    kept.touch(ids)
    x = nn.functional.embedding(ids, model["emb"].weight, sparse=True)
    model["lin"](x).pow(2).sum().backward()  # autograd adds the sparse gradient into kept.buffer
    return model, kept


def test_clip_matches_torch_and_leaves_untouched_rows_zero():
    ids = torch.tensor([[3, 7, 7, 12], [0, 3, 49, 5]])
    for max_norm in (0.01, 1e9):  # clipping and not
        ours, kept = model_with_sparse_grad(0, ids)
        assert ours["emb"].weight.grad is kept.buffer
        reference, _ = model_with_sparse_grad(0, ids)
        reference["emb"].weight.grad = reference["emb"].weight.grad.clone()  # an ordinary dense gradient
        total = clip_grad_norm(ours.parameters(), max_norm, kept)
        expected = torch.nn.utils.clip_grad_norm_(reference.parameters(), max_norm)
        torch.testing.assert_close(total, expected, rtol=1e-6, atol=0)
        for a, b in zip(ours.parameters(), reference.parameters()):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-9)
        untouched = torch.ones(50, dtype=torch.bool)
        untouched[ids.unique()] = False
        assert kept.buffer[untouched].abs().max() == 0 and kept.buffer[~untouched].abs().max() > 0


def test_zero_clears_touched_rows_and_forget_clears_everything():
    ids = torch.tensor([[1, 2, 3]])
    model, kept = model_with_sparse_grad(1, ids)
    kept.touch(torch.tensor([40]))  # rows accumulate until the next zero()
    kept.buffer[40] = 5.0
    kept.zero()
    assert kept.buffer.abs().max() == 0 and model["emb"].weight.grad is kept.buffer
    kept.buffer[10] = 1.0  # written behind its back (not touched): only forget() makes zero() see it
    kept.zero()
    assert kept.buffer[10].abs().max() == 1.0
    kept.forget()
    kept.zero()
    assert kept.buffer.abs().max() == 0


def test_clip_of_the_kept_gradient_alone():
    ids = torch.tensor([[4, 9]])
    model, kept = model_with_sparse_grad(2, ids)
    model["lin"].weight.grad = model["lin"].bias.grad = None  # only the embedding has a gradient
    expected = kept.buffer[ids.unique()].norm()
    torch.testing.assert_close(clip_grad_norm(model.parameters(), 1e-3, kept), expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(kept.buffer.norm(), torch.tensor(1e-3), rtol=1e-3, atol=0)
