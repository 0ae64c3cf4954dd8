"""Prediction batching: sorted batches for the packed path, cost-minimizing cuts for padded engines."""

from __future__ import annotations

import itertools
import random

import pytest

from bertfit.batching import inference_batches, padded_batches


def cost(batches, lengths, overhead):
    return sum(overhead + len(b) * max(lengths[i] for i in b) for b in batches)


def check_partition(batches, lengths, max_tokens, max_batch):
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))  # every text exactly once
    for b in batches:
        assert 1 <= len(b) <= max_batch
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= max_tokens


def brute_force(lengths, max_tokens, max_batch, overhead):
    """The cheapest cut of the length-sorted texts into contiguous batches, by trying them all."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    best = None
    for cuts in itertools.product([False, True], repeat=len(order) - 1):
        batches, current = [], [order[0]]
        for i, new in zip(order[1:], cuts):
            if new:
                batches.append(current)
                current = []
            current.append(i)
        batches.append(current)
        if all(len(b) <= max_batch and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= max_tokens) for b in batches):
            c = cost(batches, lengths, overhead)
            best = c if best is None else min(best, c)
    return best


@pytest.mark.parametrize("seed", range(20))
def test_padded_batches_find_the_cheapest_cuts(seed):
    rng = random.Random(seed)
    lengths = [rng.choice([rng.randint(3, 12), rng.randint(20, 80)]) for _ in range(rng.randint(1, 11))]
    max_batch, max_tokens, overhead = rng.randint(1, 6), rng.choice([64, 200, 8192]), rng.choice([0, 16, 64])
    batches = padded_batches(lengths, max_tokens, max_batch, overhead)
    check_partition(batches, lengths, max_tokens, max_batch)
    assert cost(batches, lengths, overhead) == brute_force(lengths, max_tokens, max_batch, overhead)


def test_padded_batches_cut_where_lengths_jump_and_fill_equal_lengths():
    lengths = [10] * 8 + [60] * 8
    batches = padded_batches(lengths, 8192, 16, overhead_tokens=16)
    assert sorted(map(sorted, batches)) == [list(range(8)), list(range(8, 16))]  # not one batch padded to 60
    equal = padded_batches([30] * 40, 8192, 16, overhead_tokens=16)
    assert len(equal) == 3 and all(len(b) <= 16 for b in equal)  # no padding: the fewest calls
    # One text longer than the token budget still gets a batch of its own.
    assert padded_batches([500, 5], 100, 16, 16) == [[0], [1]]
    assert padded_batches([], 100, 16, 16) == []


def test_inference_batches_cover_every_text_within_limits():
    rng = random.Random(0)
    lengths = [rng.randint(1, 128) for _ in range(500)]
    batches = inference_batches(lengths, 2048, 64)
    check_partition(batches, lengths, 2048, 64)


# -- the training order: arrays, 8 bytes an example ---------------------------------------------

def test_epoch_batches_are_an_int_array_partition_fixed_by_seed_and_epoch():
    import numpy as np

    from bertfit.batching import epoch_batches, same_order

    rng = random.Random(3)
    lengths = [rng.randint(3, 128) for _ in range(5000)]
    order = epoch_batches(lengths, 32, seed=7, epoch=2, window=10)
    assert all(isinstance(b, np.ndarray) and b.dtype == np.int32 and 1 <= len(b) <= 32 for b in order)
    assert sorted(int(i) for b in order for i in b) == list(range(len(lengths)))
    # a resume recomputes it, and a checkpoint's JSON lists compare equal to it
    assert same_order(order, epoch_batches(lengths, 32, seed=7, epoch=2, window=10))
    assert same_order(order, [b.tolist() for b in order])
    assert not same_order(order, epoch_batches(lengths, 32, seed=7, epoch=3, window=10))
    assert not same_order(order, order[:-1])
    # the memory of an epoch's order does not hold a Python object per example
    assert sum(b.nbytes for b in order) == 4 * len(lengths)


def test_split_lengths_are_one_array_for_memory_and_mapped_features(tmp_path):
    import numpy as np

    from bertfit.batching import EncodedSplit
    from bertfit.data.token_cache import CachedEncodings
    from bertfit.tokenizer import Encoded

    encoded = [Encoded([1] * n, [0] * n, n == 9) for n in (4, 9, 2)]
    split = EncodedSplit(encoded, targets=np.zeros(3))
    assert split.lengths.dtype == np.int32 and split.lengths.tolist() == [4, 9, 2]

    import pyarrow as pa

    table = pa.table({"ids": pa.array([e.ids for e in encoded], pa.list_(pa.int32())),
                      "type_ids": pa.array([e.type_ids for e in encoded], pa.list_(pa.int8())),
                      "truncated": pa.array([e.truncated for e in encoded])})
    mapped = EncodedSplit(CachedEncodings(tmp_path / "x.arrow", table), targets=np.zeros(3))
    assert mapped.lengths.dtype == np.int32 and mapped.lengths.tolist() == [4, 9, 2]
    assert list(mapped.encoded) == encoded and mapped.encoded[-1] == encoded[-1] and mapped.encoded[1:] == encoded[1:]
    assert mapped.encoded.truncated.tolist() == [False, True, False]
    with pytest.raises(IndexError):
        mapped.encoded[3]
