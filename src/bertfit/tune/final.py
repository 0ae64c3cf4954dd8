"""--final-seeds N: the best trial's settings trained again with N fresh seeds, each a normal run
directory (``final-seed-S``) evaluated on validation and, once per seed, on test.

Why fresh seeds and not the best trial among them: the best trial won a maximum over trials, so its
validation figure is biased upwards; N runs with seeds the search never used give an unbiased mean
and a spread that says how much of the search's gain is noise. ``best`` keeps pointing at the best
trial (the model the search selected); the final runs are reported beside it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from statistics import mean, stdev
from typing import Any, Callable

from bertfit.tune.space import trial_settings

logger = logging.getLogger(__name__)


def final_dir_name(seed: int) -> str:
    return f"final-seed-{seed}"


def final_seeds(search_seed: int, count: int) -> list[int]:
    """The seeds the final runs use: after the search's own (every trial trained with ``search_seed``)."""
    return [search_seed + 1 + i for i in range(count)]


def run_final_seeds(settings: Any, params: dict[str, Any], say: Callable[[str], None]) -> dict[str, Any] | None:
    """Train the best settings once per final seed (a finished one, e.g. before a kill, is kept) and
    summarise: ``{"seeds", "runs": [{"dir", "seed", "validation", "test"}], "validation"/"test":
    {metric: {"mean", "std"}}}``; None when ``settings.final_seeds`` is 0."""
    from bertfit.train.finetune import fine_tune

    if not settings.final_seeds:
        return None
    runs = []
    for seed in final_seeds(settings.seed, settings.final_seeds):
        run_dir = settings.tune_dir / final_dir_name(seed)
        metrics = _finished(run_dir)
        if metrics is None:
            config = settings.base.with_settings({**settings.fixed, **trial_settings(params), "output_dir": str(run_dir),
                                                  "seed": seed}, source="the best trial's settings")
            metrics = fine_tune(config, overwrite=run_dir.exists(), evaluate_test=True).metrics
            say(f"{run_dir.name}: retrained the best settings with seed {seed}")
        runs.append({"dir": run_dir.name, "seed": seed, "validation": _scalars(metrics.get("validation")),
                     "test": _scalars(metrics.get("test"))})
    return {"seeds": [r["seed"] for r in runs], "runs": runs,
            "validation": spread([r["validation"] for r in runs]), "test": spread([r["test"] for r in runs])}


def _finished(run_dir: Path) -> dict[str, Any] | None:
    """A final run that completed before (its metrics.json is written last): not trained again."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None


def _scalars(metrics: dict[str, Any] | None) -> dict[str, float]:
    return {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and k != "n"}


def spread(per_seed: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation (0 for one seed) of each metric every seed has."""
    if not per_seed or not all(per_seed):
        return {}
    names = [k for k in per_seed[0] if all(k in m for m in per_seed)]
    return {k: {"mean": mean(m[k] for m in per_seed),
                "std": stdev([m[k] for m in per_seed]) if len(per_seed) > 1 else 0.0} for k in names}
