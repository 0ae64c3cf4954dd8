"""Why did the model say that: Integrated Gradients over the input's word embeddings, summed into the
user's words, for whatever the task predicts.

Method (Sundararajan et al. 2017). For an input x and a baseline x' the attribution of token i is
(x_i − x'_i) · ∫₀¹ ∂f(x' + α(x − x'))/∂x_i dα, where x is the token's word embedding (H values) and f
the explained number (a class probability, a value; the task chooses: tasks/explaining.py). The
baseline puts the [PAD] embedding in place of every word token and keeps [CLS] and [SEP] (and the
position and segment embeddings) as they are, so it is "the same sentence with no words".

Completeness: the attributions sum to f(x) − f(x') exactly for the true integral; the quadrature's
error is measured every time (f at α = 0 and α = 1 run in the same batch) and the steps are doubled
(16 → 32 → ... → ``max_steps``) until |Σ attributions − (f(x) − f(x'))| ≤ max(``tolerance`` ·
|f(x) − f(x')|, ``atol``); the error reached is reported with each explanation. The integral is
Gauss–Legendre on [0, 1], which reaches a given error with several times fewer steps than the
Riemann sums of most IG code on these smooth functions.

Why our own implementation rather than Captum: Captum's LayerIntegratedGradients would hook the
embedding module, but our encoder gathers word embeddings functionally on the packed fast path; the
interpolation steps must run as one batch through that path, and the completeness loop, the [CLS]/[SEP]
baseline and the subword → word sums are ours either way. The core is ~60 lines, adds no dependency
(Captum pins no torch, but its releases lag torch's) and runs the steps with the model's fast kernels.

How the steps reach the model without changing it: the sum of word, position and segment
embeddings enters the embedding LayerNorm; a forward pre-hook there adds (α − 1)(E[x] − E[pad]) to each
word token's row, which is exactly replacing its word embedding by the interpolated one. The hook's
shift is the leaf whose gradient IG integrates; the model's weights get no gradient.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from bertfit.heads import run_head
from bertfit.batching import Batch
from bertfit.tasks.explaining import ExplainPlan, Target

logger = logging.getLogger(__name__)

STEPS = 16  # the first try; doubled while completeness fails (8 was enough for 1 tweet in 5: benchmarks/RESULTS.md)
MAX_STEPS = 256
TOLERANCE = 0.05  # relative to |f(x) − f(baseline)|
ATOL = 0.005  # absolute floor (probabilities: half a percentage point)
MAX_TOKENS = 8192  # rows × padded length per forward pass (memory bound for long inputs)

_hook_lock = threading.Lock()  # one explanation at a time per process: the hook is on the shared model


@dataclass
class Attribution:
    """One explained output: the value it explains at the input and at the baseline, the attribution
    of every word, and how well the attributions add up (completeness)."""

    target: str
    info: dict[str, Any]
    value: float
    baseline: float
    words: list[dict[str, Any]]  # {text, start, end, field, attribution}
    steps: int
    error: float  # |Σ attributions − (value − baseline)|
    tolerance: float  # the bound the error had to meet

    @property
    def complete(self) -> bool:
        return self.error <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, **self.info, "value": self.value, "baseline": self.baseline,
                "words": self.words, "steps": self.steps, "completeness_error": self.error,
                "tolerance": self.tolerance}


def gauss_legendre(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of the ``steps``-point Gauss–Legendre rule on [0, 1]."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return (nodes + 1) / 2, weights / 2


class _Shift:
    """Forward pre-hook on the embedding LayerNorm: adds ``delta`` (B, T, H) to its input, which is
    (N, H) real tokens on the packed fast path or (B·T, H) when the batch runs padded."""

    def __init__(self, delta: Tensor, mask: Tensor) -> None:
        self.delta, self.mask = delta, mask

    def __call__(self, module: torch.nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        (x,) = args
        flat = self.delta.reshape(-1, self.delta.shape[-1])
        return (x + (flat if x.shape[0] == flat.shape[0] else flat[self.mask.reshape(-1)]),)


def explain_plan(model: torch.nn.Module, plan: ExplainPlan, pad_id: int, which: Sequence[str] | None = None, *,
                 steps: int = STEPS, max_steps: int = MAX_STEPS, tolerance: float = TOLERANCE, atol: float = ATOL,
                 deadline: float | None = None) -> list[Attribution]:
    """Integrated Gradients for each of the plan's targets (``which``: the ones asked for, None: the
    task's default). ``deadline``: a time.monotonic() after which no more steps are added (the error
    reached is still reported). The model must be an fp32 PyTorch module in eval mode."""
    device = next(model.parameters()).device
    batch = _batch(plan, pad_id, device)
    F, T = batch.input_ids.shape
    embeddings = model.bert.embeddings
    with torch.no_grad():
        words = embeddings.token.weight[batch.input_ids]  # (F, T, H)
        base = embeddings.token.weight[pad_id]
        attributable = torch.from_numpy(_padded(plan.word_of, T)).to(device) >= 0  # (F, T)
        diff = (words - base) * attributable[..., None]  # x − x' per token: zero at kept tokens
    # f at α = 0 (the baseline) and α = 1 (the input itself: its outputs choose the targets), once. With
    # autograd on, as every pass here: the CPU's prepacked small-batch kernels (cpu_linear.py) run only
    # without it, and would make the numbers depend on how the predictor was loaded by ~1e-6.
    with torch.enable_grad():
        ends = _run(model, batch, diff, np.array([0.0, 1.0]))[0].detach()  # (2, F, *output)
    targets = plan.choose(ends[1].cpu(), which)
    if not targets:
        return []
    values = [target.value(ends).cpu().numpy() for target in targets]
    n = steps
    while True:
        grads = _integrate(model, batch, diff, targets, n)
        results = [_attribution(t, v, g, diff, plan, n, tolerance, atol) for t, v, g in zip(targets, values, grads)]
        if all(r.complete for r in results) or n * 2 > max_steps or (deadline is not None and time.monotonic() > deadline):
            break
        n *= 2
    for r in results:
        if not r.complete:
            logger.warning("explaining %r: attributions miss completeness by %.3g (> %.3g) at %d steps", r.target,
                           r.error, r.tolerance, r.steps)
    return results


def _run(model: torch.nn.Module, batch: Batch, diff: Tensor, alphas: np.ndarray) -> tuple[Tensor, Tensor]:
    """The head's outputs (S, F, *output) at the interpolation points ``alphas`` (S,), and the shift
    (S·F, T, H) whose gradient is the gradient with respect to the word embeddings there."""
    F, T = batch.input_ids.shape
    a = torch.tensor(alphas, dtype=diff.dtype, device=diff.device)
    S = len(a)
    shift = ((a - 1)[:, None, None, None] * diff).reshape(S * F, T, -1)  # (S·F, T, H)
    shift.requires_grad_(True)
    steps = Batch(batch.input_ids.repeat(S, 1), batch.attention_mask.repeat(S, 1), batch.token_type_ids.repeat(S, 1),
                  None, [])
    with _hook_lock:
        handle = model.bert.embeddings.norm.register_forward_pre_hook(_Shift(shift, steps.attention_mask.bool()))
        try:
            out = run_head(model, steps)
        finally:
            handle.remove()
    return out.reshape(S, F, *out.shape[1:]), shift


def _integrate(model: torch.nn.Module, batch: Batch, diff: Tensor, targets: list[Target], n: int) -> list[Tensor]:
    """Per target: Σ_s w_s ∂f/∂x at each token (F, T, H) over the n Gauss–Legendre nodes (batched,
    ``MAX_TOKENS`` at a time)."""
    nodes, weights = gauss_legendre(n)
    F, T = batch.input_ids.shape
    grads = [torch.zeros_like(diff) for _ in targets]
    chunk = max(1, MAX_TOKENS // (F * T))
    for at in range(0, n, chunk):
        with torch.enable_grad():
            out, shift = _run(model, batch, diff, nodes[at:at + chunk])
        S = out.shape[0]
        ws = torch.tensor(weights[at:at + S], dtype=diff.dtype, device=diff.device)
        for k, target in enumerate(targets):
            (g,) = torch.autograd.grad(target.value(out).sum(), shift, retain_graph=k < len(targets) - 1)
            grads[k] += torch.einsum("s,sfth->fth", ws, g.reshape(S, F, T, -1))
    return grads


def _attribution(target: Target, values: np.ndarray, grad: Tensor, diff: Tensor, plan: ExplainPlan, n: int,
                 tolerance: float, atol: float) -> Attribution:
    per_token = (grad * diff).sum(-1).cpu().numpy().astype(np.float64)  # (F, T)
    per_word = np.zeros(len(plan.words))
    for row, owner in enumerate(plan.word_of):
        on = owner >= 0
        np.add.at(per_word, owner[on], per_token[row, : len(owner)][on])
    baseline, value = float(values[0]), float(values[1])
    error = abs(float(per_word.sum()) - (value - baseline))
    words = [{"text": w.text, "start": w.start, "end": w.end, "field": w.field, "attribution": float(a)}
             for w, a in zip(plan.words, per_word)]
    return Attribution(target.name, dict(target.info), value, baseline, words, n, error,
                       max(tolerance * abs(value - baseline), atol))


def _batch(plan: ExplainPlan, pad_id: int, device: torch.device) -> Batch:
    T = max(len(r.ids) for r in plan.rows)
    ids = torch.full((len(plan.rows), T), pad_id, dtype=torch.long)
    types = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(plan.rows):
        ids[i, : len(r.ids)] = torch.tensor(r.ids)
        types[i, : len(r.ids)] = torch.tensor(r.type_ids)
        mask[i, : len(r.ids)] = 1
    return Batch(ids.to(device), mask.to(device), types.to(device), None, list(range(len(plan.rows))))


def _padded(word_of: list[np.ndarray], T: int) -> np.ndarray:
    out = np.full((len(word_of), T), -1, dtype=np.int64)
    for i, w in enumerate(word_of):
        out[i, : len(w)] = w
    return out


def explain_inputs(model: torch.nn.Module, task: Any, tokenizer: Any, items: Sequence[Any], max_length: int,
                   which: Sequence[str] | None = None, *, deadline: float | None = None,
                   **options: Any) -> list[list[dict[str, Any]]]:
    """Per input (what ``task.inputs`` takes): its explanations as JSON-able dicts. ``options``: steps,
    max_steps, tolerance, atol of ``explain_plan``. Inputs run one after another, each as one batch of
    interpolation steps (a text's steps fill the batch; several texts would only add padding)."""
    examples = task.inputs(list(items))
    out = []
    for example in examples:
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"explained {len(out)} of {len(examples)} inputs before the deadline")
        plan = task.explain_plan(tokenizer, example, max_length)
        out.append([a.to_dict() for a in explain_plan(model, plan, tokenizer.pad_id, which, deadline=deadline, **options)])
    return out
