"""The search: an Optuna study in ``TUNE_DIR/study.db`` whose trials are normal run directories.

    TUNE_DIR/.bertfit-tune   the marker: bertfit made this search folder
    TUNE_DIR/tune.json       the search's settings (what --resume continues with)
    TUNE_DIR/study.db        the Optuna study (SQLite): every trial's settings, values and state
    TUNE_DIR/trial-000/ ...  one `bertfit train` run per trial (predicts, serves, exports)
    TUNE_DIR/best -> trial-N the best trial by the task's selection metric on validation; best.json
    TUNE_DIR/final-seed-S/   --final-seeds N: the best settings trained again with fresh seeds (final.py)
    TUNE_DIR/summary.json    what the search found: every trial, the best with its test metrics, the final seeds
    TUNE_DIR/tune_report.md  the trials table (report.py)

Reproducible and resumable by construction: trial *k* (counting the trials that did not fail) draws
its settings from a TPE sampler seeded ``seed + k`` over the trials stored before it, so a search
killed at any moment and continued with ``--resume`` draws what an uninterrupted one draws. A trial
left RUNNING by a killed process is marked failed and its settings are run again in its directory.
Test is never read by a trial; it is evaluated once, for the best trial, after the search.

``nproc`` > 1: that many worker processes each run trials from the same study (SQLite arbitrates;
a file lock makes "count the trials, draw the next" one step, so slots and the trial limit hold),
the threads split between them. The pruner reads every process's reports from the study, so pruning
works across them; the draws then depend on which trials finished first, so a parallel search is not
reproducible trial for trial (a sequential one is).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from bertfit.errors import BertfitError
from bertfit.io import write_json_atomic
from bertfit.train.config import EXPLAIN_REPORT_SECONDS, TrainConfig
from bertfit.train.run_dir import CHECKPOINT, UNUSABLE_PREFIX, RunDir
from bertfit.train.state import TrainingError
from bertfit.tune.budget import Budget
from bertfit.tune.space import Param, trial_settings

logger = logging.getLogger(__name__)

MARKER = ".bertfit-tune"
STUDY_NAME = "bertfit-tune"


@dataclass
class TuneSettings:
    base: TrainConfig  # the trials' shared settings (flags, --config file); output_dir and seed are tune's
    space: dict[str, Param]
    fixed: dict[str, Any]  # settings the space file fixes
    tune_dir: Path
    n_trials: int | None = None
    time_budget_s: float | None = None
    seed: int = 0
    prune_startup_trials: int = 3
    keep_weights: str = "all"  # "best": a finished trial that is not the best loses its weights (disk bound)
    final_seeds: int = 0  # the best settings trained again with this many fresh seeds after the search
    nproc: int = 1  # trials run at once, each in its own process
    pruner: str = "median"  # one of PRUNERS
    lengths: dict[str, Any] | None = None  # max_length chosen from the training texts' lengths (lengths.py)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)


@dataclass
class TuneResult:
    tune_dir: Path
    metric: str
    direction: str
    trials: list[dict[str, Any]]  # one row per trial: number, dir, state, value, params, seconds
    best: dict[str, Any] | None  # the best trial's row, with its test metrics ("test")
    final: dict[str, Any] | None  # --final-seeds: each seed's run and the mean ± std (final.py)
    report: Path
    stopped_by: str  # "n_trials", "time_budget"


def trial_dir_name(slot: int) -> str:
    return f"trial-{slot:03d}"


def check_tune_dir(tune_dir: Path, resume: bool) -> None:
    """A new search needs a new or empty folder; --resume needs one that a search made."""
    db = tune_dir / "study.db"
    if resume:
        if not (tune_dir / MARKER).is_file() or not db.is_file():
            raise BertfitError(f"--resume {tune_dir}: not a bertfit tune folder (no {MARKER} and study.db); "
                               "pass the --output-dir of an earlier `bertfit tune`")
        return
    if tune_dir.exists() and not tune_dir.is_dir():
        raise BertfitError(f"--output-dir {tune_dir} is a file; the search needs a folder")
    if (tune_dir / MARKER).is_file():
        raise BertfitError(f"{tune_dir} already holds a search; pass --resume {tune_dir} to continue it, "
                           "or choose another --output-dir")
    if tune_dir.is_dir() and any(tune_dir.iterdir()):
        raise BertfitError(f"--output-dir {tune_dir} is not empty and is not a bertfit search; choose a new or "
                           "empty folder (bertfit never writes into a folder it did not make)")


def save_settings(settings: TuneSettings) -> None:
    settings.tune_dir.mkdir(parents=True, exist_ok=True)
    (settings.tune_dir / MARKER).write_text("This folder is a bertfit hyperparameter search (bertfit tune).\n",
                                            encoding="utf-8")
    write_json_atomic(settings.tune_dir / "tune.json", {
        "base": settings.base.to_dict(), "fixed": settings.fixed, "seed": settings.seed,
        # the settings left to the task's defaults: a task detected from the labels still sets them on resume
        "defaulted": sorted(settings.base.defaulted),
        "space": {name: vars(p) for name, p in settings.space.items()},
        "n_trials": settings.n_trials, "time_budget_s": settings.time_budget_s,
        "prune_startup_trials": settings.prune_startup_trials, "keep_weights": settings.keep_weights,
        "final_seeds": settings.final_seeds, "lengths": settings.lengths, "nproc": settings.nproc,
        "pruner": settings.pruner})


def load_settings(tune_dir: Path, n_trials: int | None, time_budget_s: float | None,
                  final_seeds: int | None = None, nproc: int | None = None) -> TuneSettings:
    """A search's saved settings (--resume); a new --n-trials / --time-budget / --final-seeds / --nproc
    replaces the saved one."""
    path = tune_dir / "tune.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        base = TrainConfig.from_dict(saved["base"], source=str(path))
        object.__setattr__(base, "defaulted", frozenset(saved.get("defaulted", ())))
        space = {name: Param(**{**spec, "choices": tuple(spec["choices"]) if spec["choices"] is not None else None})
                 for name, spec in saved["space"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BertfitError(f"{path} is unreadable ({exc}); the search cannot be resumed") from None
    return TuneSettings(base, space, saved["fixed"], tune_dir, n_trials if n_trials is not None else saved["n_trials"],
                        time_budget_s if time_budget_s is not None else saved["time_budget_s"], saved["seed"],
                        saved["prune_startup_trials"], saved.get("keep_weights", "all"),
                        final_seeds if final_seeds is not None else saved.get("final_seeds", 0),
                        nproc if nproc is not None else saved.get("nproc", 1), saved.get("pruner", "median"),
                        saved.get("lengths"))


def objective_of(base: TrainConfig) -> tuple[str, str, Any]:
    """(the selection metric, "maximize"/"minimize", the task class): the metric the trainer selects
    its best checkpoint on, in the task's own direction."""
    from bertfit.tasks import task_class

    if base.problem_type is not None:
        task = task_class(base.problem_type)
    else:  # detected from the labels, as train detects it
        from bertfit.train.finetune import prepare_data

        task = type(prepare_data(base).task)
    metric = base.metric or task.default_metric
    return metric, "minimize" if metric in task.lower_is_better else "maximize", task


