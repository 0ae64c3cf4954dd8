"""Distributed training and gradient checkpointing, measured (issue 17). Run under the exclusive lock:

    flock -x /tmp/cpu.lock python benchmarks/bench_dist.py overhead --steps 16 --repeats 2
    flock -x /tmp/cpu.lock python benchmarks/bench_dist.py checkpointing --steps 2

overhead: the same `bertfit train` job (MiniLM, the bundled tweets, global batch 32, --max-steps) as
1 process × 2 threads and as 2 processes × 1 thread (`--nproc 2`, gloo), alternated. On a 2-core
machine both use the same cores, so the ratio is the cost of the distributed machinery (gradient
all-reduce, sharded evaluation, two processes' start-up), not a speed-up. Throughput is the
training windows' tokens/s after the first window (warm-up), from each run's metrics.jsonl.

checkpointing: a BERT-base-sized model (12 layers, hidden 768, random weights) trained on random
token ids at batch 32 × 128 (every token real), with and without activation checkpointing, each in
a fresh process: seconds per step (AdamW included; the first step, which allocates the optimizer
state, is not timed) and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _env(threads: int) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": str(threads)}


def overhead(steps: int, repeats: int) -> dict:
    results: dict[str, list[dict]] = {"1 process x 2 threads": [], "2 processes x 1 thread": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(repeats):
            for name in results:  # alternated, so drift hits both
                two = name.startswith("2")
                run = Path(tmp) / f"{rep}-{int(two)}"
                command = [sys.executable, "-m", "bertfit", "--quiet", "train", "--model", "minilm-l6", "--max-train-examples", "3000",
                           "--max-eval-examples", "64", "--max-steps", str(steps), "--log-every", str(steps // 4),
                           "--eval-every", "0", "--save-every", "100000", "--output-dir", str(run),
                           "--batch-size", "16" if two else "32", "--threads", "1" if two else "2"]
                if two:
                    command += ["--nproc", "2"]
                started = time.perf_counter()
                subprocess.run(command, env=_env(1 if two else 2), check=True, capture_output=True, text=True)
                wall = time.perf_counter() - started
                records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
                train = [r for r in records if r["kind"] == "train"][1:]  # the first window warms up
                tokens_s = sum(r["tokens_per_s"] for r in train) / len(train)
                results[name].append({"tokens_per_s": tokens_s, "wall_s": wall})
                print(f"{name}, repeat {rep}: {tokens_s:,.0f} tokens/s, {wall:.1f} s wall", flush=True)
    summary = {name: {"tokens_per_s": statistics.mean(r["tokens_per_s"] for r in runs),
                      "wall_s": statistics.mean(r["wall_s"] for r in runs), "runs": runs}
               for name, runs in results.items()}
    one, two = summary["1 process x 2 threads"], summary["2 processes x 1 thread"]
    summary["ratio_tokens_per_s"] = two["tokens_per_s"] / one["tokens_per_s"]
    summary["ratio_wall"] = two["wall_s"] / one["wall_s"]
    return summary


def _checkpointing_child(enabled: bool, steps: int) -> dict:
    import torch

    from bertfit.config import BertConfig
    from bertfit.heads import BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                        intermediate_size=3072, max_position_embeddings=512).with_labels(["a", "b"])
    model = BertForSequenceClassification(config)
    model.bert.gradient_checkpointing = enabled
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.randint(5, 30522, (32, 128))
    mask, types = torch.ones_like(ids), torch.zeros_like(ids)
    labels = torch.randint(0, 2, (32,))
    rss_setup = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(ids, mask, types), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    return {"gradient_checkpointing": enabled, "step_s": times[1:] or times, "peak_rss_mb": resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_after_model_mb": rss_setup, "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in model.parameters())}


def checkpointing(steps: int, threads: int = 2) -> dict:
    out = {}
    for enabled in (False, True):
        child = subprocess.run([sys.executable, __file__, "_child", "--enabled", str(int(enabled)), "--steps", str(steps)],
                               env=_env(threads), check=True, capture_output=True, text=True)
        result = json.loads(child.stdout.strip().splitlines()[-1])
        out["with" if enabled else "without"] = result
        print(f"gradient checkpointing {'on ' if enabled else 'off'}: {statistics.mean(result['step_s']):.1f} s/step, "
              f"peak RSS {result['peak_rss_mb']:,.0f} MB", flush=True)
    w, wo = out["with"], out["without"]
    out["time_ratio"] = statistics.mean(w["step_s"]) / statistics.mean(wo["step_s"])
    out["peak_rss_ratio"] = w["peak_rss_mb"] / wo["peak_rss_mb"]
    return out


def _machine() -> dict:
    """Processor, relevant flags, CPUs the process may use and the commit: what a figure needs beside it."""
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    model = next((line.split(":", 1)[1].strip() for line in lscpu if line.startswith("Model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in lscpu if line.startswith("Flags")), [])
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    return {"commit": commit, "cpu_model": model, "cpu_flags": [f for f in flags if f in wanted],
            "cpu_affinity": sorted(os.sched_getaffinity(0))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["overhead", "checkpointing", "_child"])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--enabled", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2,
                        help="checkpointing: the child's OMP_NUM_THREADS (it records torch.get_num_threads())")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    if args.what == "_child":
        print(json.dumps(_checkpointing_child(bool(args.enabled), args.steps)))
        return
    result = overhead(args.steps, args.repeats) if args.what == "overhead" else checkpointing(args.steps, args.threads)
    result["machine"] = _machine()
    result["command"] = " ".join(sys.argv)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
