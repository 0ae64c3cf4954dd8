"""Speed: bertfit vs Hugging Face Transformers on the same machine, model, data and settings.

    .venv/bin/python benchmarks/bench_speed.py                          # CPU, the full run (long)
    .venv/bin/python benchmarks/bench_speed.py --steps 40 --repeats 1   # a quick look
    .venv/bin/python benchmarks/bench_speed.py --device cuda            # GPU: bf16 autocast, SDPA
    .venv/bin/python benchmarks/bench_speed.py --peaks-only             # ISA, matmul peaks, bertfit's choice (seconds)

Model all-MiniLM-L6-v2 (``minilm-l6``); data the bundled tweets corpus with the split `bertfit
train` makes (deduplicated, stratified 80/10/10, seed 0), the training examples in the same order
for every contender. Measured:

1. fine-tuning throughput (real = non-padding tokens/s, examples/s) of bertfit's Trainer vs
   transformers' ``Trainer`` driving ``AutoModelForSequenceClassification`` with its dynamic-padding
   collator, once with its defaults ("hf") and once grouping by length ("hf-grouped"); same batch
   size (32), lr, warmup, weight decay, clipping, max_length (128), number of optimizer steps; then
   each one's validation accuracy;
2. prediction throughput (texts/s) on 2,000 test tweets and single-text latency (p50, p95) of
   bertfit's default path (on the CPU: ONNX Runtime fp32, exported once into the cache), the same
   fp32 model in PyTorch (``--engine pytorch``), its int8 path (``--int8``: ONNX Runtime int8), the
   PyTorch dynamic-quantization int8 fallback, and ``transformers.pipeline("text-classification",
   batch_size=32)``, with each one's accuracy and the int8 paths' agreement with the fp32 labels;
3. each contender's peak RSS (every contender runs in a fresh process of its own);
4. bertfit's achieved training FLOP/s (6 × non-embedding parameters per real token) as a fraction
   of the matmul peak of the precision it trains in, measured in the same process just before and
   after training: fp32, the fastest of torch.matmul (MKL), oneDNN (prepacked) and ONNX Runtime's
   MatMul (MLAS) where installed; bf16, torch.matmul in bf16 (oneDNN with AVX512-BF16/AMX).

The CPU's instruction sets are printed and recorded (bertfit.precision). Where they include bf16
(AVX512-BF16 or AMX) the contenders add bertfit forced to fp32 (``bertfit-fp32``: ``--no-bf16``;
``bertfit`` is the default, which chooses bf16 there when measured fast), transformers' Trainer with
``bf16=True`` on the CPU (``hf-bf16``), and bf16 prediction in PyTorch (``bertfit-bf16-pytorch``,
with its label agreement); without bf16 instructions those are left out (bf16 is emulated, slow).

The machine is shared and noisy, so absolute times are not results: contenders are interleaved
in rotating order and repeated (``--repeats``), each ratio is taken between runs of the same
repeat, and the median ratio is reported. Threads: never more than the cores found free at the
start (``--threads auto``); every contender gets the same number.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRAIN_IMPLS = ("bertfit", "hf", "hf-grouped")
BF16_TRAIN_IMPLS = ("bertfit-fp32", "hf-bf16")  # only where the CPU has bf16 instructions
PREDICT_IMPLS = ("bertfit", "bertfit-pytorch", "bertfit-int8", "bertfit-int8-torch", "hf-pipeline")
BF16_PREDICT_IMPLS = ("bertfit-bf16-pytorch",)


def train_impls(device: str) -> tuple[str, ...]:
    from bertfit.precision import read_isa

    return TRAIN_IMPLS + (BF16_TRAIN_IMPLS if device == "cpu" and read_isa().bf16 else ())


# --- measurements shared by the children ----------------------------------------------------

def peak_rss_mb() -> float:
    """This process's peak RSS. Not getrusage's ru_maxrss: Linux carries that across fork + exec,
    so every child would report the parent's peak (here the ONNX export's) if it was higher."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # elsewhere: KiB on Linux, bytes on macOS


def load_now() -> float:
    return os.getloadavg()[0]


