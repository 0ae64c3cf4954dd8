"""Export a trained classifier to ONNX (fp32 or int8) and predict with ONNX Runtime.

    bertfit export RUN --output DIR [--int8] [--check-file labelled.csv]

DIR is a self-describing model directory: ``model.onnx``, config.json (labels), the tokenizer, and
train_config.json (max_length); ``Predictor.load(DIR)`` / ``bertfit predict DIR`` run it through
ONNX Runtime (onnx_runtime.py). ``--int8`` quantizes the weight matrices to int8, per output
channel (ONNX Runtime dynamic quantization: activations quantized per batch at run time), about
2.5× smaller (35 vs 87 MiB for MiniLM). On the CPU, ``Predictor.load(run)`` (``bertfit
predict``, ``serve``, ``evaluate``) runs the same graphs, exported once into a cache
(:func:`cached_export`): fp32 by default, which gives the PyTorch logits to ~1e-6 and halves
single-text latency; int8 with ``int8=True`` (``--int8``).

Which matrices: the weight matrices of layers 2..N except the FFN up projections (``_keep_fp32``).
BERT's hidden states carry outlier channels (one dimension reaches ~28 where the median is ~1.3),
which per-tensor activation scales resolve badly; the up projections read them straight from a
LayerNorm, and errors made in the first layer grow through the rest. On the 3,720 test tweets this
choice agrees with fp32 on 99.1% of labels (98.8% with only the first layer fp32), for ~14% of the
int8 speed (benchmarks/SPEED_RESULTS.md).

The exported graph is the fast path written as one static graph: a padded batch (prediction sorts
texts by length, so there is little padding), attention as softmax(q·kᵀ/√hd + mask)·v, and a last
layer that computes queries, attention output and feed-forward for [CLS] only. Every export is
checked against the PyTorch plain path on probe sentences, and the result is printed: fp32 must
match to 1e-4; for int8 the label agreement (and, with --check-file, the accuracy of both) is
reported, never assumed. Needs the ``onnx`` and ``onnxruntime`` packages (extra: bertfit[export]).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from bertfit.artifact import read_artifact, write_task
from bertfit.weights import load_model
from bertfit.hub import resolve_model
from bertfit.errors import BertfitError
from bertfit.heads import head_inputs, output_axes, per_token, run_head
from bertfit.predict.onnx_runtime import MODEL_FILE, OnnxExport, load_export, require_onnx
from bertfit.tasks.base import Task
from bertfit.tokenizer import WordPieceTokenizer

logger = logging.getLogger(__name__)

PROBES = [
    "I love this, best day ever!", "worst service I have had in years", "the meeting is at 3pm",
    "not sure how I feel about the new update", "@friend thanks so much :)", "ugh, stuck in traffic again",
    "The film was long. Very long. But the ending made up for it, mostly.", "ok",
]


@dataclass
class Source:
    """The PyTorch model an export is made from (and checked against), with what reading it needs."""

    model: nn.Module
    tokenizer: WordPieceTokenizer
    max_length: int
    task: Task
    reading: dict = field(default_factory=dict)  # how the run read its labels (label map, separator)

    @property
    def labels(self) -> list[str]:
        return self.model.config.labels

    @classmethod
    def load(cls, run: str | os.PathLike) -> "Source":
        """A run directory (or any BERT classifier directory / hub id), on the CPU, in eval mode."""
        if (Path(run) / MODEL_FILE).is_file() and not (Path(run) / "model.safetensors").is_file():
            raise BertfitError(f"{run} is already an ONNX export; export from the run directory it came from")
        directory = resolve_model(run)
        model = load_model(directory, require_head=True).eval()
        artifact = read_artifact(directory, model.config)
        return cls(model, WordPieceTokenizer.from_dir(directory), task=artifact.task,
                   max_length=min(artifact.max_length, model.config.max_position_embeddings), reading=artifact.reading)


class ExportGraph(nn.Module):
    """The model's own forward on the padded layout, as one static graph for tracing.

    No second copy of the encoder: the head's forward on its declared inputs with fast=False (no
    data-dependent packing; Packing.build takes its static branch while tracing) and the [CLS]-only
    last layer for heads without an output per token.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: Tensor) -> Tensor:
        options = {} if per_token(self.model) else {"cls_only": True}
        return self.model(*inputs, fast=False, **options)


