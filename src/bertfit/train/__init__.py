"""Training: the loop and its state, the run directory, distributed data parallelism, seeds, the
checks a checkpoint passes, and the two recipes side by side (``finetune``: labelled data through a
task; ``pretrain``: masked LM + next sentence on raw text), which share the run-directory decision,
the device and thread setup and the final evaluation through the task.

Nothing is imported here, so ``bertfit.train.config`` (the torch-free settings) stays light.
"""

from typing import Any as _Any


def __getattr__(name: str) -> _Any:
    """Names of the module this package replaced (bertfit.train.loop), as deprecated aliases."""
    from bertfit.compat import forward

    return forward(__name__, "bertfit.train.loop", name)
