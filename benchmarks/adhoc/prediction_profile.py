"""Profile of bertfit prediction of 2,000 test tweets (where the time goes) and throughput by token budget.
Run: .venv/bin/python benchmarks/adhoc/prediction_profile.py MODEL_DIR"""
import sys
import logging; logging.disable(logging.WARNING)
import torch, time
torch.set_num_threads(2)
from bertfit.predict import TextClassifier
from bertfit.job import prepare_data
from bertfit.train_config import TrainConfig
clf = TextClassifier.load(sys.argv[1], device="cpu")
data = prepare_data(TrainConfig(seed=0))
texts = [e.text for e in data.test[:2000]]
clf.predict(texts[:200])
for mt in (2048, 4096, 8192, 16384):
    s=time.perf_counter(); clf.predict(texts, max_tokens=mt, max_batch=100000); print(mt, 2000/(time.perf_counter()-s))
s=time.perf_counter(); clf.predict(texts); print("default", 2000/(time.perf_counter()-s))
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU]) as p:
    clf.predict(texts)
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))
