"""Measures the crossover behind model.PACK_MIN_PADDING: the fast path packs a batch's real tokens
only when at least that fraction of its B·T positions is padding. Times one training forward +
backward of a MiniLM-shaped model (random weights: speed depends on shapes only) on batches of 32
texts with a given padding fraction, packed vs padded, interleaved; prints packed / padded time.

    .venv/bin/python benchmarks/adhoc/pack_min_padding.py [THREADS=1] [REPEATS=7]

A ratio below 1 means packing pays. The constant should sit where the ratio crosses 1.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from bertfit import model as model_module
from bertfit.config import BertConfig
from bertfit.heads import BertForSequenceClassification

B, T = 32, 48
FRACTIONS = (0.0, 0.01, 0.02, 0.03, 0.05, 0.10, 0.20, 0.30)


def batch(padding: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of B texts of at most T tokens with about `padding` of the B·T positions padding."""
    pad_total = round(padding * B * T)
    lengths = torch.full((B,), T)
    for i in torch.randint(0, B, (pad_total,), generator=generator).tolist():  # spread the padding
        if lengths[i] > 2:
            lengths[i] -= 1
    lengths[0] = T  # one text of full length, as in a real batch
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    ids = torch.randint(5, 30522, (B, T), generator=generator) * mask
    return ids, mask


def step_seconds(model, ids, mask, labels) -> float:
    start = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(model(ids, mask), labels)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main(threads: int, repeats: int) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536, max_position_embeddings=512).with_labels(["a", "b", "c"])
    model = BertForSequenceClassification(config).train()
    generator = torch.Generator().manual_seed(0)
    labels = torch.zeros(B, dtype=torch.long)
    print(f"{threads} thread(s), B={B}, T={T}, {repeats} interleaved repeats; current PACK_MIN_PADDING = "
          f"{model_module.PACK_MIN_PADDING}")
    for fraction in FRACTIONS:
        ids, mask = batch(fraction, generator)
        real_padding = 1 - int(mask.sum()) / (B * T)
        times = {"packed": [], "padded": []}
        for r in range(repeats + 1):
            for layout, threshold in (("packed", 0.0), ("padded", 1.0)):  # 0: always pack; 1: never
                model_module.PACK_MIN_PADDING = threshold
                seconds = step_seconds(model, ids, mask, labels)
                if r:  # the first round warms up
                    times[layout].append(seconds)
        packed, padded = statistics.median(times["packed"]), statistics.median(times["padded"])
        print(f"padding {real_padding:6.1%}: packed {1000 * packed:7.1f} ms  padded {1000 * padded:7.1f} ms  "
              f"packed/padded {packed / padded:.3f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1, int(sys.argv[2]) if len(sys.argv) > 2 else 7)
