"""What both recipes (finetune.py, pretrain.py) tell the trackers (tracking/): the run's resolved
settings, precision, processor and world size when it starts; its final metrics and files at the
end. Rank 0 alone reports: the other ranks get a Tracking with no trackers."""

from __future__ import annotations

import logging
import platform
from typing import Any, Callable, Mapping, Sequence

from bertfit.tracking.hub import Tracking
from bertfit.train.run_dir import RunDir

logger = logging.getLogger(__name__)

# The files a tracker that keeps files (MLflow, W&B) receives at the end of a run.
RUN_FILES = ("README.md", "report.md", "report.html", "metrics.json", "trainer_state.json", "plots")


def open_tracking(run: RunDir, report_to: Sequence[str], is_writer: bool,
                  callback: Callable[..., None] | None) -> Tracking:
    """The trainer's callback: the caller's own (progress bar), then the trackers."""
    return Tracking(run.path, report_to if is_writer else (), chain=callback)


def start_tracking(tracking: Tracking, title: str, settings: Mapping[str, Any], trainer: Any, resume: bool) -> None:
    """Open the tracked runs once the trainer knows where it starts (a resume: after its checkpoint)."""
    if not tracking.names:
        return
    import torch

    from bertfit import __version__

    precision = trainer.precision.record()
    params = {**settings, "task": trainer.task.name, "world_size": trainer.dist.world,
              "global_batch": trainer.global_batch, "total_steps": trainer.total_steps,
              "precision": {k: precision[k] for k in ("device", "bf16", "dense_kernel", "source") if k in precision},
              "processor": (precision.get("cpu") or {}).get("model") or platform.processor() or platform.machine(),
              "versions": {"bertfit": __version__, "torch": torch.__version__, "python": platform.python_version()}}
    tracking.start(title, params, trainer.state.step if resume else None, replay=trainer.run.read_log() if resume else ())


def write_run_documents(run: RunDir, task: Any, trainer: Any, result: Any, wall_time_s: float,
                        settings: Mapping[str, Any] | None = None) -> None:
    """trainer_state.json (transformers' format) and the model card (README.md), rank 0 only. A card
    that cannot be rendered is a warning and a note, never a lost run."""
    from bertfit.report.card import write_card
    from bertfit.train.trainer_state import write_trainer_state

    write_trainer_state(run, result.state, trainer.config, trainer.total_steps, trainer.metric, wall_time_s,
                        trainer.dist.world)
    try:
        write_card(run.path, task, world_size=trainer.dist.world, wall_time_s=wall_time_s, settings=settings)
    except Exception as exc:  # noqa: BLE001 - the run's weights, metrics and report are written already
        logger.warning("could not write the model card %s: %s: %s", run.file("README.md"), type(exc).__name__, exc,
                       exc_info=True)


def finish_tracking(tracking: Tracking, run: RunDir, metrics: Mapping[str, Any], wall_time_s: float) -> None:
    """The final metrics (and wall time), the run's files, and the trackers closed."""
    tracking.log_final(metrics, {"final/wall_time_s": float(wall_time_s)})
    tracking.finish([run.file(name) for name in RUN_FILES])

