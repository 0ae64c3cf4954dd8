"""Small-batch CPU prediction: linear layers on oneDNN-prepacked weights.

One tweet is ~20-60 token rows. For so few rows MKL's sgemm (what ``F.linear`` calls) spends much
of its time re-laying-out the weight matrix on every call; oneDNN can do that once ahead of time
(``_reorder_linear_weight``) and then runs the product 1.2-1.6x faster for 8-48 rows on the
project's 2-core CPU (benchmarks/SPEED_RESULTS.md). From ~64 rows on, MKL is as fast or faster, so
larger inputs, training (autograd) and anything not fp32-on-CPU keep ``F.linear``. The results
differ from ``F.linear`` by float rounding only (~1e-6).

The packed copy is a snapshot of the weight: it is rebuilt whenever the weight's version counter
moves (an optimizer step or ``load_state_dict`` writes in place), so it is never stale.

Training (``OneDnnLinear``): the same oneDNN product without prepacking (the weight changes every
step), forward and both gradients, for processors where oneDNN's fp32 beats MKL's (MKL keeps to
its AVX2 path on AMD processors with AVX-512). Used only where precision.py measured it faster.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

# Most rows for which the prepacked product is used (measured crossover ~64 rows, see module doc).
SMALL_ROWS = 48


def prepacking_available() -> bool:
    return (torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


class PrepackedLinear(nn.Linear):
    """An ``nn.Linear`` (same parameters, same state dict) that multiplies small inputs with a
    oneDNN-prepacked copy of its weight."""

    _packed: Tensor | None = None
    _packed_version: int = -1

    def forward(self, x: Tensor) -> Tensor:
        if (x.numel() > SMALL_ROWS * self.in_features or torch.is_grad_enabled() or x.device.type != "cpu"
                or x.dtype != torch.float32 or self.weight.dtype != torch.float32 or _tracing()
                or torch.is_autocast_enabled("cpu")):  # bf16 autocast must see F.linear to cast it
            return F.linear(x, self.weight, self.bias)
        if self._packed is None or self._packed_version != self.weight._version:
            self._packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), SMALL_ROWS)
            self._packed_version = self.weight._version
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "")


def _tracing() -> bool:
    """Exporters and compilers must see the plain linear, not a oneDNN-specific op."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def prepack_linears(model: nn.Module) -> int:
    """Swap every plain ``nn.Linear`` of ``model`` for a PrepackedLinear sharing its parameters;
    returns how many were swapped (0 when this torch build has no oneDNN)."""
    if not prepacking_available():
        logger.debug("oneDNN weight prepacking unavailable; small-batch prediction uses F.linear")
        return 0
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                packed = PrepackedLinear(child.in_features, child.out_features, bias=child.bias is not None,
                                         device="meta")
                packed.weight, packed.bias = child.weight, child.bias
                packed.train(child.training)
                setattr(parent, name, packed)
                swapped += 1
    return swapped


# -- training: fp32 dense layers through oneDNN ------------------------------------------------

def onednn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_linear_forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x (N, in) · weightᵀ + bias → (N, out), by oneDNN on the unpacked weight."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def onednn_linear_backward(grad: Tensor, x: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """(input gradient grad · weight, weight gradient gradᵀ · x), both by oneDNN on transposed views."""
    grad_x = torch.ops.mkldnn._linear_pointwise(grad, weight.t(), None, "none", [], "")
    grad_w = torch.ops.mkldnn._linear_pointwise(grad.t(), x.t(), None, "none", [], "")
    return grad_x, grad_w


class _OneDnnLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])  # (N, in)
        ctx.save_for_backward(flat, weight)
        ctx.shape, ctx.has_bias = x.shape, bias is not None
        return onednn_linear_forward(flat, weight, bias).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad: Tensor):
        flat, weight = ctx.saved_tensors
        grad = grad.reshape(-1, grad.shape[-1]).contiguous()  # (N, out)
        grad_x, grad_w = onednn_linear_backward(grad, flat, weight)
        grad_b = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x.view(ctx.shape), grad_w, grad_b


class OneDnnLinear(nn.Linear):
    """An ``nn.Linear`` whose fp32 CPU product (forward and backward) is oneDNN's instead of MKL's.
    Same parameters and state dict; anything else (GPU, bf16 autocast, tracing) is F.linear."""

    def forward(self, x: Tensor) -> Tensor:
        if (x.device.type != "cpu" or x.dtype != torch.float32 or self.weight.dtype != torch.float32
                or x.numel() == 0 or _tracing() or torch.is_autocast_enabled("cpu")):
            return F.linear(x, self.weight, self.bias)
        return _OneDnnLinearFn.apply(x, self.weight, self.bias)


def use_onednn_linears(model: nn.Module, enabled: bool = True) -> int:
    """Turn every plain ``nn.Linear`` of ``model`` into a OneDnnLinear (same object, parameters and
    hooks: only its class changes), or back with ``enabled=False``; returns how many changed."""
    if enabled and not onednn_linear_available():
        logger.warning("oneDNN is unavailable in this torch build; dense layers stay on PyTorch's default")
        return 0
    source, target = (nn.Linear, OneDnnLinear) if enabled else (OneDnnLinear, nn.Linear)
    changed = 0
    for module in model.modules():
        if type(module) is source:
            module.__class__ = target
            changed += 1
    return changed
