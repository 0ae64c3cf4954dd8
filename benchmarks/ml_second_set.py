"""A second multi-label data set for the defaults check (issue 31, item 1): WNUT-17's sentences,
labelled with the entity types they mention.

``../shared/data`` holds one multi-label set (GoEmotions). WNUT-17's annotations (CC-BY 4.0) give a
second one of another kind: each sentence's labels are the entity types among its tags (person,
location, corporation, product, creative-work, group; none for most sentences: an empty list), a
"which kinds of thing does this tweet name" tagger. Its train/dev/test split is WNUT-17's own.

Each setting below is trained with ``bertfit train --task multi-label`` on train, picked nothing (no
search: the settings are fixed in advance), validated on dev (per-label thresholds tuned there, as
bertfit does) and scored on test, for each seed:

- ``defaults``: bertfit's multi-label defaults (the general ones: lr 5e-5, batch 32, 3 epochs, warmup 0.1);
- ``sweep-best``: the GoEmotions sweep's best trial (lr 6.5e-5, batch 32, 3 epochs, warmup 0.1);
- ``ner-like``: a higher rate at batch 16 (lr 2e-4; what NER's sweep chose);
- ``one-epoch``: the defaults for one epoch.

    taskset -c 1 env OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/ml_second_set.py \
        --data ../shared/data/wnut17 --work /work/ml2 --seeds 0 1 --out benchmarks/ml_second_set_wnut_types.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SETTINGS = {
    "defaults": [],
    "sweep-best": ["--lr", "6.5e-5"],
    "ner-like": ["--lr", "2e-4", "--batch-size", "16"],
    "one-epoch": ["--epochs", "1"],
}


def sentences(path: Path) -> list[tuple[list[str], list[str]]]:
    out, words, tags = [], [], []
    for line in path.read_text(encoding="utf-8").splitlines() + [""]:
        if not line.strip():
            if words:
                out.append((words, tags))
            words, tags = [], []
            continue
        word, _, tag = line.rpartition("\t") if "\t" in line else line.rpartition(" ")
        words.append(word)
        tags.append(tag.strip())
    return out


def make(data: Path, work: Path) -> dict[str, dict]:
    """train/dev/test JSONL under ``work``: {"text", "labels"}; returns their label counts."""
    work.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in ("train", "dev", "test"):
        rows = []
        for words, tags in sentences(data / f"{split}.conll"):
            types = sorted({t[2:] for t in tags if t[:2] in ("B-", "I-")})
            rows.append({"text": " ".join(words), "labels": types})
        with open(work / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        per = {}
        for row in rows:
            for label in row["labels"]:
                per[label] = per.get(label, 0) + 1
        counts[split] = {"sentences": len(rows), "with_no_entity": sum(not r["labels"] for r in rows),
                         "per_type": dict(sorted(per.items()))}
    return counts


def train(work: Path, name: str, seed: int, task: str = "multi-label", settings: dict | None = None,
          pick: tuple[str, ...] = ("macro_f1", "micro_f1", "samples_f1")) -> dict:
    """One ``bertfit train`` of setting ``name`` (``settings``: name -> flags) on work's train/dev/test."""
    run = work / f"run-{name}-seed{seed}"
    cmd = [sys.executable, "-m", "bertfit", "train", "--train-file", str(work / "train.jsonl"), "--validation-file", str(work / "dev.jsonl"),
           "--test-file", str(work / "test.jsonl"), "--task", task, "--model", "minilm-l6", "--seed", str(seed),
           "--threads", "1", "--output-dir", str(run), *(settings or SETTINGS)[name]]
    if (run / "metrics.json").is_file():
        metrics = json.loads((run / "metrics.json").read_text())
    else:
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if proc.returncode:
            return {"error": proc.stderr[-2000:], "command": " ".join(cmd)}
        metrics = json.loads((run / "metrics.json").read_text())
    config = json.loads((run / "train_config.json").read_text())
    return {"command": " ".join(cmd[1:]), "settings": {k: config[k] for k in ("lr", "batch_size", "epochs", "warmup_ratio")},
            "validation": {k: round(metrics["validation"][k], 4) for k in pick},
            "test": {k: round(metrics["test"][k], 4) for k in pick}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "wnut17")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--out", type=Path, default=HERE / "ml_second_set_wnut_types.json")
    args = parser.parse_args()
    report = new_report(make(args.data, args.work))
    for seed in args.seeds:  # seeds outside, settings inside: a slow stretch of the machine hits every setting
        for name in args.settings:
            result = train(args.work, name, seed)
            report["runs"].setdefault(name, []).append({"seed": seed, **result})
            print(name, seed, result.get("test", result.get("error", "")[-300:]), file=sys.stderr, flush=True)
            args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    finish(report, args.out, ("macro_f1", "micro_f1"))


def new_report(data: dict) -> dict:
    """The report's head: the command, the commit, the machine and the data made."""
    return {"command": " ".join(sys.argv),
            "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                     cwd=HERE).stdout.strip(),
            "cpu": subprocess.run(["lscpu"], capture_output=True, text=True).stdout.split("Flags:")[0],
            "data": data, "runs": {}, "summary": {}}


def finish(report: dict, out: Path, metrics: tuple[str, ...]) -> None:
    """Each setting's test metrics as mean and std over its seeds, written with the runs."""
    for name, runs in report["runs"].items():
        ok = [r for r in runs if "test" in r]
        report["summary"][name] = {
            metric: {"mean": round(statistics.mean(r["test"][metric] for r in ok), 4),
                     "std": round(statistics.stdev(r["test"][metric] for r in ok), 4) if len(ok) > 1 else None}
            for metric in metrics} if ok else {"error": runs[-1].get("error")}
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(report["summary"], indent=1))


if __name__ == "__main__":
    main()