def _best_rate(step, flops: float, seconds: float, sync=None) -> float:
    best, start, reps = float("inf"), time.perf_counter(), 0
    step()
    while time.perf_counter() - start < seconds or reps < 5:
        reps += 1
        if sync:
            sync()
        t = time.perf_counter()
        step()
        if sync:
            sync()
        best = min(best, time.perf_counter() - t)
    return flops / best / 1e9


def matmul_peak_gflops(device: str, seconds: float = 1.5, bf16: bool | None = None) -> float:
    """Best rate of a large torch.matmul: bf16 where asked (default: on CUDA), else fp32."""
    import torch

    n = 2048 if device == "cpu" else 8192  # 2048 already runs at the 4096 rate on the 2-core CPU
    dtype = torch.bfloat16 if (device != "cpu" if bf16 is None else bf16) else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return _best_rate(lambda: a @ b, 2 * n**3, seconds, torch.cuda.synchronize if device != "cpu" else None)


def cpu_peaks(seconds: float = 1.0, with_bf16: bool | None = None) -> dict:
    """GFLOP/s of a 2048² matmul per library on this CPU: fp32 torch (MKL), oneDNN (prepacked weight),
    ONNX Runtime MatMul (MLAS) where installed; bf16 torch where the ISA has bf16 (or ``with_bf16``).
    ``fp32`` is the fastest fp32 library: the machine's real fp32 peak."""
    import numpy as np
    import torch

    from bertfit.precision import read_isa

    n = 2048
    flops = 2 * n**3
    out = {"fp32_torch_mkl": matmul_peak_gflops("cpu", seconds, bf16=False)}
    a, b = torch.randn(n, n), torch.randn(n, n)
    if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        packed = torch.ops.mkldnn._reorder_linear_weight(b.t().contiguous(), n)  # a @ b as a linear layer
        with torch.inference_mode():
            out["fp32_onednn"] = _best_rate(lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], ""),
                                            flops, seconds)
    if _has("onnxruntime") and _has("onnx"):
        import onnxruntime as ort
        from onnx import TensorProto, helper

        graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul",
                                  [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in "ab"],
                                  [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        feeds = {"a": a.numpy(), "b": np.ascontiguousarray(b.numpy())}
        out["fp32_onnxruntime"] = _best_rate(lambda: session.run(None, feeds), flops, seconds)
    fp32 = {k: v for k, v in out.items() if k.startswith("fp32_")}
    out["fp32"] = max(fp32.values())
    out["fp32_library"] = max(fp32, key=fp32.get)[len("fp32_"):]
    if with_bf16 if with_bf16 is not None else read_isa().bf16:
        out["bf16"] = out["bf16_torch"] = matmul_peak_gflops("cpu", seconds, bf16=True)
    return out


def precision_peak(device: str, bf16: bool) -> float:
    """The matmul peak of the precision a run trains in."""
    if device != "cpu":
        return matmul_peak_gflops(device, bf16=bf16)
    return cpu_peaks(with_bf16=bf16)["bf16" if bf16 else "fp32"]


def prepare(args):
    """The data exactly as `bertfit train` splits it, and the model directory."""
    from bertfit.hub import resolve_model
    from bertfit.train.finetune import prepare_data
    from bertfit.train.config import TrainConfig

    data = prepare_data(TrainConfig(seed=0))
    if args.train_examples:
        data.train = data.train[: args.train_examples]
    return data, resolve_model(getattr(args, "model", None) or "minilm-l6")


def setup_threads(args) -> None:
    import torch

    torch.set_num_threads(args.threads)


# --- training children ----------------------------------------------------------------------

def train_bertfit(args) -> dict:
    import torch

    from bertfit.weights import load_model, save_model
    from bertfit.train.finetune import encode
    from bertfit.train.run_dir import RunDir
    from bertfit.tokenizer import WordPieceTokenizer
    from bertfit.train.loop import Trainer, predict_logits, seed_everything
    from bertfit.train.config import TrainConfig

    data, model_dir = prepare(args)
    config = TrainConfig(max_steps=args.steps, batch_size=32, lr=args.lr, warmup_ratio=0.1, weight_decay=0.01,
                         max_grad_norm=1.0, max_length=128, seed=0, log_every=50, save_every=10**9,
                         eval_each_epoch=False, device=args.device, threads=args.threads,
                         # bertfit: the default (CUDA: bf16; CPU: chosen per machine); bertfit-fp32: --no-bf16
                         bf16=False if args.impl == "bertfit-fp32" else (True if args.device == "cuda" else None),
                         compile=args.compile)
    tokenizer = WordPieceTokenizer.from_dir(model_dir)
    train = encode(tokenizer, data.train, data.task, config.max_length)
    validation = encode(tokenizer, data.validation, data.task, config.max_length)
    device = torch.device(args.device)
    seed_everything(0)
    model = load_model(model_dir, data.labels)
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir(tmp)
        run.create()
        trainer = Trainer(model, config, train, None, run, pad_id=tokenizer.pad_id, device=device)
        bf16 = trainer.use_bf16
        peak_before = precision_peak(args.device, bf16)
        load_start = load_now()
        start = time.perf_counter()
        result = trainer.train()
        if args.device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    peak_after = precision_peak(args.device, bf16)
    logits = predict_logits(model, validation.encoded, tokenizer.pad_id, device, 16384, bf16=bf16)
    metrics = data.task.evaluate(logits, validation.targets)
    if args.save:
        save_model(model, args.save, tokenizer=tokenizer)
        config.save(Path(args.save) / "train_config.json")
    tokens = result.state.tokens_seen
    flops = 6 * model.config.non_embedding_parameters() * tokens
    peak = (peak_before + peak_after) / 2
    return {"steps": result.state.step, "examples": result.state.examples_seen, "real_tokens": tokens,
            "seconds": seconds, "tokens_per_s": tokens / seconds, "examples_per_s": result.state.examples_seen / seconds,
            "val_accuracy": metrics["accuracy"], "val_macro_f1": metrics["macro_f1"],
            "gflops": flops / seconds / 1e9, "matmul_peak_gflops": peak, "matmul_peak_before_after": [peak_before, peak_after],
            "fraction_of_peak": flops / seconds / 1e9 / peak, "load_at_start": load_start,
            "precision": trainer.precision.record()}


def train_hf(args, grouped: bool) -> dict:
    import dataclasses

    import numpy as np
    import torch
    import transformers
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainerCallback, TrainingArguments)

    transformers.logging.set_verbosity_error()
    data, model_dir = prepare(args)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    index = {label: i for i, label in enumerate(data.labels)}
    enc = tokenizer([e.text for e in data.train], truncation=True, max_length=128)
    dataset = [{"input_ids": enc["input_ids"][i], "token_type_ids": enc["token_type_ids"][i],
                "attention_mask": enc["attention_mask"][i], "labels": index[e.label]} for i, e in enumerate(data.train)]
    transformers.set_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=len(data.labels), id2label=dict(enumerate(data.labels)), label2id=index,
        attn_implementation="sdpa")
    collator = DataCollatorWithPadding(tokenizer)
    counted = {"tokens": 0, "examples": 0}

    def count(module, positional, kwargs):  # the batches the model trains on (the loader reads one ahead)
        if module.training:
            counted["tokens"] += int(kwargs["attention_mask"].sum())
            counted["examples"] += len(kwargs["attention_mask"])

    model.register_forward_pre_hook(count, with_kwargs=True)

    class Clock(TrainerCallback):  # times the training loop itself, as bertfit's Trainer.train() is timed
        def on_train_begin(self, *a, **k):
            self.start, self.load = time.perf_counter(), load_now()

        def on_train_end(self, *a, **k):
            if args.device == "cuda":
                torch.cuda.synchronize()
            self.seconds = time.perf_counter() - self.start

    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    grouping = {}
    if grouped:  # transformers 5 spells group_by_length=True as a sampling strategy
        grouping = {"group_by_length": True} if "group_by_length" in fields else {"train_sampling_strategy": "group_by_length"}
    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=32, max_steps=args.steps, learning_rate=args.lr,
            warmup_steps=int(0.1 * args.steps), lr_scheduler_type="linear", weight_decay=0.01, max_grad_norm=1.0,
            seed=0, logging_steps=50, save_strategy="no", eval_strategy="no", report_to=[], disable_tqdm=True,
            use_cpu=args.device == "cpu", bf16=args.device == "cuda" or args.impl == "hf-bf16", dataloader_num_workers=0,
            torch_compile=args.compile, **grouping)
        trainer = Trainer(model=model, args=targs, train_dataset=dataset, data_collator=collator,
                          processing_class=tokenizer, callbacks=[clock])
        trainer.train()
    model.eval()
    val = tokenizer([e.text for e in data.validation], truncation=True, max_length=128)
    order = np.argsort([len(x) for x in val["input_ids"]])
    predicted = np.zeros(len(order), dtype=int)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.device == "cuda"):
        for s in range(0, len(order), 64):
            idx = order[s : s + 64]
            batch = collator([{k: val[k][i] for k in ("input_ids", "token_type_ids", "attention_mask")} for i in idx])
            logits = model(**{k: v.to(args.device) for k, v in batch.items()}).logits
            predicted[idx] = logits.float().argmax(-1).cpu().numpy()
    y = np.array([index[e.label] for e in data.validation])
    return {"steps": trainer.state.global_step, "examples": counted["examples"], "real_tokens": counted["tokens"],
            "seconds": clock.seconds, "tokens_per_s": counted["tokens"] / clock.seconds,
            "examples_per_s": counted["examples"] / clock.seconds, "val_accuracy": float((predicted == y).mean()),
            "optimizer": str(targs.optim), "bf16": bool(targs.bf16), "load_at_start": clock.load}