def run_study(settings: TuneSettings, *, resume: bool = False,
              progress: Callable[[str], None] | None = None) -> TuneResult:
    """Run (or continue) the search; returns every trial and the best, its test metrics included."""
    import optuna

    if settings.n_trials is None and settings.time_budget_s is None:
        raise BertfitError("give --n-trials and/or --time-budget: the search needs a limit")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is ours (logger below)
    tune_dir = settings.tune_dir
    metric, direction, _ = objective_of(settings.base)
    storage = _storage(tune_dir)
    optuna.create_study(storage=storage, study_name=STUDY_NAME, direction=direction, load_if_exists=True)
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        # Left running by a killed process: failed, and its settings run again first (in its folder).
        logger.info("trial %s was interrupted: running it again", trial.user_attrs.get("dir", trial.number))
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, skip_if_exists=False,
                            user_attrs={k: v for k, v in trial.user_attrs.items() if k == "defaults"})
    if settings.nproc > 1:
        stopped_by = _run_workers(settings, progress)
    else:
        stopped_by = search(settings, Budget(settings.time_budget_s, settings.clock), metric, direction, progress)
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
    return _finish(study, settings, metric, direction, stopped_by, progress)


def _storage(tune_dir: Path) -> Any:
    """The study's SQLite storage; parallel workers wait for each other's writes instead of failing."""
    import optuna

    return optuna.storages.RDBStorage(f"sqlite:///{(tune_dir / 'study.db').resolve()}",
                                      engine_kwargs={"connect_args": {"timeout": 120}})


