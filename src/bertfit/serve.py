"""Serve a trained classifier over HTTP: a JSON API, a web page, health checks and metrics.

POST /predict takes {"texts": [...]} (optionally with "pairs": [...]) and answers with each text's
label, confidence and class probabilities. Concurrent requests are batched dynamically. The page at /
classifies texts typed into it and shows the model's test metrics; /docs and /openapi.json describe
the API; /health (liveness), /ready (model loaded) and /metrics (Prometheus) are for operators.
The model loads in the background: /ready answers 503 until it has loaded and run a warm-up pass.
SIGTERM stops accepting connections, finishes the requests in flight, and exits with status 0.
Needs the serve extra: pip install 'bertfit[serve]'.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at
# runtime, and those name classes imported inside create_app (where the extra is imported lazily).
import argparse
import asyncio
import base64
import hashlib
import importlib.resources
import json
import logging
import math
import os
import re
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Sequence

from bertfit.errors import BertfitError, ConfigError
from bertfit.serve_batcher import (DeadlineExceededError, DynamicBatcher, Job, QueueFullError,
                                   ShuttingDownError)
from bertfit.serve_metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from bertfit.serve_metrics import ServeMetrics

if TYPE_CHECKING:  # fastapi is an optional extra, imported only when a server is built
    from fastapi import FastAPI

    from bertfit.predict import TextClassifier

logger = logging.getLogger(__name__)

# Paths that get their own label in the metrics; anything else is "other", so that scanners
# probing random URLs cannot grow the metric families without bound.
KNOWN_ENDPOINTS = frozenset({"/", "/predict", "/info", "/health", "/ready", "/metrics", "/openapi.json",
                             "/docs", "/docs/oauth2-redirect", "/redoc"})
LOADING, READY, FAILED = "loading", "ready", "failed"
TRIM_INTERVAL_S = 1.0  # how often the worker returns freed memory to the OS (see _malloc_trim)


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ServeConfig:
    """Everything the server needs to know; validated once when built."""

    run: str
    host: str = "127.0.0.1"
    port: int = 8000
    int8: bool = False
    device: str | None = None
    engine: str = "auto"  # see TextClassifier.load: ONNX Runtime on the CPU when installed
    threads: int | None = None  # torch CPU threads; None: all cores but one (see default_threads)
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256
    max_texts_per_request: int = 64
    max_chars: int = 10_000
    max_body_bytes: int = 1 << 20
    timeout_s: float = 10.0
    access_log: bool = False
    load_delay_s: float = 0.0  # tests only: widen the "loading" window to observe it

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
        from bertfit.predict import ENGINES  # the server imports torch to load the model anyway

        if self.engine not in ENGINES:
            raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
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
                         "max_body_bytes", "timeout_s")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `bertfit serve` options."""
    d = ServeConfig(run="")
    parser.add_argument("run", help="run directory from `bertfit train`, or any BERT classifier directory")
    parser.add_argument("--host", default=d.host,
                        help=f"interface to listen on (default {d.host}; 0.0.0.0 exposes the server to your network)")
    parser.add_argument("--port", type=int, default=d.port, help=f"TCP port (default {d.port})")
    parser.add_argument("--int8", action="store_true",
                        help="dynamic int8 quantization of the linear layers (CPU only; faster, slightly different)")
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cuda if available)")
    from bertfit.cli import add_engine_argument

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
    parser.add_argument("--access-log", action="store_true", help="log every request (off by default: it costs time)")
    parser.add_argument("--load-delay-s", type=float, default=0.0, help=argparse.SUPPRESS)


def default_threads() -> int:
    """All cores but one. The model's thread pool spins at every op; if it takes every core it
    fights the event loop (and the tokenizer) for them, and a pool thread that gets descheduled
    stalls the whole op. On 2 cores under 64 clients, 2 threads served 30.3 req/s and 1 thread 74.8
    (benchmarks/SERVE_RESULTS.md, "Model threads on 2 cores")."""
    return max(1, (os.cpu_count() or 1) - 1)


def command(args: argparse.Namespace) -> int:
    """`bertfit serve RUN ...`: run the server until SIGTERM or Ctrl+C."""
    config = ServeConfig(
        run=args.run, host=args.host, port=args.port, int8=args.int8, device=args.device, engine=args.engine,
        threads=args.threads,
        max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
        max_texts_per_request=args.max_texts_per_request, max_chars=args.max_chars,
        max_body_bytes=args.max_body_bytes, timeout_s=args.timeout_s, access_log=args.access_log,
        load_delay_s=args.load_delay_s,
    )
    return serve(config)


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


