"""Validation accuracy of bertfit's 300-step benchmark training (same settings as bench_speed.py's
bertfit contender) for other seeds, to see how much one seed's figure moves:
  .venv/bin/python benchmarks/adhoc/seed_spread.py 1 2"""
import logging; logging.disable(logging.WARNING)
import sys, tempfile
import torch
torch.set_num_threads(2)
from bertfit.weights import load_model
from bertfit.hub import resolve_model
from bertfit.train.finetune import encode, prepare_data
from bertfit.train.run_dir import RunDir
from bertfit.tokenizer import WordPieceTokenizer
from bertfit.train.loop import Trainer, predict_logits, seed_everything
from bertfit.train.config import TrainConfig

data = prepare_data(TrainConfig(seed=0))  # the benchmark's split (seed 0) for every training seed
md = resolve_model("minilm-l6")
tok = WordPieceTokenizer.from_dir(md)
train = encode(tok, data.train, data.task, 128)
validation = encode(tok, data.validation, data.task, 128)
for seed in map(int, sys.argv[1:]):
    config = TrainConfig(max_steps=300, batch_size=32, lr=5e-5, warmup_ratio=0.1, weight_decay=0.01, max_grad_norm=1.0,
                         max_length=128, seed=seed, log_every=50, save_every=10**9, eval_each_epoch=False, device="cpu",
                         threads=2)
    seed_everything(seed)
    model = load_model(md, data.labels)
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir(tmp); run.create()
        Trainer(model, config, train, None, run, pad_id=tok.pad_id, device=torch.device("cpu")).train()
    logits = predict_logits(model, validation.encoded, tok.pad_id, torch.device("cpu"), 16384)
    print(f"seed {seed}: validation accuracy {data.task.evaluate(logits, validation.targets)['accuracy']:.4f}", flush=True)
