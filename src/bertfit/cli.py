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
import os
import sys
from pathlib import Path
from typing import Any

from bertfit.engines import add_engine_argument
from bertfit.errors import BertfitError

logger = logging.getLogger("bertfit")

# Help for every training setting; the flag is the field name with dashes.
TRAIN_HELP: dict[str, str] = {
    "train_file": "labelled training data: .csv, .tsv or .jsonl (default: the bundled tweets corpus)",
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
    "problem_type": "single-label, multi-label or regression (default: detected from the labels, and logged)",
    "label_separator": "splits a multi-label cell ('anger,joy') or a multi-target one ('3.5,1')",
    "threshold": "multi-label: one fixed decision threshold for every label (default: tuned per label on validation)",
}


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from bertfit.train_config import TrainConfig

    parser.add_argument("--config", metavar="FILE", help="YAML or TOML file of settings (flags override it)")
    parser.add_argument("--quick", action="store_true",
                        help="the README's quick job: 6,000 training examples, 1 epoch (flags still override)")
    parser.add_argument("--resume", metavar="RUN", help="continue a run from its latest intact checkpoint, with the "
                        "settings saved in it (settings given with --resume that differ are ignored, with a warning)")
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
        elif f.name in ("label_map", "columns"):
            parser.add_argument(flag, default=None, help=help_text)
        elif f.name == "problem_type":
            from bertfit.train_config import PROBLEM_TYPES

            parser.add_argument(flag, choices=PROBLEM_TYPES, default=None, help=help_text)
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
    from bertfit.train_config import QUICK, TrainConfig, parse_columns, read_config_file, resolve_config

    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if f.name != "extra"}
    if flags["label_map"] is not None:
        flags["label_map"] = parse_label_map(flags["label_map"])
    flags["columns"] = parse_columns(flags["columns"])
    if flags["class_weights"] is not None:
        values = flags["class_weights"]
        flags["class_weights"] = "balanced" if values == ["balanced"] else [_float(v, "--class-weights") for v in values]
    if args.resume:
        flags["output_dir"] = args.resume
    file_values = read_config_file(args.config) if args.config else None
    if file_values and isinstance(file_values.get("label_map"), str):
        file_values["label_map"] = parse_label_map(file_values["label_map"])
    config = resolve_config(file_values, flags, quick=args.quick)
    if args.resume:
        given = {k for k, v in flags.items() if v is not None} | set(file_values or {}) | (set(QUICK) if args.quick else set())
        _warn_ignored_on_resume(args.resume, given - {"output_dir"}, config)

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
            shown = "  ".join(f"{k.replace('_', '-')} {v:.4f}" for k, v in record.items()
                              if k not in ("kind", "split", "step", "epoch") and isinstance(v, float))
            bar.write(f"step {record['step']}: validation {shown}{'  (best)' if record.get('best') else ''}")

    result = fine_tune(config, resume=bool(args.resume), overwrite=args.overwrite, callback=progress)
    if bar is not None:
        bar.close()
    for split in ("validation", "test"):
        if split in result.metrics:
            print(f"\n{split} ({result.metrics[split]['n']} examples)")
            print(result.task.format_metrics(result.metrics[split]))
    if not result.metrics:
        print("\nno metrics: the validation and test splits are empty (see metrics.json and the report)")
    print(f"\nrun directory: {result.run_dir}")
    print(f"report: {result.report}")
    print(f"wall time: {result.wall_time_s:.0f} s")
    return 0


def _warn_ignored_on_resume(run: str, given: set[str], config) -> None:
    """`--resume RUN` continues RUN with the settings it saved (that is what makes it exact): a setting
    given with it (flag, --config file, --quick) that differs from the saved one is ignored, and named."""
    from bertfit.train_config import TrainConfig

    path = Path(run) / "train_config.json"
    try:
        saved = TrainConfig.from_dict(json.loads(path.read_text(encoding="utf-8")), source=str(path))
    except (OSError, ValueError, BertfitError):
        return  # nothing readable to resume with: fine_tune says so
    ignored = sorted(name for name in given if getattr(config, name) != getattr(saved, name))
    if ignored:
        shown = ", ".join(f"--{name.replace('_', '-')} {_show(getattr(config, name))} (the run's: "
                          f"{_show(getattr(saved, name))})" for name in ignored)
        logger.warning("--resume %s continues the run with the settings saved in %s; ignoring %s. To train with "
                       "other settings, start a new run (another --output-dir, or --overwrite)", run, path, shown)


