"""The recorded sweeps behind each task's defaults (tasks/table.py TaskRow.defaults), gathered from the
`bertfit tune` folders that ran them into one JSON, with the machine, and printed as the tables
benchmarks/RESULTS.md ("Defaults per task") shows. The commands that ran each sweep are in RESULTS.md.

    .venv/bin/python benchmarks/task_defaults.py --sweep ner=/work/sweeps/ner-wnut17 \\
        --sweep multi-label=/work/sweeps/ml-goemotions --out benchmarks/task_defaults_sweeps.json

The QA sweep's validation file (500 seeded SQuAD v1.1 dev questions whose ids and paragraphs are not in
XQuAD-en, so XQuAD-en stays a test set the selection never read):

    python benchmarks/task_defaults.py --squad-dev-outside-xquad ../shared/data sweeps/squad_dev500_not_xquad.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
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


def squad_dev_outside_xquad(data: Path, out: Path, n: int = 500, seed: int = 0) -> int:
    """``n`` seeded SQuAD v1.1 dev questions from paragraphs XQuAD-en does not hold, as SQuAD JSON."""
    with gzip.open(data / "squad" / "dev-v1.1.json.gz", "rt", encoding="utf-8") as f:
        dev = json.load(f)
    xquad = json.loads((data / "xquad" / "xquad.en.json").read_text(encoding="utf-8"))
    ids = {q["id"] for a in xquad["data"] for p in a["paragraphs"] for q in p["qas"]}
    contexts = {p["context"] for a in xquad["data"] for p in a["paragraphs"]}
    candidates = [q for a in dev["data"] for p in a["paragraphs"] for q in p["qas"]
                  if q["id"] not in ids and p["context"] not in contexts]
    random.Random(seed).shuffle(candidates)
    keep = {q["id"] for q in candidates[:n]}
    articles = []
    for article in dev["data"]:
        paragraphs = [{"context": p["context"], "qas": [q for q in p["qas"] if q["id"] in keep]}
                      for p in article["paragraphs"]]
        paragraphs = [p for p in paragraphs if p["qas"]]
        if paragraphs:
            articles.append({"title": article["title"], "paragraphs": paragraphs})
    out.write_text(json.dumps({"version": "1.1", "data": articles}), encoding="utf-8")
    return len(keep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", action="append", metavar="TASK=TUNE_DIR")
    parser.add_argument("--out")
    parser.add_argument("--squad-dev-outside-xquad", nargs=2, metavar=("DATA", "OUT"))
    args = parser.parse_args()
    if args.squad_dev_outside_xquad:
        data, out = args.squad_dev_outside_xquad
        print(f"{squad_dev_outside_xquad(Path(data), Path(out))} questions -> {out}")
        return
    if not args.sweep or not args.out:
        parser.error("--sweep TASK=TUNE_DIR (one or more) and --out are required")
    records = [sweep(*(lambda t, d: (t, Path(d)))(*spec.split("=", 1))) for spec in args.sweep]
    Path(args.out).write_text(json.dumps({"machine": machine(), "sweeps": records}, indent=2) + "\n", encoding="utf-8")
    print("\n\n".join(table(r) for r in records))


if __name__ == "__main__":
    main()
