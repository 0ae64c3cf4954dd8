"""The task registry: every use of the encoder is one module in tasks/, named by its key.

The trainer, predictor, exporter, report and server are the same for every task; they call the
task's methods (tasks/base.py). A new task is a new module plus its head (heads.py) and one line in
TASKS (and, when it has settings of its own, their declarations: tasks/settings.py, listed in
tasks/declared.py); tests/test_tasks.py runs every registered task through read → train → save →
load → export. ``bertfit.tasks`` re-exports these names (tasks/__init__.py), loading them on first use.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

from bertfit.errors import ConfigError
from bertfit.tasks.base import LabelProblem, Task
from bertfit.tasks.classify import SingleLabel
from bertfit.tasks.multilabel import MultiLabel
from bertfit.tasks.ner.task import NER
from bertfit.tasks.qa.task import QuestionAnswering
from bertfit.tasks.pretrain.task import Pretrain
from bertfit.tasks.regression import Regression

logger = logging.getLogger(__name__)

TASKS: dict[str, type[Task]] = {
    SingleLabel.name: SingleLabel,
    MultiLabel.name: MultiLabel,
    Regression.name: Regression,
    NER.name: NER,
    QuestionAnswering.name: QuestionAnswering,
    Pretrain.name: Pretrain,
}
BY_PROBLEM_TYPE: dict[str, type[Task]] = {task.problem_type: task for task in TASKS.values()}
# Integer labels with at most this many distinct values are classes (ratings 1-5, ids), not amounts.
MAX_INTEGER_CLASSES = 20

__all__ = ["TASKS", "Task", "LabelProblem", "task_class", "detect_problem_type"]


def task_class(name: str) -> type[Task]:
    """The task registered as ``name`` (or under transformers' problem_type name)."""
    if name in TASKS:
        return TASKS[name]
    if name in BY_PROBLEM_TYPE:
        return BY_PROBLEM_TYPE[name]
    raise ConfigError(f"unknown problem type {name!r}; choose one of {', '.join(TASKS)}")


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def detect_problem_type(raw_labels: Sequence[object], separator: str = ",") -> tuple[str, str]:
    """(task name, why) from the label cells as read, for a run without --problem-type.

    A list of names (JSON list, or a separator-joined string) → multi-label; lists of numbers or
    non-integer numbers → regression; anything else (names, integer ids with few values) → single-label.
    """
    cells = [c for c in raw_labels if c is not None]
    if not cells:
        return SingleLabel.name, "no labels to look at"
    lists = [c for c in cells if isinstance(c, (list, tuple))]
    if lists:
        items = [item for c in lists for item in c]
        if items and all(_number(i) is not None and not isinstance(i, str) for i in items) and \
                any(len(c) != 1 or not float(c[0]).is_integer() for c in lists):
            return Regression.name, f"{len(lists)} labels are JSON lists of numbers"
        return MultiLabel.name, f"{len(lists)} labels are JSON lists"
    joined = [c for c in cells if isinstance(c, str) and separator in c]
    if joined and all(_number(c) is None for c in joined):
        example = joined[0] if len(joined[0]) <= 40 else joined[0][:40] + "..."
        return MultiLabel.name, (f"{len(joined)} labels hold the separator {separator!r} (e.g. {example!r}); "
                                 "pass --problem-type single-label if it is part of a label name")
    numbers = [_number(c) for c in cells]
    if all(n is not None and math.isfinite(n) for n in numbers):
        distinct = set(numbers)
        if any(not n.is_integer() for n in distinct):  # type: ignore[union-attr]
            return Regression.name, f"labels are numbers with {len(distinct)} distinct values, some not whole"
        if len(distinct) > MAX_INTEGER_CLASSES:
            return Regression.name, f"labels are whole numbers with {len(distinct)} distinct values (> {MAX_INTEGER_CLASSES})"
        return SingleLabel.name, (f"labels are whole numbers with {len(distinct)} distinct values: treated as classes "
                                  "(pass --problem-type regression to predict a number)")
    return SingleLabel.name, "labels are names, one per row"


def build_task(name: str, labels: Sequence[str], state: dict[str, Any] | None = None) -> Task:
    return task_class(name)(labels, **(state or {}))