@contextlib.contextmanager
def _drawing(tune_dir: Path) -> Iterator[None]:
    """One process at a time counts the trials and draws the next (an exclusive lock on .draw.lock)."""
    import fcntl

    with open(tune_dir / ".draw.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def search(settings: TuneSettings, budget: Budget, metric: str, direction: str,
           progress: Callable[[str], None] | None) -> str:
    """Run trials until the trial limit or the budget says stop (in this process; every worker of a
    parallel search runs this); returns what stopped it: "n_trials" or "time_budget"."""
    import optuna

    storage = _storage(settings.tune_dir)
    pruner = make_pruner(settings.pruner, settings.prune_startup_trials)
    while True:
        with _drawing(settings.tune_dir):
            study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
            live = [t for t in study.get_trials(deepcopy=False) if t.state != optuna.trial.TrialState.FAIL
                    and t.state != optuna.trial.TrialState.WAITING]
            if settings.n_trials is not None and len(live) >= settings.n_trials:
                return "n_trials"
            complete = [t.user_attrs["seconds"] for t in live if t.state == optuna.trial.TrialState.COMPLETE]
            measured = complete or [t.user_attrs["seconds"] for t in live if "seconds" in t.user_attrs]
            shortest = _shortest_trial(settings, live)
            if shortest is not None:  # the next trial is sized to the budget: it may be as short as this
                measured = [min(shortest, sum(measured) / len(measured))]
            if not budget.allows_next(measured):
                logger.info("time budget: %.0f s of %.0f s spent; the next trial (about %.0f s) would not finish in it",
                            budget.elapsed(), settings.time_budget_s, sum(measured) / max(1, len(measured)))
                return "time_budget"
            slot = len(live)
            # constant_liar: in a parallel search, running trials count as bad so workers spread out.
            sampler = optuna.samplers.TPESampler(seed=settings.seed + slot, constant_liar=settings.nproc > 1)
            study = optuna.load_study(study_name=STUDY_NAME, storage=storage, sampler=sampler, pruner=pruner)
            space, cap = sized_to_budget(settings, budget, live)
            if not study.get_trials(deepcopy=False):  # a new search: its first trial is train's defaults
                defaults = defaults_within(settings, space)
                if defaults:
                    study.enqueue_trial(defaults, user_attrs={"defaults": True})
            trial = study.ask()
            if cap:
                trial.set_user_attr("epochs_cap", cap)
            params = {name: param.suggest(trial) for name, param in space.items()}
            trial.set_user_attr("dir", trial_dir_name(slot))
            trial.set_user_attr("process", os.getpid())
        _run_trial(study, trial, params, settings, metric, direction, progress, budget)


def _seconds_per_epoch(settings: TuneSettings, trials: list[Any]) -> float | None:
    """The mean seconds an epoch took in the finished trials (None before any)."""
    import optuna

    finished = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and "seconds" in t.user_attrs]
    per_epoch = [t.user_attrs["seconds"] / _epochs_trained(settings, t) for t in finished]
    return sum(per_epoch) / len(per_epoch) if per_epoch else None


def _shortest_trial(settings: TuneSettings, trials: list[Any]) -> float | None:
    """The expected seconds of the shortest trial the space allows (its fewest epochs), when the
    trials are sized to the budget and a speed is measured; else None."""
    epochs = settings.space.get("epochs")
    per_epoch = _seconds_per_epoch(settings, trials)
    if epochs is None or per_epoch is None or settings.base.max_steps:
        return None
    lowest = min(c for c in epochs.choices if isinstance(c, (int, float))) if epochs.choices else epochs.low
    return float(lowest) * per_epoch


def defaults_within(settings: TuneSettings, space: dict[str, Param]) -> dict[str, Any]:
    """`train`'s own values of the searched settings (flags and config file included), those the space
    holds: the first trial trains them, so that the report says what the search bought over them."""
    defaults = {}
    for name, param in space.items():
        value = getattr(settings.base, name, None)
        if isinstance(value, bool) or (value is None and None not in (param.choices or ())):
            continue  # (None is a value where the space offers it: multi-label's per-label thresholds)
        if param.choices is not None:
            inside = value in param.choices
        else:
            inside = param.low <= value <= param.high and (not param.integer or float(value).is_integer())
        if inside:
            defaults[name] = int(value) if param.integer else value
    return defaults


