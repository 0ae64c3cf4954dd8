"""MKL vs oneDNN fp32 vs bf16 autocast for one training linear layer (MiniLM FFN: 1,024 x 384 -> 1,536), 2 threads; issue 19."""
import time, torch, torch.nn.functional as F
torch.set_num_threads(2)
N,K,M=1024,384,1536
x=torch.randn(N,K); w=torch.randn(M,K); b=torch.randn(M); dy=torch.randn(N,M)
def best(f, n=20):
    f(); t=float('inf')
    for _ in range(n):
        s=time.perf_counter(); f(); t=min(t,time.perf_counter()-s)
    return t
fl=2*N*K*M/1e9
print("mkl fwd", fl/best(lambda: F.linear(x,w,b)))
print("mkl dgrad", fl/best(lambda: dy@w))
print("mkl wgrad", fl/best(lambda: dy.t()@x))
op=torch.ops.mkldnn._linear_pointwise
pk=torch.ops.mkldnn._reorder_linear_weight(w, N)
print("dnnl fwd packed", fl/best(lambda: op(x,pk,b,"none",[],"")))
try:
    print("dnnl fwd plain w", fl/best(lambda: op(x,w,b,"none",[],"")))
    r=op(x,w,b,"none",[],""); print("maxdiff", (r-F.linear(x,w,b)).abs().max().item())
except Exception as e: print("plain fail", e)
wt=w.t().contiguous()
print("dnnl dgrad (pack per call)", fl/best(lambda: op(dy, torch.ops.mkldnn._reorder_linear_weight(wt,N), None,"none",[],"")))
print("dnnl dgrad plain", fl/best(lambda: op(dy, wt, None,"none",[],"")))
xt=x.t().contiguous(); dyt=dy.t().contiguous()
print("dnnl wgrad plain", fl/best(lambda: op(dyt, xt, None,"none",[],"")))
for name,f,ref in [("dgrad view", lambda: op(dy, w.t(), None,"none",[],""), dy@w),
                   ("wgrad view", lambda: op(dy.t(), x.t(), None,"none",[],""), dy.t()@x)]:
    r=f(); print(name, fl/best(f), (r-ref).abs().max().item()/ref.abs().max().item(), r.is_contiguous())
print("mkl mm dgrad", fl/best(lambda: torch.mm(dy,w)), "addmm fwd", fl/best(lambda: torch.addmm(b,x,w.t())), "mm fwd", fl/best(lambda: x@w.t()))
# bf16 path
with torch.autocast("cpu",dtype=torch.bfloat16):
    print("bf16 autocast linear", fl/best(lambda: F.linear(x,w,b), n=3))