# --- prediction children --------------------------------------------------------------------

def predictor(args):
    """(predict(list of texts) -> list of label names, description) for one contender."""
    import torch

    model_dir = args.model_dir
    if args.impl.startswith("bertfit"):
        from bertfit.predict.predictor import Predictor

        # bertfit is the default (`bertfit predict RUN`): on the CPU, ONNX Runtime fp32; bertfit-int8 is
        # `--int8`, ONNX Runtime int8 -- both exported into the cache before any timed process. The
        # "-pytorch"/"-torch" contenders are `--engine pytorch`: the same models in PyTorch.
        # "bertfit-bf16-pytorch": the PyTorch engine under CPU bf16 autocast (CPUs with bf16 instructions).
        engine = "pytorch" if args.impl.endswith(("-pytorch", "-torch")) else "auto"
        clf = Predictor.load(model_dir, int8="int8" in args.impl, engine=engine, device=args.device)
        bf16 = args.device == "cuda" or "bf16" in args.impl

        def run(texts):
            with torch.autocast(args.device, dtype=torch.bfloat16, enabled=bf16):
                return clf.predict(texts)
        run.engine = clf.engine
        return run
    from transformers import pipeline
    import transformers

    transformers.logging.set_verbosity_error()
    kwargs = {"dtype": torch.bfloat16} if args.device == "cuda" else {}
    pipe = pipeline("text-classification", model=str(model_dir), device=0 if args.device == "cuda" else -1,
                    batch_size=32, **kwargs)
    def run(texts):
        return [out["label"] for out in pipe(texts, truncation=True, max_length=128)]
    run.engine = "transformers"
    return run


