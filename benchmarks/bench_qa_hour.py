"""Extractive QA within an hour on a CPU: dev EM/F1 against training minutes, bertfit vs transformers'
run_qa.py recipe, each in its best setting for this processor (issue 31, item 2).

One contender per invocation (``--impl``), so the two can run side by side, one per core, for the same
minutes. Both train minilm-l6 on the same seeded subset of SQuAD v1.1 train with the same batch, learning
rate, warmup, weight decay, seed and windowing (max_length 384, doc_stride 128), and both are scored on
the same seeded dev questions by one scorer (bertfit.tasks.qa.squad_metric, the official v1.1 rules).
Each contender's schedule is sized to the hour: ``--steps`` is what its own measured step rate fits in
``--minutes`` (``--probe`` measures that rate), and a run still training when the minutes are spent stops
at its next evaluation (so the budget holds whatever the machine does). The curve's minutes are training
time only: evaluations pause the clock on both sides.

transformers follows run_qa.py (prepare_train_features, answers outside a window at [CLS],
utils_qa.postprocess_qa_predictions with n_best 20 and max_answer_length 30, re-typed in bench_qa.py)
in its best CPU setting: ``--pad_to_max_length False`` (dynamic padding: run_qa.py's own option; its
default pads every window to 384 tokens), fp32 on a CPU without bf16 instructions and bf16=True where the
CPU has them (AVX512-BF16/AMX), as the Trainer documents.

    # probe both step rates (20 steps each), then the hour, one core each, side by side:
    taskset -c 0 python benchmarks/bench_qa_hour.py --impl bertfit --probe 20
    taskset -c 1 python benchmarks/bench_qa_hour.py --impl transformers --probe 20
    taskset -c 0 python benchmarks/bench_qa_hour.py --impl bertfit --steps N1 --out benchmarks/qa_hour_bertfit.json
    taskset -c 1 python benchmarks/bench_qa_hour.py --impl transformers --steps N2 --out benchmarks/qa_hour_transformers.json
    python benchmarks/bench_qa_hour.py summarize benchmarks/qa_hour_*.json --plot benchmarks/qa_hour_curve.png
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_qa import (BATCH, LR, MAX_LENGTH, STRIDE, WARMUP, WEIGHT_DECAY, _postprocess, _rows, _train_features,  # noqa: E402
                      prepare, score)

EVAL_POINTS = 8  # evaluations along the schedule (plus the last step)


def machine() -> dict:
    flags = ""
    for line in open("/proc/cpuinfo", encoding="utf-8"):
        if line.startswith("flags"):
            flags = line.split(":", 1)[1]
            break
    model = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    import torch

    return {"lscpu_model": next((ln.split(":", 1)[1].strip() for ln in model.splitlines() if ln.startswith("Model name")), "?"),
            "family_model": next((ln.split(":", 1)[1].strip() for ln in model.splitlines() if ln.startswith("Model:")), "?"),
            "flags": sorted(f for f in flags.split() if f.startswith(("avx", "amx"))), "cpu_affinity": sorted(os.sched_getaffinity(0)),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "load_at_start": os.getloadavg()}


def cpu_has_bf16() -> bool:
    text = open("/proc/cpuinfo", encoding="utf-8").read()
    return "avx512_bf16" in text or "amx_bf16" in text


# --- bertfit ------------------------------------------------------------------------------------

def run_bertfit(files: dict[str, str], steps: int, eval_every: int, budget_s: float, out_dir: Path) -> dict:
    from bertfit.train.config import TrainConfig
    from bertfit.train.finetune import fine_tune

    curve: list[dict] = []
    stopped: list[int] = []

    def on_record(record: dict, state, total: int) -> None:
        if record["kind"] == "eval" and record.get("split") == "validation":
            curve.append({"step": record["step"], "train_minutes": state.train_seconds / 60,
                          "exact_match": record["exact_match"], "f1": record["f1"]})
            # The hour is hard: an evaluation past it is the run's last (the best of its evaluations is its model).
            if state.train_seconds > budget_s and record["step"] != total and not state.stopped_early:
                state.stopped_early = True
                stopped.append(record["step"])

    # bertfit train's defaults otherwise (precision chosen for the CPU, length-bucketed padding-free batches)
    config = TrainConfig(train_file=files["train"], validation_file=files["dev"], problem_type="qa", model="minilm-l6",
                         max_steps=steps, batch_size=BATCH, lr=LR, warmup_ratio=WARMUP, weight_decay=WEIGHT_DECAY,
                         max_length=MAX_LENGTH, doc_stride=STRIDE, seed=0, eval_every=eval_every, log_every=10,
                         save_every=10**6, deduplicate=False, output_dir=str(out_dir), explain_report_seconds=0)
    started = time.perf_counter()
    result = fine_tune(config, callback=on_record)
    state = result.train.state
    return {"curve": curve, "steps_done": state.step, "stopped_at_budget_step": stopped[0] if stopped else None,
            "train_seconds": state.train_seconds, "real_tokens": state.tokens_seen,
            "tokens_per_s": state.tokens_seen / state.train_seconds, "wall_seconds": time.perf_counter() - started,
            "precision": json.loads((out_dir / "precision.json").read_text()),
            "run": str(out_dir), "final_validation": result.metrics.get("validation")}


# --- transformers (run_qa.py, dynamic padding) ----------------------------------------------------

def _hf_dev_scores(model, tokenizer, dev_rows, enc) -> dict:
    """run_qa.py's evaluation: every dev window's logits (batches of 64 windows by length, padded per
    batch), postprocess_qa_predictions, one scorer."""
    import numpy as np
    import torch

    n = len(enc["input_ids"])
    starts = np.full((n, MAX_LENGTH), -1e9, np.float32)
    ends = np.full((n, MAX_LENGTH), -1e9, np.float32)
    order = sorted(range(n), key=lambda i: len(enc["input_ids"][i]))
    model.eval()
    with torch.inference_mode():
        for s in range(0, n, 64):
            idx = order[s:s + 64]
            width = max(len(enc["input_ids"][i]) for i in idx)
            batch = {k: torch.tensor([enc[k][i] + [0] * (width - len(enc[k][i])) for i in idx])
                     for k in ("input_ids", "token_type_ids", "attention_mask")}
            out = model(**batch)
            for row, i in enumerate(idx):
                length = len(enc["input_ids"][i])
                starts[i, :length] = out.start_logits[row, :length].float().numpy()
                ends[i, :length] = out.end_logits[row, :length].float().numpy()
    model.train()
    return score(_postprocess(dev_rows, enc, starts, ends), dev_rows)


def run_transformers(files: dict[str, str], steps: int, eval_every: int, budget_s: float, out_dir: Path) -> dict:
    import torch
    import transformers
    from transformers import (AutoModelForQuestionAnswering, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainerCallback, TrainingArguments)

    from bertfit.hub import resolve_model

    transformers.logging.set_verbosity_error()
    model_dir = resolve_model("minilm-l6")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    train_rows, dev_rows = _rows(files["train"]), _rows(files["dev"])
    train = _train_features(tokenizer, train_rows, pad_to_max_length=False)  # run_qa.py --pad_to_max_length False
    dev_enc = tokenizer([r["question"].lstrip() for r in dev_rows], [r["context"] for r in dev_rows],
                        truncation="only_second", max_length=MAX_LENGTH, stride=STRIDE, return_overflowing_tokens=True,
                        return_offsets_mapping=True)
    transformers.set_seed(0)
    model = AutoModelForQuestionAnswering.from_pretrained(model_dir, attn_implementation="sdpa")
    bf16 = cpu_has_bf16()
    counted = {"tokens": 0}

    def count(module, positional, kwargs):
        if module.training:
            counted["tokens"] += int(kwargs["attention_mask"].sum())

    model.register_forward_pre_hook(count, with_kwargs=True)
    curve: list[dict] = []

    class Clock(TrainerCallback):
        """Training time only: each evaluation (run here, every eval_every steps) pauses the clock."""

        def on_train_begin(self, args, state, control, **kw):
            self.train_s, self.since = 0.0, time.perf_counter()
            self.stopped = None

        def on_step_end(self, args, state, control, **kw):
            step = state.global_step
            if step % eval_every and step != steps:
                return
            self.train_s += time.perf_counter() - self.since
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                scores = _hf_dev_scores(model, tokenizer, dev_rows, dev_enc)
            curve.append({"step": step, "train_minutes": self.train_s / 60, "exact_match": scores["exact_match"],
                          "f1": scores["f1"]})
            print(json.dumps(curve[-1]), flush=True)
            if self.train_s > budget_s and step != steps:  # the hour is hard, as on bertfit's side
                control.should_training_stop = True
                self.stopped = step
            self.since = time.perf_counter()

    clock = Clock()
    targs = TrainingArguments(
        output_dir=str(out_dir), per_device_train_batch_size=BATCH, max_steps=steps, learning_rate=LR,
        warmup_steps=int(WARMUP * steps), lr_scheduler_type="linear", weight_decay=WEIGHT_DECAY, max_grad_norm=1.0,
        seed=0, logging_steps=50, save_strategy="no", eval_strategy="no", report_to=[], disable_tqdm=True,
        use_cpu=True, dataloader_num_workers=0, bf16=bf16)
    trainer = Trainer(model=model, args=targs, train_dataset=train, data_collator=DataCollatorWithPadding(tokenizer),
                      processing_class=tokenizer, callbacks=[clock])
    started = time.perf_counter()
    trainer.train()
    return {"curve": curve, "steps_done": trainer.state.global_step, "stopped_at_budget_step": clock.stopped,
            "train_seconds": clock.train_s, "real_tokens": counted["tokens"],
            "tokens_per_s": counted["tokens"] / clock.train_s, "wall_seconds": time.perf_counter() - started,
            "bf16": bf16, "windows": len(train), "transformers": transformers.__version__}


def probe(impl: str, files: dict[str, str], steps: int, work: Path) -> dict:
    """Seconds a training step at this machine's current state: ``steps`` steps of the same schedule shape."""
    runner = run_bertfit if impl == "bertfit" else run_transformers
    shutil.rmtree(work / f"probe-{impl}", ignore_errors=True)
    result = runner(files, steps, steps, 10**9, work / f"probe-{impl}")
    return {"impl": impl, "probe_steps": result["steps_done"], "seconds_per_step": result["train_seconds"] / result["steps_done"],
            "tokens_per_s": result["tokens_per_s"]}


