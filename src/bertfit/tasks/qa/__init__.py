"""Extractive question answering: the task (``task``), SQuAD-style readers (``data``), windows over
long contexts (``windows``), span decoding (``decode``) and SQuAD's EM/F1 (``squad_metric``)."""

from typing import Any as _Any


def __getattr__(name: str) -> _Any:
    """Names of the module this package replaced (bertfit.tasks.qa.task), as deprecated aliases."""
    from bertfit.compat import forward

    return forward(__name__, "bertfit.tasks.qa.task", name)
