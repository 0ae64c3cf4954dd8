"""Every use of the encoder, one module each: the TASKS registry (tasks/registry.py), the contract
(tasks/base.py), and the tasks' declared settings (tasks/settings.py, tasks/declared.py).

The registry imports every task module, and with them torch; the settings declarations are what
``bertfit train --help`` builds its flags from and must not. So this package loads the registry's
names on first use (PEP 562): ``from bertfit.tasks import TASKS`` works as ever, while importing
``bertfit.tasks.declared`` costs no torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TASKS", "BY_PROBLEM_TYPE", "MAX_INTEGER_CLASSES", "Task", "LabelProblem", "task_class",
           "detect_problem_type", "build_task"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from bertfit.tasks import registry

        value = getattr(registry, name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
