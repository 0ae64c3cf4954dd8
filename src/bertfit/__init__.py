"""bertfit: fine-tune BERT-family encoders for text classification."""

from __future__ import annotations

__version__ = "0.1.0"

from bertfit import compat
from bertfit.errors import BertfitError

compat.install()  # the module names before the package layout, as deprecated aliases

__all__ = ["BertfitError", "__version__", "load", "fine_tune", "TrainConfig", "Predictor"]

# The library's front door, imported on first use (PEP 562) so `import bertfit` stays torch-free.
_PUBLIC = {"fine_tune": "bertfit.train.finetune", "TrainConfig": "bertfit.train.config",
           "Predictor": "bertfit.predict.predictor"}


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib

        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bertfit' has no attribute {name!r}")


def load(run, **options):
    """A trained run directory (or export) as a predictor: ``bertfit.load(RUN).predict(texts)``.
    options: those of predict.Predictor.load (device, engine, int8). Imports torch on call."""
    from bertfit.predict.predictor import Predictor

    return Predictor.load(run, **options)
