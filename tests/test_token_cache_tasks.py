"""The tokenized cache for the tasks whose features are more than ids (data/token_cache.py's FeatureCodec):
NER's windows with their label alignment, QA's windows with offsets and answer positions, long texts read
in windows. The same features as encoding in memory, value for value; the key covers every setting that
changes them (change one: encoded again, never the stale file; the same: read, not encoded); a damaged
store is rebuilt; training NER and QA through it gives bit-identical weights, also across a resume."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("pyarrow")

from bertfit.data import token_cache  # noqa: E402
from bertfit.tasks import windows as long_text  # noqa: E402
from bertfit.tasks.ner import encode as ner_encode  # noqa: E402
from bertfit.tasks.ner.data import from_tokens  # noqa: E402
from bertfit.tasks.qa import windows as qa_windows  # noqa: E402
from bertfit.tokenizer import WordPieceTokenizer  # noqa: E402
from conftest import NEGATIVE, POSITIVE, WORDS, synthetic_rows, write_csv  # noqa: E402

TAGS = {"O": 0, "B-POS": 1, "I-POS": 2, "B-NEG": 3, "I-NEG": 4}


@pytest.fixture
def tokenizer(tiny_model_dir) -> WordPieceTokenizer:
    return WordPieceTokenizer.from_dir(tiny_model_dir)


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(token_cache, "CHUNK", 16)  # several record batches, examples split across chunks


def sentences(n: int, seed: int = 1, labelled: bool = True) -> list:
    """Filler words with sentiment words tagged as entities; lengths 1..40 words, so windows of 12 split many."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words, tags = [], []
        for _ in range(rng.randint(1, 40)):
            if rng.random() < 0.2:
                kind, word = ("POS", rng.choice(POSITIVE)) if rng.random() < 0.5 else ("NEG", rng.choice(NEGATIVE))
                words += [word, rng.choice(WORDS)]
                tags += [f"B-{kind}", f"I-{kind}"]
            else:
                words.append(rng.choice(WORDS))
                tags.append("O")
        out.append(from_tokens(words, tags if labelled else None, row=i))
    return out


def same_encoded(a, b) -> bool:
    return len(a) == len(b) and all((x.ids, x.type_ids, x.truncated) == (y.ids, y.type_ids, y.truncated)
                                    for x, y in zip(a, b))


def same_arrays(a, b) -> bool:
    return len(a) == len(b) and all(np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y)
                                    for x, y in zip(a, b))


# -- NER ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("max_length,stride,label_all,labelled", [(12, None, False, True), (12, 3, True, True),
                                                                  (64, None, False, True), (12, 4, False, False)])
def test_ner_windows_from_the_cache_equal_the_in_memory_ones(tokenizer, small_chunks, tmp_path, monkeypatch,
                                                             max_length, stride, label_all, labelled):
    monkeypatch.setenv("BERTFIT_CACHE", str(tmp_path))
    items = sentences(150, labelled=labelled)
    index = TAGS if labelled else None
    encoded, targets, windows, _ = ner_encode.encode_windows(tokenizer, items, max_length, stride, index, label_all)
    c_encoded, c_targets, c_windows = ner_encode.encode_cached(tokenizer, items, max_length, stride, index, label_all)
    assert same_encoded(c_encoded, encoded)
    assert (c_targets is None) == (not labelled) and (not labelled or same_arrays(c_targets, targets))
    assert len(c_windows) == len(windows) and len(windows) > len(items) * (max_length == 12)
    for x, y in zip(c_windows, windows):
        assert (x.example, x.start, x.length) == (y.example, y.start, y.length)
        assert x.words.dtype == y.words.dtype and np.array_equal(x.words, y.words)
    assert c_windows.example_index.tolist() == [w.example for w in windows]
    outputs = [np.random.default_rng(i).normal(size=(len(e.ids), 5)).astype(np.float32) for i, e in enumerate(encoded)]
    counts = [len(s.words) for s in items]
    assert same_arrays(ner_encode.stitch(outputs, c_windows, counts), ner_encode.stitch(outputs, windows, counts))


