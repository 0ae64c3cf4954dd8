"""The run report: plots, ``report.md`` and a self-contained ``report.html``.

The report is the first thing a person reads after a run, so it leads with the headline numbers and
then shows the evidence: what data went in, what settings were used, how training went, per-class
results with confusion matrices, and the model's most confident mistakes.

Both documents are rendered from one list of document pieces (headings, paragraphs, tables,
images), so they cannot drift apart. Everything that came from the user (texts, label names, file
names, settings) is escaped for the format it lands in.

matplotlib is an optional extra (``bertfit[report]``). It is imported lazily, and only its
object-oriented ``Figure`` API is used, never ``pyplot``: that renders with the Agg backend without
touching the process-wide backend or pyplot's global figure list, so writing a report from a
notebook, a server thread or a headless machine neither changes the user's backend nor leaks figures.
Without matplotlib the plots are skipped with a logged warning and the report says so.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import logging
import math
import numbers
import os
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "PLOTS_SKIPPED",
    "ReportInputs",
    "plot_confusion_matrix",
    "plot_training_curves",
    "write_report",
]

PLOTS_SKIPPED = "plots skipped: install bertfit[report]"

# Longest mistake text shown, in characters; longer ones end in an ellipsis.
MAX_TEXT_CHARS = 200
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


# --------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------


def _figure_class() -> Any | None:
    """matplotlib's Figure class, or None when the optional extra is not installed."""
    try:
        # The top-level import first: it is what fails when matplotlib is absent (or blocked with
        # sys.modules["matplotlib"] = None), even if a submodule is still cached in sys.modules.
        import matplotlib  # noqa: F401
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure


def _plain_text_rc() -> dict[str, Any]:
    # Label names and titles are user text: "$5 off" must not be parsed as mathtext.
    return {"text.parse_math": False}


