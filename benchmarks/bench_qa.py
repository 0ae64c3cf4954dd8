"""Extractive QA (SQuAD v1.1): bertfit vs a transformers Trainer recipe that follows run_qa.py, in one run.

Same model (minilm-l6), same training subset of SQuAD v1.1 train, same steps, batch size, learning
rate, warmup, weight decay, seed and windowing (max_length 384, doc_stride 128), for both. Each
contender trains in a fresh process (contenders alternate), then answers the same subset of SQuAD
v1.1 dev; EM/F1 are computed by one scorer (bertfit.tasks.qa.squad_metric, equal to the official v1.1
script on its tests) for both. Training throughput counts real (non-padding) tokens per second of
training time. Prediction: bertfit's Python predictor vs transformers' pipeline("question-answering")
on the same dev questions with the same trained weights (bertfit's run directory), questions/s.

transformers follows run_qa.py's defaults: prepare_train_features / prepare_validation_features
(truncation="only_second", stride, return_overflowing_tokens, offsets, pad_to_max_length=True),
answers outside a window labelled at [CLS], and utils_qa.postprocess_qa_predictions (n_best 20,
max_answer_length 30), re-typed below because utils_qa ships with the examples, not the package.

    .venv/bin/python benchmarks/bench_qa.py --data ../shared/data/squad --train 600 --dev 300 \
        --transformers4 /tmp/tf4 --out benchmarks/qa_results.json

transformers 5 removed pipeline("question-answering"); the pipeline contender runs transformers 4.57.1
(installed with pip --target into the folder --transformers4 names) on bertfit's run directory.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONTENDERS = ("bertfit", "transformers")
BATCH, LR, WARMUP, WEIGHT_DECAY, MAX_LENGTH, STRIDE = 16, 1e-4, 0.1, 0.01, 384, 128
SUBSET_SEED = 0  # the train/dev subsets: the same questions whatever --seed trains with
SEED = 0  # the training seed (--seed; set in the main process and passed to the children)


def prepare(data: Path, work: Path, n_train: int, n_dev: int) -> dict[str, str]:
    """Seeded subsets of train and dev as SQuAD-style JSON lines (the flattened form both read)."""
    from bertfit.tasks.qa.data import read_qa

    out = {}
    for split, name, n in (("train", "train-v1.1.json.gz", n_train), ("dev", "dev-v1.1.json.gz", n_dev)):
        examples, _ = read_qa(data / name)
        chosen = sorted(random.Random(SUBSET_SEED).sample(range(len(examples)), n))
        path = work / f"squad-{split}-{n}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for i in chosen:
                e = examples[i]
                f.write(json.dumps({"id": e.id, "question": e.question, "context": e.context,
                                    "answers": {"text": [t for t, _ in e.answers],
                                                "answer_start": [s for _, s in e.answers]}}, ensure_ascii=False) + "\n")
        out[split] = str(path)
    return out


def _rows(path: str) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def score(predictions: list[str], rows: list[dict]) -> dict:
    from bertfit.tasks.qa.squad_metric import squad_scores

    m = squad_scores(predictions, [r["answers"]["text"] for r in rows])
    return {"exact_match": m["exact_match"], "f1": m["f1"], "n": m["n"]}


# --- bertfit ---------------------------------------------------------------------------------

def run_bertfit(files: dict[str, str], steps: int, work: Path) -> dict:
    from bertfit.train.finetune import fine_tune
    from bertfit.train.config import TrainConfig

    config = TrainConfig(train_file=files["train"], validation_file=files["dev"], problem_type="qa", model="minilm-l6",
                         max_steps=steps, batch_size=BATCH, lr=LR, warmup_ratio=WARMUP, weight_decay=WEIGHT_DECAY,
                         max_length=MAX_LENGTH, doc_stride=STRIDE, seed=SEED, eval_every=steps, save_every=10**6,
                         deduplicate=False, output_dir=str(work / "run"))
    result = fine_tune(config)
    state = result.train.state
    rows = _rows(files["dev"])
    from bertfit.predict.predictor import Predictor

    # What `bertfit predict` runs by default on a CPU (ONNX Runtime when installed; exported once, untimed).
    predictor = Predictor.load(str(work / "run"))
    items = [{"question": r["question"], "context": r["context"]} for r in rows]
    predictor.records(items[:4])  # warm-up
    started = time.perf_counter()
    records = predictor.records(items)
    predict_s = time.perf_counter() - started
    windows = next(r["examples"] for r in result.train.history if r.get("kind") == "start")
    return {"tokens_per_s": state.tokens_seen / state.train_seconds, "train_seconds": state.train_seconds,
            "real_tokens": state.tokens_seen, "steps": state.step, "windows": windows,
            "dev": score([r["answer"] for r in records], rows), "dev_in_run": result.metrics["validation"]["exact_match"],
            "predict_questions_per_s": len(rows) / predict_s, "predict_engine": predictor.engine,
            "run": str(work / "run")}


# --- transformers, following run_qa.py ------------------------------------------------------

def _train_features(tokenizer, rows, pad_to_max_length: bool = True):
    """run_qa.py's prepare_train_features (pad_to_max_length=True is its default; False leaves the padding
    to the collator, per batch)."""
    questions = [r["question"].lstrip() for r in rows]
    enc = tokenizer(questions, [r["context"] for r in rows], truncation="only_second", max_length=MAX_LENGTH,
                    stride=STRIDE, return_overflowing_tokens=True, return_offsets_mapping=True,
                    padding="max_length" if pad_to_max_length else False)
    features = []
    for i, offsets in enumerate(enc["offset_mapping"]):
        ids = enc["input_ids"][i]
        cls_index = ids.index(tokenizer.cls_token_id)
        seq = enc.sequence_ids(i)
        answers = rows[enc["overflow_to_sample_mapping"][i]]["answers"]
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])
        s = 0
        while seq[s] != 1:
            s += 1
        e = len(ids) - 1
        while seq[e] != 1:
            e -= 1
        if not (offsets[s][0] <= start_char and offsets[e][1] >= end_char):
            start, end = cls_index, cls_index
        else:
            while s < len(offsets) and offsets[s][0] <= start_char:
                s += 1
            start = s - 1
            while offsets[e][1] >= end_char:
                e -= 1
            end = e + 1
        features.append({"input_ids": ids, "token_type_ids": enc["token_type_ids"][i],
                         "attention_mask": enc["attention_mask"][i], "start_positions": start, "end_positions": end})
    return features


def _postprocess(rows, enc, start_logits, end_logits, n_best=20, max_answer_length=30):
    """utils_qa.postprocess_qa_predictions (version_2_with_negative=False)."""
    import numpy as np

    by_example = collections.defaultdict(list)
    for f, e in enumerate(enc["overflow_to_sample_mapping"]):
        by_example[e].append(f)
    out = []
    for i, row in enumerate(rows):
        candidates = []
        for f in by_example[i]:
            seq = enc.sequence_ids(f)
            offsets = [o if seq[k] == 1 else None for k, o in enumerate(enc["offset_mapping"][f])]
            s_idx = np.argsort(start_logits[f])[-1: -n_best - 1: -1].tolist()
            e_idx = np.argsort(end_logits[f])[-1: -n_best - 1: -1].tolist()
            for s in s_idx:
                for e in e_idx:
                    if s >= len(offsets) or e >= len(offsets) or offsets[s] is None or len(offsets[s]) < 2 \
                            or offsets[e] is None or len(offsets[e]) < 2:
                        continue
                    if e < s or e - s + 1 > max_answer_length:
                        continue
                    candidates.append((start_logits[f][s] + end_logits[f][e], offsets[s][0], offsets[e][1]))
        if candidates:
            _, a, b = max(candidates)
            out.append(row["context"][a:b])
        else:
            out.append("")
    return out


def run_transformers(files: dict[str, str], steps: int, work: Path) -> dict:
    import numpy as np
    import torch
    import transformers
    from transformers import (AutoModelForQuestionAnswering, AutoTokenizer, default_data_collator)
    from hf_trainer import train_with_trainer

    from bertfit.hub import resolve_model

    transformers.logging.set_verbosity_error()
    model_dir = resolve_model("minilm-l6")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    train_rows, dev_rows = _rows(files["train"]), _rows(files["dev"])
    train = _train_features(tokenizer, train_rows)
    transformers.set_seed(SEED)
    model = AutoModelForQuestionAnswering.from_pretrained(model_dir, attn_implementation="sdpa")
    collator = default_data_collator
    trained = train_with_trainer(model, tokenizer, train, collator, batch=BATCH, steps=steps, lr=LR,
                                 warmup=WARMUP, weight_decay=WEIGHT_DECAY, seed=SEED)
    # Validation features as run_qa.py's prepare_validation_features, predicted in batches of 64.
    enc = tokenizer([r["question"].lstrip() for r in dev_rows], [r["context"] for r in dev_rows],
                    truncation="only_second", max_length=MAX_LENGTH, stride=STRIDE, return_overflowing_tokens=True,
                    return_offsets_mapping=True, padding="max_length")
    n = len(enc["input_ids"])
    starts, ends = np.zeros((n, MAX_LENGTH), np.float32), np.zeros((n, MAX_LENGTH), np.float32)
    with torch.inference_mode():
        for s in range(0, n, 64):
            batch = {k: torch.tensor(enc[k][s:s + 64]) for k in ("input_ids", "token_type_ids", "attention_mask")}
            out = model(**batch)
            starts[s:s + 64], ends[s:s + 64] = out.start_logits.numpy(), out.end_logits.numpy()
    predictions = _postprocess(dev_rows, enc, starts, ends)
    return {"tokens_per_s": trained["tokens"] / trained["seconds"], "train_seconds": trained["seconds"],
            "real_tokens": trained["tokens"], "steps": trained["steps"], "windows": len(train),
            "dev": score(predictions, dev_rows)}


def run_pipeline(files: dict[str, str], run: str) -> dict:
    """pipeline("question-answering") on bertfit's trained run directory: questions/s and its answers."""
    import transformers
    from transformers import pipeline

    transformers.logging.set_verbosity_error()
    rows = _rows(files["dev"])
    qa = pipeline("question-answering", model=run, tokenizer=run, device=-1)
    qa(question=rows[0]["question"], context=rows[0]["context"], max_answer_len=30)  # warm-up
    started = time.perf_counter()
    answers = [qa(question=r["question"], context=r["context"], max_answer_len=30)["answer"] for r in rows]
    seconds = time.perf_counter() - started
    return {"predict_questions_per_s": len(rows) / seconds, "dev": score(answers, rows)}


