"""Weights: the declarative name map from transformers' parameter names to ours, safe reading
(safetensors, or ``pytorch_model.bin`` only through ``torch.load(weights_only=True)``), loading a head
with strict accounting (every tensor in the file used or knowingly ignored, every parameter found;
anything else named in the error) and writing transformers-format directories."""

from __future__ import annotations

import json
import logging
import warnings
import os
import pickle
import re
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import Tensor

from bertfit.config import BertConfig
from bertfit.errors import CheckpointError
from bertfit.hub import resolve_model
from bertfit.heads import BertForSequenceClassification

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# The name map: our parameter name → the transformers name(s) it is made of
# ---------------------------------------------------------------------------------------------

ENCODER_MAP: list[tuple[str, tuple[str, ...]]] = [
    ("embeddings.token.weight", ("embeddings.word_embeddings.weight",)),
    ("embeddings.position.weight", ("embeddings.position_embeddings.weight",)),
    ("embeddings.segment.weight", ("embeddings.token_type_embeddings.weight",)),
    ("embeddings.norm.weight", ("embeddings.LayerNorm.weight",)),
    ("embeddings.norm.bias", ("embeddings.LayerNorm.bias",)),
    # Our fused QKV is the row-wise concatenation of the three projections.
    ("layers.{i}.attention.qkv.{p}", tuple(f"encoder.layer.{{i}}.attention.self.{n}.{{p}}" for n in ("query", "key", "value"))),
    ("layers.{i}.attention.output.{p}", ("encoder.layer.{i}.attention.output.dense.{p}",)),
    ("layers.{i}.attention.norm.{p}", ("encoder.layer.{i}.attention.output.LayerNorm.{p}",)),
    ("layers.{i}.feed_forward.up.{p}", ("encoder.layer.{i}.intermediate.dense.{p}",)),
    ("layers.{i}.feed_forward.down.{p}", ("encoder.layer.{i}.output.dense.{p}",)),
    ("layers.{i}.feed_forward.norm.{p}", ("encoder.layer.{i}.output.LayerNorm.{p}",)),
    ("pooler.dense.{p}", ("pooler.dense.{p}",)),
]
# Tensors a checkpoint may hold that a head does not use (a head's own weight_map claims its
# tensors first, so a masked-LM head keeps cls.*).
IGNORED = re.compile(r"^((bert\.)?embeddings\.position_ids|cls\..*|.*\.num_batches_tracked)$")


def expand_map(config: BertConfig, with_head: bool,
               head_map: list[tuple[str, tuple[str, ...]]] | None = None) -> dict[str, tuple[str, ...]]:
    """The name map for this many layers: {our key: (transformers keys…)}; ours are under ``bert.``.

    head_map: the head's own entries (its class's ``weight_map``); the sequence head's by default.
    """
    out: dict[str, tuple[str, ...]] = {}
    for ours, theirs in ENCODER_MAP:
        for i in range(config.num_hidden_layers) if "{i}" in ours else [None]:
            for p in ("weight", "bias") if "{p}" in ours else [None]:
                key = ours.format(i=i, p=p)
                out["bert." + key] = tuple("bert." + t.format(i=i, p=p) for t in theirs)
    if with_head:
        for ours, theirs in head_map if head_map is not None else BertForSequenceClassification.weight_map:
            for p in ("weight", "bias"):
                out[ours.format(p=p)] = tuple(t.format(p=p) for t in theirs)
    return out


