"""Further pretraining on unlabelled text: the task (``task``: masked LM + next sentence), corpus
reading (``corpus``), NSP pairs and packing (``instances``, ``prepare``), masking (``masking``) and
the trained model's uses (``use``: fill-mask, NSP). The recipe that runs it is ``train/pretrain.py``;
nothing here but ``task`` imports torch."""

from typing import Any as _Any


def __getattr__(name: str) -> _Any:
    """Names of the module this package replaced (bertfit.tasks.pretrain.task), as deprecated aliases."""
    from bertfit.compat import forward

    return forward(__name__, "bertfit.tasks.pretrain.task", name)
