"""bertfit.report: plots, report.md and report.html from a realistic fake run."""

from __future__ import annotations

import logging
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from bertfit.tasks.metrics import classification_metrics
from bertfit.report import (
    PLOTS_SKIPPED,
    ReportInputs,
    plot_confusion_matrix,
    plot_training_curves,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LABELS = ["negative", "neutral", "positive"]
TRICKY_TEXT = "I *love* it | not\nreally [x](y) <b>hi</b> $5 " + "z" * 300


def _history() -> list[dict]:
    rng = np.random.default_rng(7)
    records: list[dict] = []
    for step in range(10, 610, 10):
        records.append(
            {"kind": "train", "step": step, "epoch": step / 200, "lr": 2e-5,
             "loss": 1.1 * math.exp(-step / 200) + 0.3 + float(rng.normal(0, 0.05)),
             "tokens_per_s": 12000.0 + float(rng.normal(0, 300))}
        )
        if step % 100 == 0:
            records.append(
                {"kind": "eval", "split": "validation", "step": step, "epoch": step / 200,
                 "loss": 0.5 + 0.5 * math.exp(-step / 300),
                 "accuracy": 0.8 - 0.2 * math.exp(-step / 200),
                 "macro_f1": 0.75 - 0.25 * math.exp(-step / 200)}
            )
    return records


def _metrics(seed: int, n: int) -> dict:
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 3, size=n)
    p = np.where(rng.random(n) < 0.8, t, rng.integers(0, 3, size=n))
    return classification_metrics(t, p, LABELS, loss=0.55)


