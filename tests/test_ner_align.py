"""Word → subword alignment, windows over long sentences and their stitching, offsets back to text."""

from __future__ import annotations

import numpy as np
import pytest

from bertfit.tasks.ner.data import from_text, from_tokens, split_words
from bertfit.tasks.ner.encode import IGNORE, encode_windows, stitch, window_starts
from bertfit.tokenizer import WordPieceTokenizer

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "play", "##ing", "##ed", "in", "par", "##is", "the",
         "new", "york", "times", "a", "b", "c", ".", ",", "cafe", "北", "京"]
TAGS = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
INDEX = {t: i for i, t in enumerate(TAGS)}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("vocab")
    (d / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return WordPieceTokenizer.from_dir(d)


def test_first_subword_carries_the_tag(tok):
    s = from_tokens(["playing", "in", "paris"], ["O", "O", "B-LOC"])
    enc, targets, windows, lengths = encode_windows(tok, [s], 16, None, INDEX)
    assert [VOCAB[i] for i in enc[0].ids] == ["[CLS]", "play", "##ing", "in", "par", "##is", "[SEP]"]
    assert targets[0].tolist() == [IGNORE, 0, IGNORE, 0, 1, IGNORE, IGNORE]
    assert windows[0].words.tolist() == [-1, 0, -1, 1, 2, -1, -1]
    _, targets, _, _ = encode_windows(tok, [s], 16, None, INDEX, label_all=True)
    # Later subwords take the I- form: B-LOC's "##is" is I-LOC, so seqeval never sees two entities.
    assert targets[0].tolist() == [IGNORE, 0, 0, 0, 1, 2, IGNORE]


def test_windows_cover_every_word_and_never_truncate(tok):
    words = ["new", "york", "times", "playing", "paris"] * 9  # 63 subwords
    s = from_tokens(words, ["B-ORG", "I-ORG", "I-ORG", "O", "B-LOC"] * 9)
    enc, targets, windows, lengths = encode_windows(tok, [s], 12, 4, INDEX)
    assert lengths == [63] and all(len(e.ids) <= 12 for e in enc)
    assert [w.start for w in windows] == window_starts(63, 10, 4) and windows[-1].start + windows[-1].length == 63
    seen = set()
    for w, t in zip(windows, targets):
        for pos in np.flatnonzero(w.words >= 0):
            seen.add(int(w.words[pos]))
            assert TAGS[t[pos]] == s.tags[w.words[pos]]
    assert seen == set(range(len(words)))


def test_stitching_equals_one_large_window(tok):
    rng = np.random.default_rng(0)
    table = rng.normal(size=(len(VOCAB), len(TAGS))).astype(np.float32)  # a context-free "model"
    words = (["the", "new", "york", "times", "playing", "in", "paris", "."] * 6)[:-1]
    s = from_tokens(words)
    run = lambda enc: [table[np.asarray(e.ids)] for e in enc]  # noqa: E731
    big_enc, _, big_w, _ = encode_windows(tok, [s], 128, None)
    assert len(big_enc) == 1
    whole = stitch(run(big_enc), big_w, [len(words)])[0]
    for max_length, stride in [(8, 1), (8, 3), (10, 6), (16, 8), (12, None)]:
        enc, _, windows, _ = encode_windows(tok, [s], max_length, stride)
        assert len(enc) > 1
        np.testing.assert_array_equal(stitch(run(enc), windows, [len(words)])[0], whole)


def test_each_word_comes_from_its_most_central_window(tok):
    s = from_tokens(["a"] * 30)
    enc, _, windows, _ = encode_windows(tok, [s], 12, 3)
    # Output = the feature's index: the stitched row says which window each word was read from.
    outputs = [np.full((len(e.ids), 2), i, dtype=np.float32) for i, e in enumerate(enc)]
    chosen = stitch(outputs, windows, [30])[0][:, 0].astype(int)
    for word, w in enumerate(chosen):
        def context(win):
            k = word - win.start
            return min(k, win.length - 1 - k) if 0 <= k < win.length else -1
        assert context(windows[w]) == max(context(x) for x in windows)


def test_empty_and_vanishing_words(tok):
    s = from_text("\u200b")  # nothing but a zero-width space: no words
    enc, targets, windows, lengths = encode_windows(tok, [s], 12, None)
    assert len(enc) == 1 and enc[0].ids == [tok.cls_id, tok.sep_id] and stitch([np.zeros((2, 5))], windows, [0])[0].shape == (0, 5)


@pytest.mark.parametrize("text", [
    "Zoë Saldaña visited Café Müller in Zürich.",
    "Paris 😀 loves Paris 🇫🇷 and paris!",
    "我在北京工作, then Tokyo 東京.",
    "New  York\tand\nNew York",
])
def test_word_spans_point_back_into_the_text(text):
    s = from_text(text)
    assert s.words and all(text[a:b] == w for w, (a, b) in zip(s.words, s.spans))
    # Every non-space character belongs to a word (nothing is lost), and words do not overlap.
    covered = {i for a, b in s.spans for i in range(a, b)}
    assert all(ch.isspace() for i, ch in enumerate(text) if i not in covered)
    assert all(b <= a2 for (_, b), (a2, _) in zip(s.spans, s.spans[1:]))


def test_cjk_characters_are_words():
    assert [w for w, _ in split_words("我在北京")] == ["我", "在", "北", "京"]
