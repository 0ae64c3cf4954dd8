"""Long inputs: which tokens of a text longer than the model's budget are read, shared by train and predict.

BERT reads at most ``max_length`` tokens ([CLS] and [SEP] included). The tokenizer supplies each
text's word-piece ids (no special tokens, no truncation); a strategy here picks the positions kept:

- ``head``: the first tokens (what every common tool does; the default, and the same ids as the
  tokenizer's own right-truncation, longest side first for pairs).
- ``tail``: the last tokens (a review's verdict, a ticket's latest message).
- ``head+tail``: the first ``head_tokens`` and the last tokens that fit, Sun et al. 2019's best
  setting for long IMDb reviews (128 + 382 of 510).
- ``windows`` (``long_text="windows"``): every token, in overlapping windows of the budget whose starts
  are ``window_stride`` tokens apart (the last window ends at the text's end); at most ``max_windows``
  per text, spread evenly from the first to the last when a text needs more. The model runs on every
  window and the document's output aggregates the windows' outputs (mean or max of the logits).

Pairs: the budget is shared longest-first as the tokenizer does it (the shorter side keeps up to half,
the longer side the rest), then each side keeps its share by the strategy. With windows, the second text keeps
at most half the budget (its head) and the first text is windowed over the rest.

The settings are recorded in the run (task.json, see artifact.py) so predict, evaluate, serve and
export read texts the way the model was trained.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from bertfit.data import token_cache
from bertfit.errors import ConfigError
from bertfit.tokenizer import Encoded

TRUNCATIONS = ("head", "tail", "head+tail")
LONG_TEXT = ("truncate", "windows")
AGGREGATES = ("mean", "max")


@dataclass(frozen=True)
class LongText:
    """How a text longer than the budget is read (see the module docstring)."""

    truncation: str = "head"
    head_tokens: int = 128
    long_text: str = "truncate"
    window_stride: int | None = None  # tokens between window starts; None: half a window
    window_aggregate: str = "mean"
    max_windows: int = 8

    @property
    def windowed(self) -> bool:
        return self.long_text == "windows"

    @classmethod
    def from_settings(cls, settings: Any) -> "LongText":
        """From a TrainConfig, or the dict saved in task.json (missing keys: the defaults, i.e. runs
        from before these settings read the head, as they were trained)."""
        get = settings.get if isinstance(settings, Mapping) else lambda k, d=None: getattr(settings, k, d)
        default = cls()
        return cls(truncation=get("truncation", default.truncation) or default.truncation,
                   head_tokens=int(get("head_tokens", default.head_tokens) or default.head_tokens),
                   long_text=get("long_text", default.long_text) or default.long_text,
                   window_stride=get("window_stride", None),
                   window_aggregate=get("window_aggregate", default.window_aggregate) or default.window_aggregate,
                   max_windows=int(get("max_windows", default.max_windows) or default.max_windows))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self, max_length: int) -> None:
        """ConfigError for settings that cannot work with ``max_length`` (the message names the fix)."""
        if self.truncation not in TRUNCATIONS:
            raise ConfigError(f"truncation must be one of {', '.join(TRUNCATIONS)}, got {self.truncation!r}")
        if self.long_text not in LONG_TEXT:
            raise ConfigError(f"long_text must be one of {', '.join(LONG_TEXT)}, got {self.long_text!r}")
        if self.window_aggregate not in AGGREGATES:
            raise ConfigError(f"window_aggregate must be one of {', '.join(AGGREGATES)}, got {self.window_aggregate!r}")
        budget = max_length - 2
        if self.truncation == "head+tail" and not self.windowed and not 1 <= self.head_tokens < budget:
            raise ConfigError(f"head_tokens {self.head_tokens} leaves no room for the tail with max_length {max_length} "
                              f"({budget} text tokens); pass --head-tokens below {budget} (e.g. {max(1, budget // 4)}) "
                              "or a larger --max-length")
        if self.window_stride is not None and not 1 <= self.window_stride <= budget:
            raise ConfigError(f"window_stride must be between 1 and {budget} (the window's text tokens at max_length "
                              f"{max_length}), got {self.window_stride}; a larger stride would skip tokens")
        if not 1 <= self.max_windows <= 1024:
            raise ConfigError(f"max_windows must be between 1 and 1024, got {self.max_windows}")


# -- positions ------------------------------------------------------------------------------------

def kept_positions(n: int, budget: int, truncation: str = "head", head_tokens: int = 128) -> list[int]:
    """The positions (0-based, increasing) of the ``n`` tokens of one text that a strategy keeps
    within ``budget`` tokens."""
    if n <= budget:
        return list(range(n))
    if truncation == "head":
        return list(range(budget))
    if truncation == "tail":
        return list(range(n - budget, n))
    if truncation == "head+tail":
        head = min(head_tokens, budget)
        return list(range(head)) + list(range(n - (budget - head), n))
    raise ConfigError(f"truncation must be one of {', '.join(TRUNCATIONS)}, got {truncation!r}")


def pair_budgets(n_a: int, n_b: int, budget: int) -> tuple[int, int]:
    """Each side's share of ``budget`` when a pair is too long, as the tokenizer's longest-first
    truncation gives it: the shorter side keeps all its tokens up to half the budget (rounded down;
    the first side counts as the shorter on a tie), the longer side gets the rest."""
    if n_a + n_b <= budget:
        return n_a, n_b
    if n_a > n_b:
        short = min(n_b, budget // 2)
        return budget - short, short
    short = min(n_a, budget // 2)
    return short, budget - short


def window_starts(n: int, size: int, stride: int, max_windows: int) -> list[int]:
    """Start positions of the windows over ``n`` tokens: every ``stride`` tokens, the last one ending at
    the text's end; at most ``max_windows``, spread evenly from the first to the last."""
    if n <= size:
        return [0]
    starts = list(range(0, n - size, stride)) + [n - size]
    if len(starts) > max_windows:
        if max_windows == 1:
            return [0]
        starts = sorted({int(round(x)) for x in np.linspace(0, n - size, max_windows)})
    return starts


