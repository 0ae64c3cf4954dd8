"""int8 variants (which MatMuls stay fp32) and batch sizes: label agreement with fp32 over the 3,720 test tweets, and speed.
Run: .venv/bin/python benchmarks/adhoc/int8_variants.py MODEL_DIR   (writes /tmp/qexp)"""
import logging; logging.disable(logging.WARNING)
import sys, time, shutil, numpy as np, torch, onnx
from pathlib import Path
torch.set_num_threads(2)
from bertfit.predict import TextClassifier
from bertfit.export import export_onnx, OnnxClassifier
from bertfit.job import prepare_data
from bertfit.train_config import TrainConfig
from onnxruntime.quantization import QuantType, quantize_dynamic
m=sys.argv[1]
data = prepare_data(TrainConfig(seed=0))
ex = data.test; texts=[e.text for e in ex]
fp = TextClassifier.load(m, device="cpu")
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
print([(k,l) for _,k,l in mm if k!="act"])
variants = {
 "first-layer": lambda k,l: k=="act" or l==0,
 "first-layer+up": lambda k,l: k=="act" or l==0 or k=="up",
 "first-layer+down": lambda k,l: k=="act" or l==0 or k=="down",
 "up-all": lambda k,l: k=="act" or k=="up",
 "first+last-layer": lambda k,l: k=="act" or l in (0,5),
}
for name,f in variants.items():
    d=base/name; shutil.copytree(base/"fp32", d)
    quantize_dynamic(str(base/"fp32"/"model.onnx"), str(d/"model.onnx"), weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=[n for n,k,l in mm if f(k,l)])
    c=OnnxClassifier.load(d)
    for mb in (1, 4):
        b=c.predict_logits(texts, max_batch=mb); s=time.perf_counter(); c.predict_logits(texts[:1000], max_batch=mb); t=1000/(time.perf_counter()-s)
        print(name, "batch", mb, f"agree {(a.argmax(1)==b.argmax(1)).mean():.4f} texts/s {t:.0f}", flush=True)
    b=c.predict_logits(texts)
    c.predict_logits(texts[:100]); s=time.perf_counter(); c.predict_logits(texts[:2000]); tps=2000/(time.perf_counter()-s)
    print(f"{name:20s} agree {(a.argmax(1)==b.argmax(1)).mean():.4f} acc {(b.argmax(1)==y).mean():.4f} (fp32 {(a.argmax(1)==y).mean():.4f}) texts/s {tps:.0f}", flush=True)
s=time.perf_counter(); fp.predict_logits(texts[:2000]); print("fp32 torch texts/s", 2000/(time.perf_counter()-s))
