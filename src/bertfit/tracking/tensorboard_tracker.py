"""TensorBoard: event files in RUN/tensorboard, written by torch.utils.tensorboard.

A resumed run opens the writer with ``purge_step=1``: TensorBoard then drops the scalars the earlier
attempts wrote, and the run's log, replayed up to its checkpoint (hub.py), then the steps after it take
their place. So nothing is twice, and nothing is missing that a kill -9 caught before it was written."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from bertfit.tracking.base import Tracker

LOG_DIR = "tensorboard"


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def start(self, title: str, params: Mapping[str, str], resume_step: int | None) -> dict[str, Any]:
        from torch.utils.tensorboard import SummaryWriter

        log_dir = self.run_dir / LOG_DIR
        self.writer = SummaryWriter(str(log_dir), purge_step=None if resume_step is None else 1)
        if resume_step is None:  # the settings once, as a table in TensorBoard's Text tab
            rows = "\n".join(f"| {k} | {v} |" for k, v in params.items())
            self.writer.add_text("settings", f"**{title}**\n\n| setting | value |\n|---|---|\n{rows}", 0)
        return {"log_dir": str(Path(LOG_DIR))}

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # a kill -9 loses nothing that was logged before it

    def close(self, failed: bool = False) -> None:
        self.writer.close()


TRACKER = TensorBoardTracker
