"""Start/end logits of every window → each question's best answers, as spans of its original text.

For each window: the ``n_best`` highest start and end logits among its context tokens (the question
and special tokens never answer); every pair with start ≤ end, at most ``max_answer_length`` tokens,
whose start token has its most context in this window (qa_windows.max_context), is a candidate
scored start + end logit (run_squad.py / transformers' utils_qa). The candidates of all windows are
ranked together; the answer text is cut from the original context by the tokens' character offsets,
widened to whole words (as transformers' question-answering pipeline does with align_to_words), so
"unaffordable" is never answered "##afford". The no-answer score is the lowest [CLS] start + end
over the windows; ``null_margin`` = no-answer score − best span score, and with a threshold
(SQuAD v2.0, tuned on validation) a question whose margin exceeds it is answered "".

``score`` is the question-answering pipeline's: in the answer's window, the softmax over [CLS] and
the context tokens of the start logits times that of the end logits. Every listed alternative
(``record(..., top_k)``, as the pipeline's ``top_k``) gets the same score in its own window.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from bertfit.tasks.qa.windows import QAWindows

N_BEST = 20
MAX_ANSWER_LENGTH = 30


@dataclass
class Span:
    text: str
    start: int  # character offsets into the context, end exclusive
    end: int
    logit: float  # start + end logit
    window: int = -1
    tokens: tuple[int, int] = (0, 0)
    score: float = 0.0  # the pipeline's score of this span (see the module docstring)


@dataclass
class QAPrediction:
    """One question's decoded answer: the best span, the alternatives and the no-answer evidence."""

    text: str
    start: int
    end: int
    score: float
    logit: float
    null_margin: float  # no-answer score − best span score (higher: more likely unanswerable)
    candidates: list[Span] = field(default_factory=list)
    no_answer: bool = False


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _word_span(offsets: np.ndarray, words: np.ndarray, s: int, e: int) -> tuple[int, int]:
    """Character span of tokens s..e widened to the whole words they belong to (within the window)."""
    start_word, end_word = words[s], words[e]
    lo = s
    while lo > 0 and words[lo - 1] == start_word:
        lo -= 1
    hi = e
    while hi + 1 < len(words) and words[hi + 1] == end_word:
        hi += 1
    return int(offsets[lo, 0]), int(offsets[hi, 1])


def window_candidates(logits: np.ndarray, windows: QAWindows, f: int, context: str, n_best: int,
                      max_answer_length: int) -> list[Span]:
    """The candidate spans of window ``f`` (logits: its (T, 2) start/end logits)."""
    c0 = int(windows.context_start[f])
    offsets, words, best_here = windows.offsets[f], windows.word_ids[f], windows.max_context[f]
    n = len(offsets)
    if n == 0:
        return []
    start = logits[c0:c0 + n, 0]
    end = logits[c0:c0 + n, 1]
    k = min(n_best, n)
    top_s = np.argpartition(-start, k - 1)[:k]
    top_e = np.argpartition(-end, k - 1)[:k]
    out: list[Span] = []
    for s in top_s.tolist():
        if not best_here[s]:
            continue
        for e in top_e.tolist():
            if e < s or e - s + 1 > max_answer_length:
                continue
            a, b = _word_span(offsets, words, s, e)
            out.append(Span(context[a:b], a, b, float(start[s] + end[e]), f, (c0 + s, c0 + e)))
    return out