def predict_child(args) -> dict:
    import numpy as np

    data, _ = prepare(args)
    examples = data.test[: args.texts]
    texts = [e.text for e in examples]
    run = predictor(args)
    run(texts[:64])  # warm up
    times, labels = [], None
    for _ in range(args.predict_repeats):
        start = time.perf_counter()
        labels = run(texts)
        times.append(time.perf_counter() - start)
    latencies = []
    for i, text in enumerate(texts[: args.latency_texts + 10]):
        start = time.perf_counter()
        run([text])
        if i >= 10:
            latencies.append(time.perf_counter() - start)
    accuracy = float(np.mean([p == e.label for p, e in zip(labels, examples)]))
    return {"texts": len(texts), "seconds": statistics.median(times), "texts_per_s": len(texts) / statistics.median(times),
            "p50_ms": 1000 * float(np.percentile(latencies, 50)), "p95_ms": 1000 * float(np.percentile(latencies, 95)),
            "accuracy": accuracy, "labels": labels, "engine": run.engine, "load_at_start": load_now()}


def child(args) -> None:
    setup_threads(args)
    start = time.perf_counter()
    if args.child == "train":
        out = train_bertfit(args) if args.impl.startswith("bertfit") else train_hf(args, grouped=args.impl == "hf-grouped")
    else:
        out = predict_child(args)
    if args.device == "cuda":
        import torch

        out["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    out.update(impl=args.impl, threads=args.threads, peak_rss_mb=peak_rss_mb(), wall_s=time.perf_counter() - start)
    print("RESULT " + json.dumps(out), flush=True)


# --- the parent: interleave, repeat, compare ------------------------------------------------

def free_cores() -> int:
    """Cores not busy right now (other people's tests share this machine)."""
    ncpu = len(os.sched_getaffinity(0))
    try:
        import psutil

        busy = sum(psutil.cpu_percent(interval=3.0, percpu=True)) / 100
    except ImportError:
        busy = os.getloadavg()[0]
    return max(1, min(ncpu, round(ncpu - busy)))


def run_child(kind: str, impl: str, args, extra: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--impl", impl, "--device", args.device, "--threads",
           str(args.threads), "--steps", str(args.steps), "--lr", str(args.lr), "--texts", str(args.texts),
           "--work", args.work, "--model", args.model] + extra
    if args.train_examples:
        cmd += ["--train-examples", str(args.train_examples)]
    if args.compile:
        cmd.append("--compile")
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               BERTFIT_CACHE=str(Path(args.work) / "cache"))
    print(f"  running {kind} {impl} ...", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
        raise SystemExit(f"{kind} {impl} failed (exit {proc.returncode})")
    result = json.loads(lines[-1][len("RESULT "):])
    shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items() if k != "labels"}
    print(f"    {shown}", flush=True)
    return result


