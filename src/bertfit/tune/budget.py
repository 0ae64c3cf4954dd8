"""The time budget of a search: a trial is started only when it can still finish within the budget,
judged by the mean duration of the trials that finished before it (torch- and optuna-free)."""

from __future__ import annotations

import re
import time
from statistics import mean
from typing import Callable, Sequence

from bertfit.errors import ConfigError

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smhd])")


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``90s``, ``30m``, ``2h``, ``1h30m``, or a bare number of seconds."""
    value = text.strip().lower()
    try:
        seconds = float(value)
    except ValueError:
        parts = _DURATION.findall(value)
        if not parts or _DURATION.sub("", value).strip():
            raise ConfigError(f"--time-budget {text!r} is not a duration; write e.g. 90s, 30m, 2h or 1h30m") from None
        seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
    if not 0 < seconds < float("inf"):
        raise ConfigError(f"--time-budget {text!r} must be a positive duration")
    return seconds


class Budget:
    """Wall-clock seconds for this invocation, counted from construction. ``clock`` is injectable
    (tests use a fake one: they assert decisions, never timings)."""

    def __init__(self, seconds: float | None, clock: Callable[[], float] = time.monotonic,
                 started: float | None = None) -> None:
        self.seconds = seconds
        self.clock = clock
        self.started = clock() if started is None else started  # a parallel search's workers share the parent's

    def elapsed(self) -> float:
        return self.clock() - self.started

    def remaining(self) -> float:
        """Seconds left (infinite without a budget)."""
        return float("inf") if self.seconds is None else max(0.0, self.seconds - self.elapsed())

    def epochs_that_fit(self, seconds_per_epoch: float | None, trials_wanted: int) -> float | None:
        """How many epochs a trial may train so that ``trials_wanted`` more trials still fit in what is
        left (None: no budget, or no measured speed yet)."""
        if self.seconds is None or not seconds_per_epoch:
            return None
        return self.remaining() / max(1, trials_wanted) / seconds_per_epoch

    def spent(self) -> bool:
        """Whether the budget has run out (never, without one)."""
        return self.seconds is not None and self.elapsed() >= self.seconds

    def allows_next(self, finished_durations: Sequence[float]) -> bool:
        """Whether a trial started now is expected to end within the budget. Without a measured trial
        there is no estimate: the first trial always starts (its duration is what the next ones use).
        Pruned trials are not in ``finished_durations``: a new trial may well run to its end."""
        if self.seconds is None:
            return True
        if not finished_durations:
            return self.elapsed() < self.seconds
        return self.elapsed() + mean(finished_durations) <= self.seconds
