"""NER quality, training speed and prediction speed: bertfit vs a transformers Trainer recipe (run_ner.py).

WNUT-17 and NCBI-disease from ../shared/data (CC BY 4.0, see its README). Same model (minilm-l6),
same sentences (both read through bertfit's CoNLL reader, so the same IOB2 tags), steps, batch size,
learning rate, warmup, weight decay, max length and seeds. transformers follows run_ner.py:
``tokenizer(words, is_split_into_words=True, truncation=True)``, the word's label on its first
subword (-100 elsewhere), DataCollatorForTokenClassification, Trainer, then seqeval on the test set
(predictions on first subwords). bertfit runs its library entry point with ``task="ner"``.
Each (data set, seed, contender) runs in a fresh process, contenders interleaved.

``--impls`` picks the contenders; ``bertfit-zero-bias`` is bertfit with its NER head's bias left at 0
(as before issue 31, and as transformers initialises it) instead of the log of the training tags'
shares: the same code otherwise, so the two measure that one change. A run counts as collapsed when
its test entity F1 is below 0.05 or it tags no test word with an entity.

Prediction: bertfit's predictor (``bertfit.load(run).predict(texts)``) vs
``pipeline("token-classification", aggregation_strategy="first", batch_size=32)`` on the same
trained run directory, the same raw test texts (words joined by spaces), seed 0's run.

    .venv/bin/python benchmarks/bench_ner.py --data ../shared/data --seeds 0 1 2 --out benchmarks/ner_results.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETS = {  # name: (train, test, steps)
    "wnut17": ("wnut17/train.conll", "wnut17/test.conll"),
    "ncbi": ("ncbi_disease/train.tsv", "ncbi_disease/test.tsv"),
}
CONTENDERS = ("bertfit", "transformers", "bertfit-zero-bias")
COLLAPSED_F1 = 0.05  # below this (or no entity predicted at all), a run counts as collapsed
STEPS, BATCH, LR, WARMUP, WEIGHT_DECAY, MAX_LENGTH = 150, 16, 1e-4, 0.1, 0.01, 128
PREDICT_TEXTS = 300
TEST_LIMIT = 500  # the first N test sentences, for both contenders (the budget; stated in RESULTS.md)


def limited_test(path: str, work: Path) -> str:
    """The first TEST_LIMIT sentences of a CoNLL test file (blank-line separated), as a file."""
    text = Path(path).read_text(encoding="utf-8").replace("\r\n", "\n")
    blocks = [b for b in re.split(r"\n[ \t]*\n", text) if b.strip()]
    target = work / "test.conll"
    target.write_text("\n\n".join(blocks[:TEST_LIMIT]) + "\n", encoding="utf-8")
    return str(target)


def run_bertfit_zero_bias(name: str, files: dict, seed: int, work: Path, predict: bool) -> dict:
    """bertfit with the NER head's bias left at zero (its initialisation before issue 31)."""
    from bertfit.tasks.ner.task import NER

    NER.init_head = lambda self, model: None  # the base Task's init_head: the fresh head is left as drawn
    return run_bertfit(name, files, seed, work, predict)


def run_bertfit(name: str, files: dict, seed: int, work: Path, predict: bool) -> dict:
    from bertfit.train.finetune import fine_tune
    from bertfit.train.config import TrainConfig

    run_dir = work / "run"
    # --steps 0: bertfit's own defaults for NER (tasks/table.py; the JSON records them), what a user gets
    # from `bertfit train --task ner FILE`; otherwise the issue-13 recipe shared with transformers.
    budget = {} if not STEPS else dict(max_steps=STEPS, batch_size=BATCH, lr=LR, warmup_ratio=WARMUP,
                                       weight_decay=WEIGHT_DECAY, max_length=MAX_LENGTH, eval_every=STEPS)
    config = TrainConfig(train_file=files["train"], test_file=limited_test(files["test"], work), problem_type="ner",
                         model="minilm-l6", seed=seed, save_every=10**6, deduplicate=False, split=(1.0, 0.0, 0.0),
                         output_dir=str(run_dir), **budget)
    result = fine_tune(config)
    test = result.metrics["test"]
    out = {"tokens_per_s": result.train.state.tokens_seen / result.train.state.train_seconds,
           "train_seconds": result.train.state.train_seconds, "real_tokens": result.train.state.tokens_seen,
           "steps": result.train.state.step,
           "settings": {k: getattr(config, k) for k in ("lr", "epochs", "batch_size", "warmup_ratio", "max_length")},
           "test": {"f1": test["f1"], "precision": test["precision"], "recall": test["recall"],
                    "predicted_entities": test["predicted_entities"]}}
    if predict:
        out["predict"] = compare_prediction(run_dir, config.test_file)
    return out


