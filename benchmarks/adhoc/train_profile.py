"""Trainer step profile (--prof) or throughput over N steps, MiniLM on tweets, 2 threads.
Run: .venv/bin/python benchmarks/adhoc/train_profile.py 20 prof"""
import logging; logging.disable(logging.WARNING)
import torch, time, tempfile, sys
torch.set_num_threads(2)
from bertfit.checkpoints import load_classifier, resolve_model
from bertfit.job import encode, prepare_data
from bertfit.runs import RunDir
from bertfit.tokenizer import WordPieceTokenizer
from bertfit.train import Trainer, seed_everything
from bertfit.train_config import TrainConfig
steps=int(sys.argv[1])
data = prepare_data(TrainConfig(seed=0))
md = resolve_model("minilm-l6")
config = TrainConfig(max_steps=steps, batch_size=32, lr=5e-5, warmup_ratio=0.1, weight_decay=0.01, max_grad_norm=1.0, max_length=128, seed=0, log_every=50, save_every=10**9, eval_each_epoch=False, device="cpu", threads=2)
tok = WordPieceTokenizer.from_dir(md)
train = encode(tok, data.train, data.labels, 128)
seed_everything(0)
model = load_classifier(md, data.labels)
with tempfile.TemporaryDirectory() as tmp:
    run = RunDir(tmp); run.create()
    tr = Trainer(model, config, train, None, run, pad_id=tok.pad_id, device=torch.device("cpu"))
    if len(sys.argv) > 2:
        from torch.profiler import profile, ProfilerActivity
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as p:
            r = tr.train()
        print(p.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=400))
    else:
        s=time.perf_counter(); r=tr.train(); d=time.perf_counter()-s
        print("tok/s", r.state.tokens_seen/d, "ms/step", 1000*d/steps)
