#!/usr/bin/env bash
# The README's QA example, run as printed there on the hour recipe's model (bench_qa_hour.py's bertfit run),
# with its raw outputs kept (issue 31, item 2). From the repository root, one thread on core 0:
#   taskset -c 0 env OMP_NUM_THREADS=1 bash benchmarks/adhoc/qa_example.sh RUN_DIR OUT_DIR
# Writes OUT_DIR/{machine.json,predict_question.txt,answers.jsonl,predict_file.log,evaluate.txt}.
set -euo pipefail
RUN=${1:?run directory}; OUT=${2:?output directory}
PY=${PYTHON:-/work/main/.venv/bin/python}
export PYTHONPATH=$PWD/src
mkdir -p "$OUT"
"$PY" - "$OUT/machine.json" <<'PYEOF'
import json, subprocess, sys, os
lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
model = next(l.split(":", 1)[1].strip() for l in lscpu.splitlines() if l.startswith("Model name"))
flags = next(l.split(":", 1)[1].split() for l in lscpu.splitlines() if l.startswith("Flags"))
record = {"commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
          "cpu_model": model, "cpu_flags": [f for f in flags if f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")],
          "cpu_affinity": sorted(os.sched_getaffinity(0)), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
open(sys.argv[1], "w").write(json.dumps(record, indent=2) + "\n")
PYEOF
"$PY" -m bertfit predict "$RUN" --question "How much was the emergency aid to Israel?" \
  --context-file examples/qa/oil_crisis_1973.txt --top-k 3 > "$OUT/predict_question.txt" 2>&1
"$PY" -m bertfit predict "$RUN" --file examples/qa/questions.jsonl --output "$OUT/answers.jsonl" \
  > "$OUT/predict_file.log" 2>&1
"$PY" -m bertfit evaluate "$RUN" --file examples/qa/questions.jsonl > "$OUT/evaluate.txt" 2>&1
