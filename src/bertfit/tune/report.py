"""tune_report.md: what the search bought. The best trial first (linked to its own report), then
every trial's settings, metric, time and state, then the search's settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bertfit.io import write_bytes_durably


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_tune_report(tune_dir: Path, rows: list[dict[str, Any]], best: dict[str, Any] | None, metric: str,
                      direction: str, settings: Any, final: dict[str, Any] | None = None,
                      importances: dict[str, Any] | None = None, parallel_plot: str | None = None) -> Path:
    lines = ["# bertfit tune", ""]
    states = [r["state"] for r in rows]
    lines.append(f"{len(rows)} trials: {states.count('complete')} complete, {states.count('pruned')} pruned, "
                 f"{states.count('fail')} failed. Objective: {metric} on validation "
                 f"({'higher' if direction == 'maximize' else 'lower'} is better).")
    lines.append("")
    if best is not None:
        lines += ["## Best trial", "",
                  f"[{best['dir']}]({best['dir']}/report.md) (the `best` link): validation {metric} "
                  f"**{best['value']:.4f}** with {', '.join(f'{k} {_cell(v)}' for k, v in best['params'].items())}.", ""]
        test = best.get("test")
        if test:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in test.items() if isinstance(v, float))
            lines += [f"Test, evaluated once after the search: {shown}.", ""]
        else:
            lines += ["No test split: the best trial was not evaluated on test.", ""]
    else:
        lines += ["No trial finished: there is no best trial yet (`bertfit tune --resume` continues).", ""]
    lines += bought_section(rows, best, metric, direction)
    if final:
        lines += final_seeds_section(final, metric)
    plot = plot_history(tune_dir, rows, metric, direction)
    if plot:
        lines += [f"![optimization history]({plot})", ""]
    if importances:
        lines += ["## Parameter importances", "",
                  f"Each searched setting's share of the variance of validation {metric} over the finished trials "
                  f"({importances['evaluator']}, seeded; few trials make these rough):", "",
                  "| setting | importance |", "|---|---|"]
        lines += [f"| {name} | {share:.3f} |" for name, share in importances["importances"].items()] + [""]
    if parallel_plot:
        lines += ["Each finished trial's settings and its objective:", "",
                  f"![parallel coordinates]({parallel_plot})", ""]
    names = sorted({name for r in rows for name in r["params"]})
    lines += ["## Trials", "", "| trial | state | " + " | ".join(names) + f" | {metric} | seconds |",
              "|---|---|" + "---|" * len(names) + "---|---|"]
    for r in rows:
        link = f"[{r['dir']}]({r['dir']}/)" if r["dir"] else str(r["number"])
        mark = " **best**" if best is not None and r["number"] == best["number"] else ""
        cut = r.get("stopped_at_budget")
        state = f"{r['state']} (budget: step {cut['step']} of {cut['of']})" if cut else r["state"]
        lines.append(f"| {link}{mark} | {state} | " + " | ".join(_cell(r["params"].get(n)) for n in names)
                     + f" | {_cell(r['value'])} | {_cell(r['seconds'])} |")
    lines += ["", "## Search", "", f"- seed {settings.seed}; trials {settings.n_trials or 'no limit'}; "
              f"time budget {f'{settings.time_budget_s:.0f} s' if settings.time_budget_s else 'none'}"]
    lines += [f"- {name}: {param.describe()}" for name, param in settings.space.items()]
    lines += [f"- {name}: {_cell(value)} (fixed by the space file)" for name, value in settings.fixed.items()]
    lengths = getattr(settings, "lengths", None)
    if lengths:
        lines.append(f"- max_length: {lengths['chosen']} (fixed), from the {lengths['texts']} training texts' token "
                     f"lengths: median {lengths['p50']:.0f}, 95th percentile {lengths['p95']:.0f}, 99th percentile "
                     f"{lengths['p99']:.0f}, longest {lengths['max']}; the 99th percentile rounded up to a multiple "
                     f"of 8, at most {lengths['cap']} (the model's limit); {lengths['truncated']:.1%} of the "
                     "training texts are truncated")
    path = tune_dir / "tune_report.md"
    write_bytes_durably(path, ("\n".join(lines) + "\n").encode("utf-8"))
    return path


def bought_section(rows: list[dict[str, Any]], best: dict[str, Any] | None, metric: str, direction: str) -> list[str]:
    """What the budget bought over `train`'s defaults: the first trial trains them (tune/study.py)."""
    base = next((r for r in rows if r.get("defaults") and r["state"] == "complete" and r["value"] is not None), None)
    if base is None or best is None:
        return []
    settings = ", ".join(f"{k} {_cell(v)}" for k, v in base["params"].items())
    if base.get("epochs_cap") and "epochs" in base["params"]:  # sized to the budget (tune/study.py)
        settings += f"; epochs {base['params']['epochs']} because the budget sized this first trial"
    gain = (best["value"] - base["value"]) * (1 if direction == "maximize" else -1)
    if best["number"] == base["number"]:
        verdict = "no trial did better: the defaults are the best setting found."
    else:
        verdict = (f"the best trial, {best['dir']}, reached **{best['value']:.4f}**: "
                   f"{gain:+.4f} {'better' if gain >= 0 else 'worse'} than the defaults.")
    return ["## What the search bought over the defaults", "",
            f"{base['dir']} trained `train`'s own values of the searched settings ({settings}): validation "
            f"{metric} {base['value']:.4f}; {verdict}", ""]


def plot_history(tune_dir: Path, rows: list[dict[str, Any]], metric: str, direction: str) -> str | None:
    """plots/optimization_history.png: each finished trial's value and the best so far (None without
    matplotlib, the report extra, or without a finished trial)."""
    done = [(r["number"], r["value"]) for r in rows if r["state"] == "complete" and r["value"] is not None]
    if not done:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    pick = min if direction == "minimize" else max
    best = [pick(v for _, v in done[: i + 1]) for i in range(len(done))]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([n for n, _ in done], [v for _, v in done], "o", label="trial")
    ax.step([n for n, _ in done], best, where="post", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {metric}")
    ax.legend()
    fig.tight_layout()
    (tune_dir / "plots").mkdir(exist_ok=True)
    fig.savefig(tune_dir / "plots" / "optimization_history.png", dpi=100)
    plt.close(fig)
    return "plots/optimization_history.png"


def final_seeds_section(final: dict[str, Any], metric: str) -> list[str]:
    """--final-seeds: the best settings over fresh seeds, mean ± std per split, and each seed's run."""
    seeds = final["seeds"]
    lines = ["## The best settings over fresh seeds", "",
             f"The best trial's settings trained again with {len(seeds)} seed{'s' if len(seeds) > 1 else ''} the "
             f"search never used ({', '.join(map(str, seeds))}); each run is evaluated on validation and once on "
             "test. The `best` link still points to the best trial; these runs are beside it. Mean ± sample "
             "standard deviation:", ""]
    for split in ("validation", "test"):
        shown = final[split]
        if shown:
            order = [metric] + [k for k in shown if k != metric] if metric in shown else list(shown)
            lines.append(f"- {split}: " + ", ".join(f"{k} {shown[k]['mean']:.4f} ± {shown[k]['std']:.4f}"
                                                    for k in order))
    lines += [""] + [f"- [{r['dir']}]({r['dir']}/report.md): validation {metric} "
                     f"{_cell(r['validation'].get(metric))}, test {metric} {_cell(r['test'].get(metric))}"
                     for r in final["runs"]] + [""]
    return lines