def summarize(paths: list[str], plot: str | None) -> None:
    """The curves side by side: each evaluation, the best EM/F1 reached within 15/30/45/60 training
    minutes, and (with ``plot``) EM and F1 against training minutes as a PNG."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    for run in runs:
        print(f"{run['impl']}: {run['steps_done']} of {run['settings']['steps']} steps, {run['train_seconds'] / 60:.1f} "
              f"training minutes, {run['tokens_per_s']:.0f} real tokens/s")
        for point in run["curve"]:
            print(f"  step {point['step']:5d}  {point['train_minutes']:6.1f} min  EM {point['exact_match']:5.1f}  F1 {point['f1']:5.1f}")
    print("| within | " + " | ".join(f"{r['impl']} EM / F1 (step)" for r in runs) + " |")
    for minutes in (15, 30, 45, 60):
        cells = []
        for run in runs:
            done = [p for p in run["curve"] if p["train_minutes"] <= minutes]
            best = max(done, key=lambda p: p["f1"]) if done else None
            cells.append(f"{best['exact_match']:.1f} / {best['f1']:.1f} ({best['step']})" if best else "-")
        print(f"| {minutes} min | " + " | ".join(cells) + " |")
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
        for run in runs:
            minutes = [p["train_minutes"] for p in run["curve"]]
            for ax, metric in zip(axes, ("exact_match", "f1")):
                ax.plot(minutes, [p[metric] for p in run["curve"]], marker="o", label=run["impl"])
        for ax, name in zip(axes, ("dev exact match", "dev F1")):
            ax.set_xlabel("training minutes (evaluations excluded)")
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
            ax.legend()
        cpu = runs[0]["machine"]["lscpu_model"]
        fig.suptitle(f"SQuAD v1.1, minilm-l6, one core each ({cpu})")
        fig.tight_layout()
        fig.savefig(plot, dpi=100)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "summarize":
        summary = argparse.ArgumentParser(prog="bench_qa_hour.py summarize")
        summary.add_argument("results", nargs="+")
        summary.add_argument("--plot")
        args = summary.parse_args(sys.argv[2:])
        summarize(args.results, args.plot)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", choices=("bertfit", "transformers"), required=True)
    parser.add_argument("--data", default="../shared/data/squad")
    parser.add_argument("--train", type=int, default=20000, help="training questions (a seeded subset)")
    parser.add_argument("--dev", type=int, default=1000, help="dev questions (a seeded subset)")
    parser.add_argument("--minutes", type=float, default=60.0, help="training minutes (evaluations excluded)")
    parser.add_argument("--steps", type=int, help="the schedule's length: what this contender's step rate fits in --minutes")
    parser.add_argument("--probe", type=int, metavar="N", help="measure seconds per step over N steps, and stop")
    parser.add_argument("--work", default="/tmp/bench-qa-hour")
    parser.add_argument("--out")
    args = parser.parse_args()
    work = Path(args.work) / args.impl
    work.mkdir(parents=True, exist_ok=True)
    files = prepare(Path(args.data), work, args.train, args.dev)
    if args.probe:
        result = probe(args.impl, files, args.probe, work)
        result["steps_in_budget"] = int(args.minutes * 60 / result["seconds_per_step"])
        print(json.dumps(result), flush=True)
        return
    if not args.steps or not args.out:
        parser.error("--steps and --out are required without --probe")
    # a multiple of bertfit's log_every (10), so the training seconds its evaluations read are current
    eval_every = max(10, round(args.steps / EVAL_POINTS / 10) * 10)
    runner = run_bertfit if args.impl == "bertfit" else run_transformers
    shutil.rmtree(work / "run", ignore_errors=True)
    result = runner(files, args.steps, eval_every, args.minutes * 60, work / "run")
    out = {"impl": args.impl, "machine": machine(), "command": " ".join(sys.argv),
           "settings": {"train_questions": args.train, "dev_questions": args.dev, "steps": args.steps, "eval_every": eval_every,
                        "batch": BATCH, "lr": LR, "warmup": WARMUP, "weight_decay": WEIGHT_DECAY, "max_length": MAX_LENGTH,
                        "doc_stride": STRIDE, "seed": 0, "model": "minilm-l6", "minutes": args.minutes},
           **result}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "curve"}, indent=2))


if __name__ == "__main__":
    main()