def _temp_name(path: Path) -> Path:
    # A unique sibling name opened normally (not mkstemp, whose files are 0600): the final file
    # gets the user's umask like every other file in the run directory.
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _save(fig: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write next to the target and rename, so a crash never leaves a half-written PNG behind.
    tmp = _temp_name(path)
    try:
        # bbox "tight" as a last guard: no tick label or axis name is ever clipped at the edge.
        fig.savefig(tmp, format="png", dpi=120, facecolor="white", bbox_inches="tight", pad_inches=0.15)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def plot_confusion_matrix(metrics: Mapping[str, Any], path: Path, title: str) -> Path | None:
    """Heatmap of the row-normalised confusion matrix, each cell annotated with count and percent.

    Rows are true classes and columns predicted classes, in ``metrics["labels"]`` order. Returns
    the PNG path, or None when matplotlib is not installed.
    """
    figure_cls = _figure_class()
    if figure_cls is None:
        logger.warning("matplotlib is not installed; skipping %s (%s)", path, PLOTS_SKIPPED)
        return None
    import matplotlib

    labels = [str(label) for label in metrics["labels"]]
    counts = metrics["confusion_matrix"]
    norm = metrics["confusion_matrix_normalized"]
    k = len(labels)

    # Cell size and fonts shrink with the class count so 2..20 classes all stay legible.
    if k <= 4:
        cell, font, tick_font = 1.35, 12.0, 11.0
    elif k <= 8:
        cell, font, tick_font = 0.95, 9.5, 10.0
    elif k <= 14:
        cell, font, tick_font = 0.7, 7.5, 9.0
    else:
        cell, font, tick_font = 0.56, 6.5, 8.0
    tick_labels = [_short(label, 18) for label in labels]
    longest = max((len(label) for label in tick_labels), default=1)
    rotate = k > 4 or longest > 8
    # Room for tick labels: roughly 0.075 inch per character at these font sizes.
    label_room = min(1.6, 0.3 + 0.075 * longest)

    with matplotlib.rc_context(_plain_text_rc()):
        fig = figure_cls(
            figsize=(k * cell + label_room + 1.6, k * cell + (label_room if rotate else 0.4) + 1.0),
            layout="constrained",
        )
        ax = fig.add_subplot()
        image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, aspect="equal")
        colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        colorbar.set_label("share of true class", fontsize=tick_font)
        colorbar.ax.tick_params(labelsize=tick_font - 1)

        # Past 30 classes no annotation fits a cell; the counts are in the report's table instead.
        for i in range(k if k <= 30 else 0):
            for j in range(k):
                share = norm[i][j]
                count = counts[i][j]
                if k <= 8:
                    percent = f"{share * 100:.1f}%"
                else:
                    # Whole percents for small cells, but a nonzero count never reads "0%".
                    percent = "<1%" if 0 < share < 0.005 else f"{share * 100:.0f}%"
                # An empty cell says just "0": "0 / 0.0%" repeated across a big matrix is noise.
                label = f"{count:,}\n{percent}" if count else "0"
                # Dark cells get white text; the threshold matches where Blues turns dark.
                color = "white" if share > 0.55 else "#1a1a1a"
                ax.text(
                    j, i, label,
                    ha="center", va="center", fontsize=font, color=color, linespacing=1.15,
                )

        ax.set_xticks(range(k))
        ax.set_yticks(range(k))
        ax.set_xticklabels(
            tick_labels, fontsize=tick_font,
            rotation=45 if rotate else 0, ha="right" if rotate else "center",
            rotation_mode="anchor",
        )
        ax.set_yticklabels(tick_labels, fontsize=tick_font)
        ax.set_xlabel("predicted", fontsize=tick_font + 1)
        ax.set_ylabel("true", fontsize=tick_font + 1)
        ax.set_title(title, fontsize=tick_font + 2)
        # Thin white lines between cells keep neighbouring pale cells apart.
        ax.set_xticks([x - 0.5 for x in range(1, k)], minor=True)
        ax.set_yticks([y - 0.5 for y in range(1, k)], minor=True)
        ax.grid(which="minor", color="white", linewidth=1.5)
        ax.tick_params(which="minor", length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        return _save(fig, path)


def _finite(value: Any) -> bool:
    # numbers.Real, not (int, float): counts computed with numpy arrive as np.int64.
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _records(history: Iterable[Mapping[str, Any]], kind: str) -> list[Mapping[str, Any]]:
    """Records of one kind sorted by step; a step logged twice (a resumed run) keeps the last."""
    by_step: dict[int, Mapping[str, Any]] = {}
    for record in history:
        if record.get("kind") != kind or not _finite(record.get("step")):
            continue
        if kind == "eval" and record.get("split", "validation") != "validation":
            continue
        by_step[int(record["step"])] = record
    return [by_step[step] for step in sorted(by_step)]


def _series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for record in records:
        value = record.get(key)
        if _finite(value):
            steps.append(int(record["step"]))
            values.append(float(value))
    return steps, values


def _smooth(values: Sequence[float]) -> list[float] | None:
    """Centred moving average of the training loss; None if there are too few points to smooth.

    Centred rather than an exponential average: an EMA lags behind a falling loss and draws the
    trend visibly above the raw points, which reads as "worse than it is".
    """
    n = len(values)
    if n < 8:
        return None
    # Wider windows for longer histories, so the trend reads the same at 50 or 5,000 steps.
    half = max(1, min(n // 20, 100))
    cumsum = [0.0]
    for value in values:
        cumsum.append(cumsum[-1] + value)
    out = []
    for i in range(n):
        # The window shrinks symmetrically at the edges instead of being padded with made-up values.
        lo, hi = max(0, i - half), min(n, i + half + 1)
        out.append((cumsum[hi] - cumsum[lo]) / (hi - lo))
    return out


def plot_training_curves(history: list[dict], path: Path) -> Path | None:
    """Two panels: training loss (raw per logged step and smoothed) with validation loss, and
    validation accuracy and macro-F1, all against the optimiser step.

    Returns the PNG path, or None when matplotlib is missing or there is nothing to plot.
    """
    train = _records(history, "train")
    evals = _records(history, "eval")
    if not train and not evals:
        logger.info("no training history to plot; skipping %s", path)
        return None
    figure_cls = _figure_class()
    if figure_cls is None:
        logger.warning("matplotlib is not installed; skipping %s (%s)", path, PLOTS_SKIPPED)
        return None
    import matplotlib

    with matplotlib.rc_context(_plain_text_rc()):
        fig = figure_cls(figsize=(11.0, 4.2), layout="constrained")
        # A shared step axis lines the validation points up with the loss curve above the same step.
        loss_ax, metric_ax = fig.subplots(1, 2, sharex=True)

        steps, losses = _series(train, "loss")
        if losses:
            smooth = _smooth(losses)
            # The raw curve is faint context; the smoothed line is what the eye should follow.
            loss_ax.plot(
                steps, losses, color="C0", alpha=0.3 if smooth else 0.9, linewidth=0.9,
                label="train (per step)",
            )
            if smooth:
                loss_ax.plot(steps, smooth, color="C0", linewidth=2.0, label="train (smoothed)")
        val_steps, val_losses = _series(evals, "loss")
        if val_losses:
            loss_ax.plot(
                val_steps, val_losses, color="C1", marker="o", markersize=4, linewidth=1.6,
                label="validation",
            )
        loss_ax.set_title("loss")
        loss_ax.set_xlabel("step")
        loss_ax.set_ylabel("cross-entropy")
        loss_ax.grid(alpha=0.3)
        if losses or val_losses:
            loss_ax.legend(loc="best", fontsize=9, framealpha=0.85)

        acc_steps, accs = _series(evals, "accuracy")
        f1_steps, f1s = _series(evals, "macro_f1")
        if accs:
            metric_ax.plot(acc_steps, accs, color="C2", marker="o", markersize=4, label="accuracy")
        if f1s:
            metric_ax.plot(f1_steps, f1s, color="C3", marker="s", markersize=4, label="macro-F1")
            best = max(range(len(f1s)), key=f1s.__getitem__)
            metric_ax.plot(
                f1_steps[best], f1s[best], marker="*", markersize=14, color="C3",
                markeredgecolor="black", linestyle="none", zorder=5,
                label=f"best macro-F1 {f1s[best]:.3f} (step {f1_steps[best]:,})",
            )
        if accs or f1s:
            metric_ax.legend(loc="best", fontsize=9, framealpha=0.85)
        else:
            metric_ax.text(
                0.5, 0.5, "no validation evaluations", transform=metric_ax.transAxes,
                ha="center", va="center", color="gray",
            )
        metric_ax.set_title("validation metrics")
        metric_ax.set_xlabel("step")
        metric_ax.set_ylabel("score")
        metric_ax.grid(alpha=0.3)
        all_steps = sorted({*steps, *val_steps, *acc_steps, *f1_steps})
        if all_steps and all_steps[-1] - all_steps[0] < 10:
            # A very short run would get fractional step ticks (4.74, 4.80, ...): tick the steps.
            loss_ax.set_xticks(all_steps)
            loss_ax.set_xlim(all_steps[0] - 1, all_steps[-1] + 1)
        return _save(fig, path)


# --------------------------------------------------------------------------------------------------
# Document pieces, shared by the Markdown and HTML renderers
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Strong:
    text: str


@dataclass(frozen=True)
class _Code:
    text: str


# Inline content: a plain string (user text, escaped on output), bold, or code.
_Inline = str | _Strong | _Code
_Cell = str | _Strong


@dataclass
class _Heading:
    level: int
    text: str


@dataclass
class _Paragraph:
    parts: list[_Inline]
    muted: bool = False


@dataclass
class _Bullets:
    items: list[list[_Inline]]


@dataclass
class _Table:
    header: list[str]
    rows: list[list[_Cell]]
    # "l" or "r" per column; numbers are right-aligned so digits line up.
    align: list[str]
    # Optional per-cell 0..1 intensity used to tint cells in the HTML (the confusion matrix).
    shade: list[list[float | None]] | None = None


@dataclass
class _Image:
    rel_path: str
    alt: str


_Block = _Heading | _Paragraph | _Bullets | _Table | _Image

_NEWLINES = re.compile(r"\r\n|\r|\n")
# Backslash-escape what starts Markdown syntax anywhere in a line: emphasis, code, table cells,
# strikethrough and GitHub's $math$; "<" only where it could open raw HTML, and "]" only where it
# could close a link ("](", "][", "]:"), so plain text like "<0.1%" or "bertfit[report]" stays as is.
_MD_ALWAYS = re.compile(r"([\\`*|~$]|<(?=[A-Za-z/!?])|\](?=[(\[:]))")
# Intraword underscores ("very_negative") are never emphasis in CommonMark, so they stay readable.
_MD_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
# Only special at the start of a line: headings, quotes, and list markers ("- ", "+ ", "1. "),
# which need a following space, so "-3" or "0.83" stay untouched.
_MD_LEADING = re.compile(r"^(\s*)([#>]|[+\-](?=\s|$)|\d+(?=[.)](?:\s|$)))")


def _one_line(text: str) -> str:
    """Newlines would end a table row or a list item, so they are shown as a visible ↵."""
    return _NEWLINES.sub(" ↵ ", text)


def _md_escape(text: str) -> str:
    text = _one_line(str(text))
    text = _MD_ALWAYS.sub(r"\\\1", text)
    text = _MD_UNDERSCORE.sub(r"\\_", text)
    # For an ordered-list marker the escape goes before its "." or ")", after the digits.
    return _MD_LEADING.sub(
        lambda m: m.group(1) + (m.group(2) + "\\" if m.group(2)[0].isdigit() else "\\" + m.group(2)),
        text,
    )


def _html_escape(text: str) -> str:
    return html.escape(_one_line(str(text)), quote=True)


def _md_inline(parts: Iterable[_Inline]) -> str:
    out = []
    for part in parts:
        if isinstance(part, _Strong):
            out.append(f"**{_md_escape(part.text)}**")
        elif isinstance(part, _Code):
            text = _one_line(part.text)
            # A code span cannot contain a backslash escape; a longer fence holds backticks instead.
            out.append(f"`` {text} ``" if "`" in text else f"`{text}`")
        else:
            out.append(_md_escape(part))
    return "".join(out)


def _html_inline(parts: Iterable[_Inline]) -> str:
    out = []
    for part in parts:
        if isinstance(part, _Strong):
            out.append(f"<strong>{_html_escape(part.text)}</strong>")
        elif isinstance(part, _Code):
            out.append(f"<code>{_html_escape(part.text)}</code>")
        else:
            out.append(_html_escape(part))
    return "".join(out)


def _render_markdown(blocks: Sequence[_Block]) -> str:
    chunks: list[str] = []
    for block in blocks:
        if isinstance(block, _Heading):
            chunks.append("#" * block.level + " " + _md_escape(block.text))
        elif isinstance(block, _Paragraph):
            text = _md_inline(block.parts)
            chunks.append(f"*{text}*" if block.muted else text)
        elif isinstance(block, _Bullets):
            chunks.append("\n".join("- " + _md_inline(item) for item in block.items))
        elif isinstance(block, _Table):
            lines = ["| " + " | ".join(_md_escape(h) for h in block.header) + " |"]
            lines.append("|" + "|".join("---:" if a == "r" else ":---" for a in block.align) + "|")
            for row in block.rows:
                lines.append("| " + " | ".join(_md_inline([cell]) for cell in row) + " |")
            chunks.append("\n".join(lines))
        elif isinstance(block, _Image):
            chunks.append(f"![{_md_escape(block.alt)}]({block.rel_path})")
    return "\n\n".join(chunks) + "\n"


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
       max-width: 1100px; margin: 2rem auto; padding: 0 1.2rem; line-height: 1.5; }
h1 { font-size: 1.7rem; border-bottom: 1px solid #d0d7de; padding-bottom: .3rem; }
h2 { font-size: 1.35rem; border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; margin-top: 2rem; }
h3 { font-size: 1.1rem; margin-top: 1.4rem; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .92rem; }
th, td { border: 1px solid #d0d7de; padding: .25rem .6rem; vertical-align: top; }
th { background: #f6f8fa; }
td.r, th.r { text-align: right; font-variant-numeric: tabular-nums; }
td.l, th.l { text-align: left; }
tr:nth-child(even) td:not(.shaded) { background: #fafbfc; }
td.text { max-width: 38rem; overflow-wrap: anywhere; }
img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
code { background: #f6f8fa; padding: .1rem .3rem; border-radius: 4px; }
p.muted { color: #57606a; font-style: italic; }
"""


def _html_table(block: _Table) -> str:
    head = "".join(
        f'<th class="{"r" if a == "r" else "l"}">{_html_escape(h)}</th>'
        for h, a in zip(block.header, block.align)
    )
    body = []
    for i, row in enumerate(block.rows):
        cells = []
        for j, cell in enumerate(row):
            align = block.align[j] if j < len(block.align) else "l"
            classes = [align]
            style = ""
            shade = block.shade[i][j] if block.shade else None
            if shade is not None:
                classes.append("shaded")
                # Same Blues-like tint as the heatmap; white text once the cell gets dark.
                style = f' style="background: rgba(33,102,172,{0.08 + 0.8 * shade:.3f});'
                style += ' color: #fff;"' if shade > 0.55 else '"'
            if align == "l" and isinstance(cell, str) and len(cell) > 40:
                classes.append("text")
            cells.append(f'<td class="{" ".join(classes)}"{style}>{_html_inline([cell])}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _render_html(title: str, blocks: Sequence[_Block], root: Path) -> str:
    parts = []
    for block in blocks:
        if isinstance(block, _Heading):
            parts.append(f"<h{block.level}>{_html_escape(block.text)}</h{block.level}>")
        elif isinstance(block, _Paragraph):
            css = ' class="muted"' if block.muted else ""
            parts.append(f"<p{css}>{_html_inline(block.parts)}</p>")
        elif isinstance(block, _Bullets):
            items = "".join(f"<li>{_html_inline(item)}</li>" for item in block.items)
            parts.append(f"<ul>{items}</ul>")
        elif isinstance(block, _Table):
            parts.append(_html_table(block))
        elif isinstance(block, _Image):
            # Embedded, so the file works when opened directly or mailed without the plots folder.
            data = base64.b64encode((root / block.rel_path).read_bytes()).decode("ascii")
            parts.append(
                f'<p><img src="data:image/png;base64,{data}" alt="{_html_escape(block.alt)}"></p>'
            )
    body = "\n".join(parts)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{_html_escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


# --------------------------------------------------------------------------------------------------
# Formatting helpers
# --------------------------------------------------------------------------------------------------


def _fmt_int(value: Any) -> str:
    return f"{int(value):,}" if _finite(value) else str(value)


def _fmt_score(value: Any) -> str:
    return f"{float(value):.4f}" if _finite(value) else "–"


def _fmt_number(value: Any) -> str:
    if isinstance(value, bool) or not _finite(value):
        return str(value)
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{float(value):,.1f}"


def _fmt_percent(part: float, whole: float) -> str:
    return _fmt_fraction(part / whole) if whole else "–"


def _fmt_fraction(fraction: float) -> str:
    percent = 100.0 * fraction
    # "0.0%" would read as none at all; a handful of truncated texts out of 38k is not none.
    if 0 < percent < 0.1:
        return "<0.1%"
    return f"{percent:.1f}%"


def _fmt_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _fmt_setting(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)


def _flatten(settings: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested config sections become dotted keys (``optim.lr``) so one table shows everything."""
    out: list[tuple[str, Any]] = []
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.extend(_flatten(value, name + "."))
        else:
            out.append((name, value))
    return out


def _truncate(text: str) -> str:
    return text if len(text) <= MAX_TEXT_CHARS else text[: MAX_TEXT_CHARS - 1] + "…"


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


def _summary(inputs: ReportInputs) -> list[_Block]:
    parts: list[_Inline] = [_Code(inputs.model_name), " fine-tuned"]
    rows = (inputs.data_summary or {}).get("rows") or {}
    if _finite(rows.get("train")):
        parts.append(f" on {_fmt_int(rows['train'])} training examples")
    parts.append(f" for {len(inputs.labels)} labels ({', '.join(map(str, inputs.labels))}). ")

    split = _headline_split(inputs.final_metrics)
    if split is not None:
        m = inputs.final_metrics[split]
        parts += [
            f"On the {split} split ({_fmt_int(m.get('n', 0))} examples): accuracy ",
            _Strong(_fmt_score(m.get("accuracy"))),
            f" ({100 * float(m.get('accuracy', 0.0)):.1f}%), macro-F1 ",
            _Strong(_fmt_score(m.get("macro_f1"))),
            f", weighted-F1 {_fmt_score(m.get('weighted_f1'))}. ",
        ]
        per_class = m.get("per_class") or {}
        scored = [(name, s["f1"]) for name, s in per_class.items() if s.get("support")]
        if len(scored) > 1:
            weakest = min(scored, key=lambda item: item[1])
            parts.append(f"Weakest class: {weakest[0]} (F1 {_fmt_score(weakest[1])}). ")
    else:
        parts.append("No evaluation results were recorded. ")

    if inputs.best:
        parts.append(
            f"Best checkpoint at step {_fmt_int(inputs.best.get('step'))} "
            f"({inputs.best.get('metric', 'metric')} {_fmt_score(inputs.best.get('value'))}). "
        )
    if _finite(inputs.wall_time_s):
        parts.append(f"Wall time {_fmt_duration(float(inputs.wall_time_s))}. ")
    if inputs.notes:
        count = len(inputs.notes)
        parts.append(_Strong(f"See {count} note{'s' if count != 1 else ''} at the end."))
    return [_Heading(1, inputs.title), _Paragraph(parts)]


def _data_section(inputs: ReportInputs) -> list[_Block]:
    data = inputs.data_summary or {}
    blocks: list[_Block] = [_Heading(2, "Data")]
    facts: list[list[_Inline]] = []
    for source in data.get("sources") or []:
        facts.append([_Strong("Source:"), " ", str(source)])
    if data.get("encoding"):
        facts.append([_Strong("Encoding:"), " ", str(data["encoding"])])
    if "rejected" in data:
        fact: list[_Inline] = [_Strong("Rejected rows:"), " ", _fmt_int(data["rejected"])]
        examples = [str(e) for e in data.get("rejected_examples") or []]
        if examples:
            fact.append(", e.g. " + "; ".join(examples[:5]))
            if len(examples) > 5:
                fact.append(f" (and {len(examples) - 5} more listed)")
        facts.append(fact)
    if "duplicates_removed" in data:
        facts.append([_Strong("Duplicates removed:"), " ", _fmt_int(data["duplicates_removed"])])
    if "conflicting_removed" in data:
        facts.append(
            [_Strong("Conflicting duplicates removed:"), " ", _fmt_int(data["conflicting_removed"]),
             " (same text, different labels)"]
        )
    truncated = data.get("truncated")
    if isinstance(truncated, Mapping) and "count" in truncated:
        text = f"{_fmt_int(truncated['count'])} texts"
        if _finite(truncated.get("fraction")):
            text += f" ({_fmt_fraction(float(truncated['fraction']))})"
        if truncated.get("max_length") is not None:
            text += f" longer than max_length {_fmt_int(truncated['max_length'])} tokens"
        facts.append([_Strong("Truncated:"), " ", text])
    if facts:
        blocks.append(_Bullets(facts))

    rows = data.get("rows") or {}
    if rows:
        total = sum(float(n) for n in rows.values() if _finite(n))
        splits = _split_order(rows)
        blocks.append(_Paragraph([_Strong("Rows per split")]))
        blocks.append(
            _Table(
                ["split", "rows", "share"],
                [
                    [s, _fmt_int(rows[s]), _fmt_percent(float(rows[s]), total) if _finite(rows[s]) else "–"]
                    for s in splits
                ],
                ["l", "r", "r"],
            )
        )

    label_counts = data.get("label_counts") or {}
    if label_counts:
        splits = _split_order(label_counts)
        # Labels in model order first, then any the data had that the model does not.
        names = [str(label) for label in inputs.labels]
        for counts in label_counts.values():
            names += [str(n) for n in counts if str(n) not in names]
        totals = {s: sum(float(v) for v in label_counts[s].values() if _finite(v)) for s in splits}
        table_rows: list[list[_Cell]] = []
        for name in names:
            row: list[_Cell] = [name]
            for s in splits:
                count = label_counts[s].get(name, 0)
                share = _fmt_percent(float(count), totals[s]) if _finite(count) else "–"
                row.append(f"{_fmt_int(count)} ({share})")
            table_rows.append(row)
        table_rows.append([_Strong("total")] + [_Strong(_fmt_int(totals[s])) for s in splits])
        blocks.append(_Paragraph([_Strong("Label distribution")]))
        blocks.append(_Table(["label", *splits], table_rows, ["l"] + ["r"] * len(splits)))

    lengths = data.get("length_tokens") or {}
    if lengths:
        keys = [k for k in ("p50", "p90", "p99", "max", "mean") if k in lengths]
        keys += [k for k in lengths if k not in keys]
        blocks.append(_Paragraph([_Strong("Text length in tokens")]))
        blocks.append(
            _Table(keys, [[_fmt_number(lengths[k]) for k in keys]], ["r"] * len(keys))
        )
    if len(blocks) == 1:
        blocks.append(_Paragraph(["No data summary was recorded."], muted=True))
    return blocks


def _settings_section(inputs: ReportInputs) -> list[_Block]:
    blocks: list[_Block] = [_Heading(2, "Settings")]
    flat = _flatten(inputs.settings or {})
    if flat:
        blocks.append(
            _Table(["setting", "value"], [[k, _fmt_setting(v)] for k, v in flat], ["l", "l"])
        )
    else:
        blocks.append(_Paragraph(["No settings were recorded."], muted=True))
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
) -> list[_Block]:
    blocks: list[_Block] = [_Heading(2, "Training")]
    if curves:
        blocks.append(_Image(curves, "Training and validation curves"))
    elif plot_note:
        blocks.append(_Paragraph([plot_note], muted=True))

    train = _records(inputs.history, "train")
    evals = _records(inputs.history, "eval")
    facts: list[list[_Inline]] = []
    if inputs.best:
        facts.append(
            [_Strong("Best checkpoint:"), " ",
             f"step {_fmt_int(inputs.best.get('step'))}, "
             f"{inputs.best.get('metric', 'metric')} = {_fmt_score(inputs.best.get('value'))}"]
        )
    if _finite(inputs.wall_time_s):
        facts.append([_Strong("Wall time:"), " ", _fmt_duration(float(inputs.wall_time_s))])
    if train:
        last = train[-1]
        text = f"{len(train):,} logged steps up to step {_fmt_int(last['step'])}"
        if _finite(last.get("epoch")):
            text += f" (epoch {float(last['epoch']):.2f})"
        facts.append([_Strong("Training:"), " ", text])
        _, losses = _series(train, "loss")
        if losses:
            smooth = _smooth(losses) or losses
            facts.append(
                [_Strong("Final training loss:"), " ",
                 f"{smooth[-1]:.4f}" + (" (smoothed)" if len(smooth) >= 8 else "")]
            )
        _, speeds = _series(train, "tokens_per_s")
        if speeds:
            median = sorted(speeds)[len(speeds) // 2]
            facts.append([_Strong("Throughput:"), " ", f"{median:,.0f} tokens/s (median)"])
    if facts:
        blocks.append(_Bullets(facts))

    if evals:
        best_step = inputs.best.get("step") if inputs.best else None
        shown = _thin(evals, best_step)
        rows: list[list[_Cell]] = []
        for r in shown:
            cells: list[_Cell] = [
                _fmt_int(r["step"]),
                f"{float(r['epoch']):.2f}" if _finite(r.get("epoch")) else "–",
                _fmt_score(r.get("loss")),
                _fmt_score(r.get("accuracy")),
                _fmt_score(r.get("macro_f1")),
            ]
            if best_step is not None and r["step"] == best_step:
                cells = [_Strong(c) if isinstance(c, str) else c for c in cells]
            rows.append(cells)
        title = "Validation during training"
        if len(shown) < len(evals):
            title += f" ({len(shown)} of {len(evals)} evaluations)"
        blocks.append(_Paragraph([_Strong(title)]))
        blocks.append(
            _Table(["step", "epoch", "loss", "accuracy", "macro-F1"], rows, ["r"] * 5)
        )
    if not train and not evals:
        blocks.append(_Paragraph(["No training history was recorded."], muted=True))
    return blocks


def _results_section(
    inputs: ReportInputs, heatmaps: Mapping[str, str], plot_note: str | None
) -> list[_Block]:
    blocks: list[_Block] = [_Heading(2, "Results")]
    if not inputs.final_metrics:
        blocks.append(_Paragraph(["No evaluation results were recorded."], muted=True))
        return blocks
    for split in _split_order(inputs.final_metrics):
        m = inputs.final_metrics[split]
        labels = [str(label) for label in m.get("labels") or inputs.labels]
        n = m.get("n", 0)
        blocks.append(_Heading(3, f"{split.capitalize()} ({_fmt_int(n)} examples)"))

        rows: list[list[_Cell]] = []
        for label in labels:
            s = m["per_class"][label]
            rows.append(
                [label, _fmt_score(s["precision"]), _fmt_score(s["recall"]), _fmt_score(s["f1"]),
                 _fmt_int(s["support"])]
            )
        rows.append([_Strong("accuracy"), "", "", _Strong(_fmt_score(m["accuracy"])), _fmt_int(n)])
        rows.append(
            [_Strong("macro avg"), _fmt_score(m.get("macro_precision")),
             _fmt_score(m.get("macro_recall")), _Strong(_fmt_score(m["macro_f1"])), _fmt_int(n)]
        )
        rows.append(
            [_Strong("weighted avg"), _fmt_score(m.get("weighted_precision")),
             _fmt_score(m.get("weighted_recall")), _fmt_score(m.get("weighted_f1")), _fmt_int(n)]
        )
        blocks.append(
            _Table(["class", "precision", "recall", "F1", "support"], rows, ["l", "r", "r", "r", "r"])
        )
        if _finite(m.get("loss")):
            blocks.append(_Paragraph([f"Loss: {float(m['loss']):.4f}"]))

        cm = m.get("confusion_matrix")
        if cm:
            norm = m.get("confusion_matrix_normalized")
            blocks.append(_Paragraph([_Strong("Confusion matrix"), " (rows: true, columns: predicted)"]))
            blocks.append(
                _Table(
                    ["true \\ predicted", *labels],
                    [[label, *(_fmt_int(c) for c in row)] for label, row in zip(labels, cm)],
                    ["l"] + ["r"] * len(labels),
                    shade=[[None, *r] for r in norm] if norm else None,
                )
            )
        if split in heatmaps:
            blocks.append(_Image(heatmaps[split], f"Confusion matrix ({split})"))
        elif plot_note:
            blocks.append(_Paragraph([plot_note], muted=True))
    return blocks


def _mistakes_section(inputs: ReportInputs) -> list[_Block]:
    blocks: list[_Block] = [_Heading(2, "Most confident mistakes")]
    if not inputs.mistakes:
        blocks.append(_Paragraph(["No mistakes were recorded."], muted=True))
        return blocks
    with_pair = any(m.get("text_pair") for m in inputs.mistakes)
    with_row = any(m.get("row") is not None for m in inputs.mistakes)
    header = ["confidence", "true", "predicted"] + (["row"] if with_row else []) + ["text"]
    header += ["text pair"] if with_pair else []
    rows: list[list[_Cell]] = []
    for m in inputs.mistakes:
        confidence = m.get("confidence")
        row: list[_Cell] = [
            f"{float(confidence):.3f}" if _finite(confidence) else "–",
            str(m.get("true", "")),
            str(m.get("predicted", "")),
        ]
        if with_row:
            row.append(_fmt_int(m["row"]) if m.get("row") is not None else "")
        row.append(_truncate(str(m.get("text", ""))))
        if with_pair:
            row.append(_truncate(str(m["text_pair"])) if m.get("text_pair") else "")
        rows.append(row)
    align = ["r", "l", "l"] + (["r"] if with_row else []) + ["l"] + (["l"] if with_pair else [])
    blocks.append(
        _Paragraph(
            [f"The {len(rows)} wrong predictions the model was most sure of. "
             "Confident mistakes are often label noise in the data, or a pattern the model missed."],
        )
    )
    blocks.append(_Table(header, rows, align))
    return blocks


def _notes_section(notes: Sequence[str]) -> list[_Block]:
    blocks: list[_Block] = [_Heading(2, "Notes")]
    if notes:
        blocks.append(_Bullets([[str(note)] for note in notes]))
    else:
        blocks.append(_Paragraph(["No warnings."], muted=True))
    return blocks


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------


def _write_text(path: Path, text: str) -> None:
    # Atomic replace: a reader (or a crash) never sees half a report.
    tmp = _temp_name(path)
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

    have_matplotlib = _figure_class() is not None
    plot_note: str | None = None
    curves: str | None = None
    heatmaps: dict[str, str] = {}
    if not have_matplotlib:
        logger.warning("matplotlib is not installed; %s", PLOTS_SKIPPED)
        plot_note = PLOTS_SKIPPED
        notes.append(PLOTS_SKIPPED)
    else:
        def attempt(what: str, make: Any) -> Path | None:
            try:
                return make()
            except Exception as exc:  # noqa: BLE001 - see the docstring: never lose the report
                logger.warning("could not draw the %s: %s", what, exc, exc_info=True)
                notes.append(f"The {what} plot failed: {type(exc).__name__}: {exc}")
                return None

        written = attempt(
            "training curves",
            lambda: plot_training_curves(inputs.history, plots_dir / "training_curves.png"),
        )
        if written is not None:
            curves = "plots/training_curves.png"
        used: set[str] = set()
        for split in _split_order(inputs.final_metrics):
            stem = _file_stem(split)
            while stem in used:  # two split names that sanitise alike must not share a file
                stem += "_"
            used.add(stem)
            name = f"confusion_{stem}.png"
            metrics = inputs.final_metrics[split]
            written = attempt(
                f"{split} confusion matrix",
                lambda m=metrics, n=name, s=split: plot_confusion_matrix(
                    m, plots_dir / n, f"{inputs.model_name} · {s}"
                ),
            )
            if written is not None:
                heatmaps[split] = f"plots/{name}"

    blocks: list[_Block] = []
    blocks += _summary(dataclasses.replace(inputs, notes=notes))
    blocks += _data_section(inputs)
    blocks += _settings_section(inputs)
    blocks += _training_section(inputs, curves, plot_note)
    blocks += _results_section(inputs, heatmaps, plot_note)
    blocks += _mistakes_section(inputs)
    blocks += _notes_section(notes)

    md_path = run_dir / "report.md"
    _write_text(md_path, _render_markdown(blocks))
    _write_text(run_dir / "report.html", _render_html(inputs.title, blocks, run_dir))
    logger.info("wrote %s and %s", md_path, run_dir / "report.html")
    return md_path
