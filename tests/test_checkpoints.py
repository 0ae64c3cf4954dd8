"""Checkpoints: the real MiniLM, round trips with transformers, and every way a model dir can be bad."""

from __future__ import annotations

import csv
import json
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bertfit.weights import load_model, read_state_dict, save_model
from bertfit.hub import resolve_model
from bertfit.config import BertConfig
from bertfit.errors import CheckpointError, ConfigError, ModelNotFoundError
from bertfit.heads import BertForSequenceClassification

transformers = pytest.importorskip("transformers")
LABELS = ["negative", "neutral", "positive"]


def real_sentences(tweets_csv: Path, n: int = 200) -> list[str]:
    """n real tweets of varied length, plus long ones made by joining tweets (up to 512 tokens)."""
    with open(tweets_csv, encoding="latin-1", newline="") as f:
        texts = [row["text"] for row in csv.DictReader(f)][:5000:20]
    texts = texts[: n - 20]
    texts += [" ".join(texts[i : i + k]) for i, k in zip(range(0, 200, 10), [2, 5, 10, 20, 40] * 4)]
    return texts


def tiny_classifier(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=99, hidden_size=32, num_attention_heads=4, num_hidden_layers=2,
                        intermediate_size=48, max_position_embeddings=40).with_labels(LABELS)
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # non-trivial LayerNorm and biases
    return model


def tiny_inputs():
    ids = torch.tensor([[2, 5, 9, 33, 3, 0, 0], [2, 7, 8, 9, 10, 11, 3]])
    mask = (ids != 0).long()
    return ids, mask, torch.zeros_like(ids)


@pytest.mark.slow
def test_real_minilm_matches_transformers_on_200_sentences(minilm_dir, tweets_csv):
    texts = real_sentences(tweets_csv)
    assert len(texts) == 200
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    hf = transformers.BertModel.from_pretrained(minilm_dir, attn_implementation="eager").eval()
    ours = load_model(minilm_dir, LABELS)
    worst = {"hidden": 0.0, "pooled": 0.0, "hidden_fast": 0.0, "logits_fast": 0.0}
    with torch.no_grad():
        for i in range(0, len(texts), 32):
            b = tokenizer(texts[i : i + 32], padding=True, truncation=True, max_length=512, return_tensors="pt")
            ref = hf(**b)
            real = b["attention_mask"].bool()
            plain = ours.bert(b["input_ids"], b["attention_mask"], b["token_type_ids"], unpad=False)
            fast = ours.bert(b["input_ids"], b["attention_mask"], b["token_type_ids"], unpad=True)
            worst["hidden"] = max(worst["hidden"], (plain.last_hidden_state - ref.last_hidden_state)[real].abs().max().item())
            worst["hidden_fast"] = max(worst["hidden_fast"], (fast.last_hidden_state - ref.last_hidden_state)[real].abs().max().item())
            worst["pooled"] = max(worst["pooled"], (plain.pooled - ref.pooler_output).abs().max().item())
            ref_logits = ours.classifier(ref.pooler_output)  # same head on transformers' features
            worst["logits_fast"] = max(worst["logits_fast"], (ours(**b) - ref_logits).abs().max().item())
    print("minilm max abs diff:", worst)
    assert max(worst.values()) <= 1e-5, worst


def test_saved_model_loads_in_transformers_with_same_logits(tmp_path):
    ours = tiny_classifier()
    save_model(ours, tmp_path)
    hf, info = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == [] or info["missing_keys"] == set()
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    assert hf.config.id2label == dict(enumerate(LABELS))
    ids, mask, types = tiny_inputs()
    with torch.no_grad():
        assert (hf.eval()(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
                - ours(ids, mask, types)).abs().max() <= 1e-5


def test_transformers_checkpoints_load_in_bertfit(tmp_path):
    torch.manual_seed(1)
    config = transformers.BertConfig(vocab_size=99, hidden_size=32, num_attention_heads=4, num_hidden_layers=2,
                                     intermediate_size=48, max_position_embeddings=40,
                                     id2label=dict(enumerate(LABELS)), label2id={l: i for i, l in enumerate(LABELS)})
    hf = transformers.BertForSequenceClassification(config).eval()
    hf.save_pretrained(tmp_path / "cls")
    ours = load_model(tmp_path / "cls", require_head=True)
    assert ours.config.labels == LABELS
    ids, mask, types = tiny_inputs()
    with torch.no_grad():
        assert (hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits - ours(ids, mask, types)).abs().max() <= 1e-5
    # A pretraining checkpoint (bert. prefix + cls.* heads) and a bare BertModel load as encoders.
    pre = transformers.BertForPreTraining(config).eval()
    pre.save_pretrained(tmp_path / "pre")
    bare = transformers.BertModel(config).eval()
    bare.save_pretrained(tmp_path / "bare")
    for name, ref in (("pre", pre.bert), ("bare", bare)):
        model = load_model(tmp_path / name, LABELS)
        with torch.no_grad():
            assert (model.bert(ids, mask, types).pooled - ref(input_ids=ids, attention_mask=mask,
                                                             token_type_ids=types).pooler_output).abs().max() <= 1e-5


def test_legacy_bin_and_sharded_safetensors(tmp_path):
    ours = tiny_classifier(2)
    save_model(ours, tmp_path / "ref")
    state = read_state_dict(tmp_path / "ref")
    # pytorch_model.bin with the old position_ids buffer
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text((tmp_path / "ref" / "config.json").read_text())
    torch.save({**state, "bert.embeddings.position_ids": torch.arange(40)[None]}, legacy / "pytorch_model.bin")
    # two safetensors shards with an index
    from safetensors.torch import save_file
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text((tmp_path / "ref" / "config.json").read_text())
    keys = sorted(state)
    halves = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for fname, ks in halves.items():
        save_file({k: state[k] for k in ks}, str(sharded / fname))
    index = {"metadata": {}, "weight_map": {k: f for f, ks in halves.items() for k in ks}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    ids, mask, types = tiny_inputs()
    with torch.no_grad():
        expected = ours(ids, mask, types)
        for d in (legacy, sharded):
            assert torch.equal(load_model(d, require_head=True)(ids, mask, types), expected)


# --- bad inputs ----------------------------------------------------------------------------


def test_directory_without_config(tmp_path):
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        resolve_model(tmp_path)


def test_hidden_size_not_divisible_by_heads(tmp_path):
    with pytest.raises(ConfigError, match="hidden_size 100 is not divisible by num_attention_heads 12"):
        BertConfig(hidden_size=100, num_attention_heads=12)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 100, "num_attention_heads": 12}))
    with pytest.raises(ConfigError, match="not divisible"):
        load_model(tmp_path, LABELS)


