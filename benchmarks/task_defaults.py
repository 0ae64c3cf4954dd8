"""The recorded sweeps behind each task's defaults (tasks/table.py TaskRow.defaults), gathered from the
`bertfit tune` folders that ran them into one JSON, with the machine, and printed as the tables
benchmarks/RESULTS.md ("Defaults per task") shows. The commands that ran each sweep are in RESULTS.md.

    .venv/bin/python benchmarks/task_defaults.py --sweep ner=/work/sweeps/ner-wnut17 \\
        --sweep multi-label=/work/sweeps/ml-goemotions --out benchmarks/task_defaults_sweeps.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
from pathlib import Path

SHOWN = ("lr", "epochs", "batch_size", "warmup_ratio", "threshold")


def machine() -> dict:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    return {"cpu": fields.get("Model name", "").strip(), "family": fields.get("CPU family", "").strip(),
            "model": fields.get("Model", "").strip(), "python": platform.python_version(),
            "flags": [f for f in flags if f.startswith(("avx", "amx"))]}


def sweep(name: str, folder: Path) -> dict:
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    trials = [{k: t[k] for k in ("number", "state", "value", "params", "seconds", "defaults", "stopped_at_budget")}
              for t in summary["trials"]]
    best = summary["best"] and {k: summary["best"][k] for k in ("number", "value", "params", "test") if k in summary["best"]}
    return {"task": name, "metric": summary["metric"], "direction": summary["direction"], "stopped_by": summary["stopped_by"],
            "best": best, "importances": summary.get("importances"), "trials": trials}


def table(record: dict) -> str:
    lines = [f"{record['task']}: validation {record['metric']} ({record['direction']}), best trial "
             f"{record['best'] and record['best']['number']}",
             "| trial | " + " | ".join(SHOWN) + f" | {record['metric']} | seconds |", "|---" * (len(SHOWN) + 3) + "|"]
    for t in record["trials"]:
        cells = [("none" if t["params"].get(k, "-") is None else
                  (f"{t['params'][k]:.3g}" if isinstance(t["params"].get(k), float) else str(t["params"].get(k, "-"))))
                 for k in SHOWN]
        value = "pruned" if t["state"] == "pruned" else ("-" if t["value"] is None else f"{t['value']:.4f}")
        tag = " (defaults)" if t["defaults"] else ""
        lines.append(f"| {t['number']:03d}{tag} | " + " | ".join(cells) + f" | {value} | {t['seconds'] or 0:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", action="append", required=True, metavar="TASK=TUNE_DIR")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    records = [sweep(*(lambda t, d: (t, Path(d)))(*spec.split("=", 1))) for spec in args.sweep]
    Path(args.out).write_text(json.dumps({"machine": machine(), "sweeps": records}, indent=2) + "\n", encoding="utf-8")
    print("\n\n".join(table(r) for r in records))


if __name__ == "__main__":
    main()
