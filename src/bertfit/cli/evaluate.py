"""`bertfit evaluate`: score a trained run on a labelled file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bertfit.cli.common import saved_reading, TRAIN_HELP, add_header_arguments, check_output_file, header_options
from bertfit.predict.engines import add_engine_argument

HELP = "score a trained model on a labelled file"
DESCRIPTION = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run directory (or any BERT classifier directory)")
    parser.add_argument("--file", required=True, help="labelled .csv/.tsv/.jsonl file")
    parser.add_argument("--text-column", help=TRAIN_HELP["text_column"])
    parser.add_argument("--pair-column", help=TRAIN_HELP["pair_column"])
    parser.add_argument("--label-column", help=TRAIN_HELP["label_column"])
    parser.add_argument("--label-map", help=TRAIN_HELP["label_map"])
    parser.add_argument("--encoding", help=TRAIN_HELP["encoding"])
    add_header_arguments(parser)
    parser.add_argument("--skip-bad-rows", action="store_true", help=TRAIN_HELP["skip_bad_rows"])
    parser.add_argument("--int8", action="store_true",
                        help="evaluate the int8 model, and report its cost against fp32 on this file "
                             "(label agreement, accuracy and macro-F1 deltas)")
    parser.add_argument("--bf16", action="store_true",
                        help="evaluate under bf16 autocast (PyTorch), and report its cost against fp32 on this file "
                             "as --int8 does")
    add_engine_argument(parser)
    parser.add_argument("--output", help="write the metrics as JSON here")
    parser.add_argument("--update-card", action="store_true",
                        help="add this file's results to the run's model card (README.md; a README you edited is kept "
                             "and the new card is written beside it, README.bertfit.md)")


def run(args: argparse.Namespace) -> int:

    from bertfit.predict.predictor import Predictor
    from bertfit.tasks.sequence import reading_options

    if args.output:  # before the model loads: a refused output costs nothing
        check_output_file(Path(args.output), Path(args.file), "--output", model=args.run)
    classifier = Predictor.load(args.run, int8=args.int8, engine=args.engine, bf16=args.bf16)
    task = classifier.task
    saved = saved_reading(args.run)  # the columns the run was trained on, unless flags say otherwise
    settings = {"text_column": args.text_column or saved.get("text_column"),
                "pair_column": args.pair_column or saved.get("pair_column"),
                "label_column": args.label_column or saved.get("label_column"),
                "skip_bad_rows": args.skip_bad_rows, "encoding": args.encoding, **header_options(args)}
    if not settings["header"]:  # positions given with --no-header are the user's, not the run's names
        settings.update(text_column=args.text_column, pair_column=args.pair_column, label_column=args.label_column)
    options = reading_options({**saved, **({"label_map": args.label_map} if args.label_map else {})})
    examples, report = type(task).read(args.file, {**saved, **settings}, options, known=task)
    task.check_labels(examples, args.file)
    split, outputs = classifier.run_examples(examples)
    targets = split.gold
    metrics = task.evaluate(outputs, targets)
    print(report.summary())
    print(task.format_metrics(metrics))
    mode = "int8" if args.int8 else "bf16" if args.bf16 else None
    if mode:  # int8 and bf16 are approximate: measure what they cost on the user's own data, never stay silent
        reference = Predictor.load(args.run, device=str(classifier.device), engine=args.engine)
        fp32_outputs = reference.run_examples(examples)[1]
        fp32_metrics = task.evaluate(fp32_outputs, targets)
        what, agreement = task.agreement(fp32_outputs, outputs)
        key = task.default_metric
        cost = {"label_agreement": agreement, f"{key}_fp32": fp32_metrics[key], f"{key}_{mode}": metrics[key],
                f"{key}_delta": metrics[key] - fp32_metrics[key]}
        if "accuracy" in metrics:
            cost.update({"accuracy_fp32": fp32_metrics["accuracy"], f"accuracy_{mode}": metrics["accuracy"],
                         "accuracy_delta": metrics["accuracy"] - fp32_metrics["accuracy"]})
        metrics[f"{mode}_cost"] = cost
        print(f"{mode} vs fp32 on these {len(examples)} examples: {what} {100 * agreement:.2f}%, "
              f"{key} {fp32_metrics[key]:.4f} -> {metrics[key]:.4f} ({100 * cost[f'{key}_delta']:+.2f} points)")
    if args.output:
        Path(args.output).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        print(f"metrics written to {args.output}")
    if args.update_card:
        from bertfit.report.card import update_card

        card = update_card(args.run, task, args.file, metrics)
        print(f"model card updated: {card}" if card else f"{args.run} is not a bertfit run: no model card to update")
    return 0


