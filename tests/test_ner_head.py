"""The token-classification head against transformers' BertForTokenClassification (fp32, eval mode)."""

from __future__ import annotations

import pytest
import torch

from bertfit.weights import load_into, to_transformers_state_dict
from bertfit.config import BertConfig
from bertfit.heads import HEADS, BertForTokenClassification, token_loss

transformers = pytest.importorskip("transformers")
from test_model import TINY_CONFIGS, random_batch  # noqa: E402

TOL = 1e-5
TAGS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


def token_pair(overrides: dict, seed: int = 0):
    torch.manual_seed(seed)
    base = dict(vocab_size=120, max_position_embeddings=64, **overrides)
    hf = transformers.BertForTokenClassification(
        transformers.BertConfig(**base, num_labels=len(TAGS), attn_implementation="eager")).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.normal_(0, 0.5 if "weight" not in name else 0.1).add_(1.0 if "LayerNorm.weight" in name else 0.0)
    ours = BertForTokenClassification(BertConfig(**base).with_labels(TAGS)).eval()
    load_into(ours, hf.state_dict(), source="test", require_head=True)
    return hf, ours


def test_registered_and_needs_tokens():
    assert HEADS["token"] is BertForTokenClassification and BertForTokenClassification.output_axes == ("batch", "sequence", "label")


@pytest.mark.parametrize("name", TINY_CONFIGS)
def test_token_head_parity_padded_batches(name):
    hf, ours = token_pair(TINY_CONFIGS[name])
    ids, mask, types = random_batch(120, [17, 3, 30, 1, 30, 9], TINY_CONFIGS[name].get("type_vocab_size", 2))
    real = mask.bool()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        for fast in (False, True):
            got = ours(ids, mask, types, fast=fast)
            assert got.shape == ref.shape
            assert (got - ref)[real].abs().max() <= TOL
    # Our weights under transformers' names load back with nothing missing or unexpected.
    fresh = transformers.BertForTokenClassification(hf.config).eval()
    result = fresh.load_state_dict(to_transformers_state_dict(ours), strict=False)
    assert not [k for k in result.missing_keys if "position_ids" not in k] and not result.unexpected_keys


def test_token_loss_matches_transformers():
    hf, ours = token_pair(TINY_CONFIGS["h32-l2-gelu"], seed=5)
    ids, mask, types = random_batch(120, [9, 14, 4], 2, seed=6)
    labels = torch.randint(0, len(TAGS), ids.shape)
    labels[mask == 0] = -100
    labels[:, 0] = -100
    labels[1, 3:6] = -100
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels).loss
        total, weight = token_loss(ours(ids, mask, types), labels)
    assert float(total / weight) == pytest.approx(float(ref), abs=1e-6)
    w = torch.tensor([0.5, 2.0, 1.0, 3.0, 1.0])
    with torch.no_grad():
        logits = ours(ids, mask, types)
        ref_w = torch.nn.functional.cross_entropy(logits.reshape(-1, 5), labels.reshape(-1), weight=w)
        total, weight = token_loss(logits, labels, class_weight=w)
    assert float(total / weight) == pytest.approx(float(ref_w), abs=1e-6)


@pytest.mark.slow
def test_minilm_token_head_parity(minilm_dir):
    from bertfit.weights import load_config
    from bertfit.tokenizer import WordPieceTokenizer

    torch.manual_seed(0)
    hf = transformers.AutoModelForTokenClassification.from_pretrained(
        minilm_dir, num_labels=len(TAGS), attn_implementation="eager").eval()
    ours = BertForTokenClassification(load_config(minilm_dir, TAGS)).eval()
    load_into(ours, hf.state_dict(), source="test", require_head=True)
    tok = WordPieceTokenizer.from_dir(minilm_dir)
    batch = tok(["Apple opened a store in Paris last week.", "Hi", "Barack Obama visited the Café du Monde in New Orleans 😀"])
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        ref = hf(**batch).logits
        for fast in (False, True):
            assert (ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], fast=fast) - ref)[real].abs().max() <= TOL