def test_the_ner_key_covers_every_setting_that_changes_the_features(tokenizer, tmp_path, monkeypatch):
    """The same sentences and settings: read from the file, not encoded again. A changed stride, length, label
    map, label_all_subwords, word or tag: encoded again (never the stale file)."""
    monkeypatch.setenv("BERTFIT_CACHE", str(tmp_path))
    items = sentences(60)
    base = dict(max_length=12, stride=3, tag_index=TAGS, label_all=False)
    ner_encode.encode_cached(tokenizer, items, **base)
    real = tokenizer.encode_words

    def refuse(*args, **kwargs):
        raise AssertionError("encoded again")

    monkeypatch.setattr(tokenizer, "encode_words", refuse)
    ner_encode.encode_cached(tokenizer, list(items), **base)  # read back
    renamed = {"O": 0, "B-POS": 3, "I-POS": 4, "B-NEG": 1, "I-NEG": 2}
    retagged = items[:-1] + [from_tokens(items[-1].words, ["O"] * len(items[-1].words))]
    reworded = items[:-1] + [from_tokens(("good",) + items[-1].words[1:], items[-1].tags)]
    changes = [(items, dict(base, stride=4)), (items, dict(base, max_length=13)), (items, dict(base, tag_index=renamed)),
               (items, dict(base, label_all=True)), (items, dict(base, tag_index=None)), (retagged, base),
               (reworded, base)]
    for changed_items, changed in changes:
        with pytest.raises(AssertionError, match="encoded again"):
            ner_encode.encode_cached(tokenizer, changed_items, **changed)
    monkeypatch.setattr(tokenizer, "encode_words", real)
    files = {p.name for p in tmp_path.glob("tokens/*.features.arrow")}
    for changed_items, changed in changes:
        ner_encode.encode_cached(tokenizer, changed_items, **changed)
    assert len({p.name for p in tmp_path.glob("tokens/*.features.arrow")} - files) == len(changes)


def test_a_damaged_feature_store_is_encoded_again(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("BERTFIT_CACHE", str(tmp_path))
    items = sentences(60)
    encoded, targets, _, _ = ner_encode.encode_windows(tokenizer, items, 12, None, TAGS)
    first = ner_encode.encode_cached(tokenizer, items, 12, None, TAGS)
    path = Path(first[0].path)
    del first
    for damaged in (path, token_cache.examples_path(path)):
        data = damaged.read_bytes()
        damaged.write_bytes(data[: len(data) // 2])
        c_encoded, c_targets, _ = ner_encode.encode_cached(tokenizer, items, 12, None, TAGS)
        assert same_encoded(c_encoded, encoded) and same_arrays(c_targets, targets)


# -- QA ----------------------------------------------------------------------------------------------

def qa_examples(n: int, seed: int = 2) -> tuple[list[str], list[str], list]:
    rng = random.Random(seed)
    questions, contexts, answers = [], [], []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 60))]
        answer = rng.choice(POSITIVE)
        k = rng.randrange(len(words) + 1)
        context = " ".join(words[:k] + [answer] + words[k:])
        long_question = i % 17 == 0  # longer than the question limit: cut
        questions.append("  the " + " ".join(rng.choice(WORDS) for _ in range(30 if long_question else 2)))
        contexts.append(context)
        answers.append(None if i % 5 == 0 else (answer, context.index(answer)))
    return questions, contexts, answers


