"""Further pretraining (issue 15): throughput vs transformers, and held-out perplexity before → after.

1. ``throughput``: masked LM alone on the same packed sequences (the corpus below, max length 128),
   same model (minilm-l6 with a fresh masked-LM head over its tied embeddings; MiniLM ships none),
   batch size, learning rate and number of steps. bertfit runs its library entry point (what
   ``bertfit pretrain --no-nsp`` runs); transformers runs BertForMaskedLM with its Trainer and
   DataCollatorForLanguageModeling (15%, 80/10/10). Real tokens per second = tokens in the steps' batches
   (no padding: packed sequences) / training seconds (bertfit: the trainer's own clock, evaluation
   excluded; transformers: the Trainer's train_runtime). Each contender runs in a fresh process,
   interleaved, ``--repeats`` times.
2. ``perplexity``: ``bertfit pretrain --no-nsp`` on the raw tweets and comments of ../shared/data/unlabelled
   plus the texts of the bundled tweets corpus' training and validation splits (bertfit's own seeded
   split; never its test split), then the held-out slice's perplexity (fixed masks) before and after.

    flock -x /tmp/cpu.lock .venv/bin/python benchmarks/bench_pretrain.py throughput --steps 10 --repeats 2
    .venv/bin/python benchmarks/bench_pretrain.py perplexity --steps 2000 --max-documents 0 --lr 1e-4 \
        --eval-every 250 --output-dir runs/pretrained-tweets
    .venv/bin/bertfit train --quick --seeds 3 --model runs/pretrained-tweets --output-dir runs/sentiment-from-pretrained
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path("/work/shared/data")  # ../shared/data of the main checkout; pass --data elsewhere
BATCH, LR, MAX_LENGTH = 16, 5e-5, 128


def tweets_corpus(out: Path) -> Path:
    """The bundled tweets' training + validation texts (bertfit's default seeded split), one per line."""
    from bertfit.train.finetune import prepare_data
    from bertfit.train.config import TrainConfig

    prepared = prepare_data(TrainConfig())
    with open(out, "w", encoding="utf-8") as f:
        for example in prepared.train + prepared.validation:
            f.write(" ".join(example.text.split()) + "\n")
    return out


def corpus_files(work: Path, data: Path) -> list[str]:
    return sorted(str(p) for p in (data / "unlabelled").glob("*.txt")) + [str(tweets_corpus(work / "tweets_train_val.txt"))]


def run_bertfit(files: list[str], steps: int, work: Path, max_documents: int | None, validation: float, *,
                lr: float = LR, eval_every: int = 0, output_dir: str | None = None) -> dict:
    from bertfit.train.pretrain import PretrainSettings, pretrain
    from bertfit.train.config import TrainConfig

    # save_every: a long perplexity run can be resumed (`bertfit pretrain --resume DIR`) if it is killed.
    config = TrainConfig(model="minilm-l6", output_dir=output_dir or str(work / "bertfit-run"), max_length=MAX_LENGTH,
                         max_steps=steps, batch_size=BATCH, lr=lr, log_every=min(50, max(1, steps)),
                         save_every=200 if output_dir else 10**6, eval_every=eval_every)
    settings = PretrainSettings(corpus=tuple(files), nsp=False, validation_fraction=validation, max_documents=max_documents)
    result = pretrain(config, settings, overwrite=True)
    records = [json.loads(line) for line in open(result.run_dir / "metrics.jsonl", encoding="utf-8") if line.strip()]
    curve = [{"step": r["step"], **{k: r[k] for k in ("loss", "perplexity", "mlm_accuracy") if k in r}}
             for r in records if r.get("kind") == "eval" and r.get("split") == "validation"]
    return {"metrics": result.metrics, "fills": result.fills, "wall_s": result.wall_time_s, "curve": curve}


def throughput_bertfit(files: list[str], steps: int, max_documents: int) -> dict:
    from bertfit.train.loop import Trainer

    seen = {}
    original = Trainer.train

    def timed(self):  # the trainer's own clock and token count, as the train log records them
        result = original(self)
        seen["tokens"], seen["seconds"], seen["steps"] = result.state.tokens_seen, result.state.train_seconds, result.state.step
        return result

    Trainer.train = timed
    with tempfile.TemporaryDirectory() as tmp:
        run_bertfit(files, steps, Path(tmp), max_documents, validation=0.0)
    return {"tokens": seen["tokens"], "seconds": seen["seconds"], "steps": seen["steps"],
            "tokens_per_s": seen["tokens"] / seen["seconds"]}


def throughput_transformers(files: list[str], steps: int, max_documents: int) -> dict:
    import torch
    import transformers

    from bertfit.hub import resolve_model
    from bertfit.tasks.pretrain.prepare import prepare_corpus
    from bertfit.tokenizer import WordPieceTokenizer

    directory = resolve_model("minilm-l6")
    tokenizer = WordPieceTokenizer.from_dir(directory)
    data = prepare_corpus(files, tokenizer, max_length=MAX_LENGTH, nsp=False, seed=0, validation_fraction=0.0,
                          max_documents=max_documents)
    rows = [{"input_ids": inst.encode(tokenizer.cls_id, tokenizer.sep_id).ids} for inst in data.train]
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    model = transformers.BertForMaskedLM.from_pretrained(directory)
    collator = transformers.DataCollatorForLanguageModeling(hf_tokenizer, mlm=True, mlm_probability=0.15)
    with tempfile.TemporaryDirectory() as tmp:
        args = transformers.TrainingArguments(output_dir=tmp, per_device_train_batch_size=BATCH, max_steps=steps,
                                              learning_rate=LR, warmup_steps=int(0.1 * steps), weight_decay=0.01, logging_steps=10**6,
                                              save_strategy="no", report_to=[], use_cpu=True, seed=0,
                                              dataloader_num_workers=0)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=rows, data_collator=collator)
        out = trainer.train()
    tokens = steps * BATCH * MAX_LENGTH if all(len(r["input_ids"]) == MAX_LENGTH for r in rows[: steps * BATCH]) else None
    seconds = out.metrics["train_runtime"]
    return {"tokens": tokens, "seconds": seconds, "steps": steps, "tokens_per_s": tokens / seconds if tokens else None,
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=("throughput", "perplexity", "_one"))
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-documents", type=int, default=3000, help="a seeded subset of the corpus; 0: all")
    parser.add_argument("--contender", choices=("bertfit", "transformers"))
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--out", default=None)
    parser.add_argument("--lr", type=float, default=LR)
    parser.add_argument("--eval-every", type=int, default=0, help="perplexity: held-out evaluations every N steps (a curve)")
    parser.add_argument("--output-dir", default=None, help="perplexity: keep the run here (a base for `bertfit train --model`)")
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    work = Path(tempfile.mkdtemp(prefix="bench-pretrain-"))
    if args.what == "_one":
        files = json.loads(Path(args.out).read_text())["files"]
        fn = throughput_bertfit if args.contender == "bertfit" else throughput_transformers
        print("RESULT " + json.dumps(fn(files, args.steps, args.max_documents)), flush=True)
        return
    files = corpus_files(work, Path(args.data))
    if args.what == "throughput":
        spec = work / "spec.json"
        spec.write_text(json.dumps({"files": files}))
        results: dict[str, list] = {"bertfit": [], "transformers": []}
        for repeat in range(args.repeats):
            for contender in ("bertfit", "transformers") if repeat % 2 == 0 else ("transformers", "bertfit"):
                started = time.time()
                done = subprocess.run([sys.executable, __file__, "_one", "--contender", contender, "--steps", str(args.steps),
                                       "--max-documents", str(args.max_documents), "--out", str(spec)],
                                      capture_output=True, text=True)
                line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
                if not line:
                    print(done.stderr[-3000:])
                    raise SystemExit(f"{contender} failed")
                result = json.loads(line[0][7:])
                result["process_s"] = time.time() - started
                results[contender].append(result)
                print(contender, json.dumps(result), flush=True)
        ours = [r["tokens_per_s"] for r in results["bertfit"]]
        theirs = [r["tokens_per_s"] for r in results["transformers"]]
        print(f"bertfit {ours} tokens/s; transformers {theirs} tokens/s; ratio of means {sum(ours) / sum(theirs):.2f}x")
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=2))
    else:
        result = run_bertfit(files, args.steps, work, args.max_documents or None, validation=0.05, lr=args.lr,
                             eval_every=args.eval_every, output_dir=args.output_dir)
        before, after = result["metrics"].get("before", {}), result["metrics"].get("validation", {})
        print(json.dumps({"before": before, "after": after, "wall_s": result["wall_s"]}, indent=2))
        print(f"held-out perplexity {before.get('perplexity'):.2f} -> {after.get('perplexity'):.2f}; masked-token accuracy "
              f"{before.get('mlm_accuracy'):.4f} -> {after.get('mlm_accuracy'):.4f}")
        if args.out:
            Path(args.out).write_text(json.dumps({**result["metrics"], "curve": result["curve"], "wall_s": result["wall_s"],
                                                  "steps": args.steps, "lr": args.lr, "batch": BATCH}, indent=2))


if __name__ == "__main__":
    main()