def read_model_info(directory: Path) -> ModelInfo:
    """Name, labels, architecture and recorded metrics of a model directory."""
    from bertfit.config import BertConfig

    config = BertConfig.from_json_file(directory / "config.json")
    if config.num_labels < 2:
        raise ConfigError(f"{directory}: config.json has no labels (id2label); this is not a trained classifier")
    train_config = _read_json(directory / "train_config.json")
    metrics = _read_json(directory / "metrics.json")
    base = train_config.get("model") if isinstance(train_config, dict) else None
    return ModelInfo(
        name=directory.name,  # as TextClassifier.load names it
        labels=list(config.labels),
        base_model=str(base) if base is not None else None,
        architecture={"layers": config.num_hidden_layers, "hidden_size": config.hidden_size,
                      "attention_heads": config.num_attention_heads,
                      "max_positions": config.max_position_embeddings},
        metrics=metrics if isinstance(metrics, dict) else None,
    )


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.warning("%s is unreadable (%s); the page will not show it", path, exc)
        return None


def _local_model_dir(run: str) -> Path | None:
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
# Errors as JSON
# ---------------------------------------------------------------------------------------------

class ApiError(Exception):
    """An error answer: status, a machine-readable code, a message, and the limit it broke."""

    def __init__(self, status: int, code: str, message: str, *, limit: str | None = None,
                 maximum: float | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.limit, self.maximum, self.headers = limit, maximum, headers

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.message, "code": self.code}
        if self.limit is not None:
            out["limit"] = self.limit
            out["max"] = self.maximum
        return out


def _check_strings(value: Any, name: str, config: ServeConfig) -> list[str]:
    if not isinstance(value, list):
        raise ApiError(422, "wrong_type", f"{name} must be a list of strings, got {_json_type(value)}")
    if not value:
        raise ApiError(422, "empty", f"{name} must not be empty")
    if len(value) > config.max_texts_per_request:
        raise ApiError(422, "too_many_texts",
                       f"{name} has {len(value)} items; at most {config.max_texts_per_request} per request "
                       "(limit max_texts_per_request); split the request",
                       limit="max_texts_per_request", maximum=config.max_texts_per_request)
    for i, text in enumerate(value):
        if not isinstance(text, str):
            raise ApiError(422, "wrong_type", f"{name}[{i}] is {_json_type(text)}, expected a string")
        if len(text) > config.max_chars:
            raise ApiError(422, "text_too_long",
                           f"{name}[{i}] has {len(text)} characters; at most {config.max_chars} per text "
                           "(limit max_chars)", limit="max_chars", maximum=config.max_chars)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # JSON allows "\ud800"; the tokenizer does not. Refuse it here rather than fail a batch.
            raise ApiError(422, "invalid_text", f"{name}[{i}] contains an unpaired surrogate (invalid Unicode)") from None
    return value


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def parse_predict_request(body: bytes, config: ServeConfig) -> tuple[list[str], list[str] | None]:
    """Validated (texts, pairs) from a /predict body, or an ApiError naming what is wrong."""
    try:
        payload = json.loads(body)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ApiError(422, "wrong_type",
                       f'the request body must be a JSON object like {{"texts": ["..."]}}, got {_json_type(payload)}')
    unknown = sorted(set(payload) - {"texts", "pairs"})
    if unknown:
        raise ApiError(422, "unknown_field",
                       f"unknown field {unknown[0]!r}; the body takes \"texts\" and optionally \"pairs\"")
    if "texts" not in payload:
        raise ApiError(422, "missing_field", 'missing field "texts" (a list of strings)')
    texts = _check_strings(payload["texts"], "texts", config)
    pairs = payload.get("pairs")
    if pairs is not None:
        pairs = _check_strings(pairs, "pairs", config)
        if len(pairs) != len(texts):
            raise ApiError(422, "pairs_mismatch",
                           f"got {len(texts)} texts but {len(pairs)} pairs; pairs must match texts one to one")
    return texts, pairs


# ---------------------------------------------------------------------------------------------
# The model side: loading, and computing one batch (on the worker thread)
# ---------------------------------------------------------------------------------------------

