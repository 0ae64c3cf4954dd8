"""The search space: which of `train`'s settings a search varies, and over what.

Defaults (every task): the learning rate (log-uniform: its effect is multiplicative), epochs, batch
size, warmup ratio and weight decay; a task that declares a decision ``threshold`` setting
(multi-label) also searches the threshold strategy (tuned per label on validation, or a fixed 0.5).

A space file (YAML or TOML) overrides them, named exactly as `train`'s flags (``lr``, ``batch_size``,
``--warmup-ratio`` spelt either way)::

    lr: {low: 1e-5, high: 1e-4, log: true}   # a range (int when both ends are whole and the setting is)
    batch_size: [16, 32]                     # choices
    epochs: {choices: [1, 2]}
    weight_decay: 0.0                        # fixed: not searched

A setting given as a flag on the command line is fixed and never searched. Torch- and optuna-free.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from bertfit.errors import ConfigError

# Settings the search never varies: where the trials live, how the data is read and split (the
# trials must be compared on the same validation split), and the seeds (`tune --seed`).
NOT_SEARCHABLE = frozenset({"output_dir", "seed", "seeds", "split_seed", "train_file", "validation_file", "test_file",
                            "split", "model", "device", "threads", "extra", "task_settings", "defaulted"})


@dataclass(frozen=True)
class Param:
    """One searched setting: a range (``low``..``high``, ``log``, ``step``; ``integer``) or ``choices``."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    integer: bool = False
    choices: tuple[Any, ...] | None = None

    def suggest(self, trial: Any) -> Any:
        """The value an Optuna trial draws."""
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def capped(self, most: float) -> "Param":
        """This setting with nothing above ``most`` (its lowest value is always kept)."""
        if self.choices is not None:
            numbers = sorted(c for c in self.choices if isinstance(c, (int, float)))
            kept = tuple(c for c in self.choices if isinstance(c, (int, float)) and c <= most) or tuple(numbers[:1])
            return dataclasses.replace(self, choices=kept) if numbers else self
        high = max(self.low, min(self.high, math.floor(most) if self.integer else most))
        return dataclasses.replace(self, high=high)

    def describe(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join("none" if c is None else str(c) for c in self.choices)
        return f"{self.low:g} .. {self.high:g}{' (log)' if self.log else ''}{f' step {self.step:g}' if self.step else ''}"


def default_space(task_settings: frozenset[str] = frozenset()) -> dict[str, Param]:
    """The default search; ``task_settings``: the names of the task's own declared settings."""
    space = {
        "lr": Param("lr", 1e-5, 2e-4, log=True),
        "epochs": Param("epochs", 1, 4, integer=True),
        "batch_size": Param("batch_size", choices=(16, 32, 64)),
        "warmup_ratio": Param("warmup_ratio", 0.0, 0.2),
        "weight_decay": Param("weight_decay", 0.0, 0.1),
    }
    if "threshold" in task_settings:  # None: one threshold per label, tuned on validation
        space["threshold"] = Param("threshold", choices=(None, 0.5))
    return space


def searchable_names() -> frozenset[str]:
    from bertfit.tasks.declared import TRAIN_SETTINGS
    from bertfit.train.config import TrainConfig

    return frozenset({f.name for f in dataclasses.fields(TrainConfig)} | set(TRAIN_SETTINGS)) - NOT_SEARCHABLE


def read_space_file(path: str | Path) -> tuple[dict[str, Param], dict[str, Any]]:
    """(searched settings, fixed settings) from a YAML/TOML space file; every mistake is a ConfigError
    that names the file, the setting and the fix."""
    from bertfit.train.config import read_config_file

    path = Path(path)
    try:
        raw = read_config_file(path)
    except ConfigError as exc:
        raise ConfigError("--space " + " ".join(str(exc).split())) from None  # a parser's message, on one line
    if not raw:
        raise ConfigError(f"--space {path}: no settings; name train's settings (e.g. lr: {{low: 1e-5, high: 1e-4, log: true}})")
    known = searchable_names()
    searched: dict[str, Param] = {}
    fixed: dict[str, Any] = {}
    for name, spec in raw.items():
        where = f"--space {path}: {name}"
        if name not in known:
            hint = " (tune sets it: use tune's own flag)" if name in NOT_SEARCHABLE else ""
            raise ConfigError(f"{where}: not a setting the search can vary{hint}; the names are train's flags "
                              "(see `bertfit train --help`), e.g. lr, epochs, batch_size, warmup_ratio, weight_decay")
        if isinstance(spec, list):
            spec = {"choices": spec}
        if isinstance(spec, dict):
            searched[name] = _param(name, spec, where)
        else:
            _check_value(name, _number(spec), where)
            fixed[name] = _number(spec)
    return searched, fixed


def _param(name: str, spec: Mapping[str, Any], where: str) -> Param:
    keys = set(spec)
    if keys - {"low", "high", "log", "step", "choices"}:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(keys - {'low', 'high', 'log', 'step', 'choices'}))}; "
                          "write {low: .., high: .., log: true|false, step: ..} or {choices: [..]}")
    if "choices" in spec:
        if keys != {"choices"} or not isinstance(spec["choices"], list) or not spec["choices"]:
            raise ConfigError(f"{where}: choices must be a non-empty list, alone (e.g. {name}: [16, 32])")
        choices = tuple(_number(c) for c in spec["choices"])
        for choice in choices:
            _check_value(name, choice, where)
        return Param(name, choices=choices)
    if not {"low", "high"} <= keys:
        raise ConfigError(f"{where}: a range needs both low and high (e.g. {name}: {{low: 1e-5, high: 1e-4}})")
    low, high, step = _number(spec["low"]), _number(spec["high"]), _number(spec.get("step"))
    for label, value in (("low", low), ("high", high), ("step", step)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
            raise ConfigError(f"{where}: {label} must be a finite number, got {value!r}")
    if not low < high:
        raise ConfigError(f"{where}: low ({low}) must be below high ({high})")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false, got {log!r}")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0, got {low}")
    if step is not None and (step <= 0 or log):
        raise ConfigError(f"{where}: step must be positive, and not with log: true")
    _check_value(name, low, where)
    _check_value(name, high, where)
    integer = _is_int_setting(name) and all(float(v).is_integer() for v in (low, high, step or 1))
    return Param(name, low, high, log=log, step=step, integer=integer)


