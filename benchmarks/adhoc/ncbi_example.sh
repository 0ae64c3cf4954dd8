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
source "$(dirname "$0")/machine_record.sh"
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
