"""Questions over long contexts → windows (the features the model runs on), their span labels, and
what decoding needs to map a window's tokens back to the text.

Each question + context pair is truncated on the context only; a context longer than the window is
cut into several windows that overlap by ``stride`` tokens (transformers' fast-tokenizer semantics:
truncation="only_second", return_overflowing_tokens, so windows are the same as run_qa.py's and the
question-answering pipeline's). A window is labelled with the first answer's start and end tokens
when the answer lies wholly inside it, else at [CLS] (index 0): "no answer in this window" (v2.0
semantics; for v1.1 data these windows are kept as well, as run_qa.py does, so the model learns to
put its [CLS] score above the spans of a window that misses the answer, which decoding across
windows relies on). Questions longer than ``max_query_length`` tokens are cut to it (Google's
run_squad.py), so every window keeps room for the context.

Each context token is scored only from the window where it has the most context on both sides
(``max_context``: Devlin et al.'s rule, min(left, right) + 0.01 · window length).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from bertfit.data import token_cache
from bertfit.tokenizer import Encoded, WordPieceTokenizer

MAX_QUERY_LENGTH = 64


@dataclass
class QAWindows:
    """Per-window (feature) arrays, and the per-example texts decoding cuts answers from."""

    encoded: list[Encoded]
    example_index: np.ndarray  # (F,) which example each window belongs to
    context_start: np.ndarray  # (F,) position of the window's first context token
    offsets: list[np.ndarray]  # per window: (n_ctx, 2) character offsets of its context tokens
    word_ids: list[np.ndarray]  # per window: (n_ctx,) the context word of each context token
    max_context: list[np.ndarray]  # per window: (n_ctx,) bool, the token's best window is this one
    contexts: list[str]
    questions: list[str]
    targets: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))  # (F, 2)
    context_tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # (N,)
    questions_cut: int = 0
    question_cut: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # (N,) which were cut
    top_k: list[int | None] = field(default_factory=list)  # (N,) per example: answers its record lists

    def __len__(self) -> int:
        return len(self.encoded)

    def windows_of(self) -> list[list[int]]:
        """For each example, the indices of its windows in order."""
        out: list[list[int]] = [[] for _ in self.contexts]
        for f, e in enumerate(self.example_index.tolist()):
            out[e].append(f)
        return out


def _cut_questions(tokenizer: WordPieceTokenizer, questions: Sequence[str], max_query_length: int
                   ) -> tuple[list[str], np.ndarray]:
    # run_qa.py strips leading whitespace: some SQuAD questions start with many spaces, which would
    # otherwise only waste the window. Long questions are cut word by word (rare: SQuAD has a handful).
    stripped = [q.lstrip() for q in questions]
    lengths = tokenizer.encode(stripped, max_length=max_query_length + 2)
    cut = np.zeros(len(stripped), dtype=bool)
    for i, e in enumerate(lengths):
        if e.truncated:
            words = stripped[i].split()
            while len(words) > 1 and len(tokenizer.tokenize(" ".join(words))) > max_query_length:
                words.pop()
            stripped[i] = " ".join(words)
            cut[i] = True
    return stripped, cut


def fit_questions(tokenizer: WordPieceTokenizer, questions: Sequence[str], max_length: int, stride: int,
                  max_query_length: int = MAX_QUERY_LENGTH) -> tuple[list[str], np.ndarray]:
    """The questions as every window reads them (training, prediction, explanations): leading space
    stripped, and cut to what a window holds beside the stride and new context; with which were cut."""
    # A question may take what the window has beyond the stride and one new context token.
    max_query_length = min(max_query_length, max_length - 3 - stride - 1)
    if max_query_length < 1:
        raise ValueError(f"doc_stride {stride} leaves no room in windows of {max_length} tokens for a question "
                         "and new context; lower --doc-stride or raise --max-length")
    return _cut_questions(tokenizer, questions, max_query_length)


def encode_windows(tokenizer: WordPieceTokenizer, questions: Sequence[str], contexts: Sequence[str],
                   answers: Sequence[tuple[str, int] | None], max_length: int, stride: int,
                   max_query_length: int = MAX_QUERY_LENGTH) -> QAWindows:
    """Windows of every question + context, labelled with each example's answer (None: no answer)."""
    questions, cut = fit_questions(tokenizer, questions, max_length, stride, max_query_length)
    per_example = tokenizer.encode_windows(questions, list(contexts), max_length, stride)
    encoded: list[Encoded] = []
    example_index: list[int] = []
    starts: list[int] = []
    offsets: list[np.ndarray] = []
    words: list[np.ndarray] = []
    targets: list[tuple[int, int]] = []
    for i, windows in enumerate(per_example):
        answer = answers[i] if i < len(answers) else None
        for enc in windows:
            seq = np.array([-1 if s is None else s for s in enc.sequence_ids], dtype=np.int8)
            ctx = np.flatnonzero(seq == 1)
            c0 = int(ctx[0]) if len(ctx) else len(seq) - 1
            off = np.asarray(enc.offsets, dtype=np.int32)[ctx].reshape(-1, 2)
            wid = np.array([-1 if w is None else w for w in enc.word_ids], dtype=np.int32)[ctx]  # (one list per call)
            encoded.append(Encoded(enc.ids, enc.type_ids, False))  # nothing is lost: the rest is in other windows
            example_index.append(i)
            starts.append(c0)
            offsets.append(off)
            words.append(wid)
            targets.append(_label(off, c0, answer))
    out = QAWindows(encoded=encoded, example_index=np.asarray(example_index, dtype=np.int64),
                    context_start=np.asarray(starts, dtype=np.int64), offsets=offsets, word_ids=words,
                    max_context=[], contexts=list(contexts), questions=questions,
                    targets=np.asarray(targets, dtype=np.int64).reshape(-1, 2), questions_cut=int(cut.sum()),
                    question_cut=cut)
    out.context_tokens = _count_context_tokens(out)
    out.max_context = _max_context(out)
    return out