def compare_prediction(run_dir: Path, test_file: str) -> dict:
    """Texts/s of bertfit's predictor and transformers' pipeline on the same run, and whether they agree."""
    import torch
    import transformers
    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

    import bertfit
    from bertfit.tasks.ner.data import read_ner_file

    transformers.logging.set_verbosity_error()
    sentences, _ = read_ner_file(test_file)  # the limited copy: its first PREDICT_TEXTS sentences
    texts = [s.text for s in sentences[:PREDICT_TEXTS]]
    model = bertfit.load(run_dir)
    model.predict(texts[:8])  # warm-up (first-call set-up is not throughput)
    start = time.perf_counter()
    ours = model.predict(texts)
    ours_s = time.perf_counter() - start
    pipe = pipeline("token-classification", model=AutoModelForTokenClassification.from_pretrained(run_dir),
                    tokenizer=AutoTokenizer.from_pretrained(run_dir), aggregation_strategy="first", device=-1,
                    batch_size=32)
    pipe(texts[:8])
    start = time.perf_counter()
    with torch.inference_mode():
        theirs = pipe(texts)
    theirs_s = time.perf_counter() - start
    key = lambda ents: sorted((e["type"] if "type" in e else e["entity_group"], e["start"], e["end"]) for e in ents)  # noqa: E731
    same = sum(key(a) == key(b) for a, b in zip(ours, theirs))
    return {"texts": len(texts), "bertfit_texts_per_s": len(texts) / ours_s,
            "pipeline_texts_per_s": len(texts) / theirs_s, "same_entities": same / len(texts)}


def run_transformers(name: str, files: dict, seed: int, work: Path, predict: bool) -> dict:
    import numpy as np
    import torch
    import transformers
    from seqeval.metrics import f1_score, precision_score, recall_score
    from transformers import (AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification)
    from hf_trainer import train_with_trainer

    from bertfit.hub import resolve_model
    from bertfit.tasks.ner.data import read_ner_file

    transformers.logging.set_verbosity_error()
    model_dir = resolve_model("minilm-l6")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = {split: read_ner_file(files[split])[0] for split in ("train", "test")}
    data["test"] = data["test"][:TEST_LIMIT]
    types = sorted({t[2:] for s in data["train"] for t in s.tags if t != "O"})
    labels = ["O"] + [f"{p}-{t}" for t in types for p in "BI"]
    index = {label: i for i, label in enumerate(labels)}

    def encode(split):  # run_ner.py's tokenize_and_align_labels (label_all_tokens=False)
        sentences = data[split]
        enc = tokenizer([list(s.words) for s in sentences], truncation=True, max_length=MAX_LENGTH,
                        is_split_into_words=True)
        rows = []
        for i, s in enumerate(sentences):
            previous, label_ids = None, []
            for word in enc.word_ids(i):
                label_ids.append(-100 if word is None or word == previous else index[s.tags[word]])
                previous = word
            rows.append({"input_ids": enc["input_ids"][i], "token_type_ids": enc["token_type_ids"][i],
                         "attention_mask": enc["attention_mask"][i], "labels": label_ids})
        return rows

    train, test = encode("train"), encode("test")
    transformers.set_seed(seed)
    model = AutoModelForTokenClassification.from_pretrained(
        model_dir, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=index, attn_implementation="sdpa")
    collator = DataCollatorForTokenClassification(tokenizer)
    trained = train_with_trainer(model, tokenizer, train, collator, batch=BATCH, steps=STEPS, lr=LR,
                                 warmup=WARMUP, weight_decay=WEIGHT_DECAY, seed=seed)
    true, pred = [], []
    order = np.argsort([len(x["input_ids"]) for x in test])
    with torch.inference_mode():
        for s in range(0, len(order), 64):
            idx = order[s : s + 64]
            batch = collator([test[i] for i in idx])
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.argmax(-1)
            for row, (p, l) in zip(idx, zip(logits.tolist(), batch["labels"].tolist())):
                true.append((row, [labels[y] for y in l if y != -100]))
                pred.append((row, [labels[x] for x, y in zip(p, l) if y != -100]))
    true = [t for _, t in sorted(true)]
    pred = [p for _, p in sorted(pred)]
    # Words past max_length (truncated by the recipe) are absent from both lists, as in run_ner.py.
    return {"tokens_per_s": trained["tokens"] / trained["seconds"], "train_seconds": trained["seconds"],
            "real_tokens": trained["tokens"], "steps": trained["steps"],
            "test": {"f1": f1_score(true, pred), "precision": precision_score(true, pred),
                     "recall": recall_score(true, pred),
                     "predicted_entities": sum(tag.startswith("B-") or (tag.startswith("I-") and (i == 0 or row[i - 1][2:] != tag[2:]))
                                               for row in pred for i, tag in enumerate(row))}}


def child(args) -> None:
    files = json.loads(args.files)
    with tempfile.TemporaryDirectory() as tmp:
        run = {"bertfit": run_bertfit, "transformers": run_transformers, "bertfit-zero-bias": run_bertfit_zero_bias}[args.impl]
        result = run(args.set, files, args.seed, Path(tmp), args.predict)
    print("RESULT " + json.dumps(result), flush=True)


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def collapsed_run(result: dict) -> bool:
    """F1 below COLLAPSED_F1, or no entity predicted (all-O); runs recorded before the count: F1 alone."""
    test = result["test"]
    return test["f1"] < COLLAPSED_F1 or test.get("predicted_entities", 1) == 0


