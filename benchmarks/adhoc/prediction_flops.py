"""Real vs padded tokens of 2,000 test tweets in pipeline-style batches of 32, and the linear-layer FLOP ratio pipeline / bertfit.
Run: .venv/bin/python benchmarks/adhoc/prediction_flops.py MODEL_DIR"""
import sys
import logging; logging.disable(logging.WARNING)
from bertfit.predict.predictor import Predictor
from bertfit.train.finetune import prepare_data
from bertfit.train.config import TrainConfig
clf = Predictor.load(sys.argv[1], device="cpu", engine="pytorch")
data = prepare_data(TrainConfig(seed=0))
texts = [e.text for e in data.test[:2000]]
L=[len(e.ids) for e in clf.tokenizer.encode(texts, max_length=128)]
real=sum(L); padded=sum(max(L[i:i+32])*len(L[i:i+32]) for i in range(0,len(L),32))
H=384; I=1536
per_tok_layer = 2*(H*3*H + H*H + 2*H*I)
kv = 2*(2*H*H)
ours = real*(5*per_tok_layer + kv)
pipe = padded*6*per_tok_layer
print(real, padded, padded/real, "flop ratio", pipe/ours, "ours TFLOP", ours/1e12)
