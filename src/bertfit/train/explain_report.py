"""The report's explanations, computed once at the end of a run: why the worst mistakes were made, and
which words most often push each class (a sample of the validation set). Kept cheap: a handful of
mistakes and SAMPLE validation examples, at the explainer's default steps, within a time budget."""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from typing import Any, Sequence

import numpy as np

from bertfit.errors import BertfitError
from bertfit.predict.explain import explain_plan

logger = logging.getLogger(__name__)

WORST = 5  # mistakes explained
SAMPLE = 32  # validation examples whose explanations are counted
TOP = 3  # words per explanation that count as "pushing" its target
BUDGET_S = 30.0  # the whole section's time; what is done by then is shown
MAX_STEPS = 32


def report_explanations(model: Any, task: Any, tokenizer: Any, max_length: int, mistakes: Sequence[dict],
                        mistake_examples: Sequence[Any], validation: Sequence[Any], seed: int = 0) -> dict | None:
    """{"mistakes": [{true, predicted, target, words: [[text, attribution], ...]}], "class_words": {target:
    [[word, times in the top TOP, examples explained], ...]}, "sample": n}; None where the task has no
    explanations."""
    deadline = time.monotonic() + BUDGET_S
    model.eval()

    def explain(example: Any) -> list:
        plan = task.explain_plan(tokenizer, example, max_length)
        return explain_plan(model, plan, tokenizer.pad_id, max_steps=MAX_STEPS, deadline=deadline)

    try:
        explained_mistakes = []
        for m in list(mistakes)[:WORST]:
            if time.monotonic() > deadline or m.get("index") is None:
                break
            for a in explain(mistake_examples[m["index"]])[:1]:
                explained_mistakes.append({"true": m.get("true"), "predicted": m.get("predicted"), "target": a.target,
                                           "words": [[w["text"], w["attribution"]] for w in a.words]})
        counts: dict[str, Counter] = defaultdict(Counter)
        seen: Counter = Counter()
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(validation))[:SAMPLE] if len(validation) else []
        done = 0
        for i in order:
            if time.monotonic() > deadline:
                break
            for a in explain(validation[int(i)]):
                key = str(a.info.get("type", a.target))
                seen[key] += 1
                pushing = sorted((w for w in a.words if w["attribution"] > 0), key=lambda w: -w["attribution"])[:TOP]
                counts[key].update(w["text"].lower() for w in pushing)
            done += 1
    except BertfitError:  # a task without explanations
        return None
    except Exception:  # noqa: BLE001 -- a report section must never cost the run that produced it
        logger.warning("could not explain predictions for the report", exc_info=True)
        return None
    class_words = {key: [[word, n, seen[key]] for word, n in counts[key].most_common(8)] for key in sorted(counts)}
    return {"mistakes": explained_mistakes, "class_words": class_words, "sample": done, "top": TOP}
