"""Hostile inputs for `bertfit serve`: a catalogue of malformed, oversized, mis-typed and abandoned
requests, sent as raw bytes over loopback, with what each must get back.

The rule it checks: **a client's mistake never gets a 5xx**, and the server never logs a traceback
for one. Every case has an expected status (or set of statuses); a case that expects no answer is
a client that hangs up, which the server must count in /metrics apart from errors.

As a script (starts its own server on the bundled MiniLM with a fresh head, or on --run):

    python benchmarks/hostile_serve.py                 # exit status 0: every case held
    python benchmarks/hostile_serve.py --run runs/my-run --verbose

As a library (tests/test_serve.py runs it against its server): ``run_catalogue(url)`` returns one
``Outcome`` per case; ``failures(outcomes)`` lists those that broke the rule.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import urlsplit

HANGS_UP = "hangs up"  # a case whose client closes the connection before the answer


@dataclass(frozen=True)
class Case:
    name: str
    raw: bytes  # the whole request as sent (or its beginning, for a client that hangs up)
    expect: frozenset[int] | str  # acceptable statuses, or HANGS_UP


@dataclass(frozen=True)
class Outcome:
    case: Case
    status: int | None  # None: no answer (expected only for HANGS_UP)
    ok: bool
    detail: str = ""


# ---------------------------------------------------------------------------------------------
# The catalogue
# ---------------------------------------------------------------------------------------------

def request(method: str, path: str, body: bytes = b"", headers: Iterable[tuple[str, str]] = (),
            *, content_type: str | None = "application/json", length: bool = True) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    if content_type is not None and method in ("POST", "PUT"):
        lines.append(f"Content-Type: {content_type}")
    if length and (body or method in ("POST", "PUT")):
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def catalogue(limits: dict) -> list[Case]:
    """Every case, sized from the server's limits (as /info reports them)."""
    max_body = int(limits["max_body_bytes"])
    max_texts = int(limits["max_texts_per_request"])
    max_chars = int(limits["max_chars"])
    depth = min(max_body // 2 - 20, 100_000)  # deep enough to break any recursive parser, within the body limit
    ok, bad_json, unprocessable = frozenset({200}), frozenset({400}), frozenset({422})
    client_error = frozenset(range(400, 500))
    cases: list[Case] = []

    def post(name: str, body: bytes | str, expect, **kw) -> None:
        data = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
        cases.append(Case(name, request("POST", "/predict", data, **kw), expect))

    # -- bodies that are not JSON, or not the JSON we take -------------------------------------
    post("empty body", b"", bad_json)
    post("truncated JSON", b'{"texts": ["a"', bad_json)
    post("trailing comma", b'{"texts": ["a",]}', bad_json)
    post("deeply nested arrays", b"[" * depth + b"]" * depth, bad_json)
    post("deeply nested objects", b'{"a":' * (depth // 5) + b"1" + b"}" * (depth // 5), bad_json)
    post("deep nesting inside texts", b'{"texts": ' + b"[" * depth + b"]" * depth + b"}", bad_json)
    post("unclosed deep nesting", b"[" * depth, bad_json)
    post("invalid UTF-8", b'{"texts": ["\xff\xfe\xfd"]}', bad_json)
    post("overlong UTF-8 encoding", b'{"texts": ["\xc0\xaf"]}', bad_json)
    post("UTF-8 with a BOM", b'\xef\xbb\xbf{"texts": ["bom"]}', ok | bad_json)
    post("UTF-16 body", '{"texts": ["sixteen"]}'.encode("utf-16"), ok | bad_json)
    post("latin-1 body", '{"texts": ["café"]}'.encode("latin-1"), bad_json, content_type="application/json; charset=latin-1")
    post("NUL bytes outside strings", b'{"texts": ["a"]}\x00\x00', bad_json)
    post("gzip body, undeclared", b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03", bad_json,
         headers=[("Content-Encoding", "gzip")])
    post("form-encoded body", b"texts=hello", bad_json, content_type="application/x-www-form-urlencoded")
    post("multipart body", b'--b\r\nContent-Disposition: form-data; name="texts"\r\n\r\nhi\r\n--b--\r\n', bad_json,
         content_type="multipart/form-data; boundary=b")
    post("text/plain JSON", b'{"texts": ["plain"]}', ok | frozenset({415}), content_type="text/plain")
    post("no content type", b'{"texts": ["none"]}', ok | frozenset({415}), content_type=None)
    post("XML body", b"<texts><t>a</t></texts>", bad_json, content_type="application/xml")

    # -- JSON of the wrong shape ---------------------------------------------------------------
    for name, body in [("top-level null", "null"), ("top-level string", '"texts"'), ("top-level number", "1e999"),
                       ("top-level true", "true"), ("top-level list", '[{"texts": ["a"]}]'),
                       ("texts null", '{"texts": null}'), ("texts a number", '{"texts": 5}'),
                       ("texts an object", '{"texts": {"a": 1}}'), ("texts of numbers", '{"texts": [1, 2]}'),
                       ("huge float", '{"texts": [1e999999]}'), ("negative huge float", '{"texts": [-1e999999]}'),
                       ("NaN literal", '{"texts": [NaN]}'), ("Infinity literal", '{"texts": [Infinity]}'),
                       ("tiny float", '{"texts": [1e-999999]}'), ("negative zero", '{"texts": [-0.0]}'),
                       ("duplicate keys", '{"texts": ["a"], "texts": [1]}'),
                       ("lone surrogate in a key", '{"\\ud800": ["a"]}'),
                       ("lone surrogate in a text", '{"texts": ["\\udc00"]}'),
                       ("reversed surrogate pair", '{"texts": ["\\udc00\\ud800"]}'),
                       ("pairs a string", '{"texts": ["a"], "pairs": "b"}'),
                       ("pairs longer than texts", '{"texts": ["a"], "pairs": ["b", "c"]}'),
                       ("pairs of numbers", '{"texts": ["a"], "pairs": [1]}'),
                       ("empty texts", '{"texts": []}'), ("unknown field", '{"texts": ["a"], "extra": 1}'),
                       ("only unknown fields", '{"text": "a"}'),
                       ("too many texts", json.dumps({"texts": ["a"] * (max_texts + 1)})),
                       ("text too long", json.dumps({"texts": ["x" * (max_chars + 1)]})),
                       ("long unknown key", json.dumps({"k" * min(max_body // 2, 100_000): 1}))]:
        post(name, body, unprocessable)
    post("huge integer", '{"texts": [' + "9" * min(max_body // 2, 100_000) + "]}", unprocessable | bad_json)

    # -- valid, but unusual, texts: each must be answered -------------------------------------
    for name, text in [("NUL and control characters", "\x00\x01\x1b[31m\x7f"), ("only whitespace", " \t\n\r "),
                       ("zero-width characters", "\u200b\u200c\u200d\ufeff"),
                       ("combining marks", "e" + "\u0301" * (max_chars - 1)),
                       ("emoji at the length limit", "😀" * max_chars), ("right-to-left override", "\u202eabc"),
                       ("private use and noncharacters", "\ue000\uffff\U0010ffff"),
                       ("one long word", "a" * max_chars), ("HTML", "<script>alert(1)</script>")]:
        post(name, json.dumps({"texts": [text]}, ensure_ascii=False), ok)
    post("null pairs", '{"texts": ["a"], "pairs": null}', ok)

    # -- framing: lengths, chunking, the HTTP layer -------------------------------------------
    cases.append(Case("body larger than declared length limit",
                      request("POST", "/predict", b"", [("Content-Length", str(max_body + 1))], length=False),
                      frozenset({413})))
    cases.append(Case("absurd Content-Length",
                      request("POST", "/predict", b"", [("Content-Length", "9" * 40)], length=False),
                      frozenset({400, 413})))
    cases.append(Case("negative Content-Length",
                      request("POST", "/predict", b"{}", [("Content-Length", "-2")], length=False), client_error))
    cases.append(Case("non-numeric Content-Length",
                      request("POST", "/predict", b"{}", [("Content-Length", "two")], length=False), client_error))
    cases.append(Case("malformed chunk",
                      request("POST", "/predict", b"zz\r\n{}\r\n0\r\n\r\n", [("Transfer-Encoding", "chunked")],
                              length=False), client_error))
    cases.append(Case("chunked, valid",
                      request("POST", "/predict", b'10\r\n{"texts": ["ok"]\r\n1\r\n}\r\n0\r\n\r\n',
                              [("Transfer-Encoding", "chunked")], length=False), ok))
    cases.append(Case("garbage request line", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", client_error))
    cases.append(Case("no Host header", b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n", client_error))
    cases.append(Case("HTTP/1.0", b"GET /health HTTP/1.0\r\n\r\n", ok))
    cases.append(Case("header with raw high bytes", request("GET", "/health", headers=[("X-Name", "caf\xe9\xff")]), ok))
    cases.append(Case("very long header", request("GET", "/health", headers=[("X-Long", "a" * 70_000)]), ok | client_error))
    cases.append(Case("Expect: 100-continue", request("POST", "/predict", b'{"texts": ["expect"]}',
                                                      [("Expect", "100-continue")]), ok))

    # -- every endpoint, every method ----------------------------------------------------------
    for path in ("/health", "/ready", "/info", "/metrics", "/", "/docs", "/openapi.json"):
        cases.append(Case(f"GET {path}", request("GET", path), ok))
        cases.append(Case(f"HEAD {path}", request("HEAD", path), ok))
        cases.append(Case(f"POST {path}", request("POST", path, b"{}"), frozenset({405})))
        cases.append(Case(f"GET {path} with a body", request("GET", path, b"{}", content_type=None), ok))
    for method in ("PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "GET", "HEAD"):
        cases.append(Case(f"{method} /predict", request(method, "/predict", b"{}" if method == "PUT" else b""),
                          frozenset({405})))
    cases.append(Case("unknown method", request("BREW", "/health"), client_error))
    for path in ("/nope", "/%00", "/%zz", "/%ff%fe", "/../../etc/passwd", "/static/../../pyproject.toml",
                 "//predict", "/docs/../openapi.json", "/" + "a" * 8000, "/health?x=%ff%00&y=1e999",
                 "/metrics?name[]=1", "/info?" + "a=1&" * 2000):
        expect = ok if path.startswith(("/health?", "/metrics?", "/info?")) else client_error
        cases.append(Case(f"GET {path[:40]}", request("GET", path), expect))
    cases.append(Case("GET /predict/", request("GET", "/predict/"), client_error | {307}))  # redirect to /predict

    # -- clients that hang up -------------------------------------------------------------------
    whole = request("POST", "/predict", json.dumps({"texts": ["hang up after sending"]}).encode())
    cases.append(Case("hang up mid-body", whole[: whole.index(b"\r\n\r\n") + 6], HANGS_UP))
    cases.append(Case("hang up mid-headers", whole[:30], HANGS_UP))
    cases.append(Case("hang up before the answer", whole, HANGS_UP))
    return cases


# ---------------------------------------------------------------------------------------------
# Sending it
# ---------------------------------------------------------------------------------------------

def exchange(host: str, port: int, case: Case, timeout: float = 60.0) -> int | None:
    """Send the case; the answer's status, or None when the server closed without one."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            sock.sendall(case.raw)
        except OSError:  # the server refused the rest (e.g. it answered a huge header early)
            pass
        if case.expect == HANGS_UP:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
            return None
        data = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
    # Skip interim answers ("HTTP/1.1 100 Continue"); the status is the final one's.
    while data.startswith(b"HTTP/1.1 1") and b"\r\n\r\n" in data:
        data = data.split(b"\r\n\r\n", 1)[1]
    if not data.startswith(b"HTTP/"):
        return None
    return int(data.split(b" ", 2)[1])


def run_catalogue(url: str, *, log: Callable[[str], None] | None = None) -> list[Outcome]:
    """Send every case to the server at ``url``; one outcome per case."""
    import httpx

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    limits = httpx.get(url + "/info", timeout=30).json()["limits"]
    outcomes = []
    for case in catalogue(limits):
        try:
            status = exchange(host, port, case)
        except OSError as exc:
            outcomes.append(Outcome(case, None, False, f"{type(exc).__name__}: {exc}"))
            continue
        if case.expect == HANGS_UP:
            good = True
        else:
            good = status is not None and status in case.expect
        outcomes.append(Outcome(case, status, good))
        if log is not None:
            log(f"{'ok  ' if good else 'FAIL'} {status!s:>4}  {case.name}")
    return outcomes


def failures(outcomes: list[Outcome]) -> list[str]:
    def expected(case: Case) -> str:
        if case.expect == HANGS_UP:
            return HANGS_UP
        statuses = sorted(case.expect)
        return "4xx" if len(statuses) > 50 else ", ".join(map(str, statuses))

    return [f"{o.case.name}: got {o.status}, expected {expected(o.case)}{' (' + o.detail + ')' if o.detail else ''}"
            for o in outcomes if not o.ok]


def server_errors(metrics_before: str, metrics_after: str) -> dict[str, float]:
    """5xx answers counted in /metrics between two readings, by series."""
    def five_xx(text: str) -> dict[str, float]:
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith("bertfit_http_requests_total") and ',code="5' in line}

    before, after = five_xx(metrics_before), five_xx(metrics_after)
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v > before.get(k, 0.0)}


def server_log_problems(log_text: str) -> list[str]:
    """Tracebacks and internal errors in a server log."""
    return [line for line in log_text.splitlines()
            if "Traceback" in line or "Exception in ASGI application" in line or " 500 " in line]


# ---------------------------------------------------------------------------------------------
# Scenarios (issue 33): cases that need a server of their own
# ---------------------------------------------------------------------------------------------

def scenario_abandoned_work(run: Path, tmp: Path) -> list[Outcome]:
    """A request too large for the deadline gets its 504, and its work is dropped: requests sent right
    after it are answered (200), not held behind the abandoned batch until they time out too."""
    import threading

    import httpx
    from load_serve import Server

    # Engine batches of 4 texts: the work is dropped within one small batch of its 504, even on a busy machine.
    server = Server(run, tmp / "abandon.log", ["--timeout-s", "6", "--threads", "1", "--max-texts-per-request", "256",
                                               "--max-queue", "1024", "--max-batch-size", "4"])
    outcomes: list[Outcome] = []
    try:
        server.wait_ready()
        big: dict = {}
        texts = [("word " * 600 + str(i)) for i in range(256)]  # 256 x 512 tokens: far more than 6 s of work

        def send_big() -> None:
            big["status"] = httpx.post(server.url + "/predict", json={"texts": texts}, timeout=60).status_code

        thread = threading.Thread(target=send_big)
        thread.start()
        thread.join(timeout=60)
        outcomes.append(Outcome(Case("abandon: a request too large for its deadline", b"", frozenset({504})),
                                big.get("status"), big.get("status") == 504))
        for k in range(3):
            status = httpx.post(server.url + "/predict", json={"texts": [f"small request {k}"]}, timeout=60).status_code
            outcomes.append(Outcome(Case(f"abandon: a small request right after it ({k + 1})", b"", frozenset({200})),
                                    status, status == 200))
    finally:
        server.stop()
    dropped = "dropped the work of" in (tmp / "abandon.log").read_text(encoding="utf-8", errors="replace")
    outcomes.append(Outcome(Case("abandon: the server log says the work was dropped", b"", frozenset({200})),
                            200 if dropped else None, dropped))
    return outcomes


def scenario_ner_pairs(tmp: Path) -> list[Outcome]:
    """A NER model refuses text pairs (422 naming "pairs") instead of reading each pair as two words."""
    import httpx
    from load_serve import Server

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import build_tiny_model_dir
    from hostile_runs import conll

    model = build_tiny_model_dir(tmp / "ner-model", words=["ann", "bob", "cara", "dan", "met", "saw", "good", "day",
                                                           "bad", "film", "with", "and", "in", "paris"])
    (tmp / "ner.conll").write_text(conll(40, 1))
    subprocess.run([sys.executable, "-m", "bertfit", "-q", "train", "--model", str(model), "--task", "ner",
                    "--train-file", str(tmp / "ner.conll"), "--output-dir", str(tmp / "ner-run"), "--max-steps", "2",
                    "--max-length", "16", "--threads", "1"], check=True, capture_output=True)
    server = Server(tmp / "ner-run", tmp / "ner.log", ["--threads", "1"])
    outcomes: list[Outcome] = []
    try:
        server.wait_ready()
        for name, body, expect in (("ner: pairs", {"texts": ["ann met bob"], "pairs": ["in paris"]}, 422),
                                   ("ner: the same text alone", {"texts": ["ann met bob"]}, 200)):
            answer = httpx.post(server.url + "/predict", json=body, timeout=60)
            good = answer.status_code == expect and (expect == 200 or "pairs" in answer.text)
            outcomes.append(Outcome(Case(name, b"", frozenset({expect})), answer.status_code, good))
    finally:
        server.stop()
    return outcomes


# ---------------------------------------------------------------------------------------------
# As a script
# ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="model directory to serve (default: MiniLM with a fresh head)")
    parser.add_argument("--server-flag", action="append", default=[], help="extra `bertfit serve` flag (repeatable)")
    parser.add_argument("--verbose", action="store_true", help="print every case")
    parser.add_argument("--no-scenarios", action="store_true",
                        help="skip the cases that start servers of their own (abandoned work, a NER model)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import httpx
    from load_serve import Server, build_run

    with tempfile.TemporaryDirectory(prefix="bertfit-hostile-") as tmp:
        run = args.run or build_run(Path(tmp) / "run")
        server = Server(run, Path(tmp) / "server.log", ["--max-body-bytes", "200000", *args.server_flag])
        try:
            server.wait_ready()
            before = httpx.get(server.url + "/metrics", timeout=30).text
            outcomes = run_catalogue(server.url, log=print if args.verbose else None)
            after = httpx.get(server.url + "/metrics", timeout=30).text
        finally:
            code = server.stop()
            time.sleep(0.1)
        log_text = (Path(tmp) / "server.log").read_text(encoding="utf-8", errors="replace")
        if not args.no_scenarios:
            scenarios = scenario_abandoned_work(run, Path(tmp)) + scenario_ner_pairs(Path(tmp))
            for outcome in scenarios:
                print(f"{'ok  ' if outcome.ok else 'FAIL'} {outcome.status!s:>4}  {outcome.case.name}")
            outcomes += scenarios
            for name in ("abandon.log", "ner.log"):
                log_text += (Path(tmp) / name).read_text(encoding="utf-8", errors="replace")
    broken = failures(outcomes)
    problems = server_log_problems(log_text)
    five_xx = [f"{k} +{v:g}" for k, v in server_errors(before, after).items()]
    hung_up = sum(1 for o in outcomes if o.case.expect == HANGS_UP)
    disconnects = sum(float(line.rsplit(" ", 1)[1]) for line in after.splitlines()
                      if line.startswith("bertfit_client_disconnects_total{"))
    print(f"{len(outcomes)} hostile requests: {len(outcomes) - len(broken)} answered as expected, "
          f"{len(broken)} not; {len(five_xx)} 5xx series in /metrics; {len(problems)} traceback lines in the log; "
          f"{disconnects:g} client disconnects counted in /metrics ({hung_up} cases hang up); server exit status {code}")
    for line in broken + five_xx + problems:
        print("  " + line)
    return 0 if not (broken or five_xx or problems) and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
