"""Entities from tag sequences, and entity-level metrics with CoNLL (conlleval / seqeval default) matching.

A tag is ``O`` or ``P-TYPE`` with P one of B, I, E, S. Chunks are read the way conlleval and
seqeval's default mode read them, for every scheme at once (IOB1, IOB2, BIOES): a chunk starts at
B or S, at an I or E that follows O, E, S or a different type; it ends before B, S, O or a type
change and after E or S. Two entities match when their type, first and last word are the same.
tests/test_ner_metrics.py checks this module against the seqeval package on random sequences.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any, Iterable, Sequence

OUTSIDE = "O"
# (type, first word, last word) — the last word inclusive, as conlleval and seqeval count it.
Span = tuple[str, int, int]


def split_tag(tag: str) -> tuple[str, str]:
    """'B-PER' → ('B', 'PER'); 'O' → ('O', '_') (seqeval's reading, so metrics agree on odd tags)."""
    return tag[:1], (tag[1:].split("-", 1)[-1] or "_")


def _ends(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag not in ("O", ".") and prev_type != type_


def _starts(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    if tag in ("B", "S"):
        return True
    if tag in ("E", "I") and prev_tag in ("E", "S", "O"):
        return True
    return tag not in ("O", ".") and prev_type != type_


def spans(tags: Sequence[str]) -> list[Span]:
    """The entities of one sentence's tags: [(type, first, last)], in order."""
    chunks: list[Span] = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, tag in enumerate([*tags, OUTSIDE]):
        kind, type_ = split_tag(tag)
        if _ends(prev_tag, kind, prev_type, type_):
            chunks.append((prev_type, begin, i - 1))
        if _starts(prev_tag, kind, prev_type, type_):
            begin = i
        prev_tag, prev_type = kind, type_
    return chunks


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def _prf(tp: int, predicted: int, true: int) -> dict[str, float]:
    precision, recall = _ratio(tp, predicted), _ratio(tp, true)
    f1 = _ratio(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1}


def entity_metrics(true: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Entity-level precision/recall/F1 (micro, macro, weighted, per type) and token accuracy.

    Per type and averaged exactly as seqeval's classification_report (zero_division=0): macro and
    weighted averages run over the types present in either the gold or the predicted tags.
    """
    if len(true) != len(predicted):
        raise ValueError(f"{len(true)} gold sentences but {len(predicted)} predicted")
    gold_sets: dict[str, set] = defaultdict(set)
    pred_sets: dict[str, set] = defaultdict(set)
    correct_tokens = total_tokens = 0
    for s, (t, p) in enumerate(zip(true, predicted)):
        if len(t) != len(p):
            raise ValueError(f"sentence {s}: {len(t)} gold tags but {len(p)} predicted")
        for type_, a, b in spans(t):
            gold_sets[type_].add((s, a, b))
        for type_, a, b in spans(p):
            pred_sets[type_].add((s, a, b))
        correct_tokens += sum(x == y for x, y in zip(t, p))
        total_tokens += len(t)
    types = sorted(set(gold_sets) | set(pred_sets))
    per_type = {}
    tp_all = pred_all = true_all = 0
    for type_ in types:
        tp = len(gold_sets[type_] & pred_sets[type_])
        n_pred, n_true = len(pred_sets[type_]), len(gold_sets[type_])
        per_type[type_] = {**_prf(tp, n_pred, n_true), "support": n_true, "predicted": n_pred, "correct": tp}
        tp_all, pred_all, true_all = tp_all + tp, pred_all + n_pred, true_all + n_true
    micro = _prf(tp_all, pred_all, true_all)
    out: dict[str, Any] = {
        "precision": micro["precision"], "recall": micro["recall"], "f1": micro["f1"],
        "entities": true_all, "predicted_entities": pred_all, "correct_entities": tp_all,
        "token_accuracy": _ratio(correct_tokens, total_tokens), "tokens": total_tokens,
        "sentences": len(true), "per_type": per_type,
    }
    for key in ("precision", "recall", "f1"):
        values = [per_type[t][key] for t in types]
        out[f"macro_{key}"] = sum(values) / len(values) if values else 0.0
        out[f"weighted_{key}"] = _ratio(sum(per_type[t][key] * per_type[t]["support"] for t in types), true_all)
    return out


def type_confusion(true: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]],
                   types: Iterable[str]) -> dict[str, Any]:
    """Entity-type confusion: rows gold type (+ "spurious"), columns predicted type (+ "missed").

    A gold entity whose exact span was predicted counts under the predicted type; a gold entity with
    no predicted entity of the same span is "missed" (even if an overlapping one was found: that is a
    boundary error, and CoNLL matching counts it as a miss and a spurious entity); a predicted entity
    whose span no gold entity has is "spurious".
    """
    names = sorted(set(types))
    counts: Counter = Counter()
    for t, p in zip(true, predicted):
        gold = {(a, b): type_ for type_, a, b in spans(t)}
        pred = {(a, b): type_ for type_, a, b in spans(p)}
        for span, type_ in gold.items():
            counts[(type_, pred.get(span, "missed"))] += 1
        for span, type_ in pred.items():
            if span not in gold:
                counts[("spurious", type_)] += 1
    rows = [*names, "spurious"]
    columns = [*names, "missed"]
    return {"rows": rows, "columns": columns,
            "matrix": [[int(counts[(r, c)]) for c in columns] for r in rows]}


# -- tag schemes --------------------------------------------------------------------------------
SCHEMES = ("auto", "iob1", "iob2", "bioes")


def detect_scheme(sentences: Iterable[Sequence[str]]) -> str:
    """The scheme a file's tags are written in: BIOES if any E-/S- tag; IOB1 if no B- tag ever opens
    an entity (B- only splits two adjacent entities of one type) but I- tags do; else IOB2."""
    b_opens = i_opens = False
    for tags in sentences:
        prev = OUTSIDE
        for tag in tags:
            kind, type_ = split_tag(tag)
            if kind in ("E", "S"):
                return "bioes"
            opens = prev == OUTSIDE or split_tag(prev)[1] != type_
            b_opens |= kind == "B" and opens
            i_opens |= kind == "I" and opens
            prev = tag
    return "iob1" if i_opens and not b_opens else "iob2"


def to_iob2(tags: Sequence[str], scheme: str) -> tuple[list[str], int]:
    """Tags in ``scheme`` → IOB2 (B- opens every entity), and how many invalid tags were repaired.

    The standard repair: an I-X (or E-X) that does not continue an entity of type X opens one (B-X).
    In IOB1 that is how entities open, so it is no repair there. S-X → B-X, E-X → I-X.
    """
    out: list[str] = []
    repaired = 0
    prev_kind, prev_type = "O", ""
    for tag in tags:
        kind, type_ = split_tag(tag)
        if kind == "O":
            out.append(OUTSIDE)
        elif kind in ("B", "S"):
            out.append(f"B-{type_}")
        else:  # I or E
            continues = prev_kind in ("B", "I") and prev_type == type_
            if continues:
                out.append(f"I-{type_}")
            else:
                out.append(f"B-{type_}")
                repaired += scheme != "iob1"
        # After E or S an entity is closed: a following I-X must open a new one.
        prev_kind, prev_type = ("O", "") if kind in ("E", "S", "O") else (kind, type_)
    return out, repaired


def iob2_to_bioes(tags: Sequence[str]) -> list[str]:
    """IOB2 → BIOES (for writing files in the scheme a user asked for, and for the scheme tests)."""
    out = []
    for i, tag in enumerate(tags):
        kind, type_ = split_tag(tag)
        nxt = tags[i + 1] if i + 1 < len(tags) else OUTSIDE
        last = not (split_tag(nxt)[0] == "I" and split_tag(nxt)[1] == type_)
        if kind == "B":
            out.append(f"{'S' if last else 'B'}-{type_}")
        elif kind == "I":
            out.append(f"{'E' if last else 'I'}-{type_}")
        else:
            out.append(OUTSIDE)
    return out