def predict_bertfit(files: dict[str, str], run: str, int8: bool) -> dict:
    """bertfit's predictor (the default CPU engine, ONNX Runtime; int8: its --int8) on the dev questions:
    questions/s, answers, and the linear-layer FLOPs of the windows it ran (for the share of the peak)."""
    from bertfit.predict.predictor import Predictor

    rows = _rows(files["dev"])
    items = [{"question": r["question"], "context": r["context"]} for r in rows]
    predictor = Predictor.load(run, int8=int8)
    predictor.records(items[:4])  # warm-up (the export is cached before this)
    started = time.perf_counter()
    records = predictor.records(items)
    seconds = time.perf_counter() - started
    return {"predict_questions_per_s": len(rows) / seconds, "seconds": seconds, "engine": predictor.engine,
            "int8": int8, "dev": score([r["answer"] for r in records], rows)}


def window_tokens(files: dict[str, str]) -> int:
    """Tokens in the dev questions' windows (max_length 384, stride 128: bertfit's and the pipeline's)."""
    from transformers import AutoTokenizer

    from bertfit.hub import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("minilm-l6"))
    rows = _rows(files["dev"])
    enc = tok([r["question"].lstrip() for r in rows], [r["context"] for r in rows], truncation="only_second",
              max_length=MAX_LENGTH, stride=STRIDE, return_overflowing_tokens=True)
    return sum(len(ids) for ids in enc["input_ids"])