class ModelHost:
    """The classifier, its load status, and the batch function the batcher calls."""

    def __init__(self, config: ServeConfig, info: ModelInfo | None) -> None:
        self.config = config
        self.info = info
        self.classifier: "TextClassifier | None" = None
        self.engine: str | None = None  # "onnxruntime" or "pytorch", once loaded
        self.status = LOADING
        self.error: str | None = None
        self._trim = _malloc_trim()
        self._last_trim = time.monotonic()

    def load(self) -> None:
        """Load and warm up (on the worker thread, so its first real batch runs warm)."""
        if self.config.load_delay_s > 0:
            time.sleep(self.config.load_delay_s)
        import torch

        from bertfit.checkpoints import resolve_model
        from bertfit.predict import TextClassifier

        # Set on this thread, the one that runs every batch: OpenMP's thread count is per thread.
        torch.set_num_threads(self.config.threads or default_threads())
        started = time.perf_counter()
        directory = resolve_model(self.config.run)
        if self.info is None:
            self.info = read_model_info(Path(directory))
        classifier = TextClassifier.load(directory, int8=self.config.int8, device=self.config.device,
                                         engine=self.config.engine)
        self.engine = classifier.engine
        # The first forward pass pays for allocator and thread-pool start-up; do it before /ready.
        classifier.predict_proba(["warm-up"])
        classifier.predict_proba(["warm-up"], ["pair"])
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
        out: list[bytes | BaseException] = [b""] * len(jobs)
        for with_pairs in (False, True):
            group = [i for i, job in enumerate(jobs) if (job.pairs is not None) == with_pairs]
            if not group:
                continue
            try:
                for i, payload in zip(group, self._predict([jobs[i] for i in group])):
                    out[i] = payload
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

    def _predict(self, jobs: Sequence[Job]) -> list[bytes]:
        assert self.classifier is not None
        texts = [t for job in jobs for t in job.texts]
        pairs = [p for job in jobs for p in job.pairs] if jobs[0].pairs is not None else None  # type: ignore[union-attr]
        proba = self.classifier.predict_proba(texts, pairs, max_batch=self.config.max_batch_size)
        labels = self.classifier.labels
        payloads, start = [], 0
        for job in jobs:
            rows = proba[start:start + len(job.texts)]
            start += len(job.texts)
            predictions = []
            for row in rows.tolist():
                best = max(range(len(row)), key=row.__getitem__)
                predictions.append({"label": labels[best], "confidence": row[best],
                                    "probabilities": dict(zip(labels, row))})
            payloads.append(json.dumps({"model": self.classifier.name, "labels": labels,
                                        "predictions": predictions}, ensure_ascii=False).encode("utf-8"))
        return payloads


# ---------------------------------------------------------------------------------------------
# The web page
# ---------------------------------------------------------------------------------------------

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


