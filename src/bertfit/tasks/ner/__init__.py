"""Named-entity recognition: the task (``task``), its readers for CoNLL and JSON lines (``data``),
word-to-token label alignment (``encode``) and entity spans and their scoring (``entities``)."""

from typing import Any as _Any


def __getattr__(name: str) -> _Any:
    """Names of the module this package replaced (bertfit.tasks.ner.task), as deprecated aliases."""
    from bertfit.compat import forward

    return forward(__name__, "bertfit.tasks.ner.task", name)