def predict_only(args) -> None:
    """Prediction alone on a trained run: bertfit fp32, bertfit int8 and pipeline("question-answering"),
    each in a fresh process, interleaved, --repeats times; questions/s, EM/F1, and each one's linear-layer
    GFLOP/s as a share of this core's fp32 matmul peak (measured here, one thread)."""
    work = Path(tempfile.mkdtemp(prefix="bench-qa-predict-"))
    files = prepare(Path(args.data), work, args.train, args.dev)
    tokens = window_tokens(files)
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_speed import matmul_peak_gflops

    import torch

    from bertfit.hub import resolve_model

    config = json.loads((resolve_model(args.predict_only) / "config.json").read_text())
    hidden, inter, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    gflop = tokens * layers * 2 * (4 * hidden * hidden + 2 * hidden * inter) / 1e9  # dense layers, every token
    peak = matmul_peak_gflops("cpu")
    order = [("bertfit", False), ("bertfit", True), ("pipeline", False)]
    results: dict[str, list] = {}
    for repeat in range(args.repeats):
        for impl, int8 in order if repeat % 2 == 0 else order[::-1]:
            name = impl + (" int8" if int8 else "")
            result = _child(impl if impl == "pipeline" else "predict", files, 0, work, run=args.predict_only,
                            path=args.transformers4 if impl == "pipeline" else None, int8=int8)
            result["gflop_per_s"] = gflop * result["predict_questions_per_s"] / len(_rows(files["dev"]))
            results.setdefault(name, []).append(result)
            print(name, json.dumps(result), flush=True)
    mean = {name: sum(r["predict_questions_per_s"] for r in rs) / len(rs) for name, rs in results.items()}
    summary = {"dev_questions": args.dev, "window_tokens": tokens, "dense_gflop": gflop, "matmul_peak_gflop_per_s": peak,
               "threads": torch.get_num_threads(), "questions_per_s": mean,
               "share_of_peak": {name: gflop * q / args.dev / peak for name, q in mean.items()},
               "ratio_vs_pipeline": {name: q / mean["pipeline"] for name, q in mean.items() if name != "pipeline"},
               "dev_em_f1": {name: [rs[0]["dev"]["exact_match"], rs[0]["dev"]["f1"]] for name, rs in results.items()}}
    Path(args.out).write_text(json.dumps({"machine": {"cpu": _cpu_model()}, "summary": summary, "results": results},
                                         indent=2) + "\n")
    print(json.dumps(summary, indent=2))


