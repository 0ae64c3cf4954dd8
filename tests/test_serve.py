"""The HTTP server, end to end: the real `bertfit serve` in a subprocess, talked to over loopback.

Every server here runs the real MiniLM with a fresh 3-label head, on 127.0.0.1 only; every request
has a timeout and every subprocess is killed in a finally.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

slow = pytest.mark.slow  # the tests that run the real MiniLM in a server subprocess

LABELS = ["negative", "neutral", "positive"]
# Labels that would break a page which did not escape them, and need UTF-8 end to end.
ODD_LABELS = ['<img src=x onerror="window.__xss=1">', "neutral ☺ «ok»", "позитив 😀"]
FAKE_METRICS = {
    "test": {"accuracy": 0.8123, "macro_f1": 0.7712, "weighted_f1": 0.8034, "per_class": {
        "negative": {"precision": 0.84, "recall": 0.86, "f1": 0.85, "support": 1620},
        "neutral": {"precision": 0.78, "recall": 0.80, "f1": 0.79, "support": 1502},
        "positive": {"precision": 0.70, "recall": 0.64, "f1": 0.67, "support": 695}}},
    "validation": {"accuracy": 0.81, "macro_f1": 0.77},
}
LONG = " ".join(["the service was slow but the food was absolutely wonderful and we will return"] * 40)


# ---------------------------------------------------------------------------------------------
# Helpers (test_browser.py imports these)
# ---------------------------------------------------------------------------------------------

def build_run_dir(tmp_path_factory, minilm_dir: Path, name: str, labels: list[str], metrics: dict | None) -> Path:
    """A run directory: real MiniLM encoder, fresh head. Built once per session per name."""
    run = tmp_path_factory.getbasetemp() / "serve-runs" / name
    if (run / "config.json").is_file():
        return run
    from bertfit.checkpoints import load_classifier, save_classifier
    from bertfit.tokenizer import WordPieceTokenizer

    model = load_classifier(minilm_dir, labels)
    save_classifier(model, run, tokenizer=WordPieceTokenizer.from_dir(minilm_dir))
    (run / "train_config.json").write_text(json.dumps({"model": "minilm-l6"}), encoding="utf-8")
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    return run


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m bertfit serve RUN --port P ...` in a subprocess, its log in a file."""

    def __init__(self, run_dir: Path, log_path: Path, *flags: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bertfit", "serve", str(run_dir), "--host", "127.0.0.1",
             "--port", str(self.port), *flags],
            stdout=self._log, stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-4000:]

    def wait(self, path: str, timeout: float = 60.0) -> None:
        """Until GET path answers 200 (the process dying or the timeout fails the test)."""
        end = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=2.0) as client:
            while time.monotonic() < end:
                if self.proc.poll() is not None:
                    pytest.fail(f"server exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    if client.get(path).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        pytest.fail(f"{path} not 200 within {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()


def metric_value(text: str, name: str, labels: str = "") -> float:
    """One sample from Prometheus text (labels as written, e.g. '{code="200"}')."""
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, flags=re.M)
    assert match, f"{name}{labels} not in /metrics"
    return float(match.group(1))


async def post_many(url: str, bodies: list[dict], timeout: float = 60.0) -> list[tuple[int, dict, float]]:
    """POST every body to /predict at once: (status, json, seconds) per body, in order."""
    limits = httpx.Limits(max_connections=len(bodies) + 4, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        async def one(body: dict) -> tuple[int, dict, float]:
            started = time.perf_counter()
            r = await client.post("/predict", json=body)
            return r.status_code, r.json(), time.perf_counter() - started

        return list(await asyncio.gather(*(one(b) for b in bodies)))


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def run_dir(tmp_path_factory, minilm_dir) -> Path:
    return build_run_dir(tmp_path_factory, minilm_dir, "sentiment", LABELS, FAKE_METRICS)


@pytest.fixture(scope="session")
def odd_run_dir(tmp_path_factory, minilm_dir) -> Path:
    return build_run_dir(tmp_path_factory, minilm_dir, "odd-labels", ODD_LABELS, None)


@pytest.fixture(scope="module")
def classifier(run_dir):
    from bertfit.predict import TextClassifier

    return TextClassifier.load(run_dir)


@pytest.fixture(scope="module")
def server(run_dir, tmp_path_factory):
    """The main server, small limits; records what it answered while the model was loading."""
    srv = Server(run_dir, tmp_path_factory.mktemp("logs") / "main.log",
                 "--max-texts-per-request", "8", "--max-chars", "2000", "--max-body-bytes", "50000",
                 "--max-wait-ms", "20", "--load-delay-s", "1.5")
    try:
        srv.wait("/health")
        with httpx.Client(base_url=srv.url, timeout=5.0) as client:
            srv.while_loading = {  # type: ignore[attr-defined]
                "health": client.get("/health").status_code,
                "ready": client.get("/ready").status_code,
                "predict": client.post("/predict", json={"texts": ["hello"]}),
            }
        srv.wait("/ready")
        yield srv
    finally:
        srv.stop()


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, timeout=30.0) as c:
        yield c


# ---------------------------------------------------------------------------------------------
# Lifecycle and the happy path
# ---------------------------------------------------------------------------------------------

@slow
def test_health_answers_while_model_loads_and_ready_follows(server, client):
    seen = server.while_loading
    assert seen["health"] == 200
    assert seen["ready"] == 503
    assert seen["predict"].status_code == 503
    assert seen["predict"].json()["code"] == "model_loading"
    assert "model loading" in seen["predict"].json()["error"]
    assert client.get("/ready").json() == {"status": "ready"}
    assert client.get("/health").json() == {"status": "ok"}


@slow
def test_predictions_equal_predict_proba_whatever_the_batch(server, classifier):
    # Requests of different sizes and lengths, sent at once, so they are batched together
    # (and sorted by length with strangers); each answer must equal predicting its texts alone.
    rng = np.random.default_rng(0)
    words = "good bad awful great movie plot actor boring thrilling fine meh love hate".split()
    bodies = []
    for i in range(12):
        n = 1 + i % 5
        bodies.append({"texts": [" ".join(rng.choice(words, size=int(rng.integers(1, 60)))) for _ in range(n)]})
    before = httpx.get(server.url + "/metrics", timeout=10).text
    answers = asyncio.run(post_many(server.url, bodies))
    for body, (status, answer, _) in zip(bodies, answers):
        assert status == 200, answer
        assert answer["model"] == "sentiment"
        assert answer["labels"] == LABELS
        expected = classifier.predict_proba(body["texts"])
        got = np.array([[p["probabilities"][label] for label in LABELS] for p in answer["predictions"]])
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
        for p, row in zip(answer["predictions"], expected):
            assert p["label"] == LABELS[int(row.argmax())]
            assert p["confidence"] == pytest.approx(float(row.max()), abs=1e-5)
    # And they really were batched: fewer batches than requests.
    after = httpx.get(server.url + "/metrics", timeout=10).text
    batches = (metric_value(after, "bertfit_batch_size_requests_count")
               - metric_value(before, "bertfit_batch_size_requests_count"))
    assert 1 <= batches < len(bodies)


@slow
def test_pairs(client, classifier):
    texts, pairs = ["A man is playing a guitar.", "It rains."], ["Someone plays music.", "The sun is out today."]
    r = client.post("/predict", json={"texts": texts, "pairs": pairs})
    assert r.status_code == 200, r.text
    got = np.array([[p["probabilities"][label] for label in LABELS] for p in r.json()["predictions"]])
    np.testing.assert_allclose(got, classifier.predict_proba(texts, pairs), atol=1e-5, rtol=0)
    # A pair changes the input, so it changes the answer.
    alone = classifier.predict_proba(texts)
    assert np.abs(got - alone).max() > 1e-6


@slow
def test_unicode_texts_round_trip(client, classifier):
    texts = ["Ça marche très bien 👍", "这部电影太棒了", "שלום עולם", "e\u0301te\u0301 ﬁne", "\u200b", ""]
    r = client.post("/predict", content=json.dumps({"texts": texts}, ensure_ascii=False).encode("utf-8"),
                    headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200, r.text
    got = np.array([[p["probabilities"][label] for label in LABELS] for p in r.json()["predictions"]])
    np.testing.assert_allclose(got, classifier.predict_proba(texts), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# Limits and bad input
# ---------------------------------------------------------------------------------------------

def assert_error(r, status: int, *, limit: str | None = None, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert isinstance(body["error"], str) and body["error"]
    if limit is not None:
        assert body["limit"] == limit and limit in body["error"]
    if code is not None:
        assert body["code"] == code
    return body


@slow
def test_body_size_limit(client):
    body = json.dumps({"texts": ["x" * 1000] * 60}).encode()  # 60 kB > 50 kB
    assert_error(client.post("/predict", content=body), 413, limit="max_body_bytes")

    def chunks():  # no Content-Length: the server must count while reading
        for i in range(0, len(body), 4096):
            yield body[i:i + 4096]

    assert_error(client.post("/predict", content=chunks()), 413, limit="max_body_bytes")


@slow
def test_texts_per_request_limit(client):
    assert_error(client.post("/predict", json={"texts": ["a"] * 9}), 422, limit="max_texts_per_request")
    assert client.post("/predict", json={"texts": ["a"] * 8}).status_code == 200


@slow
def test_characters_per_text_limit(client):
    body = assert_error(client.post("/predict", json={"texts": ["ok", "y" * 2001]}), 422, limit="max_chars")
    assert "texts[1]" in body["error"]
    assert_error(client.post("/predict", json={"texts": ["ok"], "pairs": ["y" * 2001]}), 422, limit="max_chars")
    assert client.post("/predict", json={"texts": ["y" * 2000]}).status_code == 200


@slow
def test_malformed_json(client):
    for raw in (b"{", b"not json", b'{"texts": ["a",]}', b"\xff\xfe\x00garbage", b""):
        r = client.post("/predict", content=raw, headers={"content-type": "application/json"})
        assert_error(r, 400, code="invalid_json")


@slow
@pytest.mark.parametrize("payload, fragment", [
    ({"texts": "just one string"}, "texts must be a list of strings"),
    ({"texts": [1, 2]}, "texts[0] is a number"),
    ({"texts": ["ok", None]}, "texts[1] is null"),
    ({"texts": [["nested"]]}, "texts[0] is a list"),
    ({"texts": ["a"], "pairs": "b"}, "pairs must be a list"),
    ({"texts": ["a"], "pairs": ["b", "c"]}, "pairs must match texts"),
    ({"text": ["a"]}, "unknown field 'text'"),
    ({}, 'missing field "texts"'),
    ([{"texts": ["a"]}], "must be a JSON object"),
    ({"texts": ["\ud800"]}, "unpaired surrogate"),
])
def test_wrong_types_get_422(client, payload, fragment):
    # json.dumps escapes non-ASCII (\\ud800 stays an escape, as a client would send it)
    body = assert_error(client.post("/predict", content=json.dumps(payload)), 422)
    assert fragment in body["error"]


@slow
def test_empty_list_gets_422(client):
    body = assert_error(client.post("/predict", json={"texts": []}), 422, code="empty")
    assert body["error"] == "texts must not be empty"


@slow
def test_unknown_paths_and_methods_answer_json(client):
    assert_error(client.get("/nope"), 404)
    assert_error(client.get("/predict"), 405)


# ---------------------------------------------------------------------------------------------
# Metrics, OpenAPI, the page
# ---------------------------------------------------------------------------------------------

@slow
def test_metrics_prometheus_text(client):
    client.post("/predict", json={"texts": ["metrics please"]})
    client.post("/predict", json={"texts": []})
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = r.text
    sample = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? \S+$')
    for line in text.splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or sample.match(line), line
    assert metric_value(text, "bertfit_http_requests_total", '{endpoint="/predict",code="200"}') >= 1
    assert metric_value(text, "bertfit_http_requests_total", '{endpoint="/predict",code="422"}') >= 1
    assert metric_value(text, "bertfit_http_errors_total", '{code="422"}') >= 1
    assert "# TYPE bertfit_http_request_duration_seconds histogram" in text
    assert metric_value(text, "bertfit_http_request_duration_seconds_bucket", '{endpoint="/predict",le="+Inf"}') >= 2
    assert "# TYPE bertfit_batch_size_texts histogram" in text
    assert metric_value(text, "bertfit_batch_size_texts_count") >= 1
    assert "# TYPE bertfit_queue_depth_texts gauge" in text
    assert metric_value(text, "bertfit_queue_depth_texts") == 0
    assert metric_value(text, "bertfit_model_ready") == 1


@slow
def test_openapi_and_docs(client):
    spec = client.get("/openapi.json").json()
    predict = spec["paths"]["/predict"]["post"]
    schema = predict["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["texts"] and schema["properties"]["texts"]["maxItems"] == 8
    assert {"200", "413", "422", "429", "503", "504"} <= set(predict["responses"])
    assert {"/health", "/ready", "/metrics", "/info"} <= set(spec["paths"])
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


@slow
def test_page_is_self_contained(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    # Nothing from the internet: no external scripts, styles, fonts or images.
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', html)
    assert "@import" not in html and "url(http" not in html
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "unsafe-inline" not in csp
    assert "innerHTML" not in html  # everything is written with textContent


@slow
def test_info_shows_model_and_metrics(client):
    info = client.get("/info").json()
    assert info["model"] == "sentiment" and info["labels"] == LABELS and info["base_model"] == "minilm-l6"
    assert info["metrics"]["test"]["accuracy"] == pytest.approx(0.8123)
    assert info["limits"]["max_texts_per_request"] == 8
    onnx = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
    assert info["engine"] == ("onnxruntime" if onnx else "pytorch")  # the CPU default: ONNX Runtime when installed


# ---------------------------------------------------------------------------------------------
# Overload: full queue, deadlines
# ---------------------------------------------------------------------------------------------

@slow
def test_full_queue_gets_fast_429_and_health_stays_up(run_dir, tmp_path):
    srv = Server(run_dir, tmp_path / "overload.log", "--max-queue", "4", "--max-texts-per-request", "4",
                 "--max-batch-size", "4", "--max-wait-ms", "0")
    try:
        srv.wait("/ready")

        async def scenario():
            bodies = [{"texts": [LONG] * 4} for _ in range(24)]
            async with httpx.AsyncClient(base_url=srv.url, timeout=10.0) as probe:
                flood = asyncio.ensure_future(post_many(srv.url, bodies))
                health = []
                while not flood.done():
                    started = time.perf_counter()
                    status = (await probe.get("/health")).status_code
                    health.append((status, time.perf_counter() - started))
                    await asyncio.sleep(0.05)
                return await flood, health

        answers, health = asyncio.run(scenario())
        statuses = [status for status, _, _ in answers]
        assert set(statuses) <= {200, 429}, statuses
        rejected = [(body, seconds) for status, body, seconds in answers if status == 429]
        assert len(rejected) >= 5, statuses
        for body, seconds in rejected:
            assert body["limit"] == "max_queue" and body["code"] == "queue_full"
            assert seconds < 2.0  # at once, not after queueing
        assert statuses.count(200) >= 1
        assert health and all(status == 200 for status, _ in health)
        assert max(seconds for _, seconds in health) < 2.0
    finally:
        srv.stop()


@slow
def test_deadline_gets_504_and_unicode_labels_round_trip(odd_run_dir, tmp_path):
    srv = Server(odd_run_dir, tmp_path / "deadline.log", "--timeout-s", "0.3", "--max-batch-size", "8")

    def predict_until_answered(client, text: str):
        """A short request; retried while a busy machine makes even that miss the 0.3 s deadline."""
        end = time.monotonic() + 30
        while (r := client.post("/predict", json={"texts": [text]})).status_code != 200:
            assert r.status_code == 504 and time.monotonic() < end, r.text
            time.sleep(0.2)
        return r

    try:
        srv.wait("/ready")
        with httpx.Client(base_url=srv.url, timeout=30.0) as client:
            answer = predict_until_answered(client, "quick").json()
            assert answer["labels"] == ODD_LABELS
            assert answer["predictions"][0]["label"] in ODD_LABELS
            assert list(answer["predictions"][0]["probabilities"]) == ODD_LABELS
            info = client.get("/info").json()
            assert info["labels"] == ODD_LABELS and info["metrics"] is None

            # A batch of 8 texts of 512 tokens is ~100 GFLOP, a second or more on a CPU: all time out.
            answers = asyncio.run(post_many(srv.url, [{"texts": [LONG] * 8} for _ in range(4)]))
            for status, body, seconds in answers:
                assert status == 504, body
                assert body["limit"] == "timeout_s" and body["code"] == "timeout"
                assert seconds < 5.0
            assert client.get("/health").status_code == 200
            # The server recovers once the abandoned work is through.
            predict_until_answered(client, "again")
    finally:
        srv.stop()


# ---------------------------------------------------------------------------------------------
# Graceful shutdown
# ---------------------------------------------------------------------------------------------

@slow
def test_sigterm_finishes_in_flight_requests_then_exits_0(run_dir, tmp_path):
    srv = Server(run_dir, tmp_path / "sigterm.log", "--max-batch-size", "2", "--max-wait-ms", "0")
    try:
        srv.wait("/ready")
        # One request per batch, each a few hundred tokens: the five take a second or more in all.
        bodies = [{"texts": [LONG[: 1500 + 50 * i]] * 2} for i in range(5)]

        async def scenario():
            flood = asyncio.ensure_future(post_many(srv.url, bodies))
            # Wait until the server holds all of them, then ask it to stop.
            in_flight, end = 0.0, time.monotonic() + 20
            async with httpx.AsyncClient(base_url=srv.url, timeout=5.0,
                                         limits=httpx.Limits(max_keepalive_connections=0)) as probe:
                while time.monotonic() < end and in_flight < len(bodies) and not flood.done():
                    text = (await probe.get("/metrics")).text
                    in_flight = metric_value(text, "bertfit_predict_requests_in_flight")
                    await asyncio.sleep(0.01)
            srv.proc.send_signal(signal.SIGTERM)
            return in_flight, await flood

        in_flight, answers = asyncio.run(scenario())
        assert in_flight >= 2  # SIGTERM came while several requests were in the server
        assert [status for status, _, _ in answers] == [200] * len(bodies), answers
        assert all(len(body["predictions"]) == 2 for _, body, _ in answers)
        assert srv.proc.wait(timeout=30) == 0, srv.log()
        log = srv.log()
        assert "Shutting down" in log and "Traceback" not in log
    finally:
        srv.stop()


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def test_cli_help_and_bad_arguments(tmp_path):
    env = dict(os.environ)
    help_text = subprocess.run([sys.executable, "-m", "bertfit", "serve", "--help"], capture_output=True,
                               text=True, timeout=60, env=env).stdout
    for flag in ("--host", "--port", "--int8", "--max-batch-size", "--max-wait-ms", "--max-queue",
                 "--max-texts-per-request", "--max-chars", "--max-body-bytes", "--timeout-s"):
        assert flag in help_text
    assert "--load-delay-s" not in help_text
    missing = subprocess.run([sys.executable, "-m", "bertfit", "serve", str(tmp_path / "nope"), "--port",
                              str(free_port())], capture_output=True, text=True, timeout=60, env=env)
    assert missing.returncode == 2 and "no such directory" in missing.stderr
    assert "Traceback" not in missing.stderr


@slow
def test_cli_refuses_inconsistent_limits_and_busy_port(run_dir):
    bad = subprocess.run([sys.executable, "-m", "bertfit", "serve", str(run_dir), "--max-queue", "4",
                          "--max-texts-per-request", "8"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--max-texts-per-request" in bad.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = subprocess.run([sys.executable, "-m", "bertfit", "serve", str(run_dir), "--port", str(port)],
                              capture_output=True, text=True, timeout=60)
    assert busy.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in busy.stderr


# ---------------------------------------------------------------------------------------------
# Fast, in-process: the batcher on its own, and the optional extra
# ---------------------------------------------------------------------------------------------

from bertfit.serve.batcher import (DeadlineExceededError, DynamicBatcher,  # noqa: E402
                                  QueueFullError)


def test_batcher_merges_bounded_batches_and_answers_each_request():
    seen: list[list[int]] = []

    def run_batch(jobs):
        seen.append([len(job.texts) for job in jobs])
        time.sleep(0.02)  # long enough for the other requests to queue up behind it
        return [[t.upper() for t in job.texts] for job in jobs]

    async def scenario():
        batcher = DynamicBatcher(run_batch, max_batch_size=4, max_wait_s=0.01, max_queue=100)
        batcher.start()
        requests = [[f"r{i}t{j}" for j in range(1 + i % 3)] for i in range(12)]
        deadline = time.monotonic() + 10
        answers = await asyncio.gather(*(batcher.submit(texts, None, deadline) for texts in requests))
        await batcher.close()
        return requests, answers

    requests, answers = asyncio.run(scenario())
    assert answers == [[t.upper() for t in texts] for texts in requests]
    assert all(sum(batch) <= 4 for batch in seen)
    assert any(len(batch) > 1 for batch in seen)  # requests were merged
    assert sum(len(batch) for batch in seen) == len(requests)  # each computed once


def test_batcher_refuses_at_once_when_full_and_times_out_waiters():
    import threading

    release = threading.Event()

    def run_batch(jobs):
        release.wait(10)
        return ["done"] * len(jobs)

    async def scenario():
        batcher = DynamicBatcher(run_batch, max_batch_size=2, max_wait_s=0, max_queue=2)
        batcher.start()
        far = time.monotonic() + 10
        running = asyncio.ensure_future(batcher.submit(["a", "b"], None, far))
        await asyncio.sleep(0.05)  # taken into the (blocked) batch
        queued = asyncio.ensure_future(batcher.submit(["c", "d"], None, time.monotonic() + 0.2))
        await asyncio.sleep(0)
        assert batcher.queue_depth == 2
        started = time.perf_counter()
        with pytest.raises(QueueFullError):
            await batcher.submit(["e"], None, far)
        refused_in = time.perf_counter() - started
        with pytest.raises(DeadlineExceededError):
            await queued
        assert batcher.queue_depth == 0  # the timed-out request left the queue
        release.set()
        assert await running == "done"
        assert await batcher.submit(["f"], None, far) == "done"
        await batcher.close()
        return refused_in

    assert asyncio.run(scenario()) < 0.05


def test_batcher_gives_each_request_its_own_error_and_drains_on_close():
    def run_batch(jobs):
        return [ValueError(job.texts[0]) if job.texts[0] == "bad" else "ok" for job in jobs]

    async def scenario():
        batcher = DynamicBatcher(run_batch, max_batch_size=8, max_wait_s=0.05, max_queue=8)
        batcher.start()
        far = time.monotonic() + 10
        futures = [asyncio.ensure_future(batcher.submit([t], None, far)) for t in ("good", "bad", "fine")]
        await asyncio.sleep(0)
        await batcher.close()  # while all three still wait for their batch
        return await asyncio.gather(*futures, return_exceptions=True)

    good, bad, fine = asyncio.run(scenario())
    assert good == "ok" and fine == "ok"
    assert isinstance(bad, ValueError)


def test_missing_serve_extra_names_the_fix(monkeypatch):
    from bertfit import serve
    from bertfit.errors import BertfitError

    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi -> ImportError
    with pytest.raises(BertfitError, match=r"pip install 'bertfit\[serve\]'"):
        serve.create_app(serve.ServeConfig(run="unused"))


def test_importing_bertfit_serve_needs_neither_fastapi_nor_torch():
    # Nor the CLI: bertfit.cli imports the server for its subcommand, never the reverse.
    code = ("import sys, bertfit, bertfit.serve; a = sorted(m for m in ('fastapi', 'uvicorn', 'torch', 'bertfit.cli') "
            "if m in sys.modules); "
            "import bertfit.cli; b = sorted(m for m in ('fastapi', 'uvicorn') if m in sys.modules); print(a, b)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[] []", out.stderr
