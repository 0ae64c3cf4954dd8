"""Where bertfit's prediction time goes, 2 threads. Modes:
  .venv/bin/python benchmarks/adhoc/prediction_profile.py MODEL_DIR batch    # 2,000 test tweets: texts/s by token
                                                                            # budget, then the op profile
  .venv/bin/python benchmarks/adhoc/prediction_profile.py MODEL_DIR single   # one text at a time: p50 over 200
                                                                            # test tweets, then the op profile"""
import logging; logging.disable(logging.WARNING)
import statistics, sys, time
import torch
torch.set_num_threads(2)
from torch.profiler import profile, ProfilerActivity
from bertfit.predict.predictor import Predictor
from bertfit.train.finetune import prepare_data
from bertfit.train.config import TrainConfig
clf = Predictor.load(sys.argv[1], device="cpu", engine="pytorch")
mode = sys.argv[2] if len(sys.argv) > 2 else "batch"
data = prepare_data(TrainConfig(seed=0))
texts = [e.text for e in data.test[:2000]]
clf.predict(texts[:200])
if mode == "batch":
    for mt in (2048, 4096, 8192, 16384):
        s = time.perf_counter(); clf.predict(texts, max_tokens=mt, max_batch=100000); print(mt, 2000 / (time.perf_counter() - s))
    s = time.perf_counter(); clf.predict(texts); print("default", 2000 / (time.perf_counter() - s))
    work = lambda: clf.predict(texts)
else:
    def p50():
        ts = []
        for t in texts[:200]:
            s = time.perf_counter(); clf.predict([t]); ts.append(time.perf_counter() - s)
        return 1000 * statistics.median(ts)
    print("p50 ms", p50(), p50())
    work = lambda: [clf.predict([t]) for t in texts[:100]]
with profile(activities=[ProfilerActivity.CPU]) as p:
    work()
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
