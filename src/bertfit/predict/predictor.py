"""Predictor: load a run (or any classifier checkpoint) and predict, whatever its task.

The model's task (task.json, else config.json's problem_type; see artifact.py) turns outputs into
records: a label with probabilities (single-label), the labels over their tuned thresholds
(multi-label), values (regression). ``predictions`` returns those records; ``predict`` the answers.

Prediction sorts texts by length into token-budgeted batches (almost no padding), runs the packed
fast path under ``torch.inference_mode``, and returns results in input order.

Engines. On the CPU, when onnx and onnxruntime are installed (the ``export`` extra; ``make`` installs
it), the model can run as an ONNX Runtime graph exported once into a cache (export.py): the same fp32
logits as PyTorch (checked to 1e-4 at export; ~1e-6 in practice) at about half the single-text
latency, since one static graph skips PyTorch's per-operator overhead. Which of the two predicts
faster depends on the processor, so engine "auto" measures it once per CPU and model shape
(engine_choice.py). ``engine="pytorch"`` / ``"onnxruntime"`` (``--engine``) picks one; a GPU always
uses PyTorch.

int8 (CPU): ``Predictor.load(run, int8=True)`` runs an ONNX Runtime int8 graph of the model,
which agrees with fp32 on >= 99% of tweet labels. Without onnxruntime, or with engine "pytorch", it is
PyTorch dynamic quantization, whose 7-bit activations agree on only ~97-98%; a warning says so.
Neither is exact: agreement and accuracy cost are measured in benchmarks/SPEED_RESULTS.md and
tests/test_fast_paths.py.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from bertfit.artifact import read_artifact
from bertfit.batching import EncodedSplit, engine_logits, inference_batches
from bertfit.weights import load_model
from bertfit.hub import resolve_model
from bertfit.config import BertConfig
from bertfit.cpu_linear import prepack_linears
from bertfit.predict.engines import ENGINES
from bertfit.errors import BertfitError, CheckpointError, ConfigError
from bertfit.heads import BertForSequenceClassification, run_head
from bertfit.predict.onnx_runtime import OnnxEngine, OnnxExport, load_export
from bertfit.artifact import task_of_config
from bertfit.tasks.base import Task
from bertfit.precision import log_prediction_line
from bertfit.tokenizer import WordPieceTokenizer

logger = logging.getLogger(__name__)

__all__ = ["ENGINES", "Predictor", "TorchEngine", "quantize_int8"]


def quantize_int8(model: BertForSequenceClassification) -> torch.nn.Module:
    """PyTorch dynamic int8 quantization of the encoder's linear layers (weights int8 per output
    channel, activations per batch) except the first layer's; pooler and classifier, one row per
    text, stay fp32. The fallback when onnxruntime is missing: unlike the ONNX Runtime export it
    quantizes the FFN up projections too (its measured agreement, ~98%, is in SPEED_RESULTS.md).
    """
    # The torch.ao entry point is deprecated in favour of torchao, which is not installed here;
    # silence the notice rather than pull a dependency in for one call.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        encoder = {name: per_channel_dynamic_qconfig for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) and name.startswith("bert.layers.")
                   and not name.startswith("bert.layers.0.")}
        return quantize_dynamic(model, encoder, dtype=torch.qint8)


class TorchEngine:
    """Runs batches through the PyTorch model: the packed fast path, on ``device``; on the CPU with
    prepacked linears, or PyTorch dynamic int8 quantization (``int8``)."""

    name = "pytorch"

    def __init__(self, model: BertForSequenceClassification, *, device: str | torch.device = "cpu",
                 int8: bool = False, bf16: bool = False) -> None:
        if int8 and bf16:
            raise BertfitError("choose int8 or bf16, not both")
        self.device = torch.device(device)
        self.int8 = int8
        # bf16: the weights stay fp32 and matmuls run under autocast, as training's bf16 does; fast where
        # the CPU has AVX512-BF16/AMX (or on a GPU), emulated (slower than fp32) elsewhere.
        self.bf16 = bf16
        model = model.eval().to(self.device)
        if int8:
            model = quantize_int8(model)
        elif self.device.type == "cpu" and not bf16:
            prepack_linears(model)  # faster single texts and small batches (see cpu_linear.py)
        self.model = model
        if int8:
            logger.warning("int8 with PyTorch dynamic quantization: not exact; on tweets ~97-98% of labels agree with "
                           "fp32 (ONNX Runtime int8, used when onnxruntime is installed: ~99%); "
                           "see benchmarks/SPEED_RESULTS.md")

    def batches(self, lengths: list[int], max_tokens: int, max_batch: int) -> list[list[int]]:
        # The packed fast path runs its dense layers on real tokens only: padding costs little.
        return inference_batches(lengths, max_tokens, max_batch)

    def run(self, batch) -> np.ndarray:
        batch = batch.to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = run_head(self.model, batch)
        return logits.detach().float().cpu().numpy()


class Predictor:
    """A fine-tuned model with its tokenizer and task, ready to predict, whatever runs it.

    ``model`` is a BertForSequenceClassification (run by a :class:`TorchEngine` on ``device``,
    int8 if asked) or an engine object (``onnx_runtime.OnnxEngine``; then pass ``config``). The
    engine object is ``backend``; ``engine`` is its name, "pytorch" or "onnxruntime".
    """

    def __init__(self, model: "BertForSequenceClassification | TorchEngine | OnnxEngine", tokenizer: WordPieceTokenizer,
                 *, max_length: int = 512, device: str | torch.device = "cpu", int8: bool = False, bf16: bool = False,
                 name: str = "model", task: Task | None = None, config: BertConfig | None = None) -> None:
        self.backend = (TorchEngine(model, device=device, int8=int8, bf16=bf16) if isinstance(model, torch.nn.Module)
                        else model)
        self.config = config if config is not None else self.backend.model.config
        self.labels = self.config.labels
        self.task = task if task is not None else task_of_config(self.config)
        self.tokenizer = tokenizer
        self.max_length = min(max_length, self.config.max_position_embeddings)
        self.name = name
        self._lock = threading.Lock()
        self.source: Path | None = None  # the directory it was loaded from (explain loads the PyTorch model there)
        self._explainer: torch.nn.Module | None = None

    @property
    def engine(self) -> str:
        return self.backend.name

    @property
    def int8(self) -> bool:
        return self.backend.int8

    @property
    def bf16(self) -> bool:
        return bool(getattr(self.backend, "bf16", False))

    @property
    def model(self) -> torch.nn.Module | None:
        """The PyTorch module (None when ONNX Runtime runs an exported graph)."""
        return self.backend.model

    @property
    def device(self) -> torch.device:
        return self.backend.device

    @classmethod
    def from_export(cls, loaded: OnnxExport) -> "Predictor":
        """The predictor over an export directory loaded by ``onnx_runtime.load_export``."""
        return cls(loaded.engine, loaded.tokenizer, max_length=loaded.max_length, name=loaded.name,
                   task=loaded.task, config=loaded.config)

    @classmethod
    def load(cls, run_or_model: str | os.PathLike, *, int8: bool = False, device: str | None = None,
             max_length: int | None = None, engine: str = "auto", bf16: bool = False,
             workload: str = "throughput") -> "Predictor":
        """From a bertfit run directory, any BERT classifier directory / hub id, or an ONNX export.

        engine: "pytorch", "onnxruntime" (the model exported once into a cache, CPU only), or "auto":
        on the CPU the faster of the two for this model on this processor, measured once and cached
        (engine_choice.py; the same fp32 logits to ~1e-6), PyTorch where onnxruntime is not installed;
        PyTorch on a GPU. int8 with "auto" is ONNX Runtime's (VNNI kernels where the CPU has them).
        workload: what "auto" is faster at: "throughput" (batches: predict, evaluate) or "latency" (one
        short text at a time: serve).
        int8 with engine "pytorch" is PyTorch dynamic quantization (less exact: see quantize_int8).
        bf16: PyTorch under bf16 autocast (not exact: measure the agreement with ``evaluate --bf16``); with
        engine "auto" it runs PyTorch, as ONNX Runtime has no bf16 path on the CPU.
        """
        if engine not in ENGINES:
            raise BertfitError(f"engine {engine!r}: choose one of {', '.join(ENGINES)}")
        if bf16:
            return cls._load_bf16(run_or_model, int8=int8, device=device, max_length=max_length, engine=engine)
        if (Path(run_or_model) / "model.onnx").is_file() and not (Path(run_or_model) / "model.safetensors").is_file():
            if device not in (None, "cpu"):
                raise BertfitError(f"{run_or_model} is an ONNX export, which runs on the CPU; drop --device")
            if engine == "pytorch":
                raise BertfitError(f"{run_or_model} is an ONNX export, which runs with ONNX Runtime; "
                                   "for PyTorch, load the run directory it was exported from")
            classifier = cls.from_export(load_export(run_or_model))
            if int8 and not classifier.int8:
                raise BertfitError(f"{run_or_model} is an fp32 ONNX export; for int8 export again with --int8")
            return classifier
        directory = resolve_model(run_or_model)
        gpu = torch.cuda.is_available() and not int8 and engine != "onnxruntime"
        device = device or ("cuda" if gpu else "cpu")
        on_cpu = torch.device(device).type == "cpu"
        if not on_cpu and (int8 or engine == "onnxruntime"):
            raise BertfitError(f"{'int8 prediction' if int8 else 'ONNX Runtime'} runs on the CPU only; drop --device")
        chosen = engine
        if engine == "auto" and on_cpu and not int8:  # int8 stays ONNX Runtime's: PyTorch's is less exact
            chosen = _auto_engine(directory, max_length, workload)
        if chosen != "pytorch" and on_cpu:
            classifier = _onnx_runtime_classifier(directory, int8=int8, required=engine == "onnxruntime")
            if classifier is not None:
                artifact = read_artifact(directory, classifier.config)
                classifier.task = artifact.task
                classifier.max_length = min(max_length or artifact.max_length, classifier.config.max_position_embeddings)
                classifier.source = Path(directory)
                log_prediction_line(torch.device("cpu"), f"ONNX Runtime {'int8' if int8 else 'fp32'}")
                return classifier
        model = load_model(directory, require_head=True)
        tokenizer = WordPieceTokenizer.from_dir(directory)
        artifact = read_artifact(directory, model.config)
        log_prediction_line(torch.device(device), "PyTorch int8" if int8 else "PyTorch fp32")
        predictor = cls(model, tokenizer, max_length=max_length or artifact.max_length, device=device, int8=int8,
                        name=Path(directory).name, task=artifact.task)
        predictor.source = Path(directory)
        return predictor

    @classmethod
    def _load_bf16(cls, run_or_model: str | os.PathLike, *, int8: bool, device: str | None, max_length: int | None,
                   engine: str) -> "Predictor":
        from bertfit.precision import read_isa

        if int8:
            raise BertfitError("choose --int8 or --bf16, not both")
        if engine == "onnxruntime":
            raise BertfitError("bf16 prediction runs with PyTorch (ONNX Runtime has no bf16 path on the CPU); "
                               "use --engine pytorch or auto")
        if (Path(run_or_model) / "model.onnx").is_file() and not (Path(run_or_model) / "model.safetensors").is_file():
            raise BertfitError(f"{run_or_model} is an ONNX export; bf16 runs the run directory it was exported from")
        directory = resolve_model(run_or_model)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if torch.device(device).type == "cpu" and not read_isa().bf16:
            logger.warning("this CPU has no bf16 instructions (AVX512-BF16/AMX): bf16 is emulated here, slower than "
                           "fp32 and no more exact; it pays on CPUs that have them, or on a GPU")
        model = load_model(directory, require_head=True)
        artifact = read_artifact(directory, model.config)
        log_prediction_line(torch.device(device), "PyTorch bf16 (autocast)")
        return cls(model, WordPieceTokenizer.from_dir(directory), max_length=max_length or artifact.max_length,
                   device=device, bf16=True, name=Path(directory).name, task=artifact.task)

    # -- prediction ---------------------------------------------------------------------------
    def outputs(self, items: Sequence, *, max_tokens: int = 8192, max_batch: int = 128) -> tuple[EncodedSplit, Any]:
        """(the encoded features, the outputs per example) for any task's inputs: texts, (text, pair)
        tuples, or what the task's ``inputs`` takes (tokens, question + context). The task encodes
        (windows, offsets), the engine runs the features, the task gathers them back per example."""
        return self.run_examples(self.task.inputs(list(items)), max_tokens=max_tokens, max_batch=max_batch)

    def run_examples(self, examples: Sequence, *, max_tokens: int = 8192, max_batch: int = 128) -> tuple[EncodedSplit, Any]:
        """``outputs`` for examples already read (labelled files: the split's ``gold`` holds their targets)."""
        split = self.task.encode(self.tokenizer, examples, self.max_length)
        with self._lock, torch.inference_mode():
            raw = engine_logits(self.backend, split.encoded, len(self.labels), self.tokenizer.pad_id,
                                max_tokens=max_tokens, max_batch=max_batch)
        return split, self.task.gather(split, raw)

    def records(self, items: Sequence, **kw) -> list[dict]:
        """One prediction record per input, in input order (what predict prints and the server returns)."""
        split, outputs = self.outputs(items, **kw)
        return self.task.decode(outputs, split)

    def predict_logits(self, texts: Sequence[str], pairs: Sequence[str] | None = None, *,
                       max_tokens: int = 8192, max_batch: int = 128) -> Any:
        """The outputs per text (sequence tasks: an (N, num_labels) array of logits)."""
        return self.outputs(self._items(texts, pairs), max_tokens=max_tokens, max_batch=max_batch)[1]

    def predict_proba(self, texts: Sequence[str], pairs: Sequence[str] | None = None, **kw) -> np.ndarray:
        """(len(texts), num_labels) probabilities, columns in ``self.labels`` order: softmax over the
        classes (single-label) or one sigmoid per label (multi-label); regression has none."""
        return self.task.probabilities(self.predict_logits(texts, pairs, **kw))

    def predict(self, texts: Sequence, pairs: Sequence[str] | None = None, **kw) -> list:
        """Each input's answer, in input order: a label, a list of labels, a value (regression), or
        the task's answer (entities, an answer span)."""
        return [self.task.answer(record) for record in self.predictions(texts, pairs, **kw)]

    def predictions(self, texts: Sequence, pairs: Sequence[str] | None = None, **kw) -> list[dict]:
        """One record per input, in input order (what predict prints and the server returns)."""
        return self.records(self._items(texts, pairs), **kw)

    def _items(self, texts: Sequence, pairs: Sequence[str] | None) -> list:
        if pairs is not None and not self.task.takes_pairs:
            raise BertfitError(f"a {self.task.name} model reads one text per input, not text pairs (pairs / "
                               "--pair-column): give each text alone")
        return _items(texts, pairs)

    # -- explanations -------------------------------------------------------------------------
    def explain(self, texts: Sequence, pairs: Sequence[str] | None = None, *, which: Sequence[str] | None = None,
                **options: Any) -> list[dict]:
        """Per input, its prediction record and word-level explanations (Integrated Gradients, see
        predict/explain.py): {"prediction": record, "explanations": [{target, value, baseline, words:
        [{text, start, end, field, attribution}], steps, completeness_error, tolerance}, ...]}.
        which: the classes / labels / entities / choices to explain ("all": every one; default: the
        prediction). options: steps, max_steps, tolerance, atol, deadline."""
        from bertfit.predict.explain import explain_inputs

        items = _items(texts, pairs)
        records = self.records(items)
        model = self.explanation_model()
        with self._lock:
            explained = explain_inputs(model, self.task, self.tokenizer, items, self.max_length, which, **options)
        return [{"prediction": r, "explanations": e} for r, e in zip(records, explained)]

    def explanation_model(self) -> torch.nn.Module:
        """The fp32 PyTorch model gradients run through: this predictor's own, or (ONNX Runtime, int8) the
        one in the directory it was loaded from, loaded once."""
        model = self.backend.model
        if isinstance(model, torch.nn.Module) and not self.int8:
            return model
        if self._explainer is None:
            if self.source is None or not (Path(self.source) / "model.safetensors").is_file():
                raise BertfitError(f"{self.name}: explanations need the model's PyTorch weights (model.safetensors); "
                                   "load the run directory, not an ONNX export")
            self._explainer = load_model(self.source, require_head=True).eval().to(self.device)
        return self._explainer


def _items(texts: Sequence, pairs: Sequence[str] | None) -> list:
    """texts (and pairs) → the task's input items; a lone string is one input."""
    if isinstance(texts, (str, Mapping)):
        texts = [texts]
    texts = list(texts)
    if pairs is None:
        return texts
    texts = _check_texts(texts, "texts")
    pairs = _check_texts(pairs, "pairs")
    if len(pairs) != len(texts):
        raise BertfitError(f"got {len(texts)} texts but {len(pairs)} pairs; they must match one to one")
    return list(zip(texts, pairs))


def _check_texts(texts: Sequence[str], name: str) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise BertfitError(f"{name}[{bad[0]}] is {type(texts[bad[0]]).__name__}, expected a string")
    return texts


def _auto_engine(directory: Path, max_length: int | None, workload: str) -> str:
    """The fp32 engine that predicts faster with this model on this CPU (engine_choice.py): measured
    once per processor and model shape, then read from the cache."""
    from bertfit.predict.engine_choice import auto_engine
    from bertfit.weights import load_config

    config = load_config(directory)
    length = min(max_length or read_artifact(directory, config).max_length, config.max_position_embeddings)

    def both_engines() -> dict[str, Any] | None:
        exported = _onnx_runtime_classifier(directory, int8=False, required=False)
        if exported is None:
            return None
        return {"onnxruntime": exported.backend, "pytorch": TorchEngine(load_model(directory, require_head=True))}

    return auto_engine(config, length, both_engines, workload)


def _onnx_runtime_classifier(directory: Path, *, int8: bool, required: bool) -> "Predictor | None":
    """The model through ONNX Runtime (cached export), or None where it cannot run and is not required."""
    import importlib.util

    if not (importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx")):
        if required:
            raise BertfitError("engine 'onnxruntime' needs onnx and onnxruntime: pip install 'bertfit[export]'")
        return None
    from bertfit.predict.export import cached_export

    try:
        exported = cached_export(directory, int8=int8)
        classifier = Predictor.from_export(exported)
        classifier.name = Path(directory).name
        return classifier
    except (CheckpointError, ConfigError):
        raise  # the model directory itself is unusable: PyTorch would fail the same way
    except Exception as exc:  # noqa: BLE001 -- ONNX Runtime is an optimisation: PyTorch is the reference path
        if required:
            raise BertfitError(f"{directory}: could not export to ONNX Runtime: {exc}") from exc
        logger.warning("%s: ONNX Runtime export failed (%s); predicting with PyTorch (--engine pytorch skips the "
                       "attempt)", directory, exc)
        return None


def __getattr__(name: str) -> Any:
    """``TextClassifier``: the predictor's name before it served every task (a deprecated alias)."""
    if name == "TextClassifier":
        import warnings

        warnings.warn("TextClassifier is now Predictor (every task's model, not only classifiers); the old name "
                      "will be removed in a later release", DeprecationWarning, stacklevel=2)
        return Predictor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