def _inputs(**overrides: object) -> ReportInputs:
    base = dict(
        title="bertfit run: minilm-l6 on tweets.csv",
        model_name="all-MiniLM-L6-v2",
        labels=list(LABELS),
        data_summary={
            "sources": ["tweets.csv: 1,000 rows (latin-1)"],
            "rows": {"train": 800, "validation": 100, "test": 100},
            "label_counts": {
                "train": {"negative": 340, "neutral": 310, "positive": 150},
                "validation": {"negative": 42, "neutral": 39, "positive": 19},
                "test": {"negative": 43, "neutral": 38, "positive": 19},
            },
            "rejected": 2,
            "rejected_examples": ["row 5: empty text", "row 9: unknown label 'meh'"],
            "duplicates_removed": 17,
            "conflicting_removed": 3,
            "length_tokens": {"p50": 21, "p90": 34, "p99": 52, "max": 140, "mean": 22.4},
            "truncated": {"count": 4, "max_length": 128, "fraction": 0.004},
            "encoding": "latin-1",
        },
        settings={"model": "all-MiniLM-L6-v2", "max_length": 128, "optim": {"lr": 2e-5, "epochs": 3}},
        history=_history(),
        final_metrics={"validation": _metrics(1, 100), "test": _metrics(2, 100)},
        mistakes=[
            {"text": TRICKY_TEXT, "text_pair": None, "true": "negative", "predicted": "positive",
             "confidence": 0.987, "row": 41},
            {"text": "meh, whatever", "text_pair": None, "true": "neutral", "predicted": "negative",
             "confidence": 0.912, "row": 7},
        ],
        best={"step": 600, "metric": "macro_f1", "value": 0.7412},
        wall_time_s=754.2,
        notes=["model predicts one class for 97% of validation"],
    )
    base.update(overrides)
    if "task" not in base:  # the run's task writes the results sections: single-label over the labels
        from bertfit.tasks.classify import SingleLabel

        base["task"] = SingleLabel(list(base["labels"]))
    return ReportInputs(**base)  # type: ignore[arg-type]


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    from PIL import Image

    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
    assert width > 100 and height > 100


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One full report shared by the read-only tests below (drawing plots is the slow part)."""
    run = tmp_path_factory.mktemp("full") / "run"
    assert write_report(run, _inputs()) == run / "report.md"
    return run


def test_write_report_full(full_run: Path) -> None:
    inputs = _inputs()
    run = full_run
    report = run / "report.md"

    plots = run / "plots"
    for name in ("training_curves.png", "confusion_validation.png", "confusion_test.png"):
        _assert_png(plots / name)

    md = report.read_text(encoding="utf-8")
    for label in LABELS:
        assert label in md
    test = inputs.final_metrics["test"]
    # Headline numbers in the summary paragraph, before any section.
    summary = md.split("## Data")[0]
    assert f"{test['accuracy']:.4f}" in summary
    assert f"{test['macro_f1']:.4f}" in summary
    # Sections in the promised order.
    order = ["## Results", "## Training", "## Most confident mistakes", "## Data", "## Notes", "## Settings"]
    assert [md.index(h) for h in order] == sorted(md.index(h) for h in order)
    # Confusion matrix counts as a Markdown table row per true class.
    for label, row in zip(LABELS, test["confusion_matrix"]):
        assert f"| {label} | " + " | ".join(f"{c:,}" for c in row) + " |" in md
    # Relative image links.
    assert "(plots/confusion_test.png)" in md
    assert "(plots/training_curves.png)" in md
    # Data facts.
    assert "340 (42.5%)" in md
    assert "row 9: unknown label 'meh'" in md
    assert "p99" in md and "140" in md
    assert "4 texts (0.4%) longer than max_length 128 tokens" in md
    # Settings, nested keys flattened.
    assert "| optim.lr | 2e-05 |" in md
    # Wall time and best checkpoint.
    assert "12 min 34 s" in md
    assert "step 600" in md and "0.7412" in md
    assert "model predicts one class for 97% of validation" in md
    assert PLOTS_SKIPPED not in md


def test_mistake_text_is_escaped_and_truncated(full_run: Path) -> None:
    md = (full_run / "report.md").read_text(encoding="utf-8")
    row = next(line for line in md.splitlines() if "0.987" in line)
    # One table row: the newline is shown, not kept; the pipe cannot split the cell.
    assert r"I \*love\* it \| not ↵ really [x\](y) \<b>hi\</b> \$5 " in row
    cells = re.split(r"(?<!\\)\|", row.strip().strip("|"))
    assert len(cells) == 5  # confidence, true, predicted, row, text
    text_cell = cells[-1].strip()
    assert text_cell.endswith("…")
    # 200 characters of user text, counted before escaping.
    unescaped = re.sub(r"\\(.)", r"\1", text_cell).replace(" ↵ ", "\n")
    assert len(unescaped) == 200
    assert "z" * 150 in text_cell and "z" * 300 not in text_cell


def test_html_is_self_contained_and_escaped(full_run: Path) -> None:
    page = (full_run / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert page.count('src="data:image/png;base64,') == 3
    assert "plots/" not in page  # nothing points at files next to it
    assert "<b>hi</b>" not in page and "&lt;b&gt;hi&lt;/b&gt;" in page
    for label in LABELS:
        assert label in page
    assert f"{_inputs().final_metrics['test']['accuracy']:.4f}" in page


def test_report_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    # None in sys.modules makes "import matplotlib" raise ImportError (submodules stay cached:
    # earlier tests imported them, and the report must not be fooled by that).
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with caplog.at_level(logging.WARNING, logger="bertfit.report"):
        report = write_report(tmp_path, _inputs())
    md = report.read_text(encoding="utf-8")
    assert PLOTS_SKIPPED in md
    assert "![" not in md
    assert not list(tmp_path.rglob("*.png"))
    for label in LABELS:
        assert label in md
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "data:image/png" not in page and PLOTS_SKIPPED in page
    assert any("matplotlib" in r.getMessage() for r in caplog.records)

    assert plot_confusion_matrix(_metrics(1, 10), tmp_path / "cm.png", "x") is None
    assert plot_training_curves(_history(), tmp_path / "tc.png") is None
    assert not (tmp_path / "cm.png").exists()


def test_minimal_inputs(tmp_path: Path) -> None:
    """Missing data summary keys, no history, no test split, no mistakes: still a report."""
    inputs = _inputs(
        data_summary={}, settings={}, history=[], final_metrics={"validation": _metrics(3, 30)},
        mistakes=[], best=None, wall_time_s=None, notes=[],
    )
    md = write_report(tmp_path, inputs).read_text(encoding="utf-8")
    summary = md.split("## Data")[0]
    assert "validation split" in summary
    assert f"{inputs.final_metrics['validation']['accuracy']:.4f}" in summary
    assert "No training history was recorded." in md
    assert "No mistakes were recorded." in md
    assert not (tmp_path / "plots" / "training_curves.png").exists()
    _assert_png(tmp_path / "plots" / "confusion_validation.png")


def test_markdown_special_characters_in_user_text(tmp_path: Path) -> None:
    labels = ["very_negative", "ok*", "a|b"]
    metrics = classification_metrics([0, 1, 2, 2], [0, 1, 1, 2], labels)
    inputs = _inputs(
        title="run on # weird_file [1].csv",
        labels=labels,
        data_summary={"sources": ["- not a list item"], "label_counts": {"train": {"a|b": 2}}},
        final_metrics={"test": metrics},
        mistakes=[{"text": "1. first\r\nsecond", "text_pair": "pair | text", "true": "a|b",
                   "predicted": "ok*", "confidence": 0.9, "row": None}],
        history=[],
    )
    md = write_report(tmp_path, inputs).read_text(encoding="utf-8")
    assert md.startswith("# run on # weird_file [1].csv\n")
    assert "very_negative" in md  # intraword underscores are not emphasis: left readable
    assert "ok\\*" in md and "a\\|b" in md
    assert "\\- not a list item" in md
    assert "1\\. first ↵ second" in md  # would be a list marker at the start of a line
    assert "pair \\| text" in md
    # Every table row keeps its column count despite the pipes in labels.
    for table in re.findall(r"(?:^\|.*\|$\n?)+", md, flags=re.M):
        rows = table.strip().splitlines()
        widths = {len(re.split(r"(?<!\\)\|", r)) for r in rows}
        assert len(widths) == 1, rows


def test_plot_confusion_matrix_many_classes(tmp_path: Path) -> None:
    labels = [f"class number {i} with a long name" for i in range(20)]
    rng = np.random.default_rng(0)
    t = rng.integers(0, 20, size=400)
    metrics = classification_metrics(t, np.where(rng.random(400) < 0.6, t, 0), labels)
    path = plot_confusion_matrix(metrics, tmp_path / "sub" / "cm.png", "20 classes · $test$")
    assert path == tmp_path / "sub" / "cm.png"
    _assert_png(path)
    assert not list((tmp_path / "sub").glob(".*tmp"))  # the temporary file was renamed away


def _drawn_figure(monkeypatch):
    """Capture the figure a plot function saves, so a test reads what was drawn (lines, legend labels)."""
    from bertfit.report import plots

    captured = {}
    real_save = plots.save_png

    def keep(fig, path):
        captured["fig"] = fig
        return real_save(fig, path)

    monkeypatch.setattr(plots, "save_png", keep)
    return captured


def _lines(ax) -> dict[str, tuple[list[float], list[float]]]:
    return {line.get_label(): ([float(x) for x in line.get_xdata()], [float(y) for y in line.get_ydata()])
            for line in ax.get_lines()}


def test_plot_training_curves_skips_nan_and_keeps_the_last_of_a_relogged_step(tmp_path: Path, monkeypatch) -> None:
    """A NaN loss is not drawn (no gap-making NaN in the line); a step logged twice (a resumed run) is drawn
    once, with its last value; test-split evaluations are not drawn as validation."""
    captured = _drawn_figure(monkeypatch)
    history = [
        {"kind": "train", "step": 1, "loss": 0.9},
        {"kind": "train", "step": 2, "loss": float("nan")},
        {"kind": "train", "step": 2, "loss": 0.8},  # resumed run re-logged step 2
        {"kind": "train", "step": 3, "loss": float("nan")},
        {"kind": "train", "step": 4, "loss": 0.7},
        {"kind": "eval", "step": 2, "loss": 0.5, "accuracy": 0.6, "macro_f1": float("nan")},
        {"kind": "eval", "step": 4, "loss": 0.4, "accuracy": 0.7, "macro_f1": 0.65},
        {"kind": "eval", "step": 4, "loss": 0.3, "accuracy": 0.75, "macro_f1": 0.7},  # re-logged: the last counts
        {"kind": "eval", "split": "test", "step": 4, "loss": 0.1, "accuracy": 1.0, "macro_f1": 1.0},
    ]
    _assert_png(plot_training_curves(history, tmp_path / "tc.png"))
    loss_ax, metric_ax = captured["fig"].axes
    loss = _lines(loss_ax)
    assert loss["train (per step)"] == ([1.0, 2.0, 4.0], [0.9, 0.8, 0.7])
    assert loss["validation"] == ([2.0, 4.0], [0.5, 0.3])
    metric = _lines(metric_ax)
    assert metric["accuracy"] == ([2.0, 4.0], [0.6, 0.75])
    assert metric["macro-F1"] == ([4.0], [0.7])
    assert metric["best macro-F1 0.700 (step 4)"] == ([4.0], [0.7])
    assert plot_training_curves([], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


@pytest.mark.parametrize("task_name, expected", [("qa", {"exact match", "F1", "best F1 0.500 (step 2)"}),
                                                 ("ner", {"precision", "entity F1", "best entity F1 0.500 (step 2)"})])
def test_the_curves_name_metrics_as_the_task_does(tmp_path: Path, monkeypatch, task_name, expected) -> None:
    """SQuAD's F1 is not "entity F1": the curves take the metric names from the task."""
    from bertfit.report import curve_metrics
    from bertfit.tasks import task_class

    task = task_class(task_name)
    captured = _drawn_figure(monkeypatch)
    first, second = curve_metrics(task)
    history = [{"kind": "train", "step": 1, "loss": 1.0},
               {"kind": "eval", "step": 2, "loss": 0.5, first: 0.4, second: 0.5}]
    _assert_png(plot_training_curves(history, tmp_path / "tc.png", (first, second), task.metric_labels))
    labels = set(_lines(captured["fig"].axes[1]))
    assert labels == expected, labels


