"""Long texts (windows.py): kept positions of each truncation strategy on hand-made token sequences,
pair budgets against the tokenizer's own truncation, window splitting and aggregation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bertfit.errors import ConfigError
from bertfit.tokenizer import WordPieceTokenizer
from bertfit.tasks.windows import (LongText, aggregate, aggregate_torch, build, encode, kept_positions, pair_budgets,
                             summary, window_starts)

CLS, SEP = 101, 102


def test_head_tail_and_head_plus_tail_keep_exact_positions():
    # 10 tokens, 6 fit
    assert kept_positions(10, 6, "head") == [0, 1, 2, 3, 4, 5]
    assert kept_positions(10, 6, "tail") == [4, 5, 6, 7, 8, 9]
    assert kept_positions(10, 6, "head+tail", head_tokens=2) == [0, 1, 6, 7, 8, 9]
    assert kept_positions(10, 6, "head+tail", head_tokens=5) == [0, 1, 2, 3, 4, 9]
    # a text that fits is read whole by every strategy
    for strategy in ("head", "tail", "head+tail"):
        assert kept_positions(6, 6, strategy, head_tokens=2) == list(range(6))
        assert kept_positions(3, 6, strategy, head_tokens=2) == [0, 1, 2]


def test_built_sequences_hold_the_kept_tokens_with_special_tokens():
    doc = [list(range(1000, 1010))]  # token ids 1000..1009
    for strategy, expected in (("head", [1000, 1001, 1002, 1003, 1004, 1005]),
                               ("tail", [1004, 1005, 1006, 1007, 1008, 1009]),
                               ("head+tail", [1000, 1001, 1006, 1007, 1008, 1009])):
        features = build(doc, None, 8, LongText(truncation=strategy, head_tokens=2), CLS, SEP)
        (e,) = features.encoded
        assert e.ids == [CLS, *expected, SEP]
        assert e.type_ids == [0] * 8
        assert e.truncated


def test_pairs_truncate_the_longer_side_and_each_side_keeps_its_strategy():
    assert pair_budgets(10, 2, 8) == (6, 2)
    assert pair_budgets(2, 10, 8) == (2, 6)
    assert pair_budgets(6, 6, 8) == (4, 4)
    assert pair_budgets(6, 6, 7) == (3, 4)
    assert pair_budgets(3, 60, 5) == (2, 3)
    assert pair_budgets(3, 3, 8) == (3, 3)
    a, b = list(range(1000, 1010)), [2000, 2001]
    features = build([a], [b], 11, LongText(truncation="tail"), CLS, SEP)  # budget 8: a keeps 6
    assert features.encoded[0].ids == [CLS, 1004, 1005, 1006, 1007, 1008, 1009, SEP, 2000, 2001, SEP]
    assert features.encoded[0].type_ids == [0] * 8 + [1] * 3


def test_pair_budgets_share_like_the_fast_tokenizer():
    """The oracle is the `tokenizers` library itself: a word-level tokenizer with [CLS] a [SEP] b [SEP] and
    longest-first truncation to budget + 3 keeps exactly pair_budgets' counts of each side, for every pair
    of lengths 0-13 and every budget 1-19."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, **{f"w{i}": 3 + i for i in range(14)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    words = [f"w{i}" for i in range(14)]
    checked = 0
    for budget in range(1, 20):
        tokenizer.enable_truncation(max_length=budget + 3, strategy="longest_first")
        for n_a in range(0, 14):
            for n_b in range(0, 14):
                encoding = tokenizer.encode(" ".join(words[:n_a]), " ".join(words[:n_b]))
                kept_a = sum(1 for t, s in zip(encoding.type_ids, encoding.special_tokens_mask) if t == 0 and not s)
                kept_b = sum(1 for t, s in zip(encoding.type_ids, encoding.special_tokens_mask) if t == 1 and not s)
                assert pair_budgets(n_a, n_b, budget) == (kept_a, kept_b), (n_a, n_b, budget)
                checked += 1
    assert checked == 19 * 14 * 14


