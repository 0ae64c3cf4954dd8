"""Which exact engine predicts faster on this CPU: what engine "auto" runs, measured, not assumed.

Both fp32 engines give the same logits (to ~1e-6), so the faster one is the better default. Which one
is faster depends on the processor and the shape of the model: on an AMD EPYC (Zen 3) and a Xeon
model 207, ONNX Runtime predicted faster than PyTorch; on a Xeon model 106 (Ice Lake) PyTorch was ~10%
faster on QA's 384-token windows (benchmarks/RESULTS.md, "Prediction speed for every task"). So, as
training measures its precision (precision.py), prediction measures its engine: once per processor,
thread count, library versions, model shape (layers, widths) and length, both engines run the same
synthetic features, for the two workloads a predictor serves:

- throughput (``predict``, ``evaluate``, the Python API): short texts and full-length windows, each
  engine cutting its own batches as it does when it predicts; the less time in total wins;
- latency (``serve``: one request, one short text): the median time of one 16-token text.

They can differ on one CPU: on the Xeon model 106, PyTorch's packed batches read more tokens a second,
while ONNX Runtime answers a single text sooner (one static graph, no per-operator overhead). PyTorch
must win by ``MARGIN`` to be chosen: the exported graph was the default before, and a tie keeps it.

The choice is cached (``cache_dir()/engine-choice``) when the measurement ran on a quiet machine;
``BERTFIT_CPU_ENGINE`` (onnxruntime / pytorch) makes "auto" take that engine without measuring.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from bertfit.batching import engine_logits
from bertfit.config import BertConfig
from bertfit.tokenizer import Encoded

logger = logging.getLogger(__name__)

ENGINE_ENV = "BERTFIT_CPU_ENGINE"
CHOICE_FORMAT = 2  # part of the cache key: bump when the probe or the rule changes
WORKLOADS = ("throughput", "latency")
# PyTorch must take this much less time to be chosen: ONNX Runtime answers single texts in about half
# PyTorch's time (README, serving), which a throughput probe does not see.
MARGIN = 0.05
SHORT_TOKENS = 32  # a tweet, a review sentence: most classification inputs
# Tokens per shape: a quarter of the predictor's budget per batch (Predictor.outputs' max_tokens), so that
# measuring costs 5.6-9.5 s for MiniLM-L6 on one thread (its six tasks in
# benchmarks/predict_tasks_engines.json), once per CPU and model shape.
PROBE_TOKENS = 2048
REPEATS = 2  # timed passes per engine and shape after one warm-up; the best counts
SINGLE_TOKENS = 16  # one short request (latency)
SINGLE_CALLS = 15  # timed single-text calls per engine (the median counts), after 3 untimed
QUIET_CPU_SHARE = 0.8  # below it other processes competed for the cores: not cached (as precision.py)


@dataclass(frozen=True)
class EngineTimings:
    """Seconds per probe shape (the best of REPEATS passes) for each engine, and each engine's median
    seconds for one short text."""

    shapes: list[tuple[int, int]]  # (features, tokens each)
    onnxruntime: list[float]
    pytorch: list[float]
    single: dict[str, float]  # engine -> median seconds of one SINGLE_TOKENS text
    threads: int
    cpu_share: float = 1.0
    seconds: float = 0.0  # what measuring took

    @property
    def quiet(self) -> bool:
        return self.cpu_share >= QUIET_CPU_SHARE

    def tokens_per_second(self, engine: str) -> float:
        tokens = sum(n * length for n, length in self.shapes)
        return tokens / max(sum(getattr(self, engine)), 1e-9)


def decide(timings: EngineTimings, workload: str = "throughput") -> str:
    """"pytorch" where it takes at least MARGIN less time than ONNX Runtime on the workload's probe
    (throughput: the batches in total; latency: one short text), else "onnxruntime"."""
    if workload == "latency":
        pytorch, onnx = timings.single["pytorch"], timings.single["onnxruntime"]
    else:
        pytorch, onnx = sum(timings.pytorch), sum(timings.onnxruntime)
    return "pytorch" if pytorch < (1.0 - MARGIN) * onnx else "onnxruntime"


def probe_shapes(max_length: int) -> list[tuple[int, int]]:
    """Short texts and full-length features (QA's windows, long documents), PROBE_TOKENS each."""
    short = min(SHORT_TOKENS, max_length)
    shapes = [(PROBE_TOKENS // short, short)]
    if max_length > short:
        shapes.append((max(1, PROBE_TOKENS // max_length), max_length))
    return shapes


def choice_key(config: BertConfig, max_length: int, threads: int) -> str:
    """What the faster engine depends on: the processor, the libraries, the thread count and the
    model's shape -- not its weights (every fine-tuned copy of one model shares the answer)."""
    import onnxruntime

    from bertfit.precision import read_isa

    isa = read_isa()
    shape = [config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.intermediate_size,
             config.hidden_act, config.problem_type, len(config.labels)]
    text = "|".join(map(str, [isa.model, " ".join(sorted(isa.flags)), isa.torch_capability, torch.__version__,
                              onnxruntime.__version__, threads, max_length, *shape, CHOICE_FORMAT]))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def cache_path(key: str) -> Path:
    from bertfit.io import cache_dir

    return cache_dir() / "engine-choice" / f"{key}.json"


def forced_engine() -> str | None:
    """The engine ``BERTFIT_CPU_ENGINE`` imposes on "auto", or None where it is unset or ``auto``."""
    from bertfit.errors import ConfigError

    raw = os.environ.get(ENGINE_ENV, "").strip().lower()
    if raw in ("", "auto"):
        return None
    if raw not in ("onnxruntime", "pytorch"):
        raise ConfigError(f"{ENGINE_ENV}={raw!r}: choose auto, onnxruntime or pytorch")
    return raw


def measure(engines: dict[str, object], shapes: list[tuple[int, int]], *, vocab_size: int, pad_id: int,
            width: int, clock: Callable[[], float] = time.perf_counter) -> EngineTimings:
    """Run each engine (onnxruntime, pytorch) over synthetic features of each shape, interleaved: one
    warm-up, then REPEATS timed passes; the best pass counts (the least disturbed). Then one short
    text at a time, SINGLE_CALLS times each, alternating; the median counts."""
    rng = np.random.default_rng(0)

    def features(count: int, length: int) -> list[Encoded]:
        ids = rng.integers(min(1000, vocab_size - 1), vocab_size, size=(count, length)).tolist()
        return [Encoded(row, [0] * length, False) for row in ids]

    def run(name: str, encoded: list[Encoded]) -> float:
        t0 = clock()
        engine_logits(engines[name], encoded, width, pad_id, max_tokens=PROBE_TOKENS, max_batch=128)
        return clock() - t0

    batches = [features(count, length) for count, length in shapes]
    single = features(1, SINGLE_TOKENS)
    best = {name: [float("inf")] * len(shapes) for name in engines}
    calls: dict[str, list[float]] = {name: [] for name in engines}
    started, cpu_started = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for rep in range(REPEATS + 1):
            order = list(engines) if rep % 2 == 0 else list(reversed(engines))  # neither always runs first
            for name in order:
                for i, encoded in enumerate(batches):
                    seconds = run(name, encoded)
                    if rep:
                        best[name][i] = min(best[name][i], seconds)
        for call in range(SINGLE_CALLS + 3):
            for name in engines:
                seconds = run(name, single)
                if call >= 3:
                    calls[name].append(seconds)
    wall = time.perf_counter() - started
    threads = torch.get_num_threads()
    share = (time.process_time() - cpu_started) / max(wall * threads, 1e-9)
    return EngineTimings(shapes, best["onnxruntime"], best["pytorch"],
                         {name: float(np.median(times)) for name, times in calls.items()}, threads,
                         round(min(share, 1.0), 3), round(wall, 3))


def auto_engine(config: BertConfig, max_length: int, load_engines: Callable[[], dict[str, object] | None],
                workload: str = "throughput") -> str:
    """The engine "auto" runs for this model (its ``config``) on this CPU and workload ("throughput" or
    "latency"): forced, cached, or measured now (both workloads at once); PyTorch where onnx or
    onnxruntime is not installed (nothing to measure against).

    ``load_engines`` gives both engines ({"onnxruntime": ..., "pytorch": ...}) for a measurement, or
    None where ONNX Runtime cannot run this model (then PyTorch, as before the measurement existed)."""
    import importlib.util

    if workload not in WORKLOADS:
        raise ValueError(f"workload {workload!r}: one of {', '.join(WORKLOADS)}")
    forced = forced_engine()
    if forced is not None:
        return forced
    if not (importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx")):
        return "pytorch"
    threads = torch.get_num_threads()
    path = cache_path(choice_key(config, max_length, threads))
    if path.is_file():
        try:
            return _check_engine(json.loads(path.read_text(encoding="utf-8"))["engine"][workload])
        except (OSError, ValueError, TypeError, KeyError):
            logger.debug("%s is unreadable; measuring again", path)
    engines = load_engines()
    if engines is None:
        return "pytorch"
    shapes = probe_shapes(max_length)
    logger.info("choosing the faster prediction engine for this CPU and model shape (once; %s, and single texts)",
                ", ".join(f"{n} x {t} tokens" for n, t in shapes))
    timings = measure(engines, shapes, vocab_size=config.vocab_size, pad_id=config.pad_token_id,
                      width=len(config.labels))
    chosen = {w: decide(timings, w) for w in WORKLOADS}
    logger.info("prediction engine for batches: %s (%.0f tokens/s, %s %.0f); for single texts: %s (%.1f ms, %s %.1f); "
                "this CPU, %d thread%s; measured in %.1f s%s",
                _NAMES[chosen["throughput"]], timings.tokens_per_second(chosen["throughput"]),
                _NAMES[_other(chosen["throughput"])], timings.tokens_per_second(_other(chosen["throughput"])),
                _NAMES[chosen["latency"]], 1000 * timings.single[chosen["latency"]],
                _NAMES[_other(chosen["latency"])], 1000 * timings.single[_other(chosen["latency"])],
                threads, "" if threads == 1 else "s", timings.seconds,
                "" if timings.quiet else "; the machine was busy, so not cached")
    if timings.quiet:
        _write(path, {"format": CHOICE_FORMAT, "engine": chosen, "timings": asdict(timings),
                      "tokens_per_second": {name: round(timings.tokens_per_second(name), 1) for name in _NAMES},
                      "single_text_ms": {name: round(1000 * timings.single[name], 2) for name in _NAMES}})
    return chosen[workload]


_NAMES = {"onnxruntime": "ONNX Runtime fp32", "pytorch": "PyTorch fp32"}


def _other(engine: str) -> str:
    return "pytorch" if engine == "onnxruntime" else "onnxruntime"


def _check_engine(name: object) -> str:
    if name not in _NAMES:
        raise ValueError(f"unknown engine {name!r}")
    return str(name)


def _write(path: Path, record: dict) -> None:
    from bertfit.io import write_json_atomic

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, record)
    except OSError as exc:  # a read-only cache (or a race with another process) only costs a measurement
        logger.debug("could not cache the engine choice in %s: %s", path, exc)