def decode_example(logits: Sequence[np.ndarray], windows: QAWindows, feats: Sequence[int], context: str, *,
                   n_best: int = N_BEST, max_answer_length: int = MAX_ANSWER_LENGTH,
                   null_threshold: float | None = None) -> QAPrediction:
    """Decode one question from its windows' logits. null_threshold None: always answer with a span (v1.1)."""
    spans: list[Span] = []
    null = float("inf")
    for f in feats:
        spans.extend(window_candidates(logits[f], windows, f, context, n_best, max_answer_length))
        null = min(null, float(logits[f][0, 0] + logits[f][0, 1]))
    # Several token pairs can widen to the same words: keep each text span once, at its best logit.
    unique: dict[tuple[int, int], Span] = {}
    for span in sorted(spans, key=lambda sp: -sp.logit):
        unique.setdefault((span.start, span.end), span)
    ranked = list(unique.values())[:n_best]
    if not ranked:  # nothing fits (an empty context window): the only answer is "no answer"
        return QAPrediction("", 0, 0, 1.0, null, float("inf"), [], True)
    probabilities: dict[int, tuple[np.ndarray, np.ndarray, list[int]]] = {}
    for span in ranked:  # each alternative scored as the pipeline scores an answer (top_k lists them)
        span.score = _window_score(logits[span.window], windows, span.window, span.tokens, probabilities)
    best = ranked[0]
    margin = null - best.logit
    score = best.score
    if null_threshold is not None and margin > null_threshold:
        cls = _window_score(logits[best.window], windows, best.window, (0, 0))
        return QAPrediction("", 0, 0, cls, null, margin, ranked, True)
    return QAPrediction(best.text, best.start, best.end, score, best.logit, margin, ranked)


def _window_score(logits: np.ndarray, windows: QAWindows, f: int, tokens: tuple[int, int],
                  cache: dict[int, tuple[np.ndarray, np.ndarray, list[int]]] | None = None) -> float:
    """p(start) · p(end) of ``tokens`` in window ``f``, each a softmax over [CLS] and the context
    tokens (``cache``: those softmaxes per window, computed once for all of a question's candidates)."""
    if cache is None or f not in cache:
        c0, n = int(windows.context_start[f]), len(windows.offsets[f])
        rows = [0, *range(c0, c0 + n)]
        computed = (_softmax(logits[rows, 0].astype(np.float64)), _softmax(logits[rows, 1].astype(np.float64)), rows)
        if cache is None:
            cache = {}
        cache[f] = computed
    p_start, p_end, rows = cache[f]
    return float(p_start[rows.index(tokens[0])] * p_end[rows.index(tokens[1])])


def decode_all(logits: Sequence[np.ndarray], windows: QAWindows, *, n_best: int = N_BEST,
               max_answer_length: int = MAX_ANSWER_LENGTH, null_threshold: float | None = None) -> list[QAPrediction]:
    """Every question's prediction, in example order (logits: one (T_f, 2) array per window)."""
    return [decode_example(logits, windows, feats, windows.contexts[i], n_best=n_best,
                           max_answer_length=max_answer_length, null_threshold=null_threshold)
            for i, feats in enumerate(windows.windows_of())]


def record(prediction: QAPrediction, top_k: int = 1) -> dict[str, Any]:
    """The JSON record predict and the server return: answer, score, start, end; with ``top_k`` > 1
    also "top_k", the k best answers in decoding order (the first is the answer; for a question
    judged unanswerable the empty answer, then the best spans), each {answer, score, start, end,
    probability}: score as the top-level one (the question-answering pipeline's, which ranks the same
    within one window), probability a softmax over the listed answers' start + end logits."""
    out: dict[str, Any] = {"answer": prediction.text, "score": prediction.score, "start": prediction.start,
                           "end": prediction.end}
    if prediction.no_answer:
        out["no_answer"] = True
    if top_k > 1:
        listed = [(c.text, c.score, c.start, c.end, c.logit) for c in prediction.candidates]
        if prediction.no_answer:
            listed.insert(0, ("", prediction.score, 0, 0, prediction.logit))
        listed = listed[:top_k]
        logits = np.array([x[4] for x in listed], dtype=np.float64)
        probs = _softmax(logits) if len(logits) else logits
        out["top_k"] = [{"answer": text, "score": score, "start": start, "end": end, "probability": float(p)}
                        for (text, score, start, end, _), p in zip(listed, probs)]
    return out