def _normalise_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Put every encoder tensor under ``bert.`` (BertModel saves without it) and fix old names."""
    has_prefix = any(k.startswith("bert.") for k in state)
    out = {}
    for key, value in state.items():
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        if not has_prefix and not key.startswith(("classifier.", "cls.")):
            key = "bert." + key
        out[key] = value
    return out


# ---------------------------------------------------------------------------------------------
# Reading weights
# ---------------------------------------------------------------------------------------------


def weight_files(directory: Path) -> list[Path]:
    """The weight files of a model directory, preferring safetensors."""
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index}: not a valid safetensors index ({exc})") from None
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise CheckpointError(f"{index}: shard files missing: {', '.join(missing)}")
        return [directory / s for s in shards]
    legacy = directory / "pytorch_model.bin"
    if legacy.is_file():
        return [legacy]
    raise CheckpointError(
        f"{directory}: no weights found (looked for model.safetensors, model.safetensors.index.json, "
        "pytorch_model.bin)"
    )


def read_weights(path: Path) -> dict[str, Tensor]:
    """All tensors of one weights file, read without running any code from it."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"{path}: not a readable safetensors file ({exc}); the file may be truncated or corrupt"
            ) from None
    try:
        # weights_only=True: the unpickler accepts tensors and plain containers only, so a
        # malicious pickle is refused before any of its code can run. Never fall back.
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=False)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: refused to load: it is not a plain weights file ({first_line[:300]}). bertfit only "
            "reads weights (safetensors, or pickle restricted to tensors) and never runs code from a checkpoint"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a mapping of parameter names to tensors")
    return state


def read_state_dict(directory: Path) -> dict[str, Tensor]:
    state: dict[str, Tensor] = {}
    for path in weight_files(directory):
        state.update(read_weights(path))
    return state


def _check_tensor(name: str, value: Tensor, shape: tuple[int, ...], source: Path) -> None:
    if tuple(value.shape) != shape:
        raise CheckpointError(
            f"{source}: {name} has shape {tuple(value.shape)}, expected {shape} for this config.json"
        )
    if not value.is_floating_point():
        raise CheckpointError(f"{source}: {name} has dtype {value.dtype}, expected a floating-point tensor")
    if not bool(torch.isfinite(value).all()):
        raise CheckpointError(f"{source}: {name} holds NaN or infinite values")


