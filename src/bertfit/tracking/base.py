"""The interface every tracker implements: start (or continue) a tracked run, log metrics at a
step, attach files, close. The hub (hub.py) calls these from its own thread and catches whatever
they raise, so a tracker module is written as if nothing could fail."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence


class Tracker(ABC):
    """One tracker's side of a run. ``saved``: what its ``start`` returned in an earlier attempt of
    this run (tracking.json), so that a resumed run continues the same tracked run."""

    name: ClassVar[str]

    def __init__(self, run_dir: Path, saved: Mapping[str, Any]) -> None:
        self.run_dir = Path(run_dir)
        self.saved = dict(saved)

    @abstractmethod
    def start(self, title: str, params: Mapping[str, str], resume_step: int | None) -> dict[str, Any]:
        """Open the tracked run (a new one, or the saved one when ``resume_step`` is not None: the run
        continues after that step, and its log up to there is logged again, see logged_steps).
        Returns what to save to find it again (its id)."""

    def logged_steps(self) -> dict[str, int] | None:
        """After a resuming ``start``: the last step of each metric the tracker already holds, so the
        records logged again (the run's log up to its checkpoint, then the steps after it) are not
        duplicated; None when the tracker drops what it held itself (TensorBoard's purge)."""
        return None

    @abstractmethod
    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Scalars at a training step."""

    def log_summary(self, metrics: Mapping[str, float], step: int) -> None:
        """The run's final figures (a tracker with a run summary keeps them there too)."""
        self.log(metrics, step)

    def log_files(self, files: Sequence[Path]) -> None:
        """The run's report, plots, metrics and card (paths inside the run directory)."""

    @abstractmethod
    def close(self, failed: bool = False) -> None:
        """Flush and finish the tracked run (``failed``: training stopped with an error)."""