@pytest.mark.parametrize("bad,match", [
    ({"hidden_act": "swishy"}, "unknown hidden_act 'swishy'"),
    ({"num_hidden_layers": 0}, "num_hidden_layers must be a positive integer"),
    ({"model_type": "roberta"}, "model_type 'roberta' is not a BERT model"),
])
def test_invalid_configs_are_named(bad, match):
    with pytest.raises(ConfigError, match=match):
        BertConfig.from_dict({"model_type": "bert", **bad})


def test_truncated_safetensors(tmp_path):
    save_model(tiny_classifier(), tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable safetensors file"):
        load_model(tmp_path)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    save_model(tiny_classifier(), tmp_path)
    (tmp_path / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    with open(tmp_path / "pytorch_model.bin", "wb") as f:
        pickle.dump({"bert.embeddings.word_embeddings.weight": _Payload(marker)}, f)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_model(tmp_path)
    assert not marker.exists()


def test_missing_and_unexpected_weights_are_named(tmp_path):
    save_model(tiny_classifier(), tmp_path)
    from safetensors.torch import load_file, save_file
    state = load_file(str(tmp_path / "model.safetensors"))
    dropped = dict(state)
    del dropped["bert.encoder.layer.1.output.dense.weight"]
    save_file(dropped, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing weights: bert\.encoder\.layer\.1\.output\.dense\.weight"):
        load_model(tmp_path)
    save_file({**state, "bert.encoder.layer.7.extra.weight": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected weights.*bert\.encoder\.layer\.7\.extra\.weight"):
        load_model(tmp_path)
    save_file({**state, "classifier.weight": torch.full((3, 32), float("nan"))}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="classifier.weight holds NaN"):
        load_model(tmp_path)


@pytest.mark.parametrize("offline", ["unreachable hub", "offline mode"])
def test_hub_id_offline_fails_fast_with_a_clear_message(tmp_path, offline):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "BERTFIT_OFFLINE")}
    env["HF_HOME"] = str(tmp_path / "hf")  # an empty hub cache
    if offline == "offline mode":
        env["HF_HUB_OFFLINE"] = "1"
    else:
        # Forced, not assumed: the hub is a loopback port that nothing listens on, so the test takes
        # the no-network path on a machine with a network too.
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            env["HF_ENDPOINT"] = f"http://127.0.0.1:{s.getsockname()[1]}"
    code = (
        "from bertfit.hub import resolve_model\n"
        "try:\n    resolve_model('bert-base-cased')\n"
        "except Exception as e:\n    print(type(e).__name__, e)\n"
    )
    # A hang raises TimeoutExpired and fails the test. The bound is generous: it also covers the
    # interpreter importing torch, which takes well over 10 s on a saturated 2-core machine, while a
    # hub client that retried or waited on a socket would take minutes.
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=90)
    assert "ModelNotFoundError" in out.stdout, out.stdout + out.stderr
    assert "'bert-base-cased'" in out.stdout and "local model directory" in out.stdout
    assert ("offline mode is set" if offline == "offline mode" else "cannot be reached") in out.stdout


def test_unknown_names_and_files_are_refused(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such directory"):
        resolve_model("./not/here")
    (tmp_path / "f.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="is a file"):
        resolve_model(tmp_path / "f.bin")


def test_a_missing_pooler_is_a_warning_only_for_a_head_that_reads_it(tmp_path, tiny_model_dir, caplog):
    """Issue 31's false alarm: a span or token head never reads the pooler, so loading one without it
    says nothing the CLI shows (INFO and above); a sequence head reads it, so that warns, once."""
    import logging
    import shutil

    from safetensors.torch import load_file, save_file

    from bertfit.heads import BertForQuestionAnswering, BertForSequenceClassification, BertForTokenClassification
    from bertfit.weights import load_config, load_into, read_state_dict

    directory = tmp_path / "no-pooler"
    shutil.copytree(tiny_model_dir, directory)
    state = load_file(str(directory / "model.safetensors"))
    assert any(k.startswith("bert.pooler.") for k in state)
    save_file({k: v for k, v in state.items() if not k.startswith("bert.pooler.")}, str(directory / "model.safetensors"))
    config = load_config(directory, ["x", "y"])
    for head, warned in ((BertForQuestionAnswering, False), (BertForTokenClassification, False),
                         (BertForSequenceClassification, True)):
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="bertfit"):
            load_into(head(config), read_state_dict(directory), directory, require_head=False)
        said = [r for r in caplog.records if "pooler" in r.getMessage()]
        assert [r.levelno for r in said if r.levelno >= logging.INFO] == ([logging.WARNING] if warned else []), head
