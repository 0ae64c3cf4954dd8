"""The multi-label task's own settings (tasks/settings.py: flag, validation, saved with the run).

A module of their own because multilabel.py imports torch, and `bertfit train --help` reads them without it.
"""

from __future__ import annotations

from bertfit.tasks.settings import Setting

MULTILABEL_SETTINGS: tuple[Setting, ...] = (
    Setting("threshold", float, None, "one fixed decision threshold for every label (default: tuned per label on "
            "validation)", low=0.0, high=1.0, open_low=True, open_high=True, optional=True),
)
