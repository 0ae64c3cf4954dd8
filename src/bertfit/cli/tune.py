"""`bertfit tune`: the best model a time budget buys — a hyperparameter search over train's settings."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bertfit.cli.common import positive_int
from bertfit.cli.train import add_setting_arguments, given_settings

HELP = "search train's settings (Optuna) for the best model within a number of trials or a time budget"
DESCRIPTION = ("Train one run per trial (TUNE_DIR/trial-000, ...) with settings drawn by a seeded TPE sampler, "
               "pruning trials whose validation metric falls below the median; TUNE_DIR/best links the best "
               "trial, evaluated on test once after the search. Takes train's data and task flags: a flag "
               "given here is fixed for every trial; --space FILE (YAML/TOML, train's setting names) sets what "
               "is searched. Needs the tune extra (pip install 'bertfit[tune]').")

# Settings tune defines in its own words (the search folder, the one seed), or that a search does not take.
OWN = ("output_dir", "seed", "seeds")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n-trials", type=positive_int, metavar="N", help="stop after N trials (pruned ones count)")
    parser.add_argument("--time-budget", metavar="DURATION",
                        help="start no trial that would not finish within this wall time (e.g. 90s, 30m, 2h), "
                             "judged by the mean duration of the finished trials")
    parser.add_argument("--space", metavar="FILE", help="YAML/TOML search space named with train's settings, e.g. "
                        "lr: {low: 1e-5, high: 1e-4, log: true}; batch_size: [16, 32]; weight_decay: 0.0 (fixed)")
    parser.add_argument("--resume", metavar="DIR", help="continue the search in DIR with its saved settings: finished "
                        "trials are kept, an interrupted one runs again")
    parser.add_argument("--output-dir", metavar="DIR", default="runs/tune", help="the search folder (default: runs/tune)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the sampler and every trial's training (default: 0)")
    parser.add_argument("--prune-startup-trials", type=int, default=3, metavar="N",
                        help="trials that run to their end before any is pruned (default: 3)")
    parser.add_argument("--pruner", choices=("median", "halving", "none"), default="median",
                        help="stop unpromising trials early: median (below the median of earlier trials at the same "
                             "point), halving (Optuna's successive halving) or none (default: median)")
    parser.add_argument("--keep-weights", choices=("all", "best"), default="all",
                        help="best: delete the weights of every finished trial but the best, to bound disk use "
                             "(pruned trials' weights are always deleted; default: all)")
    parser.add_argument("--nproc", type=positive_int, metavar="N", default=None,
                        help="run N trials at once, each in its own process on the shared study, the threads "
                             "(--threads, or every core) split between them; pruning works across them, but the "
                             "draws depend on which trial finishes first (default: 1, reproducible trial for trial)")
    parser.add_argument("--final-seeds", type=int, metavar="N", default=None,
                        help="after the search, train the best settings again with N fresh seeds (TUNE_DIR/final-seed-S) "
                             "and report validation and test as mean ± std; `best` stays the best trial (default: 0; "
                             "not counted in --time-budget)")
    parser.add_argument("--config", metavar="FILE", help="YAML or TOML file of train's settings, fixed for every trial")
    parser.add_argument("--quick", action="store_true", help="train's quick job for every trial (flags still override)")
    add_setting_arguments(parser, skip=OWN)


def run(args: argparse.Namespace) -> int:
    import importlib.util

    if importlib.util.find_spec("optuna") is None:
        from bertfit.errors import BertfitError

        raise BertfitError("bertfit tune needs optuna: pip install 'bertfit[tune]'")
    from bertfit.train.config import resolve_config
    from bertfit.tune.budget import parse_duration
    from bertfit.tune.space import default_space, read_space_file, resolve_space
    from bertfit.tune.study import TuneSettings, check_tune_dir, load_settings, objective_of, run_study, save_settings

    budget = parse_duration(args.time_budget) if args.time_budget else None
    if args.final_seeds is not None and args.final_seeds < 0:
        from bertfit.errors import ConfigError

        raise ConfigError(f"--final-seeds must be 0 or more, got {args.final_seeds}")
    if args.resume:
        tune_dir = Path(args.resume)
        check_tune_dir(tune_dir, resume=True)
        settings = load_settings(tune_dir, args.n_trials, budget, args.final_seeds, args.nproc)
    else:
        tune_dir = Path(args.output_dir)
        file_values, flags = given_settings(args)
        base = resolve_config(file_values, flags, quick=args.quick)
        file_space, file_fixed = read_space_file(args.space) if args.space else (None, None)
        from bertfit.tasks.declared import DECLARED

        _, _, task = objective_of(base)
        declared = frozenset(s.name for s in DECLARED.get(task.name, ()))
        given = frozenset(k for k, v in flags.items() if v is not None) | frozenset(file_values or {})
        space, fixed = resolve_space(default_space(declared), file_space, file_fixed, given)
        if args.n_trials is None and budget is None:
            from bertfit.errors import BertfitError

            raise BertfitError("give --n-trials and/or --time-budget: the search needs a limit")
        check_tune_dir(tune_dir, resume=False)
        lengths = None
        if "max_length" not in given and "max_length" not in space and "max_length" not in fixed:
            from bertfit.tune.lengths import choose_max_length

            lengths = choose_max_length(base)  # the data's 99th percentile (None: the task keeps its default)
            if lengths:
                base = base.replace(max_length=lengths["chosen"])
        settings = TuneSettings(base, space, fixed, tune_dir, args.n_trials, budget, args.seed, args.prune_startup_trials,
                                args.keep_weights, final_seeds=args.final_seeds or 0, nproc=args.nproc or 1,
                                pruner=args.pruner, lengths=lengths)
        save_settings(settings)
    result = run_study(settings, resume=bool(args.resume),
                       progress=None if args.quiet else (lambda line: print(line, file=sys.stderr)))
    best = result.best
    print(f"\n{len(result.trials)} trials in {result.tune_dir} (stopped by {result.stopped_by.replace('_', ' ')})")
    if best is None:
        print("no trial finished: no best trial")
        return 0
    print(f"best: {best['dir']} ({result.tune_dir / 'best'}): validation {result.metric} {best['value']:.4f}")
    if best.get("test"):
        print("test: " + ", ".join(f"{k} {v:.4f}" for k, v in best["test"].items() if isinstance(v, float)))
    if result.final:
        seeds = len(result.final["seeds"])
        for split in ("validation", "test"):
            shown = result.final[split].get(result.metric)
            if shown:
                print(f"{split} {result.metric} over {seeds} fresh seeds: {shown['mean']:.4f} ± {shown['std']:.4f}")
    print(f"report: {result.report}")
    return 0
