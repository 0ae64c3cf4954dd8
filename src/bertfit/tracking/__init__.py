"""Reporting a run to the trackers a team already watches: TensorBoard, MLflow, Weights & Biases.

``--report-to`` names them (several at once, or none, the default). Each tracker is one module
behind the small interface in base.py, and its library is imported only when it is asked for (the
``bertfit[tracking]`` extra installs all three). The training loop feeds the trackers through the
one callback it already has for its log records (hub.py); nothing here imports torch, so the CLI's
--help can list the choices.
"""

from __future__ import annotations

from typing import Any

from bertfit.errors import ConfigError

# The trackers --report-to accepts, with the module that reports to each and the package it needs.
TRACKERS: dict[str, tuple[str, str]] = {
    "tensorboard": ("bertfit.tracking.tensorboard_tracker", "tensorboard"),
    "mlflow": ("bertfit.tracking.mlflow_tracker", "mlflow-skinny"),
    "wandb": ("bertfit.tracking.wandb_tracker", "wandb"),
}
CHOICES: tuple[str, ...] = ("none", *TRACKERS)


def parse_report_to(value: Any) -> tuple[str, ...]:
    """``"tensorboard,mlflow"``, a list of names, ``"none"`` or None -> the trackers, in order, once each."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ConfigError(f"report_to must be a list of trackers ({', '.join(CHOICES)}), got {value!r}")
    names: list[str] = []
    for item in items:
        name = str(item).strip().lower() if isinstance(item, str) else item
        if not isinstance(name, str) or name not in CHOICES:
            raise ConfigError(f"report_to: unknown tracker {item!r}; choose from {', '.join(CHOICES)}")
        if name != "none" and name not in names:
            names.append(name)
    if "none" in [str(i).strip().lower() for i in items] and names:
        raise ConfigError(f"report_to: 'none' cannot be combined with {', '.join(names)}")
    return tuple(names)
