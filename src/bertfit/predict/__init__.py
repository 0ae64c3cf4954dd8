"""Prediction: the predictor a run directory loads as (``predictor``), its engines (PyTorch and
ONNX Runtime), and the ONNX export. Loading a model for prediction never imports training.

``from bertfit.predict import TextClassifier`` keeps working (loaded on first use, PEP 562), so
``import bertfit.predict.engines`` stays torch-free for the CLI's ``--help``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Predictor", "TextClassifier", "quantize_int8", "TorchEngine"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from bertfit.predict import predictor

        value = getattr(predictor, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
