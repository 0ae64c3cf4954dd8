"""Engine names and the --engine flag, importable without torch (the CLI and the server share them)."""

from __future__ import annotations

import argparse

# What runs the model (see predict.Predictor.load): "auto" is, on the CPU, whichever of ONNX Runtime and
# PyTorch predicts faster there (predict/engine_choice.py), PyTorch without onnxruntime; a GPU uses PyTorch.
ENGINES = ("auto", "pytorch", "onnxruntime")


def add_engine_argument(parser: argparse.ArgumentParser) -> None:
    # Here, not in predict: importing predict would import torch, and the CLI parses (and answers
    # --help) without it.
    parser.add_argument("--engine", choices=ENGINES, default="auto",
                        help="what runs the model: auto (default) is, on the CPU, the faster of ONNX Runtime and "
                             "PyTorch for this model on this processor (the same fp32 logits; measured once, a few "
                             "seconds, and cached; BERTFIT_CPU_ENGINE=onnxruntime|pytorch decides without measuring); "
                             "a GPU always uses PyTorch")
