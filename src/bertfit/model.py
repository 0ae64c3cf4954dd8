"""The BERT encoder, top to bottom: Embeddings → SelfAttention → FeedForward → EncoderLayer → BertModel.

Shapes: B = batch, T = padded length, N = real (non-padding) tokens in the batch, H = hidden size,
nh = heads, hd = H / nh.

Two paths through the same weights:

* The plain path (``unpad=False``) is the reference: everything runs on B·T rows, attention is
  PyTorch's SDPA with a boolean key mask, dropout is ``nn.Dropout`` — exactly the textbook model.
  The parity tests compare transformers against it, and every fast path against it.
* The fast path (``unpad=True``) gives the same numbers (fp32, ≤ 1e-5) for less work:
  - Padding removal. Every layer except attention is position-wise, so the embeddings, linear
    layers, GELU and LayerNorm run on the N real tokens packed into an (N, H) matrix; attention gets
    the sequence structure by scattering the packed tokens into a zero-filled (B, T, ·) view and
    gathering them back. That costs two copies per layer, which only pays when the batch has real
    padding: a batch with less than ``PACK_MIN_PADDING`` of it (a length-bucketed training batch, a
    length-sorted inference batch) runs padded instead. The decision is per batch.
  - On a GPU the batch stays padded (no host sync to count tokens; a batch of tweets is
    launch-bound there) and attention is SDPA's fused kernels.
  - On the CPU, attention in training is the explicit softmax(q·kᵀ/√hd + bias)·v with a
    precomputed additive mask: ~1.3× faster than SDPA, whose CPU kernels fall back to unfused math
    with dropout. Predicting, it is the same product for short sequences (tweets) and SDPA's
    flash kernel for long ones (see EXPLICIT_ATTENTION_MAX_LEN).
  - On the CPU, dropout draws 16 random bits per element from numpy's SFC64 generator, seeded by
    one draw from torch's own generator (so seeding and checkpointed RNG state still govern it);
    ``bernoulli_`` costs several times more there. P(drop) = round(p·65536)/65536, within 8e-6 of p.
  - ``cls_only``: the last layer computes queries, attention output and feed-forward for [CLS] only;
    ``keep``: for [CLS] and the given positions only (masked-LM training predicts ~15% of them).

Under bf16 autocast (training on CPUs with AVX512-BF16/AMX, see precision.py; CUDA) the linear
layers and attention products run in bf16 while the residual stream, LayerNorm, the attention
softmax and the loss stay fp32 (the fp32 residual promotes each sum); both paths hold there too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from bertfit.config import BertConfig


# The fast path packs a batch's real tokens only when at least this fraction of its B·T positions is
# padding; below it the two copies per layer cost more than the padded rows' matmuls (measured on
# MiniLM, CPU: see benchmarks/SPEED_RESULTS.md).
PACK_MIN_PADDING = 0.03


# CPU attention: the explicit product beats SDPA's flash kernel in training (dropout makes SDPA use
# its unfused math path) and, predicting, up to about this many tokens; beyond, flash wins (and
# needs no T×T scores in memory). Measured on 2 cores, see benchmarks/SPEED_RESULTS.md.
EXPLICIT_ATTENTION_MAX_LEN = 64


@dataclass
class Packing:
    """Where a padded (B, T) batch's real tokens sit, so layers can move between the two layouts."""

    batch_size: int
    seq_len: int
    indices: Tensor | None  # (N,) flat positions of real tokens in B·T; None: rows are all B·T positions
    key_mask: Tensor | None  # (B, 1, 1, T) bool, True = a real key; None: no padding in the batch
    first_rows: Tensor  # (B,) row of each sequence's first token ([CLS]) in the (N, H) layout
    fast: bool = False  # the fast path: its attention and dropout kernels (see the module docstring)
    bias: Tensor | None = None  # (B, 1, 1, T) additive key mask (0 / most negative), fast path only

    @classmethod
    def build(cls, attention_mask: Tensor | None, batch_size: int, seq_len: int, unpad: bool,
              dtype: torch.dtype = torch.float32) -> "Packing":
        device = attention_mask.device if attention_mask is not None else None
        first = torch.arange(batch_size, device=device) * seq_len
        if attention_mask is None:
            return cls(batch_size, seq_len, None, None, first, fast=unpad)
        mask = attention_mask.bool()
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            # An exported graph is one static program: no host sync, no layout decided by the data.
            return cls(batch_size, seq_len, None, mask[:, None, None, :], first)
        if unpad and mask.device.type != "cpu":
            # On a GPU a batch of tweets is launch-bound, not FLOP-bound: run the padded view (SDPA
            # takes the mask) and skip the host sync that counting real tokens would cost.
            return cls(batch_size, seq_len, None, mask[:, None, None, :], first, fast=True)
        real = int(mask.sum())  # the one host sync: the layout decision needs the count
        if real == batch_size * seq_len:
            # No padding: packed and padded layouts coincide, and attention needs no mask.
            return cls(batch_size, seq_len, None, None, first, fast=unpad)
        key_mask = mask[:, None, None, :]
        if not unpad:
            return cls(batch_size, seq_len, None, key_mask, first)
        bias = torch.zeros(key_mask.shape, dtype=dtype, device=device).masked_fill_(~key_mask, torch.finfo(dtype).min)
        if real > (1 - PACK_MIN_PADDING) * batch_size * seq_len:
            return cls(batch_size, seq_len, None, key_mask, first, fast=True, bias=bias)  # padded view
        indices = mask.reshape(-1).nonzero().squeeze(1)
        # A sequence's first real token sits after all real tokens of earlier sequences.
        lengths = mask.sum(dim=1)
        first = torch.cumsum(lengths, dim=0) - lengths
        return cls(batch_size, seq_len, indices, key_mask, first, fast=True, bias=bias)

    def gather(self, padded: Tensor) -> Tensor:
        """(B, T, ...) → (N, ...): keep the real tokens."""
        flat = padded.reshape(self.batch_size * self.seq_len, *padded.shape[2:])
        return flat if self.indices is None else _GatherRows.apply(flat, self.indices)

    def scatter(self, packed: Tensor) -> Tensor:
        """(N, D) → (B, T, D), zeros at padding."""
        if self.indices is None:
            return packed.view(self.batch_size, self.seq_len, packed.shape[-1])
        out = _ScatterRows.apply(packed, self.indices, self.batch_size * self.seq_len)
        return out.view(self.batch_size, self.seq_len, packed.shape[-1])

    def rows(self, x: Tensor, rows: Tensor) -> Tensor:
        """x[rows] for distinct rows (e.g. first_rows); on the fast path with a cheap backward."""
        return _GatherRows.apply(x, rows) if self.fast else x.index_select(0, rows)