def rotations(items, repeats):
    for r in range(repeats):
        k = r % len(items)
        yield r, list(items[k:]) + list(items[:k])


def median_ratio(runs: list[dict], a: str, b: str, key: str) -> tuple[float, list[float]]:
    ratios = [run[a][key] / run[b][key] for run in runs if a in run and b in run]
    return statistics.median(ratios), ratios


def run_interleaved(kind: str, impls, args, report: dict, extra) -> None:
    """Every contender once per repeat, in rotating order, into report[kind][repeat][impl]. Saved
    after every run (a long benchmark may be interrupted); runs already in the report (--resume)
    are not repeated."""
    for r, order in rotations(impls, args.repeats):
        if r == len(report[kind]):
            report[kind].append({})
        results = report[kind][r]
        for impl in order:
            if impl not in results:
                results[impl] = run_child(kind, impl, args, extra(impl, r))
                _save(report, args.out)


def parent(args) -> None:
    previous = None
    if args.resume and args.out and Path(args.out).is_file():  # continue an interrupted run where it stopped
        previous = json.loads(Path(args.out).read_text(encoding="utf-8"))
        args.threads, args.work = previous["threads"], args.work or previous.get("work")
    if args.threads is None:
        args.threads = free_cores() if args.device == "cpu" else 8
    import torch

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    args.work = str(work)
    from bertfit.precision import read_isa

    isa = read_isa()
    torch.set_num_threads(args.threads)
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "device": args.device, "threads": args.threads,
              "work": args.work, "cpu": _cpu_name(), "isa": isa.names(), "torch_capability": isa.torch_capability,
              "torch": torch.__version__, "steps": args.steps, "repeats": args.repeats,
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "train": [], "predict": [],
              "train_impls": list(train_impls(args.device))}
    if args.device == "cpu":
        report["peaks_gflops"] = cpu_peaks()
        print(f"CPU {isa.summary()}; matmul peaks (GFLOP/s): "
              + ", ".join(f"{k} {v:.0f}" if isinstance(v, float) else f"{k} {v}" for k, v in report["peaks_gflops"].items()))
    try:
        import transformers

        report["transformers"] = transformers.__version__
    except ImportError:
        pass
    if previous is not None:
        report.update(train=previous["train"], predict=previous["predict"], command=previous["command"],
                      started=previous["started"], train_impls=previous.get("train_impls", list(TRAIN_IMPLS)))
    print(f"device {args.device}, {args.threads} thread(s), {args.steps} steps, {args.repeats} repeat(s); work dir {work}")
    model_dir = Path(args.model_dir) if args.model_dir else work / "bertfit-model"
    if not args.skip_train:
        print("training (contenders interleaved, order rotated each repeat):")
        run_interleaved("train", report["train_impls"], args, report,
                        lambda impl, r: ["--save", str(model_dir)] if impl == "bertfit" and r == 0 else [])
    if not args.skip_predict:
        if not (model_dir / "config.json").exists():
            raise SystemExit(f"no fine-tuned model at {model_dir}: run the training part first or pass --model-dir")
        onnx = _has("onnxruntime") and _has("onnx")
        # Without ONNX Runtime (or on a GPU) the default path is PyTorch: no separate PyTorch contender.
        impls = [i for i in PREDICT_IMPLS if i not in ("bertfit-int8", "bertfit-pytorch") or onnx]
        if args.device == "cpu" and isa.bf16:
            impls[2:2] = BF16_PREDICT_IMPLS
        if args.device == "cuda":
            impls = [i for i in impls if "int8" not in i and i != "bertfit-pytorch"]
        if onnx and args.device != "cuda":  # export the graphs into the cache now, not inside a timed process
            os.environ["BERTFIT_CACHE"] = str(work / "cache")
            from bertfit.predict.export import cached_export

            cached_export(model_dir)
            cached_export(model_dir, int8=True)
        print("prediction:")
        run_interleaved("predict", impls, args, report, lambda impl, r: ["--model-dir", str(model_dir)])
    summarize(report)
    _save(report, args.out)


