"""`bertfit pretrain` as a library call: corpus → NSP pairs or packed sequences → the task-agnostic
Trainer (checkpoints, exact resume, evaluation on the held-out slice, best-model selection, early
stopping) → a run directory that is a transformers BertForPreTraining / BertForMaskedLM checkpoint.

The run directory is also a base model: ``bertfit train --model RUN`` fine-tunes any task from the
further-pretrained encoder (the loader sets the pretraining heads aside).

Under torchrun (or ``bertfit pretrain --nproc N``) every process calls ``pretrain``, as ``fine_tune``:
each builds the same sequences from the corpus (a pure function of the seed), the trainer cuts the
global batches across the ranks (masks drawn from (seed, epoch, sequence index), so they do not
depend on which rank draws them; the masked-token and sequence counts normalising the loss are
summed over the ranks), the held-out evaluations are sharded and gathered, and rank 0 alone
decides about and writes the run directory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from bertfit.errors import BertfitError, ConfigError

logger = logging.getLogger("bertfit.pretrain")

SETTINGS_FILE = "pretrain_config.json"
# Held-out sentences whose masked fills the report shows before and after pretraining.
FILL_EXAMPLES = 5


@dataclass(frozen=True)
class PretrainSettings:
    """What pretraining needs beyond the training settings (TrainConfig): the corpus and the objectives."""

    corpus: tuple[str, ...] = ()
    corpus_format: str = "auto"  # auto | sentences | documents (pretraining/corpus.py)
    corpus_column: str | None = None  # a CSV/TSV/JSONL column
    encoding: str | None = None
    max_chars: int = 20_000
    nsp: bool = True
    whole_word_masking: bool = False
    mlm_probability: float = 0.15
    short_seq_prob: float = 0.1
    validation_fraction: float = 0.05
    max_validation_documents: int = 2_000
    max_documents: int | None = None  # a seeded subset of the corpus' documents

    def __post_init__(self) -> None:
        object.__setattr__(self, "corpus", tuple(str(p) for p in self.corpus))
        if not 0 < self.mlm_probability < 1:
            raise ConfigError(f"mlm_probability must be in (0, 1), got {self.mlm_probability}")
        if not 0 <= self.short_seq_prob <= 1:
            raise ConfigError(f"short_seq_prob must be in [0, 1], got {self.short_seq_prob}")
        if not 0 <= self.validation_fraction < 1:
            raise ConfigError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["corpus"] = list(self.corpus)
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "PretrainSettings":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (tuple(v) if k == "corpus" else v) for k, v in raw.items() if k in known})


@dataclass
class PretrainResult:
    run_dir: Path
    metrics: dict[str, Any]  # held-out metrics of the best model (and of the starting model: "before")
    report: Path
    wall_time_s: float
    fills: list[dict[str, Any]] = field(default_factory=list)
    settings: PretrainSettings | None = None  # the run's (a resumed run's saved ones, not the caller's)


def _open_run(run: Any, config: Any, settings: PretrainSettings, resume: bool, overwrite: bool) -> tuple[Any, PretrainSettings, bool, bool]:
    """(config, settings, resume, replace) for this run directory, decided as fine_tune decides."""
    from bertfit.train.config import TrainConfig
    from bertfit.train.run_lock import hold_run
    from bertfit.train.setup import check_resume_target, decide_run

    check_resume_target(run, resume, overwrite)
    run.check_is_run()  # a file, or a folder bertfit did not create, is refused before anything is read
    hold_run(run.path, "pretrain")  # one writer per run (released when pretrain() ends)
    saved_config = saved_settings = None
    if run.file("train_config.json").exists() and run.file(SETTINGS_FILE).exists():
        try:
            saved_config = TrainConfig.from_dict(json.loads(run.file("train_config.json").read_text(encoding="utf-8")))
            saved_settings = PretrainSettings.from_dict(json.loads(run.file(SETTINGS_FILE).read_text(encoding="utf-8")))
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            raise BertfitError(f"{run.path}: its settings are unreadable ({exc}); pass --overwrite to start again") from None
    same = saved_config is not None and saved_config.to_dict() == config.to_dict() and saved_settings == settings
    use_saved, resume, replace = decide_run(run, saved_config, same, resume, overwrite)
    if use_saved:
        return saved_config.replace(output_dir=config.output_dir), saved_settings, resume, replace
    return config, settings, resume, replace


def fill_examples(model: Any, tokenizer: Any, texts: Sequence[str], seed: int) -> list[dict[str, Any]]:
    """One word of each text masked (seeded), with the model's top 3 fillers."""
    import numpy as np

    from bertfit.tasks.pretrain.use import fill_mask

    rng = np.random.default_rng([seed, 5])
    out = []
    for text in texts:
        words = text.split()
        candidates = [i for i, w in enumerate(words) if w.isalpha() and len(w) > 2]
        if not candidates:
            continue
        i = int(rng.choice(candidates))
        masked = " ".join(words[:i] + [tokenizer_mask(tokenizer)] + words[i + 1:])
        top = fill_mask(model, tokenizer, masked, top_k=3)
        if top and isinstance(top[0], dict):
            out.append({"text": masked, "answer": words[i],
                        "fills": [(c["token_str"], round(c["score"], 4)) for c in top]})
        if len(out) >= FILL_EXAMPLES:
            break
    return out