def test_head_through_pieces_equals_the_tokenizers_truncation(tiny_model_dir):
    tok = WordPieceTokenizer.from_dir(tiny_model_dir)
    texts = ["the movie " * k + "good" for k in (1, 5, 20, 40, 3, 7)]
    pairs = ["a day " * k for k in (30, 2, 9, 40, 3, 7)]
    for max_length in (8, 16, 33):
        for p in (None, pairs):
            fast = tok.encode(texts, p, max_length=max_length)
            pieces = build(tok.encode_pieces(texts), tok.encode_pieces(p) if p else None, max_length, LongText(),
                           tok.cls_id, tok.sep_id).encoded
            assert [e.ids for e in pieces] == [e.ids for e in fast]
            assert [e.type_ids for e in pieces] == [e.type_ids for e in fast]
            assert [e.truncated for e in pieces] == [e.truncated for e in fast]
    # the non-default path gives the same ids for head when it is asked for explicitly
    via_settings = encode(tok, texts, None, 16, LongText(head_tokens=5))
    assert [e.ids for e in via_settings.encoded] == [e.ids for e in tok.encode(texts, max_length=16)]


def test_window_starts_cover_the_text_and_cap_spreads_them():
    assert window_starts(5, 6, 3, 8) == [0]
    assert window_starts(6, 6, 3, 8) == [0]
    assert window_starts(10, 6, 3, 8) == [0, 3, 4]  # the last window ends at the end
    assert window_starts(12, 6, 3, 8) == [0, 3, 6]
    assert window_starts(30, 6, 3, 3) == [0, 12, 24]  # capped: first, middle, last
    assert window_starts(30, 6, 3, 1) == [0]


def test_windows_features_and_summary():
    doc = list(range(1000, 1012))  # 12 tokens, windows of 6 text tokens, stride 3
    short = [1000, 1001]
    settings = LongText(long_text="windows", window_stride=3, max_windows=8)
    features = build([doc, short], None, 8, settings, CLS, SEP)
    assert features.example_index.tolist() == [0, 0, 0, 1]
    assert [e.ids[1:-1] for e in features.encoded] == [doc[0:6], doc[3:9], doc[6:12], short]
    assert not any(e.truncated for e in features.encoded)
    capped = build([doc], None, 8, LongText(long_text="windows", window_stride=3, max_windows=1), CLS, SEP)
    assert capped.encoded[0].truncated
    s = summary([features], 8)
    assert s["texts"] == 2 and s["windows"] == 4 and s["split_into_windows"] == 1 and s["cut"] == 0


def test_aggregate_mean_max_and_single_window_identity():
    outputs = np.array([[1.0, -2.0], [3.0, 0.0], [0.5, 0.25]], dtype=np.float32)
    index = np.array([0, 0, 1])
    assert aggregate(outputs, index, 2, "mean").tolist() == [[2.0, -1.0], [0.5, 0.25]]
    assert aggregate(outputs, index, 2, "max").tolist() == [[3.0, 0.0], [0.5, 0.25]]
    t = torch.tensor(outputs, requires_grad=True)
    for how in ("mean", "max"):
        got = aggregate_torch(t, torch.tensor(index), 2, how)
        assert np.allclose(got.detach().numpy(), aggregate(outputs, index, 2, how))
    aggregate_torch(t, torch.tensor(index), 2, "mean").sum().backward()
    assert t.grad.tolist() == [[0.5, 0.5], [0.5, 0.5], [1.0, 1.0]]


def test_settings_are_checked_against_max_length():
    LongText(truncation="head+tail", head_tokens=32).check(128)
    with pytest.raises(ConfigError, match="head-tokens below 126"):
        LongText(truncation="head+tail").check(128)  # the default 128 leaves no tail at max_length 128
    with pytest.raises(ConfigError, match="window_stride"):
        LongText(long_text="windows", window_stride=200).check(128)
    with pytest.raises(ConfigError, match="truncation"):
        LongText(truncation="middle").check(128)
    assert LongText.from_settings({}) == LongText()
    settings = LongText(truncation="tail", long_text="windows", window_stride=16, window_aggregate="max", max_windows=4)
    assert LongText.from_settings(settings.to_dict()) == settings