def summarize(report: dict) -> None:
    train_impls = report.get("train_impls", TRAIN_IMPLS)
    train = [r for r in report["train"] if all(impl in r for impl in train_impls)]  # complete repeats only
    pred = [r for r in report["predict"] if r and len(r) == len(report["predict"][0])]
    lines = [f"\n== summary ({report['device']}, {report['threads']} thread(s), {report['steps']} steps, "
             f"{len(train)} training / {len(pred)} prediction repeats) =="]
    if train:
        for impl in train_impls:
            tps = [r[impl]["tokens_per_s"] for r in train]
            eps = [r[impl]["examples_per_s"] for r in train]
            acc = [r[impl]["val_accuracy"] for r in train]
            rss = [r[impl]["peak_rss_mb"] for r in train]
            lines.append(f"train {impl:11s} real tokens/s {statistics.median(tps):8.0f}  examples/s {statistics.median(eps):6.1f}"
                         f"  val accuracy {statistics.median(acc):.4f}  peak RSS {max(rss):6.0f} MB")
        for other in [i for i in train_impls if i != "bertfit"]:
            med, all_ = median_ratio(train, "bertfit", other, "tokens_per_s")
            lines.append(f"RATIO training real tokens/s bertfit / {other}: {med:.2f}x  (per repeat {[round(x, 2) for x in all_]})")
            acc = statistics.median(r["bertfit"]["val_accuracy"] - r[other]["val_accuracy"] for r in train)
            lines.append(f"      validation accuracy bertfit - {other}: {100 * acc:+.2f} points")
        for impl in [i for i in train_impls if i.startswith("bertfit")]:
            frac = [r[impl]["fraction_of_peak"] for r in train]
            precision = train[0][impl].get("precision")  # absent in results from before the precision choice
            kind = ("bf16" if precision["bf16"] else "fp32") if precision else "fp32 (torch.matmul)"
            lines.append(f"RATIO {impl} training FLOP/s / {kind} matmul peak: {statistics.median(frac):.2f}  (per repeat "
                         f"{[round(x, 2) for x in frac]}; peak {statistics.median(r[impl]['matmul_peak_gflops'] for r in train):.0f} GFLOP/s)")
    if pred:
        impls = list(pred[0])
        for impl in impls:
            tps = [r[impl]["texts_per_s"] for r in pred]
            lines.append(f"predict {impl:17s} texts/s {statistics.median(tps):7.0f}  p50 {statistics.median(r[impl]['p50_ms'] for r in pred):6.1f} ms"
                         f"  p95 {statistics.median(r[impl]['p95_ms'] for r in pred):6.1f} ms  accuracy {pred[0][impl]['accuracy']:.4f}"
                         f"  peak RSS {max(r[impl]['peak_rss_mb'] for r in pred):6.0f} MB")
        for impl in impls:
            if impl == "hf-pipeline":
                continue
            med, all_ = median_ratio(pred, impl, "hf-pipeline", "texts_per_s")
            lines.append(f"RATIO prediction texts/s {impl} / hf-pipeline: {med:.2f}x  (per repeat {[round(x, 2) for x in all_]})")
        for impl in impls:
            if impl.startswith("bertfit-"):
                agree = statistics.mean(
                    sum(a == b for a, b in zip(r[impl]["labels"], r["bertfit"]["labels"])) / len(r["bertfit"]["labels"]) for r in pred)
                delta = pred[0][impl]["accuracy"] - pred[0]["bertfit"]["accuracy"]
                lines.append(f"      {impl}: label agreement with the default path {100 * agree:.2f}%, accuracy delta {100 * delta:+.2f} points")
    text = "\n".join(lines)
    print(text)
    report["summary"] = text


