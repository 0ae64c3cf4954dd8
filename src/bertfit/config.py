"""BertConfig: a frozen mirror of a checkpoint's config.json, validated once when it is built."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from bertfit.errors import ConfigError

# Activations the feed-forward block knows. "gelu" is the exact erf form BERT was trained with;
# the tanh approximation is a different function and gives different hidden states.
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish")

# Head on the encoder: "pooled" = dropout + linear on tanh(W·h_[CLS]) (transformers'
# BertForSequenceClassification, so saved runs load there with identical logits);
# "cls" = dropout + linear straight on h_[CLS].
CLASSIFIER_INPUTS = ("pooled", "cls")

# transformers' names for what a sequence head's outputs mean (config.json "problem_type"): softmax
# over classes, independent sigmoids per label, or real-valued targets. transformers validates
# problem_type against these three only; other heads are told apart by config.json's architecture.
# Which problem types and architectures exist is the task table's (tasks/table.py) to say: the
# loader passes its architecture map to from_dict, and the task registry refuses an unknown type.
SEQUENCE_PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 0
    classifier_dropout: float | None = None
    classifier_input: str = "pooled"
    problem_type: str = "single_label_classification"
    id2label: dict[int, str] = field(default_factory=dict)
    # Keys of config.json we do not model but must write back unchanged (e.g. _name_or_path).
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"config: {name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"config: hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}; each head needs an equal share"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(
                f"config: unknown hidden_act {self.hidden_act!r}; known: {', '.join(ACTIVATIONS)}"
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"config: {name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.classifier_dropout is not None and not 0.0 <= self.classifier_dropout < 1.0:
            raise ConfigError(f"config: classifier_dropout must be in [0, 1), got {self.classifier_dropout!r}")
        if not self.layer_norm_eps > 0:
            raise ConfigError(f"config: layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")
        if self.classifier_input not in CLASSIFIER_INPUTS:
            raise ConfigError(
                f"config: classifier_input must be one of {CLASSIFIER_INPUTS}, got {self.classifier_input!r}"
            )
        if not isinstance(self.problem_type, str) or not self.problem_type:
            raise ConfigError(f"config: problem_type must be a non-empty string, got {self.problem_type!r}")
        if sorted(self.id2label) != list(range(len(self.id2label))):
            raise ConfigError(f"config: id2label ids must be 0..N-1, got {sorted(self.id2label)}")
        if len(set(self.id2label.values())) != len(self.id2label):
            raise ConfigError(f"config: id2label has repeated label names: {list(self.id2label.values())}")

    # -- derived ---------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def labels(self) -> list[str]:
        return [self.id2label[i] for i in range(self.num_labels)]

    @property
    def label2id(self) -> dict[str, int]:
        return {label: i for i, label in self.id2label.items()}

    def non_embedding_parameters(self) -> int:
        """Parameters in the encoder layers (what costs FLOPs per token)."""
        h, i = self.hidden_size, self.intermediate_size
        per_layer = 4 * h * h + 4 * h + 2 * h * i + i + h + 4 * h
        return self.num_hidden_layers * per_layer

    def replace(self, **changes: Any) -> "BertConfig":
        return dataclasses.replace(self, **changes)

    def with_labels(self, labels: list[str]) -> "BertConfig":
        return self.replace(id2label={i: str(label) for i, label in enumerate(labels)})

    # -- config.json -----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "config",
                  architectures: Mapping[str, str] | None = None) -> "BertConfig":
        """architectures: transformers class name → problem_type, for a config.json that names its
        head's architecture and no problem_type (weights.load_config passes the task table's)."""
        model_type = raw.get("model_type", "bert")
        if model_type != "bert":
            raise ConfigError(
                f"{source}: model_type {model_type!r} is not a BERT model; bertfit loads model_type 'bert' "
                "(BERT, MiniLM, and other BERT-architecture encoders)"
            )
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ConfigError(
                f"{source}: position_embedding_type {raw['position_embedding_type']!r} is not supported "
                "(only 'absolute', as in BERT)"
            )
        known = {f.name for f in dataclasses.fields(cls)} - {"extra", "id2label", "problem_type"}
        values: dict[str, Any] = {k: raw[k] for k in known if k in raw}
        raw_id2label = raw.get("id2label") or {}
        try:
            values["id2label"] = {int(k): str(v) for k, v in raw_id2label.items()}
        except (TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{source}: id2label must map integer ids to names ({exc})") from None
        # transformers writes id2label LABEL_0/LABEL_1 for a bare encoder; that is not a trained head.
        if values["id2label"] and raw.get("architectures") in (["BertModel"], ["BertForPreTraining"], ["BertForMaskedLM"]):
            values["id2label"] = {}
        # transformers writes null for "infer from the labels' dtype"; the loaded head then trains as
        # single-label (num_labels > 1) or regression (num_labels == 1), which is what we infer too.
        problem_type = raw.get("problem_type")
        architectures_map, architectures = architectures, raw.get("architectures") or []
        by_architecture = [(architectures_map or {})[a] for a in architectures if a in (architectures_map or {})]
        if problem_type is None and by_architecture:
            problem_type = by_architecture[0]
        if problem_type is None:
            problem_type = "regression" if len(values["id2label"]) == 1 else "single_label_classification"
        values["problem_type"] = problem_type
        if "bertfit" in raw and isinstance(raw["bertfit"], Mapping):
            values["classifier_input"] = raw["bertfit"].get("classifier_input", "pooled")
        extra = {k: v for k, v in raw.items()
                 if k not in known and k not in ("id2label", "label2id", "bertfit", "problem_type")}
        try:
            return cls(**values, extra=extra)
        except TypeError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    @classmethod
    def from_json_file(cls, path: str | Path, architectures: Mapping[str, str] | None = None) -> "BertConfig":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such file; a model directory needs a config.json")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a JSON object, got {type(raw).__name__}")
        return cls.from_dict(raw, source=str(path), architectures=architectures)

    def to_dict(self) -> dict[str, Any]:
        """config.json contents that transformers' AutoConfig reads as a BertConfig."""
        out: dict[str, Any] = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name in ("extra", "id2label", "classifier_input", "problem_type"):
                continue
            out[f.name] = getattr(self, f.name)
        out["model_type"] = "bert"
        out["position_embedding_type"] = "absolute"
        if self.num_labels:
            # a sequence head: transformers' BertForSequenceClassification with its problem_type; any
            # other head keeps the architecture it was read with (save_model writes the head's own)
            if self.problem_type in SEQUENCE_PROBLEM_TYPES:
                out["architectures"] = ["BertForSequenceClassification"]
                out["problem_type"] = self.problem_type
            out["id2label"] = {str(i): label for i, label in self.id2label.items()}
            out["label2id"] = dict(self.label2id)
        else:
            out["architectures"] = ["BertModel"]
        out["bertfit"] = {"classifier_input": self.classifier_input}
        return out

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / "config.json"
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return path