def _float(value: str, flag: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise BertfitError(f"{flag}: {value!r} is not a number (use 'balanced' or one number per label)") from None


def add_header_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--header", action=argparse.BooleanOptionalAction, default=True, help=TRAIN_HELP["header"])
    parser.add_argument("--columns", help=TRAIN_HELP["columns"])


def _header_options(args: argparse.Namespace) -> dict[str, Any]:
    from bertfit.train_config import parse_columns

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


def _add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run directory (or any BERT classifier directory)")
    parser.add_argument("texts", nargs="*", help="texts to classify (put -- before them when one starts with '-'); none, or '-', reads one text per line from stdin")
    parser.add_argument("--file", help="classify a .csv/.tsv/.jsonl file; writes it back with label and probabilities")
    parser.add_argument("--output", help="where to write the labelled file (default: FILE with .predictions before the suffix)")
    parser.add_argument("--text-column", help="text column of --file (default: text, sentence, review, content, tweet; "
                                              "a 1-based position with --no-header)")
    parser.add_argument("--pair-column", help="second text column of --file, for pair models")
    add_header_arguments(parser)
    parser.add_argument("--csv-guard", action=argparse.BooleanOptionalAction, default=True,
                        help="in CSV/TSV output, put a ' before cells that start with = + - @ tab or carriage return, "
                             "so a spreadsheet shows them instead of running them as formulas (default: on; "
                             "--no-csv-guard writes them unchanged)")
    parser.add_argument("--encoding", help="encoding of --file and of standard input (default: UTF-8, latin-1 "
                                           "fallback for --file)")
    parser.add_argument("--int8", action="store_true", help="int8 dynamic quantization (faster on CPU; accuracy cost in benchmarks/RESULTS.md)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add_engine_argument(parser)
    parser.add_argument("--batch-tokens", type=positive_int, default=8192, help="token budget of a prediction batch")
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
        texts = _stdin_lines(args.encoding)
        args.json = True if not sys.stdout.isatty() else args.json
    predictions = classifier.predictions(texts, max_tokens=args.batch_tokens)
    for text, record in zip(texts, predictions):
        if args.json:
            print(json.dumps({"text": text, **_rounded(record)}, ensure_ascii=False))
        else:
            shown = text if len(text) <= 80 else text[:77] + "..."
            print(f"{_short_answer(classifier.task, record):<12}  {shown}")
    return 0


def _rounded(value: Any) -> Any:
    """Floats to 6 decimals, through nested records (probabilities, values)."""
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _short_answer(task: Any, record: dict) -> str:
    """One record on one terminal line: "positive  0.912", "anger,joy", "3.41"."""
    if "confidence" in record:
        return f"{record['label']:<12} {record['confidence']:6.3f}"
    answer = task.answer(record)
    if isinstance(answer, list):
        return ",".join(answer) or "(none)"
    if isinstance(answer, dict):
        return " ".join(f"{k}={v:.4g}" for k, v in answer.items())
    return f"{answer:.4g}" if isinstance(answer, float) else str(answer)


def _stdin_lines(encoding: str | None) -> list[str]:
    """Standard input, one text a line; undecodable bytes are a one-line error, not a traceback."""
    data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8", "surrogateescape")
    codec = encoding or "utf-8"
    try:
        text = data.decode(codec)
    except LookupError:
        raise BertfitError(f"unknown encoding {encoding!r} (--encoding); use e.g. utf-8, latin-1, cp1252") from None
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise BertfitError(f"standard input is not valid {codec}: byte 0x{data[exc.start]:02x} on line {line} "
                           f"(offset {exc.start}); pass its encoding, e.g. --encoding latin-1") from None
    lines = text.removeprefix("\ufeff").split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    return [line.rstrip("\r") for line in lines]


def _predict_file(classifier, args: argparse.Namespace) -> int:
    from bertfit.data import predict_columns, read_table, write_table

    source = Path(args.file)
    output = Path(args.output) if args.output else source.with_name(f"{source.stem}.predictions{source.suffix}")
    _check_output_file(output, source, "--output")
    table = read_table(args.file, encoding=args.encoding, **_header_options(args))
    column, pair_column = predict_columns(table, args.text_column, args.pair_column)
    texts = ["" if row.get(column) is None else str(row.get(column)) for row in table.rows]
    pairs = [str(row.get(pair_column) or "") for row in table.rows] if pair_column else None
    empty = sum(1 for t in texts if not t.strip())
    if empty:
        logger.warning("%s: %d rows have an empty %r; they are still labelled (from [CLS] [SEP] alone)", args.file, empty, column)
    predictions = classifier.predictions(texts, pairs, max_tokens=args.batch_tokens)
    extra_columns = classifier.task.output_names()
    extra_rows = [_rounded(classifier.task.columns(record)) for record in predictions]
    written = write_table(table, output, extra_columns, extra_rows, csv_guard=args.csv_guard)
    if written[0] != extra_columns[0]:
        print(f"the file has its own {extra_columns[0]!r} column (kept): predictions are in {written[0]!r}",
              file=sys.stderr)
    print(f"labelled {len(predictions)} rows -> {output}")
    return 0


def _check_output_file(output: Path, source: Path | None, flag: str) -> None:
    """An output file must not be the input (also through links or another spelling), nor a directory."""
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


def _add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
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
    add_engine_argument(parser)
    parser.add_argument("--output", help="write the metrics as JSON here")


def _evaluate(args: argparse.Namespace) -> int:
    from bertfit.predict import TextClassifier
    from bertfit.tasks.sequence import parse_labels, read_raw, reading_options

    classifier = TextClassifier.load(args.run, int8=args.int8, engine=args.engine)
    if args.output:
        _check_output_file(Path(args.output), Path(args.file), "--output")
    task = classifier.task
    settings = {"text_column": args.text_column, "pair_column": args.pair_column, "label_column": args.label_column,
                "skip_bad_rows": args.skip_bad_rows, "encoding": args.encoding, **_header_options(args)}
    examples, report = read_raw(args.file, settings)
    options = reading_options({**_saved_reading(args.run), **({"label_map": args.label_map} if args.label_map else {})})
    examples = parse_labels(task, examples, report, options, skip_bad_rows=args.skip_bad_rows, known=task)
    task.check_labels(examples, args.file)
    pairs = [e.text_pair or "" for e in examples] if args.pair_column else None
    outputs = classifier.predict_logits([e.text for e in examples], pairs)
    targets = task.targets([e.label for e in examples])
    metrics = task.evaluate(outputs, targets)
    print(report.summary())
    print(task.format_metrics(metrics))
    if args.int8:  # int8 is approximate: measure what it costs on the user's own data, never stay silent
        reference = TextClassifier.load(args.run, device="cpu", engine=args.engine)
        fp32_outputs = reference.predict_logits([e.text for e in examples], pairs)
        fp32_metrics = task.evaluate(fp32_outputs, targets)
        what, agreement = task.agreement(fp32_outputs, outputs)
        key = task.default_metric
        cost = {"label_agreement": agreement, f"{key}_fp32": fp32_metrics[key], f"{key}_int8": metrics[key],
                f"{key}_delta": metrics[key] - fp32_metrics[key]}
        if "accuracy" in metrics:
            cost.update(accuracy_fp32=fp32_metrics["accuracy"], accuracy_int8=metrics["accuracy"],
                        accuracy_delta=metrics["accuracy"] - fp32_metrics["accuracy"])
        metrics["int8_cost"] = cost
        print(f"int8 vs fp32 on these {len(targets)} examples: {what} {100 * agreement:.2f}%, "
              f"{key} {fp32_metrics[key]:.4f} -> {metrics[key]:.4f} ({100 * cost[f'{key}_delta']:+.2f} points)")
    if args.output:
        Path(args.output).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        print(f"metrics written to {args.output}")
    return 0


def _saved_reading(run: str) -> dict[str, Any]:
    """The label map and separator a run was trained with (task.json), so evaluate reads labels alike."""
    path = Path(run) / "task.json"
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")).get("reading") or {}) if path.is_file() else {}
    except (ValueError, AttributeError):
        return {}


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
    argv = sys.argv[1:] if argv is None else list(argv)
    for i, arg in enumerate(argv, start=1):
        problem = _undecodable(arg)
        if problem:
            print(f"bertfit: error: argument {i} ({arg.encode('utf-8', 'backslashreplace').decode('ascii', 'backslashreplace')[:60]}) "
                  f"{problem}; bertfit needs UTF-8 arguments (rename the file, or pass texts on standard input "
                  "with --encoding)", file=sys.stderr)
            return 2
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
    except OSError as exc:  # a full disk, a permission, a path of the wrong kind: the user's to fix, in one line
        where = f": {exc.filename}" if exc.filename else ""
        print(f"bertfit: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2


def _undecodable(arg: str) -> str | None:
    """Why an argument is not text: bytes that were not UTF-8 arrive as lone surrogates (PEP 383)."""
    try:
        arg.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"holds bytes that are not valid UTF-8 (at character {exc.start})"
    return None
