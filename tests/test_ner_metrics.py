"""Entity extraction and metrics against the seqeval package (the reference), every scheme."""

from __future__ import annotations

import random
import warnings

import pytest

from bertfit.tasks.ner.entities import (detect_scheme, entity_metrics, iob2_to_bioes, spans, to_iob2,
                                    type_confusion)

seqeval = pytest.importorskip("seqeval")
from seqeval.metrics import classification_report  # noqa: E402
from seqeval.metrics.sequence_labeling import get_entities  # noqa: E402

TYPES = ["PER", "LOC", "ORG"]


def random_tags(rng: random.Random, n: int, prefixes: str) -> list[str]:
    return ["O" if rng.random() < 0.4 else f"{rng.choice(prefixes)}-{rng.choice(TYPES)}" for _ in range(n)]


@pytest.mark.parametrize("prefixes", ["BI", "I", "BIES", "IE"])
def test_spans_match_seqeval(prefixes):
    rng = random.Random(len(prefixes))
    for _ in range(300):
        tags = random_tags(rng, rng.randint(0, 12), prefixes)
        expected = [(t, a, b) for t, a, b in get_entities(tags)]
        assert spans(tags) == expected, tags


@pytest.mark.parametrize("prefixes", ["BI", "I", "BIES"])
def test_metrics_match_seqeval(prefixes):
    rng = random.Random(7 + len(prefixes))
    for trial in range(40):
        n = rng.randint(1, 12)
        true = [random_tags(rng, k, prefixes) for k in (rng.randint(0, 10) for _ in range(n))]
        # Predictions: the gold tags with some changed, so there are hits, misses and spurious ones.
        pred = [[t if rng.random() < 0.7 else random_tags(rng, 1, prefixes)[0] for t in s] for s in true]
        ours = entity_metrics(true, pred)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = classification_report(true, pred, output_dict=True, zero_division=0)
        for key, name in (("micro avg", ""), ("macro avg", "macro_"), ("weighted avg", "weighted_")):
            if key not in ref:
                continue
            for metric in ("precision", "recall", "f1"):
                assert ours[f"{name}{metric}"] == pytest.approx(ref[key][f"{metric}-score" if metric == "f1" else metric],
                                                                abs=1e-12), (trial, key, metric)
        for type_, row in ours["per_type"].items():
            assert row["f1"] == pytest.approx(ref[type_]["f1-score"], abs=1e-12)
            assert row["support"] == ref[type_]["support"]


@pytest.mark.parametrize("scheme,prefixes", [("iob2", "BI"), ("iob1", "I"), ("iob1", "BI"), ("bioes", "BIES")])
def test_normalising_keeps_the_entities_seqeval_reads(scheme, prefixes):
    rng = random.Random(3)
    for _ in range(300):
        tags = random_tags(rng, rng.randint(0, 12), prefixes)
        iob2, repaired = to_iob2(tags, scheme)
        assert spans(iob2) == [(t, a, b) for t, a, b in get_entities(tags)]
        # Valid IOB2 afterwards: every I-X continues an X.
        assert to_iob2(iob2, "iob2") == (iob2, 0)
        if scheme == "iob1":
            assert repaired == 0
        # BIOES round trip.
        assert to_iob2(iob2_to_bioes(iob2), "bioes") == (iob2, 0)


def test_repairs_are_counted():
    assert to_iob2(["O", "I-PER", "I-PER", "B-LOC", "I-ORG"], "iob2") == (["O", "B-PER", "I-PER", "B-LOC", "B-ORG"], 2)
    assert to_iob2(["E-PER", "S-LOC", "I-LOC"], "bioes") == (["B-PER", "B-LOC", "B-LOC"], 2)
    assert to_iob2(["I-PER", "B-PER", "O", "I-LOC"], "iob1") == (["B-PER", "B-PER", "O", "B-LOC"], 0)


def test_detect_scheme():
    assert detect_scheme([["O", "B-PER", "I-PER"]]) == "iob2"
    assert detect_scheme([["I-PER", "I-PER", "B-PER", "O", "I-LOC"]]) == "iob1"
    assert detect_scheme([["S-PER", "O"]]) == "bioes"
    assert detect_scheme([["O", "O"]]) == "iob2"


def test_type_confusion_counts_missed_and_spurious():
    true = [["B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG", "B-LOC", "O"]]
    c = type_confusion(true, pred, ["PER", "LOC", "ORG"])
    m = {(r, col): c["matrix"][i][j] for i, r in enumerate(c["rows"]) for j, col in enumerate(c["columns"])}
    assert m[("PER", "PER")] == 1 and m[("LOC", "ORG")] == 1 and m[("ORG", "missed")] == 1
    assert m[("spurious", "LOC")] == 1
    assert sum(map(sum, c["matrix"])) == 4
