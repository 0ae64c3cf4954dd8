"""Copy a run's result files into one JSON artifact, unchanged (issue 32): RUN/metrics.json, data.json,
task.json and precision.json, the reports' lines, and for a --seeds run every RUN/seeds/seed-N/metrics.json, with the
command that made the run, its start/end times, the processor and the commit given on the command line.

    python benchmarks/adhoc/collect_run.py RUN benchmarks/NAME.json --command "..." --commit SHA \\
        --started 2026-...Z --finished 2026-...Z [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--command", required=True)
    parser.add_argument("--commit", required=True)
    parser.add_argument("--started", required=True)
    parser.add_argument("--finished", required=True)
    parser.add_argument("--threads", type=int, default=None, help="the thread count the command ran with")
    args = parser.parse_args()
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    model = next(line.split(":", 1)[1].strip() for line in lscpu if line.startswith("Model name"))
    flags = next(line.split(":", 1)[1].split() for line in lscpu if line.startswith("Flags"))
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")
    packed: dict = {"command": args.command, "commit": args.commit, "started": args.started,
                    "finished": args.finished, "threads": args.threads,
                    "machine": {"cpu_model": model, "cpu_flags": [f for f in flags if f in wanted]}}
    for name in ("metrics.json", "data.json", "task.json", "precision.json"):
        if (args.run / name).is_file():
            packed[name] = json.loads((args.run / name).read_text(encoding="utf-8"))
    # the report holds what no JSON does (calibration's ECE and log-loss before/after): kept as its lines
    for report in [args.run / "report.md", *sorted((args.run / "seeds").glob("seed-*/report.md"))]:
        if report.is_file():
            packed.setdefault("reports", {})[str(report.relative_to(args.run))] = report.read_text(
                encoding="utf-8").splitlines()
    seeds = sorted((args.run / "seeds").glob("seed-*/metrics.json"))
    if seeds:
        packed["seeds"] = {p.parent.name: json.loads(p.read_text(encoding="utf-8")) for p in seeds}
    args.out.write_text(json.dumps(packed, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
