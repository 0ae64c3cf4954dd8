"""Prepacked oneDNN linear vs F.linear (MKL) by rows M, MiniLM shapes: the SMALL_ROWS crossover in cpu_linear.py.
Run: .venv/bin/python benchmarks/adhoc/prepack_crossover.py 2   (threads). Prints speed ratio (>1: prepacked faster) and max abs error."""
import time, torch, sys
torch.set_num_threads(int(sys.argv[1]))
F=torch.nn.functional
def bench(f, reps=200):
    for _ in range(5): f()
    s=time.perf_counter()
    for _ in range(reps): f()
    return (time.perf_counter()-s)/reps
with torch.inference_mode():
  for hint in [None]:
    for M in [1, 8, 25, 64, 128, 256, 512, 1024, 2048]:
        row=[]
        for k,n in [(384,1152),(384,1536),(1536,384)]:
            w=torch.randn(n,k)*0.05; b=torch.randn(n); x=torch.randn(M,k)
            pk=torch.ops.mkldnn._reorder_linear_weight(w, 64)
            d=bench(lambda: F.linear(x,w,b), max(20, 20000//M)); d2=bench(lambda: torch.ops.mkldnn._linear_pointwise(x,pk,b,"none",[],""), max(20,20000//M))
            err=(F.linear(x,w,b)-torch.ops.mkldnn._linear_pointwise(x,pk,b,"none",[],"")).abs().max().item()
            row.append(f"{d/d2:.2f}(err {err:.1e})")
        print(M, row)
  w=torch.randn(1536,384)*0.05; b=torch.randn(1536); x=torch.randn(40,384)
  pk=torch.ops.mkldnn._reorder_linear_weight(w, 64)
  ref=F.gelu(F.linear(x,w,b)); g=torch.ops.mkldnn._linear_pointwise(x,pk,b,"gelu",[],"none")
  print("gelu err", (ref-g).abs().max().item(), bench(lambda: F.gelu(F.linear(x,w,b)))*1e6, bench(lambda: torch.ops.mkldnn._linear_pointwise(x,pk,b,"gelu",[],"none"))*1e6)
  x3=torch.randn(2,20,384); print(torch.ops.mkldnn._linear_pointwise(x3,pk,b,"none",[],"").shape)
