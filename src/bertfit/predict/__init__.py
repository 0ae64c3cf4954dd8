"""Prediction: the predictor a run directory loads as (``predictor``), its engines (PyTorch and
ONNX Runtime), and the ONNX export. Loading a model for prediction never imports training.

``from bertfit.predict import Predictor`` loads on first use (PEP 562), so ``import
bertfit.predict.engines`` stays torch-free for the CLI's ``--help``. ``TextClassifier``, the name the
predictor had when every model was a classifier, is a deprecated alias of ``Predictor``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Predictor", "quantize_int8", "TorchEngine"]


def __getattr__(name: str) -> Any:
    if name == "TextClassifier":
        import warnings

        warnings.warn("bertfit.predict.TextClassifier is now bertfit.predict.Predictor (every task's model, not "
                      "only classifiers); the old name will be removed in a later release", DeprecationWarning,
                      stacklevel=2)
        name = "Predictor"
    if name in __all__:
        from bertfit.predict import predictor

        value = getattr(predictor, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
