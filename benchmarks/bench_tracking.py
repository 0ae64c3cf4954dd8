"""Training throughput with each --report-to tracker against none (issue 27: at most 2% below).

Each contender trains the same job in a fresh process (MiniLM on the bundled tweets, a log record
every step: the trackers' worst case); the throughput is the optimizer steps between the first and
the last train record divided by the time between them, taken in the trainer's callback, so the
trackers' hook and their background thread (on the same core) are inside it. Contenders are
interleaved and repeated; ratios are against the median of `none`.

    flock /work/bench.lock taskset -c 0 env OMP_NUM_THREADS=1 python benchmarks/bench_tracking.py \
        --steps 60 --repeats 2 --out benchmarks/tracking_overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONTENDERS = ("none", "tensorboard", "mlflow", "wandb")


def one(contender: str, steps: int, log_every: int, out: Path) -> None:
    from bertfit import TrainConfig, fine_tune

    import psutil

    stamps: list[tuple[int, float]] = []
    cpu: list[tuple[float, float, float]] = []  # (this thread's, the whole process', child processes') CPU seconds
    me = psutil.Process()

    def record_time(record, state, total) -> None:
        if record["kind"] == "train":
            stamps.append((record["step"], time.perf_counter()))
            children = 0.0
            for child in me.children(recursive=True):  # wandb's wandb-core service
                try:
                    times = child.cpu_times()
                    children += times.user + times.system
                except psutil.Error:
                    pass
            cpu.append((time.thread_time(), time.process_time(), children))

    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update(MLFLOW_TRACKING_URI=f"file:{tmp}/mlruns", MLFLOW_ALLOW_FILE_STORE="true", WANDB_MODE="offline",
                          WANDB_SILENT="true")
        config = TrainConfig(output_dir=f"{tmp}/run", max_train_examples=2000, max_eval_examples=200, max_steps=steps,
                             batch_size=16, max_length=64, log_every=log_every, eval_every=0, eval_each_epoch=False,
                             threads=1, save_every=10_000, report_to=() if contender == "none" else (contender,),
                             explain_report_seconds=0)  # after the measured window: skipped so repeats fit
        fine_tune(config, callback=record_time, evaluate_test=False)
    (first, t0), (last, t1) = stamps[2], stamps[-1]  # from step 3: the trackers' start (imports, new run) inside
    (mid, tm) = stamps[len(stamps) // 3]  # the last two thirds: the steady state, the trackers started
    # CPU seconds in the measured window, split by where they were spent: the training (main) thread,
    # the process' other threads (the trackers' background thread and their libraries' writers), and
    # child processes. Unlike steps/s, these hardly move with what else runs on the machine.
    (main0, proc0, kids0), (main1, proc1, kids1) = cpu[2], cpu[-1]
    steps_done = last - first
    out.write_text(json.dumps({"contender": contender, "steps_per_s": steps_done / (t1 - t0), "steps": steps_done,
                               "steady_steps_per_s": (last - mid) / (t1 - tm), "steady_steps": last - mid,
                               "main_thread_cpu_s_per_step": (main1 - main0) / steps_done,
                               "other_threads_cpu_s_per_step": ((proc1 - proc0) - (main1 - main0)) / steps_done,
                               "child_processes_cpu_s_per_step": (kids1 - kids0) / steps_done}))


def hook_cost(contender: str, calls: int) -> dict:
    """CPU seconds the training thread spends per log record in the tracking hook (turning the record
    into scalars and queueing them): the one part of a tracker's work that runs in the training loop.
    Measured on the hook alone, a tracker open and its background thread consuming, `calls` records."""
    from bertfit.tracking.hub import Tracking

    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update(MLFLOW_TRACKING_URI=f"file:{tmp}/mlruns", MLFLOW_ALLOW_FILE_STORE="true", WANDB_MODE="offline",
                          WANDB_SILENT="true")
        tracking = Tracking(Path(tmp), () if contender == "none" else (contender,))
        tracking.start("hook-cost", {"lr": 5e-5, "batch_size": 16}, None)
        records = [{"kind": "train", "step": i, "epoch": i / 125, "loss": 0.7 - i * 1e-4, "lr": 5e-5,
                    "grad_norm": 1.3, "tokens_per_s": 3100.0, "examples_per_s": 40.0} for i in range(1, calls + 1)]
        started = time.thread_time()
        for record in records:
            tracking(record, None, calls, chain=False)
        spent = time.thread_time() - started
        tracking.finish()
    return {"contender": contender, "calls": calls, "hook_cpu_us_per_record": spent / calls * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--log-every", type=int, default=1, help="1: the trackers' worst case; 10: the default")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/tracking_overhead.json"))
    parser.add_argument("--one", choices=CONTENDERS)
    parser.add_argument("--result", type=Path)
    parser.add_argument("--hook", type=int, metavar="CALLS", help="measure the in-loop hook alone, CALLS records")
    args = parser.parse_args()
    if args.hook:
        rows = [hook_cost(c, args.hook) for c in CONTENDERS]
        print(json.dumps(rows, indent=2))
        args.out.write_text(json.dumps({"command": " ".join(sys.argv), "hook": rows}, indent=2) + "\n")
        return
    if args.one:
        one(args.one, args.steps, args.log_every, args.result)
        return
    runs = []
    for repeat in range(args.repeats):
        order = CONTENDERS if repeat % 2 == 0 else tuple(reversed(CONTENDERS))  # interleaved, both orders
        for contender in order:
            with tempfile.NamedTemporaryFile(suffix=".json") as f:
                subprocess.run([sys.executable, __file__, "--one", contender, "--steps", str(args.steps), "--log-every", str(args.log_every),
                                "--result", f.name], check=True, capture_output=True)
                runs.append({**json.loads(Path(f.name).read_text()), "repeat": repeat})
                print(runs[-1], flush=True)
    median = {c: statistics.median(r["steps_per_s"] for r in runs if r["contender"] == c) for c in CONTENDERS}
    steady = {c: statistics.median(r["steady_steps_per_s"] for r in runs if r["contender"] == c) for c in CONTENDERS}
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    flags = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
             if f in Path("/proc/cpuinfo").read_text().split()]
    result = {"command": " ".join(sys.argv), "processor": cpu, "flags": flags, "threads": 1,
              "job": f"minilm-l6, tweets (2,000 train), batch 16, max_length 64, {args.steps} steps, a log record every {args.log_every} step(s)",
              "runs": runs, "median_steps_per_s": median,
              "ratio_to_none": {c: median[c] / median["none"] for c in CONTENDERS},
              "median_steady_steps_per_s": steady,
              "steady_ratio_to_none": {c: steady[c] / steady["none"] for c in CONTENDERS}}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    # The trackers' CPU beside the training thread, as a share of the training thread's own (median over
    # repeats, less what `none` spends there): on one core every such second is taken from training.
    def off_main(r: dict) -> float:
        return r["other_threads_cpu_s_per_step"] + r["child_processes_cpu_s_per_step"]

    main_cpu = {c: statistics.median(r["main_thread_cpu_s_per_step"] for r in runs if r["contender"] == c)
                for c in CONTENDERS}
    extra = {c: statistics.median(off_main(r) for r in runs if r["contender"] == c) for c in CONTENDERS}
    result["main_thread_cpu_s_per_step"] = main_cpu
    result["off_main_cpu_s_per_step"] = extra
    result["off_main_cpu_share_over_none"] = {c: (extra[c] - extra["none"]) / main_cpu["none"] for c in CONTENDERS}
    result["main_thread_cpu_ratio_to_none"] = {c: main_cpu[c] / main_cpu["none"] for c in CONTENDERS}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"all": result["ratio_to_none"], "steady": result["steady_ratio_to_none"],
                      "off_main_cpu_share": result["off_main_cpu_share_over_none"],
                      "main_thread_cpu_ratio": result["main_thread_cpu_ratio_to_none"]}, indent=2))


if __name__ == "__main__":
    main()
