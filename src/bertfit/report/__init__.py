"""The run report: ``report.md`` and a self-contained ``report.html``, with plots.

The report is the first thing a person reads after a run, so it opens with what the reader came
for: the headline figures, the task's results (its own sections: per-class tables and confusion
matrices, per-label thresholds, predicted-vs-true plots), the training curves and the worst
mistakes; then the data, the notes, and the settings last (what differs from the defaults first).

Blocks and renderers live in document.py, plots in plots.py; the task (tasks/) supplies its result
sections, so this module is the same for every task.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bertfit.report.document import (
    Block, Bullets, Cell, Code, Heading, Image, Inline, Paragraph, Strong, Table, finite, flatten, fmt_duration,
    fmt_fraction, fmt_int, fmt_number, fmt_percent, fmt_score, fmt_setting, render_html, render_markdown, truncate,
)
from bertfit.report.plots import (
    PLOTS_SKIPPED, figure_class, plot_confusion_matrix, plot_training_curves, records, series, smoothed, temp_name,
)

logger = logging.getLogger(__name__)

__all__ = [
    "PLOTS_SKIPPED",
    "ReportInputs",
    "plot_confusion_matrix",
    "plot_training_curves",
    "write_report",
]

# Eval rows shown in the training table; longer histories are thinned (the plot shows them all).
MAX_EVAL_ROWS = 25
# The summary says which splits' results come first.
_SPLIT_ORDER = ("train", "validation", "test")


@dataclass
class ReportInputs:
    """Everything the report shows; the training loop fills it, ``write_report`` renders it."""

    title: str
    model_name: str
    labels: list[str]
    data_summary: dict
    settings: dict
    history: list[dict]
    final_metrics: dict[str, dict]
    mistakes: list[dict]
    best: dict | None = None
    wall_time_s: float | None = None
    notes: list[str] = field(default_factory=list)
    task: Any = None  # the run's Task (tasks/): it supplies the results sections; required
    # Per split, (outputs, targets) for plots that need every prediction (regression scatter).
    outputs: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    # `train --seeds N` (seeds.py): {"seeds", "best_seed", "selected_on", "spread": {split: {metric: mean/std}}}
    seed_spread: dict | None = None
    # train/explain_report.py: {"mistakes": [...], "class_words": {...}, "sample": n, "top": k}, or None
    explanations: dict | None = None

    def __post_init__(self) -> None:
        if self.task is None:  # the report names no task of its own: the run's task writes its results
            raise ValueError("ReportInputs needs the run's task (task=...)")


class Plotter:
    """Draws a task's plots into plots/: a failing plot becomes a note, never a lost report."""

    def __init__(self, plots_dir: Path, model_name: str, notes: list[str]) -> None:
        self.plots_dir, self.model_name, self.notes = plots_dir, model_name, notes
        self.available = figure_class() is not None
        self.note = None if self.available else PLOTS_SKIPPED  # shown where a plot would be
        self._used: set[str] = set()

    def draw(self, stem: str, what: str, make: Any) -> str | None:
        """make(path, title) writes a PNG; returns its path relative to the run, or None."""
        if not self.available:
            return None
        stem = _file_stem(stem)
        while stem in self._used:  # two names that sanitise alike must not share a file
            stem += "_"
        self._used.add(stem)
        path = self.plots_dir / f"{stem}.png"
        try:
            written = make(path, f"{self.model_name} · {what}")
        except Exception as exc:  # noqa: BLE001 - see write_report: never lose the report
            logger.warning("could not draw the %s: %s", what, exc, exc_info=True)
            self.notes.append(f"The {what} plot failed: {type(exc).__name__}: {exc}")
            return None
        return None if written is None else f"plots/{path.name}"


# --------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------


def _split_order(splits: Iterable[str]) -> list[str]:
    names = list(splits)
    known = [s for s in _SPLIT_ORDER if s in names]
    return known + [s for s in names if s not in known]