def child(args) -> None:
    files = json.loads(args.files)
    if args.impl == "predict":
        result = predict_bertfit(files, args.run, args.int8)
    elif args.impl == "pipeline":
        result = run_pipeline(files, args.run)
    else:
        work = Path(args.work)
        result = (run_bertfit if args.impl == "bertfit" else run_transformers)(files, args.steps, work)
    import torch

    # the threads this contender computed with, read in its own process after it ran (the machine's CPU
    # count, which the parent once recorded as "threads", says nothing about them)
    result["torch_threads"] = torch.get_num_threads()
    print("RESULT " + json.dumps(result), flush=True)


def _child(impl: str, files: dict, steps: int, work: Path, run: str | None = None, path: str | None = None,
           int8: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--child", "--seed", str(SEED), "--impl", impl, "--steps", str(steps), "--files", json.dumps(files),
           "--work", str(work), *(["--run", run] if run else []), *(["--int8"] if int8 else [])]
    env = dict(os.environ)
    if path:  # a transformers 4.x installed with pip --target (5.x removed the question-answering pipeline)
        env["PYTHONPATH"] = os.pathsep.join([path, env.get("PYTHONPATH", "")])
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        print(proc.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"{impl} failed (exit {proc.returncode})")
    return {"impl": impl, **json.loads(line[7:]), "process_s": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/squad")
    parser.add_argument("--train", type=int, default=600, help="training questions (a seeded subset)")
    parser.add_argument("--dev", type=int, default=300, help="dev questions (a seeded subset)")
    parser.add_argument("--steps", type=int, default=0, help="optimizer steps (default: one epoch of the windows)")
    parser.add_argument("--out", default="benchmarks/qa_results.json")
    parser.add_argument("--seed", type=int, default=0, help="the training seed of both contenders (the subsets stay fixed)")
    parser.add_argument("--no-pipeline", action="store_true", help="quality only: skip the pipeline's prediction timing")
    parser.add_argument("--predict-only", metavar="RUN", help="prediction alone on a trained QA run: bertfit fp32 and "
                        "int8 vs the pipeline, interleaved (--repeats), with each one's share of the matmul peak")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--int8", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--transformers4", help="a folder holding transformers 4.x for the pipeline, made with: pip "
                        "install --target DIR --no-deps transformers==4.57.1 huggingface_hub==0.36.0 tokenizers==0.22.1 "
                        "requests urllib3 idna certifi charset_normalizer")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--files", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    global SEED
    SEED = args.seed
    if args.child:
        child(args)
        return
    if args.predict_only:
        predict_only(args)
        return
    work = Path(tempfile.mkdtemp(prefix="bench-qa-"))
    files = prepare(Path(args.data), work, args.train, args.dev)
    steps = args.steps
    if not steps:  # one epoch of the training windows (same count for both: same tokenizer and windowing)
        from transformers import AutoTokenizer

        from bertfit.hub import resolve_model

        tok = AutoTokenizer.from_pretrained(resolve_model("minilm-l6"))
        rows = _rows(files["train"])
        windows = len(tok([r["question"].lstrip() for r in rows], [r["context"] for r in rows], truncation="only_second",
                          max_length=MAX_LENGTH, stride=STRIDE, return_overflowing_tokens=True)["input_ids"])
        steps = -(-windows // BATCH)
    results = []
    for impl in CONTENDERS:
        results.append(_child(impl, files, steps, work / impl))
        print(json.dumps(results[-1]), flush=True)
    bertfit = results[0]
    if not args.no_pipeline:
        results.append(_child("pipeline", files, steps, work, run=bertfit["run"], path=args.transformers4))
        print(json.dumps(results[-1]), flush=True)
    machine = {"cpu": _cpu_model(), "cpu_count": os.cpu_count(), "cpu_affinity": sorted(os.sched_getaffinity(0)),
               "torch_threads": sorted({r["torch_threads"] for r in results})}
    summary = {
        "train_questions": args.train, "dev_questions": args.dev, "steps": steps, "batch": BATCH, "lr": LR,
        "seed": SEED, "dev_em_f1": {r["impl"]: [r["dev"]["exact_match"], r["dev"]["f1"]] for r in results[:2]},
        "training_throughput_ratio": bertfit["tokens_per_s"] / results[1]["tokens_per_s"],
    }
    if not args.no_pipeline:
        summary["prediction_ratio"] = bertfit["predict_questions_per_s"] / results[2]["predict_questions_per_s"]
    Path(args.out).write_text(json.dumps({"machine": machine, "summary": summary, "results": results}, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


def _cpu_model() -> str:
    for line in open("/proc/cpuinfo", encoding="utf-8"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