def export_onnx(run: str | os.PathLike, output: str | os.PathLike, *, int8: bool = False, opset: int = 17,
                check_file: str | None = None) -> dict:
    """Write ``output``/model.onnx (+ config and tokenizer) and check it; returns the check's figures."""
    from bertfit.predict.outputs import check_export_directory

    output = Path(output)
    check_export_directory(output, resolve_model(run))  # a new, empty or previous export, never a run or model
    ort = require_onnx()
    source = Source.load(run)
    output.mkdir(parents=True, exist_ok=True)
    model = source.model
    graph = ExportGraph(model).eval()  # export restores the wrapper's mode afterwards: make it eval too
    example = source.tokenizer.encode(PROBES[:2], max_length=source.max_length)
    from bertfit.batching import collate

    batch = collate(example, [0, 1], None, source.tokenizer.pad_id)
    names = list(head_inputs(model))  # the graph takes what the head declares, under the same names
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    # the output's dynamic axes are the head's declared ones (all but its fixed label axis)
    axes["logits"] = {i: axis for i, axis in enumerate(output_axes(model)) if axis != "label"}
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path = Path(tmp) / MODEL_FILE
        with torch.no_grad(), _quiet_export():
            torch.onnx.export(graph, tuple(batch.named(names)), str(fp32_path),
                              input_names=names, output_names=["logits"], dynamic_axes=axes, opset_version=opset,
                              dynamo=False, do_constant_folding=True)
        target = output / MODEL_FILE
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            with _quiet_logging():
                quantize_dynamic(str(fp32_path), str(target), weight_type=QuantType.QInt8, per_channel=True,
                                 nodes_to_exclude=_keep_fp32(fp32_path, model.config))
        else:
            shutil.copyfile(fp32_path, target)
    # The directory describes itself: labels, tokenizer, max_length, and what the graph is.
    model.config.save(output)
    source.tokenizer.save(output)
    write_task(output, source.task, max_length=source.max_length, reading={})
    (output / "train_config.json").write_text(json.dumps({"max_length": source.max_length}) + "\n", encoding="utf-8")
    exported = load_export(output)
    report = check_export(source, exported, int8=int8, check_file=check_file)
    report.update(int8=int8, opset=opset, onnxruntime=ort.__version__, size_mb=target.stat().st_size / 2**20)
    (output / "export.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def _keep_fp32(path: Path, config) -> list[str]:
    """MatMul nodes to leave in fp32: activation × activation (attention), the first layer's, and
    every FFN up projection, whose input (a LayerNorm output) has outlier channels ~20x the others:
    one int8 scale per activation tensor leaves the other channels a few levels. Measured on the
    3,720 test tweets (300-step model): label agreement 98.8% with the first layer alone in fp32,
    99.1% with the up projections too, at 14% less speed (benchmarks/SPEED_RESULTS.md)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {init.name: tuple(init.dims) for init in graph.initializer}
    keep, first_layer = [], True
    for node in graph.node:  # in execution order: layer 0's weights come first, its down projection last
        if node.op_type != "MatMul":
            continue
        shape = weights.get(node.input[1])
        if shape is None:
            keep.append(node.name)  # scores and context: both operands are activations
        elif first_layer or shape == (config.hidden_size, config.intermediate_size):
            keep.append(node.name)
            first_layer = first_layer and shape != (config.intermediate_size, config.hidden_size)
    return keep


EXPORT_FORMAT = 1  # part of the cache key: bump when ExportGraph or the quantization choice changes
CACHE_KEEP = 8  # exports kept per kind (fp32, int8), least recently used dropped: 92 MB each for MiniLM
# (benchmarks/small_claims.json)


def cached_export(run: str | os.PathLike, *, int8: bool = False) -> OnnxExport:
    """The ONNX Runtime model (fp32 or int8) of a run, exported once into the cache, keyed by
    the weights, config and export format; the least recently used exports beyond CACHE_KEEP are
    removed. The first call costs one export (2.5 s for MiniLM on one thread, benchmarks/small_claims.json),
    checked against PyTorch."""
    import hashlib

    from bertfit.io import cache_dir

    directory = resolve_model(run)
    digest = hashlib.sha256(f"bertfit-export-{EXPORT_FORMAT}".encode())
    for name in ("config.json", "model.safetensors", "pytorch_model.bin", "train_config.json"):
        if (directory / name).is_file():
            digest.update(name.encode())
            with open(directory / name, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
    kind = cache_dir() / ("onnx-int8" if int8 else "onnx-fp32")
    target = kind / digest.hexdigest()[:16]
    if (target / "export.json").is_file():
        os.utime(target / "export.json")  # recently used: kept by _prune
    else:
        logger.info("exporting %s to ONNX Runtime %s once (cached in %s)", directory, "int8" if int8 else "fp32", target)
        tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
        try:
            export_onnx(directory, tmp, int8=int8)
            os.replace(tmp, target)
        except OSError:
            if not (target / "export.json").is_file():
                raise
            # another process won the race: use theirs
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _prune(kind, keep=CACHE_KEEP, current=target)
    exported = load_export(target)
    exported.name = Path(directory).name
    return exported


def _prune(kind: Path, *, keep: int, current: Path) -> None:
    """Remove all but the ``keep`` most recently used exports (and stale temporaries) under ``kind``."""
    import time

    entries = []
    for path in kind.iterdir():
        if ".tmp-" in path.name:
            if time.time() - path.stat().st_mtime > 3600:  # left by a killed export
                shutil.rmtree(path, ignore_errors=True)
            continue
        marker = path / "export.json"
        entries.append((marker.stat().st_mtime if marker.is_file() else 0.0, path))
    for _, path in sorted(entries, reverse=True)[keep:]:
        if path != current:
            shutil.rmtree(path, ignore_errors=True)


class _quiet_logging:
    """onnxruntime's quantizer logs a generic pre-processing hint on the root logger; it does not apply."""

    def __enter__(self):
        logging.disable(logging.WARNING)

    def __exit__(self, *exc):
        logging.disable(logging.NOTSET)


class _quiet_export:
    """The TorchScript exporter warns about tracing internals that do not apply to this graph."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def check_export(reference, exported, *, int8: bool,
                 check_file: str | None = None) -> dict:
    """Compare the export with the PyTorch plain path on probe inputs (and optionally the task's
    metric on a labelled file). ``reference``: a :class:`Source` or a PyTorch Predictor;
    ``exported``: an :class:`~bertfit.predict.onnx_runtime.OnnxExport`. Whatever the task, the comparison
    is on the model's raw outputs per feature (per text, or per token for token heads)."""
    from bertfit.batching import engine_logits

    task: Task = reference.task
    gold = None
    if check_file:
        from bertfit.tasks.sequence import reading_options

        reading = getattr(reference, "reading", {}) or {}
        examples, _ = type(task).read(check_file, reading, reading_options(reading), known=task)  # the run's columns
        task.check_labels(examples, check_file)
    else:
        examples = task.inputs(task.probe_inputs(PROBES))
    split = task.encode(reference.tokenizer, examples, reference.max_length)
    ref = reference_logits(reference, split=split)
    got = engine_logits(exported.engine, split.encoded, len(reference.labels), reference.tokenizer.pad_id,
                        max_tokens=8192, max_batch=64)
    diff = max((float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(ref, got) if np.size(a)), default=0.0)
    ref_out, got_out = task.gather(split, ref), task.gather(split, got)
    what, agreement = task.agreement(ref_out, got_out, split)
    report = {"texts": len(examples), "max_abs_logit_diff": diff, "label_agreement": agreement, "agreement": what}
    if check_file:  # the task's own metric of both models on the user's labelled file
        gold = split.gold
        before, after = task.evaluate(ref_out, gold), task.evaluate(got_out, gold)
        metric = "accuracy" if "accuracy" in before else task.default_metric
        report.update({"metric": metric, f"{metric}_pytorch_fp32": before[metric], f"{metric}_export": after[metric],
                       f"{metric}_delta": after[metric] - before[metric]})
    if not int8 and report["max_abs_logit_diff"] > 1e-4:
        raise BertfitError(f"the ONNX export differs from PyTorch by {report['max_abs_logit_diff']:.2e} in the logits "
                           "(more than 1e-4); this is a bug, please report it")
    return report


def reference_logits(classifier, texts: Sequence[str] | None = None, batch_size: int = 64, *,
                     pairs: Sequence[str] | None = None, split=None) -> "np.ndarray | list[np.ndarray]":
    """Outputs of the PyTorch plain path (padded, SDPA) in batches of ``batch_size`` in input order:
    the reference every fast path and export is compared with. ``classifier``: anything with the
    PyTorch ``model``, its ``tokenizer``, ``max_length`` and ``labels`` (a Predictor, a Source).
    Either ``texts`` (and ``pairs``), or ``split``: features the task encoded. A head with an output
    per token gives one (len(ids), L) array per feature."""
    from bertfit.batching import collate

    if split is not None:
        encoded = split.encoded
    else:
        encoded = classifier.tokenizer.encode(list(texts), None if pairs is None else list(pairs),
                                              max_length=classifier.max_length)
    rows = []
    with torch.inference_mode():
        for start in range(0, len(encoded), batch_size):
            idx = list(range(start, min(start + batch_size, len(encoded))))
            b = collate(encoded, idx, None, classifier.tokenizer.pad_id)
            out = run_head(classifier.model, b, fast=False).float().numpy()
            rows += [out[row, : len(encoded[i].ids)] if out.ndim == 3 else out[row] for row, i in enumerate(idx)]
    if rows and rows[0].ndim == 2:
        return rows
    return np.stack(rows) if rows else np.zeros((0, len(classifier.labels)), dtype=np.float32)