def tokenizer_mask(tokenizer: Any) -> str:
    return tokenizer.id_to_token(tokenizer.mask_id)


def pretrain(config: Any, settings: PretrainSettings, *, resume: bool = False, overwrite: bool = False,
             callback: Callable[[dict[str, Any], Any, int], None] | None = None) -> PretrainResult:
    """Further-pretrain ``config.model`` on ``settings.corpus``; see the module docstring."""
    from bertfit.train import dist
    from bertfit.train.setup import run_job, select_device

    started = time.perf_counter()
    from bertfit.train.run_lock import release_run

    d = dist.init(select_device(config.device), command="pretrain")
    try:
        return run_job(d, lambda: _pretrain(config, settings, d, started, resume, overwrite, callback))
    finally:
        release_run(config.output_dir)  # taken by _open_run (rank 0)


def _pretrain(config: Any, settings: PretrainSettings, d: Any, started: float, resume: bool, overwrite: bool,
              callback: Callable[[dict[str, Any], Any, int], None] | None) -> PretrainResult:
    from bertfit.train import dist
    from bertfit.artifact import write_task
    from bertfit.weights import load_pretraining, save_model
    from bertfit.hub import resolve_model
    from bertfit.train.setup import configure_threads, select_device
    from bertfit.tasks.pretrain.prepare import prepare_corpus
    from bertfit.train.run_dir import RunDir
    from bertfit.io import write_json_atomic
    from bertfit.tasks.pretrain.task import Pretrain
    from bertfit.tokenizer import WordPieceTokenizer
    from bertfit.train.loop import Trainer, seed_everything
    from bertfit.train.tracked import finish_tracking, open_tracking, start_tracking, write_run_documents

    run = RunDir(config.output_dir)

    def decide() -> tuple[Any, PretrainSettings, bool, bool]:
        return _open_run(run, config, settings, resume, overwrite)

    # rank 0 reads the run directory; every rank follows its decision (or raises its error)
    config, settings, resume, replace = d.on_writer(decide, "checking the run directory")
    threads = configure_threads(config.threads)
    device = dist.local_device(select_device(config.device))
    seed_everything(config.seed)

    model_dir = resolve_model(config.model)
    tokenizer = WordPieceTokenizer.from_dir(model_dir)
    data = prepare_corpus(settings.corpus, tokenizer, max_length=config.max_length, nsp=settings.nsp, seed=config.seed,
                          fmt=settings.corpus_format, column=settings.corpus_column, encoding=settings.encoding,
                          max_chars=settings.max_chars, short_seq_prob=settings.short_seq_prob,
                          validation_fraction=settings.validation_fraction,
                          max_validation_documents=settings.max_validation_documents, max_documents=settings.max_documents)
    task = Pretrain(nsp=settings.nsp)
    task.set_masker(Pretrain.masker_for(tokenizer, config.seed, settings.whole_word_masking, settings.mlm_probability))
    train = task.encode(tokenizer, data.train, config.max_length)
    validation = task.encode(tokenizer, data.validation, config.max_length)
    model = load_pretraining(model_dir, nsp=settings.nsp).to(device)
    if model.fresh_head:
        logger.info("%s has no (complete) pretraining head: the missing parts start fresh; the masked-LM decoder is the "
                    "model's own word embeddings (tied)", config.model)
    d.broadcast_module(model, "sending rank 0's initial weights")  # the fresh head too: one start for all

    def held_out(m: Any) -> dict[str, Any]:
        """The held-out metrics of ``m``: each rank evaluates a share of the sequences, gathered in order."""
        stats = d.map_sharded(len(validation), lambda idx: task.evaluation_outputs(
            m, validation, tokenizer.pad_id, device, config.eval_batch_tokens, indices=idx), "the held-out evaluation")
        return task.evaluate(stats, validation.gold)

    before: dict[str, Any] = {}
    fills_before: list[dict[str, Any]] = []
    if not resume and len(validation):
        before = held_out(model)
        if d.is_writer:  # only rank 0's report shows them
            fills_before = fill_examples(model.cpu(), tokenizer, data.validation_texts, config.seed)  # on the CPU
        logger.info("before pretraining, held out: %s", "  ".join(f"{k} {before[k]:.4f}" for k in task.headline_metrics
                                                                    if isinstance(before.get(k), float)))

    def create() -> None:
        run.create(replace=replace)
        write_json_atomic(run.file("train_config.json"), config.to_dict())
        write_json_atomic(run.file(SETTINGS_FILE), settings.to_dict())
        write_json_atomic(run.file("data.json"), data.summary)
        if before:
            write_json_atomic(run.file("before.json"), {"metrics": before, "fills": fills_before})

    d.on_writer(create, "creating the run directory")

    def save_best(m: Any, step: int) -> None:
        save_model(m, run.path, tokenizer=tokenizer)
        write_task(run.path, task, max_length=config.max_length, reading={})

    tracking = open_tracking(run, config.report_to, d.is_writer, callback)  # the trainer's one hook: progress + trackers
    trainer = Trainer(model, config, train, validation if len(validation) else None, run, pad_id=tokenizer.pad_id,
                      device=device, task=task, on_save_best=save_best, callback=tracking)
    if resume:
        trainer.resume_latest()
        saved_before = run.file("before.json")
        if d.is_writer and saved_before.exists():
            raw = json.loads(saved_before.read_text(encoding="utf-8"))
            before, fills_before = raw.get("metrics", {}), raw.get("fills", [])
    else:
        logger.info("pretraining on %s with %d threads%s: %d sequences, %d steps", device, threads,
                    f" in each of {d.world} processes" if d.distributed else "", len(train), trainer.total_steps)
    if d.is_writer:
        write_json_atomic(run.file("precision.json"), trainer.precision.record())
    start_tracking(tracking, f"bertfit pretrain: {config.model} on {', '.join(Path(p).name for p in settings.corpus)}",
                   {**_training_settings(config), "report_to": config.report_to, "pretrain": settings.to_dict()},
                   trainer, resume)
    try:
        result = trainer.train()
    except BaseException:
        tracking.finish(failed=True)  # what the trackers have is kept; the run resumes into them
        raise

    # The best weights: rank 0 reads them from the run directory and sends them to the others.
    best = load_pretraining(run.path, nsp=settings.nsp, require_head=True).to(device) if d.is_writer else trainer.model
    d.broadcast_module(best, "sending the best weights")
    metrics: dict[str, Any] = {}
    fills_after: list[dict[str, Any]] = []
    if len(validation):
        metrics["validation"] = held_out(best)
        if before:
            metrics["before"] = before
        if d.is_writer:
            fills_after = fill_examples(best.cpu(), tokenizer, data.validation_texts, config.seed)
    wall = time.perf_counter() - started
    if not d.is_writer:
        return PretrainResult(run.path, metrics, run.file("report.md"), wall, settings=settings)
    fills = [{**b, "fills_after": a["fills"]} for b, a in zip(fills_before, fills_after)] if fills_before else \
        [{**a, "fills_after": a.pop("fills")} for a in fills_after]
    write_json_atomic(run.file("metrics.json"), metrics or {"no_metrics": "no held-out slice"})
    write_json_atomic(run.file("fills.json"), fills)
    report = _write_report(run, config, settings, data.summary, result, metrics, fills, task, wall)
    write_run_documents(run, task, trainer, result, wall, settings={"pretrain": settings.to_dict()})
    finish_tracking(tracking, run, metrics, wall)
    return PretrainResult(run.path, metrics, report, wall, fills, settings=settings)


