"""The model card: ``README.md`` in the run directory, in the Hugging Face card format.

YAML metadata (library_name, base_model, pipeline_tag, tags, metrics, and model-index with the run's
validation and test results under the task's hub task type), built with huggingface_hub's
ModelCardData / EvalResult; then a body a reader can trust: what the model was fine-tuned from and
on, its results (with the baseline where there is one), its weakest classes, calibration, how it was
trained and on what, how to load it, and its limitations.

Everything comes from the files the run already wrote (train_config.json, data.json, metrics.json,
precision.json, metrics.jsonl, config.json) and the run's task, so ``evaluate --update-card`` renders
the same card again with a new file's results. card.json keeps what the files do not hold (world
size, wall time, later evaluations) and the SHA-256 of the README bertfit wrote: a README that no
longer matches it was edited by a person, and is never overwritten (the new card goes beside it,
README.bertfit.md). The card names no task: the task object supplies its hub task and metrics.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import platform
from pathlib import Path
from typing import Any, Mapping, Sequence

from bertfit.io import write_json_atomic

logger = logging.getLogger(__name__)

CARD = "README.md"
BESIDE = "README.bertfit.md"  # where the card goes when the user edited README.md
STATE = "card.json"
# Hub ids of the models bertfit bundles (hub.py's short names), for base_model.
BUNDLED_HUB_IDS = {"minilm-l6": "sentence-transformers/all-MiniLM-L6-v2"}
# The hub tasks that have a transformers pipeline (pipeline_tag); others appear in model-index only.
PIPELINES = ("text-classification", "token-classification", "question-answering", "fill-mask")
# bertfit's metric names -> the hub's metric types (Hugging Face evaluate's ids).
METRIC_TYPES = {"accuracy": "accuracy", "macro_f1": "f1", "weighted_f1": "f1", "micro_f1": "f1", "samples_f1": "f1",
                "f1": "f1", "precision": "precision", "recall": "recall", "pearson": "pearsonr",
                "spearman": "spearmanr", "exact_match": "exact_match", "perplexity": "perplexity", "rmse": "rmse",
                "mae": "mae", "r2": "r_squared", "subset_accuracy": "accuracy", "hamming_loss": "hamming_loss",
                "token_accuracy": "accuracy", "mlm_accuracy": "accuracy", "nsp_accuracy": "accuracy", "loss": "loss",
                "mlm_loss": "loss"}
# Per-item tables of a task's metrics (per class, entity type, label, target): the weakest are named.
PER_ITEM = ("per_class", "per_type", "per_label", "per_target")
# The training settings the card lists (the report has them all).
KEY_SETTINGS = ("epochs", "max_steps", "batch_size", "grad_accum", "lr", "warmup_ratio", "weight_decay", "max_length",
                "seed", "metric", "report_to")


def _read(run_dir: Path, name: str) -> Any:
    try:
        return json.loads((run_dir / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def base_model_id(model: str) -> str | None:
    """The hub id of the model a run started from, where it has one (not a local directory)."""
    if model in BUNDLED_HUB_IDS:
        return BUNDLED_HUB_IDS[model]
    if "/" in model and not Path(model).exists() and not model.startswith((".", "/", "~")):
        return model
    return None


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for package in ("bertfit", "torch", "tokenizers", "safetensors", "huggingface_hub"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            continue
    return out


class RunFacts:
    """What the card shows, read from the run directory once."""

    def __init__(self, run_dir: Path, task: Any, state: Mapping[str, Any]) -> None:
        self.run_dir, self.task, self.state = run_dir, task, state
        self.settings = {**(_read(run_dir, "train_config.json") or {}), **(state.get("settings") or {})}
        self.data = _read(run_dir, "data.json") or {}
        metrics = _read(run_dir, "metrics.json") or {}
        self.metrics = {k: v for k, v in metrics.items() if isinstance(v, Mapping) and k in ("validation", "test")}
        self.precision = _read(run_dir, "precision.json") or {}
        self.config = _read(run_dir, "config.json") or {}
        self.log = [json.loads(line) for line in _lines(run_dir / "metrics.jsonl")]
        self.model = str(self.settings.get("model", "?"))
        self.base = base_model_id(self.model)
        self.hub_task = getattr(task, "hub_task", "text-classification")

    def headline(self, split: str) -> list[tuple[str, float]]:
        values = self.metrics.get(split) or {}
        return [(name, float(values[name])) for name in self.task.headline_metrics if _number(values.get(name))]


def _lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError:
        return []


# -- metadata ----------------------------------------------------------------------------------

def card_data(facts: RunFacts) -> Any:
    from huggingface_hub import EvalResult, ModelCardData

    dataset = _dataset_name(facts)
    results = []
    evaluated = [(split, dataset, facts.headline(split)) for split in ("validation", "test")]
    for extra in facts.state.get("evaluations") or []:
        values = extra.get("metrics") or {}
        evaluated.append((None, Path(str(extra.get("file"))).name,  # the whole file: no split of it
                          [(n, float(values[n])) for n in facts.task.headline_metrics if _number(values.get(n))]))
    for split, name, pairs in evaluated:
        for metric, value in pairs:
            results.append(EvalResult(task_type=facts.hub_task, dataset_type=name, dataset_name=name,
                                      dataset_split=split, metric_type=METRIC_TYPES.get(metric, metric),
                                      metric_name=metric, metric_value=round(value, 6)))
    return ModelCardData(
        library_name="bertfit", base_model=facts.base, pipeline_tag=facts.hub_task if facts.hub_task in PIPELINES else None,
        tags=["bertfit", "bert", facts.hub_task, facts.task.name], model_name=facts.run_dir.name,
        metrics=sorted({METRIC_TYPES.get(m, m) for _, _, pairs in evaluated for m, _ in pairs}) or None,
        eval_results=results or None, license=None)


def _dataset_name(facts: RunFacts) -> str:
    files = facts.settings.get("train_file") or (facts.settings.get("pretrain") or {}).get("corpus")
    if isinstance(files, list):
        files = ", ".join(Path(f).name for f in files)
    return Path(files).name if isinstance(files, str) and "," not in files else (files or "the bundled tweets corpus")


# -- body --------------------------------------------------------------------------------------

def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) or "none"
    return str(value)


def body(facts: RunFacts) -> str:
    task, data = facts.task, facts.data
    rows = data.get("rows") or {}
    lines = [f"# {facts.run_dir.name}", ""]
    origin = f"[{facts.base}](https://huggingface.co/{facts.base})" if facts.base else f"`{facts.model}`"
    lines += [f"{origin} {task.trained_as} with bertfit {task.objective()} ({facts.hub_task}).", ""]
    lines += ["## Training data", ""]
    lines.append(f"- **Source:** {_dataset_name(facts)}")
    for source in data.get("sources") or []:
        lines.append(f"- {source}")
    if rows:
        lines.append("- **Rows used:** " + ", ".join(f"{k} {_fmt(v)}" for k, v in rows.items()))
    for key, what in (("rejected", "Rows rejected"), ("duplicates_removed", "Duplicates removed"),
                      ("conflicting_removed", "Conflicting duplicates removed (same text, other label)")):
        if key in data:
            lines.append(f"- **{what}:** {_fmt(data[key])}")
    if facts.settings.get("validation_file") or facts.settings.get("test_file"):
        lines.append(f"- **Split:** the given files (validation: {facts.settings.get('validation_file')}, "
                     f"test: {facts.settings.get('test_file')})")
    elif facts.settings.get("split"):
        lines.append(f"- **Split:** stratified, train/validation/test {_fmt(facts.settings['split'])} "
                     f"(seed {facts.settings.get('split_seed') or facts.settings.get('seed', 0)})")
    lines.append("")
    lines += _results(facts)
    lines += _training(facts)
    lines += _usage(facts)
    lines += _limitations(facts)
    return "\n".join(lines) + "\n"


def _results(facts: RunFacts) -> list[str]:
    lines = ["## Results", ""]
    table = [(split, facts.headline(split), (facts.metrics.get(split) or {}).get("n")) for split in ("validation", "test")]
    table += [(f"{Path(str(e.get('file'))).name} (evaluate)", [(n, float(e['metrics'][n])) for n in facts.task.headline_metrics
               if _number((e.get("metrics") or {}).get(n))], (e.get("metrics") or {}).get("n"))
              for e in facts.state.get("evaluations") or []]
    table = [t for t in table if t[1]]
    if not table:
        return lines + ["No evaluation results were recorded.", ""]
    names = list(dict.fromkeys(n for _, pairs, _ in table for n, _ in pairs))
    lines += ["| split | " + " | ".join(names) + " | examples |", "|---" * (len(names) + 2) + "|"]
    for split, pairs, n in table:
        values = dict(pairs)
        lines.append(f"| {split} | " + " | ".join(_fmt(values.get(k)) if k in values else "–" for k in names)
                     + f" | {_fmt(n) if n is not None else '–'} |")
    lines.append("")
    baseline = facts.data.get("baseline")
    if isinstance(baseline, Mapping) and _number(baseline.get("accuracy")):
        lines += [f"Baseline on the same test split ({baseline.get('name')}; {baseline.get('how', '')}): accuracy "
                  f"{_fmt(baseline['accuracy'])}, macro-F1 {_fmt(baseline.get('macro_f1'))}.", ""]
    split = "test" if "test" in facts.metrics else "validation"
    weakest = _weakest(facts.metrics.get(split) or {})
    if weakest:
        lines += [f"Weakest on the {split} split (F1, support): " + "; ".join(
            f"{name} {_fmt(f1)} ({_fmt(support)})" for name, f1, support in weakest) + ".", ""]
    calibration = (facts.metrics.get(split) or {}).get("calibration")
    if isinstance(calibration, Mapping) and _number(calibration.get("ece_uncalibrated")):
        text = f"Calibration on the {split} split: expected calibration error {_fmt(calibration['ece_uncalibrated'])} raw"
        if _number(calibration.get("ece")):
            text += f", {_fmt(calibration['ece'])} after {calibration.get('method', 'calibration')} scaling fitted on validation"
        lines += [text + " (lower is better; the predicted probabilities are what the model outputs).", ""]
    return lines


def _weakest(metrics: Mapping[str, Any], count: int = 3) -> list[tuple[str, float, Any]]:
    for key in PER_ITEM:
        table = metrics.get(key)
        if isinstance(table, Mapping):
            scored = [(str(name), float(s["f1"]), s.get("support")) for name, s in table.items()
                      if isinstance(s, Mapping) and _number(s.get("f1")) and s.get("support", 1)]
            return sorted(scored, key=lambda t: t[1])[:count]
    return []


def _training(facts: RunFacts) -> list[str]:
    s, p, state = facts.settings, facts.precision, facts.state
    train = [r for r in facts.log if r.get("kind") == "train"]
    lines = ["## Training", ""]
    shown = [f"{k} {s[k]:g}" if isinstance(s[k], float) else f"{k} {_fmt(s[k])}" for k in KEY_SETTINGS if k in s and s[k] not in (None, [], ())]
    lines.append("- **Settings:** " + ", ".join(shown) + " (all of them: train_config.json, report.md)")
    if train:
        speeds = sorted(r["tokens_per_s"] for r in train if _number(r.get("tokens_per_s")))
        lines.append(f"- **Steps:** {_fmt(train[-1]['step'])} (epoch {float(train[-1].get('epoch', 0)):g})"
                     + (f", median {speeds[len(speeds) // 2]:,.0f} tokens/s" if speeds else ""))
    cpu = (p.get("cpu") or {}).get("model")
    what = "bf16 autocast (fp32 weights)" if p.get("bf16") else "fp32"
    lines.append(f"- **Precision and hardware:** {what} on {p.get('device', '?')}"
                 + (f" ({cpu}; {', '.join(p['cpu'].get('isa') or [])})" if cpu else "")
                 + f", dense layers {p.get('dense_kernel', '?')}; world size {_fmt(state.get('world_size', 1))}"
                 + (f" ({state['world_size']} data-parallel processes)" if (state.get("world_size") or 1) > 1 else ""))
    if _number(state.get("wall_time_s")):
        lines.append(f"- **Time:** {state['wall_time_s'] / 60:.1f} min wall clock")
    lines.append("- **Framework versions:** " + ", ".join(f"{k} {v}" for k, v in (state.get("versions") or versions()).items()))
    return lines + [""]


def _usage(facts: RunFacts) -> list[str]:
    architecture = (facts.config.get("architectures") or ["AutoModel"])[0]
    path = "path/to/" + facts.run_dir.name
    command = "fill-mask" if getattr(facts.task, "command", "train") == "pretrain" else "predict"
    example = '"the [MASK] was great"' if command == "fill-mask" else '"a text to label"'
    return ["## How to use", "", "With bertfit (`pip install bertfit`):", "", "```bash",
            f"bertfit {command} {path} {example}", "```", "", "```python", "import bertfit", "",
            f'model = bertfit.load("{path}")' if command == "predict" else f"# bertfit {command} {path} ...",
            *([f'print(model.predict([{example}]))'] if command == "predict" else []), "```", "",
            "With transformers (the run directory is a standard checkpoint):", "", "```python",
            f"from transformers import AutoTokenizer, {architecture}", "",
            f'tokenizer = AutoTokenizer.from_pretrained("{path}")',
            f'model = {architecture}.from_pretrained("{path}")', "```", ""]


def _limitations(facts: RunFacts) -> list[str]:
    rows = facts.data.get("rows") or {}
    lines = ["## Limitations", "",
             f"- It learned from {_fmt(rows.get('train', '?'))} training {facts.task.row_noun} of one source "
             f"({_dataset_name(facts)}); the results above are on held-out rows of the same source and will be "
             "lower on text that looks different (another domain, language, time or style)."]
    truncated = facts.data.get("truncated") or {}
    if _number(truncated.get("fraction")) and truncated["fraction"] > 0:
        lines.append(f"- {100 * truncated['fraction']:.1f}% of the texts were longer than {truncated.get('max_length')} "
                     "tokens and were cut: the model never saw their ends.")
    if "test" not in facts.metrics:
        lines.append("- There was no test split: the figures are on the validation split, which also chose the "
                     "checkpoint, so they are optimistic.")
    for warning in facts.data.get("warnings") or []:
        lines.append(f"- {warning}")
    lines.append("- Labels in the training data may be noisy; the report's most confident mistakes show examples.")
    return lines + [""]


# -- writing -----------------------------------------------------------------------------------

def write_card(run_dir: str | Path, task: Any, *, world_size: int | None = None, wall_time_s: float | None = None,
               evaluation: Mapping[str, Any] | None = None, settings: Mapping[str, Any] | None = None) -> Path:
    """Render the card from the run directory and write it to README.md, or beside it
    (README.bertfit.md) when README.md is not the one bertfit wrote last. Returns the path written.
    ``evaluation``: {"file", "metrics"} of `evaluate --update-card` (kept for the next renders)."""
    from huggingface_hub import ModelCard

    run_dir = Path(run_dir)
    state = dict(_read(run_dir, STATE) or {})
    if world_size is not None:
        state["world_size"] = world_size
    if wall_time_s is not None:
        state["wall_time_s"] = float(wall_time_s)
    if settings:
        state["settings"] = dict(settings)
    if evaluation is not None:
        others = [e for e in state.get("evaluations") or [] if e.get("file") != evaluation.get("file")]
        state["evaluations"] = [*others, dict(evaluation)]
    state.setdefault("versions", versions())
    facts = RunFacts(run_dir, task, state)
    card = ModelCard(f"---\n{card_data(facts).to_yaml()}\n---\n\n{body(facts)}")
    text = str(card)
    target = run_dir / CARD
    if target.exists() and _sha(target.read_bytes()) != state.get("sha256"):
        target = run_dir / BESIDE
        logger.warning("%s was edited (it is not the card bertfit wrote): the new card is in %s", run_dir / CARD, target)
    else:
        state["sha256"] = _sha(text.encode("utf-8"))
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text, encoding="utf-8", newline="\n")
    tmp.replace(target)
    write_json_atomic(run_dir / STATE, state)
    return target


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def update_card(run_dir: str | Path, task: Any, file: str, metrics: Mapping[str, Any]) -> Path | None:
    """`evaluate --update-card`: the card rendered again with ``file``'s results. None: not a run
    bertfit trained (no train_config.json), so there is no card to update."""
    if not (Path(run_dir) / "train_config.json").is_file():
        return None
    numbers = {k: v for k, v in metrics.items() if _number(v)}
    return write_card(run_dir, task, evaluation={"file": str(file), "metrics": numbers})


__all__: Sequence[str] = ("write_card", "update_card", "base_model_id")
