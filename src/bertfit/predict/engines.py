"""Engine names and the --engine flag, importable without torch (the CLI and the server share them)."""

from __future__ import annotations

import argparse

# What runs the model (see predict.Predictor.load): "auto" is ONNX Runtime on the CPU when
# onnx and onnxruntime are installed, else PyTorch; a GPU always uses PyTorch.
ENGINES = ("auto", "pytorch", "onnxruntime")


def add_engine_argument(parser: argparse.ArgumentParser) -> None:
    # Here, not in predict: importing predict would import torch, and the CLI parses (and answers
    # --help) without it.
    parser.add_argument("--engine", choices=ENGINES, default="auto",
                        help="what runs the model: auto (default) is ONNX Runtime on the CPU when installed -- the "
                             "same fp32 logits, exported once into the cache (a few seconds), about half the latency -- "
                             "else PyTorch; a GPU always uses PyTorch")