@dataclass
class RowSelection:
    """The rows of the packed (N, H) layout whose final hidden states are used: the last layer computes
    queries, attention output and feed-forward for these rows only (every row stays a key and value).

    For attention the selected rows are laid out as queries (B, Q, H), Q = the most rows one sequence
    has; ``slots`` places row r at flat position slots[r] of that (B·Q) layout (None: exactly one row
    per sequence, in order: the [CLS]-only case).
    """

    rows: Tensor  # (R,) distinct packed rows, ordered by sequence, then position
    slots: Tensor | None
    width: int  # Q

    @classmethod
    def first_tokens(cls, packing: Packing) -> "RowSelection":
        return cls(packing.first_rows, None, 1)

    @classmethod
    def positions(cls, selected: Tensor, attention_mask: Tensor | None, packing: Packing) -> "RowSelection":
        """selected (B, T) bool, a subset of the real tokens, with at least one per sequence."""
        positions = selected.reshape(-1).nonzero().squeeze(1)  # flat in B·T, row-major
        rows = positions
        if packing.indices is not None:  # flat position → packed row: the real tokens before it
            rows = (torch.cumsum(attention_mask.reshape(-1).long(), 0) - 1)[positions]
        counts = selected.sum(dim=1)
        width = int(counts.max())
        sequence = positions // packing.seq_len
        rank = torch.arange(len(positions), device=positions.device) - (torch.cumsum(counts, 0) - counts)[sequence]
        return cls(rows, sequence * width + rank, width)

    def queries(self, q: Tensor, batch_size: int) -> Tensor:
        """(R, H) → (B, Q, H); unused slots are zeros (their outputs are dropped by ``rows_of``)."""
        if self.slots is None:
            return q[:, None, :]
        return _ScatterRows.apply(q, self.slots, batch_size * self.width).view(batch_size, self.width, -1)

    def rows_of(self, ctx: Tensor) -> Tensor:
        """(B, Q, H) → (R, H)."""
        if self.slots is None:
            return ctx[:, 0]
        return _GatherRows.apply(ctx.reshape(-1, ctx.shape[-1]), self.slots)


