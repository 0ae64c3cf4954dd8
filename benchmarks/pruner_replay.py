"""Which pruner `bertfit tune` should default to, measured on real learning curves (issue 28).

A search run without pruning (``--pruner none``) keeps every trial's whole validation curve: the
best-so-far metric reported at each evaluation, keyed by examples seen, and the trial's wall time.
This script replays those trials through Optuna's MedianPruner (bertfit's settings: 3 whole trials
first) and SuccessiveHalvingPruner (Optuna's defaults), in the recorded order and in shuffled orders,
and counts for each pruner:

- the search time it would have spent (a pruned trial costs the share of its time up to the
  evaluation that stopped it; time is taken as proportional to examples seen);
- how often it would have stopped the trial that turned out best (the search's answer lost);
- the best value it would have kept, and its shortfall from the unpruned best.

Replaying fixed curves ignores that the sampler would have drawn other settings after a prune; it
measures what each rule stops and what that costs, which is the choice between them.

    PYTHONPATH=src python benchmarks/pruner_replay.py --study /work/tune-bench/stsb-bertfit/tune/study.db \
        --out benchmarks/pruner_replay_stsb.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import optuna

STARTUP = 3  # bertfit's prune_startup_trials


def load_curves(db: Path, direction: str) -> list[dict]:
    storage = f"sqlite:///{db.resolve()}"
    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    curves = []
    for t in study.get_trials(deepcopy=False):
        if t.state != optuna.trial.TrialState.COMPLETE or not t.intermediate_values:
            continue
        steps = sorted(t.intermediate_values)
        curves.append({"number": t.number, "value": t.value, "seconds": t.user_attrs.get("seconds"),
                       "steps": steps, "values": [t.intermediate_values[s] for s in steps], "params": t.params})
    return curves


def make(name: str):
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=STARTUP, n_warmup_steps=0, n_min_trials=1)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def replay(curves: list[dict], pruner: str, direction: str) -> dict:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=direction, pruner=make(pruner),
                                sampler=optuna.samplers.RandomSampler(seed=0))
    spent, kept, stopped = 0.0, [], []
    for c in curves:
        trial = study.ask()
        pruned_at = None
        for step, value in zip(c["steps"], c["values"]):
            trial.report(value, step)
            if trial.should_prune():
                pruned_at = step
                break
        if pruned_at is None:
            study.tell(trial, c["value"])
            spent += c["seconds"]
            kept.append(c["value"])
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            spent += c["seconds"] * pruned_at / c["steps"][-1]
            stopped.append(c["number"])
    best = max if direction == "maximize" else min
    return {"seconds": spent, "pruned": stopped, "best_kept": best(kept) if kept else None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--study", required=True, help="study.db of a search run with --pruner none")
    parser.add_argument("--direction", default="maximize")
    parser.add_argument("--orders", type=int, default=200, help="shuffled trial orders besides the recorded one")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    curves = load_curves(Path(args.study), args.direction)
    pick = max if args.direction == "maximize" else min
    best_trial = pick(curves, key=lambda c: c["value"])["number"]
    best_value = pick(c["value"] for c in curves)
    total = sum(c["seconds"] for c in curves)
    rng = np.random.default_rng(0)
    orders = [list(range(len(curves)))] + [rng.permutation(len(curves)).tolist() for _ in range(args.orders)]
    result = {"study": args.study, "trials": len(curves), "unpruned_seconds": total, "best_trial": best_trial,
              "best_value": best_value, "orders": len(orders), "pruners": {}}
    for name in ("median", "halving"):
        runs = [replay([curves[i] for i in order], name, args.direction) for order in orders]
        share = [r["seconds"] / total for r in runs]
        lost = [best_trial in r["pruned"] for r in runs]
        shortfall = [abs(best_value - r["best_kept"]) if r["best_kept"] is not None else None for r in runs]
        result["pruners"][name] = {
            "recorded_order": runs[0],
            "time_share_mean": statistics.mean(share), "time_share_min": min(share), "time_share_max": max(share),
            "trials_pruned_mean": statistics.mean(len(r["pruned"]) for r in runs),
            "best_lost_share": sum(lost) / len(lost),
            "shortfall_mean": statistics.mean(s for s in shortfall if s is not None),
            "shortfall_max": max(s for s in shortfall if s is not None),
            "trials_per_budget_vs_none": 1 / statistics.mean(share),
        }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items()}, indent=1))


if __name__ == "__main__":
    main()
