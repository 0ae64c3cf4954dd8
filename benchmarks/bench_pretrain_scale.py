"""Peak memory of `bertfit pretrain` as the corpus grows 1x -> 10x -> 100x (issue 26), with the corpus
store (tasks/pretrain/store.py: streamed, memory-mapped) against the in-memory path (BERTFIT_TOKEN_CACHE=0).

The 1x corpus is the raw tweets and comments of ../shared/data/unlabelled (their non-blank lines, 7.3 MB,
one document a line); copy k of it rotates every line's words by k places, so no two copies are the same
text (and none is deduplicated away) while the vocabulary and lengths stay the corpus'. Each run is a
fresh `bertfit pretrain` process (minilm-l6, NSP + masked LM, max_length 64, batch 16, `--steps`
steps, 1 thread) with an empty cache; its peak resident memory is the kernel's (wait4's ru_maxrss).
With the store, a second run on the same corpus shows the time to reuse it.

    flock /work/bench.lock taskset -c 0 env OMP_NUM_THREADS=1 python benchmarks/bench_pretrain_scale.py \
        --scales 1 10 100 --memory-scales 1 10 --out benchmarks/pretrain_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path("/work/shared/data/unlabelled")


def make_corpus(scale: int, out: Path, data: Path) -> Path:
    lines = [line.rstrip("\n") for f in sorted(data.glob("*.txt")) for line in f.open(encoding="utf-8")]
    with open(out, "w", encoding="utf-8") as f:
        for k in range(scale):
            for line in lines:
                words = line.split()
                if not words:
                    continue  # a blank line would turn the file into BERT's sentence-per-line format
                if k:
                    r = k % len(words)
                    words = words[r:] + words[:r] + ([str(k)] if k >= len(words) else [])
                f.write(" ".join(words) + "\n")
    return out


CGROUP_ROOT = Path("/sys/fs/cgroup/memory")  # cgroup v1's memory controller (what these machines have)


def memory_cgroup(limit_mb: int) -> Path:
    """A fresh memory cgroup capped at limit_mb (page cache included, as the kernel charges it: clean
    pages of a mapped file are reclaimed under the cap, anonymous memory is not, and no swap)."""
    group = CGROUP_ROOT / f"bertfit-bench-{os.getpid()}-{time.monotonic_ns()}"
    group.mkdir()
    (group / "memory.limit_in_bytes").write_text(str(limit_mb * 2**20))
    return group


def run(corpus: Path, contender: str, steps: int, cache: Path, work: Path, limit_mb: int | None = None) -> dict:
    env = {**os.environ, "BERTFIT_CACHE": str(cache), "OMP_NUM_THREADS": "1", "PYTHONPATH": "src"}
    env.update({"BERTFIT_TOKEN_CACHE": "0"} if contender == "in-memory" else
               {"BERTFIT_TOKEN_CACHE": "1", "BERTFIT_CORPUS_STORE_MIN_BYTES": "0"})
    out = work / f"run-{contender}"
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "bertfit", "-q", "pretrain", "--corpus", str(corpus), "--corpus-format", "documents", "--model", "minilm-l6",
               "--max-steps", str(steps), "--batch-size", "16", "--max-length", "64", "--threads", "1",
               "--eval-every", str(steps), "--output-dir", str(out)]
    group = memory_cgroup(limit_mb) if limit_mb else None
    if group is not None:  # the process joins the group before it allocates anything, then becomes bertfit
        command = ["sh", "-c", f'echo $$ > {group / "cgroup.procs"} && exec "$@"', "sh", *command]
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # ru_maxrss counts every resident page, the pages of a mapped file the process has read included (the
    # kernel's cache, dropped under pressure); polling /proc tells anonymous memory (what the process
    # holds) from file-backed pages, each at its own peak.
    peaks = {"RssAnon": 0, "RssFile": 0}
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                key = line.split(":", 1)[0]
                if key in peaks:
                    peaks[key] = max(peaks[key], int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.2)
    wall = time.perf_counter() - started
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    data = json.loads((out / "data.json").read_text()) if (out / "data.json").exists() else {}
    capped = {}
    if group is not None:
        capped = {"memory_limit_mb": limit_mb,
                  "cgroup_peak_mb": round(int((group / "memory.max_usage_in_bytes").read_text()) / 2**20, 1),
                  "cgroup_limit_hits": int((group / "memory.failcnt").read_text()),
                  "oom_killed": code == -9}
        group.rmdir()
    return {"contender": contender, "exit": code, **capped, "peak_rss_mb": usage.ru_maxrss / 1024,
            "peak_anon_mb": round(peaks["RssAnon"] / 1024, 1), "peak_file_mb": round(peaks["RssFile"] / 1024, 1),
            "wall_s": round(wall, 1),
            "sequences": data.get("rows", {}).get("train"), "documents": data.get("documents"),
            "stderr_tail": stderr[-600:] if code else ""}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--memory-scales", type=int, nargs="+", default=[1, 10],
                        help="scales at which the in-memory path runs too")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/pretrain_scale.json"))
    parser.add_argument("--memory-limit-mb", type=int, help="run every process in a memory cgroup of this size "
                        "(cgroup v1, root): a corpus larger than half the memory the run may use")
    args = parser.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    flags = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
             if f in Path("/proc/cpuinfo").read_text().split()]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    results = {"command": " ".join(sys.argv), "commit": commit, "processor": cpu, "flags": flags, "threads": 1,
               "memory_total_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, "runs": []}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        work = Path(tmp)
        for scale in args.scales:
            corpus = make_corpus(scale, work / f"corpus-{scale}x.txt", args.data)
            size = corpus.stat().st_size
            contenders = ["store", "in-memory"] if scale in args.memory_scales else ["store"]
            for contender in contenders:
                cache = work / f"cache-{scale}-{contender}"
                first = run(corpus, contender, args.steps, cache, work, args.memory_limit_mb)
                record = {"scale": scale, "corpus_mb": round(size / 2**20, 1), **first}
                if contender == "store":
                    again = run(corpus, contender, args.steps, cache, work, args.memory_limit_mb)  # the store reused
                    record["reuse"] = {k: again[k] for k in ("exit", "peak_rss_mb", "peak_anon_mb", "peak_file_mb", "wall_s",
                                                             "cgroup_peak_mb", "cgroup_limit_hits") if k in again}
                    record["store_mb"] = round(sum(f.stat().st_size for f in cache.rglob("*.arrow")) / 2**20, 1)
                shutil.rmtree(cache, ignore_errors=True)
                results["runs"].append(record)
                print(json.dumps(record), flush=True)
                args.out.write_text(json.dumps(results, indent=2) + "\n")
            corpus.unlink()


if __name__ == "__main__":
    main()
