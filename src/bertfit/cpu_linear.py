"""Small-batch CPU prediction: linear layers on oneDNN-prepacked weights.

One tweet is ~20-60 token rows. For so few rows MKL's sgemm (what ``F.linear`` calls) spends much
of its time re-laying-out the weight matrix on every call; oneDNN can do that once ahead of time
(``_reorder_linear_weight``) and then runs the product 1.2-1.6x faster for 8-48 rows on the
project's 2-core CPU (benchmarks/SPEED_RESULTS.md). From ~64 rows on, MKL is as fast or faster, so
larger inputs, training (autograd) and anything not fp32-on-CPU keep ``F.linear``. The results
differ from ``F.linear`` by float rounding only (~1e-6).

The packed copy is a snapshot of the weight: it is rebuilt whenever the weight's version counter
moves (an optimizer step or ``load_state_dict`` writes in place), so it is never stale.
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
                or x.dtype != torch.float32 or self.weight.dtype != torch.float32 or _tracing()):
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
