"""What a task tells the explainer (predict/explain.py): the rows the model runs on for one input,
which of the user's words each token belongs to, and which outputs to explain.

The explainer knows no task. Each task's ``explain_plan`` returns an :class:`ExplainPlan`; its
``choose`` looks at the model's outputs for the input itself and returns the :class:`Target` s to
explain (the predicted class, each label over its threshold, each entity, the answer's start and end,
each choice). A target's ``value`` maps the head's outputs for a batch of interpolation steps to one
number per step: the quantity whose change the attributions account for (a probability, a value).

Words are the user's whitespace-separated words (``"@user"``, ``"don't"``, ``"http://t.co/x"`` stay
whole, however WordPiece cut them), with character offsets into their field's text; pre-tokenised
input (NER ``tokens``) keeps its own words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from torch import Tensor

from bertfit.tokenizer import Encoded

_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class Word:
    """One of the user's words: its text and where it sits in its field's text (characters)."""

    text: str
    start: int
    end: int
    field: str = "text"


@dataclass(frozen=True)
class Target:
    """One output to explain. ``value``: the head's outputs for S steps, shaped (S, F, *output) for
    the plan's F rows → (S,) the explained number per step (differentiable)."""

    name: str
    value: Callable[[Tensor], Tensor]
    info: dict[str, Any] = field(default_factory=dict)  # shown with the explanation (type, span, ...)


@dataclass
class ExplainPlan:
    """One input as the explainer runs it: ``rows`` (the features, run together: one text; a question's
    choices; a context's windows), ``words``, and per row the index of the word each token belongs to
    (-1: [CLS], [SEP] and other tokens that keep their embedding in the baseline)."""

    rows: list[Encoded]
    words: list[Word]
    word_of: list[np.ndarray]
    # (outputs (F, *output) for the input itself, which: the targets the user asked for or None) → targets
    choose: Callable[[Tensor, Sequence[str] | None], list[Target]]


def text_plan(encodings: Sequence[Any], fields: Sequence[Sequence[tuple[str, str]]],
              choose: Callable[[Tensor, Sequence[str] | None], list[Target]]) -> ExplainPlan:
    """A plan from `tokenizers.Encoding` s (``WordPieceTokenizer.encode_offsets`` / ``encode_windows``):
    ``fields[r][s]`` is (field name, text) of row r's sequence s (0: first text, 1: pair). A word met
    in several rows (a question repeated with each choice, a context's overlapping windows) is one word."""
    words: list[Word] = []
    index: dict[tuple[str, int], int] = {}
    chunks: dict[str, list[tuple[int, int]]] = {}
    word_of = []
    for encoding, row_fields in zip(encodings, fields):
        owner = np.full(len(encoding.ids), -1, dtype=np.int64)
        for t, (sequence, (start, end)) in enumerate(zip(encoding.sequence_ids, encoding.offsets)):
            if sequence is None or end <= start:
                continue
            name, text = row_fields[sequence]
            spans = chunks.setdefault(name, [m.span() for m in _WORD.finditer(text)])
            k = _chunk_at(spans, start)
            if k is None:
                continue
            key = (name, k)
            if key not in index:
                index[key] = len(words)
                words.append(Word(text[spans[k][0]:spans[k][1]], spans[k][0], spans[k][1], name))
            owner[t] = index[key]
        word_of.append(owner)
    rows = [Encoded(list(e.ids), list(e.type_ids), False) for e in encodings]
    order = sorted(range(len(words)), key=lambda i: (_field_rank(words[i].field, fields), words[i].start))
    remap = np.empty(len(words) + 1, dtype=np.int64)
    remap[-1] = -1
    remap[np.asarray(order, dtype=np.int64)] = np.arange(len(order))
    return ExplainPlan(rows, [words[i] for i in order], [remap[w] for w in word_of], choose)


def _chunk_at(spans: list[tuple[int, int]], position: int) -> int | None:
    """The whitespace-separated chunk holding character ``position`` (binary search over sorted spans)."""
    lo, hi = 0, len(spans) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        if spans[mid][1] <= position:
            lo = mid + 1
        elif spans[mid][0] > position:
            hi = mid - 1
        else:
            return mid
    return None


def _field_rank(name: str, fields: Sequence[Sequence[tuple[str, str]]]) -> int:
    names = list(dict.fromkeys(n for row in fields for n, _ in row))
    return names.index(name)


def pick(names: Sequence[str], which: Sequence[str] | None, what: str) -> list[int]:
    """Indices of ``which`` among ``names`` ("all": every one); an unknown name is the user's error."""
    from bertfit.errors import BertfitError

    if which is None:
        return []
    if list(which) == ["all"]:
        return list(range(len(names)))
    missing = [w for w in which if w not in names]
    if missing:
        raise BertfitError(f"cannot explain {what} {', '.join(map(repr, missing))}: the model's {what}s are "
                           f"{', '.join(names[:30])}")
    return [list(names).index(w) for w in which]
