#!/usr/bin/env bash
# The README's NCBI-disease example, re-run as printed there, with its raw outputs kept (issue 32).
# Run from the repository root, under the benchmark lock, one thread on core 0:
#   flock /work/bench.lock taskset -c 0 env OMP_NUM_THREADS=1 bash benchmarks/adhoc/ncbi_example.sh RUN_DIR OUT_DIR
# Writes OUT_DIR/{machine.json,train.log,predict.txt,predict.jsonl,metrics.json,time.txt}.
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
SECONDS=0
"$PY" -m bertfit train --task ner --train-file ../shared/data/ncbi_disease/train.tsv \
  --validation-file ../shared/data/ncbi_disease/dev.tsv --test-file ../shared/data/ncbi_disease/test.tsv \
  --max-eval-examples 300 --max-steps 150 --batch-size 16 --lr 1e-4 --threads 1 --output-dir "$RUN" \
  > "$OUT/train.log" 2>&1

echo "train wall seconds: $SECONDS" > "$OUT/time.txt"
"$PY" -m bertfit predict "$RUN" "Germline mutations in BRCA1 cause hereditary breast and ovarian cancer." \
  "A boy with Duchenne muscular dystrophy (DMD) and a girl with cystic fibrosis." > "$OUT/predict.txt" 2>&1
"$PY" -m bertfit predict "$RUN" --json "Germline mutations in BRCA1 cause hereditary breast and ovarian cancer." \
  > "$OUT/predict.jsonl" 2>&1
cp "$RUN/metrics.json" "$OUT/metrics.json"