def _scatter_rows(packed: Tensor, indices: Tensor, num_rows: int) -> Tensor:
    out = packed.new_zeros(num_rows, *packed.shape[1:])
    return out.index_copy_(0, indices, packed)


class _GatherRows(torch.autograd.Function):
    """index_select whose backward writes rows back (index_copy_) instead of accumulating them.

    The indices are distinct, so writing is exact; autograd's generic index_select backward
    (index_add_, a scatter-add on the CPU) cost more than the forward pass of a whole layer.
    """

    @staticmethod
    def forward(ctx, source: Tensor, indices: Tensor) -> Tensor:
        ctx.save_for_backward(indices)
        ctx.num_rows = source.shape[0]
        return source.index_select(0, indices)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (indices,) = ctx.saved_tensors
        return _scatter_rows(grad, indices, ctx.num_rows), None


class _ScatterRows(torch.autograd.Function):
    """(N, D) → (num_rows, D), zeros elsewhere; the adjoint of _GatherRows."""

    @staticmethod
    def forward(ctx, packed: Tensor, indices: Tensor, num_rows: int) -> Tensor:
        ctx.save_for_backward(indices)
        return _scatter_rows(packed, indices, num_rows)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (indices,) = ctx.saved_tensors
        return grad.index_select(0, indices), None, None


