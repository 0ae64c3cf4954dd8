"""Engine names and the --engine flag, importable without torch (the CLI and the server share them)."""

from __future__ import annotations

import argparse


def add_engine_argument(parser: argparse.ArgumentParser) -> None:
    # The choices are bertfit.predict.ENGINES, written out: importing predict would import torch,
    # and the CLI parses (and answers --help) without it. tests/test_cli.py keeps the two equal.
    parser.add_argument("--engine", choices=("auto", "pytorch", "onnxruntime"), default="auto",
                        help="what runs the model: auto (default) is ONNX Runtime on the CPU when installed -- the "
                             "same fp32 logits, exported once into the cache (~2 s), about half the latency -- "
                             "else PyTorch; a GPU always uses PyTorch")