# -- the tokenized cache (data/token_cache.py): these windows as Arrow columns ---------------------

def feature_codec(tokenizer: WordPieceTokenizer, max_length: int, stride: int,
                  max_query_length: int = MAX_QUERY_LENGTH) -> token_cache.FeatureCodec:
    """How ``encode_windows``' windows are stored: per window its ids, example, context start,
    context tokens' character offsets and words, which of them have their most context here, and its
    answer's (start, end); per example its cut question, whether it was cut, and its context tokens.
    Examples are (question, context, first answer or None). The key holds max_length, the stride and
    the question limit; the content the question, the context and the answer."""

    def encode(examples: Sequence[Any]) -> token_cache.EncodedChunk:
        w = encode_windows(tokenizer, [q for q, _, _ in examples], [c for _, c, _ in examples],
                           [a for _, _, a in examples], max_length, stride, max_query_length)
        columns = {"context_start": w.context_start, "offsets": w.offsets, "word_ids": w.word_ids,
                   "max_context": w.max_context, "target_start": w.targets[:, 0], "target_end": w.targets[:, 1]}
        per_example = {"question": w.questions, "question_cut": w.question_cut, "context_tokens": w.context_tokens}
        return token_cache.EncodedChunk(w.encoded, w.example_index, columns, per_example)

    def content(example: Any) -> tuple[Any, ...]:
        question, context, answer = example
        return (question, context) + ((None, None) if answer is None else (answer[0], answer[1]))

    columns = {"context_start": "int64", "offsets": "list<int32>", "word_ids": "list<int32>",
               "max_context": "list<int8>", "target_start": "int64", "target_end": "int64"}
    example_columns = {"question": "string", "question_cut": "int8", "context_tokens": "int64"}
    settings = {"max_length": max_length, "stride": stride, "max_query_length": max_query_length}
    return token_cache.FeatureCodec("qa-windows/1", settings, content, encode, columns, example_columns)


