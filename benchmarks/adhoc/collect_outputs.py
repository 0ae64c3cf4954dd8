"""Pack an example's output folder (what benchmarks/adhoc/ncbi_example.sh or nsp_example.sh wrote) into
one JSON artifact, unchanged: each *.json file parsed, each text file as its lines (progress-bar
redraws dropped), so the README's quoted output can be checked against it (issue 32).

    python benchmarks/adhoc/collect_outputs.py OUT_DIR benchmarks/NAME.json --command "the command that made OUT_DIR"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--command", required=True)
    args = parser.parse_args()
    packed: dict = {"command": args.command, "files": {}}
    for path in sorted(args.folder.iterdir()):
        if path.suffix == ".json":
            packed["files"][path.name] = json.loads(path.read_text(encoding="utf-8"))
        else:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            packed["files"][path.name] = [line.split("\r")[-1] for line in lines]
    args.out.write_text(json.dumps(packed, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
