"""The BERT encoder, top to bottom: Embeddings → SelfAttention → FeedForward → EncoderLayer → BertModel.

Shapes: B = batch, T = padded length, N = real (non-padding) tokens in the batch, H = hidden size,
nh = heads, hd = H / nh.

Padding removal. Every layer except attention is position-wise, so the embeddings, the linear
layers, GELU and LayerNorm run on the N real tokens packed into an (N, H) matrix; only attention
needs the sequence structure, and gets it by scattering the packed tokens into a zero-filled
(B, T, ·) view just for SDPA and gathering them back. With length-bucketed batches N ≈ B·T and this
costs two copies per layer; with mixed lengths it skips all the work on [PAD]. The plain path
(``unpad=False``) runs everything on B·T rows, exactly like the reference implementation, and is
what the parity tests compare the packed path against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertfit.config import BertConfig


@dataclass
class Packing:
    """Where a padded (B, T) batch's real tokens sit, so layers can move between the two layouts."""

    batch_size: int
    seq_len: int
    indices: Tensor | None  # (N,) flat positions of real tokens in B·T; None: rows are all B·T positions
    key_mask: Tensor | None  # (B, 1, 1, T) bool, True = a real key; None: no padding in the batch
    first_rows: Tensor  # (B,) row of each sequence's first token ([CLS]) in the (N, H) layout

    @classmethod
    def build(cls, attention_mask: Tensor | None, batch_size: int, seq_len: int, unpad: bool) -> "Packing":
        device = attention_mask.device if attention_mask is not None else None
        if attention_mask is None or bool(attention_mask.all()):
            # No padding: packed and padded layouts coincide, and SDPA needs no mask.
            first = torch.arange(batch_size, device=device) * seq_len
            return cls(batch_size, seq_len, None, None, first)
        mask = attention_mask.bool()
        key_mask = mask[:, None, None, :]
        if not unpad:
            first = torch.arange(batch_size, device=device) * seq_len
            return cls(batch_size, seq_len, None, key_mask, first)
        indices = mask.reshape(-1).nonzero().squeeze(1)
        # A sequence's first real token sits after all real tokens of earlier sequences.
        lengths = mask.sum(dim=1)
        first = torch.cumsum(lengths, dim=0) - lengths
        return cls(batch_size, seq_len, indices, key_mask, first)

    def gather(self, padded: Tensor) -> Tensor:
        """(B, T, ...) → (N, ...): keep the real tokens."""
        flat = padded.reshape(self.batch_size * self.seq_len, *padded.shape[2:])
        return flat if self.indices is None else flat.index_select(0, self.indices)

    def scatter(self, packed: Tensor) -> Tensor:
        """(N, D) → (B, T, D), zeros at padding."""
        if self.indices is None:
            return packed.view(self.batch_size, self.seq_len, packed.shape[-1])
        out = packed.new_zeros(self.batch_size * self.seq_len, packed.shape[-1])
        out = out.index_copy(0, self.indices, packed)
        return out.view(self.batch_size, self.seq_len, packed.shape[-1])


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
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor, packing: Packing) -> Tensor:
        B, T = input_ids.shape
        positions = torch.arange(T, device=input_ids.device).expand(B, T)  # absolute, as in BERT
        ids, segments, positions = (packing.gather(t) for t in (input_ids, token_type_ids, positions))
        x = self.token(ids) + self.position(positions) + self.segment(segments)  # (N, H)
        return self.dropout(self.norm(x))


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
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def _heads(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape  # (B, T, H) → (B, nh, T, hd)
        return x.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, packing: Packing, first_only: bool = False) -> Tensor:
        H = x.shape[-1]
        dropout_p = self.attention_dropout if self.training else 0.0
        if first_only:
            # Only the [CLS] row is used after the last layer: project queries for it alone.
            residual = x.index_select(0, packing.first_rows)  # (B, H)
            if isinstance(self.qkv, nn.Linear):
                q = F.linear(residual, self.qkv.weight[:H], self.qkv.bias[:H])  # (B, H)
                kv = F.linear(x, self.qkv.weight[H:], self.qkv.bias[H:])  # (N, 2H)
            else:  # an int8-quantized projection has no weight to slice: project all, keep what is used
                qkv = self.qkv(x)
                q, kv = qkv.index_select(0, packing.first_rows)[:, :H], qkv[:, H:]
            q = q[:, None, :]  # (B, 1, H)
            k, v = packing.scatter(kv).split(H, dim=-1)  # 2 × (B, T, H)
        else:
            residual = x
            q, k, v = packing.scatter(self.qkv(x)).split(H, dim=-1)  # 3 × (B, T, H)
        ctx = F.scaled_dot_product_attention(
            self._heads(q), self._heads(k), self._heads(v), attn_mask=packing.key_mask, dropout_p=dropout_p
        )  # (B, nh, Tq, hd)
        ctx = ctx.transpose(1, 2).reshape(ctx.shape[0], ctx.shape[2], H)  # (B, Tq, H)
        ctx = ctx[:, 0] if first_only else packing.gather(ctx)  # (B, H) or (N, H)
        return self.norm(residual + self.dropout(self.output(ctx)))


class FeedForward(nn.Module):
    """Position-wise H → intermediate → H with GELU, then residual + LayerNorm."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.hidden_size, config.intermediate_size)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = activation(config.hidden_act)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.dropout(self.down(self.act(self.up(x)))))


class EncoderLayer(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = SelfAttention(config)
        self.feed_forward = FeedForward(config)

    def forward(self, x: Tensor, packing: Packing, first_only: bool = False) -> Tensor:
        return self.feed_forward(self.attention(x, packing, first_only))


class Pooler(nn.Module):
    """tanh(W · h_[CLS] + b): BERT's sentence vector, trained by next-sentence prediction."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, cls: Tensor) -> Tensor:
        return torch.tanh(self.dense(cls))


@dataclass
class BertOutput:
    last_hidden_state: Tensor | None  # (B, T, H); None when only [CLS] was computed
    cls: Tensor  # (B, H) final hidden state of [CLS]
    pooled: Tensor  # (B, H) pooler output


class BertModel(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_hidden_layers))
        self.pooler = Pooler(config)
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
    ) -> BertOutput:
        """input_ids (B, T); attention_mask (B, T) 1 = real token, 0 = [PAD].

        unpad: run dense layers on real tokens only (the fast path; same numbers as the plain one).
        cls_only: skip every computation whose result cannot reach the [CLS] vector (queries,
        attention output and feed-forward of the other tokens in the last layer).
        """
        B, T = input_ids.shape
        if T > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {T} exceeds max_position_embeddings {self.config.max_position_embeddings}"
            )
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        packing = Packing.build(attention_mask, B, T, unpad)
        x = self.embeddings(input_ids, token_type_ids, packing)  # (N, H)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x, packing, first_only=cls_only and i == last)
        if cls_only:
            cls, hidden = x, None  # (B, H)
        else:
            cls = x.index_select(0, packing.first_rows)
            hidden = packing.scatter(x)  # (B, T, H), zeros at padding on the packed path
        return BertOutput(last_hidden_state=hidden, cls=cls, pooled=self.pooler(cls))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