def encode_windows_cached(tokenizer: WordPieceTokenizer, questions: Sequence[str], contexts: Sequence[str],
                          answers: Sequence[tuple[str, int] | None], max_length: int, stride: int,
                          max_query_length: int = MAX_QUERY_LENGTH) -> QAWindows:
    """``encode_windows`` mapped from the tokenized cache (built first when it does not hold them): the
    same windows, whose per-window arrays are read on access."""
    if min(max_query_length, max_length - 3 - stride - 1) < 1:
        encode_windows(tokenizer, [], [], [], max_length, stride, max_query_length)  # its error, before any work
    examples = [(q, c, answers[i] if i < len(answers) else None) for i, (q, c) in enumerate(zip(questions, contexts))]
    store = token_cache.cached_features(tokenizer, examples, feature_codec(tokenizer, max_length, stride, max_query_length))
    cut = store.example_values("question_cut").astype(bool)
    return QAWindows(encoded=store.encoded, example_index=store.example_index,
                     context_start=store.scalar("context_start"), offsets=store.lists("offsets", shape=(-1, 2)),
                     word_ids=store.lists("word_ids"), max_context=store.lists("max_context", bool),
                     contexts=list(contexts), questions=store.example_values("question"),
                     targets=np.stack([store.scalar("target_start"), store.scalar("target_end")], axis=1),
                     context_tokens=store.example_values("context_tokens").astype(np.int64),
                     questions_cut=int(cut.sum()), question_cut=cut)


def _label(off: np.ndarray, c0: int, answer: tuple[str, int] | None) -> tuple[int, int]:
    """(start, end) token positions of the answer in a window, or (0, 0) at [CLS] when it is not
    wholly inside the window's context."""
    if answer is None or not len(off):
        return 0, 0
    text, start = answer
    end = start + len(text)
    if off[0, 0] > start or off[-1, 1] < end:
        return 0, 0
    s = int(np.searchsorted(off[:, 0], start, side="right")) - 1  # last token starting at or before the answer
    e = int(np.searchsorted(off[:, 1], end, side="left"))  # first token ending at or after it
    return c0 + s, c0 + e


def _count_context_tokens(windows: QAWindows) -> np.ndarray:
    """Distinct context tokens of each example (its context's length in tokens, over all windows)."""
    counts = np.zeros(len(windows.contexts), dtype=np.int64)
    for i, feats in enumerate(windows.windows_of()):
        if feats:
            counts[i] = len(np.unique(np.concatenate([windows.offsets[f][:, 0] for f in feats])))
    return counts


def _max_context(windows: QAWindows) -> list[np.ndarray]:
    """For every window, which of its context tokens have their most context in this window."""
    out = [np.ones(len(off), dtype=bool) for off in windows.offsets]
    for feats in windows.windows_of():
        if len(feats) < 2:
            continue
        keys, scores, owners = [], [], []
        for f in feats:
            n = len(windows.offsets[f])
            pos = np.arange(n)
            # A token is identified across windows by its character start (tokens never overlap).
            keys.append(windows.offsets[f][:, 0])
            scores.append(np.minimum(pos, n - 1 - pos) + 0.01 * n)
            owners.append(np.full(n, f))
        key, score, owner = np.concatenate(keys), np.concatenate(scores), np.concatenate(owners)
        order = np.lexsort((-score, key))  # by key, best score first (ties: the earlier window)
        first = np.ones(len(order), dtype=bool)
        first[1:] = key[order][1:] != key[order][:-1]
        best = dict(zip(key[order][first].tolist(), owner[order][first].tolist()))
        for f in feats:
            out[f] = np.fromiter((best[k] == f for k in windows.offsets[f][:, 0].tolist()), dtype=bool,
                                 count=len(windows.offsets[f]))
    return out
