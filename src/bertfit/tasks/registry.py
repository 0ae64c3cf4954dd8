"""The task registry: every use of the encoder is one module in tasks/, named by its key.

The trainer, predictor, exporter, report and server are the same for every task; they call the
task's methods (tasks/base.py). A new task is a new module plus its head (heads.py) and one row in
the task table (tasks/table.py), from which TASKS is built here; tests/test_tasks.py runs every
registered task through read → train → save → load → export. ``bertfit.tasks`` re-exports these
names (tasks/__init__.py), loading them on first use.
"""

from __future__ import annotations

import importlib
import logging
import math
from typing import Any, Sequence

from bertfit.errors import ConfigError
from bertfit.tasks.base import LabelProblem, Task
from bertfit.tasks.table import TABLE

logger = logging.getLogger(__name__)


def _load(row) -> type[Task]:
    cls = getattr(importlib.import_module(row.module), row.cls)
    if (cls.name, cls.problem_type, cls.command) != (row.name, row.problem_type, row.command):
        raise TypeError(f"{row.module}.{row.cls} does not match its row in tasks/table.py: "
                        f"{(cls.name, cls.problem_type, cls.command)} vs {(row.name, row.problem_type, row.command)}")
    return cls


TASKS: dict[str, type[Task]] = {row.name: _load(row) for row in TABLE}
BY_PROBLEM_TYPE: dict[str, type[Task]] = {task.problem_type: task for task in TASKS.values()}
# Integer labels with at most this many distinct values are classes (ratings 1-5, ids), not amounts.
MAX_INTEGER_CLASSES = 20

__all__ = ["TASKS", "Task", "LabelProblem", "task_class", "detect_problem_type", "check_label_cells"]


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
        from bertfit.tasks.regression import PLAIN_NUMBER

        # only plain ASCII numbers: '1_000', 'nan', 'inf' or other scripts' digits are names here
        return float(value) if PLAIN_NUMBER.fullmatch(value.strip()) else None
    return None


def _shape(cell: object, separator: str) -> str:
    if isinstance(cell, (list, tuple)):
        return "a JSON list"
    if isinstance(cell, str) and separator in cell and _number(cell) is None:
        return f"a list joined by {separator!r}"
    if _number(cell) is not None:
        return "a number"
    return "a name"


def check_label_cells(raw_labels: Sequence[object], rows: Sequence[int], separator: str = ",",
                      column: str | None = None) -> None:
    """Refuse (DataError) label cells whose problem type a few odd cells decide: when at most 5% of the
    cells (one is enough) change what :func:`detect_problem_type` would find from the others, or when
    cells are numbers joined by the separator (a decimal comma, or several targets?). The error names
    the rows, the column and the flag that says what the user means."""
    from bertfit.errors import DataError

    where = f" of column {column!r}" if column else ""
    kept = [(c, r) for c, r in zip(raw_labels, rows) if c is not None]
    # Whole numbers joined ('2,27') are label ids (GoEmotions); with a fraction ('3.5,1') they are targets
    # or a typo, never the names of classes.
    joined_numbers = [(c, r) for c, r in kept if isinstance(c, str) and separator in c
                      and all(_number(part) is not None for part in c.split(separator))
                      and not all(float(_number(part) or 0).is_integer() for part in c.split(separator))]
    if joined_numbers:
        shown = "; ".join(f"row {r}: {c!r:.40}" for c, r in joined_numbers[:3])
        raise DataError(f"{len(joined_numbers)} label cell(s){where} are numbers joined by {separator!r} ({shown}): "
                        "several targets per row? pass --problem-type regression; names? --problem-type multi-label")
    if len(kept) < 2:
        return
    shapes: dict[str, list[tuple[object, int]]] = {}
    for cell, row in kept:
        shapes.setdefault(_shape(cell, separator), []).append((cell, row))
    found = detect_problem_type([c for c, _ in kept], separator)[0]
    for shape, cells in shapes.items():
        if len(cells) > max(1, 0.05 * len(kept)) or len(cells) == len(kept):
            continue
        others = [c for c, _ in kept if _shape(c, separator) != shape]
        instead = detect_problem_type(others, separator)[0]
        if instead != found:
            shown = "; ".join(f"row {r}: {c!r:.40}" for c, r in cells[:5])
            raise DataError(
                f"{len(cells)} of {len(kept)} label cells{where} are {shape} ({shown}{'; ...' if len(cells) > 5 else ''}) "
                f"and make the labels read as {found}, where the others read as {instead}; say which: pass "
                f"--problem-type {instead} (the odd rows are then refused by row, or skipped with --skip-bad-rows), "
                f"or --problem-type {found}")


def detect_problem_type(raw_labels: Sequence[object], separator: str = ",") -> tuple[str, str]:
    """(task name, why) from the label cells as read, for a run without --problem-type.

    A list of names (JSON list, or a separator-joined string) → multi-label; lists of numbers or
    non-integer numbers → regression; anything else (names, integer ids with few values) → single-label.
    """
    cells = [c for c in raw_labels if c is not None]
    if not cells:
        return "single-label", "no labels to look at"
    lists = [c for c in cells if isinstance(c, (list, tuple))]
    if lists:
        items = [item for c in lists for item in c]
        if items and all(_number(i) is not None and not isinstance(i, str) for i in items) and \
                any(len(c) != 1 or not float(c[0]).is_integer() for c in lists):
            return "regression", f"{len(lists)} labels are JSON lists of numbers"
        return "multi-label", f"{len(lists)} labels are JSON lists"
    joined = [c for c in cells if isinstance(c, str) and separator in c]
    if joined and all(_number(c) is None for c in joined):
        example = joined[0] if len(joined[0]) <= 40 else joined[0][:40] + "..."
        return "multi-label", (f"{len(joined)} labels hold the separator {separator!r} (e.g. {example!r}); "
                                 "pass --problem-type single-label if it is part of a label name")
    numbers = [_number(c) for c in cells]
    if all(n is not None and math.isfinite(n) for n in numbers):
        distinct = set(numbers)
        if any(not n.is_integer() for n in distinct):  # type: ignore[union-attr]
            return "regression", f"labels are numbers with {len(distinct)} distinct values, some not whole"
        if len(distinct) > MAX_INTEGER_CLASSES:
            return "regression", f"labels are whole numbers with {len(distinct)} distinct values (> {MAX_INTEGER_CLASSES})"
        return "single-label", (f"labels are whole numbers with {len(distinct)} distinct values: treated as classes "
                                  "(pass --problem-type regression to predict a number)")
    return "single-label", "labels are names, one per row"


def build_task(name: str, labels: Sequence[str], state: dict[str, Any] | None = None) -> Task:
    return task_class(name)(labels, **(state or {}))