def summarize(results: list[dict]) -> str:
    lines = []
    for name in SETS:
        lines.append(f"\n## {name} ({STEPS} steps, batch {BATCH}, lr {LR}, max_length {MAX_LENGTH}, "
                     f"first {TEST_LIMIT} test sentences)")
        for impl in CONTENDERS:
            mine = [r for r in results if r["set"] == name and r["impl"] == impl]
            if mine:
                shown = ", ".join(f"{k} {_mean_std([r['test'][k] for r in mine])}" for k in ("f1", "precision", "recall"))
                collapsed = [r["seed"] for r in mine if collapsed_run(r)]
                lines.append(f"- {impl} (seeds {[r['seed'] for r in mine]}): test entity {shown}; "
                             f"per seed F1 {', '.join(format(r['test']['f1'], '.3f') for r in mine)}; "
                             f"collapsed {len(collapsed)} of {len(mine)} {collapsed or ''}; "
                             f"real tokens/s {_mean_std([r['tokens_per_s'] for r in mine])}")
        ratios = [b["tokens_per_s"] / t["tokens_per_s"] for b in results for t in results
                  if b["set"] == t["set"] == name and b["seed"] == t["seed"] and b["impl"] == "bertfit"
                  and t["impl"] == "transformers"]
        if ratios:
            lines.append(f"- training throughput bertfit / transformers: {_mean_std(ratios)} "
                         f"(per seed: {', '.join(f'{r:.2f}' for r in ratios)})")
        for r in results:
            if r["set"] == name and "predict" in r:
                p = r["predict"]
                lines.append(f"- prediction ({p['texts']} test texts): bertfit {p['bertfit_texts_per_s']:.1f} texts/s, "
                             f"pipeline {p['pipeline_texts_per_s']:.1f} texts/s, ratio "
                             f"{p['bertfit_texts_per_s'] / p['pipeline_texts_per_s']:.2f}; same entities in "
                             f"{100 * p['same_entities']:.1f}% of texts")
    return "\n".join(lines)


def main() -> None:
    global STEPS, TEST_LIMIT
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--steps", type=int, default=STEPS,
                        help="training steps (0: bertfit's defaults for NER, tasks/table.py; bertfit only)")
    parser.add_argument("--test-limit", type=int, default=TEST_LIMIT)
    parser.add_argument("--no-predict", action="store_true", help="skip the prediction-speed comparison")
    parser.add_argument("--impls", nargs="+", default=["bertfit", "transformers"], choices=list(CONTENDERS))
    parser.add_argument("--out", default="benchmarks/ner_results.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--predict", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--set", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--files", help=argparse.SUPPRESS)
    args = parser.parse_args()
    STEPS, TEST_LIMIT = args.steps, args.test_limit
    if args.child:
        child(args)
        return
    out = Path(args.out)
    results = json.loads(out.read_text()).get("results", []) if out.exists() else []
    done = {(r["set"], r["seed"], r["impl"]) for r in results}
    import platform

    # The cores this run may use (taskset) and the thread count both contenders get (OMP_NUM_THREADS).
    machine = {"cpu": _cpu_model(), "cores": len(os.sched_getaffinity(0)), "cpus": os.cpu_count(),
               "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "python": platform.python_version()}
    for seed in args.seeds:
        for name in args.sets:
            files = {"train": str(Path(args.data) / SETS[name][0]), "test": str(Path(args.data) / SETS[name][1])}
            order = tuple(args.impls) if seed % 2 == 0 else tuple(reversed(args.impls))
            for impl in order:
                if (name, seed, impl) in done:
                    continue
                predict = impl == "bertfit" and seed == args.seeds[0] and not args.no_predict
                cmd = [sys.executable, __file__, "--child", "--impl", impl, "--set", name, "--seed", str(seed),
                       "--steps", str(STEPS), "--test-limit", str(TEST_LIMIT), *(["--predict"] if predict else []), "--files", json.dumps(files)]
                started = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True)
                line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                if proc.returncode or line is None:
                    print(proc.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"{impl} {name} seed {seed} failed (exit {proc.returncode})")
                result = {"set": name, "seed": seed, "impl": impl, **json.loads(line[7:]),
                          "process_s": time.perf_counter() - started}
                results.append(result)
                out.write_text(json.dumps({"machine": machine, "steps": STEPS, "test_limit": TEST_LIMIT, "results": results}, indent=2) + "\n")
                print(f"{name} seed {seed} {impl}: {result['test']} {result['tokens_per_s']:.0f} tok/s "
                      f"({result['process_s']:.0f} s)", flush=True)
    print(summarize(results))


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


if __name__ == "__main__":
    main()