@pytest.mark.parametrize("max_length,stride", [(32, 8), (48, 16)])
def test_qa_windows_from_the_cache_equal_the_in_memory_ones(tokenizer, small_chunks, tmp_path, monkeypatch,
                                                            max_length, stride):
    monkeypatch.setenv("BERTFIT_CACHE", str(tmp_path))
    questions, contexts, answers = qa_examples(120)
    w = qa_windows.encode_windows(tokenizer, questions, contexts, answers, max_length, stride, 12)
    c = qa_windows.encode_windows_cached(tokenizer, questions, contexts, answers, max_length, stride, 12)
    assert len(w) > len(questions) and w.questions_cut > 0  # windows split contexts; questions were cut
    assert same_encoded(c.encoded, w.encoded)
    for name in ("example_index", "context_start", "targets", "context_tokens", "question_cut"):
        got, want = getattr(c, name), getattr(w, name)
        assert got.dtype == want.dtype and np.array_equal(got, want), name
    for name in ("offsets", "word_ids", "max_context"):
        assert same_arrays(getattr(c, name), getattr(w, name)), name
    assert (c.questions, c.contexts, c.questions_cut) == (w.questions, w.contexts, w.questions_cut)
    assert c.windows_of() == w.windows_of()


def test_the_qa_key_covers_the_stride_the_length_and_the_answers(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("BERTFIT_CACHE", str(tmp_path))
    questions, contexts, answers = qa_examples(40)
    qa_windows.encode_windows_cached(tokenizer, questions, contexts, answers, 32, 8)

    def refuse(*args, **kwargs):
        raise AssertionError("encoded again")

    monkeypatch.setattr(tokenizer, "encode_windows", refuse)
    qa_windows.encode_windows_cached(tokenizer, list(questions), list(contexts), list(answers), 32, 8)
    moved = answers[:-1] + [(answers[-1][0], answers[-1][1] + 1) if answers[-1] else ("good", 0)]
    for args in ((questions, contexts, answers, 32, 9), (questions, contexts, answers, 33, 8),
                 (questions, contexts, moved, 32, 8), (questions[::-1], contexts[::-1], answers[::-1], 32, 8)):
        with pytest.raises(AssertionError, match="encoded again"):
            qa_windows.encode_windows_cached(tokenizer, *args)


# -- long texts in windows (sequence tasks) -----------------------------------------------------------

@pytest.mark.parametrize("settings,pairs", [
    (long_text.LongText(long_text="windows", window_stride=3, max_windows=4), False),
    (long_text.LongText(long_text="windows", window_aggregate="max"), True),
    (long_text.LongText(truncation="head+tail", head_tokens=3), True),
    (long_text.LongText(truncation="tail"), False)])
def test_long_text_features_from_the_cache_equal_the_in_memory_ones(tokenizer, small_chunks, tmp_path, monkeypatch,
                                                                    settings, pairs):
    monkeypatch.setenv("BERTFIT_CACHE", str(tmp_path))
    texts = [" ".join([t] * (1 + i % 4)) for i, (t, _) in enumerate(synthetic_rows(100, seed=5))]
    pair_texts = [t for t, _ in synthetic_rows(100, seed=6)] if pairs else None
    monkeypatch.setenv("BERTFIT_TOKEN_CACHE", "0")
    plain = long_text.encode(tokenizer, texts, pair_texts, 16, settings)
    monkeypatch.setenv("BERTFIT_TOKEN_CACHE", "1")
    monkeypatch.setenv("BERTFIT_TOKEN_CACHE_MIN", "1")
    cached = long_text.encode(tokenizer, texts, pair_texts, 16, settings)
    assert isinstance(cached.encoded, token_cache.CachedEncodings)
    assert same_encoded(cached.encoded, plain.encoded) and any(e.truncated for e in plain.encoded)
    assert cached.example_index.dtype == plain.example_index.dtype
    assert np.array_equal(cached.example_index, plain.example_index) and cached.n_examples == plain.n_examples
    assert long_text.summary([cached], 16) == long_text.summary([plain], 16)
    # Another setting is another key: its features, not these.
    other = long_text.LongText(long_text="windows", window_stride=5, max_windows=4)
    if other != settings:
        assert same_encoded(long_text.encode(tokenizer, texts, pair_texts, 16, other).encoded,
                            long_text.build(tokenizer.encode_pieces(texts),
                                            None if pair_texts is None else tokenizer.encode_pieces(pair_texts), 16,
                                            other, tokenizer.cls_id, tokenizer.sep_id).encoded)


# -- training through the cache ------------------------------------------------------------------------

def write_conll(path: Path, items) -> Path:
    path.write_text("".join("".join(f"{w}\t{t}\n" for w, t in zip(s.words, s.tags)) + "\n" for s in items),
                    encoding="utf-8")
    return path


def weights(run) -> dict:
    return load_file(str(Path(run.run_dir) / "model.safetensors"))


def train_plain_then_cached(tmp_path, monkeypatch, common: dict) -> tuple:
    from bertfit.train.config import TrainConfig
    from bertfit.train.finetune import fine_tune

    monkeypatch.setenv("BERTFIT_TOKEN_CACHE", "0")
    plain = fine_tune(TrainConfig(output_dir=str(tmp_path / "plain"), **common))
    monkeypatch.setenv("BERTFIT_TOKEN_CACHE", "1")
    monkeypatch.setenv("BERTFIT_TOKEN_CACHE_MIN", "1")
    monkeypatch.setenv("BERTFIT_CACHE", str(tmp_path / "cache"))
    cached = fine_tune(TrainConfig(output_dir=str(tmp_path / "cached"), **common))
    files = sorted((tmp_path / "cache" / "tokens").glob("*.features.arrow"))
    assert len(files) == 3  # train, validation and test
    again = fine_tune(TrainConfig(output_dir=str(tmp_path / "again"), **common))  # maps the files
    assert sorted((tmp_path / "cache" / "tokens").glob("*.features.arrow")) == files
    return plain, cached, again


def assert_identical(*runs) -> None:
    first = weights(runs[0])
    for run in runs[1:]:
        other = weights(run)
        assert first.keys() == other.keys() and all(torch.equal(first[k], other[k]) for k in first)
        assert run.metrics == runs[0].metrics


def test_training_ner_through_the_cache_gives_bit_identical_weights(tmp_path, tiny_model_dir, monkeypatch):
    train = write_conll(tmp_path / "train.conll", sentences(120, seed=3))
    common = dict(train_file=str(train), problem_type="ner", model=str(tiny_model_dir), max_length=12, window_stride=4,
                  batch_size=8, lr=5e-4, max_steps=6, eval_each_epoch=False, save_every=100, seed=0, bf16=False,
                  class_weights="balanced")
    assert_identical(*train_plain_then_cached(tmp_path, monkeypatch, common))


def test_training_qa_through_the_cache_gives_bit_identical_weights(tmp_path, tiny_model_dir, monkeypatch):
    questions, contexts, answers = qa_examples(120, seed=4)
    rows = [{"id": str(i), "question": q, "context": c,
             "answers": {"text": [a[0]] if a else [], "answer_start": [a[1]] if a else []}, "is_impossible": a is None}
            for i, (q, c, a) in enumerate(zip(questions, contexts, answers))]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    common = dict(train_file=str(train), problem_type="qa", model=str(tiny_model_dir), max_length=32, doc_stride=8,
                  batch_size=8, lr=5e-4, max_steps=6, eval_each_epoch=False, save_every=100, seed=0, bf16=False)
    assert_identical(*train_plain_then_cached(tmp_path, monkeypatch, common))


def test_a_ner_run_resumed_through_the_cache_is_bit_identical(tmp_path, tiny_model_dir, monkeypatch):
    from bertfit.train.config import TrainConfig
    from bertfit.train.finetune import fine_tune

    monkeypatch.setenv("BERTFIT_TOKEN_CACHE_MIN", "1")
    monkeypatch.setenv("BERTFIT_CACHE", str(tmp_path / "cache"))
    train = write_conll(tmp_path / "train.conll", sentences(120, seed=3))
    common = dict(train_file=str(train), problem_type="ner", model=str(tiny_model_dir), max_length=12, batch_size=8,
                  lr=5e-4, max_steps=8, eval_each_epoch=False, save_every=4, log_every=1, seed=0, bf16=False)
    whole = fine_tune(TrainConfig(output_dir=str(tmp_path / "whole"), **common))

    def stop_after_step_5(record, *args):
        if record.get("kind") == "train" and record.get("step") == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fine_tune(TrainConfig(output_dir=str(tmp_path / "resumed"), **common), callback=stop_after_step_5)
    resumed = fine_tune(TrainConfig(output_dir=str(tmp_path / "resumed"), **common), resume=True)
    a, b = weights(whole), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(list((tmp_path / "cache" / "tokens").glob("*.features.arrow"))) == 3


def test_sentiment_on_long_texts_in_windows_through_the_cache_gives_bit_identical_weights(tmp_path, tiny_model_dir,
                                                                                         monkeypatch):
    rows = [(" ".join([t] * (1 + i % 4)), label) for i, (t, label) in enumerate(synthetic_rows(150, seed=4))]
    train = write_csv(tmp_path / "d.csv", rows)
    common = dict(train_file=str(train), model=str(tiny_model_dir), max_length=16, long_text="windows", window_stride=4,
                  batch_size=8, lr=5e-4, max_steps=6, eval_each_epoch=False, save_every=100, seed=0, bf16=False)
    assert_identical(*train_plain_then_cached(tmp_path, monkeypatch, common))


# -- the CLI's progress bar ------------------------------------------------------------------------------

def test_the_cli_draws_the_cache_build_as_a_bar_instead_of_a_line_per_chunk(tmp_path, tiny_model_dir):
    """`bertfit train` on a split tokenized through the cache: stderr shows tqdm's bar (its counter and the
    unit), not the library's "tokenized N of M" line per chunk (those are the bar's alone)."""
    import os
    import subprocess
    import sys

    train = write_conll(tmp_path / "train.conll", sentences(150, seed=3))
    env = {**os.environ, "BERTFIT_TOKEN_CACHE_MIN": "1", "BERTFIT_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    result = subprocess.run([sys.executable, "-m", "bertfit", "train", "--train-file", str(train), "--problem-type", "ner",
                             "--model", str(tiny_model_dir), "--max-length", "12", "--max-steps", "1", "--no-bf16",
                             "--output-dir", str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    import re

    assert "tokenizing into the cache" in result.stderr and re.search(r"\d+/\d+ \[", result.stderr)  # tqdm's n/total [time
    assert not re.search(r"^tokenized \d+ of \d+", result.stderr, re.M)  # the per-chunk lines went to the bar
    assert re.search(r"^encoding \d+ examples \(ner-windows/1\) into the cache", result.stderr, re.M)  # other lines stay


# -- distributed: each rank reads its own part of the store ---------------------------------------------

RANK_WORKER = '''
import json, logging, os, sys
from collections import defaultdict
from bertfit.data import token_cache
from bertfit.train.config import TrainConfig
from bertfit.train.finetune import fine_tune

spec = json.loads(open(sys.argv[1]).read())
touched = defaultdict(set)  # (file, what) -> feature indices this rank made
sizes, built = {}, []

def watch(cls, what):
    real = cls.__getitem__
    def getitem(self, index):
        key = (str(getattr(self, "path", None) or self.source), what)
        sizes[key[0]] = len(self)
        touched[key].update(range(*index.indices(len(self))) if isinstance(index, slice) else [int(index)])
        return real(self, index)
    cls.__getitem__ = getitem

watch(token_cache.CachedEncodings, "ids")
real_lists = token_cache.FeatureStore.lists
def lists(self, name, *args, **kwargs):
    column = real_lists(self, name, *args, **kwargs)
    column.source = f"{self.path}"
    column.what = name
    return column
token_cache.FeatureStore.lists = lists
real_list_getitem = token_cache.ListColumn.__getitem__
def list_getitem(self, index):
    if hasattr(self, "source"):  # a task column; the ids inside CachedEncodings are watched above
        touched[(self.source, self.what)].add(int(index))
    return real_list_getitem(self, index)
token_cache.ListColumn.__getitem__ = list_getitem
real_build = token_cache.cached_features.__globals__["_build_store"]
def build(path, *args, **kwargs):
    built.append(str(path))
    return real_build(path, *args, **kwargs)
token_cache.cached_features.__globals__["_build_store"] = build

result = fine_tune(TrainConfig(**spec))
rank = int(os.environ["RANK"])
report = {"touched": [[f, w, sorted(i)] for (f, w), i in touched.items()], "sizes": sizes, "built": built,
          "step": result.train.history[-1].get("step") if result.train.history else None}
open(os.path.join(os.path.dirname(sys.argv[1]), f"rank{rank}.json"), "w").write(json.dumps(report))
'''


@pytest.mark.distributed
def test_each_rank_reads_only_its_own_part_of_the_store(tmp_path, no_dropout_model_dir):
    """2 processes (gloo) train NER from the cache: one of them builds each split's store; in training each
    rank makes only the features (ids and targets, ``[i]`` of the mapped columns) of its shares of the global
    batches, disjoint from the other rank's, and in the final evaluation only its shard of each split;
    neither makes every feature. (Rank 0 alone also hashes the training features for its checkpoints, one
    streaming pass over the mapped columns: CachedEncodings.arrays, ListColumn's iteration.)"""
    import os
    import subprocess
    import sys

    train = write_conll(tmp_path / "train.conll", sentences(300, seed=3))
    spec = dict(train_file=str(train), problem_type="ner", model=str(no_dropout_model_dir), max_length=12,
                batch_size=4, lr=5e-4, max_steps=6, eval_each_epoch=False, save_every=3, seed=0, bf16=False, threads=1,
                output_dir=str(tmp_path / "run"))  # checkpoints at steps 3 and 6: rank 0 hashes the data for them
    (tmp_path / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
    (tmp_path / "worker.py").write_text(RANK_WORKER, encoding="utf-8")
    import bertfit

    src = str(Path(bertfit.__file__).parent.parent)  # the code this test imported, first
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, *(p for p in sys.path if p)]), "OMP_NUM_THREADS": "1",
           "BERTFIT_TOKEN_CACHE_MIN": "1", "BERTFIT_CACHE": str(tmp_path / "cache")}
    for key in ("WORLD_SIZE", "RANK", "BERTFIT_TOKEN_CACHE"):
        env.pop(key, None)
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(tmp_path / "worker.py"), str(tmp_path / "spec.json")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    stores = sorted((tmp_path / "cache" / "tokens").glob("*.features.arrow"))
    assert len(stores) == 3 and sorted(ranks[0]["built"] + ranks[1]["built"]) == [str(p) for p in stores]
    sizes = {**ranks[0]["sizes"], **ranks[1]["sizes"]}
    train_store = max(sizes, key=sizes.get)
    mine = [{(f, w): set(i) for f, w, i in r["touched"]} for r in ranks]
    for what in ("ids", "targets"):
        a, b = (m.get((train_store, what), set()) for m in mine)
        assert a and b and not a & b, what  # each rank its own features, none of the other's
        assert len(a) <= 6 * 4 and len(b) <= 6 * 4 < sizes[train_store]  # its shares of 6 steps × batch 4
    for store in sizes:
        if store != train_store:  # evaluation: each rank runs the model on its shard of the split
            a, b = (m.get((store, "ids"), set()) for m in mine)
            assert not a & b and a | b == set(range(sizes[store])) and a and b
