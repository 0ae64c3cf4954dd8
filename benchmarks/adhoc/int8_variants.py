"""int8 variants for ONNX Runtime: which MatMuls stay fp32, weight formats (U8U8, reduce_range) and
batch sizes; label agreement with fp32 over the 3,720 test tweets, accuracy, and speed (2,000 tweets).
Run: .venv/bin/python benchmarks/adhoc/int8_variants.py MODEL_DIR   (writes /tmp/qexp)"""
import logging; logging.disable(logging.WARNING)
import sys, time, shutil, numpy as np, torch, onnx
from pathlib import Path
torch.set_num_threads(2)
from bertfit.predict.predictor import Predictor
from bertfit.predict.export import export_onnx
from bertfit.train.finetune import prepare_data
from bertfit.train.config import TrainConfig
from onnxruntime.quantization import QuantType, quantize_dynamic
m=sys.argv[1]
data = prepare_data(TrainConfig(seed=0))
ex = data.test; texts=[e.text for e in ex]
fp = Predictor.load(m, device="cpu", engine="pytorch")
a = fp.predict_logits(texts)
y = np.array([fp.labels.index(e.label) for e in ex])
base=Path("/tmp/qexp"); shutil.rmtree(base, ignore_errors=True)
export_onnx(m, base/"fp32")
g = onnx.load(str(base/"fp32"/"model.onnx")).graph
W = {i.name: tuple(i.dims) for i in g.initializer}
mm=[]; layer=0
for n in g.node:
    if n.op_type!="MatMul": continue
    s=W.get(n.input[1])
    if s is None: mm.append((n.name,"act",layer)); continue
    kind={(384,1152):"qkv",(384,384):"out",(384,1536):"up",(1536,384):"down"}.get(s,str(s))
    mm.append((n.name,kind,layer))
    if kind=="down": layer+=1
s8, u8, rr = dict(weight_type=QuantType.QInt8), dict(weight_type=QuantType.QUInt8), dict(weight_type=QuantType.QInt8, reduce_range=True)
variants = {  # name: (which MatMuls stay fp32, quantizer options)
 "first-layer": (lambda k,l: k=="act" or l==0, s8),
 "first-layer+up": (lambda k,l: k=="act" or l==0 or k=="up", s8),
 "first-layer+down": (lambda k,l: k=="act" or l==0 or k=="down", s8),
 "up-all": (lambda k,l: k=="act" or k=="up", s8),
 "first+last-layer": (lambda k,l: k=="act" or l in (0,5), s8),
 "u8u8 all": (lambda k,l: k=="act", u8),
 "u8u8 first-layer": (lambda k,l: k=="act" or l==0, u8),
 "s8 reduce_range all": (lambda k,l: k=="act", rr),
 "s8 reduce_range first": (lambda k,l: k=="act" or l==0, rr),
}
for name,(f,kw) in variants.items():
    d=base/name; shutil.copytree(base/"fp32", d)
    quantize_dynamic(str(base/"fp32"/"model.onnx"), str(d/"model.onnx"), per_channel=True, nodes_to_exclude=[n for n,k,l in mm if f(k,l)], **kw)
    c=Predictor.load(d)  # an export directory: ONNX Runtime
    if name in ("first-layer", "first-layer+up"):
        for mb in (1, 4):
            b=c.predict_logits(texts, max_batch=mb); s=time.perf_counter(); c.predict_logits(texts[:1000], max_batch=mb); t=1000/(time.perf_counter()-s)
            print(name, "batch", mb, f"agree {(a.argmax(1)==b.argmax(1)).mean():.4f} texts/s {t:.0f}", flush=True)
    b=c.predict_logits(texts)
    c.predict_logits(texts[:100]); s=time.perf_counter(); c.predict_logits(texts[:2000]); tps=2000/(time.perf_counter()-s)
    print(f"{name:22s} agree {(a.argmax(1)==b.argmax(1)).mean():.4f} acc {(b.argmax(1)==y).mean():.4f} (fp32 {(a.argmax(1)==y).mean():.4f}) texts/s {tps:.0f}", flush=True)
s=time.perf_counter(); fp.predict_logits(texts[:2000]); print("fp32 torch texts/s", 2000/(time.perf_counter()-s))
