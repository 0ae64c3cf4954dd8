"""How faithful and how costly are bertfit's explanations (Integrated Gradients, predict/explain.py)?

Faithfulness, ERASER style (DeYoung et al. 2020), on whitespace words: for each text, each method scores
the words for the explained class (single-label: the predicted class; multi-label: the most probable
label); at k = 10/20/50% of the words (at least one):
  comprehensiveness_k = p(x) − p(x without its top-k words)      (higher: the words mattered)
  sufficiency_k       = p(x) − p(the top-k words alone)           (lower: the words suffice)
Their means over k are ERASER's AOPC summaries. Methods: Integrated Gradients (bertfit's default steps),
random words (seeded), last-layer attention from [CLS] (mean over heads, summed over a word's subwords),
gradient × input ((x − x_pad) · ∂p/∂x at the input, summed per word). Time per text is each method's
own cost (the perturbed texts are scored together, not counted).

    flock /work/bench.lock taskset -c 0 env OMP_NUM_THREADS=1 python benchmarks/bench_explain.py \\
        --run /work/runs/h29-tweets-minilm --data tweets --texts 400 --out benchmarks/explain_tweets.json
    ... --run /work/runs/h29-goemotions-minilm --data /work/shared/data/goemotions/test.tsv --texts 300

Speed (one tweet-length text, default steps, p50 of repeated runs), and a file of tweets explained in one
call (shared batches) against one call per tweet:

    flock /work/bench.lock taskset -c 0 env OMP_NUM_THREADS=1 python benchmarks/bench_explain.py --run RUN --speed
    flock /work/bench.lock taskset -c 0 env OMP_NUM_THREADS=1 python benchmarks/bench_explain.py --run RUN --file 200

Only Predictor.explain is timed in these two modes, so the script times an older checkout's explainer too
(PYTHONPATH=OLD/src): benchmarks/RESULTS.md's before/after figures ran it so, interleaved.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from bertfit.predict.explain import Attribution, _batch, _run, _padded, explain_plan
from bertfit.predict.predictor import Predictor

K = (0.1, 0.2, 0.5)
TWEET = "@user just got my new phone and the battery already died after two hours, so annoyed right now #fail"


def load_texts(spec: str, n: int, seed: int) -> list[str]:
    """``tweets``: the test split `bertfit train` makes of the bundled corpus (seed 0); else a TSV/CSV
    whose first column is the text (GoEmotions' test.tsv). A seeded sample of n texts of ≥ 2 words."""
    if spec == "tweets":
        from bertfit.train.config import TrainConfig
        from bertfit.train.finetune import prepare_data

        texts = [e.text for e in prepare_data(TrainConfig(seed=0)).test]
    else:
        delimiter = "\t" if spec.endswith(".tsv") else ","
        with open(spec, encoding="utf-8", newline="") as f:
            texts = [row[0] for row in csv.reader(f, delimiter=delimiter) if row]
    texts = [t for t in texts if len(t.split()) >= 2]
    rng = np.random.default_rng(seed)
    return [texts[i] for i in rng.choice(len(texts), size=min(n, len(texts)), replace=False)]


def target_of(predictor: Predictor, record: dict) -> str:
    """The explained class: the predicted one, or the most probable label (multi-label)."""
    if "label" in record:
        return record["label"]
    return max(record["probabilities"], key=record["probabilities"].get)


def probability(predictor: Predictor, texts: list[str], target: str) -> np.ndarray:
    return np.array([r["probabilities"][target] for r in predictor.predictions(texts)])


def word_scores_ig(predictor, model, plan, target, options) -> tuple[np.ndarray, Attribution]:
    (a,) = explain_plan(model, plan, predictor.tokenizer.pad_id, [target], **options)
    return np.array([w["attribution"] for w in a.words]), a


def word_scores_gradient_input(predictor, model, plan, target) -> np.ndarray:
    """(x − x_pad) · ∂p/∂x at the input itself, summed per word (one forward and backward pass)."""
    batch = _batch(plan, predictor.tokenizer.pad_id, torch.device("cpu"))
    T = batch.input_ids.shape[1]
    E = model.bert.embeddings.token.weight
    with torch.no_grad():
        attributable = torch.from_numpy(_padded(plan.word_of, T)) >= 0
        diff = (E[batch.input_ids] - E[predictor.tokenizer.pad_id]) * attributable[..., None]
    with torch.enable_grad():
        out, shift = _run(model, batch, diff, np.array([1.0]))
        (value,) = plan.choose(out[0].detach(), [target])
        (g,) = torch.autograd.grad(value.value(out).sum(), shift)
    return _per_word((g * diff).sum(-1).numpy(), plan)


def word_scores_attention(predictor, model, plan) -> np.ndarray:
    """Last layer's attention from [CLS] to each token, mean over heads, summed per word."""
    batch = _batch(plan, predictor.tokenizer.pad_id, torch.device("cpu"))
    layer = model.bert.layers[-1].attention
    seen = {}

    def keep(module, args):
        seen["x"] = args[0]  # returns None: the arguments go on unchanged

    handle = layer.register_forward_pre_hook(keep)
    try:
        with torch.no_grad():
            model(batch.input_ids, batch.attention_mask, batch.token_type_ids, fast=False)  # plain path: (T, H) rows
    finally:
        handle.remove()
    x = seen["x"]  # (T, H), one row per position
    H, heads = x.shape[-1], layer.num_heads
    q, k, _ = torch.nn.functional.linear(x, layer.qkv.weight, layer.qkv.bias).split(H, -1)
    q = q[0].view(heads, -1)  # [CLS]'s query per head
    k = k.view(-1, heads, H // heads).transpose(0, 1)  # (heads, T, hd)
    probs = torch.softmax((k @ q[:, :, None]).squeeze(-1) / math.sqrt(H // heads), -1).mean(0)  # (T,)
    return _per_word(probs.detach().numpy()[None, :], plan)


def _per_word(per_token: np.ndarray, plan) -> np.ndarray:
    out = np.zeros(len(plan.words))
    for row, owner in enumerate(plan.word_of):
        on = owner >= 0
        np.add.at(out, owner[on], per_token[row, : len(owner)][on])
    return out


def perturbed(words: list[str], order: np.ndarray) -> list[str]:
    """For each k: the text without its top-k words, and the top-k words alone (kept in text order)."""
    texts = []
    for fraction in K:
        k = max(1, math.ceil(fraction * len(words)))
        top = set(order[:k].tolist())
        texts.append(" ".join(w for i, w in enumerate(words) if i not in top))
        texts.append(" ".join(w for i, w in enumerate(words) if i in top))
    return texts


def faithfulness(args) -> dict:
    predictor = Predictor.load(args.run, engine="pytorch")
    model = predictor.explanation_model()
    texts = load_texts(args.data, args.texts, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    methods = ("integrated_gradients", "random", "attention", "gradient_x_input")
    scores = {m: {"comprehensiveness": [], "sufficiency": []} for m in methods}
    seconds = {m: [] for m in methods}
    steps, errors, skipped = [], [], 0
    records = predictor.predictions(texts)
    for text, record in zip(texts, records):
        target = target_of(predictor, record)
        example = predictor.task.inputs([text])[0]
        plan = predictor.task.explain_plan(predictor.tokenizer, example, predictor.max_length)
        if len(plan.words) < 2 or len(plan.words) != len(text.split()):
            skipped += 1  # a text cut at max_length: its later words are not in the plan
            continue
        words = [w.text for w in plan.words]
        ranked = {}
        started = time.perf_counter()
        ig, attribution = word_scores_ig(predictor, model, plan, target, steps_option(args))
        seconds["integrated_gradients"].append(time.perf_counter() - started)
        steps.append(attribution.steps)
        errors.append(attribution.error)
        ranked["integrated_gradients"] = np.argsort(-ig, kind="stable")
        started = time.perf_counter()
        ranked["random"] = rng.permutation(len(words))
        seconds["random"].append(time.perf_counter() - started)
        started = time.perf_counter()
        attention = word_scores_attention(predictor, model, plan)
        seconds["attention"].append(time.perf_counter() - started)
        ranked["attention"] = np.argsort(-attention, kind="stable")
        started = time.perf_counter()
        gxi = word_scores_gradient_input(predictor, model, plan, target)
        seconds["gradient_x_input"].append(time.perf_counter() - started)
        ranked["gradient_x_input"] = np.argsort(-gxi, kind="stable")
        batch = [t for m in methods for t in perturbed(words, ranked[m])]
        p = probability(predictor, batch, target).reshape(len(methods), len(K), 2)
        full = record["probabilities"][target]
        for i, m in enumerate(methods):
            scores[m]["comprehensiveness"].append((full - p[i, :, 0]).tolist())
            scores[m]["sufficiency"].append((full - p[i, :, 1]).tolist())
        if args.out and len(scores["random"]["comprehensiveness"]) % 10 == 0:  # partial results survive a time-out
            partial = summarise(methods, scores, seconds, steps, errors, len(scores["random"]["comprehensiveness"]), skipped)
            Path(args.out).write_text(json.dumps({"run": args.run, "data": args.data, **processor(), "partial": True,
                                                  **partial}, indent=2) + "\n", encoding="utf-8")
    return summarise(methods, scores, seconds, steps, errors, len(scores["random"]["comprehensiveness"]), skipped)


def summarise(methods, scores, seconds, steps, errors, n, skipped) -> dict:
    summary = {}
    for m in methods:
        comp = np.array(scores[m]["comprehensiveness"])
        suff = np.array(scores[m]["sufficiency"])
        summary[m] = {"comprehensiveness": {f"{int(k * 100)}%": float(comp[:, j].mean()) for j, k in enumerate(K)},
                      "sufficiency": {f"{int(k * 100)}%": float(suff[:, j].mean()) for j, k in enumerate(K)},
                      "comprehensiveness_aopc": float(comp.mean()), "sufficiency_aopc": float(suff.mean()),
                      "comprehensiveness_aopc_sem": float(comp.mean(1).std(ddof=1) / math.sqrt(len(comp))),
                      "sufficiency_aopc_sem": float(suff.mean(1).std(ddof=1) / math.sqrt(len(suff))),
                      "ms_per_text_median": 1000 * statistics.median(seconds[m]),
                      "ms_per_text_mean": 1000 * statistics.fmean(seconds[m])}
    # IG vs each other method, paired per text (the same texts): mean difference and its standard error.
    ig_comp = np.array(scores["integrated_gradients"]["comprehensiveness"]).mean(1)
    paired = {}
    for m in methods[1:]:
        d = ig_comp - np.array(scores[m]["comprehensiveness"]).mean(1)
        paired[m] = {"comprehensiveness_aopc_gain": float(d.mean()), "sem": float(d.std(ddof=1) / math.sqrt(len(d)))}
    return {"texts": n, "skipped": skipped, "summary": summary, "ig_vs": paired,
            "ig_steps": {str(s): steps.count(s) for s in sorted(set(steps))},
            "ig_completeness_error_max": float(max(errors)), "ig_completeness_error_median": float(np.median(errors))}


def steps_option(args) -> dict:
    return {"steps": args.steps} if args.steps else {}


def speed(args) -> dict:
    predictor = Predictor.load(args.run, engine="pytorch")
    model = predictor.explanation_model()
    tokens = len(predictor.tokenizer.encode([TWEET])[0].ids)
    predictor.explain([TWEET], **steps_option(args))  # warm-up
    times = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        result = predictor.explain([TWEET], **steps_option(args))
        times.append(time.perf_counter() - started)
    e = result[0]["explanations"][0]
    return {"text": TWEET, "tokens": tokens, "words": len(TWEET.split()), "steps": e["steps"],
            "completeness_error": e["completeness_error"], "repeat": args.repeat,
            "p50_ms": 1000 * statistics.median(times), "p90_ms": 1000 * float(np.percentile(times, 90)),
            "min_ms": 1000 * min(times), "note": "Predictor.explain: the prediction record and the explanation",
            "model_params": sum(p.numel() for p in model.parameters())}


def file_speed(args) -> dict:
    """``--file N`` test tweets explained in one Predictor.explain call, then one call per tweet (``--alone-first``
    swaps the order, so that neither always runs second): per-text cost of each."""
    predictor = Predictor.load(args.run, engine="pytorch")
    texts = load_texts("tweets", args.file, args.seed)
    predictor.explain(texts[:4], **steps_option(args))  # warm-up
    out = {}

    def together() -> None:
        started = time.perf_counter()
        result = predictor.explain(texts, **steps_option(args))
        out["batched"] = {"s": time.perf_counter() - started, "steps": [e["steps"] for r in result for e in r["explanations"]],
                          "complete": all(e["completeness_error"] <= e["tolerance"] for r in result for e in r["explanations"])}

    def alone() -> None:
        times, steps = [], []
        for text in texts:
            started = time.perf_counter()
            (r,) = predictor.explain([text], **steps_option(args))
            times.append(time.perf_counter() - started)
            steps += [e["steps"] for e in r["explanations"]]
        out["one_by_one"] = {"s": sum(times), "steps": steps, "p50_ms": 1000 * statistics.median(times),
                             "p90_ms": 1000 * float(np.percentile(times, 90))}

    for step in ((alone, together) if args.alone_first else (together, alone)):
        step()
    for name in ("batched", "one_by_one"):
        out[name]["ms_per_text"] = 1000 * out[name]["s"] / len(texts)
        out[name]["steps_mean"] = float(np.mean(out[name].pop("steps")))
    tokens = [len(e.ids) for e in predictor.tokenizer.encode(texts)]
    return {"texts": len(texts), "tokens_mean": float(np.mean(tokens)), **out,
            "speedup": out["one_by_one"]["s"] / out["batched"]["s"]}


def processor() -> dict:
    name = next((line.split(":", 1)[1].strip() for line in subprocess.run(["lscpu"], capture_output=True, text=True)
                 .stdout.splitlines() if line.startswith("Model name")), platform.processor())
    flags = open("/proc/cpuinfo").read()
    return {"cpu": name, "flags": [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f" {f}" in flags],
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--data", default="tweets", help="'tweets' (the bundled corpus's test split) or a TSV/CSV")
    parser.add_argument("--texts", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--speed", action="store_true", help="time one tweet-length text instead")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--file", type=int, default=0, metavar="N",
                        help="time N test tweets explained in one call against one call per tweet instead")
    parser.add_argument("--alone-first", action="store_true", help="--file: time the one-by-one calls first")
    parser.add_argument("--steps", type=int, default=None, help="the explainer's first steps (default: its own)")
    parser.add_argument("--label", default=None, help="a name for this run in the JSON (e.g. the commit)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    mode = speed if args.speed else file_speed if args.file else faithfulness
    result = {"run": args.run, "data": args.data, "label": args.label, "steps_option": args.steps, **processor(),
              **mode(args)}
    result["wall_s"] = time.perf_counter() - started
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
