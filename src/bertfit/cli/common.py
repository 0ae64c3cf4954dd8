"""What several commands share: the help of the training settings (evaluate and predict read files
with the same options), the header flags, argument types, and the output-file check."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from bertfit.errors import BertfitError
from bertfit.tasks.table import tasks_help

# Help for every training setting; the flag is the field name with dashes. A task's own settings
# carry their help in their declarations (tasks/settings.py, tasks/declared.py).
TRAIN_HELP: dict[str, str] = {
    "train_file": "labelled training data: .csv, .tsv, .jsonl, .parquet, .arrow/.feather, a `datasets` save_to_disk "
                  "directory (a DatasetDict's splits become train/validation/test), or the task's own format (CoNLL, "
                  "Label Studio JSON, SQuAD JSON) (default: the bundled tweets corpus)",
    "validation_file": "separate validation file (default: a stratified split of --train-file)",
    "test_file": "separate test file (default: a stratified split of --train-file)",
    "text_column": "column with the text (default: first of text, sentence, review, content, tweet); "
                   "with --no-header a 1-based position, e.g. 3",
    "pair_column": "optional second text column, for sentence-pair classification (a position with --no-header)",
    "label_column": "column with the label (default: first of label, sentiment, labels, class, target, rating, "
                    "score; a position with --no-header)",
    "header": "--no-header: the file has no header row, its first row is data; name columns by 1-based position "
              "(--text-column 3 --label-column 2) or with --columns",
    "columns": "names of a headerless file's columns in order, e.g. id,score,text (implies --no-header)",
    "label_map": "map raw labels to classes, e.g. '1,2=negative;3=neutral;4,5=positive'",
    "encoding": "file encoding (default: UTF-8, falling back to latin-1 with a warning when the file is not UTF-8)",
    "skip_bad_rows": "skip malformed rows (counted and reported) instead of stopping at the first one",
    "max_chars": "reject texts longer than this many characters",
    "split": "train/validation/test fractions when only one file is given, e.g. 0.8 0.1 0.1",
    "deduplicate": "drop repeated texts before splitting (texts with conflicting labels are dropped entirely)",
    "max_train_examples": "train on a seeded, stratified subset of this many examples",
    "max_eval_examples": "evaluate on a seeded, stratified subset of this many validation/test examples",
    "model": "pretrained model: a directory, a hub id, or 'minilm-l6' (bundled all-MiniLM-L6-v2)",
    "max_length": "truncate texts to this many tokens (at most 512; question answering: the window of question and context)",
    "truncation": "which tokens of a longer text are kept: head (the first), tail (the last), or head+tail "
                  "(the first --head-tokens and the last that fit; Sun et al. 2019); pairs cut the longer side",
    "head_tokens": "with --truncation head+tail: how many tokens of the head are kept",
    "long_text": "truncate (keep --truncation's tokens) or windows (read every token in overlapping windows; the "
                 "text's prediction aggregates the windows' logits)",
    "window_aggregate": "with --long-text windows: mean or max of the windows' logits",
    "max_windows": "with --long-text windows: at most this many windows per text, spread evenly over it "
                   "(bounds training memory: a text's windows are trained together)",
    "calibrate": "after training, fit a temperature (single-label) or per-label Platt scaling (multi-label) on "
                 "validation, so predicted probabilities are calibrated (--no-calibrate: raw softmax)",
    "split_seed": "seed of the train/validation/test split and of --max-train-examples subsets (default: --seed)",
    "seeds": "train the same job with this many seeds (--seed, --seed+1, ...); metrics as mean +- std, the "
             "model with the best validation score is kept",
    "classifier_input": "'pooled' (tanh pooler, as transformers does) or 'cls' (raw [CLS] vector)",
    "classifier_dropout": "dropout before the classifier (default: the model's hidden dropout)",
    "epochs": "passes over the training data (fractions allowed)",
    "max_steps": "stop after this many optimizer steps (overrides --epochs)",
    "batch_size": "examples per micro-batch, per process when distributed",
    "grad_accum": "micro-batches per optimizer step (global batch = batch-size x processes x grad-accum)",
    "lr": "peak learning rate (the defaults per task come from recorded sweeps: benchmarks/RESULTS.md)",
    "weight_decay": "AdamW weight decay (not applied to biases and LayerNorm)",
    "warmup_ratio": "fraction of steps with linear warmup, then linear decay to 0",
    "max_grad_norm": "clip gradients to this global norm (0: no clipping)",
    "adam_betas": "AdamW betas",
    "adam_eps": "AdamW epsilon",
    "class_weights": "'balanced', or one weight per label in label order, e.g. 1 2 1",
    "eval_every": "evaluate on validation every N steps (0: only at each epoch's end)",
    "eval_each_epoch": "evaluate at the end of every epoch",
    "metric": "validation metric that picks the best checkpoint (default: the task's own: macro_f1, pearson, entity f1 "
              "for ner, f1 for qa)",
    "patience": "stop after this many evaluations without improvement",
    "eval_batch_tokens": "token budget of an evaluation batch",
    "output_dir": "the run directory (model, metrics, report, checkpoints)",
    "seed": "seed for splits, shuffling, dropout and initialisation",
    "log_every": "log training loss every N steps",
    "save_every": "write a resumable checkpoint every N steps (and at every evaluation)",
    "keep_checkpoints": "how many recent resumable checkpoints to keep",
    "device": "auto, cpu, cuda or cuda:N",
    "threads": "CPU threads (default: the cores available to this process)",
    "bf16": "bf16 autocast, fp32 weights (default: on for CUDA with bf16 and CPUs where bf16 measured fast)",
    "compile": "torch.compile the model (pays off on long GPU runs)",
    "gradient_checkpointing": "recompute each encoder layer's activations in the backward: less memory for large "
                              "models or batches, about a third more compute, the same results",
    "explain_report_seconds": "seconds the report may spend at the end of the run explaining the worst mistakes "
                              "and the words behind each class (Integrated Gradients); 0: no explanations section",
    "bucket_window": "batches per length-sorting window (larger: less padding, less randomness)",
    "report_to": "report the run to these trackers as it trains: tensorboard (RUN/tensorboard), mlflow "
                 "(MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME), wandb (WANDB_PROJECT, WANDB_MODE=offline), several "
                 "at once, or none (extra: bertfit[tracking])",
    "problem_type": f"the task ({tasks_help()}) (default: detected from the labels, and logged; --problem-type is "
                    "the same flag)",
    "window_stride": "subwords between the starts of overlapping windows (ner: over a sentence longer than "
                     "max-length; sequence tasks: with --long-text windows) (default: half a window)",
    "label_separator": "splits a multi-label cell ('anger,joy') or a multi-target one ('3.5,1')",
}


def add_distributed_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """--nproc and --dist-timeout: the training commands' data-parallel flags (README: Scaling out)."""
    parser.add_argument("--nproc", type=int, default=None, metavar="N",
                        help="data-parallel training in N processes on this machine (launched with torch.distributed.run; "
                             "gloo on CPUs, NCCL on GPUs; --batch-size is per process). For several machines use "
                             f"torchrun ... -m bertfit {command} (README: Scaling out)")
    parser.add_argument("--dist-timeout", type=float, default=None, metavar="SECONDS",
                        help="distributed runs: how long a rank waits for the others before it stops with an error "
                             "naming the rank that did not answer (default: 300)")


