"""`bertfit train`: fine-tune a model on a labelled file (default: MiniLM on the bundled tweets)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from bertfit.cli.common import TRAIN_HELP, ProgressBar, add_distributed_arguments, launch_if_asked
from bertfit.cli.data_format import add_data_format_argument, forced_format_paths
from bertfit.errors import BertfitError

logger = logging.getLogger("bertfit")

HELP = "fine-tune a model on labelled texts"
DESCRIPTION = ("Fine-tune a BERT encoder for text classification. Settings resolve as "
               "defaults -> --config file -> flags; the result is saved in the run directory.")


# The long-text settings' values (windows.py; repeated here so that --help does not import numpy).
CHOICES = {"truncation": ("head", "tail", "head+tail"), "long_text": ("truncate", "windows"),
           "window_aggregate": ("mean", "max")}


# TrainConfig fields that are not flags of their own: a task's settings come from its declarations.
NOT_FLAGS = ("extra", "task_settings", "defaulted")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML or TOML file of settings (flags override it)")
    parser.add_argument("--quick", action="store_true",
                        help="the README's quick job: 16,000 training examples, 1 epoch, lr 1e-4 (flags still override)")
    parser.add_argument("--resume", metavar="RUN", help="continue a run from its latest intact checkpoint, with the "
                        "settings saved in it (settings given with --resume that differ are ignored, with a warning)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    add_distributed_arguments(parser, "train")
    add_setting_arguments(parser)


def _default_text(name: str, default: object) -> str:
    """A setting's default as --help shows it, with the tasks that default it differently."""
    from bertfit.tasks.table import TABLE
    from bertfit.train.config import GENERAL_DEFAULTS

    if name not in GENERAL_DEFAULTS:
        return _show(default)
    own = [f"{row.name} {dict(row.defaults)[name]:g}" for row in TABLE if name in dict(row.defaults)]
    return f"{GENERAL_DEFAULTS[name]:g}" + (f"; {', '.join(own)}" if own else "")


def add_setting_arguments(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per TrainConfig setting and per task's own setting (`bertfit tune` takes them too);
    ``skip``: settings the command defines in its own words."""
    from bertfit.tasks.declared import DECLARED
    from bertfit.tasks.settings import add_flags
    from bertfit.train.config import TrainConfig

    for f in dataclasses.fields(TrainConfig):
        if f.name in NOT_FLAGS or f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f"{TRAIN_HELP[f.name]} (default: {_default_text(f.name, default)})"
        if f.type in ("bool", "bool | None"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif f.name in ("split", "adam_betas"):
            parser.add_argument(flag, type=float, nargs=3 if f.name == "split" else 2, default=None, help=help_text)
        elif f.name == "class_weights":
            parser.add_argument(flag, nargs="+", default=None, help=help_text)
        elif f.name in ("label_map", "columns"):
            parser.add_argument(flag, default=None, help=help_text)
        elif f.name == "problem_type":
            from bertfit.train.config import PROBLEM_TYPES

            parser.add_argument("--task", flag, dest=f.name, choices=PROBLEM_TYPES, default=None, help=help_text)
        elif f.name == "report_to":
            from bertfit.tracking import CHOICES as TRACKERS

            parser.add_argument(flag, nargs="+", choices=TRACKERS, default=None, metavar="TRACKER", help=help_text)
        elif f.name in CHOICES:
            parser.add_argument(flag, choices=CHOICES[f.name], default=None, help=help_text)
        else:
            kind = {"int": int, "int | None": int, "float": float, "float | None": float}.get(str(f.type), str)
            parser.add_argument(flag, type=kind, default=None, metavar=f.name.upper(), help=help_text)
    add_flags(parser, DECLARED, "train")  # every task's own settings (NER's --tag-column, QA's --doc-stride, ...)
    add_data_format_argument(parser)


def given_settings(args: argparse.Namespace) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(the --config file's settings, the flags' settings: None where a flag was not given), parsed."""
    from bertfit.data.labelled import parse_label_map
    from bertfit.tasks.declared import DECLARED
    from bertfit.tasks.settings import flag_values
    from bertfit.train.config import TrainConfig, parse_columns, read_config_file

    flags = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(TrainConfig) if f.name not in NOT_FLAGS}
    flags.update(forced_format_paths(args, ("train_file", "validation_file", "test_file")))
    flags.update(flag_values(args, DECLARED, "train"))
    if flags["label_map"] is not None:
        flags["label_map"] = parse_label_map(flags["label_map"])
    flags["columns"] = parse_columns(flags["columns"])
    if flags["class_weights"] is not None:
        values = flags["class_weights"]
        flags["class_weights"] = "balanced" if values == ["balanced"] else [_float(v, "--class-weights") for v in values]
    file_values = read_config_file(args.config) if args.config else None
    if file_values and isinstance(file_values.get("label_map"), str):
        file_values["label_map"] = parse_label_map(file_values["label_map"])
    return file_values, flags


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return " ".join(str(v) for v in value)
    return str(value)


