"""`bertfit predict`: label texts from arguments, a file, or standard input."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from bertfit.cli.common import add_header_arguments, check_output_file, header_options, positive_int, saved_reading
from bertfit.predict.engines import add_engine_argument
from bertfit.errors import BertfitError

logger = logging.getLogger("bertfit")

HELP = "label texts with a trained model"
DESCRIPTION = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from bertfit.tasks.declared import DECLARED
    from bertfit.tasks.settings import add_flags

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
    parser.add_argument("--bf16", action="store_true",
                        help="bf16 autocast in PyTorch: faster where the CPU has AVX512-BF16/AMX (or on a GPU), "
                             "not exact; measure its agreement on your data with evaluate --bf16")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add_engine_argument(parser)
    parser.add_argument("--batch-tokens", type=positive_int, default=8192, help="token budget of a prediction batch")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    parser.add_argument("--explain", action="store_true",
                        help="add word-level explanations (Integrated Gradients, as `bertfit explain`): an "
                             "'explanation' column of JSON with --file, an \"explanations\" field with --json")
    add_flags(parser, DECLARED, "predict")  # every task's prediction settings and input fields (QA's --top-k, --question)


def run(args: argparse.Namespace) -> int:
    from bertfit.predict.predictor import Predictor

    classifier = Predictor.load(args.run, int8=args.int8, device=args.device, engine=args.engine, bf16=args.bf16)
    if args.bf16:
        logger.warning("bf16 is approximate; measure it on your data: bertfit evaluate %s --bf16 --file LABELLED",
                       args.run)
    if args.int8:
        logger.warning("int8 is approximate (tweets: ~99%% of labels as fp32, accuracy within ~0.3 points; "
                       "benchmarks/RESULTS.md); measure it on your data: bertfit evaluate %s --int8 --file LABELLED",
                       args.run)
    _apply_task_options(classifier.task, args)
    item = _flag_input(classifier.task, args)
    if item is not None:
        return _predict_one(classifier, args, item)
    if args.file:
        return _predict_file(classifier, args)
    texts = args.texts
    if not texts or texts == ["-"]:
        texts = _stdin_lines(args.encoding)
        args.json = True if not sys.stdout.isatty() else args.json
    predictions = _predict(classifier, args, texts)
    for text, record in zip(texts, predictions):
        if args.json:
            print(json.dumps({"text": text, **_rounded(record)}, ensure_ascii=False))
        else:
            shown = text if len(text) <= 80 else text[:77] + "..."
            display = classifier.task.display(record)  # a task with records of its own shape
            print(display if display is not None else f"{_short_answer(classifier.task, record):<12}  {shown}")
    return 0


def _apply_task_options(task, args: argparse.Namespace) -> None:
    """The loaded task's prediction settings given as flags (checked when parsed); another task's are
    named and ignored, as they do not apply to this model."""
    from bertfit.tasks.declared import DECLARED
    from bertfit.tasks.settings import flag_values

    given = {name: value for name, value in flag_values(args, DECLARED, "predict").items() if value is not None}
    own = {s.name for s in task.settings if "predict" in s.commands and not s.input}
    ignored = sorted(set(given) - own)
    if ignored:
        logger.warning("%s: not a setting of this %s model; ignored", ", ".join("--" + n.replace("_", "-") for n in ignored),
                       task.name)
    if own & set(given):
        task.apply_options({name: given[name] for name in own & set(given)})


def _flag_input(task, args: argparse.Namespace) -> dict[str, str] | None:
    """The one input given as flags (a task's input fields: QA's --question and --context or
    --context-file), or None when no such flag was given."""
    from bertfit.tasks.declared import DECLARED
    from bertfit.tasks.settings import by_name

    given: dict[str, str] = {}
    for name, (setting, _) in by_name(DECLARED, "predict").items():
        if not setting.input:
            continue
        value, path = getattr(args, name, None), getattr(args, name + "_file", None) if setting.from_file else None
        if value is not None and path is not None:
            raise BertfitError(f"{setting.flag} and {setting.flag}-file are alternatives; give one")
        if path is not None:
            value = _read_text_file(path, f"{setting.flag}-file", args.encoding)
        if value is not None:
            given[name] = value
    if not given:
        return None
    fields = [s for s in task.settings if s.input]
    if not fields or set(given) != {s.name for s in fields}:
        takes = " and ".join(s.flags for s in fields) if fields else "texts (or --file), not these flags"
        raise BertfitError(f"this {task.name} model takes {takes}; given: "
                           f"{', '.join('--' + n.replace('_', '-') for n in given)}")
    return given


def _read_text_file(path: str, flag: str, encoding: str | None) -> str:
    try:
        return Path(path).read_text(encoding=encoding or "utf-8")
    except FileNotFoundError:
        raise BertfitError(f"{flag} {path}: no such file") from None
    except (OSError, UnicodeDecodeError, LookupError) as exc:
        raise BertfitError(f"{flag} {path}: cannot read it ({exc}); pass a UTF-8 text file or its --encoding") from None


def _predict_one(classifier, args: argparse.Namespace, item: dict[str, str]) -> int:
    """One input given as flags (QA: a question over a context): its record, with offsets."""
    record = classifier.records([item], max_tokens=args.batch_tokens)[0]
    if args.json:
        print(json.dumps(_rounded(record), ensure_ascii=False))
    else:
        display = classifier.task.display(record)
        print(display if display is not None else json.dumps(_rounded(record), ensure_ascii=False))
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


def _predict_columns(classifier, args: argparse.Namespace, table, inputs: list[str]) -> list[dict]:
    """Predictions for a table's text (and pair) column, or a task's own list column (NER tokens)."""
    from bertfit.data.labelled import predict_columns

    if inputs and args.text_column is None and not any(c in table.columns for c in ("text",)):
        column, pair_column = inputs[0], None
    else:
        text_column, pair_column = _run_columns(args, table)
        column, pair_column = predict_columns(table, text_column, pair_column)
        if pair_column and not args.pair_column and not classifier.task.takes_pairs:
            pair_column = None  # a column found by its name: a task of one text per input reads none
    texts = ["" if row.get(column) is None else str(row.get(column)) for row in table.rows]
    pairs = [str(row.get(pair_column) or "") for row in table.rows] if pair_column else None
    items: list = list(texts)
    for i, row in enumerate(table.rows):
        given = next(({c: row[c]} for c in inputs if isinstance(row.get(c), list)), None)
        if given is not None:
            items[i] = given  # e.g. {"tokens": [...]}: the task's inputs() takes it as is
    empty = sum(1 for t, item in zip(texts, items) if isinstance(item, str) and not t.strip())
    if empty:
        logger.warning("%s: %d rows have an empty %r; they are still labelled (from [CLS] [SEP] alone)", args.file, empty, column)
    return _predict(classifier, args, items if pairs is None else texts, pairs)


def _predict(classifier, args: argparse.Namespace, items: list, pairs: list[str] | None = None) -> list[dict]:
    """The records; with --explain each carries its "explanations" (Predictor.explain)."""
    if not getattr(args, "explain", False):
        return classifier.predictions(items, pairs, max_tokens=args.batch_tokens)
    return [{**e["prediction"], "explanations": e["explanations"]} for e in classifier.explain(items, pairs)]


def _run_columns(args: argparse.Namespace, table) -> tuple[str | None, str | None]:
    """The text and pair columns to read: the flags, else the run's own (as evaluate reads them). A model
    trained on pairs never predicts from the first text alone without being told: if the file lacks the
    run's pair column and --pair-column is not given, that is an error naming both."""
    text_column, pair_column = args.text_column, args.pair_column
    if not header_options(args)["header"]:  # positions given with --no-header are the user's own
        return text_column, pair_column
    saved = saved_reading(args.run)
    if text_column is None and saved.get("text_column") in table.columns:
        text_column = saved["text_column"]
    if pair_column is None and saved.get("pair_column"):
        if saved["pair_column"] not in table.columns:
            raise BertfitError(
                f"{args.run} was trained on text pairs (its second text from column {saved['pair_column']!r}), "
                f"but {args.file} has no column {saved['pair_column']!r} (columns: {', '.join(map(str, table.columns))}); "
                "pass --pair-column with the file's second text column")
        pair_column = saved["pair_column"]
    return text_column, pair_column


