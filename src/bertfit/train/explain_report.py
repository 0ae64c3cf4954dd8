"""The report's explanations, computed once at the end of a run: why the worst mistakes were made, and
which words most often push each class (a sample of the validation set). Kept cheap: a handful of
mistakes and SAMPLE validation examples, at the explainer's default steps, in shared batches, within
the run's time budget (``explain_report_seconds``; 0: the section is skipped)."""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from typing import Any, Sequence

import numpy as np

from bertfit.errors import BertfitError
from bertfit.predict.explain import explain_plans

logger = logging.getLogger(__name__)

WORST = 5  # mistakes explained
SAMPLE = 32  # validation examples whose explanations are counted
TOP = 3  # words per explanation that count as "pushing" its target
GROUP = 8  # examples explained together; the budget is checked between groups (what is done by then is shown)
MAX_STEPS = 32


def report_explanations(model: Any, task: Any, tokenizer: Any, max_length: int, mistakes: Sequence[dict],
                        mistake_examples: Sequence[Any], validation: Sequence[Any], seed: int = 0,
                        budget_s: float = 10.0) -> dict | None:
    """{"mistakes": [{true, predicted, target, words: [[text, attribution], ...]}], "class_words": {target:
    [[word, times in the top TOP, examples explained], ...]}, "sample": n, "seconds": s}; {"skipped": why}
    when ``budget_s`` is 0; None where the task has no explanations."""
    if budget_s <= 0:
        logger.info("report: explanations skipped (explain_report_seconds 0)")
        return {"skipped": "explain_report_seconds is 0"}
    started = time.monotonic()
    deadline = started + budget_s
    model.eval()

    def explain(examples: Sequence[Any]) -> list[list]:
        """Each example's explanations, GROUP at a time while the budget lasts (fewer than asked for after it)."""
        out: list[list] = []
        for at in range(0, len(examples), GROUP):
            if time.monotonic() > deadline:
                break
            plans = [task.explain_plan(tokenizer, e, max_length) for e in examples[at:at + GROUP]]
            try:
                out.extend(explain_plans(model, plans, tokenizer.pad_id, max_steps=MAX_STEPS, deadline=deadline))
            except TimeoutError:
                break
        return out

    try:
        chosen = [m for m in list(mistakes)[:WORST] if m.get("index") is not None]
        explained_mistakes = []
        for m, found in zip(chosen, explain([mistake_examples[m["index"]] for m in chosen])):
            for a in found[:1]:
                explained_mistakes.append({"true": m.get("true"), "predicted": m.get("predicted"), "target": a.target,
                                           "words": [[w["text"], w["attribution"]] for w in a.words]})
        counts: dict[str, Counter] = defaultdict(Counter)
        seen: Counter = Counter()
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(validation))[:SAMPLE] if len(validation) else []
        sampled = explain([validation[int(i)] for i in order])
        for found in sampled:
            for a in found:
                key = str(a.info.get("type", a.target))
                seen[key] += 1
                pushing = sorted((w for w in a.words if w["attribution"] > 0), key=lambda w: -w["attribution"])[:TOP]
                counts[key].update(w["text"].lower() for w in pushing)
    except BertfitError:  # a task without explanations
        return None
    except Exception:  # noqa: BLE001 -- a report section must never cost the run that produced it
        logger.warning("could not explain predictions for the report", exc_info=True)
        return None
    seconds = time.monotonic() - started
    logger.info("report: explained %d mistakes and %d validation examples in %.1f s (budget %g s)",
                len(explained_mistakes), len(sampled), seconds, budget_s)
    class_words = {key: [[word, n, seen[key]] for word, n in counts[key].most_common(8)] for key in sorted(counts)}
    return {"mistakes": explained_mistakes, "class_words": class_words, "sample": len(sampled), "top": TOP,
            "seconds": round(seconds, 2), "budget_s": budget_s}