def run(args: argparse.Namespace) -> int:
    import os

    launched = launch_if_asked(args, "train")
    if launched is not None:
        return launched
    from bertfit.train.finetune import fine_tune
    from bertfit.train.config import QUICK, resolve_config

    file_values, flags = given_settings(args)
    if args.resume:
        flags["output_dir"] = args.resume
    config = resolve_config(file_values, flags, quick=args.quick)
    if args.resume:
        given = {k for k, v in flags.items() if v is not None} | set(file_values or {}) | (set(QUICK) if args.quick else set())
        _warn_ignored_on_resume(args.resume, given - {"output_dir"}, config)

    progress = ProgressBar("fine-tuning", args.quiet)
    result = fine_tune(config, resume=bool(args.resume), overwrite=args.overwrite, callback=progress)
    progress.close()
    if os.environ.get("RANK", "0") != "0":  # a distributed job: rank 0 prints the results
        return 0
    for split in ("validation", "test"):
        if split in result.metrics:
            print(f"\n{split} ({result.metrics[split]['n']} examples)")
            print(result.task.format_metrics(result.metrics[split]))
    baseline = (getattr(result.report_inputs, "data_summary", None) or {}).get("baseline")
    if baseline and "test" in result.metrics:
        test = result.metrics["test"]
        print(f"\nbaseline on the same test split ({baseline['name']}; {baseline['how']}): accuracy "
              f"{baseline['accuracy']:.4f}, macro-F1 {baseline['macro_f1']:.4f}; this model: accuracy "
              f"{test['accuracy']:.4f} ({100 * (test['accuracy'] - baseline['accuracy']):+.1f} points), macro-F1 "
              f"{test['macro_f1']:.4f} ({100 * (test['macro_f1'] - baseline['macro_f1']):+.1f} points)")
    spread = result.metrics.get("seeds") if result.metrics else None
    if spread:
        from bertfit.train.seeds import format_spread

        print(f"\nover {len(spread['seeds'])} seeds {spread['seeds']} (mean ± {spread['std']}; the model kept is seed "
              f"{spread['best_seed']}'s, best {spread['selected_on']}, whose figures are above):")
        print(format_spread(spread["spread"], tuple(result.task.headline_metrics)))
    if not result.metrics:
        print("\nno metrics: the validation and test splits are empty (see metrics.json and the report)")
    print(f"\nrun directory: {result.run_dir}")
    print(f"report: {result.report}")
    print(f"wall time: {result.wall_time_s:.0f} s")
    return 0


def _warn_ignored_on_resume(run: str, given: set[str], config) -> None:
    """`--resume RUN` continues RUN with the settings it saved (that is what makes it exact): a setting
    given with it (flag, --config file, --quick) that differs from the saved one is ignored, and named."""
    from bertfit.train.config import TrainConfig

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
