"""Deduplication and the seeded, stratified train/validation/test split."""

from __future__ import annotations

import logging
import math
import random
from collections import defaultdict
from collections.abc import Callable, Mapping

from bertfit.errors import DataError
from bertfit.data.examples import DedupeReport, Example

# One logger for all the readers (bertfit.data.labelled): users filter and tests capture it by that name.
logger = logging.getLogger("bertfit.data.labelled")

# --------------------------------------------------------------------------------------------
# Deduplication and splits
# --------------------------------------------------------------------------------------------


def deduplicate(examples: list[Example]) -> tuple[list[Example], DedupeReport]:
    """Keep the first of identical ``(text, text_pair)`` examples, in order.

    When copies of a text disagree on the label the right label is unknowable, so every copy is
    dropped (keeping one would put a coin-flip label in training, or leak it into the test set).
    Unlabelled copies (``label=None``) never conflict with anything.
    """
    labels_by_key: dict[tuple[str, str | None], set[str]] = defaultdict(set)
    for e in examples:
        if e.label is not None:
            labels_by_key[(e.text, e.text_pair)].add(e.label)
    conflicting = {k for k, labels in labels_by_key.items() if len(labels) > 1}

    kept: list[Example] = []
    seen: set[tuple[str, str | None]] = set()
    duplicates = conflicting_rows = 0
    for e in examples:
        key = (e.text, e.text_pair)
        if key in conflicting:
            conflicting_rows += 1
        elif key in seen:
            duplicates += 1
        else:
            seen.add(key)
            kept.append(e)
    report = DedupeReport(
        rows_in=len(examples), rows_out=len(kept), duplicates_removed=duplicates,
        conflicting_texts=len(conflicting), conflicting_rows_removed=conflicting_rows,
    )
    if duplicates or conflicting:
        logger.info("deduplicate: %s", report.summary())
    return kept, report


def grouped_split(examples: list, fractions: tuple[float, float, float], seed: int,
                  groups: list) -> tuple[list, list, list]:
    """Split so that the examples of one group (``groups[i]`` is example i's) share a split: groups are
    shuffled (seeded) and dealt out by the running count of examples, so each split holds about its
    fraction of the examples; a split with a positive fraction gets at least one group when there are
    enough. Each split keeps the input order of its examples."""
    fractions = tuple(float(f) for f in fractions)  # type: ignore[assignment]
    stratified_split([], fractions)  # the same checks of the fractions
    members: dict = {}
    for i, group in enumerate(groups):
        members.setdefault(group, []).append(i)
    order = list(members)
    random.Random(seed).shuffle(order)
    total, seen = len(examples), 0
    bounds = (fractions[0], fractions[0] + fractions[1])
    chosen: list[list] = [[], [], []]
    for group in order:
        middle = (seen + len(members[group]) / 2) / max(total, 1)
        chosen[0 if middle < bounds[0] else 1 if middle < bounds[1] else 2].append(group)
        seen += len(members[group])
    for k in (1, 2):  # a tiny file: take a group from the largest part rather than leave a split empty
        if fractions[k] > 0 and not chosen[k] and len(order) >= 3:
            donor = max((0, 1, 2), key=lambda j: len(chosen[j]))
            chosen[k].append(chosen[donor].pop())
    parts = []
    for part in chosen:
        indices = sorted(i for group in part for i in members[group])
        parts.append([examples[i] for i in indices])
    return parts[0], parts[1], parts[2]


def stratified_split(
    examples: list[Example],
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    stratum: Callable[[Example], str | None] | None = None,
) -> tuple[list[Example], list[Example], list[Example]]:
    """Split into train/validation/test with each label's proportions kept (to within one example).

    Deterministic for a given input order and ``seed``. A label with at least 3 examples appears in
    every split whose fraction is above zero, even where rounding would give it none (so a very small
    label can be more than one example off its proportion); a zero fraction gives an empty list.
    Each split is returned in a seeded random order, so no split is sorted by label.
    stratum: the group an example is stratified by (default its label; a task gives one for labels
    that are not single strings, e.g. a multi-label row's rarest label or a regression target's bin).
    """
    fractions = tuple(float(f) for f in fractions)  # type: ignore[assignment]
    if len(fractions) != 3:
        raise DataError(f"split fractions must be three numbers (train, validation, test), got {fractions}")
    if any(not math.isfinite(f) or f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise DataError(
            f"split fractions {fractions} must be non-negative and sum to 1 (they sum to {sum(fractions):.6g}), "
            "e.g. (0.8, 0.1, 0.1)"
        )
    if fractions[0] <= 0:
        raise DataError(f"split fractions {fractions}: the training fraction must be above zero")

    rng = random.Random(seed)
    by_label: dict[str | None, list[Example]] = defaultdict(list)
    for e in examples:
        by_label[stratum(e) if stratum is not None else e.label].append(e)

    splits: tuple[list[Example], list[Example], list[Example]] = ([], [], [])
    # Fixed label order: the result must not depend on which label happens to come first.
    order = sorted(by_label, key=lambda label: (label is None, label or ""))
    for label in order:
        group = list(by_label[label])
        rng.shuffle(group)
        n_train, n_val, n_test = _split_sizes(len(group), fractions)
        splits[0].extend(group[:n_train])
        splits[1].extend(group[n_train:n_train + n_val])
        splits[2].extend(group[n_train + n_val:n_train + n_val + n_test])
    for split in splits:
        rng.shuffle(split)
    return splits


def empty_split_warnings(rows: Mapping[str, int], files: Mapping[str, str | None] | None = None) -> list[str]:
    """Loud warnings for empty validation/test splits (``rows``: split name -> examples), else [].

    ``files``: the --validation-file / --test-file given ("validation"/"test" -> path or None). When
    either is given the training file is not split, so an empty split is a missing file, not too few rows.
    """
    empty = [name for name in ("validation", "test") if not rows.get(name)]
    if not empty:
        return []
    what = " and ".join(empty)
    consequence = ("this run has no held-out evaluation at all: metrics.json holds no metrics, and the saved model "
                   "is the last step's, chosen by nothing") if len(empty) == 2 else \
        f"there are no {empty[0]} metrics"
    split = f"the {what} split{'s are' if len(empty) == 2 else ' is'} empty"
    given = {name: path for name, path in (files or {}).items() if path}
    if given:
        missing = [name for name in empty if name not in given]
        if missing and len(missing) == len(empty):
            flags = " and ".join(f"--{name}-file" for name in missing)
            named = " and ".join(f"--{name}-file {path}" for name, path in given.items())
            return [f"WARNING: {split} ({named} was given without {flags}, so the training file is not split); "
                    f"{consequence}. Pass {flags} for {what} metrics."]
        return [f"WARNING: {split} (the file given for it has no usable rows); {consequence}."]
    return [f"WARNING: {split} (too few rows after deduplication and splitting: {rows.get('train', 0)} training "
            f"examples); {consequence}. Give more rows, larger --split fractions, or --validation-file/--test-file."]


def _split_sizes(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Per-label sizes: rounded (so each is within one of n * fraction), at least one per non-empty split."""
    n_val = int(math.floor(n * fractions[1] + 0.5))
    n_test = int(math.floor(n * fractions[2] + 0.5))
    if n >= 3:
        # Small labels would round to zero and vanish from validation/test; keep one of each.
        n_val = max(n_val, 1) if fractions[1] > 0 else 0
        n_test = max(n_test, 1) if fractions[2] > 0 else 0
    while n > 0 and n - n_val - n_test < 1:
        # Training must keep at least one example of every label.
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return n - n_val - n_test, n_val, n_test
