"""What bench_speed.py's "share of the matmul peak" counts, and the same figure counting only what
bertfit computes. Reads a results JSON; runs nothing (no model, no timing).

    .venv/bin/python benchmarks/adhoc/peak_share.py benchmarks/speed_results_cpu.json

bench_speed.py counts 6 x BertConfig.non_embedding_parameters() FLOPs per real training token:
every weight and bias of all six encoder layers (MiniLM: 6 x 1,774,464 = 10,646,784), forward (2)
and backward (4). It does not count the embeddings, the pooler and classifier, or attention's two
activation products (q.k^T and p.v). And it counts the last layer in full although bertfit runs it
on [CLS] only (model.py, cls_only): there, K and V are computed for every token (the keys and values
[CLS] attends to), while Q, the attention output, the feed-forward and both LayerNorms run once
per text. The "computed" figure below counts exactly that.
"""

from __future__ import annotations

import json
import statistics
import sys

H, I, LAYERS = 384, 1536, 6  # all-MiniLM-L6-v2


def main(path: str) -> None:
    results = json.load(open(path))
    per_layer = 4 * H * H + 4 * H + 2 * H * I + I + H + 4 * H  # = BertConfig.non_embedding_parameters() / LAYERS
    kv = 2 * (H * H + H)  # the last layer's K and V projections, for every token
    counted, computed = [], []
    for repeat in results["train"]:
        r = repeat["bertfit"]
        tokens, texts, peak = r["real_tokens"], r["examples"], r["matmul_peak_gflops"]
        flops_counted = 6 * LAYERS * per_layer * tokens
        flops_computed = 6 * ((LAYERS - 1) * per_layer * tokens + kv * tokens + (per_layer - kv) * texts)
        counted.append(flops_counted / r["seconds"] / 1e9 / peak)
        computed.append(flops_computed / r["seconds"] / 1e9 / peak)
        assert abs(counted[-1] - r["fraction_of_peak"]) < 1e-9, "the JSON's figure is the counted one"
    print(f"per layer {per_layer:,} parameters; all {LAYERS} layers {LAYERS * per_layer:,}")
    print(f"share of the matmul peak, as bench_speed.py counts (last layer in full): "
          f"{statistics.median(counted):.3f} {[round(x, 3) for x in counted]}")
    print(f"share of the matmul peak, counting what is computed (last layer: K/V per token, rest per text): "
          f"{statistics.median(computed):.3f} {[round(x, 3) for x in computed]}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/speed_results_cpu.json")
