"""A task's own settings, declared once: name, type, default, allowed values, flag, help, commands.

A task that needs settings of its own (NER's tag column, QA's doc stride, QA's top-k at prediction)
declares them as ``Setting``s in a torch-free module of its own and lists them as the task class's
``settings``; tasks/declared.py gathers every task's declarations. From them, and nothing written per
key elsewhere: ``bertfit train`` / ``predict`` add the flags (cli/), TrainConfig accepts, validates and
saves the training ones (train_config.json keeps its flat keys), and the run records the reading ones
in task.json (evaluate and export --check-file read files as training did).

This module imports neither torch nor numpy: ``bertfit train --help`` builds its flags from it.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from bertfit.errors import ConfigError

INT_MAX = 2**31 - 1


@dataclass(frozen=True)
class Setting:
    name: str  # the key in TrainConfig / train_config.json / a --config file; the flag is --name-with-dashes
    kind: type  # int, float, bool or str
    default: Any
    help: str  # the flag's help, without the task's name or the default (added where it is shown)
    low: float | None = None  # numbers: the allowed range, inclusive unless open_low / open_high
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple[str, ...] | None = None  # strings: the allowed values
    optional: bool = False  # None is allowed (and means "the task's own choice")
    commands: tuple[str, ...] = ("train",)  # the commands with its flag: train (saved with the run), predict
    reading: bool = False  # how files are read: saved in task.json, so evaluate reads files as training did
    # predict: a field of the one input the flags give (QA's --question, --context), not a setting;
    # from_file: also --NAME-file, the value read from a text file (QA's --context-file)
    input: bool = False
    from_file: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def flags(self) -> str:
        """How a message names the way to give it: "--context (or --context-file)"."""
        return f"{self.flag} (or {self.flag}-file)" if self.from_file else self.flag

    def check(self, value: Any) -> Any:
        """The value, validated and normalised; a ConfigError naming the setting and what it allows."""
        if value is None and self.optional:
            return None
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{self.name} must be true or false, got {show(value)}")
            return value
        if self.kind is int:
            if not is_int(value):
                raise ConfigError(f"{self.name} must be a whole number, got {show(value)}")
            if not self._in_range(value):
                raise ConfigError(self._range_message(value, "whole number"))
            return value
        if self.kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{self.name} must be a number, got {show(value)}")
            try:
                number = float(value)
            except OverflowError:  # an int too large for a float
                raise ConfigError(self._range_message(value, "number")) from None
            if not math.isfinite(number):
                raise ConfigError(f"{self.name} must be a finite number, got {value!r}")
            if not self._in_range(number):
                raise ConfigError(self._range_message(value, "number"))
            return number + 0.0  # -0.0 -> 0.0
        if not isinstance(value, str):
            raise ConfigError(f"{self.name} must be a string, got {show(value)}")
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{self.name} must be one of {', '.join(self.choices)}, got {show(value)}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:  # an undecodable byte from argv or a file (PEP 383)
            raise ConfigError(f"{self.name} is not valid text (undecodable byte or lone surrogate at character "
                              f"{exc.start}); use UTF-8") from None
        return value

    def _in_range(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.open_low else value >= self.low)
        below = self.high is None or (value < self.high if self.open_high else value <= self.high)
        return above and below

    def _range_message(self, value: Any, kind: str) -> str:
        return range_message(self.name, value, self.low, self.high, kind, self.open_high, positive=self.open_low)

    def describe(self, tasks: Iterable[str]) -> str:
        """The flag's help: which task(s) use it, what it does, its default."""
        default = "" if self.input else f" (default: {'none' if self.default is None else self.default})"
        return f"{'/'.join(tasks)}: {self.help}{default}"


def by_name(declared: Mapping[str, Iterable[Setting]], command: str | None = None) -> dict[str, tuple[Setting, list[str]]]:
    """Every declared setting (of ``command``, or all) by name, with the tasks that declare it. Two
    tasks may share a setting only with the same declaration (tests/test_task_settings.py checks it)."""
    out: dict[str, tuple[Setting, list[str]]] = {}
    for task, settings in declared.items():
        for setting in settings:
            if command is not None and command not in setting.commands:
                continue
            out.setdefault(setting.name, (setting, []))[1].append(task)
    return out


def add_flags(parser: argparse.ArgumentParser, declared: Mapping[str, Iterable[Setting]], command: str) -> None:
    """The flags of every task's settings for ``command``, in one group. Each flag's value is None
    unless given, so a config file's value or the declared default applies. Training values are
    checked where every training setting is (TrainConfig, for flags and config files alike); the
    other commands' values when the flag is parsed."""
    settings = by_name(declared, command)
    if not settings:
        return
    group = parser.add_argument_group("task settings (each help names the task that uses it)")
    for name, (setting, tasks) in settings.items():
        help_text = setting.describe(tasks)
        if setting.kind is bool:
            group.add_argument(setting.flag, dest=name, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        elif setting.choices is not None and command == "train":  # listed; TrainConfig says what is wrong
            group.add_argument(setting.flag, dest=name, default=None, metavar="{" + ",".join(setting.choices) + "}",
                               help=help_text)
        elif setting.choices is not None:
            group.add_argument(setting.flag, dest=name, choices=setting.choices, default=None, help=help_text)
        else:
            kind = setting.kind if command == "train" else _checked(setting)
            group.add_argument(setting.flag, dest=name, type=kind, default=None, metavar=name.upper(), help=help_text)
        if setting.from_file:
            group.add_argument(setting.flag + "-file", dest=name + "_file", default=None, metavar="FILE",
                               help=f"{'/'.join(tasks)}: read {setting.flag} from this text file (UTF-8, or --encoding)")


def _checked(setting: Setting) -> Any:
    """An argparse type that also checks the range, naming the setting and the allowed values."""
    def parse(text: str) -> Any:
        try:
            value = setting.kind(text)
        except ValueError:
            what = "a whole number" if setting.kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not {what}") from None
        try:
            return setting.check(value)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def flag_values(args: argparse.Namespace, declared: Mapping[str, Iterable[Setting]], command: str) -> dict[str, Any]:
    """The task settings' flags of ``command`` as parsed (None: not given); input fields not included."""
    return {name: getattr(args, name, None) for name, (setting, _) in by_name(declared, command).items()
            if not setting.input}


# -- shared helpers of validation messages (train_config.py uses them for its own settings too) ------

def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def range_message(name: str, value: Any, low: float | None, high: float | None, kind: str, open_high: bool = False,
                  positive: bool = False) -> str:
    def fmt(x: float) -> str:
        return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"

    parts = []
    if low is not None:
        parts.append(f"above {fmt(low)}" if positive else f"at least {fmt(low)}")
    if high is not None:
        parts.append(f"below {fmt(high)}" if open_high else f"at most {fmt(high)}")
    bounds = " and ".join(parts)
    return f"{name} must be a {kind}{' ' + bounds if bounds else ''}, got {show(value)}"