# -- encoding --------------------------------------------------------------------------------------

@dataclass
class Features:
    """What the model runs on: one or more encoded sequences per text, and which text each came from."""

    encoded: list[Encoded]
    example_index: np.ndarray  # (F,) int64: feature -> text
    n_examples: int
    settings: LongText

    def gather(self, outputs: np.ndarray) -> np.ndarray:
        """Per-feature outputs (F, L) -> per-text outputs (N, L): windows aggregated, identity otherwise."""
        if not self.settings.windowed:
            return outputs
        return aggregate(outputs, self.example_index, self.n_examples, self.settings.window_aggregate)

    @property
    def windows_per_example(self) -> np.ndarray:
        return np.bincount(self.example_index, minlength=self.n_examples)


def _sequence(cls_id: int, sep_id: int, a: Sequence[int], b: Sequence[int] | None, truncated: bool) -> Encoded:
    ids = [cls_id, *a, sep_id]
    type_ids = [0] * len(ids)
    if b is not None:
        ids += [*b, sep_id]
        type_ids += [1] * (len(b) + 1)
    return Encoded(ids, type_ids, truncated)


def build(pieces: Sequence[list[int]], pair_pieces: Sequence[list[int]] | None, max_length: int,
          settings: LongText, cls_id: int, sep_id: int) -> Features:
    """Features from word-piece ids (no special tokens): the strategy's kept positions, or windows."""
    encoded: list[Encoded] = []
    index: list[int] = []
    specials = 2 if pair_pieces is None else 3
    budget = max_length - specials
    for i, a in enumerate(pieces):
        b = None if pair_pieces is None else pair_pieces[i]
        if settings.windowed:
            b_keep = b
            if b is not None and len(a) + len(b) > budget:
                b_keep = b[: min(len(b), budget // 2)]
            size = budget - (0 if b_keep is None else len(b_keep))
            stride = settings.window_stride or max(1, size // 2)
            starts = window_starts(len(a), size, min(stride, size), settings.max_windows)
            covered = np.zeros(len(a), dtype=bool)
            for s in starts:
                covered[s : s + size] = True
            cut = not covered.all() or (b is not None and len(b_keep) < len(b))
            for s in starts:
                encoded.append(_sequence(cls_id, sep_id, a[s : s + size], b_keep, cut))
                index.append(i)
            continue
        if b is None:
            keep_a, keep_b = kept_positions(len(a), budget, settings.truncation, settings.head_tokens), None
            cut = len(keep_a) < len(a)
        else:
            share_a, share_b = pair_budgets(len(a), len(b), budget)
            keep_a = kept_positions(len(a), share_a, settings.truncation, settings.head_tokens)
            keep_b = kept_positions(len(b), share_b, settings.truncation, settings.head_tokens)
            cut = len(keep_a) < len(a) or len(keep_b) < len(b)
        encoded.append(_sequence(cls_id, sep_id, [a[p] for p in keep_a],
                                 None if keep_b is None else [b[p] for p in keep_b], cut))  # type: ignore[index]
        index.append(i)
    return Features(encoded, np.asarray(index, dtype=np.int64), len(pieces), settings)


def encode(tokenizer: Any, texts: Sequence[str], pairs: Sequence[str] | None, max_length: int,
           settings: LongText | None = None) -> Features:
    """Texts (and pair texts) -> the features the model runs on, read by ``settings`` (default: head)."""
    settings = settings or LongText()
    texts = list(texts)
    if pairs is not None and len(pairs) != len(texts):
        raise ValueError(f"Got {len(texts)} texts but {len(pairs)} pairs; pass one pair text per text.")
    if not texts:
        return Features([], np.zeros(0, dtype=np.int64), 0, settings)
    if settings == LongText():
        # The default reads the head: the tokenizer's own truncation gives the same ids, in Rust. A large
        # split goes through the tokenized cache on disk (data/token_cache.py): the same features, mapped.
        pair_list = None if pairs is None else list(pairs)
        if token_cache.cache_enabled(len(texts)):
            encoded = token_cache.encode_cached(tokenizer, texts, pair_list, max_length)
        else:
            encoded = tokenizer.encode(texts, pair_list, max_length=max_length)
        return Features(encoded, np.arange(len(texts), dtype=np.int64), len(texts), settings)
    if token_cache.cache_enabled(len(texts)):  # a large split: mapped from the tokenized cache on disk
        examples = [(t, None if pairs is None else pairs[i]) for i, t in enumerate(texts)]
        store = token_cache.cached_features(tokenizer, examples, feature_codec(tokenizer, max_length, settings))
        return Features(store.encoded, store.example_index, len(texts), settings)
    pieces = tokenizer.encode_pieces(texts)
    pair_pieces = tokenizer.encode_pieces(list(pairs)) if pairs is not None else None
    return build(pieces, pair_pieces, max_length, settings, tokenizer.cls_id, tokenizer.sep_id)


def feature_codec(tokenizer: Any, max_length: int, settings: LongText) -> token_cache.FeatureCodec:
    """How :func:`build`'s features are stored in the tokenized cache: the sequences and the text of
    each. Examples are (text, pair or None); the key holds max_length and every long-text setting."""

    def encode(examples: Sequence[tuple[str, str | None]]) -> token_cache.EncodedChunk:
        with_pairs = examples[0][1] is not None
        pieces = tokenizer.encode_pieces([t for t, _ in examples])
        pair_pieces = tokenizer.encode_pieces([p for _, p in examples]) if with_pairs else None
        features = build(pieces, pair_pieces, max_length, settings, tokenizer.cls_id, tokenizer.sep_id)
        return token_cache.EncodedChunk(features.encoded, features.example_index)

    return token_cache.FeatureCodec("long-text/1", {"max_length": max_length, **settings.to_dict()},
                                    lambda example: example, encode)


# -- aggregation ---------------------------------------------------------------------------------

def aggregate(outputs: np.ndarray, example_index: np.ndarray, n: int, how: str = "mean") -> np.ndarray:
    """(F, L) window outputs -> (n, L): the mean or the maximum over each text's windows. A text with one
    window gets that window's outputs exactly."""
    outputs = np.asarray(outputs)
    width = outputs.shape[1:] if outputs.ndim > 1 else ()
    if how == "max":
        out = np.full((n, *width), -np.inf, dtype=outputs.dtype)
        np.maximum.at(out, example_index, outputs)
        return out
    if how != "mean":
        raise ConfigError(f"window_aggregate must be one of {', '.join(AGGREGATES)}, got {how!r}")
    out = np.zeros((n, *width), dtype=np.float64)
    np.add.at(out, example_index, outputs)
    counts = np.bincount(example_index, minlength=n).astype(np.float64)
    return (out / np.maximum(counts, 1).reshape(-1, *([1] * len(width)))).astype(outputs.dtype)


def aggregate_torch(outputs: Any, example_index: Any, n: int, how: str = "mean") -> Any:
    """The same as :func:`aggregate` on tensors, differentiable (training aggregates a batch's windows
    before the loss, so the loss is the document's)."""
    import torch

    index = example_index.to(outputs.device)
    shape = (n, *outputs.shape[1:])
    expand = index.view(-1, *([1] * (outputs.dim() - 1))).expand_as(outputs)
    if how == "max":
        base = torch.full(shape, float("-inf"), dtype=outputs.dtype, device=outputs.device)
        return base.scatter_reduce(0, expand, outputs, reduce="amax", include_self=True)
    summed = torch.zeros(shape, dtype=outputs.dtype, device=outputs.device).index_add(0, index, outputs)
    counts = torch.bincount(index, minlength=n).clamp(min=1).to(outputs.dtype)
    return summed / counts.view(-1, *([1] * (outputs.dim() - 1)))


# -- the data summary ----------------------------------------------------------------------------

def truncated_flags(encoded: Sequence[Encoded]) -> np.ndarray:
    """Whether each feature was cut, as a bool array: read from the cache's column when the features are
    mapped (no feature is made), else from each."""
    flags = getattr(encoded, "truncated", None)
    if flags is not None:
        return np.asarray(flags, dtype=bool)
    return np.fromiter((e.truncated for e in encoded), dtype=bool, count=len(encoded))


def summary(features: Sequence[Features], max_length: int) -> dict[str, Any]:
    """How many texts the strategy affects: cut (tokens dropped: by truncation, or with windows beyond
    the cap on windows), and with windows how many texts were split into several windows."""
    settings = features[0].settings if features else LongText()
    texts = sum(f.n_examples for f in features)
    cut = set()
    for k, f in enumerate(features):
        flags = truncated_flags(f.encoded)
        cut.update((k, i) for i in f.example_index[flags].tolist())
    out: dict[str, Any] = {"strategy": "windows" if settings.windowed else settings.truncation,
                           "texts": texts, "cut": len(cut), "max_length": max_length}
    if settings.truncation == "head+tail" and not settings.windowed:
        out["head_tokens"] = settings.head_tokens
    if settings.windowed:
        counts = np.concatenate([f.windows_per_example for f in features]) if features else np.zeros(0)
        out.update(windows=int(counts.sum()), split_into_windows=int((counts > 1).sum()),
                   max_windows=settings.max_windows, window_aggregate=settings.window_aggregate)
    return out
