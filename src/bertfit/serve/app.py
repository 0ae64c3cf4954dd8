"""The FastAPI application (routes, JSON errors, request metrics) and running it under uvicorn."""

# No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at
# runtime, and those name classes imported inside create_app (where the extra is imported lazily).
import argparse
import asyncio
import base64
import hashlib
import importlib.resources
import logging
import re
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, AsyncIterator

from bertfit.errors import BertfitError, ConfigError
from bertfit.serve.batcher import DeadlineExceededError, DynamicBatcher, QueueFullError, ShuttingDownError
from bertfit.serve.config import ServeConfig
from bertfit.serve.host import FAILED, LOADING, READY, ModelHost, local_model_dir, read_model_info
from bertfit.serve.requests import ApiError, check_inputs, parse_explain_request, parse_predict_request
from bertfit.serve.metrics import CLIENT_CLOSED
from bertfit.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from bertfit.serve.metrics import ServeMetrics

if TYPE_CHECKING:  # fastapi is an optional extra, imported only when a server is built
    from fastapi import FastAPI

logger = logging.getLogger(__name__)

# Paths that get their own label in the metrics; anything else is "other", so that scanners
# probing random URLs cannot grow the metric families without bound.
# The API docs page's assets, served from the package (static/docs, see its README) so that /docs
# works offline; FastAPI's default page loads them from a CDN.
DOCS_ASSETS = {"swagger-ui-bundle.js": "text/javascript; charset=utf-8", "swagger-ui.css": "text/css; charset=utf-8",
               "favicon-32x32.png": "image/png"}
KNOWN_ENDPOINTS = frozenset({"/", "/predict", "/explain", "/info", "/health", "/ready", "/metrics", "/openapi.json", "/docs",
                             *(f"/docs/{name}" for name in DOCS_ASSETS)})


# /docs shows these bodies: texts for any model; a model's own inputs (GET /info: "inputs", "options").
BODY_EXAMPLES = {
    "texts": {"summary": "texts (any model)", "value": {"texts": ["I love this!", "Worst purchase ever."]}},
    "tokens": {"summary": "one pre-tokenised sentence (ner)", "value": {"tokens": ["Apple", "opened", "in", "Paris"]}},
    "question": {"summary": "a question over a passage, 3 best answers (qa)",
                 "value": {"question": "Who sat?", "context": "The cat sat on the mat.", "top_k": 3}},
    "inputs": {"summary": "several inputs (ner, qa)",
               "value": {"inputs": [{"tokens": ["Apple", "opened"]}, {"tokens": ["in", "Paris"]}]}},
}


class ClientGone(Exception):
    """The client closed the connection before its answer: its own doing, not a server error."""


# ---------------------------------------------------------------------------------------------
# The web page
# ---------------------------------------------------------------------------------------------