# The TrainConfig settings a pretraining run reads (the model, the optimiser, evaluation, the run), by
# name: the report shows these and no labelled-data or classifier setting (a new task's declared
# settings stay out without an edit here). tests/test_pretraining_train.py checks each is a TrainConfig field.
PRETRAINING_READS = ("model", "max_length", "epochs", "max_steps", "batch_size", "grad_accum", "lr", "weight_decay",
                     "warmup_ratio", "max_grad_norm", "adam_betas", "adam_eps", "eval_every", "eval_each_epoch", "metric",
                     "patience", "eval_batch_tokens", "output_dir", "seed", "log_every", "save_every", "keep_checkpoints",
                     "device", "threads", "bf16", "compile", "gradient_checkpointing", "bucket_window")


def _training_settings(config: Any) -> dict[str, Any]:
    """The run's TrainConfig settings that pretraining reads (the report's settings)."""
    values = config.to_dict()
    return {name: values[name] for name in PRETRAINING_READS}


def _write_report(run: Any, config: Any, settings: PretrainSettings, summary: dict[str, Any], result: Any,
                  metrics: dict[str, Any], fills: list[dict[str, Any]], task: Any, wall: float) -> Path:
    from bertfit.report import ReportInputs, write_report

    final = dict(metrics)
    if "validation" in final:
        final["validation"] = {**final["validation"], "fill_examples": fills}
    best = None
    if result.state.best_step is not None:
        best = {"step": result.state.best_step, "metric": config.metric or task.default_metric,
                "value": result.state.best_value}
    files = ", ".join(Path(p).name for p in settings.corpus)
    inputs = ReportInputs(
        title=f"bertfit pretrain: {config.model} on {files}", model_name=config.model, labels=task.labels,
        data_summary=summary, settings={**_training_settings(config), **{f"pretrain.{k}": v for k, v in settings.to_dict().items()}},
        history=result.history, final_metrics={k: v for k, v in final.items() if k == "validation"}, mistakes=[],
        best=best, wall_time_s=wall, notes=list(result.notes), task=task, outputs={})
    if "before" in metrics:
        inputs.notes.insert(0, "before pretraining, the same held-out slice and masks: perplexity "
                               f"{metrics['before']['perplexity']:.2f}, masked-token accuracy "
                               f"{metrics['before']['mlm_accuracy']:.3f}" + (
                                   f", NSP accuracy {metrics['before']['nsp_accuracy']:.3f}" if task.nsp else ""))
    return write_report(run.path, inputs)
