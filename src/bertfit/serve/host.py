"""The model side of the server: what the page shows without loading the model, and ModelHost
(loading, and computing one batch on the worker thread). Request parsing is requests.py."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from bertfit.errors import ConfigError
from bertfit.serve.batcher import Job
from bertfit.serve.config import ServeConfig, default_threads

if TYPE_CHECKING:
    from bertfit.predict.predictor import Predictor

logger = logging.getLogger(__name__)

LOADING, READY, FAILED = "loading", "ready", "failed"
TRIM_INTERVAL_S = 1.0  # how often the worker returns freed memory to the OS (see _malloc_trim)


# ---------------------------------------------------------------------------------------------
# What the page and /info show, read without loading the model (and without torch)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelInfo:
    name: str
    labels: list[str]
    base_model: str | None
    architecture: dict[str, int]
    metrics: dict[str, Any] | None  # metrics.json from the run, if any
    task: str | None = None  # task.json's task name (None: a model without one; known once loaded)


def read_model_info(directory: Path) -> ModelInfo:
    """Name, labels, architecture and recorded metrics of a model directory."""
    from bertfit.weights import load_config

    config = load_config(directory)
    if config.num_labels < (2 if config.problem_type == "single_label_classification" else 1):
        raise ConfigError(f"{directory}: config.json has no labels (id2label); this is not a trained model")
    train_config = _read_json(directory / "train_config.json")
    metrics = _read_json(directory / "metrics.json")
    task = _read_json(directory / "task.json")
    base = train_config.get("model") if isinstance(train_config, dict) else None
    return ModelInfo(
        name=directory.name,  # as Predictor.load names it
        labels=list(config.labels),
        base_model=str(base) if base is not None else None,
        architecture={"layers": config.num_hidden_layers, "hidden_size": config.hidden_size,
                      "attention_heads": config.num_attention_heads,
                      "max_positions": config.max_position_embeddings},
        metrics=metrics if isinstance(metrics, dict) else None,
        task=str(task["task"]) if isinstance(task, dict) and task.get("task") is not None else None,
    )


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.warning("%s is unreadable (%s); the page will not show it", path, exc)
        return None


def local_model_dir(run: str) -> Path | None:
    """The directory when ``run`` is a local path (checked now, so mistakes fail before binding).

    Bundled names and hub ids resolve in the background, because resolving may extract or
    download the model, which is part of loading it.
    """
    path = Path(run).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{path}: no config.json here; pass a run directory from `bertfit train` "
                              "or a model directory with config.json, model.safetensors and tokenizer files")
        return path
    if path.exists():
        raise ConfigError(f"{path}: is a file; pass the run's directory")
    if run.startswith((".", "/", "~")) or "\\" in run or run.count("/") > 1:
        raise ConfigError(f"{run}: no such directory")
    return None


# ---------------------------------------------------------------------------------------------
# The model side: loading, and computing one batch (on the worker thread)
# ---------------------------------------------------------------------------------------------

class ModelHost:
    """The classifier, its load status, and the batch function the batcher calls."""

    def __init__(self, config: ServeConfig, info: ModelInfo | None) -> None:
        self.config = config
        self.info = info
        self.classifier: "Predictor | None" = None
        self.engine: str | None = None  # "onnxruntime" or "pytorch", once loaded
        self.threads: int | None = None  # the CPU threads the worker thread really computes with, once loaded
        self.status = LOADING
        self.error: str | None = None
        self._trim = _malloc_trim()
        self._last_trim = time.monotonic()

    def load(self) -> None:
        """Load and warm up (on the worker thread, so its first real batch runs warm)."""
        self._wait_at_gate()
        import torch

        from bertfit.hub import resolve_model
        from bertfit.predict.predictor import Predictor

        # Set on this thread, the one that runs every batch: OpenMP's thread count is per thread.
        torch.set_num_threads(self.config.threads or default_threads())
        started = time.perf_counter()
        directory = resolve_model(self.config.run)
        if self.info is None:
            self.info = read_model_info(Path(directory))
        # A server answers requests as they come, mostly one short text each: "auto" picks the engine that
        # answers one text sooner (engine_choice.py), not the one that reads batches faster.
        classifier = Predictor.load(directory, int8=self.config.int8, bf16=self.config.bf16, device=self.config.device,
                                    engine=self.config.engine, workload="latency")
        self.engine = classifier.engine
        self.threads = torch.get_num_threads()  # read back on the worker thread: what its batches use
        # The first forward pass pays for allocator and thread-pool start-up; do it before /ready.
        for item in classifier.task.sample_inputs():
            classifier.records([item])
        self.classifier = classifier
        logger.info("model %s loaded and warmed up in %.1f s (%s; labels: %s; %d CPU threads)", classifier.name,
                    time.perf_counter() - started, classifier.engine, ", ".join(classifier.labels),
                    torch.get_num_threads())

    def run_batch(self, jobs: Sequence[Job]) -> list[bytes | BaseException]:
        """Every job's JSON answer, computed together. Runs on the worker thread.

        Single texts and pairs are two model calls (the model takes one or the other); each call
        sorts its texts by length itself. If a call fails, its jobs are retried one by one, so one
        bad request cannot fail the requests it was batched with.
        """
        from bertfit.batching import Abandoned, stop_when

        self._wait_at_gate()
        out: list[bytes | BaseException] = [b""] * len(jobs)
        for with_pairs in (False, True):
            group = [i for i, job in enumerate(jobs) if (job.pairs is not None) == with_pairs]
            if not group:
                continue
            try:
                # Work whose callers all stopped waiting (504, disconnect) is dropped between batches,
                # so one abandoned large request does not hold up every request queued behind it.
                with stop_when(lambda: all(jobs[i].abandoned for i in group)):
                    for i, payload in zip(group, self._predict([jobs[i] for i in group])):
                        out[i] = payload
            except Abandoned as exc:
                logger.warning("dropped the work of %d abandoned request(s): %s", len(group), exc)
                for i in group:
                    out[i] = exc
            except Exception:  # noqa: BLE001 - isolate the failing request below
                if len(group) == 1:
                    raise
                for i in group:
                    try:
                        out[i] = self._predict([jobs[i]])[0]
                    except Exception as exc:  # noqa: BLE001 - that request's own 500
                        logger.exception("prediction failed for one request")
                        out[i] = exc
        if self._trim is not None and time.monotonic() - self._last_trim > TRIM_INTERVAL_S:
            self._trim()  # see _malloc_trim: keeps RSS flat under varying batch shapes
            self._last_trim = time.monotonic()
        return out

    def explain(self, items: Sequence[Any], pairs: Sequence[str] | None, targets: Sequence[str] | None,
                deadline: float) -> bytes:
        """The /explain answer (runs on the model's worker thread, between prediction batches): per input
        its prediction and explanations, as ``Predictor.explain``; TimeoutError once ``deadline`` passes."""
        self._wait_at_gate()
        assert self.classifier is not None
        explained = self.classifier.explain(list(items), pairs, which=targets, deadline=deadline)
        return json.dumps({"model": self.classifier.name, "task": self.classifier.task.name,
                           "labels": self.classifier.labels, "explanations": explained},
                          ensure_ascii=False).encode("utf-8")

    def _wait_at_gate(self) -> None:
        """Tests only: hold this (worker) thread while ServeConfig.gate_file exists."""
        gate = self.config.gate_file
        while gate is not None and os.path.exists(gate):
            time.sleep(0.005)

    def _predict(self, jobs: Sequence[Job]) -> list[bytes]:
        assert self.classifier is not None
        # A job's texts are strings, or the task's input objects ({"tokens": [...]}); records() takes both.
        texts = [t for job in jobs for t in job.texts]
        pairs = [p for job in jobs for p in job.pairs] if jobs[0].pairs is not None else None  # type: ignore[union-attr]
        items = texts if pairs is None else list(zip(texts, pairs))
        records = self.classifier.records(items, max_batch=self.config.max_batch_size)
        return prediction_payloads(self.classifier.name, self.classifier.labels, records,
                                   [len(job.texts) for job in jobs], task=self.classifier.task.name)


def prediction_payloads(model: str, labels: list[str], records: list[dict], sizes: Sequence[int], *,
                        task: str) -> list[bytes]:
    """The JSON answer of each request, from the task's prediction records of all their texts in order
    (``sizes``: texts per request). The records come from the task's decode (tasks/), so the server
    returns what ``bertfit predict`` prints, whatever the task."""
    payloads, start = [], 0
    for size in sizes:
        payloads.append(json.dumps({"model": model, "task": task, "labels": labels,
                                    "predictions": records[start:start + size]}, ensure_ascii=False).encode("utf-8"))
        start += size
    return payloads


def _malloc_trim() -> Callable[[], None] | None:
    """glibc's malloc_trim, which hands freed heap pages back to the OS; None elsewhere.

    Why: every batch has a different shape, so activation buffers of ever-changing sizes are
    freed into glibc's arenas, which fragment; the server's RSS climbed 21% in 60 s of load and
    kept rising. Trimming once a second keeps it flat (measured) for a small cost, where
    pinning the mmap threshold instead cost ~40% of throughput.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)