def cpu_dropout(x: Tensor, p: float) -> Tensor:
    """Inverted dropout with a cheap mask: 16 random bits per element, seeded from torch's generator.

    One 64-bit draw from torch's CPU generator seeds numpy's SFC64, which fills the mask's bits about
    2× faster than torch's mt19937 (benchmarks/SPEED_RESULTS.md); torch's seed and checkpointed RNG
    state still decide every mask, so seeded runs and resumes stay exact.
    """
    n = x.numel()
    seed = int(torch.empty((), dtype=torch.int64).random_())  # in [0, 2**63)
    words = np.random.SFC64(seed).random_raw((n + 3) // 4)  # uint64, 4 × 16 bits each
    bits = torch.from_numpy(words.view(np.int16)[:n]).view(x.shape)  # uniform int16
    keep = bits >= round(p * 65536) - 32768
    # The scale as a Python float: in bf16 a scaled mask would round 1/0.9 to 1.109 (-0.2%).
    return (x * keep).mul_(1.0 / (1.0 - p))


class Dropout(nn.Dropout):
    """nn.Dropout; on the CPU fast path with the cheaper mask of ``cpu_dropout``."""

    def forward(self, x: Tensor, fast: bool = False) -> Tensor:
        if fast and self.training and 0 < self.p < 1 and x.device.type == "cpu":
            return cpu_dropout(x, self.p)
        return super().forward(x)


def activation(name: str):
    if name == "gelu":
        # BERT uses the exact erf GELU; the tanh approximation differs by up to ~1e-3.
        return F.gelu
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    return F.silu  # "silu" / "swish"; BertConfig rejects anything else


class Embeddings(nn.Module):
    """token + position + segment embeddings, LayerNorm, dropout."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.token = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.segment = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)
        # Set by the Trainer on the CPU, which keeps a dense .grad for the word embeddings that this
        # sparse gradient is added into (see Trainer._zero_grad). A fresh dense vocab × H gradient
        # every step costs more (page faults of 47 MB for MiniLM) than the rest of the embeddings.
        self.sparse_token_grad = False

    def forward(self, input_ids: Tensor, token_type_ids: Tensor, packing: Packing) -> Tensor:
        B, T = input_ids.shape
        positions = torch.arange(T, device=input_ids.device).expand(B, T)  # absolute, as in BERT
        ids, segments, positions = (packing.gather(t) for t in (input_ids, token_type_ids, positions))
        tokens = F.embedding(ids, self.token.weight, self.token.padding_idx,
                             sparse=self.sparse_token_grad and self.training)
        x = tokens + self.position(positions) + self.segment(segments)  # (N, H)
        return self.dropout(self.norm(x), packing.fast)


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused QKV projection, then residual + LayerNorm (post-LN)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        H = config.hidden_size
        self.qkv = nn.Linear(H, 3 * H)  # rows: query, key, value (one matmul instead of three)
        self.output = nn.Linear(H, H)
        self.norm = nn.LayerNorm(H, eps=config.layer_norm_eps)
        self.attention_dropout = config.attention_probs_dropout_prob
        self.dropout = Dropout(config.hidden_dropout_prob)

    def _heads(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape  # (B, T, H) → (B, nh, T, hd)
        return x.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, packing: Packing, only: RowSelection | None = None) -> Tensor:
        H = x.shape[-1]
        if only is not None:
            # Only some rows are used after the last layer: project queries for them alone.
            residual = packing.rows(x, only.rows)  # (R, H)
            if isinstance(self.qkv, nn.Linear):
                q = F.linear(residual, self.qkv.weight[:H], self.qkv.bias[:H])  # (R, H)
                kv = F.linear(x, self.qkv.weight[H:], self.qkv.bias[H:])  # (N, 2H)
            else:  # an int8-quantized projection has no weight to slice: project all, keep what is used
                qkv = self.qkv(x)
                q, kv = packing.rows(qkv, only.rows)[:, :H], qkv[:, H:]
            q = only.queries(q, packing.batch_size)  # (B, Q, H)
            k, v = packing.scatter(kv).split(H, dim=-1)  # 2 × (B, T, H)
        else:
            residual = x
            q, k, v = packing.scatter(self.qkv(x)).split(H, dim=-1)  # 3 × (B, T, H)
        ctx = self._attend(self._heads(q), self._heads(k), self._heads(v), packing)  # (B, nh, Tq, hd)
        ctx = ctx.transpose(1, 2).reshape(ctx.shape[0], ctx.shape[2], H)  # (B, Tq, H)
        ctx = only.rows_of(ctx) if only is not None else packing.gather(ctx)  # (R, H) or (N, H)
        return self.norm(residual + self.dropout(self.output(ctx), packing.fast))

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, packing: Packing) -> Tensor:
        dropout_p = self.attention_dropout if self.training else 0.0
        explicit = packing.fast and q.device.type == "cpu" and (dropout_p > 0 or k.shape[-2] <= EXPLICIT_ATTENTION_MAX_LEN)
        if not explicit:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=packing.key_mask, dropout_p=dropout_p)
        # CPU fast path: the explicit product, faster than SDPA's CPU kernels when training (which
        # with dropout fall back to its unfused math) and for short sequences when predicting.
        scores = torch.matmul(q, k.transpose(-1, -2)).float()  # (B, nh, Tq, T); softmax in fp32 under bf16
        scale = self.head_dim**-0.5
        scores = scores * scale if packing.bias is None else torch.add(packing.bias, scores, alpha=scale)
        probs = torch.softmax(scores, dim=-1)
        if dropout_p > 0:
            probs = cpu_dropout(probs, dropout_p)
        return torch.matmul(probs.to(v.dtype), v)  # (B, nh, Tq, hd)


class FeedForward(nn.Module):
    """Position-wise H → intermediate → H with GELU, then residual + LayerNorm."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.hidden_size, config.intermediate_size)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = activation(config.hidden_act)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, x: Tensor, fast: bool = False) -> Tensor:
        return self.norm(x + self.dropout(self.down(self.act(self.up(x))), fast))


class EncoderLayer(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = SelfAttention(config)
        self.feed_forward = FeedForward(config)

    def forward(self, x: Tensor, packing: Packing, only: RowSelection | None = None) -> Tensor:
        return self.feed_forward(self.attention(x, packing, only), packing.fast)


class Pooler(nn.Module):
    """tanh(W · h_[CLS] + b): BERT's sentence vector, trained by next-sentence prediction."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, cls: Tensor) -> Tensor:
        return torch.tanh(self.dense(cls))


@dataclass
class BertOutput:
    last_hidden_state: Tensor | None  # (B, T, H); None when only [CLS] or ``keep`` was computed
    cls: Tensor  # (B, H) final hidden state of [CLS]
    pooled: Tensor  # (B, H) pooler output
    kept: Tensor | None = None  # (M, H) final hidden states at forward(keep=...)'s positions, row-major


class BertModel(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_hidden_layers))
        self.pooler = Pooler(config)
        # Training with activation checkpointing: each layer's activations are recomputed in the
        # backward instead of kept (memory ~ one layer's instead of all); the recomputation replays
        # the layer's dropout RNG, so the results are the same (the trainer's --gradient-checkpointing).
        self.gradient_checkpointing = False
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range  # BERT's truncated-normal-like init for fresh weights
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        *,
        unpad: bool = True,
        cls_only: bool = False,
        keep: Tensor | None = None,
    ) -> BertOutput:
        """input_ids (B, T); attention_mask (B, T) 1 = real token, 0 = [PAD].

        unpad: run dense layers on real tokens only (the fast path; same numbers as the plain one).
        cls_only: skip every computation whose result cannot reach the [CLS] vector (queries,
        attention output and feed-forward of the other tokens in the last layer).
        keep: (B, T) bool, real tokens: the last layer computes only these positions and [CLS]; their
        final states come back as ``kept`` (row-major) and ``last_hidden_state`` is None. Masked-LM
        training needs ~15% of the positions: the last layer's other rows are wasted work.
        """
        B, T = input_ids.shape
        if T > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {T} exceeds max_position_embeddings {self.config.max_position_embeddings}"
            )
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        packing = Packing.build(attention_mask, B, T, unpad, dtype=self.embeddings.token.weight.dtype)
        x = self.embeddings(input_ids, token_type_ids, packing)  # (N, H)
        only, wanted = None, None
        if cls_only:
            only = RowSelection.first_tokens(packing)
        elif keep is not None:
            wanted = keep.clone()
            wanted[:, 0] = True  # [CLS], for the pooler
            if attention_mask is not None:
                wanted &= attention_mask.bool()
            only = RowSelection.positions(wanted, attention_mask, packing)
        last = len(self.layers) - 1
        checkpointed = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            selection = only if i == last else None
            if checkpointed:
                x = torch.utils.checkpoint.checkpoint(layer, x, packing, selection, use_reentrant=False)
            else:
                x = layer(x, packing, selection)
        kept = None
        if cls_only:
            cls, hidden = x, None  # (B, H)
        elif wanted is not None:  # x: (R, H), the wanted positions row-major
            chosen = wanted.reshape(-1).nonzero().squeeze(1)
            kept = x[keep.reshape(-1)[chosen]]
            cls, hidden = x[chosen % T == 0], None
        else:
            cls = packing.rows(x, packing.first_rows)
            hidden = packing.scatter(x)  # (B, T, H), zeros at padding on the fast path
            if unpad and packing.indices is None and packing.key_mask is not None:  # padded view: zero it
                hidden = hidden.masked_fill(~packing.key_mask[:, 0, 0, :, None], 0.0)
        return BertOutput(last_hidden_state=hidden, cls=cls, pooled=self.pooler(cls), kept=kept)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

