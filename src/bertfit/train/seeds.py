"""`bertfit train --seeds N`: the same job with N seeds, every metric as mean ± standard deviation.

A fine-tuning result moves with the seed (the classifier's initialisation, the batch order, dropout),
often by more than the difference between two settings. The data split stays the one of --seed (or
--split-seed) for every seed, so the validation scores that pick the model compare like with like. Each seed s = --seed, --seed+1, ... trains as its own run in ``RUN/seeds/seed-s/``; then the
model with the best validation score (the run's --metric) is copied to the top of RUN, which is then
an ordinary run directory (predict, serve and export use it); the other seeds keep their metrics,
logs and reports but not their weights. ``metrics.json`` holds the best model's metrics per split,
as a single run's does, plus ``"seeds"``: for every numeric metric its mean, standard deviation
(sample, n - 1) and per-seed values; the report opens with the spread.

A multi-seed run that stopped is continued by running the same command again (or with --resume):
seeds that finished are kept, an interrupted one resumes from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

from bertfit.errors import BertfitError
from bertfit.train.run_dir import RunDir
from bertfit.train.run_lock import hold_run, release_run
from bertfit.io import write_json_atomic

logger = logging.getLogger(__name__)

SEEDS_DIR = "seeds"
# Files of the best seed's run that make the top directory a usable run (report and plots are re-rendered).
COPIED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
          "special_tokens_map.json", "task.json", "precision.json", "data.json", "split.json", "metrics.jsonl",
          "trainer_state.json")


def aggregate(per_seed: Mapping[int, Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """{seed: {split: metrics}} -> {split: {metric: {"mean", "std", "values"}}} over every numeric
    top-level metric that all seeds report (std: sample standard deviation, 0 for one seed)."""
    seeds = sorted(per_seed)
    splits = sorted({split for s in seeds for split in per_seed[s]})
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for split in splits:
        rows = [per_seed[s].get(split) for s in seeds]
        if any(not isinstance(r, Mapping) for r in rows):
            continue
        names = [k for k, v in rows[0].items() if _number(v) and k != "n" and all(_number(r.get(k)) for r in rows)]
        table = {}
        for name in names:
            values = [float(r[name]) for r in rows]
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
            table[name] = {"mean": mean, "std": std, "values": dict(zip(map(str, seeds), values))}
        out[split] = table
    return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def best_seed(per_seed: Mapping[int, Mapping[str, Mapping[str, Any]]], metric: str, better: Callable) -> int:
    """The seed whose validation ``metric`` is best (``better(metric, value, best)``, the task's
    direction); the first seed on a tie. Without validation metrics: the first seed."""
    best, best_value = None, None
    for seed in sorted(per_seed):
        value = (per_seed[seed].get("validation") or {}).get(metric)
        if not _number(value):
            continue
        if best is None or (better(metric, value, best_value) and value != best_value):
            best, best_value = seed, value
    return best if best is not None else min(per_seed)


def format_spread(spread: Mapping[str, Mapping[str, Mapping[str, Any]]], names: tuple[str, ...]) -> str:
    """One line per split: "test: accuracy 0.7812 ± 0.0034, macro_f1 ..." (what the CLI prints)."""
    lines = []
    for split, table in spread.items():
        shown = [f"{name} {table[name]['mean']:.4f} ± {table[name]['std']:.4f}" for name in names if name in table]
        if shown:
            lines.append(f"{split}: " + ", ".join(shown))
    return "\n".join(lines)


def run_seeds(config: Any, run_one: Callable[..., Any], *, resume: bool = False, overwrite: bool = False,
              callback: Callable | None = None) -> Any:
    """Train ``config`` with ``config.seeds`` seeds through ``run_one`` (job.fine_tune's one-seed body);
    returns the best seed's result, its run_dir and metrics those of the top directory."""
    root = RunDir(config.output_dir)
    root.check_is_run()
    if os.environ.get("RANK", "0") != "0":  # a distributed job: rank 0 alone writes (and locks) the run
        return _run_seeds(config, root, run_one, resume, overwrite, callback)
    hold_run(root.path, "train")  # one writer per run, for all its seeds
    try:
        return _run_seeds(config, root, run_one, resume, overwrite, callback)
    finally:
        release_run(root.path)


def _run_seeds(config: Any, root: RunDir, run_one: Callable[..., Any], resume: bool, overwrite: bool,
               callback: Callable | None) -> Any:
    saved = root.file("train_config.json")
    started = (root.path / SEEDS_DIR).is_dir()
    if overwrite:
        root.create(replace=True)
    elif root.path.is_dir() and root.entries():
        finished = root.file("metrics.json").exists()
        same = saved.is_file() and json.loads(saved.read_text(encoding="utf-8")) == config.to_dict()
        if finished or not started or not same:
            raise BertfitError(f"{root.path} already holds a {'finished ' if finished else ''}run"
                               f"{'' if same or not started else ' with different settings'}; pass --overwrite to "
                               "replace it, or choose another --output-dir")
        logger.warning("%s: continuing the multi-seed run (finished seeds are kept)", root.path)
    elif resume:
        raise BertfitError(f"{root.path}: no multi-seed run to resume")
    root.create()
    write_json_atomic(saved, config.to_dict())
    results: dict[int, Any] = {}
    per_seed: dict[int, dict[str, Any]] = {}
    for k in range(config.seeds):
        seed = config.seed + k
        directory = root.path / SEEDS_DIR / f"seed-{seed}"
        # Only the training draws change (initialisation, batch order, dropout): every seed trains and is
        # selected on the same split, so their validation scores compare and the test spread is the model's.
        one = config.replace(seed=seed, seeds=1, output_dir=str(directory), split_seed=config.data_seed)
        if (directory / "metrics.json").is_file() and not (directory / "checkpoints").is_dir():
            per_seed[seed] = json.loads((directory / "metrics.json").read_text(encoding="utf-8"))
            logger.info("seed %d: finished before, kept", seed)
            continue
        logger.info("seed %d (%d of %d)", seed, k + 1, config.seeds)
        has_checkpoints = bool(RunDir(directory).checkpoint_steps())
        results[seed] = run_one(one, resume=has_checkpoints, overwrite=False, callback=callback)
        per_seed[seed] = results[seed].metrics
        # Until the last seed ends, a seed keeps its weights (its model may be the best); not its checkpoints.
        shutil.rmtree(directory / "checkpoints", ignore_errors=True)
    return _finish(config, root, per_seed, results)


def _write_card(root: RunDir, best_dir: Path, task: Any) -> None:
    """The top directory's model card: the best seed's, rendered from the top's files."""
    from bertfit.report.card import STATE, write_card

    try:
        state = json.loads((best_dir / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        state = {}
    try:
        write_card(root.path, task, world_size=state.get("world_size"), wall_time_s=state.get("wall_time_s"))
    except Exception as exc:  # noqa: BLE001 - as for one seed's card: a warning, never a lost run
        logger.warning("could not write the model card of %s: %s: %s", root.path, type(exc).__name__, exc)


def _finish(config: Any, root: RunDir, per_seed: dict[int, dict[str, Any]], results: dict[int, Any]) -> Any:
    if not results:
        raise BertfitError(f"{root.path}: every seed had finished before; pass --overwrite to train them again")
    some = results[max(results)]
    metric = config.metric or some.task.default_metric
    best = best_seed(per_seed, metric, some.task.better)
    best_dir = root.path / SEEDS_DIR / f"seed-{best}"
    for name in COPIED:
        if (best_dir / name).is_file():
            shutil.copyfile(best_dir / name, root.file(name))
    for seed in per_seed:  # the best model now lives at the top; no seed keeps a copy of its weights
        (root.path / SEEDS_DIR / f"seed-{seed}" / "model.safetensors").unlink(missing_ok=True)
    summary = {"seeds": sorted(per_seed), "best_seed": best, "selected_on": f"validation {metric}",
               "std": "sample standard deviation (n - 1)", "spread": aggregate(per_seed)}
    metrics = {**per_seed[best], "seeds": summary}
    write_json_atomic(root.file("metrics.json"), metrics)
    result = results.get(best, some)
    if best in results and getattr(result, "report_inputs", None) is not None:
        from bertfit.report import write_report

        inputs = dataclasses.replace(result.report_inputs, seed_spread=summary,
                                     title=f"{result.report_inputs.title} (best of {len(per_seed)} seeds)")
        report = write_report(root.path, inputs)
    else:  # the best seed finished in an earlier attempt: its own report, and the spread in metrics.json
        for name in ("report.md", "report.html"):
            if (best_dir / name).is_file():
                shutil.copyfile(best_dir / name, root.file(name))
        if (best_dir / "plots").is_dir():
            shutil.copytree(best_dir / "plots", root.file("plots"), dirs_exist_ok=True)
        report = root.file("report.md")
    _write_card(root, best_dir, some.task)
    logger.info("best of %d seeds on validation %s: seed %d", len(per_seed), metric, best)
    return dataclasses.replace(result, run_dir=root.path, metrics=metrics, report=Path(report))
