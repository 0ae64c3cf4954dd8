"""Single-text p50 of Predictor.predict with prepacked small-batch linears (SMALL_ROWS=48) vs without (0), interleaved.
Run: .venv/bin/python benchmarks/adhoc/latency_prepack_ab.py 2 MODEL_DIR"""
import time, statistics, torch, sys
torch.set_num_threads(int(sys.argv[1]))
import bertfit.cpu_linear as cl
from bertfit.predict.predictor import Predictor
from bertfit.train.finetune import prepare_data
from bertfit.train.config import TrainConfig
import logging; logging.disable(logging.WARNING)
clf = Predictor.load(sys.argv[2], device="cpu", engine="pytorch")
data = prepare_data(TrainConfig(seed=0))
texts = [e.text for e in data.test[:300]]
clf.predict(texts[:64])
res={48:[],0:[]}
for rep in range(3):
  for sr in (48,0):
    cl.SMALL_ROWS=sr
    ts=[]
    for t in texts:
        s=time.perf_counter(); clf.predict([t]); ts.append(time.perf_counter()-s)
    res[sr].append(1000*statistics.median(ts))
print(res)
