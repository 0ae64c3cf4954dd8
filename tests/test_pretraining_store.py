"""The pretraining store (tasks/pretrain/store.py): a corpus streamed into memory-mapped files gives the
in-memory path's sequences exactly, is reused and never stale, and trains to the same weights."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import WORDS, build_tiny_model_dir

from bertfit.errors import DataError
from bertfit.tasks.pretrain.corpus import CorpusReport, read_corpus
from bertfit.tasks.pretrain.corpus_stream import iter_corpus
from bertfit.tasks.pretrain.prepare import prepare_corpus
from bertfit.tasks.pretrain.store import StoredSequences
from bertfit.tokenizer import WordPieceTokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-store"), dropout=0.0)


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return WordPieceTokenizer.from_dir(model_dir)


def _corpus_files(folder, documents: int = 120, seed: int = 0) -> list[str]:
    """Every reading rule at once: a sentence-per-line file with runs of blank lines, an over-long line and
    a document of no word pieces; a gzip file of one document a line; latin-1 text; a CSV column."""
    rng = random.Random(seed)
    lines = []
    for d in range(documents):
        for _ in range(rng.randint(1, 6)):
            lines.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 14))) + rng.choice([".", "!", ""]))
        if d == 7:
            lines.append("x" * 300)  # over max_chars
        if d % 9 == 0:
            lines.append(" ".join(rng.choice(WORDS) for _ in range(30)))  # longer than a pair's room
        lines.append("\n" if d % 11 == 0 else "")  # a run of blank lines now and then
    lines += ["\u2063", ""]  # a document whose only sentence has no word pieces
    sentences = folder / "sentences.txt"
    sentences.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tweets = folder / "tweets.txt.gz"
    with gzip.open(tweets, "wt", encoding="utf-8") as f:
        for _ in range(documents // 2):
            f.write(". ".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8))).capitalize()
                              for _ in range(rng.randint(1, 4))) + ".\r\n")
    latin = folder / "latin.txt"
    latin.write_bytes("".join(f"Caf\xe9 {rng.choice(WORDS)} tr\xe8s {rng.choice(WORDS)}.\n" for _ in range(30))
                      .encode("latin-1"))
    table = folder / "reviews.csv"
    table.write_text("id,review\n" + "".join(f'{i},"{" ".join(rng.choice(WORDS) for _ in range(9))}. Again."\n'
                                          for i in range(40)), encoding="utf-8")
    return [str(sentences), str(tweets), str(latin), str(table)]


def _both(monkeypatch, files, tokenizer, **kwargs):
    monkeypatch.setenv("BERTFIT_TOKEN_CACHE", "0")
    memory = prepare_corpus(files, tokenizer, max_chars=200, **kwargs)
    monkeypatch.setenv("BERTFIT_TOKEN_CACHE", "1")
    monkeypatch.setenv("BERTFIT_CORPUS_STORE_MIN_BYTES", "0")
    stored = prepare_corpus(files, tokenizer, max_chars=200, **kwargs)
    return memory, stored


def _features(split, tokenizer):
    if isinstance(split, StoredSequences):
        return [(e.ids, e.type_ids) for e in split.features], split.next_labels.tolist()
    encoded = [i.encode(tokenizer.cls_id, tokenizer.sep_id) for i in split]
    return [(e.ids, e.type_ids) for e in encoded], [i.next_label for i in split]


@pytest.mark.parametrize("nsp, max_documents", [(True, None), (False, None), (True, 150), (False, 90)])
def test_the_store_gives_the_in_memory_sequences_exactly(tmp_path, monkeypatch, tokenizer, nsp, max_documents):
    files = _corpus_files(tmp_path)
    memory, stored = _both(monkeypatch, files, tokenizer, max_length=24, nsp=nsp, seed=3, validation_fraction=0.2,
                           max_documents=max_documents)
    assert isinstance(stored.train, StoredSequences) and isinstance(memory.train, list)
    for name in ("train", "validation"):
        assert _features(getattr(stored, name), tokenizer) == _features(getattr(memory, name), tokenizer), name
    summary = dict(stored.summary)
    assert summary.pop("store")
    assert summary == memory.summary
    assert stored.validation_texts == memory.validation_texts and memory.validation_texts
    assert memory.summary["corpus"]["long_lines"] == 1 and memory.summary["sentences_over_max_length"] > 0


def test_streamed_reading_equals_the_whole_file_reader(tmp_path):
    files = _corpus_files(tmp_path)
    documents, report = read_corpus(files, max_chars=200)
    streamed_report = CorpusReport(max_chars=200)
    streamed = list(iter_corpus(files, streamed_report, max_chars=200))
    assert [(d.sentences, d.source) for d in streamed] == [(d.sentences, d.source) for d in documents]
    assert streamed_report.to_dict() == report.to_dict()
    assert report.encodings[files[2]].startswith("latin-1 (fallback")
    assert report.formats[files[0]] == "sentences" and report.formats[files[1]] == "documents"


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "no such file"),
    (lambda p: p.write_bytes(b"\x00\x01\x02binary"), "looks binary"),
    (lambda p: p.write_text("\n\n   \n", encoding="utf-8"), "no usable text"),
    (lambda p: p.write_bytes(gzip.compress(b"hello")), "not named .gz"),
])
def test_streamed_reading_refuses_bad_files_like_the_reader(tmp_path, make, message):
    path = tmp_path / "corpus.txt"
    make(path)
    with pytest.raises(DataError, match=message) as info:
        list(iter_corpus([str(path)], CorpusReport(), max_chars=100))
    assert str(path) in str(info.value)
    broken = tmp_path / "broken.txt.gz"
    broken.write_bytes(gzip.compress(b"hello world\n" * 100)[:-20])
    with pytest.raises(DataError, match="cannot be read"):
        list(iter_corpus([str(broken)], CorpusReport(), max_chars=100))
    wrong = tmp_path / "wrong.txt"
    wrong.write_bytes("naïve café\n".encode("utf-8"))
    with pytest.raises(DataError, match="cannot be decoded as ascii"):
        list(iter_corpus([str(wrong)], CorpusReport(), max_chars=100, encoding="ascii"))


def test_the_store_is_reused_and_never_stale(tmp_path, monkeypatch, tokenizer):
    monkeypatch.setenv("BERTFIT_CORPUS_STORE_MIN_BYTES", "0")
    files = _corpus_files(tmp_path)
    calls = []
    real = tokenizer.token_ids
    monkeypatch.setattr(tokenizer, "token_ids", lambda texts: calls.append(len(texts)) or real(texts))
    first = prepare_corpus(files, tokenizer, max_length=24, nsp=True, seed=0, max_chars=200)
    assert calls
    calls.clear()
    again = prepare_corpus(files, tokenizer, max_length=24, nsp=True, seed=0, max_chars=200)
    assert not calls and again.summary == first.summary  # documents and sequences read back, not made again
    longer = prepare_corpus(files, tokenizer, max_length=32, nsp=True, seed=0, max_chars=200)
    assert not calls and longer.summary["tokens"] != first.summary["tokens"]  # new sequences, same documents
    with open(files[0], "a", encoding="utf-8") as f:
        f.write("one more sentence\n")
    changed = prepare_corpus(files, tokenizer, max_length=24, nsp=True, seed=0, max_chars=200)
    assert calls and changed.summary["corpus"]["lines"] == first.summary["corpus"]["lines"] + 1


def test_a_damaged_store_is_rebuilt(tmp_path, monkeypatch, tokenizer, caplog):
    monkeypatch.setenv("BERTFIT_CORPUS_STORE_MIN_BYTES", "0")
    files = _corpus_files(tmp_path)
    first = prepare_corpus(files, tokenizer, max_length=24, nsp=False, seed=0, max_chars=200)
    documents = Path(first.summary["store"]) / "documents.arrow"
    documents.write_bytes(documents.read_bytes()[:100])
    again = prepare_corpus(files, tokenizer, max_length=24, nsp=False, seed=0, max_chars=200)
    assert "corpus store" in caplog.text and "unreadable" in caplog.text
    assert _features(again.train, tokenizer) == _features(first.train, tokenizer)
    sequences = next(Path(first.summary["store"]).glob("train-*.arrow"))
    sequences.write_bytes(sequences.read_bytes()[:-50])
    caplog.clear()
    third = prepare_corpus(files, tokenizer, max_length=24, nsp=False, seed=0, max_chars=200)
    assert "sequences file" in caplog.text and "unreadable" in caplog.text
    assert _features(third.train, tokenizer) == _features(first.train, tokenizer)


def test_pretraining_from_the_store_gives_the_in_memory_weights(tmp_path, monkeypatch, model_dir):
    from bertfit.train.config import TrainConfig
    from bertfit.train.pretrain import PretrainSettings, pretrain
    from bertfit.weights import read_state_dict

    files = _corpus_files(tmp_path)
    weights = {}
    for name, env in (("memory", {"BERTFIT_TOKEN_CACHE": "0"}),
                      ("store", {"BERTFIT_TOKEN_CACHE": "1", "BERTFIT_CORPUS_STORE_MIN_BYTES": "0"})):
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        config = TrainConfig(model=str(model_dir), output_dir=str(tmp_path / name), max_length=24, max_steps=6,
                             batch_size=8, lr=1e-3, log_every=2, eval_every=3, threads=1)
        result = pretrain(config, PretrainSettings(corpus=tuple(files), nsp=True, max_chars=200))
        weights[name] = read_state_dict(result.run_dir)
    assert weights["memory"].keys() == weights["store"].keys()
    for key in weights["memory"]:
        torch.testing.assert_close(weights["store"][key], weights["memory"][key], rtol=0, atol=0)
    assert not np.isnan(sum(float(v.float().sum()) for v in weights["store"].values()))
