"""bertfit's fp32 PyTorch predict path (`--engine pytorch`) vs the same model exported to fp32 ONNX
(`bertfit export RUN --output DIR`, run by ONNX Runtime through `Predictor.load(DIR)`), 2 threads,
each round in fresh processes, interleaved:
  .venv/bin/python benchmarks/adhoc/onnx_fp32_vs_torch.py MODEL_DIR [ROUNDS]
Prints texts/s on 2,000 test tweets, single-text p50/p95 over 200 calls, and the max logit difference."""
import os, statistics, subprocess, sys, tempfile, time
import logging; logging.disable(logging.WARNING)

if len(sys.argv) > 2 and sys.argv[1] == "--child":
    import numpy as np
    import torch
    torch.set_num_threads(2)
    from bertfit.train.finetune import prepare_data
    from bertfit.predict.predictor import Predictor
    from bertfit.train.config import TrainConfig
    # the export directory runs with ONNX Runtime; the run directory with PyTorch (not the CPU default)
    clf = Predictor.load(sys.argv[2], engine="pytorch" if sys.argv[2] == sys.argv[4] else "auto")
    texts = [e.text for e in prepare_data(TrainConfig(seed=0)).test[:2000]]
    clf.predict(texts[:200])
    rates = []
    for _ in range(3):
        s = time.perf_counter(); clf.predict(texts); rates.append(2000 / (time.perf_counter() - s))
    ts = []
    for t in texts[:200]:
        s = time.perf_counter(); clf.predict([t]); ts.append(time.perf_counter() - s)
    ts.sort()
    np.save(sys.argv[3], np.asarray(clf.predict_logits(texts[:500])))
    print(f"{statistics.median(rates):.0f} {1000 * statistics.median(ts):.2f} {1000 * ts[int(0.95 * len(ts))]:.2f}")
    sys.exit(0)

import numpy as np
model_dir, rounds = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3
work = tempfile.mkdtemp()
onnx_dir = os.path.join(work, "onnx-fp32")
subprocess.run([os.path.join(os.path.dirname(sys.executable), "bertfit"), "export", model_dir, "--output", onnx_dir],
               check=True, capture_output=True)
results = {"pytorch": [], "onnxruntime": []}
for r in range(rounds):
    for name, path in (("pytorch", model_dir), ("onnxruntime", onnx_dir))[:: 1 if r % 2 == 0 else -1]:
        out = subprocess.run([sys.executable, __file__, "--child", path, os.path.join(work, name + ".npy"), model_dir],
                             check=True, capture_output=True, text=True).stdout.split()
        results[name].append(tuple(float(x) for x in out))
for name, rows in results.items():
    print(f"{name:12s} texts/s {[round(x[0]) for x in rows]}  p50 ms {[x[1] for x in rows]}  p95 ms {[x[2] for x in rows]}")
ratio = [o[0] / p[0] for p, o in zip(results["pytorch"], results["onnxruntime"])]
print("texts/s onnxruntime / pytorch per round", [round(x, 2) for x in ratio])
diff = np.abs(np.load(os.path.join(work, "pytorch.npy")) - np.load(os.path.join(work, "onnxruntime.npy"))).max()
print(f"max |logit difference| on 500 tweets: {diff:.2e}")
