"""Why did the model say that: Integrated Gradients over the input's word embeddings, summed into the
user's words, for whatever the task predicts.

Method (Sundararajan et al. 2017). For an input x and a baseline x' the attribution of token i is
(x_i − x'_i) · ∫₀¹ ∂f(x' + α(x − x'))/∂x_i dα, where x is the token's word embedding (H values) and f
the explained number (a class probability, a value; the task chooses: tasks/explaining.py). The
baseline puts the [PAD] embedding in place of every word token and keeps [CLS] and [SEP] (and the
position and segment embeddings) as they are, so it is "the same sentence with no words".

Completeness: the attributions sum to f(x) − f(x') exactly for the true integral; the quadrature's
error is measured every time and the steps are raised until |Σ attributions − (f(x) − f(x'))| ≤
max(``tolerance`` · |f(x) − f(x')|, ``atol``); the error reached is reported with each explanation.

The quadrature: adaptive composite Simpson on a dyadic grid of α. It starts from ``steps`` equal
intervals (both ends included: f(x') and f(x) are two of its evaluations) and halves only the panels
that are wrong. Every evaluation gives f(α) as well as the gradient, so each panel [a, b] has an
exact error of its own: Simpson's sum of the directional derivative over the panel against f(b) −
f(a). Halving a panel keeps its three evaluations and adds two, so raising the steps reuses all the
work already done (Gauss–Legendre, used before, nests in nothing: doubling its steps threw the first
pass away). On these fine-tuned models the probability changes sharply over a short stretch of the
path; the extra evaluations go there. Measured in benchmarks/RESULTS.md (issue 29, speed).

Batching: every input's evaluations (a file of texts, a request's texts, the report's sample) run in
shared batches of at most ``MAX_TOKENS`` rows × length, each row its own α; rows never interact, so one
backward pass per target index serves every input of the batch.

Why our own implementation rather than Captum: Captum's LayerIntegratedGradients would hook the
embedding module, but our encoder gathers word embeddings functionally on the packed fast path; the
interpolation steps must run as one batch through that path, and the completeness loop, the [CLS]/[SEP]
baseline and the subword → word sums are ours either way. The core adds no dependency (Captum pins no
torch, but its releases lag torch's) and runs the steps with the model's fast kernels.

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

STEPS = 12  # the first grid: 12 equal intervals, 13 evaluations; 16 gave the same faithfulness at 4 more (benchmarks/RESULTS.md, issue 29)
MAX_STEPS = 256  # the finest interval is 1/MAX_STEPS (at most MAX_STEPS + 1 evaluations)
TOLERANCE = 0.05  # relative to |f(x) − f(baseline)|
ATOL = 0.005  # absolute floor (probabilities: half a percentage point)
MAX_TOKENS = 8192  # rows × padded length per forward pass (memory bound for long inputs, and for files)
SIMPSON = np.array([1.0, 4.0, 1.0]) / 6  # weights on a panel's start, middle and end, per unit of width
PANEL = len(SIMPSON) - 1  # grid intervals per panel

_hook_lock = threading.Lock()  # one batch at a time per process: the hook is on the shared model


@dataclass
class Attribution:
    """One explained output: the value it explains at the input and at the baseline, the attribution
    of every word, and how well the attributions add up (completeness)."""

    target: str
    info: dict[str, Any]
    value: float
    baseline: float
    words: list[dict[str, Any]]  # {text, start, end, field, attribution}
    steps: int  # the model evaluations (points on the path, both ends included) the integral used
    error: float  # |Σ attributions − (value − baseline)|
    tolerance: float  # the bound the error had to meet

    @property
    def complete(self) -> bool:
        return self.error <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, **self.info, "value": self.value, "baseline": self.baseline,
                "words": self.words, "steps": self.steps, "completeness_error": self.error,
                "tolerance": self.tolerance}


def grid(steps: int, max_steps: int) -> tuple[int, int]:
    """(resolution, panel width): α runs over the integers 0..resolution (α = k / resolution), the first
    panels are ``width`` of them wide. ``steps`` intervals are rounded up to whole panels; the finest
    grid halves them until it has at least ``max_steps`` intervals (never fewer than ``steps``)."""
    first = PANEL * max(1, -(-steps // PANEL))
    finest = first
    while finest < max_steps:
        finest *= 2
    return finest, PANEL * (finest // first)


class _Path:
    """One input's integral: its rows, the shift direction of each token, and what every evaluated
    point of the path gave (the targets' values and each token's gradient · direction)."""

    def __init__(self, plan: ExplainPlan, which: Sequence[str] | None, pad_id: int, embedding: Tensor,
                 resolution: int, width: int) -> None:
        self.plan, self.which, self.resolution = plan, which, resolution
        self.lengths = [len(r.ids) for r in plan.rows]
        self.length = max(self.lengths)
        with torch.no_grad():
            self.ids = [torch.tensor(r.ids, dtype=torch.long, device=embedding.device) for r in plan.rows]
            self.types = [torch.tensor(r.type_ids, dtype=torch.long, device=embedding.device) for r in plan.rows]
            # x − x' per token: zero at [CLS]/[SEP] and the other tokens the baseline keeps
            self.diff = [(embedding[ids] - embedding[pad_id]) * torch.from_numpy(owner >= 0).to(embedding.device)[:, None]
                         for ids, owner in zip(self.ids, plan.word_of)]
        self.panels = [(start, width) for start in range(0, resolution, width)]
        self.targets: list[Target] | None = None
        self.values: dict[int, np.ndarray] = {}  # point → (K,) the targets' values there
        self.contributions: dict[int, np.ndarray] = {}  # point → (K, F, length) gradient · (x − x') per token
        self.done = False

    def points(self) -> list[int]:
        """The panels' points not evaluated yet, the input itself (α = 1) first: its outputs choose the targets."""
        wanted = {start + j * width // PANEL for start, width in self.panels for j in range(PANEL + 1)}
        return sorted(wanted - set(self.values), key=lambda k: (k != self.resolution, k))

    def weights(self) -> dict[int, float]:
        """Each point's weight in the composite rule over the current panels."""
        out: dict[int, float] = {}
        for start, width in self.panels:
            for j, w in enumerate(SIMPSON):
                point = start + j * width // PANEL
                out[point] = out.get(point, 0.0) + w * width / self.resolution
        return out

    def panel_errors(self) -> np.ndarray:
        """(K, P): per target and panel, the rule's integral of df/dα over the panel − (f(end) − f(start))."""
        totals = {k: c.sum(axis=(1, 2)) for k, c in self.contributions.items()}
        errors = []
        for start, width in self.panels:
            rule = sum(w * width / self.resolution * totals[start + j * width // PANEL] for j, w in enumerate(SIMPSON))
            errors.append(rule - (self.values[start + width] - self.values[start]))
        return np.stack(errors, axis=1)

    def bounds(self, tolerance: float, atol: float) -> np.ndarray:
        change = self.values[self.resolution] - self.values[0]
        return np.maximum(tolerance * np.abs(change), atol)

    def refine(self, tolerance: float, atol: float) -> bool:
        """Halve the panels that carry the error of each target that misses its bound (largest errors
        first, until what is left is under half the bound); False when none fails or none can be halved."""
        if not self.targets:
            return False
        errors = self.panel_errors()
        bounds = self.bounds(tolerance, atol)
        chosen: set[int] = set()
        for k in np.flatnonzero(np.abs(errors.sum(axis=1)) > bounds):
            size = np.abs(errors[k])
            left = size.sum()
            for p in np.argsort(-size, kind="stable"):
                if left <= bounds[k] / 2:
                    break
                chosen.add(int(p))
                left -= size[p]
        chosen = {p for p in chosen if self.panels[p][1] >= 2 * PANEL}
        if not chosen:
            return False
        panels = []
        for p, (start, width) in enumerate(self.panels):
            panels.extend([(start, width // 2), (start + width // 2, width // 2)] if p in chosen else [(start, width)])
        self.panels = panels
        return True

    def result(self, tolerance: float, atol: float) -> list[Attribution]:
        if not self.targets:
            return []
        weights = self.weights()
        per_token = sum(w * self.contributions[k] for k, w in weights.items())  # (K, F, length)
        bounds = self.bounds(tolerance, atol)
        out = []
        for k, target in enumerate(self.targets):
            per_word = np.zeros(len(self.plan.words))
            for row, owner in enumerate(self.plan.word_of):
                on = owner >= 0
                np.add.at(per_word, owner[on], per_token[k, row, : len(owner)][on])
            baseline, value = float(self.values[0][k]), float(self.values[self.resolution][k])
            words = [{"text": w.text, "start": w.start, "end": w.end, "field": w.field, "attribution": float(a)}
                     for w, a in zip(self.plan.words, per_word)]
            out.append(Attribution(target.name, dict(target.info), value, baseline, words, len(weights),
                                   abs(float(per_word.sum()) - (value - baseline)), float(bounds[k])))
        return out


class _Shift:
    """Forward pre-hook on the embedding LayerNorm: adds ``delta`` (B, T, H) to its input, which is
    (N, H) real tokens on the packed fast path or (B·T, H) when the batch runs padded."""

    def __init__(self, delta: Tensor, mask: Tensor) -> None:
        self.delta, self.mask = delta, mask

    def __call__(self, module: torch.nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        (x,) = args
        flat = self.delta.reshape(-1, self.delta.shape[-1])
        return (x + (flat if x.shape[0] == flat.shape[0] else flat[self.mask.reshape(-1)]),)


def explain_plans(model: torch.nn.Module, plans: Sequence[ExplainPlan], pad_id: int,
                  which: Sequence[str] | None = None, *, steps: int = STEPS, max_steps: int = MAX_STEPS,
                  tolerance: float = TOLERANCE, atol: float = ATOL, deadline: float | None = None) -> list[list[Attribution]]:
    """Integrated Gradients for each plan's targets (``which``: the ones asked for, None: the task's
    default), all plans' evaluations in shared batches. ``deadline``: a time.monotonic() after which no
    more steps are added (the error reached is still reported); TimeoutError if it passes before every
    plan had its first steps. The model must be an fp32 PyTorch module in eval mode."""
    resolution, width = grid(steps, max_steps)
    embedding = model.bert.embeddings.token.weight.detach()
    paths = [_Path(plan, which, pad_id, embedding, resolution, width) for plan in plans]
    todo = sorted(paths, key=lambda p: p.length)  # similar lengths share a batch: less padding
    first = True
    while todo:
        _evaluate(model, [(p, p.points()) for p in todo], pad_id, None if first else deadline)
        if deadline is not None and time.monotonic() > deadline:
            break
        first = False
        todo = [p for p in todo if p.refine(tolerance, atol)]
    results = [p.result(tolerance, atol) for p in paths]
    missed = [r for attributions in results for r in attributions if not r.complete]
    if missed and deadline is not None and time.monotonic() > deadline:
        # The caller's time limit (the report's explanations, /explain), not a fault: each explanation
        # carries its completeness error, so one line says it, not a warning per target.
        logger.info("%d of %d explanations reached the time limit before the completeness bound (each reports its "
                    "error)", len(missed), sum(len(a) for a in results))
    else:
        for r in missed:
            logger.warning("explaining %r: attributions miss completeness by %.3g (> %.3g) at %d steps", r.target,
                           r.error, r.tolerance, r.steps)
    return results


def explain_plan(model: torch.nn.Module, plan: ExplainPlan, pad_id: int, which: Sequence[str] | None = None,
                 **options: Any) -> list[Attribution]:
    """One plan's explanations (``explain_plans`` on one input)."""
    return explain_plans(model, [plan], pad_id, which, **options)[0]


def _evaluate(model: torch.nn.Module, work: list[tuple[_Path, list[int]]], pad_id: int, deadline: float | None) -> None:
    """Evaluate the given points of each path: chunks of at most MAX_TOKENS rows × length, each a forward
    pass and one backward pass per target index, shared by every path in the chunk."""
    jobs = [(path, point) for path, points in work for point in points]
    chunk: list[tuple[_Path, int]] = []
    rows = length = 0
    for path, point in jobs:
        grown = max(length, path.length)
        if chunk and (rows + len(path.lengths)) * grown > MAX_TOKENS:
            _run_chunk(model, chunk, pad_id)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("the deadline passed before every input had its first explanation steps")
            chunk, rows, grown = [], 0, path.length
        chunk.append((path, point))
        rows += len(path.lengths)
        length = grown
    if chunk:
        _run_chunk(model, chunk, pad_id)


def _run_chunk(model: torch.nn.Module, chunk: list[tuple[_Path, int]], pad_id: int) -> None:
    device = chunk[0][0].diff[0].device
    T = max(path.length for path, _ in chunk)
    R = sum(len(path.lengths) for path, _ in chunk)
    H = chunk[0][0].diff[0].shape[-1]
    ids = torch.full((R, T), pad_id, dtype=torch.long, device=device)
    types = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    direction = torch.zeros(R, T, H, dtype=chunk[0][0].diff[0].dtype, device=device)
    alphas = torch.empty(R, dtype=direction.dtype, device=device)
    segments: dict[int, tuple[_Path, int, list[int]]] = {}  # id(path) → (path, first row, points)
    row = 0
    for path, point in chunk:
        segments.setdefault(id(path), (path, row, []))[2].append(point)
        for r, n in enumerate(path.lengths):
            ids[row, :n], types[row, :n], mask[row, :n] = path.ids[r], path.types[r], 1
            direction[row, :n] = path.diff[r]
            alphas[row] = point / path.resolution
            row += 1
    with torch.enable_grad():
        # With autograd on, as every pass here: the CPU's prepacked small-batch kernels (cpu_linear.py) run
        # only without it, and would make the numbers depend on how the predictor was loaded by ~1e-6.
        shift = ((alphas - 1)[:, None, None] * direction).requires_grad_(True)
        with _hook_lock:
            handle = model.bert.embeddings.norm.register_forward_pre_hook(_Shift(shift, mask.bool()))
            try:
                out = run_head(model, Batch(ids, mask, types, None, []))
            finally:
                handle.remove()
        values: list[tuple[_Path, int, int, list[Tensor]]] = []
        for path, start, points in segments.values():
            F, S = len(path.lengths), len(points)
            outputs = out[start:start + S * F].reshape(S, F, *out.shape[1:])
            if path.targets is None:  # the path's first chunk holds α = 1 first (_Path.points)
                path.targets = path.plan.choose(outputs[0].detach().cpu(), path.which)
            values.append((path, start, S, [t.value(outputs) for t in path.targets]))
        K = max(len(v) for *_, v in values)
        for k in range(K):
            total = sum(v[k].sum() for *_, v in values if len(v) > k)
            (grad,) = torch.autograd.grad(total, shift, retain_graph=k < K - 1, allow_unused=True)
            per_token = (grad * direction).sum(-1) if grad is not None else torch.zeros(R, T, device=device)
            per_token = per_token.detach().cpu().numpy().astype(np.float64)
            for path, start, S, v in values:
                if len(v) <= k:
                    continue
                F = len(path.lengths)
                block = per_token[start:start + S * F, : path.length].reshape(S, F, path.length)
                for s, point in enumerate(segments[id(path)][2]):
                    if k == 0:
                        path.contributions[point] = np.zeros((len(v), F, path.length))
                    path.contributions[point][k] = block[s]
    for path, start, S, v in values:
        stacked = np.stack([x.detach().cpu().numpy().astype(np.float64) for x in v], axis=1) if v else np.zeros((S, 0))
        for s, point in enumerate(segments[id(path)][2]):
            path.values[point] = stacked[s]
            path.contributions.setdefault(point, np.zeros((0, len(path.lengths), path.length)))


def _run(model: torch.nn.Module, batch: Batch, diff: Tensor, alphas: np.ndarray) -> tuple[Tensor, Tensor]:
    """The head's outputs (S, F, *output) at the interpolation points ``alphas`` (S,) for one padded batch,
    and the shift (S·F, T, H) whose gradient is the gradient with respect to the word embeddings there
    (benchmarks/bench_explain.py's gradient × input)."""
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
    max_steps, tolerance, atol of ``explain_plans``. All inputs' steps run in shared batches."""
    plans = [task.explain_plan(tokenizer, example, max_length) for example in task.inputs(list(items))]
    explained = explain_plans(model, plans, tokenizer.pad_id, which, deadline=deadline, **options)
    return [[a.to_dict() for a in attributions] for attributions in explained]