def launch_if_asked(args: argparse.Namespace, command: str) -> int | None:
    """Check --nproc / --dist-timeout; with --nproc N > 1, run this same command line in N processes
    (launch.py) and return their exit status. None: this process trains (alone, or as a torchrun rank)."""
    if args.dist_timeout is not None:
        if not args.dist_timeout > 0:
            raise BertfitError(f"--dist-timeout must be a positive number of seconds, got {args.dist_timeout}")
        os.environ["BERTFIT_DIST_TIMEOUT"] = str(args.dist_timeout)
    if args.nproc is None:
        return None
    if args.nproc < 1:
        raise BertfitError(f"--nproc must be at least 1, got {args.nproc}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise BertfitError("--nproc launches the processes itself; under torchrun leave it out "
                           "(torchrun's --nproc-per-node says how many)")
    if args.nproc == 1:
        return None
    import sys

    from bertfit.train.launch import launch, without_option

    argv = without_option(getattr(args, "argv", None) or sys.argv[1:], "--nproc")
    return launch(args.nproc, argv, args.dist_timeout, command=command)


def add_header_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--header", action=argparse.BooleanOptionalAction, default=True, help=TRAIN_HELP["header"])
    parser.add_argument("--columns", help=TRAIN_HELP["columns"])


def header_options(args: argparse.Namespace) -> dict[str, Any]:
    from bertfit.train.config import parse_columns

    columns = parse_columns(args.columns)
    return {"header": bool(args.header) and columns is None, "columns": columns}


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (a zero or negative budget is refused, not ignored)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a whole number") from None
    if not 1 <= value <= 2**31 - 1:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 2147483647, got {text[:40]}")
    return value