def peaks_only(args) -> None:
    """The ISA, the matmul peak per library, and what bertfit chooses here (measured afresh)."""
    import torch

    from bertfit.precision import MEASURE_SHAPE, cpu_selection

    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    selection = cpu_selection(refresh=True)
    print(f"CPU {selection.isa.summary()}; torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
          f"load {load_now():.2f}")
    for key, value in cpu_peaks().items():
        print(f"  matmul 2048² {key}: {value:.0f} GFLOP/s" if isinstance(value, float) else f"  {key}: {value}")
    m = selection.measurement
    print(f"  bertfit's start-up measurement, one training linear (tokens, in, out) = {MEASURE_SHAPE}, GFLOP/s: "
          f"fp32 MKL {m.fp32_mkl:.0f}, fp32 oneDNN {m.fp32_onednn or 0:.0f}, bf16 "
          f"{'not measured (no bf16 ISA)' if m.bf16 is None else f'{m.bf16:.0f}'}; took {m.seconds:.2f} s")
    print(f"  bertfit's choice: bf16={selection.choice.bf16}, fp32 dense layers {selection.choice.fp32_kernel} "
          f"({selection.choice.reason})")


def _save(report: dict, out: str | None) -> None:
    if out:
        Path(out).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", default="minilm-l6", help="the pretrained encoder (name or directory)")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per training run (same for all)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of every contender")
    parser.add_argument("--threads", type=int, help="torch threads for every contender (default: free cores)")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--texts", type=int, default=2000, help="test tweets to predict")
    parser.add_argument("--latency-texts", type=int, default=200, help="single-text calls timed for p50/p95")
    parser.add_argument("--predict-repeats", type=int, default=3, help="timed passes over the texts per process")
    parser.add_argument("--train-examples", type=int, help="use only the first N training examples")
    parser.add_argument("--compile", action="store_true", help="torch.compile both contenders (GPU)")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-predict", action="store_true")
    parser.add_argument("--model-dir", help="fine-tuned model for the prediction part (default: the one trained here)")
    parser.add_argument("--work", help="directory for the fine-tuned model and exports (default: a new temp dir)")
    parser.add_argument("--out", default=str(HERE / "speed_results.json"), help="write all results as JSON here")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted run recorded in --out")
    parser.add_argument("--summarize", metavar="JSON", help="print the summary of a results file and exit")
    parser.add_argument("--peaks-only", action="store_true",
                        help="print the CPU's ISA, its matmul peaks per library and bertfit's precision choice; exit")
    parser.add_argument("--child", choices=["train", "predict"], help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.summarize:
        summarize(json.loads(Path(args.summarize).read_text(encoding="utf-8")))
    elif args.peaks_only:
        peaks_only(args)
    elif args.child:
        child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
