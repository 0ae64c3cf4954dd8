"""MiniLM on tweets through bertfit's Trainer, 2 threads. Modes:
  .venv/bin/python benchmarks/adhoc/train_profile.py 20 prof   # torch.profiler table of N steps, by input shape
  .venv/bin/python benchmarks/adhoc/train_profile.py 30 ab     # sparse word-embedding gradient vs a fresh dense
                                                                # one: interleaved tokens/s, max weight difference"""
import logging; logging.disable(logging.WARNING)
import torch, time, tempfile, sys
torch.set_num_threads(2)
from bertfit.checkpoints import load_classifier, resolve_model
from bertfit.job import encode, prepare_data
from bertfit.runs import RunDir
from bertfit.tokenizer import WordPieceTokenizer
from bertfit.train import Trainer, seed_everything
from bertfit.train_config import TrainConfig
steps, mode = int(sys.argv[1]), sys.argv[2]
data = prepare_data(TrainConfig(seed=0))
md = resolve_model("minilm-l6")
config = TrainConfig(max_steps=steps, batch_size=32, lr=5e-5, warmup_ratio=0.1, weight_decay=0.01, max_grad_norm=1.0, max_length=128, seed=0, log_every=50, save_every=10**9, eval_each_epoch=False, device="cpu", threads=2)
tok = WordPieceTokenizer.from_dir(md)
train = encode(tok, data.train, data.labels, 128)


def run(sparse=True, profiled=False):
    seed_everything(0)
    model = load_classifier(md, data.labels)
    with tempfile.TemporaryDirectory() as tmp:
        rd = RunDir(tmp); rd.create()
        tr = Trainer(model, config, train, None, rd, pad_id=tok.pad_id, device=torch.device("cpu"))
        if not sparse:
            tr._token_grad = None  # a fresh dense gradient every step
        if profiled:
            from torch.profiler import profile, ProfilerActivity
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as p:
                tr.train()
            print(p.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=400))
            return None, model
        s = time.perf_counter(); r = tr.train(); d = time.perf_counter() - s
        return r.state.tokens_seen / d, model


if mode == "prof":
    run(profiled=True)
else:
    res, finals = {True: [], False: []}, {}
    for rep in range(3):
        for sparse in (True, False):
            tps, model = run(sparse)
            res[sparse].append(round(tps))
            finals[sparse] = [p.detach().clone() for p in model.parameters()]
    print("tokens/s sparse / dense:", res)
    print("max param diff", max((a - b).abs().max().item() for a, b in zip(finals[True], finals[False])))
