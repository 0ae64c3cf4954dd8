"""The report's plots, drawn with matplotlib's object-oriented Figure API (never pyplot).

That renders with the Agg backend without touching the process-wide backend or pyplot's global
figure list, so writing a report from a notebook, a server thread or a headless machine neither
changes the user's backend nor leaks figures. matplotlib is an optional extra (bertfit[report]),
imported lazily; without it every plot function returns None.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bertfit.report.document import finite

logger = logging.getLogger("bertfit.report")

PLOTS_SKIPPED = "plots skipped: install bertfit[report]"

def figure_class() -> Any | None:
    """matplotlib's Figure class, or None when the optional extra is not installed."""
    try:
        # The top-level import first: it is what fails when matplotlib is absent (or blocked with
        # sys.modules["matplotlib"] = None), even if a submodule is still cached in sys.modules.
        import matplotlib  # noqa: F401
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure


def plain_text_rc() -> dict[str, Any]:
    # Label names and titles are user text: "$5 off" must not be parsed as mathtext.
    return {"text.parse_math": False}


def temp_name(path: Path) -> Path:
    # A unique sibling name opened normally (not mkstemp, whose files are 0600): the final file
    # gets the user's umask like every other file in the run directory.
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def save_png(fig: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write next to the target and rename, so a crash never leaves a half-written PNG behind.
    tmp = temp_name(path)
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
    figure_cls = figure_class()
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
    tick_labels = [short(label, 18) for label in labels]
    longest = max((len(label) for label in tick_labels), default=1)
    rotate = k > 4 or longest > 8
    # Room for tick labels: roughly 0.075 inch per character at these font sizes.
    label_room = min(1.6, 0.3 + 0.075 * longest)

    with matplotlib.rc_context(plain_text_rc()):
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
        return save_png(fig, path)


def records(history: Iterable[Mapping[str, Any]], kind: str) -> list[Mapping[str, Any]]:
    """Records of one kind sorted by step; a step logged twice (a resumed run) keeps the last."""
    by_step: dict[int, Mapping[str, Any]] = {}
    for record in history:
        if record.get("kind") != kind or not finite(record.get("step")):
            continue
        if kind == "eval" and record.get("split", "validation") != "validation":
            continue
        by_step[int(record["step"])] = record
    return [by_step[step] for step in sorted(by_step)]


def series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for record in records:
        value = record.get(key)
        if finite(value):
            steps.append(int(record["step"]))
            values.append(float(value))
    return steps, values


def smoothed(values: Sequence[float]) -> list[float] | None:
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


def plot_training_curves(history: list[dict], path: Path,
                         metrics: tuple[str, str] = ("accuracy", "macro_f1"),
                         labels: Mapping[str, str] | None = None) -> Path | None:
    """Two panels: training loss (raw per logged step and smoothed) with validation loss, and two
    validation metrics (the task's: accuracy and macro-F1 for classifiers; the second one gets the
    best-point star), all against the optimiser step. ``labels`` names the metric keys (the task's
    ``metric_labels``); a key without a name is shown as it is.

    Returns the PNG path, or None when matplotlib is missing or there is nothing to plot.
    """
    train = records(history, "train")
    evals = records(history, "eval")
    if not train and not evals:
        logger.info("no training history to plot; skipping %s", path)
        return None
    figure_cls = figure_class()
    if figure_cls is None:
        logger.warning("matplotlib is not installed; skipping %s (%s)", path, PLOTS_SKIPPED)
        return None
    import matplotlib

    with matplotlib.rc_context(plain_text_rc()):
        fig = figure_cls(figsize=(11.0, 4.2), layout="constrained")
        # A shared step axis lines the validation points up with the loss curve above the same step.
        loss_ax, metric_ax = fig.subplots(1, 2, sharex=True)

        steps, losses = series(train, "loss")
        if losses:
            smooth = smoothed(losses)
            # The raw curve is faint context; the smoothed line is what the eye should follow.
            loss_ax.plot(
                steps, losses, color="C0", alpha=0.3 if smooth else 0.9, linewidth=0.9,
                label="train (per step)",
            )
            if smooth:
                loss_ax.plot(steps, smooth, color="C0", linewidth=2.0, label="train (smoothed)")
        val_steps, val_losses = series(evals, "loss")
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

        first, second = metrics
        names = dict(labels or {"macro_f1": "macro-F1"})
        acc_steps, accs = series(evals, first)
        f1_steps, f1s = series(evals, second)
        if accs:
            metric_ax.plot(acc_steps, accs, color="C2", marker="o", markersize=4, label=names.get(first, first))
        if f1s:
            metric_ax.plot(f1_steps, f1s, color="C3", marker="s", markersize=4, label=names.get(second, second))
            best = max(range(len(f1s)), key=f1s.__getitem__)
            metric_ax.plot(
                f1_steps[best], f1s[best], marker="*", markersize=14, color="C3",
                markeredgecolor="black", linestyle="none", zorder=5,
                label=f"best {names.get(second, second)} {f1s[best]:.3f} (step {f1_steps[best]:,})",
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
        return save_png(fig, path)


# --------------------------------------------------------------------------------------------------
# Document pieces, shared by the Markdown and HTML renderers
# --------------------------------------------------------------------------------------------------


def plot_predicted_vs_true(true: Sequence[float], predicted: Sequence[float], path: Path, title: str) -> Path | None:
    """Two panels: predicted against true values (with the y = x line), and residuals against true."""
    figure_cls = figure_class()
    if figure_cls is None:
        logger.warning("matplotlib is not installed; skipping %s (%s)", path, PLOTS_SKIPPED)
        return None
    import matplotlib
    import numpy as np

    true_a, pred_a = np.asarray(true, dtype=float), np.asarray(predicted, dtype=float)
    with matplotlib.rc_context(plain_text_rc()):
        fig = figure_cls(figsize=(10, 4.2))
        left, right = fig.subplots(1, 2)
        alpha = 0.6 if len(true_a) < 500 else 0.25
        left.scatter(true_a, pred_a, s=8, alpha=alpha, color="#3b6ea5", linewidths=0)
        if len(true_a):
            lo, hi = float(min(true_a.min(), pred_a.min())), float(max(true_a.max(), pred_a.max()))
            left.plot([lo, hi], [lo, hi], color="#888888", linewidth=1, linestyle="--", label="y = x")
            left.legend(loc="upper left", frameon=False)
        left.set_xlabel("true")
        left.set_ylabel("predicted")
        left.set_title("Predicted vs true")
        right.scatter(true_a, pred_a - true_a, s=8, alpha=alpha, color="#c0504d", linewidths=0)
        right.axhline(0, color="#888888", linewidth=1, linestyle="--")
        right.set_xlabel("true")
        right.set_ylabel("predicted − true")
        right.set_title("Residuals")
        fig.suptitle(short(title, 90))
        for ax in (left, right):
            for spine in ("top", "right"):
                ax.spines[spine].set_visible(False)
        return save_png(fig, path)


def plot_reliability(calibration: Mapping[str, Any], path: Path, title: str) -> Path | None:
    """Reliability diagram: per confidence bin, accuracy against mean confidence, before and after
    calibration (the diagonal is perfect calibration). ``calibration``: a task's evaluate()["calibration"]."""
    figure_cls = figure_class()
    if figure_cls is None:
        logger.warning("matplotlib is not installed; skipping %s (%s)", path, PLOTS_SKIPPED)
        return None
    import matplotlib

    with matplotlib.rc_context(plain_text_rc()):
        fig = figure_cls(figsize=(5.2, 4.6), layout="constrained")
        ax = fig.add_subplot()
        ax.plot([0, 1], [0, 1], color="#999999", linestyle="--", linewidth=1, label="perfect calibration")
        for key, name, color in (("bins_uncalibrated", "raw softmax", "#d62728"), ("bins", "calibrated", "#1f77b4")):
            bins = [b for b in calibration.get(key) or [] if b["count"]]
            if not bins:
                continue
            ece = calibration.get("ece" if key == "bins" else "ece_uncalibrated")
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", color=color,
                    label=f"{name} (ECE {ece:.3f})" if ece is not None else name)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("mean confidence in bin")
        ax.set_ylabel("accuracy in bin")
        ax.set_title(short(title, 70), fontsize=10)
        ax.legend(loc="upper left", fontsize=8)
        return save_png(fig, path)
