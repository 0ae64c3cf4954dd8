"""Every registered task's own settings (tasks/settings.py) and which of them `bertfit train` trains,
importable without torch.

The CLI adds their flags and TrainConfig validates and saves the training ones from here, so neither
names a task or its settings. The keys are TASKS' (tasks/registry.py); tests/test_task_settings.py
checks that this lists exactly the registered tasks, each with its class's ``settings`` and command.
"""

from __future__ import annotations

from bertfit.tasks.multilabel_settings import MULTILABEL_SETTINGS
from bertfit.tasks.ner.data import NER_SETTINGS
from bertfit.tasks.qa.data import QA_SETTINGS
from bertfit.tasks.settings import Setting, by_name

DECLARED: dict[str, tuple[Setting, ...]] = {
    "single-label": (),
    "multi-label": MULTILABEL_SETTINGS,
    "regression": (),
    "ner": NER_SETTINGS,
    "qa": QA_SETTINGS,
    "pretrain": (),
}
# The tasks `bertfit train` trains (--task's choices); the others have a command of their own (Task.command).
TRAIN_TASKS: tuple[str, ...] = ("single-label", "multi-label", "regression", "ner", "qa")
# The settings a training run takes (TrainConfig keys), by name: one declaration each.
TRAIN_SETTINGS: dict[str, Setting] = {name: setting for name, (setting, _) in by_name(DECLARED, "train").items()}


def other_tasks_settings(task: str) -> frozenset[str]:
    """The training settings only other tasks read: a run of ``task`` saves them (train_config.json has
    every setting, so a config file is complete) but its report does not show them."""
    return frozenset(name for name, (_, tasks) in by_name(DECLARED, "train").items() if task not in tasks)
