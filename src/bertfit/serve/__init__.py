"""Serve a trained classifier over HTTP: a JSON API, a web page, health checks and metrics.

POST /predict takes {"texts": [...]} (optionally with "pairs": [...]), or the model's own inputs
(one as the body, {"tokens": [...]} or {"question": ..., "context": ..., "top_k": 3}; several as
{"inputs": [...]}: serve/requests.py), and answers with each input's record, what `bertfit predict`
gives (a label and class probabilities; entities; an answer span with its offsets). Concurrent requests are batched dynamically. The page at /
classifies texts typed into it and shows the model's test metrics; /docs and /openapi.json describe
the API; /health (liveness), /ready (model loaded) and /metrics (Prometheus) are for operators.
The model loads in the background: /ready answers 503 until it has loaded and run a warm-up pass.
SIGTERM stops accepting connections, finishes the requests in flight, and exits with status 0.
Needs the serve extra: pip install 'bertfit[serve]'.
"""

# The package: config.py (ServeConfig and the flags), requests.py (request parsing, JSON errors),
# host.py (the model), batcher.py (dynamic batching), metrics.py (Prometheus text), app.py (the FastAPI app and
# running it), static/ (the page, and the API docs' assets so that /docs works offline).
# Importing it needs neither fastapi nor torch: those load when a server is built.

from bertfit.serve.app import KNOWN_ENDPOINTS, command, create_app, serve
from bertfit.serve.config import ServeConfig, add_arguments, default_threads
from bertfit.serve.host import ModelHost, ModelInfo, read_model_info
from bertfit.serve.requests import ApiError, parse_predict_request

__all__ = ["ApiError", "KNOWN_ENDPOINTS", "ModelHost", "ModelInfo", "ServeConfig", "add_arguments", "command",
           "create_app", "default_threads", "parse_predict_request", "read_model_info", "serve"]
