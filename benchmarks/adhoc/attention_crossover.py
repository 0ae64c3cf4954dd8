"""Measures the crossover behind model.EXPLICIT_ATTENTION_MAX_LEN: predicting on the CPU, attention
is the explicit softmax(q·kᵀ/√hd + bias)·v up to that many tokens and SDPA (flash) beyond. Times a
MiniLM-shaped model's inference forward (random weights: speed depends on shapes only) over ~4,096
tokens per batch at several lengths, with attention forced to each implementation, interleaved.

    .venv/bin/python benchmarks/adhoc/attention_crossover.py [THREADS=1] [REPEATS=7]

A ratio explicit / sdpa below 1 means the explicit product is faster at that length.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from bertfit import model as model_module
from bertfit.config import BertConfig
from bertfit.heads import BertForSequenceClassification

LENGTHS = (16, 32, 48, 64, 96, 128, 256, 512)
TOKENS = 4096


def main(threads: int, repeats: int) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536, max_position_embeddings=512).with_labels(["a", "b", "c"])
    model = BertForSequenceClassification(config).eval()
    print(f"{threads} thread(s), ~{TOKENS} tokens per batch, {repeats} interleaved repeats; current "
          f"EXPLICIT_ATTENTION_MAX_LEN = {model_module.EXPLICIT_ATTENTION_MAX_LEN}")
    for length in LENGTHS:
        batch = max(1, TOKENS // length)
        ids = torch.randint(5, 30522, (batch, length))
        mask = torch.ones_like(ids)
        mask[1::2, length * 3 // 4 :] = 0  # some padding, so attention needs its mask
        times = {"explicit": [], "sdpa": []}
        with torch.inference_mode():
            for r in range(repeats + 1):
                for kind, limit in (("explicit", 10**6), ("sdpa", 0)):
                    model_module.EXPLICIT_ATTENTION_MAX_LEN = limit
                    start = time.perf_counter()
                    model(ids, mask)
                    if r:  # the first round warms up
                        times[kind].append(time.perf_counter() - start)
        explicit, sdpa = statistics.median(times["explicit"]), statistics.median(times["sdpa"])
        print(f"T={length:4d} B={batch:4d}: explicit {1000 * explicit:7.1f} ms  sdpa {1000 * sdpa:7.1f} ms  "
              f"explicit/sdpa {explicit / sdpa:.3f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1, int(sys.argv[2]) if len(sys.argv) > 2 else 7)
