"""bertfit: fine-tune BERT-family encoders for text classification."""

from __future__ import annotations

__version__ = "0.1.0"

from bertfit.errors import BertfitError

__all__ = ["BertfitError", "__version__"]
