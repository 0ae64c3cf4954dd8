"""Batching on the padded ONNX Runtime graph vs PyTorch's packed path: texts/s on serve-like batches
(40 draws of 32 random test tweets, each predicted in one call with max_batch=32, as `bertfit serve`
does) and in bulk (2,000 tweets in one call), for several per-call overheads of `padded_batches`
(OnnxEngine.batch_overhead_tokens, onnx_runtime.py), 2 rounds in one process; first, the padding each batching adds:
  BERTFIT_CACHE=... .venv/bin/python benchmarks/adhoc/serve_batches.py MODEL_DIR THREADS"""
import sys, time, random, logging; logging.disable(logging.WARNING)
import torch; torch.set_num_threads(int(sys.argv[2]))
from bertfit.train.finetune import prepare_data
from bertfit.train.config import TrainConfig
from bertfit.predict.predictor import Predictor
m = sys.argv[1]
texts = [e.text for e in prepare_data(TrainConfig(seed=0)).test[:2000]]
rng = random.Random(0)
batches = [rng.sample(texts, 32) for _ in range(40)]
pt = Predictor.load(m, engine="pytorch"); ox = Predictor.load(m)
from bertfit.batching import inference_batches, padded_batches
def slots(lengths, cut):  # padded token slots over real tokens
    return sum(len(b) * max(lengths[i] for i in b) for b in cut) / sum(lengths)
lens = [[len(e.ids) for e in pt.tokenizer.encode(b, max_length=pt.max_length)] for b in batches]
print(f"serve-like batches: {min(map(min, lens))}..{max(map(max, lens))} tokens; padded/real: "
      f"one batch of 32 {sum(slots(l, inference_batches(l, 8192, 32)) for l in lens) / len(lens):.2f}, "
      f"sorted halves of 16 {sum(slots(l, inference_batches(l, 8192, 16)) for l in lens) / len(lens):.2f}, "
      f"padded_batches(overhead 16) {sum(slots(l, padded_batches(l, 8192, 16, 16)) for l in lens) / len(lens):.2f}", flush=True)
def t(f, bs):
    s = time.perf_counter()
    for b in bs: f(b)
    return sum(map(len, bs)) / (time.perf_counter() - s)
for r in range(2):
    out = [f"pytorch serve32 {round(t(pt.predict_logits, batches))} bulk {round(t(pt.predict_logits, [texts]))}"]
    for a in (0, 16, 32, 64, 128):
        ox.backend.batch_overhead_tokens = a
        out.append(f"ort a{a} serve32 {round(t(lambda b: ox.predict_logits(b, max_batch=32), batches))} bulk {round(t(ox.predict_logits, [texts]))}")
    print(" | ".join(out), flush=True)
