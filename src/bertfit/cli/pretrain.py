"""`bertfit pretrain`: continue BERT's own pretraining (masked LM + next-sentence prediction) on your text."""

from __future__ import annotations

import argparse
from typing import Any

HELP = "further-pretrain a model on unlabelled text (masked LM + next-sentence prediction)"
DESCRIPTION = """Continue BERT's pretraining on your own unlabelled text, then fine-tune from the result:

    bertfit pretrain --corpus tweets.txt more.txt.gz --output-dir runs/pretrain
    bertfit train --model runs/pretrain --train-file labelled.csv

Corpus files: one sentence per line with a blank line between documents (BERT's format), or one
document per line (split into sentences by a rule-based splitter), gzipped or not, or a column of a
CSV/TSV/JSON-lines file (--corpus-column). Masked LM follows BERT (15% of tokens; 80% [MASK], 10%
random, 10% unchanged; masks drawn afresh each epoch); NSP pairs follow Google's
create_pretraining_data.py. --no-nsp trains masked LM alone on packed full-length sequences. The run
directory loads in transformers as BertForPreTraining (BertForMaskedLM with --no-nsp)."""

# TrainConfig fields this command exposes (the others keep their defaults), with pretraining's help.
TRAIN_FLAGS = {
    "model": (str, "the model to continue from: a name (minilm-l6), directory or hub id (default: minilm-l6)"),
    "output_dir": (str, "run directory (default: runs/pretrain)"),
    "max_length": (int, "tokens per sequence (default: 128)"),
    "epochs": (float, "passes over the corpus (default: 3)"),
    "max_steps": (int, "stop after this many optimizer steps (overrides --epochs)"),
    "batch_size": (int, "sequences per batch, per process with --nproc / torchrun (default: 32)"),
    "grad_accum": (int, "batches per optimizer step (default: 1)"),
    "lr": (float, "peak learning rate (default: 5e-5)"),
    "warmup_ratio": (float, "share of the steps with linear warmup (default: 0.1)"),
    "weight_decay": (float, "AdamW weight decay (default: 0.01)"),
    "eval_every": (int, "evaluate on the held-out slice every N steps (default: 0 = each epoch)"),
    "metric": (str, "what selects the best checkpoint: loss, mlm_loss, perplexity, mlm_accuracy, nsp_accuracy (default: loss)"),
    "patience": (int, "stop after N evaluations without improvement (default: none)"),
    "save_every": (int, "steps between resumable checkpoints (default: 200)"),
    "seed": (int, "seed of the NSP pairs, masks, batches and initialisation (default: 0)"),
    "device": (str, "auto, cpu or cuda (default: auto)"),
    "threads": (int, "CPU threads (default: all this process may use)"),
    "log_every": (int, "steps between log lines (default: 10)"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", nargs="+", metavar="FILE", help="text files (.txt, .gz), or CSV/TSV/JSONL files")
    parser.add_argument("--corpus-format", choices=("auto", "sentences", "documents"), default=None,
                        help="plain text: 'sentences' (one per line, blank line between documents), 'documents' (one "
                             "per line); auto: 'sentences' if the file has blank lines (default: auto)")
    parser.add_argument("--corpus-column", help="the text column of CSV/TSV/JSONL corpus files (default: text, ...)")
    parser.add_argument("--encoding", help="corpus encoding (default: UTF-8, else latin-1 with a warning)")
    parser.add_argument("--no-nsp", action="store_true", help="masked LM alone, on packed full-length sequences")
    parser.add_argument("--whole-word-masking", action="store_true", help="mask all pieces of a word together")
    parser.add_argument("--mlm-probability", type=float, help="share of tokens predicted (default: 0.15)")
    parser.add_argument("--short-seq-prob", type=float, help="NSP: share of pairs with a shorter target length (default: 0.1)")
    parser.add_argument("--validation-fraction", type=float, help="held-out share of documents (default: 0.05, at most 2,000)")
    parser.add_argument("--max-documents", type=int, help="use a seeded subset of this many documents")
    parser.add_argument("--resume", metavar="RUN", help="continue a run from its latest intact checkpoint, with its settings")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="bf16 autocast (default: auto)")
    from bertfit.cli.common import add_distributed_arguments

    add_distributed_arguments(parser, "pretrain")
    for name, (kind, text) in TRAIN_FLAGS.items():
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=None, help=text)
    from bertfit.cli.common import TRAIN_HELP
    from bertfit.tracking import CHOICES as TRACKERS

    parser.add_argument("--report-to", nargs="+", choices=TRACKERS, default=None, metavar="TRACKER",
                        help=TRAIN_HELP["report_to"] + " (default: none)")


def run(args: argparse.Namespace) -> int:
    import os

    from bertfit.cli.common import ProgressBar, launch_if_asked

    launched = launch_if_asked(args, "pretrain")
    if launched is not None:
        return launched
    from bertfit.errors import ConfigError
    from bertfit.train.pretrain import PretrainSettings, pretrain
    from bertfit.train.config import TrainConfig

    values: dict[str, Any] = {"output_dir": "runs/pretrain"}
    values.update({name: getattr(args, name) for name in TRAIN_FLAGS if getattr(args, name) is not None})
    if args.bf16 is not None:
        values["bf16"] = args.bf16
    if args.report_to is not None:
        values["report_to"] = args.report_to
    if args.resume:
        values["output_dir"] = args.resume
    elif not args.corpus:
        raise ConfigError("pass --corpus FILE (one or more text, .gz, CSV/TSV or JSONL files), or --resume RUN")
    config = TrainConfig(**values)
    options = {"corpus": tuple(args.corpus or ()), "nsp": not args.no_nsp, "whole_word_masking": args.whole_word_masking}
    for name in ("corpus_format", "corpus_column", "encoding", "mlm_probability", "short_seq_prob",
                 "validation_fraction", "max_documents"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    settings = PretrainSettings(**options)

    progress = ProgressBar("pretraining", args.quiet, evaluated="held out")
    result = pretrain(config, settings, resume=bool(args.resume), overwrite=args.overwrite, callback=progress)
    progress.close()
    if os.environ.get("RANK", "0") != "0":  # a distributed job: rank 0 prints the results
        return 0
    from bertfit.tasks.pretrain.task import Pretrain

    task = Pretrain(nsp=(result.settings or settings).nsp)  # a resumed run's own objectives
    if "before" in result.metrics:
        print("\nheld out, before pretraining")
        print(task.format_metrics(result.metrics["before"]))
    if "validation" in result.metrics:
        print("\nheld out, after (best checkpoint)")
        print(task.format_metrics(result.metrics["validation"]))
    print(f"\nrun directory: {result.run_dir}")
    print(f"report: {result.report}")
    print(f"fine-tune from it: bertfit train --model {result.run_dir} --train-file YOUR.csv")
    print(f"wall time: {result.wall_time_s:.0f} s")
    return 0
