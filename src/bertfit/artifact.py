"""The model-directory contract: which task a model does and how to read its inputs and outputs.

A run directory holds, besides the Hugging Face files (config.json, model.safetensors, tokenizer),
``task.json``: the task's registry name, its label names, what it learned (multi-label thresholds,
regression target scaling, calibration), the reading settings its labels need (label map, separator),
the max_length it was trained with and how it reads long texts (``long_text``: truncation strategy or
windows, see windows.py; absent in older runs, which read the head; set on the task, which encodes
with it). This module is its one reader and writer; a directory without it (a
run from before the task seam, or any transformers checkpoint) is read from config.json's
problem_type and id2label.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bertfit.config import BertConfig
from bertfit.errors import CheckpointError, ConfigError
from bertfit.tasks import build_task, task_class
from bertfit.tasks.base import Task
from bertfit.tasks.windows import LongText

logger = logging.getLogger(__name__)

TASK_FILE = "task.json"
FORMAT = 1


@dataclass
class Artifact:
    task: Task
    max_length: int = 512
    reading: dict[str, Any] = field(default_factory=dict)  # label_map, label_separator


def write_task(directory: str | os.PathLike, task: Task, *, max_length: int, reading: dict[str, Any]) -> Path:
    from bertfit.io import write_json_atomic

    path = Path(directory) / TASK_FILE
    write_json_atomic(path, {"format": FORMAT, "task": task.name, "labels": task.labels, "state": task.state(),
                             "max_length": max_length, "reading": reading,
                             "long_text": task.long_text.to_dict()})
    return path


def task_of_config(config: BertConfig) -> Task:
    """The task a model's config.json implies (its problem_type and labels), for a directory
    without task.json: a run from before the task seam, or any transformers checkpoint. The one
    place a run's task is resolved from the model itself."""
    return task_class(config.problem_type)(config.labels)


def read_artifact(directory: str | os.PathLike, config: BertConfig) -> Artifact:
    """The task of a model directory (task.json, else config.json), rebuilt for prediction."""
    directory = Path(directory)
    path = directory / TASK_FILE
    if not path.is_file():
        return Artifact(task_of_config(config), max_length=_train_config_max_length(directory))
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ValueError(f"expected a JSON object with format {FORMAT}")
        name, labels = raw["task"], [str(label) for label in raw["labels"]]
        cls = task_class(name)
        if labels != config.labels:
            raise ValueError(f"its labels {labels[:10]} differ from config.json's {config.labels[:10]}")
        if cls.problem_type != config.problem_type:
            raise ValueError(f"task {name!r} does not match config.json's problem_type {config.problem_type!r}")
        task = build_task(name, labels, raw.get("state") or {})
        max_length = int(raw.get("max_length", 512))
        # How the model reads long texts (windows.py; a run without it read the head): the task encodes with it.
        task.long_text = LongText.from_settings(raw.get("long_text") or {})
        task.long_text.check(max_length)
        return Artifact(task, max_length=max_length, reading=dict(raw.get("reading") or {}))
    except (ValueError, KeyError, TypeError, ConfigError) as exc:
        raise CheckpointError(f"{path} is unusable ({exc}); retrain, or remove it to use config.json's labels") from None


def _train_config_max_length(directory: Path) -> int:
    """The max_length a run from before task.json was trained with (train_config.json), else 512."""
    path = directory / "train_config.json"
    if path.is_file():
        try:
            return int(json.loads(path.read_text(encoding="utf-8")).get("max_length", 512))
        except (ValueError, TypeError, AttributeError):
            logger.warning("%s is unreadable; predicting with max_length 512", path)
    return 512