def sized_to_budget(settings: TuneSettings, budget: Budget, trials: list[Any]
                    ) -> tuple[dict[str, Param], dict[str, Any] | None]:
    """The space a trial draws from under a time budget: its epochs capped so that the trials the
    search still wants (the pruner's startup trials and one more) fit in what is left, at the speed
    measured so far. Until a trial has finished there is no speed: the first trial trains the fewest
    epochs, so that its time measures the machine before a longer one may start. (Without the cap a
    first draw of 4 epochs on a CPU can take the whole budget, and a search of one trial finds nothing.)"""
    import optuna

    epochs = settings.space.get("epochs")
    if budget.seconds is None or epochs is None or settings.base.max_steps:
        return settings.space, None
    finished = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    per_epoch = _seconds_per_epoch(settings, trials)
    wanted = max(1, settings.prune_startup_trials + 1 - len(finished))
    most = budget.epochs_that_fit(per_epoch, wanted)
    if most is None:
        most = 0.0  # nothing measured: the lowest value
    capped = epochs.capped(most)
    if capped == epochs:
        return settings.space, None
    logger.info("time budget: epochs at most %s for this trial (%.0f s left for %d more trials%s)",
                capped.describe(), budget.remaining(), wanted, "" if per_epoch else "; no trial measured yet")
    return {**settings.space, "epochs": capped}, {"most": most, "seconds_left": budget.remaining(),
                                                  "trials_wanted": wanted}


def _epochs_trained(settings: TuneSettings, trial: Any) -> float:
    """The epochs a finished trial trained: its drawn or fixed epochs, cut where the budget stopped it."""
    epochs = float(trial.params.get("epochs", settings.fixed.get("epochs", settings.base.epochs)))
    cut = trial.user_attrs.get("stopped_at_budget")
    return max(epochs * (cut["step"] / cut["of"] if cut else 1.0), 1e-6)


PRUNERS = ("median", "halving", "none")


def make_pruner(name: str, startup_trials: int) -> Any:
    """The pruner a search uses. Median (the default): a CPU budget buys few trials with few evaluations
    each; the median rule stops a trial only when it is worse than half of the earlier trials at the
    same point (examples seen), after ``startup_trials`` whole trials. Successive halving (Optuna's,
    rungs from the first trial's length) and none are there to be measured against it
    (benchmarks/RESULTS.md, issue 28)."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=0, n_min_trials=1)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    raise BertfitError(f"pruner {name!r} is not one of {', '.join(PRUNERS)}")


def _run_workers(settings: TuneSettings, progress: Callable[[str], None] | None) -> str:
    """``settings.nproc`` processes running `search` on the shared study, the threads split between
    them; returns "time_budget" if any stopped on the budget."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (settings.base.threads or os.cpu_count() or 1) // settings.nproc)
    started = time.monotonic()  # system-wide on Linux: the workers' budget counts from here
    context = multiprocessing.get_context("spawn")  # a fresh interpreter each: torch is not fork-safe
    with ProcessPoolExecutor(max_workers=settings.nproc, mp_context=context) as pool:
        futures = [pool.submit(_worker, settings.tune_dir, settings.n_trials, settings.time_budget_s, started, threads,
                               progress is not None) for _ in range(settings.nproc)]
        reasons = [future.result() for future in futures]  # a worker's error is raised here
    return "time_budget" if "time_budget" in reasons else "n_trials"


