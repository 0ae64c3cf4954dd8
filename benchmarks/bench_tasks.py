"""Quality and training speed of the new sequence tasks, bertfit vs transformers' Trainer, in one run.

GoEmotions (multi-label, 28 emotions) and STS-B (regression on sentence pairs, 0-5), both from
../shared/data (see its README for the licences). Same model (minilm-l6), same data, steps, batch
size, learning rate, warmup, weight decay, max length and seeds for both; each (task, seed,
contender) runs in a fresh process, contenders interleaved. Reported per task: test metrics as
mean ± std over seeds, and training throughput in real (non-padding) tokens per second.

bertfit runs through its library entry point (what `bertfit train` runs) with the settings a user
would pass; transformers runs AutoModelForSequenceClassification with problem_type set, its Trainer
and the default collator (DataCollatorWithPadding), then predicts the test set (multi-label at 0.5,
as transformers' own examples do).

    .venv/bin/python benchmarks/bench_tasks.py --data ../shared/data --seeds 0 1 2 --out benchmarks/task_results.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TASKS = {
    # name: (problem type, steps, max_length)
    "goemotions": ("multi-label", 400, 64),
    "stsb": ("regression", 270, 128),
}
CONTENDERS = ("bertfit", "transformers")
# MiniLM-L6 (384 wide) for a few hundred steps: a higher rate than BERT-base's usual 2e-5 to 5e-5, the same
# for both contenders.
BATCH, LR, WARMUP, WEIGHT_DECAY = 32, 1e-4, 0.1, 0.01


# --- data: the shared TSVs as JSON lines both contenders read --------------------------------

def _tsv(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def prepare(data: Path, work: Path) -> dict[str, dict[str, Path]]:
    out: dict[str, dict[str, Path]] = {}
    names = (data / "goemotions" / "labels.txt").read_text(encoding="utf-8").split()
    for task in TASKS:
        out[task] = {}
        for split in ("train", "dev", "test"):
            target = work / f"{task}-{split}.jsonl"
            rows = []
            if task == "goemotions":  # text, comma-separated label ids, comment id
                for text, ids, _ in _tsv(data / "goemotions" / f"{split}.tsv"):
                    rows.append({"text": text, "labels": [names[int(i)] for i in ids.split(",")]})
            else:  # genre, source, year, id, score, sentence 1, sentence 2 (some rows carry 2 more columns)
                for fields in _tsv(data / "stsb" / f"{split}.tsv"):
                    rows.append({"text": fields[5], "text_pair": fields[6], "score": float(fields[4])})
            target.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
            out[task][split] = target
    return out


# --- children ----------------------------------------------------------------------------

def run_bertfit(task: str, files: dict[str, str], seed: int, work: Path) -> dict:
    from bertfit.train.finetune import fine_tune
    from bertfit.train.config import TrainConfig

    problem, steps, max_length = TASKS[task]
    config = TrainConfig(train_file=files["train"], validation_file=files["dev"], test_file=files["test"],
                         problem_type=problem, model="minilm-l6", max_steps=steps, batch_size=BATCH, lr=LR,
                         warmup_ratio=WARMUP, weight_decay=WEIGHT_DECAY, max_length=max_length, seed=seed,
                         eval_every=steps, save_every=10**6, deduplicate=False,
                         pair_column="text_pair" if task == "stsb" else None, output_dir=str(work / "run"))
    started = time.perf_counter()
    result = fine_tune(config)
    wall = time.perf_counter() - started
    train_records = [r for r in result.train.history if r.get("kind") == "train"]
    test = result.metrics["test"]
    return {"tokens_per_s": result.train.state.tokens_seen / result.train.state.train_seconds,
            "train_seconds": result.train.state.train_seconds, "real_tokens": result.train.state.tokens_seen,
            "steps": result.train.state.step, "wall_s": wall, "test": _summary(task, test),
            "last_loss": train_records[-1]["loss"] if train_records else None}


def _summary(task: str, m: dict) -> dict:
    if task == "goemotions":
        return {"macro_f1": m["macro_f1"], "micro_f1": m["micro_f1"], "macro_f1_at_0.5": m["at_0.5"]["macro_f1"],
                "micro_f1_at_0.5": m["at_0.5"]["micro_f1"]}
    return {"pearson": m["pearson"], "spearman": m["spearman"], "rmse": m["rmse"]}


def run_transformers(task: str, files: dict[str, str], seed: int, work: Path) -> dict:
    import numpy as np
    import torch
    import transformers
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding)
    from hf_trainer import train_with_trainer

    from bertfit.hub import resolve_model
    from bertfit.tasks.multilabel import multilabel_metrics
    from bertfit.tasks.regression import regression_metrics

    transformers.logging.set_verbosity_error()
    problem, steps, max_length = TASKS[task]
    model_dir = resolve_model("minilm-l6")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = {split: [json.loads(line) for line in open(files[split], encoding="utf-8")] for split in ("train", "test")}
    labels = sorted({label for r in rows["train"] for label in r["labels"]}) if task == "goemotions" else ["score"]
    index = {label: i for i, label in enumerate(labels)}

    def target(r):
        if task == "stsb":
            return float(r["score"])
        vec = [0.0] * len(labels)
        for label in r["labels"]:
            vec[index[label]] = 1.0
        return vec

    def encode(split):
        texts = [r["text"] for r in rows[split]]
        pairs = [r["text_pair"] for r in rows[split]] if task == "stsb" else None
        enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
        return [{"input_ids": enc["input_ids"][i], "token_type_ids": enc["token_type_ids"][i],
                 "attention_mask": enc["attention_mask"][i], "labels": target(r)} for i, r in enumerate(rows[split])]

    train, test = encode("train"), encode("test")
    transformers.set_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=index, attn_implementation="sdpa",
        problem_type="multi_label_classification" if task == "goemotions" else "regression")
    collator = DataCollatorWithPadding(tokenizer)
    trained = train_with_trainer(model, tokenizer, train, collator, batch=BATCH, steps=steps, lr=LR,
                                 warmup=WARMUP, weight_decay=WEIGHT_DECAY, seed=seed)
    outputs = np.zeros((len(test), len(labels)), dtype=np.float32)
    order = np.argsort([len(x["input_ids"]) for x in test])
    with torch.inference_mode():
        for s in range(0, len(order), 64):
            idx = order[s : s + 64]
            batch = collator([{k: test[i][k] for k in ("input_ids", "token_type_ids", "attention_mask")} for i in idx])
            outputs[idx] = model(**batch).logits.float().numpy()
    truth = np.array([t["labels"] for t in test], dtype=np.float32)
    if task == "goemotions":
        m = multilabel_metrics(1 / (1 + np.exp(-outputs)) >= 0.5, truth, labels)
        summary = {"macro_f1_at_0.5": m["macro_f1"], "micro_f1_at_0.5": m["micro_f1"]}
    else:
        summary = {k: v for k, v in regression_metrics(outputs[:, 0].astype(float), truth.astype(float)).items()
                   if k in ("pearson", "spearman", "rmse")}
    return {"tokens_per_s": trained["tokens"] / trained["seconds"], "train_seconds": trained["seconds"],
            "real_tokens": trained["tokens"], "steps": trained["steps"], "test": summary}


def child(args) -> None:
    files = json.loads(args.files)
    with tempfile.TemporaryDirectory() as tmp:
        run = run_bertfit if args.impl == "bertfit" else run_transformers
        result = run(args.task, files, args.seed, Path(tmp))
    print("RESULT " + json.dumps(result), flush=True)


# --- parent --------------------------------------------------------------------------------

def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def summarize(results: list[dict]) -> str:
    lines = []
    for task in TASKS:
        lines.append(f"\n## {task} ({TASKS[task][0]}, {TASKS[task][1]} steps, batch {BATCH}, lr {LR})")
        for impl in CONTENDERS:
            mine = [r for r in results if r["task"] == task and r["impl"] == impl]
            if not mine:
                continue
            keys = sorted(mine[0]["test"])
            shown = ", ".join(f"{k} {_mean_std([r['test'][k] for r in mine])}" for k in keys)
            tps = [r["tokens_per_s"] for r in mine]
            lines.append(f"- {impl} (seeds {[r['seed'] for r in mine]}): {shown}; real tokens/s {_mean_std(tps)}")
        ratios = [b["tokens_per_s"] / t["tokens_per_s"] for b in results for t in results
                  if b["task"] == t["task"] == task and b["seed"] == t["seed"] and b["impl"] == "bertfit"
                  and t["impl"] == "transformers"]
        if ratios:
            lines.append(f"- training throughput bertfit / transformers: {_mean_std(ratios)} (per seed: "
                         f"{', '.join(f'{r:.2f}' for r in ratios)})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--out", default="benchmarks/task_results.json")
    parser.add_argument("--work", default=None, help="folder for the converted data (default: a temporary one)")
    parser.add_argument("--max-steps", type=int, help="override every task's steps (a smoke test of the harness)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--files", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.max_steps:
        for task, (problem, _, max_length) in list(TASKS.items()):
            TASKS[task] = (problem, args.max_steps, max_length)
    if args.child:
        child(args)
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-tasks-"))
    work.mkdir(parents=True, exist_ok=True)
    files = prepare(Path(args.data), work)
    out = Path(args.out)
    results = json.loads(out.read_text()).get("results", []) if out.exists() else []
    done = {(r["task"], r["seed"], r["impl"]) for r in results}
    import platform

    machine = {"cpu": _cpu_model(), "threads": os.cpu_count(), "python": platform.python_version()}
    for seed in args.seeds:
        for task in args.tasks:
            # Interleaved: the two contenders of a (task, seed) run back to back, the order alternating.
            order = CONTENDERS if seed % 2 == 0 else tuple(reversed(CONTENDERS))
            for impl in order:
                if (task, seed, impl) in done:
                    continue
                cmd = [sys.executable, __file__, "--child", "--impl", impl, "--task", task, "--seed", str(seed),
                       *(["--max-steps", str(args.max_steps)] if args.max_steps else []),
                       "--files", json.dumps({k: str(v) for k, v in files[task].items()})]
                started = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True)
                line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                if proc.returncode or line is None:
                    print(proc.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"{impl} {task} seed {seed} failed (exit {proc.returncode})")
                result = {"task": task, "seed": seed, "impl": impl, **json.loads(line[7:]),
                          "process_s": time.perf_counter() - started}
                results.append(result)
                out.write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")
                print(f"{task} seed {seed} {impl}: {result['test']} {result['tokens_per_s']:.0f} tok/s", flush=True)
    print(summarize(results))


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor()


if __name__ == "__main__":
    main()
