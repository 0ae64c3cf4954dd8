"""A second multiple-choice data set for the defaults check (issue 31, item 1): reading-comprehension
questions made from SQuAD v1.1, four candidate answers each.

``../shared/data`` holds one multiple-choice set (CommonsenseQA: no passage, commonsense). SQuAD's
annotations (CC BY-SA 4.0) give a second one of another kind, as RACE or MCTest are: the context is the
paragraph's first WINDOW words; the question is kept when its answer lies inside them; its choices are
the answer and three answers to *other* questions of the same paragraph that also lie inside the window
(so every choice is a span of the passage, and only the question tells them apart), in a seeded random
order. Training questions come from SQuAD train, validation and test from SQuAD dev (its articles split
in two halves: no article in both).

The settings and their runs are those of ml_second_set.py (fixed in advance, no search), with
``bertfit train --task multiple-choice``:

- ``defaults``: bertfit's multiple-choice defaults (the general ones: lr 5e-5, batch 32, 3 epochs);
- ``sweep-best``: the CommonsenseQA sweep's best trial (lr 6.5e-5, 4 epochs, batch 32);
- ``ner-like``: lr 2e-4 at batch 16 (what NER's sweep chose);
- ``one-epoch``: the defaults for one epoch.

    taskset -c 1 env OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/mc_second_set.py \
        --data ../shared/data/squad --work /work/mc2 --seeds 0 --out benchmarks/mc_second_set_squad.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ml_second_set import finish, new_report, train  # noqa: E402  (the same runs and summary)

HERE = Path(__file__).resolve().parent
WINDOW = 60  # words of the paragraph kept as the context (MiniLM reads them within max_length 128)
SETTINGS = {
    "defaults": [],
    "sweep-best": ["--lr", "6.5e-5", "--epochs", "4"],
    "ner-like": ["--lr", "2e-4", "--batch-size", "16"],
    "one-epoch": ["--epochs", "1"],
}


def questions(articles: list[dict], rng: random.Random) -> list[dict]:
    out = []
    for article in articles:
        for paragraph in article["paragraphs"]:
            context = paragraph["context"]
            words = context.split()
            if len(words) <= WINDOW:
                cut = len(context)
            else:  # the character offset where word WINDOW + 1 starts
                cut, seen = 0, 0
                for i, ch in enumerate(context):
                    if not ch.isspace() and (i == 0 or context[i - 1].isspace()):
                        seen += 1
                        if seen == WINDOW + 1:
                            cut = i
                            break
            inside = {}
            for qa in paragraph["qas"]:
                answer = qa["answers"][0]
                if answer["answer_start"] + len(answer["text"]) <= cut:
                    inside[qa["id"]] = (qa["question"], answer["text"].strip())
            spans = {text for _, text in inside.values()}
            for qid, (question, gold) in inside.items():
                others = sorted(spans - {gold})
                if len(others) < 3:
                    continue
                choices = rng.sample(others, 3) + [gold]
                rng.shuffle(choices)
                out.append({"id": qid, "context": context[:cut].strip(), "question": question, "choices": choices,
                            "label": choices.index(gold)})
    return out


def make(data: Path, work: Path, train_n: int, eval_n: int, seed: int = 0) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    load = lambda name: json.loads(gzip.open(data / name, "rt", encoding="utf-8").read())["data"]  # noqa: E731
    train_articles, dev_articles = load("train-v1.1.json.gz"), load("dev-v1.1.json.gz")
    half = len(dev_articles) // 2
    splits = {"train": rng.sample(questions(train_articles, rng), train_n),
              "dev": rng.sample(questions(dev_articles[:half], rng), eval_n),
              "test": rng.sample(questions(dev_articles[half:], rng), eval_n)}
    for name, rows in splits.items():
        with open(work / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return {name: {"questions": len(rows), "choices": 4} for name, rows in splits.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "squad")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--train", type=int, default=800, help="training questions")
    parser.add_argument("--eval", type=int, default=300, help="validation and test questions (each)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--out", type=Path, default=HERE / "mc_second_set_squad.json")
    args = parser.parse_args()
    report = new_report(make(args.data, args.work, args.train, args.eval))
    for seed in args.seeds:
        for name in args.settings:
            result = train(args.work, name, seed, task="multiple-choice", settings=SETTINGS, pick=("accuracy",))
            report["runs"].setdefault(name, []).append({"seed": seed, **result})
            print(name, seed, result.get("test", result.get("error", "")[-300:]), file=sys.stderr, flush=True)
            args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    finish(report, args.out, ("accuracy",))


if __name__ == "__main__":
    main()
