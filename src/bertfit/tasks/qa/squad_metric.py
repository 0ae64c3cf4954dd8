"""SQuAD's exact match and F1, written to the letter of the official evaluation scripts.

v1.1 (``evaluate-v1.1.py``): an answer is normalised (lower case, punctuation removed, the articles
a/an/the removed, whitespace collapsed), EM is 1 when the normalised strings are equal, F1 is the
token-overlap F1 of the normalised answers; each question scores the best over all its reference
answers; EM and F1 are percentages over the questions. v2.0 (``evaluate-v2.0.py``) adds questions
without an answer (reference list empty → the only reference is ""), where an empty prediction
scores 1 and anything else 0, reports HasAns / NoAns splits, and tunes the no-answer threshold
(``best_threshold``) the way its ``find_best_thresh`` does.
"""

from __future__ import annotations

import collections
import re
import string
from typing import Any, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace (the official order)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def f1_score(prediction: str, reference: str, v2: bool = False) -> float:
    """Token F1 of the normalised strings. v2: an empty answer scores 1 against an empty reference
    (evaluate-v2.0.py); v1.1 scores 0 whenever no token is shared, even when both are empty."""
    pred = normalize_answer(prediction).split()
    gold = normalize_answer(reference).split()
    if v2 and (not pred or not gold):
        return float(pred == gold)
    common = collections.Counter(pred) & collections.Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred)
    recall = same / len(gold)
    return 2 * precision * recall / (precision + recall)


def score_question(prediction: str, references: Sequence[str], v2: bool = False) -> tuple[float, float]:
    """(EM, F1) of one prediction, each the best over the references. v2: references that normalise
    to nothing are dropped, and none left means the answer is "" (evaluate-v2.0.py)."""
    refs = ([r for r in references if normalize_answer(r)] or [""]) if v2 else list(references)
    return max(exact_match(prediction, r) for r in refs), max(f1_score(prediction, r, v2) for r in refs)


def squad_scores(predictions: Sequence[str], references: Sequence[Sequence[str]], v2: bool | None = None) -> dict[str, Any]:
    """EM and F1 in percent over all questions, with HasAns / NoAns splits when any question has no
    answer (the v2.0 report); ``per_question`` holds each (EM, F1) for the report's mistakes.
    v2 None: the v2.0 rules exactly when some question has no reference answer, else v1.1's."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} questions")
    if v2 is None:
        v2 = any(not r for r in references)
    per = [score_question(p, r, v2) for p, r in zip(predictions, references)]
    n = len(per)
    out: dict[str, Any] = {
        "exact_match": 100.0 * sum(e for e, _ in per) / n if n else 0.0,
        "f1": 100.0 * sum(f for _, f in per) / n if n else 0.0,
        "n": n,
        "per_question": per,
    }
    has = [i for i, r in enumerate(references) if any(normalize_answer(x) for x in r)]
    if v2:
        no = sorted(set(range(n)) - set(has))
        for name, idx in (("HasAns", has), ("NoAns", no)):
            out[f"{name}_exact"] = 100.0 * sum(per[i][0] for i in idx) / len(idx) if idx else 0.0
            out[f"{name}_f1"] = 100.0 * sum(per[i][1] for i in idx) / len(idx) if idx else 0.0
            out[f"{name}_total"] = len(idx)
    return out


def best_threshold(predictions: Sequence[str], null_margins: Sequence[float],
                   references: Sequence[Sequence[str]], by: str = "f1") -> tuple[float, float]:
    """The no-answer threshold that maximises EM or F1 (official v2.0 ``find_best_thresh``).

    null_margins: per question, how much the no-answer score beats the best span (null − best);
    a question is answered "" when its margin exceeds the threshold. Returns (threshold, score in %).
    """
    if by not in ("f1", "exact_match"):
        raise ValueError(f"by must be 'f1' or 'exact_match', not {by!r}")
    k = 1 if by == "f1" else 0
    per = [score_question(p, r, True) for p, r in zip(predictions, references)]
    has_answer = [any(normalize_answer(x) for x in r) for r in references]
    # Start with every question answered "" (threshold below every margin), then answer them one by
    # one in the order of increasing margin, keeping the best running score.
    score = float(sum(not h for h in has_answer))
    best_score, best_thresh = score, min(null_margins, default=0.0) - 1.0
    for i in sorted(range(len(per)), key=lambda j: null_margins[j]):
        empty_pred_score = 0.0 if has_answer[i] else 1.0
        span_score = per[i][k] if normalize_answer(predictions[i]) else empty_pred_score
        score += span_score - empty_pred_score
        if score > best_score:
            best_score, best_thresh = score, float(null_margins[i])
    n = len(per)
    return best_thresh, 100.0 * best_score / n if n else 0.0