def _number(value: Any) -> Any:
    """YAML reads 1e-5 (no dot) as a string: a string that is a number is that number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _is_int_setting(name: str) -> bool:
    from bertfit.train.config import TrainConfig

    types = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}
    return types.get(name, "").startswith("int") or name == "epochs"


def _check_value(name: str, value: Any, where: str) -> None:
    """The value through TrainConfig's own validation (its ranges and types), in the file's words."""
    from bertfit.train.config import TrainConfig

    if _is_int_setting(name) and isinstance(value, float) and value.is_integer() and name != "epochs":
        value = int(value)
    try:
        TrainConfig.from_dict({name: value}, source="")
    except ConfigError as exc:
        raise ConfigError(f"{where}: {str(exc).removeprefix(': ')}") from None


def resolve_space(defaults: Mapping[str, Param], file_space: Mapping[str, Param] | None,
                  file_fixed: Mapping[str, Any] | None, given_flags: frozenset[str]) -> tuple[dict[str, Param], dict[str, Any]]:
    """(the searched settings, settings the space file fixes): the file's entries replace the defaults;
    a setting given as a flag is fixed, so it leaves the search."""
    space = {**defaults, **(file_space or {})}
    for name in list(space):
        if name in (file_fixed or {}) or name in given_flags:
            del space[name]
    fixed = {name: value for name, value in (file_fixed or {}).items() if name not in given_flags}
    return space, fixed


def trial_settings(params: Mapping[str, Any]) -> dict[str, Any]:
    """An Optuna trial's values as TrainConfig settings (whole-number settings as ints)."""
    return {name: (int(v) if _is_int_setting(name) and isinstance(v, float) and v.is_integer() and name != "epochs"
                   else float(v) if name == "epochs" else v) for name, v in params.items()}
