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
source "$(dirname "$0")/machine_record.sh"
"$PY" -m bertfit predict "$RUN" --question "How much was the emergency aid to Israel?" \
  --context-file examples/qa/oil_crisis_1973.txt --top-k 3 > "$OUT/predict_question.txt" 2>&1
"$PY" -m bertfit predict "$RUN" --file examples/qa/questions.jsonl --output "$OUT/answers.jsonl" \
  > "$OUT/predict_file.log" 2>&1
"$PY" -m bertfit evaluate "$RUN" --file examples/qa/questions.jsonl > "$OUT/evaluate.txt" 2>&1