def load_into(
    model: BertForSequenceClassification, state: dict[str, Tensor], source: Path, *, require_head: bool
) -> None:
    """Copy a transformers-named state dict into ``model``, accounting for every tensor."""
    state = _normalise_keys(state)
    mapping = expand_map(model.config, with_head=True, head_map=_head_map(model))
    params = model.state_dict()
    used: set[str] = set()
    missing: list[str] = []
    new_state: dict[str, Tensor] = {}
    for ours, theirs in mapping.items():
        found = [state.get(t) for t in theirs]
        if any(t is None for t in found):
            missing.extend(t for t, v in zip(theirs, found) if v is None)
            continue
        value = found[0] if len(found) == 1 else torch.cat(found, dim=0)
        new_state[ours] = value
        used.update(theirs)
    unexpected = sorted(k for k in state if k not in used and not IGNORED.match(k))
    if unexpected:
        raise CheckpointError(
            f"{source}: unexpected weights not part of a BERT encoder: {', '.join(unexpected[:20])}"
            + (f" (and {len(unexpected) - 20} more)" if len(unexpected) > 20 else "")
        )
    # The head's own tensors (its weight_map): absent from a pretrained encoder, so initialised fresh.
    head_map = _head_map(model)
    head = {ours.format(p=p) for ours, _ in head_map for p in ("weight", "bias")} & set(mapping)
    head_names = {t.format(p=p) for _, theirs in head_map for t in theirs for p in ("weight", "bias")}
    pooler = {"bert.pooler.dense.weight", "bert.pooler.dense.bias"}
    missing_set = set(missing)
    model.fresh_head = False  # read by the job: a task may fit a fresh head to its targets (regression)
    first = sorted(head)[-1]  # "<layer>.weight": its rows are the head's outputs
    # A head of several parts (pretraining: masked LM + NSP) loads the parts a checkpoint has.
    partial = len(head_map) > 1
    if missing_set & head_names and not partial:
        if require_head:
            raise CheckpointError(f"{source}: no head weights ({', '.join(sorted(missing_set & head_names))}); "
                                  "this is not a trained model of this task")
        missing_set -= head_names
        for key in head:
            new_state.pop(key, None)
        model.fresh_head = True
        logger.info("%s head initialised fresh (%d outputs)", type(model).__name__, model.config.num_labels)
    elif missing_set & head_names:
        # A head with parts (pretraining): the parts the checkpoint has are loaded, the others start fresh
        # (MiniLM has no masked-LM head; a BertForMaskedLM checkpoint has no NSP head).
        absent = sorted(missing_set & head_names)
        if require_head:
            raise CheckpointError(f"{source}: no {getattr(model, 'architecture', 'head')} weights ({', '.join(absent[:4])}); "
                                  "this checkpoint does not have the head this needs")
        missing_set -= head_names
        for ours, theirs in mapping.items():
            if any(t in absent for t in theirs):
                new_state.pop(ours, None)
        model.fresh_head = True
        logger.info("%s: initialised fresh (the checkpoint does not have %s)", type(model).__name__, ", ".join(absent[:4]))
    elif first in new_state and new_state[first].shape[0] != params[first].shape[0]:
        if require_head:
            raise CheckpointError(
                f"{source}: the head has {new_state[first].shape[0]} outputs but config.json "
                f"lists {model.config.num_labels} labels"
            )
        logger.warning("checkpoint head has %d outputs, the task has %d: head initialised fresh",
                       new_state[first].shape[0], params[first].shape[0])
        for key in head:
            new_state.pop(key, None)
        model.fresh_head = True
    if missing_set & pooler and not missing_set - pooler:
        # A token or span head never reads the pooler, nor a masked-LM model without NSP: nothing to say
        # to the user (DEBUG; the CLI shows INFO), since a random pooler cannot change what they get.
        needed = getattr(model, "uses_pooler", True) and getattr(model, "nsp", True) is not None
        logger.log(logging.WARNING if needed else logging.DEBUG, "%s has no pooler weights; the pooler is initialised "
                   "randomly", source)
        missing_set -= pooler
    if missing_set:
        names = sorted(missing_set)
        raise CheckpointError(
            f"{source}: missing weights: {', '.join(names[:20])}" + (f" (and {len(names) - 20} more)" if len(names) > 20 else "")
        )
    for key, value in new_state.items():
        _check_tensor(key, value, tuple(params[key].shape), source)
    with torch.no_grad():
        for key, value in new_state.items():
            params[key].copy_(value.to(params[key].dtype))


def _head_map(model: torch.nn.Module) -> list[tuple[str, tuple[str, ...]]]:
    """The model's head entries: an instance's own ``head_map`` (a head with optional parts) or its class's."""
    return getattr(model, "head_map", None) or type(model).weight_map


def to_transformers_state_dict(model: BertForSequenceClassification) -> dict[str, Tensor]:
    """Our parameters under transformers' names (fused QKV split back into query/key/value)."""
    ours = model.state_dict()
    out: dict[str, Tensor] = {}
    for key, theirs in expand_map(model.config, with_head=True, head_map=_head_map(model)).items():
        if key.startswith("bert.pooler.") and not getattr(model, "uses_pooler", True):
            continue  # transformers' token and span heads have no pooler (add_pooling_layer=False): write none
        parts = ours[key].chunk(len(theirs), dim=0) if len(theirs) > 1 else (ours[key],)
        for name, part in zip(theirs, parts):
            out[name] = part.detach().to("cpu").contiguous().clone()
    return out


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------


def load_config(directory: Path, labels: Iterable[str] | None = None) -> BertConfig:
    """config.json of a model directory; a head named only by its architecture gets the problem
    type the task table gives that architecture (a token or span head has no problem_type)."""
    from bertfit.tasks.table import ARCHITECTURE_PROBLEM_TYPES

    config = BertConfig.from_json_file(directory / "config.json", architectures=ARCHITECTURE_PROBLEM_TYPES)
    if labels is not None:
        labels = list(labels)
        if config.labels != labels:
            config = config.with_labels(labels)
    return config


