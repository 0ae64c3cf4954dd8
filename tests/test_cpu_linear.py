"""PrepackedLinear (small-batch CPU prediction) gives F.linear's numbers and is never stale."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bertfit.config import BertConfig
from bertfit.cpu_linear import SMALL_ROWS, PrepackedLinear, prepack_linears, prepacking_available
from bertfit.heads import BertForSequenceClassification

pytestmark = pytest.mark.skipif(not prepacking_available(), reason="this torch build has no oneDNN")


def test_matches_f_linear_for_small_and_large_inputs_and_uses_the_packed_weight():
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(64, 96))
    assert prepack_linears(layer) == 1
    packed = layer[0]
    assert isinstance(packed, PrepackedLinear)
    with torch.inference_mode():
        for shape in [(1, 64), (7, 64), (SMALL_ROWS, 64), (3, 5, 64), (SMALL_ROWS + 1, 64), (500, 64)]:
            x = torch.randn(shape)
            assert torch.allclose(packed(x), F.linear(x, packed.weight, packed.bias), atol=1e-5)
    assert packed._packed is not None  # the small inputs did go through oneDNN


def test_repacks_after_the_weight_changes_in_place():
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(32, 16))
    prepack_linears(layer)
    x = torch.randn(4, 32)
    with torch.inference_mode():
        before = layer[0](x)
    with torch.no_grad():
        layer[0].weight.mul_(2.0)  # what an optimizer step or load_state_dict does
    with torch.inference_mode():
        after = layer[0](x)
        expected = F.linear(x, layer[0].weight, layer[0].bias)
    assert not torch.allclose(before, after)
    assert torch.allclose(after, expected, atol=1e-5)


@pytest.mark.parametrize("shape", [(3, 8), (2, 5, 8), (SMALL_ROWS + 7, 8)])
def test_training_gradients_are_f_linear_s(shape):
    """Outside inference mode PrepackedLinear is F.linear: the same output and the same gradients
    for the input, the weight and the bias (small inputs included, which oneDNN takes at inference)."""
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(8, 4))
    prepack_linears(layer)
    packed = layer[0]
    assert isinstance(packed, PrepackedLinear)
    weight = packed.weight.detach().clone().requires_grad_(True)
    bias = packed.bias.detach().clone().requires_grad_(True)
    x = torch.randn(shape, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    upstream = torch.randn(*shape[:-1], 4)
    out = packed(x)
    expected = F.linear(x_ref, weight, bias)
    assert torch.equal(out, expected)
    (out * upstream).sum().backward()
    (expected * upstream).sum().backward()
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-6)
    assert torch.allclose(packed.weight.grad, weight.grad, atol=1e-6)
    assert torch.allclose(packed.bias.grad, bias.grad, atol=1e-6)


def test_prepacked_classifier_keeps_its_state_dict_and_logits():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64).with_labels(["neg", "pos"])
    model = BertForSequenceClassification(config).eval()
    ids = torch.randint(5, 120, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    keys = list(model.state_dict())
    with torch.inference_mode():
        reference = model(ids, mask, fast=False)
    assert prepack_linears(model) == 2 * 4 + 2  # qkv, output, up, down per layer; pooler; classifier
    assert list(model.state_dict()) == keys
    with torch.inference_mode():
        assert (model(ids, mask) - reference).abs().max() < 1e-5
