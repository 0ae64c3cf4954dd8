"""What both training recipes (finetune.py, pretrain.py) do before their first step, written once:
the device, the threads, and the decision about the run directory (start, resume, replace, or
refuse with the flag that would do what the user meant)."""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, TypeVar

import torch

from bertfit.errors import BertfitError
from bertfit.train import dist

logger = logging.getLogger(__name__)
T = TypeVar("T")


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BertfitError(f"--device {name}: no CUDA GPU is available; use --device cpu")
    return torch.device(name)


def configure_threads(threads: int | None) -> int:
    """Use the cores this process may run on (more threads than cores only adds contention); the
    processes of a distributed job on one machine share them."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        available = os.cpu_count() or 1
    n = threads or max(1, available // dist.current().local_world)
    torch.set_num_threads(n)
    return n


def run_job(d: Any, work: Callable[[], T]) -> T:
    """``work()`` inside the joined job ``d``, leaving it after: at a barrier when the work ended well
    (dist.Dist.close), at once after an error."""
    try:
        result = work()
    except BaseException:
        d.close()
        raise
    d.close(synchronize=True)
    return result


def check_resume_target(run: Any, resume: bool, overwrite: bool) -> None:
    """``--resume RUN`` names a run: a missing path, a file or a folder bertfit did not make is refused
    in --resume's own words (not --output-dir's), before anything is read or locked."""
    if not resume or overwrite:
        return
    if not run.path.exists():
        raise BertfitError(f"--resume {run.path}: no such directory; pass a run directory that train or pretrain wrote")
    if not run.path.is_dir():
        raise BertfitError(f"--resume {run.path} is a file; pass a run directory that train or pretrain wrote")
    if not run.is_run():
        raise BertfitError(f"--resume {run.path}: not a bertfit run (no bertfit marker or train_config.json); pass a "
                           "run directory that train or pretrain wrote")


def decide_run(run: Any, saved: Any, same: bool, resume: bool, overwrite: bool) -> tuple[bool, bool, bool]:
    """(use_saved, resume, replace) for run directory ``run``: whether to continue with the saved
    settings, whether to resume from a checkpoint, and whether the old contents are replaced (only
    once the new run's data and model have been read). ``saved``: the run's saved settings (None if it
    has none); ``same``: they equal the requested ones. Both recipes decide with this one function,
    after ``run.check_is_run()`` (which they call before reading the saved settings)."""
    if overwrite:
        return False, False, True
    if run.checkpoint_steps():
        if resume and saved is not None:
            return True, True, False
        if saved is not None and not same:
            raise BertfitError(f"{run.path} holds checkpoints of a run with different settings; pass --resume "
                               f"{run.path} to continue it, --overwrite to start again, or another --output-dir")
        if not resume:
            logger.warning("%s already holds checkpoints of this run: resuming it (pass --overwrite to start again)",
                           run.path)
        return False, True, False
    if run.entries():  # (the lock file a killed run left behind is not content)
        finished = run.file("metrics.json").exists()
        if not finished and saved is not None and (resume or same):
            # Killed before its first checkpoint: nothing to resume, nothing of value to keep.
            logger.warning("%s: an earlier attempt stopped before its first checkpoint; starting it again", run.path)
            return True, False, True
        raise BertfitError(f"{run.path} already holds a {'finished ' if finished else ''}run; pass --overwrite "
                           "to replace it, --resume to continue it, or choose another --output-dir")
    if resume:
        raise BertfitError(f"{run.path}: no checkpoint to resume from")
    return False, False, False