def test_a_qa_report_names_its_mistakes_columns_and_answer_counts(tmp_path):
    """QA: the worst answers under question / context / gold / predicted titles, the answered/unanswered
    counts without zero rows for the span ends (the task's labels are "start" and "end")."""
    from bertfit.tasks.qa.task import QuestionAnswering

    task = QuestionAnswering.create(["start", "end"], {})
    inputs = _inputs(
        labels=["start", "end"], task=task, final_metrics={},
        data_summary={"rows": {"train": 3, "validation": 1},
                      "label_counts": {"train": {"with an answer": 2, "without an answer": 1},
                                       "validation": {"with an answer": 1, "without an answer": 0}}},
        mistakes=[{"text": "Who sat?", "text_pair": "The cat sat on the mat.", "true": "The cat | cat",
                   "predicted": "the mat", "score": 0.61, "row": 3}])
    report = write_report(tmp_path, inputs).read_text(encoding="utf-8")
    assert "| score | gold answers | predicted answer | row | question | context |" in report
    assert "| 0.610 | The cat \\| cat | the mat | 3 | Who sat? | The cat sat on the mat. |" in report
    assert "| with an answer | 2 (66.7%) | 1 (100.0%) |" in report and "| start |" not in report
    assert "fine-tuned on 3 training questions for extractive question answering (SQuAD v1.1" in report
