"""Further-pretraining data: corpus reading (formats, bad inputs), NSP pairs, packing, masking statistics."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from bertfit.errors import DataError
from bertfit.tasks.pretrain.corpus import read_corpus, split_sentences
from bertfit.tasks.pretrain.instances import IS_NEXT, NOT_NEXT, nsp_instances, packed_instances
from bertfit.tasks.pretrain.masking import IGNORE, TRAIN_STREAM, VALIDATION_STREAM, Masker, MaskingConfig


# --- corpus --------------------------------------------------------------------------------------

def test_split_sentences_rules():
    assert split_sentences("I went home. It rained! Did it? Yes… 3 times.") == \
        ["I went home.", "It rained!", "Did it?", "Yes…", "3 times."]
    assert split_sentences("Dr. Smith met Mr. J. Jones, e.g. at noon. Then he left.") == \
        ["Dr. Smith met Mr. J. Jones, e.g. at noon.", "Then he left."]
    assert split_sentences('He said "stop." Then "go!" @bob saw it.') == ['He said "stop."', 'Then "go!"', "@bob saw it."]
    assert split_sentences("no capital after. so one sentence") == ["no capital after. so one sentence"]
    assert split_sentences("  \n ") == []


def test_sentence_format_blank_lines_separate_documents(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("First one.\nSecond one.\n\nOther doc.\n\n\nThird doc a.\nThird doc b.\n", encoding="utf-8")
    docs, report = read_corpus([path])
    assert [d.sentences for d in docs] == [["First one.", "Second one."], ["Other doc."], ["Third doc a.", "Third doc b."]]
    assert report.formats[str(path)] == "sentences"
    assert report.lines == 8 and report.empty_lines == 1  # the second blank line in a row
    assert docs[2].source == f"{path}:7"


def test_document_format_gzip_several_files_and_counts(tmp_path):
    a = tmp_path / "a.txt.gz"
    with gzip.open(a, "wt", encoding="utf-8") as f:
        f.write("One tweet here. And more.\n\n" + "x" * 50 + "\nSecond tweet\n")
    b = tmp_path / "b.txt"
    b.write_bytes("caf\xe9 au lait. Tr\xe8s bon\n".encode("latin-1"))
    docs, report = read_corpus([a, b], fmt="documents", max_chars=40)
    assert [d.sentences for d in docs] == [["One tweet here.", "And more."], ["Second tweet"], ["café au lait.", "Très bon"]]
    assert report.empty_lines == 1 and report.long_lines == 1 and report.long_examples == [f"{a}:3"]
    assert report.encodings[str(b)].startswith("latin-1")
    assert report.documents == 3 and report.sentences == 5 and "1 over 40 characters" in report.summary()


def test_auto_format_without_blank_lines_is_one_document_per_line(tmp_path):
    path = tmp_path / "tweets.txt"
    path.write_text("a tweet. Two\nanother one\n", encoding="utf-8")
    docs, report = read_corpus([path])
    assert report.formats[str(path)] == "documents" and len(docs) == 2


def test_table_column_csv_and_jsonl(tmp_path):
    csv_path = tmp_path / "reviews.csv"
    csv_path.write_text('id,body\n1,"Great place. Would go again."\n2,\n3,"Bad, ""very"" bad"\n', encoding="utf-8")
    docs, report = read_corpus([csv_path], column="body")
    assert [d.sentences for d in docs] == [["Great place.", "Would go again."], ['Bad, "very" bad']]
    assert report.empty_lines == 1 and docs[1].source == f"{csv_path}:4"
    jl = tmp_path / "posts.jsonl.gz"
    with gzip.open(jl, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": "Hello there. Bye."}) + "\n" + "not json\n" + json.dumps({"text": "Again"}) + "\n")
    docs, report = read_corpus([jl])
    assert [d.sentences for d in docs] == [["Hello there.", "Bye."], ["Again"]]
    assert report.rejected_rows == 1


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "no such file"),
    (lambda p: p.write_bytes(b"\x00\x01\x02binary"), "looks binary"),
    (lambda p: p.write_text("\n\n   \n", encoding="utf-8"), "no usable text"),
    (lambda p: p.write_bytes(gzip.compress(b"hello")), "not named .gz"),
])
def test_bad_corpus_files_name_the_file(tmp_path, make, message):
    path = tmp_path / "corpus.txt"
    make(path)
    with pytest.raises(DataError, match=message) as info:
        read_corpus([path])
    assert str(path) in str(info.value)


def test_bad_corpus_arguments(tmp_path):
    with pytest.raises(DataError, match="no corpus files"):
        read_corpus([])
    with pytest.raises(DataError, match="directory"):
        read_corpus([tmp_path])
    (tmp_path / "x.txt").write_text("a\n", encoding="utf-8")
    with pytest.raises(DataError, match="unknown corpus format"):
        read_corpus([tmp_path / "x.txt"], fmt="paragraphs")
    broken = tmp_path / "broken.txt.gz"
    broken.write_bytes(gzip.compress(b"hello world\n" * 100)[:-20])
    with pytest.raises(DataError, match="cannot be read"):
        read_corpus([broken])


# --- NSP pairs and packing -----------------------------------------------------------------------

def _documents(n_docs: int, seed: int) -> list[list[list[int]]]:
    """Documents of sentences whose tokens encode (document, sentence, position): traceable."""
    rng = np.random.default_rng(seed)
    docs = []
    for d in range(n_docs):
        docs.append([[1000 * d + 10 * s + t for t in range(int(rng.integers(4, 10)))]
                     for s in range(int(rng.integers(4, 12)))])
    return docs


def test_nsp_pairs_follow_the_original_recipe():
    docs = _documents(600, seed=3)
    instances = nsp_instances(docs, max_length=64, seed=0)
    labels = np.array([i.next_label for i in instances])
    assert abs((labels == IS_NEXT).mean() - 0.5) < 0.02, (labels == IS_NEXT).mean()
    for inst in instances:
        assert inst.a and inst.b and len(inst.a) + len(inst.b) + 3 <= 64
        assert all(t // 1000 == inst.document for t in inst.a)
        assert all(t // 1000 == inst.b_document for t in inst.b)
        if inst.next_label == NOT_NEXT:
            assert inst.b_document != inst.document
        else:
            assert inst.b_document == inst.document
            assert inst.b[0] > inst.a[-1]  # B continues after A in the same document
    # Short-sequence probability: some pairs are much shorter than the target.
    lengths = np.array([len(i.a) + len(i.b) for i in instances])
    assert (lengths < 30).mean() > 0.02
    # Unused sentences are put back: nearly every sentence of the corpus appears in some segment A.
    used = {t // 10 for i in instances for t in i.a}
    every = {t // 10 for d in docs for s in d for t in s}
    assert len(used) / len(every) > 0.6
    assert nsp_instances(docs, 64, seed=0) == instances  # a function of the seed


def test_nsp_needs_two_documents_and_room():
    with pytest.raises(DataError, match="--no-nsp"):
        nsp_instances([[[1, 2], [3, 4]]], 64, seed=0)
    with pytest.raises(DataError, match="too short"):
        nsp_instances(_documents(3, 0), 4, seed=0)


def test_packing_fills_full_length_sequences():
    docs = _documents(50, seed=1)
    instances = packed_instances(docs, max_length=32, sep_id=-1)
    assert all(len(i.a) == 30 for i in instances[:-1]) and not any(i.b for i in instances)
    assert not any(i.a[0] == -1 for i in instances)
    flat = [t for i in instances for t in i.a if t != -1]
    assert flat == [t for d in docs for s in d for t in s]
    encoded = instances[0].encode(cls_id=-2, sep_id=-1)
    assert encoded.ids[0] == -2 and encoded.ids[-1] == -1 and len(encoded.ids) == 32 and set(encoded.type_ids) == {0}


# --- masking ---------------------------------------------------------------------------------------

SPECIAL = [0, 1, 2, 3, 4]  # pad, unk, cls, sep, mask


def _masker(whole_word=False, vocab=1000, continuation=None, seed=0) -> Masker:
    return Masker(vocab, 4, SPECIAL, continuation, MaskingConfig(whole_word=whole_word), seed=seed)


def test_masking_statistics_over_100k_tokens():
    masker = _masker()
    rng = np.random.default_rng(0)
    chosen = masked = randomised = kept = candidates = 0
    for index in range(1600):
        n = int(rng.integers(20, 110))
        ids = np.r_[2, rng.integers(5, 1000, size=n), 3, rng.integers(5, 1000, size=5), 3]
        out, labels = masker.mask(ids, masker.rng(TRAIN_STREAM, 0, index))
        picked = labels != IGNORE
        assert not picked[[0, n + 1, len(ids) - 1]].any()  # [CLS] and [SEP] never chosen
        assert (out[[0, n + 1, len(ids) - 1]] == ids[[0, n + 1, len(ids) - 1]]).all()
        assert (labels[picked] == ids[picked]).all() and (out[~picked] == ids[~picked]).all()
        candidates += len(ids) - 3
        chosen += picked.sum()
        masked += (out[picked] == 4).sum()
        randomised += ((out[picked] != 4) & (out[picked] != ids[picked])).sum()
        kept += (out[picked] == ids[picked]).sum()
        assert not np.isin(out[picked & (out != ids)], [0, 1, 2, 3]).any()  # never a special replacement
    assert candidates > 100_000
    assert abs(chosen / candidates - 0.15) < 0.005
    # A random replacement equal to the original (1/995) counts as kept: within noise.
    assert abs(masked / chosen - 0.80) < 0.005
    assert abs(randomised / chosen - 0.10) < 0.005
    assert abs(kept / chosen - 0.10) < 0.005


def test_masks_change_per_epoch_and_repeat_per_seed():
    masker = _masker()
    ids = np.r_[2, np.arange(5, 205), 3]
    first = masker.mask(ids, masker.rng(TRAIN_STREAM, 0, 7))
    again = masker.mask(ids, masker.rng(TRAIN_STREAM, 0, 7))
    next_epoch = masker.mask(ids, masker.rng(TRAIN_STREAM, 1, 7))
    validation = masker.mask(ids, masker.rng(VALIDATION_STREAM, 0, 7))
    assert all((a == b).all() for a, b in zip(first, again))
    assert not (first[1] == next_epoch[1]).all() and not (first[1] == validation[1]).all()
    assert not (first[1] == _masker(seed=1).mask(ids, _masker(seed=1).rng(TRAIN_STREAM, 0, 7))[1]).all()


def test_whole_word_masking_masks_every_piece_of_a_word():
    continuation = np.zeros(1000, dtype=bool)
    continuation[500:] = True  # ids ≥ 500 are "##" pieces
    masker = _masker(whole_word=True, continuation=continuation)
    rng = np.random.default_rng(1)
    total = chosen = 0
    for index in range(500):
        words = [[int(rng.integers(5, 500))] + list(rng.integers(500, 1000, size=int(rng.integers(0, 3))))
                 for _ in range(int(rng.integers(10, 60)))]
        ids = np.array([2] + [t for w in words for t in w] + [3])
        out, labels = masker.mask(ids, masker.rng(TRAIN_STREAM, 0, index))
        picked = labels != IGNORE
        position = 1
        for w in words:
            states = picked[position:position + len(w)]
            assert states.all() or not states.any(), (w, states)
            position += len(w)
        total += len(ids) - 2
        chosen += picked.sum()
    assert abs(chosen / total - 0.15) < 0.01


def test_masking_sequence_without_candidates():
    out, labels = _masker().mask([2, 3], np.random.default_rng(0))
    assert (labels == IGNORE).all() and list(out) == [2, 3]