def head_class(problem_type: str) -> type:
    """The head that reads outputs as ``problem_type`` says (heads declare theirs in ``problem_types``)."""
    from bertfit.heads import HEADS

    for head in HEADS.values():
        if problem_type in getattr(head, "problem_types", ()):
            return head
    return BertForSequenceClassification


def load_model(
    name_or_path: str | os.PathLike,
    labels: Iterable[str] | None = None,
    *,
    require_head: bool = False,
    **config_overrides,
) -> BertForSequenceClassification:
    """A classifier from a model directory, bundled name or hub id.

    labels: the task's classes (a fresh head when they differ from the checkpoint's).
    require_head: the checkpoint must hold a trained head (prediction).
    """
    directory = resolve_model(name_or_path)
    config = load_config(directory, labels)
    if config_overrides:
        config = config.replace(**config_overrides)
    if config.num_labels < (2 if config.problem_type == "single_label_classification" else 1):
        raise CheckpointError(
            f"{directory}: config.json has no labels (id2label); pass the task's labels to build a classifier"
        )
    model = head_class(config.problem_type)(config)
    load_into(model, read_state_dict(directory), directory, require_head=require_head)
    model.eval()
    return model


def save_model(model: BertForSequenceClassification, directory: str | os.PathLike, tokenizer=None) -> Path:
    """Write a Hugging Face-format directory: config.json, model.safetensors, tokenizer files.

    Files are written to temporary names and renamed, so an interrupted save leaves either the
    old file or the new one.
    """
    from safetensors.torch import save_file

    from bertfit.io import fsync_dir, fsync_file, write_bytes_durably

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / "model.safetensors"
    tmp = weights.with_name(".model.safetensors.tmp")
    save_file(to_transformers_state_dict(model), str(tmp), metadata={"format": "pt"})
    fsync_file(tmp)  # durable before the rename makes it visible (power loss, not just a kill)
    os.replace(tmp, weights)
    tmp_config = directory / ".config.json.tmp"
    config = model.config.to_dict()
    if getattr(model, "architecture", None):  # a head other than the classifier names its transformers class
        config["architectures"] = [model.architecture]
    write_bytes_durably(tmp_config, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
    os.replace(tmp_config, directory / "config.json")
    fsync_dir(directory)
    if model.config.classifier_input != "pooled":
        logger.warning(
            "classifier_input=%r: transformers' BertForSequenceClassification applies the pooler, "
            "so it will not reproduce this model's logits; load it with bertfit",
            model.config.classifier_input,
        )
    if tokenizer is not None:
        tokenizer.save(directory)
    return directory


def load_pretraining(name_or_path: str | os.PathLike, *, nsp: bool | None = None, require_head: bool = False):
    """A BertForPreTraining (masked-LM head, and NSP head unless ``nsp=False``) from a model directory,
    bundled name or hub id. The encoder must be there; head parts the checkpoint lacks start fresh
    (MiniLM has no masked-LM head: a fresh transform and a zero bias over the tied embeddings) unless
    ``require_head``. ``nsp=None``: an NSP head exactly when the checkpoint has one.
    """
    from bertfit.heads import BertForPreTraining

    directory = resolve_model(name_or_path)
    config = load_config(directory)
    state = read_state_dict(directory)
    if nsp is None:
        nsp = any(k.endswith("seq_relationship.weight") for k in state)
    model = BertForPreTraining(config.replace(id2label={}), nsp=nsp)
    load_into(model, state, directory, require_head=require_head)
    model.eval()
    return model


def load_classifier(*args: Any, **kwargs: Any) -> torch.nn.Module:
    """Deprecated name of ``load_model`` (every head loads through it, not only classifiers)."""
    warnings.warn("load_classifier is now load_model; the old name will be removed in a later release",
                  DeprecationWarning, stacklevel=2)
    return load_model(*args, **kwargs)


def save_classifier(*args: Any, **kwargs: Any) -> Path:
    """Deprecated name of ``save_model``."""
    warnings.warn("save_classifier is now save_model; the old name will be removed in a later release",
                  DeprecationWarning, stacklevel=2)
    return save_model(*args, **kwargs)