def _worker(tune_dir: Path, n_trials: int | None, time_budget_s: float | None, started: float, threads: int,
            show_progress: bool) -> str:
    """One process of a parallel search: the saved settings, its share of the threads, the shared budget."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if show_progress:  # a fresh interpreter: its trial lines go to stderr like the parent's
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    settings = load_settings(tune_dir, n_trials, time_budget_s)
    settings.base = settings.base.replace(threads=threads)
    metric, direction, _ = objective_of(settings.base)
    return search(settings, Budget(time_budget_s, started=started), metric, direction, None)


def _run_trial(study: Any, trial: Any, params: dict[str, Any], settings: TuneSettings, metric: str, direction: str,
               progress: Callable[[str], None] | None, budget: Budget | None = None) -> None:
    import optuna

    from bertfit.train.finetune import fine_tune

    run_dir = settings.tune_dir / trial.user_attrs["dir"]
    # A trial's report skips the explanations section unless the user asked for a budget: at the default
    # it would add up to EXPLAIN_REPORT_SECONDS to every trial, time the search's budget pays for.
    explain = {} if settings.base.explain_report_seconds != EXPLAIN_REPORT_SECONDS else {"explain_report_seconds": 0}
    config = settings.base.with_settings({**settings.fixed, **trial_settings(params), **explain,
                                          "output_dir": str(run_dir), "seed": settings.seed}, source="the trial's settings")

    stopped_at: list[int] = []

    def report(record: dict[str, Any], state: Any, total: int) -> None:
        # The budget is hard: a trial still running when it runs out stops (after its first evaluation,
        # so that it has a model) and finishes as a normal run with its best model so far; a long first
        # trial cannot carry the search far past the budget.
        if budget is not None and budget.spent() and state.best_value is not None and not state.stopped_early:
            state.stopped_early = True
            stopped_at.extend((int(state.step), int(total)))
        # At each evaluation: the best value so far, i.e. the trial's result if it stopped now. The step
        # is the examples seen, so trials with other batch sizes are compared at the same point.
        if record["kind"] != "eval" or state.best_value is None:
            return
        trial.report(float(state.best_value), step=int(state.examples_seen))
        if trial.should_prune():
            raise optuna.TrialPruned(f"{metric} {state.best_value:.4f}: stopped by the {settings.pruner} pruner")

    started = settings.clock()
    try:
        result = fine_tune(config, overwrite=run_dir.exists(), callback=report, evaluate_test=False)
    except optuna.TrialPruned:
        seconds = settings.clock() - started
        trial.set_user_attr("seconds", seconds)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        remove_weights(run_dir)
        _say(progress, f"{run_dir.name}: pruned after {seconds:.0f} s ({_show(params)})")
        return
    except TrainingError as exc:  # this trial's settings diverged (NaN loss, ...): the search goes on
        trial.set_user_attr("error", str(exc))
        trial.set_user_attr("seconds", settings.clock() - started)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        remove_weights(run_dir)
        _say(progress, f"{run_dir.name}: failed ({exc})")
        return
    except BaseException:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)  # a user's mistake fails every trial alike
        raise
    seconds = settings.clock() - started
    if "validation" not in result.metrics:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise BertfitError("the search selects on the validation split, and it is empty: give --validation-file "
                           "or a --split with a validation share")
    value = float(result.metrics["validation"][metric])
    trial.set_user_attr("seconds", seconds)
    if stopped_at:  # finished by the budget, not by its schedule: its steps of the planned total
        trial.set_user_attr("stopped_at_budget", {"step": stopped_at[0], "of": stopped_at[1]})
        _say(progress, f"{run_dir.name}: the time budget ran out at step {stopped_at[0]} of {stopped_at[1]}; "
                       "the trial keeps its best model so far")
    study.tell(trial, value)
    remove_checkpoints(run_dir)  # the trial is finished: its resumable checkpoints are no longer needed
    _say(progress, f"{run_dir.name}: {metric} {value:.4f} in {seconds:.0f} s ({_show(params)})")
    with _drawing(settings.tune_dir):  # one process at a time moves `best` and removes dominated weights
        best = study.best_trial
        point_best(settings.tune_dir, best.user_attrs["dir"], {"trial": best.number, "dir": best.user_attrs["dir"],
                                                              "metric": metric, "direction": direction,
                                                              "value": best.value, "params": best.params})
        if settings.keep_weights == "best":  # dominated trials: their records stay, their weights go
            for other in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
                if other.number != best.number:
                    remove_weights(settings.tune_dir / other.user_attrs["dir"])


def _say(progress: Callable[[str], None] | None, line: str) -> None:
    if progress:
        progress(line)
    else:
        logger.info("%s", line)


def _show(params: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in params.items())


def remove_checkpoints(run_dir: Path) -> None:
    """A finished or pruned trial's resumable checkpoints (bertfit's step-N folders only)."""
    if not RunDir(run_dir).is_run():
        return
    folder = run_dir / "checkpoints"
    if folder.is_dir() and not folder.is_symlink():
        for entry in folder.iterdir():
            if entry.is_dir() and not entry.is_symlink() and CHECKPOINT.match(entry.name.removeprefix(UNUSABLE_PREFIX)):
                shutil.rmtree(entry)


def remove_weights(run_dir: Path) -> None:
    """A pruned trial's weights (its best-so-far model and its checkpoints): bertfit's files only,
    anything else in the folder is kept."""
    if not RunDir(run_dir).is_run():
        return
    remove_checkpoints(run_dir)
    (run_dir / "model.safetensors").unlink(missing_ok=True)


def point_best(tune_dir: Path, name: str, record: dict[str, Any]) -> None:
    """``best`` -> the best trial (a relative symlink, replaced atomically), and best.json. A ``best``
    that is not bertfit's symlink is the user's: left alone, best.json still says which trial it is."""
    write_json_atomic(tune_dir / "best.json", record)
    link = tune_dir / "best"
    if link.exists() and not link.is_symlink():
        logger.warning("%s is not bertfit's link; the best trial is %s (best.json)", link, name)
        return
    temporary = tune_dir / f".best-{os.getpid()}.tmp"
    temporary.unlink(missing_ok=True)
    try:
        os.symlink(name, temporary)
        os.replace(temporary, link)
    except OSError as exc:  # a file system without symlinks: best.json alone says it
        logger.warning("could not link %s to %s (%s); the best trial is in best.json", link, name, exc)


def _finish(study: Any, settings: TuneSettings, metric: str, direction: str, stopped_by: str,
            progress: Callable[[str], None] | None = None) -> TuneResult:
    import optuna

    from bertfit.tune.analysis import param_importances, plot_parallel_coordinates
    from bertfit.tune.final import run_final_seeds
    from bertfit.tune.report import write_tune_report

    rows = [{"number": t.number, "dir": t.user_attrs.get("dir"), "state": t.state.name.lower(), "value": t.value,
             "params": t.params, "seconds": t.user_attrs.get("seconds"), "process": t.user_attrs.get("process"),
             "stopped_at_budget": t.user_attrs.get("stopped_at_budget"), "defaults": t.user_attrs.get("defaults", False),
             "epochs_cap": t.user_attrs.get("epochs_cap"),
             "started": t.datetime_start and t.datetime_start.isoformat(),
             "ended": t.datetime_complete and t.datetime_complete.isoformat()}
            for t in study.get_trials(deepcopy=False) if t.state != optuna.trial.TrialState.WAITING]
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    best = final = None
    if complete:
        trial = study.best_trial
        best = next(r for r in rows if r["number"] == trial.number)
        best["test"] = evaluate_test(settings, settings.tune_dir / best["dir"], best["params"])
        final = run_final_seeds(settings, best["params"], lambda line: _say(progress, line))
    importances = param_importances(study, settings.seed)
    write_json_atomic(settings.tune_dir / "summary.json", {
        "metric": metric, "direction": direction, "stopped_by": stopped_by, "best_link": best and best["dir"],
        "best": best, "final_seeds": final, "importances": importances, "trials": rows})
    report = write_tune_report(settings.tune_dir, rows, best, metric, direction, settings, final, importances,
                               plot_parallel_coordinates(study, settings.tune_dir, metric))
    return TuneResult(settings.tune_dir, metric, direction, rows, best, final, report, stopped_by)


def evaluate_test(settings: TuneSettings, run_dir: Path, params: dict[str, Any]) -> dict[str, Any] | None:
    """The best trial's test metrics, evaluated once after the search (the trials never read test):
    the run's own model and decision rules on the test split its settings drew, added to its metrics.json."""
    from bertfit.predict.predictor import Predictor
    from bertfit.train.finetune import prepare_data

    config = settings.base.with_settings({**settings.fixed, **trial_settings(params),
                                          "output_dir": str(run_dir), "seed": settings.seed}, source="the trial's settings")
    test = prepare_data(config).test
    if not test:
        return None
    predictor = Predictor.load(run_dir, engine="pytorch")
    split, outputs = predictor.run_examples(test)
    metrics = predictor.task.evaluate(outputs, split.gold)
    path = run_dir / "metrics.json"
    saved = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    write_json_atomic(path, {**saved, "test": metrics})
    return metrics
