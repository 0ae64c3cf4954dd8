"""The ONNX Runtime engine: an exported model directory (export.py writes it), loaded and run.

An export directory holds ``model.onnx``, config.json (labels), the tokenizer, task.json and
train_config.json (max_length), and export.json (how it was made: int8 or fp32). :func:`load_export`
reads it; :class:`OnnxEngine` runs its graph on batches cut for a padded graph. The predictor
(predict.Predictor) holds one as its engine, as it holds a PyTorch engine otherwise; the
exporter loads one to check a fresh export. This module imports neither of them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from bertfit.artifact import read_artifact
from bertfit.batching import engine_logits, padded_batches
from bertfit.config import BertConfig
from bertfit.errors import BertfitError
from bertfit.tasks.base import Task
from bertfit.tokenizer import WordPieceTokenizer

MODEL_FILE = "model.onnx"


def require_onnx():
    """The onnxruntime module, or an error that names the extra to install."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError:
        raise BertfitError("ONNX export needs the onnx and onnxruntime packages: "
                           "pip install 'bertfit[export]' (or: pip install onnx onnxruntime)") from None
    return onnxruntime


class OnnxEngine:
    """Runs batches through an ONNX Runtime session of an exported graph (CPU)."""

    name = "onnxruntime"
    model = None  # no PyTorch module: the graph is the model

    def __init__(self, session, *, int8: bool) -> None:
        import torch

        self.session = session
        # the graph's inputs are the head's declared ones (export.py names them so): read once, not per batch
        self.input_names = [i.name for i in session.get_inputs()]
        self.int8 = int8
        self.device = torch.device("cpu")
        self.batch_overhead_tokens = 16  # one graph call costs about as much as this many tokens (adhoc/serve_batches.py)

    def batches(self, lengths: list[int], max_tokens: int, max_batch: int) -> list[list[int]]:
        # The graph computes on the padded batch, so cut where padding costs least (padded_batches).
        # At most 16 texts: ONNX Runtime runs ~25% faster (int8) and ~10% (fp32) on batches of 16
        # tweets than of 128, activations staying in cache (SPEED_RESULTS.md).
        return padded_batches(lengths, max_tokens, min(max_batch, 16), self.batch_overhead_tokens)

    def run(self, batch) -> np.ndarray:
        names = self.input_names
        return self.session.run(["logits"], dict(zip(names, (t.numpy() for t in batch.named(names)))))[0]


@dataclass
class OnnxExport:
    """An export directory, loaded: its engine and what reading inputs and outputs needs."""

    engine: OnnxEngine
    config: BertConfig
    tokenizer: WordPieceTokenizer
    max_length: int
    task: Task
    name: str

    @property
    def labels(self) -> list[str]:
        return self.config.labels

    @property
    def int8(self) -> bool:
        return self.engine.int8

    def predict_logits(self, texts: Sequence[str], pairs: Sequence[str] | None = None, *,
                       max_tokens: int = 8192, max_batch: int = 128) -> np.ndarray:
        """The graph's outputs for ``texts`` in input order (export.check_export compares them)."""
        encoded = self.tokenizer.encode(list(texts), None if pairs is None else list(pairs), max_length=self.max_length)
        return engine_logits(self.engine, encoded, len(self.labels), self.tokenizer.pad_id,
                             max_tokens=max_tokens, max_batch=max_batch)


def load_export(directory: str | os.PathLike, *, threads: int | None = None) -> OnnxExport:
    """Load an export directory into an ONNX Runtime session (``threads``: default torch's count)."""
    ort = require_onnx()
    import torch

    from bertfit.weights import load_config

    directory = Path(directory)
    if not (directory / MODEL_FILE).is_file():
        raise BertfitError(f"{directory}: no {MODEL_FILE}; create one with: bertfit export RUN --output {directory}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(directory / MODEL_FILE), options, providers=["CPUExecutionProvider"])
    config = load_config(directory)
    info = {}
    if (directory / "export.json").is_file():
        info = json.loads((directory / "export.json").read_text(encoding="utf-8"))
    max_length = 512
    if (directory / "train_config.json").is_file():
        max_length = int(json.loads((directory / "train_config.json").read_text(encoding="utf-8")).get("max_length", 512))
    return OnnxExport(OnnxEngine(session, int8=bool(info.get("int8", False))), config,
                      WordPieceTokenizer.from_dir(directory), max_length=min(max_length, config.max_position_embeddings),
                      task=read_artifact(directory, config).task, name=directory.name)
