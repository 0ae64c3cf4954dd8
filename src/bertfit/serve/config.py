"""The server's settings: ServeConfig (validated once, when built) and the `bertfit serve` flags."""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import asdict, dataclass

from bertfit.predict.engines import ENGINES, add_engine_argument
from bertfit.errors import ConfigError


@dataclass(frozen=True)
class ServeConfig:
    """Everything the server needs to know; validated once when built."""

    run: str
    host: str = "127.0.0.1"
    port: int = 8000
    int8: bool = False
    bf16: bool = False  # bf16 autocast in PyTorch (fast with AVX512-BF16/AMX or a GPU; emulated elsewhere)
    device: str | None = None
    engine: str = "auto"  # see Predictor.load: on the CPU, the engine measured to answer one text sooner
    threads: int | None = None  # torch CPU threads; None: all cores but one (see default_threads)
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256
    max_texts_per_request: int = 64
    max_chars: int = 10_000
    max_body_bytes: int = 1 << 20
    timeout_s: float = 10.0
    # /explain's own deadline: an explanation costs about as much as 20 predictions of its text
    explain_timeout_s: float = 30.0
    access_log: bool = False
    # Tests only: while this file exists, loading and every batch wait (on the worker thread), so
    # that a test can hold the server in "loading" or "computing" for as long as it needs to
    # observe it, whatever the machine's speed.
    gate_file: str | None = None

    def __post_init__(self) -> None:
        positive = ("max_batch_size", "max_queue", "max_texts_per_request", "max_chars", "max_body_bytes")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if not (0 <= self.max_wait_ms <= 10_000) or not math.isfinite(self.max_wait_ms):
            raise ConfigError(f"--max-wait-ms must be between 0 and 10000, got {self.max_wait_ms!r}")
        if not (0 < self.timeout_s <= 3600) or not math.isfinite(self.timeout_s):
            raise ConfigError(f"--timeout-s must be above 0 and at most 3600, got {self.timeout_s!r}")
        if not (0 < self.explain_timeout_s <= 3600) or not math.isfinite(self.explain_timeout_s):
            raise ConfigError(f"--explain-timeout-s must be above 0 and at most 3600, got {self.explain_timeout_s!r}")
        if self.engine not in ENGINES:
            raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.int8 and self.bf16:
            raise ConfigError("choose --int8 or --bf16, not both")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {self.threads}")
        if not (0 <= self.port <= 65535):
            raise ConfigError(f"--port must be between 0 and 65535, got {self.port}")
        if self.max_texts_per_request > self.max_queue:
            # Otherwise a request within the per-request limit could never fit in the queue.
            raise ConfigError(
                f"--max-texts-per-request ({self.max_texts_per_request}) must not exceed --max-queue "
                f"({self.max_queue}); a request that large could never be queued"
            )

    def limits(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items()
                if k in ("max_batch_size", "max_wait_ms", "max_queue", "max_texts_per_request", "max_chars",
                         "max_body_bytes", "timeout_s", "explain_timeout_s")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `bertfit serve` options."""
    d = ServeConfig(run="")
    parser.add_argument("run", help="run directory from `bertfit train`, or any BERT classifier directory")
    parser.add_argument("--host", default=d.host,
                        help=f"interface to listen on (default {d.host}; 0.0.0.0 exposes the server to your network)")
    parser.add_argument("--port", type=int, default=d.port, help=f"TCP port (default {d.port})")
    parser.add_argument("--int8", action="store_true",
                        help="dynamic int8 quantization of the linear layers (CPU only; faster, slightly different)")
    parser.add_argument("--bf16", action="store_true",
                        help="bf16 autocast in PyTorch: faster where the CPU has AVX512-BF16/AMX (or on a GPU), "
                             "slightly different; measure it with bertfit evaluate --bf16")
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cuda if available)")
    add_engine_argument(parser)
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for the model (default: all cores but one, which is left to the "
                             f"event loop and the network; {default_threads()} here)")
    parser.add_argument("--max-batch-size", type=int, default=d.max_batch_size,
                        help=f"most texts the model computes in one batch (default {d.max_batch_size})")
    parser.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms,
                        help="longest a request waits for others to join its batch "
                             f"(default {d.max_wait_ms:g} ms; 0 = no waiting)")
    parser.add_argument("--max-queue", type=int, default=d.max_queue,
                        help=f"most texts waiting for a batch; more gets HTTP 429 at once (default {d.max_queue})")
    parser.add_argument("--max-texts-per-request", type=int, default=d.max_texts_per_request,
                        help=f"most texts in one request; more gets HTTP 422 (default {d.max_texts_per_request})")
    parser.add_argument("--max-chars", type=int, default=d.max_chars,
                        help=f"most characters in one text; more gets HTTP 422 (default {d.max_chars})")
    parser.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes,
                        help=f"largest request body; more gets HTTP 413 (default {d.max_body_bytes} = 1 MiB)")
    parser.add_argument("--timeout-s", type=float, default=d.timeout_s,
                        help=f"deadline for one request, queueing included; past it: HTTP 504 (default {d.timeout_s:g})")
    parser.add_argument("--explain-timeout-s", type=float, default=d.explain_timeout_s,
                        help="deadline for one /explain request (word-level explanations), waiting included; past "
                             f"it: HTTP 504 (default {d.explain_timeout_s:g})")
    parser.add_argument("--access-log", action="store_true", help="log every request (off by default: it costs time)")
    parser.add_argument("--gate-file", default=None, help=argparse.SUPPRESS)  # tests only, see ServeConfig


def default_threads() -> int:
    """All cores but one. The model's thread pool spins at every op; if it takes every core it
    fights the event loop (and the tokenizer) for them, and a pool thread that gets descheduled
    stalls the whole op. On 2 cores under 64 clients, 2 threads served 30.3 req/s and 1 thread 74.8
    (benchmarks/SERVE_RESULTS.md, "Model threads on 2 cores")."""
    return max(1, (os.cpu_count() or 1) - 1)