def _headline_split(final_metrics: Mapping[str, Any]) -> str | None:
    for split in ("test", "validation"):
        if split in final_metrics:
            return split
    return next(iter(final_metrics), None)


def _file_stem(split: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", split).strip("._") or "split"


# --------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------


# Column titles of metrics in the validation table (others: the name with spaces).
METRIC_TITLES = {"macro_f1": "macro-F1", "weighted_f1": "weighted-F1", "micro_f1": "micro-F1", "samples_f1": "samples-F1",
                 "mlm_accuracy": "masked-token accuracy", "nsp_accuracy": "NSP accuracy"}


def _summary(inputs: ReportInputs) -> list[Block]:
    task = inputs.task
    parts: list[Inline] = [Code(inputs.model_name), f" {task.trained_as}"]
    rows = (inputs.data_summary or {}).get("rows") or {}
    if finite(rows.get("train")):
        parts.append(f" on {fmt_int(rows['train'])} training {task.row_noun}")
    parts.append(f" {task.objective()}. ")

    split = _headline_split(inputs.final_metrics)
    if split is not None:
        m = inputs.final_metrics[split]
        parts.append(f"On the {split} split ({fmt_int(m.get('n', 0))} {task.row_noun}): ")
        parts += inputs.task.headline(m)
    else:
        parts.append("No evaluation results were recorded. ")

    baseline = (inputs.data_summary or {}).get("baseline")
    if split == "test" and isinstance(baseline, Mapping) and finite(baseline.get("accuracy")):
        parts.append(f"Baseline on the same test split ({baseline.get('name')}): accuracy "
                     f"{fmt_score(baseline['accuracy'])}, macro-F1 {fmt_score(baseline.get('macro_f1'))}. ")
    if inputs.best:
        parts.append(
            f"Best checkpoint at step {fmt_int(inputs.best.get('step'))} "
            f"({inputs.best.get('metric', 'metric')} {fmt_score(inputs.best.get('value'))}). "
        )
    if finite(inputs.wall_time_s):
        parts.append(f"Wall time {fmt_duration(float(inputs.wall_time_s))}. ")
    if inputs.notes:
        count = len(inputs.notes)
        parts.append(Strong(f"See {count} note{'s' if count != 1 else ''} at the end."))
    return [Heading(1, inputs.title), Paragraph(parts)]


def _seeds_section(inputs: ReportInputs) -> list[Block]:
    """Every headline metric as mean ± std over the seeds, with each seed's value (seeds.py)."""
    spread = inputs.seed_spread
    if not spread:
        return []
    seeds = [str(s) for s in spread.get("seeds", [])]
    blocks: list[Block] = [Heading(2, f"Seed spread ({len(seeds)} seeds)"), Paragraph([
        f"The same job with seeds {', '.join(seeds)}; mean ± {spread.get('std', 'standard deviation')}. The model "
        f"kept here is seed {spread.get('best_seed')}'s (best {spread.get('selected_on')}); the results below are its own."])]
    names = [n for n in inputs.task.headline_metrics]
    for split in _split_order(spread.get("spread") or {}):
        table = spread["spread"][split]
        rows = [[n, f"{fmt_score(table[n]['mean'])} ± {fmt_score(table[n]['std'])}",
                 *(fmt_score(table[n]["values"].get(s)) for s in seeds)] for n in names if n in table]
        if rows:
            blocks.append(Paragraph([Strong(split)]))
            blocks.append(Table(["metric", "mean ± std", *(f"seed {s}" for s in seeds)], rows,
                                ["l", "r", *(["r"] * len(seeds))]))
    return blocks


def _long_text_fact(s: Mapping[str, Any]) -> str:
    """How the run read texts longer than max_length, and how many texts that affected."""
    texts = fmt_int(s.get("texts", 0))
    if s["strategy"] == "windows":
        return (f"windows (up to {fmt_int(s.get('max_windows'))} per text, logits aggregated by "
                f"{s.get('window_aggregate')}): {fmt_int(s.get('split_into_windows', 0))} of {texts} texts read in "
                f"several windows ({fmt_int(s.get('windows', 0))} windows in all); {fmt_int(s.get('cut', 0))} "
                "still cut at the cap on windows")
    what = {"head": "the first tokens kept", "tail": "the last tokens kept",
            "head+tail": f"the first {s.get('head_tokens')} and the last tokens kept"}.get(s["strategy"], s["strategy"])
    return f"{s['strategy']} ({what}): {fmt_int(s.get('cut', 0))} of {texts} texts cut"


def _data_section(inputs: ReportInputs) -> list[Block]:
    data = inputs.data_summary or {}
    blocks: list[Block] = [Heading(2, "Data")]
    facts: list[list[Inline]] = []
    for source in data.get("sources") or []:
        facts.append([Strong("Source:"), " ", str(source)])
    if data.get("encoding"):
        facts.append([Strong("Encoding:"), " ", str(data["encoding"])])
    if "rejected" in data:
        fact: list[Inline] = [Strong("Rejected rows:"), " ", fmt_int(data["rejected"])]
        examples = [str(e) for e in data.get("rejected_examples") or []]
        if examples:
            fact.append(", e.g. " + "; ".join(examples[:5]))
            if len(examples) > 5:
                fact.append(f" (and {len(examples) - 5} more listed)")
        facts.append(fact)
    if "duplicates_removed" in data:
        facts.append([Strong("Duplicates removed:"), " ", fmt_int(data["duplicates_removed"])])
    if "conflicting_removed" in data:
        facts.append(
            [Strong("Conflicting duplicates removed:"), " ", fmt_int(data["conflicting_removed"]),
             " (same text, different labels)"]
        )
    truncated = data.get("truncated")
    if isinstance(truncated, Mapping) and "count" in truncated:
        text = f"{fmt_int(truncated['count'])} texts"
        if finite(truncated.get("fraction")):
            text += f" ({fmt_fraction(float(truncated['fraction']))})"
        if truncated.get("max_length") is not None:
            text += f" longer than max_length {fmt_int(truncated['max_length'])} tokens"
        facts.append([Strong("Truncated:"), " ", text])
    long_text = data.get("long_text")
    if isinstance(long_text, Mapping) and long_text.get("strategy"):
        facts.append([Strong("Long texts:"), " ", _long_text_fact(long_text)])
    if facts:
        blocks.append(Bullets(facts))

    rows = data.get("rows") or {}
    if rows:
        total = sum(float(n) for n in rows.values() if finite(n))
        splits = _split_order(rows)
        blocks.append(Paragraph([Strong("Rows per split")]))
        blocks.append(
            Table(
                ["split", "rows", "share"],
                [
                    [s, fmt_int(rows[s]), fmt_percent(float(rows[s]), total) if finite(rows[s]) else "–"]
                    for s in splits
                ],
                ["l", "r", "r"],
            )
        )

    label_counts = data.get("label_counts") or {}
    if label_counts:
        splits = _split_order(label_counts)
        # Labels in model order first, then any the data had that the model does not. A task whose summary
        # is not keyed by its labels (QA: "with an answer", not the span ends "start"/"end") lists its own keys.
        names = [str(label) for label in inputs.labels]
        if not any(name in counts for counts in label_counts.values() for name in names):
            names = []
        for counts in label_counts.values():
            names += [str(n) for n in counts if str(n) not in names]
        totals = {s: sum(float(v) for v in label_counts[s].values() if finite(v)) for s in splits}
        table_rows: list[list[Cell]] = []
        for name in names:
            row: list[Cell] = [name]
            for s in splits:
                count = label_counts[s].get(name, 0)
                share = fmt_percent(float(count), totals[s]) if finite(count) else "–"
                row.append(f"{fmt_int(count)} ({share})")
            table_rows.append(row)
        table_rows.append([Strong("total")] + [Strong(fmt_int(totals[s])) for s in splits])
        blocks.append(Paragraph([Strong("Label distribution")]))
        blocks.append(Table(["label", *splits], table_rows, ["l"] + ["r"] * len(splits)))

    lengths = data.get("length_tokens") or {}
    if lengths:
        keys = [k for k in ("p50", "p90", "p99", "max", "mean") if k in lengths]
        keys += [k for k in lengths if k not in keys]
        blocks.append(Paragraph([Strong("Text length in tokens")]))
        blocks.append(
            Table(keys, [[fmt_number(lengths[k]) for k in keys]], ["r"] * len(keys))
        )
    if len(blocks) == 1:
        blocks.append(Paragraph(["No data summary was recorded."], muted=True))
    return blocks


def _settings_section(inputs: ReportInputs) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Settings")]
    flat = flatten(inputs.settings or {})
    if flat:
        blocks.append(
            Table(["setting", "value"], [[k, fmt_setting(v)] for k, v in flat], ["l", "l"])
        )
    else:
        blocks.append(Paragraph(["No settings were recorded."], muted=True))
    return blocks


def _thin(rows: list[Mapping[str, Any]], keep_step: int | None) -> list[Mapping[str, Any]]:
    """At most MAX_EVAL_ROWS evenly spaced rows, always keeping the first, last and best."""
    if len(rows) <= MAX_EVAL_ROWS:
        return rows
    n = len(rows)
    picked = {round(i * (n - 1) / (MAX_EVAL_ROWS - 2)) for i in range(MAX_EVAL_ROWS - 1)}
    picked |= {i for i, r in enumerate(rows) if r.get("step") == keep_step}
    return [rows[i] for i in sorted(picked)]


def _training_section(
    inputs: ReportInputs, curves: str | None, plot_note: str | None
) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Training")]
    if curves:
        blocks.append(Image(curves, "Training and validation curves"))
    elif plot_note:
        blocks.append(Paragraph([plot_note], muted=True))

    train = records(inputs.history, "train")
    evals = records(inputs.history, "eval")
    facts: list[list[Inline]] = []
    if inputs.best:
        facts.append(
            [Strong("Best checkpoint:"), " ",
             f"step {fmt_int(inputs.best.get('step'))}, "
             f"{inputs.best.get('metric', 'metric')} = {fmt_score(inputs.best.get('value'))}"]
        )
    if finite(inputs.wall_time_s):
        facts.append([Strong("Wall time:"), " ", fmt_duration(float(inputs.wall_time_s))])
    if train:
        last = train[-1]
        text = f"{len(train):,} logged steps up to step {fmt_int(last['step'])}"
        if finite(last.get("epoch")):
            text += f" (epoch {float(last['epoch']):.2f})"
        facts.append([Strong("Training:"), " ", text])
        _, losses = series(train, "loss")
        if losses:
            smooth = smoothed(losses) or losses
            facts.append(
                [Strong("Final training loss:"), " ",
                 f"{smooth[-1]:.4f}" + (" (smoothed)" if len(smooth) >= 8 else "")]
            )
        _, speeds = series(train, "tokens_per_s")
        if speeds:
            median = sorted(speeds)[len(speeds) // 2]
            facts.append([Strong("Throughput:"), " ", f"{median:,.0f} tokens/s (median)"])
    if facts:
        blocks.append(Bullets(facts))

    if evals:
        best_step = inputs.best.get("step") if inputs.best else None
        shown = _thin(evals, best_step)
        rows: list[list[Cell]] = []
        # The task's own headline metrics (what its eval records hold), loss first.
        names = list(dict.fromkeys(["loss", *curve_metrics(inputs.task)]))  # a task may select on loss itself
        for r in shown:
            cells: list[Cell] = [
                fmt_int(r["step"]),
                f"{float(r['epoch']):.2f}" if finite(r.get("epoch")) else "–",
                *[fmt_score(r.get(name)) for name in names],
            ]
            if best_step is not None and r["step"] == best_step:
                cells = [Strong(c) if isinstance(c, str) else c for c in cells]
            rows.append(cells)
        title = "Validation during training"
        if len(shown) < len(evals):
            title += f" ({len(shown)} of {len(evals)} evaluations)"
        blocks.append(Paragraph([Strong(title)]))
        blocks.append(
            Table(["step", "epoch", *[METRIC_TITLES.get(n, n.replace("_", " ")) for n in names]], rows, ["r"] * (2 + len(names)))
        )
    if not train and not evals:
        blocks.append(Paragraph(["No training history was recorded."], muted=True))
    return blocks


def _results_section(inputs: ReportInputs, plots: Plotter) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Results")]
    if not inputs.final_metrics:
        blocks.append(Paragraph(["No evaluation results were recorded."], muted=True))
        return blocks
    for split in _split_order(inputs.final_metrics):
        m = inputs.final_metrics[split]
        blocks.append(Heading(3, f"{split.capitalize()} ({fmt_int(m.get('n', 0))} {inputs.task.row_noun})"))
        outputs, targets = inputs.outputs.get(split, (None, None))
        blocks += inputs.task.report_sections(m, split, plots, outputs=outputs, targets=targets)
    return blocks


def curve_metrics(task: Any) -> tuple[str, str]:
    """The two validation metrics the curves and the training table show: the task's first headline
    metric other than loss, and the metric that selects its best checkpoint."""
    if task is None:
        return ("accuracy", "macro_f1")
    default = getattr(task, "default_metric", "macro_f1")
    others = [m for m in getattr(task, "headline_metrics", ()) if m not in ("loss", default)]
    return (others[0] if others else default, default)


def _mistakes_section(inputs: ReportInputs) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Most confident mistakes")]
    if not inputs.mistakes:
        blocks.append(Paragraph(["No mistakes were recorded."], muted=True))
        return blocks
    with_pair = any(m.get("text_pair") for m in inputs.mistakes)
    with_row = any(m.get("row") is not None for m in inputs.mistakes)
    score_name = getattr(inputs.task, "mistake_score", "confidence")
    gold, predicted, text, pair = getattr(inputs.task, "mistake_columns", ("true", "predicted", "text", "text pair"))
    header = [score_name, gold, predicted] + (["row"] if with_row else []) + [text]
    header += [pair] if with_pair else []
    rows: list[list[Cell]] = []
    for m in inputs.mistakes:
        confidence = m.get("score", m.get("confidence"))
        row: list[Cell] = [
            f"{float(confidence):.3f}" if finite(confidence) else "–",
            str(m.get("true", "")),
            str(m.get("predicted", "")),
        ]
        if with_row:
            row.append(fmt_int(m["row"]) if m.get("row") is not None else "")
        row.append(truncate(str(m.get("text", ""))))
        if with_pair:
            row.append(truncate(str(m["text_pair"])) if m.get("text_pair") else "")
        rows.append(row)
    align = ["r", "l", "l"] + (["r"] if with_row else []) + ["l"] + (["l"] if with_pair else [])
    blocks.append(
        Paragraph(
            [f"The {len(rows)} worst predictions ({score_name}, highest first). "
             "Confident mistakes are often label noise in the data, or a pattern the model missed."],
        )
    )
    blocks.append(Table(header, rows, align))
    return blocks


def _explanations_section(inputs: ReportInputs) -> list[Block]:
    """Why the model said what it said: the worst mistakes with their strongest words, and the words that
    most often push each class (Integrated Gradients; `bertfit explain` shows any text the same way)."""
    found = inputs.explanations
    if found and found.get("skipped"):
        return [Heading(2, "Why: the words behind the predictions"),
                Paragraph([f"Skipped ({found['skipped']}): `bertfit explain RUN \"text\"` explains any text; "
                           "`--explain-report-seconds N` gives the next run's report N seconds for this section."],
                          muted=True)]
    if not found or not (found.get("mistakes") or found.get("class_words")):
        return []
    blocks: list[Block] = [Heading(2, "Why: the words behind the predictions")]
    if found.get("mistakes"):
        blocks.append(Paragraph(["The worst mistakes above, with the words that pushed the model toward its answer "
                                 "(+) or away from it (−), strongest first (Integrated Gradients over the words; "
                                 "each row's values add up to the prediction's change from a text with no words)."]))
        rows: list[list[Cell]] = []
        for m in found["mistakes"]:
            strongest = sorted(m["words"], key=lambda w: -abs(w[1]))[:5]
            rows.append([str(m.get("true", "")), str(m.get("predicted", "")), str(m["target"]),
                         truncate(", ".join(f"{w} {a:+.2f}" for w, a in strongest))])
        blocks.append(Table(["true", "predicted", "explained", "strongest words"], rows, ["l", "l", "l", "l"]))
    if found.get("class_words"):
        blocks.append(Paragraph([f"The words most often among the {found.get('top', 3)} pushing each prediction up, "
                                 f"over {found.get('sample', 0)} validation examples: a name, a user handle or a URL "
                                 "here is a shortcut the model learned from the data."]))
        rows = [[str(key), ", ".join(f"{w} ({n}/{total})" for w, n, total in words)]
                for key, words in found["class_words"].items()]
        blocks.append(Table(["prediction", "words (times among its top words / its explanations)"], rows, ["l", "l"]))
    return blocks


def _notes_section(notes: Sequence[str]) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Notes")]
    if notes:
        blocks.append(Bullets([[str(note)] for note in notes]))
    else:
        blocks.append(Paragraph(["No warnings."], muted=True))
    return blocks


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------


def _write_text(path: Path, text: str) -> None:
    # Atomic replace: a reader (or a crash) never sees half a report.
    tmp = temp_name(path)
    try:
        with open(tmp, "x", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_report(run_dir: Path, inputs: ReportInputs) -> Path:
    """Write ``run_dir/report.md``, ``run_dir/report.html`` and the PNGs under ``run_dir/plots/``.

    Returns the path of ``report.md``. A failing plot is logged and noted in the report rather than
    raised: the report is written at the end of a run that may have taken hours, and the tables
    alone still carry every number.
    """
    run_dir = Path(run_dir)
    plots_dir = run_dir / "plots"
    run_dir.mkdir(parents=True, exist_ok=True)
    notes = [str(note) for note in inputs.notes]

    plots = Plotter(plots_dir, inputs.model_name, notes)
    plot_note = plots.note
    curves = plots.draw("training_curves", "training curves",
                        lambda path, title: plot_training_curves(
                            inputs.history, path, curve_metrics(inputs.task), getattr(inputs.task, "metric_labels", None)))
    if not plots.available:
        logger.warning("matplotlib is not installed; %s", PLOTS_SKIPPED)
        notes.append(PLOTS_SKIPPED)
    results = _results_section(inputs, plots)  # draws the task's plots: their failures join the notes

    blocks: list[Block] = []
    # What the reader came for first (figures, results, curves, mistakes); the data; settings last.
    blocks += _summary(dataclasses.replace(inputs, notes=notes))
    blocks += _seeds_section(inputs)
    blocks += results
    blocks += _training_section(inputs, curves, plot_note)
    if getattr(inputs.task, "reports_mistakes", True):
        blocks += _mistakes_section(inputs)
        blocks += _explanations_section(inputs)
    blocks += _data_section(inputs)
    blocks += _notes_section(notes)
    blocks += _settings_section(inputs)

    md_path = run_dir / "report.md"
    _write_text(md_path, render_markdown(blocks))
    _write_text(run_dir / "report.html", render_html(inputs.title, blocks, run_dir))
    logger.info("wrote %s and %s", md_path, run_dir / "report.html")
    return md_path
