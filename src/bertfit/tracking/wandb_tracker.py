"""Weights & Biases, through the wandb client. Its own settings apply (WANDB_PROJECT, unset:
"bertfit"; WANDB_MODE=offline writes the run under RUN/wandb for a later `wandb sync`). The run's
id is saved in the run directory and a resume continues it (resume="allow"); the last step of each
metric is saved too, so the steps logged again after a checkpoint are not sent twice."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

from bertfit.tracking.base import Tracker

DEFAULT_PROJECT = "bertfit"


class WandbTracker(Tracker):
    name = "wandb"

    def start(self, title: str, params: Mapping[str, str], resume_step: int | None) -> dict[str, Any]:
        import wandb

        run_id = self.saved.get("id") if resume_step is not None else None
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT, dir=str(self.run_dir),
                              id=run_id or uuid.uuid4().hex[:12], resume="allow", name=self.run_dir.name,
                              notes=title, config=dict(params), reinit="create_new")
        self.logged: dict[str, int] = dict(self.saved.get("logged", {})) if resume_step is not None else {}
        return self._state()

    def _state(self) -> dict[str, Any]:
        return {"id": self.run.id, "logged": dict(self.logged)}

    def logged_steps(self) -> dict[str, int]:
        return dict(self.logged)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=step)
        self.logged.update({k: step for k in metrics})
        self.saved = self._state()

    def log_summary(self, metrics: Mapping[str, float], step: int) -> None:
        self.log(metrics, step)
        self.run.summary.update(dict(metrics))

    def log_files(self, files: Sequence[Path]) -> None:
        for path in files:
            pattern = str(path / "*") if path.is_dir() else str(path)
            self.run.save(pattern, base_path=str(self.run_dir), policy="now")

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


TRACKER = WandbTracker
