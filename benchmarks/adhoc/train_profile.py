"""MiniLM on tweets through bertfit's Trainer, 2 threads. Modes:
  .venv/bin/python benchmarks/adhoc/train_profile.py 20 prof   # torch.profiler table of N steps, by input shape
  .venv/bin/python benchmarks/adhoc/train_profile.py 30 ab     # sparse word-embedding gradient vs a fresh dense
                                                                # one: interleaved tokens/s, max weight difference
  .venv/bin/python benchmarks/adhoc/train_profile.py 40 time   # tokens/s of N steps and peak RSS, one line. To A/B two
      versions of the code, alternate it between checkouts:  PYTHONPATH=/path/to/other/checkout/src .venv/bin/python ...
  .venv/bin/python benchmarks/adhoc/train_profile.py 1 parts   # micro-benchmarks of the per-step pieces changed in
                                                                # session 3: word-embedding gradient rows, dropout bits"""
import logging; logging.disable(logging.WARNING)
import torch, time, tempfile, sys
torch.set_num_threads(2)
from bertfit.weights import load_model
from bertfit.hub import resolve_model
from bertfit.train.finetune import encode, prepare_data
from bertfit.train.run_dir import RunDir
from bertfit.tokenizer import WordPieceTokenizer
from bertfit.train.loop import Trainer, seed_everything
from bertfit.train.config import TrainConfig
steps, mode = int(sys.argv[1]), sys.argv[2]
data = prepare_data(TrainConfig(seed=0))
md = resolve_model("minilm-l6")
config = TrainConfig(max_steps=steps, batch_size=32, lr=5e-5, warmup_ratio=0.1, weight_decay=0.01, max_grad_norm=1.0, max_length=128, seed=0, log_every=50, save_every=10**9, eval_each_epoch=False, device="cpu", threads=2)
tok = WordPieceTokenizer.from_dir(md)
train = encode(tok, data.train, data.task, 128)


def run(sparse=True, profiled=False):
    seed_everything(0)
    model = load_model(md, data.labels)
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
elif mode == "time":
    tps, _ = run()
    print(f"tokens/s {tps:.0f}  peak RSS {int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) // 1024} MB")
elif mode == "parts":
    import numpy as np

    def ms(f, n=50):
        f(); s = time.perf_counter()
        for _ in range(n):
            f()
        return round((time.perf_counter() - s) / n * 1e3, 3)
    g = torch.randn(30522, 384)
    rows = torch.tensor(sorted({i for e in train.encoded[:32] for i in e.ids}))
    c = torch.tensor(0.9)
    print(f"word-embedding gradient, {len(rows)} rows touched by one batch of 32 tweets (ms):")
    print("  zero all", ms(lambda: g.zero_()), " zero touched rows", ms(lambda: g.index_fill_(0, rows, 0)))
    print("  norm all", ms(lambda: torch.linalg.vector_norm(g, 2)),
          " norm touched rows", ms(lambda: torch.linalg.vector_norm(g.index_select(0, rows), 2)))
    print("  scale all", ms(lambda: g.mul_(c)),
          " scale touched rows", ms(lambda: g.index_copy_(0, rows, g.index_select(0, rows).mul_(c))))
    n = 1100 * 384 // 4  # dropout bits of one packed (N=1100, H=384) activation, as int64 words
    print("dropout bits for 1100 x 384 (ms): torch mt19937",
          ms(lambda: torch.empty(n, dtype=torch.int64).random_(-(2**63), 2**63 - 1), 200),
          " numpy SFC64 seeded by a torch draw",
          ms(lambda: np.random.SFC64(int(torch.empty((), dtype=torch.int64).random_())).random_raw(n), 200))
else:
    res, finals = {True: [], False: []}, {}
    for rep in range(3):
        for sparse in (True, False):
            tps, model = run(sparse)
            res[sparse].append(round(tps))
            finals[sparse] = [p.detach().clone() for p in model.parameters()]
    print("tokens/s sparse / dense:", res)
    print("max param diff", max((a - b).abs().max().item() for a, b in zip(finals[True], finals[False])))