def check_output_file(output: Path, source: Path | None, flag: str, model: str | None = None) -> None:
    """An output file must not be the input (also through links or another spelling), nor a directory,
    nor land in a run or model directory: ``model``'s (the one the command reads) or any other
    (outputs.py)."""
    if source is not None:
        try:
            same = output.resolve() == source.resolve() or (output.exists() and os.path.samefile(output, source))
        except OSError:
            same = False
        if same:
            raise BertfitError(f"{flag} {output} is the input file {source}; bertfit never overwrites its input: "
                               "choose another output file")
    if output.is_dir():
        raise BertfitError(f"{flag} {output} is a directory; give a file name, e.g. {output / 'predictions.csv'}")
    for parent in output.parents:
        if parent.is_dir():
            break
        if parent.exists() or parent.is_symlink():
            raise BertfitError(f"{flag} {output}: {parent} is not a directory")
    from bertfit.predict.outputs import check_not_in_a_model

    check_not_in_a_model(output, flag, [Path(model)] if model and Path(model).is_dir() else [])


def module_doc(name: str) -> str | None:
    """A bertfit module's docstring, read from its source without importing it: the export and serve
    commands show their library module's docstring in --help, and bertfit.predict.export imports torch."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return ast.get_docstring(ast.parse(Path(spec.origin).read_text(encoding="utf-8")), clean=False)


class ProgressBar:
    """The training progress bar (tqdm, on stderr) that `train` and `pretrain` pass as the trainer's
    callback: loss and throughput per log line, one written line per evaluation."""

    def __init__(self, desc: str, quiet: bool, evaluated: str = "validation") -> None:
        self.desc, self.quiet, self.evaluated = desc, quiet, evaluated
        self.bar: Any = None

    def __call__(self, record: dict[str, Any], state: Any, total: int) -> None:
        import sys

        from tqdm.auto import tqdm

        if self.bar is not None and record["kind"] == "train" and state.step < self.bar.n:  # the next seed (--seeds)
            self.bar.close()
            self.bar = None
        if self.bar is None:
            self.bar = tqdm(total=total, initial=state.step if record["kind"] == "train" else 0, unit="step",
                            desc=self.desc, dynamic_ncols=True, file=sys.stderr, disable=self.quiet)
        if record["kind"] == "train":
            self.bar.update(state.step - self.bar.n)
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                                 tok_s=f"{record['tokens_per_s']:.0f}", ex_s=f"{record['examples_per_s']:.1f}")
        else:
            shown = "  ".join(f"{k.replace('_', '-')} {v:.4f}" for k, v in record.items()
                              if k not in ("kind", "split", "step", "epoch") and isinstance(v, float))
            self.bar.write(f"step {record['step']}: {self.evaluated} {shown}{'  (best)' if record.get('best') else ''}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def saved_reading(run: str | os.PathLike) -> dict[str, Any]:
    """How a run read its training file (task.json's "reading": columns, label map, separator), so
    evaluate and predict read the user's files alike; {} for a model without it."""
    import json

    path = Path(run) / "task.json"
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")).get("reading") or {}) if path.is_file() else {}
    except (ValueError, AttributeError, OSError):
        return {}
