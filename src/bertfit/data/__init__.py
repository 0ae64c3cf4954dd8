"""Reading the files users keep their data in: formats and encodings (``files``), rows with their
accounting (``rows``), tables and column choice (``tables``), labelled examples for classification
(``labelled``, ``examples``) and splits (``splits``). Each module's public names are its interface;
no module here uses another's private names. Nothing here imports torch.
"""

from typing import Any as _Any


def __getattr__(name: str) -> _Any:
    """Names of the module this package replaced (bertfit.data.labelled), as deprecated aliases."""
    from bertfit.compat import forward

    return forward(__name__, "bertfit.data.labelled", name)
