"""Every registered task's own settings (tasks/settings.py) and which of them `bertfit train` trains,
importable without torch.

The CLI adds their flags and TrainConfig validates and saves the training ones from here, so neither
names a task or its settings. The keys are the task table's rows (tasks/table.py); tests/test_task_settings.py
checks that each matches its class's ``settings`` and command.
"""

from __future__ import annotations

import importlib

from bertfit.tasks.settings import Setting, by_name
from bertfit.tasks.table import TABLE, TRAIN_TASKS


def _settings(ref: str) -> tuple[Setting, ...]:
    if not ref:
        return ()
    module, _, name = ref.partition(":")
    return tuple(getattr(importlib.import_module(module), name))


# Each task's own settings, from its row's declaration module (torch-free).
DECLARED: dict[str, tuple[Setting, ...]] = {row.name: _settings(row.settings) for row in TABLE}
__all__ = ["DECLARED", "TRAIN_TASKS", "TRAIN_SETTINGS", "other_tasks_settings"]
# The settings a training run takes (TrainConfig keys), by name: one declaration each.
TRAIN_SETTINGS: dict[str, Setting] = {name: setting for name, (setting, _) in by_name(DECLARED, "train").items()}


def other_tasks_settings(task: str) -> frozenset[str]:
    """The training settings only other tasks read: a run of ``task`` saves them (train_config.json has
    every setting, so a config file is complete) but its report does not show them."""
    return frozenset(name for name, (_, tasks) in by_name(DECLARED, "train").items() if task not in tasks)
