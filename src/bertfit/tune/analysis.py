"""What the finished trials say about the space: each searched setting's importance (fANOVA, seeded)
and a parallel-coordinates plot of the settings against the objective (plots/parallel_coordinates.png).

fANOVA (a random forest over the finished trials, its variance split per setting) is seeded with the
search's seed, so the same study gives the same importances. Without scikit-learn (it needs it),
Optuna's default PED-ANOVA, deterministic by construction, is used instead; the report names which.
Both need at least two finished trials whose settings differ; otherwise there is nothing to say.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def param_importances(study: Any, seed: int) -> dict[str, Any] | None:
    """``{"evaluator": name, "importances": {setting: share}}`` (shares sum to 1, largest first), or
    None when fewer than two finished trials differ in a setting."""
    import importlib.util

    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2 or not any(len({repr(t.params.get(name)) for t in complete}) > 1
                                    for name in complete[0].params):
        return None
    if importlib.util.find_spec("sklearn") is not None:
        evaluator, name = optuna.importance.FanovaImportanceEvaluator(seed=seed), "fANOVA"
    else:
        evaluator, name = optuna.importance.PedAnovaImportanceEvaluator(), "PED-ANOVA"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental-feature and few-trial warnings: the report says enough
            shares = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (RuntimeError, ValueError) as exc:  # e.g. a setting with one value in every finished trial
        logger.info("no parameter importances: %s", exc)
        return None
    return {"evaluator": name, "importances": {k: float(v) for k, v in shares.items()}}


def plot_parallel_coordinates(study: Any, tune_dir: Path, metric: str = "objective") -> str | None:
    """plots/parallel_coordinates.png (Optuna's matplotlib plot: one line per finished trial through its
    settings, coloured by the objective); None without matplotlib or without two finished trials."""
    import optuna

    if len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))) < 2:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from optuna.visualization.matplotlib import plot_parallel_coordinate
    except ImportError:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        axes = plot_parallel_coordinate(study, target_name=f"validation {metric}")
    figure = axes.figure
    figure.set_size_inches(8, 4)
    figure.tight_layout()
    (tune_dir / "plots").mkdir(exist_ok=True)
    figure.savefig(tune_dir / "plots" / "parallel_coordinates.png", dpi=100)
    plt.close(figure)
    return "plots/parallel_coordinates.png"