def _predict_file(classifier, args: argparse.Namespace) -> int:
    from bertfit.data.labelled import read_table, write_table

    source = Path(args.file)
    output = Path(args.output) if args.output else source.with_name(f"{source.stem}.predictions{source.suffix}")
    check_output_file(output, source, "--output", model=args.run)
    table = read_table(args.file, encoding=args.encoding, **header_options(args))
    # Columns a task reads besides text (NER: "tokens", pre-tokenised words as a JSON list; question
    # answering: "question" and "context", each row one {"question", "context"} input), and the
    # optional per-input fields it declares where the file has them (multiple choice: "context").
    inputs = [c for c in getattr(classifier.task, "input_columns", ()) if c in table.columns]
    optional = [c for c in getattr(classifier.task, "input_options", ()) if c in table.columns]
    if len(inputs) > 1 and len(inputs) == len(classifier.task.input_columns) and args.text_column is None:
        items: list = [{c: row.get(c) for c in [*inputs, *optional]} for row in table.rows]  # inputs() checks them
        predictions = _predict(classifier, args, items)
    else:
        predictions = _predict_columns(classifier, args, table, inputs)
    extra_columns = classifier.task.output_names()
    explanations = [record.pop("explanations", None) for record in predictions]
    extra_rows = [_rounded(classifier.task.columns(record)) for record in predictions]
    if args.explain:  # one JSON cell per row: the explanations of its prediction
        extra_columns = [*extra_columns, "explanation"]
        for row, explained in zip(extra_rows, explanations):
            row["explanation"] = json.dumps(_rounded(explained), ensure_ascii=False)
    written = write_table(table, output, extra_columns, extra_rows, csv_guard=args.csv_guard)
    if written[0] != extra_columns[0]:
        print(f"the file has its own {extra_columns[0]!r} column (kept): predictions are in {written[0]!r}",
              file=sys.stderr)
    print(f"predictions for {len(predictions)} rows -> {output}")
    return 0
