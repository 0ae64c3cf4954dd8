"""The encoder against transformers' BERT: same weights, same numbers (fp32, eval mode)."""

from __future__ import annotations

import pytest
import torch

from bertfit.weights import load_into
from bertfit.config import BertConfig
from bertfit.heads import BertForSequenceClassification
from bertfit.model import BertModel

transformers = pytest.importorskip("transformers")

TOL = 1e-5
TINY_CONFIGS = {
    "h32-l2-gelu": dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=37),
    "h48-l3-3heads": dict(hidden_size=48, num_attention_heads=3, num_hidden_layers=3, intermediate_size=64,
                          layer_norm_eps=1e-7),
    "h64-l1-8heads-relu": dict(hidden_size=64, num_attention_heads=8, num_hidden_layers=1, intermediate_size=96,
                               hidden_act="relu"),
    "h24-l4-gelu_new-3types": dict(hidden_size=24, num_attention_heads=2, num_hidden_layers=4,
                                   intermediate_size=40, hidden_act="gelu_new", type_vocab_size=3),
}
LABELS = ["negative", "neutral", "positive"]


def hf_pair(overrides: dict, seed: int = 0):
    """A random transformers BertForSequenceClassification and ours with the same weights."""
    torch.manual_seed(seed)
    base = dict(vocab_size=120, max_position_embeddings=64, **overrides)
    hf_config = transformers.BertConfig(**base, num_labels=3, attn_implementation="eager")
    hf = transformers.BertForSequenceClassification(hf_config).eval()
    # transformers initialises LayerNorm to (1, 0) and biases to 0: randomise them so the test can see them.
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.normal_(0, 0.5 if "weight" not in name else 0.1).add_(1.0 if "LayerNorm.weight" in name else 0.0)
    ours = BertForSequenceClassification(BertConfig(**base).with_labels(LABELS)).eval()
    load_into(ours, hf.state_dict(), source="test", require_head=True)
    return hf, ours


def random_batch(vocab: int, lengths: list[int], type_vocab: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.randint(5, vocab, (len(lengths), T), generator=g)
    ids[:, 0] = 2  # a [CLS]-like first token
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    types = torch.randint(0, type_vocab, (len(lengths), T), generator=g)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = 0
        types[i, n:] = 0
    return ids, mask, types


@pytest.mark.parametrize("name", TINY_CONFIGS)
def test_tiny_config_parity_with_transformers(name):
    hf, ours = hf_pair(TINY_CONFIGS[name])
    ids, mask, types = random_batch(120, [17, 3, 30, 1, 30, 9], TINY_CONFIGS[name].get("type_vocab_size", 2))
    real = mask.bool()
    with torch.no_grad():
        ref = hf.bert(input_ids=ids, attention_mask=mask, token_type_ids=types)
        ref_logits = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        for unpad in (False, True):
            out = ours.bert(ids, mask, types, unpad=unpad)
            # Hidden states at [PAD] positions are not defined by the model; compare real tokens.
            assert (out.last_hidden_state - ref.last_hidden_state)[real].abs().max() <= TOL
            assert (out.pooled - ref.pooler_output).abs().max() <= TOL
        for fast in (False, True):
            assert (ours(ids, mask, types, fast=fast) - ref_logits).abs().max() <= TOL


@pytest.mark.parametrize("name", TINY_CONFIGS)
def test_fast_path_matches_plain_path(name):
    _, ours = hf_pair(TINY_CONFIGS[name], seed=3)
    ids, mask, types = random_batch(120, [5, 40, 12, 2, 33], TINY_CONFIGS[name].get("type_vocab_size", 2), seed=4)
    with torch.no_grad():
        plain = ours.bert(ids, mask, types, unpad=False)
        packed = ours.bert(ids, mask, types, unpad=True)
        cls_only = ours.bert(ids, mask, types, unpad=True, cls_only=True)
    real = mask.bool()
    assert (plain.last_hidden_state - packed.last_hidden_state)[real].abs().max() <= 1e-5
    assert (packed.last_hidden_state[~real] == 0).all()  # padding carries nothing on the packed path
    assert (plain.cls - cls_only.cls).abs().max() <= 1e-5
    assert (plain.pooled - cls_only.pooled).abs().max() <= 1e-5
    assert cls_only.last_hidden_state is None


def test_fast_path_gradients_match_plain_path():
    _, ours = hf_pair(TINY_CONFIGS["h32-l2-gelu"], seed=5)
    ids, mask, types = random_batch(120, [7, 20, 3], seed=6)
    target = torch.tensor([0, 2, 1])
    grads = []
    for fast in (False, True):
        ours.zero_grad()
        torch.nn.functional.cross_entropy(ours(ids, mask, types, fast=fast), target).backward()
        grads.append({n: p.grad.clone() for n, p in ours.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert (grads[0][name] - grads[1][name]).abs().max() <= 1e-5, name


@pytest.mark.parametrize("fast", [False, True])
def test_cls_vector_does_not_depend_on_batch_mates(fast):
    _, ours = hf_pair(TINY_CONFIGS["h48-l3-3heads"], seed=7)
    ids, mask, types = random_batch(120, [6, 50, 31, 50], seed=8)
    with torch.no_grad():
        alone = ours.bert(ids[:1, :6], mask[:1, :6], types[:1, :6], unpad=fast, cls_only=fast).cls
        batched = ours.bert(ids, mask, types, unpad=fast, cls_only=fast).cls[:1]
    assert (alone - batched).abs().max() <= 1e-5


def test_batch_without_padding_and_without_mask():
    hf, ours = hf_pair(TINY_CONFIGS["h32-l2-gelu"], seed=9)
    ids, _, types = random_batch(120, [12, 12], seed=10)
    with torch.no_grad():
        ref = hf(input_ids=ids, token_type_ids=types).logits
        assert (ours(ids, None, types) - ref).abs().max() <= TOL
        assert (ours(ids, None, types, fast=False) - ref).abs().max() <= TOL


def test_classifier_on_raw_cls_vector():
    config = BertConfig(vocab_size=50, hidden_size=16, num_attention_heads=2, num_hidden_layers=1,
                        intermediate_size=20, classifier_input="cls").with_labels(["a", "b"])
    model = BertForSequenceClassification(config).eval()
    ids, mask, types = random_batch(50, [4, 9], seed=11)
    with torch.no_grad():
        out = model.bert(ids, mask, types)
        expected = model.classifier(out.cls)
        assert torch.allclose(model(ids, mask, types), expected, atol=1e-6)


@pytest.mark.parametrize(
    "size,layers,hidden,heads,inter,expected_params",
    [
        ("base", 12, 768, 12, 3072, 109_482_240),  # BERT-base, the "110M" model
        ("large", 24, 1024, 16, 4096, 335_141_888),  # BERT-large, the "340M" model
    ],
)
def test_standard_sizes_build_from_config(size, layers, hidden, heads, inter, expected_params):
    config = BertConfig(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                        intermediate_size=inter)
    with torch.device("meta"):  # no memory is allocated for the weights
        model = BertModel(config)
    assert model.num_parameters() == expected_params
    with torch.device("meta"):
        hf = transformers.BertModel(transformers.BertConfig(
            num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads, intermediate_size=inter))
    assert sum(p.numel() for p in hf.parameters()) == expected_params
