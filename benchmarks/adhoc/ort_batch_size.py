"""texts/s of an ONNX Runtime export (fp32 or int8) on 2,000 test tweets by prediction batch size
(max_batch), one process, 2 threads, 3 rounds:
  .venv/bin/python benchmarks/adhoc/ort_batch_size.py EXPORT_DIR
EXPORT_DIR: from `bertfit export RUN --output DIR`, or the cache ($BERTFIT_CACHE/onnx-fp32/HASH)."""
import sys, time, logging; logging.disable(logging.WARNING)
import torch; torch.set_num_threads(2)
from bertfit.train.finetune import prepare_data
from bertfit.train.config import TrainConfig
from bertfit.predict.predictor import Predictor
clf = Predictor.load(sys.argv[1])  # an export directory: ONNX Runtime
texts = [e.text for e in prepare_data(TrainConfig(seed=0)).test[:2000]]
clf.predict(texts[:200])
for r in range(3):
  for mb in (8, 16, 32, 64, 128):
    s=time.perf_counter(); clf.predict_logits(texts, max_batch=mb); print(r, mb, round(2000/(time.perf_counter()-s)), flush=True)
