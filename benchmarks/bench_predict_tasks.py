"""Prediction speed for every task (issue 31, item 5): bertfit's engines against the transformers peer,
on the same trained weights and the same inputs, with each engine's agreement with bertfit's default.

For each task a model is fine-tuned briefly with bertfit (minilm-l6; the budget below: enough for answers
that are not all the same, far from a useful model; agreement is measured on these models), then every
contender predicts the same inputs in a fresh process of its own, interleaved over ``--rounds`` (the
order rotated each round), one thread:

- ``bertfit``: `bertfit predict RUN`'s default on this processor: engine "auto", the faster of ONNX Runtime
  and PyTorch fp32 for this model on this CPU, measured once when the first process loads the run (not
  timed; the harness gives the runs a cache of their own under --work, so the choice is measured afresh
  and its timings land in the report as ``engine_choice``);
- ``bertfit-pytorch``: ``--engine pytorch`` (the same fp32 weights in PyTorch);
- ``bertfit-onnxruntime``: ``--engine onnxruntime`` (the same fp32 weights, exported once into the cache);
- ``bertfit-serve``: what ``bertfit serve`` loads: engine "auto" for the latency workload (the engine that
  answers one short text sooner, from the same measurement);
- ``bertfit-int8``: ``--int8`` (ONNX Runtime dynamic int8; VNNI kernels where the CPU has them);
- ``bertfit-bf16``: ``--bf16`` (PyTorch under bf16 autocast) -- only where the CPU has AVX512-BF16 or AMX
  (elsewhere bf16 is emulated, slower than fp32, and the predictor says so); ``--force-bf16`` runs it
  anyway, to test the branch;
- ``peer``: transformers on the run directory (our runs load there as they are):
  ``pipeline("text-classification", batch_size=32)`` (single-label; multi-label with sigmoid scores
  and the run's tuned thresholds; regression with ``function_to_apply="none"``),
  ``pipeline("token-classification", aggregation_strategy="first", batch_size=32)``,
  ``pipeline("question-answering")`` (transformers 4.x, ``--transformers4``: version 5 removed it),
  and for multiple choice, which has no pipeline, ``AutoModelForMultipleChoice`` on batches of 32
  questions padded to their longest (tokenizing timed, as bertfit's is).

Timed: ``predict`` over all the inputs (tokenizing, batching, the model, decoding), ``--passes`` times
after a warm-up on 8 of them; the median is the figure. Agreement: the share of inputs whose answer
(label, label set, entity spans, answer text, chosen answer) equals bertfit's default's; regression:
the largest absolute difference of the predicted values.

    flock /work/bench.lock taskset -c 0 env OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python \
        benchmarks/bench_predict_tasks.py --transformers4 .venv/transformers4 --work /tmp/pt \
        --out benchmarks/predict_tasks.json
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUBSET_SEED = 1234
# task: (training steps, batch, lr, max_length, inputs to predict)
BUDGET = {
    "single-label": (80, 32, 1e-4, 128, 1000),
    "multi-label": (150, 32, 1e-4, 64, 1000),
    "regression": (150, 32, 1e-4, 128, 1000),
    "ner": (150, 16, 1e-4, 128, 500),
    "qa": (60, 16, 1e-4, 384, 200),
    "multiple-choice": (120, 16, 5e-5, 128, 500),
}


# --- data ---------------------------------------------------------------------------------------

def _tsv(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def prepare(task: str, data: Path, work: Path, n: int) -> tuple[dict, list]:
    """(TrainConfig keywords for the training data, the inputs to predict as the Predictor takes them)."""
    rng = random.Random(SUBSET_SEED)
    if task == "single-label":  # the bundled tweets, split as `bertfit train` splits them
        from bertfit.train.config import TrainConfig
        from bertfit.train.finetune import prepare_data

        split = prepare_data(TrainConfig(seed=0))
        return {"max_train_examples": 4000}, [e.text for e in split.test[:n]]
    if task == "multi-label":
        names = (data / "goemotions" / "labels.txt").read_text(encoding="utf-8").split()
        def rows(split: str) -> list[dict]:
            return [{"text": t, "labels": [names[int(i)] for i in ids.split(",")]}
                    for t, ids, _ in _tsv(data / "goemotions" / f"{split}.tsv")]
        return ({"train_file": _jsonl(work / "goemotions-train.jsonl", rows("train")),
                 "validation_file": _jsonl(work / "goemotions-dev.jsonl", rows("dev"))},
                [r["text"] for r in rows("test")[:n]])
    if task == "regression":
        def rows(split: str) -> list[dict]:
            return [{"text": f[5], "text_pair": f[6], "score": float(f[4])} for f in _tsv(data / "stsb" / f"{split}.tsv")]
        return ({"train_file": _jsonl(work / "stsb-train.jsonl", rows("train")),
                 "validation_file": _jsonl(work / "stsb-dev.jsonl", rows("dev")), "pair_column": "text_pair"},
                [[r["text"], r["text_pair"]] for r in rows("test")[:n]])
    if task == "ner":
        from bertfit.tasks.ner.data import read_ner_file

        sentences, _ = read_ner_file(data / "wnut17" / "test.conll")
        return ({"train_file": str(data / "wnut17" / "train.conll"), "validation_file": str(data / "wnut17" / "dev.conll")},
                [s.text for s in sentences[:n]])
    if task == "qa":
        from bertfit.tasks.qa.data import read_qa

        def rows(name: str, count: int) -> list[dict]:
            examples, _ = read_qa(data / "squad" / name)
            chosen = sorted(random.Random(SUBSET_SEED).sample(range(len(examples)), count))
            return [{"id": examples[i].id, "question": examples[i].question, "context": examples[i].context,
                     "answers": {"text": [t for t, _ in examples[i].answers],
                                 "answer_start": [s for _, s in examples[i].answers]}} for i in chosen]
        dev = rows("dev-v1.1.json.gz", n)
        return ({"train_file": _jsonl(work / "squad-train.jsonl", rows("train-v1.1.json.gz", 1500)),
                 "validation_file": _jsonl(work / "squad-dev.jsonl", dev[:100])},
                [{"question": r["question"], "context": r["context"]} for r in dev])
    if task == "multiple-choice":
        def rows(name: str) -> list[dict]:
            lines = [json.loads(x) for x in (data / "commonsenseqa" / f"{name}.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
            rng.shuffle(lines)
            return lines
        train, dev = rows("train")[:1000], rows("dev")
        return ({"train_file": _jsonl(work / "csqa-train.jsonl", train), "validation_file": _jsonl(work / "csqa-dev.jsonl", dev[:100])},
                [{"question": r["question"], "choices": r["choices"], "context": r.get("context") or ""} for r in dev[:n]])
    raise SystemExit(f"unknown task {task}")


def train(task: str, data_kw: dict, run: Path) -> dict:
    from bertfit.train.config import TrainConfig
    from bertfit.train.finetune import fine_tune

    steps, batch, lr, max_length, _ = BUDGET[task]
    config = TrainConfig(problem_type=task, model="minilm-l6", max_steps=steps, batch_size=batch, lr=lr,
                         warmup_ratio=0.1, weight_decay=0.01, max_length=max_length, seed=0, eval_every=steps,
                         save_every=10**6, deduplicate=False, output_dir=str(run), threads=1, **data_kw)
    started = time.perf_counter()
    result = fine_tune(config)
    return {"steps": result.train.state.step, "train_seconds": round(time.perf_counter() - started, 1),
            "validation": {k: v for k, v in (result.metrics.get("validation") or {}).items()
                           if isinstance(v, (int, float))}}


# --- the contenders (each in a fresh process) -----------------------------------------------------

def bertfit_predictor(impl: str, run: str):
    from bertfit.predict.predictor import Predictor

    predictor = Predictor.load(run, int8=impl == "bertfit-int8", bf16=impl == "bertfit-bf16",
                               engine={"bertfit-pytorch": "pytorch", "bertfit-onnxruntime": "onnxruntime"}.get(impl, "auto"),
                               workload="latency" if impl == "bertfit-serve" else "throughput")
    task = predictor.task.name

    def predict(items: list) -> list:
        if task == "regression":
            return [float(v) if not isinstance(v, list) else float(v[0])
                    for v in predictor.predict([a for a, _ in items], [b for _, b in items])]
        return predictor.predict(items)
    predict.engine = predictor.engine + (" int8" if predictor.int8 else "") + (" bf16" if predictor.bf16 else "")
    return predict


def peer_predictor(task: str, run: str):
    import torch
    import transformers
    from transformers import pipeline

    transformers.logging.set_verbosity_error()
    if task == "single-label":
        pipe = pipeline("text-classification", model=run, device=-1, batch_size=32)
        def predict(items):
            return [o["label"] for o in pipe(items, truncation=True, max_length=128)]
    elif task == "multi-label":
        import math

        # The run's decisions as a transformers user reproduces them from task.json: each label's logit
        # through its Platt scaling (fitted on validation), then its tuned threshold.
        state = json.loads((Path(run) / "task.json").read_text()).get("state") or {}
        pipe = pipeline("text-classification", model=run, device=-1, batch_size=32, top_k=None,
                        function_to_apply="none")
        labels = [pipe.model.config.id2label[i] for i in range(pipe.model.config.num_labels)]
        cut = dict(zip(labels, state.get("thresholds") or [0.5] * len(labels)))
        platt = dict(zip(labels, state.get("platt") or [[1.0, 0.0]] * len(labels)))

        def on(label: str, logit: float) -> bool:
            a, b = platt[label]
            return 1 / (1 + math.exp(-(a * logit + b))) >= cut[label]

        def predict(items):
            return [sorted(o["label"] for o in out if on(o["label"], o["score"]))
                    for out in pipe(items, truncation=True, max_length=64)]
    elif task == "regression":
        pipe = pipeline("text-classification", model=run, device=-1, batch_size=32, function_to_apply="none")
        def predict(items):
            return [o["score"] for o in pipe([{"text": a, "text_pair": b} for a, b in items], truncation=True,
                                              max_length=128)]
    elif task == "ner":
        pipe = pipeline("token-classification", model=run, device=-1, aggregation_strategy="first", batch_size=32)
        def predict(items):
            return [[{"type": e["entity_group"], "start": int(e["start"]), "end": int(e["end"])} for e in out]
                    for out in pipe(items)]
    elif task == "qa":
        pipe = pipeline("question-answering", model=run, tokenizer=run, device=-1)
        def predict(items):
            return [o["answer"] for o in pipe(items, max_seq_len=384, doc_stride=128)] if len(items) > 1 else \
                [pipe(items[0], max_seq_len=384, doc_stride=128)["answer"]]
    elif task == "multiple-choice":
        from transformers import AutoModelForMultipleChoice, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(run)
        model = AutoModelForMultipleChoice.from_pretrained(run).eval()
        def predict(items):
            chosen = []
            for s in range(0, len(items), 32):
                batch = items[s:s + 32]
                firsts = [f"{(r.get('context') or '').strip()} {r['question'].strip()}".strip()
                          for r in batch for _ in r["choices"]]
                seconds = [c for r in batch for c in r["choices"]]
                k = len(batch[0]["choices"])
                enc = tokenizer(firsts, seconds, truncation=True, max_length=128, padding=True, return_tensors="pt")
                with torch.inference_mode():
                    logits = model(**{key: v.view(len(batch), k, -1) for key, v in enc.items()}).logits
                chosen += [r["choices"][i] for r, i in zip(batch, logits.argmax(-1).tolist())]
            return chosen
    predict.engine = f"transformers {transformers.__version__}"
    return predict


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    if args.impl == "peer" and args.task == "qa" and args.transformers4:
        sys.path.insert(0, args.transformers4)  # pipeline("question-answering") left transformers 5
    items = json.loads(Path(args.items).read_text(encoding="utf-8"))
    predict = peer_predictor(args.task, args.run) if args.impl == "peer" else bertfit_predictor(args.impl, args.run)
    predict(items[:8])  # warm-up: first-call set-up is not throughput
    seconds, answers = [], None
    for _ in range(args.passes):
        started = time.perf_counter()
        answers = predict(items)
        seconds.append(time.perf_counter() - started)
    single = []  # one input per call, as a server's requests come: the latency
    for item in items[: args.single]:
        started = time.perf_counter()
        predict([item])
        single.append(time.perf_counter() - started)
    print(json.dumps({"seconds": seconds, "answers": answers, "engine": predict.engine,
                      "single_ms_median": round(1000 * statistics.median(single), 3) if single else None}))


def engine_choice_record(run: Path) -> dict | None:
    """What engine "auto" measured for this run in the children (one thread), from the cache."""
    from bertfit.artifact import read_artifact
    from bertfit.predict.engine_choice import cache_path, choice_key
    from bertfit.weights import load_config

    config = load_config(run)
    length = min(read_artifact(run, config).max_length, config.max_position_embeddings)
    path = cache_path(choice_key(config, length, 1))
    return json.loads(path.read_text()) if path.is_file() else None


# --- the parent --------------------------------------------------------------------------------------

def same_answer(task: str, a, b) -> bool:
    if task == "ner":
        key = lambda ents: sorted((e.get("type") or e.get("entity_group"), e["start"], e["end"]) for e in ents)  # noqa: E731
        return key(a) == key(b)
    if task == "multi-label":
        return sorted(a) == sorted(b)
    if task == "qa":
        return str(a).strip() == str(b).strip()
    return a == b


def agreement(task: str, reference: list, answers: list, n_labels: int = 0) -> dict:
    if task == "regression":
        diffs = [abs(float(a) - float(b)) for a, b in zip(reference, answers)]
        return {"max_abs_difference": max(diffs), "mean_abs_difference": statistics.fmean(diffs)}
    out = {"agreement": sum(same_answer(task, a, b) for a, b in zip(reference, answers)) / len(reference)}
    if task == "multi-label" and n_labels:  # a whole label set is n_labels decisions: how many of those agree
        flipped = sum(len(set(a) ^ set(b)) for a, b in zip(reference, answers))
        out["label_decisions_agreement"] = 1 - flipped / (len(reference) * n_labels)
    return out


def cpu() -> dict:
    from bertfit.precision import read_isa

    text = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    family = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("cpu family")), "?")
    number = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model\t")), "?")
    flags = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16") if f in text.split()]
    return {"model_name": model, "family": family, "model": number, "flags": flags, "bf16": bool(read_isa().bf16)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(BUDGET), choices=list(BUDGET))
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, help="runs and inputs (kept: a rerun reuses the runs); required")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds, every contender a fresh process each")
    parser.add_argument("--passes", type=int, default=2, help="timed passes over the inputs per process")
    parser.add_argument("--inputs", type=int, help="inputs per task (default: the task's in BUDGET)")
    parser.add_argument("--steps", type=int, help="training steps for every task (default: BUDGET's; for a smoke test)")
    parser.add_argument("--single", type=int, default=50, help="inputs predicted one per call after the passes "
                        "(the median of their times is the single-input latency)")
    parser.add_argument("--contenders", nargs="+", help="a subset of: bertfit bertfit-pytorch bertfit-onnxruntime "
                        "bertfit-int8 bertfit-bf16 peer (default: all that run here)")
    parser.add_argument("--force-bf16", action="store_true", help="run the bf16 contender on a CPU without bf16 too")
    parser.add_argument("--transformers4", help="a folder holding transformers 4.x (the QA pipeline), e.g. .venv/transformers4")
    parser.add_argument("--out", type=Path, default=HERE / "predict_tasks.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--items", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.work is None:
        parser.error("--work is required")

    args.work.mkdir(parents=True, exist_ok=True)
    machine = cpu()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
    report = {"command": " ".join(sys.argv), "commit": commit, "cpu": machine, "threads": 1, "tasks": {}}
    contenders = ["bertfit", "bertfit-serve", "bertfit-pytorch", "bertfit-onnxruntime", "bertfit-int8"]
    if machine["bf16"] or args.force_bf16:
        contenders.append("bertfit-bf16")
    else:
        report["bf16"] = "not run: this CPU has no AVX512-BF16/AMX (bf16 would be emulated, slower than fp32)"
    contenders.append("peer")
    if args.contenders:
        contenders = [c for c in contenders if c in args.contenders]
    # A cache of this run's own: the default's engine is measured afresh (and exports made once here).
    cache = args.work / "cache"
    shutil.rmtree(cache / "engine-choice", ignore_errors=True)
    os.environ["BERTFIT_CACHE"] = str(cache)
    os.environ.pop("BERTFIT_CPU_ENGINE", None)
    for task in args.tasks:
        if args.steps:
            BUDGET[task] = (args.steps, *BUDGET[task][1:])
        n = args.inputs or BUDGET[task][4]
        run = args.work / f"run-{task}"
        data_kw, items = prepare(task, args.data, args.work, n)
        entry: dict = {"inputs": len(items), "budget": dict(zip(("steps", "batch", "lr", "max_length"), BUDGET[task][:4]))}
        if not (run / "model.safetensors").is_file():
            entry["training"] = train(task, data_kw, run)
        items_file = args.work / f"items-{task}.json"
        items_file.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
        runs: dict[str, list] = {c: [] for c in contenders}
        for r in range(args.rounds):
            order = contenders[r % len(contenders):] + contenders[: r % len(contenders)]
            for impl in order:
                env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
                proc = subprocess.run([sys.executable, __file__, "--child", "--impl", impl, "--task", task, "--run", str(run),
                                       "--items", str(items_file), "--passes", str(args.passes), "--single", str(args.single),
                                       *(["--transformers4", args.transformers4] if args.transformers4 else [])],
                                      capture_output=True, text=True, env=env)
                if proc.returncode:
                    runs[impl].append({"error": proc.stderr[-1500:]})
                    print(f"{task} {impl}: failed\n{proc.stderr[-1500:]}", file=sys.stderr, flush=True)
                    continue
                runs[impl].append(json.loads(proc.stdout.strip().splitlines()[-1]))
                print(f"{task} {impl} round {r}: {len(items) / statistics.median(runs[impl][-1]['seconds']):.1f}/s",
                      file=sys.stderr, flush=True)
        reference = next((x["answers"] for x in runs["bertfit"] if "answers" in x), None)
        peer_rate = None
        for impl in contenders:
            ok = [x for x in runs[impl] if "seconds" in x]
            if not ok:
                entry[impl] = {"error": runs[impl][-1].get("error")}
                continue
            rates = [len(items) / statistics.median(x["seconds"]) for x in ok]
            entry[impl] = {"engine": ok[-1]["engine"], "per_s": [round(v, 2) for v in rates],
                           "per_s_median": round(statistics.median(rates), 2),
                           "single_ms": [x.get("single_ms_median") for x in ok]}
            if reference is not None:
                labels = json.loads((run / "task.json").read_text()).get("labels") or []
                entry[impl].update(agreement(task, reference, ok[-1]["answers"], len(labels)))
            if impl == "peer":
                peer_rate = entry[impl]["per_s_median"]
        for impl in contenders:
            if peer_rate and "per_s_median" in entry.get(impl, {}):
                entry[impl]["vs_peer"] = round(entry[impl]["per_s_median"] / peer_rate, 2)
        entry["engine_choice"] = engine_choice_record(run)
        report["tasks"][task] = entry
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps({task: {k: v for k, v in entry.items() if k not in ("budget",)}}), flush=True)


if __name__ == "__main__":
    main()