def _page() -> tuple[bytes, str]:
    """The page's HTML and a Content-Security-Policy that allows only its own inline code.

    The policy lists the SHA-256 of the inline <script> and <style>: nothing else can run or
    style the page, and it can talk to this server only (connect-src 'self').
    """
    html = (importlib.resources.files("bertfit") / "static" / "index.html").read_text(encoding="utf-8")

    def hashes(tag: str) -> str:
        found = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in found)

    csp = (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
           "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return html.encode("utf-8"), csp


# ---------------------------------------------------------------------------------------------
# The application
# ---------------------------------------------------------------------------------------------

def _require_serve_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise BertfitError(
            f"the HTTP server needs the serve extra ({exc.name} is not installed): pip install 'bertfit[serve]'"
        ) from None


def create_app(config: ServeConfig) -> "FastAPI":
    """The FastAPI application. The model loads in the background once the app starts.

    If loading fails, /ready reports it and ``app.state.on_load_failure()`` (if set) is called:
    ``serve`` sets it to stop the server, since a server that can never become ready should not
    linger.
    """
    _require_serve_extra()
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from pydantic import BaseModel, Field
    from starlette.exceptions import HTTPException as StarletteHTTPException

    local_dir = _local_model_dir(config.run)
    host = ModelHost(config, read_model_info(local_dir) if local_dir is not None else None)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bertfit-model")
    batcher = DynamicBatcher(host.run_batch, max_batch_size=config.max_batch_size,
                             max_wait_s=config.max_wait_ms / 1000.0, max_queue=config.max_queue,
                             executor=executor)
    metrics = ServeMetrics(queue_depth=lambda: batcher.queue_depth, ready=lambda: float(host.status == READY))
    batcher.on_batch = metrics.observe_batch
    page, page_csp = _page()

    async def load_model() -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(executor, host.load)
            host.status = READY
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported through /ready and the exit status
            host.status, host.error = FAILED, str(exc)
            if isinstance(exc, BertfitError):  # a user's mistake: the message says it all
                logger.error("could not load the model: %s", exc)
            else:
                logger.exception("could not load the model")
            on_failure = getattr(app.state, "on_load_failure", None)
            if on_failure is not None:
                on_failure()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        loader = asyncio.get_running_loop().create_task(load_model(), name="bertfit-load")
        app.state.loader = loader
        yield
        # uvicorn has already waited for in-flight requests; drain whatever is still queued.
        if not loader.done():
            loader.cancel()
        await batcher.close()

    # -- documented shapes (for /openapi.json and /docs) ------------------------------------
    class PredictRequest(BaseModel):
        texts: list[str] = Field(..., min_length=1, max_length=config.max_texts_per_request,
                                 description=f"texts to classify (1 to {config.max_texts_per_request}, "
                                             f"each at most {config.max_chars} characters)",
                                 examples=[["I love this!", "Worst purchase ever."]])
        pairs: list[str] | None = Field(None, description="optional second segment for each text "
                                                          "(sentence-pair tasks); same length as texts")

    class Prediction(BaseModel):
        label: str = Field(..., description="the most probable class")
        confidence: float = Field(..., description="its probability")
        probabilities: dict[str, float] = Field(..., description="every class's probability")

    class PredictResponse(BaseModel):
        model: str
        labels: list[str] = Field(..., description="class names, in the model's order")
        predictions: list[Prediction] = Field(..., description="one per text, in request order")

    class ErrorResponse(BaseModel):
        error: str = Field(..., description="what went wrong, in words")
        code: str = Field(..., description="machine-readable reason, e.g. too_many_texts, queue_full")
        limit: str | None = Field(None, description="the server limit that was exceeded, if any")
        max: float | None = Field(None, description="that limit's value")

    errors_doc = {
        400: {"model": ErrorResponse, "description": "malformed JSON"},
        408: {"model": ErrorResponse, "description": "the body did not arrive before the deadline"},
        413: {"model": ErrorResponse, "description": "body larger than max_body_bytes"},
        422: {"model": ErrorResponse, "description": "wrong types, empty texts, or a per-request limit"},
        429: {"model": ErrorResponse, "description": "queue full; retry later"},
        503: {"model": ErrorResponse, "description": "model loading, or server shutting down"},
        504: {"model": ErrorResponse, "description": "no answer within timeout_s"},
    }

    app = FastAPI(title="bertfit", version=_version(), lifespan=lifespan,
                  description="Text classification with a fine-tuned BERT encoder. "
                              "POST texts to /predict; the web page is at /.")
    app.state.host, app.state.batcher, app.state.metrics, app.state.config = host, batcher, metrics, config

    # -- errors: always JSON ----------------------------------------------------------------
    def error_response(exc: ApiError) -> Response:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": str(exc.detail), "code": code}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        return JSONResponse({"error": str(exc.errors()), "code": "invalid_request"}, status_code=422)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": "internal server error; see the server log", "code": "internal"},
                            status_code=500)

    # -- metrics for every request ----------------------------------------------------------
    class MetricsMiddleware:
        """Counts and times every HTTP request (pure ASGI: sees the final status code)."""

        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await self.app(scope, receive, send)
                return
            started = time.perf_counter()
            status = 500  # if the app raises before answering

            async def send_and_record(message: dict) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await self.app(scope, receive, send_and_record)
            finally:
                path = scope["path"]
                metrics.observe_request(path if path in KNOWN_ENDPOINTS else "other", status,
                                        time.perf_counter() - started)

    app.add_middleware(MetricsMiddleware)

    # -- endpoints --------------------------------------------------------------------------
    async def read_body(request: Request, deadline: float) -> bytes:
        limit = config.max_body_bytes
        too_large = ApiError(413, "body_too_large", f"the request body is larger than {limit} bytes "
                             "(limit max_body_bytes); send fewer or shorter texts per request",
                             limit="max_body_bytes", maximum=limit)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large  # refuse before reading a byte of it
        chunks, size = [], 0

        async def read() -> None:
            nonlocal size
            async for chunk in request.stream():  # chunked bodies have no length up front
                size += len(chunk)
                if size > limit:
                    raise too_large
                chunks.append(chunk)

        try:
            await asyncio.wait_for(read(), timeout=max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise ApiError(408, "body_timeout", f"the request body did not arrive within {config.timeout_s:g} s "
                           "(limit timeout_s)", limit="timeout_s", maximum=config.timeout_s) from None
        return b"".join(chunks)

    @app.post("/predict", summary="Classify texts", response_model=None, responses={
        200: {"model": PredictResponse, "description": "one prediction per text, in order"}, **errors_doc},
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": PredictRequest.model_json_schema()}}}})
    async def predict(request: Request) -> Response:
        """Labels and class probabilities for up to `max_texts_per_request` texts (or text pairs).

        Concurrent requests are batched together; each answer is the same as predicting its
        texts alone.
        """
        deadline = time.monotonic() + config.timeout_s
        metrics.in_flight += 1
        try:
            return await answer(request, deadline)
        finally:
            metrics.in_flight -= 1

    async def answer(request: Request, deadline: float) -> Response:
        if host.status != READY:
            message = "model loading; retry shortly" if host.status == LOADING else f"model failed to load: {host.error}"
            raise ApiError(503, "model_loading" if host.status == LOADING else "model_failed", message,
                           headers={"Retry-After": "1"})
        texts, pairs = parse_predict_request(await read_body(request, deadline), config)
        try:
            payload = await batcher.submit(texts, pairs, deadline)
        except QueueFullError as exc:
            raise ApiError(429, "queue_full", f"server busy: {exc} (limit max_queue); retry shortly",
                           limit="max_queue", maximum=config.max_queue, headers={"Retry-After": "1"}) from None
        except DeadlineExceededError:
            raise ApiError(504, "timeout", f"no answer within {config.timeout_s:g} s (limit timeout_s); "
                           "the server is overloaded or the texts are too long", limit="timeout_s",
                           maximum=config.timeout_s) from None
        except ShuttingDownError:
            raise ApiError(503, "shutting_down", "the server is shutting down", headers={"Retry-After": "1"}) from None
        except Exception:  # noqa: BLE001 - the batch logged the traceback; answer this request alone
            raise ApiError(500, "prediction_failed", "prediction failed for this request; see the server log") from None
        return Response(payload, media_type="application/json")

    @app.get("/health", summary="Liveness: the process answers")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: the model is loaded and warmed up",
             responses={503: {"description": "still loading, or failed to load"}})
    async def ready() -> Response:
        body: dict[str, Any] = {"status": host.status}
        if host.error:
            body["error"] = host.error
        return JSONResponse(body, status_code=200 if host.status == READY else 503)

    @app.get("/info", summary="The model: name, labels, architecture, recorded metrics; and the limits")
    async def info() -> dict[str, Any]:
        i = host.info
        return {
            "status": host.status,
            "model": i.name if i else None,
            "labels": i.labels if i else [],
            "base_model": i.base_model if i else None,
            "architecture": i.architecture if i else None,
            "int8": config.int8,
            "engine": host.engine,
            "metrics": i.metrics if i else None,
            "limits": config.limits(),
        }

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response,
             responses={200: {"content": {METRICS_CONTENT_TYPE: {}}}})
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=METRICS_CONTENT_TYPE)

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers={
            "Content-Security-Policy": page_csp, "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"})

    return app