def _page() -> tuple[bytes, str]:
    """The page's HTML and a Content-Security-Policy that allows only its own inline code.

    The policy lists the SHA-256 of the inline <script> and <style>: nothing else can run or
    style the page, and it can talk to this server only (connect-src 'self').
    """
    html = (importlib.resources.files("bertfit.serve") / "static" / "index.html").read_text(encoding="utf-8")

    def hashes(tag: str) -> str:
        found = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in found)

    csp = (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
           "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return html.encode("utf-8"), csp


# ---------------------------------------------------------------------------------------------
# The application
# ---------------------------------------------------------------------------------------------

def _docs_asset(name: str) -> bytes:
    return (importlib.resources.files("bertfit.serve") / "static" / "docs" / name).read_bytes()


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
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import JSONResponse, Response
    from pydantic import BaseModel, Field
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import ClientDisconnect

    local_dir = local_model_dir(config.run)
    host = ModelHost(config, read_model_info(local_dir) if local_dir is not None else None)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bertfit-model")
    batcher = DynamicBatcher(host.run_batch, max_batch_size=config.max_batch_size,
                             max_wait_s=config.max_wait_ms / 1000.0, max_queue=config.max_queue,
                             executor=executor)
    metrics = ServeMetrics(queue_depth=lambda: batcher.queue_depth, ready=lambda: float(host.status == READY),
                           running=lambda: batcher.running_texts)
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
        """One text's record; which fields it has depends on the model's task."""

        label: str | None = Field(None, description="single-label: the most probable class")
        confidence: float | None = Field(None, description="single-label: its probability")
        labels: list[str] | None = Field(None, description="multi-label: the labels over their thresholds")
        probabilities: dict[str, float] | None = Field(
            None, description="classification: every label's probability (softmax, or one sigmoid per label)")
        value: float | None = Field(None, description="regression with one target: the predicted value")
        values: dict[str, float] | None = Field(None, description="regression with several targets: each value")
        entities: list[dict[str, Any]] | None = Field(
            None, description="ner: {text, type, start, end, score}; character offsets into the text, or word "
                              "indices (end exclusive) for pre-tokenised input")
        answer: str | None = Field(None, description="qa: the answer, a span of the context")
        score: float | None = Field(None, description="qa: its score (the question-answering pipeline's)")
        start: int | None = Field(None, description="qa: the answer's first character in the context")
        end: int | None = Field(None, description="qa: the character after it (context[start:end] == answer)")
        top_k: list[dict[str, Any]] | None = Field(
            None, description="qa with top_k > 1: the k best answers {answer, score, start, end, probability}")

    class PredictResponse(BaseModel):
        model: str
        task: str = Field(..., description="the model's task (bertfit.tasks.table: single-label, ner, qa, ...)")
        labels: list[str] = Field(..., description="class, label or target names, in the model's order")
        predictions: list[Prediction] = Field(..., description="one per text, in request order")

    class ErrorResponse(BaseModel):
        error: str = Field(..., description="what went wrong, in words")
        code: str = Field(..., description="machine-readable reason, e.g. too_many_texts, queue_full")
        field: str | None = Field(None, description="the request field at fault, e.g. inputs[1].tokens, if known")
        limit: str | None = Field(None, description="the server limit that was exceeded, if any")
        max: float | None = Field(None, description="that limit's value")

    errors_doc = {
        400: {"model": ErrorResponse, "description": "malformed JSON"},
        408: {"model": ErrorResponse, "description": "the body did not arrive before the deadline"},
        413: {"model": ErrorResponse, "description": "body larger than max_body_bytes"},
        422: {"model": ErrorResponse, "description": "wrong types, empty texts, an input the model cannot take "
                                                     "(the field is named), or a per-request limit"},
        429: {"model": ErrorResponse, "description": "queue full; retry later"},
        503: {"model": ErrorResponse, "description": "model loading, or server shutting down"},
        504: {"model": ErrorResponse, "description": "no answer within timeout_s"},
    }

    # docs_url=None: /docs is ours (below), with its assets served from the package; no /redoc,
    # whose script would come from a CDN too.
    app = FastAPI(title="bertfit", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Predictions of a fine-tuned BERT encoder (classification, entities, answers). "
                              "POST texts or the model's inputs to /predict; the web page is at /.")
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

    @app.exception_handler(ClientGone)
    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, exc: Exception) -> Response:
        # Nobody reads this answer; its status tells the metrics what happened. One quiet line, no traceback.
        logger.info("client %s closed the connection %s", _peer(request), str(exc) or "before its answer")
        return Response(status_code=CLIENT_CLOSED)

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
        except ClientDisconnect:
            raise ClientGone(f"while sending its request body ({size} bytes received)") from None
        except asyncio.TimeoutError:
            raise ApiError(408, "body_timeout", f"the request body did not arrive within {config.timeout_s:g} s "
                           "(limit timeout_s)", limit="timeout_s", maximum=config.timeout_s) from None
        return b"".join(chunks)

    @app.post("/predict", summary="Predict: texts, or the model's own inputs", response_model=None, responses={
        200: {"model": PredictResponse, "description": "one prediction per text, in order"}, **errors_doc},
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": PredictRequest.model_json_schema(), "examples": BODY_EXAMPLES}}}})
    async def predict(request: Request) -> Response:
        """Each input's record, as `bertfit predict` gives it, for up to `max_texts_per_request` texts
        (or text pairs). A model with inputs of its own (GET /info: `inputs`) also takes one of
        them as the body (`{"tokens": ["Apple", "opened"]}`, `{"question": "...", "context": "...",
        "top_k": 3}`) or several as `{"inputs": [{...}, ...]}`.

        Concurrent requests are batched together; each answer is the same as predicting its
        inputs alone.
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
        task = host.classifier.task
        texts, pairs, single = parse_predict_request(await read_body(request, deadline), config, task)
        check_inputs(task, texts, pairs, single)  # the task's own checks: a 422, before anything is queued
        try:
            payload = await until_disconnect(request, batcher.submit(texts, pairs, deadline))
        except QueueFullError as exc:
            raise ApiError(429, "queue_full", f"server busy: {exc} (limit max_queue); retry shortly",
                           limit="max_queue", maximum=config.max_queue, headers={"Retry-After": "1"}) from None
        except DeadlineExceededError:
            raise ApiError(504, "timeout", f"no answer within {config.timeout_s:g} s (limit timeout_s); "
                           "the server is overloaded or the texts are too long", limit="timeout_s",
                           maximum=config.timeout_s) from None
        except ShuttingDownError:
            raise ApiError(503, "shutting_down", "the server is shutting down", headers={"Retry-After": "1"}) from None
        except ClientGone:
            raise
        except Exception:  # noqa: BLE001 - the batch logged the traceback; answer this request alone
            raise ApiError(500, "prediction_failed", "prediction failed for this request; see the server log") from None
        return Response(payload, media_type="application/json")

    explaining = {"texts": 0}  # inputs accepted by /explain and not answered yet (bounded by max_queue)

    @app.post("/explain", summary="Explain: which words made the model predict what it did", response_model=None,
              responses={200: {"description": "per input: its prediction and explanations"}, **errors_doc})
    async def explain(request: Request) -> Response:
        """The body of /predict (the same fields and limits) and optionally "targets": the classes,
        labels, entities or choices to explain (["all"]: every one; default: the prediction). Per input:
        {"prediction": record, "explanations": [{target, value, baseline, words: [{text, start, end,
        field, attribution}], steps, completeness_error, tolerance}]} (Integrated Gradients, see
        `bertfit explain`). It runs on the model's worker, between prediction batches, within its own
        deadline (limit explain_timeout_s)."""
        deadline = time.monotonic() + config.explain_timeout_s
        metrics.in_flight += 1
        try:
            if host.status != READY:
                message = "model loading; retry shortly" if host.status == LOADING else f"model failed to load: {host.error}"
                raise ApiError(503, "model_loading" if host.status == LOADING else "model_failed", message,
                               headers={"Retry-After": "1"})
            task = host.classifier.task
            (texts, pairs, single), targets = parse_explain_request(await read_body(request, deadline), config, task)
            check_inputs(task, texts, pairs, single)
            if explaining["texts"] + len(texts) > config.max_queue:
                raise ApiError(429, "queue_full", f"server busy: {explaining['texts']} inputs waiting to be explained "
                               "(limit max_queue); retry shortly", limit="max_queue", maximum=config.max_queue,
                               headers={"Retry-After": "1"})
            explaining["texts"] += len(texts)
            try:
                work = asyncio.get_running_loop().run_in_executor(executor, host.explain, texts, pairs, targets, deadline)
                timed = asyncio.wait_for(work, timeout=max(0.0, deadline - time.monotonic()))
                payload = await until_disconnect(request, timed)
            except (TimeoutError, asyncio.TimeoutError):
                raise ApiError(504, "timeout", f"no explanation within {config.explain_timeout_s:g} s (limit "
                               "explain_timeout_s); send fewer or shorter texts", limit="explain_timeout_s",
                               maximum=config.explain_timeout_s) from None
            except (ApiError, ClientGone):
                raise
            except BertfitError as exc:  # e.g. a target the model does not have
                raise ApiError(422, "bad_target", str(exc), field="targets") from None
            except Exception:  # noqa: BLE001
                logger.exception("explanation failed")
                raise ApiError(500, "explanation_failed", "explanation failed for this request; see the server log") from None
            finally:
                explaining["texts"] -= len(texts)
            return Response(payload, media_type="application/json")
        finally:
            metrics.in_flight -= 1

    async def until_disconnect(request: Request, work: Any) -> Any:
        """``await work``, unless the client hangs up first: then its texts leave the queue
        (the batcher abandons a cancelled request) and ClientGone is raised."""
        task = asyncio.ensure_future(work)

        async def disconnected() -> None:
            # The body was read whole, so the next message is the disconnect. Should a server
            # send anything else, stop watching (wait forever) rather than spin on it.
            if (await request.receive())["type"] != "http.disconnect":
                await asyncio.Event().wait()

        watcher = asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not task.done():
                task.cancel()
        if task.cancelled() or not task.done():
            raise ClientGone("while waiting for its answer (its texts leave the queue)")
        return task.result()

    def get(path: str, **kwargs: Any) -> Any:
        """GET, and HEAD on the same path (FastAPI routes answer HEAD with 405 otherwise)."""
        def decorate(endpoint: Any) -> Any:
            app.head(path, include_in_schema=False)(endpoint)
            return app.get(path, **kwargs)(endpoint)
        return decorate

    @get("/health", summary="Liveness: the process answers")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @get("/ready", summary="Readiness: the model is loaded and warmed up",
             responses={503: {"description": "still loading, or failed to load"}})
    async def ready() -> Response:
        body: dict[str, Any] = {"status": host.status}
        if host.error:
            body["error"] = host.error
        return JSONResponse(body, status_code=200 if host.status == READY else 503)

    @get("/info", summary="The model: name, task, labels, architecture, recorded metrics; and the limits")
    async def info() -> dict[str, Any]:
        i = host.info
        task = host.classifier.task if host.classifier is not None else None
        return {
            "status": host.status,
            "model": i.name if i else None,
            # The page picks its view by these (a tagger highlights entities; QA asks of a passage).
            "task": task.name if task is not None else (i.task if i else None),
            "inputs": list(task.input_columns) if task is not None else None,
            "options": list(task.input_options) if task is not None else None,
            "labels": i.labels if i else [],
            "base_model": i.base_model if i else None,
            "architecture": i.architecture if i else None,
            "int8": config.int8,
            "bf16": config.bf16,
            "engine": host.engine,
            "threads": host.threads,
            "metrics": i.metrics if i else None,
            "limits": config.limits(),
        }

    @get("/metrics", summary="Prometheus metrics", response_class=Response,
             responses={200: {"content": {METRICS_CONTENT_TYPE: {}}}})
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=METRICS_CONTENT_TYPE)

    @get("/", include_in_schema=False)
    async def index() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers={
            "Content-Security-Policy": page_csp, "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"})

    @get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return get_swagger_ui_html(openapi_url=app.openapi_url, title="bertfit - API",
                                   swagger_js_url="/docs/swagger-ui-bundle.js", swagger_css_url="/docs/swagger-ui.css",
                                   swagger_favicon_url="/docs/favicon-32x32.png", oauth2_redirect_url=None)

    def docs_asset_route(name: str, media_type: str) -> None:
        @get(f"/docs/{name}", include_in_schema=False)
        async def asset() -> Response:
            # Read once, on first use: 1.9 MB that most servers never send.
            if name not in assets:
                assets[name] = _docs_asset(name)
            return Response(assets[name], media_type=media_type, headers={"Cache-Control": "public, max-age=86400"})

    assets: dict[str, bytes] = {}
    for name, media_type in DOCS_ASSETS.items():
        docs_asset_route(name, media_type)

    return app


def _peer(request: Any) -> str:
    client = request.client
    return f"{client.host}:{client.port}" if client else "(unknown)"


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


def command(args: argparse.Namespace) -> int:
    """`bertfit serve RUN ...`: run the server until SIGTERM or Ctrl+C."""
    config = ServeConfig(
        run=args.run, host=args.host, port=args.port, int8=args.int8, bf16=args.bf16, device=args.device, engine=args.engine,
        threads=args.threads,
        max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
        max_texts_per_request=args.max_texts_per_request, max_chars=args.max_chars,
        max_body_bytes=args.max_body_bytes, timeout_s=args.timeout_s, access_log=args.access_log,
        explain_timeout_s=args.explain_timeout_s,
        gate_file=args.gate_file,
    )
    return serve(config)
