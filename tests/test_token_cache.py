"""The tokenized cache on disk (data/token_cache.py): the same features as tokenizing in memory, bit for bit;
reused by a later run without tokenizing; never stale (a changed text, length or tokenizer is another
key); a damaged file is rebuilt; training through it gives bit-identical weights, also across a resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("pyarrow")

from bertfit.data import token_cache  # noqa: E402
from bertfit.tasks import windows  # noqa: E402
from bertfit.tokenizer import WordPieceTokenizer  # noqa: E402
from conftest import synthetic_rows, write_csv  # noqa: E402


@pytest.fixture
def always_cache(monkeypatch):
    monkeypatch.setenv("BERTFIT_TOKEN_CACHE_MIN", "1")
    monkeypatch.delenv("BERTFIT_TOKEN_CACHE", raising=False)


@pytest.fixture
def tokenizer(tiny_model_dir) -> WordPieceTokenizer:
    return WordPieceTokenizer.from_dir(tiny_model_dir)


def texts(n: int = 300) -> list[str]:
    return [t for t, _ in synthetic_rows(n, seed=9)]


def same(a, b) -> bool:
    return len(a) == len(b) and all((x.ids, x.type_ids, x.truncated) == (y.ids, y.type_ids, y.truncated)
                                    for x, y in zip(a, b))


def test_cached_features_equal_the_tokenizers_for_texts_and_pairs(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr(token_cache, "CHUNK", 64)  # several record batches
    items = texts()
    pairs = list(reversed(items))
    for pair_list, max_length in ((None, 12), (pairs, 16), (None, 128)):
        cached = token_cache.encode_cached(tokenizer, items, pair_list, max_length, directory=tmp_path)
        fresh = tokenizer.encode(items, pair_list, max_length=max_length)
        assert same(cached, fresh)
        assert cached.lengths.tolist() == [len(e.ids) for e in fresh]
        assert any(e.truncated for e in fresh) or max_length == 128
        assert same(cached[-3:], fresh[-3:]) and same([cached[-1]], [fresh[-1]])
    assert len(list(tmp_path.glob("*.arrow"))) == 3  # one file per (texts, pairs, max_length)


def test_a_second_run_reuses_the_file_without_tokenizing(tokenizer, tmp_path, monkeypatch):
    items = texts()
    first = token_cache.encode_cached(tokenizer, items, None, 16, directory=tmp_path)

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(tokenizer, "encode", no_tokenizing)
    again = token_cache.encode_cached(tokenizer, list(items), None, 16, directory=tmp_path)
    assert again.path == first.path and same(again, first)
    # A changed text, max_length or tokenizer is another key: tokenized, never the stale file.
    for changed in ((items[:-1] + ["a new text"], 16), (items, 17)):
        with pytest.raises(AssertionError, match="tokenized again"):
            token_cache.encode_cached(tokenizer, changed[0], None, changed[1], directory=tmp_path)


def test_the_key_covers_the_tokenizer_the_texts_and_their_order(tokenizer, tiny_model_dir, tmp_path):
    items = texts(20)
    key = token_cache.fingerprint(tokenizer, items, None, 32)
    assert key == token_cache.fingerprint(WordPieceTokenizer.from_dir(tiny_model_dir), list(items), None, 32)
    tokenizer.encode(["x"], max_length=7)  # a call's truncation setting is not part of the tokenizer
    assert key == token_cache.fingerprint(tokenizer, items, None, 32)
    assert key != token_cache.fingerprint(tokenizer, items[1:] + items[:1], None, 32)
    assert key != token_cache.fingerprint(tokenizer, ["ab", "c"], None, 32) or items == ["ab", "c"]
    assert token_cache.fingerprint(tokenizer, ["ab", "c"], None, 32) != token_cache.fingerprint(tokenizer, ["a", "bc"], None, 32)
    assert key != token_cache.fingerprint(tokenizer, items, items, 32)
    cased_dir = tmp_path / "cased"
    cased_dir.mkdir()
    for name in ("vocab.txt", "config.json"):
        (cased_dir / name).write_bytes((tiny_model_dir / name).read_bytes())
    (cased_dir / "tokenizer_config.json").write_text('{"do_lower_case": false}', encoding="utf-8")
    cased = WordPieceTokenizer.from_vocab(cased_dir / "vocab.txt", do_lower_case=False)
    assert key != token_cache.fingerprint(cased, items, None, 32)


def test_a_damaged_cache_file_is_tokenized_again(tokenizer, tmp_path):
    items = texts()
    cached = token_cache.encode_cached(tokenizer, items, None, 16, directory=tmp_path)
    path = Path(cached.path)
    del cached
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    rebuilt = token_cache.encode_cached(tokenizer, items, None, 16, directory=tmp_path)
    assert same(rebuilt, tokenizer.encode(items, max_length=16))


def test_one_pass_over_every_feature_reads_the_file_in_order_and_notices_a_replaced_one(tokenizer, tmp_path,
                                                                                          monkeypatch):
    """arrays() (the training data's fingerprint) reads the file a record batch at a time rather than
    through the mapping, so the pass does not leave every page of a large store resident: the same
    features in the same order as the mapped ones; a file replaced since it was opened is an error, never
    other data hashed silently."""
    from bertfit.train.loop import data_fingerprint
    from bertfit.batching import EncodedSplit

    monkeypatch.setattr(token_cache, "CHUNK", 64)  # several record batches
    items = texts()
    cached = token_cache.encode_cached(tokenizer, items, None, 16, directory=tmp_path)
    fresh = tokenizer.encode(items, max_length=16)
    rows = list(cached.arrays())
    assert [(ids.tolist(), types.tolist()) for ids, types in rows] == [(e.ids, e.type_ids) for e in fresh]
    assert data_fingerprint(EncodedSplit(cached, None)) == data_fingerprint(EncodedSplit(fresh, None))

    other = token_cache.encode_cached(tokenizer, items[:100], None, 16, directory=tmp_path)
    Path(other.path).replace(cached.path)  # the mapping still shows the old file; the path, the new one
    with pytest.raises(RuntimeError, match="holds 100 features now, 300 when it was opened"):
        list(cached.arrays())


def test_small_splits_and_the_switch_skip_the_cache(monkeypatch):
    monkeypatch.delenv("BERTFIT_TOKEN_CACHE_MIN", raising=False)
    assert not token_cache.cache_enabled(100) and token_cache.cache_enabled(50_000)
    monkeypatch.setenv("BERTFIT_TOKEN_CACHE", "0")
    assert not token_cache.cache_enabled(50_000)


def test_the_sequence_tasks_encode_through_the_cache(always_cache, tokenizer):
    items = texts()
    features = windows.encode(tokenizer, items, None, 16)
    assert isinstance(features.encoded, token_cache.CachedEncodings)
    assert same(features.encoded, tokenizer.encode(items, max_length=16))


def weights(run) -> dict:
    return load_file(str(Path(run.run_dir) / "model.safetensors"))


def test_training_through_the_cache_gives_bit_identical_weights(tmp_path, tiny_model_dir, monkeypatch):
    from bertfit.train.config import TrainConfig
    from bertfit.train.finetune import fine_tune

    train = write_csv(tmp_path / "d.csv", synthetic_rows(200, seed=4))
    common = dict(train_file=str(train), model=str(tiny_model_dir), max_length=32, batch_size=16, lr=5e-4,
                  max_steps=8, eval_each_epoch=False, save_every=100, seed=0, bf16=False)
    monkeypatch.setenv("BERTFIT_TOKEN_CACHE", "0")
    plain = fine_tune(TrainConfig(output_dir=str(tmp_path / "plain"), **common))
    monkeypatch.setenv("BERTFIT_TOKEN_CACHE", "1")
    monkeypatch.setenv("BERTFIT_TOKEN_CACHE_MIN", "1")
    monkeypatch.setenv("BERTFIT_CACHE", str(tmp_path / "cache"))
    cached = fine_tune(TrainConfig(output_dir=str(tmp_path / "cached"), **common))
    files = sorted((tmp_path / "cache" / "tokens").glob("*.arrow"))
    assert len(files) == 3  # train, validation and test
    again = fine_tune(TrainConfig(output_dir=str(tmp_path / "again"), **common))  # reads the files
    assert sorted((tmp_path / "cache" / "tokens").glob("*.arrow")) == files
    a, b, c = weights(plain), weights(cached), weights(again)
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]) for k in a)
    assert plain.metrics == cached.metrics == again.metrics


def test_an_interrupted_run_resumed_through_the_cache_is_bit_identical(tmp_path, tiny_model_dir, monkeypatch):
    from bertfit.train.config import TrainConfig
    from bertfit.train.finetune import fine_tune

    monkeypatch.setenv("BERTFIT_TOKEN_CACHE_MIN", "1")
    monkeypatch.setenv("BERTFIT_CACHE", str(tmp_path / "cache"))
    train = write_csv(tmp_path / "d.csv", synthetic_rows(200, seed=4))
    common = dict(train_file=str(train), model=str(tiny_model_dir), max_length=32, batch_size=16, lr=5e-4,
                  max_steps=8, eval_each_epoch=False, save_every=4, log_every=1, seed=0, bf16=False)
    whole = fine_tune(TrainConfig(output_dir=str(tmp_path / "whole"), **common))

    def stop_after_step_5(record, *args):
        if record.get("kind") == "train" and record.get("step") == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fine_tune(TrainConfig(output_dir=str(tmp_path / "resumed"), **common), callback=stop_after_step_5)
    resumed = fine_tune(TrainConfig(output_dir=str(tmp_path / "resumed"), **common), resume=True)
    a, b = weights(whole), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_of_two_processes_reading_the_same_split_only_one_tokenizes(tmp_path, tiny_model_dir):
    """What the ranks of a distributed job do: each asks for the split's features; the first takes the
    lock and tokenizes (slowly here, so the second surely waits), the second maps the file it wrote."""
    import subprocess
    import sys

    script = tmp_path / "rank.py"
    script.write_text(f'''
import hashlib, sys, time
from bertfit.data import token_cache
from bertfit.tokenizer import WordPieceTokenizer
tokenizer = WordPieceTokenizer.from_dir({str(tiny_model_dir)!r})
real = tokenizer.encode
def slow(*args, **kwargs):
    print("TOKENIZING", flush=True)
    time.sleep(2)
    return real(*args, **kwargs)
tokenizer.encode = slow
texts = [f"the movie number {{i}} was good" for i in range(500)]
features = token_cache.encode_cached(tokenizer, texts, None, 16, directory={str(tmp_path / "tokens")!r})
print("DIGEST", hashlib.sha256(repr([(e.ids, e.type_ids) for e in features]).encode()).hexdigest())
''', encoding="utf-8")
    import os

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    ranks = [subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for _ in range(2)]
    outputs = [rank.communicate(timeout=120) for rank in ranks]
    assert all(rank.returncode == 0 for rank in ranks), [err for _, err in outputs]
    stdout = [out for out, _ in outputs]
    assert sum(out.count("TOKENIZING") for out in stdout) == 1
    digests = {line for out in stdout for line in out.splitlines() if line.startswith("DIGEST")}
    assert len(digests) == 1


def test_the_memory_the_features_hold_does_not_grow_with_the_rows(tokenizer, tmp_path):
    """Python memory (tracemalloc) held by the features of 4,000 and of 40,000 texts, and its peak while
    tokenizing: in memory it grows with the rows; through the cache, mapped, it does not (the peak is a
    chunk's, CHUNK texts at a time)."""
    import gc
    import tracemalloc

    def measure(make, n):
        items = [f"{t} {i}" for i, t in enumerate(texts(n))]
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        features = make(items)
        held, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert len(features) == n
        return held - base, peak - base

    token_cache.encode_cached(tokenizer, ["warm up"], None, 32, directory=tmp_path)  # imports pyarrow first
    cached = [measure(lambda items: token_cache.encode_cached(tokenizer, items, None, 32, directory=tmp_path), n)
              for n in (4000, 40000)]
    memory = [measure(lambda items: tokenizer.encode(items, max_length=32), n) for n in (4000, 40000)]
    assert memory[1][0] > 8 * memory[0][0]  # in memory: 10x the rows, ~10x the memory held
    assert cached[1][0] < 1.5 * cached[0][0] + 200_000  # mapped: about the same (~30 KB of views)
    assert cached[1][0] < memory[1][0] / 100
    assert cached[1][1] < 2 * cached[0][1]  # the peak while building: a chunk's, not the split's
