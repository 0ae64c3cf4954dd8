"""Words → subword windows with aligned tag targets, and window outputs → one row per word.

Alignment (as run_ner.py and Google's BERT scripts): each word's tag sits on its first subword; the
other subwords are ignored in the loss (-100), or, with ``label_all_subwords``, carry the I- form
of the word's tag (B-PER → I-PER, so an entity is never counted twice).

Windows: a sentence of n subwords longer than the window (max_length - 2) is covered by windows
``stride`` subwords apart (the last one ends at the sentence's end), for training and prediction
alike; nothing is truncated. Each word's prediction is read from the window where its first subword
has the most context: the largest min(subwords before it, subwords after it) inside the window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from bertfit.data import token_cache
from bertfit.tasks.ner.entities import OUTSIDE, split_tag
from bertfit.tokenizer import Encoded

IGNORE = -100


def window_starts(n: int, size: int, stride: int) -> list[int]:
    """Start offsets of windows of ``size`` over ``n`` subwords, ``stride`` apart, the last ending at n."""
    if n <= size:
        return [0]
    return list(range(0, n - size, stride)) + [n - size]


def inside_form(tag: str) -> str:
    kind, type_ = split_tag(tag)
    return OUTSIDE if tag == OUTSIDE else f"I-{type_}"


@dataclass(frozen=True)
class Window:
    """Where one feature sits: its sentence, the subword offset its content starts at, and for each of
    its positions the word whose first subword is there (-1: [CLS], [SEP], a later subword)."""

    example: int
    start: int
    length: int  # content subwords (the window without [CLS]/[SEP])
    words: np.ndarray  # (T,) int64


def encode_windows(tokenizer, sentences: Sequence, max_length: int, stride: int | None,
                   tag_index: Mapping[str, int] | None = None, label_all: bool = False
                   ) -> tuple[list[Encoded], list[np.ndarray], list[Window], list[int]]:
    """(features, per-feature targets (T,) with -100 where ignored, windows, subwords per sentence)."""
    size = max_length - 2
    step = stride or max(1, size // 2)
    step = min(step, size)
    pieces = tokenizer.encode_words([s.words for s in sentences])
    cls, sep = tokenizer.cls_id, tokenizer.sep_id
    encoded: list[Encoded] = []
    targets: list[np.ndarray] = []
    windows: list[Window] = []
    lengths: list[int] = []
    for index, (sentence, (ids, word_ids)) in enumerate(zip(sentences, pieces)):
        n = len(ids)
        lengths.append(n)
        wid = np.asarray(word_ids, dtype=np.int64) if n else np.zeros(0, dtype=np.int64)
        first = np.ones(n, dtype=bool)
        first[1:] = wid[1:] != wid[:-1]
        word_at = np.where(first, wid, -1)
        labelled = sentence.tags is not None and tag_index is not None
        if labelled:
            word_tags = np.asarray([tag_index[t] for t in sentence.tags], dtype=np.int64)
            sub = np.where(first, word_tags[wid] if n else wid, IGNORE)
            if label_all and n:
                inner = np.asarray([tag_index.get(inside_form(t), tag_index[t]) for t in sentence.tags], dtype=np.int64)
                sub = np.where(first, sub, inner[wid])
        for start in window_starts(n, size, step):
            end = min(n, start + size)
            window_ids = [cls, *ids[start:end], sep]
            encoded.append(Encoded(window_ids, [0] * len(window_ids), False))
            words = np.full(len(window_ids), -1, dtype=np.int64)
            words[1:-1] = word_at[start:end]
            windows.append(Window(index, start, end - start, words))
            target = np.full(len(window_ids), IGNORE, dtype=np.int64)
            if labelled:
                target[1:-1] = sub[start:end]
            targets.append(target)
    return encoded, targets, windows, lengths


def stitch(outputs: Sequence[np.ndarray], windows: Sequence[Window], word_counts: Sequence[int],
           outside: int = 0) -> list[np.ndarray]:
    """Per-feature (T_i, L) outputs → per-sentence (words, L): each word's row from the window where
    its first subword has the most context. A word with no subword (one the tokenizer's normaliser
    empties) gets a row that says ``outside`` with certainty."""
    n_labels = next((o.shape[-1] for o in outputs if o.ndim == 2), 1)
    rows = []
    for count in word_counts:
        row = np.full((count, n_labels), -1e4, dtype=np.float32)
        row[:, outside] = 0.0
        rows.append(row)
    best = [np.full(count, -1, dtype=np.int64) for count in word_counts]
    for out, window in zip(outputs, windows):
        positions = np.flatnonzero(window.words >= 0)
        if not len(positions):
            continue
        k = positions - 1  # offset inside the window's content
        context = np.minimum(k, window.length - 1 - k)
        words = window.words[positions]
        take = context > best[window.example][words]
        if take.any():
            rows[window.example][words[take]] = out[positions[take]]
            best[window.example][words[take]] = context[take]
    return rows


# -- the tokenized cache (data/token_cache.py): these features as Arrow columns ---------------------

def feature_codec(tokenizer, max_length: int, stride: int | None, tag_index: Mapping[str, int] | None,
                  label_all: bool = False) -> token_cache.FeatureCodec:
    """How ``encode_windows``' features are stored: the windows' ids, the example of each, their
    per-token targets (when labelled), their start subword and their word map. The key holds every
    setting they depend on: max_length, the stride, the label map (tag -> id, in order) and
    label_all_subwords; the content is each sentence's words and tags."""
    labelled = tag_index is not None

    def encode(sentences: Sequence[Any]) -> token_cache.EncodedChunk:
        encoded, targets, windows, _ = encode_windows(tokenizer, sentences, max_length, stride, tag_index, label_all)
        columns: dict[str, Any] = {"start": [w.start for w in windows], "words": [w.words for w in windows]}
        if labelled:
            columns["targets"] = targets
        return token_cache.EncodedChunk(encoded, [w.example for w in windows], columns)

    def content(sentence: Any) -> tuple[Any, ...]:
        return (len(sentence.words), *sentence.words, *((sentence.tags or ()) if labelled else ()))

    columns = {"start": "int32", "words": "list<int32>", **({"targets": "list<int32>"} if labelled else {})}
    settings = {"max_length": max_length, "stride": stride, "label_all_subwords": bool(label_all),
                "labels": None if tag_index is None else sorted(tag_index.items(), key=lambda kv: kv[1])}
    return token_cache.FeatureCodec("ner-windows/1", settings, content, encode, columns)


class StoredWindows(Sequence):
    """The windows of a split mapped from the cache: ``[i]`` is the i-th Window, made on access."""

    def __init__(self, store: token_cache.FeatureStore) -> None:
        self.example_index = store.example_index  # (F,) int64: the sentence of each window
        self._starts = store.scalar("start")
        self._words = store.lists("words", np.int64)

    def __len__(self) -> int:
        return len(self._words)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        words = self._words[index]
        return Window(int(self.example_index[index]), int(self._starts[index]), len(words) - 2, words)


def encode_cached(tokenizer, sentences: Sequence, max_length: int, stride: int | None,
                  tag_index: Mapping[str, int] | None = None, label_all: bool = False
                  ) -> tuple[Sequence[Encoded], Sequence[np.ndarray] | None, Sequence[Window]]:
    """``encode_windows``' (features, targets, windows) mapped from the tokenized cache (built first when
    it does not hold them); targets None when unlabelled."""
    store = token_cache.cached_features(tokenizer, sentences,
                                        feature_codec(tokenizer, max_length, stride, tag_index, label_all))
    targets = store.lists("targets", np.int64) if tag_index is not None else None
    return store.encoded, targets, StoredWindows(store)