def _version() -> str:
    from bertfit import __version__

    return __version__


# ---------------------------------------------------------------------------------------------
# Running it
# ---------------------------------------------------------------------------------------------

def _bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket ourselves, to turn "address in use" into a clear error."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                              flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host!r}: cannot resolve it ({exc})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart without waiting out TIME_WAIT
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port or --host") from None
    sock.set_inheritable(True)
    return sock


def serve(config: ServeConfig) -> int:
    """Run the server in this process until SIGTERM/Ctrl+C; 0 after a clean shutdown."""
    _require_serve_extra()
    import uvicorn


    app = create_app(config)
    server = uvicorn.Server(uvicorn.Config(
        app, log_config=None, access_log=config.access_log, lifespan="on",
        # Bounded drain: requests in flight have at most timeout_s left, plus time to write out.
        timeout_graceful_shutdown=config.timeout_s + 5,
    ))
    app.state.on_load_failure = lambda: setattr(server, "should_exit", True)
    sock = _bind(config.host, config.port)
    bound_host, bound_port = sock.getsockname()[:2]
    logger.info("bertfit: serving %s on http://%s:%d (page /, API docs /docs, metrics /metrics)",
                config.run, bound_host, bound_port)
    # uvicorn re-raises the signal that stopped it once it has shut down, so that the default
    # action (death by SIGTERM) follows. A SIGTERM that ended in a graceful drain is a clean exit:
    # with this no-op as the handler it restores, the re-raise does nothing and we return 0.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    host: ModelHost = app.state.host
    if host.status == FAILED:
        raise BertfitError("the model did not load (the reason is logged above); the server has stopped")
    return 0
