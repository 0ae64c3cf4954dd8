"""The bertfit command line: the only module that reads argv. Thin over the library.

    bertfit train     fine-tune a model on a labelled file (default: MiniLM on the bundled tweets)
    bertfit evaluate  score a trained run on a labelled file
    bertfit predict   label texts from arguments, a file, or standard input
    bertfit serve     an HTTP server with a web page (extra: bertfit[serve])
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

from bertfit.errors import BertfitError

logger = logging.getLogger("bertfit")

# Help for every training setting; the flag is the field name with dashes.
TRAIN_HELP: dict[str, str] = {
    "train_file": "labelled training data: .csv, .tsv or .jsonl (default: the bundled tweets corpus)",
    "validation_file": "separate validation file (default: a stratified split of --train-file)",
    "test_file": "separate test file (default: a stratified split of --train-file)",
    "text_column": "column with the text (default: first of text, sentence, review, content, tweet)",
    "pair_column": "optional second text column, for sentence-pair classification",
    "label_column": "column with the label (default: first of label, sentiment, labels, class, target, rating, score)",
    "label_map": "map raw labels to classes, e.g. '1,2=negative;3=neutral;4,5=positive'",
    "encoding": "file encoding (default: UTF-8, falling back to latin-1 with a warning when the file is not UTF-8)",
    "skip_bad_rows": "skip malformed rows (counted and reported) instead of stopping at the first one",
    "max_chars": "reject texts longer than this many characters",
    "split": "train/validation/test fractions when only one file is given, e.g. 0.8 0.1 0.1",
    "deduplicate": "drop repeated texts before splitting (texts with conflicting labels are dropped entirely)",
    "max_train_examples": "train on a seeded, stratified subset of this many examples",
    "max_eval_examples": "evaluate on a seeded, stratified subset of this many validation/test examples",
    "model": "pretrained model: a directory, a hub id, or 'minilm-l6' (bundled all-MiniLM-L6-v2)",
    "max_length": "truncate texts to this many tokens (at most 512)",
    "classifier_input": "'pooled' (tanh pooler, as transformers does) or 'cls' (raw [CLS] vector)",
    "classifier_dropout": "dropout before the classifier (default: the model's hidden dropout)",
    "epochs": "passes over the training data (fractions allowed)",
    "max_steps": "stop after this many optimizer steps (overrides --epochs)",
    "batch_size": "examples per micro-batch",
    "grad_accum": "micro-batches per optimizer step (effective batch = batch-size x grad-accum)",
    "lr": "peak learning rate (BERT fine-tuning: 2e-5 to 5e-5)",
    "weight_decay": "AdamW weight decay (not applied to biases and LayerNorm)",
    "warmup_ratio": "fraction of steps with linear warmup, then linear decay to 0",
    "max_grad_norm": "clip gradients to this global norm (0: no clipping)",
    "adam_betas": "AdamW betas",
    "adam_eps": "AdamW epsilon",
    "class_weights": "'balanced', or one weight per label in label order, e.g. 1 2 1",
    "eval_every": "evaluate on validation every N steps (0: only at each epoch's end)",
    "eval_each_epoch": "evaluate at the end of every epoch",
    "metric": "validation metric that picks the best checkpoint: macro_f1, accuracy, weighted_f1, loss",
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
    "bucket_window": "batches per length-sorting window (larger: less padding, less randomness)",
}


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from bertfit.train_config import TrainConfig

    parser.add_argument("--config", metavar="FILE", help="YAML or TOML file of settings (flags override it)")
    parser.add_argument("--quick", action="store_true",
                        help="the README's quick job: 6,000 training examples, 1 epoch (flags still override)")
    parser.add_argument("--resume", metavar="RUN", help="continue a run from its latest intact checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    for f in dataclasses.fields(TrainConfig):
        if f.name == "extra":
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f"{TRAIN_HELP[f.name]} (default: {_show(default)})"
        if f.type in ("bool", "bool | None"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif f.name in ("split", "adam_betas"):
            parser.add_argument(flag, type=float, nargs=3 if f.name == "split" else 2, default=None, help=help_text)
        elif f.name == "class_weights":
            parser.add_argument(flag, nargs="+", default=None, help=help_text)
        elif f.name == "label_map":
            parser.add_argument(flag, default=None, help=help_text)
        else:
            kind = {"int": int, "int | None": int, "float": float, "float | None": float}.get(str(f.type), str)
            parser.add_argument(flag, type=kind, default=None, metavar=f.name.upper(), help=help_text)


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return " ".join(str(v) for v in value)
    return str(value)


def _train(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from bertfit.data import parse_label_map
    from bertfit.job import fine_tune
    from bertfit.metrics import format_metrics_table
    from bertfit.train_config import TrainConfig, read_config_file, resolve_config

    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if f.name != "extra"}
    if flags["label_map"] is not None:
        flags["label_map"] = parse_label_map(flags["label_map"])
    if flags["class_weights"] is not None:
        values = flags["class_weights"]
        flags["class_weights"] = "balanced" if values == ["balanced"] else [_float(v, "--class-weights") for v in values]
    if args.resume:
        flags["output_dir"] = args.resume
    file_values = read_config_file(args.config) if args.config else None
    if file_values and isinstance(file_values.get("label_map"), str):
        file_values["label_map"] = parse_label_map(file_values["label_map"])
    config = resolve_config(file_values, flags, quick=args.quick)

    bar = None

    def progress(record: dict[str, Any], state, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, initial=state.step if record["kind"] == "train" else 0, unit="step",
                       desc="fine-tuning", dynamic_ncols=True, file=sys.stderr, disable=args.quiet)
        if record["kind"] == "train":
            bar.update(state.step - bar.n)
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                            tok_s=f"{record['tokens_per_s']:.0f}", ex_s=f"{record['examples_per_s']:.1f}")
        else:
            bar.write(f"step {record['step']}: validation loss {record['loss']:.4f}  accuracy {record['accuracy']:.4f}"
                      f"  macro-F1 {record['macro_f1']:.4f}{'  (best)' if record.get('best') else ''}")

    result = fine_tune(config, resume=bool(args.resume), overwrite=args.overwrite, callback=progress)
    if bar is not None:
        bar.close()
    for split in ("validation", "test"):
        if split in result.metrics:
            print(f"\n{split} ({result.metrics[split]['n']} examples)")
            print(format_metrics_table(result.metrics[split]))
    print(f"\nrun directory: {result.run_dir}")
    print(f"report: {result.report}")
    print(f"wall time: {result.wall_time_s:.0f} s")
    return 0


def _float(value: str, flag: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise BertfitError(f"{flag}: {value!r} is not a number (use 'balanced' or one number per label)") from None


def add_engine_argument(parser: argparse.ArgumentParser) -> None:
    # The choices are bertfit.predict.ENGINES, written out: importing predict would import torch,
    # and the CLI parses (and answers --help) without it. tests/test_cli.py keeps the two equal.
    parser.add_argument("--engine", choices=("auto", "pytorch", "onnxruntime"), default="auto",
                        help="what runs the model: auto (default) is ONNX Runtime on the CPU when installed -- the "
                             "same fp32 logits, exported once into the cache (~2 s), about half the latency -- "
                             "else PyTorch; a GPU always uses PyTorch")


def _add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run directory (or any BERT classifier directory)")
    parser.add_argument("texts", nargs="*", help="texts to classify (put -- before them when one starts with '-'); none, or '-', reads one text per line from stdin")
    parser.add_argument("--file", help="classify a .csv/.tsv/.jsonl file; writes it back with label and probabilities")
    parser.add_argument("--output", help="where to write the labelled file (default: FILE with .predictions before the suffix)")
    parser.add_argument("--text-column", help="text column of --file (default: text, sentence, review, content, tweet)")
    parser.add_argument("--pair-column", help="second text column of --file, for pair models")
    parser.add_argument("--encoding", help="encoding of --file (default: UTF-8, latin-1 fallback)")
    parser.add_argument("--int8", action="store_true", help="int8 dynamic quantization (faster on CPU; accuracy cost in benchmarks/RESULTS.md)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add_engine_argument(parser)
    parser.add_argument("--batch-tokens", type=int, default=8192, help="token budget of a prediction batch")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")


def _predict(args: argparse.Namespace) -> int:
    from bertfit.predict import TextClassifier

    classifier = TextClassifier.load(args.run, int8=args.int8, device=args.device, engine=args.engine)
    if args.int8:
        logger.warning("int8 is approximate (tweets: ~99%% of labels as fp32, accuracy within ~0.3 points; "
                       "benchmarks/RESULTS.md); measure it on your data: bertfit evaluate %s --int8 --file LABELLED",
                       args.run)
    if args.file:
        return _predict_file(classifier, args)
    texts = args.texts
    if not texts or texts == ["-"]:
        texts = [line.rstrip("\r\n") for line in sys.stdin]
        args.json = True if not sys.stdout.isatty() else args.json
    predictions = classifier.predictions(texts, max_tokens=args.batch_tokens)
    for text, p in zip(texts, predictions):
        if args.json:
            print(json.dumps({"text": text, "label": p.label, "confidence": round(p.confidence, 6),
                              "probabilities": {k: round(v, 6) for k, v in p.probabilities.items()}}, ensure_ascii=False))
        else:
            shown = text if len(text) <= 80 else text[:77] + "..."
            print(f"{p.label:<12} {p.confidence:6.3f}  {shown}")
    return 0


def _predict_file(classifier, args: argparse.Namespace) -> int:
    from bertfit.data import TEXT_COLUMNS, read_table, write_table

    table = read_table(args.file, encoding=args.encoding)
    lowered = {c.lower(): c for c in table.columns}  # the same matching as training: exact, then any case
    column = args.text_column or next((lowered[c] for c in TEXT_COLUMNS if c in lowered), None)
    if column is None or column not in table.columns:
        raise BertfitError(f"{args.file}: no text column {args.text_column or '(text, sentence, review, content, tweet)'}; "
                           f"columns found: {', '.join(table.columns)}; pass --text-column")
    if args.pair_column and args.pair_column not in table.columns:
        raise BertfitError(f"{args.file}: no column {args.pair_column!r}; columns found: {', '.join(table.columns)}")
    texts = ["" if row.get(column) is None else str(row.get(column)) for row in table.rows]
    pairs = [str(row.get(args.pair_column) or "") for row in table.rows] if args.pair_column else None
    empty = sum(1 for t in texts if not t.strip())
    if empty:
        logger.warning("%s: %d rows have an empty %r; they are still labelled (from [CLS] [SEP] alone)", args.file, empty, column)
    predictions = classifier.predictions(texts, pairs, max_tokens=args.batch_tokens)
    extra_columns = ["label", "confidence"] + [f"prob_{label}" for label in classifier.labels]
    extra_rows = [{"label": p.label, "confidence": round(p.confidence, 6),
                   **{f"prob_{k}": round(v, 6) for k, v in p.probabilities.items()}} for p in predictions]
    source = Path(args.file)
    output = Path(args.output) if args.output else source.with_name(f"{source.stem}.predictions{source.suffix}")
    write_table(table, output, extra_columns, extra_rows)
    print(f"labelled {len(predictions)} rows -> {output}")
    return 0


def _add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run directory (or any BERT classifier directory)")
    parser.add_argument("--file", required=True, help="labelled .csv/.tsv/.jsonl file")
    parser.add_argument("--text-column", help=TRAIN_HELP["text_column"])
    parser.add_argument("--pair-column", help=TRAIN_HELP["pair_column"])
    parser.add_argument("--label-column", help=TRAIN_HELP["label_column"])
    parser.add_argument("--label-map", help=TRAIN_HELP["label_map"])
    parser.add_argument("--encoding", help=TRAIN_HELP["encoding"])
    parser.add_argument("--skip-bad-rows", action="store_true", help=TRAIN_HELP["skip_bad_rows"])
    parser.add_argument("--int8", action="store_true",
                        help="evaluate the int8 model, and report its cost against fp32 on this file "
                             "(label agreement, accuracy and macro-F1 deltas)")
    add_engine_argument(parser)
    parser.add_argument("--output", help="write the metrics as JSON here")


def _evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from bertfit.data import check_known_labels, parse_label_map, read_examples
    from bertfit.metrics import classification_metrics, format_metrics_table
    from bertfit.predict import TextClassifier

    classifier = TextClassifier.load(args.run, int8=args.int8, engine=args.engine)
    examples, report = read_examples(
        args.file, text_column=args.text_column, pair_column=args.pair_column, label_column=args.label_column,
        label_map=parse_label_map(args.label_map) if args.label_map else None, skip_bad_rows=args.skip_bad_rows,
        encoding=args.encoding)
    check_known_labels(examples, classifier.labels, args.file)
    pairs = [e.text_pair or "" for e in examples] if args.pair_column else None
    proba = classifier.predict_proba([e.text for e in examples], pairs)
    index = {label: i for i, label in enumerate(classifier.labels)}
    y = [index[e.label] for e in examples]
    loss = float(-np.log(np.clip(proba[np.arange(len(y)), y], 1e-12, None)).mean())
    metrics = classification_metrics(y, proba.argmax(axis=1).tolist(), classifier.labels, loss=loss)
    print(report.summary())
    print(format_metrics_table(metrics))
    if args.int8:  # int8 is approximate: measure what it costs on the user's own data, never stay silent
        reference = TextClassifier.load(args.run, device="cpu", engine=args.engine)
        fp32 = reference.predict_proba([e.text for e in examples], pairs).argmax(axis=1)
        fp32_metrics = classification_metrics(y, fp32.tolist(), classifier.labels)
        cost = {"label_agreement": float((fp32 == proba.argmax(axis=1)).mean()),
                "accuracy_fp32": fp32_metrics["accuracy"], "accuracy_int8": metrics["accuracy"],
                "accuracy_delta": metrics["accuracy"] - fp32_metrics["accuracy"],
                "macro_f1_fp32": fp32_metrics["macro_f1"], "macro_f1_delta": metrics["macro_f1"] - fp32_metrics["macro_f1"]}
        metrics["int8_cost"] = cost
        print(f"int8 vs fp32 on these {len(y)} examples: labels agree {100 * cost['label_agreement']:.2f}%, "
              f"accuracy {cost['accuracy_fp32']:.4f} -> {cost['accuracy_int8']:.4f} "
              f"({100 * cost['accuracy_delta']:+.2f} points), macro-F1 {100 * cost['macro_f1_delta']:+.2f} points")
    if args.output:
        Path(args.output).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        print(f"metrics written to {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bertfit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="fine-tune a model on labelled texts",
                           description="Fine-tune a BERT encoder for text classification. Settings resolve as "
                                       "defaults -> --config file -> flags; the result is saved in the run directory.")
    _add_train_arguments(train)
    train.set_defaults(handler=_train)

    evaluate = sub.add_parser("evaluate", help="score a trained model on a labelled file")
    _add_evaluate_arguments(evaluate)
    evaluate.set_defaults(handler=_evaluate)

    predict = sub.add_parser("predict", help="label texts with a trained model")
    _add_predict_arguments(predict)
    predict.set_defaults(handler=_predict)

    from bertfit import export, serve

    export_parser = sub.add_parser("export", help="export a trained model to ONNX, optionally int8 (extra: bertfit[export])",
                                   description=export.__doc__)
    export.add_arguments(export_parser)
    export_parser.set_defaults(handler=export.command)

    serve_parser = sub.add_parser("serve", help="serve a trained model over HTTP (extra: bertfit[serve])",
                                  description=serve.__doc__)
    serve.add_arguments(serve_parser)
    serve_parser.set_defaults(handler=serve.command)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras and getattr(args, "command", None) == "predict":
        # argparse gives texts that follow an option (`predict RUN --json "a" "b"`) back as extras;
        # they are texts. Before a `--`, anything shaped like an option is still a mistake.
        before, _, after = (extras[: extras.index("--")], None, extras[extras.index("--") + 1 :]) \
            if "--" in extras else (extras, None, [])
        unknown = [a for a in before if a.startswith("--")]
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.texts = [t for t in args.texts if t != "--"] + before + after
    elif extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        return int(args.handler(args) or 0)
    except BertfitError as exc:
        print(f"bertfit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("bertfit: interrupted (resume with --resume RUN)", file=sys.stderr)
        return 130
