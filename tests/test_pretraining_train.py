"""`bertfit pretrain` end to end on a tiny model: it learns (beats the unigram baseline), writes a run that
loads in transformers with no missing weights, resumes exactly after a kill, and is a base model for
`bertfit train`."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from conftest import WORDS, build_tiny_model_dir, synthetic_rows, write_csv


def _corpus(path: Path, documents: int = 200, seed: int = 0) -> Path:
    """Documents of sentences that repeat one word: a masked word is guessable from its sentence (a model
    must learn to copy from context), while the unigram distribution over the 40 words is flat."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(documents):
            for _ in range(rng.randint(3, 6)):
                f.write(" ".join([rng.choice(WORDS)] * rng.randint(4, 9)) + "\n")
            f.write("\n")
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-pretrain-base"), dropout=0.0)


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "bertfit", "-q", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def test_pretraining_beats_the_unigram_baseline_and_loads_in_transformers(tmp_path, model_dir):
    from bertfit.train.pretrain import PretrainSettings, pretrain
    from bertfit.tasks.pretrain.prepare import prepare_corpus
    from bertfit.tasks.pretrain.task import Pretrain
    from bertfit.tokenizer import WordPieceTokenizer
    from bertfit.train.config import TrainConfig

    corpus = _corpus(tmp_path / "corpus.txt")
    config = TrainConfig(model=str(model_dir), output_dir=str(tmp_path / "run"), max_length=32, epochs=20, lr=5e-3,
                         warmup_ratio=0.05, weight_decay=0.0, batch_size=32, log_every=50, threads=2)
    settings = PretrainSettings(corpus=(str(corpus),), nsp=True, validation_fraction=0.1)
    result = pretrain(config, settings)
    # The unigram baseline: always guess the held-out slice's most frequent masked word.
    tokenizer = WordPieceTokenizer.from_dir(model_dir)
    data = prepare_corpus([str(corpus)], tokenizer, max_length=32, nsp=True, seed=0, validation_fraction=0.1)
    task = Pretrain(nsp=True)
    task.set_masker(Pretrain.masker_for(tokenizer, 0))
    split = task.encode(tokenizer, data.validation, 32)
    labels = task.collate(split, list(range(len(split))), tokenizer.pad_id, epoch=None).labels[:, 1:]
    gold = labels[labels != -100].tolist()
    baseline = Counter(gold).most_common(1)[0][1] / len(gold)
    after, before = result.metrics["validation"], result.metrics["before"]
    assert after["masked_tokens"] == len(gold)  # evaluation scored exactly the fixed held-out masks
    assert after["mlm_accuracy"] > max(0.3, 3 * baseline), (after, baseline)
    assert after["perplexity"] < before["perplexity"] / 2
    run = result.run_dir
    for name in ("model.safetensors", "config.json", "tokenizer.json", "metrics.json", "report.md", "fills.json",
                 "pretrain_config.json", "data.json"):
        assert (run / name).is_file(), name
    report = (run / "report.md").read_text(encoding="utf-8")
    assert "perplexity" in report
    # Worded as pretraining, not as a classifier: no labels, mistakes or labelled-file settings.
    assert "further pretrained on" in report and "with masked LM and next-sentence prediction" in report
    assert "fine-tuned" not in report and "Most confident mistakes" not in report
    assert "| label_column |" not in report and "| pretrain.nsp | true |" in report
    transformers = pytest.importorskip("transformers")
    for cls in (transformers.AutoModelForPreTraining, transformers.AutoModelForMaskedLM):
        model, info = cls.from_pretrained(run, output_loading_info=True)
        assert not info["missing_keys"] and not info["mismatched_keys"], info
    assert type(transformers.AutoModelForPreTraining.from_pretrained(run)).__name__ == "BertForPreTraining"


def test_resume_after_a_kill_is_exact_and_the_run_fine_tunes(tmp_path, model_dir):
    from safetensors.torch import load_file

    corpus = _corpus(tmp_path / "corpus.txt", documents=60, seed=1)
    common = ["pretrain", "--corpus", str(corpus), "--model", str(model_dir), "--max-length", "32", "--epochs", "2",
              "--batch-size", "8", "--save-every", "3", "--lr", "1e-3", "--whole-word-masking", "--threads", "1"]
    whole = _cli(*common, "--output-dir", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    killed = _cli(*common, "--output-dir", str(tmp_path / "killed"), env={"BERTFIT_KILL_AT_STEP": "7"})
    assert killed.returncode != 0
    resumed = _cli("pretrain", "--resume", str(tmp_path / "killed"))
    assert resumed.returncode == 0, resumed.stderr
    a, b = load_file(str(tmp_path / "whole" / "model.safetensors")), load_file(str(tmp_path / "killed" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "whole" / "metrics.json").read_text()) == \
        json.loads((tmp_path / "killed" / "metrics.json").read_text())
    # The chain: fine-tune a classifier from the further-pretrained encoder.
    labelled = write_csv(tmp_path / "labelled.csv", synthetic_rows(120, seed=2))
    train = _cli("train", "--model", str(tmp_path / "whole"), "--train-file", str(labelled), "--output-dir",
                 str(tmp_path / "classifier"), "--max-steps", "3", "--batch-size", "8", "--threads", "1")
    assert train.returncode == 0, train.stderr
    weights = load_file(str(tmp_path / "classifier" / "model.safetensors"))
    assert "classifier.weight" in weights and not any(k.startswith("cls.") for k in weights)


@pytest.mark.parametrize("args, message", [
    ([], "pass --corpus"),
    (["--corpus", "missing.txt"], "no such file"),
])
def test_pretrain_command_errors(tmp_path, model_dir, args, message):
    done = _cli("pretrain", "--model", str(model_dir), "--output-dir", str(tmp_path / "run"), *args)
    assert done.returncode != 0 and message in done.stderr and "Traceback" not in done.stderr


def test_one_document_corpus_needs_no_nsp(tmp_path, model_dir):
    corpus = tmp_path / "one.txt"
    corpus.write_text("only one document here.\nwith two sentences.\n", encoding="utf-8")
    done = _cli("pretrain", "--corpus", str(corpus), "--model", str(model_dir), "--output-dir", str(tmp_path / "run"),
                "--corpus-format", "sentences")
    assert done.returncode != 0 and "--no-nsp" in done.stderr and "Traceback" not in done.stderr



def test_the_reports_settings_are_what_pretraining_reads():
    """The pretraining report lists TrainConfig settings by name: each is a real field, and no task's
    declared setting (NER's tag_column, QA's doc_stride, ...) or labelled-file setting is among them."""
    import dataclasses

    from bertfit.train.pretrain import PRETRAINING_READS, _training_settings
    from bertfit.tasks.declared import TRAIN_SETTINGS
    from bertfit.train.config import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(PRETRAINING_READS) <= fields
    shown = _training_settings(TrainConfig(model="minilm-l6", lr=1e-4))
    assert list(shown) == list(PRETRAINING_READS) and shown["lr"] == 1e-4
    assert not set(shown) & (set(TRAIN_SETTINGS) | {"train_file", "label_column", "class_weights", "calibrate"})
