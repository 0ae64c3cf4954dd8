"""ONNX Runtime transformer optimizer (model_type bert) on the fp32 export: fused ops, agreement and texts/s vs the unfused export.
Run after int8_variants.py (reuses /tmp/qexp/fp32): .venv/bin/python benchmarks/adhoc/ort_transformer_optimizer.py MODEL_DIR"""
import sys
import logging; logging.disable(logging.WARNING)
import time, numpy as np, onnx, shutil, collections
from pathlib import Path
from onnxruntime.transformers import optimizer
from onnxruntime.quantization import QuantType, quantize_dynamic
from bertfit.predict.predictor import Predictor
from bertfit.train.finetune import prepare_data
from bertfit.train.config import TrainConfig
base=Path("/tmp/qexp")
src=base/"fp32"/"model.onnx"
opt = optimizer.optimize_model(str(src), model_type="bert", num_heads=12, hidden_size=384, opt_level=1)
print(opt.get_fused_operator_statistics())
d=base/"opt"; shutil.rmtree(d, ignore_errors=True); shutil.copytree(base/"fp32", d)
opt.save_model_to_file(str(d/"model.onnx"))
g=onnx.load(str(d/"model.onnx")).graph
print(collections.Counter(n.op_type for n in g.node))
data = prepare_data(TrainConfig(seed=0)); texts=[e.text for e in data.test]
fp = Predictor.load(sys.argv[1], device="cpu", engine="pytorch"); a=fp.predict_logits(texts)
for name in ("fp32", "opt"):
    c=Predictor.load(base/name); b=c.predict_logits(texts)
    s=time.perf_counter(); c.predict_logits(texts[:2000]); print(name, "agree", (a.argmax(1)==b.argmax(1)).mean(), "maxdiff", np.abs(a-b).max(), "texts/s", 2000/(time.perf_counter()-s))
