"""Prometheus metrics for the HTTP server, written in the text exposition format by hand.

Hand-written because the format is small and stable (https://prometheus.io/docs/instrumenting/
exposition_formats/) and a dependency for five metric families is not worth it. Every update and
every render happens on the server's event loop thread (middleware and the batching task both run
there), so no locks are needed.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable, Iterable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
CLIENT_CLOSED = 499  # the status the app records for a client that hung up before its answer

# Request latency: from 2 ms (health checks) to the default 10 s deadline and beyond.
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
BATCH_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class Counter:
    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help_text, tuple(label_names)
        self.values: dict[tuple[str, ...], float] = defaultdict(float)
        if not self.label_names:
            self.values[()] = 0.0  # an unlabelled counter exists from the start

    def inc(self, *label_values: str, amount: float = 1.0) -> None:
        self.values[tuple(label_values)] += amount

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        for key in sorted(self.values):
            yield f"{self.name}{_labels(self.label_names, key)} {_number(self.values[key])}"


class Gauge:
    """A gauge read when rendered (the live value lives elsewhere, e.g. the batcher's queue)."""

    def __init__(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.name, self.help, self.read = name, help_text, read

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} gauge"
        yield f"{self.name} {_number(float(self.read()))}"


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: Sequence[float], label_names: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help_text, tuple(label_names)
        self.bounds = tuple(sorted(buckets)) + (math.inf,)
        self.counts: dict[tuple[str, ...], list[int]] = {}
        self.sums: dict[tuple[str, ...], float] = defaultdict(float)
        if not self.label_names:
            self.counts[()] = [0] * len(self.bounds)  # an unlabelled histogram exists from the start

    def observe(self, value: float, *label_values: str) -> None:
        key = tuple(label_values)
        counts = self.counts.setdefault(key, [0] * len(self.bounds))
        for i, bound in enumerate(self.bounds):  # stored per bucket; made cumulative when rendered
            if value <= bound:
                counts[i] += 1
                break
        self.sums[key] += value

    def count(self, *label_values: str) -> int:
        return sum(self.counts.get(tuple(label_values), ()))

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for key in sorted(self.counts):
            cumulative = 0
            for bound, n in zip(self.bounds, self.counts[key]):
                cumulative += n
                le = 'le="' + _number(bound) + '"'
                yield f"{self.name}_bucket{_labels(self.label_names, key, le)} {cumulative}"
            yield f"{self.name}_sum{_labels(self.label_names, key)} {_number(self.sums[key])}"
            yield f"{self.name}_count{_labels(self.label_names, key)} {cumulative}"


class ServeMetrics:
    """The server's metric families; ``render()`` gives the /metrics page."""

    def __init__(self, queue_depth: Callable[[], float], ready: Callable[[], float],
                 running: Callable[[], float] = lambda: 0.0) -> None:
        self.in_flight = 0  # /predict requests between arrival and answer
        self.requests = Counter("bertfit_http_requests_total", "HTTP requests by endpoint and status code.",
                                ("endpoint", "code"))
        self.errors = Counter("bertfit_http_errors_total", "HTTP responses with status >= 400, by status code "
                              "(clients that hung up are counted apart, in bertfit_client_disconnects_total).",
                              ("code",))
        self.disconnects = Counter("bertfit_client_disconnects_total",
                                   "Requests whose client closed the connection before the answer, by endpoint.",
                                   ("endpoint",))
        self.latency = Histogram("bertfit_http_request_duration_seconds",
                                 "Time from request start to response end, by endpoint.", LATENCY_BUCKETS,
                                 ("endpoint",))
        self.batch_size = Histogram("bertfit_batch_size_texts", "Texts per model batch.", BATCH_SIZE_BUCKETS)
        self.batch_requests = Histogram("bertfit_batch_size_requests", "Requests merged into one model batch.",
                                        BATCH_SIZE_BUCKETS)
        self.batch_seconds = Histogram("bertfit_batch_duration_seconds",
                                       "Time to compute one batch on the worker thread.", BATCH_SECONDS_BUCKETS)
        self.texts = Counter("bertfit_predicted_texts_total", "Texts classified.")
        self.queue_depth = Gauge("bertfit_queue_depth_texts", "Texts waiting for a batch.", queue_depth)
        self.running = Gauge("bertfit_running_batch_texts", "Texts in the batch being computed.", running)
        self.ready = Gauge("bertfit_model_ready", "1 once the model is loaded and warmed up, else 0.", ready)
        self.in_flight_gauge = Gauge("bertfit_predict_requests_in_flight",
                                     "/predict requests received and not yet answered.", lambda: self.in_flight)

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        code = str(status)
        self.requests.inc(endpoint, code)
        if status == CLIENT_CLOSED:  # the client's doing: neither an error nor a latency anyone saw
            self.disconnects.inc(endpoint)
            return
        if status >= 400:
            self.errors.inc(code)
        self.latency.observe(seconds, endpoint)

    def observe_batch(self, texts: int, requests: int, seconds: float) -> None:
        self.batch_size.observe(texts)
        self.batch_requests.observe(requests)
        self.batch_seconds.observe(seconds)
        self.texts.inc(amount=texts)

    def render(self) -> str:
        families = (self.requests, self.errors, self.disconnects, self.latency, self.batch_size, self.batch_requests,
                    self.batch_seconds, self.texts, self.queue_depth, self.running, self.in_flight_gauge, self.ready)
        return "\n".join(line for family in families for line in family.render()) + "\n"
